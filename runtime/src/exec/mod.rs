//! Simulated multi-device execution of one design point.
//!
//! Each device is a thread with its own memory (a map from tensor to local
//! buffer), its own JIT context and one endpoint of the in-memory
//! collectives ([`crate::comm`]). Ranks are laid out Megatron-style,
//! tensor-parallel innermost:
//! `rank = ((stage * dp + replica) * cp + chunk) * tp + t`.
//!
//! - Data parallelism: replica `d` runs samples `d * B/dp ..` of the batch,
//!   in microbatches of the design point's size.
//! - Tensor parallelism follows the compiler's sharded program (see
//!   [`crate::layout`]): column-parallel linears split their output,
//!   row-parallel ones all-reduce, attention splits heads, embeddings are
//!   vocab-parallel, elementwise ops follow their inputs.
//! - Context parallelism cuts every sequence into `cp` chunks; attention
//!   all-gathers the keys and values it may see.
//! - Pipeline parallelism splits the largest top-level `repeat` into the
//!   stages' layer counts, in the order of [`schedule`] (1F1B or
//!   Megatron's interleaved 1F1B).
//! - `embedding_bag` tables follow the planner's placement (whole on one
//!   device, by rows, by columns or replicated); `moe` experts
//!   are split over `ep` data-parallel ranks and their width over `tp`.
//! - A decode step first runs its prompt, keeping a KV cache, then the step.
//!
//! [`run`] compares the outputs (and gradients) with the reference and,
//! when an output diverges, names the first op whose local result differs.
//!
//! Modules, by concept:
//! - `parallel`: the layout a run executes ([`Parallel`]), [`validate`], [`describe`].
//! - `schedule`: 1F1B and interleaved schedules, [`chunk_layers`], [`even_split`].
//! - `run`: [`run`], the decode step, [`kernels`], locating a divergence, the report types.
//! - `footprint`: R007's memory estimate ([`footprint`]), an upper bound of what a run allocates.
//! - `simulate`: one thread per device, cutting inputs and pasting outputs.
//! - `device`: the device (`Dev`), its groups, layout conversions and tracing.
//! - `pipeline`: one microbatch of a stage, send/recv at stage boundaries.
//! - `dispatch`: walking items and dispatching ops to their family.
//! - `elementwise`, `linear`, `embedding`, `attention`, `moe`: the op families.
//! - `grad`, `grad_ops`: the backward pass and the optimizer step.

mod attention;
mod device;
mod dispatch;
mod elementwise;
mod embedding;
mod footprint;
mod grad;
mod grad_ops;
mod linear;
mod moe;
mod parallel;
mod pipeline;
mod run;
mod schedule;
mod simulate;
#[cfg(test)]
mod tests;

pub use footprint::{
    DEVICE_HEAP, MAX_OP_INSTANCES, MAX_WORK, PER_DEVICE, PER_RUN, footprint, host_memory,
    op_instances, work,
};
pub use grad::{GradCheck, ParamGrad, Reduce, StepCheck};
pub use parallel::{Parallel, TableShard, column_slices, describe, validate};
pub use pipeline::pipelined_repeat;
pub use run::{
    DEFAULT_TOLERANCE, Divergence, MAX_DEVICES, OutputCheck, RunConfig, RunReport, kernels, run,
};
pub use schedule::{Action, chunk_layers, even_split, one_f_one_b, schedule};
