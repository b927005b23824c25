//! The mirror's side of an origin request: what `crate::proxy` calls so its hooks stay
//! a line each. The path (template, bucket), the S3 signature, and what an S3 answer
//! means for a visitor.

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

/// An origin's answer as the mirror treats it: the status that counts. For S3, a 404,
/// or a 403 to an anonymous request (a public-read bucket denies listing, so a
/// missing key is 403), is "not found"; a 403 to a signed request means the
/// credentials are wrong or lack permission: 502, never cached. S3's own `x-amz-*`
/// headers are dropped, and an error answer keeps no header that would make its XML
/// body look like the image.
pub fn response_status(resp: &mut ResponseHeader, s: &Settings) -> u16 {
    let status = resp.status.as_u16();
    let Some(s3) = &s.s3 else {
        return status;
    };
    strip_amz(
        resp.headers.keys().map(|k| k.as_str().to_owned()).collect(),
        |k| {
            resp.remove_header(k.as_str());
        },
    );
    if status < 400 {
        return status;
    }
    for h in [header::CONTENT_DISPOSITION, header::LAST_MODIFIED] {
        resp.remove_header(&h);
    }
    match status {
        403 if s3.signed() => {
            tracing::warn!(
                "S3 bucket {} refused a signed request (403): check the credential files",
                s3.bucket
            );
            502
        }
        403 | 404 => {
            // Only fails for a status out of range; 404 is not.
            let _ = resp.set_status(404);
            404
        }
        _ => status,
    }
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
}
