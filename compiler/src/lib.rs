//! The Gantry compiler: lowering, cost model, reports.
//!
//! Input is a checked [`gantry_lang::program::Program`]; nothing here sees
//! source text or the AST.

pub mod ir;
