//! Fitting serving engines' terms to the serving reference rows
//! (`gantry calibrate --fit`, section S), and rewriting an `engine NAME {
//! ... }` record (`--write`).
//!
//! An engine's terms (docs/COST-MODEL.md §4a: host time per iteration and
//! per scheduled sequence, decode-attention efficiency) are fitted on the
//! serving rows whose workload declares that engine, one plan (one
//! reference-file entry) per row. The device factors stay the cost model's
//! fit (`fit.rs`); only the engine moves, so the serving rows never bend
//! the offline ones.
//!
//! The simulator is not linear (nor smooth: a request moves between
//! iterations) in the terms, so the fit is a deterministic derivative-free
//! search on the mean |ln(predicted / published)| over the engine's
//! figures (robust to the few rows the data file flags): forward selection
//! from the ideal engine. At each step every term not yet selected is
//! scanned on a grid and refined with the selected ones by a pattern
//! search; the candidates that lower the objective by at least
//! [`MIN_GAIN`] (half a percent of mean |ln error|) with no selected term
//! at an end of its search range are tried in order of the objective they
//! reach, and the first that also lowers the leave-one-out objective
//! ([`Problem::loo_objective`]) by [`MIN_GAIN`] is selected: a term that
//! fits the rows better but predicts a left-out row no better is fitting
//! their noise. A term that is not selected is not identified by the rows
//! and is left at its ideal default (and not written). Each plan's deployment and
//! requests are built once with the cost model's probes; an evaluation
//! applies the terms to the iteration model ([`IterModel::with_engine`],
//! the formula `timing::build` applies) and re-simulates, and evaluations
//! are memoised by the terms' bits, so the leave-one-out refits, which
//! start from the full fit, share their first steps.
//!
//! Leave-one-out leaves out one row (plan) at a time: the selected terms
//! are refined on the engine's other rows from the full fit and the row is
//! predicted with them. The term selection is made once, on all rows (its
//! leave-one-out test sees every row, so the reported band is not a
//! nested cross-validation's).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use gantry_lang::program::{Engine, Serve};
use gantry_lang::units::{Dim, Quantity};
use rayon::prelude::*;

use crate::fit::{FitRow, Reference, round_sig, round_sig_up};
use crate::point::PinError;
use crate::serve::Request;
use crate::serve::sim::Deployment;
use crate::serve::timing::EngineTerms;

/// The least absolute drop of the objective (mean |ln error|) a term must
/// bring to be selected.
pub const MIN_GAIN: f64 = 0.005;
/// The refinement stops below this multiplicative step (ln 1.01).
const MIN_STEP: f64 = 0.01;
/// The re-fit of the selected terms at each point of a scan stops below
/// this step (about 10%).
const COARSE_STEP: f64 = 0.1;
/// A residual for a prediction that is not a positive finite number.
const BAD_RESIDUAL: f64 = 30.0;
/// Points of each term's scan besides its default.
const SCAN_POINTS: usize = 13;

/// The terms, in the order the language lists them, with the log-space
/// range the search explores (`lo`, `hi`) and whether 0 is the default
/// (host times) or 1 (an efficiency).
const TERMS: [(&str, Dim, f64, f64); 5] = [
    ("iteration_overhead", Dim::TIME, 1e-6, 0.1),
    ("seq_overhead", Dim::TIME, 1e-7, 0.01),
    ("kv_efficiency", Dim::NONE, 0.01, 1.0),
    ("request_overhead", Dim::TIME, 1e-5, 0.1),
    ("frontend_time", Dim::TIME, 1e-5, 0.1),
];

type Theta = [f64; TERMS.len()];

/// Figures by (case, the terms' bits).
type Memo = HashMap<(usize, [u64; TERMS.len()]), Vec<f64>>;

fn terms(t: &Theta) -> EngineTerms {
    EngineTerms {
        iteration_overhead: t[0],
        seq_overhead: t[1],
        kv_efficiency: t[2],
        request_overhead: t[3],
        frontend_time: t[4],
    }
}

