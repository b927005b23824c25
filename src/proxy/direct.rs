//! Answers written straight onto a plain HTTP/1.1 connection's socket, around
//! Pingora's writer, for the two fast paths:
//! - a memory hit leaves in one `writev` (a body over [`WRITE_SLICE`], one per slice)
//!   of a head made once per object and config
//!   ([`Socket::prepared_head`]), the fields that change, and the body (Pingora's
//!   writer makes it two `send`s, two TCP segments, for any body larger than its
//!   1,460-byte buffer, and a larger buffer would cost a copy of every body);
//! - a disk hit leaves with `sendfile`, the kernel handing the page cache to the socket
//!   (Pingora's writer only writes buffers, so the body would be read into one first).
//!
//! Why this is sound: a fast path answers from `request_filter`, before anything of
//! the request was written, so Pingora's write buffer is empty (the previous answer on
//! the connection was flushed when it ended); the session is left as if the response
//! had been nothing at all, and Pingora then reuses the connection (or closes it) on
//! its own keep-alive decision, which this head announces (`Connection`). Reads are
//! untouched: pipelined requests Pingora has already read stay in its buffer. TLS and
//! HTTP/2 connections never come here (their bytes are encrypted or framed in user
//! space); they take Pingora's writer.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header;
use http::response::Parts as RespParts;
use pingora::prelude::*;
use pingora_core::protocols::http::date::get_cached_date;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_http::ResponseHeader;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::cache::disk::page_cached;

/// A file is sent this much per call; for a longer one each piece is checked against
/// the page cache first, so a long send whose pages were evicted meanwhile reads them
/// on the blocking pool instead of stalling the event loop.
const FILE_PIECE: u64 = 1 << 20;
/// A memory body is written at most this much per call, and the thread is handed on
/// between slices (as nginx's `sendfile_max_chunk`): one call for a whole 5 MB body
/// filled a send buffer of megabytes while the thread's other connections waited. In
/// interleaved hot5m runs (`bench.py --servers shimmer --scenarios hot5m`) its p99 was
/// 82, 51, 388 and 142 ms against 332, 349, 630, 138 and 555 ms writing whole; 441 ms
/// in one `make bench`: the tail is mostly the loopback load generator's.
const WRITE_SLICE: usize = 1 << 20;

/// A plain HTTP/1 connection's socket, to answer on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Socket {
    fd: RawFd,
    keepalive: bool,
    /// How long the client may keep the socket full (`shimmer.http.send_timeout`).
    stall: Duration,
}

/// What a direct answer sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent {
    pub body_bytes: u64,
    /// The whole body went out; if not, the connection is closed after this answer.
    pub complete: bool,
}

impl Socket {
    /// The connection's own socket, when it is plain TCP (or a Unix socket) spoken as
    /// HTTP/1, nothing has been written for this request and its body (if any) is read.
    /// A write that waits longer than `stall` for room gives the answer up.
    pub(super) fn of(session: &mut Session, stall: Duration) -> Option<Socket> {
        if session.response_written().is_some() || !session.downstream_session.is_body_done() {
            return None;
        }
        let v1 = session.downstream_session.as_http1()?;
        let stream = v1.stream().as_any().downcast_ref::<L4Stream>()?;
        let fd = stream.as_raw_fd();
        (fd >= 0).then_some(Socket {
            fd,
            keepalive: v1.will_keepalive(),
            stall,
        })
    }

    /// The part of a head that stays the same from one answer to the next: the status
    /// line and every field of `parts`, without the blank line that ends the head.
    /// [`Self::send_prepared`] adds the fields that change (`Age`, `Date`, `Connection`).
    pub(super) fn prepared_head(mut parts: RespParts) -> Bytes {
        // A stored header may carry the origin's own (its Connection: close, say);
        // these are this answer's, as Pingora's writer replaces them.
        for name in [header::AGE, header::DATE, header::CONNECTION] {
            parts.headers.remove(name);
        }
        let status = parts.status;
        let resp = ResponseHeader::from(parts);
        let mut head = BytesMut::with_capacity(512);
        head.put_slice(b"HTTP/1.1 ");
        head.put_slice(status.as_str().as_bytes());
        head.put_u8(b' ');
        head.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
        head.put_slice(b"\r\n");
        resp.header_to_h1_wire(&mut head);
        head.freeze()
    }

