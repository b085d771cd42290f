//! The parallel layout a run executes ([`Parallel`]) and its checks.
//!
//! Kept apart from the executor because it is the runtime's public
//! contract with the planner and the CLI: a design point becomes a
//! `Parallel` ([`Parallel::from_point`], [`Parallel::with_tables`]), is
//! checked against the workload's graph ([`validate`], R002/R003) and
//! described in one line ([`describe`]) without simulating anything.

use gantry_compiler::point::DesignPoint;
use gantry_lang::program::{OpKind, Workload};

use super::pipeline::pipelined_repeat;
use super::schedule::even_split;
use crate::error::{RuntimeError, mismatch, unsupported};
use crate::graph::{self};

/// The parallel layout the executor runs: the design point's degrees,
/// the microbatch size and the layers of each pipeline stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parallel {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
    pub ep: usize,
    /// Context parallelism: every sample's sequence is cut into `cp`
    /// contiguous chunks, one per rank; attention gathers keys and values.
    pub cp: usize,
    /// Virtual pipeline stages (model chunks) per device: Megatron's
    /// interleaved 1F1B schedule ([`schedule`](super::schedule::schedule)).
    pub vp: usize,
    pub microbatch: usize,
    /// Layers of each (physical) pipeline stage; with `vp > 1` each
    /// stage's layers are cut into `vp` chunks ([`chunk_layers`](super::chunk_layers)).
    pub stage_layers: Vec<usize>,
    /// Sequence parallelism (with `tp > 1`): row-parallel linears
    /// reduce-scatter rows instead of all-reducing, and the row-wise ops
    /// after them (norms, elementwise, residuals) run on the local rows;
    /// the rows are all-gathered before any other op reads them.
    pub sp: bool,
    /// Contraction forms (by output tensor) the plan's extracted program
    /// pins: whole on every tensor-parallel rank, or a linear column- or
    /// row-parallel whatever its input's layout (`sharded::Mesh::forms`).
    pub forms: gantry_compiler::sharded::Forms,
    /// ZeRO stage: with `zero >= 1` the optimizer state of a block shared
    /// by `R` devices is cut into `R` parts, one per device, and the step
    /// all-gathers the updated parts (see [`crate::optim`]).
    pub zero: u8,
    /// How each `embedding_bag` table is sharded over the devices of a
    /// stage, in table order (the planner's placement); tables past the
    /// end are table-wise on device `table mod devices`.
    pub tables: Vec<TableShard>,
    /// Per table (same order), the column slices of a
    /// [`TableShard::Column`] table: `(rank, columns)`, the rank as the
    /// placement gives it (a device of the stage is `rank mod` the stage's
    /// devices, as for [`TableShard::Table`]); empty for other tables.
    /// [`column_slices`] maps them onto a stage.
    pub column_slices: Vec<Vec<(usize, std::ops::Range<usize>)>>,
    /// Model-parallel input (`embeddings = { placement = memory_balanced
    /// }`, NVIDIA distributed-embeddings): each device's loader reads the
    /// ids of the tables it serves for every sample of the stage, so no
    /// id crosses the network. The simulation still hands them over
    /// through the endpoint, as traffic labelled `input` (the loader's
    /// read), not `embedding ids` (TorchRec's input all-to-all).
    pub model_parallel_input: bool,
}

/// The sharding of one embedding table over the devices of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableShard {
    /// Held whole by one device (its index in the stage); lookups go to it
    /// by all-to-all and pooled vectors come back.
    Table(usize),
    /// Rows cut into contiguous blocks, one per device; every device pools
    /// the rows it holds and the requester sums the partial vectors.
    Row,
    /// Every device holds the table (data-parallel, or in host memory that
    /// every device reads) and looks up its own samples; gradients are
    /// summed over the replicas.
    Replicated,
    /// Columns cut into slices, each held by one device (the ranges are
    /// in [`Parallel::column_slices`]); a device pools the columns it
    /// holds (every row of them) and sends those columns back, which the
    /// requester puts in place (summing, as for [`TableShard::Row`]).
    Column,
}

