//! The device service's soak, one minute of it (the full run is the `soak` example): four
//! Open Inference Protocol clients against `scission-device serve` while the edge and then the
//! cloud are killed with SIGKILL and restarted. Every answer must equal the unsplit model's
//! (tract run directly), no request may hang, and the service must answer again after each
//! fault. Times and memory are printed, not asserted (a shared machine's timings vary).

mod common;

use std::process::Command;

use serde_json::Value;

#[test]
fn the_device_service_answers_right_through_tier_kills() {
    let soak = common::bin("examples/soak");
    let out = Command::new(&soak)
        .args(["--seconds", "60", "--fault-every", "30", "--down-s", "4", "--json"])
        .output()
        .expect("the soak example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "the soak failed:\n{stdout}\n{}", common::stderr(&out));
    let summary: Value = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).expect("the soak's JSON summary");
    assert_eq!(summary["wrong"], 0, "{summary}");
    assert_eq!(summary["hung"], 0, "{summary}");
    assert!(summary["right"].as_u64().unwrap_or(0) > 0, "{summary}");
    let faults = summary["faults"].as_array().expect("faults");
    assert_eq!(faults.len(), 4, "the edge and the cloud each went away twice: {summary}");
    for fault in faults {
        assert!(fault["right_after_return"].as_u64().unwrap_or(0) > 0, "no right answer after the tier came back: {fault}");
    }
}
