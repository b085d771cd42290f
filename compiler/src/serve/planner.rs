//! Planning a serving deployment: the cheapest configuration that meets
//! the SLOs at the workload's rate.
//!
//! Candidates are colocated (tp, replicas, max_seqs) and disaggregated
//! (prefill tp and replicas, decode tp and replicas, max_seqs) within the
//! system's devices. Goodput never exceeds the arrival rate, so a
//! candidate's goodput per dollar is at most `rate / price`: candidates are
//! simulated in order of devices and price, and once one meets the SLOs,
//! a candidate whose bound cannot beat it is never simulated. A candidate
//! whose work cannot be done at the rate even with perfect batching
//! (tokens times the per-token compute, decode iterations times the
//! weight read) is unstable without simulation. Every simulation replays
//! the same requests.
//!
//! A workload with a batching window (recommendation inference) has its
//! own candidates: replicas of one device, the largest batch and the
//! window (the workload's `max_wait`, half, a quarter, none), priced by
//! [`build_batched`] and simulated and ranked by the same loop.

use std::collections::{BTreeMap, HashSet};

use gantry_lang::diagnostic::Code;
use gantry_lang::program::{Batching, Disaggregate, Domain, Goal, Plan, Serve};

use super::report::{Summary, describe, summarize};
use super::sample::{Request, requests};
use super::scheduler::Limits;
use super::sim::Deployment;
use super::timing::{IterModel, build, build_batched};
use crate::point::PinError;

/// The most simulations one plan runs (the rest are reported as not
/// simulated).
pub const MAX_SIMULATIONS: usize = 400;
/// The most requests one plan simulates over all its deployments (the
/// rest are reported as not simulated): a simulation takes 0.5 to 2 us
/// per request (release, one core), so about a minute at most. A
/// workload's own `requests` go up to 10^7 (5 to 17 s and 750 MB per
/// simulation): such a plan simulates its 4 cheapest stable deployments,
/// where 400 of them took hours; the default 2000 leave the 400
/// simulations unbounded by it.
pub const MAX_SIMULATED_REQUESTS: u64 = 40_000_000;
/// The most deployments one plan enumerates (C011 above).
pub const MAX_CANDIDATES: usize = 100_000;

fn error(code: Code, knob: &'static str, message: String, help: &str) -> PinError {
    PinError {
        code,
        knob,
        message,
        help: help.into(),
    }
}

/// What the plan ranks deployments by (its objective, read as goodput).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rank {
    Goodput,
    PerDollar,
    PerWatt,
}

impl Rank {
    pub fn name(self) -> &'static str {
        match self {
            Rank::Goodput => "goodput",
            Rank::PerDollar => "goodput per dollar",
            Rank::PerWatt => "goodput per watt",
        }
    }
    pub fn value(self, s: &Summary) -> f64 {
        match self {
            Rank::Goodput => s.goodput,
            Rank::PerDollar => s.goodput_per_dollar.unwrap_or(0.0),
            Rank::PerWatt => s.goodput / s.power.max(f64::MIN_POSITIVE),
        }
    }
    /// An upper bound of [`Self::value`] for a deployment, before simulating.
    fn bound(self, d: &Deployment, rate: f64) -> f64 {
        let s = summarize_bound(d);
        match self {
            Rank::Goodput => rate,
            Rank::PerDollar => s.0.map_or(0.0, |p| rate / p),
            Rank::PerWatt => rate / s.1.max(f64::MIN_POSITIVE),
        }
    }
}

fn summarize_bound(d: &Deployment) -> (Option<f64>, f64) {
    let (p, w) = if d.disaggregated() {
        (
            d.prefill_model
                .price_per_s
                .zip(d.decode_model.price_per_s)
                .map(|(a, b)| d.prefill as f64 * a + d.decode as f64 * b),
            d.prefill as f64 * d.prefill_model.power + d.decode as f64 * d.decode_model.power,
        )
    } else {
        (
            d.prefill_model.price_per_s.map(|a| d.colocated as f64 * a),
            d.colocated as f64 * d.prefill_model.power,
        )
    };
    (p.filter(|x| *x > 0.0), w)
}

/// A serving plan's result.
#[derive(Clone, Debug)]
pub struct ServePlan {
    pub best: Summary,
    /// The best few, best first.
    pub top: Vec<Summary>,
    pub rank: Rank,
    pub candidates: usize,
    pub simulated: usize,
    pub unstable_unsimulated: usize,
    pub pruned: usize,
    /// Deployments not simulated because the plan reached
    /// [`MAX_SIMULATIONS`] or [`MAX_SIMULATED_REQUESTS`].
    pub limited: usize,
    /// Disaggregated deployments not simulated because their prefill
    /// pool was already seen to miss the TTFT target or overflow.
    pub prefill_pruned: usize,
    pub requests: Vec<Request>,
    /// Iteration models by tensor-parallel degree.
    pub models: BTreeMap<u64, IterModel>,
    /// Pipelined iteration models by (tp, pp), pp above 1: the plan's
    /// `pp` domain (colocated deployments only; empty without one).
    pub pipelines: BTreeMap<(u64, u64), IterModel>,
    /// Why nothing cheaper was chosen: of the simulated deployments on
    /// fewer devices than the best that miss the SLOs (or are unstable),
    /// the closest to meeting them (its `binding` names what fails).
    pub cheaper: Option<Summary>,
}

fn ints(d: Option<&Domain>, auto: Vec<i64>) -> Vec<u64> {
    let v = match d {
        Some(Domain::Auto) | None => auto,
        Some(d) => crate::search::domain_values(d).unwrap_or(auto),
    };
    let mut v: Vec<u64> = v
        .into_iter()
        .filter(|x| *x >= 1)
        .map(|x| x as u64)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn domain<'a>(p: &'a Plan, k: &str) -> Option<&'a Domain> {
    p.fixed.get(k).or_else(|| p.search.get(k))
}

/// Pipeline degrees the plan allows: its `pp` domain (`auto`: 1), else 1.
fn pp_degrees(p: &Plan) -> Vec<u64> {
    ints(domain(p, "pp"), vec![1])
}

