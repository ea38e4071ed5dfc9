//! The little of S3's XML this crate reads: the keys and continuation of a
//! ListObjectsV2 page, the code and message of an error. Elements are found by name
//! (none of these nests inside another of the same name), and their text unescaped.

/// The text of the first `<name>…</name>` in `body`.
pub(crate) fn tag(body: &[u8], name: &str) -> Option<String> {
    tags(body, name).into_iter().next()
}

/// The texts of every `<name>…</name>` in `body`, in order.
pub(crate) fn tags(body: &[u8], name: &str) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Vec::new();
    };
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else {
            break;
        };
        found.push(unescape(&after[..end]));
        rest = &after[end + close.len()..];
    }
    found
}

/// XML's five named entities and numeric character references.
fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let Some(semi) = after.find(';') else {
            out.push_str(after);
            return out;
        };
        let entity = &after[1..semi];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_pages_and_errors_read_as_s3_writes_them() {
        let page = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>
<Prefix>p/ab/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>p/ab/0000000000</Key><Size>3</Size></Contents>
<Contents><Key>p/ab/0000000001</Key><Size>3</Size></Contents>
<NextContinuationToken>1a&amp;b+c=</NextContinuationToken></ListBucketResult>"#;
        assert_eq!(tags(page, "Key"), ["p/ab/0000000000", "p/ab/0000000001"]);
        assert_eq!(tag(page, "IsTruncated").as_deref(), Some("true"));
        assert_eq!(
            tag(page, "NextContinuationToken").as_deref(),
            Some("1a&b+c=")
        );
        let err = b"<Error><Code>SignatureDoesNotMatch</Code><Message>a &lt;b&gt; &#x41;&#66;</Message></Error>";
        assert_eq!(tag(err, "Code").as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(tag(err, "Message").as_deref(), Some("a <b> AB"));
        assert_eq!(tag(b"<html>oops</html>", "Code"), None);
        assert_eq!(unescape("a & b &bogus; c"), "a & b &bogus; c");
    }
}
