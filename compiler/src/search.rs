//! The outer search: enumerate meshes and knobs, prune by a sound memory
//! bound (never above the evaluated memory: `compiler/tests/search_bound.rs`),
//! evaluate every surviving point with the cost model, keep the best K.
//!
//! The space is the product of every knob's domain (the plan's `search`
//! domains, its `fix` pins, or the defaults below). A point whose memory
//! bound ([`Evaluator::memory_floor`]: the evaluator's own memory function
//! with the activation terms at their minimum, so never above the evaluated
//! memory) exceeds HBM is not evaluated: it cannot fit, so nothing feasible
//! is lost. Every other point is evaluated (the cost model takes about a
//! microsecond), so the answer is exact within the space and the
//! optimality gap is 0; the report says so, what the gap is measured
//! against, and how many points went which way ([`Stats`]).

use std::collections::BTreeMap;

use gantry_lang::program::{Cmp, Constraint, Domain, Goal, MetricExpr, Phase, Plan};

use crate::cost::{Estimate, Evaluator};
use crate::hardware::Hardware;
use crate::ir::Ir;
use crate::point::{Pin, PinError, Recompute};

/// Candidate values of each knob.
#[derive(Clone, Debug, PartialEq)]
pub struct Space {
    /// Whether the plan itself constrains sequence parallelism.
    pub sp_open: bool,
    pub tp: Vec<i64>,
    pub cp: Vec<i64>,
    pub pp: Vec<i64>,
    pub ep: Vec<i64>,
    pub dp: Option<Vec<i64>>,
    pub zero: Vec<i64>,
    pub recompute: Vec<&'static str>,
    pub microbatch: Option<Vec<i64>>,
    /// `None`: `auto` (the default in training): on `pp` stages every `v`
    /// with `v x pp <= layers` ([`max_virtual_stages`]), `v > 1` only where
    /// the microbatches per replica are a multiple of `pp` (Megatron-LM's
    /// interleaved schedule); other points are not in the space.
    pub virtual_stages: Option<Vec<i64>>,
    pub sequence_parallel: Vec<bool>,
    pub batch: Option<Vec<i64>>,
    /// Layers of the pipelined repeat (what bounds `auto` virtual stages).
    pub layers: i64,
    /// The ZeRO group (`shard` knob): `None` is every dp x cp rank, the
    /// default; with `shard_auto` every divisor of dp x cp (HSDP) where
    /// ZeRO is on.
    pub shard: Option<Vec<i64>>,
    pub shard_auto: bool,
    /// Devices of the system (bounds the `auto` shard count estimate).
    pub devices: i64,
}

/// The divisors of `n`, ascending (`n >= 1`).
fn divisors(n: i64) -> Vec<i64> {
    let mut small = Vec::new();
    let mut large = Vec::new();
    let mut d = 1;
    while d * d <= n {
        if n % d == 0 {
            small.push(d);
            if d * d != n {
                large.push(n / d);
            }
        }
        d += 1;
    }
    small.extend(large.into_iter().rev());
    small
}

/// The most virtual stages `auto` tries on `pp` stages of `layers`
/// layers: every chunk holds at least one layer (`v x pp <= layers`);
/// without a pipeline there is nothing to interleave (1).
pub fn max_virtual_stages(pp: i64, layers: i64) -> i64 {
    if pp <= 1 { 1 } else { (layers / pp).max(1) }
}

/// The most design points a search space may hold: 1,000,000. The search
/// is exhaustive, and a point costs about 5 us (release) to resolve and
/// price or reject, so this bounds a search to a few seconds; the largest bundled space
/// (examples/dlrm_inference.gantry) holds 261,124. A larger space is
/// refused with `C011` before anything is evaluated.
pub const MAX_SPACE_POINTS: usize = 1_000_000;

/// The most values one knob's domain may hold (a `search tp in 1..N`
/// range included): 65,536, the bundled DLRM plans search `batch in
/// 256..65536`. Longer ranges are refused with `C011` before they are
/// enumerated (and the e-graph extracts once per `tp` value).
pub const MAX_DOMAIN_VALUES: usize = 65_536;

