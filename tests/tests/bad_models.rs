//! Bad model files give a clear one-line error and a non-zero exit, never a panic.

mod common;

use common::{run, stderr};
use scission_zoo::onnx::builder::encode;
use scission_zoo::onnx::testmodels::{TestModel, unsupported_op_model};

fn assert_one_line_error(out: &std::process::Output, must_contain: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for needle in must_contain {
        assert!(err.contains(needle), "'{needle}' missing from: {err}");
    }
}

#[test]
fn truncated_onnx_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode(&TestModel::Chain.build(32, 1));
    let path = dir.path().join("truncated.onnx");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    for bin in ["scission-device", "scission-edge", "scission-cloud"] {
        let out = run(bin, &["inspect", path.to_str().unwrap()]);
        assert_one_line_error(&out, &["truncated.onnx"]);
    }
}

#[test]
fn random_bytes_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.onnx");
    let mut state = 0x1234_5678_u32;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    std::fs::write(&path, noise).unwrap();
    let out = run("scission-device", &["bench", path.to_str().unwrap(), "--out", dir.path().join("p.json").to_str().unwrap()]);
    assert_one_line_error(&out, &["noise.onnx", "not a valid ONNX model"]);
    assert!(!dir.path().join("p.json").exists(), "no profile is written for a bad model");
}

#[test]
fn unsupported_operator_names_node_and_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unsupported.onnx");
    std::fs::write(&path, encode(&unsupported_op_model())).unwrap();
    let out = run("scission-edge", &["inspect", path.to_str().unwrap()]);
    assert_one_line_error(&out, &["Upsample", "upsample_"]);
}

#[test]
fn missing_file() {
    let out = run("scission-cloud", &["inspect", "/nonexistent/model.onnx"]);
    assert_one_line_error(&out, &["/nonexistent/model.onnx"]);
}
