//! Fleet studies: size one pool per demanded workload on every system of
//! the sweep, then pick the cheapest fleet, pooled (each workload on its
//! own system) and homogeneous (one system for all), within the site.
//!
//! Shaped in three steps so each is testable alone: [`size`] turns one
//! (workload, system) into a [`Pool`] sized to its demand (or the reason it
//! cannot be); [`economics`] and [`reliability`] are the pure formulas a
//! pool's cost and goodput come from; [`assemble`] chooses fleets from the
//! table of pools by arithmetic only, so the planner runs once per
//! (workload, system) and the fleet properties (pooled never costs more
//! than homogeneous, more systems never cost more) are properties of one
//! small function.
//!
//! Sizing (docs/COST-MODEL.md §9): the workload's best plan on the system
//! (the study's search and constraints, objective throughput). Inference
//! pools are replicas of that plan: `ceil(demand / plan throughput)`
//! copies. A training job is one job: if the plan on the system falls
//! short of the demand after failures, the system is re-planned with its
//! node count scaled by the shortfall (up to four times), so a pool's
//! throughput is always a searched plan's, never an extrapolation.
//!
//! A `serve` workload's demand is a request rate under its SLOs, which
//! no static plan answers: its pool is the serving planner's cheapest
//! deployment on the system at that rate (`size_serve`, a simulation),
//! split over copies of the system only when one copy cannot serve it.
//! The pool keeps the same shape as the others ([`Sizing`] says which it
//! is, `plan_json` holds the `gantry.serve/1` document), so [`assemble`]
//! and the fleet properties hold for it unchanged. Its prefill and decode
//! pools share one system; putting them on two systems of the sweep would
//! need pair columns in the table (see docs/COST-MODEL.md §9).

pub mod doc;
pub mod economics;
pub mod front;
pub mod reliability;
pub mod report;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use gantry_lang::program::{Cluster, Demand, DemandKind, Phase, Plan, Site, Study, Workload};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cost::Estimate;
use economics::{Owned, Tco};
use reliability::Goodput;

/// What a pool was sized from: a phase workload's searched plan, or a
/// `serve` workload's deployment from the serving planner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Sizing {
    /// The plan searched on the system (training: the one job; inference:
    /// its data-parallel replicas are the pool's unit).
    Phase(Box<Estimate>),
    /// The cheapest deployment on the system meeting the workload's SLOs
    /// at the demanded rate (`serve::planner::plan`).
    Serve(Box<Served>),
}

impl Sizing {
    /// The phase plan's estimate (`None` for a serve pool).
    pub fn estimate(&self) -> Option<&Estimate> {
        match self {
            Sizing::Phase(e) => Some(e),
            Sizing::Serve(_) => None,
        }
    }
}

/// One serving pool of a deployment: colocated, prefill or decode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServeRole {
    pub role: String,
    pub replicas: u64,
    pub tp: u64,
}

/// The figures of a serve pool's deployment the reports print; the whole
/// simulated report is the pool's `gantry.serve/1` object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Served {
    /// `colocated 2 x tp8, ...` or `disaggregated ...` (`serve::report::describe`).
    pub deployment: String,
    pub disaggregated: bool,
    pub roles: Vec<ServeRole>,
    /// Devices of one deployment.
    pub devices: u64,
    /// The arrival rate simulated (requests over the arrival span).
    pub rate: f64,
    /// Requests per second that met every SLO, and their share.
    pub goodput: f64,
    pub attainment: f64,
    pub target_attainment: f64,
    /// Each SLO: name, target and the percentile at the attainment, seconds.
    pub slos: Vec<(String, f64, f64)>,
    /// Compute-busy share of the deployment's device-seconds (simulated).
    pub compute_busy: f64,
    /// KV bytes sent from prefill to decode per completed request.
    pub kv_transfer_per_request: f64,
}

