//! Sensitivity and bottlenecks: what +10% of one resource buys a workload
//! on a system (issue 13, deliverable 6; docs/COST-MODEL.md §10).
//!
//! Shaped as re-planning, not differentiation: the cost model is a search
//! over discrete design points (a larger HBM admits another parallelism,
//! a faster link moves the best tensor-parallel degree), so the only
//! honest answer to "what would more of X buy" is to give the system more
//! X and search again with the study's own plan ([`crate::study::cell_plan`]).
//! Each (workload, system) cell is one base search plus one search per
//! [`Resource`] with that resource's figures scaled by [`STEP`]; the
//! elasticity is the relative change of the best plan's throughput over
//! the relative change of the resource, `(T'/T - 1) / 0.1`. The binding
//! resource is the one with the largest elasticity, if any reaches
//! [`BINDING_FLOOR`] (below it the plan is bound by none of the six:
//! latencies, overheads or a fixed batch).
//!
//! The perturbations live in [`perturb`], one per resource, reading and
//! writing only the `stdlib` figures the cost model reads for that
//! resource (hardware.rs, collective.rs), so a resource's meaning is in
//! one place. A system without a resource (no host memory, no scale-up
//! links, no fabric) has no elasticity for it (`None`), not a zero.
//!
//! Cells are independent and run on the rayon pool in order-preserving
//! `collect`s, so the result does not depend on the thread count.

use serde::{Deserialize, Serialize};

use gantry_lang::program::{Cluster, Study, Workload};
use rayon::prelude::*;

/// The relative step of every perturbation (+10%).
pub const STEP: f64 = 0.10;

/// The least elasticity that makes a resource binding.
pub const BINDING_FLOOR: f64 = 0.01;

/// A resource a system can have more of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Resource {
    /// Peak FLOP/s of every precision of the device.
    Compute,
    /// The device memory's (`hbm`, else the first) bandwidth.
    HbmBandwidth,
    /// The device memory's capacity.
    HbmCapacity,
    /// Every scale-up link's (NVLink, Infinity Fabric) bandwidth.
    ScaleUp,
    /// The NICs' and the fabric ports' bandwidth (the model takes the
    /// smaller of the two).
    ScaleOut,
    /// The node's host memory, capacity and bandwidth.
    HostMemory,
}

impl Resource {
    pub const ALL: [Resource; 6] = [
        Resource::Compute,
        Resource::HbmBandwidth,
        Resource::HbmCapacity,
        Resource::ScaleUp,
        Resource::ScaleOut,
        Resource::HostMemory,
    ];

    /// The name in every output form.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Compute => "compute",
            Resource::HbmBandwidth => "hbm_bandwidth",
            Resource::HbmCapacity => "hbm_capacity",
            Resource::ScaleUp => "scale_up_bandwidth",
            Resource::ScaleOut => "scale_out_bandwidth",
            Resource::HostMemory => "host_memory",
        }
    }

    /// A short label for plots and tables.
    pub fn label(self) -> &'static str {
        match self {
            Resource::Compute => "compute",
            Resource::HbmBandwidth => "HBM BW",
            Resource::HbmCapacity => "HBM cap.",
            Resource::ScaleUp => "scale-up",
            Resource::ScaleOut => "scale-out",
            Resource::HostMemory => "host mem.",
        }
    }
}

/// `c` with resource `r` scaled by `factor`, or `None` if the system has
/// none of it.
pub fn perturb(c: &Cluster, r: Resource, factor: f64) -> Option<Cluster> {
    let mut c = c.clone();
    let d = &mut c.node.device;
    match r {
        Resource::Compute => {
            if d.compute.is_empty() {
                return None;
            }
            d.compute.values_mut().for_each(|v| *v *= factor);
        }
        Resource::HbmBandwidth | Resource::HbmCapacity => {
            // The memory `Hardware::new` reads: `hbm`, else the first.
            let i = d
                .memories
                .iter()
                .position(|m| m.name == "hbm")
                .or((!d.memories.is_empty()).then_some(0))?;
            let m = &mut d.memories[i];
            if r == Resource::HbmBandwidth {
                m.bandwidth *= factor;
            } else {
                m.capacity *= factor;
            }
        }
        Resource::ScaleUp => {
            if c.node.links.is_empty() {
                return None;
            }
            c.node.links.iter_mut().for_each(|l| l.bandwidth *= factor);
        }
        Resource::ScaleOut => {
            if c.nodes <= 1 || c.node.nics == 0 || c.node.nic_bandwidth <= 0.0 {
                return None;
            }
            c.node.nic_bandwidth *= factor;
            if let Some(f) = &mut c.fabric {
                f.bandwidth *= factor;
            }
        }
        Resource::HostMemory => {
            let h = c.node.host_memory.as_mut()?;
            h.capacity *= factor;
            h.bandwidth *= factor;
        }
    }
    Some(c)
}

