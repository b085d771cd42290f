//! Evaluating a plan declaration at one design point (`gantry plan --fix`).
//!
//! Pins come from the plan's `fix` block, overridden by the command line.
//! Knobs the plan searches are left to the search (issue: planner), except
//! the inference batch: serving figures are quoted at the batch the serving
//! stack picks, so when a plan searches `batch` this module tries every
//! value in its domain and keeps the feasible one that is best for the
//! plan's objective.

use std::collections::BTreeMap;

use gantry_lang::diagnostic::Code;
use gantry_lang::program::{Goal, Phase, Plan, Workload};

use crate::cost::{Estimate, Evaluator};
use crate::hardware::Hardware;
use crate::ir::{Ir, lower};
use crate::point::{Pin, PinError, pins_from_plan, resolve};

/// A plan evaluated at one design point, with what the report needs.
pub struct Evaluation {
    pub plan: String,
    pub workload: String,
    pub system: String,
    pub hardware: Hardware,
    pub ir: Ir,
    pub estimate: Estimate,
    /// Batch values tried when the plan searches the serving batch.
    pub batch_candidates: usize,
    /// The plan's `subject to` constraints the point misses, as written
    /// (a pinned point may miss them; a search's best never does). The
    /// point is feasible when it fits in memory and this is empty.
    pub missed: Vec<String>,
}

impl Evaluation {
    /// Fits in memory and meets every constraint of the plan.
    pub fn feasible(&self) -> bool {
        self.estimate.feasible && self.missed.is_empty()
    }
}

/// The embedding tables' placement of an evaluated point, and the devices
/// one copy spans: the one its cost was priced on
/// ([`crate::placement::of_point`]).
pub fn table_placement(ev: &Evaluation) -> (u64, Vec<crate::placement::TablePlacement>) {
    crate::placement::of_point(
        &ev.ir,
        ev.estimate.devices,
        &ev.estimate.memory,
        ev.hardware.host_bandwidth > 0.0,
    )
}

fn error(code: Code, knob: &'static str, message: String, help: &str) -> PinError {
    PinError {
        code,
        knob,
        message,
        help: help.into(),
    }
}

/// `C024`: the plan's `target` framework runs none of the `n` feasible
/// points; `e` is the first, refused for `why`.
fn off_target(plan: &Plan, e: &Estimate, why: &crate::export::ExportError, n: usize) -> PinError {
    let target = plan.target.as_deref().unwrap_or("");
    error(
        Code::C024,
        "target",
        format!(
            "`target \"{target}\"` runs {} of `{}`: {} ({})",
            match n {
                0 => "no design point".to_string(),
                1 => "none of the 1 feasible design point".to_string(),
                n => format!("none of the {n} feasible design points"),
            },
            plan.name,
            why.message,
            e.point
        ),
        &format!(
            "{}; or widen the search, or drop `target` to see the best point of any framework",
            why.help
        ),
    )
}

/// Lowers the decode workload's prompt as a prefill of the same batch
/// (what the evaluator prices as each decode step's prefill share).
pub fn prefill_of(w: &Workload) -> Option<Ir> {
    let Phase::Decode {
        batch,
        prompt: Some(prompt),
        ..
    } = w.phase
    else {
        return None;
    };
    let mut pre = w.clone();
    pre.phase = Phase::Prefill {
        batch,
        prompt: Some(prompt),
    };
    pre.bindings.insert("seq".into(), prompt as i64);
    lower(&pre).ok()
}

/// The plan's workload lowered, its hardware read, and the prompt's
/// prefill when the workload decodes after one.
fn prepare(plan: &Plan) -> Result<(Ir, Hardware, Option<Ir>), PinError> {
    let ir = lower(&plan.workload).map_err(|e| {
        error(
            Code::C008,
            "fix",
            format!("cannot price `{}`: {e}", plan.workload.name),
            "bind every shape symbol in the workload",
        )
    })?;
    let hardware = Hardware::new(&plan.system, &plan.workload).map_err(|m| {
        error(
            Code::C009,
            "fix",
            format!("device `{}` has no {}", m.device, m.what),
            "add the figure to the device in stdlib, or choose another dtype",
        )
    })?;
    let prefill = prefill_of(&plan.workload);
    crate::sanity::check_metrics(plan, &ir, &hardware, prefill.as_ref())?;
    Ok((ir, hardware, prefill))
}

