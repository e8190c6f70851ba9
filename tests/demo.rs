//! `seawall demo`, end to end in real time: the short run in-process (its report and its SVG),
//! and the built binary once.

mod support;

use std::collections::BTreeSet;

use seawall::core::StateKind;
use seawall::demo::{
    self, render_svg, render_table, DemoOptions, IncidentKind, Progress, FALLBACK, PLATFORMS,
    PRIMARY,
};
use support::process::{run, temp_dir};

/// A minimal well-formedness check: tags nest and close, attribute quotes balance, and text
/// holds no bare `<` or `&`. Enough to catch a broken hand-written SVG.
fn assert_well_formed(xml: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| entity.starts_with(e)),
                "bare & in text: {:?}",
                &entity[..entity.len().min(20)]
            );
        }
        let close = rest[open..].find('>').expect("every tag closes") + open;
        let tag = &rest[open + 1..close];
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        assert!(!tag.contains('<'), "'<' inside a tag: <{tag}>");
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack
                .pop()
                .unwrap_or_else(|| panic!("</{name}> closes nothing"));
            assert_eq!(top, name.trim(), "</{name}> closes <{top}>");
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().expect("a tag name");
            stack.push(name.to_owned());
        }
        rest = &rest[close + 1..];
    }
    assert!(rest.trim().is_empty(), "text after the root element");
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_run_rides_out_the_incident() {
    let report = demo::run(DemoOptions {
        progress: Progress::Hidden,
        ..DemoOptions::quick()
    })
    .await
    .expect("the demo runs");
    let s = report.summary();
    let table = render_table(&report);
    println!("{table}");

    // Every call answered exactly once: with a reply or with an error, never lost or doubled.
    assert!(s.issued >= 60, "a real workload: {} calls", s.issued);
    assert_eq!(report.calls.len(), s.issued, "one record per issued call");
    assert_eq!(s.answered + s.failed, s.issued);
    assert!(
        s.answered * 100 >= s.issued * 95,
        "nearly every call gets a reply: {} of {} ({:?})",
        s.answered,
        s.issued,
        s.failures
    );

    // The outage was real, and the fallback served through it.
    let outage = report
        .plan
        .incident(IncidentKind::Outage)
        .expect("an outage");
    assert!(
        s.outage_calls >= 10,
        "{} calls in the outage",
        s.outage_calls
    );
    assert!(
        s.outage_served_by_fallback * 10 >= s.outage_answered * 9,
        "the fallback served the outage: {} of {}",
        s.outage_served_by_fallback,
        s.outage_answered
    );
    let mid = (outage.from + outage.until) / 2;
    assert!(
        report
            .calls
            .iter()
            .filter(|c| c.issued >= outage.from && c.issued < mid)
            .all(|c| c.served_by() != Some(PRIMARY)),
        "nothing is served by the dead model in the first half of its outage"
    );

    // The traffic moved onto Bedrock: while Anthropic's API was overloaded, the same model was
    // reached over the simulator's Bedrock wire (SigV4-signed by the real transport) and
    // answered there; before the overload, Anthropic's API carried the traffic.
    let bedrock = PLATFORMS[1].1;
    let anthropic = PLATFORMS[0].1;
    assert!(
        s.outage_bedrock_requests >= s.outage_served_by_fallback && s.outage_bedrock_requests > 0,
        "requests reached Bedrock in the overload: {}",
        s.outage_bedrock_requests
    );
    let in_outage = |at| outage.from <= at && at < outage.until;
    let bedrock_ok = report
        .upstream
        .iter()
        .filter(|u| u.platform == bedrock && in_outage(u.at) && u.status == Some(200))
        .count();
    assert!(
        bedrock_ok * 10 >= s.outage_served_by_fallback * 9 && bedrock_ok > 0,
        "Bedrock answered in the overload: {bedrock_ok} 200s for {} calls served",
        s.outage_served_by_fallback
    );
    assert!(report
        .upstream
        .iter()
        .filter(|u| u.platform == bedrock)
        .all(|u| u.model.as_deref() == Some(FALLBACK)));
    assert!(report
        .upstream
        .iter()
        .filter(|u| u.platform == anthropic)
        .all(|u| u.model.as_deref() == Some(PRIMARY)));
    let before: Vec<_> = report
        .calls
        .iter()
        .filter(|c| c.issued < report.plan.incidents[0].from)
        .collect();
    assert!(
        !before.is_empty() && before.iter().all(|c| c.served_by() == Some(PRIMARY)),
        "Anthropic's API served before the incident"
    );
    let platform = |name: &str| {
        s.served_by_platform
            .iter()
            .find(|(p, _)| p == name)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(platform(bedrock), s.served_by[1].1);
    assert_eq!(platform(anthropic) + platform(bedrock), s.answered);

    // The dead model saw far fewer requests than a naive client would have sent it.
    assert!(s.dead_model_calls > 0, "the primary really was down");
    assert!(
        s.dead_model_calls * 4 <= s.naive_dead_model_calls,
        "dead model saw {}, a naive client about {}",
        s.dead_model_calls,
        s.naive_dead_model_calls
    );

    // The runtime knows the simulator's limits: the long-context burst went over them, and the
    // governor moved calls to the fallback instead of letting the upstream say 429.
    assert_eq!(s.upstream_429, 0, "no upstream 429 with matching limits");
    assert!(
        s.budget_deferrals > 0,
        "the burst exceeded the primary's budget"
    );

    // The primary's breaker opened and closed again.
    let primary: Vec<_> = report
        .transitions
        .iter()
        .filter(|t| t.model == PRIMARY)
        .collect();
    let opened = primary
        .iter()
        .position(|t| t.from == StateKind::Closed && t.to == StateKind::Open)
        .unwrap_or_else(|| panic!("closed -> open: {primary:?}"));
    assert!(
        primary[opened..].iter().any(|t| t.to == StateKind::Closed),
        "open ... -> closed: {primary:?}"
    );
    assert!(
        report.transitions.windows(2).all(|w| w[0].at <= w[1].at),
        "transitions in order"
    );

    // The table has its sections.
    for header in [
        "incident",
        "calls",
        "issued",
        "answered",
        "failed",
        "served by model",
        "served by platform",
        "Bedrock",
        "to Bedrock during the overload",
        "served by source",
        "live",
        "latency",
        "p50",
        "p95",
        "p99",
        "upstream",
        "529s from the dead model",
        "429s",
        "retries",
        "breaker transitions",
        "naive client (an estimate",
    ] {
        assert!(table.contains(header), "table lacks {header:?}");
    }

    // The SVG: well formed, both models named, a band rect for every breaker state seen.
    let svg = render_svg(&report);
    assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_well_formed(&svg);
    assert!(svg.contains(PRIMARY) && svg.contains(FALLBACK));
    let seen: BTreeSet<&str> = std::iter::once("closed")
        .chain(report.transitions.iter().map(|t| demo::state_name(t.to)))
        .collect();
    for state in &seen {
        assert!(
            svg.contains(&format!(r#"data-model="{PRIMARY}" data-state="{state}""#)),
            "no {state} band"
        );
    }
    let bands = svg.matches(r#"class="band""#).count();
    assert_eq!(
        bands,
        report.transitions.len() + 2,
        "one band rect per state spell of each model"
    );
    for inc in &report.plan.incidents {
        assert!(
            svg.contains(&inc.label.replace('\'', "&apos;")),
            "{}",
            inc.label
        );
    }
}

#[test]
fn the_binary_runs_the_quick_demo() {
    let dir = temp_dir("demo-test");
    let svg = dir.join("x.svg");
    let (status, stdout, stderr) = run(
        &dir,
        &["demo", "--quick", "--out", svg.to_str().unwrap()],
        &[],
    );
    assert!(status.success(), "exit {status:?}\n{stdout}\n{stderr}");
    let written = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(written.starts_with("<svg") && written.trim_end().ends_with("</svg>"));
    assert!(stdout.contains("served by model"), "{stdout}");
    assert!(
        stdout.contains(&format!("timeline: {}", svg.display())),
        "names the file: {stdout}"
    );
    // stderr is not a terminal here: a few plain progress lines, no bar redraws.
    assert!(stderr.lines().count() <= 5, "{stderr}");
    assert!(!stderr.contains('\r'), "no terminal redraws: {stderr:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_arguments_are_refused() {
    let dir = temp_dir("demo-args");
    for args in [
        &["demo", "--duration", "1"][..],
        &["demo", "--duration", "ten"],
        &["demo", "--quick", "--duration", "10"],
    ] {
        let (status, stdout, _) = run(&dir, args, &[]);
        assert_eq!(status.code(), Some(2), "{args:?}");
        assert!(stdout.is_empty(), "{args:?}: nothing runs");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
