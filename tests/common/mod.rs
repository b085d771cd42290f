//! What the root crate's end-to-end test binaries share: running the
//! built `gantry` binary. A folder module (`tests/common/mod.rs`), so cargo
//! does not take it for a test binary of its own.

#![allow(dead_code)]

use std::process::Command;

pub mod seeded;

/// Runs the `gantry` binary this package builds with `args`: (exit code,
/// stdout, stderr).
pub fn gantry(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
