//! Runtime diagnostics: stable `R0xx` codes and one error type.
//!
//! A user mistake (a plan that does not fit the program, an unsupported op,
//! outputs that diverge from the reference) is data: a code, a message that
//! names the offending item and, when the fix is known, a `help:` line. The
//! binary renders it; nothing here prints.

use std::fmt;

/// Stable runtime diagnostic codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RCode {
    /// The sharded execution diverges from the reference interpreter.
    R001,
    /// The plan (design point or `gantry.plan/2` JSON) does not fit the program.
    R002,
    /// An op, knob or graph shape the runtime does not execute.
    R003,
    /// A `--scale` override that cannot be applied.
    R004,
    /// A kernel failed to compile (a bug: please report it).
    R005,
    /// A simulated device failed or a collective broke down.
    R006,
    /// The simulated run would need more memory (or ops) than allowed.
    R007,
}

impl RCode {
    pub const ALL: &'static [RCode] = &[
        RCode::R001,
        RCode::R002,
        RCode::R003,
        RCode::R004,
        RCode::R005,
        RCode::R006,
        RCode::R007,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RCode::R001 => "R001",
            RCode::R002 => "R002",
            RCode::R003 => "R003",
            RCode::R004 => "R004",
            RCode::R005 => "R005",
            RCode::R006 => "R006",
            RCode::R007 => "R007",
        }
    }
    pub fn description(self) -> &'static str {
        match self {
            RCode::R001 => {
                "sharded execution diverges from the reference interpreter beyond the tolerance"
            }
            RCode::R002 => {
                "the plan does not fit the program (degrees, stages, batch or JSON contents)"
            }
            RCode::R003 => "the runtime does not execute this op, knob or graph shape",
            RCode::R004 => "a --scale override cannot be applied",
            RCode::R005 => "a kernel failed to compile (a runtime bug)",
            RCode::R006 => "a simulated device failed or a collective broke down",
            RCode::R007 => {
                "the simulated run would need more memory or work than allowed (scale it down)"
            }
        }
    }
}

impl fmt::Display for RCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A runtime error: code, message and an optional `help:` text.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("error[{code}]: {message}")]
pub struct RuntimeError {
    pub code: RCode,
    pub message: String,
    pub help: Option<String>,
}

impl RuntimeError {
    pub fn new(code: RCode, message: impl Into<String>) -> RuntimeError {
        RuntimeError {
            code,
            message: message.into(),
            help: None,
        }
    }
    pub fn with_help(mut self, help: impl Into<String>) -> RuntimeError {
        self.help = Some(help.into());
        self
    }
    /// The error as the CLI prints it: `error[R0xx]: message` and `help:`.
    pub fn render(&self) -> String {
        match &self.help {
            Some(h) => format!("error[{}]: {}\n  help: {h}", self.code, self.message),
            None => format!("error[{}]: {}", self.code, self.message),
        }
    }
}

pub(crate) fn unsupported(message: impl Into<String>) -> RuntimeError {
    RuntimeError::new(RCode::R003, message)
}

pub(crate) fn mismatch(message: impl Into<String>) -> RuntimeError {
    RuntimeError::new(RCode::R002, message)
}
