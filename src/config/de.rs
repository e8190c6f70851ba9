//! The schema's value deserializers: humantime durations, thresholds that may be `"off"`,
//! hedging, breaker windows and listen addresses, each failing with how to write the value.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use seawall_actors::{Hedge, WindowKind};

use super::Threshold;

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"250ms\", \"30s\" or \"1m 30s\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        humantime::parse_duration(v).map_err(|e| {
            E::custom(format!(
                "{v:?} is not a duration ({e}): write it like \"250ms\", \"30s\" or \"1m 30s\""
            ))
        })
    }
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A percentage threshold, or `"off"`.
struct RateVisitor;

impl Visitor<'_> for RateVisitor {
    type Value = Threshold<f64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a percentage (5 or 2.5) or \"off\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Threshold<f64>, E> {
        Ok(Threshold::At(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Threshold<f64>, E> {
        Ok(Threshold::At(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Threshold<f64>, E> {
        Ok(Threshold::At(v as f64))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Threshold<f64>, E> {
        if v == "off" {
            Ok(Threshold::Off)
        } else {
            Err(E::custom(format!(
                "{v:?} is neither a percentage nor \"off\": write failure_rate = 5 or \"off\""
            )))
        }
    }
}

pub(super) fn de_opt_rate<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Threshold<f64>>, D::Error> {
    d.deserialize_any(RateVisitor).map(Some)
}

/// `"auto"`, `"off"` or a duration.
struct HedgeVisitor;

impl Visitor<'_> for HedgeVisitor {
    type Value = Hedge;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"auto\", \"off\" or a duration string such as \"2s\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Hedge, E> {
        match v {
            "auto" => Ok(Hedge::Auto),
            "off" => Ok(Hedge::Off),
            _ => DurationVisitor
                .visit_str(v)
                .map(Hedge::After)
                .map_err(|_: E| {
                    E::custom(format!(
                        "{v:?} is not \"auto\", \"off\" or a duration such as \"2s\""
                    ))
                }),
        }
    }
}

pub(super) fn de_opt_hedge<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Hedge>, D::Error> {
    d.deserialize_str(HedgeVisitor).map(Some)
}

/// A duration threshold, or `"off"`.
struct LimitVisitor;

impl Visitor<'_> for LimitVisitor {
    type Value = Threshold<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"60s\", or \"off\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Threshold<Duration>, E> {
        if v == "off" {
            return Ok(Threshold::Off);
        }
        DurationVisitor.visit_str(v).map(Threshold::At)
    }
}

pub(super) fn de_opt_limit<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Threshold<Duration>>, D::Error> {
    d.deserialize_str(LimitVisitor).map(Some)
}

struct WindowVisitor;

impl Visitor<'_> for WindowVisitor {
    type Value = WindowKind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a call count (window = 20) or a duration (window = \"60s\")")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<WindowKind, E> {
        match u32::try_from(v) {
            Ok(n) if n >= 1 => Ok(WindowKind::Count(n)),
            _ => Err(E::custom(format!(
                "a count window must hold 1 to {} calls, got {v}",
                u32::MAX
            ))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<WindowKind, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<WindowKind, E> {
        DurationVisitor.visit_str(v).map(WindowKind::Time)
    }
}

pub(super) fn de_window<'de, D: Deserializer<'de>>(d: D) -> Result<Option<WindowKind>, D::Error> {
    d.deserialize_any(WindowVisitor).map(Some)
}

struct SocketAddrVisitor;

impl Visitor<'_> for SocketAddrVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address such as \"127.0.0.1:8700\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        v.parse().map_err(|_| {
            E::custom(format!(
                "{v:?} is not an IP:PORT address: write it like \"127.0.0.1:8700\" or \"[::1]:8700\""
            ))
        })
    }
}

pub(super) fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(SocketAddrVisitor)
}
