//! Design points: the knobs of one configuration, their defaults, and the
//! checks that reject contradictory pins with the numbers that clash.
//!
//! Defaults for unpinned knobs (documented in docs/COST-MODEL.md):
//! tp = pp = cp = ep = 1, dp = devices / (tp * pp * cp), zero = 0,
//! recompute = none, microbatch = the per-replica batch without pipeline
//! parallelism and 1 with it, virtual_stages = 1,
//! sequence_parallel = false, batch = the workload's batch (for inference,
//! per model replica: dp replicas serve dp times the batch), shard = dp *
//! cp (ZeRO over every data x context parallel rank; smaller is HSDP).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

use gantry_lang::check::MAX_KNOB_VALUE;
use gantry_lang::program::{Cluster, Domain, Phase};

use crate::ir::Ir;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Recompute {
    None,
    Selective,
    Full,
}

impl Recompute {
    pub fn name(self) -> &'static str {
        match self {
            Recompute::None => "none",
            Recompute::Selective => "selective",
            Recompute::Full => "full",
        }
    }
    pub fn parse(s: &str) -> Option<Recompute> {
        Some(match s {
            "none" => Recompute::None,
            "selective" => Recompute::Selective,
            "full" => Recompute::Full,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesignPoint {
    pub dp: u64,
    pub tp: u64,
    pub pp: u64,
    pub cp: u64,
    pub ep: u64,
    pub zero: u8,
    pub recompute: Recompute,
    pub microbatch: u64,
    pub virtual_stages: u64,
    pub sequence_parallel: bool,
    /// Inference batch (decode/prefill); training uses the global batch.
    pub batch: u64,
    /// Ranks one ZeRO/FSDP group spans (divides `dp x cp`; `dp x cp`
    /// unless pinned): with fewer, `dp x cp / shard` replicas of the
    /// sharded state (HSDP) all-reduce their gradient shards.
    pub shard: u64,
}

impl DesignPoint {
    pub fn devices(&self) -> u64 {
        self.dp * self.tp * self.pp * self.cp
    }
    /// Replicas of the ZeRO-sharded state: `dp x cp / shard` (1 unless
    /// HSDP).
    pub fn replicas(&self) -> u64 {
        (self.dp * self.cp / self.shard.max(1)).max(1)
    }
}

impl fmt::Display for DesignPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dp={} tp={} pp={} cp={} ep={} zero={} recompute={} microbatch={} virtual_stages={} sp={} batch={}{}",
            self.dp,
            self.tp,
            self.pp,
            self.cp,
            self.ep,
            self.zero,
            self.recompute.name(),
            self.microbatch,
            self.virtual_stages,
            self.sequence_parallel,
            self.batch,
            // Shown only for HSDP, so the usual points read as before.
            if self.replicas() > 1 {
                format!(" shard={}", self.shard)
            } else {
                String::new()
            }
        )
    }
}

/// A pin that cannot hold, with the numbers that clash.
#[derive(Clone, Debug, PartialEq)]
pub struct PinError {
    pub code: gantry_lang::diagnostic::Code,
    pub knob: &'static str,
    pub message: String,
    pub help: String,
}

/// A knob value given on the command line or in a plan's `fix`.
#[derive(Clone, Debug, PartialEq)]
pub enum Pin {
    Int(i64),
    Choice(String),
    Bool(bool),
}