/// One workload's pool on one system, sized to its demand. Serialized
/// whole into a shard's partial JSON (`gantry study --shard`) and read
/// back by `gantry merge`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub workload: String,
    pub system: String,
    /// The plan or deployment the pool is made of.
    pub plan: Sizing,
    /// That plan's `gantry.plan/2` object (the `--fix` form), or a serve
    /// pool's `gantry.serve/1` document, so every figure of a study's
    /// JSON traces back to a plan.
    pub plan_json: serde_json::Value,
    /// Units in the pool: 1 training job, inference replicas of
    /// `unit_devices` each, or copies of a serving deployment (each
    /// serving an equal share of the requests).
    pub replicas: u64,
    pub unit_devices: u64,
    /// Raw throughput of the pool, in the demand's unit per second.
    pub raw: f64,
    /// Goodput after failures (training with `mtbf` and a site's storage
    /// and restart figures), else `None` and the raw throughput counts.
    pub goodput: Option<Goodput>,
    /// What the pool delivers: raw times the goodput fraction.
    pub delivered: f64,
    pub demand: f64,
    pub unit: String,
    pub tco: Tco,
    /// Dollars per unit of demanded work (TCO rate / demand rate).
    pub cost_per_unit: f64,
    /// The ownership and power figures the TCO was computed from.
    pub owned: Owned,
    /// The failure rates the goodput was computed from (with `goodput`).
    pub failures: Option<reliability::Failures>,
}

/// A fleet: one pool per demanded workload.
#[derive(Clone, Debug)]
pub struct Fleet {
    /// Index of each pool's system in the sweep, by demand order.
    pub choice: Vec<usize>,
    pub pools: Vec<Pool>,
    /// Dollars per second, facility watts at the modelled utilisation and
    /// provisioned (full-load) facility watts of the whole fleet.
    pub cost: f64,
    pub power: f64,
    pub provisioned: f64,
}

/// The study's fleet answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub pooled: Fleet,
    /// The cheapest homogeneous fleet, if one system meets every demand.
    pub homogeneous: Option<Fleet>,
    /// `pools[d][s]`: demand `d` on system `s`, or why not.
    pub table: Vec<Vec<Result<Pool, String>>>,
}

/// Demand that no fleet can meet: the binding limit and the shortfall.
#[derive(Clone, Debug, PartialEq)]
pub struct Unmet {
    pub message: String,
    pub help: String,
}

/// The most times a training pool is re-planned at a larger size.
const RESIZES: usize = 4;

/// Runs a study's fleet question. `Ok(None)` for a study without demand.
pub fn run(study: &Study) -> Result<Option<Answer>, Unmet> {
    run_with(study, &|| {})
}

/// [`run`], calling `tick` once per (demand, system) pool. Pools are
/// sized on the rayon pool and collected in order, so the answer does not
/// depend on the thread count.
pub fn run_with(study: &Study, tick: &(dyn Fn() + Sync)) -> Result<Option<Answer>, Unmet> {
    let Some(site) = &study.site else {
        return Ok(None);
    };
    if study.demand.is_empty() {
        return Ok(None);
    }
    let table = study
        .demand
        .par_iter()
        .map(|d| {
            study
                .systems
                .par_iter()
                .map(|s| {
                    let p = pool(study, site, d, s);
                    tick();
                    p
                })
                .collect()
        })
        .collect();
    assemble(&study.demand, site, table).map(Some)
}

/// The pool of demand `d` on system `sys` of the study: the unit of work
/// of a fleet study (one of a shard's cells, `gantry study --shard`).
pub fn pool(study: &Study, site: &Site, d: &Demand, sys: &Cluster) -> Result<Pool, String> {
    match study.workloads.iter().find(|(w, _)| w.name == d.workload) {
        Some((w, _)) => size(study, site, d, w, sys),
        None => Err(format!("no workload `{}`", d.workload)),
    }
}

/// A plan of the study on one system for one workload (the one rule
/// weighted studies use too).
fn plan_for(study: &Study, sys: &Cluster, w: &Workload) -> Plan {
    crate::study::cell_plan(study, sys, w)
}

/// The plan's throughput in the demand's unit.
fn throughput(e: &Estimate, kind: &DemandKind) -> f64 {
    match kind.unit() {
        "tokens" => e.tokens_per_s(),
        _ => e.samples_per_s(),
    }
}