/// Evaluates `plan` with its pins plus `overrides` (which win).
pub fn evaluate(plan: &Plan, overrides: &BTreeMap<String, Pin>) -> Result<Evaluation, PinError> {
    let (ir, hardware, prefill) = prepare(plan)?;
    let mut pins = pins_from_plan(&plan.fixed);
    for (k, v) in overrides {
        pins.insert(k.clone(), v.clone());
    }
    // The program at the pinned degree is the extraction's, as in search.
    if let Some(Pin::Int(tp)) = pins.get("tp")
        && *tp > 1
    {
        extract_layers(&ir, &hardware, &[*tp]);
    }
    let ev = Evaluator {
        ir: &ir,
        hw: &hardware,
        prefill: prefill.as_ref(),
    };
    let searched_batch = !pins.contains_key("batch") && !matches!(ir.phase, Phase::Train { .. });
    let candidates: Vec<i64> = match plan.search.get("batch") {
        Some(d) if searched_batch => crate::search::domain_values(d).unwrap_or_default(),
        _ => Vec::new(),
    };
    if candidates.len() > crate::search::MAX_DOMAIN_VALUES {
        return Err(error(
            Code::C011,
            "batch",
            format!(
                "`batch` ranges over more than {} values (the limit per knob)",
                crate::search::MAX_DOMAIN_VALUES
            ),
            "narrow the plan's `search batch` range, or pin `batch` with --fix",
        ));
    }
    let goal = plan.objective.clone();
    let estimate = if candidates.is_empty() {
        let point = resolve(&pins, &ir, &plan.system)?;
        let e = ev.evaluate(&point);
        crate::sanity::verify(&e, &hardware)?;
        e
    } else {
        let mut best: Option<Estimate> = None;
        let mut first_err = None;
        for b in &candidates {
            let mut pins = pins.clone();
            pins.insert("batch".into(), Pin::Int(*b));
            let point = match resolve(&pins, &ir, &plan.system) {
                Ok(p) => p,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let e = ev.evaluate(&point);
            // A meaningless result is never a candidate (issue 11).
            if let Err(err) = crate::sanity::verify(&e, &hardware) {
                first_err = Some(err);
                continue;
            }
            // Feasible: fits and meets the plan's constraints (a batch
            // over a `tpot` budget is no better than one over HBM).
            let ok = |e: &Estimate| {
                e.feasible
                    && plan
                        .constraints
                        .iter()
                        .all(|c| crate::search::meets(c, e).0)
            };
            let better = match &best {
                None => true,
                Some(cur) => match (ok(&e), ok(cur)) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => {
                        let (x, y) = (
                            e.metric(&goal.1).unwrap_or(0.0),
                            cur.metric(&goal.1).unwrap_or(0.0),
                        );
                        if goal.0 == Goal::Maximize {
                            x > y
                        } else {
                            x < y
                        }
                    }
                },
            };
            if better {
                best = Some(e);
            }
        }
        match (best, first_err) {
            (Some(b), _) => b,
            (None, Some(e)) => return Err(e),
            (None, None) => {
                return Err(error(
                    Code::C006,
                    "batch",
                    "the batch domain is empty".into(),
                    "search batch over at least one value",
                ));
            }
        }
    };
    let mut ev = Evaluation {
        plan: plan.name.clone(),
        workload: plan.workload.name.clone(),
        system: plan.system.name.clone(),
        hardware,
        ir,
        estimate,
        batch_candidates: candidates.len(),
        missed: Vec::new(),
    };
    ev.missed = crate::search::missed(&plan.constraints, &ev.estimate);
    // A pinned point the plan's framework cannot run is the same error as
    // a search that finds none.
    if let Some(t) = &plan.target
        && let Err(why) = crate::export::runs(t, &ev.estimate, &ev.ir, &plan.workload)
    {
        return Err(off_target(plan, &ev.estimate, &why, 0));
    }
    Ok(ev)
}