/// Parses `dp=4,tp=8,recompute=full` into pins.
pub fn parse_fix(s: &str) -> Result<BTreeMap<String, Pin>, PinError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |m: String| {
            PinError {
            code: gantry_lang::diagnostic::Code::C006,
            knob: "fix",
            message: m,
            help: "write knobs as `name=value` separated by commas, e.g. `--fix tp=8,pp=4,microbatch=1`".into(),
        }
        };
        let Some((k, v)) = part.split_once('=') else {
            return Err(bad(format!("`{part}` is not `knob=value`")));
        };
        let (k, v) = (k.trim(), v.trim());
        let Some((_, kind)) = gantry_lang::check::KNOBS.iter().find(|(n, _)| *n == k) else {
            let names: Vec<&str> = gantry_lang::check::KNOBS.iter().map(|(n, _)| *n).collect();
            return Err(PinError {
                help: format!("knobs: {}", names.join(", ")),
                ..bad(format!("unknown knob `{k}`"))
            });
        };
        let pin = match *kind {
            "int" => {
                let i: i64 = v
                    .parse()
                    .map_err(|_| bad(format!("`{k}` takes a whole number, got `{v}`")))?;
                let (lo, hi) = if k == "zero" {
                    (0, 3)
                } else {
                    (1, MAX_KNOB_VALUE)
                };
                if !(lo..=hi).contains(&i) {
                    return Err(PinError {
                        help: if k == "zero" {
                            "`zero` is a ZeRO stage: 0, 1, 2 or 3".into()
                        } else {
                            format!(
                                "every degree, microbatch and batch is a positive count of at most {MAX_KNOB_VALUE} (2^24)"
                            )
                        },
                        ..bad(format!("`{k}` must be from {lo} to {hi}, got {i}"))
                    });
                }
                if k == "nodes" {
                    return Err(PinError {
                        code: gantry_lang::diagnostic::Code::C012,
                        knob: "nodes",
                        message: "`nodes` cannot be pinned: the node count is the system's".into(),
                        help: "declare a cluster with that many nodes, or pin `dp`".into(),
                    });
                }
                Pin::Int(i)
            }
            "bool" => Pin::Bool(
                v.parse()
                    .map_err(|_| bad(format!("`{k}` takes true or false, got `{v}`")))?,
            ),
            choices => {
                if !choices.split('|').any(|c| c == v) {
                    return Err(bad(format!(
                        "`{k}` takes one of {}, got `{v}`",
                        choices.replace('|', ", ")
                    )));
                }
                Pin::Choice(v.to_string())
            }
        };
        if out.insert(k.to_string(), pin).is_some() {
            return Err(bad(format!("`{k}` is pinned twice")));
        }
    }
    Ok(out)
}

/// Pins from a plan's `fix` block (single values only).
pub fn pins_from_plan(fixed: &BTreeMap<String, Domain>) -> BTreeMap<String, Pin> {
    let mut out = BTreeMap::new();
    for (k, d) in fixed {
        // The serving scheduler's knobs pin no design point (a serve
        // plan's step, as `gantry run` prices it, has no scheduler).
        if gantry_lang::check::SERVE_KNOBS.contains(&k.as_str()) {
            continue;
        }
        let pin = match d {
            Domain::Ints(v) if v.len() == 1 => Pin::Int(v[0]),
            Domain::Choices(v) if v.len() == 1 => Pin::Choice(v[0].clone()),
            Domain::Bools(v) if v.len() == 1 => Pin::Bool(v[0]),
            _ => continue,
        };
        out.insert(k.clone(), pin);
    }
    out
}

/// Command-line pins that override a different value in the plan's `fix`
/// block, as `(knob, command-line value, plan value)`; the driver warns
/// about each (`C013`).
pub fn overridden(
    cli: &BTreeMap<String, Pin>,
    fixed: &BTreeMap<String, Domain>,
) -> Vec<(String, String, String)> {
    let plan = pins_from_plan(fixed);
    cli.iter()
        .filter_map(|(k, v)| {
            let p = plan.get(k)?;
            (p != v).then(|| (k.clone(), v.to_string(), p.to_string()))
        })
        .collect()
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pin::Int(i) => write!(f, "{i}"),
            Pin::Choice(c) => f.write_str(c),
            Pin::Bool(b) => write!(f, "{b}"),
        }
    }
}

fn err(
    code: gantry_lang::diagnostic::Code,
    knob: &'static str,
    message: String,
    help: impl Into<String>,
) -> PinError {
    PinError {
        code,
        knob,
        message,
        help: help.into(),
    }
}

