//! ZeRO over data x context parallel ranks and HSDP (issue 10, item 3):
//! optimizer state, its step and the ZeRO collectives span `shard` ranks
//! (every dp x cp rank by default); fewer is HSDP, whose replicas
//! all-reduce their gradient shards. The `shard` knob in `fix`, `search`
//! and `--fix`, with its pin errors.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use gantry_compiler::plan::{evaluate, search};
use gantry_compiler::point::parse_fix;
use gantry_lang::diagnostic::Code;
use gantry_lang::program::Plan;

/// 8 GPUs on one node; a 4-layer MLP model (no experts, no tables).
fn plan(extra: &str) -> Plan {
    let gpu_box = common::gpu_box(8);
    let mlp = common::mlp_model("d, vocab");
    let src = format!(
        "{gpu_box}{mlp}workload w {{
  model M
  train {{ seq = 16, global_batch = 8, dtype = bf16, optimizer = adam }}
}}
plan p on Box for w {{
  fix tp = 1, pp = 1
  {extra}
  objective maximize tokens_per_s
}}
"
    );
    let c = gantry_lang::check::check_source("z.gantry", &src);
    assert!(!c.has_errors(), "{}", c.render(false));
    c.program.plans["p"].clone()
}

/// The model's parameters (compiler/tests/optimizers.rs).
const PARAMS: f64 = 64_000.0 + 4.0 * (64.0 + 16_640.0 + 16_384.0) + 64.0 + 64_000.0;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn at(fix: &str) -> gantry_compiler::cost::Estimate {
    evaluate(&plan(""), &parse_fix(fix).expect("pins"))
        .unwrap_or_else(|e| panic!("{fix}: {e:?}"))
        .estimate
}

#[test]
fn zero_shards_over_data_and_context_parallel_ranks() {
    // dp = 2, cp = 2: ZeRO-1 shards Adam's 12 B per parameter (master,
    // m, v) and its step over all 4 ranks, not over dp's 2.
    let e = at("dp=2,cp=2,zero=1");
    assert!(
        close(e.memory.optimizer, 12.0 * PARAMS / 4.0),
        "{:?}",
        e.memory
    );
    // Step: (16 + 12 + 2) B per parameter at 2 TB/s, a quarter each.
    let want = PARAMS * 30.0 / 4.0 / 2e12;
    assert!(
        close(e.time.optimizer, want),
        "{} vs {want}",
        e.time.optimizer
    );
    assert_eq!(e.point.shard, 4);
    assert_eq!(e.point.replicas(), 1);
    // The default point reads as before (no `shard=` unless HSDP).
    assert!(!e.point.to_string().contains("shard"), "{}", e.point);
    let zero = e
        .comms
        .iter()
        .find(|c| c.what.contains("ZeRO"))
        .expect("a ZeRO collective");
    assert_eq!(zero.group, 4);
    assert!(!e.comms.iter().any(|c| c.what.contains("HSDP")));
}

#[test]
fn hsdp_shards_within_a_group_and_all_reduces_over_replicas() {
    for zero in [1u8, 3] {
        let e = at(&format!("dp=8,zero={zero},shard=2"));
        assert_eq!((e.point.shard, e.point.replicas()), (2, 4));
        assert!(e.point.to_string().contains("shard=2"), "{}", e.point);
        // State over 2 ranks, not 8.
        assert!(
            close(e.memory.optimizer, 12.0 * PARAMS / 2.0),
            "{:?}",
            e.memory
        );
        assert!(close(e.time.optimizer, PARAMS * 30.0 / 2.0 / 2e12));
        let within = e
            .comms
            .iter()
            .find(|c| c.what.contains("ZeRO"))
            .expect("ZeRO within the shard group");
        assert_eq!(within.group, 2);
        let across = e
            .comms
            .iter()
            .find(|c| c.what.contains("HSDP"))
            .expect("the replicas' all-reduce");
        assert_eq!(across.group, 4);
        // Each rank's shard, bf16: a ring all-reduce sends 2 (n - 1) / n of
        // it, per microbatch under ZeRO-3 (8 / 8 = one microbatch here).
        let want = 2.0 * (PARAMS * 2.0 / 2.0) * 3.0 / 4.0;
        assert!(
            close(across.bytes, want),
            "zero={zero}: {} vs {want}",
            across.bytes
        );
        assert!(across.time > 0.0 && across.exposed <= across.time);
        // Full sharding over the 8 ranks holds less state.
        let full = at(&format!("dp=8,zero={zero}"));
        assert!(full.memory.optimizer < e.memory.optimizer);
        assert!(!full.comms.iter().any(|c| c.what.contains("HSDP")));
    }
}