impl Default for Parallel {
    /// One device, one microbatch of one sample.
    fn default() -> Parallel {
        Parallel {
            dp: 1,
            tp: 1,
            pp: 1,
            ep: 1,
            cp: 1,
            vp: 1,
            microbatch: 1,
            stage_layers: Vec::new(),
            sp: false,
            forms: Default::default(),
            zero: 0,
            tables: Vec::new(),
            column_slices: Vec::new(),
            model_parallel_input: false,
        }
    }
}

impl Parallel {
    pub fn devices(&self) -> usize {
        self.dp * self.cp * self.tp * self.pp
    }

    /// The layout of a design point for `workload`. Stage layer counts
    /// come from `stage_layers` (the cost model's split) when they cover
    /// the pipelined `repeat` exactly, else the layers are split evenly.
    /// `recompute` changes what is kept, not what is computed, and is
    /// ignored; `zero` is executed by the optimizer step.
    pub fn from_point(
        p: &DesignPoint,
        workload: &Workload,
        stage_layers: &[u64],
    ) -> Result<Parallel, RuntimeError> {
        if p.replicas() > 1 {
            return Err(crate::error::unsupported(format!(
                "shard = {} of dp x cp = {} ranks (HSDP): the runtime shards ZeRO state over every data x context parallel rank",
                p.shard,
                p.dp * p.cp
            )));
        }
        let layers =
            pipelined_repeat(&workload.model.graph.body).map_or(0, |(_, r)| r.count as usize);
        let pp = p.pp as usize;
        let given: Vec<usize> = stage_layers.iter().map(|x| *x as usize).collect();
        let stage_layers = if given.len() == pp
            && given.iter().sum::<usize>() == layers
            && given.iter().all(|x| *x > 0)
        {
            given
        } else {
            even_split(layers, pp)
        };
        let batch = workload.bindings.get("batch").copied().unwrap_or(1).max(1) as usize;
        let per_replica = batch / (p.dp as usize).max(1);
        // Serving without a pipeline runs the whole per-replica batch at once.
        let microbatch =
            if pp == 1 && !matches!(workload.phase, gantry_lang::program::Phase::Train { .. }) {
                // (A batch smaller than dp is reported by `validate`.)
                per_replica.max(1)
            } else {
                p.microbatch as usize
            };
        Ok(Parallel {
            dp: p.dp as usize,
            tp: p.tp as usize,
            pp,
            ep: p.ep as usize,
            cp: p.cp as usize,
            vp: p.virtual_stages.max(1) as usize,
            microbatch,
            stage_layers,
            sp: p.sequence_parallel,
            // Set by the caller from the plan's extraction.
            forms: Default::default(),
            zero: p.zero,
            tables: Vec::new(),
            column_slices: Vec::new(),
            model_parallel_input: matches!(
                workload.kernels.tables,
                gantry_lang::program::TableSharding::MemoryBalanced { .. }
            ),
        })
    }
}

