//! Optimizer state sizes and step traffic (issue 10, item 5): the memory
//! per device and the optimizer step of a small model under every
//! optimizer the language accepts, against the formulas of
//! docs/COST-MODEL.md worked by hand.

mod common;

use std::collections::BTreeMap;

use gantry_compiler::cost::Evaluator;
use gantry_compiler::plan::evaluate;
use gantry_compiler::point::{Pin, parse_fix};
use gantry_lang::program::{Optimizer, Plan};

/// A 4-GPU node and a 4-layer model: an embedding, four MLP blocks (a
/// gain, a 64 x 256 linear with bias, a 256 x 64 linear without), a final
/// gain and a 64 x 1000 head; bf16.
fn source(optimizer: &str) -> String {
    let gpu_box = common::gpu_box(4);
    let mlp = common::mlp_model("d, vocab");
    format!(
        "{gpu_box}{mlp}workload w {{
  model M
  train {{ seq = 16, global_batch = 8, dtype = bf16, optimizer = {optimizer} }}
}}
plan p on Box for w {{
  fix tp = 1, pp = 1, cp = 1, dp = 2
  objective maximize tokens_per_s
}}
"
    )
}

/// Parameters: embedding 1000 x 64, per layer 64 + (64 x 256 + 256) +
/// 256 x 64, the final gain 64 and the head 64 x 1000.
const PARAMS: f64 = 64_000.0 + 4.0 * (64.0 + 16_640.0 + 16_384.0) + 64.0 + 64_000.0;
/// Adafactor's factored values: rows + cols per matrix, the whole of a
/// vector: embedding 1000 + 64, per layer 64 + (64 + 256) + 256 +
/// (256 + 64), the final gain 64, the head 64 + 1000.
const FACTORED: f64 = 1_064.0 + 4.0 * (64.0 + 576.0 + 320.0) + 64.0 + 1_064.0;

fn plan(optimizer: &str) -> Plan {
    let c = gantry_lang::check::check_source("o.gantry", &source(optimizer));
    assert!(!c.has_errors(), "{}", c.render(false));
    c.program.plans["p"].clone()
}

