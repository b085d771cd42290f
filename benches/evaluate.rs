//! Cost-model speed: design-point evaluations per second on one core for
//! Llama 3 405B on 16,384 H100s (the search calls this millions of times).
//! Run with `cargo bench --bench evaluate`; prints figures, asserts nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use gantry_compiler::cost::Evaluator;
use gantry_compiler::hardware::Hardware;
use gantry_compiler::ir::lower;
use gantry_compiler::point::{Pin, resolve};

fn main() {
    let checked = gantry::check_files(&["examples/llm_train.gantry".to_string()], &[]);
    assert!(!checked.has_errors(), "{}", checked.render(false));
    let plan = checked
        .program
        .plans
        .values()
        .find(|p| p.system.devices() == 16_384)
        .expect("a 16,384-GPU plan");
    let ir = lower(&plan.workload).expect("lowers");
    let hw = Hardware::new(&plan.system, &plan.workload).expect("hardware");
    let ev = Evaluator {
        ir: &ir,
        hw: &hw,
        prefill: None,
    };
    // A spread of valid points: tp x pp x microbatch x recompute x zero.
    let mut points = Vec::new();
    for tp in [1, 2, 4, 8] {
        for pp in [1, 2, 4, 8, 16] {
            for mb in [1, 2] {
                for (rc, z) in [("full", 1), ("selective", 1), ("none", 3)] {
                    let mut pins = BTreeMap::new();
                    pins.insert("tp".to_string(), Pin::Int(tp));
                    pins.insert("pp".to_string(), Pin::Int(pp));
                    pins.insert("microbatch".to_string(), Pin::Int(mb));
                    pins.insert("recompute".to_string(), Pin::Choice(rc.to_string()));
                    pins.insert("zero".to_string(), Pin::Int(z));
                    // Keep dp x microbatch dividing the global batch of 2048.
                    let dp = (2048 / mb).min(16_384 / (tp * pp));
                    pins.insert("dp".to_string(), Pin::Int(dp));
                    if let Ok(p) = resolve(&pins, &ir, &plan.system) {
                        points.push(p);
                    }
                }
            }
        }
    }
    assert!(!points.is_empty());
    let n = 1_000_000usize;
    let mut sink = 0.0;
    let t = Instant::now();
    for i in 0..n {
        let e = ev.evaluate(&points[i % points.len()]);
        sink += e.time.step;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "Llama 3 405B ({} layers) on {} GPUs: {} evaluations over {} design points in {:.3} s = {:.0} evaluations/s (one core)  [checksum {:.3e}]",
        ir.layers(),
        plan.system.devices(),
        n,
        points.len(),
        secs,
        n as f64 / secs,
        sink
    );
}
