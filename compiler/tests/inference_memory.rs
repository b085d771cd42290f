//! Inference holds more than weights and KV: a pass's transient
//! activations at its widest op, or its sampling (the sampled tokens'
//! full-vocabulary logits with their fp32 copy and probabilities),
//! whichever is larger (`cost::Evaluator::infer`, docs/COST-MODEL.md §4).
//! These tests hold the estimate to those formulas on the bundled
//! examples, so a change that drops either term or mis-sizes it fails.

mod common;

use std::collections::BTreeMap;

use gantry_compiler::cost::SAMPLING_BYTES_PER_LOGIT;
use gantry_compiler::plan::{Evaluation, evaluate};
use gantry_compiler::point::Pin;

const LLAMA3_VOCAB: f64 = 128_256.0;

fn at(file: &str, plan: &str, pins: &[(&str, i64)]) -> Evaluation {
    let p = common::plan(file, Some(plan));
    let pins: BTreeMap<String, Pin> = pins
        .iter()
        .map(|(k, v)| (k.to_string(), Pin::Int(*v)))
        .collect();
    evaluate(&p, &pins).unwrap_or_else(|e| panic!("{plan}: {} {}", e.code, e.message))
}

#[test]
fn decode_holds_its_batch_of_sampled_logits() {
    // A decode step samples one token per sequence: at a large batch the
    // logits outweigh the layer's transient, and grow with the batch.
    let batch = |b| {
        let pins = [("tp", 4), ("dp", 1), ("pp", 1), ("batch", b)];
        at(
            "examples/llm_decode.gantry",
            "llama3_70b_decode_h100",
            &pins,
        )
    };
    let (small, large) = (batch(64), batch(256));
    let beta = large.ir.act_bytes;
    let per_seq = LLAMA3_VOCAB * (beta + SAMPLING_BYTES_PER_LOGIT);
    for (ev, b) in [(&small, 64.0), (&large, 256.0)] {
        let e = &ev.estimate;
        assert!(
            (e.sampling_bytes_per_seq / per_seq - 1.0).abs() < 1e-9,
            "{} bytes per sequence, expected {per_seq}",
            e.sampling_bytes_per_seq
        );
        assert!(
            (e.memory.working / (per_seq * b) - 1.0).abs() < 1e-9,
            "batch {b}: working {} against {} of logits",
            e.memory.working,
            per_seq * b
        );
    }
}

#[test]
fn prefill_holds_its_widest_transient() {
    // A prefill of b prompts holds, at its widest op, activations that
    // grow with its tokens: twice the batch, twice the buffers, and more
    // than its eight sequences' logits.
    let batch = |b| {
        let pins = [("tp", 8), ("dp", 1), ("pp", 1), ("batch", b)];
        at(
            "examples/llm_prefill.gantry",
            "llama3_70b_prefill_ttft",
            &pins,
        )
    };
    let (one, two) = (batch(4), batch(8));
    let (w1, w2) = (one.estimate.memory.working, two.estimate.memory.working);
    assert!(w1 > 0.0, "no transient");
    assert!((w2 / w1 - 2.0).abs() < 1e-9, "{w1} -> {w2}");
    // At tp 8 the widest output on a rank is the replicated hidden state:
    // 2 x (widest + residual and its normalised copy) = 4 tokens x d.
    let tokens = 8.0 * 2048.0;
    let expected = 4.0 * tokens * two.ir.hidden * two.ir.act_bytes;
    assert!(
        (w2 / expected - 1.0).abs() < 1e-9,
        "{w2} against {expected}"
    );
    assert!(w2 > 8.0 * two.estimate.sampling_bytes_per_seq);
    // Infeasibility follows: the transient counts against HBM.
    let m = &two.estimate.memory;
    assert!((m.total() - (m.weights + m.kv_cache + m.working + m.reserve)).abs() < 1.0);
}

#[test]
fn context_parallel_prefill_samples_the_whole_vocabulary() {
    // Under context parallelism the rank holding a sequence's last token
    // samples its whole vocabulary, whatever share of the prompt it holds.
    let pins = |cp| vec![("tp", 2), ("cp", cp), ("dp", 1), ("pp", 1), ("batch", 4)];
    let file = "examples/llm_prefill.gantry";
    let one = at(file, "llama3_70b_prefill_ttft", &pins(1));
    let two = at(file, "llama3_70b_prefill_ttft", &pins(2));
    let per_seq = LLAMA3_VOCAB * (one.ir.act_bytes + SAMPLING_BYTES_PER_LOGIT);
    for ev in [&one, &two] {
        assert!(
            (ev.estimate.sampling_bytes_per_seq / per_seq - 1.0).abs() < 1e-9,
            "cp {}: {} bytes per sequence, expected {per_seq}",
            ev.estimate.point.cp,
            ev.estimate.sampling_bytes_per_seq
        );
    }
}
