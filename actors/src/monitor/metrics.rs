//! The monitor's metric handles: made once per model, chain and class, then only added to, off
//! the caller's path.

use std::collections::HashMap;

use crate::policy::classify::Class;

/// Metric handles of one family per class, made on first use. A handle is registered once, so
/// recording is an atomic add rather than a key built and looked up per call. (So the exporter
/// must be installed before the runtime is spawned, as `metrics` expects anyway.)
pub(crate) struct PerClass {
    pub(crate) metric: &'static str,
    pub(crate) counters: [Option<::metrics::Counter>; CLASS_COUNT],
    pub(crate) histograms: [Option<::metrics::Histogram>; CLASS_COUNT],
}

const CLASS_COUNT: usize = Class::ALL.len();

impl PerClass {
    pub(crate) fn new(metric: &'static str) -> Self {
        Self {
            metric,
            counters: Default::default(),
            histograms: Default::default(),
        }
    }

    pub(crate) fn counter(&mut self, model: &str, class: Class) -> &::metrics::Counter {
        let metric = self.metric;
        self.counters[class.index()].get_or_insert_with(
            || ::metrics::counter!(metric, "model" => model.to_owned(), "class" => class.as_str()),
        )
    }

    pub(crate) fn histogram(&mut self, model: &str, class: Class) -> &::metrics::Histogram {
        let metric = self.metric;
        self.histograms[class.index()].get_or_insert_with(
            || ::metrics::histogram!(metric, "model" => model.to_owned(), "class" => class.as_str()),
        )
    }
}

/// Counters of a model's attempts.
pub(crate) struct ModelMetrics {
    pub(crate) attempts: PerClass,
    pub(crate) probes: PerClass,
    pub(crate) durations: PerClass,
    pub(crate) failures: HashMap<(Class, Option<u16>), ::metrics::Counter>,
    pub(crate) retries: ::metrics::Counter,
    pub(crate) input_tokens: ::metrics::Counter,
    pub(crate) output_tokens: ::metrics::Counter,
    pub(crate) cost: ::metrics::Counter,
}

impl ModelMetrics {
    pub(crate) fn new(model: &str) -> Self {
        let label = || model.to_owned();
        Self {
            attempts: PerClass::new("seawall_attempts_total"),
            probes: PerClass::new("seawall_probes_total"),
            durations: PerClass::new("seawall_attempt_duration_seconds"),
            failures: HashMap::new(),
            retries: ::metrics::counter!("seawall_retries_total", "model" => label()),
            input_tokens: ::metrics::counter!("seawall_input_tokens_total", "model" => label()),
            output_tokens: ::metrics::counter!("seawall_output_tokens_total", "model" => label()),
            cost: ::metrics::counter!("seawall_cost_microdollars_total", "model" => label()),
        }
    }
}

/// Counters of a chain's calls; `calls` and `durations` by status (ok, error, invalid).
pub(crate) struct ChainMetrics {
    pub(crate) calls: [::metrics::Counter; 3],
    pub(crate) durations: [::metrics::Histogram; 3],
    pub(crate) failures: HashMap<&'static str, ::metrics::Counter>,
    pub(crate) fallbacks: HashMap<usize, ::metrics::Counter>,
    pub(crate) degraded_live: ::metrics::Counter,
}

impl ChainMetrics {
    pub(crate) fn new(chain: &str) -> Self {
        let statuses = ["ok", "error", "invalid"];
        Self {
            calls: statuses.map(|status| {
                ::metrics::counter!("seawall_calls_total", "chain" => chain.to_owned(), "status" => status)
            }),
            durations: statuses.map(|status| {
                ::metrics::histogram!("seawall_call_duration_seconds", "chain" => chain.to_owned(), "status" => status)
            }),
            failures: HashMap::new(),
            fallbacks: HashMap::new(),
            // Answers of a fallback model; the request actor counts cache, static and queued.
            degraded_live: ::metrics::counter!(
                "seawall_degraded_answers_total",
                "chain" => chain.to_owned(),
                "source" => "live"
            ),
        }
    }
}
