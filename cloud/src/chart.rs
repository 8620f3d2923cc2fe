//! A picture of the top plans: one horizontal bar per plan, stacked from each tier's compute
//! and each hop's transfer, drawn to scale.

use std::fmt::Write;

use scission_core::solver::{Plan, Problem};

const TIER_COLOURS: [&str; 6] = ["#4e79a7", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948"];
const HOP_COLOUR: &str = "#bab0ac";
const LEFT: f64 = 60.0;
const BAR: f64 = 26.0;
const GAP: f64 = 14.0;
const WIDTH: f64 = 900.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// SVG of `plans` (best first).
pub fn svg(problem: &Problem, plans: &[Plan]) -> String {
    let longest = plans.iter().map(|p| p.cost.latency_ns).max().unwrap_or(1).max(1) as f64;
    let scale = (WIDTH - LEFT - 120.0) / longest;
    let height = 60.0 + plans.len() as f64 * (BAR + GAP) + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="14">Predicted latency of the top plans (ms): compute per tier, transfer per hop (grey)</text>"#
    );
    let legend = problem.tiers.iter().enumerate().map(|(t, name)| (TIER_COLOURS[t % 6], name.as_str())).chain([(HOP_COLOUR, "transfer")]);
    for (i, (colour, name)) in legend.enumerate() {
        let x = LEFT + i as f64 * 110.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="30" width="12" height="12" fill="{colour}"/><text x="{}" y="41">{}</text>"#,
            x + 16.0,
            escape(name)
        );
    }
    for (rank, plan) in plans.iter().enumerate() {
        let y = 55.0 + rank as f64 * (BAR + GAP);
        let _ = writeln!(out, r#"<text x="8" y="{}">#{}</text>"#, y + BAR * 0.65, rank + 1);
        let mut x = LEFT;
        let mut piece = |ns: u64, colour: &str, title: String, label: &str, out: &mut String| {
            let w = ns as f64 * scale;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.2}" y="{y}" width="{w:.2}" height="{BAR}" fill="{colour}" stroke="white"><title>{}</title></rect>"#,
                escape(&title)
            );
            if w > 7.0 * label.len() as f64 + 8.0 {
                let _ = writeln!(out, r#"<text x="{:.2}" y="{}" fill="white">{}</text>"#, x + 4.0, y + BAR * 0.65, escape(label));
            }
            x += w;
        };
        for (i, s) in plan.segments.iter().enumerate() {
            if i > 0 {
                let h = &plan.cost.hops[i - 1];
                let title = format!(
                    "{} -> {}: {} B, {:.3} ms",
                    problem.machines[h.from].name,
                    problem.machines[h.to].name,
                    h.bytes,
                    h.ns as f64 * 1e-6
                );
                piece(h.ns, HOP_COLOUR, title, "", &mut out);
            }
            let title = format!(
                "{} on {}: blocks {}..{}, {:.3} ms",
                problem.tiers[s.tier],
                problem.machines[s.machine].name,
                s.start,
                s.end,
                plan.cost.compute_ns[i] as f64 * 1e-6
            );
            piece(plan.cost.compute_ns[i], TIER_COLOURS[s.tier % 6], title, &problem.machines[s.machine].name, &mut out);
        }
        for h in &plan.cost.result_hops {
            let (from, to) = (&problem.machines[h.from].name, &problem.machines[h.to].name);
            piece(h.ns, HOP_COLOUR, format!("result back, {from} -> {to}: {} B, {:.3} ms", h.bytes, h.ns as f64 * 1e-6), "", &mut out);
        }
        let _ = writeln!(out, r#"<text x="{:.2}" y="{}">{:.3} ms</text>"#, x + 4.0, y + BAR * 0.65, plan.cost.latency_ns as f64 * 1e-6);
    }
    out.push_str("</svg>\n");
    out
}
