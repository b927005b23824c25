//! Range pass-through. A Range that starts far ahead of a fill in progress would wait
//! until the fill gets there: a seek to 50% of a cold 38 MB video behind a 3 MB/s origin
//! waited 3.4 s (issue 13). Such a range is fetched from the origin at once instead,
//! with the client's Range forwarded and the origin's 206 streamed back as it comes,
//! never stored, while the fill goes on for everyone else. nginx's slice module gets
//! the same effect by caching in slices; shimmer caches whole objects, so the bytes of
//! a pass-through are fetched twice (once for it, once by the fill), which
//! `shimmer_range_passthrough_bytes_total` counts.
//!
//! Passed through: a GET with one `bytes=` range (`a-b`, `a-` or the suffix `-n`), no
//! conditional but an `If-Range` naming our ETag, for an object whose fill is in
//! progress here and has written fewer than `first byte - range_passthrough_ahead`
//! bytes. A suffix range's first byte comes from the length the fill's response
//! declared. Everything else stays with the cache: multipart ranges (rare, and cut
//! from one fill), HEAD (answered from the fill's header at once), a range the fill
//! is close to, a hit, and a cold miss (it becomes the fill).

use http::{header, Method};
use pingora::prelude::*;
use pingora_http::RequestHeader;

use super::RequestCtx;
use crate::cache::tiered::TieredStorage;
use crate::cache::FillProgress;
use crate::metrics;
use crate::request::MediaRequest;

/// The `x-cache` value of a pass-through.
pub(super) const X_CACHE: &str = "PASS-RANGE";

/// Conditionals the fill's copy answers better (a 304 or 412 needs no origin).
const CONDITIONALS: [header::HeaderName; 4] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// A request to be served by a ranged request to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RangePass {
    /// The range's first byte.
    pub(super) first: u64,
    /// What the fill had written when this was decided.
    pub(super) written: u64,
    /// The origin's status, once it answered.
    pub(super) origin_status: Option<u16>,
}

/// One byte range as a client asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-` or `first-last`.
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// Whether `req` is to be passed through: `None` leaves it to the cache.
pub(super) fn plan(
    req: &RequestHeader,
    storage: &TieredStorage,
    media: &MediaRequest,
    ahead: u64,
) -> Option<RangePass> {
    if ahead == 0 || req.method != Method::GET {
        return None;
    }
    let mut ranges = req.headers.get_all(header::RANGE).iter();
    let spec = single_range(ranges.next()?.as_bytes())?;
    if ranges.next().is_some() || CONDITIONALS.iter().any(|h| req.headers.contains_key(h)) {
        return None;
    }
    if let Some(if_range) = req.headers.get(header::IF_RANGE) {
        // Strong comparison (RFC 9110 13.1.5) with the ETag every answer carries; a date
        // or another tag means "the whole object", which the cache answers.
        if if_range.as_bytes() != format!("\"{}\"", media.hash).as_bytes() {
            return None;
        }
    }
    let progress = storage.fill_progress(&media.object().key_hash())?;
    let pass = decide(spec, progress, ahead)?;
    tracing::debug!(
        "range pass-through for {}: first byte {}, the fill is at {}",
        media.hash,
        pass.first,
        pass.written
    );
    Some(pass)
}

/// The rule itself: the range's first byte is more than `ahead` past what is written.
fn decide(spec: Spec, progress: FillProgress, ahead: u64) -> Option<RangePass> {
    let first = match spec {
        Spec::From(first) => first,
        Spec::Suffix(n) => progress.total?.saturating_sub(n),
    };
    if progress.total.is_some_and(|total| first >= total) {
        // Unsatisfiable: the cache answers 416 without the origin.
        return None;
    }
    let written = progress.written;
    (first > written.saturating_add(ahead)).then_some(RangePass {
        first,
        written,
        origin_status: None,
    })
}

/// A `Range` value with exactly one byte range, or `None` (not bytes, several ranges,
/// malformed or unsatisfiable as written: the cache's range filter answers those).
fn single_range(value: &[u8]) -> Option<Spec> {
    let value = std::str::from_utf8(value).ok()?;
    let (unit, set) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return None;
    }
    let (first, last) = set.trim().split_once('-')?;
    let number = |s: &str| -> Option<Option<u64>> {
        match s.trim() {
            "" => Some(None),
            digits if digits.bytes().all(|b| b.is_ascii_digit()) => digits.parse().ok().map(Some),
            _ => None,
        }
    };
    match (number(first)?, number(last)?) {
        (Some(first), Some(last)) if last >= first => Some(Spec::From(first)),
        (Some(first), None) => Some(Spec::From(first)),
        (None, Some(n)) if n > 0 => Some(Spec::Suffix(n)),
        _ => None,
    }
}

