//! The Gantry runtime: executes a checked workload for real, to show that a
//! design point the cost model prices computes the same function as the
//! model.
//!
//! Two independent paths compute every graph: [`reference`](mod@reference) is a plain-loop
//! f32 interpreter that knows nothing of devices or kernels; [`exec`] splits
//! the graph over simulated devices (threads with their own memory and real
//! in-memory collectives) and runs Cranelift-compiled kernels from [`jit`],
//! the only module with `unsafe`. [`exec::run`] compares the two.
//!
//! Shapes are concrete here: a workload is instantiated at a small scale
//! ([`scale`]) and bound (`batch`, `seq`) before anything runs.

pub mod backward;
pub mod calibrate;
pub mod comm;
pub mod error;
pub mod exec;
pub mod graph;
pub mod init;
pub mod jit;
pub mod layout;
pub mod optim;
pub mod plan_json;
pub mod reference;
pub mod scale;

pub use error::{RCode, RuntimeError};
