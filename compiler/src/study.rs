//! Co-design studies: every system of a sweep against a workload mix.
//!
//! For each system and each workload the planner finds the best design point
//! (its own throughput objective, under the study's constraints). The
//! study's objective (for example `throughput_per_dollar`) is then taken on
//! each workload's best point and normalised by the best system for that
//! workload, so workloads measured in tokens and in samples can be mixed;
//! the fleet score of a system is the weighted sum of these normalised
//! scores (1.0 = best on every workload).

use std::collections::BTreeMap;

use gantry_lang::program::{Cluster, Goal, Plan, Study, Workload};

use rayon::prelude::*;

use crate::cost::Estimate;
use crate::plan::search;

/// One workload on one system.
#[derive(Clone, Debug)]
pub struct Cell {
    pub workload: String,
    pub weight: f64,
    /// The best design point, or why there is none.
    pub best: Result<Estimate, String>,
    /// The study's objective on that point.
    pub value: Option<f64>,
    /// `value` relative to the best system for this workload.
    pub relative: f64,
    /// The calibration key of the workload's phase (`train`, `infer`).
    pub phase: &'static str,
    /// The leave-one-out band of this system's device for that phase
    /// (`None`: uncalibrated).
    pub uncertainty: Option<crate::hardware::Uncertainty>,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub system: String,
    pub devices: u64,
    pub cells: Vec<Cell>,
    pub score: f64,
}

/// The plan of one study cell: the study's search space, pins and
/// constraints for workload `w` on system `sys`, maximizing throughput.
pub fn cell_plan(study: &Study, sys: &Cluster, w: &Workload) -> Plan {
    Plan {
        name: format!("{}:{}", study.name, w.name),
        system: sys.clone(),
        workload: w.clone(),
        search: study.search.clone(),
        fixed: study.fixed.clone(),
        objective: (Goal::Maximize, "throughput".to_string()),
        constraints: study.constraints.clone(),
        expect: BTreeMap::new(),
        tolerance: Default::default(),
        source: None,
        simulate: None,
        target: None,
        span: study.span,
    }
}

pub fn run(study: &Study) -> Vec<Row> {
    run_with(study, &|| {})
}

/// [`run`], calling `tick` once per (system, workload) cell. Cells are
/// planned on the rayon pool and collected in order, so the rows do not
/// depend on the thread count.
pub fn run_with(study: &Study, tick: &(dyn Fn() + Sync)) -> Vec<Row> {
    let searched: Vec<Vec<Result<Estimate, String>>> = study
        .systems
        .par_iter()
        .map(|sys| {
            study
                .workloads
                .par_iter()
                .map(|(w, _)| {
                    let best = search_cell(study, sys, w);
                    tick();
                    best
                })
                .collect()
        })
        .collect();
    rows(study, searched)
}

/// The expensive part of one cell: the best plan of workload `w` on
/// `sys` (what a shard of `gantry study --shard` computes and writes).
pub fn search_cell(study: &Study, sys: &Cluster, w: &Workload) -> Result<Estimate, String> {
    let plan = cell_plan(study, sys, w);
    search(&plan, &BTreeMap::new(), 1)
        .map(|s| s.best.estimate)
        .map_err(|e| format!("error[{}]: {}", e.code, e.message))
}

/// One cell from its search result: the study's objective on the best
/// point, the phase and the calibration band (cheap; `relative` is set
/// by [`rows`]).
fn cell(
    study: &Study,
    sys: &Cluster,
    w: &Workload,
    weight: f64,
    best: Result<Estimate, String>,
) -> Cell {
    // The study's objective on the best point: a metric the point
    // does not have (`C015`) or that is not a meaningful number
    // (`C016`) makes the cell an error, not a silent zero.
    let obj = &study.objective.1;
    let (best, value) = match best {
        Ok(e) => match e.metric(obj) {
            Some(v) if v.is_finite() && v >= 0.0 => (Ok(e), Some(v)),
            Some(v) => (
                Err(format!(
                    "error[C016]: the study's objective `{obj}` is {} on the best point of `{}`",
                    gantry_lang::units::format_number(v),
                    w.name
                )),
                None,
            ),
            None => (
                Err(format!(
                    "error[C015]: the study's objective `{obj}` has no value for `{}` on `{}` (a metric of another phase, or no `price`)",
                    w.name, sys.name
                )),
                None,
            ),
        },
        Err(e) => (Err(e), None),
    };
    Cell {
        workload: w.name.clone(),
        weight,
        best,
        value,
        relative: 0.0,
        phase: crate::hardware::phase_key(&w.phase),
        uncertainty: crate::hardware::Hardware::new(sys, w)
            .ok()
            .and_then(|h| h.uncertainty),
    }
}

/// The study's rows from every cell's search result (`searched[system]
/// [workload]`, in sweep order): objective values, normalised per
/// workload by the best system, and weighted scores. Arithmetic only, so
/// a merged run (`gantry merge`) and a single one agree.
pub fn rows(study: &Study, searched: Vec<Vec<Result<Estimate, String>>>) -> Vec<Row> {
    let mut rows: Vec<Row> = study
        .systems
        .iter()
        .zip(searched)
        .map(|(sys, row)| Row {
            system: sys.name.clone(),
            devices: sys.devices(),
            cells: study
                .workloads
                .iter()
                .zip(row)
                .map(|((w, weight), best)| cell(study, sys, w, *weight, best))
                .collect(),
            score: 0.0,
        })
        .collect();
    // Normalise per workload by the best system, oriented by the goal.
    let n = study.workloads.len();
    for j in 0..n {
        let vals: Vec<f64> = rows.iter().filter_map(|r| r.cells[j].value).collect();
        let best = match study.objective.0 {
            Goal::Maximize => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Goal::Minimize => vals.iter().copied().fold(f64::INFINITY, f64::min),
        };
        for r in &mut rows {
            let c = &mut r.cells[j];
            c.relative = match (c.value, study.objective.0) {
                (Some(v), Goal::Maximize) if best > 0.0 => v / best,
                (Some(v), Goal::Minimize) if v > 0.0 => best / v,
                _ => 0.0,
            };
        }
    }
    for r in &mut rows {
        r.score = r.cells.iter().map(|c| c.weight * c.relative).sum();
    }
    rows
}
