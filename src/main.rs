//! The `seawall` command line.
//!
//! ```text
//! seawall serve --config seawall.toml [--log-format json|pretty|compact]
//! seawall demo [--duration SECS | --quick] [--out PATH] [--seed N]
//! seawall sim --scenario FILE [--listen 127.0.0.1:0]
//! ```
//!
//! **Logs** go to stderr through a non-blocking writer (a background thread does the writing,
//! so a slow stderr never holds up a request; past 128k lines waiting, lines are dropped). The
//! format is, first found: `--log-format`, the `SEAWALL_LOG_FORMAT` environment variable, the
//! config's `[log] format` (serve), else `pretty`. `json` writes one object per line, an event's
//! fields as top-level keys (without the enclosing spans' fields, which would triple the cost
//! of a call). Colours (ANSI escapes) only when stderr is a terminal and
//! `NO_COLOR` is not set. `RUST_LOG` picks what is logged (an `EnvFilter`); the default is
//! `warn,seawall=info,seawall_actors=info` for `serve` and `sim` (seawall's own info lines, every
//! crate's warnings), and nothing for `demo`, whose output is its report.
//!
//! `serve` runs the Anthropic-compatible gateway (see `examples/seawall.toml`) until Ctrl-C or
//! SIGTERM, then drains calls in flight for `[gateway] shutdown_grace` and exits 0. Its first
//! line on stdout is `seawall serve listening on http://ADDR`. Exit codes: 2 for a bad config
//! (the message names the key), 1 when the address cannot be bound or the listener fails.
//!
//! `demo` replays a scripted incident (an outage, a stalling fallback, a long-context burst over
//! the rate limit, connection resets) against the in-process simulator, with agents calling
//! through the runtime; it prints a report table on stdout and writes an SVG timeline. No key,
//! no network beyond loopback. Exit codes: 0 on success, 2 for bad arguments, 1 when the run or
//! the SVG file fails.
//!
//! `sim` runs the fault-injecting API simulator until Ctrl-C or SIGTERM. Its first (and only)
//! line on stdout is `seawall sim listening on http://ADDR`, so a parent process can read the
//! port. Exit codes: 0 after a signal, 2 for a bad scenario or arguments, 1 when the address
//! cannot be bound.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use seawall::config::{Config, LogFormat};
use seawall::demo::{self, DemoOptions};
use seawall::gateway::Gateway;
use seawall::sim::{Scenario, Sim, SimError};

/// LLM API calls that survive rate limits, overloads, outages and bad networks.
#[derive(Debug, Parser)]
#[command(name = "seawall", version, about)]
struct Cli {
    /// How log lines on stderr are written: json, pretty or compact. Beats SEAWALL_LOG_FORMAT,
    /// which beats the config's [log] format. Default pretty.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    text.parse()
}

/// The default `EnvFilter` of `serve` and `sim` when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "warn,seawall=info,seawall_actors=info";

/// The log format in force: the flag, else `SEAWALL_LOG_FORMAT`, else the config's, else pretty.
fn log_format(flag: Option<LogFormat>, config: Option<LogFormat>) -> Result<LogFormat, String> {
    if let Some(f) = flag {
        return Ok(f);
    }
    match std::env::var("SEAWALL_LOG_FORMAT") {
        Ok(v) if !v.trim().is_empty() => {
            return v.parse().map_err(|e| format!("SEAWALL_LOG_FORMAT: {e}"));
        }
        Ok(_) | Err(std::env::VarError::NotPresent) => {}
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!(
                "SEAWALL_LOG_FORMAT is not valid UTF-8: use {}",
                LogFormat::NAMES
            ))
        }
    }
    Ok(config.unwrap_or_default())
}

