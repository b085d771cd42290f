//! Fitting the efficiency factors to published runs (`gantry calibrate
//! --fit`), their leave-one-out errors (`gantry validate --cross`), and the
//! rewrite of a device's `efficiency { ... }` record (`--write`).
//!
//! Rows are the `expect` figures of every plan; they are grouped by
//! (device, phase key) and each group fits the factors its device record
//! declares for that phase (device-wide ones the phase does not override,
//! plus the phase record's own; never `fit_rows` or `loo_*`). The objective
//! is the sum over rows of `ln(predicted / published)^2`; the factors move
//! in a bounded log space (fractions in `[0.001, 1]`, factors with a unit
//! in `[1e-12, 1] x` their documented maximum, where the bottom reads as 0).
//!
//! A prediction is the search's best point (what `gantry plan` reports,
//! [`crate::validate::predict`]). Searching for every row at every step of
//! the optimiser would cost seconds per step, so each of [`ROUNDS`] rounds
//! searches every plan once, holds the discrete choices (the design point
//! and the e-graph's choices in the IR) fixed, and fits the continuous
//! factors with [`Evaluator::evaluate`] on those points only: a coordinate
//! scan over each factor's whole range (first round), then projected
//! Levenberg-Marquardt. The start is fixed (1 for fractions, 0 for the
//! others: an undeclared factor's value), not the stdlib's values, so the
//! output depends only on the rows and the model, and a fit of its own
//! output reproduces it. A factor no row depends on is not fitted (it
//! keeps its declared value). The result is rounded to 3 significant
//! digits and searched once more: the in-sample errors are exactly what
//! `gantry validate` prints once the values are written.
//!
//! Serving reference rows (plans of `serve` workloads, section S) fit
//! nothing: the simulator runs on the device's factors as fitted here on
//! the cost model's rows, so each serving figure is predicted out of
//! sample and its leave-one-out figure is its prediction. Fitting them
//! would need a simulation per row per optimiser step, and would let a
//! handful of serving rows move the factors the offline rows fixed.
//!
//! Leave-one-out leaves out one plan (all its figures) at a time: the
//! factors are refitted on the other plans of the group (choices held at
//! the final search's, starting from the full fit) and the left-out plan
//! is predicted by a full search with them.

use std::collections::BTreeMap;
use std::time::Instant;

use gantry_lang::check::EFFICIENCY;
use gantry_lang::program::{Cluster, Plan, Program};
use gantry_lang::units::{Dim, Quantity};

use crate::cost::Evaluator;
use crate::hardware::{Hardware, phase_key};
use crate::ir::Ir;
use crate::point::{DesignPoint, PinError};
use crate::validate::predict;

/// Outer rounds: search, fit with the choices held, search again.
pub const ROUNDS: usize = 3;

/// What a fit records next to its factors: not factors, never fitted.
pub const RECORD_KEYS: [&str; 3] = ["fit_rows", "loo_median", "loo_max"];

/// Significant digits of every written value.
pub const DIGITS: i32 = 3;

/// The smallest fraction the fit tries: the language's floor, so every
/// value `--write` writes is one the checker accepts.
const FRACTION_FLOOR: f64 = gantry_lang::check::MIN_EFFICIENCY;
/// The smallest value of a factor with a unit, relative to its maximum;
/// a fit at this floor is written as 0.
const QUANTITY_FLOOR: f64 = 1e-12;
/// Points of the first round's scan over each factor's range.
const SCAN_POINTS: usize = 25;
/// A residual for a prediction that is not a positive finite number.
const BAD_RESIDUAL: f64 = 30.0;

/// One plan with published figures, as found in a reference file.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The file's stem (`a01_gpt_1p7b`).
    pub file: String,
    /// The first letter of the file's name, upper case.
    pub section: char,
    pub plan: Plan,
    /// (metric, published value in base units), in metric order.
    pub expect: Vec<(String, f64)>,
    /// The file that declares the plan's device (for `--write`).
    pub device_file: String,
    /// The file that declares the serving engine the plan's workload runs
    /// on, if any (for `--write`).
    pub engine_file: Option<String>,
}

/// Every plan of `program` that states an expected figure, in name order
/// (the order `gantry validate` prints), for the reference file `file`.
pub fn references(
    file: &str,
    program: &Program,
    sources: &gantry_lang::source::SourceMap,
) -> Vec<Reference> {
    let section = file.chars().next().unwrap_or('?').to_ascii_uppercase();
    program
        .plans
        .values()
        .filter(|p| !p.expect.is_empty())
        .map(|p| Reference {
            file: file.to_string(),
            section,
            plan: p.clone(),
            expect: p.expect.iter().map(|(m, q)| (m.clone(), q.value)).collect(),
            device_file: sources.name(p.system.node.device.span.file).to_string(),
            engine_file: p
                .workload
                .serve
                .as_ref()
                .and_then(|s| s.engine.as_ref())
                .map(|e| sources.name(e.span.file).to_string()),
        })
        .collect()
}

