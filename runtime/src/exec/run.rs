//! Entry points: [`run`] (and a decode step's [`run_decode`]) compare the
//! simulated devices' outputs and gradients with the reference and, on a
//! divergence, [`locate`] the first op that differs; [`kernels`] dry-runs
//! one device; [`footprint`] refuses runs that cannot fit.
//!
//! The report types live here with the code that fills them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gantry_lang::program::{Phase, TensorId, Workload};

use crate::error::{RCode, RuntimeError, mismatch, unsupported};
use crate::graph;
use crate::init::Init;
use crate::jit::Jit;
use crate::reference;

use super::device::Dev;
use super::footprint::{MAX_OP_INSTANCES, MAX_WORK, footprint, op_instances, work};
use super::grad::{self, GradCheck, StepCheck};
use super::parallel::{Parallel, validate};
use super::simulate::{Part, cut, replica_of, simulate, simulate_devices};

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seed: u64,
    /// Largest accepted relative error (normwise) per output.
    pub tolerance: f64,
    /// How long a device waits for a message before giving up.
    pub timeout: Duration,
    /// Fault injection for testing the divergence diagnostic: device 0
    /// adds 1 to the first element of its result of the op producing this
    /// tensor (every microbatch and iteration).
    pub fault: Option<TensorId>,
    /// Also compare every op's local result on every device with the
    /// reference (not only the outputs): slower, and strict even where an
    /// output saturates (e.g. a ReLU before a sigmoid).
    pub check_all: bool,
    /// Also run the backward pass of one training step (loss = the sum of
    /// every output element) on the devices and compare every parameter
    /// gradient with the reference backward ([`crate::backward`]).
    pub gradients: bool,
    /// Fault injection for the gradient check: device 0 adds 1 to the
    /// first element of its gradient of the op producing this tensor.
    pub grad_fault: Option<TensorId>,
    /// Fault injection for the optimizer step: under ZeRO, device 0
    /// updates the wrong part of every shared block.
    pub step_fault: bool,
    /// Largest simulated memory (bytes, all devices and the reference
    /// together, estimated by [`footprint`]) a run may use (R007 above).
    pub max_bytes: f64,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            seed: 0,
            tolerance: DEFAULT_TOLERANCE,
            timeout: Duration::from_secs(120),
            fault: None,
            check_all: false,
            gradients: false,
            grad_fault: None,
            step_fault: false,
            max_bytes: 4e9,
        }
    }
}

/// One output compared with the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputCheck {
    pub name: String,
    pub shape: Vec<usize>,
    pub max_abs: f64,
    pub max_rel: f64,
    /// Values of the reference's output that are not finite (the model
    /// overflows f32 at this scale): where the devices agree, the
    /// comparison says only that.
    pub non_finite: usize,
}

/// The first op whose result on some device differs from the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// `linear %12`, `attention %9 (iteration 1)`.
    pub op: String,
    pub device: usize,
    pub microbatch: usize,
    pub max_abs: f64,
    pub max_rel: f64,
}

/// What a run did and how close it came.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    pub parallel: Parallel,
    pub devices: usize,
    pub microbatches: usize,
    /// Kernels compiled, summed over devices.
    pub kernels: usize,
    pub outputs: Vec<OutputCheck>,
    pub divergence: Option<Divergence>,
    /// The parameter gradients of one training step, when asked for.
    pub gradients: Option<GradCheck>,
    /// The optimizer step that follows them (training workloads), summed
    /// over devices.
    pub step: Option<StepCheck>,
    /// Floats the devices sent, per purpose (`tensor`, `context`,
    /// `pipeline`, `expert`, `embedding`, `data`): the most one device
    /// sent, and the total. Gathering outputs and gradients for the
    /// comparisons is not counted.
    pub traffic: BTreeMap<String, (usize, usize)>,
    pub tolerance: f64,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.outputs.iter().all(|o| o.max_rel <= self.tolerance)
            && self.divergence.is_none()
            && self
                .gradients
                .as_ref()
                .is_none_or(|g| g.passed(self.tolerance))
            && self.step.as_ref().is_none_or(|s| s.mismatched.is_empty())
    }
    /// The R001 diagnostic of a failed run.
    pub fn error(&self) -> Option<RuntimeError> {
        if self.outputs.iter().all(|o| o.max_rel <= self.tolerance)
            && self.divergence.is_none()
            && let Some(g) = &self.gradients
        {
            if let Some(e) = g.error(self.tolerance) {
                return Some(e);
            }
            return self.step.as_ref().and_then(StepCheck::error);
        }
        let Some(bad) = self.outputs.iter().find(|o| o.max_rel > self.tolerance) else {
            // Outputs within tolerance, an intermediate result not (`check_all`).
            let d = self.divergence.as_ref()?;
            return Some(RuntimeError::new(
                RCode::R001,
                format!(
                    "{} on device {} (microbatch {}) differs from the reference: max rel error {:.3e} > {:e}, although every output is within it",
                    d.op, d.device, d.microbatch, d.max_rel, self.tolerance
                ),
            ).with_help(divergence_help(self.tolerance)));
        };
        let at = match &self.divergence {
            Some(d) => format!(
                "; first diverging op: {} on device {} (microbatch {}), max rel error {:.3e}",
                d.op, d.device, d.microbatch, d.max_rel
            ),
            None => String::new(),
        };
        let help = if bad.non_finite > 0 {
            format!(
                "{} values of the reference's `{}` are not finite: the model overflows f32 at this scale, so the two cannot be compared there; scale it down or change the model",
                bad.non_finite, bad.name
            )
        } else {
            divergence_help(self.tolerance)
        };
        Some(
            RuntimeError::new(
                RCode::R001,
                format!(
                    "output `{}` differs from the reference: max rel error {:.3e} > {:e}{at}",
                    bad.name, bad.max_rel, self.tolerance
                ),
            )
            .with_help(help),
        )
    }
}

