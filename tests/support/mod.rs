//! Helpers shared by the integration tests (each test binary includes this as `mod support;`
//! and uses what it needs).
#![allow(dead_code)]

pub mod fuzz;
pub mod gateway;
pub mod http;
pub mod process;
pub mod raw;
pub mod readme;
pub mod redis;
pub mod sim;

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

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
