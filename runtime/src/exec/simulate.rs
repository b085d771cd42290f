//! Running every device: one thread each, with its microbatches of the
//! inputs cut out of the whole batch ([`cut`]) and its outputs pasted
//! back ([`paste`]), walking the pipeline [`super::schedule::schedule`].
//!
//! Separate from [`super::run`] because this is the only place threads
//! and endpoints are made; `run`, `run_decode` and `locate` only ask for
//! results.

use std::collections::{BTreeMap, HashMap};

use gantry_lang::program::{Phase, TensorId, Workload};

use crate::comm::{Endpoint, mesh};
use crate::error::{RCode, RuntimeError};
use crate::graph::{self, numel};
use crate::init::Init;
use crate::jit::Jit;
use crate::layout::Layout;

use super::attention::KvCache;
use super::device::Dev;
use super::grad::{ParamGrad, StepCheck};
use super::parallel::Parallel;
use super::run::RunConfig;
use super::schedule::{Action, schedule};

pub(super) type Record = ((TensorId, Vec<u64>), usize, Layout, Vec<f32>);

/// The assembled outputs, the kernel count, every device's parameter
/// gradients and optimizer step, and the traffic.
pub(super) type Simulated = (
    Vec<Vec<f32>>,
    usize,
    Vec<Vec<ParamGrad>>,
    Vec<Option<StepCheck>>,
    BTreeMap<String, (usize, usize)>,
);

pub(super) struct DeviceResult {
    pub(super) outputs: Vec<(usize, Vec<Vec<f32>>)>,
    pub(super) records: Vec<Record>,
    pub(super) kernels: usize,
    pub(super) grads: Vec<ParamGrad>,
    pub(super) step: Option<StepCheck>,
    pub(super) traffic: BTreeMap<&'static str, usize>,
}

/// A decode step's prompt: the workload bound to the prompt's length and
/// its whole-batch inputs. Every device first runs it forward, keeping the
/// keys and values of every attention (its KV cache), then the step.
pub(super) type Prompt<'w> = Option<(&'w Workload, &'w [Vec<f32>])>;

/// Runs every device; returns the assembled outputs and the kernel count.
pub(super) fn simulate(
    w: &Workload,
    par: &Parallel,
    cfg: &RunConfig,
    inputs: &[Vec<f32>],
    trace: bool,
    prompt: Prompt,
) -> Result<Simulated, RuntimeError> {
    let (results, _) = simulate_devices(w, par, cfg, inputs, trace, prompt)?;
    let g = &w.model.graph;
    let gshapes = graph::shapes(g, &w.bindings)?;
    let mut outs: Vec<Vec<f32>> = g
        .outputs
        .iter()
        .map(|(_, t)| vec![0.0; numel(&gshapes[t.0 as usize])])
        .collect();
    let mut kernels = 0;
    for (rank, res) in results.iter().enumerate() {
        kernels += res.kernels;
        let (d, c) = replica_of(par, rank);
        for (mb, vals) in &res.outputs {
            for (i, (_, t)) in g.outputs.iter().enumerate() {
                let at = Part { d, c, mb: *mb };
                paste(
                    w,
                    par,
                    *t,
                    &gshapes[t.0 as usize],
                    &mut outs[i],
                    &vals[i],
                    at,
                );
            }
        }
    }
    let steps = results.iter().map(|r| r.step.clone()).collect();
    let mut traffic: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &results {
        for (k, v) in &r.traffic {
            let e = traffic.entry(k.to_string()).or_default();
            e.0 = e.0.max(*v);
            e.1 += v;
        }
    }
    let grads = results.into_iter().map(|r| r.grads).collect();
    Ok((outs, kernels, grads, steps, traffic))
}

pub(super) fn per_replica(w: &Workload, par: &Parallel) -> usize {
    w.bindings.get("batch").copied().unwrap_or(1).max(1) as usize / par.dp
}

/// The data-parallel replica and the context-parallel rank of `rank`.
pub(super) fn replica_of(par: &Parallel, rank: usize) -> (usize, usize) {
    (
        (rank / (par.tp * par.cp)) % par.dp,
        (rank / par.tp) % par.cp,
    )
}

/// Which part of a whole-batch tensor a device holds: replica `d`'s
/// microbatch `mb`, sequence chunk `c`.
#[derive(Clone, Copy)]
pub(super) struct Part {
    pub(super) d: usize,
    pub(super) c: usize,
    pub(super) mb: usize,
}