/// The default `--tolerance`: float32 rounding of sums the devices and
/// the reference take in different orders stays far below it.
pub const DEFAULT_TOLERANCE: f64 = 1e-4;

/// The help of an R001 divergence at `tolerance`: a bug at the default,
/// possibly float32 rounding at a tighter one.
pub fn divergence_help(tolerance: f64) -> String {
    if tolerance < DEFAULT_TOLERANCE {
        format!(
            "the tolerance {tolerance:e} is tighter than the default {DEFAULT_TOLERANCE:e}: the devices and the reference round float32 sums taken in different orders, which can differ by more than that; rerun with the default before reporting a bug"
        )
    } else {
        "this is a runtime bug unless the model is numerically unstable at this scale; please report it with the command line".into()
    }
}

/// `bytes` in GB: three decimals, or three significant figures below
/// 0.001 GB (`--max-memory 1e-300` read `0.000 GB allowed`).
pub fn gigabytes(bytes: f64) -> String {
    let gb = bytes / 1e9;
    if gb >= 1e-3 || gb == 0.0 {
        format!("{gb:.3}")
    } else {
        format!("{gb:.3e}")
    }
}

/// Runs `w` under `par` on simulated devices and compares every output
/// with the reference interpreter.
pub fn run(w: &Workload, par: &Parallel, cfg: &RunConfig) -> Result<RunReport, RuntimeError> {
    validate(w, par)?;
    if par.devices() > MAX_DEVICES {
        return Err(RuntimeError::new(
            RCode::R007,
            format!(
                "the design point uses {} devices; the runtime simulates at most {MAX_DEVICES} (one thread each)",
                par.devices()
            ),
        )
        .with_help("pin smaller degrees with --fix (e.g. tp=2,pp=2,dp=2) or let the planner choose for --devices 8"));
    }
    let need = footprint(w, par, cfg.gradients)?;
    if need > cfg.max_bytes {
        return Err(RuntimeError::new(
            RCode::R007,
            format!(
                "running `{}` at this scale needs about {} GB of simulated memory (weights on every replica, activations, the reference), more than the {} GB allowed",
                w.name,
                gigabytes(need),
                gigabytes(cfg.max_bytes)
            ),
        )
        .with_help("scale the workload down with --scale (e.g. layers=2,d_model=256,heads=4,kv_heads=2,d_ff=512,vocab=1000,seq=16,batch=4, or rows=10000 for DLRM tables), or raise --max-memory"));
    }
    let ops = op_instances(w, par);
    if ops > MAX_OP_INSTANCES {
        return Err(RuntimeError::new(
            RCode::R007,
            format!(
                "running `{}` at this scale executes about {ops:.3e} op instances (every iteration of every `repeat`, nested repeats multiplied, per microbatch); the runtime runs at most {MAX_OP_INSTANCES:.0e}",
                w.name
            ),
        )
        .with_help("scale the repeat counts down with --scale (e.g. layers=2), or use fewer microbatches (a larger `microbatch` in --fix)"));
    }
    let work = work(w)?;
    if work > MAX_WORK {
        return Err(RuntimeError::new(
            RCode::R007,
            format!(
                "running `{}` at this scale does about {work:.3e} multiply-adds per forward pass (products, attention pairs, every `repeat` iteration); the runtime runs at most {MAX_WORK:.0e}, about a minute",
                w.name
            ),
        )
        .with_help("scale the workload down with --scale (e.g. layers=2,d_model=256,heads=4,kv_heads=2,d_ff=512,vocab=1000,seq=16,batch=4)"));
    }
    if let Phase::Decode { context, .. } = w.phase {
        return run_decode(w, par, cfg, context as usize);
    }
    let g = &w.model.graph;
    let init = Init::new(cfg.seed);
    let gshapes = graph::shapes(g, &w.bindings)?;
    let inputs: Vec<Vec<f32>> = g
        .inputs
        .iter()
        .map(|i| graph::input_values(g, *i, &gshapes[i.0 as usize], &init))
        .collect();
    let reference = reference::run(g, &w.bindings, &init, Some(inputs.clone()), false)?;
    let (outs, kernels, pgrads, steps, traffic) = simulate(w, par, cfg, &inputs, false, None)?;
    let step = steps.into_iter().flatten().reduce(|a, b| a.merge(b));
    let gradients = if cfg.gradients {
        let want = crate::backward::backward(
            g,
            &w.bindings,
            &init,
            Some(inputs.clone()),
            &Default::default(),
        )?;
        Some(grad::check(g, &pgrads, &want)?)
    } else {
        None
    };
    let batch = w.bindings.get("batch").copied().unwrap_or(1).max(1) as usize;
    let mut report = RunReport {
        parallel: par.clone(),
        devices: par.devices(),
        microbatches: batch / par.dp / par.microbatch,
        kernels,
        outputs: Vec::new(),
        divergence: None,
        gradients,
        step,
        traffic,
        tolerance: cfg.tolerance,
    };
    for (i, (name, shape, want)) in reference.outputs.iter().enumerate() {
        let (abs, rel) = graph::compare(&outs[i], want);
        report.outputs.push(OutputCheck {
            name: name.clone(),
            shape: shape.clone(),
            max_abs: abs,
            max_rel: rel,
            non_finite: want.iter().filter(|v| !v.is_finite()).count(),
        });
    }
    let outputs_ok = report.outputs.iter().all(|o| o.max_rel <= cfg.tolerance);
    if !outputs_ok || cfg.check_all {
        report.divergence = locate(w, par, cfg, &inputs)?;
    }
    Ok(report)
}

