//! The checked program: what the front end hands to the compiler.
//!
//! Everything here is resolved: names are bound, units are checked and
//! converted to base units (FLOP, B, s, J, $), parameters are substituted,
//! and each workload's model is a graph of built-in ops with shapes. The
//! types are plain data with ordered maps so that printing them
//! ([`Program::summary`]) is deterministic; no AST or parser type appears.
//! A `repeat` block stays one [`Repeat`] with a count, never unrolled.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::shape::Shape;
use crate::span::Span;
use crate::units::{Dim, Quantity, format_number};

/// Element types.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum DType {
    F64,
    F32,
    Tf32,
    Bf16,
    F16,
    Fp8,
    I64,
    I32,
    I8,
    /// The workload's compute dtype (decided when a workload binds the model).
    Act,
}

impl DType {
    /// Every spelling [`DType::parse`] accepts.
    pub const NAMES: &'static [&'static str] = &[
        "fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int64", "int32", "int8", "f64", "f32",
        "f16", "i64", "i32", "i8", "ids",
    ];
    /// One line listing the element types, for `help:` texts.
    pub fn help() -> String {
        "element types: fp64, fp32, tf32, bf16, fp16, fp8, int64, int32, int8 (also spelt f64, f32, f16, i64, i32, i8; `ids` is int64)".to_string()
    }
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "fp64" | "f64" => DType::F64,
            "fp32" | "f32" => DType::F32,
            "tf32" => DType::Tf32,
            "bf16" => DType::Bf16,
            "fp16" | "f16" => DType::F16,
            "fp8" => DType::Fp8,
            "int64" | "i64" | "ids" => DType::I64,
            "int32" | "i32" => DType::I32,
            "int8" | "i8" => DType::I8,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "fp64",
            DType::F32 => "fp32",
            DType::Tf32 => "tf32",
            DType::Bf16 => "bf16",
            DType::F16 => "fp16",
            DType::Fp8 => "fp8",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I8 => "int8",
            DType::Act => "act",
        }
    }
    /// Bytes per element; `None` for [`DType::Act`], which the workload decides.
    pub fn bytes(self) -> Option<u32> {
        Some(match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::Tf32 | DType::I32 => 4,
            DType::Bf16 | DType::F16 => 2,
            DType::Fp8 | DType::I8 => 1,
            DType::Act => return None,
        })
    }
    pub fn is_int(self) -> bool {
        matches!(self, DType::I64 | DType::I32 | DType::I8)
    }
}

// ---------------------------------------------------------------- hardware

#[derive(Clone, Debug, PartialEq)]
pub struct Memory {
    pub name: String,
    /// Bytes.
    pub capacity: f64,
    /// Bytes per second.
    pub bandwidth: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub name: String,
    /// Peak dense FLOP/s per dtype.
    pub compute: BTreeMap<DType, f64>,
    pub memories: Vec<Memory>,
    /// Watts at full load.
    pub power: f64,
    /// Dollars per second (written per hour in the source).
    pub price: Option<f64>,
    /// Streaming multiprocessors (compute units) that run a matrix
    /// product's output tiles in waves (`cores 132`); absent, products
    /// are not quantised into waves.
    pub cores: Option<u64>,
    /// Special-function unit results per second (`sfu 3.87 TFLOP/s`: the
    /// exponentials of a fused attention kernel's softmax run there, one
    /// per score and training pass); absent, they cost nothing beyond the
    /// products.
    pub sfu: Option<f64>,
    /// Calibration factors, shared by every run of this device. Mostly
    /// plain fractions; curve knees carry units (e.g. `matmul_knee = 1 GFLOP`).
    pub efficiency: BTreeMap<String, Quantity>,
    /// Phases whose factors were borrowed from another device
    /// (`efficiency { train = H100_96GB }`): phase -> the device the
    /// factors were fitted on. Those entries are copied into `efficiency`.
    pub borrowed: BTreeMap<String, String>,
    /// Purchase price, idle power and failure rate (fleet studies).
    pub own: Ownership,
    pub span: Span,
}

