//! Warm secondary, the queues and the wire: an owner that fills an object from the
//! origin notices the object's other owner, in batches; the other owner pulls a copy
//! from it (only if cached, so never from the origin) and stores it. Both queues are
//! bounded: a notice that does not fit is dropped and counted, which costs at most a
//! later origin fill, never a wrong answer. The copier that drains them is
//! `crate::warm`.
//!
//! A notice is a POST of [`WARM_PATH`] on the peer's media port whose body has one line
//! per object, `<silo>/<md5> <hop marker>`: each object carries its own signed marker,
//! so the receiver trusts exactly what a hop for that object would be trusted for.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::metrics;
use crate::object::{Md5, ObjectRef, Silo};

/// Where a mirror takes notices from the other owners.
pub const WARM_PATH: &str = "/_shimmer/warm";

/// The largest notice body accepted: 4096 lines (the largest batch) of at most 160 bytes.
pub const MAX_NOTICE_BYTES: usize = 4096 * 160;

/// The two queues between the request path and the copier.
#[derive(Default)]
pub struct Warm {
    /// Objects filled here from the origin, per other owner, to notice.
    outbox: Mutex<Outbox>,
    /// Objects noticed by other owners, with whom to pull them from.
    inbox: Mutex<VecDeque<(String, ObjectRef)>>,
    /// Wakes the sender when a batch is full.
    pub(crate) outbox_full: Notify,
    /// Wakes the puller when something arrives.
    pub(crate) inbox_ready: Notify,
    /// Copies being pulled now.
    pulling: AtomicUsize,
}

#[derive(Default)]
struct Outbox {
    per_peer: BTreeMap<String, VecDeque<ObjectRef>>,
    len: usize,
}

impl Warm {
    /// An object filled here from the origin: notice `to`, the other owner. `false` when
    /// the queue is full and the notice was dropped.
    pub fn filled(&self, to: &str, obj: ObjectRef, queue: usize, batch: usize) -> bool {
        let mut out = self.outbox.lock();
        if out.len >= queue {
            drop(out);
            metrics::WARM_DROPS.with_label_values(&["queue_full"]).inc();
            return false;
        }
        let q = out.per_peer.entry(to.to_owned()).or_default();
        q.push_back(obj);
        let full = q.len() >= batch;
        out.len += 1;
        metrics::WARM_QUEUE
            .with_label_values(&["send"])
            .set(i64::try_from(out.len).unwrap_or(i64::MAX));
        drop(out);
        if full {
            self.outbox_full.notify_one();
        }
        true
    }

    /// Up to `batch` objects for each peer that has some, taken off the queue.
    pub fn take_batches(&self, batch: usize) -> Vec<(String, Vec<ObjectRef>)> {
        let mut out = self.outbox.lock();
        let mut taken = Vec::new();
        let mut count = 0;
        for (peer, q) in out.per_peer.iter_mut() {
            let n = q.len().min(batch);
            if n > 0 {
                taken.push((peer.clone(), q.drain(..n).collect::<Vec<_>>()));
                count += n;
            }
        }
        out.per_peer.retain(|_, q| !q.is_empty());
        out.len -= count;
        metrics::WARM_QUEUE
            .with_label_values(&["send"])
            .set(i64::try_from(out.len).unwrap_or(i64::MAX));
        taken
    }

    /// Objects waiting to be noticed.
    pub fn outbox_len(&self) -> usize {
        self.outbox.lock().len
    }

    /// Objects `from` noticed: queued to pull. Returns how many were queued; the rest
    /// did not fit and were dropped.
    pub fn noticed(&self, from: &str, objs: &[ObjectRef], queue: usize) -> usize {
        let mut inbox = self.inbox.lock();
        let room = queue.saturating_sub(inbox.len());
        let n = objs.len().min(room);
        inbox.extend(objs[..n].iter().map(|o| (from.to_owned(), *o)));
        metrics::WARM_QUEUE
            .with_label_values(&["pull"])
            .set(i64::try_from(inbox.len()).unwrap_or(i64::MAX));
        drop(inbox);
        metrics::WARM_NOTICES
            .with_label_values(&["received"])
            .inc_by(n as u64);
        if n < objs.len() {
            metrics::WARM_DROPS
                .with_label_values(&["queue_full"])
                .inc_by((objs.len() - n) as u64);
        }
        if n > 0 {
            self.inbox_ready.notify_one();
        }
        n
    }

    /// The next object to pull, and from whom.
    pub fn next_pull(&self) -> Option<(String, ObjectRef)> {
        let mut inbox = self.inbox.lock();
        let next = inbox.pop_front();
        metrics::WARM_QUEUE
            .with_label_values(&["pull"])
            .set(i64::try_from(inbox.len()).unwrap_or(i64::MAX));
        next
    }

    /// Objects waiting to be pulled.
    pub fn inbox_len(&self) -> usize {
        self.inbox.lock().len()
    }

    /// Copies being pulled now.
    pub fn pulling(&self) -> usize {
        self.pulling.load(Ordering::Relaxed)
    }

