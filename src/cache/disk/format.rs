//! What a cache file looks like, and which names may become paths.
//!
//! A file is `<dir>/<silo>/<ab>/<cd>/<hash>`: a fixed 64-byte header, pingora's serialized
//! cache meta, zero padding (room for `update_meta`), then the body.
//!
//! ```text
//!  0  8  magic  89 'S' 'H' 'M' 'R' 'C' 0D 0A
//!  8  2  version (1)
//! 10  2  flags (bit 0: body CRC-32 present)
//! 12  4  header length = offset of the body
//! 16  8  body length
//! 24  4  body CRC-32
//! 28  4  meta "internal" length      32  4  meta "header" length
//! 36  1  silo (0 _images, 1 _thumbs) 37 16  the image's md5 (must match the path)
//! 53  7  reserved, zero
//! 60  4  CRC-32 of every header byte except these four (fixed part, meta, padding)
//! ```
//!
//! All numbers are little-endian. The file length must be exactly `header + body`:
//! anything else is a miss and the file is deleted. Files are written under
//! `<dir>/.tmp/` and renamed into place only once complete.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use http::header;
use pingora_cache::CacheMeta;
use pingora_error::Result;
use pingora_http::ResponseHeader;

pub(crate) const MAGIC: [u8; 8] = *b"\x89SHMRC\r\n";
pub(crate) const VERSION: u16 = 1;
pub(crate) const FIXED_LEN: usize = 64;
const FLAG_BODY_CRC: u16 = 1;
/// Spare zero bytes after the meta so that a revalidated meta can be rewritten in place.
const SLACK: usize = 128;
/// Largest header we accept; a real one is a few hundred bytes.
pub(crate) const MAX_HEADER_LEN: usize = 256 << 10;
/// How long an adopted file is fresh for (content is addressed by its hash).
const ADOPTED_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

pub use crate::cache::meta::MetaBytes;
pub use crate::object::{Md5, ObjectRef, Silo};

/// Where an object lives in the cache directory.
impl ObjectRef {
    /// `<silo>/<ab>/<cd>`, relative to the cache directory.
    pub fn rel_dir(&self) -> PathBuf {
        let hex = self.hex();
        Path::new(self.silo.as_str())
            .join(&hex[0..2])
            .join(&hex[2..4])
    }

    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(self.rel_dir()).join(&*self.hex())
    }

    /// `<silo>/<ab>/<cd>/<hash>`, relative to the cache directory, as a C string on the
    /// stack: what a hit opens ([`super::root`]), without allocating a path.
    pub(crate) fn rel_path_c(&self) -> RelPath {
        let hex = self.hex();
        let hex = hex.as_bytes();
        let silo = self.silo.as_str().as_bytes();
        let mut buf = [0u8; RelPath::CAP];
        let mut at = 0;
        for part in [silo, b"/", &hex[0..2], b"/", &hex[2..4], b"/", hex] {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        RelPath { buf, len: at }
    }

    /// Index of this object's leaf directory among all `2 * 65536` of them.
    pub(crate) fn dir_slot(&self) -> usize {
        usize::from(self.silo.to_byte()) << 16
            | usize::from(self.md5.0[0]) << 8
            | usize::from(self.md5.0[1])
    }
}

/// [`ObjectRef::rel_path_c`]: at most `_thumbs/ab/cd/` and 32 hex digits, and a NUL.
pub(crate) struct RelPath {
    buf: [u8; RelPath::CAP],
    len: usize,
}

impl RelPath {
    const CAP: usize = 48;

    /// `None` only if a NUL were inside (silo names and hex digits hold none).
    pub(crate) fn as_c_str(&self) -> Option<&std::ffi::CStr> {
        std::ffi::CStr::from_bytes_with_nul(&self.buf[..=self.len]).ok()
    }
}

/// A parsed, checked header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub header_len: u64,
    pub body_len: u64,
    pub body_crc: Option<u32>,
    pub obj: ObjectRef,
    pub meta: MetaBytes,
}

/// Why a file is not a valid cache file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Corrupt {
    #[error("bad magic")]
    Magic,
    #[error("unknown format version {0}")]
    Version(u16),
    #[error("header lengths out of range")]
    Lengths,
    #[error("header checksum mismatch")]
    HeaderCrc,
    #[error("header names another object than its path")]
    WrongObject,
    #[error("file is {actual} bytes, header says {expected}")]
    Length { actual: u64, expected: u64 },
    #[error("body checksum mismatch")]
    BodyCrc,
    #[error("not a media file shimmer recognises")]
    UnknownLegacy,
    #[error("adopted file is truncated")]
    TruncatedLegacy,
}

/// Header length for a meta of `meta_len` bytes.
pub(crate) fn header_len_for(meta_len: usize) -> usize {
    FIXED_LEN + meta_len + SLACK
}

fn crc_of(buf: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[..60]);
    h.update(&buf[FIXED_LEN..]);
    h.finalize()
}

