//! What a mirror stores and serves: an object is a silo and an md5, parsed once.
//!
//! The request path's 32 hex digits become an [`Md5`] in `request::parse` and travel as
//! that (or as an [`ObjectRef`]) everywhere after: bans, the cache key, the disk path,
//! owners, purges and the admin API. This module holds the one hex parser; text from a
//! database may be in either case and is normalised at that boundary
//! ([`Md5::parse_any_case`]); text from a request must already be lowercase.

use std::fmt;
use std::ops::Deref;

use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::CacheKey;

/// The two media trees a mirror serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Silo {
    /// `/_images/<hash>/...`, placed by `image_ilink`.
    Images = 0,
    /// `/_thumbs/<hash>/...`, placed by `image_tlink`.
    Thumbs = 1,
}

impl Silo {
    /// Both silos.
    pub const ALL: [Silo; 2] = [Silo::Images, Silo::Thumbs];

    /// The path segment: `"_images"` or `"_thumbs"` (also the cache's directory name).
    pub fn as_str(self) -> &'static str {
        match self {
            Silo::Images => "_images",
            Silo::Thumbs => "_thumbs",
        }
    }

    /// The silo for a path segment (`"_images"` / `"_thumbs"`, exact).
    pub fn from_path_segment(s: &str) -> Option<Silo> {
        Silo::ALL.into_iter().find(|silo| silo.as_str() == s)
    }

    /// The directory under Shimmie's data directory that holds this silo's files.
    pub fn data_dir_name(self) -> &'static str {
        match self {
            Silo::Images => "images",
            Silo::Thumbs => "thumbs",
        }
    }

    /// The byte a cache file header stores.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// The silo a cache file header's byte names.
    pub fn from_byte(b: u8) -> Option<Silo> {
        Silo::ALL.into_iter().find(|silo| silo.to_byte() == b)
    }
}

impl fmt::Display for Silo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why text is not an md5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Md5Error {
    #[error("hash must be 32 hex digits")]
    NotHex,
    #[error("hash must be lowercase hex")]
    Uppercase,
}

/// An image's md5, as Shimmie names its files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Md5(pub [u8; 16]);

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl Md5 {
    /// Exactly 32 lowercase hex digits: what a request path and a cache path carry.
    pub fn parse(hex: &str) -> Result<Md5, Md5Error> {
        let b: &[u8; 32] = hex.as_bytes().try_into().map_err(|_| Md5Error::NotHex)?;
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            let (hi, lo) = (nibble(b[2 * i]), nibble(b[2 * i + 1]));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(if b.iter().all(u8::is_ascii_hexdigit) {
                    Md5Error::Uppercase
                } else {
                    Md5Error::NotHex
                });
            };
            *o = hi << 4 | lo;
        }
        Ok(Md5(out))
    }

    /// 32 hex digits in either case, surrounding whitespace ignored: for text read from
    /// a database or typed by an admin, where Shimmie's own comparisons ignore case.
    pub fn parse_any_case(text: &str) -> Option<Md5> {
        let t = text.trim();
        if t.bytes().all(|b| !b.is_ascii_uppercase()) {
            return Md5::parse(t).ok();
        }
        Md5::parse(&t.to_ascii_lowercase()).ok()
    }

    /// The 32 lowercase hex digits, without allocating.
    pub fn hex(&self) -> Hex {
        let mut out = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX_DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = HEX_DIGITS[usize::from(b & 15)];
        }
        Hex(out)
    }

    /// As one big-endian number (the ban list's sorted representation).
    pub fn to_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    pub fn from_u128(n: u128) -> Md5 {
        Md5(n.to_be_bytes())
    }
}

impl fmt::Debug for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Md5({})", &*self.hex())
    }
}

impl fmt::Display for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// 32 lowercase hex digits on the stack; derefs to `str`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex([u8; 32]);

impl Deref for Hex {
    type Target = str;
    fn deref(&self) -> &str {
        // Only ASCII hex digits are ever written, so this cannot fail; the fallback keeps
        // the no-panic rule without an unwrap.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// Mixed into a thumbnail's key hash: an image and its thumbnail share the md5, and the
/// cache must tell them apart without hashing again. A thumbnail key can then equal an
/// image key only if two images' md5s differ by exactly this mask, which is as unlikely
/// as a collision of pingora's own 128-bit key hashes.
const THUMB_KEY_MASK: [u8; 16] = [0x5c; 16];

/// One cached object: a silo and an md5. The only thing that becomes a cache path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub silo: Silo,
    pub md5: Md5,
}

impl ObjectRef {
    pub fn new(silo: Silo, md5: Md5) -> ObjectRef {
        ObjectRef { silo, md5 }
    }

    /// The 32 hex digits of the md5.
    pub fn hex(&self) -> Hex {
        self.md5.hex()
    }

