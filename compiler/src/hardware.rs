//! The hardware figures and calibration one evaluation needs, read once
//! from the checked program into plain numbers.
//!
//! Calibration factors come from the device's `efficiency { ... }` record in
//! the stdlib, shared by every run of that device. A factor a device does
//! not declare defaults to the ideal (1.0, or 0 for knees, overheads and
//! reserves), so an uncalibrated device gives an optimistic bound; the
//! report lists which factors were declared.

use gantry_lang::program::{Cluster, DType, Device};
use gantry_lang::units::Dim;

use crate::collective::Topology;

/// Names of the efficiency factors the cost model reads, with their meaning.
pub const FACTORS: &[(&str, &str)] = &[
    (
        "matmul",
        "fraction of peak FLOP/s a large matrix product reaches",
    ),
    (
        "matmul_knee",
        "FLOP per product at which it reaches half of that fraction",
    ),
    (
        "attention",
        "fraction of peak for attention score and value products (default: matmul)",
    ),
    (
        "memory",
        "fraction of HBM bandwidth streaming kernels reach",
    ),
    (
        "scaleup",
        "fraction of scale-up link bandwidth collectives reach (bus bandwidth)",
    ),
    ("scaleout", "fraction of NIC bandwidth collectives reach"),
    ("kernel_overhead", "fixed time per kernel launch"),
    (
        "step_overhead",
        "fixed host-side time per step (framework, synchronisation, input pipeline)",
    ),
    (
        "reserve",
        "HBM kept back for the runtime, allocator and fragmentation",
    ),
];

#[derive(Clone, Debug, PartialEq)]
pub struct Hardware {
    pub device: String,
    /// The node's name, for diagnostics about its links.
    pub node: String,
    pub peak: f64,
    pub hbm_capacity: f64,
    pub hbm_bandwidth: f64,
    pub host_bandwidth: f64,
    pub e_matmul: f64,
    pub matmul_knee: f64,
    pub e_attention: f64,
    pub e_memory: f64,
    pub kernel_overhead: f64,
    pub step_overhead: f64,
    pub reserve: f64,
    pub topo: Topology,
    pub device_power: f64,
    pub node_power: f64,
    pub devices_per_node: u64,
    /// Dollars per second per device (node price split evenly if declared).
    pub price_per_device: Option<f64>,
    /// Declared factors, for the report.
    pub declared: Vec<String>,
}

/// A figure the cost model needs and the stdlib does not give.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingFigure {
    pub device: String,
    pub what: String,
}

fn factor(d: &Device, k: &str, dim: Dim, default: f64) -> f64 {
    d.efficiency
        .get(k)
        .filter(|q| q.dim == dim)
        .map_or(default, |q| q.value)
}

impl Hardware {
    pub fn new(c: &Cluster, dtype: DType) -> Result<Hardware, MissingFigure> {
        let d = &c.node.device;
        // TF32 runs fp32 storage on tensor cores; fall back to fp32 figures.
        let peak = d
            .compute
            .get(&dtype)
            .or_else(|| {
                if dtype == DType::F32 {
                    d.compute.get(&DType::Tf32)
                } else {
                    None
                }
            })
            .copied()
            .ok_or_else(|| MissingFigure {
                device: d.name.clone(),
                what: format!("a `{}` compute rate", dtype.name()),
            })?;
        let hbm = d
            .memories
            .iter()
            .find(|m| m.name == "hbm")
            .or(d.memories.first())
            .ok_or_else(|| MissingFigure {
                device: d.name.clone(),
                what: "a memory".into(),
            })?;
        let e_matmul = factor(d, "matmul", Dim::NONE, 1.0);
        let topo = Topology::new(
            c,
            factor(d, "scaleup", Dim::NONE, 1.0),
            factor(d, "scaleout", Dim::NONE, 1.0),
        );
        let per_node = c.node.devices_per_node.max(1);
        Ok(Hardware {
            device: d.name.clone(),
            node: c.node.name.clone(),
            peak,
            hbm_capacity: hbm.capacity,
            hbm_bandwidth: hbm.bandwidth,
            host_bandwidth: c.node.host_memory.as_ref().map_or(0.0, |h| h.bandwidth),
            e_matmul,
            matmul_knee: factor(d, "matmul_knee", Dim::FLOP, 0.0),
            e_attention: factor(d, "attention", Dim::NONE, e_matmul),
            e_memory: factor(d, "memory", Dim::NONE, 1.0),
            kernel_overhead: factor(d, "kernel_overhead", Dim::TIME, 0.0),
            step_overhead: factor(d, "step_overhead", Dim::TIME, 0.0),
            reserve: factor(d, "reserve", Dim::BYTES, 0.0),
            topo,
            device_power: d.power,
            node_power: c.node.power_overhead,
            devices_per_node: per_node,
            price_per_device: c.node.price.map(|p| p / per_node as f64).or(d.price),
            declared: d.efficiency.keys().cloned().collect(),
        })
    }
}
