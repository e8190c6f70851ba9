//! Giving a burst's memory back to the system (glibc).
//!
//! glibc's malloc keeps freed memory in its arenas: after 2000 calls held at once the gateway
//! stayed at its peak RSS (158 MB from 15 MB idle) long after they were answered. When the load
//! (calls in flight plus open client connections) falls well below the highest seen since the
//! last trim (a burst has passed),
//! and at least every [`EVERY`], the gateway asks glibc to return its free pages
//! (`malloc_trim(0)`, which walks the arenas: well under a millisecond for a heap of this size).
//! With it, RSS came back to 1.5x idle two seconds after such a burst (BENCHMARKS.md, memory).
//! Other allocators and platforms return memory on their own terms: nothing to do there.

use std::time::Duration;

/// How often the calls in flight are looked at.
const TICK: Duration = Duration::from_millis(500);
/// A trim at least this often while the gateway runs.
const EVERY: Duration = Duration::from_secs(30);
/// A burst worth trimming after: this much load at once.
const BURST: usize = 64;

/// Trim after bursts of `load` until the returned task is aborted.
pub(crate) fn spawn(load: impl Fn() -> usize + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut high = 0usize;
        let mut last = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let now = load();
            high = high.max(now);
            let burst_passed = high >= BURST && now <= high / 4;
            if burst_passed || last.elapsed() >= EVERY {
                trim();
                high = now;
                last = tokio::time::Instant::now();
            }
        }
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of glibc's own arenas; it takes no pointer
    // and is thread-safe (it locks each arena in turn).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
