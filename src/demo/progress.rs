//! Progress while the demo runs: a bar on a terminal, a plain line now and then elsewhere.

use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use seawall_actors::StateKind;

use super::{state_name, Live, Plan, Progress, FALLBACK, PRIMARY};

/// The progress bar on a terminal, a plain line every few seconds elsewhere, or nothing.
pub(super) struct Display {
    bar: Option<ProgressBar>,
    plain: bool,
    total: Duration,
    every: Duration,
    next_line: Duration,
}

impl Display {
    pub(super) fn new(plan: &Plan, progress: Progress) -> Self {
        let total = plan.duration;
        let every = Duration::from_secs(5).min(total / 3);
        let mut display = Self {
            bar: None,
            plain: false,
            total,
            every,
            next_line: every,
        };
        if progress == Progress::Hidden {
            return display;
        }
        let bar = ProgressBar::with_draw_target(
            Some(total.as_millis() as u64),
            ProgressDrawTarget::stderr(),
        );
        // indicatif hides the bar when stderr is not a terminal; then a line now and then
        // tells a CI log that the run is alive without flooding it.
        if bar.is_hidden() {
            display.plain = true;
        } else {
            let style = ProgressStyle::with_template("{bar:30.cyan/blue} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("##-");
            bar.set_style(style);
            display.bar = Some(bar);
        }
        display
    }

    fn line(&self, elapsed: Duration, live: &Live) -> String {
        let states = live
            .states
            .lock()
            .map(|s| {
                [PRIMARY, FALLBACK]
                    .iter()
                    .map(|m| {
                        let state = s.get(*m).copied().unwrap_or(StateKind::Closed);
                        format!("{m} {}", state_name(state))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        format!(
            "{:>5.1}/{} s  answered {}  failed {}  breakers: {states}",
            elapsed.min(self.total).as_secs_f64(),
            self.total.as_secs(),
            live.answered.load(Ordering::Relaxed),
            live.failed.load(Ordering::Relaxed),
        )
    }

    pub(super) fn update(&mut self, elapsed: Duration, live: &Live) {
        if let Some(bar) = &self.bar {
            bar.set_position(elapsed.min(self.total).as_millis() as u64);
            bar.set_message(self.line(elapsed, live));
        } else if self.plain && elapsed >= self.next_line && elapsed < self.total {
            eprintln!("seawall demo: {}", self.line(elapsed, live));
            self.next_line += self.every;
        }
    }

    pub(super) fn finish(&mut self, elapsed: Duration, live: &Live) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.plain {
            eprintln!("seawall demo: done: {}", self.line(elapsed, live));
        }
    }
}
