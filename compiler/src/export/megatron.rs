//! Megatron-LM arguments (`pretrain_gpt.py`) for a training design point.
//!
//! The model is read from the workload's graph ([`ModelFacts::of`]): the
//! repeated block must be one transformer layer (one attention, norms of
//! one kind, a GELU or SwiGLU MLP or a mixture of experts), with the token
//! embedding before it and the output projection after. Everything else
//! is a `C021` naming the part Megatron has no flag for. The parallelism
//! is the design point's; the pipeline split is the cost model's
//! ([`crate::point::stage_layers`], as [`Estimate::stage_layers`]), in the
//! first form Megatron accepts for it: even stages, the embedding and loss
//! counted as layers (`--account-for-*-in-pipeline-split`), or an explicit
//! `--pipeline-model-parallel-layout`. Flag names and constraints follow
//! Megatron-LM 0.20 (`megatron/training/arguments.py`).

use gantry_lang::program::{
    Activation, BinaryOp, DType, Graph, Item, Op, OpKind, Optimizer, Phase, TensorId, Workload,
};

use super::{ExportError, refuse, train_seq};
use crate::cost::Estimate;
use crate::ir::Ir;
use crate::point::{Recompute, StageTimes, stage_layers};

const TARGET: &str = "Megatron-LM";

/// The transformer a workload's graph describes, in Megatron's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFacts {
    pub layers: u64,
    pub hidden: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub ffn: u64,
    pub vocab: u64,
    /// Learned absolute positions of this many rows; `None` is rotary.
    pub learned_positions: Option<u64>,
    pub rms_norm: bool,
    pub swiglu: bool,
    pub bias: bool,
    pub tied: bool,
    pub attention_dropout: f64,
    pub hidden_dropout: f64,
    /// Experts and how many each token takes.
    pub experts: Option<(u64, u64)>,
}

/// The arguments and the environment they need.
#[derive(Clone, Debug, PartialEq)]
pub struct Megatron {
    /// Variables the launcher must set (`CUDA_DEVICE_MAX_CONNECTIONS=1`
    /// with tensor or context parallelism).
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl Megatron {
    /// The argument line alone.
    pub fn line(&self) -> String {
        self.args.join(" ")
    }
}

impl std::fmt::Display for Megatron {
    /// One `export NAME=VALUE` line per variable, then the argument line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in &self.env {
            writeln!(f, "export {k}={v}")?;
        }
        write!(f, "{}", self.line())
    }
}

/// Why a graph is not a GPT-style transformer ([`ModelFacts::of`]): the
/// reason only, so each export names its own framework and help.
#[derive(Clone, Debug)]
pub struct NotTransformer(pub String);

fn not_transformer(why: impl Into<String>) -> NotTransformer {
    NotTransformer(why.into())
}

/// Megatron-LM's refusal of a graph that is not a transformer.
fn megatron_refusal(n: NotTransformer) -> ExportError {
    refuse(
        TARGET,
        format!("the model is not a Megatron GPT-style transformer: {}", n.0),
        "Megatron-LM's GPT model needs one repeated transformer layer (attention, norms, an MLP or experts) between a token embedding and an output projection; export DLRM plans with `--export torchrec`",
    )
}

/// The ops of a list of items, without entering repeats.
fn ops(items: &[Item]) -> impl Iterator<Item = &Op> {
    items.iter().filter_map(|i| match i {
        Item::Op(o) => Some(o),
        Item::Repeat(_) => None,
    })
}