/// The result of searching a plan's design space.
pub struct Searched {
    pub best: Evaluation,
    pub top: Vec<Estimate>,
    pub stats: crate::search::Stats,
    pub stop: crate::search::StopReason,
    /// Points enumerated (`stats.space`).
    pub space_size: usize,
    /// The best point's gap to the optimum named by `stats.gap_to()`.
    pub optimality_gap: f64,
    /// The winner's bottleneck and why the runner-up loses.
    pub explanation: Vec<String>,
    pub tables: Vec<crate::placement::TablePlacement>,
    /// The devices one copy of `tables` spans (all but in inference).
    pub table_group: u64,
    /// The e-graph's best form of the repeated block per tensor-parallel degree.
    pub layer_plans: Vec<LayerPlan>,
    pub egraph_nodes: usize,
    pub egraph_stop: String,
}

/// The extracted distributed form of one repeated block on one mesh.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    pub tp: i64,
    /// Forward seconds per microbatch of the extracted block (e-graph cost).
    pub seconds: f64,
    pub sequence_parallel: bool,
    pub allreduces: usize,
    pub reduce_scatters: usize,
    pub all_gathers: usize,
    pub term: String,
    /// The contraction forms this extraction pins (by the names of the
    /// tensors they produce), after the cost model's check: each differs
    /// from what the rule would choose and makes the layer faster.
    pub forms: Vec<(String, crate::sharded::Form)>,
}

