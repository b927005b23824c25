//! Retry delays for the sync loop.

use std::time::Duration;

/// Capped exponential backoff, deterministic (one mirror per database connection,
/// so there is no thundering herd to spread).
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the one after it doubles, up to the cap.
    pub fn delay(&mut self) -> Duration {
        let now = self.next.min(self.max);
        self.next = (now * 2).min(self.max).max(self.min);
        now
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let seen: Vec<Duration> = (0..6).map(|_| b.delay()).collect();
        assert_eq!(
            seen,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        b.reset();
        assert_eq!(b.delay(), ms(100));
    }
}
