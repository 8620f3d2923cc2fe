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
    let tables = measured_tables(&text);
    assert_eq!(tables.len(), 2, "the open loop's table and the closed loop's:\n{text}");
    for rows in &tables {
        assert_eq!(rows.len(), 2, "one measured row per plan:\n{text}");
        for row in rows {
            // planned p50; predicted p50, p90; now p50, p90; measured p50, p90: each a time.
            let figures: Vec<f64> = row.split_whitespace().skip(1).take(7).map(|f| f.parse().unwrap()).collect();
            assert_eq!(figures.len(), 7, "{row}");
            assert!(figures.iter().all(|&ms| ms > 0.0), "{row}");
            assert!(figures[2] >= figures[1] && figures[4] >= figures[3] && figures[6] >= figures[5], "a p90 below its p50: {row}");
        }
    }
    assert_eq!(text.matches("confirmation pass: the ").count(), 2, "each round is predicted from its own confirmation pass:\n{text}");
    assert!(text.contains("6 requests on 2 plans through 3 processes: every output equals the unsplit model's"), "{text}");
    assert!(text.contains("where the time went"), "each part of each route, predicted and measured:\n{text}");
    assert!(text.contains("every output of the 12 requests equals the unsplit model's"), "the closed loop's round ran:\n{text}");
}

/// The rows of each table of plans measured (after its header, up to "where the time went").
fn measured_tables(text: &str) -> Vec<Vec<&str>> {
    let mut tables = Vec::new();
    let mut rows: Option<Vec<&str>> = None;
    for line in text.lines() {
        if line.starts_with("plan   planned") {
            rows = Some(Vec::new());
        } else if line.starts_with("where the time went") {
            tables.extend(rows.take());
        } else if let Some(rows) = rows.as_mut() {
            rows.push(line);
        }
    }
    tables
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
