//! Step 1 of a request's way: is this a Shimmie media request, and for what?
//!
//! The path is checked here once, strictly, so nothing downstream ever sees a hash that
//! is not 32 lowercase hex digits or a name that could climb out of its directory.

use crate::object::{Md5, Md5Error, ObjectRef, Silo};

/// The query parameter a redirecting mirror adds so the owner never redirects again.
pub const HOP_PARAM: &str = "shimmer_hop";

/// A validated `/<silo>/<hash><rest>` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRequest {
    pub silo: Silo,
    /// Parsed once here from 32 lowercase hex digits.
    pub hash: Md5,
    /// What followed the hash in the path, as sent (still percent-encoded): empty, or
    /// starting with `/` or `.` (Shimmie's rule is `/<silo>/<hash><anything>`).
    pub rest: String,
    /// The hop marker's value, as sent (`?shimmer_hop=`): another mirror says it sent
    /// the request here. Trusted only once verified (`crate::peers::hop`).
    pub hop: Option<String>,
}

/// Why a request was refused, with the status and a short reason for the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Reject {
    Reject { status, reason }
}

impl MediaRequest {
    /// The path to ask the origin for: `/<silo>/<hash><rest>`, no query.
    pub fn origin_path(&self) -> String {
        format!("/{}/{}{}", self.silo.as_str(), &*self.hash.hex(), self.rest)
    }

    /// What is cached: content addressed, so neither the name nor the query matter.
    pub fn object(&self) -> ObjectRef {
        ObjectRef::new(self.silo, self.hash)
    }
}

/// Checks method, path and query of a request.
pub fn parse(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    max_path_bytes: usize,
) -> Result<MediaRequest, Reject> {
    if method != http::Method::GET && method != http::Method::HEAD {
        return Err(reject(405, "only GET and HEAD are served"));
    }
    if path.len() > max_path_bytes {
        return Err(reject(414, "path too long"));
    }
    let after_slash = path
        .strip_prefix('/')
        .ok_or(reject(400, "path must start with /"))?;
    let (silo_text, tail) = after_slash.split_once('/').ok_or(reject(
        404,
        "not a media path: expected /_images/<hash>/<name>",
    ))?;
    let silo = Silo::from_path_segment(silo_text)
        .ok_or(reject(404, "unknown silo: expected _images or _thumbs"))?;
    let hash = tail
        .get(..32)
        .ok_or(reject(400, "hash must be 32 hex digits"))?;
    let hash = Md5::parse(hash).map_err(|e| match e {
        Md5Error::Uppercase => reject(400, "hash must be lowercase hex"),
        Md5Error::NotHex => reject(400, "hash must be 32 hex digits"),
    })?;
    let rest = &tail[32..];
    if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('.')) {
        return Err(reject(400, "hash must be 32 hex digits"));
    }
    check_rest(rest)?;
    let hop = query.and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == HOP_PARAM).then(|| v.to_owned())
        })
    });
    Ok(MediaRequest {
        silo,
        hash,
        rest: rest.to_owned(),
        hop,
    })
}