impl ModelFacts {
    /// Reads the transformer from the graph, or says why it is not one.
    pub fn of(w: &Workload) -> Result<ModelFacts, NotTransformer> {
        let g = &w.model.graph;
        let all = all_ops(&g.body);
        if let Some(o) = all.iter().find(|o| {
            matches!(
                o.kind,
                OpKind::EmbeddingBag { .. } | OpKind::Interact { .. } | OpKind::Mlp { .. }
            )
        }) {
            return Err(not_transformer(format!(
                "it has `{}` ops (a recommendation model)",
                o.kind.name()
            )));
        }
        let (at, rep) = g
            .body
            .iter()
            .enumerate()
            .filter_map(|(i, it)| match it {
                Item::Repeat(r) => Some((i, r)),
                Item::Op(_) => None,
            })
            .max_by_key(|(_, r)| r.count)
            .ok_or_else(|| not_transformer("it has no repeated layer"))?;
        if rep.body.iter().any(|i| matches!(i, Item::Repeat(_))) {
            return Err(not_transformer("its layer holds a nested repeat"));
        }
        let prologue: Vec<&Op> = ops(&g.body[..at]).collect();
        let epilogue: Vec<&Op> = ops(&g.body[at + 1..]).collect();
        let body: Vec<&Op> = ops(&rep.body).collect();
        let embeddings: Vec<(u64, u64)> = prologue
            .iter()
            .filter_map(|o| match o.kind {
                OpKind::Embedding { vocab, dim } => Some((vocab, dim)),
                _ => None,
            })
            .collect();
        let (vocab, hidden) = *embeddings
            .first()
            .ok_or_else(|| not_transformer("no token embedding before the layers"))?;
        let learned_positions = match embeddings.len() {
            1 => None,
            2 => Some(embeddings[1].0),
            n => return Err(not_transformer(format!("{n} embeddings before the layers"))),
        };
        let mut facts = layer_facts(g, &body)?;
        facts.layers = rep.count;
        facts.hidden = hidden;
        facts.vocab = vocab;
        facts.learned_positions = learned_positions;
        facts.tied = match epilogue.iter().rev().find_map(|o| match o.kind {
            OpKind::Linear { d_out, tied, .. } => Some((d_out, tied)),
            _ => None,
        }) {
            Some((d_out, tied)) if d_out == vocab => tied,
            _ => {
                return Err(not_transformer(
                    "no output projection to the vocabulary after the layers",
                ));
            }
        };
        Ok(facts)
    }
}

fn all_ops(items: &[Item]) -> Vec<&Op> {
    let mut out = Vec::new();
    for i in items {
        match i {
            Item::Op(o) => out.push(o),
            Item::Repeat(r) => out.extend(all_ops(&r.body)),
        }
    }
    out
}

/// Attention, norms, biases, dropout and the MLP of one layer.
fn layer_facts(g: &Graph, body: &[&Op]) -> Result<ModelFacts, NotTransformer> {
    let producer = |t: TensorId| body.iter().find(|o| o.output == t).copied();
    let attn: Vec<_> = body
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Attention {
                heads,
                kv_heads,
                head_dim,
                causal,
                dropout,
            } => Some((heads, kv_heads, head_dim, causal, dropout)),
            _ => None,
        })
        .collect();
    let [(heads, kv_heads, head_dim, causal, attention_dropout)] = attn[..] else {
        return Err(not_transformer(format!(
            "its layer has {} attention ops, not one",
            attn.len()
        )));
    };
    if !causal {
        return Err(not_transformer("its attention is not causal"));
    }
    let rms = body
        .iter()
        .filter(|o| matches!(o.kind, OpKind::RmsNorm { .. }))
        .count();
    let ln = body
        .iter()
        .filter(|o| matches!(o.kind, OpKind::LayerNorm { .. }))
        .count();
    if rms > 0 && ln > 0 {
        return Err(not_transformer("its layer mixes RMSNorm and LayerNorm"));
    }
    let biases: Vec<bool> = body
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Linear { bias, .. } => Some(bias),
            _ => None,
        })
        .collect();
    let bias = biases.iter().all(|b| *b);
    if !bias && biases.iter().any(|b| *b) {
        return Err(not_transformer(
            "some of its layer's linears have biases and some do not",
        ));
    }
    let hidden_dropout = body
        .iter()
        .find_map(|o| match o.kind {
            OpKind::Dropout(p) => Some(p),
            _ => None,
        })
        .unwrap_or(0.0);
    let moe = body.iter().find_map(|o| match o.kind {
        OpKind::Moe {
            experts,
            top_k,
            d_ff,
            ..
        } => Some((experts, top_k, d_ff)),
        _ => None,
    });
    let (ffn, swiglu, experts) = match moe {
        // Gantry's experts are SwiGLU MLPs (docs/LANGUAGE.md, `moe`).
        Some((experts, top_k, d_ff)) => (d_ff, true, Some((experts, top_k))),
        None => {
            let (ffn, swiglu) = dense_mlp(g, body, &producer)?;
            (ffn, swiglu, None)
        }
    };
    Ok(ModelFacts {
        layers: 0,
        hidden: 0,
        heads,
        kv_heads,
        head_dim,
        ffn,
        vocab: 0,
        learned_positions: None,
        rms_norm: rms > 0,
        swiglu,
        bias,
        tied: false,
        attention_dropout,
        hidden_dropout,
        experts,
    })
}

