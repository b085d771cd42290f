//! Exports to the frameworks people run: Megatron-LM arguments
//! ([`megatron`]), a torchtitan job config ([`torchtitan`]), a TorchRec
//! sharding plan ([`torchrec`]) and a Chrome trace of the step the cost
//! model priced ([`trace`]).
//!
//! Each export is a complete artifact for the model in the file, or an
//! [`ExportError`] (`C021`) naming why the plan cannot be written for that
//! framework: never an empty or partial artifact. One module per target.

use gantry_lang::diagnostic::Code;
use gantry_lang::program::Workload;

use crate::cost::Estimate;
use crate::ir::Ir;

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

/// Whether the framework `target` (one of
/// [`gantry_lang::program::TARGETS`]) runs the evaluated point `e`: the
/// export itself, so the search proposes exactly the points whose export
/// succeeds. TorchRec needs embedding-bag tables (their placement is
/// decided after the search; a table placed nowhere is still refused by
/// the export); a trace can be drawn of any point whose step takes at
/// least its resolution, a nanosecond.
pub fn runs(target: &str, e: &Estimate, ir: &Ir, w: &Workload) -> Result<(), ExportError> {
    match target {
        "megatron" => megatron(e, ir, w).map(drop),
        "torchtitan" => torchtitan(e, ir, w).map(drop),
        "torchrec" if torchrec::has_tables(w) => Ok(()),
        "torchrec" => torchrec(&[], w, e.devices, 1).map(drop),
        // Only whether it can be drawn: drawing every slice of every
        // microbatch for each point made a search 1,300 times slower.
        "trace" => trace::drawable(e),
        _ => Ok(()),
    }
}

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
/// A training workload's sequence length: its `train { seq }`, else the
/// bound `seq` symbol, else a refusal naming `target`.
fn train_seq(target: &str, seq: Option<u64>, w: &Workload) -> Result<u64, ExportError> {
    seq.or_else(|| w.bindings.get("seq").map(|s| *s as u64))
        .ok_or_else(|| {
            refuse(
                target,
                "the workload has no sequence length",
                "set `seq` in `train { ... }`",
            )
        })
}

fn refuse(target: &str, why: impl Into<String>, help: &str) -> ExportError {
    ExportError {
        code: Code::C021,
        message: format!("cannot export to {target}: {}", why.into()),
        help: help.into(),
    }
}
