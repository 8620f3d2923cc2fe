//! The exact top-K dynamic program.
//!
//! State `(machine m, boundary p)`: m's tier has run blocks up to `p` and is the last tier used
//! so far. Each state keeps the K best plan prefixes reaching it. Moving on to machine `m'` of a
//! later tier for blocks `[p, q)` costs `hop(m, m', p) + W_m' + S_m'(q) - S_m'(p)` (W: the
//! machine's queueing delay; S: prefix sums of block times), which splits into a part that depends on `p` only and a part that depends on
//! `q` only. So for each target machine one sweep over `q` suffices: the candidates for `q` are
//! the entries every source machine has at each valid `p` in a window `[lo(q), q)` whose left
//! end only moves right (forbidden blocks, compute and memory caps all shrink it monotonically).
//! A queue built from two stacks keeps the window's K best in O(K) amortised per step, so the
//! whole solve is O(pairs of machines × blocks × K). Prefixes already worse than the K-th
//! complete plan found so far are dropped (costs only grow along a plan).
//!
//! A machine's measured ranges (see [`RangeCost`](super::problem::RangeCost)) start at block 0
//! or end at the last block, so each costs a function of `q` alone or of `p` alone: ranges from
//! `p = 0` are kept out of the window and added at each `q` with their own cost, and the plans
//! ending at `q = n` are collected over every `p` with theirs. The program stays exact.
//!
//! Entries carry integer keys and back-pointers; ties on the key are broken by the plan's
//! segment sequence, recovered through the back-pointers, exactly as the brute-force ranking
//! does.

use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Ordering;

use super::constraints::Compiled;
use super::plan::{Objective, Segment};
use super::problem::Problem;

const ORIGIN: u32 = u32::MAX;

/// A plan prefix ending at some state.
#[derive(Clone, Copy, Debug)]
struct Entry {
    primary: i64,
    latency: i64,
    /// State the previous segment ended at (ORIGIN for the device segment).
    from: u32,
    /// Rank of the prefix within that state's list.
    rank: u32,
}

/// Solver tables for one problem, objective and K.
pub(crate) struct Dp<'a> {
    problem: &'a Problem,
    c: &'a Compiled,
    objective: Objective,
    k: usize,
    n: usize,
    /// Per machine: prefix sums of block times (n + 1).
    prefix: Vec<Vec<u64>>,
    /// Per machine: lowest valid start of a range ending at q (n + 1); > q - 1 when none.
    lo: Vec<Vec<usize>>,
    /// Per machine with a measured range from block 0: the cost of `[0, q)` for each `q`
    /// (`None`: not allowed there).
    head: Vec<Option<Vec<Option<u64>>>>,
    /// Per machine with a measured range to the last block: the cost of `[p, n)` for each `p`.
    tail: Vec<Option<Vec<Option<u64>>>>,
    lists: Lists,
    /// `links[a * machines + b]`.
    links: Vec<Option<super::problem::Link>>,
    /// Branch and bound: prefixes whose key already exceeds this cannot finish in the top K
    /// (costs only grow along a plan), so they are dropped.
    bound: (i64, i64),
}

/// A finished plan prefix covering all blocks: the state it ends at and its rank there, with
/// the final key (return hop included).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Finish {
    pub key: (u64, u64),
    state: u32,
    rank: u32,
}

