//! The runtime's subcommands: `gantry run`, `gantry kernels` and
//! `gantry calibrate`. This is the driver side: it reads files, owns the
//! clock (calibration timings) and prints; the work is in `gantry-runtime`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use gantry_compiler::point::{self, Pin};
use gantry_lang::program::{
    Cluster, DType, Device, Goal, Link, LinkKind, Memory, Node, Phase, Plan, Workload,
};
use gantry_runtime::calibrate::{self, MatmulTiming, Measurements};
use gantry_runtime::exec::{self, Parallel, RunConfig};
use gantry_runtime::jit::{self, Expr, Jit, Unary};
use gantry_runtime::scale::{Scale, scaled_workload};
use gantry_runtime::{RuntimeError, plan_json};

use crate::{FsLoader, check_files};

/// Which workload, design point and scale to run.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// The .gantry file.
    pub file: String,
    /// Which plan of the file (default: the first declared; a file without
    /// plans runs its first declared workload).
    #[arg(long)]
    pub plan: Option<String>,
    /// Pins, e.g. `dp=2,tp=2,pp=2,microbatch=1`.
    #[arg(long)]
    pub fix: Option<String>,
    /// The design point from `gantry plan --format json` output instead of
    /// pins (it sets the devices too: not with --fix or --devices).
    #[arg(long = "plan-json", conflicts_with_all = ["fix", "devices"])]
    pub plan_json: Option<PathBuf>,
    /// Simulated devices, 1 to 2^24 (default: the product of the pinned degrees).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=gantry_lang::check::MAX_KNOB_VALUE as u64))]
    pub devices: Option<u64>,
    /// Model arguments, `batch`, `seq` and `rows` at a small scale, e.g.
    /// `layers=2,d_model=256,heads=4,kv_heads=2,d_ff=512,vocab=1000,seq=16,batch=4`.
    #[arg(long)]
    pub scale: Option<String>,
    #[arg(long = "lib")]
    pub lib: Vec<PathBuf>,
    /// Contractions (linear, matmul, attention) to run whole on every
    /// tensor-parallel rank, by the name of the tensor each produces, e.g.
    /// `q,gate`: a pinned layout choice that replaces the e-graph
    /// extraction's, in the run and in the cost model it is checked
    /// against (training plans).
    #[arg(long, value_delimiter = ',', conflicts_with = "plan_json")]
    pub whole: Vec<String>,
    /// Linears to run column-parallel whatever their input's layout (a
    /// split input is gathered first), by tensor name: a pinned form like
    /// `--whole`.
    #[arg(long, value_delimiter = ',', conflicts_with = "plan_json")]
    pub column: Vec<String>,
    /// Linears to run row-parallel whatever their input's layout (a
    /// replicated input is sliced locally), by tensor name.
    #[arg(long, value_delimiter = ',', conflicts_with = "plan_json")]
    pub row: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Seed of the weights and inputs (default: the plan's `simulate`
    /// `seed=`, else 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Largest accepted relative error per output and per parameter
    /// gradient, at least float32's epsilon (1.2e-7).
    #[arg(long, default_value_t = gantry_runtime::exec::DEFAULT_TOLERANCE, value_parser = tolerance)]
    pub tolerance: f64,
    /// Gradients of one step: `auto` (training workloads), `on` (any
    /// workload; the loss is the sum of the outputs) or `off`.
    #[arg(long, value_enum, default_value_t = Grads::Auto)]
    pub grad: Grads,
    /// Largest simulated memory in GB (all devices and the reference);
    /// a bigger run is refused with R007 before anything is allocated.
    /// At most the machine's memory (a larger value is capped, with a note).
    #[arg(long = "max-memory", default_value_t = 4.0, value_parser = positive)]
    pub max_memory: f64,
}

#[derive(Copy, Clone, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Grads {
    Auto,
    On,
    Off,
}

#[derive(Copy, Clone, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Emit {
    Clif,
}