/// The MLP's width and whether it is gated (SwiGLU): read from the
/// down-projection, the linear whose input an activation or a gate makes.
fn dense_mlp<'a>(
    g: &Graph,
    body: &[&Op],
    producer: &dyn Fn(TensorId) -> Option<&'a Op>,
) -> Result<(u64, bool), NotTransformer> {
    for o in body {
        let OpKind::Linear { d_in, .. } = o.kind else {
            continue;
        };
        let Some(src) = o.inputs.first().and_then(|t| producer(*t)) else {
            continue;
        };
        match &src.kind {
            OpKind::Activation(Activation::Gelu) => return Ok((d_in, false)),
            OpKind::Activation(a) => {
                return Err(not_transformer(format!(
                    "its MLP uses `{}` without a gate; Megatron's MLP is GELU or SwiGLU",
                    a.name()
                )));
            }
            OpKind::Binary(BinaryOp::Mul) => {
                let silu = src.inputs.iter().any(|t| {
                    producer(*t).is_some_and(|p| p.kind == OpKind::Activation(Activation::Silu))
                });
                if silu {
                    return Ok((d_in, true));
                }
                return Err(not_transformer(format!(
                    "its gated MLP (`{}`) is not SwiGLU",
                    g.tensor(src.output).name
                )));
            }
            _ => {}
        }
    }
    Err(not_transformer("no MLP or experts in its layer"))
}

/// Megatron-LM arguments for a training design point of workload `w`.
pub fn megatron(e: &Estimate, ir: &Ir, w: &Workload) -> Result<Megatron, ExportError> {
    let Phase::Train { seq, optimizer, .. } = w.phase else {
        return Err(refuse(
            TARGET,
            format!(
                "the plan's workload `{}` is {}, and Megatron-LM's arguments describe training",
                w.name,
                w.phase.name()
            ),
            "export serving plans as a trace (`--export trace`)",
        ));
    };
    let m = ModelFacts::of(w).map_err(megatron_refusal)?;
    let seq = train_seq(TARGET, seq, w)?;
    let mut args = model_args(&m, seq)?;
    args.extend(precision_args(w)?);
    args.extend(parallel_args(e, ir, &m)?);
    args.extend(optimizer_args(e, optimizer)?);
    let p = &e.point;
    let mut env = Vec::new();
    // Megatron asserts it with tensor or context parallelism (before
    // Blackwell), and FSDP asserts it is not 1.
    if (p.tp > 1 || p.cp > 1) && p.zero < 2 {
        env.push(("CUDA_DEVICE_MAX_CONNECTIONS".to_string(), "1".to_string()));
    }
    Ok(Megatron { env, args })
}

fn model_args(m: &ModelFacts, seq: u64) -> Result<Vec<String>, ExportError> {
    let mut a = vec![
        format!("--num-layers {}", m.layers),
        format!("--hidden-size {}", m.hidden),
        format!("--ffn-hidden-size {}", m.ffn),
        format!("--num-attention-heads {}", m.heads),
        format!("--seq-length {seq}"),
    ];
    if m.heads * m.head_dim != m.hidden {
        a.push(format!("--kv-channels {}", m.head_dim));
    }
    if m.kv_heads != m.heads {
        a.push(format!(
            "--group-query-attention --num-query-groups {}",
            m.kv_heads
        ));
    }
    match m.learned_positions {
        Some(rows) if rows < seq => {
            return Err(refuse(
                TARGET,
                format!("the model learns {rows} positions for sequences of {seq}"),
                "give the position embedding at least `seq` rows",
            ));
        }
        Some(rows) => a.push(format!(
            "--max-position-embeddings {rows} --position-embedding-type learned_absolute"
        )),
        None => a.push(format!(
            "--max-position-embeddings {seq} --position-embedding-type rope"
        )),
    }
    a.push(format!(
        "--normalization {}",
        if m.rms_norm { "RMSNorm" } else { "LayerNorm" }
    ));
    if m.swiglu {
        a.push("--swiglu".into());
    }
    if !m.bias {
        a.push("--disable-bias-linear".into());
    }
    if !m.tied {
        a.push("--untie-embeddings-and-output-weights".into());
    }
    a.push(format!(
        "--attention-dropout {} --hidden-dropout {}",
        m.attention_dropout, m.hidden_dropout
    ));
    // The vocabulary as declared, with `--make-vocab-size-divisible-by 1`
    // (Megatron then pads it only to a multiple of the tensor-parallel
    // degree; `the_vocabulary_is_not_padded_to_128`).
    a.push(format!(
        "--tokenizer-type NullTokenizer --vocab-size {} --make-vocab-size-divisible-by 1",
        m.vocab
    ));
    if let Some((experts, top_k)) = m.experts {
        a.push(format!(
            "--num-experts {experts} --moe-router-topk {top_k} --moe-ffn-hidden-size {}",
            m.ffn
        ));
    }
    Ok(a)
}