/// What a device or node costs to own, draws when idle and how often it
/// interrupts a job: the inputs of a fleet study's economics and
/// reliability (docs/COST-MODEL.md §9). Every field is optional; a study
/// that needs one a part lacks says so.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ownership {
    /// Purchase price in dollars (`purchase $30000`).
    pub purchase: Option<f64>,
    /// Seconds the purchase is amortised over (`amortization 4 yr`).
    pub amortization: Option<f64>,
    /// Watts when idle (a device's own, or a node's beyond its devices').
    pub idle_power: Option<f64>,
    /// Mean time between job-interrupting failures, seconds.
    pub mtbf: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// All devices of the node reach each other through a switch (NVSwitch).
    Switch,
    /// Point-to-point links in a ring or mesh (e.g. Infinity Fabric).
    Mesh,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    /// Bytes per second per device, each direction.
    pub bandwidth: f64,
    /// Seconds per step of a ring (one hop).
    pub latency: f64,
    /// Seconds every collective on the link pays once, whatever its size
    /// and rank count: the collective library's launch and protocol
    /// set-up (NCCL's base latency).
    pub launch: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub device: Device,
    pub devices_per_node: u64,
    pub links: Vec<Link>,
    /// NIC bandwidth in bytes per second, each direction, and NIC count.
    pub nic_bandwidth: f64,
    pub nics: u64,
    pub host_memory: Option<Memory>,
    /// Watts beyond the devices' own (CPUs, NICs, fans).
    pub power_overhead: f64,
    /// Dollars per second for the whole node, if declared.
    pub price: Option<f64>,
    /// Purchase price, idle power and failure rate beyond the devices'.
    pub own: Ownership,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FabricKind {
    FatTree,
    RailOptimized,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fabric {
    pub name: String,
    pub kind: FabricKind,
    /// Bytes per second per NIC port, each direction.
    pub bandwidth: f64,
    /// Seconds, one hop.
    pub latency: f64,
    /// Nodes behind one top-of-rack (or leaf) switch.
    pub rack_nodes: u64,
    /// Nodes in a full-bisection pod.
    pub pod_nodes: u64,
    /// Oversubscription above the pod (1 = full bisection).
    pub oversubscription: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub node: Node,
    pub nodes: u64,
    pub fabric: Option<Fabric>,
    pub span: Span,
}

impl Cluster {
    pub fn devices(&self) -> u64 {
        self.nodes * self.node.devices_per_node
    }
}

// ---------------------------------------------------------------- models

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TensorId(pub u32);

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Shape,
    pub dtype: DType,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingTable {
    pub name: String,
    pub rows: u64,
    pub dim: u64,
    pub pooling: u64,
    pub dtype: DType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Gelu,
    Silu,
    Sigmoid,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Silu => "silu",
            Activation::Sigmoid => "sigmoid",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    Linear {
        d_in: u64,
        d_out: u64,
        bias: bool,
        /// The weight is the transpose of the model's `embedding` table of
        /// `d_out` rows and `d_in` columns (tied embeddings): no weight of
        /// its own.
        tied: bool,
    },
    MatMul,
    Embedding {
        vocab: u64,
        dim: u64,
    },
    EmbeddingBag {
        tables: Vec<EmbeddingTable>,
    },
    /// `dropout` is the probability applied to the attention probabilities.
    Attention {
        heads: u64,
        kv_heads: u64,
        head_dim: u64,
        causal: bool,
        dropout: f64,
    },
    Dropout(f64),
    RmsNorm {
        dim: u64,
    },
    LayerNorm {
        dim: u64,
    },
    Softmax,
    Activation(Activation),
    Binary(BinaryOp),
    /// Multiply by a constant.
    Scale(f64),
    Mlp {
        dims: Vec<u64>,
        activation: Activation,
    },
    Interact {
        vectors: u64,
        dim: u64,
    },
    Moe {
        experts: u64,
        top_k: u64,
        d_model: u64,
        d_ff: u64,
    },
    Reshape,
    Concat {
        axis: usize,
    },
}

impl OpKind {
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Linear { .. } => "linear",
            OpKind::MatMul => "matmul",
            OpKind::Embedding { .. } => "embedding",
            OpKind::EmbeddingBag { .. } => "embedding_bag",
            OpKind::Attention { .. } => "attention",
            OpKind::RmsNorm { .. } => "rmsnorm",
            OpKind::LayerNorm { .. } => "layernorm",
            OpKind::Softmax => "softmax",
            OpKind::Dropout(_) => "dropout",
            OpKind::Activation(a) => a.name(),
            OpKind::Binary(BinaryOp::Add) => "add",
            OpKind::Binary(BinaryOp::Sub) => "sub",
            OpKind::Binary(BinaryOp::Mul) => "mul",
            OpKind::Binary(BinaryOp::Div) => "div",
            OpKind::Scale(_) => "scale",
            OpKind::Mlp { .. } => "mlp",
            OpKind::Interact { .. } => "interact",
            OpKind::Moe { .. } => "moe",
            OpKind::Reshape => "reshape",
            OpKind::Concat { .. } => "concat",
        }
    }
    /// Attributes for the summary, in a fixed order.
    fn attrs(&self) -> String {
        match self {
            OpKind::Linear {
                d_in,
                d_out,
                bias,
                tied,
            } => format!(
                "{d_in}->{d_out}{}{}",
                if *bias { " +bias" } else { "" },
                if *tied { " tied" } else { "" }
            ),
            OpKind::Embedding { vocab, dim } => format!("vocab={vocab} dim={dim}"),
            OpKind::EmbeddingBag { tables } => {
                let rows: u64 = tables.iter().map(|t| t.rows).sum();
                format!("tables={} rows={rows}", tables.len())
            }
            OpKind::Attention {
                heads,
                kv_heads,
                head_dim,
                causal,
                dropout,
            } => format!(
                "heads={heads} kv_heads={kv_heads} head_dim={head_dim}{}{}",
                if *causal { " causal" } else { "" },
                if *dropout > 0.0 {
                    format!(" dropout={}", format_number(*dropout))
                } else {
                    String::new()
                }
            ),
            OpKind::RmsNorm { dim } | OpKind::LayerNorm { dim } => format!("dim={dim}"),
            OpKind::Scale(s) | OpKind::Dropout(s) => format_number(*s),
            OpKind::Mlp { dims, activation } => format!(
                "{} {}",
                dims.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("-"),
                activation.name()
            ),
            OpKind::Interact { vectors, dim } => format!("vectors={vectors} dim={dim}"),
            OpKind::Moe {
                experts,
                top_k,
                d_model,
                d_ff,
            } => format!("experts={experts} top_k={top_k} d_model={d_model} d_ff={d_ff}"),
            OpKind::Concat { axis } => format!("axis={axis}"),
            _ => String::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub kind: OpKind,
    pub inputs: Vec<TensorId>,
    pub output: TensorId,
    /// The call in the source, for later diagnostics.
    pub span: Span,
}

/// A value threaded through a `repeat` body.
#[derive(Clone, Debug, PartialEq)]
pub struct Carry {
    /// The value entering the first iteration.
    pub init: TensorId,
    /// The body's view of the value at the start of an iteration.
    pub param: TensorId,
    /// The value at the end of an iteration.
    pub next: TensorId,
    /// The value after the last iteration.
    pub result: TensorId,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Repeat {
    pub count: u64,
    pub carried: Vec<Carry>,
    pub body: Vec<Item>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Op(Op),
    Repeat(Repeat),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub tensors: Vec<Tensor>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<(String, TensorId)>,
    pub body: Vec<Item>,
}

impl Graph {
    pub fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id.0 as usize]
    }
}

/// A model declaration applied to arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInstance {
    pub name: String,
    pub args: BTreeMap<String, String>,
    pub graph: Graph,
}

// ---------------------------------------------------------------- workloads

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Optimizer {
    Adam,
    AdamW,
    /// Plain SGD: no state.
    Sgd,
    /// SGD with a momentum buffer.
    SgdMomentum,
    Adagrad,
    /// Adam's moments plus a per-tensor trust ratio (You et al. 2019).
    Lamb,
    /// Factored second moment, no first moment (Shazeer and Stern 2018).
    Adafactor,
}