    /// Writes a [`Self::prepared_head`], the fields that change, and `body`: one
    /// `writev` when the socket takes it all.
    pub(super) async fn send_prepared(
        &self,
        session: &mut Session,
        prepared: &[u8],
        age_secs: u64,
        body: &Bytes,
    ) -> Sent {
        let tail = self.changing_fields(age_secs);
        let result = self.write_parts([prepared, &tail, body]).await;
        self.settle(session, result, body.len() as u64)
    }

    /// Writes a [`Self::prepared_head`] and the fields that change, then the file's
    /// `len` bytes from `off` with `sendfile`.
    pub(super) async fn send_file(
        &self,
        session: &mut Session,
        prepared: &[u8],
        age_secs: u64,
        file: File,
        off: u64,
        len: u64,
    ) -> Sent {
        let tail = self.changing_fields(age_secs);
        // The head leaves on its own, uncorked, as nginx's with `tcp_nopush off`. Held
        // back with MSG_MORE to leave in the body's first segment, it made every
        // `sendfile` after it cost 2.8x the kernel time (Linux 6.18, loopback; perf of
        // `bench.py --servers shimmer --scenarios disk`): 21,300-22,000 disk hits/s at
        // 4.6 CPU s/100k corked, 25,900-26,300 at 3.8 uncorked. nginx's `tcp_nopush on`
        // (TCP_CORK) costs it the same way (benches/http/nginx.conf).
        let mut result = self.write_parts([prepared, &tail, &[]]).await;
        if result.is_ok() {
            result = self.write_file(file, off, len).await;
        }
        self.settle(session, result, len)
    }

    /// The fields of a head that change from one answer to the next, and the blank
    /// line that ends it: what Pingora's writer sets (`Date`, `Connection` as the
    /// session will keep it) and the hit's `Age`.
    fn changing_fields(&self, age_secs: u64) -> BytesMut {
        let mut tail = BytesMut::with_capacity(96);
        tail.put_slice(b"Age: ");
        tail.put_slice(age_secs.to_string().as_bytes());
        tail.put_slice(b"\r\nDate: ");
        tail.put_slice(get_cached_date().as_bytes());
        tail.put_slice(if self.keepalive {
            b"\r\nConnection: keep-alive\r\n\r\n".as_slice()
        } else {
            b"\r\nConnection: close\r\n\r\n".as_slice()
        });
        tail
    }

    fn settle(&self, session: &mut Session, result: Result<(), Cut>, len: u64) -> Sent {
        match result {
            Ok(()) => Sent {
                body_bytes: len,
                complete: true,
            },
            Err(Cut { body_bytes, error }) => {
                tracing::debug!("direct answer cut after {body_bytes} body bytes: {error}");
                // What remains of the body never comes: the client must see the end.
                session.set_keepalive(None);
                Sent {
                    body_bytes,
                    complete: false,
                }
            }
        }
    }

    /// Writes `parts` in order (the last is the body), a slice of the body per
    /// `sendmsg`, handing the thread on after each whole slice.
    async fn write_parts(&self, mut parts: [&[u8]; 3]) -> Result<(), Cut> {
        let mut waiter = Waiter::new(self.fd, self.stall);
        let body_len = parts[2].len();
        while parts.iter().any(|p| !p.is_empty()) {
            let slice = slice_of(&parts);
            match writev(self.fd, &slice) {
                Ok(mut n) => {
                    let whole_slice = n == slice.iter().map(|p| p.len()).sum::<usize>();
                    for part in parts.iter_mut() {
                        let took = n.min(part.len());
                        *part = &part[took..];
                        n -= took;
                    }
                    if whole_slice && !parts[2].is_empty() {
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => {
                    let done = body_len - parts[2].len();
                    waiter.after(e).await.map_err(|e| Cut::at(done, e))?
                }
            }
        }
        Ok(())
    }

    async fn write_file(&self, file: File, off: u64, len: u64) -> Result<(), Cut> {
        let mut waiter = Waiter::new(self.fd, self.stall);
        let (fd, file) = (self.fd, Arc::new(file));
        let mut sent = 0;
        while sent < len {
            let (at, piece) = (off + sent, (len - sent).min(FILE_PIECE));
            // The lookup found the whole body cached; a long one's pages may have been
            // evicted since, so each further piece is checked again.
            let result = if len <= FILE_PIECE || page_cached(&file, at, piece) {
                sendfile(fd, &file, at, piece)
            } else {
                let file = file.clone();
                tokio::task::spawn_blocking(move || sendfile(fd, &file, at, piece))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)))
            };
            match result {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "cache file ended early");
                    return Err(Cut::at(sent, e));
                }
                Ok(n) => sent += n as u64,
                Err(e) => waiter.after(e).await.map_err(|e| Cut::at(sent, e))?,
            }
        }
        Ok(())
    }
}