impl Space {
    /// The number of points (saturating: an over-large space reads as
    /// `usize::MAX`, never wraps).
    pub fn size(&self) -> usize {
        [
            self.tp.len(),
            self.cp.len(),
            self.pipelines(),
            self.ep.len(),
            self.dp.as_ref().map_or(1, |v| v.len()),
            self.zero.len(),
            self.recompute.len(),
            self.microbatch.as_ref().map_or(4, |v| v.len()),
            self.sequence_parallel.len(),
            self.batch.as_ref().map_or(1, |v| v.len()),
            self.shard_values(),
        ]
        .into_iter()
        .fold(1usize, |a, n| a.saturating_mul(n))
    }

    /// Pairs of pipeline stages and virtual stages (`auto`: at most
    /// [`max_virtual_stages`] per `pp`; saturating).
    fn pipelines(&self) -> usize {
        match &self.virtual_stages {
            Some(v) => self.pp.len().saturating_mul(v.len()),
            None => self.pp.iter().fold(0usize, |a, &p| {
                a.saturating_add(max_virtual_stages(p, self.layers) as usize)
            }),
        }
    }

    /// Values the `shard` knob takes (`auto`: the divisors of the device
    /// count, an estimate: dp x cp is at most the devices).
    fn shard_values(&self) -> usize {
        match (&self.shard, self.shard_auto) {
            (_, true) => divisors(self.devices.max(1)).len(),
            (Some(v), _) => v.len(),
            (None, _) => 1,
        }
    }

    /// Values the `virtual_stages` knob takes (`auto`: the most on any
    /// `pp` of the space).
    fn virtual_stage_values(&self) -> usize {
        match &self.virtual_stages {
            Some(v) => v.len(),
            None => self
                .pp
                .iter()
                .map(|&p| max_virtual_stages(p, self.layers) as usize)
                .max()
                .unwrap_or(1),
        }
    }

