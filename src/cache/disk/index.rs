//! The in-memory index of the disk tier: key hash -> object, in exact LRU order.
//!
//! Eviction policy: **LRU** (least recently used first). Every disk hit and every
//! completed fill moves the object to the most-recently-used end; eviction takes from
//! the other end. The disk sees only what the memory tier (TinyLFU + S3-FIFO, scan
//! resistant) did not serve, so plain recency is enough here and it keeps "the most
//! recently used objects are the ones kept" exact and testable.
//!
//! Size per object (x86-64): a 32-byte slab node (md5, silo, size in 4 KiB blocks, two
//! u32 links) plus a 21-byte hashbrown slot (16-byte key, u32 slot, control byte). With
//! the table between 44% and 87.5% full and the slab's growth slack, that is 55 to 110
//! bytes per object: 2 million objects take about 110-220 MB. The pingora key hash is
//! not stored in the node: it is recomputed from silo + md5 when an object is evicted.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pingora_cache::key::HashBinary;

use super::format::{Md5, ObjectRef, Silo};

const NIL: u32 = u32::MAX;
/// Objects are charged in blocks of this many bytes (what a filesystem allocates).
pub const BLOCK: u64 = 4096;

/// The blocks a file of `len` bytes is charged.
pub fn blocks_for(len: u64) -> u32 {
    u32::try_from(len.div_ceil(BLOCK)).unwrap_or(u32::MAX)
}

/// What the index knows about one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub obj: ObjectRef,
    pub blocks: u32,
}

impl Rec {
    pub fn bytes(&self) -> u64 {
        u64::from(self.blocks) * BLOCK
    }
}

#[derive(Clone, Copy)]
struct Node {
    md5: Md5,
    silo: Silo,
    blocks: u32,
    /// The file's body CRC was checked against its bytes once (written by this process,
    /// or read whole since it was indexed): a hit may then be sent without reading it.
    verified: bool,
    prev: u32,
    next: u32,
}

impl Node {
    fn rec(&self) -> Rec {
        Rec {
            obj: ObjectRef::new(self.silo, self.md5),
            blocks: self.blocks,
        }
    }
}

/// The keys are already uniform (Blake2 output): hash them by their first 8 bytes.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }

    fn write_usize(&mut self, _: usize) {}
}

/// LRU index. Not synchronized: the disk store keeps it behind one mutex.
pub struct Index {
    map: HashMap<HashBinary, u32, BuildHasherDefault<KeyHasher>>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    blocks: u64,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            map: HashMap::default(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            blocks: 0,
        }
    }
}

impl Index {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged for every indexed file.
    pub fn bytes(&self) -> u64 {
        self.blocks * BLOCK
    }

    pub fn get(&self, key: &HashBinary) -> Option<Rec> {
        self.map.get(key).map(|&i| self.nodes[i as usize].rec())
    }

