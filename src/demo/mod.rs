//! `seawall demo`: a scripted incident replayed in-process, end to end, in under a minute.
//!
//! [`run`] starts the simulator on loopback with an incident on its own clock, builds a runtime
//! against it and drives a fleet of agents through it, returning a [`DemoReport`]. The runtime
//! is the real thing over two of the simulator's wires: `claude-sonnet-4-5` on Anthropic's API
//! (the real [`AnthropicUpstream`], a fake key), then the same model on Bedrock
//! (`sonnet-bedrock`, the real [`BedrockUpstream`] SigV4-signing with static fake credentials
//! given to this runtime only: the environment and `~/.aws` are never read), with the
//! simulator's limits on both and short breaker open durations. When Anthropic's API is
//! overloaded, the traffic moves onto Bedrock: the same model, full fidelity, separate capacity. [`render_table`] and [`render_svg`] turn the report
//! into the text table and the SVG timeline that `seawall demo` prints and writes.
//!
//! The incident, in seconds of the default 30 s run (other durations scale it):
//!
//! | when | what |
//! |---|---|
//! | 2-5.5 s | 10 % of requests to Anthropic's API never get an answer |
//! | 6-14 s | Anthropic's API answers 529 to everything: an overload |
//! | 8-12 s | 20 % of Bedrock's answers wait 3 s for their first byte |
//! | 18-24 s | every agent step reads a 12k-token document: far beyond sonnet's input-token limit |
//! | 26-27.5 s | 20 % of connections to Anthropic's API are reset |
//!
//! Nothing leaves the machine and no key is needed: the simulator accepts any key on loopback.

mod progress;
mod svg;
mod table;
mod workload;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seawall_actors::{
    AttemptRecord, Backoff, BreakerConfig, Class, Error, Event, Jitter, Limits, Outcome,
    RetryPolicy, Seawall, StateKind, WindowKind,
};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinSet;

use crate::secret::KeyError;
use crate::sim::{
    Fault, FaultKind, ModelSpec, RateLimits, Scenario, Sim, SimError, SimHandle, Wire,
};
use crate::transport::{AwsCredentials, BedrockOptions, BedrockUpstream, TransportSetupError};
use crate::{AnthropicOptions, AnthropicUpstream, ApiKey};

pub use svg::render_svg;
pub use table::render_table;

/// The model every call asks for first, on Anthropic's API.
pub const PRIMARY: &str = "claude-sonnet-4-5";
/// Where calls go when the primary cannot serve: the same model on Bedrock (seawall's name for
/// the hop).
pub const FALLBACK: &str = "sonnet-bedrock";
/// The fallback's Bedrock model id (a cross-region inference profile), which goes in the path.
pub const FALLBACK_ID: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
/// The platform each hop runs on, first choice first.
pub const PLATFORMS: [(&str, &str); 2] = [(PRIMARY, "Anthropic API"), (FALLBACK, "Bedrock")];
/// How long `seawall demo` runs by default.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);
/// How long `seawall demo --quick` runs: every window, and the pace, scaled down.
pub const QUICK_DURATION: Duration = Duration::from_secs(6);
/// Shortest run: below this the windows are too short for a breaker to open and close again.
pub const MIN_DURATION: Duration = Duration::from_secs(3);
/// Longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// Attempts a naive client makes per call: the official SDKs' default of 2 retries, plus the
/// first try. Used only for the labelled estimate.
pub const NAIVE_TRIES: usize = 3;

const UPSTREAM: &str = "anthropic";
const BEDROCK: &str = "bedrock";
const BEDROCK_REGION: &str = "us-east-1";
/// A fake key: the simulator accepts any non-empty key, and this one could never work upstream.
const DEMO_KEY: &str = "sk-ant-demo-0000-not-a-real-key";
/// Fake AWS credentials, handed to the demo's own Bedrock transport (never to the process's
/// environment): the simulator reads the access key id and checks no signature.
const DEMO_AWS_ACCESS_KEY: &str = "AKIADEMO0000NOTREAL0";
const DEMO_AWS_SECRET: &str = "demo-secret-0000-not-a-real-key";
/// Tokens in the document each agent step reads during the long-context burst.
const DOC_TOKENS: u64 = 12_000;
/// A rough input size of an ordinary agent step (system prompt plus a short history), used only
/// to size sonnet's input-token limit so that the burst, not the ordinary traffic, exceeds it.
const TYPICAL_STEP_TOKENS: u64 = 300;
const MAX_TOKENS: u32 = 64;