    /// Refuses a space over [`MAX_SPACE_POINTS`], or a knob over
    /// [`MAX_DOMAIN_VALUES`] values, naming the largest knob.
    pub fn check_size(&self) -> Result<(), PinError> {
        let knobs: [(&'static str, usize); 9] = [
            ("shard", self.shard_values()),
            ("tp", self.tp.len()),
            ("cp", self.cp.len()),
            ("pp", self.pp.len()),
            ("ep", self.ep.len()),
            ("virtual_stages", self.virtual_stage_values()),
            ("dp", self.dp.as_ref().map_or(1, |v| v.len())),
            (
                "microbatch",
                self.microbatch.as_ref().map_or(1, |v| v.len()),
            ),
            ("batch", self.batch.as_ref().map_or(1, |v| v.len())),
        ];
        let (knob, n) = knobs
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .unwrap_or(("search", 0));
        if n > MAX_DOMAIN_VALUES {
            return Err(too_large(
                knob,
                format!(
                    "`{knob}` ranges over more than {MAX_DOMAIN_VALUES} values (the limit per knob)"
                ),
            ));
        }
        let size = self.size();
        if size > MAX_SPACE_POINTS {
            return Err(too_large(
                knob,
                format!(
                    "the search space holds {} design points, more than the limit of {MAX_SPACE_POINTS} (`{knob}` alone has {n} values)",
                    if size == usize::MAX {
                        "too many".to_string()
                    } else {
                        size.to_string()
                    }
                ),
            ));
        }
        Ok(())
    }
}

fn too_large(knob: &'static str, message: String) -> PinError {
    PinError {
        code: gantry_lang::diagnostic::Code::C011,
        knob,
        message,
        help: "narrow the `search` ranges, use sets of chosen values (`tp in {1, 2, 4, 8}`) or pin knobs with --pin".into(),
    }
}

/// The values of an integer domain, at most [`MAX_DOMAIN_VALUES`] + 1 of
/// them (one more than the limit, so [`Space::check_size`] sees it is
/// over): a range is never enumerated past the limit.
pub fn domain_values(d: &Domain) -> Option<Vec<i64>> {
    match d {
        Domain::Ints(v) => Some(v.iter().copied().take(MAX_DOMAIN_VALUES + 1).collect()),
        Domain::IntRange(a, b) => Some((*a..=*b).take(MAX_DOMAIN_VALUES + 1).collect()),
        _ => None,
    }
}

fn ints(d: Option<&Domain>, default: Vec<i64>) -> Vec<i64> {
    d.and_then(domain_values).unwrap_or(default)
}

fn pow2_upto(n: i64) -> Vec<i64> {
    let mut v = Vec::new();
    let mut x: i64 = 1;
    while x <= n.max(1) {
        v.push(x);
        let Some(next) = x.checked_mul(2) else { break };
        x = next;
    }
    v
}

/// Builds the search space of a plan (with extra pins from the command line).
pub fn space(plan: &Plan, ir: &Ir, overrides: &BTreeMap<String, Pin>) -> Space {
    let mut fixed: BTreeMap<String, Domain> = plan.fixed.clone();
    for (k, v) in overrides {
        let d = match v {
            Pin::Int(i) => Domain::Ints(vec![*i]),
            Pin::Choice(c) => Domain::Choices(vec![c.clone()]),
            Pin::Bool(b) => Domain::Bools(vec![*b]),
        };
        fixed.insert(k.clone(), d);
    }
    let get = |k: &str| fixed.get(k).or_else(|| plan.search.get(k));
    let heads = ir
        .segments
        .iter()
        .flat_map(|s| s.ops.iter())
        .find_map(|o| o.heads)
        .map_or(1, |(h, _)| h as i64);
    let experts = ir
        .segments
        .iter()
        .flat_map(|s| s.ops.iter())
        .find_map(|o| o.experts)
        .map_or(1, |(e, _)| e as i64);
    let per_node = plan.system.node.devices_per_node as i64;
    let layers = ir.layers().max(1) as i64;
    let training = matches!(ir.phase, Phase::Train { .. });
    let tp_default: Vec<i64> = pow2_upto(per_node.min(heads))
        .into_iter()
        .filter(|t| heads % t == 0)
        .collect();
    let recompute: Vec<&'static str> = match get("recompute") {
        Some(Domain::Choices(v)) => v
            .iter()
            .filter_map(|c| Recompute::parse(c).map(|r| r.name()))
            .collect(),
        _ if training => vec!["none", "selective", "full"],
        _ => vec!["none"],
    };
    let sequence_parallel = match get("sequence_parallel") {
        Some(Domain::Bools(v)) => v.clone(),
        _ if training => vec![false, true],
        _ => vec![false],
    };
    // Left open by the plan: the e-graph decides per tensor-parallel degree.
    Space {
        sp_open: get("sequence_parallel").is_none(),
        tp: ints(get("tp"), tp_default),
        cp: ints(get("cp"), vec![1]),
        pp: ints(
            get("pp"),
            if training {
                (1..=layers.min(64)).collect()
            } else {
                vec![1]
            },
        ),
        ep: ints(
            get("ep"),
            if experts > 1 {
                pow2_upto(experts)
                    .into_iter()
                    .filter(|e| experts % e == 0)
                    .collect()
            } else {
                vec![1]
            },
        ),
        dp: match get("dp") {
            Some(Domain::Auto) | None => None,
            Some(d) => Some(ints(Some(d), vec![])),
        },
        zero: ints(get("zero"), if training { vec![0, 1, 3] } else { vec![0] }),
        recompute,
        microbatch: match get("microbatch") {
            Some(Domain::Auto) | None => None,
            Some(d) => Some(ints(Some(d), vec![1])),
        },
        virtual_stages: match get("virtual_stages") {
            Some(Domain::Auto) | None if training => None,
            d => Some(ints(d, vec![1])),
        },
        sequence_parallel,
        batch: match get("batch") {
            Some(Domain::Auto) | None => None,
            Some(d) => Some(ints(Some(d), vec![])),
        },
        layers,
        shard: match get("shard") {
            Some(Domain::Auto) | None => None,
            Some(d) => Some(ints(Some(d), vec![])),
        },
        shard_auto: matches!(get("shard"), Some(Domain::Auto)) && training,
        devices: plan.system.devices() as i64,
    }
}

/// A mesh: tp, pp, cp, dp, ep.
type Mesh = (i64, i64, i64, i64, i64);

/// Why the search stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Every point was evaluated or pruned by a sound bound.
    Exhausted,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Exhausted => "exhausted (every point evaluated or pruned by a sound bound)",
        }
    }
}

