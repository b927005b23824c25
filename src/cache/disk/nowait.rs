//! File reads that never wait for the disk, so a hit can be served from the event loop.
//!
//! A disk hit used to cost three or four trips through the blocking pool (open, then
//! one per 64 KiB of body), each two context switches on a server pinned to one core:
//! a third of its CPU. When the kernel already holds what a hit needs (the dentry, the
//! inode, the pages), none of that can block, and these calls do it inline:
//! - `openat2(RESOLVE_CACHED)` resolves the path from the dentry cache only, else fails
//!   with `EAGAIN` (Linux 5.12+);
//! - `preadv2(RWF_NOWAIT)` copies only what the page cache holds, else fails with
//!   `EAGAIN` or returns short (Linux 4.14+; the filesystem must support it).
//!
//! Anything they cannot do without waiting is left to the caller's blocking path, so a
//! cold disk never stalls the event loop; what is read inline is bounded by the caller
//! (at most [`super::io::WHOLE_READ`] per call: a memcpy from the page cache). A kernel
//! or filesystem without them (`ENOSYS`, `EINVAL`, `EOPNOTSUPP`) turns the inline try
//! off for the process: everything then takes the blocking pool, as before.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

static OPEN_CACHED: AtomicBool = AtomicBool::new(true);
static READ_NOWAIT: AtomicBool = AtomicBool::new(true);
static CACHESTAT: AtomicBool = AtomicBool::new(true);

/// `cachestat(2)` (Linux 6.5+): one number on every architecture, not yet in `libc`.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Whether `e` says the kernel or filesystem does not offer the call or the flag.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM)
    )
}

/// Opens `path` read-only if the kernel can resolve it without I/O. `Ok(None)`: it
/// would have to wait (or cannot try); `Err`: a real answer such as `NotFound` (a
/// cached negative dentry).
pub(crate) fn open_cached(path: &Path) -> io::Result<Option<File>> {
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        return Ok(None);
    };
    open_cached_at(None, &cpath)
}

/// [`open_cached`] of `rel`, relative to the directory `dir` (absolute paths and the
/// working directory's relative ones with `None`).
pub(crate) fn open_cached_at(dir: Option<BorrowedFd<'_>>, rel: &CStr) -> io::Result<Option<File>> {
    if !OPEN_CACHED.load(Ordering::Relaxed) {
        return Ok(None);
    }
    // SAFETY: `open_how` is plain integers, for which all zeroes is valid (and what
    // the kernel wants in every field not set).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `rel` is a valid C string, `dirfd` an open directory (or AT_FDCWD) that
    // outlives the call, and `how` a valid `open_how` of the size passed; the kernel
    // reads them and returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ if unsupported(&e) => {
                OPEN_CACHED.store(false, Ordering::Relaxed);
                Ok(None)
            }
            _ => Err(e),
        };
    }
    let Ok(fd) = i32::try_from(fd) else {
        return Ok(None); // the kernel never returns such a descriptor
    };
    // SAFETY: `fd` was just returned by openat2 and is owned by nobody else.
    Ok(Some(unsafe { File::from_raw_fd(fd) }))
}

/// Reads the file from `base + buf.len()` (`buf` holds the bytes from `base`) until
/// `buf` is `want` long, only what the page cache holds, and appends what it got. `Ok(Some(0))` is the end of the file; `Ok(None)`: nothing
/// without waiting (or cannot try).
pub(crate) fn pread_nowait(
    file: &File,
    buf: &mut Vec<u8>,
    want: usize,
    base: u64,
) -> io::Result<Option<usize>> {
    if !READ_NOWAIT.load(Ordering::Relaxed) {
        return Ok(None);
    }
    pread_spare(file, buf, want, base, libc::RWF_NOWAIT).map_or_else(
        |e| match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ if unsupported(&e) => {
                READ_NOWAIT.store(false, Ordering::Relaxed);
                Ok(None)
            }
            _ => Err(e),
        },
        |n| Ok(Some(n)),
    )
}

/// Whether the page cache holds every page of the file's bytes `off..off + len`, so
/// that sending them (`sendfile`) copies from memory and never waits for the disk.
/// `false` when it cannot be told (a kernel without `cachestat`, which then is not
/// asked again): the caller reads the file the way that never blocks the event loop.
pub(crate) fn page_cached(file: &File, off: u64, len: u64) -> bool {
    if len == 0 || !CACHESTAT.load(Ordering::Relaxed) {
        return len == 0;
    }
    let range = CachestatRange { off, len };
    let mut stat = Cachestat::default();
    // SAFETY: both structs are `repr(C)` as the kernel defines them; it reads `range`,
    // writes `stat` and keeps neither.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0,
        )
    };
    if rc != 0 {
        if unsupported(&io::Error::last_os_error()) {
            CACHESTAT.store(false, Ordering::Relaxed);
        }
        return false;
    }
    let page = page_size();
    let pages = (off + len).div_ceil(page) - off / page;
    stat.nr_cache >= pages
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// Like [`pread_nowait`], but waits for the disk: `buf` ends `want` long, or a file
/// that ends first is an `UnexpectedEof` error.
pub(crate) fn pread_fill(file: &File, buf: &mut Vec<u8>, want: usize, base: u64) -> io::Result<()> {
    while buf.len() < want {
        match pread_spare(file, buf, want, base, 0) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `preadv2` at `base + buf.len()` of up to `want - buf.len()` bytes into `buf`'s
/// spare capacity (no zeroing first); appends what it read.
fn pread_spare(
    file: &File,
    buf: &mut Vec<u8>,
    want: usize,
    base: u64,
    flags: libc::c_int,
) -> io::Result<usize> {
    let off = base.saturating_add(buf.len() as u64);
    buf.reserve(want.saturating_sub(buf.len()));
    let room = want.saturating_sub(buf.len());
    let spare = &mut buf.spare_capacity_mut()[..room];
    if spare.is_empty() {
        return Ok(0);
    }
    let Ok(off) = libc::off_t::try_from(off) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    // SAFETY: `iov` describes `buf`'s spare capacity, which is writable and stays
    // allocated for the call; the kernel writes at most `iov_len` bytes into it.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, flags) };
    let Ok(n) = usize::try_from(n) else {
        return Err(io::Error::last_os_error());
    };
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}
