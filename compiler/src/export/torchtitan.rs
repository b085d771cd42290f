//! A torchtitan job config (the TOML `--job.config_file` reads) for a
//! training design point.
//!
//! Followed: torchtitan v0.2.2 (tag commit
//! 73a0e6979dd10b6b1904098eb3c8f62c18ab87ce, `torchtitan/config/job_config.py`,
//! `torchtitan/distributed/parallel_dims.py`,
//! `torchtitan/models/llama3/__init__.py` and `infra/parallelize.py`), the
//! last release that reads TOML: from February 2026 (#2386) torchtitan
//! configures runs with Python functions instead.
//!
//! torchtitan builds a model from a registered *flavor*, never from shapes
//! in the file, so the model read from the graph ([`ModelFacts`]) must be
//! one of llama3's flavors ([`FLAVORS`]); any other model is a `C021`
//! naming the nearest difference. The mapping of the point is torchtitan's
//! own, and where torchtitan cannot run the point as priced the export is
//! refused rather than approximated:
//! - ZeRO-3 is FSDP2 over `shard` ranks (`data_parallel_shard_degree` x
//!   `context_parallel_degree`, torchtitan always shards over context
//!   ranks) with the remaining `replicas` as `data_parallel_replicate_degree`
//!   (HSDP), resharding after forward (`always`); ZeRO-2 is the same mesh
//!   with `fsdp_reshard_after_forward = "never"` (parameters stay gathered
//!   from forward to backward); ZeRO-0 is DDP, which torchtitan runs only
//!   without other parallelism; ZeRO-1 (optimizer state only) has no
//!   torchtitan form.
//! - Tensor parallelism is always sequence parallel in torchtitan; async TP
//!   (`overlap = { tp = true }`) needs `torch.compile`, so it turns
//!   `[compile]` on.
//! - The pipeline split is the cost model's, written as
//!   `module_fqns_per_model_part` (one list of module names per virtual
//!   stage, in the looped order torchtitan and Megatron share), with
//!   `1F1B` or `Interleaved1F1B`.
//! - FP8 matmuls are the `float8` converter (tensorwise, FP8 all-gathers
//!   with FSDP), the output projection left in high precision.
//!
//! The table is written with the `toml` crate.

use gantry_lang::program::{DType, Optimizer, Phase, Workload};
use toml::{Table, Value};

use super::megatron::ModelFacts;
use super::{ExportError, refuse, train_seq};
use crate::cost::Estimate;
use crate::ir::Ir;
use crate::point::{Recompute, StageTimes, stage_layers};

const TARGET: &str = "torchtitan";
/// The torchtitan release the config follows.
pub const VERSION: &str = "0.2.2";

/// One of llama3's registered model flavors (torchtitan v0.2.2,
/// `torchtitan/models/llama3/__init__.py`): the arguments it sets, the
/// rest at `TransformerModelArgs`' defaults.
#[derive(Clone, Copy, Debug)]
pub struct Flavor {
    pub name: &'static str,
    pub dim: u64,
    pub n_layers: u64,
    pub n_heads: u64,
    /// `None`: as many as `n_heads`.
    pub n_kv_heads: Option<u64>,
    pub vocab_size: u64,
    pub multiple_of: u64,
    /// `ffn_dim_multiplier` in tenths (1.3 is 13), to keep it exact.
    pub ffn_dim_multiplier_tenths: Option<u64>,
}

/// llama3's flavors with the default (SDPA) attention.
pub const FLAVORS: &[Flavor] = &[
    Flavor {
        name: "debugmodel",
        dim: 256,
        n_layers: 6,
        n_heads: 16,
        n_kv_heads: None,
        vocab_size: 2048,
        multiple_of: 256,
        ffn_dim_multiplier_tenths: None,
    },
    Flavor {
        name: "8B",
        dim: 4096,
        n_layers: 32,
        n_heads: 32,
        n_kv_heads: Some(8),
        vocab_size: 128256,
        multiple_of: 1024,
        ffn_dim_multiplier_tenths: Some(13),
    },
    Flavor {
        name: "70B",
        dim: 8192,
        n_layers: 80,
        n_heads: 64,
        n_kv_heads: Some(8),
        vocab_size: 128256,
        multiple_of: 4096,
        ffn_dim_multiplier_tenths: Some(13),
    },
    Flavor {
        name: "405B",
        dim: 16384,
        n_layers: 126,
        n_heads: 128,
        n_kv_heads: Some(8),
        vocab_size: 128256,
        multiple_of: 4096,
        ffn_dim_multiplier_tenths: Some(12),
    },
];

