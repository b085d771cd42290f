//! Declarations: hardware, tables, workloads, plans and studies.
//!
//! Each kind has a small schema (which item keys it takes, in which form,
//! with which units). Items are grouped by key first so unknown, repeated
//! and missing keys are reported uniformly; then each key is read with the
//! units it must have. Instantiation is memoized by the instance key
//! (`Name(arg=value, ...)`), so a device used by a hundred nodes is checked
//! once and its diagnostics appear once.

use std::collections::BTreeMap;

use crate::ast::{Decl, DeclKind, Item, ItemForm, Knob, PlanDecl, PlanItem};
use crate::check::eval::{Env, article, count_of, unit_name};
use crate::check::value::{Instance, Value};
use crate::check::{Checker, suggest};
use crate::diagnostic::{Code, Diagnostic};
use crate::program::*;
use crate::span::Span;
use crate::units::{Dim, Quantity};

/// A key a declaration accepts: its name, allowed forms, whether it may repeat.
struct Key {
    name: &'static str,
    forms: &'static [ItemForm],
    multi: bool,
    required: bool,
}

const fn key(name: &'static str, forms: &'static [ItemForm], multi: bool, required: bool) -> Key {
    Key {
        name,
        forms,
        multi,
        required,
    }
}

/// The most systems one study sweeps (and the most points one linear
/// range gives, in a sweep or a plan knob): above it is `L047`, reported
/// before any system is built (docs/LANGUAGE.md §5.9).
pub const MAX_SWEEP: usize = 10_000;

const V: &[ItemForm] = &[ItemForm::Value];
const A: &[ItemForm] = &[ItemForm::Assign];
const N: &[ItemForm] = &[ItemForm::Named];
const VN: &[ItemForm] = &[ItemForm::Value, ItemForm::Named];
const VA: &[ItemForm] = &[ItemForm::Value, ItemForm::Assign];
const AN: &[ItemForm] = &[ItemForm::Assign, ItemForm::Named];

const DEVICE_KEYS: &[Key] = &[
    key("compute", VA, false, true),
    key("memory", VN, true, true),
    key("power", VA, false, true),
    key("price", VA, false, false),
    key("cores", VA, false, false),
    key("sfu", VA, false, false),
    key("efficiency", VA, false, false),
    key("purchase", VA, false, false),
    key("amortization", VA, false, false),
    key("idle_power", VA, false, false),
    key("mtbf", VA, false, false),
];
/// The one device memory tier the cost model reads (`memory hbm = ...`, or
/// the value form `memory 80 GB @ 3.35 TB/s`, which is named `hbm`). Other
/// named tiers are `L098`.
pub const MODELLED_MEMORY: &str = "hbm";

const NODE_KEYS: &[Key] = &[
    key("device", V, false, true),
    key("link", N, true, false),
    key("nic", V, false, false),
    key("host", N, false, false),
    key("power", VA, false, false),
    key("price", VA, false, false),
    key("purchase", VA, false, false),
    key("amortization", VA, false, false),
    key("idle_power", VA, false, false),
    key("mtbf", VA, false, false),
];
const CLUSTER_KEYS: &[Key] = &[key("node", V, false, true), key("fabric", N, false, false)];
const TABLE_KEYS: &[Key] = &[
    key("rows", A, false, false),
    key("dim", A, false, false),
    key("pooling", A, false, false),
    key("dtype", A, false, false),
];
const WORKLOAD_KEYS: &[Key] = &[
    key("model", V, false, true),
    key("train", VA, false, false),
    key("prefill", VA, false, false),
    key("decode", VA, false, false),
    key("serve", VA, false, false),
    key("simulate", VA, false, false),
];
const PLAN_KEYS: &[Key] = &[
    key("expect", N, true, false),
    key("tolerance", AN, true, false),
    key("source", VA, false, false),
    key("simulate", VA, false, false),
    key("target", VA, false, false),
    key("workloads", VA, false, false),
    key("site", VA, false, false),
    key("demand", VA, false, false),
];

/// Plan knobs and the kind of value each takes.
pub const KNOBS: &[(&str, &str)] = &[
    ("dp", "int"),
    ("tp", "int"),
    ("pp", "int"),
    ("cp", "int"),
    ("ep", "int"),
    ("zero", "int"),
    ("microbatch", "int"),
    ("virtual_stages", "int"),
    ("recompute", "none|selective|full"),
    ("sequence_parallel", "bool"),
    ("nodes", "int"),
    ("batch", "int"),
    ("shard", "int"),
    // The serving scheduler's (plans of `serve` workloads only, L081).
    ("token_budget", "int"),
    ("chunked_prefill", "bool"),
    // Disaggregated pools: each pool's tensor parallelism and replicas.
    ("prefill_tp", "int"),
    ("prefill_dp", "int"),
    ("decode_tp", "int"),
    ("decode_dp", "int"),
];

/// Knobs only the serving planner reads.
pub const SERVE_KNOBS: &[&str] = &[
    "token_budget",
    "chunked_prefill",
    "prefill_tp",
    "prefill_dp",
    "decode_tp",
    "decode_dp",
];

/// The largest value of any integer plan knob (in a `fix`, a `search`
/// domain or a `--fix`/`--pin`): 2^24 = 16,777,216. Far above the device
/// count of any system and any serving batch, and small enough that the
/// product of two pins cannot overflow.
pub const MAX_KNOB_VALUE: i64 = 1 << 24;

/// The `efficiency` factors the cost model reads (compiler/src/hardware.rs),
/// with the dimension each takes, the largest accepted value of those with
/// a unit (fractions lie in (0, 1]) and an example.
pub const EFFICIENCY: &[(&str, Dim, f64, &str)] = &[
    ("matmul", Dim::NONE, 1.0, "matmul = 0.7"),
    ("matmul_knee", Dim::FLOP, 1e18, "matmul_knee = 4 GFLOP"),
    ("attention", Dim::NONE, 1.0, "attention = 0.6"),
    ("memory", Dim::NONE, 1.0, "memory = 0.6"),
    ("scaleup", Dim::NONE, 1.0, "scaleup = 0.9"),
    ("scaleout", Dim::NONE, 1.0, "scaleout = 0.9"),
    ("tp_overlap", Dim::NONE, 1.0, "tp_overlap = 0.3"),
    ("kernel_overhead", Dim::TIME, 1.0, "kernel_overhead = 5 us"),
    ("step_overhead", Dim::TIME, 3600.0, "step_overhead = 5 ms"),
    // Inference only: the serving engine's host time per sequence in one
    // iteration (scheduling, sampling, detokenisation, bookkeeping).
    ("seq_overhead", Dim::TIME, 1.0, "seq_overhead = 20 us"),
    ("reserve", Dim::BYTES, 1e15, "reserve = 2 GB"),
    // What `gantry calibrate --fit` records next to the factors it fitted:
    // the rows it fitted them on and their leave-one-out relative errors
    // (median and worst, as fractions), the band every prediction of this
    // device and phase carries.
    ("fit_rows", Dim::NONE, 1e6, "fit_rows = 16"),
    ("loo_median", Dim::NONE, 100.0, "loo_median = 0.05"),
    ("loo_max", Dim::NONE, 100.0, "loo_max = 0.12"),
];

/// The `efficiency` factors a borrowing device does not take from its
/// lender (`efficiency { infer = H100_SXM }`): host times of the lender's
/// software, and its memory policy.
pub const NOT_LENT: &[&str] = &["step_overhead", "seq_overhead", "reserve"];

/// The phases an `efficiency` record may calibrate separately: a field
/// `train = { ... }` or `infer = { ... }` overrides the record's factors
/// for training, or for prefill and decode. The checked map holds them as
/// `train.matmul`, `infer.step_overhead`.
pub const EFFICIENCY_PHASES: &[&str] = &["train", "infer"];

/// The smallest efficiency fraction: below 0.1% of peak a factor stands
/// in for a missing figure rather than measuring one (a `matmul` of
/// 1e-300 priced a step at 1e298 s). `gantry calibrate --fit` searches
/// fractions down to it, so every value it writes is accepted.
pub const MIN_EFFICIENCY: f64 = 1e-3;

/// Whether an efficiency entry is a fraction of peak in [0.001, 1] (the
/// factors without a unit) rather than a count or error figure.
pub fn efficiency_is_fraction(name: &str) -> bool {
    EFFICIENCY
        .iter()
        .any(|(n, d, max, _)| *n == name && d.is_none() && *max <= 1.0)
}

/// The physical range of a hardware figure (`L046` outside it): whether
/// zero is allowed, and the largest accepted value in base units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FigureRange {
    /// Rates, bandwidths, capacities, device powers and prices must be
    /// above zero (a zero one makes a step time or a price infinite);
    /// latencies and a node's power overhead may be zero.
    pub positive: bool,
    /// The smallest accepted value in base units (0: none beyond
    /// `positive`): a figure so small that what divides by it comes out
    /// infinite or meaningless.
    pub min: f64,
    pub max: f64,
}

/// Compute rates per device, in FLOP/s: at least 1e6 (1 MFLOP/s, what a
/// 1980s microprocessor with an FPU managed; the slowest figure in the
/// stdlib is tens of TFLOP/s, and at 1e-300 FLOP/s a step took an
/// infinite time, C016 "this is a bug"), at most 1e18 (1 EFLOP/s; the
/// densest figure in the stdlib, B200 fp8, is 4.5e15).
pub const MAX_FLOP_RATE: FigureRange = FigureRange {
    positive: true,
    min: 1e6,
    max: 1e18,
};
/// Memory, link, NIC and fabric bandwidths, in B/s: at least 1e3 (1 kB/s
/// = 8 kb/s, below a dial-up modem's 56 kb/s; real memories and links run
/// at GB/s, and at 1e-300 B/s a transfer took an infinite time, C016), at
/// most 1e18 (1 EB/s; on-chip SRAM reaches about 1e14).
pub const MAX_BANDWIDTH: FigureRange = FigureRange {
    positive: true,
    min: 1e3,
    max: 1e18,
};
/// Memory capacities (HBM, other memories, host memory), in B: at most
/// 1e15 (1 PB, as the `reserve` bound; a node's host memory is about 2e12).
pub const MAX_CAPACITY: FigureRange = FigureRange {
    positive: true,
    min: 0.0,
    max: 1e15,
};
/// A device's power, in W: at least 1e-3 (1 mW, a microcontroller's
/// draw; an accelerator draws hundreds of watts, and at 1e-300 W the
/// energy per step and throughput per watt were absurd), at most 1e6
/// (1 MW; a GPU draws about 1e3).
pub const DEVICE_POWER: FigureRange = FigureRange {
    positive: true,
    min: 1e-3,
    max: 1e6,
};
/// A node's power beyond its devices', in W: zero or more, at most 1e6.
pub const NODE_POWER: FigureRange = FigureRange {
    positive: false,
    min: 0.0,
    max: 1e6,
};
/// Prices, in $/s: at least $0.001/h (a tenth of a cent an hour, below
/// the cheapest cloud vCPU; at $1e-300/h the throughput per dollar was
/// infinite and every design point invalid, C010), at most $1,000,000/h
/// (a device costs a few $/h, a node a few tens).
pub const MAX_PRICE: FigureRange = FigureRange {
    positive: true,
    min: 0.001 / 3600.0,
    max: 1e6 / 3600.0,
};
/// Link and fabric latencies, in s: zero or more, at most 1 s (real ones
/// are microseconds).
pub const MAX_LATENCY: FigureRange = FigureRange {
    positive: false,
    min: 0.0,
    max: 1.0,
};

/// Metrics usable in objectives, constraints and `expect`, with dimensions.
pub fn metric_dim(name: &str) -> Option<Dim> {
    Some(match name {
        "tokens_per_s"
        | "tokens_per_s_per_device"
        | "samples_per_s"
        | "mfu"
        | "hfu"
        | "devices"
        | "throughput_per_dollar"
        | "throughput_per_watt"
        | "throughput"
        | "goodput" => Dim::NONE,
        "step_time" | "ttft" | "tpot" | "iteration_time" => Dim::TIME,
        // A `serve` workload's latency percentiles (simulated requests).
        "ttft_p50" | "ttft_p90" | "ttft_p99" | "tpot_p50" | "tpot_p90" | "tpot_p99" | "e2e_p50"
        | "e2e_p90" | "e2e_p99" | "ttft_mean" | "tpot_mean" | "e2e_mean" => Dim::TIME,
        "memory" | "hbm" => Dim::BYTES,
        "power" => Dim::POWER,
        "energy_per_step" => Dim::ENERGY,
        "cost_per_million_tokens" => Dim::MONEY,
        "model_tflops_per_device" | "hardware_tflops_per_device" => Dim::FLOP_RATE,
        _ => return None,
    })
}

