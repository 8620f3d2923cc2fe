//! The core of `scission-shared` is `no_std`: its root declares `#![no_std]` unconditionally
//! and pulls `std` in only behind the `std` feature. (`.ci/run` also builds it with
//! `--no-default-features`, which fails if any core module reaches for std.)

#[test]
fn crate_root_is_no_std() {
    let root = include_str!("../../shared/src/lib.rs");
    let attributes: Vec<&str> = root.lines().filter(|l| l.starts_with("#![")).collect();
    assert!(attributes.contains(&"#![no_std]"), "{attributes:?}");
    let std_lines: Vec<&str> = root.lines().filter(|l| l.contains("extern crate std")).collect();
    assert_eq!(std_lines, vec!["extern crate std;"]);
    let before = root.split("extern crate std;").next().unwrap();
    assert!(before.trim_end().ends_with("#[cfg(feature = \"std\")]"), "std must be feature-gated");
}