impl Flavor {
    /// The SwiGLU width torchtitan's `FeedForward` computes: `4 dim`, two
    /// thirds of it, times the multiplier, rounded up to `multiple_of`
    /// (each step truncated to an integer, as Python's `int` does).
    pub fn ffn(&self) -> u64 {
        let mut h = 2 * (4 * self.dim) / 3;
        if let Some(t) = self.ffn_dim_multiplier_tenths {
            h = h * t / 10;
        }
        h.div_ceil(self.multiple_of) * self.multiple_of
    }

    /// The first difference between this flavor and the model, if any.
    fn differs(&self, m: &ModelFacts) -> Option<String> {
        let kv = self.n_kv_heads.unwrap_or(self.n_heads);
        let pairs = [
            ("layers", self.n_layers, m.layers),
            ("d_model", self.dim, m.hidden),
            ("heads", self.n_heads, m.heads),
            ("kv_heads", kv, m.kv_heads),
            ("head_dim", self.dim / self.n_heads, m.head_dim),
            ("d_ff", self.ffn(), m.ffn),
            ("vocab", self.vocab_size, m.vocab),
        ];
        pairs
            .iter()
            .find(|(_, want, got)| want != got)
            .map(|(k, want, got)| format!("{k} {got}, not {want}"))
    }
}

/// The llama3 flavor the model is, or why it is none.
fn flavor(m: &ModelFacts) -> Result<&'static Flavor, ExportError> {
    let mut shape = Vec::new();
    if !m.rms_norm {
        shape.push("LayerNorm instead of RMSNorm");
    }
    if !m.swiglu {
        shape.push("a GELU MLP instead of SwiGLU");
    }
    if m.bias {
        shape.push("biases on its linears");
    }
    if m.tied {
        shape.push("a tied output projection");
    }
    if m.learned_positions.is_some() {
        shape.push("learned positions instead of rotary");
    }
    if m.experts.is_some() {
        shape.push("experts");
    }
    if m.attention_dropout > 0.0 || m.hidden_dropout > 0.0 {
        shape.push("dropout");
    }
    let help = "torchtitan builds models from registered flavors (llama3: debugmodel, 8B, 70B, 405B); export this plan with `--export megatron`, or register the model as a torchtitan flavor";
    if !shape.is_empty() {
        return Err(refuse(
            TARGET,
            format!("the model is not a Llama 3 (it has {})", shape.join(", ")),
            help,
        ));
    }
    let diffs: Vec<String> = FLAVORS
        .iter()
        .filter_map(|f| f.differs(m).map(|d| format!("{}: {d}", f.name)))
        .collect();
    if let Some(f) = FLAVORS.iter().find(|f| f.differs(m).is_none()) {
        return Ok(f);
    }
    Err(refuse(
        TARGET,
        format!(
            "the model matches no llama3 flavor of torchtitan {VERSION} ({})",
            diffs.join("; ")
        ),
        help,
    ))
}