    fn unlink(&mut self, i: u32) {
        let Node { prev, next, .. } = self.nodes[i as usize];
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn link_front(&mut self, i: u32) {
        self.nodes[i as usize].prev = NIL;
        self.nodes[i as usize].next = self.head;
        match self.head {
            NIL => self.tail = i,
            h => self.nodes[h as usize].prev = i,
        }
        self.head = i;
    }

    fn link_back(&mut self, i: u32) {
        self.nodes[i as usize].next = NIL;
        self.nodes[i as usize].prev = self.tail;
        match self.tail {
            NIL => self.head = i,
            t => self.nodes[t as usize].next = i,
        }
        self.tail = i;
    }

    fn alloc(&mut self, rec: Rec) -> u32 {
        let node = Node {
            md5: rec.obj.md5,
            silo: rec.obj.silo,
            blocks: rec.blocks,
            verified: false,
            prev: NIL,
            next: NIL,
        };
        self.blocks += u64::from(rec.blocks);
        match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                u32::try_from(self.nodes.len() - 1).unwrap_or(NIL)
            }
        }
    }

    /// Inserts or replaces `key` as the most recently used; returns the replaced record.
    pub fn insert_hot(&mut self, key: HashBinary, rec: Rec) -> Option<Rec> {
        let old = self.remove(&key);
        let i = self.alloc(rec);
        self.map.insert(key, i);
        self.link_front(i);
        old
    }

    /// Inserts `key` as the least recently used unless it is already known (the restart
    /// scan: anything live traffic touched since the start is more recent).
    pub fn insert_cold(&mut self, key: HashBinary, rec: Rec) -> bool {
        if self.map.contains_key(&key) {
            return false;
        }
        let i = self.alloc(rec);
        self.map.insert(key, i);
        self.link_back(i);
        true
    }

    /// Marks `key` as just used. Returns whether it is indexed.
    pub fn touch(&mut self, key: &HashBinary) -> bool {
        let Some(&i) = self.map.get(key) else {
            return false;
        };
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
        true
    }

    /// Marks `key` as just used, like [`Self::touch`]: `Some(verified)` if it is indexed.
    pub fn touch_verified(&mut self, key: &HashBinary) -> Option<bool> {
        let &i = self.map.get(key)?;
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
        Some(self.nodes[i as usize].verified)
    }

    /// Records that `key`'s file had its body CRC checked. Returns whether it is indexed.
    pub fn set_verified(&mut self, key: &HashBinary) -> bool {
        let Some(&i) = self.map.get(key) else {
            return false;
        };
        self.nodes[i as usize].verified = true;
        true
    }

    pub fn remove(&mut self, key: &HashBinary) -> Option<Rec> {
        let i = self.map.remove(key)?;
        self.unlink(i);
        let rec = self.nodes[i as usize].rec();
        self.blocks -= u64::from(rec.blocks);
        self.free.push(i);
        Some(rec)
    }

    /// Removes and returns the least recently used object.
    pub fn pop_lru(&mut self) -> Option<(HashBinary, Rec)> {
        if self.tail == NIL {
            return None;
        }
        let rec = self.nodes[self.tail as usize].rec();
        let key = rec.obj.key_hash();
        self.remove(&key).map(|r| (key, r))
    }

    /// Up to `limit` indexed objects from slab slot `from` on, and the slot to go on
    /// from (`None`: the end). Slots are stable while an object stays indexed, so
    /// paging while objects come and go sees every object indexed throughout, once
    /// (one that moves may be seen twice or not at all; the next pass sees it).
    pub fn page(&self, from: usize, limit: usize) -> (Vec<ObjectRef>, Option<usize>) {
        let mut out = Vec::with_capacity(limit.min(self.map.len()));
        let mut at = from;
        while out.len() < limit {
            let Some(node) = self.nodes.get(at) else {
                return (out, None);
            };
            let obj = ObjectRef::new(node.silo, node.md5);
            // A freed slot keeps its old node: live only if the map points here.
            let slot = u32::try_from(at).ok();
            if slot.is_some() && self.map.get(&obj.key_hash()).copied() == slot {
                out.push(obj);
            }
            at += 1;
        }
        let more = at < self.nodes.len();
        (out, more.then_some(at))
    }

    /// Objects from most to least recently used.
    #[cfg(test)]
    pub fn iter_mru(&self) -> impl Iterator<Item = Rec> + '_ {
        let mut i = self.head;
        std::iter::from_fn(move || {
            let node = self.nodes.get(i as usize)?;
            i = node.next;
            Some(node.rec())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, blocks: u32) -> (HashBinary, Rec) {
        let obj = ObjectRef::new(Silo::Images, Md5([n; 16]));
        (obj.key_hash(), Rec { obj, blocks })
    }

    fn order(ix: &Index) -> Vec<u8> {
        ix.iter_mru().map(|r| r.obj.md5.0[0]).collect()
    }

    #[test]
    fn lru_order_follows_inserts_and_touches() {
        let mut ix = Index::default();
        for n in 1..=3 {
            let (k, r) = rec(n, 1);
            ix.insert_hot(k, r);
        }
        assert_eq!(order(&ix), [3, 2, 1]);
        ix.touch(&rec(1, 1).0);
        assert_eq!(order(&ix), [1, 3, 2]);
        let (k, r) = rec(4, 2);
        assert!(ix.insert_cold(k, r));
        assert!(!ix.insert_cold(k, r));
        assert_eq!(order(&ix), [1, 3, 2, 4]);
        assert_eq!(ix.bytes(), 5 * BLOCK);
        assert_eq!(ix.pop_lru().map(|(_, r)| r.obj.md5.0[0]), Some(4));
        assert_eq!(ix.pop_lru().map(|(_, r)| r.obj.md5.0[0]), Some(2));
        assert_eq!(ix.bytes(), 2 * BLOCK);
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn replace_and_remove_keep_the_byte_count_exact() {
        let mut ix = Index::default();
        let (k, r) = rec(7, 3);
        ix.insert_hot(k, r);
        let old = ix.insert_hot(k, Rec { blocks: 5, ..r });
        assert_eq!(old.map(|o| o.blocks), Some(3));
        assert_eq!((ix.len(), ix.bytes()), (1, 5 * BLOCK));
        assert_eq!(ix.remove(&k).map(|r| r.blocks), Some(5));
        assert!(ix.is_empty());
        assert_eq!(ix.bytes(), 0);
        assert!(ix.pop_lru().is_none());
        // Slots are reused.
        ix.insert_hot(k, r);
        assert_eq!(ix.nodes.len(), 1);
    }

    #[test]
    fn pages_cover_every_indexed_object_once() {
        let mut ix = Index::default();
        for n in 1..=10 {
            let (k, r) = rec(n, 1);
            ix.insert_hot(k, r);
        }
        // Freed slots are skipped, and reused ones show their new object.
        ix.remove(&rec(3, 1).0);
        ix.remove(&rec(7, 1).0);
        let (k, r) = rec(11, 1);
        ix.insert_hot(k, r);
        let mut seen = Vec::new();
        let mut from = Some(0);
        while let Some(f) = from {
            let (page, next) = ix.page(f, 4);
            assert!(page.len() <= 4);
            seen.extend(page.iter().map(|o| o.md5.0[0]));
            from = next;
        }
        seen.sort();
        assert_eq!(seen, [1, 2, 4, 5, 6, 8, 9, 10, 11]);
        assert_eq!(ix.page(100, 4), (Vec::new(), None));
    }

    #[test]
    fn an_entry_starts_unverified_and_a_replacement_forgets_the_check() {
        let mut ix = Index::default();
        let (k, r) = rec(1, 1);
        assert_eq!(ix.touch_verified(&k), None, "not indexed");
        assert!(!ix.set_verified(&k), "nothing to mark");
        ix.insert_hot(k, r);
        assert_eq!(ix.touch_verified(&k), Some(false));
        assert!(ix.set_verified(&k));
        assert_eq!(ix.touch_verified(&k), Some(true));
        // A new file under the same key (a republish) is unchecked again.
        ix.insert_hot(k, r);
        assert_eq!(ix.touch_verified(&k), Some(false));
        ix.set_verified(&k);
        ix.remove(&k);
        ix.insert_cold(k, r);
        assert_eq!(
            ix.touch_verified(&k),
            Some(false),
            "a slot reused is unchecked"
        );
    }

    #[test]
    fn touch_verified_moves_the_entry_to_the_front() {
        let mut ix = Index::default();
        let (a, ra) = rec(1, 1);
        let (b, rb) = rec(2, 1);
        ix.insert_hot(a, ra);
        ix.insert_hot(b, rb);
        assert_eq!(order(&ix), [2, 1]);
        ix.touch_verified(&a);
        assert_eq!(order(&ix), [1, 2]);
    }

    #[test]
    fn node_stays_small() {
        assert!(std::mem::size_of::<Node>() <= 32);
    }

    #[test]
    fn blocks_round_up() {
        assert_eq!(blocks_for(0), 0);
        assert_eq!(blocks_for(1), 1);
        assert_eq!(blocks_for(4096), 1);
        assert_eq!(blocks_for(4097), 2);
    }
}