/// What one `writev` offers: the head parts whole, at most [`WRITE_SLICE`] of the body.
fn slice_of<'a>(parts: &[&'a [u8]; 3]) -> [&'a [u8]; 3] {
    let body = parts[2];
    [parts[0], parts[1], &body[..body.len().min(WRITE_SLICE)]]
}

/// Why a send stopped early, and how much of the body had gone.
struct Cut {
    body_bytes: u64,
    error: io::Error,
}

impl Cut {
    fn at(body_bytes: impl TryInto<u64>, error: io::Error) -> Cut {
        Cut {
            body_bytes: body_bytes.try_into().unwrap_or(u64::MAX),
            error,
        }
    }
}

fn writev(fd: RawFd, parts: &[&[u8]; 3]) -> io::Result<usize> {
    let iov = parts.map(|p| libc::iovec {
        iov_base: p.as_ptr() as *mut libc::c_void,
        iov_len: p.len(),
    });
    // SAFETY: both iovecs describe live slices for the call; `fd` is the connection's
    // socket, open while the session that owns it awaits this. sendmsg, not writev,
    // for MSG_NOSIGNAL: a client gone is an EPIPE, never a signal.
    let msg = libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: iov.as_ptr() as *mut libc::iovec,
        msg_iovlen: iov.len(),
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    };
    // SAFETY: as above; `msg` points at `iov`, which outlives the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn sendfile(fd: RawFd, file: &File, at: u64, len: u64) -> io::Result<usize> {
    let mut offset = libc::off_t::try_from(at).map_err(|_| io::ErrorKind::InvalidInput)?;
    let count = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: both descriptors are open for the call; the kernel updates `offset`.
    let n = unsafe { libc::sendfile(fd, file.as_raw_fd(), &mut offset, count) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Waits for the socket to take more. The connection's descriptor is registered with
/// the runtime by Pingora's stream, which this path cannot reach, so a duplicate of it
/// is registered for writability (epoll tells each registration), made only when the
/// socket is first found full: most answers fit the socket buffer and never need it.
struct Waiter {
    fd: RawFd,
    /// How long one wait may last before the client counts as gone.
    stall: Duration,
    registered: Option<AsyncFd<OwnedFd>>,
}

impl Waiter {
    fn new(fd: RawFd, stall: Duration) -> Self {
        Self {
            fd,
            stall,
            registered: None,
        }
    }

    /// After a failed write: waits for room if the socket was full, returns at once if
    /// the call was interrupted, and gives `e` back otherwise.
    async fn after(&mut self, e: io::Error) -> io::Result<()> {
        match e.kind() {
            io::ErrorKind::WouldBlock => self.wait().await,
            io::ErrorKind::Interrupted => Ok(()),
            _ => Err(e),
        }
    }

    async fn wait(&mut self) -> io::Result<()> {
        if self.registered.is_none() {
            // SAFETY: `fd` is open; F_DUPFD_CLOEXEC returns a new descriptor or -1.
            let dup = unsafe { libc::fcntl(self.fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `dup` was just made and is owned by nothing else.
            let owned = unsafe { OwnedFd::from_raw_fd(dup) };
            // SAFETY: an OwnedFd keeps its descriptor open, and the same one, until
            // the AsyncFd that owns it is dropped.
            let registered = unsafe { AsyncFd::register_with_interest(owned, Interest::WRITABLE) };
            self.registered = Some(registered.map_err(io::Error::from)?);
        }
        let Some(registered) = &self.registered else {
            return Err(io::ErrorKind::Other.into());
        };
        let mut ready = tokio::time::timeout(self.stall, registered.writable())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))??;
        // The next write tells whether there is room; cleared, a socket still full
        // waits for the next edge.
        ready.clear_ready();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use super::*;

    /// A socket pair: the answering side (non-blocking, as Pingora's) and the client.
    fn pair() -> (Socket, UnixStream, UnixStream) {
        let (ours, client) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("non-blocking");
        let socket = Socket {
            fd: ours.as_raw_fd(),
            keepalive: true,
            stall: Duration::from_secs(60),
        };
        (socket, ours, client)
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// Reads `client` to its end in the background, slowly, so the socket fills.
    fn slow_reader(mut client: UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut chunk = [0u8; 64 << 10];
            loop {
                match client.read(&mut chunk) {
                    Ok(0) | Err(_) => return all,
                    Ok(n) => all.extend_from_slice(&chunk[..n]),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }

    fn file_of(dir: &std::path::Path, body: &[u8]) -> File {
        let path = dir.join("body");
        std::fs::write(&path, body).expect("write");
        File::open(&path).expect("open")
    }

    #[tokio::test]
    async fn a_body_larger_than_the_socket_takes_waits_for_room_and_arrives_whole() {
        let (socket, ours, client) = pair();
        let reader = slow_reader(client);
        let body = bytes(8 << 20, 1);
        let written = socket.write_parts([b"head\r\n", b"\r\n", &body]).await;
        assert!(written.is_ok());
        drop(ours);
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), 8 + body.len());
        assert!(got[8..] == body[..], "the body, whole and in order");
    }

    #[tokio::test]
    async fn a_client_gone_cuts_the_answer_with_what_was_sent() {
        let (socket, _ours, client) = pair();
        drop(client);
        let body = bytes(100_000, 2);
        let Err(cut) = socket.write_parts([b"head\r\n\r\n", b"", &body]).await else {
            panic!("a write to a closed peer succeeded");
        };
        assert_eq!(cut.body_bytes, 0);
        assert_eq!(cut.error.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn a_file_shorter_than_the_length_sent_is_cut_never_padded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = bytes(10_000, 3);
        let (socket, ours, mut client) = pair();
        let Err(cut) = socket
            .write_file(file_of(dir.path(), &body), 0, 20_000)
            .await
        else {
            panic!("a short file was sent as whole");
        };
        assert_eq!(cut.body_bytes, 10_000);
        assert_eq!(cut.error.kind(), io::ErrorKind::UnexpectedEof);
        drop(ours);
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("read");
        assert_eq!(got, body, "what the file had, nothing more");
    }

    #[tokio::test]
    async fn a_long_file_whose_pages_were_dropped_is_sent_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = bytes(3 * FILE_PIECE as usize + 1000, 4);
        let file = file_of(dir.path(), &body);
        file.sync_all().expect("sync");
        // SAFETY: a plain advisory call on an open descriptor.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        let (socket, ours, client) = pair();
        let reader = slow_reader(client);
        let sent = socket.write_file(file, 0, body.len() as u64).await;
        assert!(
            sent.is_ok(),
            "pieces not in the page cache go by the blocking pool"
        );
        drop(ours);
        assert!(reader.join().expect("reader") == body);
    }

    #[tokio::test]
    async fn the_changing_fields_end_the_head_and_follow_the_keepalive_decision() {
        let (mut socket, _ours, _client) = pair();
        let tail = socket.changing_fields(7);
        let text = String::from_utf8(tail.to_vec()).expect("ASCII");
        assert!(text.starts_with("Age: 7\r\nDate: "), "{text}");
        assert!(
            text.ends_with("\r\nConnection: keep-alive\r\n\r\n"),
            "{text}"
        );
        socket.keepalive = false;
        let text = String::from_utf8(socket.changing_fields(0).to_vec()).expect("ASCII");
        assert!(text.ends_with("\r\nConnection: close\r\n\r\n"), "{text}");
    }

    #[test]
    fn a_body_is_offered_a_slice_at_a_time_after_the_whole_head() {
        let body = vec![0u8; 3 * WRITE_SLICE + 5];
        let parts: [&[u8]; 3] = [b"head", b"tail", &body];
        assert_eq!(slice_of(&parts).map(<[u8]>::len), [4, 4, WRITE_SLICE]);
        let last: [&[u8]; 3] = [b"", b"", &body[3 * WRITE_SLICE..]];
        assert_eq!(slice_of(&last).map(<[u8]>::len), [0, 0, 5]);
        let small: [&[u8]; 3] = [b"h", b"", &body[..100]];
        assert_eq!(slice_of(&small).map(<[u8]>::len), [1, 0, 100]);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_after_the_stall() {
        let (mut socket, _ours, client) = pair();
        socket.stall = Duration::from_millis(50);
        // Connected, never read: the socket fills and stays full.
        let body = bytes(8 << 20, 8);
        let Err(cut) = socket.write_parts([b"head\r\n\r\n", b"", &body]).await else {
            panic!("an answer to a client that never reads was sent whole");
        };
        assert_eq!(cut.error.kind(), io::ErrorKind::TimedOut);
        assert!(cut.body_bytes < body.len() as u64, "{}", cut.body_bytes);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = file_of(dir.path(), &body);
        let Err(cut) = socket.write_file(file, 0, body.len() as u64).await else {
            panic!("a file to a client that never reads was sent whole");
        };
        assert_eq!(cut.error.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }
}