fn lowest_starts(problem: &Problem, c: &Compiled, m: usize, prefix: &[u64]) -> Vec<usize> {
    let (n, tier) = (problem.blocks(), problem.machines[m].tier);
    let cap = c.compute_cap[m].min(c.stage_cap);
    let (weights, acts) = (&problem.block_weight_bytes, &problem.block_activation_bytes);
    let mut lo = vec![0; n + 1];
    let (mut p, mut w) = (0usize, 0u64);
    let mut maxq: alloc::collections::VecDeque<usize> = alloc::collections::VecDeque::new();
    for q in 1..=n {
        let b = q - 1;
        w += weights[b];
        while maxq.back().is_some_and(|&i| acts[i] <= acts[b]) {
            maxq.pop_back();
        }
        maxq.push_back(b);
        if c.bad[tier][b] {
            while p < q {
                w -= weights[p];
                p += 1;
            }
        }
        loop {
            while maxq.front().is_some_and(|&i| i < p) {
                maxq.pop_front();
            }
            let memory = w + maxq.front().map_or(0, |&i| acts[i]);
            if p >= q || (prefix[q] - prefix[p] <= cap && memory <= c.memory_cap[tier]) {
                break;
            }
            w -= weights[p];
            p += 1;
        }
        lo[q] = p;
    }
    lo
}

/// The cost of every range of machine `m` that starts at block 0 (`from_start`, indexed by its
/// end) or ends at the last block (indexed by its start), where the constraints allow it: its
/// measured time, else the sum of its blocks (`prefix`: the machine's prefix sums). Linear in
/// the blocks and the measured ranges.
fn end_ranges(problem: &Problem, c: &Compiled, m: usize, prefix: &[u64], from_start: bool) -> Vec<Option<u64>> {
    let (n, machine) = (problem.blocks(), &problem.machines[m]);
    let mut measured: Vec<Option<u64>> = vec![None; n + 1];
    for r in &machine.ranges {
        match (from_start, r.start == 0, r.end == n) {
            (true, true, _) => measured[r.end] = Some(r.ns),
            (false, _, true) => measured[r.start] = Some(r.ns),
            _ => {}
        }
    }
    let cap = c.compute_cap[m].min(c.stage_cap);
    let (weights, acts) = (&problem.block_weight_bytes, &problem.block_activation_bytes);
    let mut out = vec![None; n + 1];
    let (mut weight, mut activation, mut bad) = (0u64, 0u64, false);
    let order: Vec<usize> = if from_start { (0..n).collect() } else { (0..n).rev().collect() };
    for b in order {
        weight += weights[b];
        activation = activation.max(acts[b]);
        bad |= c.bad[machine.tier][b];
        let (start, end) = if from_start { (0, b + 1) } else { (b, n) };
        let at = if from_start { end } else { start };
        let ns = measured[at].unwrap_or(prefix[end] - prefix[start]);
        let fits = !bad && ns <= cap && weight + activation <= c.memory_cap[machine.tier];
        out[at] = fits.then_some(ns);
    }
    out
}

impl<'a> Dp<'a> {
    pub fn new(problem: &'a Problem, c: &'a Compiled, objective: Objective, k: usize) -> Self {
        let n = problem.blocks();
        let prefix: Vec<Vec<u64>> = problem
            .machines
            .iter()
            .map(|m| {
                core::iter::once(0)
                    .chain(m.block_ns.iter().scan(0u64, |s, &t| {
                        *s += t;
                        Some(*s)
                    }))
                    .collect()
            })
            .collect();
        let lo = (0..problem.machines.len()).map(|m| lowest_starts(problem, c, m, &prefix[m])).collect();
        let measured = |m: usize, from_start: bool| {
            let ranges = &problem.machines[m].ranges;
            let any = ranges.iter().any(|r| if from_start { r.start == 0 } else { r.end == n });
            any.then(|| end_ranges(problem, c, m, &prefix[m], from_start))
        };
        let head = (0..problem.machines.len()).map(|m| measured(m, true)).collect();
        let tail = (0..problem.machines.len()).map(|m| measured(m, false)).collect();
        let count = problem.machines.len();
        let lists = Lists::new(count * (n + 1), k);
        let links = (0..count * count).map(|i| problem.link(i / count, i % count)).collect();
        Self { problem, c, objective, k, n, prefix, lo, head, tail, lists, links, bound: (i64::MAX, i64::MAX) }
    }

    /// Drops, from now on, every prefix whose key is above `key` (the K-th best complete plan
    /// found so far).
    pub fn set_bound(&mut self, key: (u64, u64)) {
        self.bound = self.bound.min((key.0 as i64, key.1 as i64));
    }

