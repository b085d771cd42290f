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
use gantry_lang::program::{Domain, Goal, Phase, Plan, Workload};

use crate::cost::{Estimate, Evaluator};
use crate::hardware::Hardware;
use crate::ir::{lower, Ir};
use crate::point::{pins_from_plan, resolve, Pin, PinError};

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
}

fn error(code: Code, knob: &'static str, message: String, help: &str) -> PinError {
    PinError {
        code,
        knob,
        message,
        help: help.into(),
    }
}

/// Lowers the decode workload's prompt as a prefill of the same batch.
fn prefill_of(w: &Workload) -> Option<Ir> {
    let Phase::Decode { batch, prompt: Some(prompt), .. } = w.phase else {
        return None;
    };
    let mut pre = w.clone();
    pre.phase = Phase::Prefill { batch, prompt: Some(prompt) };
    pre.bindings.insert("seq".into(), prompt as i64);
    lower(&pre).ok()
}

/// Evaluates `plan` with its pins plus `overrides` (which win).
pub fn evaluate(plan: &Plan, overrides: &BTreeMap<String, Pin>) -> Result<Evaluation, PinError> {
    let ir = lower(&plan.workload).map_err(|e| error(Code::C008, "fix", format!("cannot price `{}`: {e}", plan.workload.name), "bind every shape symbol in the workload"))?;
    let hardware = Hardware::new(&plan.system, plan.workload.dtype).map_err(|m| {
        error(
            Code::C009,
            "fix",
            format!("device `{}` has no {}", m.device, m.what),
            "add the figure to the device in stdlib, or choose another dtype",
        )
    })?;
    let prefill = prefill_of(&plan.workload);
    let mut pins = pins_from_plan(&plan.fixed);
    for (k, v) in overrides {
        pins.insert(k.clone(), v.clone());
    }
    let ev = Evaluator {
        ir: &ir,
        hw: &hardware,
        prefill: prefill.as_ref(),
    };
    let searched_batch = !pins.contains_key("batch") && !matches!(ir.phase, Phase::Train { .. });
    let candidates: Vec<i64> = match plan.search.get("batch") {
        Some(Domain::Ints(v)) if searched_batch => v.clone(),
        Some(Domain::IntRange(a, b)) if searched_batch => (*a..=*b).collect(),
        _ => Vec::new(),
    };
    let goal = plan.objective.clone();
    let estimate = if candidates.is_empty() {
        let point = resolve(&pins, &ir, &plan.system)?;
        ev.evaluate(&point)
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
            let better = match &best {
                None => true,
                Some(cur) => match (e.feasible, cur.feasible) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => {
                        let (x, y) = (e.metric(&goal.1).unwrap_or(0.0), cur.metric(&goal.1).unwrap_or(0.0));
                        if goal.0 == Goal::Maximize { x > y } else { x < y }
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
            (None, None) => return Err(error(Code::C006, "batch", "the batch domain is empty".into(), "search batch over at least one value")),
        }
    };
    Ok(Evaluation {
        plan: plan.name.clone(),
        workload: plan.workload.name.clone(),
        system: plan.system.name.clone(),
        hardware,
        ir,
        estimate,
        batch_candidates: candidates.len(),
    })
}
