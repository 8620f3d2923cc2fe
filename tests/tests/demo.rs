//! The README's main command, on a small test model: it plans, checks every top plan's split,
//! runs each for real through edge and cloud processes and reports predicted against measured.

mod common;

use common::{run, stderr};

#[test]
fn the_demo_runs_every_top_plan_for_real_and_compares_with_the_prediction() {
    let out = run("scission-cloud", &["demo", "--model", "chain-cnn", "--plans", "2", "--requests", "3", "--device-cpu", "50"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    // Either the device ran under its quota, or the demo said why not.
    assert!(text.contains("the device runs on 50% of one core") || text.contains("note: no CPU quota here"), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with('#') && l.contains("device[")).collect();
    assert_eq!(rows.len(), 2, "one measured row per plan:\n{text}");
    assert!(text.contains("6 requests on 2 plans through 3 processes: every output equals the unsplit model's"), "{text}");
}

#[test]
fn by_default_the_demo_plays_the_board_by_doing_each_run_ten_times() {
    let out = run("scission-cloud", &["demo", "--model", "chain-cnn", "--plans", "1", "--requests", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("the device does each run of the model 10 times"), "{text}");
    assert!(text.contains("device-1t-10x-slower (1 thread(s))"), "the device's profile is named for its board:\n{text}");
    assert!(text.contains("2 requests on 1 plans through 3 processes: every output equals the unsplit model's"), "{text}");
}
