//! The Gantry language front end: lexer, parser, checker and formatter.
//!
//! Input is `.gantry` source; output is a [`program::Program`]: fully
//! resolved, unit-checked declarations and model graphs of built-in ops with
//! symbolic shapes. Nothing of logos or lalrpop is visible outside this
//! crate, and the AST is public only for the formatter's round trip tests.

pub mod ast;
pub mod check;
pub mod diagnostic;
pub mod fmt;
pub mod lexer;
pub mod parser;
pub mod program;
pub mod shape;
pub mod source;
pub mod span;
pub mod trace;
pub mod units;