impl Optimizer {
    /// Every optimizer, in the order the language lists them.
    pub const ALL: [Optimizer; 7] = [
        Optimizer::Adam,
        Optimizer::AdamW,
        Optimizer::Sgd,
        Optimizer::SgdMomentum,
        Optimizer::Adagrad,
        Optimizer::Lamb,
        Optimizer::Adafactor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Adam => "adam",
            Optimizer::AdamW => "adamw",
            Optimizer::Sgd => "sgd",
            Optimizer::SgdMomentum => "sgd_momentum",
            Optimizer::Adagrad => "adagrad",
            Optimizer::Lamb => "lamb",
            Optimizer::Adafactor => "adafactor",
        }
    }

    /// The optimizer named `s` in the language.
    pub fn parse(s: &str) -> Option<Optimizer> {
        Optimizer::ALL.into_iter().find(|o| o.name() == s)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    Train {
        global_batch: u64,
        seq: Option<u64>,
        optimizer: Optimizer,
    },
    Prefill {
        batch: u64,
        /// Prompt length; absent for models without a sequence (DLRM).
        prompt: Option<u64>,
    },
    Decode {
        batch: u64,
        /// Tokens already in the KV cache when a step runs (average).
        context: u64,
        /// Tokens generated per request, if stated.
        generate: Option<u64>,
        /// Prompt tokens per request, if stated (its prefill is part of serving).
        prompt: Option<u64>,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Train { .. } => "train",
            Phase::Prefill { .. } => "prefill",
            Phase::Decode { .. } => "decode",
        }
    }
}

/// How the framework runs a workload's kernels and communication: the
/// settings that change its cost but not its mathematics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Kernels {
    /// `attention = fused` (default: FlashAttention-style, scores kept on
    /// chip, causal blocks skipped) or `materialized` (the 2021-era kernels
    /// that write the score matrix to HBM and compute it densely).
    pub fused_attention: bool,
    /// `fusion = compiled` (torch.compile, TensorRT: chains of elementwise
    /// ops run as one kernel), `kernels` (default: one hand-written kernel
    /// per op, as Megatron-LM's fused norms and activations), or `eager`
    /// (PyTorch without compilation: an op written as a composite, such as
    /// RMSNorm or rotary embeddings, runs as its primitive ops, each a
    /// pass over memory).
    pub compiled: bool,
    pub eager: bool,
    /// `precision = { matmul = fp8 }`: the element type of the linear
    /// layers' matrix products when it differs from the workload's
    /// `dtype` (mixed precision as torchao/Transformer Engine do it).
    pub matmul_dtype: Option<DType>,
    /// `overlap = { ... }`: which communication the framework overlaps
    /// with compute (training only).
    pub overlap: Overlap,
    /// `embeddings = { ... }`: how the framework places `embedding_bag`
    /// tables on the devices.
    pub tables: TableSharding,
}

/// How a framework places embedding tables (`embeddings = { placement =
/// ... }`); docs/COST-MODEL.md, "Embedding tables".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableSharding {
    /// `cost_balanced` (default): the costliest lookups first onto the
    /// least loaded device that has room, whole tables, then tables split
    /// by rows until the busiest device is within 10% of the mean (as
    /// TorchRec's planner balances).
    CostBalanced,
    /// `memory_balanced` (NVIDIA distributed-embeddings, the TensorFlow 2
    /// DLRM of DeepLearningExamples): tables of more than `column_slice`
    /// elements are cut by columns into the fewest power-of-two slices
    /// under it (at most one per device and column), and the slices,
    /// largest first, are dealt to the devices back and forth.
    MemoryBalanced { column_slice: Option<u64> },
}

impl Kernels {
    /// A PyTorch-native framework (`fusion = compiled` or `eager`:
    /// torchtitan, FSDP, torch.distributed.pipelining) rather than
    /// Megatron-LM/DeepSpeed's hand-written kernels: it decides how ZeRO-3
    /// groups and types its collectives and how a pipeline receives.
    pub fn pytorch_native(&self) -> bool {
        self.compiled || self.eager
    }
}

impl Default for Kernels {
    fn default() -> Self {
        Kernels {
            fused_attention: true,
            compiled: false,
            eager: false,
            matmul_dtype: None,
            overlap: Overlap::default(),
            tables: TableSharding::CostBalanced,
        }
    }
}

/// Communication hidden behind compute, per mechanism.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Overlap {
    /// `fsdp`: ZeRO-3/FSDP parameter gathers prefetched one layer ahead and
    /// gradient reduce-scatters issued as each layer's backward ends
    /// (default true, FSDP2 and Megatron's distributed optimizer).
    pub fsdp: bool,
    /// `tp`: tensor-parallel collectives decomposed and overlapped with the
    /// matrix products around them (async TP; default false).
    pub tp: bool,
    /// `pp`: pipeline sends and receives overlapped with the next
    /// microbatch's compute (default false).
    pub pp: bool,
}

