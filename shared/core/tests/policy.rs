//! The device policy driven in-process: failover on each tier, re-planning around down tiers,
//! recovery after a back-off, hysteresis against flapping link measurements, and (property)
//! every request ending in exactly one result or one explicit failure under random events.

use embassy_time::Instant;
use proptest::prelude::*;
use scission_core::link::Link;
use scission_core::policy::{Action, DevicePolicy, Event, MAX_DEFERRED_MEASUREMENT, PolicyConfig, ReplanReason, RequestFailure, Route};
use scission_core::wire::message::Stage;

fn stage(tier: u8, start: u32, end: u32) -> Stage {
    Stage { tier, machine: 0, start, end }
}

/// Device, edge and cloud.
fn three_tier(predicted: u64) -> Route {
    Route { stages: vec![stage(0, 0, 3), stage(1, 3, 6), stage(2, 6, 10)], predicted_ns: Some(predicted) }
}

/// Device and cloud.
fn device_cloud(predicted: u64) -> Route {
    Route { stages: vec![stage(0, 0, 5), stage(2, 5, 10)], predicted_ns: Some(predicted) }
}

/// Device and edge.
fn device_edge(predicted: u64) -> Route {
    Route { stages: vec![stage(0, 0, 2), stage(1, 2, 10)], predicted_ns: Some(predicted) }
}

