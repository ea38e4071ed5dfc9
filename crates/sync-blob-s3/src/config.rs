//! Where the content goes and how to get there: [`S3Config`], parsed from an
//! `s3://BUCKET[/PREFIX]?endpoint=…&region=…` URL, with [`Credentials`] from the
//! environment.

use crate::error::S3Error;

/// Keys a ListObjectsV2 page asks for (S3's own maximum).
pub const LIST_PAGE_KEYS_DEFAULT: u32 = 1_000;
/// Longest time for one attempt of a request, response body included, in ms.
pub const REQUEST_TIME_MS_DEFAULT: u64 = 30_000;
/// Longest time to open a connection, in ms.
pub const CONNECT_TIME_MS_DEFAULT: u64 = 5_000;
/// Attempts after the first for a request that failed transiently (5xx, 429, no answer).
pub const RETRIES_DEFAULT: u32 = 4;
/// Chunk PUTs of one id in flight before a write waits for the oldest.
pub const PUTS_IN_FLIGHT_DEFAULT: usize = 8;
/// The most PUTs of one id in flight that can be configured.
pub const PUTS_IN_FLIGHT_MAX: usize = 64;
/// Longest prefix, in bytes (S3 keys are at most 1,024; the rest names the chunk).
pub const PREFIX_BYTES_MAX: usize = 512;
/// The region when the URL names none.
pub const REGION_DEFAULT: &str = "us-east-1";

/// Access keys. Never printed: `Debug` shows the key id only.
#[derive(Clone)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Static keys.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    /// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and (optional)
    /// `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Result<Self, S3Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Ok(Self {
                access_key_id: id,
                secret_access_key: secret,
                session_token: var("AWS_SESSION_TOKEN"),
            }),
            _ => Err(S3Error::Config(
                "the S3 blob store needs credentials: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones)"
                    .into(),
            )),
        }
    }
}

/// An object store bucket holding blob content.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// `http://host:port` or `https://host[:port]`, without a path.
    pub endpoint: String,
    /// The region requests are signed for.
    pub region: String,
    /// The bucket (addressed path-style: `{endpoint}/{bucket}/{key}`).
    pub bucket: String,
    /// Put before every key: empty, or ending in `/`.
    pub prefix: String,
    /// Access keys.
    pub credentials: Credentials,
    /// Keys per ListObjectsV2 page, 1 to 1,000.
    pub list_page_keys: u32,
    /// Longest time for one attempt of a request, in ms.
    pub request_time_ms_max: u64,
    /// Longest time to open a connection, in ms.
    pub connect_time_ms_max: u64,
    /// Attempts after the first for a transient failure.
    pub retries_max: u32,
    /// Chunk PUTs of one id in flight, 1 (each write waits for its PUT) to
    /// [`PUTS_IN_FLIGHT_MAX`].
    pub puts_in_flight: usize,
}

