//! The hop marker: what tells a mirror "another mirror of this fleet sent you this
//! request, serve it here". Trusted only when it carries a valid signature made with the
//! fleet's shared token, so a visitor cannot make a non-owner fetch from the origin or
//! fill its cache by adding `?shimmer_hop=` to a URL.
//!
//! A marker is `<expiry>.<signature>.<node>`: the Unix second it stops being valid, the
//! first 16 bytes of HMAC-SHA256(token, "<node>/<silo>/<md5>/<expiry>") in hex, and the
//! signing node. It names one object, so a captured redirect cannot open other images,
//! and it expires, so it cannot be replayed after placement moves on.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::object::ObjectRef;

/// How long a signed marker is valid: long enough for a browser to follow a redirect,
/// short enough that a replay soon stops working.
pub const HOP_VALID_SECS: u64 = 300;

/// The fleet's shared secret.
#[derive(Clone)]
pub struct FleetToken(Vec<u8>);

impl std::fmt::Debug for FleetToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetToken(..)")
    }
}

impl FleetToken {
    /// `None` for an empty secret: it would sign nothing.
    pub fn new(secret: &[u8]) -> Option<FleetToken> {
        (!secret.is_empty()).then(|| FleetToken(secret.to_vec()))
    }

    fn mac(&self, node: &str, obj: ObjectRef, expiry: u64) -> [u8; 16] {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => return [0; 16],
        };
        mac.update(node.as_bytes());
        mac.update(b"/");
        mac.update(obj.silo.as_str().as_bytes());
        mac.update(b"/");
        mac.update(obj.hex().as_bytes());
        mac.update(b"/");
        mac.update(expiry.to_string().as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// The marker `node` attaches to a request for `obj` at `now` (Unix seconds).
    pub fn sign(&self, node: &str, obj: ObjectRef, now: u64) -> String {
        let expiry = now + HOP_VALID_SECS;
        let sig = self.mac(node, obj, expiry);
        let mut out = String::with_capacity(16 + 33 + node.len());
        out.push_str(&expiry.to_string());
        out.push('.');
        for b in sig {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out.push('.');
        out.push_str(node);
        out
    }

    /// The signing node, if `marker` is a valid, unexpired signature for `obj`.
    pub fn verify<'m>(&self, marker: &'m str, obj: ObjectRef, now: u64) -> Option<&'m str> {
        let mut parts = marker.splitn(3, '.');
        let expiry: u64 = parts.next()?.parse().ok()?;
        let sig_hex = parts.next()?;
        let node = parts.next()?;
        if node.is_empty() || expiry < now || expiry > now + HOP_VALID_SECS {
            return None;
        }
        let want = self.mac(node, obj, expiry);
        let got = parse_hex16(sig_hex)?;
        // Constant time: the position of the first difference must not leak.
        let diff = want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(node)
    }
}

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{Md5, Silo};

    fn obj(silo: Silo, n: u8) -> ObjectRef {
        ObjectRef::new(silo, Md5([n; 16]))
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_signed_marker_verifies_for_its_object_only() {
        let t = FleetToken::new(b"fleet secret").expect("token");
        let m = t.sign("a", obj(Silo::Images, 1), NOW);
        assert_eq!(t.verify(&m, obj(Silo::Images, 1), NOW), Some("a"));
        assert_eq!(t.verify(&m, obj(Silo::Images, 2), NOW), None, "other image");
        assert_eq!(t.verify(&m, obj(Silo::Thumbs, 1), NOW), None, "other silo");
    }

    #[test]
    fn another_token_or_a_tampered_marker_does_not_verify() {
        let t = FleetToken::new(b"fleet secret").expect("token");
        let other = FleetToken::new(b"another secret").expect("token");
        let o = obj(Silo::Images, 1);
        let m = t.sign("a", o, NOW);
        assert_eq!(other.verify(&m, o, NOW), None);
        let renamed = m.replace(".a", ".b");
        assert_eq!(t.verify(&renamed, o, NOW), None, "node name is signed");
        let later = format!("{}{}", NOW + HOP_VALID_SECS + 1, &m[10..]);
        assert_eq!(t.verify(&later, o, NOW), None, "expiry is signed");
        for forged in ["a", "", "1.2.3", "x.y.z", &format!("{}..a", NOW + 1)] {
            assert_eq!(t.verify(forged, o, NOW), None, "{forged:?}");
        }
    }

    #[test]
    fn markers_expire() {
        let t = FleetToken::new(b"k").expect("token");
        let o = obj(Silo::Images, 3);
        let m = t.sign("node-1", o, NOW);
        assert_eq!(t.verify(&m, o, NOW + HOP_VALID_SECS), Some("node-1"));
        assert_eq!(t.verify(&m, o, NOW + HOP_VALID_SECS + 1), None);
    }

    #[test]
    fn node_names_with_dots_survive() {
        let t = FleetToken::new(b"k").expect("token");
        let o = obj(Silo::Images, 4);
        let m = t.sign("m1.example", o, NOW);
        assert_eq!(t.verify(&m, o, NOW), Some("m1.example"));
    }

    #[test]
    fn an_empty_secret_is_no_token() {
        assert!(FleetToken::new(b"").is_none());
    }
}
