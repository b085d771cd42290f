//! Predicted versus published: every `expect` of every plan.
//!
//! A plan's prediction is what `gantry plan FILE --plan NAME` reports: the
//! best point of the plan's search (its `fix` pins, `search` domains and
//! objective), never the `--fix` defaults, so `validate`, `calibrate --fit`
//! and `plan` cannot disagree on a file ([`predict`] is the one path).

use std::collections::BTreeMap;

use gantry_lang::program::{Phase, Plan, Program};

use crate::plan::{Evaluation, search};
use crate::point::PinError;

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub plan: String,
    pub metric: String,
    pub predicted: f64,
    pub published: f64,
    pub feasible: bool,
}

impl Row {
    /// Signed relative error in percent.
    pub fn error_pct(&self) -> f64 {
        100.0 * (self.predicted - self.published) / self.published
    }
}

/// What `gantry plan` reports for `plan` without `--fix` or `--pin`: the
/// best point of its search (the placement of embedding tables applied).
pub fn predict(plan: &Plan) -> Result<Evaluation, PinError> {
    search(plan, &BTreeMap::new(), 1).map(|s| s.best)
}

/// The predicted value of each `expect` metric of `plan` (in its order)
/// and whether the prediction fits in memory: the cost model's search
/// ([`predict`]) for a phase workload, the serving simulator
/// ([`crate::serve::planner::predict`]) for a `serve` workload, whose
/// deployment fits whenever it is simulated (its KV cache is what the
/// weights leave; a run above capacity is unstable, not infeasible, and
/// is still compared, as the published benchmark served every request).
/// NaN for a metric the prediction has not.
pub fn figures(plan: &Plan) -> Result<(Vec<f64>, bool), PinError> {
    if plan.workload.serve.is_some() {
        let s = crate::serve::planner::predict(plan)?;
        let v = plan
            .expect
            .keys()
            .map(|m| s.metric(m).unwrap_or(f64::NAN))
            .collect();
        return Ok((v, true));
    }
    let ev = predict(plan)?;
    let v = plan
        .expect
        .keys()
        .map(|m| ev.estimate.metric(m).unwrap_or(f64::NAN))
        .collect();
    Ok((v, ev.estimate.feasible))
}

/// Evaluates every plan of `program` that states an expected figure, as
/// [`figures`] does.
pub fn rows(program: &Program) -> Vec<Result<Row, (String, PinError)>> {
    let mut out = Vec::new();
    for plan in program.plans.values() {
        if plan.expect.is_empty() {
            continue;
        }
        match figures(plan) {
            Ok((values, feasible)) => {
                for ((metric, q), predicted) in plan.expect.iter().zip(values) {
                    out.push(Ok(Row {
                        plan: plan.name.clone(),
                        metric: metric.clone(),
                        predicted,
                        published: q.value,
                        feasible,
                    }));
                }
            }
            Err(e) => out.push(Err((plan.name.clone(), e))),
        }
    }
    out
}

/// The planner's free choice next to the published configuration of one
/// training reference plan.
#[derive(Clone, Debug)]
pub struct Pick {
    pub plan: String,
    /// The published configuration as the plan pins it (its prediction).
    pub published: crate::cost::Estimate,
    /// The best point with every pin and search domain of the plan
    /// released: same workload, same system, same objective.
    pub pick: crate::cost::Estimate,
    /// Why the published point loses to the pick, in numbers
    /// ([`crate::explain::versus`]); `None` when the pick is the published
    /// configuration.
    pub why: Option<String>,
    /// What the explanation turns on, for tallies: the step part the
    /// published point spends most extra time in
    /// ([`crate::explain::worst_part`]), then
    /// [`crate::explain::MEMORY_MARGIN`] when the pick needs more HBM.
    /// Empty when the pick is the published configuration.
    pub kinds: Vec<&'static str>,
    /// The objective both points are ranked by.
    pub metric: String,
}

impl Pick {
    /// The pick's objective relative to the published point's, in percent
    /// (positive: the pick is better on a metric to maximise).
    pub fn gain_pct(&self) -> f64 {
        let m = |e: &crate::cost::Estimate| e.metric(&self.metric).unwrap_or(f64::NAN);
        100.0 * (m(&self.pick) / m(&self.published) - 1.0)
    }
}

/// Whether `plan` records a published training configuration: a training
/// workload (not `serve`) with at least one `expect` figure, the plan's
/// `fix` pins being the published run's knobs. `gantry plan` and
/// `gantry validate --picks` show the released pick of exactly these.
pub fn records_published(plan: &Plan) -> bool {
    !plan.expect.is_empty()
        && plan.workload.serve.is_none()
        && matches!(plan.workload.phase, Phase::Train { .. })
}

/// The planner's free choice for `plan` next to `published`, the plan's
/// own prediction ([`predict`], which `gantry plan` has already searched):
/// the same workload, system and objective with every `fix` pin and
/// `search` domain released. This is the one path `gantry plan` and
/// `gantry validate --picks` take.
pub fn pick(plan: &Plan, published: crate::cost::Estimate) -> Result<Pick, PinError> {
    let mut free = plan.clone();
    free.fixed.clear();
    free.search.clear();
    // Context parallelism is searched only when a plan asks for it;
    // a free pick may use it (powers of two up to 16).
    free.search.insert(
        "cp".into(),
        gantry_lang::program::Domain::Ints(vec![1, 2, 4, 8, 16]),
    );
    let pick = search(&free, &BTreeMap::new(), 1)?.best.estimate;
    let metric = &free.objective.1;
    let who = "the published configuration";
    let (why, kinds) = if pick.point == published.point {
        (None, Vec::new())
    } else {
        let mut why = crate::explain::versus_named(&pick, &published, metric, who);
        let mut kinds =
            vec![crate::explain::worst_part(&pick, &published).unwrap_or("objective only")];
        if let Some(m) = crate::explain::memory_margin(&pick, &published, who) {
            why.push_str("; ");
            why.push_str(&m);
            kinds.push(crate::explain::MEMORY_MARGIN);
        }
        (Some(why), kinds)
    };
    Ok(Pick {
        plan: plan.name.clone(),
        metric: metric.clone(),
        published,
        pick,
        why,
        kinds,
    })
}

/// For every training plan of `program` with an `expect`
/// ([`records_published`]): what the planner picks when nothing is
/// pinned ([`pick`]), against the published point.
pub fn picks(program: &Program) -> Vec<Result<Pick, (String, PinError)>> {
    program
        .plans
        .values()
        .filter(|p| records_published(p))
        .map(|plan| {
            predict(plan)
                .and_then(|ev| pick(plan, ev.estimate))
                .map_err(|e| (plan.name.clone(), e))
        })
        .collect()
}

/// Median of absolute errors (percent).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}