impl Default for Overlap {
    fn default() -> Self {
        Overlap {
            fsdp: true,
            tp: false,
            pp: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub name: String,
    pub model: ModelInstance,
    pub phase: Phase,
    pub dtype: DType,
    pub kernels: Kernels,
    /// Values of the model's shape symbols for one step (`batch`, `seq`).
    pub bindings: BTreeMap<String, i64>,
    /// The scale `gantry run` simulates the workload at when no plan of it
    /// says (`simulate "layers=2, seq=16, batch=4"`; a plan's `simulate`
    /// keys override these).
    pub simulate: Option<String>,
    pub span: Span,
    /// A `serve` workload's request stream, SLOs and scheduler; its
    /// `phase` is then the decode step at `max_seqs` with the mean lengths
    /// (what the static cost model, studies and the runtime read).
    pub serve: Option<Box<Serve>>,
}

// ---------------------------------------------------------------- serving

/// How requests arrive (`arrivals = ...` of a `serve` workload).
#[derive(Clone, Debug, PartialEq)]
pub enum Arrivals {
    /// Exponential gaps at `rate` requests per second.
    Poisson { rate: f64 },
    /// Gamma-distributed gaps with mean `1 / rate` and coefficient of
    /// variation `cv` (1 is Poisson, above 1 bursty).
    Gamma { rate: f64, cv: f64 },
    /// Rows of a CSV file (arrival time in seconds, input tokens, output
    /// tokens), read by the checker relative to the declaring file
    /// (`crate::trace`): `path` as written, the rows as read.
    Trace {
        path: String,
        rows: std::sync::Arc<Vec<crate::trace::TraceRow>>,
    },
    /// A closed loop of `concurrency` clients (genai-perf's fixed
    /// concurrency): each sends its next request the moment its previous
    /// one completes, so the rate is what the deployment serves.
    Closed { concurrency: u64 },
    /// Every request at time 0 (vLLM `benchmark_serving.py --request-rate
    /// inf`): a batch of `requests`, served as a closed loop with as many
    /// clients as requests.
    Burst,
}

impl Arrivals {
    /// The clients of a closed loop: `concurrency` for `closed(...)`, all
    /// `requests` for a burst (each arrives at 0 and nothing follows) and
    /// for a trace whose arrivals span less than a microsecond (a burst
    /// written as a trace: a rate over no time is none), `None` for
    /// open-loop arrivals.
    pub fn clients(&self, requests: u64) -> Option<u64> {
        match self {
            Arrivals::Closed { concurrency } => Some(*concurrency),
            Arrivals::Burst => Some(requests),
            Arrivals::Trace { rows, .. } => {
                let span = match (rows.first(), rows.last()) {
                    (Some(a), Some(b)) => b.arrival - a.arrival,
                    _ => 0.0,
                };
                (span < 1e-6).then_some(requests)
            }
            _ => None,
        }
    }
}

/// A distribution of token counts per request.
#[derive(Clone, Debug, PartialEq)]
pub enum Lengths {
    Fixed(u64),
    /// Whole numbers from `lo` to `hi` inclusive, equally likely.
    Uniform {
        lo: u64,
        hi: u64,
    },
    /// A lognormal with this mean and `spread` (the standard deviation of
    /// the logarithm), rounded, at least 1.
    LogNormal {
        mean: f64,
        spread: f64,
    },
    /// The lengths of the trace's rows.
    Trace,
    /// A file's column replayed in order (`trace("file.csv")`): request
    /// `i` takes row `i` (from the first again past the last), whatever
    /// the arrivals. `path` as written; the rows as the checker read them.
    Replay {
        path: String,
        rows: std::sync::Arc<Vec<u32>>,
    },
}

impl Lengths {
    /// The mean token count (the trace's is not known to the checker: 1;
    /// a replayed file's is its rows' mean).
    pub fn mean(&self) -> f64 {
        match self {
            Lengths::Fixed(n) => *n as f64,
            Lengths::Uniform { lo, hi } => (*lo as f64 + *hi as f64) / 2.0,
            Lengths::LogNormal { mean, .. } => *mean,
            Lengths::Trace => 1.0,
            Lengths::Replay { rows, .. } => {
                rows.iter().map(|&n| n as f64).sum::<f64>() / rows.len().max(1) as f64
            }
        }
    }
}

/// Latency targets at the 99th percentile, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slo {
    pub ttft_p99: f64,
    pub tpot_p99: f64,
    pub e2e_p99: Option<f64>,
}

/// The serving engine's iteration-level scheduler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scheduler {
    /// Tokens one iteration may process (prefill chunks plus one per decode).
    pub token_budget: u64,
    /// Sequences running at once per replica.
    pub max_seqs: u64,
    pub chunked_prefill: bool,
    /// Tokens per KV-cache block (paged attention).
    pub kv_block: u64,
    /// The scheduler forms iteration `k + 1` while iteration `k` runs
    /// (vLLM's async scheduling): a request that arrives during a running
    /// iteration joins the one after next.
    pub async_scheduling: bool,
}

/// A batching window (`batching = batch_window(max_batch = 512, max_wait = 2
/// ms)`): requests served whole in batched forward passes, as
/// recommendation inference servers do (one pass scores a batch of
/// samples; no prefill/decode split, no KV cache). A replica starts a
/// batch when `max_batch` items wait or the oldest has waited `max_wait`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Batching {
    /// Items (samples scored) one forward pass takes at most.
    pub max_batch: u64,
    /// The longest the oldest waiting request is held for a fuller batch,
    /// seconds; the planner tries this and shorter windows.
    pub max_wait: f64,
}

/// Whether the planner may split prefill and decode into separate pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disaggregate {
    Auto,
    Yes,
    No,
}

/// A `serve` workload's settings (docs/LANGUAGE.md §5.7).
#[derive(Clone, Debug, PartialEq)]
pub struct Serve {
    pub arrivals: Arrivals,
    pub input: Lengths,
    pub output: Lengths,
    pub slo: Slo,
    /// Share of requests that must meet every SLO, in (0, 1].
    pub attainment: f64,
    pub scheduler: Scheduler,
    /// Share of each prompt found in the prefix cache, in [0, 1).
    pub prefix_hit: f64,
    /// Share of each device's HBM the server may use, in (0, 1] (vLLM's
    /// `--gpu-memory-utilization`): the KV cache gets what this share
    /// leaves after the weights and activations. 1: the whole HBM.
    pub memory_utilization: f64,
    /// Requests simulated per configuration.
    pub requests: u64,
    pub seed: u64,
    pub disaggregate: Disaggregate,
    /// A batching window: requests are scored whole in batches (`prompt`
    /// is the items per request, `generate` 1, every SLO the request
    /// latency). `None`: LLM continuous batching.
    pub batching: Option<Batching>,
    /// The serving engine the workload runs on (`engine = vLLM_0_8`):
    /// its host time and decode-attention efficiency reach the iteration
    /// model (docs/COST-MODEL.md §4a). `None`: an ideal engine (no host
    /// time, the device's kernels).
    pub engine: Option<Engine>,
    /// The serving runs this server made before this one, oldest first
    /// (`after = NAME`: NAME's own chain, then NAME; each with an empty
    /// `after`). Their requests are simulated first on this workload's
    /// deployment, unmeasured; with them each replica keeps a prefix cache
    /// of the prompts it served, request `i` of every run being the same
    /// prompt (a benchmark re-run on one server: same dataset, same seed).
    /// Empty: a cold server, and no cache by prompt.
    pub after: Vec<Serve>,
    /// A multi-turn dataset (`conversations = N, turns = K`): `prompt` is
    /// each turn's user message and `generate` its answer; turn `k`'s
    /// request sends the conversation's opening document (if any), the
    /// first `k - 1` turns' messages and answers, and its own message.
    /// The requests are drawn without replacement from the `N x K`
    /// entries in a seeded shuffle. Each replica then keeps a prefix
    /// cache by document and conversation, whose blocks running requests
    /// share. `None`: every request is its own prompt.
    pub conversations: Option<Conversations>,
    pub span: Span,
}

/// A dataset of conversations with accumulated history (`conversations =
/// 100, turns = 5`): entry `(c, k)` is conversation `c`'s first `k` turns.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversations {
    pub count: u64,
    pub turns: u64,
    /// `documents = M, document = LENGTHS`: each conversation opens with
    /// one of `M` shared documents (drawn uniformly), of these lengths.
    pub documents: Option<(u64, Lengths)>,
}