impl LayerPlan {
    /// The contractions pinned to `form`.
    pub fn pinned(&self, form: crate::sharded::Form) -> Vec<String> {
        self.forms
            .iter()
            .filter(|(_, f)| *f == form)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The contraction forms of the extracted block `term` on degree `tp`
/// that the program keeps, recorded in the IR ([`Ir::set_forms`]). A form
/// is kept only where it changes the program (differs from the rule's
/// choice) and the cost model has the last word: it stays only if one
/// layer, forward and backward with its collectives on this degree, is
/// faster with it than without, given the others.
fn checked_forms(
    ir: &Ir,
    ev: &Evaluator,
    body: &crate::ir::Segment,
    probe: &crate::point::DesignPoint,
    tp: usize,
    term: &egg::RecExpr<crate::egraph::Shard>,
) -> crate::sharded::Forms {
    use crate::sharded::{Form, Forms, Strategy};
    ir.set_forms(tp, Forms::new());
    let rule = ir.tp_strategies(tp);
    let mut forms: Forms = crate::egraph::forms(term)
        .into_iter()
        .filter_map(|(i, f)| body.ops.get(i).map(|o| (o.output, f)))
        .filter(|(t, f)| {
            let by_rule = rule.get(t).copied();
            !matches!(
                (f, by_rule),
                (Form::Whole, Some(Strategy::Replicated))
                    | (Form::Column, Some(Strategy::Column))
                    | (Form::Row, Some(Strategy::Row))
            )
        })
        .collect();
    let q = crate::point::DesignPoint {
        tp: tp as u64,
        ..*probe
    };
    let layer = |f: &Forms| {
        ir.set_forms(tp, f.clone());
        ev.layer_times(&q).map_or(f64::INFINITY, |(f, b)| f + b)
    };
    let mut current = if forms.is_empty() { 0.0 } else { layer(&forms) };
    for t in forms.keys().copied().collect::<Vec<_>>() {
        let mut without = forms.clone();
        without.remove(&t);
        let t_without = layer(&without);
        if t_without <= current {
            forms = without;
            current = t_without;
        }
    }
    ir.set_forms(tp, forms.clone());
    forms
}

/// The e-graph's extraction of the repeated block on each degree.
pub struct Extracted {
    pub plans: Vec<LayerPlan>,
    pub nodes: usize,
    pub stop: String,
}

/// Saturates the repeated block of a training workload once and extracts
/// it per tensor-parallel degree in `tps`, priced on `hardware`: the
/// extraction's sequence-parallel choice is returned per degree, and the
/// contractions it runs whole are recorded in the IR ([`Ir::set_whole`]),
/// so that the cost model prices, and the runtime runs, the program built
/// with them. Search and single-point evaluation both call it.
pub fn extract_layers(ir: &Ir, hardware: &Hardware, tps: &[i64]) -> Extracted {
    let mut out = Extracted {
        plans: Vec::new(),
        nodes: 0,
        stop: "not run (no repeated block)".to_string(),
    };
    let (Some(body), Phase::Train { .. }) = (ir.body(), &ir.phase) else {
        return out;
    };
    let ev = Evaluator {
        ir,
        hw: hardware,
        prefill: None,
    };
    let probe = crate::point::DesignPoint {
        dp: 1,
        tp: 1,
        pp: 1,
        cp: 1,
        ep: 1,
        zero: 0,
        recompute: crate::point::Recompute::None,
        microbatch: 1,
        virtual_stages: 1,
        sequence_parallel: false,
        batch: 1,
        shard: 1,
    };
    let block = crate::egraph::saturate(
        body,
        ev.body_op_times(&probe),
        ir.tokens_per_sample * ir.hidden,
        crate::egraph::Limits::default(),
    );
    out.nodes = block.nodes;
    out.stop = block.stop_reason.clone();
    for &tp in tps {
        // The cost model's collective times on this degree's link, for a
        // value of `n` elements per sample in one microbatch.
        let collective = |k: usize, n: f64| {
            let kind = [
                crate::collective::Collective::AllReduce,
                crate::collective::Collective::ReduceScatter,
                crate::collective::Collective::AllGather,
            ][k.min(2)];
            hardware.topo.time(kind, tp as u64, 1, n * ir.stream_bytes)
        };
        let (cost, term) = crate::egraph::extract(&block, tp as f64, &collective);
        let uses_sp = tp > 1 && crate::egraph::uses_sequence_parallel(&term);
        let forms = if let (Ok(t), true) = (usize::try_from(tp), tp > 1) {
            checked_forms(ir, &ev, body, &probe, t, &term)
        } else {
            Default::default()
        };
        // The forward collectives of one layer of the program priced (the
        // extraction's, after the cost model's check).
        let (mut ar_n, mut rs_n, mut ag_n) = (0, 0, 0);
        if let (Ok(t), Some(bi)) = (usize::try_from(tp), ir.body_index()) {
            let table = ir.tp_table(t, uses_sp);
            for c in table.ops[bi].iter().flat_map(|o| o.comms.iter()) {
                if c.comm.pass == crate::sharded::Pass::Forward {
                    match c.comm.kind {
                        crate::sharded::Kind::AllReduce => ar_n += 1,
                        crate::sharded::Kind::ReduceScatter => rs_n += 1,
                        crate::sharded::Kind::AllGather => ag_n += 1,
                    }
                }
            }
        }
        out.plans.push(LayerPlan {
            tp,
            seconds: cost,
            sequence_parallel: uses_sp,
            allreduces: ar_n,
            reduce_scatters: rs_n,
            all_gathers: ag_n,
            term: term.to_string(),
            forms: forms
                .iter()
                .map(|(t, f)| (ir.tensor_name(*t), *f))
                .collect(),
        });
    }
    out
}

/// Searches the plan's space (its `search` domains, `fix` pins and
/// `overrides`) and keeps the best `k` points.
pub fn search(
    plan: &Plan,
    overrides: &BTreeMap<String, Pin>,
    k: usize,
) -> Result<Searched, PinError> {
    use crate::search;
    let (ir, hardware, prefill) = prepare(plan)?;
    let space = search::space(plan, &ir, overrides);
    space.check_size()?;
    let extracted = extract_layers(&ir, &hardware, &space.tp);
    let sp_by_tp: BTreeMap<i64, bool> = extracted
        .plans
        .iter()
        .map(|l| (l.tp, l.sequence_parallel))
        .collect();
    let (layer_plans, egraph_nodes, egraph_stop) =
        (extracted.plans, extracted.nodes, extracted.stop);
    let mut out = search::run(
        plan,
        &ir,
        &hardware,
        prefill.as_ref(),
        &space,
        k.max(2),
        space.sp_open.then_some(&sp_by_tp),
    );
    let Some(best) = out.top.first().cloned() else {
        // Results that were not meaningful numbers say why before any
        // closest point does: the input is wrong, not the space too small.
        if let Some(e) = out
            .first_error
            .take_if(|e| crate::sanity::is_result_error(e.code))
        {
            return Err(e);
        }
        if let Some((e, why)) = &out.off_target {
            return Err(off_target(plan, e, why, out.stats.off_target));
        }
        if let Some(t) = &out.tightest {
            let p = &t.estimate.point;
            let m = &t.estimate.memory;
            let q = |b: f64| gantry_lang::units::Quantity::new(b, gantry_lang::units::Dim::BYTES);
            let (need, has) = if t.what == crate::search::HOST_TABLES {
                (
                    format!("{} per device", q(m.host_embeddings)),
                    format!(
                        "its share of the host is {}",
                        q(m.host_embeddings / t.ratio)
                    ),
                )
            } else {
                (
                    format!("{} per device", q(m.total())),
                    format!("HBM is {}", q(m.capacity)),
                )
            };
            return Err(error(
                Code::C010,
                "search",
                format!(
                    "no design point fits: the closest, tp={} pp={} cp={} dp={} zero={} recompute={} microbatch={}, misses {} by {:.0}% (needs {need}; {has})",
                    p.tp,
                    p.pp,
                    p.cp,
                    p.dp,
                    p.zero,
                    p.recompute.name(),
                    p.microbatch,
                    t.what,
                    100.0 * (t.ratio - 1.0),
                ),
                "widen the search (more devices, deeper pipelines, ZeRO-3, full recomputation) or relax the constraints",
            ));
        }
        if let Some(m) = &out.pruned_closest {
            // What the floor holds beside the weights: inference keeps no
            // gradients or optimizer state (a decode with a long prompt
            // was said to need them), but the batch's KV cache.
            let with = match ir.phase {
                Phase::Train { .. } => "with their gradients and optimizer state",
                Phase::Prefill { .. } | Phase::Decode { .. } => {
                    "with the batch's KV cache and activations"
                }
            };
            return Err(error(
                Code::C010,
                "search",
                format!(
                    "no design point fits: {} of {} parameters {with} need at least {} per device (reserve included) even at tp={} pp={} cp={} (dp={}); HBM is {}",
                    ir.model,
                    gantry_lang::units::format_number((ir.params() / 1e9 * 10.0).round() / 10.0)
                        + "B",
                    gantry_lang::units::Quantity::new(m.bound, gantry_lang::units::Dim::BYTES),
                    m.tp,
                    m.pp,
                    m.cp,
                    m.dp,
                    gantry_lang::units::Quantity::new(m.capacity, gantry_lang::units::Dim::BYTES),
                ),
                "shard further (larger tp or pp, ZeRO-3), use more devices, or devices with more HBM",
            ));
        }
        return Err(out.first_error.unwrap_or_else(|| {
            error(
                Code::C010,
                "search",
                format!(
                    "the search space of `{}` holds no valid design point ({} candidates)",
                    plan.name, out.stats.space
                ),
                "check the domains: degrees must divide the devices, heads and batch",
            )
        }));
    };
    let decode = crate::explain::phase_is_decode(&ir.phase);
    let mut explanation = vec![format!(
        "bottleneck: {}",
        crate::explain::bottleneck(&best, decode)
    )];
    // The runner-up: the best point on a different mesh (tp, pp, cp, dp,
    // ep), else the next point.
    let runner_up = out.runner_up.as_ref().or(out.top.get(1));
    if let Some(second) = runner_up {
        explanation.push(crate::explain::versus(&best, second, &plan.objective.1));
    }
    out.top.truncate(k.max(1));
    let top = out.top.clone();
    let best = Evaluation {
        plan: plan.name.clone(),
        workload: plan.workload.name.clone(),
        system: plan.system.name.clone(),
        hardware,
        ir,
        estimate: best,
        batch_candidates: 0,
        missed: Vec::new(),
    };
    let mut best = best;
    best.missed = crate::search::missed(&plan.constraints, &best.estimate);
    let (table_group, tables) = table_placement(&best);
    Ok(Searched {
        best,
        top,
        optimality_gap: out.optimality_gap,
        space_size: out.stats.space,
        stats: out.stats,
        stop: out.stop,
        explanation,
        tables,
        table_group,
        layer_plans,
        egraph_nodes,
        egraph_stop,
    })
}
