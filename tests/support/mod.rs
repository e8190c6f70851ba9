//! Helpers shared by the integration tests (each test binary includes this as `mod support;`
//! and uses what it needs).
#![allow(dead_code)]

pub mod agents;
pub mod fuzz;
pub mod gateway;
pub mod http;
pub mod process;
pub mod raw;
pub mod readme;
pub mod redis;
pub mod sim;

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A `MakeWriter` that appends everything to one shared buffer.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

static LOGS: OnceLock<Captured> = OnceLock::new();

/// Install one global TRACE subscriber writing to a shared buffer, before any test sends
/// anything.
///
/// Global, not `set_default`: a thread-local subscriber races with other test threads
/// registering the same callsites (their interest can be cached as "never"), which loses events
/// at random. Call it before the first request of every test, so all callsites register after
/// the global subscriber exists and every test's logs can be checked for keys.
pub fn init_logs() {
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    });
}

/// Everything logged by this test binary so far.
pub fn logs() -> String {
    let logs = LOGS.get().expect("init_logs ran");
    String::from_utf8(logs.0.lock().unwrap().clone()).unwrap()
}

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(5);

/// What one look of [`eventually`] found: done (with what it found), or not yet (with, for the
/// panic message, what it saw instead when it can say).
pub trait Check {
    /// What a look that is done gives back.
    type Done;
    /// `Ok` when done; `Err` with what was seen instead, if anything.
    fn check(self) -> Result<Self::Done, Option<String>>;
}

/// `true` is done.
impl Check for bool {
    type Done = ();
    fn check(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

/// `Some(value)` is done, with the value.
impl<T> Check for Option<T> {
    type Done = T;
    fn check(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Ok(value)` is done; `Err(what was seen)` is not yet, and the last one is in the panic
/// message.
impl<T> Check for Result<T, String> {
    type Done = T;
    fn check(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Wait in real time until `look` says something happened: look, then again every few
/// milliseconds, for at most `within`; what the successful look found. Panics naming `what`
/// (and what the last look saw, when it says) if it never happened.
///
/// For conditions the test cannot be told about (a counter, a log line, a status field), in
/// place of a hand-rolled loop or a sleep that guesses how long the thing takes.
pub async fn eventually<C, F, Fut>(what: &str, within: Duration, mut look: F) -> C::Done
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    let deadline = Instant::now() + within;
    loop {
        match look().await.check() {
            Ok(done) => return done,
            Err(seen) if Instant::now() >= deadline => match seen {
                Some(seen) => panic!("{what}: not within {within:?}; last seen: {seen}"),
                None => panic!("{what}: not within {within:?}"),
            },
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