impl Parallel {
    /// The traffic label of the ids sent to the devices serving their
    /// tables: `input` under model-parallel input (each server's loader
    /// reads them on the system), else `embedding ids`.
    pub fn ids_label(&self) -> &'static str {
        if self.model_parallel_input {
            "input"
        } else {
            "embedding ids"
        }
    }

    /// The planner's embedding-table placement
    /// ([`gantry_compiler::placement::tables`]) as shardings of the
    /// workload's `embedding_bag` tables, matched by name: table-wise on
    /// the given device, row-wise, column-wise (every `column_wise` entry
    /// of the table is one slice, [`Parallel::column_slices`]), or
    /// replicated for tables kept in host memory (every device reads the
    /// host copy). A table some of whose column slices are in host memory
    /// (or unplaced) keeps the slices on devices only, which [`validate`]
    /// refuses (R003): they do not cover its columns.
    pub fn with_tables(
        mut self,
        w: &Workload,
        placement: &[gantry_compiler::placement::TablePlacement],
    ) -> Parallel {
        let names: Vec<&str> = graph::ops(&w.model.graph.body)
            .into_iter()
            .find_map(|o| match &o.kind {
                OpKind::EmbeddingBag { tables } => {
                    Some(tables.iter().map(|t| t.name.as_str()).collect())
                }
                _ => None,
            })
            .unwrap_or_default();
        let slices = |name: &str| -> Vec<(usize, std::ops::Range<usize>)> {
            placement
                .iter()
                .filter(|p| p.table == name && p.sharding == "column_wise")
                .map(|p| {
                    (
                        p.ranks.first().copied().unwrap_or(0) as usize,
                        p.columns.0 as usize..p.columns.1 as usize,
                    )
                })
                .collect()
        };
        self.column_slices = names.iter().map(|name| slices(name)).collect();
        self.tables = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                if !self.column_slices[i].is_empty() {
                    return TableShard::Column;
                }
                match placement.iter().find(|p| p.table == *name) {
                    Some(p) if p.sharding == "table_wise" => {
                        TableShard::Table(p.ranks.first().copied().unwrap_or(0) as usize)
                    }
                    Some(p) if p.sharding == "row_wise" => TableShard::Row,
                    Some(_) => TableShard::Replicated,
                    None => TableShard::Table(i),
                }
            })
            .collect();
        self
    }
}

/// The column slices of column-wise table `i` (of `dim` columns, named
/// `table` in messages) on a stage of `size` devices: `(device, columns)`
/// in column order, a slice's device `rank mod size` as for
/// [`TableShard::Table`], and adjacent slices on one device merged. A
/// device may hold several ranges (the memory-balanced deal gives a rank
/// slices `j` and `j + 3` of a table at its turn). R003 unless the slices
/// tile `0..dim` exactly: some in host memory (or unplaced) leave columns
/// to no device.
pub fn column_slices(
    par: &Parallel,
    i: usize,
    size: usize,
    dim: usize,
    table: &str,
) -> Result<Vec<(usize, std::ops::Range<usize>)>, RuntimeError> {
    let given = par.column_slices.get(i).map_or(&[][..], |v| v.as_slice());
    let mut sorted: Vec<(usize, std::ops::Range<usize>)> = given
        .iter()
        .map(|(r, c)| (r % size.max(1), c.clone()))
        .collect();
    sorted.sort_by_key(|(_, c)| (c.start, c.end));
    let mut out: Vec<(usize, std::ops::Range<usize>)> = Vec::with_capacity(sorted.len());
    let mut end = 0;
    for (d, c) in sorted {
        if c.start != end || c.end <= c.start || c.end > dim {
            return Err(uncovered(table, dim, given));
        }
        end = c.end;
        match out.last_mut() {
            Some((o, last)) if *o == d => last.end = c.end,
            _ => out.push((d, c)),
        }
    }
    if end != dim {
        return Err(uncovered(table, dim, given));
    }
    Ok(out)
}

fn uncovered(table: &str, dim: usize, given: &[(usize, std::ops::Range<usize>)]) -> RuntimeError {
    let slices = if given.is_empty() {
        "none on a device".to_string()
    } else {
        given
            .iter()
            .map(|(r, c)| format!("{}..{} on rank {r}", c.start, c.end))
            .collect::<Vec<_>>()
            .join(", ")
    };
    unsupported(format!(
        "the column slices of table `{table}` ({slices}) do not cover its {dim} columns once each: the runtime executes the slices devices hold (a slice in host memory or unplaced leaves its columns to none)"
    ))
    .with_help(
        "run it with `placement = cost_balanced`, a `column_slice` above the table's size, or more memory for the tables",
    )
}