fn pins(s: &str) -> BTreeMap<String, Pin> {
    parse_fix(s).expect("pins")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// fp32 values of state per parameter and per factored value, and the
/// step's HBM bytes per parameter and per factored value (bf16: 2 B per
/// weight copy), as docs/COST-MODEL.md gives them.
fn hand(opt: Optimizer) -> (f64, f64, f64, f64) {
    match opt {
        // m and v; read master, m, v, gradient, write master, m, v, bf16.
        Optimizer::Adam | Optimizer::AdamW => (2.0, 0.0, 16.0 + 12.0 + 2.0, 0.0),
        // Adam's plus one more read of the weights and of the update.
        Optimizer::Lamb => (2.0, 0.0, 16.0 + 12.0 + 2.0 + 8.0, 0.0),
        Optimizer::Adagrad | Optimizer::SgdMomentum => (1.0, 0.0, 12.0 + 8.0 + 2.0, 0.0),
        Optimizer::Sgd => (0.0, 0.0, 8.0 + 4.0 + 2.0, 0.0),
        // Master and gradient per parameter; rows and columns read and
        // written.
        Optimizer::Adafactor => (0.0, 1.0, 8.0 + 4.0 + 2.0, 8.0),
    }
}

#[test]
fn every_optimizer_is_a_choice_of_the_language() {
    for opt in Optimizer::ALL {
        let p = plan(opt.name());
        match p.workload.phase {
            gantry_lang::program::Phase::Train { optimizer, .. } => assert_eq!(optimizer, opt),
            _ => panic!("not training"),
        }
    }
    let c = gantry_lang::check::check_source("o.gantry", &source("lambb"));
    let text = c.render(false);
    assert!(c.has_errors() && text.contains("L063"), "{text}");
    assert!(text.contains("did you mean `lamb`"), "{text}");
}

#[test]
fn memory_per_device_follows_each_optimizers_formula() {
    for opt in Optimizer::ALL {
        let (states, fstates, _, _) = hand(opt);
        for zero in [0u8, 1, 2, 3] {
            let e = evaluate(&plan(opt.name()), &pins(&format!("zero={zero}"))).expect("evaluates");
            let m = &e.estimate.memory;
            let shard = |stage: u8| if zero >= stage { 2.0 } else { 1.0 };
            // bf16 weights, fp32 gradients, fp32 master and states.
            let want_w = 2.0 * PARAMS / shard(3);
            let want_g = 4.0 * PARAMS / shard(2);
            let want_o =
                (4.0 * PARAMS + 4.0 * states * PARAMS + 4.0 * fstates * FACTORED) / shard(1);
            assert!(
                close(m.weights, want_w),
                "{opt:?} zero={zero}: weights {} vs {want_w}",
                m.weights
            );
            assert!(
                close(m.gradients, want_g),
                "{opt:?} zero={zero}: gradients {} vs {want_g}",
                m.gradients
            );
            assert!(
                close(m.optimizer, want_o),
                "{opt:?} zero={zero}: optimizer {} vs {want_o}",
                m.optimizer
            );
        }
    }
    // Adafactor's state is a small fraction of Adam's: 4 x 6,032 B of
    // statistics against 8 x 260,416 B of moments.
    let adam = evaluate(&plan("adam"), &pins(""))
        .expect("adam")
        .estimate
        .memory
        .optimizer;
    let ada = evaluate(&plan("adafactor"), &pins(""))
        .expect("adafactor")
        .estimate
        .memory
        .optimizer;
    assert!(ada < 0.36 * adam, "{ada} vs {adam}");
}

#[test]
fn optimizer_step_traffic_follows_each_optimizers_formula() {
    for opt in Optimizer::ALL {
        let (_, _, per_param, per_factored) = hand(opt);
        for zero in [0u8, 1] {
            let e = evaluate(&plan(opt.name()), &pins(&format!("zero={zero}"))).expect("evaluates");
            let shard = if zero >= 1 { 2.0 } else { 1.0 };
            // 2 TB/s of HBM, no efficiency factors declared.
            let want = (PARAMS * per_param + FACTORED * per_factored) / shard / 2e12;
            let got = e.estimate.time.optimizer;
            assert!(close(got, want), "{opt:?} zero={zero}: {got} vs {want}");
        }
    }
}

#[test]
fn adafactor_state_splits_with_tensor_and_pipeline_parallelism() {
    // tp = 2: every linear and the embedding are split in two (their
    // parameters and factored values), the gains are whole.
    let e = evaluate(&plan("adafactor"), &pins("tp=2,dp=1")).expect("tp=2");
    let gains = 5.0 * 64.0;
    let params = (PARAMS - gains) / 2.0 + gains;
    let factored = (FACTORED - gains) / 2.0 + gains;
    let want = 4.0 * params + 4.0 * factored;
    let got = e.estimate.memory.optimizer;
    assert!(close(got, want), "tp=2: {got} vs {want}");
    // pp = 2: the first stage holds the embedding and two layers, the
    // last two layers, the final gain and the head; the device charged is
    // the larger of the two, for parameters and factored values alike.
    let e = evaluate(&plan("adafactor"), &pins("pp=2,dp=1,microbatch=1")).expect("pp=2");
    let layer: (f64, f64) = (64.0 + 16_640.0 + 16_384.0, 960.0);
    let first: (f64, f64) = (64_000.0 + 2.0 * layer.0, 1_064.0 + 2.0 * layer.1);
    let last = (
        2.0 * layer.0 + 64.0 + 64_000.0,
        2.0 * layer.1 + 64.0 + 1_064.0,
    );
    assert_eq!(e.estimate.stage_layers, vec![2, 2]);
    let want = 4.0 * first.0.max(last.0) + 4.0 * first.1.max(last.1);
    let got = e.estimate.memory.optimizer;
    assert!(close(got, want), "pp=2: {got} vs {want}");
}

#[test]
fn adafactor_memory_bound_stays_below_the_evaluated_memory() {
    let plan = plan("adafactor");
    let ir = gantry_compiler::ir::lower(&plan.workload).expect("lowers");
    let hw =
        gantry_compiler::hardware::Hardware::new(&plan.system, &plan.workload).expect("hardware");
    let ev = Evaluator {
        ir: &ir,
        hw: &hw,
        prefill: None,
    };
    let mut checked = 0;
    for fix in [
        "tp=1,pp=1,dp=4",
        "tp=2,pp=2,dp=1,microbatch=1,zero=1",
        "tp=1,pp=4,dp=1,microbatch=1,zero=3",
        "tp=2,pp=1,dp=2,zero=2",
        "tp=1,pp=3,dp=1,microbatch=1",
    ] {
        let p = gantry_compiler::point::resolve(&pins(fix), &ir, &plan.system).expect(fix);
        let bound = ev.memory_floor(&p);
        let got = ev.evaluate(&p).memory;
        assert!(
            bound.total() <= got.total() * (1.0 + 1e-12),
            "{fix}: {bound:?} vs {got:?}"
        );
        // The bound counts the factored statistics too (above the master
        // copy alone).
        assert!(
            bound.optimizer > 0.0 && bound.optimizer <= got.optimizer,
            "{fix}"
        );
        checked += 1;
    }
    assert_eq!(checked, 5);
}
