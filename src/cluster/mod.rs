//! The fleet on Redis (opt-in with `[cluster]`): several seawall instances sharing one Redis
//! behave like one. Without `[cluster]` nothing here connects to anything.
//!
//! - [`conn`]: one bounded connection (every call answers or fails within about a second), the
//!   errors it reports (what to fix, never the password), the instances' heartbeat;
//! - [`jobs`]: the shared queue for later on Redis Streams: any instance accepts a job, one
//!   replays it, a dead instance's jobs are reclaimed, each job finishes exactly once.

pub mod conn;
pub mod jobs;