/// The part `at` of `data`, a whole-batch value of tensor `t`: its
/// samples along the batch axis, then (with `cp > 1`) its chunk of the
/// `seq` axis. A tensor without those axes is whole everywhere.
pub(super) fn cut(
    w: &Workload,
    par: &Parallel,
    t: TensorId,
    shape: &[usize],
    data: &[f32],
    at: Part,
) -> Vec<f32> {
    let tensor = w.model.graph.tensor(t);
    let mut shape = shape.to_vec();
    let mut out = match graph::batch_axis(&tensor.shape, &w.bindings) {
        Some((axis, each)) => {
            let start = at.d * per_replica(w, par) + at.mb * par.microbatch;
            let v = graph::take_samples(data, &shape, axis, each, start, par.microbatch);
            shape[axis] = par.microbatch * each;
            v
        }
        None => data.to_vec(),
    };
    if par.cp > 1
        && let Some(ax) = graph::seq_axis(&tensor.shape)
    {
        let chunk = shape[ax] / par.cp;
        out = graph::take_samples(&out, &shape, ax, 1, at.c * chunk, chunk);
    }
    out
}

/// Writes `part` (laid out as [`cut`] returns it) into `whole`.
pub(super) fn paste(
    w: &Workload,
    par: &Parallel,
    t: TensorId,
    shape: &[usize],
    whole: &mut [f32],
    part: &[f32],
    at: Part,
) {
    let tensor = w.model.graph.tensor(t);
    let batch = graph::batch_axis(&tensor.shape, &w.bindings);
    let start = at.d * per_replica(w, par) + at.mb * par.microbatch;
    let mut mb_shape = shape.to_vec();
    let mut mb_part = part.to_vec();
    if let Some((axis, each)) = batch {
        mb_shape[axis] = par.microbatch * each;
    }
    if par.cp > 1
        && let Some(ax) = graph::seq_axis(&tensor.shape)
    {
        // The microbatch's values with this chunk written in.
        let mut mb_whole = match batch {
            Some((axis, each)) => {
                graph::take_samples(whole, shape, axis, each, start, par.microbatch)
            }
            None => whole.to_vec(),
        };
        let chunk = mb_shape[ax] / par.cp;
        graph::put_samples(&mut mb_whole, &mb_shape, ax, 1, at.c * chunk, chunk, part);
        mb_part = mb_whole;
    }
    match batch {
        Some((axis, each)) => {
            graph::put_samples(whole, shape, axis, each, start, par.microbatch, &mb_part)
        }
        None => whole.copy_from_slice(&mb_part),
    }
}

/// This replica's samples (and sequence chunk) of every input of
/// `w`, per microbatch: `(d, c)` is the device's replica and chunk.
fn device_inputs(
    w: &Workload,
    par: &Parallel,
    shapes: &[Vec<usize>],
    inputs: &[Vec<f32>],
    (d, c): (usize, usize),
    m: usize,
) -> Vec<Vec<Vec<f32>>> {
    let g = &w.model.graph;
    (0..m)
        .map(|mb| {
            g.inputs
                .iter()
                .zip(inputs)
                .map(|(t, data)| {
                    let at = Part { d, c, mb };
                    cut(w, par, *t, &shapes[t.0 as usize], data, at)
                })
                .collect()
        })
        .collect()
}

/// One device's share of a run: its inputs per microbatch and, for a
/// decode step, the prompt's workload and inputs per microbatch.
struct DeviceWork<'w> {
    rank: usize,
    mb_inputs: Vec<Vec<Vec<f32>>>,
    prompt: Option<(&'w Workload, Vec<Vec<Vec<f32>>>)>,
}

/// Runs a decode step's prompt forward on device `rank` and returns its
/// KV cache; the endpoint is handed back in `ep` with its traffic reset
/// (the step's traffic is what a decode step sends).
fn run_prompt(
    pw: &Workload,
    par: &Parallel,
    rank: usize,
    init: Init,
    ep: &mut Option<Endpoint>,
    pin: &[Vec<Vec<f32>>],
) -> Result<KvCache, RuntimeError> {
    let m = pin.len();
    let mut pre = Dev::new(pw, par, rank, init, Jit::new()?, ep.take(), false)?;
    pre.kv_record = true;
    for (action, chunk) in schedule(par.pp, par.vp, pre.stage, m) {
        if let Action::Forward(mb) = action {
            pre.microbatch(mb, chunk, &pin[mb])?;
        }
    }
    *ep = pre.ep.take();
    if let Some(e) = ep {
        e.reset_traffic();
    }
    Ok(std::mem::take(&mut pre.kv_cache))
}