/// Install the process's log subscriber: `format` on stderr through a non-blocking writer,
/// filtered by `RUST_LOG` (else `default_filter`). The guard flushes the writer when dropped:
/// keep it until the process ends.
fn init_logging(
    format: LogFormat,
    default_filter: &str,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;

    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("seawall: RUST_LOG={spec:?} is not a filter ({e}); using {default_filter:?}");
            EnvFilter::new(default_filter)
        }),
        _ => EnvFilter::new(default_filter),
    };
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // An error only says a subscriber is installed already (never the case in this binary).
    let _ = match format {
        // An event's own fields only, no span context: tracing-subscriber keeps a span's fields
        // as JSON text and re-parses it on every `record`, which the call span does a dozen
        // times; that tripled the cost of a call (26 -> 80 us at 2 workers, release). Span
        // fields kept as plain text (never printed) cost what the text formats cost. The
        // per-call line carries everything it needs itself.
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .fmt_fields(tracing_subscriber::fmt::format::DefaultFields::new())
            .try_init(),
        LogFormat::Compact => builder.compact().with_ansi(colour).try_init(),
        LogFormat::Pretty => builder.with_ansi(colour).try_init(),
    };
    guard
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Anthropic-compatible gateway: every request goes through breakers, budgets and
    /// fallback chains.
    Serve(ServeArgs),
    /// Replay a scripted incident against the in-process simulator and report what seawall did.
    Demo(DemoArgs),
    /// Run the fault-injecting simulator of the Anthropic Messages API on loopback.
    Sim(SimArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The configuration file (TOML); see examples/seawall.toml.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct SimArgs {
    /// The scenario file (TOML, or JSON when it ends in .json); see examples/sim_scenario.toml.
    #[arg(long, value_name = "FILE")]
    scenario: PathBuf,
    /// Where to listen: a loopback address; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Length of the incident in seconds (3 to 600); every window scales with it.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_duration, conflicts_with = "quick")]
    duration: Duration,
    /// A 6-second time-lapse of the same incident (for CI and quick looks).
    #[arg(long)]
    quick: bool,
    /// Where to write the SVG timeline.
    #[arg(long, value_name = "PATH", default_value = "seawall-demo.svg")]
    out: PathBuf,
    /// Seed of the simulator's draws and of the agents' tasks.
    #[arg(long, value_name = "N", default_value_t = 7)]
    seed: u64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    let (min, max) = (demo::MIN_DURATION, demo::MAX_DURATION);
    if !(min.as_secs_f64()..=max.as_secs_f64()).contains(&secs) {
        return Err(format!(
            "must be between {} and {} seconds",
            min.as_secs(),
            max.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args, cli.log_format).await,
        Command::Demo(args) => run_demo(args, cli.log_format).await,
        Command::Sim(args) => sim(args, cli.log_format).await,
    }
}

async fn serve(args: ServeArgs, log_flag: Option<LogFormat>) -> ExitCode {
    let config = match Config::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("seawall serve: {e}");
            return ExitCode::from(2);
        }
    };
    let format = match log_format(log_flag, config.log.format) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("seawall serve: {e}");
            return ExitCode::from(2);
        }
    };
    // Held until serve returns: dropping it flushes the last lines.
    let _logs = init_logging(format, DEFAULT_FILTER);
    let gateway = match Gateway::start(&config).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("seawall serve: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("seawall serve: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    let shutdown = shutdown_signal();
    let mut out = std::io::stdout().lock();
    if writeln!(out, "seawall serve listening on http://{addr}")
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    drop(out);
    match gateway.serve(listener, shutdown).await {
        Ok(report) => {
            if report.abandoned > 0 {
                eprintln!(
                    "seawall serve: stopped with {} call(s) still in flight after the grace period",
                    report.abandoned
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seawall serve: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run_demo(args: DemoArgs, log_flag: Option<LogFormat>) -> ExitCode {
    let format = match log_format(log_flag, None) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("seawall demo: {e}");
            return ExitCode::from(2);
        }
    };
    // Nothing unless RUST_LOG asks: the demo's output is its report and progress.
    let _logs = init_logging(format, "off");
    let options = DemoOptions {
        duration: if args.quick {
            demo::QUICK_DURATION
        } else {
            args.duration
        },
        seed: args.seed,
        ..DemoOptions::default()
    };
    // Said before the run, so nobody wonders what the next half minute is for.
    println!(
        "seawall demo: {} agents calling {} (falling back to {}, the same model on Bedrock) \
         through seawall for {:.0} s, against a simulated Anthropic API and Bedrock on loopback: \
         no key, nothing leaves this machine.",
        options.agents,
        demo::PRIMARY,
        demo::FALLBACK,
        options.duration.as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    let report = match demo::run(options).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("seawall demo: {e}");
            return ExitCode::from(1);
        }
    };
    let svg = demo::render_svg(&report);
    if let Err(e) = std::fs::write(&args.out, svg) {
        eprintln!(
            "seawall demo: cannot write the timeline to {}: {e}",
            args.out.display()
        );
        return ExitCode::from(1);
    }
    let mut out = std::io::stdout().lock();
    let printed = write!(out, "\n{}", demo::render_table(&report))
        .and_then(|()| writeln!(out, "\ntimeline: {}", args.out.display()))
        .and_then(|()| out.flush());
    if printed.is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

async fn sim(args: SimArgs, log_flag: Option<LogFormat>) -> ExitCode {
    let format = match log_format(log_flag, None) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("seawall sim: {e}");
            return ExitCode::from(2);
        }
    };
    let _logs = init_logging(format, DEFAULT_FILTER);
    let scenario = match Scenario::from_file(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("seawall sim: {e}");
            return ExitCode::from(2);
        }
    };
    let handle = match Sim::start(scenario, args.listen).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("seawall sim: {e}");
            let code = match e {
                SimError::Bind { .. } => 1,
                _ => 2,
            };
            return ExitCode::from(code);
        }
    };
    let shutdown = shutdown_signal();
    let mut out = std::io::stdout().lock();
    // A parent reading the port needs this line now, not when a buffer fills.
    if writeln!(out, "seawall sim listening on {}", handle.base_url())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    drop(out);
    shutdown.await;
    handle.shutdown().await;
    ExitCode::SUCCESS
}

/// Ctrl-C, or SIGTERM on Unix (what `kill` and process supervisors send). The handlers are
/// installed when this is called, not when the future is first polled: call it before the
/// address is announced, so a signal sent right after the announcement is never the default
/// action (an abrupt exit) instead of a drain.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Ok(mut term), Err(_)) => {
                    term.recv().await;
                }
                (Err(_), Ok(mut int)) => {
                    int.recv().await;
                }
                (Err(_), Err(_)) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
