//! MurmurHash3 x86_32, PHP's `hash("murmur3a", ..)` (seed 0; PHP prints the u32
//! big-endian in hex, `hexdec` reads it back, so the u32 itself is what Shimmie uses).
//!
//! Streaming, so a node's `"<name>: "` prefix can be hashed once at build time and
//! each lookup only continues with the key: no buffer, no allocation.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix_k(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

#[inline(always)]
fn mix_h(h: u32, k: u32) -> u32 {
    (h ^ mix_k(k))
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 x86_32 of `data`.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    let mut m = Murmur3::new(seed);
    m.write(data);
    m.finish()
}

/// Incremental MurmurHash3 x86_32; `Copy`, so a midstate can be reused.
#[derive(Clone, Copy, Debug)]
pub struct Murmur3 {
    h: u32,
    /// Pending bytes of an incomplete block, little-endian.
    tail: u32,
    tail_len: u32,
    /// Total length mod 2^32, as the reference implementation keeps it.
    len: u32,
}

impl Murmur3 {
    /// A hasher with nothing written yet.
    pub const fn new(seed: u32) -> Murmur3 {
        Murmur3 {
            h: seed,
            tail: 0,
            tail_len: 0,
            len: 0,
        }
    }

    /// Feeds more bytes.
    #[inline]
    pub fn write(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u32);
        while self.tail_len > 0 {
            let Some((&b, rest)) = data.split_first() else {
                return;
            };
            self.tail |= u32::from(b) << (8 * self.tail_len);
            self.tail_len += 1;
            data = rest;
            if self.tail_len == 4 {
                self.h = mix_h(self.h, self.tail);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
        let mut blocks = data.chunks_exact(4);
        for block in &mut blocks {
            let k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
            self.h = mix_h(self.h, k);
        }
        for (i, &b) in blocks.remainder().iter().enumerate() {
            self.tail |= u32::from(b) << (8 * i);
        }
        self.tail_len = blocks.remainder().len() as u32;
    }

    /// The hash of everything written.
    #[inline]
    pub fn finish(self) -> u32 {
        let mut h = self.h;
        if self.tail_len > 0 {
            h ^= mix_k(self.tail);
        }
        fmix(h ^ self.len)
    }
}

/// Longest key [`KeyBlocks`] premixes (image hashes are 32 bytes).
pub(crate) const MAX_PREMIXED_KEY: usize = 64;

/// How many prefixes [`Lanes`] hashes side by side.
pub(crate) const LANES: usize = 4;

/// A key's 4-byte blocks, premixed once per lookup for one alignment (the
/// `prefix.len() % 4` that node prefixes leave), so each node only runs the cheap
/// `h` chain.
pub(crate) struct KeyBlocks {
    /// `mix_k` of each full block of the key after its first `(4 - t) % 4` bytes.
    words: [u32; MAX_PREMIXED_KEY / 4],
    blocks: usize,
    /// The key's first `(4 - t) % 4` bytes, shifted to complete the prefix's block.
    head: u32,
    /// `mix_k` of the final partial block (`mix_k(0) == 0`, so XOR-ing it is a no-op
    /// when there is none).
    tail: u32,
    len: u32,
    align: u32,
}

impl KeyBlocks {
    /// Premixes `key` for prefixes leaving `align` (0..4) pending bytes. `None` for
    /// keys longer than [`MAX_PREMIXED_KEY`] or shorter than 3 bytes (they cannot
    /// complete a prefix's block); stream those instead.
    #[inline]
    pub fn new(key: &[u8], align: u32) -> Option<KeyBlocks> {
        if key.len() > MAX_PREMIXED_KEY || key.len() < 3 || align > 3 {
            return None;
        }
        let t = align as usize;
        let o = (4 - t) % 4;
        let mut head = 0;
        for (i, &b) in key[..o].iter().enumerate() {
            head |= u32::from(b) << (8 * (t + i));
        }
        let rest = &key[o..];
        let mut words = [0; MAX_PREMIXED_KEY / 4];
        let mut chunks = rest.chunks_exact(4);
        for (slot, c) in words.iter_mut().zip(&mut chunks) {
            *slot = mix_k(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        }
        let mut last = 0;
        for (i, &b) in chunks.remainder().iter().enumerate() {
            last |= u32::from(b) << (8 * i);
        }
        Some(KeyBlocks {
            words,
            blocks: rest.len() / 4,
            head,
            tail: mix_k(last),
            len: key.len() as u32,
            align,
        })
    }
}

impl KeyBlocks {
    /// The alignment this was premixed for.
    pub fn alignment(&self) -> u32 {
        self.align
    }
}

impl Murmur3 {
    /// Bytes pending in the last block (`written % 4`): the [`KeyBlocks`] alignment
    /// this prefix needs.
    pub(crate) fn alignment(&self) -> u32 {
        self.tail_len
    }
}

/// Up to [`LANES`] prefix midstates of one alignment, finished side by side so the
/// independent chains overlap (and vectorise).
#[derive(Clone, Debug)]
pub(crate) struct Lanes {
    h: [u32; LANES],
    tail: [u32; LANES],
    len: [u32; LANES],
    align: u32,
}

impl Lanes {
    /// Packs `prefixes` (1 to [`LANES`], all of one alignment); unused lanes repeat
    /// the first. `None` if empty, too many, or mixed alignments.
    pub fn new(prefixes: &[Murmur3]) -> Option<Lanes> {
        let first = prefixes.first()?;
        if prefixes.len() > LANES || prefixes.iter().any(|p| p.tail_len != first.tail_len) {
            return None;
        }
        let mut lanes = Lanes {
            h: [first.h; LANES],
            tail: [first.tail; LANES],
            len: [first.len; LANES],
            align: first.tail_len,
        };
        for (i, p) in prefixes.iter().enumerate() {
            lanes.h[i] = p.h;
            lanes.tail[i] = p.tail;
            lanes.len[i] = p.len;
        }
        Some(lanes)
    }

