//! Planner speed and memory: the full search for Llama 3 405B on 16,384
//! H100s, a 126-layer against a 32-layer model of the same width, and the
//! process's peak memory. Run with `cargo bench -p gantry-compiler --bench
//! search`; prints figures, asserts nothing.

#[path = "../tests/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use gantry_compiler::plan::search;
use gantry_lang::program::{Item, Plan};

fn with_layers(p: &Plan, n: u64) -> Plan {
    let mut q = p.clone();
    for item in &mut q.workload.model.graph.body {
        if let Item::Repeat(r) = item {
            r.count = n;
        }
    }
    q
}

fn time(p: &Plan, runs: usize) -> (f64, usize) {
    let mut best = f64::INFINITY;
    let mut evaluated = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let s = search(p, &BTreeMap::new(), 10).expect("search");
        best = best.min(t.elapsed().as_secs_f64());
        evaluated = s.stats.evaluated;
    }
    (best, evaluated)
}

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let p = common::plan("examples/llm_train.gantry", Some("llama3_405b_best"));
    let (t126, n126) = time(&p, 3);
    println!(
        "Llama 3 405B, 126 layers, {} GPUs: full search {:.3} s ({} points evaluated)",
        p.system.devices(),
        t126,
        n126
    );
    let p32 = with_layers(&p, 32);
    let (t32, n32) = time(&p32, 3);
    println!(
        "same width, 32 layers: {:.3} s ({} points evaluated); 126-layer / 32-layer time = {:.2}",
        t32,
        n32,
        t126 / t32
    );
    // Saturation of the repeated block (once per model) and extraction at
    // every tensor-parallel degree of the plan's space.
    for (file, plan) in [
        ("examples/reference/a01_gpt_1p7b.gantry", None),
        ("examples/llm_train.gantry", Some("llama3_405b_best")),
        ("examples/moe_train.gantry", None),
        ("compiler/tests/inputs/adapter.gantry", None),
    ] {
        let p = common::plan(file, plan);
        let Ok(ir) = gantry_compiler::ir::lower(&p.workload) else {
            continue;
        };
        let Ok(hw) = gantry_compiler::hardware::Hardware::new(&p.system, &p.workload) else {
            continue;
        };
        let t = Instant::now();
        let x = gantry_compiler::plan::extract_layers(&ir, &hw, &[1, 2, 4, 8]);
        println!(
            "e-graph {} ({} ops): {} nodes, {}, saturation and 4 extractions {:.1} ms",
            p.workload.model.name,
            ir.body().map_or(0, |b| b.ops.len()),
            x.nodes,
            x.stop,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    if let Some(kib) = peak_rss_kib() {
        println!(
            "peak resident memory of the process: {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
}