fn precision_args(w: &Workload) -> Result<Vec<String>, ExportError> {
    let mut a = Vec::new();
    match w.dtype {
        DType::Bf16 => a.push("--bf16".to_string()),
        DType::F16 => a.push("--fp16".to_string()),
        DType::F32 | DType::Tf32 => {}
        other => {
            return Err(refuse(
                TARGET,
                format!(
                    "Megatron trains in bf16, fp16 or fp32, not {}",
                    other.name()
                ),
                "set the workload's dtype to bf16",
            ));
        }
    }
    match w.kernels.matmul_dtype {
        None => {}
        Some(d) if d == w.dtype => {}
        Some(DType::Fp8) => a.push("--fp8-format hybrid".to_string()),
        Some(d) => {
            return Err(refuse(
                TARGET,
                format!("Megatron has no {} matmul precision", d.name()),
                "use `precision = { matmul = fp8 }` or none",
            ));
        }
    }
    Ok(a)
}

fn parallel_args(e: &Estimate, ir: &Ir, m: &ModelFacts) -> Result<Vec<String>, ExportError> {
    let p = &e.point;
    let mut a = vec![
        format!("--tensor-model-parallel-size {}", p.tp),
        format!("--pipeline-model-parallel-size {}", p.pp),
        format!("--context-parallel-size {}", p.cp),
        format!("--micro-batch-size {}", p.microbatch),
        format!("--global-batch-size {}", ir.samples_per_step()),
    ];
    if p.ep > 1 {
        if m.experts.is_none_or(|(n, _)| n % p.ep != 0) {
            return Err(refuse(
                TARGET,
                format!("expert parallelism {} does not divide the experts", p.ep),
                "pin `ep` to a divisor of the experts",
            ));
        }
        a.push(format!("--expert-model-parallel-size {}", p.ep));
    }
    if p.sequence_parallel && p.tp > 1 {
        a.push("--sequence-parallel".into());
    }
    a.extend(pipeline_split(
        m.layers,
        p.pp,
        p.virtual_stages,
        &e.stage_layers,
    )?);
    match p.recompute {
        // Every layer recomputed whole, one at a time.
        Recompute::Full => a.push(
            "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1"
                .into(),
        ),
        Recompute::Selective => a.push("--recompute-granularity selective".into()),
        Recompute::None => {}
    }
    Ok(a)
}

/// The cost model's layer split (`stages`, layers per pipeline rank; each
/// rank's layers cut into `v` chunks by [`stage_layers`], as the runtime
/// does) in the first form Megatron-LM accepts: even stages, Megatron's
/// split with the embedding and the loss counted as one layer each, or an
/// explicit layout (virtual stage `k` is chunk `k / pp` of rank `k % pp`,
/// Megatron's order).
pub(crate) fn pipeline_split(
    layers: u64,
    pp: u64,
    v: u64,
    stages: &[u64],
) -> Result<Vec<String>, ExportError> {
    let pp = pp.max(1);
    let v = v.max(1);
    if pp == 1 {
        return Ok(Vec::new());
    }
    if stages.len() as u64 != pp || stages.iter().sum::<u64>() != layers {
        return Err(refuse(
            TARGET,
            format!("the layer split {stages:?} does not cover {layers} layers in {pp} stages"),
            "this is a bug; please report it",
        ));
    }
    let even = layers.is_multiple_of(pp) && stages.iter().all(|n| *n == layers / pp);
    if even && v == 1 {
        return Ok(Vec::new());
    }
    if even && (layers / pp).is_multiple_of(v) {
        return Ok(vec![format!(
            "--num-layers-per-virtual-pipeline-stage {}",
            layers / (pp * v)
        )]);
    }
    let k = (layers + 2) / pp;
    let accounted = v == 1
        && (layers + 2).is_multiple_of(pp)
        && stages.iter().enumerate().all(|(i, n)| {
            *n == if i == 0 || i as u64 == pp - 1 {
                k - 1
            } else {
                k
            }
        });
    if accounted {
        return Ok(vec![
            "--account-for-embedding-in-pipeline-split --account-for-loss-in-pipeline-split".into(),
        ]);
    }
    let chunks: Vec<Vec<u64>> = stages
        .iter()
        .map(|n| stage_layers(*n, v, StageTimes::default()))
        .collect();
    let total = (pp * v) as usize;
    let layout: Vec<String> = (0..total)
        .map(|k| {
            let n = chunks[k % pp as usize][k / pp as usize];
            let mut s = String::new();
            if k == 0 {
                s.push('E');
            }
            match n {
                0 => {}
                1 => s.push('t'),
                n => s.push_str(&format!("t*{n}")),
            }
            if k == total - 1 {
                s.push('L');
            }
            s
        })
        .collect();
    Ok(vec![format!(
        "--pipeline-model-parallel-layout \"{}\"",
        layout.join("|")
    )])
}

