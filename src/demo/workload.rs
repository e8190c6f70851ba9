//! The agents: tasks of a few steps, one call per step carrying the task's history.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use seawall_actors::policy::rng::SplitMix64;
use seawall_actors::{Call, Error, Seawall};

use super::{CallRecord, CallResult, IncidentKind, Live, Plan, MAX_TOKENS, PRIMARY};

/// One agent: tasks of a few steps, one call per step carrying the task's history, at a steady
/// pace. A failed step abandons the task, as an agent that cannot get an answer would.
pub(super) async fn agent(
    id: usize,
    sw: Seawall,
    plan: Arc<Plan>,
    doc: Arc<str>,
    t0: Instant,
    issued: Arc<AtomicUsize>,
    live: Arc<Live>,
) -> Vec<CallRecord> {
    let mut rng = SplitMix64::new(plan.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let interval = plan.step_interval;
    let end = t0 + plan.duration;
    // Agents start staggered so the aggregate rate is steady from the first second.
    let mut next = t0 + interval.mul_f64(id as f64 / plan.agents as f64);
    let mut tasks_done = 0usize;
    let mut task = Task::new(id, tasks_done, &mut rng);
    let mut out = Vec::new();
    loop {
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let at = now - t0;
        let attach = plan.in_window(IncidentKind::LongContext, at);
        let call = task.call(attach.then_some(&*doc));
        issued.fetch_add(1, Ordering::SeqCst);
        let result = sw.complete(call).await;
        let done = t0.elapsed();
        let (result, trail) = match result {
            Ok(reply) => {
                live.answered.fetch_add(1, Ordering::Relaxed);
                task.answered(&reply.text());
                (
                    CallResult::Answered {
                        model: reply.model.clone(),
                    },
                    reply.trail,
                )
            }
            Err(e) => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                task.abandon();
                (
                    CallResult::Failed {
                        reason: failure_reason(&e),
                    },
                    e.trail().to_vec(),
                )
            }
        };
        out.push(CallRecord {
            agent: id,
            issued: at,
            done,
            result,
            trail,
        });
        if task.finished() {
            tasks_done += 1;
            task = Task::new(id, tasks_done, &mut rng);
        }
        // Steady pace; a slow call delays the next step but never causes a catch-up burst.
        next = (next + interval).max(Instant::now());
    }
    out
}

/// A short, stable reason for the failures table.
fn failure_reason(e: &Error) -> String {
    match e {
        Error::Unavailable {
            deadline_exceeded: true,
            ..
        } => "unavailable: deadline reached".to_owned(),
        Error::Unavailable { .. } => "unavailable: no model could answer".to_owned(),
        Error::Rejected { status, .. } => format!("rejected: HTTP {status}"),
        Error::ShuttingDown => "runtime shutting down".to_owned(),
        Error::InvalidCall(_) => "invalid call".to_owned(),
        Error::UnknownModel(_) => "unknown model".to_owned(),
        Error::Config(_) => "configuration".to_owned(),
        Error::Internal(_) => "internal error".to_owned(),
    }
}

const TOPICS: [&str; 6] = [
    "triage the failing checkout test",
    "summarise yesterday's on-call incidents",
    "refactor the billing retry loop",
    "answer a customer's question about rate limits",
    "review the pull request that bumps tokio",
    "plan the migration of the jobs table",
];

const TOOL_RESULTS: [&str; 6] = [
    "grep found 3 matches in src/payments/retry.rs",
    "the test log shows a timeout after 30 s on the second request",
    "git blame points at a change from last Tuesday",
    "the dashboard shows p99 latency doubled at 14:02",
    "the schema has 41 columns and 2 foreign keys",
    "the customer is on the build tier with 50 requests per minute",
];

/// One multi-step task of an agent: its conversation so far.
struct Task {
    system: String,
    turns: Vec<(bool, String)>,
    step: usize,
    steps: usize,
    rng: SplitMix64,
    abandoned: bool,
}

impl Task {
    fn new(agent: usize, number: usize, rng: &mut SplitMix64) -> Self {
        let steps = 3 + (rng.next_u64() % 4) as usize;
        let topic = TOPICS[(rng.next_u64() % TOPICS.len() as u64) as usize];
        let mut task = Self {
            system: format!(
                "You are agent {agent}, an engineering assistant. Work in short steps and \
                 keep each answer brief."
            ),
            turns: Vec::new(),
            step: 0,
            steps,
            rng: SplitMix64::new(rng.next_u64()),
            abandoned: false,
        };
        task.turns.push((
            true,
            format!("Task {number}: {topic}. Step 1 of {steps}: make a plan."),
        ));
        task
    }

    /// The call for the current step; `doc` is attached to this step only (a tool that returned
    /// a long file), so the history stays short afterwards.
    fn call(&self, doc: Option<&str>) -> Call {
        let mut call = Call::new(PRIMARY, MAX_TOKENS).system(&self.system);
        let last = self.turns.len().saturating_sub(1);
        for (i, (user, text)) in self.turns.iter().enumerate() {
            call = match (user, doc) {
                (true, Some(doc)) if i == last => {
                    call.user(&format!("{text}\n\n<document>\n{doc}\n</document>"))
                }
                (true, _) => call.user(text),
                (false, _) => call.assistant(text),
            };
        }
        call
    }

    fn answered(&mut self, text: &str) {
        let mut answer: String = text.chars().take(240).collect();
        if answer.is_empty() {
            answer.push_str("(no text)");
        }
        self.turns.push((false, answer));
        self.step += 1;
        if self.step < self.steps {
            let tool = TOOL_RESULTS[(self.rng.next_u64() % TOOL_RESULTS.len() as u64) as usize];
            self.turns.push((
                true,
                format!(
                    "Tool result: {tool}. Step {} of {}: continue.",
                    self.step + 1,
                    self.steps
                ),
            ));
        }
    }

    fn abandon(&mut self) {
        self.abandoned = true;
    }

    fn finished(&self) -> bool {
        self.abandoned || self.step >= self.steps
    }
}

/// A long, deterministic log file of about `tokens` tokens (four bytes each, the runtime's and
/// the simulator's rule of thumb).
pub(super) fn document(tokens: u64, seed: u64) -> String {
    const SERVICES: [&str; 5] = ["checkout", "billing", "search", "auth", "jobs"];
    const EVENTS: [&str; 5] = [
        "request served",
        "cache miss",
        "retrying upstream call",
        "slow query",
        "connection pool exhausted",
    ];
    let mut rng = SplitMix64::new(seed ^ 0xD0C);
    let target = (tokens * 4) as usize;
    let mut out = String::with_capacity(target + 128);
    let mut n = 0u64;
    while out.len() < target {
        let service = SERVICES[(rng.next_u64() % 5) as usize];
        let event = EVENTS[(rng.next_u64() % 5) as usize];
        let ms = rng.next_u64() % 2000;
        out.push_str(&format!(
            "12:{:02}:{:02}.{:03} {service} {event} in {ms} ms\n",
            (n / 60) % 60,
            n % 60,
            n % 1000
        ));
        n += 1;
    }
    out
}