/// Checks that `par` fits the workload's graph (R002 / R003).
pub fn validate(w: &Workload, par: &Parallel) -> Result<(), RuntimeError> {
    let (batch, per) = validate_batch(w, par)?;
    validate_pipeline(w, par, per)?;
    if par.cp > 1 {
        validate_context(w, par)?;
    }
    validate_ops(w, par)?;
    if par.dp > 1 || par.microbatch < batch {
        validate_batch_axes(w)?;
    }
    Ok(())
}

/// Every degree is positive and the batch splits over `dp` replicas and
/// into microbatches; returns the batch and the per-replica batch.
fn validate_batch(w: &Workload, par: &Parallel) -> Result<(usize, usize), RuntimeError> {
    if par.dp == 0
        || par.tp == 0
        || par.pp == 0
        || par.ep == 0
        || par.cp == 0
        || par.vp == 0
        || par.microbatch == 0
    {
        return Err(mismatch(
            "every parallel degree and the microbatch must be at least 1",
        ));
    }
    let batch = w.bindings.get("batch").copied().unwrap_or(1).max(1) as usize;
    if !batch.is_multiple_of(par.dp) {
        return Err(
            mismatch(format!("batch {batch} does not split over dp = {}", par.dp))
                .with_help("choose dp dividing the batch"),
        );
    }
    let per = batch / par.dp;
    if !per.is_multiple_of(par.microbatch) {
        return Err(mismatch(format!(
            "the per-replica batch {per} is not a multiple of microbatch {}",
            par.microbatch
        ))
        .with_help("choose a microbatch dividing batch / dp"));
    }
    Ok((batch, per))
}

/// The pipeline has layers to split, the stages cover them, and the
/// interleaved schedule's model chunks and microbatches fit.
fn validate_pipeline(w: &Workload, par: &Parallel, per: usize) -> Result<(), RuntimeError> {
    let g = &w.model.graph;
    let repeat = pipelined_repeat(&g.body);
    let layers = repeat.map_or(0, |(_, r)| r.count as usize);
    if par.pp > 1 && repeat.is_none() {
        return Err(mismatch(format!(
            "pp = {} but the model has no repeated layers to split",
            par.pp
        ))
        .with_help("pin pp=1"));
    }
    if par.pp > 1
        && (par.stage_layers.len() != par.pp
            || par.stage_layers.iter().sum::<usize>() != layers
            || par.stage_layers.contains(&0))
    {
        return Err(mismatch(format!(
            "stage layers {:?} do not cover the {layers} layers in {} stages",
            par.stage_layers, par.pp
        )));
    }
    if par.vp > 1 {
        if par.pp == 1 {
            return Err(mismatch(format!(
                "virtual_stages = {} needs a pipeline (pp > 1)",
                par.vp
            ))
            .with_help("pin virtual_stages=1"));
        }
        if par.stage_layers.iter().any(|n| *n < par.vp) {
            return Err(mismatch(format!(
                "stage layers {:?} cannot make {} model chunks each",
                par.stage_layers, par.vp
            ))
            .with_help("every virtual stage needs at least one layer"));
        }
        let m = per / par.microbatch;
        if !m.is_multiple_of(par.pp) {
            return Err(mismatch(format!(
                "the interleaved schedule needs the microbatches per replica ({m}) to be a multiple of pp = {}",
                par.pp
            ))
            .with_help("choose a microbatch giving a multiple of pp microbatches, as Megatron-LM requires"));
        }
    }
    Ok(())
}