#[derive(clap::Args, Debug, Clone)]
pub struct KernelsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Emit::Clif)]
    pub emit: Emit,
    /// Whose shard (global rank).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CalibrateArgs {
    /// Name of the declared device (not a reserved word or a built-in
    /// name: the declaration is checked before anything is measured).
    #[arg(long, default_value = "HostCpu")]
    pub name: String,
    /// Smaller problems and fewer repetitions (seconds instead of a minute).
    #[arg(long)]
    pub quick: bool,
    /// Power to declare, in watts (cannot be measured from user space; at
    /// most 1 MW, as the checker takes a device's power).
    #[arg(long, default_value_t = 100.0, value_parser = positive)]
    pub power: f64,
    /// Instead of timing kernels: fit each device's efficiency factors to
    /// the reference files in DIR (every plan's `expect` figures, grouped by
    /// device and phase) by least squares, and print in-sample and
    /// leave-one-out errors per section (docs/COST-MODEL.md, "Calibration").
    #[arg(long, value_name = "DIR", conflicts_with_all = ["quick", "name"])]
    pub fit: Option<std::path::PathBuf>,
    /// With --fit: rewrite each fitted device's `efficiency` record in its
    /// stdlib file (the phase's `train = { ... }` or `infer = { ... }`).
    #[arg(long, requires = "fit")]
    pub write: bool,
}

