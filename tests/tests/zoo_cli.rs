//! `scission-cloud zoo` lists, writes and caches the built-in models, and every binary accepts
//! `zoo:NAME` wherever it takes a model file.

mod common;

use common::{bin, run, stderr};
use std::process::Command;

#[test]
fn list_write_and_use_zoo_models() {
    let out = run("scission-cloud", &["zoo", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 19, "{text}");
    assert!(text.contains("resnet50 ") && text.contains("25636712") && text.contains("nasnet_large"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mnv2.onnx");
    let out = run("scission-cloud", &["zoo", "write", "mobilenet_v2", "--out", file.to_str().unwrap(), "--seed", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run("scission-device", &["inspect", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cut points"));

    // zoo:NAME goes through the cache; a second use reads the same file.
    let cache = dir.path().join("cache");
    let inspect = || Command::new(bin("scission-edge")).args(["inspect", "zoo:mobilenet"]).env("SCISSION_CACHE", &cache).output().unwrap();
    let first = inspect();
    assert!(first.status.success(), "{}", stderr(&first));
    let cached = cache.join("zoo/mobilenet-seed1-v2.onnx");
    let modified = std::fs::metadata(&cached).unwrap().modified().unwrap();
    let second = inspect();
    assert_eq!(first.stdout, second.stdout);
    assert_eq!(std::fs::metadata(&cached).unwrap().modified().unwrap(), modified);

    let out = run("scission-cloud", &["zoo", "write", "alexnet", "--out", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("'alexnet' is not in the zoo"));
}