    fn within_bound(&self, e: &Entry) -> bool {
        (e.primary, e.latency) <= self.bound
    }

    fn state(&self, m: usize, p: usize) -> u32 {
        (m * (self.n + 1) + p) as u32
    }

    fn machine_of(&self, state: u32) -> (usize, usize) {
        (state as usize / (self.n + 1), state as usize % (self.n + 1))
    }

    /// Segment sequence `(tier, machine, end)` of the prefix ending at `state`, entry `rank`.
    fn sequence(&self, mut state: u32, mut rank: u32) -> Vec<(usize, usize, usize)> {
        let mut seq = Vec::new();
        while state != ORIGIN {
            let (m, p) = self.machine_of(state);
            seq.push((self.problem.machines[m].tier, m, p));
            let e = self.lists.get(state as usize)[rank as usize];
            (state, rank) = (e.from, e.rank);
        }
        seq.reverse();
        seq
    }

    #[inline]
    fn compare(&self, a: &Entry, b: &Entry) -> Ordering {
        match (a.primary, a.latency).cmp(&(b.primary, b.latency)) {
            Ordering::Equal => self.break_tie(a, b),
            order => order,
        }
    }

    #[cold]
    fn break_tie(&self, a: &Entry, b: &Entry) -> Ordering {
        if (a.from, a.rank) == (b.from, b.rank) {
            return Ordering::Equal;
        }
        compare_prefixes(&self.sequence(a.from, a.rank), &self.sequence(b.from, b.rank))
    }

    /// Merges two sorted lists into `out` (cleared first), keeping the K best.
    fn merge_into(&self, out: &mut Vec<Entry>, a: &[Entry], b: &[Entry]) {
        out.clear();
        let (mut i, mut j) = (0, 0);
        while out.len() < self.k && (i < a.len() || j < b.len()) {
            let take_a = j >= b.len() || (i < a.len() && self.compare(&a[i], &b[j]) != Ordering::Greater);
            if take_a {
                out.push(a[i]);
                i += 1;
            } else {
                out.push(b[j]);
                j += 1;
            }
        }
    }

    /// Seeds the device states: device machine `m0` runs blocks `[0, p1)`.
    fn seed_device(&mut self, m0: usize, device_end: Option<usize>) {
        if !self.c.allowed[m0] {
            return;
        }
        let must_use = self.c.must_use[0];
        let must_not = self.c.must_not_use[0];
        for p1 in 0..=self.n {
            if device_end.is_some_and(|e| e != p1) || (p1 == 0 && must_use) || (p1 > 0 && must_not) {
                continue;
            }
            let compute = match (&self.head[m0], p1) {
                (_, 0) => 0,
                (Some(head), _) => match head[p1] {
                    Some(ns) => ns as i64,
                    None => continue,
                },
                (None, _) if self.lo[m0][p1] != 0 => continue,
                (None, _) => self.prefix[m0][p1] as i64,
            };
            let primary = if self.objective == Objective::DeviceTime { compute } else { 0 };
            let entry = Entry { primary, latency: compute, from: ORIGIN, rank: 0 };
            if self.within_bound(&entry) {
                let s = self.state(m0, p1) as usize;
                self.lists.set(s, &[entry]);
            }
        }
    }