/// The state one checkpoint writes: weights, fp32 master weights below
/// 4-byte types, fp32 optimizer states, embedding tables.
fn checkpoint_state(w: &Workload) -> Option<f64> {
    let Phase::Train { optimizer, .. } = &w.phase else {
        return None;
    };
    let ir = crate::ir::lower(w).ok()?;
    let bytes = w.dtype.bytes().unwrap_or(4) as f64;
    let master = if bytes < 4.0 { 4.0 } else { 0.0 };
    let states = crate::memory::optimizer_states(*optimizer) * 4.0;
    Some(ir.params() * (bytes + master + states) + ir.table_bytes())
}

/// Compute-busy fraction of a plan's devices: the hardware FLOP rate over
/// the rate the device's matrix products reach (`hfu / efficiency.matmul`).
fn busy(e: &Estimate, sys: &Cluster, w: &Workload) -> f64 {
    let eff = crate::hardware::Hardware::new(sys, w).map_or(1.0, |h| h.e_matmul);
    (e.hfu() / eff).clamp(0.0, 1.0)
}

/// The node counts a training pool of `nodes` nodes delivering `got`
/// tries next for `demand`, in order: the count the shortfall or the
/// surplus calls for with 5% to spare, and, when shrinking, the count
/// without the spare (the spare count's devices may not divide the
/// batch). Shrinks stay below `nodes`.
fn resize_tries(nodes: u64, demand: f64, got: f64) -> Vec<u64> {
    let at = |spare: f64| {
        ((nodes as f64 * demand / got.max(f64::MIN_POSITIVE) * spare)
            .ceil()
            .min(1e9) as u64)
            .max(1)
    };
    if got < demand {
        return vec![at(1.05)];
    }
    let mut tries: Vec<u64> = [at(1.05), at(1.0)]
        .into_iter()
        .filter(|&n| n < nodes)
        .collect();
    tries.dedup();
    tries
}

/// Sizes one workload's pool on one system.
pub fn size(
    study: &Study,
    site: &Site,
    d: &Demand,
    w: &Workload,
    sys: &Cluster,
) -> Result<Pool, String> {
    size_from(study, site, d, w, sys, None)
}

/// The study's search of `w` on `c`: the best plan's `gantry.plan/2`
/// object and its estimate (a pool's first search, and the base of the
/// cell's sensitivity).
pub fn search(
    study: &Study,
    c: &Cluster,
    w: &Workload,
) -> Result<(serde_json::Value, Estimate), String> {
    crate::plan::search(&plan_for(study, c, w), &BTreeMap::new(), 1)
        .map(|s| (crate::report::json(&s.best), s.best.estimate))
        .map_err(|e| format!("error[{}]: {}", e.code, e.message))
}