/// A point's knobs as typed values (`None`: not pinned, the default
/// applies). The search fills one per point without building a pin map;
/// [`resolve`] reads one from pins.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Knobs {
    pub tp: Option<i64>,
    pub pp: Option<i64>,
    pub cp: Option<i64>,
    pub ep: Option<i64>,
    pub dp: Option<i64>,
    pub microbatch: Option<i64>,
    pub virtual_stages: Option<i64>,
    pub batch: Option<i64>,
    pub zero: Option<i64>,
    pub recompute: Option<Recompute>,
    pub sequence_parallel: Option<bool>,
    pub shard: Option<i64>,
}

impl Knobs {
    /// The typed knobs of `pins` (pins of another type than the knob's
    /// are left to the checker and read as unpinned, as before).
    pub fn from_pins(pins: &BTreeMap<String, Pin>) -> Knobs {
        let int = |k: &str| match pins.get(k) {
            Some(Pin::Int(v)) => Some(*v),
            _ => None,
        };
        Knobs {
            tp: int("tp"),
            pp: int("pp"),
            cp: int("cp"),
            ep: int("ep"),
            dp: int("dp"),
            microbatch: int("microbatch"),
            virtual_stages: int("virtual_stages"),
            batch: int("batch"),
            zero: int("zero"),
            shard: int("shard"),
            recompute: match pins.get("recompute") {
                Some(Pin::Choice(c)) => Some(Recompute::parse(c).unwrap_or(Recompute::None)),
                _ => None,
            },
            sequence_parallel: match pins.get("sequence_parallel") {
                Some(Pin::Bool(b)) => Some(*b),
                _ => None,
            },
        }
    }

    /// An integer knob by name.
    fn int(&self, k: &str) -> Option<i64> {
        match k {
            "tp" => self.tp,
            "pp" => self.pp,
            "cp" => self.cp,
            "ep" => self.ep,
            "dp" => self.dp,
            "microbatch" => self.microbatch,
            "virtual_stages" => self.virtual_stages,
            "batch" => self.batch,
            "zero" => self.zero,
            "shard" => self.shard,
            _ => None,
        }
    }
}

/// Builds a design point from pins and defaults, and checks it against the
/// workload and the system. Never adjusts a pin silently.
pub fn resolve(
    pins: &BTreeMap<String, Pin>,
    ir: &Ir,
    system: &Cluster,
) -> Result<DesignPoint, PinError> {
    if let Some(k) = pins
        .keys()
        .find(|k| gantry_lang::check::SERVE_KNOBS.contains(&k.as_str()))
    {
        return Err(err(
            gantry_lang::diagnostic::Code::C012,
            "fix",
            format!(
                "`{k}` is a knob of the serving scheduler; this workload is not a `serve` workload"
            ),
            "remove it; only plans of `serve` workloads simulate a scheduler",
        ));
    }
    resolve_knobs(&Knobs::from_pins(pins), ir, system)
}

/// The knob a `C003` (global batch not a multiple of dp x microbatch)
/// names: one that was pinned, the microbatch, else dp, else the largest
/// model-parallel degree above 1, whose devices left the derived dp.
fn batch_knob(knobs: &Knobs) -> &'static str {
    if knobs.microbatch.is_some() {
        "microbatch"
    } else if knobs.dp.is_some() {
        "dp"
    } else {
        ["tp", "pp", "cp"]
            .into_iter()
            .filter(|k| knobs.int(k).is_some_and(|v| v > 1))
            .max_by_key(|k| knobs.int(k).unwrap_or(1))
            .unwrap_or("dp")
    }
}

