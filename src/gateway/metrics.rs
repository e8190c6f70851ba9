//! The gateway's Prometheus metrics: request and response counters kept here, calls in flight
//! read from the runtime when scraped, and everything the runtime records through the `metrics`
//! facade (calls, failures, fallbacks, retries, tokens, cost, latency, breaker states and
//! transitions, governor waits and bucket levels: README "Observability") rendered by the
//! Prometheus exporter this module installs as the process's recorder. If the embedding app
//! installed its own recorder first, the runtime's metrics go there and `/metrics` falls back to
//! reading breaker states at scrape time.
//!
//! Every `*_seconds` metric is rendered as a Prometheus histogram with the buckets of
//! [`LATENCY_BUCKETS`] (5 ms to 120 s), not a summary: bucket counts add up across instances,
//! so `histogram_quantile(0.99, sum by (le) (rate(seawall_call_duration_seconds_bucket[5m])))`
//! is the fleet's p99, which averaging per-instance quantiles is not.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `seawall_breaker_state` | gauge | `model`; 0 closed, 1 half-open, 2 open |
//! | `seawall_calls_in_flight` | gauge | |
//! | `seawall_gateway_requests_total` | counter | `route` |
//! | `seawall_gateway_responses_total` | counter | `route`, `status` |
//!
//! The gateway counters count every request the router sees and every answer it gives, the
//! refusals made before the runtime included (401, 403, 404, 405, 413). `route` is one of the
//! gateway's own paths (`/v1/seawall/jobs/{id}` for every job), or `other`, so a scanner cannot
//! grow the label set.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The upper bounds, in seconds, of the buckets of every `*_seconds` histogram: from a fast
/// governor wait (5 ms) to the longest call deadline worth telling apart (120 s, the default).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0,
];

/// The exporter's settings: `*_seconds` histograms with [`LATENCY_BUCKETS`].
fn builder() -> PrometheusBuilder {
    // Fails only for an empty bucket list, which LATENCY_BUCKETS is not; summaries beat no
    // exporter if it ever were.
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// How often the exporter's histogram samples are folded into their buckets.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder, installed on first use; `None` when another recorder
/// was installed before.
///
/// A recorder built this way keeps every histogram sample until something drains it: a scrape
/// does, and so does a thread started here that runs the exporter's upkeep every
/// [`UPKEEP`]. Without it a gateway nobody scraped grew by about 40 bytes a call (found by
/// `examples/soak.rs`: +35 MiB over a million calls).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            let upkeep = handle.clone();
            // A plain thread: the recorder outlives any one tokio runtime (tests make many).
            // If it cannot start, scrapes still drain the samples.
            let _ = std::thread::Builder::new()
                .name("seawall-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                });
            Some(handle)
        })
        .as_ref()
}

use seawall_actors::StateKind;

/// The routes counted under their own name.
const ROUTES: [&str; 8] = [
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/chat/completions",
    "/v1/models",
    "/healthz",
    "/readyz",
    "/metrics",
    "/status",
];

/// The `route` label of job lookups, whatever the job.
const JOBS_ROUTE: &str = "/v1/seawall/jobs/{id}";

/// The `route` label of model lookups, whatever the model.
const MODEL_ROUTE: &str = "/v1/models/{id}";

/// The `route` label of a request path.
pub fn route_label(path: &str) -> &'static str {
    if path
        .strip_prefix("/v1/seawall/jobs/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    {
        return JOBS_ROUTE;
    }
    if path
        .strip_prefix("/v1/models/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    {
        return MODEL_ROUTE;
    }
    ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other")
}