/// What became of each enumerated point; `space` is their number and
/// equals `redundant + egraph + invalid + pruned + evaluated`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub space: usize,
    /// Evaluated with the cost model (feasible or not).
    pub evaluated: usize,
    /// Pruned by the memory bound alone: [`Evaluator::memory_floor`]
    /// exceeds HBM, so the point cannot fit.
    pub pruned: usize,
    /// The mesh exceeds the devices, or the pins do not resolve (degrees
    /// that do not divide the devices, heads, experts, layers or batch).
    pub invalid: usize,
    /// Of `evaluated`, over HBM or violating a `subject to` constraint.
    pub infeasible: usize,
    /// A knob with no effect at this mesh (virtual stages without a
    /// pipeline, sequence parallelism without tensor parallelism).
    pub redundant: usize,
    /// Sequence parallelism other than the e-graph's choice for this tp
    /// (where the plan leaves it open); not bounded, so the answer is
    /// exact only with the e-graph's choice.
    pub egraph: usize,
    /// Of `evaluated`, feasible but not run by the plan's `target`
    /// framework (its export refuses the point).
    pub off_target: usize,
}

impl Stats {
    /// What the optimality gap is measured against.
    pub fn gap_to(&self) -> &'static str {
        if self.egraph > 0 {
            "the best feasible point of the space with the e-graph's sequence-parallel choice per tp (exhaustive)"
        } else {
            "the best feasible point of the space (exhaustive)"
        }
    }
}

/// The tightest reason nothing fitted, for the empty-set diagnostic.
/// [`Tightest::what`] when the embedding tables placed in host memory
/// exceed the node's host memory.
pub const HOST_TABLES: &str = "host memory (the embedding tables placed there)";

#[derive(Clone, Debug, PartialEq)]
pub struct Tightest {
    pub estimate: Estimate,
    /// Needed / available.
    pub ratio: f64,
    pub what: String,
}

/// The mesh that came closest to fitting among those the memory bound pruned.
#[derive(Clone, Debug, PartialEq)]
pub struct PrunedMesh {
    pub tp: i64,
    pub pp: i64,
    pub cp: i64,
    pub dp: i64,
    /// The memory bound per device ([`Evaluator::memory_floor`]): weights,
    /// gradients, optimizer state, the tables' share and the reserve.
    pub bound: f64,
    pub capacity: f64,
}

pub struct Outcome {
    /// The gap of the best point to the optimum of [`Stats::gap_to`]: 0,
    /// since every point is evaluated or shown not to fit.
    pub optimality_gap: f64,
    /// The best point on a mesh (tp, pp, cp, dp, ep) other than the winner's.
    pub runner_up: Option<Estimate>,
    pub pruned_closest: Option<PrunedMesh>,
    pub top: Vec<Estimate>,
    pub stats: Stats,
    pub stop: StopReason,
    pub tightest: Option<Tightest>,
    pub first_error: Option<PinError>,
    /// The first feasible point the plan's `target` framework cannot run,
    /// with the export's reason (counted in [`Stats::off_target`]).
    pub off_target: Option<(Estimate, crate::export::ExportError)>,
}

fn metric_value(m: &MetricExpr, e: &Estimate) -> Option<f64> {
    Some(match m {
        MetricExpr::Const(q) => q.value,
        MetricExpr::Metric(n) => e.metric(n)?,
        MetricExpr::Neg(a) => -metric_value(a, e)?,
        MetricExpr::Binary(op, a, b) => {
            let (x, y) = (metric_value(a, e)?, metric_value(b, e)?);
            match op {
                '+' => x + y,
                '-' => x - y,
                '*' => x * y,
                _ => x / y,
            }
        }
    })
}

/// Whether `e` meets a constraint, and by how much it misses (lhs / rhs).
pub fn meets(c: &Constraint, e: &Estimate) -> (bool, f64) {
    // A metric the point does not have never meets a constraint (the
    // planner refuses such constraints up front, `C015`).
    let (Some(l), Some(r)) = (metric_value(&c.lhs, e), metric_value(&c.rhs, e)) else {
        return (false, f64::INFINITY);
    };
    let ok = match c.cmp {
        Cmp::Lt => l < r,
        Cmp::Le => l <= r,
        Cmp::Gt => l > r,
        Cmp::Ge => l >= r,
    };
    let ratio = match c.cmp {
        Cmp::Lt | Cmp::Le => l / r,
        Cmp::Gt | Cmp::Ge => r / l,
    };
    (ok, ratio)
}

