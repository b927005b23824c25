//! Adopting files written by shm-cached: raw bodies at the same paths, no header.
//!
//! shm-cached wrote files in place and non-atomically, so a crash could leave one cut
//! short. Before a legacy file is served, the formats that say where they end are
//! checked: JPEG (EOI marker), PNG (IEND chunk), GIF (trailer byte), RIFF (WebP, WAV,
//! AVI: the RIFF size), ISO BMFF (MP4, MOV, AVIF, HEIF: top-level boxes add up to the
//! file) and Matroska/WebM (the Segment size, when it is known). A file that fails is
//! deleted and refetched; formats without such a structure are trusted.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes of the tail looked at for the end markers.
const TAIL: u64 = 64;

/// Whether a legacy file of `len` bytes with sniffed type `mime` looks complete.
/// `head` is the first bytes of the file (at least what sniffing read).
pub(crate) fn looks_complete(file: &File, len: u64, mime: &str, head: &[u8]) -> io::Result<bool> {
    match mime {
        "image/jpeg" => Ok(trimmed_tail(file, len)?.ends_with(&[0xFF, 0xD9])),
        "image/png" => {
            let tail = read_tail(file, len)?;
            Ok(tail.ends_with(b"\0\0\0\0IEND\xAE\x42\x60\x82"))
        }
        "image/gif" => Ok(trimmed_tail(file, len)?.last() == Some(&0x3B)),
        "image/webp" | "audio/wav" | "video/x-msvideo" => Ok(riff_complete(head, len)),
        "image/jxl" if head.starts_with(&[0xFF, 0x0A]) => Ok(true),
        "video/mp4" | "image/avif" | "image/heif" | "image/heic" | "video/x-m4v" | "audio/mp4"
        | "video/quicktime" | "video/3gpp" | "video/3gpp2" | "image/jxl" => {
            bmff_complete(file, len)
        }
        "video/webm" | "video/x-matroska" | "audio/webm" | "audio/x-matroska" => {
            Ok(matroska_complete(head, len))
        }
        _ => Ok(true),
    }
}

fn read_tail(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let n = len.min(TAIL);
    let mut buf = vec![0u8; n as usize];
    file.read_exact_at(&mut buf, len - n)?;
    Ok(buf)
}

/// The tail without trailing NUL, CR, LF or space padding that some writers add.
fn trimmed_tail(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let mut tail = read_tail(file, len)?;
    while tail
        .last()
        .is_some_and(|b| matches!(b, 0 | b'\r' | b'\n' | b' '))
    {
        tail.pop();
    }
    Ok(tail)
}

fn riff_complete(head: &[u8], len: u64) -> bool {
    let Some(size) = head.get(4..8) else {
        return false;
    };
    let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
    len >= u64::from(size) + 8
}

/// Walks the top-level boxes: complete when they end exactly at the end of the file.
fn bmff_complete(file: &File, len: u64) -> io::Result<bool> {
    let mut off = 0u64;
    for _ in 0..100_000 {
        if off == len {
            return Ok(true);
        }
        if len - off < 8 {
            return Ok(false);
        }
        let mut b = [0u8; 16];
        let n = (len - off).min(16) as usize;
        file.read_exact_at(&mut b[..n], off)?;
        let size32 = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let size = match size32 {
            0 => return Ok(true), // the last box runs to the end of the file
            1 if n == 16 => {
                let mut s = [0u8; 8];
                s.copy_from_slice(&b[8..16]);
                u64::from_be_bytes(s)
            }
            1 => return Ok(false),
            s => u64::from(s),
        };
        if size < 8 {
            return Ok(false);
        }
        off = match off.checked_add(size) {
            Some(o) if o <= len => o,
            _ => return Ok(false),
        };
    }
    Ok(false)
}

/// An EBML variable-length integer: (value, length in bytes, all value bits set).
fn vint(b: &[u8]) -> Option<(u64, usize, bool)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || b.len() < len {
        return None;
    }
    let mut v = u64::from(first) & (0xFF >> len);
    for &x in &b[1..len] {
        v = v << 8 | u64::from(x);
    }
    let all_ones = v == (1u64 << (7 * len)) - 1;
    Some((v, len, all_ones))
}

/// EBML header, then the Segment: complete when a known Segment size fits the file.
fn matroska_complete(head: &[u8], len: u64) -> bool {
    let parse = || -> Option<bool> {
        // EBML header element: ID 1A45DFA3 (4 bytes), size, payload.
        let (size, n, _) = vint(head.get(4..)?)?;
        let seg = 4 + n + usize::try_from(size).ok()?;
        if head.get(seg..seg + 4)? != [0x18, 0x53, 0x80, 0x67] {
            return Some(true); // not the layout we know: trust it
        }
        let (size, n, unknown) = vint(head.get(seg + 4..)?)?;
        if unknown {
            return Some(true); // live-written WebM: the size is not recorded
        }
        Some((seg + 4 + n) as u64 + size <= len)
    };
    parse().unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        (f, bytes.len() as u64)
    }

    fn check(mime: &str, bytes: &[u8]) -> bool {
        let (f, len) = file_with(bytes);
        looks_complete(f.as_file(), len, mime, &bytes[..bytes.len().min(8192)]).unwrap()
    }

    #[test]
    fn jpeg_needs_its_end_marker() {
        assert!(check("image/jpeg", b"\xFF\xD8\xFF\xE0abc\xFF\xD9"));
        assert!(check("image/jpeg", b"\xFF\xD8\xFF\xE0abc\xFF\xD9\0\0\n"));
        assert!(!check("image/jpeg", b"\xFF\xD8\xFF\xE0abcdef"));
    }

    #[test]
    fn png_needs_iend_and_gif_its_trailer() {
        let mut png = b"\x89PNG\r\n\x1a\nxxxx".to_vec();
        assert!(!check("image/png", &png));
        png.extend_from_slice(b"\0\0\0\0IEND\xAE\x42\x60\x82");
        assert!(check("image/png", &png));
        assert!(check("image/gif", b"GIF89a...;"));
        assert!(!check("image/gif", b"GIF89a..."));
    }

    #[test]
    fn riff_size_must_fit_the_file() {
        let mut webp = b"RIFF\x08\0\0\0WEBPVP8 ".to_vec();
        assert!(check("image/webp", &webp));
        webp[4] = 0x40;
        assert!(!check("image/webp", &webp));
    }

    #[test]
    fn mp4_boxes_must_add_up_to_the_file() {
        let mut mp4 = b"\0\0\0\x10ftypisom\0\0\0\0".to_vec();
        mp4.extend_from_slice(b"\0\0\0\x0cmdatabcd");
        assert!(check("video/mp4", &mp4));
        assert!(!check("video/mp4", &mp4[..mp4.len() - 1]));
        let open_ended = [&mp4[..16], b"\0\0\0\0mdat1234567"].concat();
        assert!(check("video/mp4", &open_ended));
    }

    #[test]
    fn webm_with_a_known_segment_size_must_hold_it() {
        // EBML header of 1 payload byte, then a Segment of 4 bytes.
        let whole = b"\x1A\x45\xDF\xA3\x81\x00\x18\x53\x80\x67\x84abcd";
        assert!(check("video/webm", whole));
        assert!(!check("video/webm", &whole[..whole.len() - 1]));
        let unknown = b"\x1A\x45\xDF\xA3\x81\x00\x18\x53\x80\x67\xFFab";
        assert!(check("video/webm", unknown));
    }

    #[test]
    fn other_types_are_trusted() {
        assert!(check("image/svg+xml", b"<svg></svg>"));
    }
}
