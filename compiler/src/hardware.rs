//! The hardware figures and calibration one evaluation needs, read once
//! from the checked program into plain numbers.
//!
//! Calibration factors come from the device's `efficiency { ... }` record in
//! the stdlib, shared by every run of that device. A factor a device does
//! not declare defaults to the ideal (1.0, or 0 for knees, overheads and
//! reserves), so an uncalibrated device gives an optimistic bound; the
//! report lists which factors were declared. A device may borrow a phase's
//! kernel factors from another (`efficiency { train = H100_96GB }`): the
//! checker copies them in and records the lender, which
//! [`Uncertainty::borrowed_from`] carries into every report, so one fitted
//! record prices every part of the same silicon.

use gantry_lang::program::{Cluster, DType, Device, Phase, Workload};
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
    (
        "tp_overlap",
        "fraction of the tensor-parallel time that async TP could hide behind products that it does hide",
    ),
    ("kernel_overhead", "fixed time per kernel launch"),
    (
        "step_overhead",
        "fixed host-side time per step (framework, synchronisation, input pipeline)",
    ),
    (
        "seq_overhead",
        "host time per sequence per inference iteration (scheduling, sampling, detokenisation)",
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
    /// Streaming multiprocessors (compute units), for wave quantisation.
    pub cores: Option<u64>,
    /// Special-function results per second (the device's `sfu`), which
    /// fused attention's exponentials run at; `None`: not charged.
    pub sfu: Option<f64>,
    /// Peak of the linear layers' matrix products: `peak` unless the
    /// workload's `precision = { matmul = ... }` names another type.
    pub peak_matmul: f64,
    /// Bytes per element of that type (what a cast writes).
    pub matmul_elem_bytes: f64,
    pub hbm_capacity: f64,
    pub hbm_bandwidth: f64,
    pub host_bandwidth: f64,
    /// The node's host memory, bytes (0 without one): the room for the
    /// embedding tables placed in host memory, shared by its devices.
    pub host_capacity: f64,
    pub e_matmul: f64,
    pub matmul_knee: f64,
    pub e_attention: f64,
    pub e_memory: f64,
    /// Of the tensor-parallel time async TP could hide, the part it does.
    pub tp_overlap: f64,
    pub kernel_overhead: f64,
    pub step_overhead: f64,
    /// Inference: the engine's host time per sequence in one iteration.
    pub seq_overhead: f64,
    pub reserve: f64,
    pub topo: Topology,
    pub device_power: f64,
    pub node_power: f64,
    pub devices_per_node: u64,
    /// Dollars per second per device (node price split evenly if declared).
    pub price_per_device: Option<f64>,
    /// Declared factors, for the report.
    pub declared: Vec<String>,
    /// The fit's leave-one-out band for this device and phase; `None`:
    /// uncalibrated.
    pub uncertainty: Option<Uncertainty>,
}

/// A figure the cost model needs and the stdlib does not give.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingFigure {
    pub device: String,
    /// What is missing, without an article: the messages read "device `D`
    /// has no {what}" (`bf16` compute rate, memory).
    pub what: String,
}

/// A factor for one phase: the phase's own record (`train.matmul`) if it
/// declares it, else the device-wide one (`matmul`), else `default`.
fn factor(d: &Device, phase: &str, k: &str, dim: Dim, default: f64) -> f64 {
    d.efficiency
        .get(&format!("{phase}.{k}"))
        .or_else(|| d.efficiency.get(k))
        .filter(|q| q.dim == dim)
        .map_or(default, |q| q.value)
}

/// The calibration key of a workload's phase: `train`, or `infer` for
/// prefill and decode (they share kernels, not training's).
pub fn phase_key(phase: &Phase) -> &'static str {
    match phase {
        Phase::Train { .. } => "train",
        _ => "infer",
    }
}

/// The leave-one-out error band `gantry calibrate --fit` recorded for a
/// device and phase: every prediction of that pair carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct Uncertainty {
    /// Reference rows the factors were fitted on.
    pub rows: u64,
    /// Median and worst leave-one-out relative error (fractions).
    pub median: f64,
    pub max: f64,
    /// The device the factors and this band were fitted on, when the
    /// phase borrows them (`efficiency { train = H100_96GB }`): the band
    /// is that device's, and the transfer to this one is not measured.
    pub borrowed_from: Option<String>,
}