/// [`size`], with the first search on `sys` already done (`first`, the
/// result of [`search`]) when a sensitivity of the cell needed it too.
pub fn size_from(
    study: &Study,
    site: &Site,
    d: &Demand,
    w: &Workload,
    sys: &Cluster,
    first: Option<Result<(serde_json::Value, Estimate), String>>,
) -> Result<Pool, String> {
    let owned = Owned::of(sys)?;
    if let DemandKind::Requests { per_s } = d.kind {
        return size_serve(study, site, w, sys, owned, per_s);
    }
    let demand = d.kind.rate();
    let search = |c: &Cluster| search(study, c, w);
    let (mut plan_json, mut e) = match first {
        Some(f) => f?,
        None => search(sys)?,
    };
    if throughput(&e, &d.kind) <= 0.0 {
        return Err(format!(
            "`{}` delivers no {} (demand it in samples)",
            w.name,
            d.kind.unit()
        ));
    }
    let training = matches!(w.phase, Phase::Train { .. });
    let per = owned.devices_per_node;
    let failures_of = |e: &Estimate| -> Option<reliability::Failures> {
        Some(reliability::Failures {
            devices: e.devices,
            nodes: e.devices.div_ceil(per),
            device_mtbf: sys.node.device.own.mtbf?,
            node_mtbf: sys.node.own.mtbf,
        })
    };
    let goodput_of = |e: &Estimate| -> Option<Goodput> {
        let (f, storage, restart) = (failures_of(e)?, site.storage?, site.restart?);
        Some(reliability::goodput(
            &f,
            checkpoint_state(w)?,
            storage,
            restart,
        ))
    };
    let fraction = |g: &Option<Goodput>| g.map_or(1.0, |g| g.fraction);
    let (replicas, goodput) = if training {
        let mut g = goodput_of(&e);
        let mut c = sys.clone();
        for _ in 0..RESIZES {
            let got = throughput(&e, &d.kind) * fraction(&g);
            // Re-plan at the node count the shortfall (or the surplus)
            // calls for, with 5% to spare; keep it only if it still meets
            // the demand (shrinking) or delivers more (growing). A
            // shrink whose spare count does not (its devices may not
            // divide the batch) tries the count without the spare.
            let short = got < demand;
            let mut kept = None;
            for nodes in resize_tries(e.devices.div_ceil(per), demand, got) {
                if (short && nodes * per > 1 << 24) || nodes == c.nodes {
                    continue;
                }
                let mut next = c.clone();
                next.nodes = if short { nodes.max(c.nodes + 1) } else { nodes };
                let Ok((other_json, other)) = search(&next) else {
                    continue;
                };
                let og = goodput_of(&other);
                let ogot = throughput(&other, &d.kind) * fraction(&og);
                if if short { ogot > got } else { ogot >= demand } {
                    kept = Some((other, og, next, other_json));
                    break;
                }
            }
            let Some(k) = kept else {
                break;
            };
            (e, g, c, plan_json) = k;
        }
        let got = throughput(&e, &d.kind) * fraction(&g);
        // A rate that is not a number meets no demand.
        if got.is_nan() || got < demand {
            return Err(format!(
                "training delivers at most {} {}/s on {} devices of `{}` ({} after failures), short of {} {}/s by {:.1}%",
                fmt(throughput(&e, &d.kind)),
                d.kind.unit(),
                e.devices,
                sys.name,
                fmt(got),
                fmt(demand),
                d.kind.unit(),
                (1.0 - got / demand) * 100.0
            ));
        }
        (1, g)
    } else {
        // Inference replicas are the plan's data-parallel copies, each
        // serving on its own: as many as the demand needs.
        let dp = e.point.dp.max(1);
        let one = throughput(&e, &d.kind) / dp as f64;
        let k = (demand / one).ceil().max(1.0) as u64;
        (k, None)
    };
    // One training job, or `replicas` copies of one data-parallel replica.
    let (unit_devices, unit_rate) = if training {
        (e.devices, throughput(&e, &d.kind))
    } else {
        let dp = e.point.dp.max(1);
        (e.devices / dp, throughput(&e, &d.kind) / dp as f64)
    };
    let raw = unit_rate * replicas as f64;
    let delivered = raw * fraction(&goodput);
    let nodes = (unit_devices * replicas).div_ceil(per);
    // Devices the plans leave unused idle; capacity beyond the demand idles.
    let used = (unit_devices * replicas) as f64 / (nodes * per) as f64;
    let load = (demand / delivered).min(1.0);
    let tco = economics::tco(&owned, site, nodes, busy(&e, sys, w) * used * load)?;
    let failures = goodput.and_then(|_| failures_of(&e));
    Ok(Pool {
        workload: w.name.clone(),
        system: sys.name.clone(),
        cost_per_unit: tco.total / demand,
        plan: Sizing::Phase(Box::new(e)),
        plan_json,
        replicas,
        unit_devices,
        raw,
        delivered,
        demand,
        unit: d.kind.unit().into(),
        tco,
        failures,
        goodput,
        owned,
    })
}

/// The most copies of a system one serve pool splits its demand over
/// (each a deployment of the serving planner at an equal share).
pub const MAX_COPIES: u64 = 16;

/// The study's knobs a serving plan takes: tensor parallelism, the
/// scheduler's and the disaggregated pools'. `dp` and `batch` mean data
/// parallelism and the batch in a phase study, so a serve pool leaves
/// replicas and `max_seqs` to the planner and the workload.
const SERVE_KNOBS: [&str; 7] = [
    "tp",
    "token_budget",
    "chunked_prefill",
    "prefill_tp",
    "prefill_dp",
    "decode_tp",
    "decode_dp",
];