    /// Counts a pull while the returned guard lives.
    pub fn pull_started(&self) -> PullGuard<'_> {
        self.pulling.fetch_add(1, Ordering::Relaxed);
        PullGuard(&self.pulling)
    }
}

/// Counts one pull in progress (see [`Warm::pull_started`]).
pub struct PullGuard<'a>(&'a AtomicUsize);

impl Drop for PullGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A notice body: one `<silo>/<md5> <marker>` line per object.
pub fn encode_notice(objs: &[ObjectRef], marker: impl Fn(ObjectRef) -> String) -> String {
    let mut body = String::with_capacity(objs.len() * 110);
    for obj in objs {
        body.push_str(obj.silo.as_str());
        body.push('/');
        body.push_str(&obj.hex());
        body.push(' ');
        body.push_str(&marker(*obj));
        body.push('\n');
    }
    body
}

/// The objects of a notice body with their markers. One bad line refuses the whole
/// notice (a peer that sends garbage is broken; nothing of it is trusted).
pub fn parse_notice(body: &[u8]) -> Result<Vec<(ObjectRef, &str)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the notice is not UTF-8".to_owned())?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}", i + 1);
        let (object, marker) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected `<silo>/<md5> <marker>`"))?;
        let (silo, hex) = object
            .split_once('/')
            .ok_or_else(|| bad("expected `<silo>/<md5>`"))?;
        let silo = Silo::from_path_segment(silo).ok_or_else(|| bad("unknown silo"))?;
        let md5 = Md5::parse(hex).map_err(|e| bad(&e.to_string()))?;
        if marker.is_empty() || marker.contains(char::is_whitespace) {
            return Err(bad("bad marker"));
        }
        out.push((ObjectRef::new(silo, md5), marker));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(i: u8) -> ObjectRef {
        let silo = if i % 2 == 0 {
            Silo::Images
        } else {
            Silo::Thumbs
        };
        ObjectRef::new(silo, Md5::from_u128(u128::from(i) * 0x1234_5678_9abc_def1))
    }

    #[test]
    fn a_notice_round_trips() {
        let objs: Vec<_> = (0..5).map(obj).collect();
        let body = encode_notice(&objs, |o| format!("m{}", o.silo.as_str()));
        let parsed = parse_notice(body.as_bytes()).expect("parses");
        assert_eq!(parsed.len(), 5);
        for ((o, m), want) in parsed.iter().zip(&objs) {
            assert_eq!(o, want);
            assert_eq!(*m, format!("m{}", want.silo.as_str()));
        }
    }

    #[test]
    fn one_bad_line_refuses_the_notice() {
        let good = encode_notice(&[obj(1)], |_| "m".into());
        for bad in [
            "_images/0123 m\n",
            "_videos/0123456789abcdef0123456789abcdef m\n",
            "_images/0123456789ABCDEF0123456789ABCDEF m\n",
            "_images/0123456789abcdef0123456789abcdef\n",
            "0123456789abcdef0123456789abcdef m\n",
            "_images/0123456789abcdef0123456789abcdef m x\n",
        ] {
            let body = format!("{good}{bad}");
            let e = parse_notice(body.as_bytes()).expect_err(bad);
            assert!(e.starts_with("line 2"), "{bad}: {e}");
        }
        assert!(parse_notice(&[0xff, 0xfe]).is_err());
        assert_eq!(parse_notice(b"").map(|v| v.len()), Ok(0));
    }

    #[test]
    fn the_outbox_batches_per_peer_and_drops_beyond_its_bound() {
        let w = Warm::default();
        for i in 0..5 {
            assert!(w.filled("b", obj(i), 8, 3));
        }
        for i in 5..8 {
            assert!(w.filled("c", obj(i), 8, 3));
        }
        assert!(!w.filled("c", obj(9), 8, 3), "the queue holds 8");
        let first = w.take_batches(3);
        assert_eq!(
            first
                .iter()
                .map(|(p, v)| (p.as_str(), v.len()))
                .collect::<Vec<_>>(),
            [("b", 3), ("c", 3)]
        );
        assert_eq!(first[0].1, [obj(0), obj(1), obj(2)], "in fill order");
        assert_eq!(w.outbox_len(), 2);
        let second = w.take_batches(3);
        assert_eq!(
            second
                .iter()
                .map(|(p, v)| (p.as_str(), v.len()))
                .collect::<Vec<_>>(),
            [("b", 2)]
        );
        assert_eq!(w.outbox_len(), 0);
        assert!(w.take_batches(3).is_empty());
    }

    #[test]
    fn the_inbox_takes_what_fits() {
        let w = Warm::default();
        let objs: Vec<_> = (0..5).map(obj).collect();
        assert_eq!(w.noticed("a", &objs, 3), 3);
        assert_eq!(w.noticed("a", &objs, 3), 0);
        assert_eq!(w.inbox_len(), 3);
        assert_eq!(w.next_pull(), Some(("a".to_owned(), obj(0))));
        assert_eq!(w.inbox_len(), 2);
    }
}