/// How `run` shows progress while it works.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on stderr when stderr is a terminal; otherwise one plain line on stderr
    /// every few seconds, so logs of CI runs stay short.
    #[default]
    Auto,
    /// Nothing at all (tests, embedding).
    Hidden,
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoOptions {
    /// Length of the scripted incident; every window scales with it. Between [`MIN_DURATION`]
    /// and [`MAX_DURATION`].
    pub duration: Duration,
    /// Seeds the simulator's draws and the agents' tasks.
    pub seed: u64,
    /// Concurrent agents (1 to 64). Each makes one call per step at a steady pace.
    pub agents: usize,
    /// How progress is shown.
    pub progress: Progress,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: DEFAULT_DURATION,
            seed: 7,
            agents: 8,
            progress: Progress::Auto,
        }
    }
}

impl DemoOptions {
    /// The short run `seawall demo --quick` makes: [`QUICK_DURATION`], otherwise the defaults.
    pub fn quick() -> Self {
        Self {
            duration: QUICK_DURATION,
            ..Self::default()
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The options are out of range; the message says which and what is allowed.
    #[error("{0}")]
    Options(String),
    /// The simulator did not start.
    #[error("the simulator did not start: {0}")]
    Sim(#[from] SimError),
    /// The transport to the simulator could not be built.
    #[error("the transport could not be built: {0}")]
    Transport(#[from] TransportSetupError),
    /// The demo's key was refused (cannot happen with the built-in key).
    #[error("{0}")]
    Key(#[from] KeyError),
    /// The runtime refused its configuration or did not start.
    #[error("the runtime did not start: {0}")]
    Runtime(#[from] Error),
    /// A task of the demo itself failed (a bug: please report).
    #[error("internal error: {0}")]
    Internal(String),
}

/// What went wrong in one window of the incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IncidentKind {
    /// The primary answers 529 to everything.
    Outage,
    /// Some answers of the fallback wait seconds for their first byte.
    SlowFirstByte,
    /// The agents read long documents: more input tokens than the primary's limit allows.
    LongContext,
    /// Some connections to the primary are reset.
    Resets,
    /// Some requests to the primary never get an answer (the tail).
    Hangs,
}

/// One window of the scripted incident, on the simulator's clock (which starts with the run).
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    /// What happens.
    pub kind: IncidentKind,
    /// The model it happens to (`None`: the workload changes, not a model).
    pub model: Option<String>,
    /// Start of the window.
    pub from: Duration,
    /// End of the window (exclusive).
    pub until: Duration,
    /// A short label for the timeline.
    pub label: String,
    /// One line for the table.
    pub detail: String,
}

impl Incident {
    /// Whether `t` lies in the window.
    pub fn contains(&self, t: Duration) -> bool {
        self.from <= t && t < self.until
    }
}

/// The script derived from [`DemoOptions`]: windows, pace, limits and the runtime's settings.
///
/// Short runs are a time-lapse of the default one: windows scale with the duration, and the
/// agents' pace, the simulated latencies and the runtime's timeouts scale too (down to 40 %),
/// so a 6 s run still sees enough calls for breakers to open and close.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Length of the run.
    pub duration: Duration,
    /// Seed of every draw.
    pub seed: u64,
    /// Concurrent agents.
    pub agents: usize,
    /// Time between two steps of one agent (a slow call delays the next step; steps never
    /// bunch up to catch up).
    pub step_interval: Duration,
    /// How long an open breaker stays open.
    pub open_for: Duration,
    /// Longest single upstream attempt.
    pub attempt_timeout: Duration,
    /// Total time a call may take.
    pub deadline: Duration,
    /// How long a slow answer of the fallback would make a client wait.
    pub slow_delay: Duration,
    /// Tokens of the document read during the long-context burst.
    pub doc_tokens: u64,
    /// Per-model limits, the same in the simulator and in the runtime.
    pub limits: Vec<(String, Limits)>,
    /// The windows of the incident.
    pub incidents: Vec<Incident>,
}

impl Plan {
    /// Derive the script; refuses options out of range.
    ///
    /// # Errors
    ///
    /// [`DemoError::Options`] when the duration or the number of agents is out of range.
    pub fn new(opts: &DemoOptions) -> Result<Self, DemoError> {
        if opts.duration < MIN_DURATION || opts.duration > MAX_DURATION {
            return Err(DemoError::Options(format!(
                "the duration must be between {} and {} seconds, got {:.1}",
                MIN_DURATION.as_secs(),
                MAX_DURATION.as_secs(),
                opts.duration.as_secs_f64()
            )));
        }
        if !(1..=64).contains(&opts.agents) {
            return Err(DemoError::Options(format!(
                "agents must be between 1 and 64, got {}",
                opts.agents
            )));
        }
        let d = opts.duration.as_secs_f64();
        let scale = d / 30.0;
        let pace = pace_of(opts.duration);
        let secs = Duration::from_secs_f64;
        // The script is written for 30 s; other durations stretch or shrink it.
        let at = |second_of_30: f64| secs(second_of_30 * scale);

        let step_interval = secs(0.8 * pace);
        let slow_delay = secs(3.0 * pace);
        let attempt_timeout = secs(pace);
        let calls_per_sec = opts.agents as f64 / step_interval.as_secs_f64();

        let (burst_from, burst_until) = (at(18.0), at(24.0));
        // Input tokens per second the agents offer during the burst.
        let burst_rate = calls_per_sec * (DOC_TOKENS + TYPICAL_STEP_TOKENS) as f64;
        // Sonnet's input-token limit is sized so its bucket (a minute of refill, full at the
        // start) runs dry about a third of the way into the burst: the rest of the burst is
        // what a client without a governor would meet as a storm of 429s.
        let drain = 0.35 * (burst_until - burst_from).as_secs_f64();
        let sonnet_itpm = round_to(drain * burst_rate / (1.0 + drain / 60.0), 1000.0);
        let burst_tokens = burst_rate * (burst_until - burst_from).as_secs_f64();
        // Bedrock's quota is set to absorb the whole burst: it is the overflow.
        let bedrock_itpm = round_to((2.0 * burst_tokens).max(4_000_000.0), 100_000.0);
        let limits = vec![
            (
                PRIMARY.to_owned(),
                Limits {
                    requests_per_minute: Some(1_000),
                    input_tokens_per_minute: Some(sonnet_itpm),
                    output_tokens_per_minute: Some(200_000),
                },
            ),
            (
                FALLBACK.to_owned(),
                Limits {
                    requests_per_minute: Some(2_000),
                    input_tokens_per_minute: Some(bedrock_itpm),
                    output_tokens_per_minute: Some(400_000),
                },
            ),
        ];

        let incidents = vec![
            Incident {
                kind: IncidentKind::Hangs,
                model: Some(PRIMARY.to_owned()),
                from: at(2.0),
                until: at(5.5),
                label: format!("hangs: {PRIMARY} on Anthropic's API"),
                detail: "10% of requests never answered".to_owned(),
            },
            Incident {
                kind: IncidentKind::Outage,
                model: Some(PRIMARY.to_owned()),
                from: at(6.0),
                until: at(14.0),
                label: format!("529 overloaded: Anthropic's API ({PRIMARY})"),
                detail: "Anthropic's API answers 529 overloaded_error to every request".to_owned(),
            },
            Incident {
                kind: IncidentKind::SlowFirstByte,
                model: Some(FALLBACK.to_owned()),
                from: at(8.0),
                until: at(12.0),
                label: format!("stalling answers: {FALLBACK} on Bedrock"),
                detail: format!(
                    "20% of answers wait {} for their first byte",
                    fmt_duration(slow_delay)
                ),
            },
            Incident {
                kind: IncidentKind::LongContext,
                model: None,
                from: burst_from,
                until: burst_until,
                label: "long contexts: over sonnet's token limit".to_owned(),
                detail: format!(
                    "every step reads a {}k-token document: {:.0}k input tokens/s offered, \
                     {PRIMARY}'s limit is {}k/min",
                    DOC_TOKENS / 1000,
                    burst_rate / 1000.0,
                    sonnet_itpm / 1000
                ),
            },
            Incident {
                kind: IncidentKind::Resets,
                model: Some(PRIMARY.to_owned()),
                from: at(26.0),
                until: at(27.5),
                label: format!("resets: {PRIMARY}"),
                detail: "20% of connections reset before an answer".to_owned(),
            },
        ];
        Ok(Self {
            duration: opts.duration,
            seed: opts.seed,
            agents: opts.agents,
            step_interval,
            open_for: secs((2.5 * scale).clamp(0.4, 2.5)),
            attempt_timeout,
            deadline: secs(10.0 * pace),
            slow_delay,
            doc_tokens: DOC_TOKENS,
            limits,
            incidents,
        })
    }

    /// The window of `kind`.
    pub fn incident(&self, kind: IncidentKind) -> Option<&Incident> {
        self.incidents.iter().find(|i| i.kind == kind)
    }

    /// The models, first choice first.
    pub fn models(&self) -> [&'static str; 2] {
        [PRIMARY, FALLBACK]
    }

    /// The simulator's limits of `model`.
    pub fn limits_of(&self, model: &str) -> Limits {
        self.limits
            .iter()
            .find(|(m, _)| m == model)
            .map(|(_, l)| *l)
            .unwrap_or_default()
    }

    fn window(&self, kind: IncidentKind) -> (Option<Duration>, Option<Duration>) {
        match self.incident(kind) {
            Some(i) => (Some(i.from), Some(i.until)),
            None => (None, None),
        }
    }

    fn in_window(&self, kind: IncidentKind, t: Duration) -> bool {
        self.incident(kind).is_some_and(|i| i.contains(t))
    }

    /// The simulator's scenario: the same windows, limits and pace.
    pub fn scenario(&self) -> Scenario {
        let pace = self.pace();
        let rate_limits = |model: &str| {
            let l = self.limits_of(model);
            RateLimits {
                requests_per_minute: l.requests_per_minute,
                input_tokens_per_minute: l.input_tokens_per_minute,
                output_tokens_per_minute: l.output_tokens_per_minute,
            }
        };

        let mut primary = ModelSpec::new(PRIMARY);
        primary.latency = Duration::from_millis(200).mul_f64(pace);
        primary.latency_jitter = Duration::from_millis(200).mul_f64(pace);
        primary.output_tokens = 40;
        primary.limits = Some(rate_limits(PRIMARY));
        let (from, until) = self.window(IncidentKind::Outage);
        primary.faults.push(Fault {
            from,
            until,
            ..Fault::status(529)
        });
        let (from, until) = self.window(IncidentKind::Resets);
        primary.faults.push(Fault {
            from,
            until,
            probability: 0.2,
            ..Fault::new(FaultKind::Reset)
        });
        let (from, until) = self.window(IncidentKind::Hangs);
        primary.faults.push(Fault {
            from,
            until,
            probability: 0.1,
            ..Fault::new(FaultKind::Hang)
        });

        // The same model on Bedrock: its own capacity (limits, faults), reached by its Bedrock id
        // over the Bedrock wire only, as on the real platforms.
        primary.wires = Some(vec![Wire::Anthropic]);
        let mut fallback = ModelSpec::new(FALLBACK_ID);
        fallback.wires = Some(vec![Wire::Bedrock]);
        fallback.latency = Duration::from_millis(160).mul_f64(pace);
        fallback.latency_jitter = Duration::from_millis(120).mul_f64(pace);
        fallback.output_tokens = 40;
        fallback.limits = Some(rate_limits(FALLBACK));
        let (from, until) = self.window(IncidentKind::SlowFirstByte);
        fallback.faults.push(Fault {
            from,
            until,
            probability: 0.2,
            delay: Some(self.slow_delay),
            ..Fault::new(FaultKind::SlowFirstByte)
        });

        Scenario {
            seed: self.seed,
            models: vec![primary, fallback],
            ..Scenario::default()
        }
    }

    fn pace(&self) -> f64 {
        pace_of(self.duration)
    }

    fn retry_policy(&self) -> RetryPolicy {
        let pace = self.pace();
        RetryPolicy {
            backoff: Backoff {
                base: Duration::from_millis(100).mul_f64(pace),
                cap: Duration::from_secs(1).mul_f64(pace),
                max_attempts: 3,
                jitter: Jitter::Full,
            },
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            min_attempt: Duration::from_millis(50),
            max_attempts: 6,
            ..RetryPolicy::default()
        }
    }

    /// The primary trips fast (it has a fallback); the fallback, the last resort, judges over
    /// a longer window so a few stalled answers do not leave the agents with nobody.
    fn breaker(&self, model: &str) -> BreakerConfig {
        let (window, min_calls) = if model == PRIMARY { (10, 5) } else { (20, 10) };
        BreakerConfig {
            window: WindowKind::Count(window),
            min_calls,
            failure_rate: 50.0,
            half_open_calls: 2,
            open_for: self.open_for,
            ..BreakerConfig::default()
        }
    }
}

/// The time-lapse factor of short runs: 1 for runs of 30 s and more, down to 0.4. Pace and
/// latencies scale by it, so short runs still see enough calls per window.
fn pace_of(duration: Duration) -> f64 {
    (duration.as_secs_f64() / 30.0).clamp(0.4, 1.0)
}

fn round_to(x: f64, step: f64) -> u64 {
    ((x / step).round().max(1.0) * step) as u64
}

/// How one call ended.
#[derive(Clone, Debug, PartialEq)]
pub enum CallResult {
    /// Answered by `model`.
    Answered {
        /// The model that served it.
        model: String,
    },
    /// The runtime answered with an error.
    Failed {
        /// A short reason, e.g. `unavailable: deadline reached`.
        reason: String,
    },
}

/// One call an agent made.
#[derive(Clone, Debug, PartialEq)]
pub struct CallRecord {
    /// Which agent.
    pub agent: usize,
    /// When it was issued, since the start of the run.
    pub issued: Duration,
    /// When its answer (or error) arrived.
    pub done: Duration,
    /// How it ended.
    pub result: CallResult,
    /// Every step of the call: attempts, open breakers skipped, budget refusals.
    pub trail: Vec<AttemptRecord>,
}

impl CallRecord {
    /// Time from issue to answer.
    pub fn latency(&self) -> Duration {
        self.done.saturating_sub(self.issued)
    }

    /// The model that served it, if any.
    pub fn served_by(&self) -> Option<&str> {
        match &self.result {
            CallResult::Answered { model } => Some(model),
            CallResult::Failed { .. } => None,
        }
    }

    /// Upstream attempts made for it.
    pub fn attempts(&self) -> usize {
        self.trail
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Attempted { .. }))
            .count()
    }
}

/// A breaker transition, as `Seawall::subscribe` published it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// When it arrived, since the start of the run.
    pub at: Duration,
    /// The model.
    pub model: String,
    /// State before.
    pub from: StateKind,
    /// State after.
    pub to: StateKind,
    /// Why, as the breaker said.
    pub reason: &'static str,
    /// How long it stays open, when it just opened.
    pub open_for: Option<Duration>,
}

