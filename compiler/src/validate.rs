//! Predicted versus published: every `expect` of every plan.
//!
//! A plan's prediction is what `gantry plan FILE --plan NAME` reports: the
//! best point of the plan's search (its `fix` pins, `search` domains and
//! objective), never the `--fix` defaults, so `validate`, `calibrate --fit`
//! and `plan` cannot disagree on a file ([`predict`] is the one path).

use std::collections::BTreeMap;

use gantry_lang::program::{Plan, Program};

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

/// Evaluates every plan of `program` that states an expected figure, as
/// [`predict`] does.
pub fn rows(program: &Program) -> Vec<Result<Row, (String, PinError)>> {
    let mut out = Vec::new();
    for plan in program.plans.values() {
        if plan.expect.is_empty() {
            continue;
        }
        match predict(plan) {
            Ok(ev) => {
                for (metric, q) in &plan.expect {
                    let predicted = ev.estimate.metric(metric).unwrap_or(f64::NAN);
                    out.push(Ok(Row {
                        plan: plan.name.clone(),
                        metric: metric.clone(),
                        predicted,
                        published: q.value,
                        feasible: ev.estimate.feasible,
                    }));
                }
            }
            Err(e) => out.push(Err((plan.name.clone(), e))),
        }
    }
    out
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