#[test]
fn shard_pins_that_cannot_hold_are_errors() {
    let p = plan("");
    let e = evaluate(&p, &parse_fix("dp=8,zero=1,shard=3").expect("pins"))
        .err()
        .expect("3 does not divide 8");
    assert_eq!((e.code, e.knob), (Code::C012, "shard"));
    assert!(
        e.message.contains("does not divide") && e.message.contains('8'),
        "{e:?}"
    );
    let e = evaluate(&p, &parse_fix("dp=8,zero=0,shard=2").expect("pins"))
        .err()
        .expect("nothing to shard");
    assert_eq!((e.code, e.knob), (Code::C012, "shard"));
    let e = parse_fix("shard=0").expect_err("a positive count");
    assert_eq!(e.code, Code::C006);
    // In a file: `fix shard = 2` is a knob like the others.
    let p = plan("fix dp = 8, zero = 2, shard = 2");
    let ev = evaluate(&p, &BTreeMap::new()).expect("evaluates");
    assert_eq!(ev.estimate.point.shard, 2);
    let c = gantry_lang::check::check_source(
        "z.gantry",
        "plan p on X for w {\n  fix shrad = 2\n  objective maximize tokens_per_s\n}\n",
    );
    assert!(
        c.render(false).contains("did you mean `shard`"),
        "{}",
        c.render(false)
    );
}

#[test]
fn search_tries_every_shard_group_when_asked() {
    // `auto`: every divisor of dp x cp = 8 with ZeRO on; ZeRO off keeps
    // the one default group.
    let s = search(
        &plan("fix dp = 8, microbatch = 1, recompute = none, sequence_parallel = false\n  search zero in {0, 1}, shard = auto"),
        &BTreeMap::new(),
        100,
    )
    .expect("searches");
    let seen: BTreeSet<(u8, u64)> = s
        .top
        .iter()
        .map(|e| (e.point.zero, e.point.shard))
        .collect();
    assert_eq!(
        seen,
        BTreeSet::from([(0, 8), (1, 1), (1, 2), (1, 4), (1, 8)]),
        "{:?}",
        s.stats
    );
    // Not mentioned: only the default group.
    let s = search(
        &plan("fix dp = 8, microbatch = 1, recompute = none, sequence_parallel = false\n  search zero in {0, 1}"),
        &BTreeMap::new(),
        100,
    )
    .expect("searches");
    assert!(s.top.iter().all(|e| e.point.shard == 8));
}

#[test]
fn memory_bound_holds_under_hsdp() {
    let plan = plan("");
    let ir = gantry_compiler::ir::lower(&plan.workload).expect("lowers");
    let hw =
        gantry_compiler::hardware::Hardware::new(&plan.system, &plan.workload).expect("hardware");
    let ev = gantry_compiler::cost::Evaluator {
        ir: &ir,
        hw: &hw,
        prefill: None,
    };
    for fix in [
        "dp=8,zero=1,shard=2",
        "dp=4,cp=2,zero=3,shard=4",
        "dp=8,zero=2,shard=1",
    ] {
        let p = gantry_compiler::point::resolve(&parse_fix(fix).expect("pins"), &ir, &plan.system)
            .expect(fix);
        let bound = ev.memory_floor(&p);
        let got = ev.evaluate(&p).memory;
        assert!(bound.total() <= got.total() * (1.0 + 1e-12), "{fix}");
        // The bound shards the state over the same group.
        assert!(
            close(bound.optimizer, got.optimizer),
            "{fix}: {bound:?} {got:?}"
        );
    }
}