    /// The handover from machine `m` (tier `t`) to `m2` (tier `t2`) at boundary `p`, if allowed:
    /// `(primary increment, latency increment)`. With `return_result`, the result's way back
    /// from `m2` to `m` is charged here too: it returns along the chain.
    fn handover(&self, m: usize, m2: usize, p: usize) -> Option<(i64, i64)> {
        let (t, t2) = (self.problem.machines[m].tier, self.problem.machines[m2].tier);
        let machines = self.problem.machines.len();
        let bytes = self.problem.handover_bytes(p);
        let ns = self.problem.hop_over(self.links[m * machines + m2]?, m, m2, bytes);
        let back = match self.problem.options.return_result {
            true => self.problem.hop_over(self.links[m2 * machines + m]?, m2, m, self.problem.result_bytes()),
            false => 0,
        };
        let last = self.problem.tiers.len() - 1;
        let too_slow = ns > self.c.stage_cap || back > self.c.stage_cap;
        if bytes > self.c.upload_cap[t] || too_slow || (t2 == last && bytes > self.c.cloud_bytes_cap) {
            return None;
        }
        let primary = if self.objective == Objective::DeviceUpload && t == 0 { bytes as i64 } else { 0 };
        Some((primary, (ns + back + self.problem.machines[m2].queue_ns) as i64))
    }

    /// The entries of `source` shifted into `out` (cleared first), if the handover from `m` to
    /// `m2` at `p` is allowed and the best of them is within the bound.
    fn shifted_into(&self, m: usize, m2: usize, p: usize, out: &mut Vec<Entry>) {
        out.clear();
        let from = self.state(m, p);
        let source = self.lists.get(from as usize);
        let Some(first) = source.first() else { return };
        let Some((dp, dl)) = self.handover(m, m2, p) else { return };
        if !self.within_bound(&Entry { primary: first.primary + dp, latency: first.latency + dl, ..*first }) {
            return;
        }
        let shift = dl - self.prefix[m2][p] as i64;
        out.extend(source.iter().enumerate().map(|(r, e)| Entry {
            primary: e.primary + dp,
            latency: e.latency + shift,
            from,
            rank: r as u32,
        }));
    }

    /// Sweeps `q` for every transition into machine `m2` from the machines in `sources`: the
    /// candidates of boundary `p` from all sources enter one window, and each `q` reads the
    /// window's K best (offset by the `q` terms) into `out[q]`. Measured ranges from block 0 and
    /// to the last block take their own path (see the module's documentation).
    fn sweep(&self, m2: usize, sources: &[usize], out: &mut Lists, scratch: &mut Scratch) {
        let Scratch { window, at_p, shifted, merged, at_zero, tail, joined } = scratch;
        window.clear();
        at_zero.clear();
        tail.clear();
        let (head_costs, tail_costs) = (self.head[m2].as_deref(), self.tail[m2].as_deref());
        let s2 = &self.prefix[m2];
        for q in 1..=self.n {
            let p = q - 1;
            at_p.clear();
            for &m in sources {
                self.shifted_into(m, m2, p, shifted);
                if !shifted.is_empty() {
                    self.merge_into(merged, at_p, shifted);
                    core::mem::swap(at_p, merged);
                }
            }
            if !at_p.is_empty() {
                if let Some(ns) = tail_costs.and_then(|t| t[p]) {
                    self.offset_into(shifted, at_p, s2[p] as i64 + ns as i64);
                    self.merge_into(merged, tail, shifted);
                    core::mem::swap(tail, merged);
                }
                if p == 0 && head_costs.is_some() {
                    at_zero.clone_from(at_p);
                } else {
                    window.push(self, p, at_p);
                }
            }
            if q == self.n && tail_costs.is_some() {
                out.set(q, tail);
                continue;
            }
            window.pop_below(self, self.lo[m2][q]);
            let (front, back) = window.parts();
            let add = s2[q] as i64;
            self.offset_into(shifted, front, add);
            self.offset_into(joined, back, add);
            self.merge_into(merged, shifted, joined);
            if let Some(ns) = head_costs.and_then(|h| h[q]) {
                self.offset_into(shifted, at_zero, ns as i64);
                self.merge_into(joined, merged, shifted);
                core::mem::swap(joined, merged);
            }
            out.set(q, merged);
        }
    }

    /// `entries` (sorted) with `add` on their latency, into `out` (cleared first), up to the
    /// first that leaves the bound.
    fn offset_into(&self, out: &mut Vec<Entry>, entries: &[Entry], add: i64) {
        out.clear();
        out.extend(entries.iter().map(|e| Entry { latency: e.latency + add, ..*e }).take_while(|e| self.within_bound(e)));
    }