/// The serving plan of `w` on `sys` in a fleet study: the study's serving
/// knobs, no `subject to` (a serving plan's constraints are the workload's
/// SLOs), ranked by goodput per dollar with each node priced at the
/// fleet's capital rate (`owned`), so the planner's cheapest deployment is
/// the one with the least capital.
pub fn serve_plan_for(study: &Study, sys: &Cluster, w: &Workload, owned: &Owned) -> Plan {
    let mut c = sys.clone();
    c.node.price = Some(owned.capital_per_node);
    let mut p = plan_for(study, &c, w);
    p.search.retain(|k, _| SERVE_KNOBS.contains(&k.as_str()));
    p.fixed.retain(|k, _| SERVE_KNOBS.contains(&k.as_str()));
    p.constraints.clear();
    p.objective = (
        gantry_lang::program::Goal::Maximize,
        "throughput_per_dollar".into(),
    );
    p
}

/// The rate to draw a serve workload's arrivals at so that the drawn
/// requests arrive at `rate` over their span (`(n - 1) / span`, the rate
/// a serving report states): a finite draw at `rate` arrives a little
/// faster or slower, and a pool sized on a slower draw would be sized
/// below its demand. For a fixed seed the draw's gaps scale as `1 / rate`,
/// so one draw measures the factor.
fn drawn_rate(s: &gantry_lang::program::Serve, rate: f64) -> f64 {
    let reqs = crate::serve::requests(s, Some(rate));
    match (reqs.first(), reqs.last()) {
        (Some(a), Some(b)) if b.arrival > a.arrival => {
            let measured = (reqs.len() - 1) as f64 / (b.arrival - a.arrival);
            rate * rate / measured
        }
        _ => rate,
    }
}

/// Sizes a `serve` workload's pool on one system: the serving planner's
/// cheapest deployment meeting the SLOs at `rate` requests per second on
/// the system's devices, its power at the simulated compute-busy share.
fn size_serve(
    study: &Study,
    site: &Site,
    w: &Workload,
    sys: &Cluster,
    owned: Owned,
    rate: f64,
) -> Result<Pool, String> {
    use crate::serve::report as sr;
    use gantry_lang::program::Arrivals;
    let Some(s) = w.serve.as_deref() else {
        return Err(format!("`{}` is not a `serve` workload", w.name));
    };
    match s.arrivals {
        Arrivals::Poisson { .. } | Arrivals::Gamma { .. } => {}
        Arrivals::Trace { .. } => {
            return Err(format!(
                "`{}` replays a trace: a fleet pool is sized at the demanded rate from drawn arrivals (give it `poisson` or `gamma` arrivals)",
                w.name
            ));
        }
        Arrivals::Burst => {
            return Err(format!(
                "`{}` sends every request at once: a requests_per_s demand needs open arrivals (`poisson` or `gamma`)",
                w.name
            ));
        }
        Arrivals::Closed { .. } => {
            return Err(format!(
                "`{}` is a closed loop of clients, whose rate is what the deployment serves: a requests_per_s demand needs open arrivals (`poisson` or `gamma`)",
                w.name
            ));
        }
    }
    let p = serve_plan_for(study, sys, w, &owned);
    // The demand on one copy of the system; more copies, each serving an
    // equal share, when one copy meets no SLO at the whole rate. Poisson
    // arrivals routed at random to `k` copies are `k` Poisson streams at
    // `rate / k`, so each copy's simulation is exact; a gamma stream
    // thinned is not a gamma stream, so it is never split.
    let poisson = matches!(s.arrivals, Arrivals::Poisson { .. });
    let mut copies = 1u64;
    let sp = loop {
        let draw = drawn_rate(s, rate / copies as f64);
        match crate::serve::planner::plan(&p, Some(draw)) {
            Ok(sp) => break sp,
            Err(e)
                if e.code == gantry_lang::diagnostic::Code::C019
                    && poisson
                    && copies < MAX_COPIES =>
            {
                copies *= 2;
            }
            Err(e) => {
                let split = if copies > 1 {
                    format!(
                        " (split over {copies} copies of the system at {} req/s each)",
                        fmt(rate / copies as f64)
                    )
                } else {
                    String::new()
                };
                return Err(format!("error[{}]: {}{split}", e.code, e.message));
            }
        }
    };
    let b = &sp.best;
    let d = &b.deployment;
    let roles = if d.disaggregated() {
        vec![
            ServeRole {
                role: "prefill".into(),
                replicas: d.prefill,
                tp: d.prefill_model.tp,
            },
            ServeRole {
                role: "decode".into(),
                replicas: d.decode,
                tp: d.decode_model.tp,
            },
        ]
    } else {
        vec![ServeRole {
            role: "colocated".into(),
            replicas: d.colocated,
            tp: d.prefill_model.tp,
        }]
    };
    let served = Served {
        deployment: sr::describe(d),
        disaggregated: d.disaggregated(),
        roles,
        devices: b.devices,
        rate: b.rate,
        goodput: b.goodput,
        attainment: b.attainment,
        target_attainment: b.target_attainment,
        slos: b
            .slos
            .iter()
            .map(|c| (c.name.to_string(), c.target, c.achieved))
            .collect(),
        compute_busy: b.compute_busy,
        kv_transfer_per_request: b.transfer_bytes / b.completed.max(1) as f64,
    };
    let per = owned.devices_per_node;
    let nodes = (b.devices * copies).div_ceil(per);
    // Devices the deployments leave unused on the last node idle.
    let used = (b.devices * copies) as f64 / (nodes * per) as f64;
    let tco = economics::tco(&owned, site, nodes, b.compute_busy * used)?;
    Ok(Pool {
        workload: w.name.clone(),
        system: sys.name.clone(),
        cost_per_unit: tco.total / rate,
        plan_json: sr::plan_json(&p, &sp, 5),
        plan: Sizing::Serve(Box::new(served)),
        replicas: copies,
        unit_devices: b.devices,
        // The planner simulated each copy's share of the demanded rate
        // and the deployment met the SLOs for the workload's attainment
        // with a stable queue: the copies serve the demand (goodput and
        // attainment are in `plan`).
        raw: rate,
        delivered: rate,
        demand: rate,
        unit: "requests".into(),
        tco,
        failures: None,
        goodput: None,
        owned,
    })
}