/// The file name part is forwarded to the origin, so it must not be able to mean a
/// different path there: no encoded slashes or backslashes, no dot segments, no NUL or
/// other control characters, no broken percent-encoding.
fn check_rest(rest: &str) -> Result<(), Reject> {
    let bytes = rest.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| hex_value(*c));
            let lo = bytes.get(i + 2).and_then(|c| hex_value(*c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(reject(400, "bad percent-encoding in name"));
            };
            let d = hi << 4 | lo;
            if d == b'/' || d == b'\\' {
                return Err(reject(400, "encoded slash in name"));
            }
            decoded.push(d);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.iter().any(|b| b.is_ascii_control()) {
        return Err(reject(400, "control character in name"));
    }
    if decoded.contains(&b'\\') {
        return Err(reject(400, "backslash in name"));
    }
    if decoded
        .split(|b| *b == b'/')
        .any(|seg| seg == b"." || seg == b"..")
    {
        return Err(reject(400, "dot segment in name"));
    }
    Ok(())
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    const H: &str = "e28e3076236eff37065d36416001263e";

    fn get(path: &str) -> Result<MediaRequest, Reject> {
        parse(&Method::GET, path, None, 2048)
    }

    #[test]
    fn shimmie_link_parses() {
        let p = format!("/_images/{H}/5424912%20-%20Bocchi_the_Rock%21.jpg");
        let r = get(&p).unwrap();
        assert_eq!(r.silo, Silo::Images);
        assert_eq!(&*r.hash.hex(), H);
        assert_eq!(r.rest, "/5424912%20-%20Bocchi_the_Rock%21.jpg");
        assert!(r.hop.is_none());
        assert_eq!(r.origin_path(), p);
        assert_eq!(r.object(), ObjectRef::new(Silo::Images, r.hash));
    }

    #[test]
    fn thumbs_and_bare_hash_and_extension_forms_parse() {
        assert_eq!(
            get(&format!("/_thumbs/{H}/thumb.jpg")).unwrap().silo,
            Silo::Thumbs
        );
        assert_eq!(get(&format!("/_images/{H}")).unwrap().rest, "");
        assert_eq!(get(&format!("/_images/{H}.png")).unwrap().rest, ".png");
    }

    #[test]
    fn hop_marker_is_seen_in_any_position() {
        let p = format!("/_images/{H}/x.jpg");
        let hop = |q| parse(&Method::GET, &p, Some(q), 2048).unwrap().hop;
        assert_eq!(hop("shimmer_hop=a").as_deref(), Some("a"));
        assert_eq!(hop("x=1&shimmer_hop").as_deref(), Some(""));
        assert_eq!(hop("shimmer_hop=1.ab.c&y").as_deref(), Some("1.ab.c"));
        assert_eq!(hop("shimmer_hopx=1"), None);
        assert_eq!(hop("x=shimmer_hop"), None);
    }

    #[test]
    fn head_is_accepted_other_methods_are_405() {
        let p = format!("/_images/{H}/x.jpg");
        assert!(parse(&Method::HEAD, &p, None, 2048).is_ok());
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert_eq!(parse(&m, &p, None, 2048).unwrap_err().status, 405);
        }
    }

    #[test]
    fn malformed_paths_are_refused_with_4xx() {
        let upper = H.to_uppercase();
        let cases: Vec<(String, u16)> = vec![
            ("/".into(), 404),
            ("/favicon.ico".into(), 404),
            (format!("/_videos/{H}/x"), 404),
            (format!("/images/{H}/x"), 404),
            (format!("/_images/{upper}/x"), 400),
            (format!("/_images/{}/x", &H[..31]), 400),
            (format!("/_images/{H}0/x"), 400),
            (format!("/_images/{}g/x", &H[..31]), 400),
            (format!("/_images/{H}/../../etc/passwd"), 400),
            (format!("/_images/{H}/%2e%2e/x"), 400),
            (format!("/_images/{H}/a%2Fb"), 400),
            (format!("/_images/{H}/a%5cb"), 400),
            (format!("/_images/{H}/a%00b"), 400),
            (format!("/_images/{H}/a%0ab"), 400),
            (format!("/_images/{H}/a%zzb"), 400),
            (format!("/_images/{H}/a%4"), 400),
            (format!("/_images/{H}/{}", "a".repeat(3000)), 414),
            ("_images/x".into(), 400),
        ];
        for (path, status) in cases {
            assert_eq!(get(&path).unwrap_err().status, status, "{path}");
        }
    }

    #[test]
    fn non_ascii_hash_position_does_not_panic() {
        // A multi-byte character straddling byte 32 must not slice inside a char.
        let p = format!("/_images/{}é/x", &H[..31]);
        assert_eq!(get(&p).unwrap_err().status, 400);
    }
}