impl Hardware {
    /// The FLOP-weighted harmonic mean of the peaks `flops` run at when
    /// `linear` of them are matrix products at [`Hardware::peak_matmul`]
    /// and the rest at [`Hardware::peak`]: `flops / (linear / peak_matmul
    /// + (flops - linear) / peak)`. `peak` when there are no FLOPs.
    pub fn hardware_peak(&self, flops: f64, linear: f64) -> f64 {
        if self.peak_matmul == self.peak {
            return self.peak;
        }
        let linear = linear.clamp(0.0, flops.max(0.0));
        let t = linear / self.peak_matmul + (flops - linear) / self.peak;
        if flops > 0.0 && t > 0.0 {
            flops / t
        } else {
            self.peak
        }
    }

    /// The figures for workload `w` on cluster `c`: the peak of the
    /// workload's precision and the factors calibrated for its phase.
    pub fn new(c: &Cluster, w: &Workload) -> Result<Hardware, MissingFigure> {
        let dtype = w.dtype;
        let phase = phase_key(&w.phase);
        let d = &c.node.device;
        let factor = |k: &str, dim: Dim, default: f64| factor(d, phase, k, dim, default);
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
                what: format!("`{}` compute rate", dtype.name()),
            })?;
        let (peak_matmul, matmul_elem_bytes) = match w.kernels.matmul_dtype {
            Some(m) => (
                d.compute.get(&m).copied().ok_or_else(|| MissingFigure {
                    device: d.name.clone(),
                    what: format!(
                        "`{}` compute rate (the workload's matmul precision)",
                        m.name()
                    ),
                })?,
                m.bytes().unwrap_or(1) as f64,
            ),
            None => (peak, dtype.bytes().unwrap_or(2) as f64),
        };
        let hbm = d
            .memories
            .iter()
            .find(|m| m.name == "hbm")
            .or(d.memories.first())
            .ok_or_else(|| MissingFigure {
                device: d.name.clone(),
                what: "memory".into(),
            })?;
        let e_matmul = factor("matmul", Dim::NONE, 1.0);
        let topo = Topology::new(
            c,
            factor("scaleup", Dim::NONE, 1.0),
            factor("scaleout", Dim::NONE, 1.0),
        );
        let per_node = c.node.devices_per_node.max(1);
        Ok(Hardware {
            device: d.name.clone(),
            node: c.node.name.clone(),
            peak,
            cores: d.cores,
            sfu: d.sfu,
            peak_matmul,
            matmul_elem_bytes,
            hbm_capacity: hbm.capacity,
            hbm_bandwidth: hbm.bandwidth,
            host_bandwidth: c.node.host_memory.as_ref().map_or(0.0, |h| h.bandwidth),
            host_capacity: c.node.host_memory.as_ref().map_or(0.0, |h| h.capacity),
            e_matmul,
            matmul_knee: factor("matmul_knee", Dim::FLOP, 0.0),
            e_attention: factor("attention", Dim::NONE, e_matmul),
            e_memory: factor("memory", Dim::NONE, 1.0),
            tp_overlap: factor("tp_overlap", Dim::NONE, 1.0),
            kernel_overhead: factor("kernel_overhead", Dim::TIME, 0.0),
            step_overhead: factor("step_overhead", Dim::TIME, 0.0),
            seq_overhead: factor("seq_overhead", Dim::TIME, 0.0),
            reserve: factor("reserve", Dim::BYTES, 0.0),
            topo,
            device_power: d.power,
            node_power: c.node.power_overhead,
            devices_per_node: per_node,
            price_per_device: c.node.price.map(|p| p / per_node as f64).or(d.price),
            declared: d
                .efficiency
                .keys()
                .filter(|k| !k.contains('.') || k.starts_with(&format!("{phase}.")))
                // The fit's band is reported as the uncertainty, not as a
                // factor.
                .filter(|k| {
                    let name = k.rsplit('.').next().unwrap_or(k);
                    !matches!(name, "fit_rows" | "loo_median" | "loo_max")
                })
                .cloned()
                .collect(),
            uncertainty: match (
                d.efficiency.get(&format!("{phase}.fit_rows")),
                d.efficiency.get(&format!("{phase}.loo_median")),
                d.efficiency.get(&format!("{phase}.loo_max")),
            ) {
                (Some(r), Some(m), Some(x)) => Some(Uncertainty {
                    rows: r.value as u64,
                    median: m.value,
                    max: x.value,
                    borrowed_from: d.borrowed.get(phase).cloned(),
                }),
                _ => None,
            },
        })
    }
}
