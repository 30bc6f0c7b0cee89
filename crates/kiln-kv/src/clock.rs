use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The time source that decides expiration, in Unix seconds.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(elapsed) => i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX),
            // A system clock set before 1970 counts as the epoch.
            Err(_) => 0,
        }
    }
}

/// A clock that changes only through `set` and `advance`, for testing expiration without
/// sleeping.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    pub fn new(start: i64) -> ManualClock {
        ManualClock {
            now: AtomicI64::new(start),
        }
    }

    /// Sets the time to `t` Unix seconds.
    pub fn set(&self, t: i64) {
        self.now.store(t, Ordering::SeqCst);
    }

    /// Moves the time forward by `secs` seconds (backward when negative).
    pub fn advance(&self, secs: i64) {
        self.now.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}