/// The objective as a ranking; `subject to` is not for serving plans
/// (their constraints are the workload's SLOs).
fn rank_of(p: &Plan) -> Result<Rank, PinError> {
    if !p.constraints.is_empty() {
        return Err(error(
            Code::C015,
            "subject to",
            format!(
                "plan `{}` serves a `serve` workload: its constraints are the workload's SLOs, and `subject to` is not used",
                p.name
            ),
            "state latency targets in the workload's `slo = { ... }` and remove `subject to`",
        ));
    }
    match (p.objective.0, p.objective.1.as_str()) {
        (Goal::Maximize, "throughput" | "samples_per_s") => Ok(Rank::Goodput),
        (Goal::Maximize, "throughput_per_dollar") => Ok(Rank::PerDollar),
        (Goal::Maximize, "throughput_per_watt") => Ok(Rank::PerWatt),
        (g, m) => Err(error(
            Code::C015,
            "objective",
            format!(
                "plan `{}` serves a `serve` workload, which ranks by goodput: `{} {m}` is not one of its objectives",
                p.name,
                if g == Goal::Maximize {
                    "maximize"
                } else {
                    "minimize"
                }
            ),
            "use `objective maximize throughput_per_dollar` (goodput per dollar), `throughput` or `throughput_per_watt`",
        )),
    }
}

/// Seconds of work `d` must do for `reqs` at best, per replica of the
/// busiest pool, with perfect batching: a lower bound of the run's length.
pub(super) fn work_bound(d: &Deployment, reqs: &[Request], hit: f64) -> f64 {
    if d.limits.window.is_some() {
        // Batches of at most `token_budget` items, each paying the fixed
        // time and at least max(weights, items x per item):
        // sum >= k t_fixed + max(k t_weights, items c_token), k >= items / budget.
        let m = &d.prefill_model;
        let items: f64 = reqs.iter().map(|r| r.prompt as f64).sum();
        let k = (items / d.limits.token_budget.max(1) as f64).ceil();
        return (k * m.t_fixed + (k * m.t_weights).max(items * m.c_token))
            / d.colocated.max(1) as f64;
    }
    let (mut pre, mut gen_tokens, mut steps) = (0.0, 0.0, 0.0);
    for r in reqs {
        let cached = (hit * r.prompt as f64).floor().min(r.prompt as f64 - 1.0);
        pre += r.prompt as f64 - cached;
        gen_tokens += r.generate as f64;
        steps += (r.generate as f64 - 1.0).max(0.0);
    }
    let ms = d.limits.max_seqs as f64;
    // Every decode step is one sequence of one iteration, each paying
    // `c_seq` (the first token's prefill iteration is not counted).
    let decode_time = |m: &IterModel, tokens: f64| {
        steps * m.c_seq
            + (tokens * (m.c_token + m.c_comm)).max(steps / ms * (m.t_fixed + m.t_weights))
    };
    if d.disaggregated() {
        let p = &d.prefill_model;
        let tp = pre * (p.c_token + p.c_comm) / d.prefill as f64;
        let td = decode_time(&d.decode_model, gen_tokens) / d.decode as f64;
        tp.max(td)
    } else {
        let m = &d.prefill_model;
        let own = ((pre + gen_tokens) * (m.c_token + m.c_comm)).max(decode_time(m, gen_tokens))
            / d.colocated as f64;
        if m.pp > 1 {
            // A pipeline's virtual engines take turns on its one host
            // (`sim.rs`): its host parts alone, per pipeline.
            let pipelines = d.colocated as f64 / m.pp as f64;
            own.max((steps * m.host_seq + steps / ms * m.host_fixed) / pipelines)
        } else {
            own
        }
    }
}

/// Replica counts to try for a pool of at most `max` replicas: the
/// plan's `dp` domain, or every count up to 16 and then powers of two
/// and `max` (a domain of more than 32 values is thinned the same way),
/// so that a large system does not make the disaggregated pairs explode.
fn replica_counts(d: Option<&Domain>, max: u64) -> Vec<u64> {
    let mut thin: Vec<u64> = (1..=max.min(16)).collect();
    let mut k = 32;
    while k < max {
        thin.push(k);
        k *= 2;
    }
    if max > 16 {
        thin.push(max);
    }
    let v: Vec<u64> = match d {
        Some(Domain::Auto) | None => thin.clone(),
        Some(d) => ints(Some(d), Vec::new()),
    };
    let mut v: Vec<u64> = v.into_iter().filter(|r| *r <= max).collect();
    if v.len() > 32 {
        v.retain(|r| thin.contains(r));
    }
    v
}

/// Token budgets to try: the plan's `token_budget` domain (powers of two
/// when wider than 16 values), else the workload's.
fn budgets(p: &Plan, s: &Serve) -> Vec<u64> {
    let mut v = ints(
        domain(p, "token_budget"),
        vec![s.scheduler.token_budget as i64],
    );
    if v.len() > 16 {
        let top = v.last().copied();
        v.retain(|b| b.is_power_of_two());
        v.extend(top);
        v.dedup();
    }
    v
}

/// Chunked prefill on, off or both: the plan's `chunked_prefill` domain
/// (`auto`: both), else the workload's.
fn chunking(p: &Plan, s: &Serve) -> Vec<bool> {
    match domain(p, "chunked_prefill") {
        Some(Domain::Bools(v)) if !v.is_empty() => {
            let mut v = v.clone();
            v.sort_unstable_by_key(|b| !*b);
            v.dedup();
            v
        }
        Some(Domain::Auto) => vec![true, false],
        _ => vec![s.scheduler.chunked_prefill],
    }
}

/// Knobs of the disaggregated pools: each pool's tensor parallelism and
/// replicas (`dp` then sizes colocated deployments only).
const POOL_KNOBS: [&str; 4] = ["prefill_tp", "prefill_dp", "decode_tp", "decode_dp"];

