//! The last word on a result: numbers are either meaningful or refused.
//!
//! Every [`Estimate`] the planner reports, ranks or compares passes
//! [`verify`] first: step time and throughput finite and above zero;
//! memory, MFU, power, energy, cost and every part of the step finite and
//! not negative. A result that fails is a diagnostic naming the quantity
//! and, where one can be identified, the input behind it (a link or NIC
//! the node does not declare is `C014`, anything else `C016`), never a
//! printed figure or a best point. The checker keeps declared figures in
//! their physical range (`L046`); this check catches what is left: links
//! a node does not have, and arithmetic that overflows.
//!
//! Also here: which metrics a plan has at all ([`missing_metric`]), so a
//! constraint or objective on one it does not have is `C015`, not a
//! constraint silently met.

use gantry_lang::diagnostic::Code;
use gantry_lang::program::{MetricExpr, Phase, Plan};
use gantry_lang::units::{Dim, Quantity};

use crate::collective::Level;
use crate::cost::Estimate;
use crate::hardware::Hardware;
use crate::ir::Ir;
use crate::point::PinError;

fn err(code: Code, message: String, help: &str) -> PinError {
    PinError {
        code,
        knob: "fix",
        message,
        help: help.into(),
    }
}

/// `Ok` when every figure of `e` is meaningful; otherwise the first that
/// is not, with the input that made it so when it can be named.
pub fn verify(e: &Estimate, hw: &Hardware) -> Result<(), PinError> {
    // Cheap first: a meaningful result passes these few comparisons.
    let t = &e.time;
    let ok = |x: f64| x.is_finite() && x >= 0.0;
    let parts = [
        ("compute", t.compute.total()),
        ("recomputation", t.recompute),
        ("tensor-parallel communication", t.tp_comm),
        ("context-parallel communication", t.cp_comm),
        ("all-to-all", t.all_to_all),
        ("pipeline sends", t.pp_comm),
        ("pipeline bubble", t.bubble),
        ("exposed data-parallel communication", t.dp_exposed),
        ("optimizer step", t.optimizer),
        ("prefill share", t.prefill),
        ("step overhead", t.overhead),
        ("host embedding lookups", t.host_lookups),
    ];
    let m = &e.memory;
    let memory = [
        ("weights", m.weights),
        ("gradients", m.gradients),
        ("optimizer state", m.optimizer),
        ("activations", m.activations),
        ("KV cache", m.kv_cache),
        ("embedding tables", m.embeddings),
        ("reserve", m.reserve),
        ("host embedding tables", m.host_embeddings),
    ];
    let step_ok = t.step.is_finite() && t.step > 0.0;
    let throughput = e.samples_per_s();
    let all_ok = step_ok
        && throughput.is_finite()
        && throughput > 0.0
        && ok(e.tokens_per_s())
        && parts.iter().all(|(_, x)| ok(*x))
        && memory.iter().all(|(_, x)| ok(*x))
        && ok(m.total())
        && ok(e.mfu())
        && ok(e.hfu())
        && ok(e.power)
        && ok(e.energy_per_step())
        && e.cost_per_million_samples().is_none_or(ok)
        && e.cost_per_million_tokens().is_none_or(ok)
        && e.ttft.is_none_or(ok)
        && e.tpot.is_none_or(ok)
        && e.comms.iter().all(|c| ok(c.time) && ok(c.bytes));
    if all_ok {
        return Ok(());
    }
    // A collective priced on a link the node does not declare.
    let topo = &hw.topo;
    if let Some(c) = e.comms.iter().find(|c| !ok(c.time)) {
        let in_node = topo.per_node > 1 && c.level != Level::Device;
        if topo.up_bw <= 0.0 && in_node {
            return Err(err(
                Code::C014,
                format!(
                    "node `{}` declares no `link`, but at {} the {} ({} over {} ranks) runs between devices of one node",
                    hw.node,
                    e.point,
                    c.what,
                    c.collective.name(),
                    c.group
                ),
                "declare the node's scale-up link (`link nvlink = switch(450 GB/s)`), or pin the degrees that group devices of one node to 1",
            ));
        }
        if topo.out_bw <= 0.0 && c.level >= Level::Rack {
            return Err(err(
                Code::C014,
                format!(
                    "node `{}` declares no `nic`, but at {} the {} ({} over {} ranks) crosses nodes",
                    hw.node,
                    e.point,
                    c.what,
                    c.collective.name(),
                    c.group
                ),
                "declare the node's NICs (`nic 400 Gb/s x 8`), or keep the design point inside one node",
            ));
        }
    }
    let bad = |what: &str, x: f64, unit: Dim| {
        let part = parts
            .iter()
            .find(|(_, v)| !ok(*v))
            .map(|(n, v)| format!("; of the step, the {n} is {}", Quantity::new(*v, Dim::TIME)))
            .unwrap_or_default();
        err(
            Code::C016,
            format!(
                "at {} the {what} is {} (not a meaningful result){part}; inputs: {}",
                e.point,
                Quantity::new(x, unit),
                suspects(hw)
            ),
            "check the hardware figures the result divides by; this is a bug if they are all in range",
        )
    };
    if t.step == 0.0 && e.model_flops == 0.0 {
        // Not a bug and no figure out of range: nothing to price.
        return Err(err(
            Code::C016,
            format!(
                "at {} the step does no work: the model has no arithmetic and moves no data (an output that is an input, say), so its step time is 0 s and it has no throughput",
                e.point
            ),
            "give the model an op that computes, or declare the device's fixed cost per step (`efficiency { step_overhead = 10 us }`)",
        ));
    }
    if !step_ok {
        return Err(bad("step time", t.step, Dim::TIME));
    }
    if !(throughput.is_finite() && throughput > 0.0) {
        return Err(bad("throughput (samples/s)", throughput, Dim::NONE));
    }
    if let Some((n, v)) = parts.iter().find(|(_, x)| !ok(*x)) {
        return Err(bad(&format!("{n} time"), *v, Dim::TIME));
    }
    if let Some(c) = e.comms.iter().find(|c| !ok(c.time) || !ok(c.bytes)) {
        let (what, x, unit) = if ok(c.time) {
            ("bytes", c.bytes, Dim::BYTES)
        } else {
            ("time", c.time, Dim::TIME)
        };
        return Err(bad(&format!("{} {what}", c.what), x, unit));
    }
    if let Some((n, v)) = memory.iter().find(|(_, x)| !ok(*x)) {
        return Err(bad(&format!("memory for {n}"), *v, Dim::BYTES));
    }
    let rest = [
        ("memory per device", m.total(), Dim::BYTES),
        ("tokens per second", e.tokens_per_s(), Dim::NONE),
        ("MFU", e.mfu(), Dim::NONE),
        ("HFU", e.hfu(), Dim::NONE),
        ("power", e.power, Dim::POWER),
        ("energy per step", e.energy_per_step(), Dim::ENERGY),
        (
            "cost per million samples",
            e.cost_per_million_samples().unwrap_or(0.0),
            Dim::MONEY,
        ),
        (
            "cost per million tokens",
            e.cost_per_million_tokens().unwrap_or(0.0),
            Dim::MONEY,
        ),
        ("time to first token", e.ttft.unwrap_or(0.0), Dim::TIME),
        ("time per output token", e.tpot.unwrap_or(0.0), Dim::TIME),
    ];
    let (n, v, d) =
        rest.iter()
            .find(|(_, x, _)| !ok(*x))
            .copied()
            .unwrap_or(("result", f64::NAN, Dim::NONE));
    Err(bad(n, v, d))
}