const IDEAL: Theta = [0.0, 0.0, 1.0, 0.0, 0.0];

/// Whether any of the terms `on` sits at an end of its range in `t` (an
/// efficiency left at its default 1, the top of its range, does not).
fn at_edge(t: &Theta, on: &[usize]) -> bool {
    on.iter().any(|&j| {
        let (_, _, lo, hi) = TERMS[j];
        t[j] != IDEAL[j] && (t[j] >= hi * (1.0 - 1e-9) || (t[j] > 0.0 && t[j] <= lo * (1.0 + 1e-9)))
    })
}

/// A term's value as the language writes it.
fn term_text(x: f64, dim: Dim) -> String {
    if dim.is_none() {
        gantry_lang::units::format_number(x)
    } else {
        Quantity::new(x, dim).to_string()
    }
}

/// The value the checker reads from `text` (a number with its unit).
pub fn read_back(text: &str) -> Option<f64> {
    let c = gantry_lang::check::check_source("read_back.gantry", &format!("let v = {text}\n"));
    c.program.constants.get("v").map(|q| q.value)
}

/// One term of a fitted engine.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub name: &'static str,
    pub dim: Dim,
    /// The value the engine declares now (its default when it does not).
    pub current: f64,
    /// The fit's value, rounded to 3 significant digits (the default when
    /// not selected).
    pub fitted: f64,
    /// Whether the rows identify it (selected by the forward selection).
    pub selected: bool,
    /// The drop of the objective when it was added (0: not selected; for
    /// an unselected term, the drop it would have brought).
    pub gain: f64,
    /// Not selected because its best value lies at an end of its search
    /// range (the rows ask for more than any value identifies).
    pub at_edge: bool,
    /// The drop of the leave-one-out objective when the term was last
    /// tried ([`Problem::loo_objective`]); `None` when it never was (its
    /// in-sample drop was below [`MIN_GAIN`], or it sat at an edge).
    pub loo_gain: Option<f64>,
}

impl Term {
    /// The fitted value as the language writes it.
    pub fn text(&self) -> String {
        term_text(self.fitted, self.dim)
    }
}

/// The fit of one engine.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineGroup {
    pub engine: String,
    /// The file that declares the engine (for `--write`).
    pub engine_file: String,
    pub terms: Vec<Term>,
    /// Indices into [`crate::fit::Fit::rows`].
    pub rows: Vec<usize>,
    /// Plans (rows of the fit) and the leave-one-out |relative error|
    /// median and worst over their figures; the worst is at least the
    /// worst in-sample error of those figures (the band bounds the rows
    /// it was fitted on).
    pub plans: usize,
    pub loo: Option<(f64, f64)>,
    /// The objective (mean |ln error|) at the ideal engine and at the fit.
    pub objective_ideal: f64,
    pub objective: f64,
    /// Simulations run (memoised ones counted once).
    pub simulations: usize,
    /// References (indices) of the engine's rows left out of the fit
    /// because their published figures miss Little's law
    /// ([`inexpressible`]), with the miss; their figures are in `rows`
    /// (in-sample = predicted with the fit) without a leave-one-out one.
    pub left_out: Vec<(usize, f64)>,
}

impl EngineGroup {
    /// The entries `--write` puts in the record: the selected terms, then
    /// `fit_rows`, `loo_median`, `loo_max`.
    pub fn record(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .terms
            .iter()
            .filter(|t| t.selected)
            .map(|t| (t.name.to_string(), t.text()))
            .collect();
        out.push(("fit_rows".into(), self.plans.to_string()));
        if let Some((m, x)) = self.loo {
            let f = |v: f64| gantry_lang::units::format_number(v);
            out.push(("loo_median".into(), f(round_sig(m))));
            out.push(("loo_max".into(), f(round_sig_up(x))));
        }
        out
    }
}

/// One plan with its deployment and requests built once.
struct Case {
    reference: usize,
    deployment: Deployment,
    requests: Vec<Request>,
    serve: Serve,
    metrics: Vec<String>,
    published: Vec<f64>,
    /// False for a row left out of the fit ([`inexpressible`]).
    fitted: bool,
}

