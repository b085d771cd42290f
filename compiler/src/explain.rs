//! Plain-words explanations: what binds the winner, why the runner-up loses.

use gantry_lang::program::Phase;
use gantry_lang::units::{Dim, Quantity};

use crate::cost::Estimate;

fn s(v: f64) -> String {
    Quantity::new(v, Dim::TIME).to_string()
}

/// The named parts of a step, largest first.
pub fn parts(e: &Estimate) -> Vec<(&'static str, f64)> {
    let t = &e.time;
    let mut v = vec![
        (
            "compute (matrix products)",
            t.compute.matmul + t.compute.attention,
        ),
        (
            "HBM-bound streaming ops",
            t.compute.elementwise + t.compute.embedding + t.compute.layout,
        ),
        ("recomputation", t.recompute),
        (
            "scale-up link (tensor/sequence-parallel collectives)",
            t.tp_comm,
        ),
        (
            "fabric (exposed data-parallel / ZeRO traffic)",
            t.dp_exposed,
        ),
        ("pipeline bubble", t.bubble),
        ("pipeline sends", t.pp_comm),
        (
            "all-to-all and context-parallel exchange",
            t.all_to_all + t.cp_comm,
        ),
        ("prefill share", t.prefill),
        ("optimizer and fixed overheads", t.optimizer + t.overhead),
        ("host-memory embedding lookups", t.host_lookups),
    ];
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// The binding constraint or bottleneck of a design point.
pub fn bottleneck(e: &Estimate, decode: bool) -> String {
    let (name, t) = parts(e)[0];
    let share = 100.0 * t / e.time.step;
    let mem = e.memory.total() / e.memory.capacity;
    let mut out = if decode && name.starts_with("compute") {
        format!(
            "HBM bandwidth: each decode step streams the weights and the KV cache; products take {} of the {} step ({share:.0}%)",
            s(t),
            s(e.time.step)
        )
    } else {
        format!(
            "{name}: {} of the {} step ({share:.0}%)",
            s(t),
            s(e.time.step)
        )
    };
    if mem > 0.85 {
        out.push_str(&format!(
            "; HBM capacity is nearly binding: {} of {} used ({:.0}%)",
            Quantity::new(e.memory.total(), Dim::BYTES),
            Quantity::new(e.memory.capacity, Dim::BYTES),
            100.0 * mem
        ));
    }
    out
}

/// The memory side of choosing `a` over `b`: both points' peak HBM
/// against capacity, said when `a` needs more of it (as a pick that
/// recomputes less does), `None` otherwise. A pick nearer the capacity
/// than the published run has less margin for what the memory model
/// leaves out (the caching allocator's reserve beyond the peak, NCCL and
/// compile workspaces).
pub fn memory_margin(a: &Estimate, b: &Estimate, who: &str) -> Option<String> {
    let (ma, mb) = (a.memory.total(), b.memory.total());
    if ma <= mb || a.memory.capacity <= 0.0 {
        return None;
    }
    let gb = |v: f64| Quantity::new(v, Dim::BYTES);
    let pct = |v: f64| 100.0 * v / a.memory.capacity;
    Some(format!(
        "the pick needs {} of {} HBM ({:.0}%) with recompute={}, {who} {} ({:.0}%) with recompute={}",
        gb(ma),
        gb(a.memory.capacity),
        pct(ma),
        a.point.recompute.name(),
        gb(mb),
        pct(mb),
        b.point.recompute.name()
    ))
}

/// Why `b` (the runner-up) loses to `a`, in one sentence with numbers.
pub fn versus(a: &Estimate, b: &Estimate, metric: &str) -> String {
    versus_named(a, b, metric, "the runner-up")
}

/// [`versus`], naming `b` as `who` ("the published configuration").
pub fn versus_named(a: &Estimate, b: &Estimate, metric: &str, who: &str) -> String {
    let (ma, mb) = (
        a.metric(metric).unwrap_or(0.0),
        b.metric(metric).unwrap_or(0.0),
    );
    let gap = if ma != 0.0 {
        100.0 * (ma - mb).abs() / ma.abs()
    } else {
        0.0
    };
    let knobs = diff_knobs(a, b);
    match worst(a, b) {
        Some((part, extra)) => format!(
            "{who} ({knobs}) is {gap:.1}% worse on {metric}: its {part} takes {} longer per step",
            s(extra)
        ),
        None => format!("{who} ({knobs}) is {gap:.1}% worse on {metric}"),
    }
}

/// The kind [`memory_margin`] adds to an explanation, as tallies name it.
pub const MEMORY_MARGIN: &str = "memory margin";

/// The part of a step ([`parts`]) in which `b` spends the most time more
/// than `a`, with that extra time; `None` if `b` spends no more in any.
fn worst(a: &Estimate, b: &Estimate) -> Option<(&'static str, f64)> {
    let pa = parts(a);
    let mut out: Option<(&'static str, f64)> = None;
    for (n, tb) in parts(b) {
        let ta = pa.iter().find(|(x, _)| *x == n).map_or(0.0, |x| x.1);
        if tb - ta > out.map_or(0.0, |o| o.1) {
            out = Some((n, tb - ta));
        }
    }
    out
}

/// The name of the step part [`versus_named`] blames on `b` (what its
/// explanation turns on), `None` when `b` is slower in no part.
pub fn worst_part(a: &Estimate, b: &Estimate) -> Option<&'static str> {
    worst(a, b).map(|w| w.0)
}

fn diff_knobs(a: &Estimate, b: &Estimate) -> String {
    let (p, q) = (&a.point, &b.point);
    let mut v = Vec::new();
    macro_rules! d {
        ($f:ident, $n:literal) => {
            if p.$f != q.$f {
                v.push(format!("{}={} instead of {}", $n, q.$f, p.$f));
            }
        };
    }
    d!(tp, "tp");
    d!(pp, "pp");
    d!(dp, "dp");
    d!(cp, "cp");
    d!(ep, "ep");
    d!(zero, "zero");
    d!(microbatch, "microbatch");
    d!(virtual_stages, "virtual_stages");
    d!(sequence_parallel, "sequence_parallel");
    d!(batch, "batch");
    // The ZeRO group follows dp x cp unless one point is HSDP.
    if (p.replicas() > 1 || q.replicas() > 1) && p.shard != q.shard {
        v.push(format!("shard={} instead of {}", q.shard, p.shard));
    }
    if p.recompute != q.recompute {
        v.push(format!(
            "recompute={} instead of {}",
            q.recompute.name(),
            p.recompute.name()
        ));
    }
    if v.is_empty() {
        "same knobs".into()
    } else {
        v.join(", ")
    }
}

pub fn is_decode(e: &Estimate) -> bool {
    e.tpot.is_some()
}

pub fn phase_is_decode(p: &Phase) -> bool {
    matches!(p, Phase::Decode { .. })
}
