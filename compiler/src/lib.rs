//! The Gantry compiler: lowering, cost model, reports.
//!
//! Input is a checked [`gantry_lang::program::Program`]; nothing here sees
//! source text or the AST.

pub mod collective;
pub mod cost;
pub mod egraph;
pub mod engine_fit;
pub mod explain;
pub mod export;
pub mod fit;
pub mod fleet;
pub mod hardware;
pub mod ir;
pub mod memory;
pub mod pareto;
pub mod placement;
pub mod plan;
pub mod point;
pub mod report;
pub mod sanity;
pub mod search;
#[cfg(test)]
#[path = "../../tests/common/seeded.rs"]
pub(crate) mod seeded;
pub mod sensitivity;
pub mod serve;
pub mod shard;
pub mod sharded;
pub mod study;
pub mod study_doc;
pub mod validate;