/// A finite number at least float32's epsilon (`--tolerance`): NaN would
/// pass every comparison and infinity every result, and below one
/// rounding (0 included) only a bit-exact run passes, which sums taken in
/// another order are not: R001 reported the rounding as a runtime bug.
fn tolerance(s: &str) -> Result<f64, String> {
    let min = f64::from(f32::EPSILON);
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= min => Ok(x),
        Ok(x) if x.is_finite() && x >= 0.0 => Err(format!(
            "must be at least float32's epsilon, {min:.2e} (got {x}): the devices and the reference round sums taken in different orders, so no run agrees more closely than that; the default is {:e}",
            gantry_runtime::exec::DEFAULT_TOLERANCE
        )),
        Ok(x) => Err(format!(
            "must be a finite number at least {min:.2e}, got {x}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// A finite number above 0 (`--max-memory`, `--power`): NaN would disable
/// the memory guard.
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(x) => Err(format!("must be a finite number above 0, got {x}")),
        Err(e) => Err(e.to_string()),
    }
}

fn fail(e: &RuntimeError) -> ExitCode {
    crate::errln!("{}", e.render());
    ExitCode::from(1)
}

/// A device with every dtype, so any workload's point can be resolved on
/// `n` simulated devices.
fn simulated_system(n: u64, span: gantry_lang::span::Span) -> Cluster {
    let compute: BTreeMap<DType, f64> = [
        DType::F64,
        DType::F32,
        DType::Tf32,
        DType::Bf16,
        DType::F16,
        DType::Fp8,
        DType::I64,
        DType::I32,
        DType::I8,
    ]
    .into_iter()
    .map(|d| (d, 1e15))
    .collect();
    let device = Device {
        name: "simulated".into(),
        compute,
        memories: vec![Memory {
            name: "hbm".into(),
            capacity: 1e18,
            bandwidth: 1e13,
        }],
        power: 1.0,
        price: None,
        cores: None,
        sfu: None,
        efficiency: BTreeMap::new(),
        borrowed: BTreeMap::new(),
        own: Default::default(),
        span,
    };
    let node = Node {
        name: "simulated".into(),
        device,
        devices_per_node: n,
        // The simulated devices exchange data in memory; the cost model
        // needs a link to price their collectives (C014 without one).
        links: vec![Link {
            name: "memory".into(),
            kind: LinkKind::Switch,
            bandwidth: 1e12,
            latency: 0.0,
            launch: 0.0,
        }],
        nic_bandwidth: 0.0,
        nics: 0,
        host_memory: None,
        power_overhead: 0.0,
        price: None,
        own: Default::default(),
        span,
    };
    Cluster {
        name: format!("simulated({n})"),
        node,
        nodes: 1,
        fabric: None,
        span,
    }
}

/// A resolved run: the (scaled) workload, the parallel layout and the plan's name.
pub struct Target {
    pub workload: Workload,
    pub par: Parallel,
    pub plan: String,
    /// The `seed=` of the scale, if it names one.
    pub seed: Option<u64>,
    /// The cost model's communication of this point at this scale: what,
    /// bytes per device per step (empty for `--plan-json`).
    pub comms: Vec<(String, f64)>,
    /// Whether the point recomputes whole layers (the cost model counts
    /// the recomputed forward's collectives; the run does not recompute).
    pub recompute_full: bool,
}

/// One row of the traffic comparison: a purpose, the bytes the busiest
/// device sent in the run (elements times the workload's dtype bytes),
/// and the cost model's communications of that purpose (bytes per device
/// per step).
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficRow {
    pub label: String,
    pub measured: f64,
    pub model: Vec<(String, f64)>,
}

/// The run's traffic next to the cost model's, by purpose.
pub fn traffic_rows(t: &Target, report: &exec::RunReport) -> Vec<TrafficRow> {
    let bytes = t.workload.dtype.bytes().unwrap_or(4) as f64;
    // Tensor-parallel collectives and pipeline sends move the residual
    // stream, 16-bit for an fp8 workload, as the cost model prices them.
    let stream = gantry_compiler::ir::stream_bytes(bytes);
    let mut labels: Vec<String> = report.traffic.keys().cloned().collect();
    for (what, _) in &t.comms {
        let l = comm_label(what).to_string();
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    labels
        .into_iter()
        .map(|l| TrafficRow {
            measured: report.traffic.get(&l).map_or(0, |v| v.0) as f64
                * if l == "tensor" || l == "pipeline" {
                    stream
                } else {
                    bytes
                },
            model: t
                .comms
                .iter()
                .filter(|(w, _)| comm_label(w) == l)
                .cloned()
                .collect(),
            label: l,
        })
        .collect()
}

/// Why a row of the traffic table differs from the cost model's bytes,
/// where the run executes the point differently from what the model
/// prices (docs/RUNTIME.md); `None` when the bytes agree or no known
/// difference explains them.
pub fn why_traffic_differs(t: &Target, r: &TrafficRow) -> Option<String> {
    if r.measured == r.model.iter().map(|(_, b)| b).sum::<f64>() {
        return None;
    }
    match r.label.as_str() {
        "data" if t.par.zero >= 3 => Some(
            "the run steps ZeRO-3 as ZeRO-2: it does not gather parameters before each pass".into(),
        ),
        "expert" if t.par.tp > 1 => Some(format!(
            "each of the {} tensor-parallel ranks dispatches every token here; the cost model prices Megatron-LM's 1/tp share per rank",
            t.par.tp
        )),
        "pipeline"
            if t.par.tp > 1 && matches!(t.workload.phase, gantry_lang::program::Phase::Decode { .. }) =>
        {
            Some(
                "the run sends a decode microbatch, one row per sequence, whole where its rows do not divide over the tensor-parallel ranks; the cost model prices the flattened state split over them, as Megatron-LM and vLLM send it".into(),
            )
        }
        "tensor" if t.recompute_full => Some(
            "the run does not recompute; the cost model counts the recomputed forward's collectives again"
                .into(),
        ),
        _ => None,
    }
}

/// The runtime's traffic label of a cost-model communication.
fn comm_label(what: &str) -> &'static str {
    if what.contains("tensor") {
        "tensor"
    } else if what.contains("context") {
        "context"
    } else if what.contains("pipeline") {
        "pipeline"
    } else if what.contains("expert") {
        "expert"
    } else if what.contains("embedding ids") {
        "embedding ids"
    } else if what.contains("embedding") {
        "embedding"
    } else {
        "data"
    }
}

fn pin_int(pins: &BTreeMap<String, Pin>, k: &str) -> Option<u64> {
    match pins.get(k) {
        Some(Pin::Int(v)) if *v > 0 => Some(*v as u64),
        _ => None,
    }
}

/// Checks the file, picks the plan, applies `--scale` and resolves the
/// design point on the simulated devices (diagnostics go to stderr).
pub fn resolve_target(a: &TargetArgs) -> Result<Target, ExitCode> {
    let checked = check_files(std::slice::from_ref(&a.file), &a.lib);
    if checked.has_errors() {
        crate::errprint!("{}", checked.render(false));
        return Err(ExitCode::from(1));
    }
    let program = &checked.program;
    let mut plan: Plan = match &a.plan {
        Some(name) => match program.plans.get(name) {
            Some(p) => p.clone(),
            None => {
                let names: Vec<&str> = program.plans.keys().map(|s| s.as_str()).collect();
                crate::errln!(
                    "error[C007]: no plan named `{name}`\n  help: plans in this file: {}",
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                );
                return Err(ExitCode::from(1));
            }
        },
        None => match (
            // The first plan declared, else the first workload declared.
            crate::default_plan(program),
            crate::default_workload(program),
        ) {
            (Some(p), _) => p.clone(),
            (None, Some(w)) => Plan {
                name: "simulated".into(),
                system: simulated_system(1, w.span),
                workload: w.clone(),
                search: BTreeMap::new(),
                fixed: BTreeMap::new(),
                objective: (Goal::Maximize, "samples_per_s".into()),
                constraints: Vec::new(),
                expect: BTreeMap::new(),
                tolerance: Default::default(),
                source: None,
                simulate: None,
                target: None,
                span: w.span,
            },
            (None, None) => {
                crate::errln!(
                    "error[R002]: `{}` declares no plan and no workload to run",
                    a.file
                );
                return Err(ExitCode::from(1));
            }
        },
    };
    // The workload's `simulate` scale, the plan's keys over it and
    // `--scale` keys over both.
    let mut scale: Option<Scale> = None;
    for layer in [
        plan.workload.simulate.as_deref(),
        plan.simulate.as_deref(),
        a.scale.as_deref(),
    ] {
        if let Some(s) = layer.map(Scale::parse).transpose().map_err(|e| fail(&e))? {
            scale = Some(match scale {
                Some(under) => under.overridden(&s),
                None => s,
            });
        }
    }
    // `seed=` is not a model argument: it picks the weights and inputs.
    let mut seed = None;
    let scale = match scale {
        Some(mut s) => {
            if let Some(i) = s.args.iter().position(|(k, _)| k == "seed") {
                let (_, v) = s.args.remove(i);
                seed = Some(v.parse::<u64>().map_err(|_| {
                    fail(&RuntimeError::new(
                        gantry_runtime::RCode::R004,
                        format!("`seed={v}` is not a whole number"),
                    ))
                })?);
            }
            (!s.args.is_empty()).then_some(s)
        }
        None => None,
    };
    if let Some(scale) = scale {
        let mut loader = FsLoader::new();
        loader.lib_dirs.splice(0..0, a.lib.iter().cloned());
        plan.workload =
            scaled_workload(&plan.workload, &a.file, &scale, &loader).map_err(|e| fail(&e))?;
    }
    let workload = plan.workload.clone();
    if let Some(path) = &a.plan_json {
        // Bounded: `/dev/zero` or an endless pipe reports a length of 0.
        let limit = gantry_lang::check::MAX_FILE_BYTES as u64;
        let bytes = match crate::read_bounded(path, limit) {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                return Err(fail(&RuntimeError::new(
                    gantry_runtime::RCode::R002,
                    format!(
                        "plan JSON `{}` is more than the {limit} byte limit",
                        path.display()
                    ),
                )));
            }
            Err(e) => {
                crate::errln!("error: cannot read `{}`: {e}", path.display());
                return Err(ExitCode::from(2));
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let pp = plan_json::parse(&text, &workload.name).map_err(|e| fail(&e))?;
        let mut par =
            Parallel::from_point(&pp.point, &workload, &pp.stage_layers).map_err(|e| fail(&e))?;
        note_plan_json_scale(&pp, &workload, &par);
        // The plan's program: its extraction's contraction forms.
        par.forms =
            form_tensors(&workload, [&pp.whole, &pp.column, &pp.row]).map_err(|e| fail(&e))?;
        return Ok(Target {
            workload,
            par,
            plan: pp.plan,
            seed,
            comms: Vec::new(),
            recompute_full: false,
        });
    }
    let mut pins = match a.fix.as_deref().map(point::parse_fix).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => return Err(crate::pin_error(&e)),
    };
    crate::warn_overridden("--fix", &pins, &plan.fixed);
    let cli_pins = pins.clone();
    for (k, v) in point::pins_from_plan(&plan.fixed) {
        pins.entry(k).or_insert(v);
    }
    if !matches!(workload.phase, Phase::Train { .. }) && !pins.contains_key("batch") {
        let b = workload.bindings.get("batch").copied().unwrap_or(1);
        pins.insert("batch".into(), Pin::Int(b));
    }
    plan.fixed.clear();
    // Pins are at most 2^24 each: their product is checked, and so is the
    // device count against the same bound as --devices.
    let max = gantry_lang::check::MAX_KNOB_VALUE as u64;
    let devices = match a.devices {
        Some(n) => n,
        None => ["dp", "tp", "pp", "cp"]
            .iter()
            .map(|k| pin_int(&pins, k).unwrap_or(1))
            .try_fold(1u64, |x, y| x.checked_mul(y))
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                fail(&RuntimeError::new(
                    gantry_runtime::RCode::R007,
                    format!("the pinned degrees need more than {max} simulated devices"),
                ))
            })?,
    };
    plan.system = simulated_system(devices.max(1), plan.span);
    // The simulated devices have no price and not the file's figures: the
    // plan's objective and constraints, stated for its real system, do not
    // apply to the one pinned point that runs (a serving plan maximizing
    // throughput per dollar was refused with C015).
    plan.objective = (Goal::Maximize, "samples_per_s".into());
    plan.constraints.clear();
    let mut ev = match gantry_compiler::plan::evaluate(&plan, &pins) {
        Ok(ev) => ev,
        Err(e) => return Err(crate::pin_error_with(&e, &cli_pins)),
    };
    if !(a.whole.is_empty() && a.column.is_empty() && a.row.is_empty()) {
        pin_forms(&mut ev, &workload, [&a.whole, &a.column, &a.row]).map_err(|e| fail(&e))?;
    }
    let (_, placement) = gantry_compiler::plan::table_placement(&ev);
    let mut par = Parallel::from_point(&ev.estimate.point, &workload, &ev.estimate.stage_layers)
        .map_err(|e| fail(&e))?
        .with_tables(&workload, &placement);
    // The contraction forms the extraction pins (or `--whole`, `--column`
    // and `--row` pin): the program the cost model priced is the one the
    // devices run.
    par.forms = ev.ir.forms(par.tp);
    if (par.devices() as u64) < devices {
        crate::errln!(
            "note: the design point uses {} of the {devices} devices",
            par.devices()
        );
    }
    Ok(Target {
        workload,
        par,
        plan: plan.name,
        seed,
        comms: ev
            .estimate
            .comms
            .iter()
            .map(|c| (c.what.to_string(), c.bytes))
            .collect(),
        recompute_full: ev.estimate.point.recompute == point::Recompute::Full,
    })
}

