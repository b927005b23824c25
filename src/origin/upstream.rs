//! The mirror's side of an origin request: what `crate::proxy` calls so its hooks stay
//! a line each. The path (template, bucket), the S3 signature, and what an S3 answer
//! means for a visitor.

use bytes::Bytes;
use http::header;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::config::Settings;
use crate::request::MediaRequest;

/// The path and query to ask the origin for.
pub fn origin_uri(media: &MediaRequest, s: &Settings) -> String {
    let path = s.origin_paths.path_for(media);
    match &s.s3 {
        Some(s3) => s3.request_path(&path),
        None => path,
    }
}

/// Last touches once the Host header is set: a visitor's `x-amz-*` headers never reach
/// the bucket (S3 refuses unsigned ones, and they could ask for other things), then
/// the signature.
pub fn finish_request(req: &mut RequestHeader, s: &Settings) -> Result<(), String> {
    let Some(s3) = &s.s3 else {
        return Ok(());
    };
    strip_amz(
        req.headers.keys().map(|k| k.as_str().to_owned()).collect(),
        |k| {
            req.remove_header(k.as_str());
        },
    );
    req.insert_header(header::HOST, s3.host_header.as_str())
        .map_err(|e| format!("host header: {e}"))?;
    s3.sign(req)
}

/// How the mirror takes an origin's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status that counts (502: fail, and fail over if another origin is left).
    pub status: u16,
    /// The body to send and cache instead of the origin's (S3's XML errors).
    pub replace_body: Option<Bytes>,
}

/// An origin's answer as the mirror treats it. For S3, a 404, or a 403 to an
/// anonymous request (a public-read bucket denies listing, so a missing key is 403),
/// is "not found"; a 403 to a signed request means the credentials are wrong or lack
/// permission: 502, never cached. S3's own `x-amz-*` headers are dropped, and an error
/// answer's XML body is replaced by a short text, so it is never cached or served as
/// content.
pub fn response(resp: &mut ResponseHeader, s: &Settings) -> Answer {
    let status = resp.status.as_u16();
    let pass = Answer {
        status,
        replace_body: None,
    };
    let Some(s3) = &s.s3 else {
        return pass;
    };
    strip_amz(
        resp.headers.keys().map(|k| k.as_str().to_owned()).collect(),
        |k| {
            resp.remove_header(k.as_str());
        },
    );
    if status < 400 {
        return pass;
    }
    let status = match status {
        403 if s3.signed() => {
            tracing::warn!(
                "S3 bucket {} refused a signed request (403): check the credential files",
                s3.bucket
            );
            return Answer {
                status: 502,
                replace_body: None,
            };
        }
        403 | 404 => 404,
        500..=599 => return pass,
        other => other,
    };
    let body = Bytes::from(match status {
        404 => "not found\n".to_owned(),
        other => format!("origin answered {other}\n"),
    });
    // Only fails for a status out of range; these are S3's own.
    let _ = resp.set_status(status);
    for h in [
        header::CONTENT_DISPOSITION,
        header::LAST_MODIFIED,
        header::TRANSFER_ENCODING,
        header::CONTENT_ENCODING,
    ] {
        resp.remove_header(&h);
    }
    let typed = resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    let sized = resp.insert_header(header::CONTENT_LENGTH, body.len());
    if typed.is_err() || sized.is_err() {
        // Cannot happen with these values; fail rather than pass S3's body on.
        return Answer {
            status: 502,
            replace_body: None,
        };
    }
    Answer {
        status,
        replace_body: Some(body),
    }
}

/// Replaces an upstream body chunk by chunk: nothing until the end, then `text`.
pub fn replace_body(body: &mut Option<Bytes>, end_of_stream: bool, text: &Bytes) {
    *body = end_of_stream.then(|| text.clone());
}

