//! The report as a plain-text table for stdout.

use std::fmt::Write as _;

use super::{fmt_duration, state_name, DemoReport, IncidentKind, FALLBACK, NAIVE_TRIES, PRIMARY};

/// The report as a text table: the incident, calls answered and failed (with reasons), who
/// served them, latency percentiles, what the upstream saw, breaker transitions and the naive
/// client estimate. Plain ASCII columns, no colour, so it pastes anywhere.
pub fn render_table(report: &DemoReport) -> String {
    let plan = &report.plan;
    let s = report.summary();
    let mut out = String::new();
    // Writing to a String cannot fail; `let _` keeps the formatting code readable.
    let _ = writeln!(
        out,
        "seawall demo: {} agents through a scripted incident of {} s against a simulated \
         Anthropic API and Bedrock (seed {})",
        plan.agents,
        fmt_secs(plan.duration.as_secs_f64()),
        plan.seed
    );

    let _ = writeln!(out, "\nincident (simulator clock)");
    for i in &plan.incidents {
        let who = i.model.as_deref().unwrap_or("all agents");
        let _ = writeln!(
            out,
            "  {:>11}  {who:<18} {}",
            format!(
                "{}-{} s",
                fmt_secs(i.from.as_secs_f64()),
                fmt_secs(i.until.as_secs_f64())
            ),
            i.detail
        );
    }

    let _ = writeln!(out, "\ncalls");
    row(&mut out, "issued", s.issued, "");
    row(&mut out, "answered", s.answered, &pct(s.answered, s.issued));
    row(&mut out, "failed", s.failed, &pct(s.failed, s.issued));
    for (reason, n) in &s.failures {
        row(&mut out, &format!("  {reason}"), *n, "");
    }
    let _ = writeln!(out, "served by model");
    for (model, n) in &s.served_by {
        row(&mut out, model, *n, &pct(*n, s.answered));
    }
    let _ = writeln!(out, "served by platform");
    for (platform, n) in &s.served_by_platform {
        row(&mut out, platform, *n, &pct(*n, s.answered));
    }
    let _ = writeln!(out, "served by source");
    for (source, n) in &s.served_by_source {
        row(&mut out, source, *n, &pct(*n, s.answered));
    }
    let _ = writeln!(out, "latency (issue to answer, answered calls)");
    match s.latency {
        Some(p) => {
            let _ = writeln!(
                out,
                "  p50 {}   p95 {}   p99 {}   max {}",
                fmt_duration(p.p50),
                fmt_duration(p.p95),
                fmt_duration(p.p99),
                fmt_duration(p.max)
            );
        }
        None => {
            let _ = writeln!(out, "  no call was answered");
        }
    }

    let _ = writeln!(out, "\nupstream (what the simulator saw)");
    row(&mut out, "requests", s.upstream_requests, "");
    for (platform, n) in &s.upstream_by_platform {
        row(&mut out, &format!("  to {platform}"), *n, "");
    }
    let outage = plan.incident(IncidentKind::Outage);
    row(
        &mut out,
        "to Bedrock during the overload",
        s.outage_bedrock_requests,
        &format!(
            "{} of {} calls in the overload served by {FALLBACK} on Bedrock",
            s.outage_served_by_fallback, s.outage_calls
        ),
    );
    row(
        &mut out,
        "529s from the dead model",
        s.dead_model_calls,
        &outage
            .map(|o| {
                format!(
                    "{PRIMARY} during its outage ({}-{} s)",
                    fmt_secs(o.from.as_secs_f64()),
                    fmt_secs(o.until.as_secs_f64())
                )
            })
            .unwrap_or_default(),
    );
    row(
        &mut out,
        "429s",
        s.upstream_429,
        &format!(
            "the governor knows the limits: {} calls moved off a model out of budget instead",
            s.budget_deferrals
        ),
    );
    row(&mut out, "resets", s.upstream_resets, "");
    row(
        &mut out,
        "hung requests",
        s.upstream_hangs,
        &format!(
            "{} hedged attempts, {} answered first: a hang costs the model's learned latency, \
             not a timeout",
            s.hedges.0, s.hedges.1
        ),
    );
    row(
        &mut out,
        &format!(
            "attempts cut at {} timeout",
            fmt_duration(plan.attempt_timeout)
        ),
        s.timeouts_cut,
        &format!(
            "stalled answers would have taken {}",
            fmt_duration(plan.slow_delay)
        ),
    );
    row(
        &mut out,
        "retries",
        s.retries,
        "attempts beyond the first of a call, on any model",
    );
    row(
        &mut out,
        "open breaker skipped",
        s.breaker_skips,
        "hops passed over without a request",
    );
    let (burst, burst_primary) = s.burst_calls;
    if burst > 0 {
        row(
            &mut out,
            "long-context calls",
            burst,
            &format!("{burst_primary} on {PRIMARY} within its limit, the rest on Bedrock"),
        );
    }

    let _ = writeln!(out, "\nbreaker transitions");
    if report.transitions.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for t in &report.transitions {
        let open = t
            .open_for
            .map(|d| format!("; open for {}", fmt_duration(d)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:>7.2} s  {:<18} {:<9} -> {:<9}  {}{open}",
            t.at.as_secs_f64(),
            t.model,
            state_name(t.from),
            state_name(t.to),
            t.reason
        );
    }

    let _ = writeln!(out, "\nnaive client (an estimate, not measured)");
    let fewer = if s.dead_model_calls == 0 {
        "none at all".to_owned()
    } else {
        format!(
            "{:.1}x fewer",
            s.naive_dead_model_calls as f64 / s.dead_model_calls as f64
        )
    };
    let _ = writeln!(
        out,
        "  about {} requests to {PRIMARY} while it was down ({} calls issued in the outage x \
         {NAIVE_TRIES} tries: the official SDK's {} retries, no breaker); seawall sent {}, {fewer}",
        s.naive_dead_model_calls,
        s.outage_calls,
        NAIVE_TRIES - 1,
        s.dead_model_calls
    );
    let _ = writeln!(out, "\nwall time {}", fmt_duration(report.wall));
    out
}

fn row(out: &mut String, label: &str, n: usize, note: &str) {
    let line = format!("  {label:<34}{n:>6}   {note}");
    let _ = writeln!(out, "{}", line.trim_end());
}

fn pct(n: usize, of: usize) -> String {
    if of == 0 || n == 0 {
        String::new()
    } else {
        format!("{:.1}%", 100.0 * n as f64 / of as f64)
    }
}

/// `6`, `27.5`: seconds without a needless `.0`.
fn fmt_secs(s: f64) -> String {
    let rounded = (s * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}
