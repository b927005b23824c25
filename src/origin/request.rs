//! Pure request parsing for the origin: the URL path, `Range`, and the conditional
//! headers. Nothing here touches the filesystem or the network, so it is tested
//! exhaustively here and the server code only strings the pieces together.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The path that reports the request counters.
pub(crate) const STATS_PATH: &str = "/_origin/stats";

pub(crate) use crate::object::{Md5, Silo};

/// Where Shimmie may keep a file: one split level (`ab/<hash>`, the default) or two
/// (`ab/cd/<hash>`), in the order to try them. Holding an [`Md5`] is the only way to get
/// a path, so no request byte but these 32 hex digits reaches the filesystem.
pub(crate) fn candidates(root: &Path, silo: Silo, hash: Md5) -> [PathBuf; 2] {
    let h = hash.hex();
    let base = root.join(silo.data_dir_name()).join(&h[0..2]);
    [base.join(&*h), base.join(&h[2..4]).join(&*h)]
}

/// What a request path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/_images/<hash>...` or `/_thumbs/<hash>...` with a valid hash.
    Media { silo: Silo, hash: Md5 },
    /// A media silo, but what follows is not a valid hash: 400.
    BadHash(Silo),
    /// The counters endpoint.
    Stats,
    /// Anything else: 404.
    Unknown,
}

impl Route {
    /// Whether this request counts as a media request in the stats.
    pub(crate) fn is_media(&self) -> bool {
        matches!(self, Route::Media { .. } | Route::BadHash(_))
    }
}

/// Route a request path (the URI path, without the query). Shimmie serves
/// `/_images/<hash><anything>`; we require the hash to end the path or be followed by
/// `/` or `.` so that a 33-character "hash" is not silently truncated.
pub(crate) fn route(path: &str) -> Route {
    if path == STATS_PATH {
        return Route::Stats;
    }
    let (silo, rest) = if let Some(rest) = path.strip_prefix("/_images") {
        (Silo::Images, rest)
    } else if let Some(rest) = path.strip_prefix("/_thumbs") {
        (Silo::Thumbs, rest)
    } else {
        return Route::Unknown;
    };
    let rest = match rest.as_bytes() {
        [] => return Route::BadHash(silo),
        [b'/', rest @ ..] => rest,
        // `/_imagesfoo` is some other path, not a malformed media one.
        _ => return Route::Unknown,
    };
    let Some((hash, tail)) = rest.split_at_checked(32) else {
        return Route::BadHash(silo);
    };
    if !matches!(tail.first(), None | Some(b'/') | Some(b'.')) {
        return Route::BadHash(silo);
    }
    match std::str::from_utf8(hash).map(Md5::parse) {
        Ok(Ok(hash)) => Route::Media { silo, hash },
        _ => Route::BadHash(silo),
    }
}

/// One byte range as the client wrote it (RFC 9110 §14.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeSpec {
    /// `first-last`, both inclusive, `last >= first`.
    Bounded(u64, u64),
    /// `first-`
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// Parse a `Range` value. `None` means "ignore it and send the whole file": an
/// unknown unit, a syntax error, or several ranges (serving 200 instead of
/// multipart/byteranges is always allowed).
pub(crate) fn parse_range(value: &[u8]) -> Option<RangeSpec> {
    let value = std::str::from_utf8(value).ok()?;
    let (unit, set) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    // The list syntax allows empty elements (`bytes=0-1,`); only real ones count.
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let spec = specs.next()?;
    if specs.next().is_some() {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    match (first.is_empty(), last.is_empty()) {
        (true, true) => None,
        (true, false) => Some(RangeSpec::Suffix(digits(last)?)),
        (false, true) => Some(RangeSpec::From(digits(first)?)),
        (false, false) => {
            let (first, last) = (digits(first)?, digits(last)?);
            (last >= first).then_some(RangeSpec::Bounded(first, last))
        }
    }
}

/// A non-empty run of ASCII digits; values past u64 saturate, which resolves the
/// same way as the exact value would for any real file length.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, c| {
        acc.saturating_mul(10).saturating_add(u64::from(c - b'0'))
    }))
}

