//! Large bodies held in sealed memfds: one copy of the bytes that is both a `Bytes` (a
//! read-only mapping, for TLS, HTTP/2, ranges and every other writer) and a file the
//! kernel can `sendfile` to a plain socket without copying it. A heap body costs a copy
//! into the socket per answer (about 245 µs per MiB on the bench VM, most of a 1 MiB
//! cold answer's CPU); a sealed one costs none. Page-cache pages an answer still has in
//! flight stay its own even if the object is evicted and the memfd closed meanwhile,
//! which is why this is memfd and not `vmsplice` of heap memory.
//!
//! Each sealed body holds a descriptor, so their number is bounded by [`FdBudget`]: past
//! it, or when the kernel refuses, a body stays on the heap (counted in
//! `shimmer_cache_memory_sealed_fallbacks_total`), which serves the same bytes by copy.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use once_cell::sync::Lazy;

/// Bodies at least this long are sealed. Below it the copy a heap answer costs (about
/// 15 µs at 64 KiB) is near what the memfd, its mapping and the sendfile call cost.
pub const SEALED_MIN_BYTES: usize = 64 << 10;

/// A body in a sealed, read-only mapped memfd.
pub struct SealedBody {
    fd: OwnedFd,
    map: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and the memfd sealed against writes, growth and
// shrinking, so the bytes never change while any thread holds them.
unsafe impl Send for SealedBody {}
// SAFETY: as above; nothing in a `SealedBody` is mutable after `seal`.
unsafe impl Sync for SealedBody {}

impl SealedBody {
    /// Copies `chunks` (whose lengths sum to `len`, at least 1) into a new sealed memfd,
    /// if the descriptor budget allows one.
    pub fn seal(chunks: &[Bytes], len: usize) -> io::Result<Arc<SealedBody>> {
        let Some(permit) = FD_BUDGET.take() else {
            return Err(io::Error::other(
                "sealed bodies' descriptor budget is spent",
            ));
        };
        let body = Self::seal_unbudgeted(chunks, len)?;
        permit.keep();
        Ok(body)
    }

    fn seal_unbudgeted(chunks: &[Bytes], len: usize) -> io::Result<Arc<SealedBody>> {
        if len == 0 || chunks.iter().map(Bytes::len).sum::<usize>() != len {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: a NUL-terminated name and flags; returns a new descriptor or -1.
        let raw = unsafe {
            libc::memfd_create(
                c"shimmer-body".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just made and is owned by nothing else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        for chunk in chunks {
            file.write_all(chunk)?;
        }
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: `file` is open; F_ADD_SEALS takes an int argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new read-only shared mapping of `len` bytes of an open file that is
        // `len` long and sealed; MAP_POPULATE maps its (resident) pages now rather than
        // one fault per page on the first read.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(map.cast::<u8>()).ok_or_else(|| io::Error::other("null map"))?;
        Ok(Arc::new(SealedBody {
            fd: OwnedFd::from(file),
            map,
            len,
        }))
    }

    /// The body's bytes, sharing the mapping (no copy); they keep it alive.
    pub fn bytes(self: &Arc<Self>) -> Bytes {
        Bytes::from_owner(Mapped(self.clone()))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `map` is a live read-only mapping of `len` bytes until `drop`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }
}

impl AsFd for SealedBody {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SealedBody {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `seal`, unmapped once; no `Bytes` of it is left
        // (each holds an `Arc` of `self`).
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.len) };
        FD_BUDGET.give_back();
    }
}

/// What `Bytes::from_owner` holds: the body, kept alive by every slice of it.
struct Mapped(Arc<SealedBody>);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// How many sealed bodies may be open at once: half the process's descriptor limit,
/// so bodies never take the descriptors connections, cache files and the database need.
struct FdBudget {
    open: AtomicUsize,
    limit: usize,
}

/// A body counted against the budget until it is dropped (or `keep`s the count).
struct Permit<'a>(Option<&'a FdBudget>);

impl Permit<'_> {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(budget) = self.0 {
            budget.give_back();
        }
    }
}

impl FdBudget {
    fn take(&self) -> Option<Permit<'_>> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(Some(self)))
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

static FD_BUDGET: Lazy<FdBudget> = Lazy::new(|| FdBudget {
    open: AtomicUsize::new(0),
    limit: usize::try_from(descriptor_limit() / 2).unwrap_or(usize::MAX),
});

/// The soft limit on open descriptors (`main` raises it to the hard limit at start).
fn descriptor_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Sealed bodies open now, for the gauge.
pub fn open_count() -> usize {
    FD_BUDGET.open.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks() -> (Vec<Bytes>, Vec<u8>) {
        let whole: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let chunks = vec![
            Bytes::copy_from_slice(&whole[..1]),
            Bytes::copy_from_slice(&whole[1..70_000]),
            Bytes::copy_from_slice(&whole[70_000..]),
        ];
        (chunks, whole)
    }

    #[test]
    fn a_sealed_body_holds_its_chunks_in_order() {
        let (chunks, whole) = chunks();
        let sealed = SealedBody::seal(&chunks, whole.len()).expect("memfd");
        assert_eq!(sealed.len(), whole.len());
        let bytes = sealed.bytes();
        assert!(bytes[..] == whole[..]);
        assert!(bytes.slice(69_999..70_001)[..] == whole[69_999..70_001]);
    }

    #[test]
    fn a_sealed_body_cannot_be_written_grown_or_cut() {
        let (chunks, whole) = chunks();
        let sealed = SealedBody::seal(&chunks, whole.len()).expect("memfd");
        let fd = sealed.as_fd().as_raw_fd();
        // SAFETY: plain calls on an open descriptor; a buffer valid for the write.
        unsafe {
            assert!(libc::pwrite(fd, b"x".as_ptr().cast(), 1, 0) < 0, "write");
            assert!(libc::ftruncate(fd, 10) < 0, "shrink");
            assert!(libc::ftruncate(fd, 1 << 20) < 0, "grow");
        }
        assert!(sealed.bytes()[..] == whole[..], "unchanged");
    }

    #[test]
    fn its_bytes_outlive_the_body_they_came_from() {
        let (chunks, whole) = chunks();
        let sealed = SealedBody::seal(&chunks, whole.len()).expect("memfd");
        let tail = sealed.bytes().slice(150_000..);
        drop(sealed);
        assert!(tail[..] == whole[150_000..]);
    }

    #[test]
    fn lengths_that_do_not_add_up_are_refused() {
        let (chunks, whole) = chunks();
        for len in [0, whole.len() - 1, whole.len() + 1] {
            let err = SealedBody::seal(&chunks, len).err().expect("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{len}");
        }
        assert!(SealedBody::seal(&[], 0).is_err(), "nothing to seal");
    }

    #[test]
    fn the_descriptor_budget_refuses_past_its_limit_and_frees_on_release() {
        let budget = FdBudget {
            open: AtomicUsize::new(0),
            limit: 2,
        };
        let a = budget.take().expect("first");
        a.keep();
        let b = budget.take().expect("second");
        assert!(budget.take().is_none(), "two of two are out");
        drop(b);
        assert!(budget.take().is_some(), "a permit not kept comes back");
        budget.give_back();
        assert_eq!(budget.open.load(Ordering::Relaxed), 0);
    }
}