/// [`resolve`] on typed knobs.
pub fn resolve_knobs(knobs: &Knobs, ir: &Ir, system: &Cluster) -> Result<DesignPoint, PinError> {
    use gantry_lang::diagnostic::Code;
    let int = |k: &str, d: i64| -> i64 { knobs.int(k).unwrap_or(d) };
    let devices = system.devices() as i64;
    for k in [
        "tp",
        "pp",
        "cp",
        "ep",
        "dp",
        "microbatch",
        "virtual_stages",
        "batch",
        "shard",
    ] {
        if let Some(v) = knobs.int(k)
            && v < 1
        {
            let knob: &'static str = gantry_lang::check::KNOBS
                .iter()
                .find(|(n, _)| *n == k)
                .map_or("fix", |(n, _)| n);
            return Err(err(
                Code::C006,
                knob,
                format!("`{k}` must be at least 1, got {v}"),
                "every parallel degree is a positive count",
            ));
        }
    }
    let (tp, pp, cp) = (int("tp", 1), int("pp", 1), int("cp", 1));
    // Degrees come from the user: every product is checked (an overflow
    // means more devices than any system has).
    let model_par = tp.checked_mul(pp).and_then(|x| x.checked_mul(cp));
    let dp = match (knobs.dp, model_par) {
        (Some(v), _) => v,
        (_, Some(m)) => (devices / m).max(1),
        (_, None) => 1,
    };
    let used = model_par.and_then(|m| m.checked_mul(dp));
    if used.is_none_or(|u| u > devices) {
        // Name the knob that was pinned past the system: a pinned `dp` only
        // when the model-parallel degrees fit on their own.
        let knob = if knobs.dp.is_some() && model_par.is_some_and(|m| m <= devices) {
            "dp"
        } else {
            ["tp", "pp", "cp"]
                .into_iter()
                .filter(|k| knobs.int(k).is_some())
                .max_by_key(|k| int(k, 1))
                .unwrap_or("dp")
        };
        return Err(err(
            Code::C001,
            knob,
            format!(
                "dp x tp x pp x cp = {dp} x {tp} x {pp} x {cp} = {} devices, but `{}` has {devices}",
                used.map_or("more than 2^63".to_string(), |u| u.to_string()),
                system.name
            ),
            "lower a degree or use a larger system",
        ));
    }
    let zero = int("zero", 0);
    if !(0..=3).contains(&zero) {
        return Err(err(
            Code::C006,
            "zero",
            format!("`zero` is a ZeRO stage 0-3, got {zero}"),
            "use 0, 1, 2 or 3",
        ));
    }
    // The ZeRO/FSDP group: every data x context parallel rank unless
    // pinned; a pinned one must divide them, and shards nothing without
    // ZeRO.
    let group = dp.saturating_mul(cp);
    let shard = knobs.shard.unwrap_or(group);
    if knobs.shard.is_some() && group % shard.max(1) != 0 {
        return Err(err(
            Code::C012,
            "shard",
            format!(
                "shard = {shard} does not divide the dp x cp = {dp} x {cp} = {group} ranks holding the same parameters"
            ),
            format!(
                "choose shard among the divisors of {group}; dp x cp / shard replicas of the sharded state all-reduce their gradients (HSDP)"
            ),
        ));
    }
    if shard != group && zero == 0 {
        return Err(err(
            Code::C012,
            "shard",
            format!("shard = {shard} but zero = 0: nothing is sharded"),
            "pin zero = 1, 2 or 3 to shard optimizer state (and gradients, weights) over `shard` ranks, or leave `shard` out",
        ));
    }
    let recompute = knobs.recompute.unwrap_or(Recompute::None);
    let sequence_parallel = knobs.sequence_parallel == Some(true);
    // Without a pipeline there is nothing to interleave: the default
    // microbatch is the whole per-replica batch (no gradient accumulation).
    let microbatch = match (&ir.phase, knobs.microbatch) {
        (_, Some(v)) => v,
        (Phase::Train { global_batch, .. }, _) if pp == 1 => (*global_batch as i64 / dp).max(1),
        _ => 1,
    };
    let virtual_stages = int("virtual_stages", 1);
    let ep = int("ep", 1);
    // The model must have a sharded program for tp > 1 in this variant.
    if tp > 1
        && let Some(why) = &ir.tp_table(tp as usize, sequence_parallel).unshardable
    {
        return Err(err(
            Code::C002,
            "tp",
            format!(
                "tp = {tp}{}: the model has no tensor-parallel form: {why}",
                if sequence_parallel {
                    " with sequence parallelism"
                } else {
                    ""
                }
            ),
            "pin tp=1 (or sequence_parallel=false), or end the repeated block with an elementwise op (a residual add) on the carried value",
        ));
    }
    // Heads must split evenly across tensor-parallel ranks.
    for seg in &ir.segments {
        for op in &seg.ops {
            if let Some((h, kv)) = op.heads {
                if h as i64 % tp != 0 {
                    return Err(err(
                        Code::C002,
                        "tp",
                        format!("tp = {tp} does not divide the {h} attention heads"),
                        format!("choose tp among the divisors of {h}"),
                    ));
                }
                if (kv as i64) % tp != 0 && tp % kv as i64 != 0 {
                    return Err(err(
                        Code::C002,
                        "tp",
                        format!(
                            "tp = {tp} neither divides nor is a multiple of the {kv} key/value heads"
                        ),
                        "key/value heads are split or replicated evenly across tensor-parallel ranks",
                    ));
                }
            }
            if let Some((e, _)) = op.experts
                && (e as i64) % ep != 0
            {
                return Err(err(
                    Code::C005,
                    "ep",
                    format!("ep = {ep} does not divide the {e} experts"),
                    format!("choose ep among the divisors of {e}"),
                ));
            }
        }
    }
    let has_experts = ir
        .segments
        .iter()
        .flat_map(|s| s.ops.iter())
        .any(|o| o.experts.is_some());
    if ep > 1 && !has_experts {
        return Err(err(
            Code::C012,
            "ep",
            format!("ep = {ep} but `{}` has no experts", ir.model),
            "expert parallelism splits the experts of a mixture-of-experts model; leave `ep` at 1 for a dense model",
        ));
    }
    if matches!(ir.phase, Phase::Train { .. }) && knobs.batch.is_some() {
        return Err(err(
            Code::C012,
            "batch",
            "`batch` is a serving knob; a training plan takes its global batch from the workload"
                .into(),
            "change the workload's `batch`, or pin `microbatch` and `dp`",
        ));
    }
    let layers = ir.layers() as i64;
    if pp > 1 && pp > layers {
        return Err(err(
            Code::C004,
            "pp",
            format!("pp = {pp} stages but the model has {layers} layers"),
            "each stage needs at least one layer",
        ));
    }
    let chunks = pp.checked_mul(virtual_stages);
    if virtual_stages > 1 && (pp == 1 || chunks.is_none_or(|c| layers < c)) {
        return Err(err(
            Code::C004,
            "virtual_stages",
            format!(
                "{virtual_stages} virtual stages on pp = {pp} need at least pp x virtual_stages = {} layers; the model has {layers}",
                chunks.map_or("more than 2^63".to_string(), |c| c.to_string())
            ),
            "every virtual stage holds at least one layer; use fewer virtual stages or pipeline stages",
        ));
    }
    let batch = match &ir.phase {
        Phase::Train { global_batch, .. } => {
            let gb = *global_batch as i64;
            let per_step = dp.checked_mul(microbatch).filter(|x| *x > 0);
            let Some(per_step) = per_step.filter(|x| gb % x == 0) else {
                let knob = batch_knob(knobs);
                let derived = match (knobs.dp, model_par) {
                    (None, Some(m)) => {
                        format!(" (dp = {dp}: the {devices} devices over tp x pp x cp = {m})")
                    }
                    _ => String::new(),
                };
                return Err(err(
                    Code::C003,
                    knob,
                    format!(
                        "global batch {gb} is not a multiple of dp x microbatch = {dp} x {microbatch} = {}{derived}",
                        per_step.map_or("more than 2^63".to_string(), |x| x.to_string())
                    ),
                    "choose a microbatch and dp whose product divides the global batch",
                ));
            };
            // Megatron-LM's interleaved schedule runs microbatches in groups
            // of pp (so does the runtime's).
            let m = gb / per_step;
            if virtual_stages > 1 && m % pp != 0 {
                return Err(err(
                    Code::C004,
                    "virtual_stages",
                    format!(
                        "the interleaved schedule needs the {m} microbatches per replica to be a multiple of pp = {pp}"
                    ),
                    "use a smaller microbatch or dp, or virtual_stages = 1",
                ));
            }
            gb
        }
        // Inference: `batch` is what one model replica serves per step; dp
        // replicas serve dp times as much.
        Phase::Prefill { batch, .. } | Phase::Decode { batch, .. } => int("batch", *batch as i64),
    };
    Ok(DesignPoint {
        dp: dp as u64,
        tp: tp as u64,
        pp: pp as u64,
        cp: cp as u64,
        ep: ep as u64,
        zero: zero as u8,
        recompute,
        microbatch: microbatch as u64,
        virtual_stages: virtual_stages as u64,
        sequence_parallel,
        batch: batch as u64,
        shard: shard as u64,
    })
}