/// Context parallelism: the sequence splits over `cp`, every input and
/// output has a `seq` axis, and no op mixes sequence positions.
fn validate_context(w: &Workload, par: &Parallel) -> Result<(), RuntimeError> {
    let g = &w.model.graph;
    let seq = w.bindings.get("seq").copied().unwrap_or(0).max(0) as usize;
    if seq == 0 || !seq.is_multiple_of(par.cp) {
        return Err(
            mismatch(format!("seq {seq} does not split over cp = {}", par.cp))
                .with_help("choose cp dividing the sequence length"),
        );
    }
    for t in g.inputs.iter().chain(g.outputs.iter().map(|(_, t)| t)) {
        let tensor = g.tensor(*t);
        if graph::seq_axis(&tensor.shape).is_none() {
            return Err(unsupported(format!(
                "tensor `{}` {} has no `seq` axis to cut into context-parallel chunks",
                tensor.name, tensor.shape
            ))
            .with_help("pin cp=1"));
        }
    }
    for op in graph::ops(&g.body) {
        if matches!(
            op.kind,
            OpKind::MatMul
                | OpKind::Reshape
                | OpKind::Concat { .. }
                | OpKind::EmbeddingBag { .. }
                | OpKind::Interact { .. }
        ) {
            return Err(unsupported(format!(
                "`{}` may mix sequence positions; context parallelism runs token-wise ops and attention",
                op.kind.name()
            ))
            .with_help("pin cp=1"));
        }
    }
    Ok(())
}

/// Expert-parallel groups, attention heads and experts split as the
/// degrees ask, and column-wise tables' slices cover their columns
/// ([`column_slices`]).
fn validate_ops(w: &Workload, par: &Parallel) -> Result<(), RuntimeError> {
    let g = &w.model.graph;
    if par.ep > 1 && !par.dp.is_multiple_of(par.ep) {
        return Err(
            mismatch(format!("ep = {} does not divide dp = {}", par.ep, par.dp))
                .with_help("expert-parallel groups are made of data-parallel replicas"),
        );
    }
    for op in graph::ops(&g.body) {
        match &op.kind {
            OpKind::Attention {
                heads, kv_heads, ..
            } => {
                let (h, kv, tp) = (*heads as usize, *kv_heads as usize, par.tp);
                if h % tp != 0 || (kv % tp != 0 && tp % kv != 0) {
                    return Err(mismatch(format!(
                        "tp = {tp} does not split {h} heads and {kv} key/value heads"
                    ))
                    .with_help(format!(
                        "choose tp dividing the {h} heads and dividing or divisible by the {kv} key/value heads"
                    )));
                }
            }
            OpKind::Moe { experts, .. } if !(*experts as usize).is_multiple_of(par.ep) => {
                return Err(mismatch(format!(
                    "ep = {} does not divide the {experts} experts",
                    par.ep
                )));
            }
            OpKind::EmbeddingBag { tables } => {
                let size = par.dp * par.cp * par.tp;
                for (i, t) in tables.iter().enumerate() {
                    if size > 1 && par.tables.get(i) == Some(&TableShard::Column) {
                        column_slices(par, i, size, t.dim as usize, &t.name)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Splitting samples (over replicas or microbatches) needs a `batch` axis
/// on every input and output.
fn validate_batch_axes(w: &Workload) -> Result<(), RuntimeError> {
    let g = &w.model.graph;
    for t in g.inputs.iter().chain(g.outputs.iter().map(|(_, t)| t)) {
        let tensor = g.tensor(*t);
        if graph::batch_axis(&tensor.shape, &w.bindings).is_none() {
            return Err(unsupported(format!(
                "tensor `{}` {} has no `batch` axis to split samples along",
                tensor.name, tensor.shape
            ))
            .with_help("pin dp=1 and a microbatch equal to the batch"));
        }
    }
    Ok(())
}

/// The design point in one line (for the CLI and messages).
pub fn describe(par: &Parallel) -> String {
    format!(
        "dp={} tp={} pp={} cp={} ep={} zero={} microbatch={} stage layers {:?}{}{}",
        par.dp,
        par.tp,
        par.pp,
        par.cp,
        par.ep,
        par.zero,
        par.microbatch,
        par.stage_layers,
        if par.vp > 1 {
            format!(" in {} virtual stages each", par.vp)
        } else {
            String::new()
        },
        if par.sp && par.tp > 1 {
            " sequence-parallel"
        } else {
            ""
        }
    )
}