fn fmt(v: f64) -> String {
    gantry_lang::units::format_number(v)
}

/// The most system combinations the pooled fleet enumerates when the
/// cheapest pools together exceed the site's power cap.
pub const MAX_COMBINATIONS: usize = 100_000;

fn fleet(choice: Vec<usize>, table: &[Vec<Result<Pool, String>>]) -> Option<Fleet> {
    let pools: Vec<Pool> = choice
        .iter()
        .enumerate()
        .map(|(d, &s)| table[d][s].as_ref().ok().cloned())
        .collect::<Option<_>>()?;
    Some(Fleet {
        cost: pools.iter().map(|p| p.tco.total).sum(),
        power: pools.iter().map(|p| p.tco.facility_power).sum(),
        provisioned: pools.iter().map(|p| p.tco.provisioned_power).sum(),
        choice,
        pools,
    })
}

/// The fleets [`choose`] picks: systems by demand.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// The cheapest pooled fleet within the cap, or the least provisioned
    /// power any fleet meeting the demand needs (when none fits).
    pub pooled: Result<Vec<usize>, f64>,
    /// The system of the cheapest homogeneous fleet within the cap.
    pub homogeneous: Option<usize>,
}

/// Total cost and provisioned power of a choice, if every pool exists.
fn totals(costs: &[Vec<Option<(f64, f64)>>], choice: &[usize]) -> Option<(f64, f64)> {
    choice
        .iter()
        .enumerate()
        .try_fold((0.0, 0.0), |(c, p), (d, &s)| {
            let (dc, dp) = costs[d][s]?;
            Some((c + dc, p + dp))
        })
}