/// Figures of a study's pooled fleet usable in its `expect`.
pub fn study_metric_dim(name: &str) -> Option<Dim> {
    Some(match name {
        "cost" => Dim::PRICE_RATE,
        "power" => Dim::POWER,
        "devices" => Dim::NONE,
        _ => return None,
    })
}

pub const METRICS: &[&str] = &[
    "tokens_per_s",
    "tokens_per_s_per_device",
    "samples_per_s",
    "throughput",
    "step_time",
    "iteration_time",
    "ttft",
    "tpot",
    "mfu",
    "hfu",
    "memory",
    "hbm",
    "power",
    "energy_per_step",
    "cost_per_million_tokens",
    "throughput_per_dollar",
    "throughput_per_watt",
    "model_tflops_per_device",
    "hardware_tflops_per_device",
    "devices",
    "goodput",
    "ttft_p50",
    "ttft_p90",
    "ttft_p99",
    "tpot_p50",
    "tpot_p90",
    "tpot_p99",
    "e2e_p50",
    "e2e_p90",
    "e2e_p99",
    "ttft_mean",
    "tpot_mean",
    "e2e_mean",
];

impl Checker {
    /// Groups items by key, reporting unknown keys, wrong forms, repeats
    /// and missing required keys. A key that is there but broken (written
    /// in the wrong form, misspelt close to a required key) counts as
    /// given, and nothing is reported missing from a declaration with a
    /// syntax error (`broken`): the first report says it all.
    fn group<'a>(
        &mut self,
        what: &str,
        decl_span: Span,
        items: &'a [Item],
        keys: &[Key],
        broken: bool,
    ) -> BTreeMap<&'static str, Vec<&'a Item>> {
        let mut out: BTreeMap<&'static str, Vec<&'a Item>> = BTreeMap::new();
        let mut present: Vec<&str> = Vec::new();
        for it in items {
            if it.key.name.is_empty() {
                continue; // a syntax error, already reported
            }
            let Some(k) = keys.iter().find(|k| k.name == it.key.name) else {
                if self.broken(it.span) {
                    continue; // the line did not parse; that was reported
                }
                let mut d = Diagnostic::error(
                    Code::L060,
                    format!("{what} has no field `{}`", it.key.name),
                    it.key.span,
                )
                .with_label(it.key.span, "unknown field");
                d = match suggest(&it.key.name, keys.iter().map(|k| k.name)) {
                    Some(s) => {
                        if let Some(k) = keys.iter().find(|k| k.name == s) {
                            present.push(k.name);
                        }
                        d.with_help(format!("did you mean `{s}`?"))
                    }
                    None => d.with_help(format!(
                        "{what} takes: {}",
                        keys.iter()
                            .map(|k| format!("`{}`", k.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                };
                self.diags.push(d);
                continue;
            };
            if !k.forms.contains(&it.form) {
                present.push(k.name);
                let want = match k.forms[0] {
                    ItemForm::Assign => format!("`{} = value`", k.name),
                    ItemForm::Value => format!("`{} value`", k.name),
                    ItemForm::Named => format!("`{} name = value`", k.name),
                };
                self.diags.push(
                    Diagnostic::error(
                        Code::L043,
                        format!("field `{}` is written in the wrong form", k.name),
                        it.span,
                    )
                    .with_label(it.span, "written like this")
                    .with_help(format!("write it as {want}")),
                );
                continue;
            }
            if it.count.is_some() && !matches!(k.name, "device" | "node" | "nic") {
                let cs = it.count.as_ref().map_or(it.span, |c| c.span);
                self.diags.push(
                    Diagnostic::error(
                        Code::L043,
                        format!("field `{}` does not take a count", k.name),
                        cs,
                    )
                    .with_label(cs, "`x count` is only for `device`, `node` and `nic`"),
                );
            }
            let entry = out.entry(k.name).or_default();
            if !k.multi
                && let Some(first) = entry.first()
            {
                self.diags.push(
                    Diagnostic::error(
                        Code::L062,
                        format!("field `{}` is given twice", k.name),
                        it.key.span,
                    )
                    .with_label(it.key.span, "given again here")
                    .with_label(first.key.span, "first given here")
                    .with_help("remove one of them"),
                );
                continue;
            }
            entry.push(it);
        }
        if !broken {
            for k in keys {
                if k.required && !out.contains_key(k.name) && !present.contains(&k.name) {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L061,
                            format!("{what} is missing field `{}`", k.name),
                            decl_span,
                        )
                        .with_label(decl_span, format!("needs `{}`", k.name)),
                    );
                }
            }
        }
        out
    }

    /// A quantity of the given dimension, or a reported error.
    pub(crate) fn quantity(
        &mut self,
        v: &Value,
        span: Span,
        dim: Dim,
        what: &str,
        example: &str,
    ) -> Option<f64> {
        let q = self.num(v, span)?;
        if q.dim != dim {
            self.diags.push(
                Diagnostic::error(
                    Code::L041,
                    format!(
                        "{what} must be {}, but this is {}",
                        dim.describe(),
                        q.dim.describe()
                    ),
                    span,
                )
                .with_label(span, format!("this is in {}", unit_name(q.dim)))
                .with_help(format!("write it like `{example}`")),
            );
            return None;
        }
        if !q.value.is_finite() {
            self.diags.push(
                Diagnostic::error(Code::L046, format!("{what} must be a finite number"), span)
                    .with_label(span, format!("{q}: too large for a double")),
            );
            return None;
        }
        if q.value < 0.0 {
            self.diags.push(
                Diagnostic::error(Code::L046, format!("{what} must not be negative"), span)
                    .with_label(span, format!("{q}")),
            );
            return None;
        }
        Some(q.value)
    }

    /// A hardware figure: a finite quantity of `dim` within `range`
    /// (`L046` otherwise, with the documented bound). `-0` counts as zero.
    pub(crate) fn figure(
        &mut self,
        v: &Value,
        span: Span,
        (dim, range): (Dim, FigureRange),
        what: &str,
        example: &str,
    ) -> Option<f64> {
        let value = self.quantity(v, span, dim, what, example)?;
        let q = Quantity::new(value, dim);
        let (msg, label) = if range.positive && value <= 0.0 {
            (
                format!("{what} must be above zero, got {q}"),
                "a zero figure makes every time or price that divides by it infinite",
            )
        } else if value < range.min {
            (
                format!(
                    "{what} must be at least {}, got {q}",
                    Quantity::new(range.min, dim)
                ),
                "far below any real hardware, site or demand (docs/LANGUAGE.md, §5.2 \"Hardware figures\")",
            )
        } else if value > range.max {
            (
                format!(
                    "{what} must be at most {}, got {q}",
                    Quantity::new(range.max, dim)
                ),
                "beyond any real hardware (docs/LANGUAGE.md, §5.2 \"Hardware figures\")",
            )
        } else {
            return Some(value);
        };
        let max = Quantity::new(range.max, dim);
        let accepted = if range.min > 0.0 {
            format!("{} to {max}", Quantity::new(range.min, dim))
        } else if range.positive {
            format!("above zero, at most {max}")
        } else {
            format!("0 to {max}")
        };
        self.diags.push(
            Diagnostic::error(Code::L046, msg, span)
                .with_label(span, label)
                .with_help(format!("accepted: {accepted}; write it like `{example}`")),
        );
        None
    }

    fn decl_env(&mut self, inst: &Instance, params: &[crate::ast::Param]) -> Env {
        let mut env = Env::new();
        for (k, v) in inst.args.iter() {
            let span = params
                .iter()
                .find(|p| p.name.name == *k)
                .map_or(Span::new(0, 0), |p| p.name.span);
            env.bind(k, v.clone(), span);
        }
        env
    }

    /// Starts building an instance of a block declaration: its syntax, the
    /// error count before it, and its parameters bound; `None` on a cycle.
    pub(crate) fn open(
        &mut self,
        inst: &Instance,
        use_span: Span,
    ) -> Option<(crate::ast::BlockDecl, usize, Env)> {
        let b = self.block_decl(&inst.name)?;
        if !self.enter(inst, use_span) {
            return None;
        }
        let before = self.error_count();
        let env = self.decl_env(inst, &b.params);
        Some((b, before, env))
    }

    fn block_decl(&self, name: &str) -> Option<crate::ast::BlockDecl> {
        let d = self.decls.get(name)?;
        match &self.files[d.file].decls[d.idx] {
            Decl::Block(b) => Some(b.clone()),
            _ => None,
        }
    }

    pub(crate) fn expect_kind(
        &mut self,
        v: &Value,
        span: Span,
        kind: DeclKind,
    ) -> Option<Instance> {
        match v {
            Value::Decl(i) if i.kind == kind => Some(i.clone()),
            Value::Decl(i) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::L032,
                        format!(
                            "`{}` is a {}, not a {}",
                            i.name,
                            i.kind.keyword(),
                            kind.keyword()
                        ),
                        span,
                    )
                    .with_label(span, format!("expected a {}", kind.keyword())),
                );
                None
            }
            other => {
                self.type_error(other, span, &format!("a {}", kind.keyword()));
                None
            }
        }
    }

    // ------------------------------------------------------------ hardware

    pub(crate) fn device(&mut self, inst: &Instance, use_span: Span) -> Option<Device> {
        let key = inst.key();
        if let Some(d) = self.memo_devices.get(&key) {
            return d.clone();
        }
        let (b, before, mut env) = self.open(inst, use_span)?;
        let g = self.group(
            &format!("device `{}`", inst.name),
            b.name.span,
            &b.items,
            DEVICE_KEYS,
            self.broken(b.span),
        );
        let mut dev = Device {
            name: inst.label(),
            compute: BTreeMap::new(),
            memories: Vec::new(),
            power: 0.0,
            price: None,
            cores: None,
            sfu: None,
            efficiency: BTreeMap::new(),
            borrowed: BTreeMap::new(),
            own: Default::default(),
            span: b.name.span,
        };
        if let Some(it) = g.get("compute").and_then(|v| v.first()) {
            let v = self.eval(&it.value, &mut env);
            if let Some(fields) = self.record(&v, it.value.span, "compute rates per element type") {
                for (name, nspan, fv, fspan) in fields {
                    let Some(dt) = DType::parse(&name) else {
                        let mut d = Diagnostic::error(
                            Code::L063,
                            format!("unknown element type `{name}`"),
                            nspan,
                        )
                        .with_label(nspan, "not an element type");
                        d = match suggest(&name, DType::NAMES.iter().copied()) {
                            Some(s) => d.with_help(format!("did you mean `{s}`?")),
                            None => d.with_help(DType::help()),
                        };
                        self.diags.push(d);
                        continue;
                    };
                    if let Some(r) = self.figure(
                        &fv,
                        fspan,
                        (Dim::FLOP_RATE, MAX_FLOP_RATE),
                        &format!("compute `{name}`"),
                        "989 TFLOP/s",
                    ) {
                        dev.compute.insert(dt, r);
                    }
                }
            }
        }
        // The cost model reads one memory tier, `hbm` (the value form's
        // name); the node's `host memory` is the other. Another tier
        // (`memory sram = 40 MiB @ 10 TB/s`) is kept in the program but
        // priced nowhere, so it is `L098` (a warning), a second `hbm` is
        // `L062` and a device without one `L061`: none is silently read as
        // the device memory or silently dropped.
        let mut hbm_span: Option<Span> = None;
        let mut any_memory = false;
        for it in g.get("memory").into_iter().flatten() {
            any_memory = true;
            let name = it
                .name
                .as_ref()
                .map_or("hbm".to_string(), |n| n.name.clone());
            let name_span = it.name.as_ref().map_or(it.key.span, |n| n.span);
            if name == MODELLED_MEMORY {
                if let Some(first) = hbm_span {
                    self.diags.push(
                        Diagnostic::error(Code::L062, "memory `hbm` is given twice", name_span)
                            .with_label(name_span, "given again here")
                            .with_label(first, "first given here")
                            .with_help("a device has one HBM; remove one of them"),
                    );
                    continue;
                }
                hbm_span = Some(name_span);
            } else {
                self.diags.push(
                    Diagnostic::warning(
                        Code::L098,
                        format!("memory `{name}` is not modelled: the cost model reads only `hbm`"),
                        name_span,
                    )
                    .with_label(name_span, "no cost, capacity or bandwidth is read from this tier")
                    .with_help(
                        "the modelled memories are the device's `hbm` (`memory hbm = 80 GB @ 3.35 TB/s`, \
                         or `memory 80 GB @ 3.35 TB/s`) and the node's `host memory`; remove this \
                         tier, or name it `hbm` if it is the device memory",
                    ),
                );
            }
            let v = self.eval(&it.value, &mut env);
            if let Some(m) = self.memory(&name, &v, it.value.span) {
                dev.memories.push(m);
            }
        }
        if any_memory && hbm_span.is_none() {
            self.diags.push(
                Diagnostic::error(
                    Code::L061,
                    format!("device `{}` has no `hbm` memory", inst.name),
                    b.name.span,
                )
                .with_label(b.name.span, "needs `memory hbm = capacity @ bandwidth`")
                .with_help(
                    "the cost model prices the device memory named `hbm` (the form \
                     `memory 80 GB @ 3.35 TB/s` names it `hbm`); other tiers are not modelled",
                ),
            );
        }
        // The full-load power `idle_power` may not exceed: unbounded when
        // `power` itself is out of range (its own L046 says so).
        let mut full_power = 0.0;
        if let Some(it) = g.get("power").and_then(|v| v.first()) {
            let v = self.eval(&it.value, &mut env);
            let p = self.figure(
                &v,
                it.value.span,
                (Dim::POWER, DEVICE_POWER),
                "power",
                "700 W",
            );
            dev.power = p.unwrap_or(0.0);
            full_power = p.unwrap_or(f64::INFINITY);
        }
        if let Some(it) = g.get("cores").and_then(|v| v.first()) {
            let v = self.eval(&it.value, &mut env);
            if let Some(n) = self.count(&v, it.value.span, "`cores`") {
                if n > 1_000_000 {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L046,
                            format!("`cores` must be at most 1000000, got {n}"),
                            it.value.span,
                        )
                        .with_label(it.value.span, "out of range")
                        .with_help(
                            "the streaming multiprocessors or compute units, e.g. `cores 132`",
                        ),
                    );
                } else {
                    dev.cores = Some(n);
                }
            }
        }
        if let Some(it) = g.get("sfu").and_then(|v| v.first()) {
            let v = self.eval(&it.value, &mut env);
            dev.sfu = self.figure(
                &v,
                it.value.span,
                (Dim::FLOP_RATE, MAX_FLOP_RATE),
                "sfu",
                "3.87 TFLOP/s",
            );
        }
        if let Some(it) = g.get("price").and_then(|v| v.first()) {
            let v = self.eval(&it.value, &mut env);
            dev.price = self.figure(
                &v,
                it.value.span,
                (Dim::PRICE_RATE, MAX_PRICE),
                "price",
                "$2.50/h",
            );
        }
        if let Some(it) = g.get("efficiency").and_then(|v| v.first()) {
            let v = self.eval(&it.value, &mut env);
            if let Some(fields) = self.record(&v, it.value.span, "efficiency factors") {
                for (name, nspan, fv, fspan) in fields {
                    if EFFICIENCY_PHASES.contains(&name.as_str())
                        && let Value::Decl(inst) = &fv
                    {
                        self.borrow_phase(&mut dev, &name, inst, fspan);
                    } else if EFFICIENCY_PHASES.contains(&name.as_str()) {
                        let what = format!("`{name}` efficiency factors");
                        let Some(inner) = self.record(&fv, fspan, &what) else {
                            continue;
                        };
                        for (k, kspan, kv, kvspan) in inner {
                            if let Some(q) = self.efficiency_factor(&k, kspan, &kv, kvspan) {
                                dev.efficiency.insert(format!("{name}.{k}"), q);
                            }
                        }
                    } else if let Some(q) = self.efficiency_factor(&name, nspan, &fv, fspan) {
                        dev.efficiency.insert(name, q);
                    }
                }
            }
        }
        dev.own = self.ownership(&g, &mut env, full_power, b.name.span);
        // A reserve that leaves no HBM would make every point infeasible
        // with a figure that does not say why.
        if let (Some(r), Some(hbm)) = (
            dev.efficiency.get("reserve"),
            dev.memories
                .iter()
                .find(|m| m.name == "hbm")
                .or(dev.memories.first()),
        ) && r.value >= hbm.capacity
            && let Some(it) = g.get("efficiency").and_then(|v| v.first())
        {
            self.diags.push(
                Diagnostic::error(
                    Code::L046,
                    format!(
                        "efficiency `reserve` = {r} leaves nothing of the {} of `{}`",
                        Quantity::new(hbm.capacity, Dim::BYTES),
                        hbm.name
                    ),
                    it.value.span,
                )
                .with_label(it.value.span, "the reserve is at least the whole memory")
                .with_help(
                    "the reserve is the HBM kept back for the runtime, e.g. `reserve = 2 GB`",
                ),
            );
        }
        self.leave(&key);
        let ok = self.error_count() == before && !self.broken(b.span);
        let result = ok.then_some(dev);
        if let Some(d) = &result {
            self.program.devices.insert(inst.label(), d.clone());
        }
        self.memo_devices.insert(key, result.clone());
        result
    }

    /// `efficiency { train = H100_96GB }`: the phase takes the kernel
    /// factors another device holds for it (its phase record, else its
    /// device-wide factors; all but [`NOT_LENT`]), fit
    /// band included, and `dev.borrowed` records the lender
    /// (the first one down a chain of borrowings), so every report can say
    /// that the band was measured on another part. One copy of the fitted
    /// numbers lives in the stdlib; a refit of the lender moves every
    /// borrower. A lender that is not a device is `L032`; one with nothing
    /// to lend for that phase is `L093`.
    fn borrow_phase(&mut self, dev: &mut Device, phase: &str, inst: &Instance, span: Span) {
        let Some(inst) = self.expect_kind(&Value::Decl(inst.clone()), span, DeclKind::Device)
        else {
            return;
        };
        let Some(lender) = self.device(&inst, span) else {
            return;
        };
        let mut lent = 0;
        // How the silicon and links run kernels, and the fit's band; not
        // `step_overhead` nor `seq_overhead` (the framework's host time
        // per step and the serving engine's per sequence, fitted on the
        // lender's software and workloads: TensorRT-LLM's per-sequence
        // time does not price vLLM's, docs/COST-MODEL.md §4) nor `reserve`
        // (a memory policy): those stay this device's own, ideal when
        // undeclared.
        for (k, ..) in EFFICIENCY.iter().filter(|(k, ..)| !NOT_LENT.contains(k)) {
            let q = lender
                .efficiency
                .get(&format!("{phase}.{k}"))
                .or_else(|| lender.efficiency.get(*k));
            if let Some(q) = q {
                dev.efficiency.insert(format!("{phase}.{k}"), *q);
                lent += 1;
            }
        }
        if lent == 0 {
            self.diags.push(
                Diagnostic::error(
                    Code::L093,
                    format!(
                        "`{}` has no `{phase}` efficiency factors to lend",
                        lender.name
                    ),
                    span,
                )
                .with_label(span, "declares no factors for this phase")
                .with_help(format!(
                    "borrow from a device whose `efficiency` record has `{phase} = {{ ... }}` (fitted by `gantry calibrate --fit`), or write the factors here"
                )),
            );
            return;
        }
        // The lender's training `attention` was fitted with its softmax
        // priced on its special-function units (docs/COST-MODEL.md §2);
        // a borrower without `sfu` would get those factors and a free
        // softmax.
        if phase == "train" && lender.sfu.is_some() && dev.sfu.is_none() {
            self.diags.push(
                Diagnostic::warning(
                    Code::L099,
                    format!(
                        "`{}` borrows training factors from `{}`, whose attention was fitted beside its softmax on the special-function units, but declares no `sfu`: its softmax would cost nothing",
                        dev.name, lender.name
                    ),
                    span,
                )
                .with_label(span, "borrowed here")
                .with_help(
                    "declare the device's special-function rate, e.g. `sfu 3.87 TFLOP/s` (SMs x 16 results per clock x clock)",
                ),
            );
        }
        let origin = lender
            .borrowed
            .get(phase)
            .cloned()
            .unwrap_or_else(|| lender.name.clone());
        dev.borrowed.insert(phase.to_string(), origin);
    }

    /// One field of a device's `efficiency` record, checked against
    /// [`EFFICIENCY`]: the name must be one the cost model reads (`L060`,
    /// with a did-you-mean), the unit that factor's (`L041`), and the value
    /// in range (`L046`): fractions in (0, 1], quantities finite, not
    /// negative and at most the documented bound.
    fn efficiency_factor(
        &mut self,
        name: &str,
        nspan: Span,
        fv: &Value,
        fspan: Span,
    ) -> Option<Quantity> {
        let Some(&(_, dim, max, example)) = EFFICIENCY.iter().find(|(n, ..)| *n == name) else {
            let known = || {
                EFFICIENCY
                    .iter()
                    .map(|(n, ..)| *n)
                    .chain(EFFICIENCY_PHASES.iter().copied())
            };
            let mut d = Diagnostic::error(
                Code::L060,
                format!("unknown efficiency factor `{name}`"),
                nspan,
            )
            .with_label(nspan, "the cost model does not read this factor");
            d = match suggest(name, known()) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(format!(
                    "efficiency factors: {}",
                    known().collect::<Vec<_>>().join(", ")
                )),
            };
            self.diags.push(d);
            return None;
        };
        let what = format!("efficiency `{name}`");
        let value = self.quantity(fv, fspan, dim, &what, example)?;
        let q = Quantity::new(value, dim);
        let fraction = efficiency_is_fraction(name);
        let bad = if fraction {
            !(MIN_EFFICIENCY..=1.0).contains(&value)
        } else {
            !(value >= 0.0 && value <= max)
        };
        if bad {
            let (msg, help) = if fraction {
                (
                    format!("{what} must be in [0.001, 1], got {q}"),
                    format!(
                        "efficiency factors are achieved / peak, at least 0.1% of it, e.g. `{example}`"
                    ),
                )
            } else {
                (
                    format!(
                        "{what} must be at most {}, got {q}",
                        Quantity::new(max, dim)
                    ),
                    format!("write it like `{example}`"),
                )
            };
            self.diags.push(
                Diagnostic::error(Code::L046, msg, fspan)
                    .with_label(
                        fspan,
                        if fraction {
                            "a fraction of peak is expected"
                        } else {
                            "out of range"
                        },
                    )
                    .with_help(help),
            );
            return None;
        }
        Some(q)
    }

    pub(crate) fn record(
        &mut self,
        v: &Value,
        span: Span,
        what: &str,
    ) -> Option<Vec<(String, Span, Value, Span)>> {
        match v {
            Value::Record(fs) => Some(fs.clone()),
            Value::Error => None,
            other => {
                self.type_error(
                    other,
                    span,
                    &format!("a record `{{ name = value, ... }}` of {what}"),
                );
                None
            }
        }
    }

    fn memory(&mut self, name: &str, v: &Value, span: Span) -> Option<Memory> {
        let Value::Pair(a, b) = v else {
            if !matches!(v, Value::Error) {
                self.diags.push(
                    Diagnostic::error(
                        Code::L043,
                        format!("memory `{name}` needs a capacity and a bandwidth"),
                        span,
                    )
                    .with_label(span, format!("this is {}", v.describe()))
                    .with_help("write it like `80 GB @ 3.35 TB/s`"),
                );
            }
            return None;
        };
        let capacity = self.figure(
            &a.0,
            a.1,
            (Dim::BYTES, MAX_CAPACITY),
            &format!("capacity of `{name}`"),
            "80 GB",
        );
        let bandwidth = self.figure(
            &b.0,
            b.1,
            (Dim::BANDWIDTH, MAX_BANDWIDTH),
            &format!("bandwidth of `{name}`"),
            "3.35 TB/s",
        );
        Some(Memory {
            name: name.to_string(),
            capacity: capacity?,
            bandwidth: bandwidth?,
        })
    }

    /// Binds a constructor's arguments (`switch(450 GB/s, latency = 1 us)`)
    /// like a declaration's. `None` after an argument error: the error is
    /// reported, and what the constructor then lacks is not.
    pub(crate) fn ctor_args(
        &mut self,
        ctor: &str,
        args: &[(Option<String>, Value, Span)],
        params: &[&str],
    ) -> Option<BTreeMap<String, (Value, Span)>> {
        let mut out = BTreeMap::new();
        let mut pos = 0;
        let mut ok = true;
        let mut named_seen = false;
        let mut unplaced = Vec::new();
        for (name, v, s) in args {
            let p = match name {
                Some(n) if params.contains(&n.as_str()) => {
                    named_seen = true;
                    n.clone()
                }
                Some(n) => {
                    named_seen = true;
                    let mut d = Diagnostic::error(
                        Code::L033,
                        format!("`{ctor}` has no parameter `{n}`"),
                        *s,
                    )
                    .with_label(*s, "unknown parameter");
                    d = match suggest(n, params.iter().copied()) {
                        Some(x) => d.with_help(format!("did you mean `{x}`?")),
                        None => d.with_help(format!("`{ctor}({})`", params.join(", "))),
                    };
                    self.diags.push(d);
                    ok = false;
                    continue;
                }
                None if named_seen => {
                    unplaced.push(*s);
                    ok = false;
                    continue;
                }
                None => match params.get(pos) {
                    Some(p) => {
                        pos += 1;
                        p.to_string()
                    }
                    None => {
                        self.diags.push(
                            Diagnostic::error(
                                Code::L035,
                                format!(
                                    "`{ctor}` takes at most {}",
                                    count_of(params.len(), "argument")
                                ),
                                *s,
                            )
                            .with_label(*s, "this one is extra")
                            .with_help(format!("`{ctor}({})`", params.join(", "))),
                        );
                        ok = false;
                        continue;
                    }
                },
            };
            if out.insert(p.clone(), (v.clone(), *s)).is_some() {
                self.diags.push(
                    Diagnostic::error(
                        Code::L036,
                        format!("argument `{p}` of `{ctor}` is given twice"),
                        *s,
                    )
                    .with_label(*s, "given again here"),
                );
                ok = false;
            }
        }
        self.positional_after_named(&unplaced);
        ok.then_some(out)
    }

    fn ctor_quantity(
        &mut self,
        args: &BTreeMap<String, (Value, Span)>,
        p: &str,
        (dim, range, example): (Dim, FigureRange, &str),
        default: Option<f64>,
        (ctor, ctor_span): (&str, Span),
    ) -> Option<f64> {
        match args.get(p) {
            Some((v, s)) => self.figure(v, *s, (dim, range), &format!("`{p}`"), example),
            None => {
                if default.is_none() {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L034,
                            format!("`{ctor}` needs argument `{p}`"),
                            ctor_span,
                        )
                        .with_label(ctor_span, format!("`{p}` is missing"))
                        .with_help(format!("pass `{p} = {example}`")),
                    );
                }
                default
            }
        }
    }

    pub(crate) fn node(&mut self, inst: &Instance, use_span: Span) -> Option<Node> {
        let key = inst.key();
        if let Some(n) = self.memo_nodes.get(&key) {
            return n.clone();
        }
        let (b, before, mut env) = self.open(inst, use_span)?;
        let g = self.group(
            &format!("node `{}`", inst.name),
            b.name.span,
            &b.items,
            NODE_KEYS,
            self.broken(b.span),
        );
        let (device, per_node) = match g.get("device").and_then(|v| v.first()) {
            Some(it) => self.part(it, &mut env, DeclKind::Device, Self::device),
            None => (None, 1),
        };
        let mut links = Vec::new();
        for it in g.get("link").into_iter().flatten() {
            let name = it.name.as_ref().map_or(String::new(), |n| n.name.clone());
            let v = self.eval(&it.value, &mut env);
            match v {
                Value::Ctor(c, args) if c == "switch" || c == "mesh" => {
                    let Some(a) = self.ctor_args(&c, &args, &["bandwidth", "latency", "launch"])
                    else {
                        continue;
                    };
                    let bw = self.ctor_quantity(
                        &a,
                        "bandwidth",
                        (Dim::BANDWIDTH, MAX_BANDWIDTH, "450 GB/s"),
                        None,
                        (&c, it.value.span),
                    );
                    let lat = self.ctor_quantity(
                        &a,
                        "latency",
                        (Dim::TIME, MAX_LATENCY, "1 us"),
                        Some(0.0),
                        (&c, it.value.span),
                    );
                    let launch = self.ctor_quantity(
                        &a,
                        "launch",
                        (Dim::TIME, MAX_LATENCY, "6.6 us"),
                        Some(0.0),
                        (&c, it.value.span),
                    );
                    if let (Some(bandwidth), Some(latency), Some(launch)) = (bw, lat, launch) {
                        links.push(Link {
                            name,
                            kind: if c == "switch" {
                                LinkKind::Switch
                            } else {
                                LinkKind::Mesh
                            },
                            bandwidth,
                            latency,
                            launch,
                        });
                    }
                }
                Value::Error => {}
                other => {
                    self.diags.push(
                        Diagnostic::error(Code::L043, format!("link `{name}` needs a topology"), it.value.span)
                            .with_label(it.value.span, format!("this is {}", other.describe()))
                            .with_help("write `switch(450 GB/s)` for an NVSwitch-style link or `mesh(64 GB/s)` for point-to-point links"),
                    );
                }
            }
        }
        let mut nic_bandwidth = 0.0;
        let mut nics = 0;
        if let Some(it) = g.get("nic").and_then(|v| v.first()) {
            let v = self.eval(&it.value, &mut env);
            nic_bandwidth = self
                .figure(
                    &v,
                    it.value.span,
                    (Dim::BANDWIDTH, MAX_BANDWIDTH),
                    "NIC bandwidth",
                    "400 Gb/s",
                )
                .unwrap_or(0.0);
            nics = self.item_count(it, &mut env).unwrap_or(1);
        }
        let mut host_memory = None;
        if let Some(it) = g.get("host").and_then(|v| v.first()) {
            let name = it.name.as_ref().map_or("memory".into(), |n| n.name.clone());
            if name != "memory" {
                let s = it.name.as_ref().map_or(it.span, |n| n.span);
                self.diags.push(
                    Diagnostic::error(Code::L060, format!("host has no field `{name}`"), s)
                        .with_label(s, "unknown field")
                        .with_help("write `host memory = 2 TiB @ 300 GB/s`"),
                );
            } else {
                let v = self.eval(&it.value, &mut env);
                host_memory = self.memory("host", &v, it.value.span);
            }
        }
        let mut power_overhead = 0.0;
        let mut full_power = 0.0;
        if let Some(it) = g.get("power").and_then(|v| v.first()) {
            let v = self.eval(&it.value, &mut env);
            let p = self.figure(
                &v,
                it.value.span,
                (Dim::POWER, NODE_POWER),
                "node power overhead",
                "1500 W",
            );
            power_overhead = p.unwrap_or(0.0);
            full_power = p.unwrap_or(f64::INFINITY);
        }
        let mut price = None;
        if let Some(it) = g.get("price").and_then(|v| v.first()) {
            let v = self.eval(&it.value, &mut env);
            price = self.figure(
                &v,
                it.value.span,
                (Dim::PRICE_RATE, MAX_PRICE),
                "price",
                "$20/h",
            );
        }
        let own = self.ownership(&g, &mut env, full_power, b.name.span);
        self.leave(&key);
        let result = match device {
            Some(device) if self.error_count() == before && !self.broken(b.span) => Some(Node {
                name: inst.label(),
                device,
                devices_per_node: per_node,
                links,
                nic_bandwidth,
                nics,
                host_memory,
                power_overhead,
                price,
                own,
                span: b.name.span,
            }),
            _ => None,
        };
        if let Some(n) = &result {
            self.program.nodes.insert(inst.label(), n.clone());
        }
        self.memo_nodes.insert(key, result.clone());
        result
    }

    /// A `device X x N` / `node X x N` item: the part built by `build`, and
    /// how many of it (1 when the count is missing or invalid, which is
    /// reported).
    fn part<T>(
        &mut self,
        it: &Item,
        env: &mut Env,
        kind: DeclKind,
        build: fn(&mut Self, &Instance, Span) -> Option<T>,
    ) -> (Option<T>, u64) {
        let v = self.eval(&it.value, env);
        let built = self
            .expect_kind(&v, it.value.span, kind)
            .and_then(|i| build(self, &i, it.value.span));
        (built, self.item_count(it, env).unwrap_or(1))
    }

    fn item_count(&mut self, it: &Item, env: &mut Env) -> Option<u64> {
        match &it.count {
            None => Some(1),
            Some(c) => {
                let v = self.eval(c, env);
                self.count(&v, c.span, "a count")
            }
        }
    }

    pub(crate) fn cluster(&mut self, inst: &Instance, use_span: Span) -> Option<Cluster> {
        let key = inst.key();
        if let Some(c) = self.memo_clusters.get(&key) {
            return c.clone();
        }
        let (b, before, mut env) = self.open(inst, use_span)?;
        let g = self.group(
            &format!("cluster `{}`", inst.name),
            b.name.span,
            &b.items,
            CLUSTER_KEYS,
            self.broken(b.span),
        );
        let (node, count) = match g.get("node").and_then(|v| v.first()) {
            Some(it) => self.part(it, &mut env, DeclKind::Node, Self::node),
            None => (None, 1),
        };
        // A system must be plannable: its device count bounds every
        // parallel degree, which the planner caps at MAX_KNOB_VALUE.
        if let (Some(n), Some(it)) = (&node, g.get("node").and_then(|v| v.first())) {
            let devices = n.devices_per_node.saturating_mul(count);
            if devices > MAX_KNOB_VALUE as u64 {
                self.diags.push(
                    Diagnostic::error(
                        Code::L046,
                        format!(
                            "cluster `{}` has {devices} devices, more than the {MAX_KNOB_VALUE} any plan can use",
                            b.name.name
                        ),
                        it.value.span,
                    )
                    .with_label(it.value.span, "too many nodes")
                    .with_help("the largest clusters built hold about 10^5 devices"),
                );
            }
        }
        let mut fabric = None;
        if let Some(it) = g.get("fabric").and_then(|v| v.first()) {
            let name = it.name.as_ref().map_or(String::new(), |n| n.name.clone());
            let v = self.eval(&it.value, &mut env);
            fabric = self.fabric(&name, &v, it.value.span, count);
        }
        self.leave(&key);
        let result = match node {
            Some(node) if self.error_count() == before && !self.broken(b.span) => Some(Cluster {
                name: inst.label(),
                node,
                nodes: count,
                fabric,
                span: b.name.span,
            }),
            _ => None,
        };
        if let Some(c) = &result {
            self.program.clusters.insert(inst.label(), c.clone());
        }
        self.memo_clusters.insert(key, result.clone());
        result
    }

    fn fabric(&mut self, name: &str, v: &Value, span: Span, nodes: u64) -> Option<Fabric> {
        let (c, args) = match v {
            Value::Ctor(c, args) if c == "fat_tree" || c == "rail_optimized" => {
                (c.clone(), args.clone())
            }
            Value::Error => return None,
            other => {
                self.diags.push(
                    Diagnostic::error(Code::L043, format!("fabric `{name}` needs a topology"), span)
                        .with_label(span, format!("this is {}", other.describe()))
                        .with_help("write `fat_tree(bandwidth = 200 Gb/s, latency = 5 us)` or `rail_optimized(...)`"),
                );
                return None;
            }
        };
        let a = self.ctor_args(
            &c,
            &args,
            &[
                "bandwidth",
                "latency",
                "rack_nodes",
                "pod_nodes",
                "oversubscription",
            ],
        )?;
        let bandwidth = self.ctor_quantity(
            &a,
            "bandwidth",
            (Dim::BANDWIDTH, MAX_BANDWIDTH, "400 Gb/s"),
            None,
            (&c, span),
        );
        let latency = self.ctor_quantity(
            &a,
            "latency",
            (Dim::TIME, MAX_LATENCY, "5 us"),
            None,
            (&c, span),
        );
        let rack_nodes = match a.get("rack_nodes") {
            Some((v, s)) => self.count(v, *s, "`rack_nodes`"),
            None => Some(1),
        };
        let pod_nodes = match a.get("pod_nodes") {
            Some((v, s)) => self.count(v, *s, "`pod_nodes`"),
            None => Some(nodes),
        };
        let oversubscription = match a.get("oversubscription") {
            Some((v, s)) => {
                let q = self.num(v, *s)?;
                if !q.dim.is_none() || !(1.0..=1e6).contains(&q.value) {
                    self.diags.push(
                        Diagnostic::error(Code::L046, format!("oversubscription must be a ratio from 1 to 1e6, got {q}"), *s)
                            .with_label(*s, "write 7 for 1:7")
                            .with_help("1 means full bisection; 7 means seven times more downlink than uplink bandwidth"),
                    );
                    None
                } else {
                    Some(q.value)
                }
            }
            None => Some(1.0),
        };
        Some(Fabric {
            name: name.to_string(),
            kind: if c == "fat_tree" {
                FabricKind::FatTree
            } else {
                FabricKind::RailOptimized
            },
            bandwidth: bandwidth?,
            latency: latency?,
            rack_nodes: rack_nodes?,
            pod_nodes: pod_nodes?,
            oversubscription: oversubscription?,
        })
    }

    pub(crate) fn table(&mut self, inst: &Instance, use_span: Span) -> Option<EmbeddingTable> {
        let b = self.block_decl(&inst.name)?;
        let key = inst.key();
        if !self.enter(inst, use_span) {
            return None;
        }
        let mut env = self.decl_env(inst, &b.params);
        let g = self.group(
            &format!("table `{}`", inst.name),
            b.name.span,
            &b.items,
            TABLE_KEYS,
            self.broken(b.span),
        );
        let field = |c: &mut Checker, name: &str, env: &mut Env| -> Option<(Value, Span)> {
            if let Some(it) = g.get(name).and_then(|v| v.first()) {
                return Some((c.eval(&it.value, env), it.value.span));
            }
            env.lookup(name).map(|v| (v, use_span))
        };
        let broken = self.broken(b.span);
        let get = |c: &mut Checker, name: &str, env: &mut Env| -> Option<u64> {
            match field(c, name, env) {
                Some((v, s)) => c.count(&v, s, &format!("table `{name}`")),
                None if broken => None,
                None => {
                    c.diags.push(
                        Diagnostic::error(
                            Code::L061,
                            format!("table `{}` does not say its `{name}`", inst.name),
                            b.name.span,
                        )
                        .with_label(
                            b.name.span,
                            format!("needs `{name} = ...` or a parameter `{name}`"),
                        ),
                    );
                    None
                }
            }
        };
        let rows = get(self, "rows", &mut env);
        let dim = get(self, "dim", &mut env);
        let pooling = get(self, "pooling", &mut env);
        let dtype = match g.get("dtype").and_then(|v| v.first()) {
            Some(it) => {
                let v = self.eval(&it.value, &mut env);
                self.dtype(&v, it.value.span)
            }
            None => Some(DType::F32),
        };
        self.leave(&key);
        if broken {
            return None;
        }
        Some(EmbeddingTable {
            name: inst.name.clone(),
            rows: rows?,
            dim: dim?,
            pooling: pooling?,
            dtype: dtype?,
        })
    }

    pub(crate) fn dtype(&mut self, v: &Value, span: Span) -> Option<DType> {
        match v {
            Value::Sym(n, s) => match DType::parse(n) {
                Some(d) => Some(d),
                None => {
                    let mut d =
                        Diagnostic::error(Code::L063, format!("unknown element type `{n}`"), *s)
                            .with_label(*s, "not an element type");
                    d = match suggest(n, DType::NAMES.iter().copied()) {
                        Some(x) => d.with_help(format!("did you mean `{x}`?")),
                        None => d.with_help(DType::help()),
                    };
                    self.diags.push(d);
                    None
                }
            },
            Value::Error => None,
            other => {
                self.type_error(other, span, "an element type such as bf16");
                None
            }
        }
    }

    fn choice(&mut self, v: &Value, span: Span, what: &str, options: &[&str]) -> Option<String> {
        match v {
            Value::Sym(n, _) if options.contains(&n.as_str()) => Some(n.clone()),
            Value::Sym(n, s) => {
                let mut d = Diagnostic::error(Code::L063, format!("unknown {what} `{n}`"), *s)
                    .with_label(*s, format!("not {} {what}", article(what)));
                d = match suggest(n, options.iter().copied()) {
                    Some(x) => d.with_help(format!("did you mean `{x}`?")),
                    None => d.with_help(format!("choose one of: {}", options.join(", "))),
                };
                self.diags.push(d);
                None
            }
            Value::Error => None,
            other => {
                self.type_error(
                    other,
                    span,
                    &format!("{} {what} ({})", article(what), options.join(", ")),
                );
                None
            }
        }
    }

    // ------------------------------------------------------------ workloads

    pub(crate) fn workload(&mut self, inst: &Instance, use_span: Span) -> Option<Workload> {
        let key = inst.key();
        if let Some(w) = self.memo_workloads.get(&key) {
            return w.clone();
        }
        let (b, before, mut env) = self.open(inst, use_span)?;
        let g = self.group(
            &format!("workload `{}`", inst.name),
            b.name.span,
            &b.items,
            WORKLOAD_KEYS,
            self.broken(b.span),
        );
        let mut model = None;
        if let Some(it) = g.get("model").and_then(|v| v.first()) {
            let v = self.eval(&it.value, &mut env);
            if let Some(i) = self.expect_kind(&v, it.value.span, DeclKind::Model) {
                model = self.build_model(&i).map(|m| (m, it.value.span));
            }
        }
        let phases: Vec<&Item> = ["train", "prefill", "decode", "serve"]
            .iter()
            .filter_map(|p| g.get(p).and_then(|v| v.first().copied()))
            .collect();
        let mut phase = None;
        let mut serve = None;
        if phases.is_empty() && self.broken(b.span) {
            // The phase is probably the line that did not parse.
        } else if phases.len() != 1 {
            let mut d = Diagnostic::error(
                Code::L070,
                format!(
                    "workload `{}` needs exactly one phase (train, prefill, decode or serve), found {}",
                    inst.name,
                    phases.len()
                ),
                b.name.span,
            )
            .with_label(b.name.span, "this workload");
            for p in &phases {
                d = d.with_label(p.key.span, "a phase");
            }
            d = d.with_help("a workload is one model in one phase; declare one workload per phase");
            self.diags.push(d);
        } else if let Some(it) = phases.first() {
            let v = self.eval(&it.value, &mut env);
            if it.key.name == "serve" {
                phase = self.serve_phase(&v, it.value.span).map(|(p, d, k, s, sv)| {
                    serve = Some(Box::new(sv));
                    (p, d, k, s)
                });
            } else {
                phase = self.phase(&it.key.name, &v, it.value.span);
            }
        }
        let simulate = self.simulate(&g, &mut env);
        self.leave(&key);
        let (Some((model, mspan)), Some((phase, dtype, kernels, pspan))) = (model, phase) else {
            self.memo_workloads.insert(key, None);
            return None;
        };
        let mut bindings = BTreeMap::new();
        match &phase {
            Phase::Train {
                global_batch, seq, ..
            } => {
                bindings.insert("batch".to_string(), *global_batch as i64);
                if let Some(s) = seq {
                    bindings.insert("seq".to_string(), *s as i64);
                }
            }
            Phase::Prefill { batch, prompt } => {
                bindings.insert("batch".to_string(), *batch as i64);
                if let Some(p) = prompt {
                    bindings.insert("seq".to_string(), *p as i64);
                }
            }
            Phase::Decode { batch, .. } => {
                bindings.insert("batch".to_string(), *batch as i64);
                bindings.insert("seq".to_string(), 1);
            }
        }
        for i in &model.graph.inputs {
            let t = model.graph.tensor(*i);
            for d in &t.shape.0 {
                for s in &d.syms {
                    if !bindings.contains_key(s) {
                        // The setting that binds the symbol, in this phase's words.
                        let setting = match (s.as_str(), phase.name()) {
                            ("seq", "prefill") => "prompt",
                            (other, _) => other,
                        };
                        self.diags.push(
                            Diagnostic::error(
                                Code::L059,
                                format!("model `{}` has input `{}` with dimension `{s}`, which `{}` does not set", model.name, t.name, phase.name()),
                                pspan,
                            )
                            .with_label(pspan, format!("no `{setting}` here"))
                            .with_label(mspan, "the model")
                            .with_help(match s.as_str() {
                                "seq" if phase.name() == "prefill" => "add `prompt = ...` to the prefill settings".to_string(),
                                "seq" => "add `seq = ...` to the train settings".to_string(),
                                other => format!("only `batch` and `seq` are bound by workloads; make `{other}` a model parameter"),
                            }),
                        );
                    }
                }
            }
        }
        // Every tensor's element count must stay a 64-bit integer under the
        // workload's sizes: `seq = 1e15` made the cost model report a
        // bound symbol as "not bound by the workload" (C008), naming no
        // tensor.
        if self.error_count() == before
            && let Some(t) = model.graph.tensors.iter().find(|t| {
                let n = t.shape.numel();
                n.coef == i64::MAX
                    || (n.syms.iter().all(|s| bindings.contains_key(s))
                        && n.eval(&bindings).is_none())
            })
        {
            let sizes: Vec<String> = bindings.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let name = if t.name.is_empty() {
                String::new()
            } else {
                format!(" `{}`", t.name)
            };
            self.diags.push(
                Diagnostic::error(
                    Code::L046,
                    format!(
                        "model `{}` under these `{}` settings has a tensor{name} of {} with more than 2^63 elements ({})",
                        model.name,
                        phase.name(),
                        t.shape,
                        sizes.join(", ")
                    ),
                    pspan,
                )
                .with_label(pspan, "sizes too large")
                .with_label(mspan, "the model")
                .with_help("no device holds 2^63 elements; use smaller sizes"),
            );
        }
        let result = (self.error_count() == before && !self.broken(b.span)).then(|| Workload {
            name: inst.label(),
            model,
            phase,
            dtype,
            kernels,
            bindings,
            simulate,
            span: b.name.span,
            serve,
        });
        if let Some(w) = &result {
            self.program.workloads.insert(inst.label(), w.clone());
        }
        self.memo_workloads.insert(key, result.clone());
        result
    }

    /// The `simulate` string of a plan or workload (the scale `gantry run`
    /// simulates it at), if declared.
    fn simulate(
        &mut self,
        g: &BTreeMap<&'static str, Vec<&Item>>,
        env: &mut Env,
    ) -> Option<String> {
        let it = g.get("simulate").and_then(|v| v.first())?;
        match self.eval(&it.value, env) {
            Value::Str(s) => Some(s),
            other => {
                self.type_error(
                    &other,
                    it.value.span,
                    "a string such as \"layers=2, seq=16, batch=4\"",
                );
                None
            }
        }
    }

    fn phase(
        &mut self,
        name: &str,
        v: &Value,
        span: Span,
    ) -> Option<(Phase, DType, Kernels, Span)> {
        let fields = self.record(v, span, "phase settings")?;
        let allowed: &[&str] = match name {
            "train" => &[
                "seq",
                "global_batch",
                "dtype",
                "optimizer",
                "attention",
                "fusion",
                "precision",
                "overlap",
                "embeddings",
            ],
            "prefill" => &[
                "batch",
                "prompt",
                "dtype",
                "attention",
                "fusion",
                "precision",
                "embeddings",
            ],
            _ => &[
                "batch",
                "context",
                "prompt",
                "generate",
                "dtype",
                "attention",
                "fusion",
                "precision",
                "embeddings",
            ],
        };
        let mut got: BTreeMap<String, (Value, Span)> = BTreeMap::new();
        let mut ok = true;
        for (k, ks, fv, fs) in fields {
            if !allowed.contains(&k.as_str()) {
                self.unknown_setting(name, &k, ks, allowed);
                ok = false;
                continue;
            }
            got.insert(k, (fv, fs));
        }
        let need = |c: &mut Checker, k: &str| -> Option<u64> {
            match got.get(k) {
                Some((v, s)) => c.count(v, *s, &format!("`{k}`")),
                None => {
                    c.diags.push(
                        Diagnostic::error(
                            Code::L071,
                            format!("`{name}` needs setting `{k}`"),
                            span,
                        )
                        .with_label(span, format!("`{k}` is missing"))
                        .with_help(format!("add `{k} = ...`")),
                    );
                    None
                }
            }
        };
        let opt = |c: &mut Checker,
                   k: &str,
                   got: &BTreeMap<String, (Value, Span)>|
         -> Option<Option<u64>> {
            match got.get(k) {
                Some((v, s)) => c.count(v, *s, &format!("`{k}`")).map(Some),
                None => Some(None),
            }
        };
        let dtype = match got.get("dtype") {
            Some((v, s)) => {
                let (v, s) = (v.clone(), *s);
                self.dtype(&v, s)
            }
            None => Some(DType::Bf16),
        };
        let phase = match name {
            "train" => {
                let global_batch = need(self, "global_batch");
                let seq = opt(self, "seq", &got);
                let optimizer = match got.get("optimizer") {
                    Some((v, s)) => {
                        let (v, s) = (v.clone(), *s);
                        let names = Optimizer::ALL.map(Optimizer::name);
                        self.choice(&v, s, "optimizer", &names)
                            .map(|o| Optimizer::parse(&o).unwrap_or(Optimizer::Adam))
                    }
                    None => Some(Optimizer::Adam),
                };
                Phase::Train {
                    global_batch: global_batch?,
                    seq: seq?,
                    optimizer: optimizer?,
                }
            }
            "prefill" => {
                let batch = need(self, "batch");
                let prompt = opt(self, "prompt", &got);
                Phase::Prefill {
                    batch: batch?,
                    prompt: prompt?,
                }
            }
            _ => {
                let batch = need(self, "batch");
                let context = opt(self, "context", &got);
                let prompt = opt(self, "prompt", &got);
                let generate = opt(self, "generate", &got);
                let (context, prompt, generate) = (context?, prompt?, generate?);
                // With a prompt and a generation length, the average context
                // over the generated tokens is prompt + generate / 2.
                let context = match (context, prompt) {
                    (Some(c), _) => c,
                    (None, Some(p)) => p + generate.unwrap_or(0) / 2,
                    (None, None) => {
                        self.diags.push(
                            Diagnostic::error(
                                Code::L071,
                                "`decode` needs `context` (or `prompt` and `generate`)",
                                span,
                            )
                            .with_label(span, "the KV-cache length is not given")
                            .with_help("add `context = 4096`, or `prompt = 128, generate = 128`"),
                        );
                        return None;
                    }
                };
                Phase::Decode {
                    batch: batch?,
                    context,
                    generate,
                    prompt,
                }
            }
        };
        let kernels = self.kernels(&got);
        if !ok {
            return None;
        }
        Some((phase, dtype?, kernels?, span))
    }

    /// The kernel and overlap settings of a phase record ([`Kernels`]).
    pub(crate) fn kernels(&mut self, got: &BTreeMap<String, (Value, Span)>) -> Option<Kernels> {
        let mut k = Kernels::default();
        let mut ok = true;
        if let Some((v, s)) = got.get("attention") {
            match self.choice(v, *s, "attention kernel", &["fused", "materialized"]) {
                Some(c) => k.fused_attention = c == "fused",
                None => ok = false,
            }
        }
        if let Some((v, s)) = got.get("fusion") {
            match self.choice(v, *s, "fusion mode", &["eager", "kernels", "compiled"]) {
                Some(c) => {
                    k.compiled = c == "compiled";
                    k.eager = c == "eager";
                }
                None => ok = false,
            }
        }
        if let Some((v, s)) = got.get("precision") {
            for (name, ns, fv, fs) in self.record(v, *s, "precisions per op class")? {
                if name != "matmul" {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L071,
                            format!("`precision` has no op class `{name}`"),
                            ns,
                        )
                        .with_label(ns, "unknown op class")
                        .with_help("`precision` takes: matmul (the linear layers' products, e.g. `matmul = fp8`)"),
                    );
                    ok = false;
                    continue;
                }
                match self.dtype(&fv, fs) {
                    Some(d) => k.matmul_dtype = Some(d),
                    None => ok = false,
                }
            }
        }
        if let Some((v, s)) = got.get("overlap") {
            for (name, ns, fv, fs) in self.record(v, *s, "overlap settings")? {
                let slot = match name.as_str() {
                    "fsdp" => &mut k.overlap.fsdp,
                    "tp" => &mut k.overlap.tp,
                    "pp" => &mut k.overlap.pp,
                    _ => {
                        self.unknown_setting("overlap", &name, ns, &["fsdp", "tp", "pp"]);
                        ok = false;
                        continue;
                    }
                };
                match fv {
                    Value::Bool(b) => *slot = b,
                    Value::Error => ok = false,
                    other => {
                        self.type_error(&other, fs, "`true` or `false`");
                        ok = false;
                    }
                }
            }
        }
        if let Some((v, s)) = got.get("embeddings") {
            match self.table_sharding(v, *s) {
                Some(t) => k.tables = t,
                None => ok = false,
            }
        }
        ok.then_some(k)
    }

    /// `L071`: record `record` has no setting `name`; a did-you-mean from
    /// `keys`, or the list of them.
    fn unknown_setting(&mut self, record: &str, name: &str, span: Span, keys: &[&str]) {
        let mut d = Diagnostic::error(
            Code::L071,
            format!("`{record}` has no setting `{name}`"),
            span,
        )
        .with_label(span, "unknown setting");
        d = match suggest(name, keys.iter().copied()) {
            Some(x) => d.with_help(format!("did you mean `{x}`?")),
            None => d.with_help(format!("`{record}` takes: {}", keys.join(", "))),
        };
        self.diags.push(d);
    }

    /// `embeddings = { placement = cost_balanced | memory_balanced,
    /// column_slice = N }` ([`TableSharding`]).
    fn table_sharding(&mut self, v: &Value, span: Span) -> Option<TableSharding> {
        let mut placement = None;
        let mut slice: Option<(u64, Span)> = None;
        let mut ok = true;
        for (name, ns, fv, fs) in self.record(v, span, "embedding settings")? {
            match name.as_str() {
                "placement" => {
                    match self.choice(
                        &fv,
                        fs,
                        "table placement",
                        &["cost_balanced", "memory_balanced"],
                    ) {
                        Some(c) => placement = Some(c),
                        None => ok = false,
                    }
                }
                "column_slice" => match self.count(&fv, fs, "`column_slice`") {
                    Some(n) => slice = Some((n, fs)),
                    None => ok = false,
                },
                _ => {
                    self.unknown_setting("embeddings", &name, ns, &["placement", "column_slice"]);
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        match (placement.as_deref(), slice) {
            (Some("memory_balanced"), s) => Some(TableSharding::MemoryBalanced {
                column_slice: s.map(|(n, _)| n),
            }),
            (_, Some((_, s))) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::L071,
                        "`column_slice` applies to `placement = memory_balanced`",
                        s,
                    )
                    .with_label(s, "the cost-balanced placement cuts no columns")
                    .with_help("add `placement = memory_balanced`, or remove `column_slice`"),
                );
                None
            }
            _ => Some(TableSharding::CostBalanced),
        }
    }

    // ------------------------------------------------------------ plans

    /// The system a plan or study runs on: a cluster, or one node.
    fn system(&mut self, v: &Value, span: Span) -> Option<Cluster> {
        match v {
            Value::Decl(i) if i.kind == DeclKind::Cluster => self.cluster(i, span),
            Value::Decl(i) if i.kind == DeclKind::Node => {
                let n = self.node(i, span)?;
                Some(Cluster {
                    name: n.name.clone(),
                    span: n.span,
                    node: n,
                    nodes: 1,
                    fabric: None,
                })
            }
            Value::Decl(i) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::L032,
                        format!("`{}` is a {}, not a system", i.name, i.kind.keyword()),
                        span,
                    )
                    .with_label(span, "expected a cluster or a node"),
                );
                None
            }
            other => {
                self.type_error(other, span, "a cluster or a node");
                None
            }
        }
    }

    pub(crate) fn plan(&mut self, p: &PlanDecl) {
        let before = self.error_count();
        let mut env = Env::new();
        let sv = self.eval(&p.system, &mut env);
        let mut items = Vec::new();
        let mut search = BTreeMap::new();
        let mut fixed = BTreeMap::new();
        let mut objective = None;
        let mut constraints = Vec::new();
        for it in &p.items {
            match it {
                PlanItem::Search { knobs, .. } => self.knobs(knobs, &mut search, false),
                PlanItem::Fix { knobs, .. } => self.knobs(knobs, &mut fixed, true),
                PlanItem::Objective { goal, metric, span } => {
                    if metric_dim(&metric.name).is_none() {
                        self.unknown_metric(&metric.name, metric.span);
                    } else if let Some((_, first)) = &objective {
                        self.diags.push(
                            Diagnostic::error(Code::L062, "the objective is given twice", *span)
                                .with_label(*span, "given again here")
                                .with_label(*first, "first given here"),
                        );
                    } else {
                        let g = match goal {
                            crate::ast::Goal::Maximize => Goal::Maximize,
                            crate::ast::Goal::Minimize => Goal::Minimize,
                        };
                        objective = Some(((g, metric.name.clone()), *span));
                    }
                }
                PlanItem::SubjectTo {
                    constraints: cs, ..
                } => {
                    for c in cs {
                        if let Some(c) = self.constraint(c) {
                            constraints.push(c);
                        }
                    }
                }
                PlanItem::Item(i) => items.push(i.clone()),
                PlanItem::Error(_) => {}
            }
        }
        // A pin must lie inside the searched domain of the same knob.
        for (k, (fv, fspan)) in &fixed {
            if let Some((sv, sspan)) = search.get(k)
                && !domain_contains(sv, fv)
            {
                self.diags.push(
                    Diagnostic::error(Code::L073, format!("`fix {k}` pins a value outside `search {k}`"), *fspan)
                        .with_label(*fspan, "pinned here")
                        .with_label(*sspan, "searched over this domain")
                        .with_help(format!("widen the search domain or change the pin; `fix` overrides `search` for `{k}`")),
                );
            }
        }
        let kind = if p.kind == DeclKind::Plan {
            "plan"
        } else {
            "study"
        };
        let g = self.group(
            &format!("{kind} `{}`", p.name.name),
            p.name.span,
            &items,
            PLAN_KEYS,
            self.broken(p.span),
        );
        let mut expect = BTreeMap::new();
        // A weighted-mix study sizes no fleet: its `expect` (accepted and
        // ignored before fleet studies existed) is a warning, not read.
        let weighted = p.kind == DeclKind::Study && !g.contains_key("demand");
        for it in g.get("expect").into_iter().flatten() {
            if weighted {
                self.diags.push(
                    Diagnostic::warning(
                        Code::L091,
                        "a weighted-mix study has no fleet figure to expect; this `expect` is not checked",
                        it.span,
                    )
                    .with_label(it.key.span, "ignored")
                    .with_help("`expect cost`, `power` and `devices` are figures of the pooled fleet a `demand { ... }` study sizes; `gantry test` compares a weighted study's whole report with its snapshot"),
                );
                continue;
            }
            let Some(n) = &it.name else { continue };
            let dim = if p.kind == DeclKind::Plan {
                metric_dim(&n.name)
            } else {
                study_metric_dim(&n.name)
            };
            let Some(dim) = dim else {
                if p.kind == DeclKind::Plan {
                    self.unknown_metric(&n.name, n.span);
                } else {
                    self.unknown_study_metric(&n.name, n.span);
                }
                continue;
            };
            let v = self.eval(&it.value, &mut env);
            if let Some(q) = self.quantity(
                &v,
                it.value.span,
                dim,
                &format!("expected `{}`", n.name),
                &example_for(dim),
            ) {
                if q == 0.0 {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L046,
                            format!("expected `{}` must be above zero", n.name),
                            it.value.span,
                        )
                        .with_label(it.value.span, "zero")
                        .with_help("`gantry test` and `gantry validate` compare a prediction with the expected figure by their relative error, which divides by it; state the published figure"),
                    );
                    continue;
                }
                expect.insert(n.name.clone(), Quantity::new(q, dim));
            }
        }
        let tolerance = self.tolerance(&g, &expect, &mut env, kind);
        let mut source = None;
        if let Some(it) = g.get("source").and_then(|v| v.first()) {
            match self.eval(&it.value, &mut env) {
                Value::Str(s) => source = Some(s),
                other => {
                    self.type_error(&other, it.value.span, "a string");
                }
            }
        }
        let simulate = self.simulate(&g, &mut env);
        let target = self.target(&g, &mut env, p.kind == DeclKind::Plan);
        let objective = objective
            .map(|o| o.0)
            .unwrap_or((Goal::Maximize, "throughput".to_string()));
        let serve_knobs: Vec<(String, Span)> = search
            .iter()
            .chain(fixed.iter())
            .filter(|(k, _)| SERVE_KNOBS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.1))
            .collect();
        let search: BTreeMap<String, Domain> = search.into_iter().map(|(k, v)| (k, v.0)).collect();
        let fixed: BTreeMap<String, Domain> = fixed.into_iter().map(|(k, v)| (k, v.0)).collect();
        let serving_knob = |c: &mut Self, why: &str| {
            for (k, span) in &serve_knobs {
                c.diags.push(
                    Diagnostic::error(
                        Code::L081,
                        format!("`{k}` is a knob of the serving scheduler; {why}"),
                        *span,
                    )
                    .with_label(*span, "a serving knob")
                    .with_help("remove it, or plan a `serve` workload"),
                );
            }
        };
        if p.kind == DeclKind::Plan {
            let Some(wexpr) = &p.workload else { return };
            for k in ["site", "demand"] {
                if let Some(it) = g.get(k).and_then(|v| v.first()) {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L060,
                            format!("`{k}` is for studies, not plans"),
                            it.key.span,
                        )
                        .with_label(it.key.span, "a plan sizes no fleet")
                        .with_help("use `study NAME on SYSTEM { demand { ... } site { ... } }`"),
                    );
                }
            }
            if g.contains_key("workloads") {
                let it = g["workloads"][0];
                self.diags.push(
                    Diagnostic::error(
                        Code::L060,
                        "a plan has one workload, named after `for`",
                        it.key.span,
                    )
                    .with_label(it.key.span, "`workloads` is for studies")
                    .with_help(
                        "use `study NAME on SYSTEM { workloads { ... } }` for a workload mix",
                    ),
                );
            }
            let system = self.system(&sv, p.system.span);
            let wv = self.eval(wexpr, &mut env);
            let workload = self
                .expect_kind(&wv, wexpr.span, DeclKind::Workload)
                .and_then(|i| self.workload(&i, wexpr.span));
            if workload.as_ref().is_some_and(|w| w.serve.is_none()) {
                serving_knob(self, "this plan's workload is not a `serve` workload");
            }
            if let (Some(system), Some(workload)) = (system, workload)
                && self.error_count() == before
                && !self.broken(p.span)
            {
                self.program.plans.insert(
                    p.name.name.clone(),
                    Plan {
                        name: p.name.name.clone(),
                        system,
                        workload,
                        search,
                        fixed,
                        objective,
                        constraints,
                        expect,
                        tolerance,
                        source,
                        simulate,
                        target,
                        span: p.name.span,
                    },
                );
            }
        } else {
            serving_knob(
                self,
                "a study prices one step per cell, not a request stream",
            );
            self.no_study_simulate(&g);
            let systems = self.sweep_systems(&sv, p.system.span);
            let mut workloads = Vec::new();
            match g.get("workloads").and_then(|v| v.first()) {
                None if self.broken(p.span) || g.contains_key("demand") => {}
                None => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L061,
                            format!("study `{}` is missing field `workloads`", p.name.name),
                            p.name.span,
                        )
                        .with_label(p.name.span, "needs `workloads { name = weight, ... }`"),
                    );
                }
                Some(it) => {
                    let v = self.eval(&it.value, &mut env);
                    if let Some(fields) = self.record(&v, it.value.span, "workload weights") {
                        let mut total = 0.0;
                        for (name, nspan, wv, ws) in fields {
                            let inst = self.lookup_global(&name, nspan);
                            let Some(i) = self.expect_kind(&inst, nspan, DeclKind::Workload) else {
                                continue;
                            };
                            let w = self.workload(&i, nspan);
                            let weight = self.num(&wv, ws);
                            if let (Some(w), Some(q)) = (w, weight) {
                                // A fraction of the fleet's time: above 1 it
                                // is no fraction, and `1e300` printed a
                                // 300-digit score.
                                if !q.dim.is_none() || q.value <= 0.0 || q.value > 1.0 {
                                    self.diags.push(
                                        Diagnostic::error(
                                            Code::L046,
                                            format!(
                                                "weight of `{name}` must be a fraction in (0, 1]"
                                            ),
                                            ws,
                                        )
                                        .with_label(ws, format!("{q}")),
                                    );
                                    continue;
                                }
                                total += q.value;
                                workloads.push((w, q.value));
                            }
                        }
                        if !workloads.is_empty() && (total - 1.0).abs() > 1e-9 {
                            self.diags.push(
                                Diagnostic::warning(Code::L075, format!("workload weights sum to {}, not 1", crate::units::format_number(total)), it.value.span)
                                    .with_label(it.value.span, "these weights")
                                    .with_help("weights are fractions of the fleet's time; they are used as given"),
                            );
                        }
                    }
                }
            }
            let (site, demand) = self.study_fleet(&g, &mut env, &mut workloads, p.name.span);
            if self.error_count() == before && !systems.is_empty() && !self.broken(p.span) {
                self.program.studies.insert(
                    p.name.name.clone(),
                    Study {
                        name: p.name.name.clone(),
                        systems,
                        workloads,
                        search,
                        fixed,
                        objective,
                        constraints,
                        expect,
                        tolerance,
                        source,
                        site,
                        demand,
                        span: p.name.span,
                    },
                );
            }
        }
    }

    /// A plan's `target "FRAMEWORK"` (one of [`TARGETS`], else `L089`); in
    /// a study it is `L090`: a study compares systems, not launchers.
    fn target(
        &mut self,
        g: &BTreeMap<&'static str, Vec<&Item>>,
        env: &mut Env,
        plan: bool,
    ) -> Option<String> {
        let it = g.get("target").and_then(|v| v.first())?;
        if !plan {
            self.diags.push(
                Diagnostic::error(Code::L090, "a study has no `target` framework", it.key.span)
                    .with_label(it.key.span, "`target` is for plans")
                    .with_help("declare `target \"...\"` in a plan: its search then proposes only points that framework runs"),
            );
            return None;
        }
        match self.eval(&it.value, env) {
            Value::Str(s) if TARGETS.contains(&s.as_str()) => Some(s),
            Value::Str(s) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::L089,
                        format!("unknown target framework `{s}`"),
                        it.value.span,
                    )
                    .with_label(it.value.span, "not a framework Gantry exports to")
                    .with_help(format!(
                        "one of {}",
                        TARGETS
                            .iter()
                            .map(|t| format!("\"{t}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
                None
            }
            other => {
                self.type_error(&other, it.value.span, "a string such as \"megatron\"");
                None
            }
        }
    }

    /// A study's `simulate` line is an error (`L060`): a study runs nothing
    /// on simulated devices, and the line used to be dropped silently.
    fn no_study_simulate(&mut self, g: &BTreeMap<&'static str, Vec<&Item>>) {
        let Some(it) = g.get("simulate").and_then(|v| v.first()) else {
            return;
        };
        self.diags.push(
            Diagnostic::error(Code::L060, "a study has no `simulate` scale", it.key.span)
                .with_label(it.key.span, "`simulate` is for workloads and plans")
                .with_help(
                    "put `simulate \"...\"` in the workload it scales: `gantry run` on a file without plans runs its first workload at that scale",
                ),
        );
    }

    fn unknown_study_metric(&mut self, name: &str, span: Span) {
        let mut d = Diagnostic::error(Code::L074, format!("unknown fleet figure `{name}`"), span)
            .with_label(span, "not a figure of a study's pooled fleet");
        d = match suggest(name, STUDY_METRICS.iter().copied()) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_help(format!(
                "a study expects figures of its pooled fleet: {}",
                STUDY_METRICS.join(", ")
            )),
        };
        self.diags.push(d);
    }

    /// A plan's or study's `tolerance` items: `tolerance = 0.1` (every
    /// expected figure, once) and `tolerance METRIC = 0.05` (one figure,
    /// which must be expected: `L088`); each a fraction in (0, 1] (`L087`).
    fn tolerance(
        &mut self,
        g: &BTreeMap<&'static str, Vec<&Item>>,
        expect: &BTreeMap<String, Quantity>,
        env: &mut Env,
        kind: &str,
    ) -> Tolerance {
        let mut t = Tolerance::default();
        let mut seen_all: Option<Span> = None;
        for it in g.get("tolerance").into_iter().flatten() {
            let v = self.eval(&it.value, env);
            let Some(q) = self.num(&v, it.value.span) else {
                continue;
            };
            if !(q.dim.is_none() && q.value > 0.0 && q.value <= 1.0) {
                self.diags.push(
                    Diagnostic::error(
                        Code::L087,
                        "a tolerance is a fraction in (0, 1]",
                        it.value.span,
                    )
                    .with_label(it.value.span, format!("{q}"))
                    .with_help("write the relative error allowed, e.g. `tolerance = 0.1` for 10%"),
                );
                continue;
            }
            match &it.name {
                None => {
                    if let Some(first) = seen_all {
                        self.diags.push(
                            Diagnostic::error(Code::L087, "`tolerance` is given twice", it.span)
                                .with_label(it.span, "again here")
                                .with_label(first, "first here")
                                .with_help("one `tolerance = x` for every figure; `tolerance METRIC = x` for one"),
                        );
                        continue;
                    }
                    seen_all = Some(it.span);
                    t.all = Some(q.value);
                }
                Some(n) => {
                    // An `expect` of the figure that was refused has its
                    // own error.
                    let written = g
                        .get("expect")
                        .into_iter()
                        .flatten()
                        .any(|e| e.name.as_ref().is_some_and(|m| m.name == n.name));
                    if written && !expect.contains_key(&n.name) {
                        continue;
                    }
                    if !expect.contains_key(&n.name) {
                        let mut d = Diagnostic::error(
                            Code::L088,
                            format!(
                                "tolerance for `{}`, which this {kind} does not expect",
                                n.name
                            ),
                            n.span,
                        )
                        .with_label(n.span, "no `expect` of this figure");
                        d = match suggest(&n.name, expect.keys().map(|k| k.as_str())) {
                            Some(s) => d.with_help(format!("did you mean `{s}`?")),
                            None => {
                                d.with_help("add `expect METRIC = value`, or remove the tolerance")
                            }
                        };
                        self.diags.push(d);
                        continue;
                    }
                    t.per.insert(n.name.clone(), q.value);
                }
            }
        }
        t
    }

    fn unknown_metric(&mut self, name: &str, span: Span) {
        let mut d = Diagnostic::error(Code::L074, format!("unknown metric `{name}`"), span)
            .with_label(span, "not a metric");
        d = match suggest(name, METRICS.iter().copied()) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_help(format!("metrics: {}", METRICS.join(", "))),
        };
        self.diags.push(d);
    }

    /// Expands a system with set- or range-valued arguments into one system
    /// per point. Ranges step by doubling from the low end (`64..2048` is
    /// 64, 128, ..., 2048), or linearly with `step` (`1..2 step 0.25`);
    /// sets list their points. The size of the sweep is checked before any
    /// system is built: more than [`MAX_SWEEP`] points is `L047`.
    fn sweep_systems(&mut self, v: &Value, span: Span) -> Vec<Cluster> {
        let Value::Decl(inst) = v else {
            return self.system(v, span).into_iter().collect();
        };
        let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
        for (k, a) in inst.args.iter() {
            let options = match a {
                Value::Set(xs) => xs.iter().map(|(v, _)| v.clone()).collect(),
                Value::Range(lo, hi, step) => match self.range_points(k, *lo, *hi, *step, span) {
                    Some(o) => o,
                    None => return Vec::new(),
                },
                other => vec![other.clone()],
            };
            axes.push((k.clone(), options));
        }
        // The product's size first, so an oversized sweep costs nothing.
        let size = axes
            .iter()
            .try_fold(1usize, |n, (_, o)| n.checked_mul(o.len()))
            .unwrap_or(usize::MAX);
        if size > MAX_SWEEP {
            let sizes: Vec<String> = axes
                .iter()
                .filter(|(_, o)| o.len() > 1)
                .map(|(k, o)| format!("{k}: {}", o.len()))
                .collect();
            self.diags.push(
                Diagnostic::error(
                    Code::L047,
                    format!(
                        "this sweep has {} systems, above the limit of {MAX_SWEEP}",
                        if size == usize::MAX {
                            "too many".to_string()
                        } else {
                            size.to_string()
                        }
                    ),
                    span,
                )
                .with_label(span, format!("points per argument: {}", sizes.join(", ")))
                .with_help("narrow the ranges, take larger steps, or use sets of chosen points"),
            );
            return Vec::new();
        }
        let mut points: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for (k, options) in &axes {
            let mut next = Vec::with_capacity(points.len() * options.len());
            for p in &points {
                for o in options {
                    let mut q = p.clone();
                    q.push((k.clone(), o.clone()));
                    next.push(q);
                }
            }
            points = next;
        }
        // Labels name the systems in reports: points closer than 6
        // significant digits (`80 GB`, `80.0000001 GB`) get more digits,
        // up to the 17 that tell any two doubles apart (a repeated point
        // is the same system).
        let digits = (6..=17)
            .find(|d| {
                let mut seen = std::collections::HashMap::new();
                points.iter().all(|args| {
                    let i = Instance::with_digits(inst.kind, inst.name.clone(), args.clone(), *d);
                    let key = i.key();
                    seen.entry(i.label()).or_insert_with(|| key.clone()) == &key
                })
            })
            .unwrap_or(17);
        let mut out = Vec::new();
        for args in points {
            let i = Instance::with_digits(inst.kind, inst.name.clone(), args, digits);
            if let Some(c) = self.system(&Value::Decl(i), span) {
                out.push(c);
            }
        }
        out
    }

    /// The points of one swept range: doubling from `lo` (above 0), or
    /// `lo, lo + step, ...` up to `hi`; `hi` itself is added if the steps
    /// miss it. A linear range of more than [`MAX_SWEEP`] points is `L047`
    /// before any point is made.
    fn range_points(
        &mut self,
        k: &str,
        lo: Quantity,
        hi: Quantity,
        step: Option<Quantity>,
        span: Span,
    ) -> Option<Vec<Value>> {
        let mut out = Vec::new();
        match step {
            Some(s) => {
                let n = ((hi.value - lo.value) / s.value).floor();
                if !(n.is_finite() && n < MAX_SWEEP as f64) {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L047,
                            format!(
                                "the sweep of `{k}` from {lo} to {hi} in steps of {s} has more than {MAX_SWEEP} points"
                            ),
                            span,
                        )
                        .with_label(span, "too many points")
                        .with_help("take a larger step or narrow the range"),
                    );
                    return None;
                }
                for i in 0..=(n as usize) {
                    out.push(Value::Num(Quantity::new(
                        lo.value + i as f64 * s.value,
                        lo.dim,
                    )));
                }
                // Within rounding of `hi`, the last step is `hi`.
                let last = lo.value + n * s.value;
                if (hi.value - last).abs() <= 1e-9 * hi.value.abs().max(s.value) {
                    out.pop();
                }
            }
            None => {
                if lo.value <= 0.0 {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L046,
                            format!("sweep of `{k}` must start above 0"),
                            span,
                        )
                        .with_label(span, "ranges in sweeps step by doubling")
                        .with_help("start above 0, or step linearly: `lo..hi step s`"),
                    );
                    return None;
                }
                let mut x = lo.value;
                while x <= hi.value && out.len() < 64 {
                    out.push(Value::Num(Quantity::new(x, lo.dim)));
                    x *= 2.0;
                }
            }
        }
        if out.last() != Some(&Value::Num(hi)) {
            out.push(Value::Num(hi));
        }
        Some(out)
    }

    fn knobs(&mut self, knobs: &[Knob], out: &mut BTreeMap<String, (Domain, Span)>, fixing: bool) {
        let mut env = Env::new();
        for k in knobs {
            let name = &k.name().name;
            let nspan = k.name().span;
            let Some((_, kind)) = KNOBS.iter().find(|(n, _)| n == name) else {
                let mut d =
                    Diagnostic::error(Code::L072, format!("unknown plan knob `{name}`"), nspan)
                        .with_label(nspan, "not a knob");
                d = match suggest(name, KNOBS.iter().map(|(n, _)| *n)) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!(
                        "knobs: {}",
                        KNOBS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    )),
                };
                self.diags.push(d);
                continue;
            };
            if let Some((_, first)) = out.get(name) {
                self.diags.push(
                    Diagnostic::error(Code::L062, format!("knob `{name}` is given twice"), nspan)
                        .with_label(nspan, "given again here")
                        .with_label(*first, "first given here"),
                );
                continue;
            }
            let v = self.eval(k.value(), &mut env);
            let vspan = k.value().span;
            let dom = self.domain(name, kind, &v, vspan);
            let Some(dom) = dom else { continue };
            if fixing && !matches!(k, Knob::Eq(..)) {
                self.diags.push(
                    Diagnostic::error(
                        Code::L073,
                        format!("`fix` pins one value: write `fix {name} = ...`"),
                        nspan,
                    )
                    .with_label(nspan, "`in` is for `search`"),
                );
                continue;
            }
            if fixing
                && !matches!(dom, Domain::Ints(ref v) if v.len() == 1)
                && !matches!(dom, Domain::Choices(ref v) if v.len() == 1)
                && !matches!(dom, Domain::Bools(ref v) if v.len() == 1)
            {
                self.diags.push(
                    Diagnostic::error(
                        Code::L073,
                        format!("`fix {name}` needs a single value"),
                        vspan,
                    )
                    .with_label(vspan, "this is not one value")
                    .with_help(format!(
                        "use `search {name} in ...` to explore several values"
                    )),
                );
                continue;
            }
            out.insert(name.clone(), (dom, nspan.to(vspan)));
        }
    }

    fn domain(&mut self, knob: &str, kind: &str, v: &Value, span: Span) -> Option<Domain> {
        if let Value::Sym(n, _) = v
            && n == "auto"
        {
            return Some(Domain::Auto);
        }
        let elems: Vec<(Value, Span)> = match v {
            Value::Set(xs) => xs.clone(),
            Value::Range(lo, hi, Some(step)) if kind == "int" => {
                let n = ((hi.value - lo.value) / step.value).floor();
                if !(n.is_finite() && n < MAX_SWEEP as f64) {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L047,
                            format!("the range of `{knob}` has more than {MAX_SWEEP} points"),
                            span,
                        )
                        .with_label(span, "too many points")
                        .with_help("take a larger step or narrow the range"),
                    );
                    return None;
                }
                (0..=n as usize)
                    .map(|i| {
                        let x = lo.value + i as f64 * step.value;
                        (Value::Num(Quantity::new(x, lo.dim)), span)
                    })
                    .collect()
            }
            Value::Range(lo, hi, None) if kind == "int" => {
                let (Some(a), Some(b)) = (Quantity::as_int(lo), Quantity::as_int(hi)) else {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L045,
                            format!("`{knob}` ranges over whole numbers"),
                            span,
                        )
                        .with_label(span, "not integers"),
                    );
                    return None;
                };
                return self
                    .check_knob_range(knob, a, b, span)
                    .map(|_| Domain::IntRange(a, b));
            }
            other => vec![(other.clone(), span)],
        };
        match kind {
            "int" => {
                let mut out = Vec::new();
                for (e, s) in &elems {
                    let i = self.int(e, *s, &format!("`{knob}`"))?;
                    self.check_knob_range(knob, i, i, *s)?;
                    out.push(i);
                }
                Some(Domain::Ints(out))
            }
            "bool" => {
                let mut out = Vec::new();
                for (e, s) in &elems {
                    match e {
                        Value::Bool(b) => out.push(*b),
                        other => {
                            self.type_error(other, *s, "`true` or `false`");
                            return None;
                        }
                    }
                }
                Some(Domain::Bools(out))
            }
            _ => {
                let options: Vec<&str> = kind.split('|').collect();
                let mut out = Vec::new();
                for (e, s) in &elems {
                    out.push(self.choice(e, *s, &format!("`{knob}` setting"), &options)?);
                }
                Some(Domain::Choices(out))
            }
        }
    }

    fn check_knob_range(&mut self, knob: &str, lo: i64, hi: i64, span: Span) -> Option<()> {
        let (min, max) = if knob == "zero" {
            (0, 3)
        } else {
            (1, MAX_KNOB_VALUE)
        };
        if lo < min || hi > max {
            self.diags.push(
                Diagnostic::error(
                    Code::L046,
                    if knob == "zero" {
                        format!(
                            "`zero` is a ZeRO stage from 0 to 3, got {}",
                            if lo < min { lo } else { hi }
                        )
                    } else if lo < min {
                        format!("`{knob}` must be at least 1, got {lo}")
                    } else {
                        format!("`{knob}` must be at most {MAX_KNOB_VALUE}, got {hi}")
                    },
                    span,
                )
                .with_label(span, "out of range"),
            );
            return None;
        }
        Some(())
    }

    fn constraint(&mut self, e: &crate::ast::Expr) -> Option<Constraint> {
        use crate::ast::{BinOp, ExprKind};
        let ExprKind::Binary(op, a, b) = &e.kind else {
            self.diags.push(
                Diagnostic::error(Code::L043, "a constraint compares two metrics", e.span)
                    .with_label(e.span, "not a comparison")
                    .with_help("write e.g. `memory <= 0.9 * hbm`"),
            );
            return None;
        };
        let cmp = match op {
            BinOp::Lt => Cmp::Lt,
            BinOp::Le => Cmp::Le,
            BinOp::Gt => Cmp::Gt,
            BinOp::Ge => Cmp::Ge,
            _ => {
                self.diags.push(
                    Diagnostic::error(
                        Code::L043,
                        format!("constraints use <, <=, > or >=, not `{}`", op.symbol()),
                        e.span,
                    )
                    .with_label(e.span, "here"),
                );
                return None;
            }
        };
        let (l, ld) = self.metric_expr(a)?;
        let (r, rd) = self.metric_expr(b)?;
        if ld != rd {
            self.diags.push(
                Diagnostic::error(
                    Code::L040,
                    format!("cannot compare {} with {}", ld.describe(), rd.describe()),
                    e.span,
                )
                .with_label(a.span, format!("this is in {}", unit_name(ld)))
                .with_label(b.span, format!("this is in {}", unit_name(rd))),
            );
            return None;
        }
        Some(Constraint {
            lhs: l,
            cmp,
            rhs: r,
            span: e.span,
        })
    }

    fn metric_expr(&mut self, e: &crate::ast::Expr) -> Option<(MetricExpr, Dim)> {
        use crate::ast::{BinOp, ExprKind};
        match &e.kind {
            ExprKind::Name(n) => match metric_dim(n) {
                Some(d) => Some((MetricExpr::Metric(n.clone()), d)),
                None => {
                    let v = self.lookup_global(n, e.span);
                    if let Value::Num(q) = v {
                        return Some((MetricExpr::Const(q), q.dim));
                    }
                    if let Value::Sym(..) = v {
                        self.unknown_metric(n, e.span);
                    } else {
                        self.type_error(&v, e.span, "a metric or a number");
                    }
                    None
                }
            },
            ExprKind::Number(v, _) => Some((MetricExpr::Const(Quantity::plain(*v)), Dim::NONE)),
            ExprKind::Quantity(q, _) => Some((MetricExpr::Const(*q), q.dim)),
            ExprKind::Neg(a) => {
                let (m, d) = self.metric_expr(a)?;
                Some((MetricExpr::Neg(Box::new(m)), d))
            }
            ExprKind::Binary(op @ (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div), a, b) => {
                let (x, xd) = self.metric_expr(a)?;
                let (y, yd) = self.metric_expr(b)?;
                let d = match op {
                    BinOp::Add | BinOp::Sub => {
                        if xd != yd {
                            self.diags.push(
                                Diagnostic::error(
                                    Code::L040,
                                    format!(
                                        "cannot apply `{}` to {} and {}",
                                        op.symbol(),
                                        xd.describe(),
                                        yd.describe()
                                    ),
                                    e.span,
                                )
                                .with_label(a.span, format!("this is in {}", unit_name(xd)))
                                .with_label(b.span, format!("this is in {}", unit_name(yd))),
                            );
                            return None;
                        }
                        xd
                    }
                    BinOp::Mul => xd.times(yd),
                    _ => xd.per(yd),
                };
                let c = op.symbol().chars().next().unwrap_or('+');
                Some((MetricExpr::Binary(c, Box::new(x), Box::new(y)), d))
            }
            _ => {
                self.diags.push(
                    Diagnostic::error(Code::L043, "expected a metric expression", e.span)
                        .with_label(e.span, "metrics combine with + - * / and numbers"),
                );
                None
            }
        }
    }
}

fn domain_contains(d: &Domain, fixed: &Domain) -> bool {
    match (d, fixed) {
        (Domain::Auto, _) => true,
        (Domain::Ints(xs), Domain::Ints(v)) => v.iter().all(|x| xs.contains(x)),
        (Domain::IntRange(a, b), Domain::Ints(v)) => v.iter().all(|x| a <= x && x <= b),
        (Domain::Choices(xs), Domain::Choices(v)) => v.iter().all(|x| xs.contains(x)),
        (Domain::Bools(xs), Domain::Bools(v)) => v.iter().all(|x| xs.contains(x)),
        _ => true,
    }
}

fn example_for(d: Dim) -> String {
    match d {
        Dim::FLOP_RATE => "137 TFLOP/s".into(),
        Dim::TIME => "1.42 s".into(),
        Dim::BYTES => "80 GB".into(),
        Dim::POWER => "700 W".into(),
        Dim::ENERGY => "1 MJ".into(),
        Dim::MONEY => "$1.5".into(),
        _ => "1000".into(),
    }
}
