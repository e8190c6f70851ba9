//! The config (`Config::from_toml`, what `seawall serve` reads) and the simulator's scenario
//! (`seawall sim`): a value or a typed error with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seawall::config::Config;
use seawall::sim::Scenario;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::from_toml(text) {
        assert!(!e.to_string().is_empty());
    }
    if let Err(e) = Scenario::from_toml(text) {
        assert!(!e.to_string().is_empty());
    }
    if let Err(e) = Scenario::from_json(text) {
        assert!(!e.to_string().is_empty());
    }
});