fn int(n: u64) -> Value {
    Value::Integer(n as i64)
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn strings<I: IntoIterator<Item = String>>(v: I) -> Value {
    Value::Array(v.into_iter().map(Value::String).collect())
}

/// The torchtitan job config for a training design point of workload `w`.
pub fn torchtitan(e: &Estimate, ir: &Ir, w: &Workload) -> Result<Table, ExportError> {
    let Phase::Train {
        seq,
        optimizer,
        global_batch,
    } = w.phase
    else {
        return Err(refuse(
            TARGET,
            format!(
                "the plan's workload `{}` is {}, and a torchtitan job config describes training",
                w.name,
                w.phase.name()
            ),
            "export serving plans as a trace (`--export trace`)",
        ));
    };
    let m = ModelFacts::of(w).map_err(|n| {
        refuse(
            TARGET,
            format!("the model is not a GPT-style transformer: {}", n.0),
            "torchtitan runs Llama 3 transformers from registered flavors; export DLRM plans with `--export torchrec`",
        )
    })?;
    let f = flavor(&m)?;
    let seq = train_seq(TARGET, seq, w)?;
    let p = &e.point;
    debug_assert_eq!(global_batch, ir.samples_per_step());

    let mut job = Table::new();
    job.insert(
        "description".into(),
        s(&format!("gantry: {} at {}", w.name, p)),
    );

    let mut model = Table::new();
    model.insert("name".into(), s("llama3"));
    model.insert("flavor".into(), s(f.name));
    let mut quantize = Table::new();
    let mut compile = Table::new();
    let compiled = w.kernels.compiled || (w.kernels.overlap.tp && p.tp > 1);
    match w.kernels.matmul_dtype {
        None => {}
        Some(d) if d == w.dtype => {}
        Some(DType::Fp8) => {
            model.insert("converters".into(), strings(["float8".to_string()]));
            let fsdp = p.zero >= 2;
            let mut float8 = Table::new();
            float8.insert("enable_fsdp_float8_all_gather".into(), Value::Boolean(fsdp));
            float8.insert(
                "precompute_float8_dynamic_scale_for_fsdp".into(),
                Value::Boolean(fsdp),
            );
            float8.insert("filter_fqns".into(), strings(["output".to_string()]));
            let mut linear = Table::new();
            linear.insert("float8".into(), Value::Table(float8));
            quantize.insert("linear".into(), Value::Table(linear));
        }
        Some(d) => {
            return Err(refuse(
                TARGET,
                format!("torchtitan has no {} matmul precision", d.name()),
                "use `precision = { matmul = fp8 }` or none",
            ));
        }
    }
    compile.insert("enable".into(), Value::Boolean(compiled));

    let mut optim = Table::new();
    optim.insert(
        "name".into(),
        s(match optimizer {
            Optimizer::Adam => "Adam",
            Optimizer::AdamW => "AdamW",
            other => {
                return Err(refuse(
                    TARGET,
                    format!(
                        "torchtitan {VERSION} builds Adam and AdamW, not `{}`",
                        other.name()
                    ),
                    "train with adam or adamw",
                ));
            }
        }),
    );

    let mut training = Table::new();
    let mixed = match w.dtype {
        DType::Bf16 => "bfloat16",
        DType::F32 => "float32",
        other => {
            return Err(refuse(
                TARGET,
                format!(
                    "torchtitan trains with bfloat16 or float32 parameters, not {}",
                    other.name()
                ),
                "set the workload's dtype to bf16",
            ));
        }
    };
    // Data-parallel ranks read distinct samples; context-parallel ranks
    // share theirs. Without a pipeline, a local batch of one microbatch
    // and the global batch make torchtitan accumulate gradients.
    let local = if p.pp > 1 {
        global_batch / p.dp.max(1)
    } else {
        p.microbatch
    };
    training.insert("local_batch_size".into(), int(local));
    training.insert("global_batch_size".into(), int(global_batch));
    training.insert("seq_len".into(), int(seq));
    training.insert("mixed_precision_param".into(), s(mixed));

    let mut par = parallelism(e, f)?;
    if p.pp > 1 {
        par.insert(
            "pipeline_parallel_microbatch_size".into(),
            int(p.microbatch),
        );
    }
    if p.tp > 1 && w.kernels.overlap.tp {
        par.insert("enable_async_tensor_parallel".into(), Value::Boolean(true));
    }

    let mut ac = Table::new();
    ac.insert(
        "mode".into(),
        s(match p.recompute {
            Recompute::None => "none",
            Recompute::Selective => "selective",
            Recompute::Full => "full",
        }),
    );
    if p.recompute == Recompute::Selective {
        ac.insert("selective_ac_option".into(), s("op"));
    }

    let mut t = Table::new();
    t.insert("job".into(), Value::Table(job));
    t.insert("model".into(), Value::Table(model));
    t.insert("optimizer".into(), Value::Table(optim));
    t.insert("training".into(), Value::Table(training));
    t.insert("parallelism".into(), Value::Table(par));
    t.insert("activation_checkpoint".into(), Value::Table(ac));
    t.insert("compile".into(), Value::Table(compile));
    if !quantize.is_empty() {
        t.insert("quantize".into(), Value::Table(quantize));
    }
    Ok(t)
}

/// `[parallelism]`: the mesh, data parallelism as torchtitan runs each
/// ZeRO stage, and the pipeline.
fn parallelism(e: &Estimate, f: &Flavor) -> Result<Table, ExportError> {
    let p = &e.point;
    let mut a = Table::new();
    if p.ep > 1 {
        return Err(refuse(
            TARGET,
            format!("expert parallelism {} on a dense model", p.ep),
            "leave `ep` at 1",
        ));
    }
    if p.tp > 1 && !p.sequence_parallel {
        return Err(refuse(
            TARGET,
            format!(
                "tensor parallelism {} without sequence parallelism: torchtitan's tensor parallelism always shards the norms' sequence",
                p.tp
            ),
            "pin `sequence_parallel = true`, or export with `--export megatron`",
        ));
    }
    let (replicate, shard, reshard) = match p.zero {
        0 => {
            if p.tp * p.pp * p.cp > 1 {
                return Err(refuse(
                    TARGET,
                    "ZeRO-0 (replicated data parallelism) with tensor, pipeline or context parallelism: torchtitan runs DDP only on a one-dimensional mesh and shards with FSDP otherwise",
                    "pin `zero` to 2 or 3",
                ));
            }
            (p.dp, 1, None)
        }
        1 => {
            return Err(refuse(
                TARGET,
                "ZeRO-1 (optimizer state sharded alone) has no torchtitan form: FSDP2 shards parameters and gradients too",
                "pin `zero` to 2 or 3, or export with `--export megatron`",
            ));
        }
        z => {
            if !p.shard.is_multiple_of(p.cp.max(1)) {
                return Err(refuse(
                    TARGET,
                    format!(
                        "a ZeRO group of {} ranks is not a multiple of the {} context-parallel ranks torchtitan always shards over",
                        p.shard, p.cp
                    ),
                    "pin `shard` to a multiple of cp",
                ));
            }
            let reshard = if z == 2 { "never" } else { "always" };
            (p.replicas(), p.shard / p.cp.max(1), Some(reshard))
        }
    };
    a.insert("data_parallel_replicate_degree".into(), int(replicate));
    a.insert("data_parallel_shard_degree".into(), int(shard));
    if let Some(r) = reshard {
        a.insert("fsdp_reshard_after_forward".into(), s(r));
    }
    a.insert("tensor_parallel_degree".into(), int(p.tp));
    a.insert("context_parallel_degree".into(), int(p.cp));
    a.insert("pipeline_parallel_degree".into(), int(p.pp));
    if p.pp > 1 {
        let v = p.virtual_stages.max(1);
        a.insert(
            "pipeline_parallel_schedule".into(),
            s(if v > 1 { "Interleaved1F1B" } else { "1F1B" }),
        );
        let stages = &e.stage_layers;
        if stages.len() as u64 != p.pp || stages.iter().sum::<u64>() != f.n_layers {
            return Err(refuse(
                TARGET,
                format!(
                    "the layer split {stages:?} does not cover {} layers in {} stages",
                    f.n_layers, p.pp
                ),
                "this is a bug; please report it",
            ));
        }
        a.insert(
            "module_fqns_per_model_part".into(),
            Value::Array(
                model_parts(p.pp, v, stages)
                    .into_iter()
                    .map(strings)
                    .collect(),
            ),
        );
    }
    Ok(a)
}

/// One list of module names per virtual stage: virtual stage `k` is chunk
/// `k / pp` of rank `k % pp` (the looped order of torchtitan's
/// `Interleaved1F1B` and of Megatron), each rank's layers cut into `v`
/// chunks as the cost model cuts them; the embedding opens the first
/// stage and the final norm and output close the last.
pub fn model_parts(pp: u64, v: u64, stages: &[u64]) -> Vec<Vec<String>> {
    let chunks: Vec<Vec<u64>> = stages
        .iter()
        .map(|n| stage_layers(*n, v, StageTimes::default()))
        .collect();
    let total = (pp * v) as usize;
    let mut next = 0;
    let mut parts = Vec::with_capacity(total);
    for k in 0..total {
        let n = chunks[k % pp as usize][k / pp as usize];
        let mut part = Vec::new();
        if k == 0 {
            part.push("tok_embeddings".to_string());
        }
        part.extend((next..next + n).map(|i| format!("layers.{i}")));
        next += n;
        if k == total - 1 {
            part.push("norm".to_string());
            part.push("output".to_string());
        }
        parts.push(part);
    }
    parts
}
