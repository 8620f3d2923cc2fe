//! Helpers for driving the real binaries: where they are, and test models on disk.

#![allow(dead_code)]

pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use scission_zoo::onnx::builder::encode;
use scission_zoo::onnx::testmodels::TestModel;

/// Path of a workspace binary next to this test executable (`target/<profile>/NAME`).
/// `cargo test --workspace` builds them first, because each binary crate has tests of its own.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo test --workspace` (it builds every binary)", path.display());
    path
}

/// Runs a binary with arguments and returns its output.
pub fn run<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Output {
    Command::new(bin(name)).args(args).output().expect("binary starts")
}

/// One `bench --add-ranges` command that `plan --verify` prints: which binary times which
/// ranges into which profile.
pub struct Verification<'a> {
    /// The whole line.
    pub line: &'a str,
    pub binary: &'a str,
    pub profile: &'a str,
    pub spans: &'a str,
}

/// The commands in `plan --verify`'s output, one per machine with ranges left to time; a line of
/// another shape is an error.
pub fn verification_commands(text: &str) -> Result<Vec<Verification<'_>>, String> {
    text.lines()
        .filter(|l| l.contains(" bench MODEL "))
        .map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            [_, binary, "bench", "MODEL", "--out", profile, "--add-ranges", spans] => Ok(Verification { line, binary, profile, spans }),
            _ => Err(format!("unexpected verification line {line:?}")),
        })
        .collect()
}

/// The `q`-quantile of `values` by nearest rank (sorts them; NaN when there are none).
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(((values.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

/// Writes the zoo's model `name` into `dir` as `NAME.onnx` with the cloud binary and returns
/// its path.
pub fn write_zoo(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.onnx"));
    let out = run("scission-cloud", &[std::ffi::OsStr::new("zoo"), "write".as_ref(), name.as_ref(), "--out".as_ref(), path.as_os_str()]);
    if !out.status.success() {
        anyhow::bail!("zoo write {name} failed: {}", stderr(&out));
    }
    Ok(path)
}

/// Writes a built-in test model into `dir` and returns its path.
pub fn write_model(dir: &Path, kind: TestModel, resolution: usize) -> PathBuf {
    let path = dir.join(format!("{}.onnx", kind.name()));
    std::fs::write(&path, encode(&kind.build(resolution, 5))).expect("write model");
    path
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a quick `bench` (3 timed runs per block) of `model` with `bin`, naming the machine
/// `name`, and returns the profile's path `out`.
pub fn quick_bench(bin: &str, model: &Path, out: &Path, name: &str) -> PathBuf {
    quick_bench_with(bin, model, out, name, &[])
}

/// [`quick_bench`] with more arguments.
pub fn quick_bench_with(bin: &str, model: &Path, out: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        "bench",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--name",
        name,
        "--min-runs",
        "3",
        "--max-runs",
        "3",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let result = run(bin, &args);
    assert!(result.status.success(), "{bin} bench failed: {}", stderr(&result));
    out.to_path_buf()
}

/// Largest |a - b| over all outputs, relative to each reference output's largest magnitude;
/// the outputs must pair up in count and shape.
pub fn relative_diff(got: &[scission_engine::tract::prelude::TValue], want: &[scission_engine::tract::prelude::TValue]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            assert_eq!(g.shape(), w.shape());
            let (g, w) =
                (g.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(), w.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap());
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
            g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale
        })
        .fold(0f32, f32::max)
}

/// The unsplit model, by tract alone (the project's loading and slicing play no part): the
/// reference that split results are compared with.
pub struct Reference {
    /// The optimised model, batch pinned to 1.
    pub plan: std::sync::Arc<scission_engine::tract::prelude::TypedRunnableModel>,
    /// Its input's shape.
    pub shape: Vec<usize>,
}

impl Reference {
    /// Loads `model`; its symbolic batch ("N", as exports have it) is pinned to one request, as a
    /// user of tract would.
    pub fn load(model: &Path) -> anyhow::Result<Self> {
        use scission_engine::tract::prelude::*;
        let mut inference = scission_engine::tract::onnx().model_for_path(model)?;
        let mut fact = inference.input_fact(0)?.clone();
        fact.shape.set_dim(0, 1.to_dim());
        inference.set_input_fact(0, fact)?;
        let typed = inference.into_optimized()?;
        let shape = typed.input_fact(0)?.shape.as_concrete().ok_or_else(|| anyhow::anyhow!("the input's shape is not concrete"))?.to_vec();
        Ok(Self { plan: typed.into_runnable()?, shape })
    }
}