/// One model request the simulator logged, on Anthropic's `/v1/messages` or Bedrock's
/// `/model/{id}/invoke`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamRecord {
    /// Arrival on the simulator's clock (which starts with the run).
    pub at: Duration,
    /// The platform it went to: `Anthropic API` or `Bedrock` (see [`PLATFORMS`]).
    pub platform: &'static str,
    /// The hop it was for (seawall's name: [`PRIMARY`] or [`FALLBACK`]).
    pub model: Option<String>,
    /// The status sent; `None` when none was (a reset).
    pub status: Option<u16>,
    /// The simulator's outcome: `ok`, `status`, `reset`, `slow_first_byte`, `rate_limited`, ...
    pub outcome: String,
}

/// Everything a run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoReport {
    /// The script that ran.
    pub plan: Plan,
    /// Wall time of the run, from the simulator's start to its shutdown.
    pub wall: Duration,
    /// Calls the agents issued (each one is in `calls` exactly once when it was answered).
    pub issued: usize,
    /// Every call, in order of its answer.
    pub calls: Vec<CallRecord>,
    /// Breaker transitions, in order.
    pub transitions: Vec<Transition>,
    /// What the simulator saw, in order.
    pub upstream: Vec<UpstreamRecord>,
}

/// Latency percentiles of the answered calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