/// Runs one device through its schedule (after its prompt, for a decode
/// step): forwards, backwards when gradients are asked for, then the
/// optimizer step of a training workload.
fn run_device(
    w: &Workload,
    par: &Parallel,
    cfg: &RunConfig,
    work: DeviceWork,
    ep: Endpoint,
    trace: bool,
) -> Result<DeviceResult, RuntimeError> {
    let DeviceWork {
        rank,
        mb_inputs,
        prompt,
    } = work;
    let m = mb_inputs.len();
    let init = Init::new(cfg.seed);
    let mut ep = Some(ep);
    let mut cache = HashMap::new();
    if let Some((pw, pin)) = &prompt {
        cache = run_prompt(pw, par, rank, init, &mut ep, pin)?;
    }
    let jit = Jit::new()?;
    let mut dev = Dev::new(w, par, rank, init, jit, ep, trace)?;
    dev.kv_cache = cache;
    dev.fault = cfg.fault.filter(|_| rank == 0);
    dev.grad_fault = cfg.grad_fault.filter(|_| rank == 0);
    dev.step_fault = cfg.step_fault && rank == 0;
    let grads = cfg.gradients && !trace;
    if grads {
        dev.start_gradients();
    }
    let mut outputs = Vec::new();
    for (action, chunk) in schedule(par.pp, par.vp, dev.stage, m) {
        match action {
            Action::Forward(mb) => {
                if let Some(o) = dev.microbatch(mb, chunk, &mb_inputs[mb])? {
                    outputs.push((mb, o));
                }
            }
            // Without gradients, backward actions only keep their place.
            Action::Backward(mb) if grads => dev.backward(mb, chunk)?,
            Action::Backward(_) => {}
        }
    }
    let (grads, step) = if grads {
        let g = dev.finish_gradients()?;
        let step = match w.phase {
            Phase::Train { optimizer, .. } => Some(dev.optimizer_step(&g, optimizer)?),
            _ => None,
        };
        (g, step)
    } else {
        (Vec::new(), None)
    };
    Ok(DeviceResult {
        outputs,
        records: dev.records.take().unwrap_or_default(),
        kernels: dev.jit.compiled(),
        grads,
        step,
        traffic: dev.ep.as_ref().map(|e| e.traffic()).unwrap_or_default(),
    })
}

/// Every device's result, or the root cause of a failure: a device's own
/// error before the peers' broken channels (R006).
fn first_error(
    results: Vec<Result<DeviceResult, RuntimeError>>,
) -> Result<Vec<DeviceResult>, RuntimeError> {
    let mut ok = Vec::with_capacity(results.len());
    let mut first_err: Option<RuntimeError> = None;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                let better = match &first_err {
                    None => true,
                    Some(cur) => cur.code == RCode::R006 && e.code != RCode::R006,
                };
                if better {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(ok),
    }
}

pub(super) fn simulate_devices(
    w: &Workload,
    par: &Parallel,
    cfg: &RunConfig,
    inputs: &[Vec<f32>],
    trace: bool,
    prompt: Prompt,
) -> Result<(Vec<DeviceResult>, ()), RuntimeError> {
    let g = &w.model.graph;
    let gshapes = graph::shapes(g, &w.bindings)?;
    let pshapes = match prompt {
        Some((pw, _)) => graph::shapes(g, &pw.bindings)?,
        None => Vec::new(),
    };
    let n = par.devices();
    let per = per_replica(w, par);
    let m = per / par.microbatch;
    let endpoints = mesh(n, cfg.timeout);
    let results: Vec<Result<DeviceResult, RuntimeError>> = std::thread::scope(|s| {
        let handles: Vec<_> = endpoints
            .into_iter()
            .enumerate()
            .map(|(rank, ep)| {
                let at = replica_of(par, rank);
                let work = DeviceWork {
                    rank,
                    mb_inputs: device_inputs(w, par, &gshapes, inputs, at, m),
                    prompt: prompt
                        .map(|(pw, data)| (pw, device_inputs(pw, par, &pshapes, data, at, m))),
                };
                s.spawn(move || run_device(w, par, cfg, work, ep, trace))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(RuntimeError::new(
                        RCode::R006,
                        "a simulated device panicked (a runtime bug)",
                    ))
                })
            })
            .collect()
    });
    Ok((first_error(results)?, ()))
}