/// A serving engine (`engine NAME { ... }`): the software between the
/// requests and the device, as fitted by `gantry calibrate --fit` on the
/// serving reference rows that declare it. Every term defaults to an
/// ideal engine, so a workload without one is priced as before.
#[derive(Clone, Debug, PartialEq)]
pub struct Engine {
    pub name: String,
    /// Host time of every iteration (scheduling, batch assembly, the
    /// Python around the forward pass), in seconds.
    pub iteration_overhead: f64,
    /// Host time per scheduled sequence per iteration (sampling,
    /// detokenisation, bookkeeping), in seconds.
    pub seq_overhead: f64,
    /// The engine's decode-attention (KV-cache read) speed relative to the
    /// device's `infer` factors, in (0, 1]: the per-KV-token attention
    /// time is divided by it.
    pub kv_efficiency: f64,
    /// Seconds from a request's arrival to the engine's scheduler (the
    /// API server's HTTP handling, tokenisation and hand-off), paid once
    /// per request before it can be scheduled.
    pub request_overhead: f64,
    /// Seconds the front end (the API server's one process) is busy with
    /// each request; requests take turns, so a burst queues there before
    /// `request_overhead`.
    pub frontend_time: f64,
    /// The terms the engine declares (the others are the ideal defaults):
    /// what the fit fits.
    pub declared: Vec<String>,
    /// What the fit recorded: rows (plans) fitted on and the leave-one-out
    /// |relative error| median and worst.
    pub fit_rows: Option<u64>,
    pub loo: Option<(f64, f64)>,
    pub span: Span,
}

impl Engine {
    /// The ideal engine: no host time, the device's kernels.
    pub fn ideal(name: &str) -> Engine {
        Engine {
            name: name.to_string(),
            iteration_overhead: 0.0,
            seq_overhead: 0.0,
            kv_efficiency: 1.0,
            request_overhead: 0.0,
            frontend_time: 0.0,
            declared: Vec::new(),
            fit_rows: None,
            loo: None,
            span: Span::new(0, 0),
        }
    }
}

// ---------------------------------------------------------------- plans

/// Which values a plan knob may take.
#[derive(Clone, Debug, PartialEq)]
pub enum Domain {
    /// Let the planner choose freely.
    Auto,
    Ints(Vec<i64>),
    IntRange(i64, i64),
    Choices(Vec<String>),
    Bools(Vec<bool>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    Maximize,
    Minimize,
}

/// A metric expression in an objective or constraint, dimension-checked.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricExpr {
    Const(Quantity),
    Metric(String),
    Neg(Box<MetricExpr>),
    Binary(char, Box<MetricExpr>, Box<MetricExpr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    pub lhs: MetricExpr,
    pub cmp: Cmp,
    pub rhs: MetricExpr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub name: String,
    pub system: Cluster,
    pub workload: Workload,
    pub search: BTreeMap<String, Domain>,
    pub fixed: BTreeMap<String, Domain>,
    pub objective: (Goal, String),
    pub constraints: Vec<Constraint>,
    /// Published figures this plan is expected to reproduce (`expect`).
    pub expect: BTreeMap<String, Quantity>,
    /// How far a prediction may lie from each `expect` before `gantry
    /// test` fails it (`tolerance`).
    pub tolerance: Tolerance,
    pub source: Option<String>,
    /// The small scale `gantry run` instantiates the workload at
    /// (`simulate "layers=2, d_model=256, seq=16, batch=4"`, the syntax of
    /// `--scale`, whose keys override it).
    pub simulate: Option<String>,
    /// The framework the plan is for (`target "megatron"`): the search
    /// proposes only points that framework runs (one of [`TARGETS`]).
    pub target: Option<String>,
    pub span: Span,
}

/// The relative tolerances of a plan's or study's `expect` figures:
/// `tolerance = 0.1` for every figure, `tolerance step_time = 0.05` for
/// one (which wins). Fractions in (0, 1].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tolerance {
    pub all: Option<f64>,
    pub per: BTreeMap<String, f64>,
}

impl Tolerance {
    /// The stated tolerance of `metric`, if any.
    pub fn of(&self, metric: &str) -> Option<f64> {
        self.per.get(metric).copied().or(self.all)
    }
}

/// The pooled-fleet figures a study's `expect` may name: `cost` (a price
/// rate, e.g. `$150/h`), `power` (facility power at the modelled
/// utilisation) and `devices`.
pub const STUDY_METRICS: &[&str] = &["cost", "power", "devices"];

/// The frameworks a plan may declare as its `target` (the export names).
pub const TARGETS: &[&str] = &["megatron", "torchtitan", "torchrec", "trace"];

#[derive(Clone, Debug, PartialEq)]
pub struct Study {
    pub name: String,
    /// One system per point of the declared sweep.
    pub systems: Vec<Cluster>,
    pub workloads: Vec<(Workload, f64)>,
    pub search: BTreeMap<String, Domain>,
    /// Knobs pinned to one value for every system and workload (`fix`).
    pub fixed: BTreeMap<String, Domain>,
    pub objective: (Goal, String),
    pub constraints: Vec<Constraint>,
    /// Figures of the pooled fleet the study is expected to reproduce
    /// (`expect cost = ...`, `power`, `devices`; [`STUDY_METRICS`]).
    pub expect: BTreeMap<String, Quantity>,
    /// How far each fleet figure may lie from its `expect` (`tolerance`).
    pub tolerance: Tolerance,
    pub source: Option<String>,
    /// The facility (`site { ... }`): what energy costs and what limits
    /// the fleet. Required with `demand`.
    pub site: Option<Site>,
    /// What each workload must deliver (`demand { ... }`); empty for a
    /// weighted-mix study.
    pub demand: Vec<Demand>,
    pub span: Span,
}

/// A study's facility (docs/LANGUAGE.md §5.9, `site`).
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    /// Power usage effectiveness: facility power over IT power (>= 1).
    pub pue: f64,
    /// Dollars per joule (written `$0.08/kWh`).
    pub energy_price: f64,
    /// The site's power limit in watts (facility power, at full load).
    pub power_cap: Option<f64>,
    /// The power one rack may draw, watts.
    pub rack_power: Option<f64>,
    /// Bandwidth of the checkpoint store, bytes per second.
    pub storage: Option<f64>,
    /// Seconds from a failure to training again (detection, rescheduling,
    /// loading the checkpoint).
    pub restart: Option<f64>,
    pub span: Span,
}

