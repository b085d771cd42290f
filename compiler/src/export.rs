//! Exports to the frameworks people run: Megatron-LM arguments
//! ([`megatron`]), a torchtitan job config ([`torchtitan`]), a TorchRec
//! sharding plan ([`torchrec`]) and a Chrome trace of the step the cost
//! model priced ([`trace`]).
//!
//! Each export is a complete artifact for the model in the file, or an
//! [`ExportError`] (`C021`) naming why the plan cannot be written for that
//! framework: never an empty or partial artifact. One module per target.

use gantry_lang::diagnostic::Code;

mod megatron;
mod torchrec;
mod torchtitan;
mod trace;

pub use megatron::{Megatron, ModelFacts, megatron};
pub use torchrec::torchrec;
pub use torchtitan::{
    FLAVORS as TORCHTITAN_FLAVORS, VERSION as TORCHTITAN_VERSION, model_parts, torchtitan,
};
pub use trace::trace;

/// An export the plan cannot be written as, with the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportError {
    pub code: Code,
    pub message: String,
    pub help: String,
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ExportError {}

/// A `C021` error for `target`.
fn refuse(target: &str, why: impl Into<String>, help: &str) -> ExportError {
    ExportError {
        code: Code::C021,
        message: format!("cannot export to {target}: {}", why.into()),
        help: help.into(),
    }
}
