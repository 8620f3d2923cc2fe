//! Logging set-up and one-line errors for the terminal.

use tracing_subscriber::filter::{LevelFilter, Targets};

/// Sets up `tracing` output on stderr: warnings by default, more with each `-v`.
pub fn init_tracing(verbose: u8) {
    init_tracing_as(verbose, false);
}

/// [`init_tracing`], as one JSON object per line when `json` (for a service's log collector:
/// journald, Loki, an ELK stack).
pub fn init_tracing_as(verbose: u8, json: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(log_filter(level));
    let _ = if json { registry.with(layer.json()).try_init() } else { registry.with(layer).try_init() };
}

/// `RUST_LOG` as `target=level` directives, comma-separated (a bare level sets the default),
/// where it is set and parses; otherwise `level` for everything. Plain target prefixes, no
/// regular expressions: that keeps a regex engine out of the device binary.
fn log_filter(level: LevelFilter) -> Targets {
    std::env::var("RUST_LOG").ok().and_then(|v| v.parse::<Targets>().ok()).unwrap_or_else(|| Targets::new().with_default(level))
}

/// An error and its causes on one line, without duplicated messages.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(text.trim())) {
            parts.push(text.trim().to_string());
        }
    }
    parts.join(": ")
}

/// How a command ended: what to show on stdout and stderr, and the exit code. The binaries print
/// it; this crate never does.
pub struct Ending {
    /// Text for stdout.
    pub out: String,
    /// Text for stderr (the error, on one line).
    pub err: String,
    /// The process's exit code.
    pub code: std::process::ExitCode,
}

impl Ending {
    /// The ending of a command that returned `result`.
    pub fn of(result: anyhow::Result<String>) -> Self {
        match result {
            Ok(out) => Self { out, err: String::new(), code: std::process::ExitCode::SUCCESS },
            Err(e) => Self { out: String::new(), err: format!("error: {}\n", one_line(&e)), code: std::process::ExitCode::FAILURE },
        }
    }
}