/// The inclusive byte span `(first, last)` a range selects from a file of `len`
/// bytes, or `None` when it selects nothing (416).
pub(crate) fn resolve(spec: RangeSpec, len: u64) -> Option<(u64, u64)> {
    let last_byte = len.checked_sub(1)?;
    match spec {
        RangeSpec::Bounded(first, last) if first < len => Some((first, last.min(last_byte))),
        RangeSpec::From(first) if first < len => Some((first, last_byte)),
        RangeSpec::Suffix(n) if n > 0 => Some((len.saturating_sub(n), last_byte)),
        _ => None,
    }
}

/// `If-Range` holds either an entity tag or a date. We send no ETag, so only an
/// exact match of our `Last-Modified` keeps the range (RFC 9110 §13.1.5).
pub(crate) fn if_range_allows(if_range: &[u8], last_modified: Option<&str>) -> bool {
    match last_modified {
        Some(lm) => if_range.trim_ascii() == lm.as_bytes(),
        None => false,
    }
}

/// Whether `If-Modified-Since` lets us answer 304: the file has not changed since
/// the given date, at the one-second resolution of HTTP dates.
pub(crate) fn not_modified_since(if_modified_since: &[u8], mtime: SystemTime) -> bool {
    let Some(since) = std::str::from_utf8(if_modified_since)
        .ok()
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    else {
        return false;
    };
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok();
    matches!((secs(mtime), secs(since)), (Some(m), Some(s)) if m <= s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const H: &str = "e28e3076236eff37065d36416001263e";

    fn media(silo: Silo) -> Route {
        Route::Media {
            silo,
            hash: Md5::parse(H).unwrap(),
        }
    }

    #[test]
    fn routes_media_paths() {
        assert_eq!(
            route(&format!(
                "/_images/{H}/5424912%20-%20Bocchi_the_Rock%21.jpg"
            )),
            media(Silo::Images)
        );
        assert_eq!(
            route(&format!("/_thumbs/{H}/thumb.jpg")),
            media(Silo::Thumbs)
        );
        assert_eq!(route(&format!("/_images/{H}")), media(Silo::Images));
        assert_eq!(route(&format!("/_images/{H}/")), media(Silo::Images));
        assert_eq!(route(&format!("/_images/{H}.png")), media(Silo::Images));
        // Anything after the hash is a name we ignore, even dot segments.
        assert_eq!(
            route(&format!("/_images/{H}/../../etc/passwd")),
            media(Silo::Images)
        );
    }

    #[test]
    fn rejects_bad_hashes_as_400() {
        let upper = H.to_uppercase();
        for p in [
            "/_images".to_string(),
            "/_images/".to_string(),
            "/_images/abc".to_string(),
            format!("/_images/{upper}/x.jpg"),
            format!("/_images/{H}0/x.jpg"),
            format!("/_images/{H}x"),
            format!("/_thumbs/{}/x", &H[..31]),
            format!("/_images/g{}/x", &H[1..]),
            "/_images/../../../../etc/passwd".to_string(),
            "/_images/..%2f..%2fetc%2fpasswd0000000000000000/x".to_string(),
            format!("/_images//{H}"),
        ] {
            assert!(matches!(route(&p), Route::BadHash(_)), "{p}");
        }
        // Multi-byte UTF-8 must not panic at the 32-byte split.
        let utf8 = format!("/_images/{}é/x", &H[..31]);
        assert!(matches!(route(&utf8), Route::BadHash(_)));
    }

    #[test]
    fn unknown_paths_are_404() {
        for p in [
            "/",
            "",
            "/_imagesx",
            "/images/abc",
            "/_origin",
            "/_origin/stats/",
            "/_IMAGES/x",
            "//_images/x",
        ] {
            assert_eq!(route(p), Route::Unknown, "{p}");
        }
        assert_eq!(route("/_origin/stats"), Route::Stats);
    }

    #[test]
    fn media_counting() {
        assert!(media(Silo::Images).is_media());
        assert!(Route::BadHash(Silo::Thumbs).is_media());
        assert!(!Route::Stats.is_media());
        assert!(!Route::Unknown.is_media());
    }

    #[test]
    fn candidate_paths_one_and_two_levels() {
        let hash = Md5::parse(H).unwrap();
        let [one, two] = candidates(Path::new("/data"), Silo::Thumbs, hash);
        assert_eq!(one, Path::new("/data/thumbs/e2").join(H));
        assert_eq!(two, Path::new("/data/thumbs/e2/8e").join(H));
    }

    #[test]
    fn range_syntax() {
        use RangeSpec::*;
        assert_eq!(parse_range(b"bytes=0-99"), Some(Bounded(0, 99)));
        assert_eq!(parse_range(b"bytes=5-5"), Some(Bounded(5, 5)));
        assert_eq!(parse_range(b"bytes=100-"), Some(From(100)));
        assert_eq!(parse_range(b"bytes=-500"), Some(Suffix(500)));
        assert_eq!(parse_range(b"bytes=-0"), Some(Suffix(0)));
        assert_eq!(parse_range(b"Bytes = 1-2"), Some(Bounded(1, 2)));
        assert_eq!(parse_range(b"bytes= 1-2 ,"), Some(Bounded(1, 2)));
        assert_eq!(
            parse_range(b"bytes=0-99999999999999999999999"),
            Some(Bounded(0, u64::MAX))
        );
    }

    #[test]
    fn range_ignored_cases() {
        for v in [
            &b"bytes=0-1,5-6"[..],
            b"bytes=",
            b"bytes=-",
            b"bytes=5-1",
            b"bytes=a-b",
            b"bytes=1-2-3",
            b"bytes=+1-2",
            b"bytes=1 -2",
            b"items=0-1",
            b"0-1",
            b"bytes=\xff-1",
        ] {
            assert_eq!(parse_range(v), None, "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn range_resolution() {
        use RangeSpec::*;
        assert_eq!(resolve(Bounded(0, 99), 1000), Some((0, 99)));
        assert_eq!(resolve(Bounded(990, 5000), 1000), Some((990, 999)));
        assert_eq!(resolve(Bounded(1000, 1000), 1000), None);
        assert_eq!(resolve(From(999), 1000), Some((999, 999)));
        assert_eq!(resolve(From(1000), 1000), None);
        assert_eq!(resolve(Suffix(10), 1000), Some((990, 999)));
        assert_eq!(resolve(Suffix(5000), 1000), Some((0, 999)));
        assert_eq!(resolve(Suffix(0), 1000), None);
        assert_eq!(resolve(Bounded(0, u64::MAX), 3), Some((0, 2)));
        // Nothing is satisfiable in an empty file.
        assert_eq!(resolve(From(0), 0), None);
        assert_eq!(resolve(Suffix(1), 0), None);
        assert_eq!(resolve(Bounded(0, 0), 0), None);
    }

    #[test]
    fn if_range() {
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(if_range_allows(lm.as_bytes(), Some(lm)));
        assert!(if_range_allows(
            b" Sun, 06 Nov 1994 08:49:37 GMT ",
            Some(lm)
        ));
        assert!(!if_range_allows(b"Sun, 06 Nov 1994 08:49:38 GMT", Some(lm)));
        assert!(!if_range_allows(b"\"some-etag\"", Some(lm)));
        assert!(!if_range_allows(lm.as_bytes(), None));
    }

    #[test]
    fn if_modified_since() {
        let mtime = UNIX_EPOCH + Duration::from_millis(784_111_777_500);
        let same = b"Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(not_modified_since(same, mtime));
        assert!(not_modified_since(b"Sun, 06 Nov 1994 08:49:38 GMT", mtime));
        assert!(!not_modified_since(b"Sun, 06 Nov 1994 08:49:36 GMT", mtime));
        assert!(!not_modified_since(b"yesterday", mtime));
        assert!(!not_modified_since(b"\xff", mtime));
    }
}