/// The candidate deployments of `p` (unordered).
fn candidates(
    p: &Plan,
    s: &Serve,
    models: &BTreeMap<u64, IterModel>,
    pipelines: &BTreeMap<(u64, u64), IterModel>,
    transfer: (f64, f64),
) -> Result<Vec<Deployment>, usize> {
    // Without pp 1 in the plan's domain, only pipelines are candidates.
    let flat = pp_degrees(p).contains(&1);
    let devices = p.system.devices();
    let mut seqs = ints(domain(p, "batch"), vec![s.scheduler.max_seqs as i64]);
    if seqs.len() > 16 {
        // A wide domain: its powers of two, largest last.
        let top = seqs.last().copied();
        seqs.retain(|m| m.is_power_of_two());
        seqs.extend(top);
        seqs.dedup();
    }
    let reps = domain(p, "dp");
    let budgets = budgets(p, s);
    let chunking = chunking(p, s);
    let sched: Vec<(u64, bool)> = budgets
        .iter()
        .flat_map(|b| chunking.iter().map(move |c| (*b, *c)))
        .collect();
    let limits = |ms: u64, (tb, chunked): (u64, bool)| Limits {
        token_budget: tb,
        max_seqs: ms,
        chunked_prefill: chunked,
        async_scheduling: s.scheduler.async_scheduling,
        prefix_hit: s.prefix_hit,
        window: None,
    };
    let base = |m: IterModel| Deployment {
        colocated: 0,
        prefill: 0,
        decode: 0,
        prefill_model: m,
        decode_model: m,
        limits: limits(1, (s.scheduler.token_budget, s.scheduler.chunked_prefill)),
        kv_block: s.scheduler.kv_block,
        transfer_per_byte: transfer.0,
        transfer_latency: transfer.1,
    };
    // The space's size before building it (C011 above the limit).
    let mut size = 0usize;
    for &tp in models.keys() {
        let n = replica_counts(reps, devices / tp).len();
        let dis: usize = models
            .keys()
            .map(|t| replica_counts(reps, devices / t).len())
            .sum();
        size = size.saturating_add(
            (seqs.len() * sched.len()).saturating_mul(n.saturating_add(n.saturating_mul(dis))),
        );
    }
    for &(tp, pp) in pipelines.keys() {
        let n = replica_counts(reps, devices / (tp * pp)).len();
        size = size.saturating_add((seqs.len() * sched.len()).saturating_mul(n));
    }
    if size > MAX_CANDIDATES {
        return Err(size);
    }
    // Pool knobs restrict the disaggregated pools and leave out
    // colocated deployments.
    let pools = POOL_KNOBS.iter().any(|k| domain(p, k).is_some());
    let allowed =
        |k: &str, x: u64| domain(p, k).is_none_or(|d| ints(Some(d), Vec::new()).contains(&x));
    let mut out = Vec::new();
    // Pipelines: `r` of them are `r x pp` virtual engines, colocated.
    for (&(tp, pp), m) in pipelines {
        if s.disaggregate == Disaggregate::Yes || pools {
            break;
        }
        for (&ms, &k) in seqs.iter().flat_map(|m| sched.iter().map(move |k| (m, k))) {
            for &r in replica_counts(reps, devices / (tp * pp)).iter() {
                out.push(Deployment {
                    colocated: r * pp,
                    limits: limits(ms, k),
                    ..base(*m)
                });
            }
        }
    }
    for (&tp, m) in models {
        if !flat {
            break;
        }
        let rs = replica_counts(domain(p, "prefill_dp").or(reps), devices / tp);
        let colocated_reps = replica_counts(reps, devices / tp);
        for (&ms, &k) in seqs.iter().flat_map(|m| sched.iter().map(move |k| (m, k))) {
            if s.disaggregate != Disaggregate::Yes && !pools {
                for &r in colocated_reps.iter().filter(|r| *r * tp <= devices) {
                    out.push(Deployment {
                        colocated: r,
                        limits: limits(ms, k),
                        ..base(*m)
                    });
                }
            }
            if s.disaggregate == Disaggregate::No {
                continue;
            }
            if !allowed("prefill_tp", tp) {
                continue;
            }
            for (&tpd, md) in models {
                if !allowed("decode_tp", tpd) {
                    continue;
                }
                let nds = replica_counts(domain(p, "decode_dp").or(reps), devices / tpd);
                for &np in &rs {
                    for &nd in &nds {
                        if np * tp + nd * tpd > devices {
                            break;
                        }
                        out.push(Deployment {
                            prefill: np,
                            decode: nd,
                            decode_model: *md,
                            limits: limits(ms, k),
                            ..base(*m)
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The iteration models' probes: a prefill of the plan's largest token
/// budget and a decode at the mean request's context.
fn probe_sizes(p: &Plan, s: &Serve) -> (u64, u64) {
    let n = budgets(p, s)
        .last()
        .copied()
        .unwrap_or(s.scheduler.token_budget)
        .clamp(2, 8192);
    let ctx = (s.input.mean() + s.output.mean()).clamp(2.0, 1e6) as u64;
    (n, ctx)
}

/// Pipelined iteration models for every (tp, pp) of the plan with pp
/// above 1 and tp one of `tps`; degrees whose stages leave no KV cache
/// or that the cost model refuses (layers, devices) are left out, the
/// first refusal kept to say why when nothing else is left.
fn pipelines(
    p: &Plan,
    s: &Serve,
    tps: &[u64],
) -> (BTreeMap<(u64, u64), IterModel>, Option<PinError>) {
    let (n, ctx) = probe_sizes(p, s);
    let mut out = BTreeMap::new();
    let mut first = None;
    for pp in pp_degrees(p).into_iter().filter(|pp| *pp > 1) {
        for &tp in tps {
            if tp.saturating_mul(pp) > p.system.devices() {
                first.get_or_insert_with(|| {
                    error(
                        Code::C001,
                        "pp",
                        format!(
                            "tp={tp} x pp={pp} needs {} devices; the system has {}",
                            tp.saturating_mul(pp),
                            p.system.devices()
                        ),
                        "search smaller tp and pp, or give the plan more devices",
                    )
                });
                continue;
            }
            match build(&p.workload, &p.system, tp, pp, n, ctx) {
                Ok(m) if m.kv_capacity_tokens >= s.scheduler.kv_block as f64 => {
                    out.insert((tp, pp), m);
                }
                Ok(_) => {
                    first.get_or_insert_with(|| {
                        error(
                            Code::C010,
                            "pp",
                            format!("at tp={tp} pp={pp} the weights leave no HBM for a KV cache"),
                            "use more devices per stage or devices with more HBM",
                        )
                    });
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
    }
    (out, first)
}

/// Tensor-parallel degrees the plan allows (`auto`: powers of two up to
/// a node), the pools' own included.
fn tp_degrees(p: &Plan) -> Vec<u64> {
    let per_node = p.system.node.devices_per_node.max(1) as i64;
    let auto: Vec<i64> = (0..)
        .map(|k| 1i64 << k)
        .take_while(|t| *t <= per_node)
        .collect();
    let mut tps: Vec<u64> = ints(domain(p, "tp"), auto)
        .into_iter()
        .filter(|t| *t <= p.system.devices())
        .collect();
    if tps.len() > 16 {
        // A wide domain: its powers of two (each degree lowers the model).
        tps.retain(|t| t.is_power_of_two());
        tps.truncate(16);
    }
    // The pools' own degrees (`prefill_tp`, `decode_tp`), when given.
    for k in ["prefill_tp", "decode_tp"] {
        if let Some(d) = domain(p, k) {
            let mut v = ints(Some(d), Vec::new());
            v.retain(|t| *t <= p.system.devices());
            tps.extend(v);
        }
    }
    tps.sort_unstable();
    tps.dedup();
    tps
}

/// Iteration models for every tensor-parallel degree the plan allows.
fn models(p: &Plan, s: &Serve) -> Result<BTreeMap<u64, IterModel>, PinError> {
    let (n, ctx) = probe_sizes(p, s);
    let mut out = BTreeMap::new();
    let mut first = None;
    let tps = tp_degrees(p);
    for tp in tps {
        match build(&p.workload, &p.system, tp, 1, n, ctx) {
            Ok(m) if m.kv_capacity_tokens >= s.scheduler.kv_block as f64 => {
                out.insert(tp, m);
            }
            Ok(_) => {
                first.get_or_insert(error(
                    Code::C010,
                    "tp",
                    format!("at tp={tp} the weights leave no HBM for a KV cache"),
                    "use larger tensor parallelism or devices with more HBM",
                ));
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    if out.is_empty() {
        return Err(first.unwrap_or_else(|| {
            error(
                Code::C010,
                "tp",
                "no tensor-parallel degree of the plan fits the system".into(),
                "search tp over degrees that divide the heads and fit the devices",
            )
        }));
    }
    Ok(out)
}

/// KV transfer between pools: seconds per byte and latency. Pools
/// spread over more than one node send over the scale-out fabric (a
/// transfer uses the NICs of the smaller pool's devices); inside one
/// node, over the scale-up link.
fn transfer(p: &Plan, hw_topo: &crate::collective::Topology, tp: u64) -> (f64, f64) {
    let out = p.system.nodes > 1;
    let (bw, lat) = if out {
        (hw_topo.out_bw * tp as f64, hw_topo.out_lat)
    } else {
        (hw_topo.up_bw * tp as f64, hw_topo.up_lat)
    };
    (if bw > 0.0 { 1.0 / bw } else { f64::INFINITY }, lat)
}

/// Searches `p` (a plan of a `serve` workload) at `rate` requests per
/// second (the workload's when `None`), requests drawn from the workload
/// or replayed from its trace.
pub fn plan(p: &Plan, rate: Option<f64>) -> Result<ServePlan, PinError> {
    let Some(s) = p.workload.serve.as_deref() else {
        return Err(error(
            Code::C008,
            "fix",
            format!("workload `{}` is not a `serve` workload", p.workload.name),
            "declare the workload with `serve { ... }`",
        ));
    };
    let rank = rank_of(p)?;
    // As for a training plan (`sanity::check_metrics`): without a price
    // every deployment's goodput per dollar is 0 and the ranking is
    // arbitrary.
    if rank == Rank::PerDollar
        && crate::hardware::Hardware::new(&p.system, &p.workload)
            .is_ok_and(|h| h.price_per_device.is_none())
    {
        return Err(error(
            Code::C015,
            "objective",
            format!(
                "plan `{}` optimizes `throughput_per_dollar`, which it does not have: neither the device nor the node declares a `price`",
                p.name
            ),
            "declare a `price`, or use `objective maximize throughput` (goodput) or `throughput_per_watt`",
        ));
    }
    let mut pipes = BTreeMap::new();
    let mut pipe_refused = None;
    let (models, cands) = match s.batching {
        Some(b) => batched_candidates(p, s, b)?,
        None => {
            // A pipeline may fit where no single-stage replica does.
            let (found, refused) = pipelines(p, s, &tp_degrees(p));
            pipes = found;
            pipe_refused = refused;
            let models = match models(p, s) {
                Ok(m) => m,
                Err(_) if !pipes.is_empty() => BTreeMap::new(),
                Err(e) => return Err(e),
            };
            let hw = crate::hardware::Hardware::new(&p.system, &p.workload).map_err(|m| {
                error(
                    Code::C009,
                    "fix",
                    format!("device `{}` has no {}", m.device, m.what),
                    "add the figure to the device in stdlib",
                )
            })?;
            let min_tp = models.keys().next().copied().unwrap_or(1);
            let xfer = transfer(p, &hw.topo, min_tp);
            let cands = candidates(p, s, &models, &pipes, xfer).map_err(|n| {
                error(
                    Code::C011,
                    "search",
                    format!(
                        "plan `{}` would compare {n} serving deployments (the limit is {MAX_CANDIDATES})",
                        p.name
                    ),
                    "narrow `search tp`, `dp` or `batch`, or set `disaggregate = false`",
                )
            })?;
            (models, cands)
        }
    };
    if cands.is_empty() {
        // Nothing to simulate: say why (a pipeline deeper than the
        // layers, degrees beyond the devices), not that queues grow.
        return Err(pipe_refused.unwrap_or_else(|| {
            error(
                Code::C011,
                "search",
                format!("plan `{}` leaves no serving deployment to compare", p.name),
                "allow other tp, pp and dp values",
            )
        }));
    }
    let mut cands = cands;
    let reqs = requests(s, rate);
    let arrivals: Vec<f64> = reqs.iter().map(|r| r.arrival).collect();
    let generate: Vec<u32> = reqs.iter().map(|r| r.generate).collect();
    // A closed loop (or a burst) has no offered rate: what it serves is
    // its rate.
    let span = match (arrivals.first(), arrivals.last()) {
        (Some(a), Some(b)) if b > a && s.arrivals.clients(s.requests).is_none() => b - a,
        _ => 0.0,
    };
    let offered = if span > 0.0 {
        reqs.len() as f64 / span
    } else {
        f64::INFINITY
    };
    let total = cands.len();
    // Cheapest first; a deterministic order among equals.
    cands.sort_by(|a, b| {
        let (pa, pb) = (summarize_bound(a), summarize_bound(b));
        a.devices()
            .cmp(&b.devices())
            .then(pa.0.unwrap_or(0.0).total_cmp(&pb.0.unwrap_or(0.0)))
            .then_with(|| describe(a).cmp(&describe(b)))
    });
    let max_backlog = (reqs.len() as u64 / 4).max(64);
    let mut done: Vec<Summary> = Vec::new();
    let (mut best_value, mut unstable_unsim, mut pruned, mut limited) = (None::<f64>, 0, 0, 0);
    let per_simulation = reqs.len().max(1) as u64;
    // Prefill pools already seen to miss the TTFT target or overflow.
    let open = s.arrivals.clients(s.requests).is_none();
    let mut failed_prefill: HashSet<PrefillKey> = HashSet::new();
    let mut prefill_pruned = 0;
    for d in &cands {
        if let Some(b) = best_value
            && rank.bound(d, offered) < b
        {
            pruned += 1;
            continue;
        }
        let key = prefill_key(d).filter(|_| open);
        if key.is_some_and(|k| failed_prefill.contains(&k)) {
            prefill_pruned += 1;
            continue;
        }
        if span > 0.0 && work_bound(d, &reqs, s.prefix_hit) > span * 1.02 {
            unstable_unsim += 1;
            continue;
        }
        if !may_simulate(done.len(), per_simulation) {
            limited += 1;
            continue;
        }
        let o = super::outcome(d, &reqs, s, max_backlog);
        let sum = summarize(d, &o, &o.arrivals, &generate, s);
        let ttft_missed = sum
            .slos
            .iter()
            .any(|c| c.name == "ttft_p99" && c.achieved > c.target);
        if let Some(k) = key
            && (o.aborted || ttft_missed)
        {
            failed_prefill.insert(k);
        }
        if sum.meets {
            let v = rank.value(&sum);
            if best_value.is_none_or(|b| v > b) {
                best_value = Some(v);
            }
        }
        done.push(sum);
    }
    let simulated = done.len();
    let mut meeting: Vec<Summary> = done.iter().filter(|x| x.meets).cloned().collect();
    meeting.sort_by(|a, b| {
        rank.value(b)
            .total_cmp(&rank.value(a))
            .then(a.devices.cmp(&b.devices))
            .then_with(|| describe(&a.deployment).cmp(&describe(&b.deployment)))
    });
    let Some(best) = meeting.first().cloned() else {
        // At the rate a serving report states, `n - 1` gaps over the
        // span (`offered`, `n / span`, bounds goodput, which counts `n`).
        let stated = if span > 0.0 {
            (reqs.len() - 1) as f64 / span
        } else {
            offered
        };
        let load = load_words(s, reqs.len(), stated);
        return Err(no_deployment(p, s, &done, &load, unstable_unsim, limited));
    };
    meeting.truncate(5);
    let worst = |x: &Summary| {
        if x.unstable {
            f64::INFINITY
        } else {
            x.slos.iter().map(|c| c.ratio()).fold(0.0, f64::max)
        }
    };
    let cheaper = done
        .iter()
        .filter(|x| !x.meets && x.devices < best.devices)
        .min_by(|a, b| {
            worst(a)
                .total_cmp(&worst(b))
                .then(b.devices.cmp(&a.devices))
                .then_with(|| describe(&a.deployment).cmp(&describe(&b.deployment)))
        })
        .cloned();
    Ok(ServePlan {
        cheaper,
        best,
        top: meeting,
        rank,
        candidates: total,
        simulated,
        unstable_unsimulated: unstable_unsim,
        pruned,
        limited,
        prefill_pruned,
        requests: reqs,
        models,
        pipelines: pipes,
    })
}

/// What a disaggregated deployment's prefill pool sees, all of it: the
/// pool's degree and replicas, the scheduler limits and the smallest
/// cache of the deployment (which requests are dropped). With open-loop
/// arrivals the prefill pool never hears from the decode pool (requests
/// enter there, leave by transfer, and only arrivals can abort a run),
/// so its first tokens, and whether the run overflows, are the same for
/// every decode pool: a prefill pool that once missed the TTFT target or
/// overflowed misses it with any decode pool, and is not simulated again.
type PrefillKey = (u64, u64, u64, u64, bool, u64);

fn prefill_key(d: &Deployment) -> Option<PrefillKey> {
    if !d.disaggregated() {
        return None;
    }
    let block = d.kv_block.max(1) as f64;
    let smallest = d
        .prefill_model
        .kv_capacity_tokens
        .min(d.decode_model.kv_capacity_tokens);
    Some((
        d.prefill_model.tp,
        d.prefill,
        d.limits.token_budget,
        d.limits.max_seqs,
        d.limits.chunked_prefill,
        (smallest.max(0.0) / block).floor() as u64,
    ))
}

/// How `n` requests came, for C019: at the offered rate, or (a burst, a
/// closed loop, a trace whose arrivals span less than a microsecond) with
/// no offered rate, which printed as "at inf req/s".
fn load_words(s: &Serve, n: usize, offered: f64) -> String {
    match s.arrivals.clients(s.requests) {
        Some(c) if c >= n as u64 => format!("in a burst of {n} requests"),
        Some(c) => format!("from a closed loop of {c} clients"),
        None if offered.is_finite() => format!("at {} req/s", super::report::rate(offered, 3)),
        None => format!("in a burst of {n} requests"),
    }
}

/// A latency for C019, in ms to 0.1 ms, or in us below 0.1 ms: a target
/// of 1 us printed as "0.0 ms".
fn latency(s: f64) -> String {
    if s < 1e-4 {
        format!("{:.1} us", s * 1e6)
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

/// Whether a plan that has run `done` simulations of `per_simulation`
/// requests each may run one more ([`MAX_SIMULATIONS`],
/// [`MAX_SIMULATED_REQUESTS`]; the first always runs).
fn may_simulate(done: usize, per_simulation: u64) -> bool {
    done == 0
        || (done < MAX_SIMULATIONS
            && (done as u64 + 1).saturating_mul(per_simulation) <= MAX_SIMULATED_REQUESTS)
}

/// What the plan's simulation limits left out, in words (a report's note,
/// C019): `n` deployments, `requests` per simulation.
pub fn limit_words(n: usize, requests: u64) -> String {
    format!(
        "{n} deployment{} not simulated: a plan simulates at most {MAX_SIMULATIONS} deployments and {MAX_SIMULATED_REQUESTS:.0e} requests in all ({} at {requests} requests each), cheapest first",
        if n == 1 { " was" } else { "s were" },
        (MAX_SIMULATED_REQUESTS / requests.max(1)).min(MAX_SIMULATIONS as u64),
    )
}

/// The reports' note on deployments the limits left unsimulated
/// ([`limit_words`] and what to do about it).
pub fn limit_note(n: usize, requests: u64) -> String {
    format!(
        "{}; a better one may be among them: lower `requests` or narrow `search`",
        limit_words(n, requests)
    )
}

/// C019: the closest deployment and how far each SLO is from its target.
fn no_deployment(
    p: &Plan,
    s: &Serve,
    done: &[Summary],
    load: &str,
    unstable_unsim: usize,
    limited: usize,
) -> PinError {
    let worst = |x: &Summary| x.slos.iter().map(|c| c.ratio()).fold(0.0, f64::max);
    let closest = done.iter().filter(|x| !x.unstable).min_by(|a, b| {
        worst(a)
            .total_cmp(&worst(b))
            .then(a.devices.cmp(&b.devices))
    });
    let message = match closest {
        Some(c) => {
            let parts: Vec<String> = c
                .slos
                .iter()
                .map(|k| {
                    if !k.achieved.is_finite() {
                        format!(
                            "misses {} (fewer than {:.0}% of its requests complete)",
                            k.name,
                            100.0 * s.attainment
                        )
                    } else if k.achieved <= k.target {
                        format!(
                            "meets {} ({} against {})",
                            k.name,
                            latency(k.achieved),
                            latency(k.target)
                        )
                    } else {
                        format!(
                            "misses {} by {:.0}% ({} against {})",
                            k.name,
                            100.0 * (k.ratio() - 1.0),
                            latency(k.achieved),
                            latency(k.target)
                        )
                    }
                })
                .collect();
            let dropped = if c.dropped > 0 {
                format!(
                    "; {} of its {} requests were dropped: their prompt and output exceed a replica's KV cache of {:.0} tokens",
                    c.dropped,
                    c.requests,
                    c.kv_tokens_per_replica()
                )
            } else {
                String::new()
            };
            format!(
                "no serving configuration of plan `{}` meets the SLOs for {:.0}% of requests {load}: the closest, {}, {}; {:.2}% of its requests meet every SLO{dropped}",
                p.name,
                100.0 * s.attainment,
                describe(&c.deployment),
                parts.join(", "),
                100.0 * c.attainment
            )
        }
        None => format!(
            "no serving configuration of plan `{}` is stable {load}: the queue grows on all {} candidates ({} simulated, {} beyond capacity by their work alone)",
            p.name,
            done.len() + unstable_unsim,
            done.len(),
            unstable_unsim
        ),
    };
    let message = if limited > 0 {
        format!("{message}; {}", limit_words(limited, s.requests))
    } else {
        message
    };
    error(
        Code::C019,
        "search",
        message,
        "relax the SLOs or the rate, give the plan more devices, or allow other tp and max_seqs values",
    )
}

/// What `gantry validate` compares with a serving reference row: a plan
/// whose knobs are all pinned (`fix tp = 1, dp = 1, batch = 1024`, no
/// `search`) is that one deployment simulated at the workload's rate
/// until every request is served, as a published benchmark runs its
/// requests (above capacity the queue grows and the throughput is the
/// deployment's capacity; the run is still flagged unstable); otherwise
/// the search's best, as `gantry plan` reports it.
pub fn predict(p: &Plan) -> Result<Summary, PinError> {
    if p.search.is_empty() {
        return fixed(p, &plan_pins(p)?, None);
    }
    plan(p, None).map(|s| s.best)
}

/// The pins of a serving plan's `fix` (one value per knob).
pub fn plan_pins(p: &Plan) -> Result<BTreeMap<String, crate::point::Pin>, PinError> {
    use crate::point::Pin;
    let mut pins = BTreeMap::new();
    for (k, d) in &p.fixed {
        match d {
            Domain::Ints(v) if v.len() == 1 => {
                pins.insert(k.clone(), Pin::Int(v[0]));
            }
            Domain::Bools(v) if v.len() == 1 => {
                pins.insert(k.clone(), Pin::Bool(v[0]));
            }
            _ => {
                return Err(error(
                    Code::C012,
                    "fix",
                    format!("a serving plan pins one value per knob; `{k}` is not pinned to one"),
                    "pin tp, dp (replicas) and batch (max_seqs), e.g. `fix tp = 8, dp = 1, batch = 256`",
                ));
            }
        }
    }
    Ok(pins)
}

/// One colocated deployment pinned by `pins` (`tp`, `dp` replicas,
/// `batch` as max_seqs; unpinned: tp 1, as many replicas as the system
/// holds, the workload's max_seqs), or with any of `prefill_tp`,
/// `prefill_dp`, `decode_tp`, `decode_dp` a disaggregated one (each
/// unpinned one 1), simulated at `rate` until every
/// request is served (`gantry plan --fix`; above capacity the run is
/// flagged unstable and its throughput is the deployment's capacity).
pub fn fixed(
    p: &Plan,
    pins: &BTreeMap<String, crate::point::Pin>,
    rate: Option<f64>,
) -> Result<Summary, PinError> {
    let Some(s) = p.workload.serve.as_deref() else {
        return Err(error(
            Code::C008,
            "fix",
            format!("workload `{}` is not a `serve` workload", p.workload.name),
            "declare the workload with `serve { ... }`",
        ));
    };
    if let Some(b) = s.batching {
        return fixed_batched(p, s, b, pins, rate);
    }
    let (d, reqs) = fixed_deployment(p, pins, rate)?;
    Ok(super::run_with(&d, &reqs, s, u64::MAX))
}

/// The deployment and requests [`fixed`] simulates for an LLM `serve`
/// workload (`C008` for another kind): what the engine fit
/// ([`crate::engine_fit`]) re-simulates under other engine terms.
pub fn fixed_deployment(
    p: &Plan,
    pins: &BTreeMap<String, crate::point::Pin>,
    rate: Option<f64>,
) -> Result<(Deployment, Vec<super::Request>), PinError> {
    use crate::point::Pin;
    let Some(s) = p.workload.serve.as_deref().filter(|s| s.batching.is_none()) else {
        return Err(error(
            Code::C008,
            "fix",
            format!("workload `{}` is not a `serve` workload", p.workload.name),
            "declare the workload with `serve { ... }` and continuous batching",
        ));
    };
    for k in pins.keys() {
        if !["tp", "pp", "dp", "batch", "token_budget", "chunked_prefill"].contains(&k.as_str())
            && !POOL_KNOBS.contains(&k.as_str())
        {
            return Err(error(
                Code::C012,
                "fix",
                format!("`{k}` is not a knob of a serving deployment"),
                "pin tp, pp, dp (replicas), batch (max_seqs), token_budget, chunked_prefill, or the pools' prefill_tp, prefill_dp, decode_tp and decode_dp",
            ));
        }
    }
    let int = |k: &str| match pins.get(k) {
        Some(Pin::Int(v)) if *v >= 1 => Ok(Some(*v as u64)),
        Some(_) => Err(error(
            Code::C006,
            "fix",
            format!("`{k}` must be a whole number of at least 1"),
            "e.g. --fix tp=8,dp=2,batch=256",
        )),
        None => Ok(None),
    };
    let tp = int("tp")?.unwrap_or(1);
    let devices = p.system.devices();
    let pools = POOL_KNOBS.iter().any(|k| pins.contains_key(*k));
    // Disaggregated pools (each unpinned figure 1): tp and dp are then
    // not used.
    let (ptp, pdp, dtp, ddp) = (
        int("prefill_tp")?.unwrap_or(1),
        int("prefill_dp")?.unwrap_or(1),
        int("decode_tp")?.unwrap_or(1),
        int("decode_dp")?.unwrap_or(1),
    );
    if pools {
        if s.disaggregate == Disaggregate::No {
            return Err(error(
                Code::C012,
                "fix",
                format!(
                    "the pools' knobs pin a disaggregated deployment, and `{}` declares `disaggregate = false`",
                    p.workload.name
                ),
                "remove `disaggregate = false`, or pin tp and dp for a colocated deployment",
            ));
        }
        let need = ptp
            .saturating_mul(pdp)
            .saturating_add(dtp.saturating_mul(ddp));
        if need > devices {
            return Err(error(
                Code::C001,
                "dp",
                format!(
                    "{pdp} prefill replicas of tp={ptp} and {ddp} decode replicas of tp={dtp} need {need} devices; the system has {devices}"
                ),
                "pin fewer replicas or smaller degrees",
            ));
        }
    }
    let pp = int("pp")?.unwrap_or(1);
    if pools && pp > 1 {
        return Err(error(
            Code::C012,
            "fix",
            "pipeline parallelism is simulated for colocated deployments only; the pools' knobs pin a disaggregated one".into(),
            "pin tp, pp and dp for a colocated deployment, or drop pp",
        ));
    }
    let width = tp.saturating_mul(pp);
    let reps = int("dp")?.unwrap_or((devices / width).max(1));
    if !pools && width.saturating_mul(reps) > devices {
        return Err(error(
            Code::C001,
            "dp",
            format!(
                "{reps} replicas of tp={tp} x pp={pp} need {} devices; the system has {devices}",
                width.saturating_mul(reps)
            ),
            "pin fewer replicas or smaller degrees",
        ));
    }
    let ms = int("batch")?.unwrap_or(s.scheduler.max_seqs);
    let budget = int("token_budget")?.unwrap_or(s.scheduler.token_budget);
    let chunked = match pins.get("chunked_prefill") {
        Some(Pin::Bool(b)) => *b,
        Some(_) => {
            return Err(error(
                Code::C006,
                "fix",
                "`chunked_prefill` must be `true` or `false`".into(),
                "e.g. --fix tp=8,chunked_prefill=false",
            ));
        }
        None => s.scheduler.chunked_prefill,
    };
    let n = budget.clamp(2, 8192);
    let ctx = (s.input.mean() + s.output.mean()).clamp(2.0, 1e6) as u64;
    let (m, md, xfer) = if pools {
        let hw = crate::hardware::Hardware::new(&p.system, &p.workload).map_err(|m| {
            error(
                Code::C009,
                "fix",
                format!("device `{}` has no {}", m.device, m.what),
                "add the figure to the device in stdlib",
            )
        })?;
        (
            build(&p.workload, &p.system, ptp, 1, n, ctx)?,
            build(&p.workload, &p.system, dtp, 1, n, ctx)?,
            transfer(p, &hw.topo, ptp.min(dtp)),
        )
    } else {
        let m = build(&p.workload, &p.system, tp, pp, n, ctx)?;
        (m, m, (0.0, 0.0))
    };
    let d = Deployment {
        // A pipeline of `pp` stages is `pp` virtual engines.
        colocated: if pools { 0 } else { reps * pp },
        prefill: if pools { pdp } else { 0 },
        decode: if pools { ddp } else { 0 },
        prefill_model: m,
        decode_model: md,
        limits: Limits {
            token_budget: budget,
            max_seqs: ms,
            chunked_prefill: chunked,
            async_scheduling: s.scheduler.async_scheduling,
            prefix_hit: s.prefix_hit,
            window: None,
        },
        kv_block: s.scheduler.kv_block,
        transfer_per_byte: xfer.0,
        transfer_latency: xfer.1,
    };
    Ok((d, requests(s, rate)))
}

/// Knobs a batching-window plan cannot take (`C031`): a replica is one
/// device, and the window replaces the token scheduler.
fn batched_knobs(p: &Plan) -> Result<(), PinError> {
    for (k, d) in p.fixed.iter().chain(p.search.iter()) {
        let one = matches!(d, Domain::Ints(v) if v == &[1]);
        let bad = match k.as_str() {
            "tp" | "pp" => !one,
            "token_budget" | "chunked_prefill" => true,
            k if POOL_KNOBS.contains(&k) => true,
            _ => false,
        };
        if bad {
            return Err(error(
                Code::C031,
                "search",
                format!(
                    "plan `{}` serves `{}` with a batching window, which has no `{k}` knob",
                    p.name, p.workload.name
                ),
                "a batching-window plan searches `dp` (replicas, one device each) and `batch` (the largest batch, in items)",
            ));
        }
    }
    Ok(())
}

/// The largest batches a batching-window plan tries: its `batch` domain
/// (powers of two when wider than 16 values), else the workload's.
fn max_batches(p: &Plan, b: Batching) -> Vec<u64> {
    let mut v = ints(domain(p, "batch"), vec![b.max_batch as i64]);
    if v.len() > 16 {
        let top = v.last().copied();
        v.retain(|x| x.is_power_of_two());
        v.extend(top);
        v.dedup();
    }
    v
}

/// The windows tried: the workload's `max_wait` (the longest allowed)
/// and a half, a quarter and none of it.
fn windows(b: Batching) -> Vec<f64> {
    let mut v = vec![0.0, b.max_wait / 4.0, b.max_wait / 2.0, b.max_wait];
    v.dedup();
    v
}

/// The iteration model and candidates of a batching-window plan.
fn batched_candidates(
    p: &Plan,
    s: &Serve,
    b: Batching,
) -> Result<(BTreeMap<u64, IterModel>, Vec<Deployment>), PinError> {
    batched_knobs(p)?;
    let batches = max_batches(p, b);
    let n = batches.last().copied().unwrap_or(b.max_batch);
    let m = build_batched(&p.workload, &p.system, n)?;
    let reps = replica_counts(domain(p, "dp"), p.system.devices());
    let wins = windows(b);
    let size = reps.len() * batches.len() * wins.len();
    if size > MAX_CANDIDATES {
        return Err(error(
            Code::C011,
            "search",
            format!(
                "plan `{}` would compare {size} serving deployments (the limit is {MAX_CANDIDATES})",
                p.name
            ),
            "narrow `search dp` or `batch`",
        ));
    }
    let mut out = Vec::with_capacity(size);
    for &r in &reps {
        for &mb in &batches {
            for &w in &wins {
                out.push(batched_deployment(s, m, r, mb, w));
            }
        }
    }
    Ok((BTreeMap::from([(1, m)]), out))
}

fn batched_deployment(s: &Serve, m: IterModel, replicas: u64, batch: u64, wait: f64) -> Deployment {
    Deployment {
        colocated: replicas,
        prefill: 0,
        decode: 0,
        prefill_model: m,
        decode_model: m,
        limits: Limits {
            token_budget: batch,
            max_seqs: batch,
            chunked_prefill: false,
            async_scheduling: false,
            prefix_hit: 0.0,
            window: Some(wait),
        },
        kv_block: s.scheduler.kv_block,
        transfer_per_byte: 0.0,
        transfer_latency: 0.0,
    }
}

/// One batching-window deployment pinned by `pins` (`dp` replicas,
/// `batch` the largest batch; unpinned: every device a replica, the
/// workload's `max_batch`), with the workload's window.
fn fixed_batched(
    p: &Plan,
    s: &Serve,
    b: Batching,
    pins: &BTreeMap<String, crate::point::Pin>,
    rate: Option<f64>,
) -> Result<Summary, PinError> {
    use crate::point::Pin;
    for (k, v) in pins {
        let ok = match k.as_str() {
            "dp" | "batch" => true,
            "tp" => matches!(v, Pin::Int(1)),
            _ => false,
        };
        if !ok {
            return Err(error(
                Code::C031,
                "fix",
                format!(
                    "`{k}` is not a knob of a batching-window deployment (`{}`)",
                    p.workload.name
                ),
                "pin dp (replicas, one device each) and batch (the largest batch, in items)",
            ));
        }
    }
    let int = |k: &str| match pins.get(k) {
        Some(Pin::Int(v)) if *v >= 1 => Ok(Some(*v as u64)),
        Some(_) => Err(error(
            Code::C006,
            "fix",
            format!("`{k}` must be a whole number of at least 1"),
            "e.g. --fix dp=2,batch=1024",
        )),
        None => Ok(None),
    };
    let devices = p.system.devices();
    let reps = int("dp")?.unwrap_or(devices.max(1));
    if reps > devices {
        return Err(error(
            Code::C001,
            "dp",
            format!("{reps} replicas need {reps} devices; the system has {devices}"),
            "pin fewer replicas",
        ));
    }
    let batch = int("batch")?.unwrap_or(b.max_batch);
    let m = build_batched(&p.workload, &p.system, batch)?;
    let d = batched_deployment(s, m, reps, batch, b.max_wait);
    let reqs = requests(s, rate);
    Ok(super::run_with(&d, &reqs, s, u64::MAX))
}

#[cfg(test)]
mod limit_tests {
    use super::{MAX_SIMULATED_REQUESTS, MAX_SIMULATIONS, limit_words, may_simulate};

    /// A plan of 10^7 requests per simulation stops after 4 simulations
    /// (it ran up to 400 at 5-17 s each); the default 2000 requests still
    /// allow all 400; the first simulation always runs.
    #[test]
    fn simulated_requests_per_plan_are_bounded() {
        assert_eq!(MAX_SIMULATED_REQUESTS, 40_000_000);
        let runs = |per: u64| {
            (0..=MAX_SIMULATIONS)
                .take_while(|d| may_simulate(*d, per))
                .count()
        };
        assert_eq!(runs(10_000_000), 4);
        assert_eq!(runs(1_000_000), 40);
        assert_eq!(runs(2000), MAX_SIMULATIONS);
        assert_eq!(runs(u64::MAX), 1);
        let w = limit_words(1064, 1_000_000);
        assert!(
            w.contains("1064 deployments were not simulated")
                && w.contains("(40 at 1000000 requests each)"),
            "{w}"
        );
    }
}