/// The figures of a report.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Calls issued.
    pub issued: usize,
    /// Calls answered with a reply.
    pub answered: usize,
    /// Calls answered with an error.
    pub failed: usize,
    /// Errors by reason, most frequent first.
    pub failures: Vec<(String, usize)>,
    /// Replies by serving model, in chain order.
    pub served_by: Vec<(String, usize)>,
    /// Replies by the platform of the serving model, in chain order.
    pub served_by_platform: Vec<(String, usize)>,
    /// Requests the simulator received, by platform, in chain order.
    pub upstream_by_platform: Vec<(String, usize)>,
    /// Replies by source. Everything is `live` until the response cache and durable queue exist.
    pub served_by_source: Vec<(String, usize)>,
    /// Latency of answered calls, issue to answer.
    pub latency: Option<Percentiles>,
    /// Model requests the simulator received (both platforms).
    pub upstream_requests: usize,
    /// 529s the primary sent: calls that reached the dead model.
    pub dead_model_calls: usize,
    /// Calls issued while the primary was down.
    pub outage_calls: usize,
    /// Of those, answered by the fallback (on Bedrock).
    pub outage_served_by_fallback: usize,
    /// Requests that reached Bedrock while Anthropic's API was overloaded.
    pub outage_bedrock_requests: usize,
    /// Of those, answered at all.
    pub outage_answered: usize,
    /// Estimate: requests a client with the SDK's default retries and no breaker would have sent
    /// to the dead model (`outage_calls` x [`NAIVE_TRIES`]).
    pub naive_dead_model_calls: usize,
    /// 429s the simulator sent.
    pub upstream_429: usize,
    /// Connections the simulator reset.
    pub upstream_resets: usize,
    /// Upstream attempts beyond the first of each call.
    pub retries: usize,
    /// Attempts cut by the attempt timeout.
    pub timeouts_cut: usize,
    /// Times the governor moved a call off a model that had no budget left for it.
    pub budget_deferrals: usize,
    /// Times a call skipped a model whose breaker was open.
    pub breaker_skips: usize,
    /// Calls issued during the long-context burst, and how many of them the primary served.
    pub burst_calls: (usize, usize),
    /// Hedged attempts started (a twin of an attempt still in flight), and how many of them
    /// answered first.
    pub hedges: (usize, usize),
    /// Upstream requests the simulator never answered (held until the client let go).
    pub upstream_hangs: usize,
}