/// Says which of the plan JSON's figures the run does not take as they
/// are: a plan is usually written at full scale and run scaled down, so
/// its `stage_layers` may not split the scaled model (the run splits it
/// evenly) and its `batch` is the plan's, not the scale's.
fn note_plan_json_scale(pp: &plan_json::PlanPoint, workload: &Workload, par: &Parallel) {
    let used: Vec<u64> = par.stage_layers.iter().map(|x| *x as u64).collect();
    if !pp.stage_layers.is_empty() && pp.stage_layers != used {
        crate::errln!(
            "note: the plan JSON's stage_layers {:?} do not split the {} layers of `{}` at this scale; the run splits them {:?}",
            pp.stage_layers,
            used.iter().sum::<u64>(),
            workload.name,
            used
        );
    }
    let bound = workload.bindings.get("batch").copied().unwrap_or(1).max(1) as u64;
    let (runs, what) = match workload.phase {
        Phase::Train { .. } => (bound, "global batch"),
        _ => (bound / (par.dp as u64).max(1), "batch per replica"),
    };
    if pp.point.batch != runs {
        crate::errln!(
            "note: the plan JSON's batch {} is the plan's; the run takes the {what} {runs} of `{}` at this scale",
            pp.point.batch,
            workload.name
        );
    }
}