    /// Fills every state, tier by tier.
    fn fill(&mut self) {
        let tiers = self.problem.tiers.len();
        for t2 in 1..tiers {
            if self.c.must_not_use[t2] {
                continue;
            }
            let sources: Vec<usize> = (0..t2).filter(|&t| (t + 1..t2).all(|between| !self.c.must_use[between])).collect();
            let mut scratch = Scratch::default();
            let mut out = Lists::new(self.n + 1, self.k);
            let active: Vec<usize> = sources
                .iter()
                .flat_map(|&t| self.machines_of(t))
                .filter(|&m| (0..self.n).any(|p| !self.lists.get(self.state(m, p) as usize).is_empty()))
                .collect();
            for m2 in self.machines_of(t2) {
                out.clear();
                self.sweep(m2, &active, &mut out, &mut scratch);
                for q in 0..=self.n {
                    let s = self.state(m2, q) as usize;
                    self.lists.set(s, out.get(q));
                }
            }
        }
    }

    fn machines_of(&self, tier: usize) -> Vec<usize> {
        (0..self.problem.machines.len()).filter(|&m| self.problem.machines[m].tier == tier && self.c.allowed[m]).collect()
    }

    /// Runs the program with the device segment on one of `devices` (optionally fixed to end
    /// at `device_end`) and returns the K best complete plans, best first. With a return hop,
    /// `devices` must hold one machine: the hop's cost depends on which device it returns to.
    pub fn solve(&mut self, devices: &[usize], device_end: Option<usize>) -> Vec<(Finish, Vec<Segment>)> {
        self.lists.clear();
        for &m0 in devices {
            self.seed_device(m0, device_end);
        }
        self.fill();
        let mut finishes = self.finishes(devices);
        finishes.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| self.sequence(a.state, a.rank).cmp(&self.sequence(b.state, b.rank))));
        finishes.truncate(self.k);
        finishes.into_iter().map(|f| (f, self.segments(f.state, f.rank))).collect()
    }

    fn finishes(&self, devices: &[usize]) -> Vec<Finish> {
        let last_required = (0..self.problem.tiers.len()).filter(|&t| self.c.must_use[t]).max().unwrap_or(0);
        let mut out = Vec::new();
        for m in 0..self.problem.machines.len() {
            let tier = self.problem.machines[m].tier;
            if tier < last_required || (tier == 0 && !devices.contains(&m)) {
                continue;
            }
            let state = self.state(m, self.n);
            for (rank, e) in self.lists.get(state as usize).iter().enumerate() {
                let key = (e.primary as u64, e.latency as u64);
                out.push(Finish { key, state, rank: rank as u32 });
            }
        }
        out
    }

    fn segments(&self, state: u32, rank: u32) -> Vec<Segment> {
        let seq = self.sequence(state, rank);
        let mut start = 0;
        seq.into_iter()
            .map(|(tier, machine, end)| {
                let s = Segment { tier, machine, start, end };
                start = end;
                s
            })
            .collect()
    }
}

/// Orders two plan prefixes that are about to be extended by the same next segment, as the
/// extended plans compare: element by element, and a proper prefix after its extensions (the
/// shared next segment is on a later tier than anything in the longer prefix).
fn compare_prefixes(a: &[(usize, usize, usize)], b: &[(usize, usize, usize)]) -> Ordering {
    match a.iter().zip(b).map(|(x, y)| x.cmp(y)).find(|o| o.is_ne()) {
        Some(order) => order,
        None => b.len().cmp(&a.len()),
    }
}

/// Up to K entries per state in one flat buffer (no allocation per state).
struct Lists {
    entries: Vec<Entry>,
    lens: Vec<u32>,
    k: usize,
}

impl Lists {
    fn new(states: usize, k: usize) -> Self {
        let blank = Entry { primary: 0, latency: 0, from: ORIGIN, rank: 0 };
        Self { entries: vec![blank; states * k], lens: vec![0; states], k }
    }