/// The most simulated devices (threads) a run may use.
pub const MAX_DEVICES: usize = 512;

/// A decode step with a KV cache. The reference runs the whole sequence
/// (`context` prompt tokens and the step's `seq` new ones) with plain
/// causal attention and its last `seq` positions are the expected
/// outputs. The devices run the prompt first (keeping each attention's
/// local keys and values, sharded as the keys and values are), then the
/// step, whose attention reads the cache followed by its own keys.
pub(super) fn run_decode(
    w: &Workload,
    par: &Parallel,
    cfg: &RunConfig,
    context: usize,
) -> Result<RunReport, RuntimeError> {
    if cfg.gradients {
        return Err(unsupported(
            "gradients of a decode step (a training step's loss is defined on a whole sequence)",
        )
        .with_help("run with --grad off"));
    }
    if par.cp > 1 {
        return Err(
            mismatch("a decode step cannot be cut into context-parallel chunks")
                .with_help("pin cp=1"),
        );
    }
    let g = &w.model.graph;
    let step = w.bindings.get("seq").copied().unwrap_or(1).max(1) as usize;
    let bound = |seq: usize| {
        let mut v = w.clone();
        v.bindings.insert("seq".into(), seq as i64);
        v
    };
    let (whole, prompt) = (bound(context + step), bound(context));
    for t in g.inputs.iter().chain(g.outputs.iter().map(|(_, t)| t)) {
        let tensor = g.tensor(*t);
        if graph::seq_axis(&tensor.shape).is_none() {
            return Err(unsupported(format!(
                "tensor `{}` {} has no `seq` axis to hold the prompt and the step",
                tensor.name, tensor.shape
            )));
        }
    }
    let init = Init::new(cfg.seed);
    let shapes = graph::shapes(g, &whole.bindings)?;
    // Positions `from..from + len` of every sample of tensor `t`.
    let positions = |t: TensorId, data: &[f32], from: usize, len: usize| -> Vec<f32> {
        let axis = graph::seq_axis(&g.tensor(t).shape).unwrap_or(0);
        graph::take_samples(data, &shapes[t.0 as usize], axis, 1, from, len)
    };
    let inputs: Vec<Vec<f32>> = g
        .inputs
        .iter()
        .map(|i| graph::input_values(g, *i, &shapes[i.0 as usize], &init))
        .collect();
    let reference = reference::run(g, &whole.bindings, &init, Some(inputs.clone()), false)?;
    let split = |from: usize, len: usize| -> Vec<Vec<f32>> {
        g.inputs
            .iter()
            .zip(&inputs)
            .map(|(t, x)| positions(*t, x, from, len))
            .collect()
    };
    let (prompt_in, step_in) = (split(0, context), split(context, step));
    let (outs, kernels, _, _, traffic) =
        simulate(w, par, cfg, &step_in, false, Some((&prompt, &prompt_in)))?;
    let batch = w.bindings.get("batch").copied().unwrap_or(1).max(1) as usize;
    let mut report = RunReport {
        parallel: par.clone(),
        devices: par.devices(),
        microbatches: batch / par.dp / par.microbatch,
        kernels,
        outputs: Vec::new(),
        divergence: None,
        gradients: None,
        step: None,
        traffic,
        tolerance: cfg.tolerance,
    };
    for (i, ((name, shape, want), (_, t))) in reference.outputs.iter().zip(&g.outputs).enumerate() {
        let want = positions(*t, want, context, step);
        let (abs, rel) = graph::compare(&outs[i], &want);
        let axis = graph::seq_axis(&g.tensor(*t).shape).unwrap_or(0);
        let mut shape = shape.clone();
        shape[axis] = step;
        report.outputs.push(OutputCheck {
            name: name.clone(),
            shape,
            max_abs: abs,
            max_rel: rel,
            non_finite: want.iter().filter(|v| !v.is_finite()).count(),
        });
    }
    Ok(report)
}