/// The device alone.
fn device_only(predicted: u64) -> Route {
    Route { stages: vec![stage(0, 0, 10)], predicted_ns: Some(predicted) }
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn drain(policy: &mut DevicePolicy) -> Vec<Action> {
    std::iter::from_fn(|| policy.poll()).collect()
}

fn sent(actions: &[Action]) -> Vec<(u64, Vec<Stage>)> {
    actions
        .iter()
        .filter_map(|a| if let Action::Send { request, stages, .. } = a { Some((*request, stages.clone())) } else { None })
        .collect()
}

fn policy(routes: Vec<Route>) -> DevicePolicy {
    DevicePolicy::new(PolicyConfig::default(), routes, Vec::new())
}

#[test]
fn a_request_goes_out_on_the_best_route_and_completes() {
    let mut p = policy(vec![three_tier(10), device_only(50)]);
    p.handle(at(0), Event::Submit { request: 7 });
    assert_eq!(sent(&drain(&mut p)), vec![(7, three_tier(10).stages)]);
    p.handle(at(5), Event::Answered { request: 7, elapsed_ns: 12 });
    assert_eq!(drain(&mut p), vec![Action::Done { request: 7, route: three_tier(10), elapsed_ns: 12 }]);
    assert_eq!(p.outstanding(), 0);
}

#[test]
fn an_unreachable_edge_fails_over_to_the_best_route_without_it() {
    let mut p = policy(vec![three_tier(10), device_edge(20), device_cloud(30), device_only(50)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::Unreachable { request: 1, tier: 1, reason: "reset".into() });
    let actions = drain(&mut p);
    assert!(actions.contains(&Action::TierDown { tier: 1 }), "{actions:?}");
    assert!(actions.contains(&Action::FailedOver { request: 1, tier: 1, reason: "reset".into() }), "{actions:?}");
    assert_eq!(sent(&actions), vec![(1, device_cloud(30).stages)]);
    p.handle(at(2), Event::Answered { request: 1, elapsed_ns: 31 });
    assert_eq!(drain(&mut p), vec![Action::Done { request: 1, route: device_cloud(30), elapsed_ns: 31 }]);
    // Later requests avoid the edge without trying it.
    p.handle(at(3), Event::Submit { request: 2 });
    assert_eq!(sent(&drain(&mut p)), vec![(2, device_cloud(30).stages)]);
}

/// Device, then machine `machine` of the edge tier for the rest.
fn device_edge_machine(machine: u8, predicted: u64) -> Route {
    Route { stages: vec![stage(0, 0, 2), Stage { machine, ..stage(1, 2, 10) }], predicted_ns: Some(predicted) }
}

#[test]
fn a_failed_edge_machine_is_avoided_while_another_edge_of_its_tier_keeps_serving() {
    use scission_core::wire::message::server_key;
    let (edge_b, edge_c) = (device_edge_machine(3, 10), device_edge_machine(4, 20));
    let mut p = policy(vec![edge_b.clone(), edge_c.clone(), device_cloud(30), device_only(50)]);
    p.handle(at(0), Event::Submit { request: 1 });
    assert_eq!(sent(&drain(&mut p)), vec![(1, edge_b.stages.clone())]);
    // Machine 3 of tier 1 fails: the next route on the other edge machine, not the cloud.
    let failed = server_key(1, 3);
    p.handle(at(1), Event::Unreachable { request: 1, tier: failed, reason: "reset".into() });
    let actions = drain(&mut p);
    assert!(actions.contains(&Action::TierDown { tier: failed }), "{actions:?}");
    assert_eq!(sent(&actions), vec![(1, edge_c.stages.clone())]);
    assert_eq!(p.down_tiers(), vec![failed], "only that machine is down");
    // A report naming the tier's configured server (not on this route) is a lie: rejected.
    p.handle(at(2), Event::Answered { request: 1, elapsed_ns: 21 });
    drain(&mut p);
    p.handle(at(3), Event::Submit { request: 2 });
    assert_eq!(sent(&drain(&mut p)), vec![(2, edge_c.stages.clone())]);
    p.handle(at(4), Event::Unreachable { request: 2, tier: 1, reason: "not on the route".into() });
    let actions = drain(&mut p);
    assert!(actions.iter().any(|a| matches!(a, Action::Fail { request: 2, failure: RequestFailure::Rejected { .. } })), "{actions:?}");
}

#[test]
fn a_cloud_that_times_out_fails_over_to_the_edge() {
    let mut p = policy(vec![three_tier(10), device_cloud(20), device_edge(30), device_only(50)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::TimedOut { request: 1, tier: 2 });
    let actions = drain(&mut p);
    assert!(actions.contains(&Action::TierDown { tier: 2 }), "{actions:?}");
    assert_eq!(sent(&actions), vec![(1, device_edge(30).stages)]);
    assert_eq!(p.down_tiers(), vec![2]);
}

#[test]
fn both_servers_down_falls_back_to_the_device_alone() {
    let mut p = policy(vec![three_tier(10), device_cloud(20), device_only(50)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::Unreachable { request: 1, tier: 1, reason: "gone".into() });
    assert_eq!(sent(&drain(&mut p)), vec![(1, device_cloud(20).stages)]);
    p.handle(at(2), Event::Unreachable { request: 1, tier: 2, reason: "gone".into() });
    assert_eq!(sent(&drain(&mut p)), vec![(1, device_only(50).stages)]);
    p.handle(at(3), Event::Answered { request: 1, elapsed_ns: 50 });
    assert!(matches!(drain(&mut p)[..], [Action::Done { request: 1, .. }]));
}

#[test]
fn no_ranked_route_left_asks_for_a_plan_avoiding_the_down_tier() {
    let mut p = policy(vec![three_tier(10)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::Unreachable { request: 1, tier: 1, reason: "gone".into() });
    let actions = drain(&mut p);
    assert!(actions.contains(&Action::Replan { avoid: vec![1], links: vec![], reason: ReplanReason::NoRouteAvoidingDown }), "{actions:?}");
    assert!(sent(&actions).is_empty());
    // A request submitted meanwhile waits for the same plan.
    p.handle(at(2), Event::Submit { request: 2 });
    assert!(drain(&mut p).is_empty());
    p.handle(at(3), Event::Plans(vec![device_cloud(20)]));
    let actions = drain(&mut p);
    assert_eq!(sent(&actions), vec![(1, device_cloud(20).stages), (2, device_cloud(20).stages)]);
    assert!(actions.iter().any(|a| matches!(a, Action::Switched { to, .. } if *to == device_cloud(20))), "{actions:?}");
}

#[test]
fn a_failed_replan_fails_the_waiting_requests_explicitly() {
    let mut p = policy(vec![three_tier(10)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::Unreachable { request: 1, tier: 2, reason: "gone".into() });
    drain(&mut p);
    p.handle(at(2), Event::PlanFailed { reason: "fixed split".into() });
    assert_eq!(drain(&mut p), vec![Action::Fail { request: 1, failure: RequestFailure::NoRoute { down: vec![2] } }]);
    assert_eq!(p.outstanding(), 0);
}

#[test]
fn a_busy_tier_is_avoided_by_that_request_but_stays_up() {
    let mut p = policy(vec![three_tier(10), device_cloud(20), device_only(50)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::Busy { request: 1, tier: 1 });
    let actions = drain(&mut p);
    assert_eq!(sent(&actions), vec![(1, device_cloud(20).stages)], "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::TierDown { .. })), "back-pressure is not death: {actions:?}");
    assert!(p.is_up(1));
    // The next request tries the edge again.
    p.handle(at(2), Event::Submit { request: 2 });
    assert_eq!(sent(&drain(&mut p)), vec![(2, three_tier(10).stages)]);
}

/// A policy whose requests refused as busy everywhere keep trying for `patience_ms`.
fn patient(routes: Vec<Route>, patience_ms: u64) -> DevicePolicy {
    let config = PolicyConfig { busy_patience: embassy_time::Duration::from_millis(patience_ms), ..PolicyConfig::default() };
    DevicePolicy::new(config, routes, Vec::new())
}

/// When a back-off says the request is tried again.
fn backing_off(actions: &[Action]) -> Option<Instant> {
    actions.iter().find_map(|a| if let Action::BackingOff { until, .. } = a { Some(*until) } else { None })
}

#[test]
fn busy_everywhere_backs_off_and_tries_every_route_again_while_its_patience_lasts() {
    let mut p = patient(vec![three_tier(10), device_cloud(20)], 10_000);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::Busy { request: 1, tier: 1 });
    drain(&mut p);
    p.handle(at(2), Event::Busy { request: 1, tier: 2 });
    let actions = drain(&mut p);
    let until = backing_off(&actions).unwrap_or_else(|| panic!("no back-off: {actions:?}"));
    assert!(sent(&actions).is_empty() && !actions.iter().any(|a| matches!(a, Action::Fail { .. })), "{actions:?}");
    // Between half and one and a half times the first back-off (50 ms).
    assert!((at(2 + 25)..at(2 + 75)).contains(&until), "{until:?}");
    p.handle(until.checked_sub(embassy_time::Duration::from_millis(1)).unwrap(), Event::Tick);
    assert!(drain(&mut p).is_empty(), "not before its back-off");
    p.handle(until, Event::Tick);
    assert_eq!(sent(&drain(&mut p)), vec![(1, three_tier(10).stages)], "every route may have room again: the best first");
    p.handle(until, Event::Answered { request: 1, elapsed_ns: 9 });
    assert!(matches!(drain(&mut p)[..], [Action::Done { request: 1, .. }]));
}

#[test]
fn a_request_busy_past_its_patience_fails_as_busy_and_back_offs_double_with_jitter() {
    let mut p = patient(vec![device_cloud(20)], 1_000);
    for request in [1, 2] {
        p.handle(at(0), Event::Submit { request });
    }
    drain(&mut p);
    let mut now = at(0);
    let mut waits = Vec::new();
    let failed = loop {
        p.handle(now, Event::Busy { request: 1, tier: 2 });
        let actions = drain(&mut p);
        let Some(until) = backing_off(&actions) else { break actions };
        waits.push((until - now).as_millis());
        now = until;
        p.handle(now, Event::Tick);
        assert_eq!(sent(&drain(&mut p)), vec![(1, device_cloud(20).stages)]);
    };
    assert_eq!(failed, vec![Action::Fail { request: 1, failure: RequestFailure::Busy { tiers: vec![2] } }]);
    assert!(now < at(1_000), "no try starts past its patience: the last at {now:?}");
    assert!(waits.len() >= 3, "{waits:?}");
    // Each back-off is drawn from twice the range of the one before (jitter: 0.5x-1.5x).
    for (k, &wait) in waits.iter().enumerate() {
        let base = 50u64 << k;
        assert!((base / 2..base * 3 / 2).contains(&wait), "back-off {k}: {wait} ms ({waits:?})");
    }
    // Another request refused at the same moment backs off for another time.
    p.handle(now, Event::Busy { request: 2, tier: 2 });
    let other = backing_off(&drain(&mut p)).expect("request 2 backs off");
    p.handle(now, Event::Submit { request: 3 });
    drain(&mut p);
    p.handle(now, Event::Busy { request: 3, tier: 2 });
    assert_ne!(backing_off(&drain(&mut p)), Some(other), "two requests refused together spread out");
}

#[test]
fn busy_everywhere_fails_the_request_as_busy() {
    let mut p = policy(vec![three_tier(10), device_cloud(20)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::Busy { request: 1, tier: 1 });
    drain(&mut p);
    p.handle(at(2), Event::Busy { request: 1, tier: 2 });
    assert_eq!(drain(&mut p), vec![Action::Fail { request: 1, failure: RequestFailure::Busy { tiers: vec![1, 2] } }]);
    assert!(p.down_tiers().is_empty());
}

#[test]
fn a_rejected_request_fails_without_marking_any_tier_down() {
    let mut p = policy(vec![three_tier(10), device_only(50)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::Rejected { request: 1, reason: "bad input".into() });
    assert_eq!(drain(&mut p), vec![Action::Fail { request: 1, failure: RequestFailure::Rejected { reason: "bad input".into() } }]);
    assert!(p.down_tiers().is_empty());
}

#[test]
fn a_peer_blaming_a_tier_off_the_route_does_not_take_it_down() {
    let mut p = policy(vec![device_cloud(10), device_edge(20)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::Unreachable { request: 1, tier: 1, reason: "lies".into() });
    assert!(matches!(drain(&mut p)[..], [Action::Fail { request: 1, failure: RequestFailure::Rejected { .. } }]));
    assert!(p.down_tiers().is_empty());
}

#[test]
fn attempts_are_bounded() {
    let config = PolicyConfig { max_attempts: 1, ..PolicyConfig::default() };
    let mut p = DevicePolicy::new(config, vec![three_tier(10), device_only(50)], Vec::new());
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(1), Event::Unreachable { request: 1, tier: 1, reason: "gone".into() });
    let actions = drain(&mut p);
    assert!(actions.contains(&Action::Fail { request: 1, failure: RequestFailure::TooManyAttempts { attempts: 1 } }), "{actions:?}");
}

#[test]
fn a_duplicate_id_is_refused_without_disturbing_the_first() {
    let mut p = policy(vec![device_only(50)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(0), Event::Submit { request: 1 });
    assert!(matches!(drain(&mut p)[..], [Action::Fail { request: 1, failure: RequestFailure::Rejected { .. } }]));
    p.handle(at(1), Event::Answered { request: 1, elapsed_ns: 5 });
    assert!(matches!(drain(&mut p)[..], [Action::Done { request: 1, .. }]));
}

/// Takes tier 1 down at t = 0 (back-off 1 s).
fn edge_down() -> DevicePolicy {
    let mut p = policy(vec![three_tier(10), device_cloud(20)]);
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(0), Event::Unreachable { request: 1, tier: 1, reason: "gone".into() });
    p.handle(at(0), Event::Answered { request: 1, elapsed_ns: 20 });
    drain(&mut p);
    p
}

#[test]
fn a_down_tier_is_probed_after_its_backoff_and_comes_back_when_it_answers() {
    let mut p = edge_down();
    p.handle(at(999), Event::Tick);
    assert!(drain(&mut p).is_empty(), "no probe before the back-off");
    p.handle(at(1000), Event::Tick);
    assert_eq!(drain(&mut p), vec![Action::Probe { tier: 1 }]);
    p.handle(at(1001), Event::Tick);
    assert!(drain(&mut p).is_empty(), "one probe at a time");
    p.handle(at(1010), Event::ProbeAnswered { tier: 1 });
    let actions = drain(&mut p);
    assert_eq!(actions[0], Action::TierUp { tier: 1 });
    assert!(matches!(actions[1], Action::Replan { ref avoid, reason: ReplanReason::TierRecovered, .. } if avoid.is_empty()));
    assert!(p.is_up(1));
    p.handle(at(1020), Event::Plans(vec![three_tier(10), device_cloud(20)]));
    drain(&mut p);
    p.handle(at(1030), Event::Submit { request: 2 });
    assert_eq!(sent(&drain(&mut p)), vec![(2, three_tier(10).stages)], "the recovered edge is used again");
}

#[test]
fn a_tier_that_comes_back_while_plans_are_out_gets_a_ranking_that_knows_it() {
    let mut p = edge_down();
    // Take the cloud down too: no ranked route is left, so plans are asked for.
    p.handle(at(1), Event::Submit { request: 2 });
    drain(&mut p);
    p.handle(at(1), Event::Unreachable { request: 2, tier: 2, reason: "gone".into() });
    assert!(drain(&mut p).iter().any(|a| matches!(a, Action::Replan { .. })));
    // The edge answers its probe before the plans arrive.
    p.handle(at(1000), Event::Tick);
    assert_eq!(drain(&mut p), vec![Action::Probe { tier: 1 }]);
    p.handle(at(1001), Event::ProbeAnswered { tier: 1 });
    assert_eq!(drain(&mut p), vec![Action::TierUp { tier: 1 }], "no second re-plan while one is out");
    // The plans that arrive were made without the edge: one more ranking is asked for.
    p.handle(at(1002), Event::Plans(vec![device_only(50)]));
    let actions = drain(&mut p);
    assert!(actions.iter().any(|a| matches!(a, Action::Replan { reason: ReplanReason::TierRecovered, .. })), "{actions:?}");
    assert!(sent(&actions).is_empty(), "request 2 waits for that ranking");
    p.handle(at(1003), Event::Plans(vec![device_edge(30), device_only(50)]));
    assert_eq!(sent(&drain(&mut p)), vec![(2, device_edge(30).stages)]);
}

#[test]
fn failed_probes_back_off_exponentially_up_to_the_cap() {
    let mut p = edge_down();
    let mut now = 1000;
    let mut waits = Vec::new();
    for _ in 0..8 {
        // Find the first tick (in 100 ms steps) at which the probe goes out.
        let mut t = now;
        loop {
            p.handle(at(t), Event::Tick);
            if drain(&mut p).contains(&Action::Probe { tier: 1 }) {
                break;
            }
            t += 100;
        }
        waits.push(t - now);
        p.handle(at(t), Event::ProbeFailed { tier: 1, reason: "still gone".into() });
        now = t;
    }
    // 1 s initial back-off, then 2, 4, 8, 16, 32, and the 60 s cap.
    assert_eq!(waits, vec![0, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
    assert_eq!(p.down_tiers(), vec![1]);
}

/// The waits between the probes of a tier that never answers, in 10 ms steps, under `config`.
fn probe_waits(config: PolicyConfig, probes: usize) -> Vec<u64> {
    let mut p = DevicePolicy::new(config, vec![three_tier(10), device_cloud(20)], Vec::new());
    p.handle(at(0), Event::Submit { request: 1 });
    drain(&mut p);
    p.handle(at(0), Event::Unreachable { request: 1, tier: 1, reason: "gone".into() });
    p.handle(at(0), Event::Answered { request: 1, elapsed_ns: 20 });
    drain(&mut p);
    let (mut now, mut waits) = (0, Vec::new());
    for _ in 0..probes {
        let probed = (now..).step_by(10).find(|&t| {
            p.handle(at(t), Event::Tick);
            drain(&mut p).contains(&Action::Probe { tier: 1 })
        });
        let probed = probed.unwrap_or_else(|| unreachable!());
        waits.push(probed - now);
        p.handle(at(probed), Event::ProbeFailed { tier: 1, reason: "still gone".into() });
        now = probed;
    }
    waits
}

#[test]
fn jittered_probes_stay_within_their_spread_of_the_backoff_and_differ_between_devices() {
    let config = |seed| PolicyConfig {
        backoff_initial: embassy_time::Duration::from_millis(250),
        backoff_max: embassy_time::Duration::from_secs(2),
        probe_jitter_percent: 25,
        jitter_seed: scission_core::policy::seed_of(seed),
        ..PolicyConfig::default()
    };
    let backoffs = [250u64, 500, 1000, 2000, 2000, 2000, 2000, 2000];
    let (a, b) = (probe_waits(config("board-1"), 8), probe_waits(config("board-2"), 8));
    for waits in [&a, &b] {
        for (wait, backoff) in waits.iter().zip(backoffs) {
            // Within the spread, to the 10 ms the ticks step by.
            assert!(*wait + 10 >= backoff * 3 / 4 && *wait <= backoff * 5 / 4 + 10, "{waits:?}");
        }
    }
    assert_ne!(a, b, "two devices probe at different times");
    assert_eq!(a, probe_waits(config("board-1"), 8), "the same device, the same schedule");
    let exact = probe_waits(PolicyConfig { probe_jitter_percent: 0, ..config("board-1") }, 8);
    assert_eq!(exact, backoffs.to_vec(), "no jitter, exactly the back-offs");
}

/// Runs one request with a scheduled re-plan (replan_every = 1) that returns `ranking`: the
/// request goes out on the route at hand, the links are measured once it is answered (no
/// request in flight), and the plans come. The route the request took, and whether the new
/// ranking switched the best route (for the next request).
fn scheduled_replan(p: &mut DevicePolicy, request: u64, ranking: Vec<Route>) -> (Vec<Stage>, bool) {
    p.handle(at(request), Event::Submit { request });
    let stages = sent(&drain(p)).pop().expect("the request goes out at once").1;
    p.handle(at(request), Event::Answered { request, elapsed_ns: 1 });
    let mut switched = false;
    if drain(p).iter().any(|a| matches!(a, Action::MeasureLinks { .. })) {
        p.handle(at(request), Event::LinksMeasured(vec![(1, Link { latency_ns: 1, bits_per_sec: 1 })]));
        assert!(matches!(drain(p)[..], [Action::Replan { reason: ReplanReason::Scheduled, .. }]));
        p.handle(at(request), Event::Plans(ranking));
        switched = drain(p).iter().any(|a| matches!(a, Action::Switched { .. }));
    }
    (stages, switched)
}

#[test]
fn measurements_alternating_within_the_hysteresis_band_never_switch() {
    let config = PolicyConfig { replan_every: 1, ..PolicyConfig::default() };
    let mut p = DevicePolicy::new(config, vec![three_tier(100), device_cloud(104)], Vec::new());
    for request in 0..40 {
        // The edge and the cloud take turns looking up to 9 % better than each other.
        let ranking = if request % 2 == 0 { vec![device_cloud(92), three_tier(100)] } else { vec![three_tier(92), device_cloud(100)] };
        let (stages, switched) = scheduled_replan(&mut p, request, ranking);
        assert_eq!(stages, three_tier(0).stages, "request {request} stays on the current route");
        assert!(!switched, "request {request}: no switch inside the band");
    }
}

#[test]
fn a_clearly_faster_route_is_taken() {
    let config = PolicyConfig { replan_every: 1, ..PolicyConfig::default() };
    let mut p = DevicePolicy::new(config, vec![three_tier(100), device_cloud(104)], Vec::new());
    scheduled_replan(&mut p, 0, vec![three_tier(100)]);
    let (stages, switched) = scheduled_replan(&mut p, 1, vec![device_cloud(90), three_tier(100)]);
    assert!(switched);
    assert_eq!(stages, three_tier(0).stages, "the request at hand went out on the route at hand");
    let (stages, _) = scheduled_replan(&mut p, 2, vec![device_cloud(90), three_tier(100)]);
    assert_eq!(stages, device_cloud(0).stages, "the next takes the faster one");
}

#[test]
fn links_are_measured_between_requests_and_plans_are_made_while_requests_go_on() {
    let config = PolicyConfig { replan_every: 2, ..PolicyConfig::default() };
    let mut p = DevicePolicy::new(config, vec![three_tier(100), device_only(400)], Vec::new());
    let links = || Event::LinksMeasured(vec![(1, Link { latency_ns: 1, bits_per_sec: 1 })]);
    for request in 0..3 {
        p.handle(at(request), Event::Submit { request });
    }
    // The third was due a measurement: requests are in flight, so it goes out and the
    // measurement waits for a moment with none.
    let actions = drain(&mut p);
    assert_eq!(sent(&actions).len(), 3);
    assert!(!actions.iter().any(|a| matches!(a, Action::MeasureLinks { .. })), "{actions:?}");
    for request in 0..2 {
        p.handle(at(3), Event::Answered { request, elapsed_ns: 1 });
    }
    assert!(!drain(&mut p).iter().any(|a| matches!(a, Action::MeasureLinks { .. })), "one is still in flight");
    p.handle(at(4), Event::Answered { request: 2, elapsed_ns: 1 });
    assert!(drain(&mut p).iter().any(|a| matches!(a, Action::MeasureLinks { .. })), "measured once none is in flight");
    // A request that comes while the links are measured waits (it would disturb them), then
    // goes out on the ranking at hand while the plans are out; so does the next.
    p.handle(at(5), Event::Submit { request: 3 });
    assert!(sent(&drain(&mut p)).is_empty());
    p.handle(at(6), links());
    let actions = drain(&mut p);
    assert!(matches!(actions[0], Action::Replan { reason: ReplanReason::Scheduled, .. }), "{actions:?}");
    assert_eq!(sent(&actions), vec![(3, three_tier(0).stages)]);
    p.handle(at(7), Event::Submit { request: 4 });
    assert_eq!(sent(&drain(&mut p)), vec![(4, three_tier(0).stages)]);
    // The new ranking applies from the next request on.
    p.handle(at(8), Event::Plans(vec![device_only(40), three_tier(100)]));
    assert!(drain(&mut p).iter().any(|a| matches!(a, Action::Switched { .. })));
    p.handle(at(9), Event::Submit { request: 5 });
    assert_eq!(sent(&drain(&mut p)), vec![(5, device_only(0).stages)]);
    for request in 3..6 {
        p.handle(at(10), Event::Answered { request, elapsed_ns: 1 });
    }
    drain(&mut p);
    assert_eq!(p.outstanding(), 0);
}

#[test]
fn a_device_never_idle_still_measures_its_links() {
    let config = PolicyConfig { replan_every: 1, ..PolicyConfig::default() };
    let mut p = DevicePolicy::new(config, vec![three_tier(100)], Vec::new());
    // Two requests always in flight: no idle moment ever comes.
    p.handle(at(0), Event::Submit { request: 0 });
    drain(&mut p);
    let mut measured_at = None;
    for request in 1..20u64 {
        p.handle(at(request), Event::Submit { request });
        let actions = drain(&mut p);
        if actions.iter().any(|a| matches!(a, Action::MeasureLinks { .. })) {
            assert!(sent(&actions).is_empty(), "the request that triggers it waits for it");
            measured_at = Some(request);
            break;
        }
        assert_eq!(sent(&actions).len(), 1, "request {request} goes out meanwhile");
        p.handle(at(request), Event::Answered { request: request - 1, elapsed_ns: 1 });
        drain(&mut p);
    }
    assert_eq!(measured_at, Some(u64::from(MAX_DEFERRED_MEASUREMENT) + 1), "after {MAX_DEFERRED_MEASUREMENT} requests at most");
}

#[test]
fn a_policy_without_a_plan_asks_for_one_first() {
    let mut p = policy(Vec::new());
    p.handle(at(0), Event::Submit { request: 1 });
    assert!(matches!(drain(&mut p)[..], [Action::Replan { reason: ReplanReason::NoPlan, .. }]));
    p.handle(at(1), Event::Plans(vec![device_only(5)]));
    assert_eq!(sent(&drain(&mut p)), vec![(1, device_only(5).stages)]);
}

/// What the shell owes the policy.
#[derive(Default)]
struct Obligations {
    sends: Vec<(u64, Vec<Stage>)>,
    probes: Vec<u8>,
    measure: bool,
    replan: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Submit,
    /// Answer the n-th outstanding send: 0 answered, 1 unreachable on one of its tiers,
    /// 2 timed out, 3 rejected, 4 unreachable naming a random tier, 5 busy.
    Resolve {
        index: usize,
        kind: u8,
        tier: u8,
    },
    /// Answer a probe, a measurement or a re-plan: `ok` decides the outcome, `ranking` which
    /// routes (bit set over the pool) in which rotation.
    Aux {
        index: usize,
        ok: bool,
        ranking: u8,
        rotate: usize,
    },
    Tick {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Submit),
        4 => (any::<usize>(), 0u8..6, 0u8..4).prop_map(|(index, kind, tier)| Op::Resolve { index, kind, tier }),
        2 => (any::<usize>(), any::<bool>(), any::<u8>(), any::<usize>()).prop_map(|(index, ok, ranking, rotate)| Op::Aux { index, ok, ranking, rotate }),
        1 => (0u64..3000).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn pool() -> Vec<Route> {
    vec![three_tier(10), device_cloud(20), device_edge(30), device_only(40), Route { stages: vec![stage(2, 0, 10)], predicted_ns: None }]
}

fn ranking(bits: u8, rotate: usize) -> Vec<Route> {
    let mut routes: Vec<Route> = pool().into_iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, r)| r).collect();
    if !routes.is_empty() {
        let n = routes.len();
        routes.rotate_left(rotate % n);
    }
    routes
}

/// Feeds `event`, then records every action: terminal outcomes per request and new obligations.
fn step(
    p: &mut DevicePolicy,
    now: Instant,
    event: Event,
    owed: &mut Obligations,
    ends: &mut std::collections::BTreeMap<u64, u32>,
) -> Result<(), TestCaseError> {
    p.handle(now, event);
    while let Some(action) = p.poll() {
        match action {
            Action::Send { request, stages, .. } => {
                prop_assert!(!ends.contains_key(&request), "request {request} sent after it ended");
                prop_assert!(!owed.sends.iter().any(|(r, _)| *r == request), "request {request} sent twice at once");
                owed.sends.push((request, stages));
            }
            Action::Probe { tier } => {
                prop_assert!(!owed.probes.contains(&tier), "two probes of tier {tier} at once");
                owed.probes.push(tier);
            }
            Action::MeasureLinks { .. } => {
                prop_assert!(!owed.measure && !owed.replan);
                owed.measure = true;
            }
            Action::Replan { .. } => {
                prop_assert!(!owed.measure && !owed.replan);
                owed.replan = true;
            }
            Action::Done { request, .. } | Action::Fail { request, .. } => {
                prop_assert!(!owed.sends.iter().any(|(r, _)| *r == request), "request {request} ended while in flight");
                *ends.entry(request).or_insert(0) += 1;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Carries out one auxiliary obligation.
fn aux(owed: &mut Obligations, index: usize, ok: bool, bits: u8, rotate: usize) -> Option<Event> {
    if owed.replan {
        owed.replan = false;
        return Some(if ok { Event::Plans(ranking(bits, rotate)) } else { Event::PlanFailed { reason: "no".into() } });
    }
    if owed.measure {
        owed.measure = false;
        return Some(Event::LinksMeasured(if ok { vec![(1, Link { latency_ns: 5, bits_per_sec: 1000 })] } else { vec![] }));
    }
    if owed.probes.is_empty() {
        return None;
    }
    let tier = owed.probes.remove(index % owed.probes.len());
    Some(if ok { Event::ProbeAnswered { tier } } else { Event::ProbeFailed { tier, reason: "no".into() } })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_request_ends_exactly_once(ops in proptest::collection::vec(op(), 0..120), start in any::<u8>(), replan_every in 0u32..4, patience_ms in prop_oneof![Just(0u64), Just(700u64)]) {
        let busy_patience = embassy_time::Duration::from_millis(patience_ms);
        let config = PolicyConfig { replan_every, max_attempts: 4, busy_patience, ..PolicyConfig::default() };
        let mut p = DevicePolicy::new(config, ranking(start, 0), Vec::new());
        let (mut owed, mut ends) = (Obligations::default(), std::collections::BTreeMap::new());
        let (mut now, mut next_id) = (0u64, 0u64);
        for op in ops {
            let event = match op {
                Op::Submit => {
                    next_id += 1;
                    Some(Event::Submit { request: next_id })
                }
                Op::Resolve { index, kind, tier } if !owed.sends.is_empty() => {
                    let (request, stages) = owed.sends.remove(index % owed.sends.len());
                    let on_route = stages[usize::from(tier) % stages.len()].tier;
                    Some(match kind {
                        0 => Event::Answered { request, elapsed_ns: 1 },
                        1 => Event::Unreachable { request, tier: on_route, reason: "x".into() },
                        2 => Event::TimedOut { request, tier: on_route },
                        3 => Event::Rejected { request, reason: "x".into() },
                        5 => Event::Busy { request, tier: on_route },
                        _ => Event::Unreachable { request, tier, reason: "x".into() },
                    })
                }
                Op::Resolve { .. } => None,
                Op::Aux { index, ok, ranking, rotate } => aux(&mut owed, index, ok, ranking, rotate),
                Op::Tick { ms } => {
                    now += ms;
                    Some(Event::Tick)
                }
            };
            if let Some(event) = event {
                step(&mut p, Instant::from_millis(now), event, &mut owed, &mut ends)?;
            }
        }
        // Drain: answer every obligation (sends succeed, probes fail, plans are the whole pool);
        // with none left but requests backing off, time passes.
        for _ in 0..10_000 {
            let event = if let Some((request, _)) = owed.sends.pop() {
                Event::Answered { request, elapsed_ns: 1 }
            } else if let Some(event) = aux(&mut owed, 0, true, 0b11111, 0) {
                event
            } else if p.outstanding() > 0 {
                now += 100;
                Event::Tick
            } else {
                break;
            };
            step(&mut p, Instant::from_millis(now), event, &mut owed, &mut ends)?;
        }
        prop_assert!(owed.sends.is_empty() && !owed.replan && !owed.measure);
        prop_assert_eq!(p.outstanding(), 0, "requests left without an outcome");
        for id in 1..=next_id {
            prop_assert_eq!(ends.get(&id).copied(), Some(1), "request {} ended {:?} times", id, ends.get(&id));
        }
        prop_assert_eq!(ends.len() as u64, next_id);
    }
}

#[test]
fn a_tier_unreachable_at_start_is_probed_and_brings_a_ranking_when_it_answers() {
    // The service starts with only the device's own route: the cloud did not answer.
    let mut p = policy(vec![device_only(50)]);
    p.handle(at(0), Event::TierUnreachable { tier: 2 });
    assert_eq!(drain(&mut p), vec![Action::TierDown { tier: 2 }]);
    p.handle(at(0), Event::TierUnreachable { tier: 0 });
    assert!(drain(&mut p).is_empty(), "the device itself never goes down");
    p.handle(at(1), Event::Submit { request: 1 });
    assert_eq!(sent(&drain(&mut p)), vec![(1, device_only(50).stages)], "served locally meanwhile");
    p.handle(at(1000), Event::Tick);
    assert_eq!(drain(&mut p), vec![Action::Probe { tier: 2 }]);
    p.handle(at(1001), Event::ProbeAnswered { tier: 2 });
    let actions = drain(&mut p);
    assert!(actions.iter().any(|a| matches!(a, Action::Replan { reason: ReplanReason::TierRecovered, .. })), "{actions:?}");
    p.handle(at(1002), Event::Plans(vec![device_cloud(20), device_only(50)]));
    assert!(drain(&mut p).iter().any(|a| matches!(a, Action::Switched { to, .. } if *to == device_cloud(20))));
}

#[test]
fn a_periodic_replan_measures_the_links_on_schedule_and_not_before() {
    let config = PolicyConfig { replan_period: embassy_time::Duration::from_secs(30), ..PolicyConfig::default() };
    let mut p = DevicePolicy::new(config, vec![three_tier(10), device_only(50)], Vec::new());
    p.handle(at(0), Event::Tick);
    p.handle(at(29_999), Event::Tick);
    assert!(drain(&mut p).is_empty(), "nothing before the period");
    p.handle(at(30_000), Event::Tick);
    assert_eq!(drain(&mut p), vec![Action::MeasureLinks { tiers: vec![1, 2] }]);
    p.handle(at(30_001), Event::Tick);
    assert!(drain(&mut p).is_empty(), "one measurement at a time");
    p.handle(at(30_010), Event::LinksMeasured(vec![(1, Link { bits_per_sec: 1_000_000, latency_ns: 1_000_000 })]));
    assert!(matches!(drain(&mut p)[..], [Action::Replan { reason: ReplanReason::Scheduled, .. }]));
    p.handle(at(30_020), Event::Plans(vec![three_tier(10), device_only(50)]));
    drain(&mut p);
    p.handle(at(59_999), Event::Tick);
    assert!(drain(&mut p).is_empty(), "the next is a period after the last");
    p.handle(at(60_000), Event::Tick);
    assert_eq!(drain(&mut p), vec![Action::MeasureLinks { tiers: vec![1, 2] }]);
}

#[test]
fn a_tier_that_fails_again_soon_after_coming_back_waits_longer_each_time() {
    // The edge answers probes but fails every request (its own upstream is broken): each time
    // it comes back and fails at once, the next probe waits twice as long, up to the cap.
    let mut p = edge_down();
    let mut now = 0;
    let mut waits = Vec::new();
    for request in 10..16u64 {
        // Probe when due, answered: the edge is up again and the ranking comes back with it.
        let due = (now..).step_by(100).find(|&t| {
            p.handle(at(t), Event::Tick);
            drain(&mut p).contains(&Action::Probe { tier: 1 })
        });
        let probed = due.unwrap_or_else(|| unreachable!());
        waits.push(probed - now);
        p.handle(at(probed), Event::ProbeAnswered { tier: 1 });
        drain(&mut p);
        p.handle(at(probed), Event::Plans(vec![three_tier(10), device_cloud(20)]));
        drain(&mut p);
        // The next request fails on it at once.
        p.handle(at(probed), Event::Submit { request });
        drain(&mut p);
        p.handle(at(probed), Event::Unreachable { request, tier: 1, reason: "its upstream is gone".into() });
        p.handle(at(probed), Event::Answered { request, elapsed_ns: 20 });
        drain(&mut p);
        now = probed;
    }
    assert_eq!(waits, vec![1000, 2000, 4000, 8000, 16000, 32000], "back-offs double across recoveries");
    // Long after its last recovery, a failure starts from the first back-off again.
    let later = now + 3_600_000;
    p.handle(at(later), Event::Tick);
    p.handle(at(later), Event::ProbeAnswered { tier: 1 });
    drain(&mut p);
    p.handle(at(later), Event::Plans(vec![three_tier(10), device_cloud(20)]));
    drain(&mut p);
    let quiet = later + 3_600_000;
    p.handle(at(quiet), Event::Submit { request: 99 });
    drain(&mut p);
    p.handle(at(quiet), Event::Unreachable { request: 99, tier: 1, reason: "gone".into() });
    drain(&mut p);
    p.handle(at(quiet + 999), Event::Tick);
    assert!(drain(&mut p).is_empty());
    p.handle(at(quiet + 1000), Event::Tick);
    assert_eq!(drain(&mut p), vec![Action::Probe { tier: 1 }]);
}

#[test]
fn an_offered_ranking_is_adopted_at_once_and_requests_in_flight_keep_their_route() {
    // The device starts offloading everything to the cloud while its own slice downloads.
    let cloud_only = Route { stages: vec![stage(2, 0, 10)], predicted_ns: None };
    let mut p = policy(vec![cloud_only.clone()]);
    p.handle(at(0), Event::Submit { request: 1 });
    assert_eq!(sent(&drain(&mut p)), vec![(1, cloud_only.stages.clone())]);
    // The slice arrived: the shell offers the ranking that needs it, unasked.
    p.handle(at(5), Event::Offered(vec![device_cloud(20), cloud_only.clone()]));
    let switched = drain(&mut p);
    assert!(switched.iter().any(|a| matches!(a, Action::Switched { to, .. } if *to == device_cloud(20))), "{switched:?}");
    assert_eq!(p.best_available().map(|(_, r)| r.clone()), Some(device_cloud(20)));
    p.handle(at(6), Event::Submit { request: 2 });
    assert_eq!(sent(&drain(&mut p)), vec![(2, device_cloud(20).stages)]);
    // Request 1 ends on the route it was sent on; nothing is lost or sent twice.
    p.handle(at(9), Event::Answered { request: 1, elapsed_ns: 40 });
    assert_eq!(drain(&mut p), vec![Action::Done { request: 1, route: cloud_only, elapsed_ns: 40 }]);
    p.handle(at(10), Event::Answered { request: 2, elapsed_ns: 20 });
    assert_eq!(drain(&mut p), vec![Action::Done { request: 2, route: device_cloud(20), elapsed_ns: 20 }]);
    assert_eq!(p.outstanding(), 0);
    // An empty offer changes nothing.
    p.handle(at(11), Event::Offered(Vec::new()));
    assert!(drain(&mut p).is_empty());
    assert_eq!(p.best_available().map(|(_, r)| r.clone()), Some(device_cloud(20)));
}

#[test]
fn a_best_route_that_keeps_missing_its_prediction_asks_for_plans_once_the_average_drifts() {
    let config = PolicyConfig { drift_percent: 50, ..PolicyConfig::default() };
    let mut p = DevicePolicy::new(config, vec![three_tier(10_000), device_only(50_000)], Vec::new());
    let serve = |p: &mut DevicePolicy, request: u64, elapsed_ns: u64| {
        p.handle(at(request), Event::Submit { request });
        drain(p);
        p.handle(at(request), Event::Answered { request, elapsed_ns });
        drain(p)
    };
    // Within 50 % of the prediction: no re-plan, however long it goes on.
    for request in 0..20 {
        let actions = serve(&mut p, request, 14_000);
        assert!(!actions.iter().any(|a| matches!(a, Action::Replan { .. })), "{actions:?}");
    }
    // Twice the prediction: the running average crosses 150 % after a few answers, and a plan
    // is asked for once (not on every answer).
    let replans: Vec<u64> = (20..40)
        .filter_map(|request| {
            serve(&mut p, request, 20_000).into_iter().find_map(|a| match a {
                Action::Replan { reason: ReplanReason::Drift { measured_percent }, .. } => Some(measured_percent),
                _ => None,
            })
        })
        .collect();
    assert_eq!(replans.len(), 1, "{replans:?}");
    assert!(replans[0] > 150 && replans[0] <= 200, "{replans:?}");
}