    /// The lanes' alignment.
    pub fn alignment(&self) -> u32 {
        self.align
    }

    /// `murmur3(prefix || key)` for every lane. `None` if `key` was premixed for
    /// another alignment.
    #[inline]
    pub fn finish(&self, key: &KeyBlocks) -> Option<[u32; LANES]> {
        if key.align != self.align {
            return None;
        }
        let mut h = self.h;
        if self.align > 0 {
            for (h, &tail) in h.iter_mut().zip(&self.tail) {
                *h = mix_h(*h, tail | key.head);
            }
        }
        for &k in &key.words[..key.blocks.min(MAX_PREMIXED_KEY / 4)] {
            // One round per lane; the lanes' chains are independent, so they overlap.
            for h in &mut h {
                *h = (*h ^ k)
                    .rotate_left(13)
                    .wrapping_mul(5)
                    .wrapping_add(0xe654_6b64);
            }
        }
        for (h, &len) in h.iter_mut().zip(&self.len) {
            *h = fmix(*h ^ key.tail ^ len.wrapping_add(key.len));
        }
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_shimmie_published_values() {
        assert_eq!(murmur3_32(b"foo", 0), 0xf6a5_c420);
        assert_eq!(murmur3_32(b"foo: 7ac19c10d6859415", 0), 0xc525_2d06);
    }

    #[test]
    fn matches_reference_vectors() {
        let vectors: &[(&[u8], u32, u32)] = &[
            (b"", 0, 0),
            (b"", 1, 0x514E_28B7),
            (b"", 0xffff_ffff, 0x81F1_6F39),
            (b"\0\0\0\0", 0, 0x2362_F9DE),
            (b"aaaa", 0x9747_b28c, 0x5A97_808A),
            (b"aaa", 0x9747_b28c, 0x283E_0130),
            (b"aa", 0x9747_b28c, 0x5D21_1726),
            (b"a", 0x9747_b28c, 0x7FA0_9EA6),
            (b"abcd", 0x9747_b28c, 0xF047_8627),
            (b"abc", 0x9747_b28c, 0xC84A_62DD),
            (b"ab", 0x9747_b28c, 0x7487_5592),
            (b"Hello, world!", 0x9747_b28c, 0x2488_4CBA),
            (b"Hello, world!", 0, 0xC036_3E43),
            (
                b"The quick brown fox jumps over the lazy dog",
                0x9747_b28c,
                0x2FA8_26CD,
            ),
            (b"\xff\xff\xff\xff", 0, 0x7629_3B50),
            (b"\x21\x43\x65\x87", 0, 0xF55B_516B),
            (b"\x21\x43\x65\x87", 0x5082_EDEE, 0x2362_F9DE),
            (b"\x21\x43\x65", 0, 0x7E4A_8634),
            (b"\x21\x43", 0, 0xA0F7_B07A),
            (b"\x21", 0, 0x7266_1CF4),
            (b"\0\0\0", 0, 0x85F0_B427),
            (b"\0\0", 0, 0x30F4_C306),
            (b"\0", 0, 0x514E_28B7),
        ];
        for &(data, seed, want) in vectors {
            assert_eq!(murmur3_32(data, seed), want, "{data:?} seed {seed:#x}");
        }
    }

    #[test]
    fn streaming_equals_one_shot_at_every_split() {
        let data = b"node-7: d41d8cd98f00b204e9800998ecf8427e";
        let whole = murmur3_32(data, 0);
        for a in 0..=data.len() {
            for b in a..=data.len() {
                let mut m = Murmur3::new(0);
                m.write(&data[..a]);
                m.write(&data[a..b]);
                m.write(&data[b..]);
                assert_eq!(m.finish(), whole, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn empty_writes_change_nothing() {
        let mut m = Murmur3::new(0);
        m.write(b"fo");
        m.write(b"");
        m.write(b"o");
        m.write(b"");
        assert_eq!(m.finish(), 0xf6a5_c420);
    }

    #[test]
    fn lanes_equal_streaming() {
        let key = b"d41d8cd98f00b204e9800998ecf8427e-and-some-more-bytes-to-64-long!";
        for align in 0..4u32 {
            let prefixes: Vec<Murmur3> = (0..LANES)
                .map(|i| {
                    let mut m = Murmur3::new(0);
                    let len = align as usize + 4 * i;
                    m.write(&vec![b'a' + i as u8; len]);
                    m
                })
                .collect();
            for n in 1..=LANES {
                let lanes = Lanes::new(&prefixes[..n]).unwrap();
                for key_len in 3..=key.len() {
                    let k = &key[..key_len];
                    let blocks = KeyBlocks::new(k, align).unwrap();
                    let got = lanes.finish(&blocks).unwrap();
                    for (i, p) in prefixes[..n].iter().enumerate() {
                        let mut s = *p;
                        s.write(k);
                        assert_eq!(got[i], s.finish(), "align {align} lane {i} len {key_len}");
                    }
                }
            }
        }
    }

    #[test]
    fn premixing_refuses_short_and_long_keys() {
        assert!(KeyBlocks::new(b"ab", 0).is_none());
        assert!(KeyBlocks::new(&[b'x'; MAX_PREMIXED_KEY + 1], 0).is_none());
        assert!(KeyBlocks::new(&[b'x'; MAX_PREMIXED_KEY], 3).is_some());
        assert!(KeyBlocks::new(b"abc", 4).is_none());
    }

    #[test]
    fn lanes_refuse_mixed_alignments_and_overflow() {
        let mut a = Murmur3::new(0);
        a.write(b"ab");
        let b = Murmur3::new(0);
        assert!(Lanes::new(&[a, b]).is_none());
        assert!(Lanes::new(&[]).is_none());
        assert!(Lanes::new(&[b; LANES + 1]).is_none());
        let lanes = Lanes::new(&[a]).unwrap();
        assert!(lanes.finish(&KeyBlocks::new(b"abcd", 0).unwrap()).is_none());
    }
}