/// One factor of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct Factor {
    pub name: String,
    pub dim: Dim,
    /// The value the device declares for this phase now.
    pub current: f64,
    /// The fit's value, rounded to [`DIGITS`] significant digits (the
    /// current value when no row depends on the factor).
    pub fitted: f64,
    /// Figures whose prediction depends on this factor (at the fit).
    pub sensitive: usize,
    /// Whether some figure depends on it (else it keeps `current`).
    pub is_fitted: bool,
}

impl Factor {
    /// The fitted value as the language writes it (`0.781`, `3.52 ms`).
    pub fn text(&self) -> String {
        Quantity::new(self.fitted, self.dim).to_string()
    }
}

/// One figure of the fit.
#[derive(Clone, Debug, PartialEq)]
pub struct FitRow {
    /// Index into the references given to [`fit`].
    pub reference: usize,
    pub metric: String,
    pub published: f64,
    /// `gantry validate`'s prediction with the stdlib's factors now.
    pub current: f64,
    /// The prediction with the fitted (rounded) factors.
    pub in_sample: f64,
    /// The prediction with factors fitted without this row's plan; `None`
    /// when the group has no other plan.
    pub loo: Option<f64>,
}

/// Signed relative error (fraction).
pub fn rel_error(predicted: f64, published: f64) -> f64 {
    (predicted - published) / published
}

/// Median and maximum of absolute values (0 for none).
pub fn median_max(v: &[f64]) -> (f64, f64) {
    let max = v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    (crate::validate::median(v), max)
}

/// A fitted record's band: the leave-one-out errors' median, and a worst
/// that also covers the fitted rows' own worst in-sample error
/// (`in_sample_worst`), since a refit without a row can land nearer it
/// than the fit with it and `gantry test` holds those rows to the band.
/// `None` without a left-out error.
pub fn band(loo_errors: &[f64], in_sample_worst: f64) -> Option<(f64, f64)> {
    (!loo_errors.is_empty()).then(|| {
        let (median, worst) = median_max(loo_errors);
        (median, worst.max(in_sample_worst))
    })
}

/// The fit of one (device, phase) group.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub device: String,
    pub phase: &'static str,
    /// The file declaring the device.
    pub device_file: String,
    pub factors: Vec<Factor>,
    /// Indices into [`Fit::rows`].
    pub rows: Vec<usize>,
    /// Median and worst leave-one-out |relative error|, `None` without
    /// leave-one-out predictions.
    pub loo: Option<(f64, f64)>,
}

impl Group {
    /// The entries `--write` puts in the phase record: the factors, then
    /// `fit_rows`, `loo_median`, `loo_max`.
    pub fn record(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .factors
            .iter()
            .map(|f| (f.name.clone(), f.text()))
            .collect();
        out.push(("fit_rows".into(), self.rows.len().to_string()));
        if let Some((m, x)) = self.loo {
            out.push(("loo_median".into(), fmt_sig(m)));
            out.push((
                "loo_max".into(),
                gantry_lang::units::format_number(round_sig_up(x)),
            ));
        }
        out
    }
}

/// A plan that could not be evaluated (its figures are left out).
#[derive(Clone, Debug)]
pub struct Failed {
    pub reference: usize,
    pub error: PinError,
}

/// The whole fit.
#[derive(Clone, Debug)]
pub struct Fit {
    pub groups: Vec<Group>,
    /// The serving engines' fits (section S rows that declare an engine).
    pub engines: Vec<crate::engine_fit::EngineGroup>,
    pub rows: Vec<FitRow>,
    pub failed: Vec<Failed>,
    /// Whether the last round's search kept every design point the round
    /// before chose (the discrete choices converged).
    pub stable: bool,
    /// The largest relative difference between a search's figure and the
    /// inner evaluation of its point with the same factors (0: holding the
    /// choices reproduces the search exactly).
    pub held_mismatch: f64,
    /// Full searches and inner evaluations run.
    pub searches: usize,
    pub evaluations: usize,
    pub seconds: f64,
}