/// Encodes a header of exactly `header_len` bytes (which must fit the meta).
pub(crate) fn encode(
    obj: &ObjectRef,
    meta: &MetaBytes,
    header_len: usize,
    body_len: u64,
    body_crc: Option<u32>,
) -> Option<Vec<u8>> {
    if header_len < FIXED_LEN + meta.len() || header_len > MAX_HEADER_LEN {
        return None;
    }
    let mut buf = vec![0u8; header_len];
    buf[0..8].copy_from_slice(&MAGIC);
    buf[8..10].copy_from_slice(&VERSION.to_le_bytes());
    let flags = if body_crc.is_some() { FLAG_BODY_CRC } else { 0 };
    buf[10..12].copy_from_slice(&flags.to_le_bytes());
    buf[12..16].copy_from_slice(&u32::try_from(header_len).ok()?.to_le_bytes());
    buf[16..24].copy_from_slice(&body_len.to_le_bytes());
    buf[24..28].copy_from_slice(&body_crc.unwrap_or(0).to_le_bytes());
    buf[28..32].copy_from_slice(&u32::try_from(meta.internal.len()).ok()?.to_le_bytes());
    buf[32..36].copy_from_slice(&u32::try_from(meta.header.len()).ok()?.to_le_bytes());
    buf[36] = obj.silo.to_byte();
    buf[37..53].copy_from_slice(&obj.md5.0);
    let i = FIXED_LEN + meta.internal.len();
    buf[FIXED_LEN..i].copy_from_slice(&meta.internal);
    buf[i..i + meta.header.len()].copy_from_slice(&meta.header);
    let crc = crc_of(&buf);
    buf[60..64].copy_from_slice(&crc.to_le_bytes());
    Some(buf)
}

/// Whether `head` starts with our magic, allowing two flipped bytes: a damaged header
/// of ours must be deleted, never mistaken for an adoptable legacy file.
pub(crate) fn looks_ours(head: &[u8]) -> bool {
    let n = head.len().min(MAGIC.len());
    let same = head[..n]
        .iter()
        .zip(MAGIC)
        .filter(|(a, b)| **a == *b)
        .count();
    n == MAGIC.len() && same + 2 >= MAGIC.len()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The header length a file claims, from its first [`FIXED_LEN`] bytes (to know how
/// much to read before [`decode`]).
pub(crate) fn claimed_header_len(head: &[u8]) -> Result<usize, Corrupt> {
    if head.len() < FIXED_LEN {
        return Err(Corrupt::Lengths);
    }
    let len = u32_at(head, 12) as usize;
    if !(FIXED_LEN..=MAX_HEADER_LEN).contains(&len) {
        return Err(Corrupt::Lengths);
    }
    Ok(len)
}

/// Checks and parses a header; `buf` holds at least the claimed header length.
pub(crate) fn decode(buf: &[u8], expected: &ObjectRef) -> Result<Header, Corrupt> {
    if buf.len() < FIXED_LEN || buf[0..8] != MAGIC {
        return Err(Corrupt::Magic);
    }
    let header_len = claimed_header_len(buf)?;
    if buf.len() < header_len {
        return Err(Corrupt::Lengths);
    }
    let buf = &buf[..header_len];
    if crc_of(buf) != u32_at(buf, 60) {
        return Err(Corrupt::HeaderCrc);
    }
    let version = u16::from_le_bytes([buf[8], buf[9]]);
    if version != VERSION {
        return Err(Corrupt::Version(version));
    }
    let flags = u16::from_le_bytes([buf[10], buf[11]]);
    let mut body = [0u8; 8];
    body.copy_from_slice(&buf[16..24]);
    let body_len = u64::from_le_bytes(body);
    let internal_len = u32_at(buf, 28) as usize;
    let resp_len = u32_at(buf, 32) as usize;
    let meta_end = FIXED_LEN
        .checked_add(internal_len)
        .and_then(|n| n.checked_add(resp_len))
        .ok_or(Corrupt::Lengths)?;
    if meta_end > header_len || buf[53..60] != [0; 7] {
        return Err(Corrupt::Lengths);
    }
    let mut md5 = [0u8; 16];
    md5.copy_from_slice(&buf[37..53]);
    let obj = ObjectRef::new(
        Silo::from_byte(buf[36]).ok_or(Corrupt::WrongObject)?,
        Md5(md5),
    );
    if obj != *expected {
        return Err(Corrupt::WrongObject);
    }
    let split = FIXED_LEN + internal_len;
    Ok(Header {
        header_len: header_len as u64,
        body_len,
        body_crc: (flags & FLAG_BODY_CRC != 0).then(|| u32_at(buf, 24)),
        obj,
        meta: MetaBytes {
            internal: buf[FIXED_LEN..split].to_vec(),
            header: buf[split..meta_end].to_vec(),
        },
    })
}

/// The meta served for an adopted shm-cached file: 200, the sniffed Content-Type, its
/// size, Last-Modified from its mtime and the hash as ETag (as the proxy sets on a miss).
pub(crate) fn adopted_meta(
    obj: &ObjectRef,
    content_type: &str,
    len: u64,
    mtime: SystemTime,
) -> Result<CacheMeta> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, len)?;
    resp.insert_header(header::LAST_MODIFIED, httpdate::fmt_http_date(mtime))?;
    resp.insert_header(header::ETAG, format!("\"{}\"", obj.hex()))?;
    let now = SystemTime::now();
    Ok(CacheMeta::new(now + ADOPTED_TTL, now, 0, 0, resp))
}

/// A 200 meta for [`super::seed_object`]: what the proxy would have stored on a miss.
pub(crate) fn seed_meta(obj: &ObjectRef, content_type: &str, len: u64) -> Result<CacheMeta> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, len)?;
    resp.insert_header(header::ETAG, format!("\"{}\"", obj.hex()))?;
    let now = SystemTime::now();
    Ok(CacheMeta::new(now + ADOPTED_TTL, now, 0, 0, resp))
}
