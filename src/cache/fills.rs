//! The fills in progress of one tier, by key: what a lookup attaches to, what a tag
//! finds again, and what a purge marks. Each tier (memory, disk, tiered) keeps one.
//!
//! Several fills of one key can exist at once (a purge marks the old one and a new
//! request starts another; a writer whose lock timed out), so each key holds a list.
//! New readers attach to the newest one still attachable; a writer's own client finds
//! its fill by id even once it is purged, because it still streams that client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use pingora_cache::key::HashBinary;

/// What the registry needs to know of a fill.
pub(crate) trait Registered {
    fn key(&self) -> &HashBinary;
    fn id(&self) -> u64;
    /// Set by a purge: the fill is not stored and not offered to new readers.
    fn purged(&self) -> &AtomicBool;
    /// Whether a new reader may attach (not purged, not failed).
    fn is_attachable(&self) -> bool;
}

/// Implements [`Registered`] for a fill type with `key`, `id` and `purged` fields and
/// an inherent `is_attachable` (the memory tier's and the streamed fills).
macro_rules! registered {
    ($fill:ty) => {
        impl $crate::cache::fills::Registered for $fill {
            fn key(&self) -> &pingora_cache::key::HashBinary {
                &self.key
            }
            fn id(&self) -> u64 {
                self.id
            }
            fn purged(&self) -> &std::sync::atomic::AtomicBool {
                &self.purged
            }
            fn is_attachable(&self) -> bool {
                <$fill>::is_attachable(self)
            }
        }
    };
}
pub(crate) use registered;

pub(crate) struct FillRegistry<F> {
    fills: RwLock<HashMap<HashBinary, Vec<Arc<F>>>>,
}

impl<F> Default for FillRegistry<F> {
    fn default() -> Self {
        Self {
            fills: RwLock::new(HashMap::new()),
        }
    }
}

impl<F: Registered> FillRegistry<F> {
    pub(crate) fn insert(&self, fill: Arc<F>) {
        self.fills
            .write()
            .entry(*fill.key())
            .or_default()
            .push(fill);
    }

    /// The newest fill of `key` a new reader may attach to.
    pub(crate) fn active(&self, key: &HashBinary) -> Option<Arc<F>> {
        let fills = self.fills.read();
        fills
            .get(key)?
            .iter()
            .filter(|f| f.is_attachable())
            .max_by_key(|f| f.id())
            .cloned()
    }

    /// The fill a streaming-write tag names, purged or not.
    pub(crate) fn by_id(&self, key: &HashBinary, id: u64) -> Option<Arc<F>> {
        let fills = self.fills.read();
        fills.get(key)?.iter().find(|f| f.id() == id).cloned()
    }

    /// Whether any fill of `key` is in progress (attachable or not).
    pub(crate) fn contains(&self, key: &HashBinary) -> bool {
        self.fills.read().contains_key(key)
    }

    /// Marks every fill of `key` purged; true if one of them was not yet.
    pub(crate) fn mark_purged(&self, key: &HashBinary) -> bool {
        let mut found = false;
        if let Some(fills) = self.fills.read().get(key) {
            for f in fills {
                found |= !f.purged().swap(true, Ordering::AcqRel);
            }
        }
        found
    }

    pub(crate) fn forget(&self, fill: &F) {
        let mut fills = self.fills.write();
        if let Some(list) = fills.get_mut(fill.key()) {
            list.retain(|f| f.id() != fill.id());
            if list.is_empty() {
                fills.remove(fill.key());
            }
        }
    }

    /// Fills in progress, and `f` summed over them.
    pub(crate) fn count_and_sum(&self, f: impl Fn(&F) -> usize) -> (usize, usize) {
        let fills = self.fills.read();
        let all = fills.values().flatten();
        all.fold((0, 0), |(n, sum), fill| (n + 1, sum + f(fill)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestFill {
        key: HashBinary,
        id: u64,
        purged: AtomicBool,
        failed: bool,
    }

    impl Registered for TestFill {
        fn key(&self) -> &HashBinary {
            &self.key
        }
        fn id(&self) -> u64 {
            self.id
        }
        fn purged(&self) -> &AtomicBool {
            &self.purged
        }
        fn is_attachable(&self) -> bool {
            !self.failed && !self.purged.load(Ordering::Acquire)
        }
    }

    fn fill(key: u8, id: u64, failed: bool) -> Arc<TestFill> {
        Arc::new(TestFill {
            key: [key; 16],
            id,
            purged: AtomicBool::new(false),
            failed,
        })
    }

    #[test]
    fn readers_attach_to_the_newest_attachable_fill() {
        let r = FillRegistry::default();
        r.insert(fill(1, 1, false));
        r.insert(fill(1, 2, false));
        r.insert(fill(1, 3, true));
        assert_eq!(r.active(&[1; 16]).map(|f| f.id), Some(2));
        assert!(r.active(&[2; 16]).is_none());
    }

    #[test]
    fn a_purge_marks_every_fill_once_and_tags_still_find_them() {
        let r = FillRegistry::default();
        r.insert(fill(1, 1, false));
        r.insert(fill(1, 2, false));
        assert!(r.mark_purged(&[1; 16]));
        assert!(!r.mark_purged(&[1; 16]), "already marked");
        assert!(r.active(&[1; 16]).is_none());
        assert_eq!(r.by_id(&[1; 16], 2).map(|f| f.id), Some(2));
        assert!(!r.mark_purged(&[9; 16]));
    }

    #[test]
    fn forgetting_the_last_fill_of_a_key_drops_the_key() {
        let r = FillRegistry::default();
        let (a, b) = (fill(1, 1, false), fill(1, 2, false));
        r.insert(a.clone());
        r.insert(b.clone());
        r.forget(&a);
        assert!(r.contains(&[1; 16]));
        r.forget(&b);
        assert!(!r.contains(&[1; 16]));
        assert_eq!(r.count_and_sum(|_| 1), (0, 0));
    }
}