/// Rounds to [`DIGITS`] significant digits, exactly as the value will be
/// read back (an integer scaled by an exact power of ten).
pub fn round_sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let e = x.abs().log10().floor() as i32;
    let k = DIGITS - 1 - e;
    if k >= 0 {
        let s = 10f64.powi(k);
        (x * s).round() / s
    } else {
        let s = 10f64.powi(-k);
        (x / s).round() * s
    }
}

/// Rounds a band's worst error *up* to [`DIGITS`] significant digits: the
/// written `loo_max` is a bound (`gantry test` holds the reference rows of
/// a fitted engine to it), and rounding it to the nearest value could put
/// it below the error it bounds.
pub fn round_sig_up(x: f64) -> f64 {
    let r = round_sig(x);
    if r >= x || !x.is_finite() || x <= 0.0 {
        return r;
    }
    // The next value up at the same number of digits.
    let e = r.abs().log10().floor() as i32;
    round_sig(r + 10f64.powi(e - (DIGITS - 1)))
}

fn fmt_sig(x: f64) -> String {
    gantry_lang::units::format_number(round_sig(x))
}

/// A factor's search range in log space.
#[derive(Clone, Debug)]
struct Spec {
    name: String,
    dim: Dim,
    /// `x = scale * exp(u)`, `u` in `[lo, 0]`.
    scale: f64,
    lo: f64,
    current: f64,
}

impl Spec {
    fn new(name: &str, dim: Dim, current: f64) -> Option<Spec> {
        let &(_, edim, max, _) = EFFICIENCY.iter().find(|(n, ..)| *n == name)?;
        // Fractions of peak: no unit, at most 1 (the checker's rule).
        let fraction = edim.is_none() && max <= 1.0;
        Some(Spec {
            name: name.to_string(),
            dim,
            scale: if fraction { 1.0 } else { max },
            lo: if fraction {
                FRACTION_FLOOR.ln()
            } else {
                QUANTITY_FLOOR.ln()
            },
            current,
        })
    }
    fn fraction(&self) -> bool {
        self.dim.is_none() && self.scale <= 1.0
    }
    fn x(&self, u: f64) -> f64 {
        if !self.fraction() && u <= self.lo + 1e-9 {
            0.0
        } else {
            self.scale * u.clamp(self.lo, 0.0).exp()
        }
    }
    fn u(&self, x: f64) -> f64 {
        if x <= 0.0 {
            self.lo
        } else {
            (x / self.scale).ln().clamp(self.lo, 0.0)
        }
    }
    /// The fixed start: an undeclared factor's value (1, or 0).
    fn start(&self) -> f64 {
        if self.fraction() { 0.0 } else { self.lo }
    }
}

/// The factors a device record declares for `phase`, in [`EFFICIENCY`]'s
/// order, with their current values.
fn declared(efficiency: &BTreeMap<String, Quantity>, phase: &str) -> Vec<Spec> {
    EFFICIENCY
        .iter()
        .filter(|(n, ..)| !RECORD_KEYS.contains(n))
        .filter_map(|(n, ..)| {
            let q = efficiency
                .get(&format!("{phase}.{n}"))
                .or_else(|| efficiency.get(*n))?;
            Spec::new(n, q.dim, q.value)
        })
        .collect()
}

/// Sets the factors `x` on a copy of the system (as the phase's record).
fn set_factors(system: &mut Cluster, phase: &str, specs: &[Spec], x: &[f64]) {
    for (s, v) in specs.iter().zip(x) {
        system
            .node
            .device
            .efficiency
            .insert(format!("{phase}.{}", s.name), Quantity::new(*v, s.dim));
    }
}

/// One plan with its discrete choices held: the searched point and the IR
/// with the e-graph's choices recorded in it.
struct Case {
    reference: usize,
    plan: Plan,
    ir: Ir,
    prefill: Option<Ir>,
    point: DesignPoint,
    /// The search's figures (the reference's `expect` order).
    figures: Vec<f64>,
}

impl Case {
    /// Predicted figures at factors `x` with the choices held.
    fn predict(&mut self, phase: &str, specs: &[Spec], x: &[f64], refs: &[Reference]) -> Vec<f64> {
        set_factors(&mut self.plan.system, phase, specs, x);
        let Ok(hw) = Hardware::new(&self.plan.system, &self.plan.workload) else {
            return vec![f64::NAN; refs[self.reference].expect.len()];
        };
        let e = Evaluator {
            ir: &self.ir,
            hw: &hw,
            prefill: self.prefill.as_ref(),
        }
        .evaluate(&self.point);
        refs[self.reference]
            .expect
            .iter()
            .map(|(m, _)| e.metric(m).unwrap_or(f64::NAN))
            .collect()
    }
}