fn strip_amz(names: Vec<String>, mut remove: impl FnMut(&String)) {
    for k in names.iter().filter(|k| k.starts_with("x-amz-")) {
        remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_headers_are_found_case_insensitively() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("X-Amz-Request-Id", "1").unwrap();
        resp.insert_header("x-amz-id-2", "2").unwrap();
        resp.insert_header("content-type", "image/png").unwrap();
        let names: Vec<String> = resp.headers.keys().map(|k| k.as_str().to_owned()).collect();
        let mut removed = Vec::new();
        strip_amz(names, |k| removed.push(k.clone()));
        removed.sort();
        assert_eq!(removed, ["x-amz-id-2", "x-amz-request-id"]);
    }

    fn settings(creds: Option<&std::path::Path>) -> Settings {
        let cred_lines = creds.map_or(String::new(), |d| {
            format!(
                "      access_key_id_file: {}/id\n      secret_access_key_file: {}/secret\n",
                d.display(),
                d.display()
            )
        });
        let text = format!(
            "shimmer:\n  node: a\n  static:\n    image_ilink: \"http://x/_images/$hash/$id.$ext\"\n  \
             origin:\n    s3:\n      endpoint: \"http://127.0.0.1:9\"\n      bucket: b-1\n      \
             path_style: true\n{cred_lines}"
        );
        crate::config::parse(std::path::Path::new("t.yaml"), &text)
            .expect("config")
            .live
            .settings
    }

    fn answer(s: &Settings, status: u16) -> (Answer, ResponseHeader) {
        let mut resp = ResponseHeader::build(status, None).unwrap();
        resp.insert_header("x-amz-request-id", "1").unwrap();
        resp.insert_header("content-type", "application/xml")
            .unwrap();
        resp.insert_header("content-disposition", "inline").unwrap();
        (response(&mut resp, s), resp)
    }

    #[test]
    fn s3_statuses_map_like_http_origins() {
        let anon = settings(None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("id"), "AKID\n").unwrap();
        std::fs::write(dir.path().join("secret"), "s\n").unwrap();
        let signed = settings(Some(dir.path()));
        let media = crate::request::parse(
            &http::Method::GET,
            "/_images/e28e3076236eff37065d36416001263e/1.jpg",
            None,
            2048,
        )
        .unwrap();
        assert_eq!(
            origin_uri(&media, &anon),
            "/b-1/e2/8e/e28e3076236eff37065d36416001263e"
        );
        let (a, resp) = answer(&anon, 403);
        assert_eq!((a.status, resp.status.as_u16()), (404, 404));
        assert_eq!(a.replace_body.as_deref(), Some(&b"not found\n"[..]));
        assert!(resp.headers.get("x-amz-request-id").is_none());
        assert!(resp.headers.get("content-disposition").is_none());
        assert_eq!(resp.headers.get("content-length").unwrap(), "10");
        assert_eq!(answer(&signed, 403).0.status, 502);
        assert_eq!(answer(&signed, 404).0.status, 404);
        let (a, _) = answer(&anon, 503);
        assert_eq!((a.status, a.replace_body), (503, None));
        let (a, resp) = answer(&anon, 200);
        assert_eq!((a.status, a.replace_body), (200, None));
        assert!(resp.headers.get("x-amz-request-id").is_none());
        assert_eq!(resp.headers.get("content-disposition").unwrap(), "inline");
        let (a, _) = answer(&anon, 400);
        assert_eq!(
            a.replace_body.as_deref(),
            Some(&b"origin answered 400\n"[..])
        );
    }

    #[test]
    fn a_replaced_body_is_only_the_text() {
        let text = Bytes::from_static(b"not found\n");
        let mut chunk = Some(Bytes::from_static(b"<Error>"));
        replace_body(&mut chunk, false, &text);
        assert_eq!(chunk, None);
        let mut last = Some(Bytes::from_static(b"</Error>"));
        replace_body(&mut last, true, &text);
        assert_eq!(last, Some(text.clone()));
        let mut empty_end = None;
        replace_body(&mut empty_end, true, &text);
        assert_eq!(empty_end, Some(text));
    }
}