/// What one workload of a study must deliver.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    pub workload: String,
    pub kind: DemandKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DemandKind {
    /// `tokens` (or `samples`, when `tokens` is false) of work to finish
    /// `within` seconds.
    Total {
        amount: f64,
        tokens: bool,
        within: f64,
    },
    /// A sustained rate: tokens (or samples) per second.
    Rate { per_s: f64, tokens: bool },
    /// A `serve` workload's requests per second, under its own SLOs.
    Requests { per_s: f64 },
}

impl DemandKind {
    /// The throughput the pool must sustain, in the workload's unit per
    /// second (requests for `Requests`).
    pub fn rate(&self) -> f64 {
        match *self {
            DemandKind::Total { amount, within, .. } => amount / within,
            DemandKind::Rate { per_s, .. } | DemandKind::Requests { per_s } => per_s,
        }
    }
    /// `tokens`, `samples` or `requests`.
    pub fn unit(&self) -> &'static str {
        match *self {
            DemandKind::Total { tokens: true, .. } | DemandKind::Rate { tokens: true, .. } => {
                "tokens"
            }
            DemandKind::Requests { .. } => "requests",
            _ => "samples",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Program {
    pub devices: BTreeMap<String, Device>,
    /// Serving engines (`engine NAME { ... }`).
    pub engines: BTreeMap<String, Engine>,
    pub nodes: BTreeMap<String, Node>,
    pub clusters: BTreeMap<String, Cluster>,
    pub workloads: BTreeMap<String, Workload>,
    pub plans: BTreeMap<String, Plan>,
    pub studies: BTreeMap<String, Study>,
    pub constants: BTreeMap<String, Quantity>,
}

fn q(v: f64, d: Dim) -> String {
    Quantity::new(v, d).to_string()
}

impl Program {
    /// A stable, human-readable dump (used by snapshots and `gantry check -v`).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (n, v) in &self.constants {
            let _ = writeln!(s, "let {n} = {v}");
        }
        for d in self.devices.values() {
            write_device(&mut s, d, "");
        }
        for n in self.nodes.values() {
            write_node(&mut s, n, "");
        }
        for e in self.engines.values() {
            write_engine(&mut s, e);
        }
        for c in self.clusters.values() {
            write_cluster(&mut s, c);
        }
        for w in self.workloads.values() {
            write_workload(&mut s, w);
        }
        for p in self.plans.values() {
            let _ = writeln!(
                s,
                "plan {} on {} ({} devices) for {}",
                p.name,
                p.system.name,
                p.system.devices(),
                p.workload.name
            );
            write_search(&mut s, &p.search, &p.fixed, &p.objective, &p.constraints);
            if let Some(t) = &p.target {
                let _ = writeln!(s, "  target {t:?}");
            }
            write_expect(&mut s, &p.expect, &p.tolerance, &p.source);
        }
        for st in self.studies.values() {
            let _ = writeln!(s, "study {} over {} systems", st.name, st.systems.len());
            for c in &st.systems {
                let _ = writeln!(s, "  system {} ({} devices)", c.name, c.devices());
            }
            for (w, weight) in &st.workloads {
                let _ = writeln!(s, "  workload {} weight {}", w.name, format_number(*weight));
            }
            write_search(
                &mut s,
                &st.search,
                &st.fixed,
                &st.objective,
                &st.constraints,
            );
            write_expect(&mut s, &st.expect, &st.tolerance, &st.source);
            write_site(&mut s, st);
        }
        s
    }
}

fn write_site(s: &mut String, st: &Study) {
    if let Some(site) = &st.site {
        let _ = writeln!(
            s,
            "  site pue {} energy {}",
            format_number(site.pue),
            q(site.energy_price, Dim::ENERGY_PRICE)
        );
        let opt = [
            ("power_cap", site.power_cap, Dim::POWER),
            ("rack_power", site.rack_power, Dim::POWER),
            ("storage", site.storage, Dim::BANDWIDTH),
            ("restart", site.restart, Dim::TIME),
        ];
        for (k, v, d) in opt {
            if let Some(v) = v {
                let _ = writeln!(s, "  site {k} {}", q(v, d));
            }
        }
    }
    for d in &st.demand {
        let what = match d.kind {
            DemandKind::Total { amount, within, .. } => format!(
                "{} {} within {}",
                format_number(amount),
                d.kind.unit(),
                q(within, Dim::TIME)
            ),
            k => format!("{} {}/s", format_number(k.rate()), k.unit()),
        };
        let _ = writeln!(s, "  demand {} {what}", d.workload);
    }
}

fn write_search(
    s: &mut String,
    search: &BTreeMap<String, Domain>,
    fixed: &BTreeMap<String, Domain>,
    objective: &(Goal, String),
    constraints: &[Constraint],
) {
    for (k, d) in search {
        let _ = writeln!(s, "  search {k} in {}", domain(d));
    }
    for (k, d) in fixed {
        let _ = writeln!(s, "  fix {k} = {}", pinned(d));
    }
    let _ = writeln!(s, "  objective {} {}", goal(objective.0), objective.1);
    for c in constraints {
        let _ = writeln!(s, "  subject to {}", constraint(c));
    }
}

fn write_expect(
    s: &mut String,
    expect: &BTreeMap<String, Quantity>,
    tolerance: &Tolerance,
    source: &Option<String>,
) {
    for (k, v) in expect {
        let _ = writeln!(s, "  expect {k} = {v}");
    }
    if let Some(t) = tolerance.all {
        let _ = writeln!(s, "  tolerance = {}", format_number(t));
    }
    for (k, t) in &tolerance.per {
        let _ = writeln!(s, "  tolerance {k} = {}", format_number(*t));
    }
    if let Some(src) = source {
        let _ = writeln!(s, "  source {src:?}");
    }
}

fn goal(g: Goal) -> &'static str {
    match g {
        Goal::Maximize => "maximize",
        Goal::Minimize => "minimize",
    }
}