fn residual(predicted: f64, published: f64) -> f64 {
    let r = (predicted / published).ln();
    if r.is_finite() {
        r.clamp(-BAD_RESIDUAL, BAD_RESIDUAL)
    } else {
        BAD_RESIDUAL
    }
}

/// The plan of `r` with factors `x` declared for `phase`.
fn plan_at(r: &Reference, phase: &str, specs: &[Spec], x: &[f64]) -> Plan {
    let mut p = r.plan.clone();
    set_factors(&mut p.system, phase, specs, x);
    p
}

/// The residuals of every case but `skip` at log-space point `u`.
struct Objective<'a> {
    cases: &'a mut [Case],
    refs: &'a [Reference],
    phase: &'static str,
    specs: &'a [Spec],
    skip: Option<usize>,
    evaluations: usize,
}

impl Objective<'_> {
    fn residuals(&mut self, u: &[f64]) -> Vec<f64> {
        let x: Vec<f64> = self.specs.iter().zip(u).map(|(s, u)| s.x(*u)).collect();
        let mut out = Vec::new();
        for (i, c) in self.cases.iter_mut().enumerate() {
            if Some(i) == self.skip {
                continue;
            }
            self.evaluations += 1;
            let pred = c.predict(self.phase, self.specs, &x, self.refs);
            for (p, (_, published)) in pred.iter().zip(&self.refs[c.reference].expect) {
                out.push(residual(*p, *published));
            }
        }
        out
    }
    fn cost(&mut self, u: &[f64]) -> f64 {
        self.residuals(u).iter().map(|r| r * r).sum()
    }

    /// Scans each coordinate in turn over its whole range and keeps the
    /// best value (the first of equals).
    fn scan(&mut self, u: &mut [f64]) {
        for j in 0..u.len() {
            let lo = self.specs[j].lo;
            let mut best = (self.cost(u), u[j]);
            for i in 0..SCAN_POINTS {
                let mut v = u.to_vec();
                v[j] = lo * (1.0 - i as f64 / (SCAN_POINTS - 1) as f64);
                let c = self.cost(&v);
                if c < best.0 {
                    best = (c, v[j]);
                }
            }
            u[j] = best.1;
        }
    }

    /// Projected Levenberg-Marquardt from `u` within `[lo, 0]`.
    fn levenberg_marquardt(&mut self, u: &mut Vec<f64>, iterations: usize) {
        let k = u.len();
        if k == 0 {
            return;
        }
        let mut r = self.residuals(u);
        let mut cost: f64 = r.iter().map(|x| x * x).sum();
        let mut lambda = 1e-3;
        for _ in 0..iterations {
            // Forward differences, stepping into the box.
            let h = 1e-6;
            let mut jac = vec![vec![0.0; r.len()]; k];
            for j in 0..k {
                let mut v = u.clone();
                let step = if v[j] + h <= 0.0 { h } else { -h };
                v[j] += step;
                let rj = self.residuals(&v);
                for (i, (a, b)) in rj.iter().zip(&r).enumerate() {
                    jac[j][i] = (a - b) / step;
                }
            }
            let g: Vec<f64> = (0..k)
                .map(|j| jac[j].iter().zip(&r).map(|(a, b)| a * b).sum())
                .collect();
            let a: Vec<Vec<f64>> = (0..k)
                .map(|i| {
                    (0..k)
                        .map(|j| jac[i].iter().zip(&jac[j]).map(|(x, y)| x * y).sum())
                        .collect()
                })
                .collect();
            // A coordinate at a bound that descent pushes out stays there.
            let free: Vec<usize> = (0..k)
                .filter(|&j| {
                    let at_lo = u[j] <= self.specs[j].lo + 1e-12 && g[j] > 0.0;
                    let at_hi = u[j] >= -1e-12 && g[j] < 0.0;
                    !(at_lo || at_hi) && a[j][j] > 0.0
                })
                .collect();
            if free.is_empty() {
                return;
            }
            let dmax = free.iter().map(|&j| a[j][j]).fold(0.0, f64::max);
            let mut accepted = None;
            for _ in 0..30 {
                let n = free.len();
                let mut m = vec![vec![0.0; n + 1]; n];
                for (p, &i) in free.iter().enumerate() {
                    for (q, &j) in free.iter().enumerate() {
                        m[p][q] = a[i][j];
                    }
                    m[p][p] += lambda * a[i][i].max(1e-9 * dmax);
                    m[p][n] = -g[i];
                }
                let Some(delta) = solve(m) else {
                    lambda *= 4.0;
                    continue;
                };
                let mut v = u.clone();
                for (p, &j) in free.iter().enumerate() {
                    v[j] = (v[j] + delta[p]).clamp(self.specs[j].lo, 0.0);
                }
                let rv = self.residuals(&v);
                let cv: f64 = rv.iter().map(|x| x * x).sum();
                if cv < cost {
                    accepted = Some((v, rv, cv));
                    lambda = (lambda / 3.0).max(1e-12);
                    break;
                }
                lambda *= 4.0;
            }
            let Some((v, rv, cv)) = accepted else {
                return;
            };
            let moved = v
                .iter()
                .zip(u.iter())
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            let gain = cost - cv;
            *u = v;
            r = rv;
            cost = cv;
            if moved < 1e-9 || gain <= 1e-13 * cost.max(1e-30) {
                return;
            }
        }
    }
}