    fn get(&self, state: usize) -> &[Entry] {
        let at = state * self.k;
        &self.entries[at..at + self.lens[state] as usize]
    }

    fn set(&mut self, state: usize, list: &[Entry]) {
        let at = state * self.k;
        let len = list.len().min(self.k);
        self.entries[at..at + len].copy_from_slice(&list[..len]);
        self.lens[state] = len as u32;
    }

    fn clear(&mut self) {
        self.lens.iter_mut().for_each(|l| *l = 0);
    }
}

/// Reusable buffers of one sweep.
#[derive(Default)]
struct Scratch {
    window: Window,
    at_p: Vec<Entry>,
    shifted: Vec<Entry>,
    merged: Vec<Entry>,
    /// Candidates from `p = 0`, when the target has measured ranges from block 0.
    at_zero: Vec<Entry>,
    /// K best plans ending at `q = n`, when the target has measured ranges to the last block.
    tail: Vec<Entry>,
    joined: Vec<Entry>,
}

/// A FIFO of per-boundary entry lists that answers "K best in the queue" in O(K) amortised:
/// a queue made of two stacks, each front level holding the K best of itself and everything
/// behind it. Entries live in flat buffers, so a sweep allocates nothing once warmed up.
#[derive(Default)]
struct Window {
    /// Front stack (oldest on top): `(p, start, len)` of each level's aggregate in `front_buf`.
    front: Vec<(usize, usize, usize)>,
    front_buf: Vec<Entry>,
    /// Back stack (newest last): `(p, start, len)` of each raw item in `back_buf`.
    back: Vec<(usize, usize, usize)>,
    back_buf: Vec<Entry>,
    /// K best of all of `back`.
    back_best: Vec<Entry>,
    tmp: Vec<Entry>,
}

impl Window {
    fn clear(&mut self) {
        self.front.clear();
        self.front_buf.clear();
        self.back.clear();
        self.back_buf.clear();
        self.back_best.clear();
    }

    fn push(&mut self, dp: &Dp, p: usize, items: &[Entry]) {
        let full = self.back_best.len() == dp.k;
        if !full || dp.compare(&items[0], &self.back_best[dp.k - 1]) == Ordering::Less {
            dp.merge_into(&mut self.tmp, &self.back_best, items);
            core::mem::swap(&mut self.back_best, &mut self.tmp);
        }
        let start = self.back_buf.len();
        self.back_buf.extend_from_slice(items);
        self.back.push((p, start, items.len()));
    }

    fn pop_below(&mut self, dp: &Dp, lo: usize) {
        loop {
            if self.front.is_empty() {
                if self.back.first().is_none_or(|&(p, _, _)| p >= lo) {
                    return;
                }
                self.refill(dp);
            }
            match self.front.last() {
                Some(&(p, start, _)) if p < lo => {
                    self.front.pop();
                    self.front_buf.truncate(start);
                }
                _ => return,
            }
        }
    }

    /// Moves every back item to the front stack, newest deepest, computing suffix aggregates.
    fn refill(&mut self, dp: &Dp) {
        self.front_buf.clear();
        while let Some((p, start, len)) = self.back.pop() {
            let below = self.front.last().map_or(0..0, |&(_, s, l)| s..s + l);
            dp.merge_into(&mut self.tmp, &self.back_buf[start..start + len], &self.front_buf[below]);
            let at = self.front_buf.len();
            self.front_buf.extend_from_slice(&self.tmp);
            self.front.push((p, at, self.tmp.len()));
        }
        self.back_buf.clear();
        self.back_best.clear();
    }

    /// The K best of the front stack and of the back stack (two sorted lists).
    fn parts(&self) -> (&[Entry], &[Entry]) {
        let front = self.front.last().map_or(&[][..], |&(_, s, l)| &self.front_buf[s..s + l]);
        (front, &self.back_best)
    }
}
