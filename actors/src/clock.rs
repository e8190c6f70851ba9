//! The runtime's only clock: tokio's, so tests on paused time move it in microseconds.
//!
//! Policies take `std::time::Instant` arguments; these helpers convert from and to tokio's clock.

/// Now, on tokio's clock (virtual under `start_paused`), as a std instant for the policies.
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
