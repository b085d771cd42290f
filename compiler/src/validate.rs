//! Predicted versus published: every `expect` of every plan.

use std::collections::BTreeMap;

use gantry_lang::program::Program;

use crate::plan::evaluate;
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

/// Evaluates every plan of `program` that states an expected figure.
pub fn rows(program: &Program) -> Vec<Result<Row, (String, PinError)>> {
    let mut out = Vec::new();
    for plan in program.plans.values() {
        if plan.expect.is_empty() {
            continue;
        }
        match evaluate(plan, &BTreeMap::new()) {
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