/// The times a balanced pipeline split weighs: one layer's, and the extra
/// work of the first stage (the prologue, e.g. the embedding) and of the
/// last (the epilogue, e.g. the head). The default (no time per layer)
/// asks for the even split.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    pub per_layer: f64,
    pub first_extra: f64,
    pub last_extra: f64,
}

/// The layers of each of `pp` pipeline stages: the one layer split of
/// Gantry. The cost model balances it with `times` (and reports it as
/// [`crate::cost::Estimate::stage_layers`], which the exports, the
/// placement and the runtime read); the runtime falls back to it (even)
/// when a plan's split does not cover its repeat, and cuts a stage's
/// layers into virtual-stage chunks with it.
///
/// With `times.per_layer <= 0`: counts differing by at most one, later
/// stages taking the remainder (`5` over `2` is `[2, 3]`). Otherwise:
/// start from `ceil(layers / pp)` everywhere, then take layers away one
/// at a time from the busiest stage (the first and last also run the
/// prologue and the epilogue), preferring the earliest stage on ties
/// because it holds the most microbatches in flight; no stage goes below
/// one layer. For Llama 3 405B (126 layers, 16 stages) this gives the
/// first and last stage one layer fewer, as Meta ran it.
pub fn stage_layers(layers: u64, pp: u64, times: StageTimes) -> Vec<u64> {
    let pp = pp.max(1);
    if pp == 1 {
        return vec![layers];
    }
    if times.per_layer <= 0.0 {
        let base = layers / pp;
        let rem = layers % pp;
        return (0..pp).map(|i| base + u64::from(i >= pp - rem)).collect();
    }
    let cap = layers.div_ceil(pp);
    let mut v = vec![cap; pp as usize];
    let time = |i: usize, n: u64| {
        n as f64 * times.per_layer
            + if i == 0 { times.first_extra } else { 0.0 }
            + if i == pp as usize - 1 {
                times.last_extra
            } else {
                0.0
            }
    };
    let mut surplus = v.iter().sum::<u64>() - layers;
    while surplus > 0 {
        let mut best: Option<(usize, f64)> = None;
        for (i, &n) in v.iter().enumerate() {
            if n <= 1 {
                continue;
            }
            let t = time(i, n);
            if best.is_none_or(|(_, bt)| t > bt * (1.0 + 1e-12)) {
                best = Some((i, t));
            }
        }
        let Some((i, _)) = best else { break };
        v[i] -= 1;
        surplus -= 1;
    }
    v
}

#[cfg(test)]
mod stage_layer_tests {
    use super::{StageTimes, stage_layers};

    #[test]
    fn even_split_gives_later_stages_the_remainder() {
        assert_eq!(stage_layers(5, 2, StageTimes::default()), vec![2, 3]);
        assert_eq!(stage_layers(7, 3, StageTimes::default()), vec![2, 2, 3]);
        assert_eq!(stage_layers(4, 1, StageTimes::default()), vec![4]);
        assert_eq!(stage_layers(4, 0, StageTimes::default()), vec![4]);
    }

    #[test]
    fn balanced_split_lightens_the_first_and_last_stage() {
        let t = StageTimes {
            per_layer: 1.0,
            first_extra: 0.6,
            last_extra: 0.6,
        };
        let v = stage_layers(126, 16, t);
        assert_eq!(v.iter().sum::<u64>(), 126);
        assert_eq!((v[0], v[15]), (7, 7));
        // Equal times: the even split.
        let even = StageTimes {
            per_layer: 1.0,
            ..StageTimes::default()
        };
        assert_eq!(stage_layers(7, 3, even), vec![2, 2, 3]);
    }
}