/// The origin request of a pass-through, before the origin's own touches (path, Host,
/// signature). The cache is off for it, so pingora leaves the client's Range in place.
pub(super) fn upstream_request(session: &mut Session, upstream: &mut RequestHeader) {
    // Checked against our ETag already; the origin's validators are not ours.
    upstream.remove_header(&header::IF_RANGE);
    // An origin that ignores Range answers 200: pingora's range filter then cuts the
    // range here, as it does for the cache (it only runs when told the upstream
    // request was changed).
    session.mark_upstream_headers_mutated_for_cache();
}

/// Notes the origin's status (the client's may differ: a 200 is cut to a 206 here).
pub(super) fn answered(ctx: &mut RequestCtx, origin_status: u16) {
    if let Some(pass) = ctx.range_pass.as_mut() {
        pass.origin_status = Some(origin_status);
    }
}

/// Counts a finished pass-through by the origin's answer: its 206, a 200 cut here, or
/// anything else (an error status, no answer at all).
pub(super) fn observe(ctx: &RequestCtx, body_bytes: usize) {
    let Some(pass) = ctx.range_pass else {
        return;
    };
    let answer = match pass.origin_status {
        Some(206) => "partial",
        Some(200) => "whole",
        _ => "error",
    };
    metrics::RANGE_PASSTHROUGHS
        .with_label_values(&[answer])
        .inc();
    metrics::RANGE_PASSTHROUGH_BYTES.inc_by(body_bytes as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn at(written: u64, total: Option<u64>) -> FillProgress {
        FillProgress { written, total }
    }

    #[test]
    fn single_ranges_are_read_and_everything_else_is_left_alone() {
        assert_eq!(single_range(b"bytes=100-"), Some(Spec::From(100)));
        assert_eq!(single_range(b"bytes=100-199"), Some(Spec::From(100)));
        assert_eq!(single_range(b"Bytes = 5 - 9 "), Some(Spec::From(5)));
        assert_eq!(single_range(b"bytes=-500"), Some(Spec::Suffix(500)));
        for other in [
            &b"bytes=0-1,5-9"[..],
            b"bytes=9-5",
            b"bytes=-0",
            b"bytes=-",
            b"bytes=",
            b"items=1-2",
            b"bytes=+1-2",
            b"bytes=a-",
            b"bytes=99999999999999999999999-",
            b"100-200",
            b"\xff",
        ] {
            assert_eq!(
                single_range(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn only_a_range_beyond_the_fill_and_the_threshold_passes() {
        let ahead = 2 * MIB;
        let progress = at(MIB, Some(40 * MIB));
        let pass = decide(Spec::From(20 * MIB), progress, ahead);
        assert_eq!(
            pass,
            Some(RangePass {
                first: 20 * MIB,
                written: MIB,
                origin_status: None,
            })
        );
        // At the threshold, or already written: the fill serves it.
        assert_eq!(decide(Spec::From(3 * MIB), progress, ahead), None);
        assert_eq!(
            decide(Spec::From(3 * MIB + 1), progress, ahead).map(|p| p.first),
            Some(3 * MIB + 1)
        );
        assert_eq!(decide(Spec::From(0), progress, ahead), None);
        // Past the end: the cache answers 416.
        assert_eq!(decide(Spec::From(40 * MIB), progress, ahead), None);
    }

    #[test]
    fn a_suffix_range_needs_the_declared_length() {
        let ahead = 2 * MIB;
        let pass = decide(Spec::Suffix(1000), at(0, Some(40 * MIB)), ahead);
        assert_eq!(pass.map(|p| p.first), Some(40 * MIB - 1000));
        assert_eq!(decide(Spec::Suffix(1000), at(0, None), ahead), None);
        // A suffix longer than the object is the whole object, from byte 0.
        assert_eq!(
            decide(Spec::Suffix(80 * MIB), at(0, Some(40 * MIB)), ahead),
            None
        );
        // Nearly written already.
        assert_eq!(
            decide(Spec::Suffix(1000), at(39 * MIB, Some(40 * MIB)), ahead),
            None
        );
    }

    #[test]
    fn without_a_declared_length_a_far_first_byte_still_passes() {
        let pass = decide(Spec::From(30 * MIB), at(MIB, None), 2 * MIB);
        assert_eq!(pass.map(|p| p.first), Some(30 * MIB));
    }
}
