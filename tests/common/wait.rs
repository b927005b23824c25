//! Waiting for something to happen by polling to a deadline, never by sleeping a
//! fixed time and hoping: a fixed sleep passes vacuously when the thing is merely
//! late, and flakes when the machine is loaded.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long any "eventually" waits before the test fails: long enough for a loaded
/// CI machine, short enough that a hang is reported.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Between two polls.
const STEP: Duration = Duration::from_millis(20);

/// Polls `f` until it gives `Some` (returned) or `within` has passed (`None`).
/// Polls at least once, and once more at the deadline.
pub fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(STEP.min(deadline - now));
    }
}

/// Polls `f` until it gives `Some` (up to [`DEADLINE`]), then returns it; panics naming
/// `what` otherwise. For waiting on behaviour (a reload done, a log line written),
/// never for asserting on time.
pub fn wait_until<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    match eventually(DEADLINE, f) {
        Some(v) => v,
        None => panic!("gave up waiting for {what} after {DEADLINE:?}"),
    }
}

/// [`eventually`] for async probes (a request, a metrics read), sleeping on the
/// runtime's timer so a current-thread runtime keeps running the service under test.
pub async fn eventually_async<T, F>(within: Duration, mut f: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(STEP.min(deadline - now)).await;
    }
}

/// [`wait_until`] for async probes.
pub async fn wait_until_async<T, F>(what: &str, f: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    match eventually_async(DEADLINE, f).await {
        Some(v) => v,
        None => panic!("gave up waiting for {what} after {DEADLINE:?}"),
    }
}
