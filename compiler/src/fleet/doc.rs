//! The fleet answer as data: the `fleet` part of a `gantry.study/1`
//! document (schemas/gantry.study.v1.json) and its CSV rows.
//!
//! Every figure is a field of [`Pool`], [`Fleet`], the study's [`Site`] or
//! [`Fronts`], written in base units with the unit in its name
//! (docs/SCHEMAS.md): the JSON adds no arithmetic beyond sums a reader can
//! redo, and each economics and reliability term is written next to its
//! inputs, so a TCO or a goodput can be recomputed from the document
//! (docs/COST-MODEL.md §9).

use serde_json::{Value, json};

use super::front::Fronts;
use super::{Answer, Fleet, Pool, Sizing};
use gantry_lang::program::{Demand, Site};

/// `null` for a figure that is not finite (JSON has no infinity).
fn num(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

fn opt(v: Option<f64>) -> Value {
    v.map_or(Value::Null, num)
}

/// The site's figures, in base units.
pub fn site_json(s: &Site) -> Value {
    json!({
        "pue": s.pue,
        "energy_price_usd_per_j": s.energy_price,
        "power_cap_w": opt(s.power_cap),
        "rack_power_w": opt(s.rack_power),
        "storage_bytes_per_s": opt(s.storage),
        "restart_s": opt(s.restart),
    })
}

fn economics(p: &Pool, site: &Site) -> Value {
    let (o, t) = (&p.owned, &p.tco);
    json!({
        "rented": o.rented,
        "purchase": o.purchase.map_or(Value::Null, |b| json!({
            "device_usd": b[0],
            "device_amortization_s": b[1],
            "node_usd": b[2],
            "node_amortization_s": b[3],
        })),
        "capital_per_node_usd_per_s": o.capital_per_node,
        "device_power_w": o.device_power,
        "device_idle_power_w": o.device_idle,
        "node_power_w": o.node_power,
        "node_idle_power_w": o.node_idle,
        "busy": t.busy,
        "pue": site.pue,
        "energy_price_usd_per_j": site.energy_price,
        "it_power_w": t.it_power,
        "facility_power_w": t.facility_power,
        "provisioned_power_w": t.provisioned_power,
        "racks": t.racks,
        "capital_usd_per_s": t.capital,
        "energy_usd_per_s": t.energy,
        "total_usd_per_s": t.total,
    })
}

fn reliability(p: &Pool) -> Value {
    match (&p.goodput, &p.failures) {
        (Some(g), Some(f)) => json!({
            "devices": f.devices,
            "nodes": f.nodes,
            "device_mtbf_s": f.device_mtbf,
            "node_mtbf_s": opt(f.node_mtbf),
            "pool_mtbf_s": num(g.mtbf),
            "checkpoint_state_bytes": g.state,
            "checkpoint_s": g.checkpoint,
            "interval_s": g.interval,
            "restart_s": g.restart,
            "goodput_fraction": g.fraction,
        }),
        _ => Value::Null,
    }
}

/// A serve pool's deployment and how it met its SLOs (null for a phase
/// pool): the figures of its `gantry.serve/1` plan that the candidates,
/// which leave the plan out, still need.
fn serve(p: &Pool) -> Value {
    let Sizing::Serve(v) = &p.plan else {
        return Value::Null;
    };
    json!({
        "deployment": v.deployment,
        "disaggregated": v.disaggregated,
        "pools": v.roles.iter().map(|r| json!({ "role": r.role, "replicas": r.replicas, "tp": r.tp })).collect::<Vec<_>>(),
        "devices": v.devices,
        "rate_per_s": v.rate,
        "goodput_per_s": v.goodput,
        "attainment": v.attainment,
        "target_attainment": v.target_attainment,
        "slos": v.slos.iter().map(|(n, t, a)| json!({ "name": n, "target_s": t, "achieved_s": a, "met": a <= t })).collect::<Vec<_>>(),
        "compute_busy": v.compute_busy,
        "kv_transfer_bytes_per_request": v.kv_transfer_per_request,
    })
}

/// One pool: its size, its plan (`with_plan`; the candidates leave it
/// out, as a sweep of a thousand systems would carry thousands) and the
/// terms of its cost and goodput.
pub fn pool_json(p: &Pool, system: usize, site: &Site, with_plan: bool) -> Value {
    json!({
        "workload": p.workload,
        "system": p.system,
        "system_index": system,
        "unit": p.unit,
        "demand_per_s": p.demand,
        "replicas": p.replicas,
        "unit_devices": p.unit_devices,
        "nodes": p.tco.nodes,
        "devices": p.tco.devices,
        "raw_per_s": p.raw,
        "delivered_per_s": p.delivered,
        "cost_per_unit_usd": p.cost_per_unit,
        "plan": if with_plan { p.plan_json.clone() } else { Value::Null },
        "serve": serve(p),
        "economics": economics(p, site),
        "reliability": reliability(p),
    })
}

fn fleet_json(f: &Fleet, site: &Site) -> Value {
    json!({
        "systems": f.choice,
        "cost_usd_per_s": f.cost,
        "power_w": f.power,
        "provisioned_power_w": f.provisioned,
        "pools": f.pools.iter().zip(&f.choice).map(|(p, &s)| pool_json(p, s, site, true)).collect::<Vec<_>>(),
    })
}

/// The `fleet` object of a study with demand.
pub fn json(a: &Answer, demand: &[Demand], site: &Site, fronts: &Fronts) -> Value {
    let homogeneity = a.homogeneous.as_ref().map(|h| h.cost - a.pooled.cost);
    let candidates: Vec<Value> = a
        .table
        .iter()
        .zip(demand)
        .map(|(row, d)| {
            json!({
                "workload": d.workload,
                "pools": row.iter().enumerate().map(|(s, r)| match r {
                    Ok(p) => json!({ "system_index": s, "pool": pool_json(p, s, site, false), "reason": null }),
                    Err(why) => json!({ "system_index": s, "pool": null, "reason": why }),
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "site": site_json(site),
        "demand": demand.iter().map(|d| json!({
            "workload": d.workload,
            "unit": d.kind.unit(),
            "rate_per_s": d.kind.rate(),
        })).collect::<Vec<_>>(),
        "pooled": fleet_json(&a.pooled, site),
        "homogeneous": a.homogeneous.as_ref().map_or(Value::Null, |h| fleet_json(h, site)),
        "homogeneity_cost_usd_per_s": opt(homogeneity),
        "homogeneity_cost_fraction": opt(homogeneity
            .filter(|_| a.pooled.cost > 0.0)
            .map(|x| x / a.pooled.cost)),
        "candidates": candidates,
        "pareto": {
            "pools": fronts.pools.iter().zip(demand).map(|(f, d)| json!({
                "workload": d.workload,
                "objectives": ["total_usd_per_s", "delivered_per_s", "facility_power_w"],
                "systems": f,
            })).collect::<Vec<_>>(),
            "fleets": {
                "objectives": ["cost_usd_per_s", "power_w"],
                "candidates": fronts.candidates,
                "truncated": fronts.truncated,
                "members": fronts.fleets.iter().map(|f| json!({
                    "systems": f.choice,
                    "cost_usd_per_s": f.cost,
                    "power_w": f.power,
                    "provisioned_power_w": f.provisioned,
                    "within_cap": f.within_cap,
                })).collect::<Vec<_>>(),
            },
        },
    })
}

/// The CSV header of [`csv_rows`].
pub const CSV_HEADER: &[&str] = &[
    "study",
    "fleet",
    "workload",
    "system",
    "nodes",
    "devices",
    "replicas",
    "unit_devices",
    "plan_dp",
    "plan_tp",
    "plan_pp",
    "plan_cp",
    "plan_ep",
    "unit",
    "demand_per_s",
    "raw_per_s",
    "delivered_per_s",
    "goodput_fraction",
    "busy",
    "facility_power_w",
    "provisioned_power_w",
    "capital_usd_per_s",
    "energy_usd_per_s",
    "total_usd_per_s",
    "cost_per_unit_usd",
    "deployment",
];

/// One row per (fleet kind, workload pool): the pooled fleet's pools,
/// then the homogeneous fleet's.
pub fn csv_rows(study: &str, a: &Answer) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let kinds = [
        ("pooled", Some(&a.pooled)),
        ("homogeneous", a.homogeneous.as_ref()),
    ];
    for (kind, fleet) in kinds {
        for p in fleet.map(|f| f.pools.as_slice()).unwrap_or_default() {
            // A serve pool has no phase plan: its parallelism cells are
            // empty and its deployment is the last cell.
            let pt = p.plan.estimate().map(|e| e.point);
            let cell = |f: &dyn Fn(&crate::point::DesignPoint) -> u64| {
                pt.as_ref().map_or(String::new(), |pt| f(pt).to_string())
            };
            let deployment = match &p.plan {
                Sizing::Serve(v) => v.deployment.clone(),
                Sizing::Phase(_) => String::new(),
            };
            let t = &p.tco;
            rows.push(vec![
                study.to_string(),
                kind.to_string(),
                p.workload.clone(),
                p.system.clone(),
                t.nodes.to_string(),
                t.devices.to_string(),
                p.replicas.to_string(),
                p.unit_devices.to_string(),
                cell(&|pt| pt.dp),
                cell(&|pt| pt.tp),
                cell(&|pt| pt.pp),
                cell(&|pt| pt.cp),
                cell(&|pt| pt.ep),
                p.unit.to_string(),
                p.demand.to_string(),
                p.raw.to_string(),
                p.delivered.to_string(),
                p.goodput.map_or(1.0, |g| g.fraction).to_string(),
                t.busy.to_string(),
                t.facility_power.to_string(),
                t.provisioned_power.to_string(),
                t.capital.to_string(),
                t.energy.to_string(),
                t.total.to_string(),
                p.cost_per_unit.to_string(),
                deployment,
            ]);
        }
    }
    rows
}