/// Whether `code` is one [`verify`] gives (`C014`, `C016`): the search
/// reports these before a closest point or an earlier pin error.
pub fn is_result_error(code: Code) -> bool {
    matches!(code, Code::C014 | Code::C016)
}

/// The hardware figures a result divides by, for a diagnostic.
fn suspects(hw: &Hardware) -> String {
    let q = |v: f64, d: Dim| Quantity::new(v, d).to_string();
    format!(
        "device `{}` at {} peak and {} HBM bandwidth, node `{}` with {} per device in the node and {} out of it",
        hw.device,
        q(hw.peak, Dim::FLOP_RATE),
        q(hw.hbm_bandwidth, Dim::BANDWIDTH),
        hw.node,
        q(hw.topo.up_bw, Dim::BANDWIDTH),
        q(hw.topo.out_bw, Dim::BANDWIDTH),
    )
}

/// Why the plan has no value of `metric`, if it has none: the phase does
/// not define it, or the hardware declares no price. The same rule as
/// [`Estimate::metric`]'s `None`s (test `missing_metrics_match_estimates`).
pub fn missing_metric(
    metric: &str,
    ir: &Ir,
    hw: &Hardware,
    prefill: Option<&Ir>,
) -> Option<&'static str> {
    match metric {
        "goodput" | "ttft_p50" | "ttft_p90" | "ttft_p99" | "tpot_p50" | "tpot_p90" | "tpot_p99"
        | "e2e_p50" | "e2e_p90" | "e2e_p99" | "ttft_mean" | "tpot_mean" | "e2e_mean" => Some(
            "only a `serve` workload has request latency percentiles and goodput (it simulates requests)",
        ),
        "ttft" => match ir.phase {
            Phase::Train { .. } => Some("a training step has no time to first token"),
            Phase::Decode { .. } if prefill.is_none() => Some(
                "a decode workload without a `prompt` has no time to first token (state the prompt)",
            ),
            Phase::Prefill { .. } if ir.tokens_per_sample <= 1.0 => {
                Some("a prefill of one token per sample has no time to first token")
            }
            _ => None,
        },
        "tpot" => (!matches!(ir.phase, Phase::Decode { .. }))
            .then_some("only a decode workload has a time per output token"),
        "cost_per_million_tokens" | "throughput_per_dollar" if hw.price_per_device.is_none() => {
            Some("neither the device nor the node declares a `price`")
        }
        "cost_per_million_tokens"
            if ir.tokens_per_sample <= 1.0 && !matches!(ir.phase, Phase::Decode { .. }) =>
        {
            Some("the workload's samples are not token sequences")
        }
        _ => None,
    }
}

