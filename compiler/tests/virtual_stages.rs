//! `virtual_stages = auto` (issue 10, item 5): every count the layers
//! allow (`v x pp <= layers`, uneven stages allowed), interleaving only
//! where the microbatches per replica are a multiple of `pp`
//! (Megatron-LM's rule), pinned violations rejected (`C004`); and the
//! search's memo of segment costs gives the evaluator's own figures.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use gantry_compiler::cost::{Evaluator, memoize_segments};
use gantry_compiler::hardware::Hardware;
use gantry_compiler::ir::lower;
use gantry_compiler::plan::search;
use gantry_compiler::point::{Pin, parse_fix, resolve};
use gantry_compiler::search::{max_virtual_stages, space};
use gantry_lang::diagnostic::Code;
use gantry_lang::program::Plan;

/// A 13-layer model (13 = 3 x 4 + 1: stages of uneven size) on 4 GPUs,
/// `batch` sequences per step, one replica, microbatch 1.
fn plan(batch: u64, pp: u64) -> Plan {
    let gpu_box = common::gpu_box(4);
    let src = format!(
        "{gpu_box}model M(d = 256, ff = 1024, vocab = 1000) {{
  input tokens: i32[batch, seq]
  x = embedding(tokens, vocab, d)
  repeat 13 {{
    x = x + linear(gelu(linear(rmsnorm(x), d, ff)), ff, d)
  }}
  output logits = linear(rmsnorm(x), d, vocab)
}}
workload w {{
  model M
  train {{ seq = 64, global_batch = {batch}, dtype = bf16, optimizer = adam }}
}}
plan p on Box for w {{
  fix tp = 1, cp = 1, dp = 1, pp = {pp}, microbatch = 1, zero = 0
  fix recompute = none, sequence_parallel = false
  search virtual_stages = auto
  objective maximize tokens_per_s
}}
"
    );
    let c = gantry_lang::check::check_source("v.gantry", &src);
    assert!(!c.has_errors(), "{}", c.render(false));
    c.program.plans["p"].clone()
}

fn virtual_stages_found(plan: &Plan) -> (BTreeSet<u64>, gantry_compiler::search::Stats) {
    let s = search(plan, &BTreeMap::new(), 1000).expect("searches");
    (
        s.top.iter().map(|e| e.point.virtual_stages).collect(),
        s.stats,
    )
}

#[test]
fn auto_tries_every_count_the_layers_allow() {
    assert_eq!(max_virtual_stages(1, 13), 1);
    assert_eq!(max_virtual_stages(3, 13), 4);
    assert_eq!(max_virtual_stages(4, 13), 3);
    // 6 microbatches on 3 stages: every v with 3 v <= 13, including 3,
    // which is not a power of two, and 4 (stages of 5, 4, 4 layers).
    let p = plan(6, 3);
    let ir = lower(&p.workload).expect("lowers");
    let sp = space(&p, &ir, &BTreeMap::new());
    assert_eq!(sp.virtual_stages, None);
    assert_eq!(sp.size(), 4);
    let (found, stats) = virtual_stages_found(&p);
    assert_eq!(found, BTreeSet::from([1, 2, 3, 4]), "{stats:?}");
    assert_eq!((stats.space, stats.evaluated), (4, 4), "{stats:?}");
    let best = search(&p, &BTreeMap::new(), 1).expect("searches");
    assert_eq!(best.best.estimate.stage_layers.iter().sum::<u64>(), 13);
}

#[test]
fn interleaving_needs_a_multiple_of_pp_microbatches() {
    // 4 microbatches on 3 stages: Megatron-LM's interleaved schedule
    // cannot run, so `auto` leaves every v > 1 out of the space (not
    // enumerated, not counted as invalid).
    let (found, stats) = virtual_stages_found(&plan(4, 3));
    assert_eq!(found, BTreeSet::from([1]));
    assert_eq!((stats.space, stats.invalid), (1, 0), "{stats:?}");
    // Pinned, it is an error naming the knob and the numbers.
    let p = plan(4, 3);
    let ir = lower(&p.workload).expect("lowers");
    let pins: BTreeMap<String, Pin> =
        parse_fix("tp=1,dp=1,pp=3,microbatch=1,virtual_stages=2").expect("pins");
    let e = resolve(&pins, &ir, &p.system).expect_err("4 microbatches on 3 stages");
    assert_eq!((e.code, e.knob), (Code::C004, "virtual_stages"));
    assert!(
        e.message.contains("4 microbatches") && e.message.contains("pp = 3"),
        "{e:?}"
    );
    // And more chunks than layers.
    let p = plan(6, 3);
    let pins = parse_fix("tp=1,dp=1,pp=3,microbatch=1,virtual_stages=5").expect("pins");
    let e = resolve(&pins, &ir, &p.system).expect_err("15 chunks of 13 layers");
    assert_eq!((e.code, e.knob), (Code::C004, "virtual_stages"));
    // An explicit domain is searched as written: the points that break a
    // rule are invalid, not left out.
    let mut q = plan(4, 3);
    q.search.insert(
        "virtual_stages".into(),
        gantry_lang::program::Domain::Ints(vec![1, 2]),
    );
    let (found, stats) = virtual_stages_found(&q);
    assert_eq!(found, BTreeSet::from([1]));
    assert_eq!((stats.space, stats.invalid), (2, 1), "{stats:?}");
}

/// The search memoizes segment costs by (tp, cp, ep, sequence
/// parallelism, recomputation, microbatch): every point of a wide grid of
/// two examples evaluates to the same estimate inside and outside the memo,
/// in an order that revisits each key after other knobs changed.
#[test]
fn memoized_segments_give_the_evaluators_figures() {
    for (file, name) in [
        ("examples/llm_train.gantry", "llama3_405b_best"),
        ("examples/moe_train.gantry", ""),
    ] {
        let c = common::checked(file);
        let plan = if name.is_empty() {
            c.program.plans.values().next().expect("a plan").clone()
        } else {
            c.program.plans[name].clone()
        };
        let ir = lower(&plan.workload).expect("lowers");
        let hw = Hardware::new(&plan.system, &plan.workload).expect("hardware");
        let ev = Evaluator {
            ir: &ir,
            hw: &hw,
            prefill: None,
        };
        let mut points = Vec::new();
        for zero in [0, 1, 3] {
            for pp in [1, 2, 4] {
                for tp in [1, 2] {
                    for (mb, v) in [(1, 1), (2, 2), (1, 2)] {
                        for rc in ["none", "full"] {
                            for sp in [false, true] {
                                let fix = format!(
                                    "tp={tp},pp={pp},zero={zero},microbatch={mb},virtual_stages={v},recompute={rc},sequence_parallel={sp},dp=8"
                                );
                                let pins = parse_fix(&fix).expect("pins");
                                if let Ok(p) = resolve(&pins, &ir, &plan.system) {
                                    points.push(p);
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(points.len() > 100, "{file}: {} points", points.len());
        let memoized: Vec<String> = {
            let _memo = memoize_segments();
            points
                .iter()
                .map(|p| format!("{:?}", ev.evaluate(p)))
                .collect()
        };
        for (p, m) in points.iter().zip(&memoized) {
            assert_eq!(&format!("{:?}", ev.evaluate(p)), m, "{file} at {p}");
        }
    }
}