/// Applies `--whole`, `--column` and `--row`: the named contractions take
/// that form at the point's degree, and the point is priced again with
/// that program.
fn pin_forms(
    ev: &mut gantry_compiler::plan::Evaluation,
    workload: &Workload,
    names: [&[String]; 3],
) -> Result<(), RuntimeError> {
    if !matches!(workload.phase, Phase::Train { .. }) {
        return Err(RuntimeError::new(
            gantry_runtime::RCode::R002,
            "`--whole`, `--column` and `--row` pin a training plan's layouts; this workload does not train",
        ));
    }
    let forms = form_tensors(workload, names)?;
    let tp = ev.estimate.point.tp as usize;
    ev.ir.set_forms(tp, forms);
    let priced = gantry_compiler::cost::Evaluator {
        ir: &ev.ir,
        hw: &ev.hardware,
        prefill: None,
    }
    .evaluate(&ev.estimate.point);
    ev.estimate = priced;
    Ok(())
}

/// The forms of the contractions named in `names` (whole, column, row;
/// tensor names as in the source, or `linear %7` for an unnamed one, as
/// the planner prints them). Only a linear takes column or row.
fn form_tensors(
    workload: &Workload,
    names: [&[String]; 3],
) -> Result<gantry_compiler::sharded::Forms, RuntimeError> {
    use gantry_compiler::sharded::Form;
    use gantry_lang::program::OpKind;
    let g = &workload.model.graph;
    let ops = gantry_compiler::sharded::ops_of(&g.body);
    let mut forms = gantry_compiler::sharded::Forms::new();
    for (form, list) in [Form::Whole, Form::Column, Form::Row]
        .into_iter()
        .zip(names)
    {
        for name in list {
            let found: Vec<_> = ops
                .iter()
                .filter(|o| gantry_compiler::sharded::op_label(g, o) == *name)
                .filter(|o| match o.kind {
                    OpKind::Linear { .. } => true,
                    OpKind::MatMul | OpKind::Attention { .. } => form == Form::Whole,
                    _ => false,
                })
                .map(|o| o.output)
                .collect();
            if found.is_empty() {
                let what = if form == Form::Whole {
                    "linear, matmul or attention"
                } else {
                    "linear"
                };
                return Err(RuntimeError::new(
                    gantry_runtime::RCode::R002,
                    format!(
                        "`--{} {name}`: no {what} of `{}` produces a tensor named `{name}`",
                        form.name(),
                        workload.model.name
                    ),
                ));
            }
            for t in found {
                if let Some(prev) = forms.insert(t, form)
                    && prev != form
                {
                    return Err(RuntimeError::new(
                        gantry_runtime::RCode::R002,
                        format!(
                            "`{name}` is pinned both {} and {}",
                            prev.name(),
                            form.name()
                        ),
                    ));
                }
            }
        }
    }
    Ok(forms)
}