fn metrics_of(m: &MetricExpr, out: &mut Vec<String>) {
    match m {
        MetricExpr::Const(_) => {}
        MetricExpr::Metric(n) => out.push(n.clone()),
        MetricExpr::Neg(a) => metrics_of(a, out),
        MetricExpr::Binary(_, a, b) => {
            metrics_of(a, out);
            metrics_of(b, out);
        }
    }
}

/// `C015` for the first constraint (or the objective) on a metric the
/// plan does not have.
pub fn check_metrics(
    plan: &Plan,
    ir: &Ir,
    hw: &Hardware,
    prefill: Option<&Ir>,
) -> Result<(), PinError> {
    for c in &plan.constraints {
        let mut names = Vec::new();
        metrics_of(&c.lhs, &mut names);
        metrics_of(&c.rhs, &mut names);
        for n in names {
            if let Some(why) = missing_metric(&n, ir, hw, prefill) {
                return Err(err(
                    Code::C015,
                    format!(
                        "plan `{}` constrains `{n}` (`subject to`), which it does not have: {why}",
                        plan.name
                    ),
                    "remove the constraint, or constrain a metric this workload has (step_time, throughput, memory, ...)",
                ));
            }
        }
    }
    let goal = &plan.objective.1;
    if let Some(why) = missing_metric(goal, ir, hw, prefill) {
        return Err(err(
            Code::C015,
            format!(
                "plan `{}` optimizes `{goal}`, which it does not have: {why}",
                plan.name
            ),
            "choose an objective this workload has (throughput, step_time, ...)",
        ));
    }
    Ok(())
}