/// The `subject to` text of each of `constraints` that `e` misses
/// (`memory <= (0.9 * hbm)`), in declaration order.
pub fn missed(constraints: &[Constraint], e: &Estimate) -> Vec<String> {
    constraints
        .iter()
        .filter(|c| !meets(c, e).0)
        .map(constraint_text)
        .collect()
}

/// A constraint as the user wrote it, fully parenthesized.
pub fn constraint_text(c: &Constraint) -> String {
    fn expr(m: &MetricExpr) -> String {
        match m {
            MetricExpr::Const(q) => q.to_string(),
            MetricExpr::Metric(n) => n.clone(),
            MetricExpr::Neg(a) => format!("-{}", expr(a)),
            MetricExpr::Binary(op, a, b) => format!("({} {op} {})", expr(a), expr(b)),
        }
    }
    let op = match c.cmp {
        Cmp::Lt => "<",
        Cmp::Le => "<=",
        Cmp::Gt => ">",
        Cmp::Ge => ">=",
    };
    format!("{} {op} {}", expr(&c.lhs), expr(&c.rhs))
}

/// Objective value, oriented so that larger is better.
pub fn score(plan: &Plan, e: &Estimate) -> f64 {
    let v = e.metric(&plan.objective.1).unwrap_or(f64::NAN);
    if plan.objective.0 == Goal::Maximize {
        v
    } else {
        -v
    }
}