/// Picks fleets from `costs[demand][system]` = (cost, provisioned power)
/// of a pool meeting that demand on that system (None: it cannot) under
/// the power cap `cap`. Pooled: each demand's cheapest system; if
/// together they exceed the cap, every combination up to
/// [`MAX_COMBINATIONS`]; and never more costly than the homogeneous
/// fleet, which is among the choices. Arithmetic only, so the fleet
/// properties are tested on random tables.
pub fn choose(costs: &[Vec<Option<(f64, f64)>>], cap: f64) -> Choice {
    let demands = costs.len();
    let systems = costs.first().map_or(0, Vec::len);
    let mut homogeneous: Option<(usize, f64)> = None;
    for s in 0..systems {
        if let Some((c, p)) = totals(costs, &vec![s; demands])
            && p <= cap
            && homogeneous.is_none_or(|h| c < h.1)
        {
            homogeneous = Some((s, c));
        }
    }
    let cheapest: Vec<usize> = costs
        .iter()
        .map(|row| {
            let cost = |i: usize| row[i].map_or(f64::INFINITY, |x| x.0);
            (0..systems).fold(0, |b, s| if cost(s) < cost(b) { s } else { b })
        })
        .collect();
    let mut pooled: Option<(Vec<usize>, f64)> = totals(costs, &cheapest)
        .filter(|t| t.1 <= cap)
        .map(|t| (cheapest, t.0));
    let combinations = systems.checked_pow(demands as u32).unwrap_or(usize::MAX);
    if pooled.is_none() && combinations <= MAX_COMBINATIONS {
        for mut i in 0..combinations {
            let mut choice = Vec::with_capacity(demands);
            for _ in 0..demands {
                choice.push(i % systems);
                i /= systems;
            }
            if let Some((c, p)) = totals(costs, &choice)
                && p <= cap
                && pooled.as_ref().is_none_or(|b| c < b.1)
            {
                pooled = Some((choice, c));
            }
        }
    }
    if let Some((s, c)) = homogeneous
        && pooled.as_ref().is_none_or(|b| c < b.1)
    {
        pooled = Some((vec![s; demands], c));
    }
    let least: f64 = costs
        .iter()
        .map(|row| {
            row.iter()
                .flatten()
                .map(|x| x.1)
                .fold(f64::INFINITY, f64::min)
        })
        .sum();
    Choice {
        pooled: pooled.map(|p| p.0).ok_or(least),
        homogeneous: homogeneous.map(|h| h.0),
    }
}

/// Chooses the cheapest pooled and homogeneous fleets within the site's
/// power cap from a table of sized pools (`table[demand][system]`).
pub fn assemble(
    demand: &[Demand],
    site: &Site,
    table: Vec<Vec<Result<Pool, String>>>,
) -> Result<Answer, Unmet> {
    // A workload no system can serve names the first system's reason.
    for (d, row) in table.iter().enumerate() {
        if row.iter().all(Result::is_err) {
            let why = row.iter().find_map(|r| r.as_ref().err().cloned());
            return Err(Unmet {
                message: format!(
                    "no system of the sweep meets the demand of `{}`: {}",
                    demand[d].workload,
                    why.unwrap_or_default()
                ),
                help: "add larger or faster systems to the sweep, relax the demand or its deadline, or widen the plan's search".into(),
            });
        }
    }
    let costs: Vec<Vec<Option<(f64, f64)>>> = table
        .iter()
        .map(|row| {
            row.iter()
                .map(|p| {
                    p.as_ref()
                        .ok()
                        .map(|p| (p.tco.total, p.tco.provisioned_power))
                })
                .collect()
        })
        .collect();
    let cap = site.power_cap.unwrap_or(f64::INFINITY);
    let choice = choose(&costs, cap);
    let homogeneous = choice
        .homogeneous
        .and_then(|s| fleet(vec![s; demand.len()], &table));
    match choice.pooled {
        Ok(c) => match fleet(c, &table) {
            Some(pooled) => Ok(Answer {
                pooled,
                homogeneous,
                table,
            }),
            None => Err(Unmet {
                message: "no fleet meets the demand".into(),
                help: String::new(),
            }),
        },
        Err(need) => Err(Unmet {
            message: format!(
                "the site's power cap of {:.3} MW binds: the least power-hungry fleet meeting the demand provisions {:.3} MW, short by {:.3} MW",
                cap / 1e6,
                need / 1e6,
                (need - cap) / 1e6
            ),
            help: "raise `power_cap`, relax the demand, or sweep more efficient systems".into(),
        }),
    }
}
