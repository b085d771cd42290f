//! Loads `.gantry` files of this workspace for the compiler's tests
//! (imports resolve against the workspace root, where `stdlib/` lives).

#![allow(dead_code)]

#[path = "../../tests/common/seeded.rs"]
pub mod seeded;

use std::path::PathBuf;

use gantry_lang::check::{Checked, check};
use gantry_lang::program::Plan;
use gantry_lang::source::{LoadError, Loader};

pub struct Workspace;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Loader for Workspace {
    fn resolve(&self, importer: &str, path: &str) -> Option<String> {
        // Relative to the importing file first, then to the workspace root.
        let dir = std::path::Path::new(importer)
            .parent()
            .map(|d| d.join(path));
        if let Some(d) = dir
            && root().join(&d).is_file()
        {
            return Some(d.to_string_lossy().into_owned());
        }
        root().join(path).is_file().then(|| path.to_string())
    }
    fn load(&self, name: &str) -> Result<String, LoadError> {
        std::fs::read_to_string(root().join(name)).map_err(|_| LoadError::NotFound)
    }
}

/// The workspace plus one in-memory file, `test.gantry`.
pub struct WithSource(pub String);

impl Loader for WithSource {
    fn resolve(&self, importer: &str, path: &str) -> Option<String> {
        if path == "test.gantry" {
            return Some(path.into());
        }
        Workspace.resolve(importer, path)
    }
    fn load(&self, name: &str) -> Result<String, LoadError> {
        if name == "test.gantry" {
            return Ok(self.0.clone());
        }
        Workspace.load(name)
    }
}

pub fn checked(file: &str) -> Checked {
    let c = check(&[file.to_string()], &Workspace);
    assert!(!c.has_errors(), "{}", c.render(false));
    c
}

pub fn plan(file: &str, name: Option<&str>) -> Plan {
    let c = checked(file);
    match name {
        Some(n) => c.program.plans.get(n).cloned().expect("plan exists"),
        None => c.program.plans.values().next().cloned().expect("a plan"),
    }
}

/// A `device Gpu` (100 TFLOP/s bf16, 80 GB at 2 TB/s) and a `node Box` of
/// `gpus` of them on a 300 GB/s switch: the toy system of the planner's
/// unit-size tests.
pub fn gpu_box(gpus: u32) -> String {
    format!(
        "device Gpu {{
  compute {{ bf16 = 100 TFLOP/s }}
  memory hbm = 80 GB @ 2 TB/s
  power 400 W
}}
node Box {{
  device Gpu x {gpus}
  link nvlink = switch(bandwidth = 300 GB/s)
}}
"
    )
}

/// The 4-block MLP model `M` of the planner's unit-size tests (an
/// embedding, four `x + linear(gelu(linear(rmsnorm(x))))` blocks, a head
/// `linear(rmsnorm(x), head_args)`).
pub fn mlp_model(head_args: &str) -> String {
    format!(
        "model M(d = 64, ff = 256, vocab = 1000) {{
  input tokens: i32[batch, seq]
  x = embedding(tokens, vocab, d)
  repeat 4 {{
    x = x + linear(gelu(linear(rmsnorm(x), d, ff, bias = true)), ff, d)
  }}
  output logits = linear(rmsnorm(x), {head_args})
}}
"
    )
}