/// `gantry run`.
pub fn run_cmd(a: &RunArgs) -> ExitCode {
    let t = match resolve_target(&a.target) {
        Ok(t) => t,
        Err(c) => return c,
    };
    let args: Vec<String> = t
        .workload
        .model
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let binds: Vec<String> = t
        .workload
        .bindings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    crate::outln!(
        "run {} ({}): {}({})",
        t.plan,
        t.workload.name,
        t.workload.model.name,
        if args.join(", ").len() > 200 {
            "...".to_string()
        } else {
            args.join(", ")
        }
    );
    crate::outln!(
        "  bind {}; {} simulated devices: {}",
        binds.join(" "),
        t.par.devices(),
        exec::describe(&t.par)
    );
    if !t.par.tables.is_empty() {
        let count = |f: fn(&exec::TableShard) -> bool| t.par.tables.iter().filter(|s| f(s)).count();
        crate::outln!(
            "  embedding tables: {} table-wise, {} row-wise, {} column-wise, {} replicated (the planner's placement)",
            count(|s| matches!(s, exec::TableShard::Table(_))),
            count(|s| matches!(s, exec::TableShard::Row)),
            count(|s| matches!(s, exec::TableShard::Column)),
            count(|s| matches!(s, exec::TableShard::Replicated)),
        );
    }
    let gradients = match a.grad {
        Grads::On => true,
        Grads::Off => false,
        Grads::Auto => matches!(t.workload.phase, Phase::Train { .. }),
    };
    // Past the machine's memory the guard guards nothing: an allocation
    // failure aborts the process instead of R007.
    let mut max_bytes = a.max_memory * 1e9;
    let capped = match exec::host_memory() {
        Some(host) if max_bytes > host => {
            let asked = if a.max_memory < 1e6 {
                format!("{}", a.max_memory)
            } else {
                format!("{:e}", a.max_memory)
            };
            crate::errln!(
                "note: --max-memory {asked} GB is more than this machine's {:.3} GB of memory; the run is limited to {:.3} GB",
                host / 1e9,
                host / 1e9
            );
            max_bytes = host;
            true
        }
        _ => false,
    };
    let cfg = RunConfig {
        seed: a.seed.or(t.seed).unwrap_or(0),
        tolerance: a.tolerance,
        gradients,
        max_bytes,
        ..RunConfig::default()
    };
    let report = match exec::run(&t.workload, &t.par, &cfg) {
        Ok(r) => r,
        Err(mut e) => {
            if capped && e.code == gantry_runtime::RCode::R007 {
                e.help = Some(
                    "scale the workload down with --scale: a run cannot use more than this machine's memory".into(),
                );
            }
            return fail(&e);
        }
    };
    crate::outln!(
        "  {} microbatches per replica, {} kernels compiled over all devices",
        report.microbatches,
        report.kernels
    );
    for o in &report.outputs {
        crate::outln!(
            "  output {} {:?}: max abs error {:.3e}, max rel error {:.3e}",
            o.name,
            o.shape,
            o.max_abs,
            o.max_rel
        );
        if o.non_finite > 0 {
            crate::errln!(
                "warning: {} values of the reference's `{}` are not finite (the model overflows f32 at this scale): the devices agree with it there, which checks little",
                o.non_finite,
                o.name
            );
        }
    }
    if let Some(g) = &report.gradients {
        crate::outln!(
            "  gradients of one step (loss = sum of outputs): {} parameter tensors, {} elements, {} device blocks",
            g.params,
            g.elements,
            g.blocks
        );
        crate::outln!(
            "  gradient max abs error {:.3e}, max rel error {:.3e} (worst: {})",
            g.max_abs,
            g.max_rel,
            g.worst
        );
        if let Some(s) = &report.step {
            crate::outln!(
                "  {} step (ZeRO-{}): {} parameter blocks {} the unsharded step bit for bit; optimizer state {} floats on the fullest device ({} unsharded)",
                s.optimizer,
                s.zero,
                s.blocks,
                if s.mismatched.is_empty() {
                    "equal"
                } else {
                    "do NOT all equal"
                },
                s.state,
                s.state_unsharded
            );
        }
        if g.zero_params > 0 {
            crate::outln!(
                "  note: {} of the {} parameter gradients are zero in the reference too (a dead ReLU at this scale?); another --seed checks more",
                g.zero_params,
                g.params
            );
        }
    }
    let rows = traffic_rows(&t, &report);
    if !rows.is_empty() {
        crate::outln!(
            "  bytes sent by the busiest device per step ({} B per element), run vs cost model:",
            t.workload.dtype.bytes().unwrap_or(4)
        );
        for r in rows {
            let model: Vec<String> = r
                .model
                .iter()
                .map(|(w, b)| format!("{w} {}", human_bytes(*b)))
                .collect();
            crate::outln!(
                "    {:<10} {:>13}   {}",
                r.label,
                human_bytes(r.measured),
                if r.label == "input" {
                    "(ids each server's loader reads under model-parallel input: not network traffic)"
                        .to_string()
                } else if model.is_empty() {
                    "(not in the cost model)".to_string()
                } else {
                    match why_traffic_differs(&t, &r) {
                        Some(why) => format!("{} ({why}, docs/RUNTIME.md)", model.join("; ")),
                        None => model.join("; "),
                    }
                }
            );
        }
    }
    match report.error() {
        Some(e) => fail(&e),
        None => {
            crate::outln!(
                "ok: every output{} within {:e} (relative) of the reference interpreter",
                if report.gradients.is_some() {
                    " and parameter gradient"
                } else {
                    ""
                },
                a.tolerance
            );
            ExitCode::SUCCESS
        }
    }
}