/// Runs the search; `k` is how many of the best points to keep.
/// `sp_by_tp`, when given, is the e-graph's choice of sequence parallelism
/// for each tensor-parallel degree, used where the plan leaves it open.
///
/// Every enumerated point is counted once, under the first of: redundant
/// (a knob that does nothing at this mesh), set aside by the e-graph's
/// sequence-parallel choice, invalid (the mesh exceeds the devices, or
/// [`crate::point::resolve_knobs`] rejects the knobs), pruned by the memory bound
/// ([`Evaluator::memory_floor`] above HBM), evaluated (then feasible or
/// infeasible).
pub fn run(
    plan: &Plan,
    ir: &Ir,
    hw: &Hardware,
    prefill: Option<&Ir>,
    sp: &Space,
    k: usize,
    sp_by_tp: Option<&BTreeMap<i64, bool>>,
) -> Outcome {
    let ev = Evaluator { ir, hw, prefill };
    // Segment costs are shared by the points that differ only in dp, pp,
    // ZeRO or virtual stages.
    let _memo = crate::cost::memoize_segments();
    let devices = plan.system.devices() as i64;
    let mut stats = Stats::default();
    let mut top: Vec<(f64, Estimate)> = Vec::new();
    let mut tightest: Option<Tightest> = None;
    let mut first_error = None;
    let mut off_target = None;
    let mut pruned_closest: Option<PrunedMesh> = None;
    let mut per_mesh: BTreeMap<Mesh, (f64, Estimate)> = BTreeMap::new();
    let global = ir.samples_per_step() as i64;
    let training = matches!(ir.phase, Phase::Train { .. });
    let batches: Vec<Option<i64>> = match &sp.batch {
        Some(v) => v.iter().map(|b| Some(*b)).collect(),
        None => vec![None],
    };
    // The memory bound depends on (tp, pp, cp, dp, ep, zero, shard) only.
    type FloorKey = (u64, u64, u64, u64, u64, u8, u64);
    let mut floors: BTreeMap<FloorKey, f64> = BTreeMap::new();
    for &tp in &sp.tp {
        for &cp in &sp.cp {
            for &pp in &sp.pp {
                // Degrees from the input: an overflowing product is no mesh.
                let mesh = tp
                    .checked_mul(cp)
                    .and_then(|m| m.checked_mul(pp))
                    .filter(|m| *m >= 1)
                    .unwrap_or(i64::MAX);
                let fits = mesh <= devices;
                let dps: Vec<i64> = match &sp.dp {
                    Some(v) => v.clone(),
                    None if fits => vec![devices / mesh],
                    None => vec![0],
                };
                for dp in dps {
                    let mbs: Vec<i64> = match &sp.microbatch {
                        Some(v) => v.clone(),
                        None if !training || !fits || dp <= 0 => vec![1],
                        None => {
                            let per = (global / dp.max(1)).max(1);
                            let mut v: Vec<i64> = pow2_upto(per.min(16))
                                .into_iter()
                                .filter(|m| per % m == 0)
                                .collect();
                            if pp == 1 && !v.contains(&per) {
                                v.push(per);
                            }
                            v
                        }
                    };
                    // Virtual stages per microbatch: `auto` leaves out what
                    // the layers or Megatron-LM's interleaving rule forbid.
                    let vss: Vec<Vec<i64>> = mbs
                        .iter()
                        .map(|&mb| match &sp.virtual_stages {
                            Some(v) => v.clone(),
                            None => {
                                let per_step = dp.checked_mul(mb).filter(|x| *x > 0);
                                let interleaves = per_step.is_some_and(|x| {
                                    global % x == 0 && (global / x) % pp.max(1) == 0
                                });
                                let most = if interleaves {
                                    max_virtual_stages(pp, sp.layers)
                                } else {
                                    1
                                };
                                (1..=most).collect()
                            }
                        })
                        .collect();
                    for &ep in &sp.ep {
                        for &zero in &sp.zero {
                            // The ZeRO group sizes with each batch: every
                            // dp x cp rank (the default), the plan's
                            // values, or every divisor (`auto`, with ZeRO).
                            let group = dp.saturating_mul(cp).max(1);
                            let shards: Vec<Option<i64>> = match &sp.shard {
                                _ if sp.shard_auto && zero >= 1 && fits && dp > 0 => {
                                    divisors(group).into_iter().map(Some).collect()
                                }
                                Some(v) => v.iter().map(|x| Some(*x)).collect(),
                                None => vec![None],
                            };
                            let batch_shards: Vec<(Option<i64>, Option<i64>)> = batches
                                .iter()
                                .flat_map(|b| shards.iter().map(move |s| (*b, *s)))
                                .collect();
                            for rc in &sp.recompute {
                                for (&mb, vs) in mbs.iter().zip(&vss) {
                                    for &v in vs {
                                        for &seqp in &sp.sequence_parallel {
                                            for &(b, shard) in &batch_shards {
                                                stats.space += 1;
                                                if (v > 1 && pp == 1)
                                                    || (seqp && tp == 1)
                                                    || (zero == 0
                                                        && shard.is_some_and(|s| s != group))
                                                {
                                                    stats.redundant += 1;
                                                    continue;
                                                }
                                                if let Some(choice) =
                                                    sp_by_tp.and_then(|m| m.get(&tp))
                                                    && *choice != seqp
                                                {
                                                    stats.egraph += 1;
                                                    continue;
                                                }
                                                if !fits {
                                                    stats.invalid += 1;
                                                    continue;
                                                }
                                                // Typed knobs: no pin map per point.
                                                let knobs = crate::point::Knobs {
                                                    tp: Some(tp),
                                                    cp: Some(cp),
                                                    pp: Some(pp),
                                                    dp: Some(dp),
                                                    ep: Some(ep),
                                                    zero: Some(zero),
                                                    microbatch: Some(mb),
                                                    virtual_stages: Some(v),
                                                    recompute: Some(
                                                        Recompute::parse(rc)
                                                            .unwrap_or(Recompute::None),
                                                    ),
                                                    sequence_parallel: Some(seqp),
                                                    batch: b,
                                                    shard,
                                                };
                                                let point = match crate::point::resolve_knobs(
                                                    &knobs,
                                                    ir,
                                                    &plan.system,
                                                ) {
                                                    Ok(p) => p,
                                                    Err(e) => {
                                                        stats.invalid += 1;
                                                        first_error.get_or_insert(e);
                                                        continue;
                                                    }
                                                };
                                                // Sound memory bound: the evaluated
                                                // memory with its activation terms at
                                                // their minimum.
                                                let key = (
                                                    point.tp,
                                                    point.pp,
                                                    point.cp,
                                                    point.dp,
                                                    point.ep,
                                                    point.zero,
                                                    point.shard,
                                                );
                                                let bound =
                                                    *floors.entry(key).or_insert_with(|| {
                                                        ev.memory_floor(&point).total()
                                                    });
                                                if bound > hw.hbm_capacity {
                                                    stats.pruned += 1;
                                                    if pruned_closest.as_ref().is_none_or(
                                                        |m: &PrunedMesh| bound < m.bound,
                                                    ) {
                                                        pruned_closest = Some(PrunedMesh {
                                                            tp,
                                                            pp,
                                                            cp,
                                                            dp: point.dp as i64,
                                                            bound,
                                                            capacity: hw.hbm_capacity,
                                                        });
                                                    }
                                                    continue;
                                                }
                                                let e = ev.evaluate(&point);
                                                // A result that is not a meaningful
                                                // number is never ranked (issue 11):
                                                // counted invalid, and its reason is
                                                // the one reported if nothing is left.
                                                if let Err(err) = crate::sanity::verify(&e, hw) {
                                                    stats.invalid += 1;
                                                    if first_error.as_ref().is_none_or(
                                                        |f: &PinError| {
                                                            !crate::sanity::is_result_error(f.code)
                                                        },
                                                    ) {
                                                        first_error = Some(err);
                                                    }
                                                    continue;
                                                }
                                                stats.evaluated += 1;
                                                // Feasibility: HBM, then the plan's constraints.
                                                let mut worst: Option<(f64, String)> = None;
                                                if !e.feasible {
                                                    // The tables a node's devices keep in
                                                    // host memory, or the device's HBM.
                                                    let host = crate::cost::host_tables_per_node(
                                                        &e.memory, e.devices, hw,
                                                    );
                                                    worst = Some(if host > hw.host_capacity {
                                                        (
                                                            host / hw
                                                                .host_capacity
                                                                .max(f64::MIN_POSITIVE),
                                                            HOST_TABLES.into(),
                                                        )
                                                    } else {
                                                        (
                                                            e.memory.total() / e.memory.capacity,
                                                            "memory per device exceeds HBM".into(),
                                                        )
                                                    });
                                                }
                                                for c in &plan.constraints {
                                                    let (ok, ratio) = meets(c, &e);
                                                    if !ok
                                                        && worst
                                                            .as_ref()
                                                            .is_none_or(|w| ratio < w.0)
                                                    {
                                                        worst = Some((
                                                            ratio,
                                                            "a `subject to` constraint".into(),
                                                        ));
                                                    }
                                                }
                                                if let Some((ratio, what)) = worst {
                                                    stats.infeasible += 1;
                                                    if tightest
                                                        .as_ref()
                                                        .is_none_or(|t| ratio < t.ratio)
                                                    {
                                                        tightest = Some(Tightest {
                                                            estimate: e,
                                                            ratio,
                                                            what,
                                                        });
                                                    }
                                                    continue;
                                                }
                                                if let Some(t) = &plan.target
                                                    && let Err(why) = crate::export::runs(
                                                        t,
                                                        &e,
                                                        ir,
                                                        &plan.workload,
                                                    )
                                                {
                                                    stats.off_target += 1;
                                                    if off_target.is_none() {
                                                        off_target = Some((e, why));
                                                    }
                                                    continue;
                                                }
                                                let s = score(plan, &e);
                                                if !s.is_finite() {
                                                    continue;
                                                }
                                                let mesh = (tp, pp, cp, dp, ep);
                                                match per_mesh.get(&mesh) {
                                                    Some((best, _)) if *best >= s => {}
                                                    _ => {
                                                        per_mesh.insert(mesh, (s, e.clone()));
                                                    }
                                                }
                                                if top.len() < k || s > top[top.len() - 1].0 {
                                                    let pos = top.partition_point(|(x, _)| *x >= s);
                                                    top.insert(pos, (s, e));
                                                    top.truncate(k);
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let winner = top.first().map(|(_, e)| {
        (
            e.point.tp as i64,
            e.point.pp as i64,
            e.point.cp as i64,
            e.point.dp as i64,
            e.point.ep as i64,
        )
    });
    let runner_up = per_mesh
        .into_iter()
        .filter(|(m, _)| Some(*m) != winner)
        .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
        .map(|(_, (_, e))| e);
    Outcome {
        optimality_gap: 0.0,
        runner_up,
        pruned_closest,
        top: top.into_iter().map(|(_, e)| e).collect(),
        stats,
        stop: StopReason::Exhausted,
        tightest,
        first_error,
        off_target,
    }
}
