//! Fetches under way, by key: what a request for an object that is being fetched waits
//! on before it looks again (collapsed forwarding, in front of pingora's cache lock).
//!
//! pingora's cache lock lets the readers of a fill in progress stream it as it arrives,
//! each through pingora's writer and the fill's reader, one send per upstream chunk; a
//! thousand of them on a new front-page image cost several times nginx's CPU (`make
//! bench`, cold). A plain GET instead holds here, briefly, until the object is whole
//! and then takes the fast path (one `writev`, or `sendfile`), as any later hit does. A
//! fill that takes longer than the hold is streamed as before: the hold bounds what a
//! slow origin adds to the first byte.
//!
//! A flight is opened by pingora's lock writer (`ProxyHttp::cache_miss`) and lasts as
//! long as its guard; the tiered store pokes it when the fill starts, so a waiter then
//! waits on the fill itself.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use pingora_cache::key::HashBinary;
use tokio::sync::watch;

/// One fetch under way. Waiters watch `poke`; it closes when the guard drops.
struct Flight {
    poke: watch::Sender<()>,
}

#[derive(Default)]
pub(crate) struct Flights {
    by_key: Mutex<HashMap<HashBinary, Weak<Flight>>>,
}

/// Held by the request that fetches `key`: the flight ends when it drops.
pub struct FlightGuard {
    key: HashBinary,
    flight: Arc<Flight>,
    flights: &'static Flights,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut by_key = self.flights.by_key.lock();
        // Only this flight's entry: another fetch of the key may have opened a newer one.
        if by_key
            .get(&self.key)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.flight)))
        {
            by_key.remove(&self.key);
        }
        // Dropping the last sender (ours) closes every waiter's receiver.
    }
}

impl Flights {
    /// Opens a flight for `key`, replacing any earlier one (whose waiters are woken).
    pub(crate) fn open(&'static self, key: HashBinary) -> FlightGuard {
        let flight = Arc::new(Flight {
            poke: watch::Sender::new(()),
        });
        let old = self.by_key.lock().insert(key, Arc::downgrade(&flight));
        if let Some(old) = old.and_then(|w| w.upgrade()) {
            old.poke.send_replace(());
        }
        FlightGuard {
            key,
            flight,
            flights: self,
        }
    }

    /// Wakes the waiters of `key`'s flight, if there is one (its fill has started).
    pub(crate) fn poke(&self, key: &HashBinary) {
        let flight = self.by_key.lock().get(key).and_then(Weak::upgrade);
        if let Some(flight) = flight {
            flight.poke.send_replace(());
        }
    }

    /// A receiver that changes when `key`'s flight is poked and closes when it ends;
    /// `None` when no fetch of `key` is under way.
    pub(crate) fn watch(&self, key: &HashBinary) -> Option<watch::Receiver<()>> {
        let flight = self.by_key.lock().get(key).and_then(Weak::upgrade)?;
        Some(flight.poke.subscribe())
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_key.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flights() -> &'static Flights {
        Box::leak(Box::default())
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_a_poke_and_by_the_end_of_the_flight() {
        let f = flights();
        assert!(f.watch(&[1; 16]).is_none(), "nothing under way");
        let guard = f.open([1; 16]);
        let mut rx = f.watch(&[1; 16]).expect("under way");
        f.poke(&[1; 16]);
        assert!(rx.changed().await.is_ok(), "poked");
        drop(guard);
        assert!(rx.changed().await.is_err(), "ended");
        assert!(f.watch(&[1; 16]).is_none());
        assert_eq!(f.len(), 0);
    }

    #[tokio::test]
    async fn a_newer_flight_of_the_key_survives_the_older_ones_end() {
        let f = flights();
        let old = f.open([2; 16]);
        let mut old_rx = f.watch(&[2; 16]).expect("old");
        let new = f.open([2; 16]);
        assert!(
            old_rx.changed().await.is_ok(),
            "the old one's waiters look again"
        );
        drop(old);
        let mut rx = f.watch(&[2; 16]).expect("the newer flight");
        drop(new);
        assert!(rx.changed().await.is_err());
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn pokes_of_other_keys_and_of_nothing_are_harmless() {
        let f = flights();
        f.poke(&[3; 16]);
        let _guard = f.open([4; 16]);
        let rx = f.watch(&[4; 16]).expect("under way");
        f.poke(&[3; 16]);
        assert!(!rx.has_changed().expect("open"), "not this key's");
    }
}
