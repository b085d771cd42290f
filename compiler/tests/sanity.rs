//! Issue 11: numbers are either meaningful or refused. `sanity::verify`
//! refuses every non-finite, negative or zero figure of an estimate and
//! names it; `sanity::missing_metric` agrees with `Estimate::metric`.

mod common;

use std::collections::BTreeMap;

use gantry_compiler::plan::{Evaluation, evaluate};
use gantry_compiler::sanity::{missing_metric, verify};
use gantry_lang::diagnostic::Code;
use gantry_lang::program::Phase;

fn evaluated(file: &str, plan: &str) -> Evaluation {
    let p = common::plan(file, Some(plan));
    evaluate(&p, &BTreeMap::new()).unwrap_or_else(|e| panic!("{plan}: {} {}", e.code, e.message))
}

#[test]
fn every_bad_figure_is_refused_and_named() {
    let ev = evaluated("examples/llm_train.gantry", "llama3_405b_meta");
    let hw = &ev.hardware;
    verify(&ev.estimate, hw).expect("a meaningful estimate passes");
    type Corrupt = fn(&mut gantry_compiler::cost::Estimate);
    let cases: [(&str, Corrupt); 10] = [
        ("step time", |e| e.time.step = f64::INFINITY),
        ("step time", |e| e.time.step = 0.0),
        ("step time", |e| e.time.step = -98.6),
        ("step time", |e| e.time.step = f64::NAN),
        ("throughput", |e| e.samples_per_step = 0.0),
        ("tensor-parallel communication time", |e| {
            e.time.tp_comm = f64::NAN
        }),
        ("memory for reserve", |e| e.memory.reserve = -9.7e12),
        ("MFU", |e| e.peak = -1.0),
        ("power", |e| e.power = f64::NEG_INFINITY),
        ("cost per million", |e| e.price_per_s = Some(-1.0)),
    ];
    for (what, corrupt) in cases {
        let mut e = ev.estimate.clone();
        corrupt(&mut e);
        let err = verify(&e, hw).expect_err(what);
        assert_eq!(err.code, Code::C016, "{what}: {}", err.message);
        assert!(err.message.contains(what), "{what}: {}", err.message);
        assert!(
            err.message.contains("tp=8"),
            "names the point: {}",
            err.message
        );
    }
}

#[test]
fn a_missing_link_is_named_by_its_node() {
    let ev = evaluated("examples/llm_train.gantry", "llama3_405b_meta");
    let mut hw = ev.hardware.clone();
    hw.topo.up_bw = 0.0;
    let mut e = ev.estimate.clone();
    let c = e
        .comms
        .iter_mut()
        .find(|c| c.what.starts_with("tensor-parallel"))
        .expect("a tensor-parallel collective");
    c.time = f64::INFINITY;
    e.time.tp_comm = f64::INFINITY;
    e.time.step = f64::INFINITY;
    let err = verify(&e, &hw).expect_err("no link");
    assert_eq!(err.code, Code::C014, "{}", err.message);
    assert!(
        err.message.contains(&hw.node) && err.message.contains("`link`"),
        "{}",
        err.message
    );
}

/// Every metric the language accepts (the serving percentiles and
/// goodput included: the static rule must say a phase workload lacks them).
const METRICS: &[&str] = gantry_lang::check::METRICS;

/// The static rule behind `C015` says a metric is missing exactly when the
/// estimate has no value for it, for every phase, with and without a price.
#[test]
fn missing_metrics_match_estimates() {
    let plans = [
        ("examples/llm_train.gantry", "llama3_405b_meta"),
        ("examples/llm_prefill.gantry", "llama3_70b_prefill_ttft"),
        ("examples/llm_decode.gantry", "llama3_70b_decode_h100"),
        (
            "examples/dlrm_inference.gantry",
            "dlrm_small_inference_a100",
        ),
        ("examples/dlrm_train.gantry", "dlrm_large_train_a100"),
    ];
    let mut phases = Vec::new();
    for (file, name) in plans {
        let ev = evaluated(file, name);
        let p = common::plan(file, Some(name));
        let prefill = matches!(
            p.workload.phase,
            Phase::Decode {
                prompt: Some(_),
                ..
            }
        )
        .then_some(&ev.ir);
        phases.push(format!("{:?}", std::mem::discriminant(&ev.ir.phase)));
        for priced in [true, false] {
            let (mut hw, mut e) = (ev.hardware.clone(), ev.estimate.clone());
            if !priced {
                hw.price_per_device = None;
                e.price_per_s = None;
            }
            for m in METRICS {
                let missing = missing_metric(m, &ev.ir, &hw, prefill);
                assert_eq!(
                    missing.is_some(),
                    e.metric(m).is_none(),
                    "{name} (priced: {priced}): `{m}` {missing:?} vs {:?}",
                    e.metric(m)
                );
            }
        }
    }
    phases.dedup();
    assert!(phases.len() >= 3, "train, prefill and decode: {phases:?}");
}
