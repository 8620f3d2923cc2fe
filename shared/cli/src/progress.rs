//! Progress bars on the terminal (stderr) for long work: benchmarks and model downloads.

use indicatif::{ProgressBar, ProgressStyle};
#[cfg(feature = "onnx")]
use scission_engine::bench::Progress;

/// A bar of a benchmark's steps: the unsplit model, then each block timed alone, each range
/// timed as one slice, each block counted for memory.
#[cfg(feature = "onnx")]
pub struct BenchBar(ProgressBar);

#[cfg(feature = "onnx")]
impl BenchBar {
    /// A bar, drawn only when `visible`.
    pub fn new(visible: bool) -> Self {
        if !visible {
            return Self(ProgressBar::hidden());
        }
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template("{spinner} benchmarking [{bar:30}] {pos}/{len} steps: {msg} ({elapsed})") {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(bar)
    }
}

#[cfg(feature = "onnx")]
impl Progress for BenchBar {
    fn start(&self, steps: u64) {
        self.0.set_length(steps);
    }

    fn begin(&self, label: &str) {
        self.0.set_message(label.to_string());
    }

    fn advance(&self) {
        self.0.inc(1);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A bar of downloaded bytes.
pub struct FetchBar(ProgressBar);

impl FetchBar {
    /// A bar for fetching `what`.
    pub fn new(what: &str) -> Self {
        let bar = ProgressBar::new(0);
        let template = format!("fetching {what} [{{bar:30}}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}})");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(bar)
    }

    /// `done` of `total` bytes have arrived.
    pub fn update(&mut self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

impl Drop for FetchBar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