impl Case {
    fn figures(&self, t: &Theta) -> Vec<f64> {
        let e = terms(t);
        let mut d = self.deployment;
        d.prefill_model = d.prefill_model.with_engine(e);
        d.decode_model = d.decode_model.with_engine(e);
        let s = crate::serve::run_with(&d, &self.requests, &self.serve, u64::MAX);
        self.metrics
            .iter()
            .map(|m| s.metric(m).unwrap_or(f64::NAN))
            .collect()
    }
}

/// The mean over cases' (sum, count) pairs, summed in order (0 if none).
fn mean_of(per: &[(f64, usize)]) -> f64 {
    let (s, n) = per
        .iter()
        .fold((0.0, 0usize), |(s, n), (a, b)| (s + a, n + b));
    if n == 0 { 0.0 } else { s / n as f64 }
}

fn residual(predicted: f64, published: f64) -> f64 {
    let r = (predicted / published).ln();
    if r.is_finite() {
        r.abs().min(BAD_RESIDUAL)
    } else {
        BAD_RESIDUAL
    }
}

/// The cases of one engine and a memo of their figures by terms.
struct Problem {
    cases: Vec<Case>,
    memo: Mutex<Memo>,
}

impl Problem {
    fn figures(&self, k: usize, t: &Theta) -> Vec<f64> {
        let key = (k, t.map(f64::to_bits));
        if let Some(v) = self.memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return v;
        }
        let v = self.cases[k].figures(t);
        if let Ok(mut m) = self.memo.lock() {
            m.insert(key, v.clone());
        }
        v
    }

    /// Mean |ln(predicted / published)| over the figures of every case
    /// but `skip` (cases simulated in parallel, summed in order).
    fn objective(&self, t: &Theta, skip: Option<usize>) -> f64 {
        let per: Vec<(f64, usize)> = (0..self.cases.len())
            .into_par_iter()
            .filter(|k| Some(*k) != skip && self.cases[*k].fitted)
            .map(|k| self.residuals(k, t))
            .collect();
        mean_of(&per)
    }

    /// The sum of case `k`'s |ln error| at `t`, and its figures.
    fn residuals(&self, k: usize, t: &Theta) -> (f64, usize) {
        let f = self.figures(k, t);
        let sum = f
            .iter()
            .zip(&self.cases[k].published)
            .map(|(p, q)| residual(*p, *q))
            .sum::<f64>();
        (sum, f.len())
    }

    /// The best value of term `j` on its grid (and its default), the
    /// selected terms `on` re-fitted at each value by a coarse pattern
    /// search from `t` (a term that only helps when the others move with
    /// it, as a per-sequence time that a smaller fixed time makes room
    /// for, is found); the first of equals.
    fn scan(&self, t: &Theta, j: usize, on: &[usize], step: f64) -> (Theta, f64) {
        let (_, _, lo, hi) = TERMS[j];
        let mut best = (*t, self.objective(t, None));
        let mut cands = vec![IDEAL[j]];
        for i in 0..SCAN_POINTS {
            let f = i as f64 / (SCAN_POINTS - 1) as f64;
            cands.push(lo * (hi / lo).powf(f));
        }
        for x in cands {
            let mut v = *t;
            v[j] = x;
            let (v, c) = self.refine_to(&v, on, step, COARSE_STEP, None);
            if c < best.1 {
                best = (v, c);
            }
        }
        best
    }

    /// Pattern search in log space over the terms `on` from `t`: each
    /// term is multiplied and divided by `e^step` in turn and a move kept
    /// when it lowers the objective; the step halves when no move does.
    fn refine(&self, t: &Theta, on: &[usize], step: f64, skip: Option<usize>) -> (Theta, f64) {
        self.refine_to(t, on, step, MIN_STEP, skip)
    }

    /// [`Problem::refine`], stopping below the step `min_step`.
    fn refine_to(
        &self,
        t: &Theta,
        on: &[usize],
        step: f64,
        min_step: f64,
        skip: Option<usize>,
    ) -> (Theta, f64) {
        let mut t = *t;
        let mut best = self.objective(&t, skip);
        let mut step = step;
        while step >= min_step && !on.is_empty() {
            let mut moved = false;
            for &j in on {
                let (_, _, lo, hi) = TERMS[j];
                for dir in [1.0, -1.0] {
                    let x = if t[j] > 0.0 { t[j] } else { lo };
                    let mut v = t;
                    v[j] = (x * (dir * step).exp()).clamp(lo, hi);
                    if v == t {
                        continue;
                    }
                    let c = self.objective(&v, skip);
                    if c < best {
                        t = v;
                        best = c;
                        moved = true;
                        break;
                    }
                }
            }
            if !moved {
                step /= 2.0;
            }
        }
        (t, best)
    }

    /// The leave-one-out objective of the terms `on` from `t`: each fitted
    /// case left out in turn, the terms refined on the others from `t`
    /// (as the reported leave-one-out does), and the mean |ln error| of
    /// the left-out case's figures over all of them. With fewer than two
    /// fitted cases nothing can be left out: the in-sample objective.
    fn loo_objective(&self, t: &Theta, on: &[usize], step: f64) -> f64 {
        let ks: Vec<usize> = (0..self.cases.len())
            .filter(|&k| self.cases[k].fitted)
            .collect();
        if ks.len() < 2 || on.is_empty() {
            return self.objective(t, None);
        }
        let per: Vec<(f64, usize)> = ks
            .par_iter()
            .map(|&k| {
                let (v, _) = self.refine(t, on, step, Some(k));
                self.residuals(k, &v)
            })
            .collect();
        mean_of(&per)
    }

    fn simulations(&self) -> usize {
        self.memo.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// A plan of an engine's rows that could not be simulated.
#[derive(Clone, Debug)]
pub struct EngineFailed {
    pub reference: usize,
    pub error: PinError,
}

/// What [`fit_engines`] returns: the groups (engine name order), their
/// rows (the group's `rows` index into these, offset by the caller) and
/// the plans left out.
pub struct EngineFit {
    pub groups: Vec<EngineGroup>,
    pub rows: Vec<FitRow>,
    pub failed: Vec<EngineFailed>,
}

fn unpinned(r: &Reference) -> PinError {
    PinError {
        code: gantry_lang::diagnostic::Code::C034,
        knob: "search",
        message: format!(
            "plan `{}` searches its deployment; an engine is fitted on serving plans that pin it (`fix tp = ..., dp = ..., batch = ...`)",
            r.plan.name
        ),
        help: "pin the deployment the published run used".into(),
    }
}

fn case(i: usize, r: &Reference) -> Result<Case, PinError> {
    if !r.plan.search.is_empty() {
        return Err(unpinned(r));
    }
    // The deployment without the engine: the fit applies its terms.
    let mut plan = r.plan.clone();
    let Some(serve) = plan.workload.serve.as_deref_mut() else {
        return Err(unpinned(r));
    };
    serve.engine = None;
    let serve = serve.clone();
    let pins = crate::serve::planner::plan_pins(&plan)?;
    let (deployment, requests) = crate::serve::planner::fixed_deployment(&plan, &pins, None)?;
    Ok(Case {
        reference: i,
        deployment,
        requests,
        serve,
        metrics: r.expect.iter().map(|(m, _)| m.clone()).collect(),
        published: r.expect.iter().map(|(_, v)| *v).collect(),
        fitted: !inexpressible(&r.plan),
    })
}

/// How far a closed loop's published figures may miss Little's law
/// (`clients = throughput x mean latency`) before the row is left out of
/// the fit: the simulator conserves it, so no engine term can match a row
/// that does not (section C's 8k disaggregated rows miss it by 24% and
/// 33%, the others by at most 3%; ../shared/data/serving-runs.md).
pub const LITTLE_TOLERANCE: f64 = 0.1;

/// The relative miss of Little's law by a closed-loop serving plan's
/// published `throughput` and `e2e_mean` (`None`: not a closed loop, or
/// not both figures published).
pub fn little_miss(plan: &gantry_lang::program::Plan) -> Option<f64> {
    let s = plan.workload.serve.as_deref()?;
    let clients = match s.arrivals {
        gantry_lang::program::Arrivals::Closed { concurrency } => concurrency as f64,
        _ => return None,
    };
    let thr = plan.expect.get("throughput")?.value;
    let e2e = plan.expect.get("e2e_mean")?.value;
    Some((thr * e2e / clients - 1.0).abs())
}

/// Whether a serving plan's published figures contradict the simulator's
/// conservation (Little's law beyond [`LITTLE_TOLERANCE`]): such a row is
/// reported, not fitted, and `gantry test` leaves it unchecked.
pub fn inexpressible(plan: &gantry_lang::program::Plan) -> bool {
    little_miss(plan).is_some_and(|m| m > LITTLE_TOLERANCE)
}

/// The engine a reference's workload declares.
pub fn engine_of(r: &Reference) -> Option<&Engine> {
    r.plan.workload.serve.as_ref()?.engine.as_ref()
}

/// Fits every engine that the serving references `members` (indices into
/// `refs`) declare (see the module docs).
pub fn fit_engines(refs: &[Reference], members: &[usize]) -> EngineFit {
    let mut by_engine: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &i in members {
        if let Some(e) = engine_of(&refs[i]) {
            by_engine.entry(e.name.clone()).or_default().push(i);
        }
    }
    let mut out = EngineFit {
        groups: Vec::new(),
        rows: Vec::new(),
        failed: Vec::new(),
    };
    for (name, idx) in by_engine {
        let mut cases = Vec::new();
        for &i in &idx {
            match case(i, &refs[i]) {
                Ok(c) => cases.push(c),
                Err(error) => out.failed.push(EngineFailed {
                    reference: i,
                    error,
                }),
            }
        }
        let Some(first) = cases.first() else {
            continue;
        };
        let declared = engine_of(&refs[first.reference]).cloned();
        let engine_file = refs[first.reference]
            .engine_file
            .clone()
            .unwrap_or_default();
        let problem = Problem {
            cases,
            memo: Mutex::new(HashMap::new()),
        };
        let (group, rows) = fit_one(&problem, &name, engine_file, declared.as_ref(), refs);
        let base = out.rows.len();
        out.groups.push(EngineGroup {
            rows: (base..base + rows.len()).collect(),
            ..group
        });
        out.rows.extend(rows);
    }
    out
}

fn fit_one(
    p: &Problem,
    name: &str,
    engine_file: String,
    declared: Option<&Engine>,
    refs: &[Reference],
) -> (EngineGroup, Vec<FitRow>) {
    let objective_ideal = p.objective(&IDEAL, None);
    // Forward selection from the ideal engine: candidates in order of the
    // in-sample objective they reach; the first whose leave-one-out
    // objective is lower by MIN_GAIN too is taken.
    let mut t = IDEAL;
    let mut j_now = objective_ideal;
    let mut loo_now = objective_ideal;
    let mut on: Vec<usize> = Vec::new();
    let mut gains = [0.0f64; TERMS.len()];
    let mut loo_gains: [Option<f64>; TERMS.len()] = [None; TERMS.len()];
    let mut edge = [false; TERMS.len()];
    let first_step = (0.1f64.ln() - 1e-6f64.ln()) / (SCAN_POINTS - 1) as f64 / 2.0;
    loop {
        let mut cands: Vec<(usize, Theta, f64)> = Vec::new();
        for (j, gain) in gains.iter_mut().enumerate() {
            if on.contains(&j) {
                continue;
            }
            let (s, _) = p.scan(&t, j, &on, first_step);
            let mut with = on.clone();
            with.push(j);
            let (v, c) = p.refine(&s, &with, first_step, None);
            *gain = j_now - c;
            // A term that lands on an end of its range says only "more"
            // (or "less"): the rows do not identify it, and a value the
            // range's end sets would stand in for what the model lacks.
            edge[j] = at_edge(&v, &with);
            if !edge[j] && j_now - c >= MIN_GAIN {
                cands.push((j, v, c));
            }
        }
        cands.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
        let mut taken = false;
        for (j, v, c) in cands {
            // A term that fits the rows better but predicts a left-out
            // row no better is fitting the rows' noise.
            let mut with = on.clone();
            with.push(j);
            with.sort_unstable();
            let l = p.loo_objective(&v, &with, first_step / 2.0);
            loo_gains[j] = Some(loo_now - l);
            if loo_now - l >= MIN_GAIN {
                on = with;
                t = v;
                j_now = c;
                loo_now = l;
                taken = true;
                break;
            }
        }
        if !taken {
            break;
        }
    }
    // Written values: 3 significant digits, as the checker reads the
    // written text back (`470 us` is 470 x 1e-6, not 4.7e-4 to the last
    // bit); unselected terms ideal.
    let mut fitted = IDEAL;
    for &j in &on {
        let x = round_sig(t[j]);
        fitted[j] = read_back(&term_text(x, TERMS[j].1)).unwrap_or(x);
    }
    let objective = p.objective(&fitted, None);
    // Leave one row out: refine the selected terms on the others.
    let n = p.cases.iter().filter(|c| c.fitted).count();
    let loo: Vec<Option<Vec<f64>>> = (0..p.cases.len())
        .map(|k| {
            (n > 1 && p.cases[k].fitted).then(|| {
                let (v, _) = p.refine(&fitted, &on, first_step / 2.0, Some(k));
                p.cases[k].figures(&v)
            })
        })
        .collect();
    let current = EngineTerms::of(declared);
    let current_t: Theta = [
        current.iteration_overhead,
        current.seq_overhead,
        current.kv_efficiency,
        current.request_overhead,
        current.frontend_time,
    ];
    let mut rows = Vec::new();
    let mut loo_err = Vec::new();
    // The worst in-sample error of the figures that have a left-out one.
    let mut ins_worst = 0.0f64;
    for (k, c) in p.cases.iter().enumerate() {
        let now = p.figures(k, &current_t);
        let ins = p.figures(k, &fitted);
        for (m, metric) in c.metrics.iter().enumerate() {
            let l = loo[k].as_ref().map(|f| f[m]);
            if let Some(l) = l {
                loo_err.push(crate::fit::rel_error(l, c.published[m]));
                ins_worst = ins_worst.max(crate::fit::rel_error(ins[m], c.published[m]).abs());
            }
            rows.push(FitRow {
                reference: c.reference,
                metric: metric.clone(),
                published: c.published[m],
                current: now[m],
                in_sample: ins[m],
                loo: l,
            });
        }
    }
    let terms = TERMS
        .iter()
        .enumerate()
        .map(|(j, (name, dim, ..))| Term {
            name,
            dim: *dim,
            current: current_t[j],
            fitted: fitted[j],
            selected: on.contains(&j),
            gain: gains[j].max(0.0),
            at_edge: edge[j] && !on.contains(&j),
            loo_gain: loo_gains[j],
        })
        .collect();
    let group = EngineGroup {
        engine: name.to_string(),
        engine_file,
        terms,
        rows: Vec::new(),
        plans: n,
        loo: crate::fit::band(&loo_err, ins_worst),
        objective_ideal,
        objective,
        simulations: p.simulations(),
        left_out: p
            .cases
            .iter()
            .filter(|c| !c.fitted)
            .map(|c| {
                (
                    c.reference,
                    little_miss(&refs[c.reference].plan).unwrap_or(0.0),
                )
            })
            .collect(),
    };
    (group, rows)
}

/// Why an engine's record could not be rewritten (`C034`): the device
/// records' error type.
pub use crate::fit::RewriteError;

/// Rewrites the body of `engine NAME { ... }` in `src` to hold `entries`
/// (name, value as written) under a `// comment` line; the rest of the
/// file, comments above the declaration included, is kept, and the result
/// is formatted with the project's formatter.
pub fn rewrite_engine(
    src: &str,
    engine: &str,
    entries: &[(String, String)],
    comment: &str,
) -> Result<String, RewriteError> {
    use gantry_lang::ast::DeclKind;
    let fail = |m: String| Err(RewriteError(m));
    let block = crate::fit::declared_block(src, DeclKind::Engine, "engine", engine)?;
    let from = block.name.span.end as usize;
    let end = block.span.end as usize;
    let open = src
        .get(from..end)
        .and_then(|t| t.find('{'))
        .map(|o| from + o + 1);
    let close = end
        .checked_sub(1)
        .filter(|c| src.as_bytes().get(*c) == Some(&b'}'));
    let (Some(open), Some(close)) = (open, close) else {
        return fail(format!("cannot find the body of engine `{engine}`"));
    };
    let mut body = format!("\n// {comment}\n");
    for (k, v) in entries {
        body.push_str(&format!("{k} = {v}\n"));
    }
    let (Some(before), Some(after)) = (src.get(..open), src.get(close..)) else {
        return fail("the engine's span is not on character boundaries".into());
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
    /// A term whose best value is an end of its search range is a
    /// stand-in, not a measurement: `at_edge` says so for either end, for
    /// any selected term, and not for an efficiency left at its default.
    #[test]
    fn a_term_at_an_end_of_its_range_is_not_identified() {
        assert!(at_edge(&[0.1, 0.0, 1.0, 0.0, 0.0], &[0]));
        assert!(!at_edge(&[0.01, 0.0, 1.0, 0.0, 0.0], &[0]));
        assert!(at_edge(&[1e-6, 0.0, 1.0, 0.0, 0.0], &[0]));
        assert!(at_edge(&[0.0, 0.0, 1.0, 0.1, 0.0], &[3]));
        assert!(!at_edge(&[0.0, 0.0, 1.0, 0.0085, 0.0], &[0, 3]));
        assert!(at_edge(&[0.005, 0.0, 1.0, 0.1, 0.0], &[0, 3]));
        assert!(!at_edge(&IDEAL, &[2]));
        assert!(at_edge(&[0.0, 0.0, 0.01, 0.0, 0.0], &[2]));
        assert!(at_edge(&[0.0, 0.0, 1.0, 0.0, 0.1], &[4]));
    }

    use super::*;

    const SRC: &str = "// Engines.\n\n// The one.\nengine E {\n  iteration_overhead = 1 ms\n  fit_rows = 2\n}\n\nengine F {\n}\n";

    #[test]
    fn rewrites_the_engine_body_and_keeps_the_rest() {
        let entries = vec![
            ("seq_overhead".to_string(), "40 us".to_string()),
            ("fit_rows".to_string(), "4".to_string()),
        ];
        let out = rewrite_engine(SRC, "E", &entries, "written by a test")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(
            out.contains(
                "engine E {\n  // written by a test\n  seq_overhead = 40 us\n  fit_rows = 4\n}\n"
            ),
            "{out}"
        );
        assert!(!out.contains("iteration_overhead"), "{out}");
        assert!(out.contains("// The one.\nengine E") && out.contains("engine F {"));
        // An empty engine takes its first record; a rewrite is idempotent.
        let f = rewrite_engine(&out, "F", &entries, "again").unwrap_or_else(|e| panic!("{e:?}"));
        assert!(
            f.contains("engine F {\n  // again\n  seq_overhead = 40 us\n"),
            "{f}"
        );
        assert_eq!(
            rewrite_engine(&f, "F", &entries, "again").as_deref(),
            Ok(f.as_str())
        );
        let checked = gantry_lang::check::check_source("e.gantry", &f);
        assert!(!checked.has_errors(), "{}", checked.render(false));
        assert_eq!(
            Some(checked.program.engines["F"].seq_overhead),
            read_back("40 us")
        );
        assert!((checked.program.engines["F"].seq_overhead - 40e-6).abs() < 1e-18);
        assert!(rewrite_engine(SRC, "G", &entries, "c").is_err());
        assert!(rewrite_engine("engine E {", "E", &entries, "c").is_err());
    }
}