impl DemoReport {
    /// Compute the figures.
    pub fn summary(&self) -> Summary {
        let plan = &self.plan;
        let answered: Vec<&CallRecord> = self
            .calls
            .iter()
            .filter(|c| c.served_by().is_some())
            .collect();
        let mut failures: HashMap<&str, usize> = HashMap::new();
        for c in &self.calls {
            if let CallResult::Failed { reason } = &c.result {
                *failures.entry(reason.as_str()).or_default() += 1;
            }
        }
        let mut failures: Vec<(String, usize)> = failures
            .into_iter()
            .map(|(r, n)| (r.to_owned(), n))
            .collect();
        failures.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let served_by = plan
            .models()
            .iter()
            .map(|m| {
                let n = answered.iter().filter(|c| c.served_by() == Some(m)).count();
                ((*m).to_owned(), n)
            })
            .collect();
        let mut latencies: Vec<Duration> = answered.iter().map(|c| c.latency()).collect();
        latencies.sort_unstable();
        let latency = (!latencies.is_empty()).then(|| Percentiles {
            p50: percentile(&latencies, 0.50),
            p95: percentile(&latencies, 0.95),
            p99: percentile(&latencies, 0.99),
            max: latencies[latencies.len() - 1],
        });

        let in_outage = |c: &&CallRecord| plan.in_window(IncidentKind::Outage, c.issued);
        let outage: Vec<&CallRecord> = self.calls.iter().filter(in_outage).collect();
        let in_burst = |c: &&CallRecord| plan.in_window(IncidentKind::LongContext, c.issued);
        let burst: Vec<&CallRecord> = self.calls.iter().filter(in_burst).collect();
        let steps = || self.calls.iter().flat_map(|c| c.trail.iter());
        let upstream_of =
            |f: &dyn Fn(&UpstreamRecord) -> bool| self.upstream.iter().filter(|u| f(u)).count();
        Summary {
            issued: self.issued,
            answered: answered.len(),
            failed: self.calls.len() - answered.len(),
            failures,
            served_by_platform: PLATFORMS
                .iter()
                .map(|(m, p)| {
                    let n = answered.iter().filter(|c| c.served_by() == Some(m)).count();
                    ((*p).to_owned(), n)
                })
                .collect(),
            upstream_by_platform: PLATFORMS
                .iter()
                .map(|(_, p)| ((*p).to_owned(), upstream_of(&|u| u.platform == *p)))
                .collect(),
            outage_bedrock_requests: upstream_of(&|u| {
                u.model.as_deref() == Some(FALLBACK) && plan.in_window(IncidentKind::Outage, u.at)
            }),
            served_by,
            served_by_source: vec![("live".to_owned(), answered.len())],
            latency,
            upstream_requests: self.upstream.len(),
            dead_model_calls: upstream_of(&|u| {
                u.model.as_deref() == Some(PRIMARY) && u.status == Some(529)
            }),
            outage_calls: outage.len(),
            outage_served_by_fallback: outage
                .iter()
                .filter(|c| c.served_by() == Some(FALLBACK))
                .count(),
            outage_answered: outage.iter().filter(|c| c.served_by().is_some()).count(),
            naive_dead_model_calls: outage.len() * NAIVE_TRIES,
            upstream_429: upstream_of(&|u| u.status == Some(429)),
            upstream_resets: upstream_of(&|u| u.outcome == "reset"),
            retries: self
                .calls
                .iter()
                .map(|c| c.attempts().saturating_sub(1))
                .sum(),
            timeouts_cut: steps()
                .filter(|s| {
                    matches!(
                        s.outcome,
                        Outcome::Attempted {
                            class: Class::Timeout,
                            ..
                        }
                    )
                })
                .count(),
            budget_deferrals: steps()
                .filter(|s| matches!(s.outcome, Outcome::NoBudget { .. }))
                .count(),
            breaker_skips: steps()
                .filter(|s| matches!(s.outcome, Outcome::BreakerOpen))
                .count(),
            hedges: (
                steps()
                    .filter(|s| {
                        matches!(
                            s.outcome,
                            Outcome::Attempted { hedge: true, .. }
                                | Outcome::Cancelled { hedge: true }
                        )
                    })
                    .count(),
                steps()
                    .filter(|s| {
                        matches!(
                            s.outcome,
                            Outcome::Attempted {
                                hedge: true,
                                class: Class::Success,
                                ..
                            }
                        )
                    })
                    .count(),
            ),
            upstream_hangs: upstream_of(&|u| u.outcome == "hang"),
            burst_calls: (
                burst.len(),
                burst
                    .iter()
                    .filter(|c| c.served_by() == Some(PRIMARY))
                    .count(),
            ),
        }
    }
}