/// The Cranelift IR of every kernel device `rank` compiles for one
/// microbatch, in order of first use. Nothing is computed and no weight is
/// made, so this works at full scale.
pub fn kernels(
    w: &Workload,
    par: &Parallel,
    rank: usize,
) -> Result<Vec<(String, String)>, RuntimeError> {
    validate(w, par)?;
    if rank >= par.devices() {
        return Err(mismatch(format!(
            "device {rank} does not exist: the design point uses {} devices",
            par.devices()
        )));
    }
    let jit = Jit::new()?.with_clif(true);
    let mut dev = Dev::new(w, par, rank, Init::new(0), jit, None, false)?;
    // A decode step's attention reads the prompt's cached keys too.
    if let Phase::Decode { context, .. } = w.phase {
        dev.dry_context = context as usize;
    }
    dev.microbatch(0, 0, &[])?;
    Ok(dev.jit.clif().to_vec())
}

/// Runs again with tracing and finds the first op (in the reference's
/// execution order) whose local result on some device differs.
pub(super) fn locate(
    w: &Workload,
    par: &Parallel,
    cfg: &RunConfig,
    inputs: &[Vec<f32>],
) -> Result<Option<Divergence>, RuntimeError> {
    let g = &w.model.graph;
    let init = Init::new(cfg.seed);
    let reference = reference::run(g, &w.bindings, &init, Some(inputs.to_vec()), true)?;
    let gshapes = graph::shapes(g, &w.bindings)?;
    let order: HashMap<(TensorId, Vec<u64>), usize> = reference
        .trace
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    let (results, _) = simulate_devices(w, par, cfg, inputs, true, None)?;
    let mut best: Option<(usize, Divergence)> = None;
    for (rank, res) in results.iter().enumerate() {
        let (d, c) = replica_of(par, rank);
        let t = rank % par.tp;
        for ((id, path), mb, layout, data) in &res.records {
            let Some(want) = reference.traced(*id, path) else {
                continue;
            };
            let gshape = &gshapes[id.0 as usize];
            if par.cp > 1 && graph::seq_axis(&g.tensor(*id).shape).is_none() {
                continue;
            }
            let want = cut(w, par, *id, gshape, want, Part { d, c, mb: *mb });
            let width = *gshape.last().unwrap_or(&1);
            let want = crate::layout::local_part(*layout, &want, width, par.tp, t);
            let (abs, rel) = graph::compare(data, &want);
            if rel > cfg.tolerance {
                let idx = order
                    .get(&(*id, path.clone()))
                    .copied()
                    .unwrap_or(usize::MAX);
                if best.as_ref().is_none_or(|(b, _)| idx < *b) {
                    let name = graph::ops(&g.body)
                        .iter()
                        .find(|o| o.output == *id)
                        .map_or("op", |o| o.kind.name());
                    let it = if path.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (iteration {})",
                            path.iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join(".")
                        )
                    };
                    best = Some((
                        idx,
                        Divergence {
                            op: format!("{name} %{}{it}", id.0),
                            device: rank,
                            microbatch: *mb,
                            max_abs: abs,
                            max_rel: rel,
                        },
                    ));
                }
            }
        }
    }
    Ok(best.map(|(_, d)| d))
}
