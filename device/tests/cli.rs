//! The `scission-device` binary explains itself and rejects bad arguments. (Having an integration
//! test here also makes `cargo test` build the real binary, which `tests/` drives.)

use std::process::Command;

#[test]
fn help_lists_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_scission-device")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["bench", "inspect"] {
        assert!(text.contains(command), "--help does not mention {command}:\n{text}");
    }
}

#[test]
fn unknown_command_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_scission-device")).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