/// Solves an augmented `n x (n+1)` system by Gaussian elimination with
/// partial pivoting; `None` when singular.
fn solve(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let n = m.len();
    for c in 0..n {
        let p = (c..n).max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs()))?;
        if m[p][c] == 0.0 || !m[p][c].is_finite() {
            return None;
        }
        m.swap(c, p);
        let pivot = m[c].clone();
        for row in m.iter_mut().skip(c + 1) {
            let f = row[c] / pivot[c];
            for (x, y) in row.iter_mut().zip(&pivot).skip(c) {
                *x -= f * y;
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| m[r][k] * x[k]).sum();
        x[r] = (m[r][n] - s) / m[r][r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Searches every reference of a group at factors `x`: the cases with
/// their choices held, and the plans that failed.
fn search_group(
    refs: &[Reference],
    members: &[usize],
    phase: &'static str,
    specs: &[Spec],
    x: &[f64],
    searches: &mut usize,
) -> (Vec<Case>, Vec<Failed>) {
    let mut cases = Vec::new();
    let mut failed = Vec::new();
    for &i in members {
        let plan = plan_at(&refs[i], phase, specs, x);
        *searches += 1;
        match predict(&plan) {
            Ok(ev) => cases.push(Case {
                reference: i,
                figures: refs[i]
                    .expect
                    .iter()
                    .map(|(m, _)| ev.estimate.metric(m).unwrap_or(f64::NAN))
                    .collect(),
                prefill: crate::plan::prefill_of(&plan.workload),
                point: ev.estimate.point,
                ir: ev.ir,
                plan,
            }),
            Err(error) => failed.push(Failed {
                reference: i,
                error,
            }),
        }
    }
    (cases, failed)
}

/// The figures of reference `i` predicted by a full search at `x`.
fn searched_figures(
    r: &Reference,
    phase: &str,
    specs: &[Spec],
    x: &[f64],
) -> Result<Vec<f64>, PinError> {
    let ev = predict(&plan_at(r, phase, specs, x))?;
    Ok(r.expect
        .iter()
        .map(|(m, _)| ev.estimate.metric(m).unwrap_or(f64::NAN))
        .collect())
}

/// Fits every (device, phase) group of `refs` (see the module docs).
pub fn fit(refs: &[Reference]) -> Fit {
    let started = Instant::now();
    let mut searches = 0;
    let mut evaluations = 0;
    let mut stable = true;
    let mut held_mismatch = 0.0f64;
    let mut rows: Vec<FitRow> = Vec::new();
    let mut groups = Vec::new();
    let mut failed: Vec<Failed> = Vec::new();
    // The stdlib's predictions now (what `gantry validate` prints).
    let mut current: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut engine_refs = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        if crate::engine_fit::engine_of(r).is_some() {
            // Fitted below, on the engine's own rows.
            engine_refs.push(i);
            continue;
        }
        if r.plan.workload.serve.is_some() {
            // Serving rows are predicted by the simulator on the factors
            // fitted elsewhere and fit nothing: every prediction is out of
            // sample, so its leave-one-out figure is the prediction itself.
            match crate::validate::figures(&r.plan) {
                Ok((values, _)) => {
                    for ((metric, published), v) in r.expect.iter().zip(values) {
                        rows.push(FitRow {
                            reference: i,
                            metric: metric.clone(),
                            published: *published,
                            current: v,
                            in_sample: v,
                            loo: Some(v),
                        });
                    }
                }
                Err(error) => failed.push(Failed {
                    reference: i,
                    error,
                }),
            }
            continue;
        }
        searches += 1;
        match predict(&r.plan) {
            Ok(ev) => {
                current.insert(
                    i,
                    r.expect
                        .iter()
                        .map(|(m, _)| ev.estimate.metric(m).unwrap_or(f64::NAN))
                        .collect(),
                );
            }
            Err(error) => failed.push(Failed {
                reference: i,
                error,
            }),
        }
    }
    let mut by_group: BTreeMap<(String, &'static str), Vec<usize>> = BTreeMap::new();
    for i in current.keys() {
        let p = &refs[*i].plan;
        by_group
            .entry((
                p.system.node.device.name.clone(),
                phase_key(&p.workload.phase),
            ))
            .or_default()
            .push(*i);
    }
    for ((device, phase), members) in by_group {
        let first = &refs[members[0]];
        let specs = declared(&first.plan.system.node.device.efficiency, phase);
        let mut u: Vec<f64> = specs.iter().map(Spec::start).collect();
        let xs = |u: &[f64]| -> Vec<f64> { specs.iter().zip(u).map(|(s, u)| s.x(*u)).collect() };
        let mut previous: Option<Vec<(usize, DesignPoint)>> = None;
        let mut cases = Vec::new();
        for round in 0..ROUNDS {
            let (c, _) = search_group(refs, &members, phase, &specs, &xs(&u), &mut searches);
            cases = c;
            let x = xs(&u);
            for c in cases.iter_mut() {
                let held = c.predict(phase, &specs, &x, refs);
                evaluations += 1;
                for (h, f) in held.iter().zip(&c.figures) {
                    let d = ((h - f) / f).abs();
                    held_mismatch = held_mismatch.max(if d.is_nan() { f64::INFINITY } else { d });
                }
            }
            let points: Vec<(usize, DesignPoint)> =
                cases.iter().map(|c| (c.reference, c.point)).collect();
            previous = Some(points);
            let mut obj = Objective {
                cases: &mut cases,
                refs,
                phase,
                specs: &specs,
                skip: None,
                evaluations: 0,
            };
            if round == 0 {
                obj.scan(&mut u);
            }
            obj.levenberg_marquardt(&mut u, 100);
            evaluations += obj.evaluations;
        }
        // Which factors the rows depend on, with the last choices held.
        let x = xs(&u);
        let base: Vec<Vec<f64>> = cases
            .iter_mut()
            .map(|c| c.predict(phase, &specs, &x, refs))
            .collect();
        let mut sensitive = vec![0usize; specs.len()];
        for (j, s) in specs.iter().enumerate() {
            let mut y = x.clone();
            y[j] = if x[j] > 0.0 {
                x[j] * 0.99
            } else {
                s.scale * QUANTITY_FLOOR * 1e3
            };
            for (c, b) in cases.iter_mut().zip(&base) {
                let p = c.predict(phase, &specs, &y, refs);
                evaluations += 1;
                sensitive[j] += p
                    .iter()
                    .zip(b)
                    .filter(|(p, b)| {
                        // A change, or a figure that is not a number.
                        let d = ((*p - *b) / *b).abs();
                        d.is_nan() || d > 1e-9
                    })
                    .count();
            }
        }
        let fitted: Vec<f64> = specs
            .iter()
            .zip(&x)
            .zip(&sensitive)
            .map(|((s, x), n)| if *n > 0 { round_sig(*x) } else { s.current })
            .collect();
        // The in-sample predictions: a full search at the written values.
        let (mut cases, bad) = search_group(refs, &members, phase, &specs, &fitted, &mut searches);
        let points: Vec<(usize, DesignPoint)> =
            cases.iter().map(|c| (c.reference, c.point)).collect();
        stable = stable && previous.as_ref() == Some(&points);
        failed.extend(bad);
        // Leave one plan out: refit from the full fit, predict by search.
        let u_full: Vec<f64> = specs.iter().zip(&fitted).map(|(s, x)| s.u(*x)).collect();
        let mut loo: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        if cases.len() > 1 {
            for k in 0..cases.len() {
                let mut v = u_full.clone();
                let mut obj = Objective {
                    cases: &mut cases,
                    refs,
                    phase,
                    specs: &specs,
                    skip: Some(k),
                    evaluations: 0,
                };
                obj.levenberg_marquardt(&mut v, 50);
                evaluations += obj.evaluations;
                // Factors no row depends on keep their declared values.
                let y: Vec<f64> = specs
                    .iter()
                    .zip(&v)
                    .zip(&sensitive)
                    .map(|((s, v), n)| if *n > 0 { s.x(*v) } else { s.current })
                    .collect();
                let r = cases[k].reference;
                searches += 1;
                if let Ok(f) = searched_figures(&refs[r], phase, &specs, &y) {
                    loo.insert(r, f);
                }
            }
        }
        let mut group_rows = Vec::new();
        let mut loo_errors = Vec::new();
        // The worst in-sample error of the figures that have a left-out one.
        let mut ins_worst = 0.0f64;
        for c in &cases {
            let i = c.reference;
            for (m, ((metric, published), value)) in
                refs[i].expect.iter().zip(&c.figures).enumerate()
            {
                let l = loo.get(&i).map(|f| f[m]);
                if let Some(l) = l {
                    loo_errors.push(rel_error(l, *published));
                    ins_worst = ins_worst.max(rel_error(*value, *published).abs());
                }
                group_rows.push(rows.len());
                rows.push(FitRow {
                    reference: i,
                    metric: metric.clone(),
                    published: *published,
                    current: current.get(&i).map_or(f64::NAN, |v| v[m]),
                    in_sample: *value,
                    loo: l,
                });
            }
        }
        let loo = band(&loo_errors, ins_worst);
        groups.push(Group {
            device,
            phase,
            device_file: first.device_file.clone(),
            factors: specs
                .iter()
                .zip(&fitted)
                .zip(&sensitive)
                .map(|((s, v), n)| Factor {
                    name: s.name.clone(),
                    dim: s.dim,
                    current: s.current,
                    fitted: *v,
                    sensitive: *n,
                    is_fitted: *n > 0,
                })
                .collect(),
            rows: group_rows,
            loo,
        });
    }
    let ef = crate::engine_fit::fit_engines(refs, &engine_refs);
    let base = rows.len();
    rows.extend(ef.rows);
    let engines = ef
        .groups
        .into_iter()
        .map(|mut g| {
            for r in g.rows.iter_mut() {
                *r += base;
            }
            g
        })
        .collect();
    failed.extend(ef.failed.into_iter().map(|f| Failed {
        reference: f.reference,
        error: f.error,
    }));
    failed.sort_by_key(|f| f.reference);
    failed.dedup_by_key(|f| f.reference);
    Fit {
        groups,
        engines,
        rows,
        failed,
        stable,
        held_mismatch,
        searches,
        evaluations,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Why a device's record could not be rewritten (`C018`).
#[derive(Clone, Debug, PartialEq)]
pub struct RewriteError(pub String);

/// The `kind` declaration named `name` in `src` (`what` names the kind in
/// the error), for the record rewriters: the file must parse cleanly.
pub(crate) fn declared_block(
    src: &str,
    kind: gantry_lang::ast::DeclKind,
    what: &str,
    name: &str,
) -> Result<gantry_lang::ast::BlockDecl, RewriteError> {
    use gantry_lang::ast::Decl;
    let parsed = gantry_lang::parser::parse(src, gantry_lang::span::FileId(0));
    if parsed.diagnostics.iter().any(|d| d.is_error()) {
        return Err(RewriteError("the file has syntax errors".into()));
    }
    parsed
        .file
        .decls
        .into_iter()
        .find_map(|d| match d {
            Decl::Block(b) if b.kind == kind && b.name.name == name => Some(b),
            _ => None,
        })
        .ok_or_else(|| RewriteError(format!("the file declares no {what} `{name}`")))
}

/// Rewrites the `phase = { ... }` field of device `device`'s `efficiency`
/// record in `src` to hold `entries` (name, value as written) under a
/// `// comment` line, adding the field when the record has none; the rest
/// of the file, comments included, is kept, and the result is formatted
/// with the project's formatter.
pub fn rewrite_record(
    src: &str,
    device: &str,
    phase: &str,
    entries: &[(String, String)],
    comment: &str,
) -> Result<String, RewriteError> {
    use gantry_lang::ast::{DeclKind, ExprKind};
    let fail = |m: String| Err(RewriteError(m));
    let block = declared_block(src, DeclKind::Device, "device", device)?;
    let Some(item) = block.items.iter().find(|i| i.key.name == "efficiency") else {
        return fail(format!("device `{device}` has no `efficiency` record"));
    };
    let ExprKind::Record(fields) = &item.value.kind else {
        return fail(format!(
            "the `efficiency` of device `{device}` is not written as a record"
        ));
    };
    let mut body = format!("{phase} = {{\n// {comment}\n");
    for (k, v) in entries {
        body.push_str(&format!("{k} = {v}\n"));
    }
    body.push('}');
    let (start, end) = match fields.iter().find(|f| f.name.name == phase) {
        Some(f) => (f.name.span.start as usize, f.value.span.end as usize),
        None => {
            let close = (item.value.span.end as usize).saturating_sub(1);
            if src.as_bytes().get(close) != Some(&b'}') {
                return fail(format!(
                    "cannot find the end of device `{device}`'s `efficiency` record"
                ));
            }
            body = format!("\n{body}\n");
            (close, close)
        }
    };
    let (Some(before), Some(after)) = (src.get(..start), src.get(end..)) else {
        return fail("the record's span is not on character boundaries".into());
    };
    let text = format!("{before}{body}{after}");
    gantry_lang::fmt::format_source(&text).or_else(|d| {
        fail(format!(
            "the rewritten file does not parse ({} syntax errors)",
            d.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_three_significant_digits_as_read_back() {
        assert_eq!(round_sig(0.78349), 0.783);
        assert_eq!(round_sig(0.78351), 0.784);
        assert_eq!(round_sig(5_163_456_789.0), 5.16e9);
        assert_eq!(round_sig(0.003_481_2), 0.00348);
        assert_eq!(round_sig(16.0), 16.0);
        assert_eq!(round_sig_up(0.42749), 0.428);
        assert_eq!(round_sig_up(0.427), 0.427);
        assert_eq!(round_sig_up(0.0999), 0.0999);
        assert_eq!(round_sig_up(0.09991), 0.1);
        assert_eq!(round_sig_up(2.3801), 2.39);
        assert_eq!(round_sig(0.0), 0.0);
        // What the lexer reads back from the written text.
        assert_eq!(round_sig(0.0419_4), "0.0419".parse::<f64>().unwrap_or(0.0));
    }

    #[test]
    fn solves_small_systems_and_refuses_singular_ones() {
        let x = solve(vec![vec![2.0, 1.0, 5.0], vec![1.0, 3.0, 10.0]]).unwrap_or_default();
        assert!(
            (x[0] - 1.0).abs() < 1e-12 && (x[1] - 3.0).abs() < 1e-12,
            "{x:?}"
        );
        assert_eq!(solve(vec![vec![1.0, 2.0, 1.0], vec![2.0, 4.0, 2.0]]), None);
    }

    const DEVICE: &str = "// A device.\ndevice G {\n  compute { bf16 = 1 TFLOP/s }\n  // Calibration.\n  efficiency {\n    memory = 0.5  // streaming\n    train = {\n      // old comment\n      matmul = 0.7\n    }\n  }\n  power 1 W  // trailing\n}\n";

    fn entries() -> Vec<(String, String)> {
        vec![
            ("matmul".into(), "0.731".into()),
            ("step_overhead".into(), "3.48 ms".into()),
            ("fit_rows".into(), "38".into()),
        ]
    }

    #[test]
    fn rewrites_the_phase_record_and_keeps_the_rest() {
        let out = rewrite_record(DEVICE, "G", "train", &entries(), "written by a test")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(out.contains("    train = {\n      // written by a test\n      matmul = 0.731\n      step_overhead = 3.48 ms\n      fit_rows = 38\n    }\n"), "{out}");
        assert!(
            !out.contains("old comment") && !out.contains("matmul = 0.7\n"),
            "{out}"
        );
        for kept in [
            "// A device.",
            "// Calibration.",
            "memory = 0.5  // streaming",
            "power 1 W  // trailing",
        ] {
            assert!(out.contains(kept), "{kept} lost:\n{out}");
        }
        assert_eq!(
            gantry_lang::fmt::format_source(&out).as_deref(),
            Ok(out.as_str())
        );
        // A phase the record lacks is added; the other one stays.
        let infer = rewrite_record(&out, "G", "infer", &entries(), "again")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(infer.contains("infer = {\n      // again\n"), "{infer}");
        assert!(infer.contains("// written by a test"), "{infer}");
        // Rewriting with the same values changes nothing.
        let twice = rewrite_record(&infer, "G", "infer", &entries(), "again")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(twice, infer);
    }

    #[test]
    fn refuses_what_it_cannot_rewrite() {
        let e = |src: &str, dev: &str| rewrite_record(src, dev, "train", &entries(), "c").err();
        assert!(e(DEVICE, "H").is_some_and(|e| e.0.contains("no device `H`")));
        let bare = "device G {\n  compute { bf16 = 1 TFLOP/s }\n}\n";
        assert!(e(bare, "G").is_some_and(|e| e.0.contains("no `efficiency`")));
        assert!(
            e("device G {\n  efficiency = 0.5\n}\n", "G")
                .is_some_and(|e| e.0.contains("not written as a record"))
        );
        assert!(e("device G {", "G").is_some_and(|e| e.0.contains("syntax")));
    }
}