/// One workload's sensitivity on one system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    /// The best plan's throughput (tokens or samples per second) on the
    /// system as declared.
    pub base: f64,
    /// Per resource (in [`Resource::ALL`] order): the best plan's
    /// throughput with +[`STEP`] of it, or why there is none (`None`: the
    /// system lacks the resource; `Some(Err)`: the perturbed search failed).
    pub perturbed: Vec<(Resource, Option<Result<f64, String>>)>,
}

impl Sensitivity {
    /// The elasticity to `r`: `(T'/T - 1) / STEP`.
    pub fn elasticity(&self, r: Resource) -> Option<f64> {
        let t = self.perturbed.iter().find(|p| p.0 == r)?.1.as_ref()?;
        let t = *t.as_ref().ok()?;
        (self.base > 0.0).then(|| (t / self.base - 1.0) / STEP)
    }

    /// The resource with the largest elasticity, if one reaches
    /// [`BINDING_FLOOR`]; ties go to the first in [`Resource::ALL`].
    pub fn binding(&self) -> Option<Resource> {
        let mut best: Option<(Resource, f64)> = None;
        for r in Resource::ALL {
            if let Some(e) = self.elasticity(r)
                && e >= BINDING_FLOOR
                && best.is_none_or(|b| e > b.1)
            {
                best = Some((r, e));
            }
        }
        best.map(|b| b.0)
    }
}

/// The throughput of the study's best plan for `w` on `sys`.
fn best(study: &Study, sys: &Cluster, w: &Workload) -> Result<f64, String> {
    base_of(&crate::study::search_cell(study, sys, w))
}

/// The base throughput of a cell from the study's own search of it, so
/// a study that has searched the cell already does not search it again.
pub fn base_of(searched: &Result<crate::cost::Estimate, String>) -> Result<f64, String> {
    searched
        .as_ref()
        .map(|e| e.metric("throughput").unwrap_or(0.0))
        .map_err(Clone::clone)
}

/// The sensitivity of workload `w` on system `sys`; `tick` is called
/// once per search.
pub fn of(
    study: &Study,
    sys: &Cluster,
    w: &Workload,
    tick: &(dyn Fn() + Sync),
) -> Result<Sensitivity, String> {
    let base = best(study, sys, w);
    tick();
    around(study, sys, w, base, tick)
}

/// [`of`] with the base throughput already known (the cell's own search,
/// [`base_of`]): only the [`PERTURBED_SEARCHES`] perturbed searches run.
pub fn around(
    study: &Study,
    sys: &Cluster,
    w: &Workload,
    base: Result<f64, String>,
    tick: &(dyn Fn() + Sync),
) -> Result<Sensitivity, String> {
    let base = base.inspect_err(|_| (0..PERTURBED_SEARCHES).for_each(|_| tick()))?;
    let perturbed = Resource::ALL
        .par_iter()
        .map(|&r| {
            let t = perturb(sys, r, 1.0 + STEP).map(|c| best(study, &c, w));
            tick();
            (r, t)
        })
        .collect();
    Ok(Sensitivity { base, perturbed })
}

/// Searches beyond the base one a cell's sensitivity costs.
pub const PERTURBED_SEARCHES: u64 = Resource::ALL.len() as u64;

/// `table[system][workload]` of a study's sweep (workloads in the
/// study's order).
pub type Table = Vec<Vec<Result<Sensitivity, String>>>;

/// Every (system, workload) cell of a study.
pub fn study(study: &Study, tick: &(dyn Fn() + Sync)) -> Table {
    study
        .systems
        .par_iter()
        .map(|s| {
            study
                .workloads
                .par_iter()
                .map(|(w, _)| of(study, s, w, tick))
                .collect()
        })
        .collect()
}

// ------------------------------------------------------------- outputs

fn num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!(v)
    } else {
        serde_json::Value::Null
    }
}