fn domain(d: &Domain) -> String {
    match d {
        Domain::Auto => "auto".into(),
        Domain::Ints(v) => format!(
            "{{{}}}",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Domain::IntRange(a, b) => format!("{a}..{b}"),
        Domain::Choices(v) => format!("{{{}}}", v.join(", ")),
        Domain::Bools(v) => format!(
            "{{{}}}",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A `fix` domain holds one value; print it bare (`8`, not `{8}`).
fn pinned(d: &Domain) -> String {
    match d {
        Domain::Ints(v) if v.len() == 1 => v[0].to_string(),
        Domain::Choices(v) if v.len() == 1 => v[0].clone(),
        Domain::Bools(v) if v.len() == 1 => v[0].to_string(),
        other => domain(other),
    }
}

fn metric_expr(m: &MetricExpr) -> String {
    match m {
        MetricExpr::Const(q) => q.to_string(),
        MetricExpr::Metric(n) => n.clone(),
        MetricExpr::Neg(a) => format!("-{}", metric_expr(a)),
        MetricExpr::Binary(op, a, b) => format!("({} {op} {})", metric_expr(a), metric_expr(b)),
    }
}

fn constraint(c: &Constraint) -> String {
    let op = match c.cmp {
        Cmp::Lt => "<",
        Cmp::Le => "<=",
        Cmp::Gt => ">",
        Cmp::Ge => ">=",
    };
    format!("{} {op} {}", metric_expr(&c.lhs), metric_expr(&c.rhs))
}

fn write_device(s: &mut String, d: &Device, indent: &str) {
    let _ = writeln!(s, "{indent}device {}", d.name);
    for (dt, f) in &d.compute {
        let _ = writeln!(
            s,
            "{indent}  compute {} = {}",
            dt.name(),
            q(*f, Dim::FLOP_RATE)
        );
    }
    for m in &d.memories {
        let _ = writeln!(
            s,
            "{indent}  memory {} = {} @ {}",
            m.name,
            q(m.capacity, Dim::BYTES),
            q(m.bandwidth, Dim::BANDWIDTH)
        );
    }
    let _ = writeln!(s, "{indent}  power {}", q(d.power, Dim::POWER));
    if let Some(c) = d.cores {
        let _ = writeln!(s, "{indent}  cores {c}");
    }
    if let Some(r) = d.sfu {
        let _ = writeln!(s, "{indent}  sfu {}", q(r, Dim::FLOP_RATE));
    }
    if let Some(p) = d.price {
        let _ = writeln!(s, "{indent}  price {}", q(p, Dim::PRICE_RATE));
    }
    for (k, v) in &d.efficiency {
        let _ = writeln!(s, "{indent}  efficiency {k} = {v}");
    }
    for (phase, from) in &d.borrowed {
        let _ = writeln!(s, "{indent}  efficiency {phase} borrowed from {from}");
    }
    write_own(s, &d.own, indent);
}

fn write_own(s: &mut String, o: &Ownership, indent: &str) {
    if let Some(p) = o.purchase {
        let _ = writeln!(s, "{indent}  purchase {}", q(p, Dim::MONEY));
    }
    if let Some(t) = o.amortization {
        let _ = writeln!(s, "{indent}  amortization {}", q(t, Dim::TIME));
    }
    if let Some(p) = o.idle_power {
        let _ = writeln!(s, "{indent}  idle_power {}", q(p, Dim::POWER));
    }
    if let Some(t) = o.mtbf {
        let _ = writeln!(s, "{indent}  mtbf {}", q(t, Dim::TIME));
    }
}

fn write_node(s: &mut String, n: &Node, indent: &str) {
    let _ = writeln!(
        s,
        "{indent}node {} = {} x {}",
        n.name, n.device.name, n.devices_per_node
    );
    for l in &n.links {
        let _ = writeln!(
            s,
            "{indent}  link {} {:?} {} latency {} launch {}",
            l.name,
            l.kind,
            q(l.bandwidth, Dim::BANDWIDTH),
            q(l.latency, Dim::TIME),
            q(l.launch, Dim::TIME)
        );
    }
    if n.nics > 0 {
        let _ = writeln!(
            s,
            "{indent}  nic {} x {}",
            q(n.nic_bandwidth, Dim::BANDWIDTH),
            n.nics
        );
    }
    if let Some(h) = &n.host_memory {
        let _ = writeln!(
            s,
            "{indent}  host {} @ {}",
            q(h.capacity, Dim::BYTES),
            q(h.bandwidth, Dim::BANDWIDTH)
        );
    }
    if n.power_overhead > 0.0 {
        let _ = writeln!(
            s,
            "{indent}  power overhead {}",
            q(n.power_overhead, Dim::POWER)
        );
    }
    if let Some(p) = n.price {
        let _ = writeln!(s, "{indent}  price {}", q(p, Dim::PRICE_RATE));
    }
    write_own(s, &n.own, indent);
}

fn write_cluster(s: &mut String, c: &Cluster) {
    let _ = writeln!(
        s,
        "cluster {} = {} x {} ({} devices)",
        c.name,
        c.node.name,
        c.nodes,
        c.devices()
    );
    if let Some(f) = &c.fabric {
        let _ = writeln!(
            s,
            "  fabric {} {:?} {} latency {} rack {} pod {} oversubscription {}",
            f.name,
            f.kind,
            q(f.bandwidth, Dim::BANDWIDTH),
            q(f.latency, Dim::TIME),
            f.rack_nodes,
            f.pod_nodes,
            format_number(f.oversubscription)
        );
    }
}

fn serve_summary(sv: &Serve) -> String {
    let lens = |l: &Lengths| match l {
        Lengths::Fixed(n) => format!("fixed({n})"),
        Lengths::Uniform { lo, hi } => format!("uniform({lo}, {hi})"),
        Lengths::LogNormal { mean, spread } => format!(
            "lognormal(mean={}, spread={})",
            format_number(*mean),
            format_number(*spread)
        ),
        Lengths::Trace => "trace".to_string(),
        Lengths::Replay { path, rows } => format!(
            "trace({path:?}: {} rows, mean {})",
            rows.len(),
            format_number(l.mean())
        ),
    };
    let arrivals = match &sv.arrivals {
        Arrivals::Poisson { rate } => format!("poisson(rate={})", format_number(*rate)),
        Arrivals::Gamma { rate, cv } => format!(
            "gamma(rate={}, cv={})",
            format_number(*rate),
            format_number(*cv)
        ),
        Arrivals::Trace { path, rows } => format!("trace({path:?}: {} rows)", rows.len()),
        Arrivals::Closed { concurrency } => format!("closed(concurrency={concurrency})"),
        Arrivals::Burst => "burst()".to_string(),
    };
    let k = &sv.scheduler;
    format!(
        "arrivals={arrivals} prompt={} generate={} ttft_p99={} tpot_p99={}{} attainment={} token_budget={} max_seqs={} chunked_prefill={} kv_block={}{} prefix_hit={}{} requests={} seed={} disaggregate={}{}",
        lens(&sv.input),
        lens(&sv.output),
        q(sv.slo.ttft_p99, Dim::TIME),
        q(sv.slo.tpot_p99, Dim::TIME),
        sv.slo
            .e2e_p99
            .map(|e| format!(" e2e_p99={}", q(e, Dim::TIME)))
            .unwrap_or_default(),
        format_number(sv.attainment),
        k.token_budget,
        k.max_seqs,
        k.chunked_prefill,
        k.kv_block,
        if k.async_scheduling {
            " async_scheduling=true"
        } else {
            ""
        },
        format_number(sv.prefix_hit),
        if sv.memory_utilization < 1.0 {
            format!(
                " memory_utilization={}",
                format_number(sv.memory_utilization)
            )
        } else {
            String::new()
        },
        sv.requests,
        sv.seed,
        match sv.disaggregate {
            Disaggregate::Auto => "auto",
            Disaggregate::Yes => "true",
            Disaggregate::No => "false",
        },
        sv.batching
            .map(|b| format!(
                " batching=batch_window(max_batch={}, max_wait={})",
                b.max_batch,
                q(b.max_wait, Dim::TIME)
            ))
            .unwrap_or_default()
    ) + &sv
        .conversations
        .as_ref()
        .map(|c| {
            format!(" conversations={} turns={}", c.count, c.turns)
                + &c.documents
                    .as_ref()
                    .map(|(m, l)| format!(" documents={m} document={}", lens(l)))
                    .unwrap_or_default()
        })
        .unwrap_or_default()
        + &sv
            .engine
            .as_ref()
            .map(|e| format!(" engine={}", e.name))
            .unwrap_or_default()
}

fn write_engine(s: &mut String, e: &Engine) {
    let _ = writeln!(
        s,
        "engine {}: iteration_overhead {} seq_overhead {} kv_efficiency {}{}{}{}",
        e.name,
        q(e.iteration_overhead, Dim::TIME),
        q(e.seq_overhead, Dim::TIME),
        format_number(e.kv_efficiency),
        if e.request_overhead > 0.0 {
            format!(" request_overhead {}", q(e.request_overhead, Dim::TIME))
        } else {
            String::new()
        },
        if e.frontend_time > 0.0 {
            format!(" frontend_time {}", q(e.frontend_time, Dim::TIME))
        } else {
            String::new()
        },
        match (e.fit_rows, e.loo) {
            (Some(n), Some((m, x))) => format!(
                " (fit on {n} rows, leave-one-out {} / {})",
                format_number(m),
                format_number(x)
            ),
            (Some(n), None) => format!(" (fit on {n} rows)"),
            _ => String::new(),
        }
    );
}

fn write_workload(s: &mut String, w: &Workload) {
    let args: Vec<String> = w
        .model
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        s,
        "workload {} = {}({})",
        w.name,
        w.model.name,
        args.join(", ")
    );
    let phase = match &w.phase {
        Phase::Train {
            global_batch,
            seq,
            optimizer,
        } => format!(
            "train global_batch={global_batch}{} optimizer={}",
            seq.map(|s| format!(" seq={s}")).unwrap_or_default(),
            optimizer.name()
        ),
        Phase::Prefill { batch, prompt } => format!(
            "prefill batch={batch}{}",
            prompt.map(|p| format!(" prompt={p}")).unwrap_or_default()
        ),
        Phase::Decode {
            batch,
            context,
            generate,
            prompt,
        } => format!(
            "decode batch={batch} context={context}{}{}",
            prompt.map(|p| format!(" prompt={p}")).unwrap_or_default(),
            generate
                .map(|g| format!(" generate={g}"))
                .unwrap_or_default()
        ),
    };
    if let Some(sv) = &w.serve {
        let _ = writeln!(s, "  serve {}", serve_summary(sv));
    }
    let binds: Vec<String> = w.bindings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        s,
        "  {phase} dtype={} bind {}",
        w.dtype.name(),
        binds.join(" ")
    );
    // Kernel settings, where they differ from the defaults.
    let k = &w.kernels;
    let d = Kernels::default();
    let mut ks = Vec::new();
    if k.fused_attention != d.fused_attention {
        ks.push("attention=materialized".to_string());
    }
    if k.compiled {
        ks.push("fusion=compiled".to_string());
    }
    if k.eager {
        ks.push("fusion=eager".to_string());
    }
    if let Some(m) = k.matmul_dtype {
        ks.push(format!("precision.matmul={}", m.name()));
    }
    if let TableSharding::MemoryBalanced { column_slice } = k.tables {
        ks.push(match column_slice {
            Some(n) => format!("embeddings.placement=memory_balanced column_slice={n}"),
            None => "embeddings.placement=memory_balanced".to_string(),
        });
    }
    for (name, on, default) in [
        ("fsdp", k.overlap.fsdp, d.overlap.fsdp),
        ("tp", k.overlap.tp, d.overlap.tp),
        ("pp", k.overlap.pp, d.overlap.pp),
    ] {
        if on != default {
            ks.push(format!("overlap.{name}={on}"));
        }
    }
    if !ks.is_empty() {
        let _ = writeln!(s, "  kernels {}", ks.join(" "));
    }
    let g = &w.model.graph;
    for i in &g.inputs {
        let t = g.tensor(*i);
        let _ = writeln!(s, "  input {}: {}{}", t.name, t.dtype.name(), t.shape);
    }
    write_items(s, g, &g.body, "  ");
    for (n, t) in &g.outputs {
        let _ = writeln!(s, "  output {n} = %{}", t.0);
    }
}

fn write_items(s: &mut String, g: &Graph, items: &[Item], indent: &str) {
    for it in items {
        match it {
            Item::Op(op) => {
                let ins: Vec<String> = op.inputs.iter().map(|i| format!("%{}", i.0)).collect();
                let out = g.tensor(op.output);
                let attrs = op.kind.attrs();
                let _ = writeln!(
                    s,
                    "{indent}%{} = {}({}){}{} : {}{}",
                    op.output.0,
                    op.kind.name(),
                    ins.join(", "),
                    if attrs.is_empty() { "" } else { " " },
                    attrs,
                    out.dtype.name(),
                    out.shape
                );
            }
            Item::Repeat(r) => {
                let carried: Vec<String> = r
                    .carried
                    .iter()
                    .map(|c| {
                        format!(
                            "%{}=%{}->%{}->%{}",
                            c.param.0, c.init.0, c.next.0, c.result.0
                        )
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "{indent}repeat {} carry {} {{",
                    r.count,
                    carried.join(" ")
                );
                write_items(s, g, &r.body, &format!("{indent}  "));
                let _ = writeln!(s, "{indent}}}");
            }
        }
    }
}