/// Counters of requests and responses.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<&'static str, u64>>,
    responses: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl Metrics {
    /// Count a request on `route` (a [`route_label`]).
    pub fn request(&self, route: &'static str) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(route).or_default() += 1;
    }

    /// Count a response on `route` with `status`.
    pub fn response(&self, route: &'static str, status: u16) {
        let mut m = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route, status)).or_default() += 1;
    }

    /// The exposition text: the runtime's own metrics when the exporter holds them (`runtime`),
    /// else breaker states read at scrape time; then calls in flight and the gateway counters.
    pub fn render(
        &self,
        breakers: &[(String, StateKind)],
        in_flight: usize,
        runtime: Option<&str>,
    ) -> String {
        let mut out = String::new();
        if let Some(text) = runtime {
            out.push_str(text);
            if !text.is_empty() && !text.ends_with('\n') {
                out.push('\n');
            }
            self.render_own(&mut out, in_flight);
            return out;
        }
        out.push_str(
            "# HELP seawall_breaker_state Breaker state per model: 0 closed, 1 half-open, 2 open.\n\
             # TYPE seawall_breaker_state gauge\n",
        );
        for (model, state) in breakers {
            let v = match state {
                StateKind::Closed => 0,
                StateKind::HalfOpen => 1,
                StateKind::Open => 2,
            };
            let _ = writeln!(
                out,
                "seawall_breaker_state{{model=\"{}\"}} {v}",
                escape(model)
            );
        }
        self.render_own(&mut out, in_flight);
        out
    }

    fn render_own(&self, out: &mut String, in_flight: usize) {
        let _ = write!(
            out,
            "# HELP seawall_calls_in_flight Calls inside the runtime now.\n\
             # TYPE seawall_calls_in_flight gauge\n\
             seawall_calls_in_flight {in_flight}\n"
        );
        out.push_str(
            "# HELP seawall_gateway_requests_total Requests received by the gateway.\n\
             # TYPE seawall_gateway_requests_total counter\n",
        );
        for (route, n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "seawall_gateway_requests_total{{route=\"{route}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP seawall_gateway_responses_total Responses sent by the gateway.\n\
             # TYPE seawall_gateway_responses_total counter\n",
        );
        for ((route, status), n) in self
            .responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "seawall_gateway_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.request(route_label("/v1/messages"));
        m.response(route_label("/v1/messages"), 200);
        m.request(route_label("/wp-admin"));
        let text = m.render(
            &[
                ("a\"b".into(), StateKind::Open),
                ("c".into(), StateKind::Closed),
            ],
            3,
            None,
        );
        assert!(
            text.contains("seawall_breaker_state{model=\"a\\\"b\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("seawall_breaker_state{model=\"c\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("seawall_calls_in_flight 3\n"), "{text}");
        assert!(text.contains("seawall_gateway_requests_total{route=\"other\"} 1\n"));
        assert!(text.contains(
            "seawall_gateway_responses_total{route=\"/v1/messages\",status=\"200\"} 1\n"
        ));
    }

    #[test]
    fn job_lookups_share_one_route_label_and_scanners_get_other() {
        assert_eq!(route_label("/v1/seawall/jobs/job_abc"), JOBS_ROUTE);
        assert_eq!(route_label("/v1/seawall/jobs/"), "other");
        assert_eq!(route_label("/v1/seawall/jobs/a/b"), "other");
        assert_eq!(route_label("/metrics"), "/metrics");
        assert_eq!(route_label("/.env"), "other");
    }

    #[test]
    fn seconds_metrics_render_as_histograms_with_buckets() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("x_duration_seconds", "chain" => "c").record(0.03);
            metrics::histogram!("x_size_bytes").record(3.0);
        });
        let text = handle.render();
        assert!(
            text.contains("# TYPE x_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("x_duration_seconds_bucket{chain=\"c\",le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("x_duration_seconds_bucket{chain=\"c\",le=\"0.025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("x_duration_seconds_bucket{chain=\"c\",le=\"+Inf\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("x_duration_seconds{"),
            "no quantiles: {text}"
        );
        // Other histograms keep the exporter's default (a summary): no buckets in seconds for
        // what is not a time.
        assert!(text.contains("# TYPE x_size_bytes summary"), "{text}");
    }
}
