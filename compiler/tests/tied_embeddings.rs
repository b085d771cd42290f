//! Tied embeddings (issue 10, item 5): `linear(x, dim, vocab, tied =
//! true)` reuses the token embedding's table. Its parameters count once;
//! one stage running both holds the weight once; with a pipeline the last
//! stage keeps a copy and the two copies' gradients are all-reduced once
//! per step (Megatron-LM's embedding group). A tied projection without a
//! matching embedding is `L050`.

mod common;

use gantry_compiler::cost::{Estimate, Evaluator};
use gantry_compiler::plan::evaluate;
use gantry_compiler::point::{parse_fix, resolve};
use gantry_lang::program::Plan;

/// 2 GPUs, one node; an embedding, 4 MLP blocks and a head, tied or not.
fn source(tied: &str, head: &str) -> String {
    let gpu_box = common::gpu_box(2);
    let mlp = common::mlp_model(&format!("{head}{tied}"));
    format!(
        "{gpu_box}{mlp}workload w {{
  model M
  train {{ seq = 16, global_batch = 8, dtype = bf16, optimizer = adam }}
}}
plan p on Box for w {{
  fix tp = 1, cp = 1
  objective maximize tokens_per_s
}}
"
    )
}

fn plan(tied: bool) -> Plan {
    let src = source(if tied { ", tied = true" } else { "" }, "d, vocab");
    let c = gantry_lang::check::check_source("t.gantry", &src);
    assert!(!c.has_errors(), "{}", c.render(false));
    c.program.plans["p"].clone()
}

/// Embedding 1000 x 64, four layers of 64 + 64 x 256 + 256 + 256 x 64,
/// the final gain; the head 64 x 1000 on top when untied.
const SHARED: f64 = 64_000.0 + 4.0 * (64.0 + 16_640.0 + 16_384.0) + 64.0;
const HEAD: f64 = 64_000.0;

fn at(tied: bool, fix: &str) -> Estimate {
    evaluate(&plan(tied), &parse_fix(fix).expect("pins"))
        .unwrap_or_else(|e| panic!("{fix}: {e:?}"))
        .estimate
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn parameters_count_once() {
    for (tied, want) in [(false, SHARED + HEAD), (true, SHARED)] {
        let ir = gantry_compiler::ir::lower(&plan(tied).workload).expect("lowers");
        assert_eq!(ir.params(), want, "tied = {tied}");
    }
    // Same work either way: the projection still runs.
    let (a, b) = (at(false, "pp=1,dp=1"), at(true, "pp=1,dp=1"));
    assert_eq!(a.model_flops, b.model_flops);
}

#[test]
fn one_stage_holds_a_tied_weight_once() {
    let (untied, tied) = (at(false, "pp=1,dp=2"), at(true, "pp=1,dp=2"));
    // bf16 weights, fp32 gradients, Adam's 12 B of state per parameter.
    for (e, params) in [(&untied, SHARED + HEAD), (&tied, SHARED)] {
        assert!(close(e.memory.weights, 2.0 * params), "{:?}", e.memory);
        assert!(close(e.memory.gradients, 4.0 * params), "{:?}", e.memory);
        assert!(close(e.memory.optimizer, 12.0 * params), "{:?}", e.memory);
        // The data-parallel all-reduce moves those gradients only.
        let ar = e
            .comms
            .iter()
            .find(|c| c.what.contains("data-parallel"))
            .expect("a gradient all-reduce");
        assert!(close(ar.bytes, 2.0 * 2.0 * params * 0.5), "{}", ar.bytes);
    }
    assert!(!tied.comms.iter().any(|c| c.what.contains("tied")));
}

#[test]
fn a_pipeline_keeps_a_copy_and_all_reduces_its_gradient() {
    let (untied, tied) = (
        at(false, "pp=2,dp=1,microbatch=1"),
        at(true, "pp=2,dp=1,microbatch=1"),
    );
    // The last stage holds its copy of the table: the same memory.
    assert_eq!(untied.memory, tied.memory);
    let c = tied
        .comms
        .iter()
        .find(|c| c.what.contains("tied embedding"))
        .expect("the embedding group's all-reduce");
    // 64,000 bf16 gradients between 2 ranks: a ring all-reduce sends
    // 2 (2 - 1) / 2 of the buffer.
    assert_eq!(c.group, 2);
    assert!(close(c.bytes, HEAD * 2.0), "{}", c.bytes);
    assert!(c.time > 0.0 && close(c.exposed, c.time));
    assert!(tied.time.step > untied.time.step);
    assert!(!untied.comms.iter().any(|c| c.what.contains("tied")));
}

#[test]
fn memory_bound_stays_below_the_evaluated_memory() {
    let plan = plan(true);
    let ir = gantry_compiler::ir::lower(&plan.workload).expect("lowers");
    let hw =
        gantry_compiler::hardware::Hardware::new(&plan.system, &plan.workload).expect("hardware");
    let ev = Evaluator {
        ir: &ir,
        hw: &hw,
        prefill: None,
    };
    for fix in [
        "tp=1,pp=1,dp=2",
        "tp=2,pp=1,dp=1,zero=1",
        "tp=1,pp=2,dp=1,microbatch=1",
    ] {
        let p = resolve(&parse_fix(fix).expect("pins"), &ir, &plan.system).expect(fix);
        let bound = ev.memory_floor(&p).total();
        let got = ev.evaluate(&p).memory.total();
        assert!(bound <= got * (1.0 + 1e-12), "{fix}: {bound} > {got}");
    }
}

#[test]
fn a_tied_projection_needs_a_matching_embedding() {
    // 64 -> 999: no 999 x 64 table.
    let c = gantry_lang::check::check_source("t.gantry", &source(", tied = true", "d, 999"));
    let text = c.render(false);
    assert!(c.has_errors() && text.contains("L050"), "{text}");
    assert!(text.contains("999 rows and 64 features"), "{text}");
    assert!(text.contains("1000 x 64"), "{text}");
    // `tied` takes a boolean.
    let c = gantry_lang::check::check_source("t.gantry", &source(", tied = 3", "d, vocab"));
    assert!(c.has_errors(), "{}", c.render(false));
}