impl S3Config {
    /// A bucket at `endpoint`, with the default limits.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        bucket: impl Into<String>,
        credentials: Credentials,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            region: region.into(),
            bucket: bucket.into(),
            prefix: String::new(),
            credentials,
            list_page_keys: LIST_PAGE_KEYS_DEFAULT,
            request_time_ms_max: REQUEST_TIME_MS_DEFAULT,
            connect_time_ms_max: CONNECT_TIME_MS_DEFAULT,
            retries_max: RETRIES_DEFAULT,
            puts_in_flight: PUTS_IN_FLIGHT_DEFAULT,
        }
    }

    /// From `s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]`. Without an endpoint the
    /// bucket is AWS's, at `https://s3.REGION.amazonaws.com`; without a region it is
    /// `us-east-1`.
    pub fn from_url(url: &str, credentials: Credentials) -> Result<Self, S3Error> {
        let bad = |why: &str| {
            S3Error::Config(format!(
                "bad S3 blob store {url:?}: {why} (expected s3://BUCKET[/PREFIX]?endpoint=http://HOST:PORT&region=NAME)"
            ))
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it must start with s3://"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let (mut endpoint, mut region) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| bad("a query value is badly encoded"))?;
            match k {
                "endpoint" => endpoint = Some(v),
                "region" => region = Some(v),
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            }
        }
        let region = region.unwrap_or_else(|| REGION_DEFAULT.to_owned());
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let mut config = Self::new(endpoint, region, bucket, credentials);
        config.prefix = prefix.to_owned();
        config.validate().map_err(|e| bad(&e))?;
        Ok(config)
    }

    /// Checks the bucket, prefix, region and endpoint; adds the prefix's final `/`.
    pub(crate) fn validate(&mut self) -> Result<(), String> {
        let b = &self.bucket;
        if !(3..=63).contains(&b.len())
            || !b
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        {
            return Err(format!(
                "bucket {b:?} must be 3 to 63 characters of a-z, 0-9, '-' and '.'"
            ));
        }
        if !self.prefix.is_empty() && !self.prefix.ends_with('/') {
            self.prefix.push('/');
        }
        let p = &self.prefix;
        if p.len() > PREFIX_BYTES_MAX
            || p.starts_with('/')
            || p.contains("//")
            || !p
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.~/".contains(&c))
        {
            return Err(format!(
                "prefix {p:?} must be at most {PREFIX_BYTES_MAX} characters of A-Z, a-z, 0-9, \
                 '-', '_', '.', '~' and '/' (not leading, not doubled)"
            ));
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return Err(format!("region {:?} is not a region name", self.region));
        }
        let e = self.endpoint.trim_end_matches('/');
        let authority = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .ok_or_else(|| format!("endpoint {e:?} must start with http:// or https://"))?;
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "endpoint {e:?} must be http(s)://HOST[:PORT], without a path"
            ));
        }
        self.endpoint = e.to_owned();
        if !(1..=LIST_PAGE_KEYS_DEFAULT).contains(&self.list_page_keys) {
            return Err(format!(
                "list page of {} keys: must be 1 to {LIST_PAGE_KEYS_DEFAULT}",
                self.list_page_keys
            ));
        }
        if !(1..=PUTS_IN_FLIGHT_MAX).contains(&self.puts_in_flight) {
            return Err(format!(
                "{} PUTs in flight: must be 1 to {PUTS_IN_FLIGHT_MAX}",
                self.puts_in_flight
            ));
        }
        Ok(())
    }

    /// Where the content is, for messages: `s3://bucket/prefix at endpoint`.
    pub fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }
}

/// `%XX` sequences decoded (and `+` kept: it is a plus in a URL we are given).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials::new("id", "secret")
    }

    #[test]
    fn urls_name_bucket_prefix_endpoint_and_region() {
        let c = S3Config::from_url(
            "s3://weft-blobs/node/a?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1",
            creds(),
        )
        .unwrap();
        assert_eq!(c.bucket, "weft-blobs");
        assert_eq!(c.prefix, "node/a/");
        assert_eq!(c.endpoint, "http://127.0.0.1:9000");
        assert_eq!(c.region, "eu-west-1");

        let c = S3Config::from_url("s3://weft-blobs?endpoint=http://minio:9000/", creds()).unwrap();
        assert_eq!((c.prefix.as_str(), c.region.as_str()), ("", "us-east-1"));
        assert_eq!(c.endpoint, "http://minio:9000");

        let c = S3Config::from_url("s3://weft-blobs/p/", creds()).unwrap();
        assert_eq!(c.endpoint, "https://s3.us-east-1.amazonaws.com");
        assert_eq!(c.prefix, "p/");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("http://b/x", "s3://"),
            ("s3://B?endpoint=http://x", "bucket"),
            ("s3://ab", "bucket"),
            ("s3://bucket/a b", "prefix"),
            ("s3://bucket//x", "prefix"),
            ("s3://bucket?endpoint=ftp://x", "endpoint"),
            ("s3://bucket?endpoint=http://x/path", "endpoint"),
            ("s3://bucket?endpoint=http://u:p@x", "endpoint"),
            ("s3://bucket?region=a/b", "region"),
            ("s3://bucket?secret=x", "unknown parameter"),
            ("s3://bucket?endpoint=%zz", "encoded"),
        ] {
            let e = S3Config::from_url(url, creds()).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn limits_out_of_range_are_refused() {
        let mut c = S3Config::new("http://x:1", "r", "bkt", creds());
        c.puts_in_flight = 0;
        assert!(c.validate().unwrap_err().contains("PUTs in flight"));
        let mut c = S3Config::new("http://x:1", "r", "bkt", creds());
        c.list_page_keys = 1_001;
        assert!(c.validate().unwrap_err().contains("list page"));
        let mut c = S3Config::new("http://x:1", "r", "bkt", creds());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn credentials_never_show_their_secret() {
        let shown = format!("{:?}", S3Config::new("http://x", "r", "bkt", creds()));
        assert!(
            shown.contains("id") && !shown.contains("secret\""),
            "{shown}"
        );
        assert!(!shown.contains("\"secret\""));
    }
}