/// The `sensitivity` member of a study's `gantry.study/1` entry
/// (docs/SCHEMAS.md): one cell per (system, workload), systems in sweep
/// order.
pub fn json(st: &Study, table: &Table) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut cells = Vec::new();
    for (i, (sys, row)) in st.systems.iter().zip(table).enumerate() {
        for ((w, _), cell) in st.workloads.iter().zip(row) {
            let (base, resources, binding, reason) = match cell {
                Ok(s) => {
                    let rs: Vec<Value> = s
                        .perturbed
                        .iter()
                        .map(|(r, t)| {
                            json!({
                                "resource": r.name(),
                                "throughput_per_s": match t { Some(Ok(t)) => num(*t), _ => Value::Null },
                                "elasticity": s.elasticity(*r).map_or(Value::Null, num),
                                "reason": match t {
                                    None => Value::from("the system has none of it"),
                                    Some(Err(e)) => Value::from(e.as_str()),
                                    Some(Ok(_)) => Value::Null,
                                },
                            })
                        })
                        .collect();
                    (num(s.base), rs, s.binding().map(Resource::name), None)
                }
                Err(e) => (Value::Null, Vec::new(), None, Some(e.as_str())),
            };
            cells.push(json!({
                "system_index": i,
                "system": sys.name,
                "workload": w.name,
                "feasible": reason.is_none(),
                "reason": reason,
                "base_throughput_per_s": base,
                "resources": resources,
                "binding": binding,
            }));
        }
    }
    json!({
        "objective": "throughput_per_s",
        "step": STEP,
        "binding_floor": BINDING_FLOOR,
        "resources": Resource::ALL.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "cells": cells,
    })
}

/// The CSV header of the sensitivity table.
pub fn csv_header() -> Vec<String> {
    let mut h: Vec<String> = ["study", "system", "workload", "base_throughput_per_s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    h.extend(
        Resource::ALL
            .iter()
            .map(|r| format!("elasticity_{}", r.name())),
    );
    h.push("binding".into());
    h.push("reason".into());
    h
}

/// One CSV row per (system, workload); an elasticity the system has no
/// figure for is an empty field.
pub fn csv_rows(st: &Study, table: &Table) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (sys, row) in st.systems.iter().zip(table) {
        for ((w, _), cell) in st.workloads.iter().zip(row) {
            let mut r = vec![st.name.clone(), sys.name.clone(), w.name.clone()];
            match cell {
                Ok(s) => {
                    r.push(s.base.to_string());
                    r.extend(
                        Resource::ALL
                            .iter()
                            .map(|&x| s.elasticity(x).map_or(String::new(), |e| e.to_string())),
                    );
                    r.push(s.binding().map_or("", Resource::name).into());
                    r.push(String::new());
                }
                Err(e) => {
                    r.extend(std::iter::repeat_n(String::new(), Resource::ALL.len() + 2));
                    r.push(e.clone());
                }
            }
            out.push(r);
        }
    }
    out
}

/// The table as text lines or a Markdown table: elasticities to two
/// decimals, the binding one marked `*`, `-` where the system lacks the
/// resource or the search failed.
pub fn text(st: &Study, table: &Table, markdown: bool) -> String {
    let cols: Vec<&str> = Resource::ALL.iter().map(|r| r.label()).collect();
    let width = st
        .workloads
        .iter()
        .map(|(w, _)| w.name.len() + 1)
        .max()
        .unwrap_or(0);
    let mut s = if markdown {
        format!(
            "\n### Sensitivity: elasticity of the best plan's throughput to +{:.0}% of each resource (* binding)\n\n| system | workload | {} | binding |\n|---|---|{}---|\n",
            STEP * 100.0,
            cols.join(" | "),
            "---:|".repeat(cols.len())
        )
    } else {
        format!(
            "Sensitivity: elasticity of the best plan's throughput to +{:.0}% of each resource (* binding)\n    {:width$}{}\n",
            STEP * 100.0,
            "",
            cols.iter().map(|c| format!("{c:>10}")).collect::<String>()
        )
    };
    for (sys, row) in st.systems.iter().zip(table) {
        if !markdown {
            s.push_str(&format!("  {}\n", sys.name));
        }
        for ((w, _), cell) in st.workloads.iter().zip(row) {
            let (vals, binding): (Vec<String>, &str) = match cell {
                Ok(c) => {
                    let b = c.binding();
                    (
                        Resource::ALL
                            .iter()
                            .map(|&r| match c.elasticity(r) {
                                Some(e) => {
                                    format!("{e:.2}{}", if Some(r) == b { "*" } else { "" })
                                }
                                None => "-".into(),
                            })
                            .collect(),
                        b.map_or("none", Resource::name),
                    )
                }
                Err(e) => (
                    vec!["-".into(); Resource::ALL.len()],
                    if markdown { "-" } else { e.as_str() },
                ),
            };
            if markdown {
                s.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    sys.name,
                    w.name,
                    vals.join(" | "),
                    binding.replace('|', "\\|")
                ));
            } else {
                s.push_str(&format!(
                    "    {:width$}{} binding: {}\n",
                    format!("{}:", w.name),
                    vals.iter().map(|v| format!("{v:>10}")).collect::<String>(),
                    binding
                ));
            }
        }
    }
    s
}