/// The optimizer, and ZeRO as Megatron runs it: stage 1 is the distributed
/// optimizer (with HSDP replicas as its instances), stages 2 and 3 are
/// Megatron-FSDP with the matching sharding strategy.
fn optimizer_args(e: &Estimate, optimizer: Optimizer) -> Result<Vec<String>, ExportError> {
    let p = &e.point;
    let mut a = vec![match optimizer {
        // Megatron's `adam` is AdamW (decoupled weight decay).
        Optimizer::Adam | Optimizer::AdamW => "--optimizer adam".to_string(),
        Optimizer::Sgd => "--optimizer sgd --sgd-momentum 0".to_string(),
        Optimizer::SgdMomentum => "--optimizer sgd --sgd-momentum 0.9".to_string(),
        other => {
            return Err(refuse(
                TARGET,
                format!("Megatron-LM has no `{}` optimizer", other.name()),
                "train with adam, adamw, sgd or sgd_momentum",
            ));
        }
    }];
    let replicas = p.replicas();
    match p.zero {
        0 => {}
        1 => {
            a.push("--use-distributed-optimizer".into());
            if replicas > 1 {
                a.push(format!("--num-distributed-optimizer-instances {replicas}"));
            }
        }
        z => {
            if replicas > 1 {
                return Err(refuse(
                    TARGET,
                    format!(
                        "ZeRO-{z} over {} of {} ranks with {replicas} replicas (HSDP) is not expressible as Megatron-FSDP arguments alone (it needs a hybrid device mesh)",
                        p.shard,
                        p.dp * p.cp
                    ),
                    "pin `shard` to dp x cp, or use ZeRO-1",
                ));
            }
            let strategy = if z == 2 {
                "optim_grads"
            } else {
                "optim_grads_params"
            };
            a.push(format!(
                "--use-megatron-fsdp --data-parallel-sharding-strategy {strategy} --ckpt-format fsdp_dtensor"
            ));
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::pipeline_split;

    #[test]
    fn even_stages_need_no_split_flag() {
        assert!(pipeline_split(32, 4, 1, &[8; 4]).expect("split").is_empty());
        assert_eq!(
            pipeline_split(32, 4, 2, &[8; 4]).expect("split"),
            vec!["--num-layers-per-virtual-pipeline-stage 4"]
        );
    }

    /// 126 layers on 16 stages, the first and last one layer short: the
    /// embedding and the loss counted as layers, as Megatron splits it.
    #[test]
    fn first_and_last_short_is_the_accounted_split() {
        let mut s = vec![8; 16];
        s[0] = 7;
        s[15] = 7;
        assert_eq!(
            pipeline_split(126, 16, 1, &s).expect("split"),
            vec!["--account-for-embedding-in-pipeline-split --account-for-loss-in-pipeline-split"]
        );
    }

    /// The case: 7 layers on the first stage with 4 virtual
    /// stages is not divisible; the layout holds the split exactly.
    #[test]
    fn uneven_interleaved_stages_are_a_layout() {
        let a = pipeline_split(30, 4, 2, &[7, 8, 8, 7]).expect("split");
        assert_eq!(
            a,
            vec!["--pipeline-model-parallel-layout \"Et*3|t*4|t*4|t*3|t*4|t*4|t*4|t*4L\""]
        );
    }

    #[test]
    fn a_split_that_misses_layers_is_refused() {
        assert!(pipeline_split(30, 4, 1, &[7, 8, 8]).is_err());
    }
}