/// `gantry kernels`.
pub fn kernels_cmd(a: &KernelsArgs) -> ExitCode {
    let t = match resolve_target(&a.target) {
        Ok(t) => t,
        Err(c) => return c,
    };
    match exec::kernels(&t.workload, &t.par, a.device) {
        Ok(ks) => {
            crate::outln!(
                "; {} kernels of device {} ({}), {}",
                ks.len(),
                a.device,
                t.workload.name,
                exec::describe(&t.par)
            );
            for (i, (name, clif)) in ks.iter().enumerate() {
                crate::outln!("\n; kernel {i}: {name}\n{clif}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Whole bytes with thousands separators, so the run's and the cost
/// model's figures compare digit by digit.
fn human_bytes(b: f64) -> String {
    let digits = format!("{:.0}", b.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out + " B"
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Median seconds of `reps` runs of `f` after one warm-up run.
fn time(reps: usize, mut f: impl FnMut() -> Result<(), RuntimeError>) -> Result<f64, RuntimeError> {
    f()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        v.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(v))
}

fn host_memory_bytes() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(16e9, |kib| kib * 1024.0)
}

/// Times the JIT kernels on this host.
pub fn measure(quick: bool, power: f64) -> Result<Measurements, RuntimeError> {
    let mut jit = Jit::new()?;
    let shapes: &[(usize, usize, usize)] = if quick {
        &[(64, 64, 64), (128, 128, 128), (8, 512, 512)]
    } else {
        &[
            (256, 256, 256),
            (512, 512, 512),
            (1024, 1024, 1024),
            (8, 4096, 4096),
        ]
    };
    let reps = if quick { 3 } else { 5 };
    let mut matmul = Vec::new();
    for &(m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let bp = jit::pack_b(&b, k, n);
        let mut c = vec![0.0; m * n];
        let s = time(reps, || jit.matmul(m, k, n, &a, &bp, None, &mut c))?;
        matmul.push(MatmulTiming {
            m,
            k,
            n,
            flops_per_s: 2.0 * (m * k * n) as f64 / s.max(1e-12),
        });
    }
    let len = if quick { 1 << 20 } else { 16 << 20 };
    let x: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let mut y = vec![0.0f32; len];
    let bytes = 8.0 * len as f64;
    let copy = time(reps, || {
        y.copy_from_slice(&x);
        Ok(())
    })?;
    let scale = Expr::Unary(Unary::Scale(2.0f32.to_bits()), Box::new(Expr::Input(0)));
    let ew = time(reps, || jit.elementwise(&scale, &[&x], &mut y))?;
    let (rows, dim) = (1 << 16, 64);
    let table: Vec<f32> = (0..rows * dim).map(|i| i as f32).collect();
    let lookups = len / dim;
    let ids: Vec<f32> = (0..lookups).map(|i| ((i * 7919) % rows) as f32).collect();
    let mut out = vec![0.0f32; lookups * dim];
    let g = time(reps, || {
        jit.gather(dim, 1, 1, 0, &ids, &table, rows, 0, &mut out)
    })?;
    Ok(Measurements {
        matmul,
        elementwise_bw: bytes / ew.max(1e-12),
        gather_bw: bytes / g.max(1e-12),
        copy_bw: bytes / copy.max(1e-12),
        memory_bytes: host_memory_bytes(),
        power_w: power,
    })
}

/// `gantry calibrate`.
pub fn calibrate_cmd(a: &CalibrateArgs) -> ExitCode {
    if let Some(dir) = &a.fit {
        return crate::fit_cli::calibrate_fit_cmd(dir, a.write);
    }
    let valid = a
        .name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && a.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        crate::errln!(
            "error: `{}` is not a device name (letters, digits and `_`, starting with a letter)",
            a.name
        );
        return ExitCode::from(2);
    }
    // A reserved word or built-in name, or a power beyond the checker's
    // range, would print a declaration that `gantry check` refuses.
    if let Some(e) = calibrate::declaration_error(&a.name, a.power) {
        crate::errln!("error: the device declaration (`--name`, `--power`) would not check: {e}");
        return ExitCode::from(2);
    }
    match measure(a.quick, a.power) {
        Ok(m) => {
            crate::out!("{}", calibrate::device_decl(&a.name, &m));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