/// Nearest-rank percentile of a sorted, non-empty slice.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Run the demo: simulator, runtime, agents, report. Takes about `opts.duration`, plus the
/// time for calls in flight at the end to finish.
///
/// # Errors
///
/// [`DemoError`] when the options are out of range or something could not start. Failed
/// calls are not errors: they are in the report.
pub async fn run(opts: DemoOptions) -> Result<DemoReport, DemoError> {
    let plan = Arc::new(Plan::new(&opts)?);
    let started = Instant::now();
    let sim = Sim::start(plan.scenario(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let driven = drive(&plan, &sim, opts.progress).await;
    let upstream = sim.log().into_iter().filter_map(upstream_record).collect();
    sim.shutdown().await;
    let (issued, calls, transitions) = driven?;
    Ok(DemoReport {
        plan: Arc::unwrap_or_clone(plan),
        wall: started.elapsed(),
        issued,
        calls,
        transitions,
        upstream,
    })
}

/// A logged model request as the report keeps it (the Bedrock id named by its hop), or `None`
/// for anything else (the simulator logs no control calls; count_tokens is not a model call).
fn upstream_record(e: crate::sim::LogEntry) -> Option<UpstreamRecord> {
    let (platform, model) = if e.path == "/v1/messages" {
        (PLATFORMS[0].1, e.model)
    } else if e.path.starts_with("/model/") && e.path.contains("/invoke") {
        let hop = e.model.map(|m| {
            if m == FALLBACK_ID {
                FALLBACK.to_owned()
            } else {
                m
            }
        });
        (PLATFORMS[1].1, hop)
    } else {
        return None;
    };
    Some(UpstreamRecord {
        at: Duration::from_millis(e.at_ms),
        platform,
        model,
        status: e.status,
        outcome: e.outcome,
    })
}

type Driven = (usize, Vec<CallRecord>, Vec<Transition>);

/// Live figures for the progress display.
#[derive(Default)]
struct Live {
    answered: AtomicUsize,
    failed: AtomicUsize,
    /// The last state each breaker reported.
    states: Mutex<HashMap<String, StateKind>>,
}

async fn drive(plan: &Arc<Plan>, sim: &SimHandle, progress: Progress) -> Result<Driven, DemoError> {
    let upstream = AnthropicUpstream::new(
        vec![ApiKey::new(DEMO_KEY)?],
        AnthropicOptions {
            base_url: sim.base_url(),
            connect_timeout: Duration::from_millis(500),
            ..AnthropicOptions::default()
        },
    )?;
    // The demo's own credentials, given to this transport alone: nothing is read from (or
    // written to) the environment or ~/.aws, so a real AWS setup is never touched.
    let mut bedrock = BedrockOptions::new(BEDROCK_REGION);
    bedrock.base_url = Some(sim.base_url());
    bedrock.connect_timeout = Duration::from_millis(500);
    bedrock.credentials = AwsCredentials::Provider(
        aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(
                DEMO_AWS_ACCESS_KEY,
                DEMO_AWS_SECRET,
                None,
                None,
                "seawall-demo",
            ),
        ),
    );
    let bedrock = BedrockUpstream::new(bedrock)?;
    let mut builder = Seawall::builder()
        .upstream(UPSTREAM, upstream)
        .upstream(BEDROCK, bedrock)
        .model_on(PRIMARY, UPSTREAM, Some(plan.breaker(PRIMARY)))
        .model_on(FALLBACK, BEDROCK, Some(plan.breaker(FALLBACK)))
        .model_id(FALLBACK, FALLBACK_ID);
    // One limit class per model, as each platform (and the simulator) limits each model apart:
    // with the same numbers on both sides the governor predicts the simulator's buckets exactly.
    for (model, limits) in &plan.limits {
        let upstream = if model == FALLBACK { BEDROCK } else { UPSTREAM };
        builder = builder.class_limits(upstream, model, [model.as_str()], *limits);
    }
    let sw = builder
        .chain_with(PRIMARY, plan.models(), plan.retry_policy())
        .spawn()
        .await?;

    let live = Arc::new(Live::default());
    let doc: Arc<str> = Arc::from(workload::document(plan.doc_tokens, plan.seed));
    let events = sw.subscribe();
    // Time zero for both sides: the fault windows are on the simulator's clock.
    sim.reset();
    let t0 = Instant::now();
    let (stop_events, stopped) = oneshot::channel();
    let collector = tokio::spawn(collect_transitions(events, stopped, t0, live.clone()));

    let issued = Arc::new(AtomicUsize::new(0));
    let mut agents = JoinSet::new();
    for id in 0..plan.agents {
        agents.spawn(workload::agent(
            id,
            sw.clone(),
            plan.clone(),
            doc.clone(),
            t0,
            issued.clone(),
            live.clone(),
        ));
    }
    let mut display = progress::Display::new(plan, progress);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut calls = Vec::new();
    let mut failure = None;
    loop {
        tokio::select! {
            joined = agents.join_next() => match joined {
                Some(Ok(records)) => calls.extend(records),
                Some(Err(e)) => failure = Some(DemoError::Internal(format!("an agent failed: {e}"))),
                None => break,
            },
            _ = tick.tick() => display.update(t0.elapsed(), &live),
        }
    }
    display.finish(t0.elapsed(), &live);
    sw.shutdown(Duration::from_secs(5)).await;
    let _ = stop_events.send(());
    let transitions = collector
        .await
        .map_err(|e| DemoError::Internal(format!("the event collector failed: {e}")))?;
    if let Some(e) = failure {
        return Err(e);
    }
    calls.sort_by_key(|c: &CallRecord| (c.done, c.agent));
    Ok((issued.load(Ordering::SeqCst), calls, transitions))
}

async fn collect_transitions(
    mut events: broadcast::Receiver<Event>,
    mut stop: oneshot::Receiver<()>,
    t0: Instant,
    live: Arc<Live>,
) -> Vec<Transition> {
    let mut out = Vec::new();
    let take = |event: Event, out: &mut Vec<Transition>| {
        if let Event::Breaker {
            model,
            from,
            to,
            reason,
            open_for,
        } = event
        {
            if let Ok(mut states) = live.states.lock() {
                states.insert(model.clone(), to);
            }
            out.push(Transition {
                at: t0.elapsed(),
                model,
                from,
                to,
                reason,
                open_for,
            });
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            event = events.recv() => match event {
                Ok(e) => take(e, &mut out),
                // The channel holds 1024 events: lagging cannot happen at this pace; if it did,
                // the timeline would miss a few transitions, which is no reason to stop.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return out,
            },
        }
    }
    // Whatever was published before the stop signal still belongs to the run.
    while let Ok(e) = events.try_recv() {
        take(e, &mut out);
    }
    out
}

/// `closed`, `open` or `half-open`.
pub fn state_name(state: StateKind) -> &'static str {
    match state {
        StateKind::Closed => "closed",
        StateKind::Open => "open",
        StateKind::HalfOpen => "half-open",
    }
}

/// `312 ms` below a second, `1.24 s` above.
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}