    /// The pingora key this object is stored under. Its hash is the md5 itself (masked
    /// for thumbnails, see [`THUMB_KEY_MASK`]) through `set_primary_bin_override`, so no
    /// tier hashes a key string; the silo rides in the user tag so a storage can recover
    /// the object from the key alone ([`ObjectRef::from_key`]). The primary is empty:
    /// only keys made here look like this.
    pub fn cache_key(&self) -> CacheKey {
        let mut key = CacheKey::new(Vec::new(), self.silo.as_str());
        key.set_primary_bin_override(self.key_hash());
        key
    }

    /// The hash of [`Self::cache_key`]: what the cache lock, the tiers, purges and the
    /// disk index go by.
    pub fn key_hash(&self) -> HashBinary {
        match self.silo {
            Silo::Images => self.md5.0,
            Silo::Thumbs => mask(self.md5.0),
        }
    }

    /// The object a pingora key names, if it was made by [`Self::cache_key`] (no
    /// variance, an empty primary, a silo as user tag). No parsing, no hashing.
    pub fn from_key(key: &CacheKey) -> Option<ObjectRef> {
        let silo = Silo::from_path_segment(key.user_tag())?;
        if key.variance_bin().is_some() || !key.primary_key().is_empty() {
            return None;
        }
        let bin = key.primary_bin();
        let md5 = match silo {
            Silo::Images => bin,
            Silo::Thumbs => mask(bin),
        };
        Some(ObjectRef::new(silo, Md5(md5)))
    }

    /// The two objects a bare key hash may name: the image whose md5 it is, or the
    /// thumbnail whose masked md5 it is. A tier that keeps only key hashes (the memory
    /// tier) cannot say which; the reconcile checks both md5s.
    pub fn for_key_hash(key: &HashBinary) -> [ObjectRef; 2] {
        [
            ObjectRef::new(Silo::Images, Md5(*key)),
            ObjectRef::new(Silo::Thumbs, Md5(mask(*key))),
        ]
    }
}

fn mask(mut bin: HashBinary) -> HashBinary {
    for (b, m) in bin.iter_mut().zip(THUMB_KEY_MASK) {
        *b ^= m;
    }
    bin
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e28e3076236eff37065d36416001263e";

    #[test]
    fn md5_round_trips_through_hex_and_u128() {
        let m = Md5::parse(H).expect("md5");
        assert_eq!(&*m.hex(), H);
        assert_eq!(m.to_string(), H);
        assert_eq!(Md5::from_u128(m.to_u128()), m);
        assert_eq!(m.to_u128() >> 120, 0xe2);
    }

    #[test]
    fn request_hex_must_be_lowercase_and_exactly_32_digits() {
        assert_eq!(Md5::parse(&H.to_uppercase()), Err(Md5Error::Uppercase));
        assert_eq!(Md5::parse(&H[..31]), Err(Md5Error::NotHex));
        assert_eq!(Md5::parse(&format!("{H}0")), Err(Md5Error::NotHex));
        assert_eq!(Md5::parse(&format!("{}g", &H[..31])), Err(Md5Error::NotHex));
        assert_eq!(Md5::parse(""), Err(Md5Error::NotHex));
        // A multi-byte character is not a hex digit, and never sliced.
        assert_eq!(Md5::parse(&format!("{}é", &H[..30])), Err(Md5Error::NotHex));
    }

    #[test]
    fn database_hex_is_normalised_to_lowercase() {
        let m = Md5::parse(H).ok();
        assert_eq!(Md5::parse_any_case(&H.to_uppercase()), m);
        assert_eq!(Md5::parse_any_case(&format!(" {H}\n")), m);
        assert_eq!(Md5::parse_any_case("not a hash"), None);
    }

    #[test]
    fn key_hash_is_the_md5_and_tells_the_silos_apart() {
        let md5 = Md5::parse(H).expect("md5");
        let image = ObjectRef::new(Silo::Images, md5);
        let thumb = ObjectRef::new(Silo::Thumbs, md5);
        assert_eq!(image.key_hash(), md5.0);
        assert_ne!(image.key_hash(), thumb.key_hash());
        for obj in [image, thumb] {
            let key = obj.cache_key();
            assert_eq!(key.primary_bin(), obj.key_hash());
            assert_eq!(key.combined_bin(), obj.key_hash());
            assert_eq!(ObjectRef::from_key(&key), Some(obj));
            assert!(ObjectRef::for_key_hash(&obj.key_hash()).contains(&obj));
        }
    }

    #[test]
    fn keys_not_made_here_name_no_object() {
        assert_eq!(ObjectRef::from_key(&CacheKey::new("x", "")), None);
        assert_eq!(ObjectRef::from_key(&CacheKey::new("x", "_images")), None);
        let mut varied = ObjectRef::new(Silo::Images, Md5([7; 16])).cache_key();
        varied.set_variance_key([1; 16]);
        assert_eq!(ObjectRef::from_key(&varied), None);
    }

    #[test]
    fn silo_bytes_and_names_round_trip() {
        for silo in Silo::ALL {
            assert_eq!(Silo::from_byte(silo.to_byte()), Some(silo));
            assert_eq!(Silo::from_path_segment(silo.as_str()), Some(silo));
        }
        assert_eq!(Silo::from_byte(2), None);
        assert_eq!(Silo::from_path_segment("images"), None);
    }
}
