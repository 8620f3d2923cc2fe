//! Logging set-up and one-line errors for the terminal.

/// Sets up `tracing` output on stderr: warnings by default, more with each `-v`.
pub fn init_tracing(verbose: u8) {
    init_tracing_as(verbose, false);
}

/// [`init_tracing`], as one JSON object per line when `json` (for a service's log collector:
/// journald, Loki, an ELK stack).
pub fn init_tracing_as(verbose: u8, json: bool) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber_filter(level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

fn tracing_subscriber_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
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
