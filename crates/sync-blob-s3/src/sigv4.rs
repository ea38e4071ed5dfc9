//! AWS Signature Version 4 for requests with an `Authorization` header, as S3 and
//! every S3-compatible server check it: a canonical request, the string to sign over
//! its hash, a key derived from the secret for the day, region and service, and an
//! HMAC-SHA256 of the string under that key.
//!
//! Only what this crate sends is covered: path-style URIs whose segments are encoded
//! once (S3 does not double-encode), query parameters sorted by name, and the headers
//! the caller names (always `host`; `x-amz-date` and `x-amz-content-sha256` are
//! expected among them).

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The SHA-256 of an empty payload, in hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The SHA-256 of `bytes`, in hex (the `x-amz-content-sha256` of a payload).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts a key of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| {
        unreachable!("HMAC-SHA256 takes keys of every length");
    });
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Percent-encodes `s` as SigV4 wants: every byte but `A-Z a-z 0-9 - _ . ~` (and `/`
/// unless `encode_slash`) as `%XX` in uppercase hex.
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b'/' if !encode_slash => out.push('/'),
            _ => {
                out.push('%');
                out.push_str(&hex(&[b]).to_uppercase());
            }
        }
    }
    out
}

/// The canonical (and sent) query string: each name and value encoded, sorted by
/// name, then value.
pub fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `time` as SigV4's `x-amz-date`: `YYYYMMDDTHHMMSSZ` in UTC.
pub fn amz_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// What signing a request needs besides the credentials.
#[derive(Debug)]
pub struct Request<'a> {
    /// `GET`, `PUT`, …
    pub method: &'a str,
    /// The URI path, already encoded (see [`uri_encode`]).
    pub path: &'a str,
    /// The query string as [`canonical_query`] makes it (empty when none).
    pub query: &'a str,
    /// Every header to sign, `host` included: names in lowercase, values as sent.
    pub headers: &'a [(&'a str, &'a str)],
    /// The payload's SHA-256 in hex (or `UNSIGNED-PAYLOAD`).
    pub payload_sha256: &'a str,
    /// The request's `x-amz-date`.
    pub amz_date: &'a str,
}

/// Who signs, where.
#[derive(Debug)]
pub struct Scope<'a> {
    /// The access key id.
    pub access_key_id: &'a str,
    /// The secret access key.
    pub secret_access_key: &'a str,
    /// The region, `us-east-1` for most S3-compatible servers.
    pub region: &'a str,
    /// The service, `s3`.
    pub service: &'a str,
}

/// The canonical request of `req`.
pub fn canonical_request(req: &Request<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    headers.sort();
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut canonical = format!("{}\n{}\n{}\n", req.method, req.path, req.query);
    for (k, v) in &headers {
        canonical.push_str(k);
        canonical.push(':');
        canonical.push_str(v);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&signed);
    canonical.push('\n');
    canonical.push_str(req.payload_sha256);
    (canonical, signed)
}

/// The string to sign for `req`, and the signed header names.
pub fn string_to_sign(scope: &Scope<'_>, req: &Request<'_>) -> (String, String) {
    let (canonical, signed) = canonical_request(req);
    let day = req.amz_date.get(..8).unwrap_or("");
    let text = format!(
        "{ALGORITHM}\n{}\n{day}/{}/{}/aws4_request\n{}",
        req.amz_date,
        scope.region,
        scope.service,
        sha256_hex(canonical.as_bytes())
    );
    (text, signed)
}

/// The signature of `req`, in hex.
pub fn signature(scope: &Scope<'_>, req: &Request<'_>) -> String {
    let (text, _) = string_to_sign(scope, req);
    let day = req.amz_date.get(..8).unwrap_or("");
    let key = hmac(
        format!("AWS4{}", scope.secret_access_key).as_bytes(),
        day.as_bytes(),
    );
    let key = hmac(&key, scope.region.as_bytes());
    let key = hmac(&key, scope.service.as_bytes());
    let key = hmac(&key, b"aws4_request");
    hex(&hmac(&key, text.as_bytes()))
}

/// The `Authorization` header of `req`.
pub fn authorization(scope: &Scope<'_>, req: &Request<'_>) -> String {
    let (_, signed) = canonical_request(req);
    let day = req.amz_date.get(..8).unwrap_or("");
    format!(
        "{ALGORITHM} Credential={}/{day}/{}/{}/aws4_request,SignedHeaders={signed},Signature={}",
        scope.access_key_id,
        scope.region,
        scope.service,
        signature(scope, req)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    /// The credentials of AWS's published examples.
    const EXAMPLE: Scope<'static> = Scope {
        access_key_id: "AKIAIOSFODNN7EXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
        service: "s3",
    };

    /// "Example: GET Object" of the S3 API reference's "Signature calculations for the
    /// Authorization header": the first 10 bytes of `test.txt` in `examplebucket`.
    #[test]
    fn the_aws_get_object_example_signs_to_its_published_signature() {
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_sha256: EMPTY_SHA256,
            amz_date: "20130524T000000Z",
        };
        let (canonical, signed) = canonical_request(&req);
        assert_eq!(
            canonical,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(signed, "host;range;x-amz-content-sha256;x-amz-date");
        let (text, _) = string_to_sign(&EXAMPLE, &req);
        assert_eq!(
            text,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            authorization(&EXAMPLE, &req),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// A changed byte anywhere changes the signature (the vector is not matched by
    /// accident), and another secret signs differently.
    #[test]
    fn the_signature_covers_the_request_and_the_secret() {
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let base = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
            amz_date: "20130524T000000Z",
        };
        let sig = signature(&EXAMPLE, &base);
        let other_path = Request {
            path: "/test.txu",
            ..base
        };
        assert_ne!(signature(&EXAMPLE, &other_path), sig);
        let other_query = Request {
            query: "a=b",
            ..base
        };
        assert_ne!(signature(&EXAMPLE, &other_query), sig);
        let wrong = Scope {
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEZ",
            ..EXAMPLE
        };
        assert_ne!(signature(&wrong, &base), sig);
    }

    #[test]
    fn encoding_and_query_order_follow_sigv4() {
        assert_eq!(uri_encode("a b/c~d+e=", false), "a%20b/c~d%2Be%3D");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
        assert_eq!(
            canonical_query(&[
                ("prefix", "p/x"),
                ("list-type", "2"),
                ("continuation-token", "a+b="),
            ]),
            "continuation-token=a%2Bb%3D&list-type=2&prefix=p%2Fx"
        );
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        assert_eq!(amz_date(t), "20130524T000000Z");
        // A leap day, and the last second of a year.
        let t = UNIX_EPOCH + Duration::from_secs(951_825_600 + 3_661);
        assert_eq!(amz_date(t), "20000229T130101Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_704_067_199);
        assert_eq!(amz_date(t), "20231231T235959Z");
    }
}
