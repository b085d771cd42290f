//! The physics of issue 10, each checked against the formula it claims:
//! fused attention, mixed precision, fusion modes, overlap per mechanism,
//! per-phase calibration and working memory.

mod common;

use std::collections::BTreeMap;

use gantry_compiler::cost::Estimate;
use gantry_compiler::ir::{Class, FLASH_BLOCK, Ir};
use gantry_compiler::plan::evaluate;
use gantry_compiler::point::parse_fix;
use gantry_lang::check::check;
use gantry_lang::program::Plan;

use common::WithSource;

/// A Llama-shaped block on 8 Grand Teton H100s (96 GB variant, calibrated
/// for training), with `settings` added to the `train` record.
fn plan(settings: &str, seq: u64) -> Plan {
    let src = format!(
        r#"import "stdlib/clusters/grand_teton_roce.gantry"
import "stdlib/models/llama.gantry"
workload w {{
  model Llama(layers = 4, d_model = 2048, heads = 16, kv_heads = 4, d_ff = 5632, vocab = 32000)
  train {{ seq = {seq}, global_batch = 8, dtype = bf16, optimizer = adamw{settings} }}
}}
plan p on GrandTetonRoCE96(nodes = 1) for w {{
  fix tp = 1, pp = 1, dp = 8, zero = 1, recompute = none, microbatch = 1
}}
"#
    );
    let c = check(&["test.gantry".to_string()], &WithSource(src));
    assert!(!c.has_errors(), "{}", c.render(false));
    c.program.plans.get("p").cloned().expect("plan p")
}

fn eval(settings: &str, seq: u64, fix: &str) -> (Ir, Estimate) {
    let p = plan(settings, seq);
    let pins = if fix.is_empty() {
        BTreeMap::new()
    } else {
        parse_fix(fix).expect("pins")
    };
    let ev = evaluate(&p, &pins).expect("evaluates");
    (ev.ir, ev.estimate)
}

fn attention_flops(ir: &Ir) -> f64 {
    ir.segments
        .iter()
        .flat_map(|s| s.ops.iter())
        .filter(|o| o.class == Class::Attention)
        .map(|o| o.flops)
        .sum()
}

#[test]
fn fused_causal_attention_skips_the_blocks_above_the_diagonal() {
    let seq = 4096;
    let (fused, _) = eval("", seq, "");
    let (dense, _) = eval(", attention = materialized", seq, "");
    let n = (seq as f64 / FLASH_BLOCK).ceil();
    let ratio = attention_flops(&fused) / attention_flops(&dense);
    assert!(
        (ratio - (n + 1.0) / (2.0 * n)).abs() < 1e-12,
        "ratio {ratio}"
    );
}

#[test]
fn flash_attention_efficiency_halves_at_the_device_balance() {
    use gantry_compiler::cost::flash_efficiency;
    // An H100 SXM in bf16: L0 = 2 x 989.4 / (2 x 3.35) = 295.3 keys.
    let (peak, bw) = (989.4e12, 3.35e12);
    let l0 = 2.0 * peak / (2.0 * bw);
    let e = |keys: f64, blocks: f64| flash_efficiency(keys, blocks, 2.0, peak, bw, Some(132));
    assert!((e(l0, 132.0) - 0.5).abs() < 1e-12);
    assert!((e(3.0 * l0, 264.0) - 0.75).abs() < 1e-12);
    // One block more than two waves: the third wave runs 1 of 132.
    assert!((e(l0, 265.0) - 0.5 * 265.0 / 396.0).abs() < 1e-12);
    // Without declared cores, no wave term.
    assert!((flash_efficiency(l0, 7.0, 2.0, peak, bw, None) - 0.5).abs() < 1e-12);
}

/// `eval` on the plan with the device's special-function rate replaced
/// (`None`: undeclared, the softmax's exponentials cost nothing).
fn eval_sfu(seq: u64, fix: &str, sfu: Option<f64>) -> (Ir, Estimate) {
    let mut p = plan("", seq);
    p.system.node.device.sfu = sfu;
    let ev = evaluate(&p, &parse_fix(fix).expect("pins")).expect("evaluates");
    (ev.ir, ev.estimate)
}

/// Ring context parallelism runs one fused kernel per step over the
/// rank's `s / c` queries and one step's `s / c` keys: the same work in
/// shorter loops. At 8,192 tokens on eight GPUs, `cp = 8` against `dp = 8`
/// (one sample per rank either way) charges attention's products the
/// ratio of the two calls' efficiencies, `f(L1) / f(L8)` with `f(L) = L /
/// (L + L0)` (the device's `sfu` left out here: its exponentials are the
/// same in both and do not depend on the loop).
#[test]
fn ring_attention_runs_one_short_kernel_per_step() {
    let seq = 8192;
    let (ir, whole) = eval_sfu(seq, "dp=8,cp=1", None);
    let (_, ring) = eval_sfu(seq, "dp=1,cp=8", None);
    let ev = evaluate(&plan("", seq), &BTreeMap::new()).expect("evaluates");
    let hw = &ev.hardware;
    let l0 = ir.act_bytes * hw.peak / (2.0 * hw.hbm_bandwidth);
    let n = (seq as f64 / FLASH_BLOCK).ceil();
    let keys = seq as f64 * (n + 1.0) / (2.0 * n);
    let f = |l: f64| l / (l + l0);
    // Both grids are 1,024 and 128 blocks (64 or 8 query blocks x 16
    // heads): the same share of 132 cores, so only the loop differs.
    let expected = f(keys) / f(keys / 8.0);
    let ratio = ring.time.compute.attention / whole.time.compute.attention;
    assert!(
        (ratio - expected).abs() < 1e-9 * expected,
        "ratio {ratio}, expected {expected}"
    );
    assert!(expected > 1.5, "{expected}");
}

/// Attention seconds of a 4-layer Llama block (`heads` as given) on 8
/// Grand Teton H100s at `dp = 8` and `fix` pins, for phase record `phase`,
/// with the device's `sfu` replaced.
fn attention_with_sfu(heads: &str, phase: &str, fix: &str, sfu: Option<f64>) -> f64 {
    let fix = if fix.is_empty() {
        String::new()
    } else {
        format!(", {fix}")
    };
    let text = format!(
        r#"import "stdlib/clusters/grand_teton_roce.gantry"
import "stdlib/models/llama.gantry"
workload w {{
  model Llama(layers = 4, d_model = 2048, {heads}, d_ff = 5632, vocab = 32000)
  {phase}
}}
plan p on GrandTetonRoCE96(nodes = 1) for w {{
  fix tp = 1, pp = 1, dp = 8{fix}
}}
"#
    );
    let c = check(&["test.gantry".to_string()], &WithSource(text));
    assert!(!c.has_errors(), "{}", c.render(false));
    let mut p = c.program.plans["p"].clone();
    p.system.node.device.sfu = sfu;
    evaluate(&p, &BTreeMap::new())
        .expect("evaluates")
        .estimate
        .time
        .compute
        .attention
}

/// The softmax's exponentials run on the special-function units, in
/// series with the products: one per score in the forward and one in the
/// backward (which recomputes the probabilities), `F / (4 d)` per pass for
/// a pass of `F` FLOPs of products at head dim `d`. Declaring the device's
/// `sfu` adds exactly `2 F / (4 d sfu)` to a step without recomputation;
/// halving the head dim at the same FLOPs doubles it.
#[test]
fn softmax_exponentials_run_on_the_special_function_units() {
    let seq = 4096;
    let sfu = 3.26e12;
    let (ir, without) = eval_sfu(seq, "", None);
    let (_, with) = eval_sfu(seq, "", Some(sfu));
    // One sample per rank and step (dp = 8, batch 8, microbatch 1).
    let forward: f64 = ir
        .segments
        .iter()
        .flat_map(|s| s.ops.iter().map(move |o| (s.count as f64, o)))
        .filter(|(_, o)| o.class == Class::Attention)
        .map(|(n, o)| n * o.flops * o.mult)
        .sum();
    let head_dim = 2048.0 / 16.0;
    let expected = 2.0 * forward / (4.0 * head_dim) / sfu;
    let added = with.time.compute.attention - without.time.compute.attention;
    assert!(
        (added - expected).abs() < 1e-9 * expected,
        "added {added}, expected {expected}"
    );
    // And to the step: nothing else moves with it.
    let step = with.step_time() - without.step_time();
    assert!(
        (step - expected).abs() < 1e-9 * expected,
        "step grew {step}, expected {expected}"
    );
    // The same FLOPs at half the head dim (32 heads of 64): twice the
    // exponentials. The products' time moves too (more, narrower calls),
    // so compare what the exponentials add at each width.
    let narrow = |sfu| {
        attention_with_sfu(
            "heads = 32, kv_heads = 8",
            "train { seq = 4096, global_batch = 8, dtype = bf16, optimizer = adamw }",
            "zero = 1, recompute = none, microbatch = 1",
            sfu,
        )
    };
    let added_narrow = narrow(Some(sfu)) - narrow(None);
    assert!(
        (added_narrow / added - 2.0).abs() < 1e-9,
        "d = 64 adds {added_narrow}, d = 128 adds {added}"
    );
    // Prefill is not charged: the serving engines' kernels overlap the
    // softmax with the products.
    let prefill = |sfu| {
        attention_with_sfu(
            "heads = 16, kv_heads = 4",
            "prefill { batch = 8, prompt = 4096, dtype = bf16 }",
            "",
            sfu,
        )
    };
    let (a, b) = (prefill(Some(sfu)), prefill(None));
    assert!(
        a > 0.0 && a == b,
        "prefill attention {a} with sfu, {b} without"
    );
}

#[test]
fn fused_attention_stores_no_score_matrix() {
    // Activations grow linearly with the sequence under fused attention
    // and faster than linearly when the scores are materialized.
    let act = |settings: &str, seq| eval(settings, seq, "").1.memory.activations;
    let fused = act("", 4096) / act("", 2048);
    let dense = act(", attention = materialized", 4096) / act(", attention = materialized", 2048);
    assert!((fused - 2.0).abs() < 1e-9, "fused grows {fused}x");
    assert!(dense > 2.5, "materialized grows {dense}x");
}

#[test]
fn fp8_linear_layers_are_faster_than_bf16_but_not_twice() {
    let (_, bf16) = eval(", fusion = compiled", 2048, "");
    let (_, fp8) = eval(
        ", fusion = compiled, precision = { matmul = fp8 }",
        2048,
        "",
    );
    let (b, f) = (bf16.time.step, fp8.time.step);
    assert!(f < b, "fp8 {f} s vs bf16 {b} s");
    assert!(f > b / 2.0, "fp8 {f} s is at least half of bf16 {b} s");
    // Only the linear layers change: attention time is the same.
    assert_eq!(bf16.time.compute.attention, fp8.time.compute.attention);
}

/// HFU is measured against the peak each FLOP runs at: under FP8 matrix
/// products the linear layers' FLOPs count at the FP8 peak, the rest at
/// the BF16 peak, so HFU stays at or under 100%; MFU keeps the BF16 peak,
/// as published FP8 runs quote it.
#[test]
fn hfu_counts_fp8_products_at_the_fp8_peak() {
    let p = plan(", fusion = compiled, precision = { matmul = fp8 }", 2048);
    let ev = evaluate(&p, &BTreeMap::new()).expect("evaluates");
    let (ir, e, hw) = (&ev.ir, &ev.estimate, &ev.hardware);
    assert!(
        hw.peak_matmul > 1.9 * hw.peak,
        "{} vs {}",
        hw.peak_matmul,
        hw.peak
    );
    // The linear layers' FLOPs by hand: per layer q and o (d x d), k and
    // v (d x 512: 4 key/value heads of 128), gate, up and down (d x
    // 5,632 each); four layers and the output head (d x 32,000); 2 FLOPs
    // per weight and token, 2,048 tokens, eight samples, forward and
    // backward (3x), no recomputation.
    let d = 2048.0;
    let per_layer = 2.0 * d * d + 2.0 * d * 512.0 + 3.0 * d * 5632.0;
    let weights = 4.0 * per_layer + d * 32000.0;
    let linear = 3.0 * 8.0 * 2.0 * 2048.0 * weights;
    assert_eq!(3.0 * 8.0 * ir.linear_flops_per_sample(), linear);
    let all = e.hardware_flops;
    assert!(linear > 0.5 * all && linear < all, "{linear} of {all}");
    let expect = all / (linear / hw.peak_matmul + (all - linear) / hw.peak);
    assert!((e.hardware_peak - expect).abs() <= 1e-9 * expect);
    assert!(e.hfu() <= 1.0 && e.hfu() > 0.0, "hfu {}", e.hfu());
    assert!(
        e.mfu() > e.hfu(),
        "MFU at the BF16 peak exceeds HFU at the mixed peak"
    );
    let (_, bf16) = eval(", fusion = compiled", 2048, "");
    assert_eq!(bf16.hardware_peak, bf16.peak);
}

#[test]
fn fusion_modes_order_the_elementwise_time() {
    let ew = |settings: &str| eval(settings, 2048, "").1.time.compute.elementwise;
    let (eager, kernels, compiled) = (ew(", fusion = eager"), ew(""), ew(", fusion = compiled"));
    assert!(eager > kernels, "eager {eager} vs kernels {kernels}");
    assert!(
        kernels > compiled,
        "kernels {kernels} vs compiled {compiled}"
    );
}

#[test]
fn fsdp_prefetch_hides_gathers_behind_compute() {
    let fix = "zero=3";
    let (_, hidden) = eval("", 2048, fix);
    let (_, exposed) = eval(", overlap = { fsdp = false }", 2048, fix);
    let comm = |e: &Estimate| {
        e.comms
            .iter()
            .find(|c| c.what.starts_with("ZeRO-3"))
            .map(|c| (c.time, c.exposed))
            .expect("ZeRO-3 traffic")
    };
    let (t_hidden, x_hidden) = comm(&hidden);
    let (t_exposed, x_exposed) = comm(&exposed);
    // Without overlap every gather is exposed, recomputation or not.
    assert_eq!(t_exposed, x_exposed);
    assert!(x_hidden < x_exposed, "{x_hidden} vs {x_exposed}");
    // Prefetching gathers once per pass: no more traffic than without.
    assert!(t_hidden <= t_exposed);
    assert!(hidden.time.step < exposed.time.step);
}

#[test]
fn async_tensor_parallelism_hides_collectives_behind_products() {
    let fix = "tp=4,dp=2,sequence_parallel=true";
    let (_, sync) = eval("", 2048, fix);
    let (_, overlapped) = eval(", overlap = { tp = true }", 2048, fix);
    assert!(sync.time.tp_comm > 0.0);
    assert!(overlapped.time.tp_comm < sync.time.tp_comm);
    // The traffic is the same; only what is exposed changes.
    let bytes = |e: &Estimate| {
        e.comms
            .iter()
            .find(|c| c.what.starts_with("tensor"))
            .map(|c| c.bytes)
            .expect("tp traffic")
    };
    assert_eq!(bytes(&sync), bytes(&overlapped));
}

#[test]
fn factors_are_read_per_phase() {
    use gantry_compiler::hardware::Hardware;
    let train = plan("", 2048);
    let hw = Hardware::new(&train.system, &train.workload).expect("hardware");
    // H100_96GB declares training factors only: its fit band is read for
    // training.
    assert!(hw.e_matmul < 1.0);
    assert!(
        hw.uncertainty
            .as_ref()
            .is_some_and(|u| u.borrowed_from.is_none())
    );
    // The H100-SXM has its own inference fit; its training borrows the
    // 96 GB part's (`train = H100_96GB`): the same factors and band, with
    // the lender named.
    let c = common::checked("examples/reference/d01_llama31_70b_tp1_128_128.gantry");
    let d = c.program.plans.values().next().expect("plan");
    let infer = Hardware::new(&d.system, &d.workload).expect("hardware");
    assert!(infer.e_matmul < 1.0);
    assert!(infer.e_matmul != hw.e_matmul);
    assert!(
        infer
            .uncertainty
            .as_ref()
            .is_some_and(|u| u.borrowed_from.is_none())
    );
    let mut w = d.workload.clone();
    w.phase = train.workload.phase.clone();
    let borrowed = Hardware::new(&d.system, &w).expect("hardware");
    assert_eq!(borrowed.device, "H100_SXM");
    assert_eq!(
        (borrowed.e_matmul, borrowed.e_attention, borrowed.e_memory),
        (hw.e_matmul, hw.e_attention, hw.e_memory)
    );
    assert_eq!(borrowed.tp_overlap, hw.tp_overlap);
    // The framework's time per step is not the silicon's: not lent.
    assert!(hw.step_overhead > 0.0);
    assert_eq!(borrowed.step_overhead, 0.0);
    let band = borrowed.uncertainty.expect("a borrowed band");
    let own = hw.uncertainty.expect("the lender's band");
    assert_eq!(
        (band.rows, band.median, band.max),
        (own.rows, own.median, own.max)
    );
    assert_eq!(band.borrowed_from.as_deref(), Some("H100_96GB"));
}

#[test]
fn borrowed_factors_follow_the_lender() {
    // A borrower's factors are the lender's for that phase, whatever they
    // are: change the lender and the borrower moves with it, and a chain
    // names the device the band was measured on.
    use gantry_compiler::hardware::Hardware;
    let src = |matmul: f64| {
        format!(
            r#"import "stdlib/models/llama.gantry"
device Lender {{
  compute {{ bf16 = 100 TFLOP/s }}
  memory hbm = 80 GB @ 2 TB/s
  power 300 W
  efficiency {{ memory = 0.5, train = {{ matmul = {matmul}, fit_rows = 3, loo_median = 0.04, loo_max = 0.09 }} }}
}}
device Middle {{
  compute {{ bf16 = 200 TFLOP/s }}
  memory hbm = 80 GB @ 2 TB/s
  power 300 W
  efficiency {{ train = Lender }}
}}
device Borrower {{
  compute {{ bf16 = 400 TFLOP/s }}
  memory hbm = 80 GB @ 4 TB/s
  power 500 W
  efficiency {{ train = Middle }}
}}
node N(gpus = 8) {{
  device Borrower x gpus
  link nvlink = switch(450 GB/s)
}}
cluster C(nodes = 1) {{
  node N x nodes
}}
workload w {{
  model Llama(layers = 2, d_model = 512, heads = 8, kv_heads = 8, d_ff = 1024, vocab = 1000)
  train {{ seq = 512, global_batch = 8, dtype = bf16, optimizer = adamw }}
}}
plan p on C for w {{
  fix tp = 1, pp = 1, dp = 8
}}
"#
        )
    };
    let hw = |matmul: f64| {
        let c = check(&["test.gantry".to_string()], &WithSource(src(matmul)));
        assert!(!c.has_errors(), "{}", c.render(false));
        let p = c.program.plans.get("p").expect("plan p");
        Hardware::new(&p.system, &p.workload).expect("hardware")
    };
    let (a, b) = (hw(0.5), hw(0.8));
    assert_eq!(a.device, "Borrower");
    assert_eq!((a.e_matmul, b.e_matmul), (0.5, 0.8));
    // The lender's device-wide factor is lent for the phase too.
    assert_eq!(a.e_memory, 0.5);
    let u = a.uncertainty.expect("band");
    assert_eq!((u.rows, u.median, u.max), (3, 0.04, 0.09));
    assert_eq!(u.borrowed_from.as_deref(), Some("Lender"));
}

#[test]
fn the_loss_logits_are_working_memory_of_the_last_stage() {
    // Doubling the vocabulary adds the logits' bytes per token: the loss's
    // fp32 log-softmax and its two fp32 gradients, 12 bytes per logit on
    // the one pipeline stage.
    let (_, base) = eval("", 2048, "");
    let src_vocab = |v: u64| {
        let src = format!(
            r#"import "stdlib/clusters/grand_teton_roce.gantry"
import "stdlib/models/llama.gantry"
workload w {{
  model Llama(layers = 4, d_model = 2048, heads = 16, kv_heads = 4, d_ff = 5632, vocab = {v})
  train {{ seq = 2048, global_batch = 8, dtype = bf16, optimizer = adamw }}
}}
plan p on GrandTetonRoCE96(nodes = 1) for w {{
  fix tp = 1, pp = 1, dp = 8, zero = 1, recompute = none, microbatch = 1
}}
"#
        );
        let c = check(&["test.gantry".to_string()], &WithSource(src));
        let p = c.program.plans.get("p").cloned().expect("plan");
        evaluate(&p, &BTreeMap::new()).expect("evaluates").estimate
    };
    let wide = src_vocab(64000);
    let extra = wide.memory.working - base.memory.working;
    let expected = 2048.0 * 32000.0 * 12.0;
    assert!(
        (extra - expected).abs() / expected < 1e-9,
        "{extra} vs {expected}"
    );
}

#[test]
fn selective_keeps_torchtitans_op_policy_set() {
    // Op-level selective keeps, per token and layer, the layer's input,
    // attention's output and fp32 log-sum-exp, and the outputs of the
    // first and third ... linear (wq, wv, w1, w2); full keeps the input:
    // the difference is 2 (d + kv + ff + d + d) + 4 heads bytes.
    let seq = 2048;
    let (_, sel) = eval(", fusion = compiled", seq, "recompute=selective");
    let (_, full) = eval(", fusion = compiled", seq, "recompute=full");
    let (d, kv, ff, heads, layers) = (2048.0, 4.0 * 128.0, 5632.0, 16.0, 4.0);
    let per_token = 2.0 * (d + kv + ff + d + d) + 4.0 * heads;
    let expected = layers * seq as f64 * per_token;
    let got = sel.memory.activations - full.memory.activations;
    assert!(
        (got - expected).abs() / expected < 1e-9,
        "{got} vs {expected}"
    );
}

#[test]
fn pipeline_in_flight_follows_the_schedules_warm_up() {
    use gantry_compiler::cost::pipeline_in_flight;
    // 1F1B: min(m, pp) microbatches.
    assert_eq!(pipeline_in_flight(8.0, 1.0, 8.0), 8.0);
    assert_eq!(pipeline_in_flight(8.0, 1.0, 3.0), 3.0);
    // Interleaved, m = pp: every chunk forward is warm-up, the same
    // activations as 1F1B (torchtitan's 405B runs, 8 microbatches).
    assert_eq!(pipeline_in_flight(8.0, 2.0, 8.0), 8.0);
    // Many microbatches: Korthikanti et al.'s pp (1 + (pp - 1) / (pp v)).
    let v = 2.0;
    assert_eq!(
        pipeline_in_flight(8.0, v, 64.0),
        8.0 * (1.0 + 7.0 / (8.0 * v))
    );
}

#[test]
fn the_memory_margin_is_said_when_the_pick_needs_more_hbm() {
    use gantry_compiler::explain::memory_margin;
    let (_, none) = eval("", 4096, "recompute=none");
    let (_, full) = eval("", 4096, "recompute=full");
    assert!(none.memory.total() > full.memory.total());
    let said = memory_margin(&none, &full, "the published configuration").expect("said");
    assert!(
        said.contains("recompute=none") && said.contains("recompute=full"),
        "{said}"
    );
    // A pick that needs less HBM than the published run has no memory
    // side to tell.
    assert_eq!(
        memory_margin(&full, &none, "the published configuration"),
        None
    );
}

#[test]
fn sequence_parallel_backward_holds_a_gathered_input_and_its_gradient_whole() {
    // Under sequence parallelism every saved byte (and the loss's logits)
    // is split over tp, so a layer's working buffers are B / t, plus what
    // the backward of a column-parallel linear holds whole: its re-gathered
    // input (for the weight gradient) and that input's gradient before its
    // reduce-scatter, tokens x d_model each, less their 1 / t share:
    // working(t) = B / t + W (1 - 1 / t), W = 2 x 2 bytes x tokens x d.
    let fix = |t: u32| {
        format!(
            "tp={t},dp={},sequence_parallel={},recompute=full",
            8 / t,
            t > 1
        )
    };
    let seq = 2048;
    let w = |t: u32| eval("", seq, &fix(t)).1.memory.working;
    let (w1, w2, w4) = (w(1), w(2), w(4));
    let expected = 2.0 * 2.0 * seq as f64 * 2048.0;
    for (t, wt) in [(2.0, w2), (4.0, w4)] {
        let got = (t * wt - w1) / (t - 1.0);
        assert!(
            (got - expected).abs() / expected < 1e-9,
            "tp={t}: {got} vs {expected}"
        );
    }
}

#[test]
fn pipeline_receive_buffers_are_held_for_every_microbatch() {
    // torchtitan's 405B runs F09 (1F1B) and F10 (interleaved, 2 chunks per
    // rank) differ only in the chunks: the first rank receives the
    // gradient of each of its 2 chunks and the activations of its second
    // for all 8 microbatches, 3 x 8 buffers against 1 x 8, of one
    // stage-boundary tensor each (4 x 8192 tokens x 16384 x 2 bytes / tp 8).
    let load = |file: &str| {
        let c = gantry_lang::check::check(&[file.to_string()], &common::Workspace);
        assert!(!c.has_errors(), "{}", c.render(false));
        let p = c.program.plans.values().next().cloned().expect("plan");
        evaluate(&p, &BTreeMap::new()).expect("evaluates").estimate
    };
    let a = load("examples/reference/f09_llama31_405b_512gpu.gantry");
    let b = load("examples/reference/f10_llama31_405b_512gpu.gantry");
    assert_eq!(a.memory.activations, b.memory.activations);
    let boundary = 4.0 * 8192.0 * 16384.0 * 2.0 / 8.0;
    let expected = (3.0 - 1.0) * 8.0 * boundary;
    let got = b.memory.working - a.memory.working;
    assert!(
        (got - expected).abs() / expected < 1e-9,
        "{got} vs {expected}"
    );
}

/// The model's saved bytes per token and layer at the Llama 3.1 8B widths
/// (d 4096, 32 heads, 8 KV heads, d_ff 14336), in units of d bytes: what
/// four layers save over two, halved, on one device with one microbatch
/// of 2 x 8192 tokens (the measurement's step).
fn saved_per_layer_8b(recompute: &str) -> f64 {
    let at = |layers: u32| {
        let src = format!(
            r#"import "stdlib/clusters/grand_teton_roce.gantry"
import "stdlib/models/llama.gantry"
workload w {{
  model Llama(layers = {layers}, d_model = 4096, heads = 32, kv_heads = 8, d_ff = 14336, vocab = 128256)
  train {{ seq = 8192, global_batch = 16, dtype = bf16, optimizer = adamw, fusion = compiled }}
}}
plan p on GrandTetonRoCE96(nodes = 1) for w {{
  fix tp = 1, pp = 1, dp = 8, zero = 1, recompute = {recompute}, microbatch = 2
}}
"#
        );
        let c = check(&["test.gantry".to_string()], &WithSource(src));
        assert!(!c.has_errors(), "{}", c.render(false));
        let p = c.program.plans.get("p").cloned().expect("plan");
        evaluate(&p, &BTreeMap::new())
            .expect("evaluates")
            .estimate
            .memory
            .activations
    };
    (at(4) - at(2)) / 2.0 / (2.0 * 8192.0) / 4096.0
}

#[test]
fn the_gpu_measurement_agrees_with_the_saved_sets_and_the_loss() {
    // tests/clients/measure_allocator_gpu.txt: a torchtitan-style Llama 3
    // trained on an H200 (torch's own allocator counts, not a model); its
    // per-layer lines read "per layer X GiB (  Y d)" and "(Z B per logit)".
    let txt = include_str!("../../tests/clients/measure_allocator_gpu.txt");
    let figure = |line: &str, after: &str, unit: &str| -> f64 {
        let rest = &line[line.find(after).expect("field") + after.len()..];
        let end = rest.find(unit).expect("unit");
        rest[..end].trim().parse().expect("number")
    };
    let mut seen = 0;
    for line in txt
        .lines()
        .filter(|l| l.contains("per layer ") && l.contains(" d)"))
    {
        let measured = figure(line, "GiB (", " d)");
        let recompute = if line.contains("selective") {
            "selective"
        } else {
            "full"
        };
        if line.contains("seq 8192") {
            let model = saved_per_layer_8b(recompute);
            assert!(
                (model - measured).abs() / measured < 0.005,
                "{recompute}: model {model:.3} d vs measured {measured} d"
            );
        }
        seen += 1;
    }
    assert!(seen >= 4, "{seen} measured lines");
    // The loss: 12 bytes per logit in the model, 12.26 measured (the
    // step's fixed part, which also holds the embedding's and the final
    // norm's few bytes per token).
    for line in txt.lines().filter(|l| l.contains(" B per logit)")) {
        let rest = &line[line.find("fixed").expect("fixed")..];
        let measured = figure(rest, "GiB (", " B per logit)");
        let model = gantry_compiler::cost::LOSS_BYTES_PER_LOGIT;
        assert!(
            (model - measured).abs() / measured < 0.03,
            "loss: model {model} vs measured {measured} bytes per logit"
        );
    }
}

/// ZeRO-3's collectives, each paying the ring's latency once: one per
/// module under `fusion = kernels` (DeepSpeed fetches a sub-module's
/// weight and bias together), one per layer block under `compiled` and
/// `eager` (FSDP wraps each block). A layer of two biased `linear`s over
/// 128 ranks on 16 nodes, with `overlap = { fsdp = false }` (everything on
/// the critical path) and no recomputation: each layer gathers twice
/// (forward, backward) and reduce-scatters once (FSDP in fp32). Per
/// tensor the latency would be paid four times per pass (fails both).
#[test]
fn zero3_collectives_are_one_per_module_or_per_block() {
    use gantry_compiler::collective::Collective;
    let run = |fusion: &str| {
        let src = format!(
            r#"device Gpu {{
  compute {{ bf16 = 989 TFLOP/s }}
  memory hbm = 80 GB @ 3.35 TB/s
  power 700 W
}}
node HGX {{
  device Gpu x 8
  link nvlink = switch(450 GB/s)
  nic 400 Gb/s x 8
}}
cluster C {{
  node HGX x 16
  fabric ib = rail_optimized(bandwidth = 400 Gb/s, latency = 5 us)
}}
model M(d = 1024, layers = 4) {{
  input x: bf16[batch, seq, d]
  repeat layers {{
    x = x + linear(relu(linear(x, d, 4 * d, bias = true)), 4 * d, d, bias = true)
  }}
  output y = x
}}
workload w {{
  model M
  train {{ seq = 2048, global_batch = 128, dtype = bf16, fusion = {fusion}, overlap = {{ fsdp = false }} }}
}}
plan p on C for w {{
  fix tp = 1, pp = 1, dp = 128, zero = 3, recompute = none, microbatch = 1
}}
"#
        );
        let c = check(&["test.gantry".to_string()], &WithSource(src));
        assert!(!c.has_errors(), "{}", c.render(false));
        let ev = evaluate(&c.program.plans["p"], &BTreeMap::new()).expect("evaluates");
        let zero3 = ev
            .estimate
            .comms
            .iter()
            .find(|c| c.what.starts_with("ZeRO-3"))
            .expect("ZeRO-3 comm")
            .time;
        let beta = ev.ir.act_bytes;
        let modules: Vec<f64> = ev
            .ir
            .segments
            .iter()
            .flat_map(|s| s.ops.iter())
            .filter(|o| o.params > 0.0)
            .map(|o| o.params * o.mult * beta)
            .collect();
        (zero3, modules, ev.hardware.topo)
    };
    let (kernels, modules, topo) = run("kernels");
    let ag = |b: f64| topo.time(Collective::AllGather, 128, 1, b);
    let rs = |b: f64| topo.time(Collective::ReduceScatter, 128, 1, b);
    assert_eq!(modules.len(), 2, "two biased linears per layer");
    let per_module = 4.0 * modules.iter().map(|b| 2.0 * ag(*b) + rs(*b)).sum::<f64>();
    assert!(
        (kernels - per_module).abs() < 1e-9 * per_module,
        "kernels: {kernels} s, per module {per_module} s"
    );
    // FSDP reduce-scatters in fp32 (torchtitan's reduction type): twice
    // the bf16 bytes it gathers.
    let (compiled, modules, _) = run("compiled");
    let block: f64 = modules.iter().sum();
    let per_block = 4.0 * (2.0 * ag(block) + rs(2.0 * block));
    assert!(
        (compiled - per_block).abs() < 1e-9 * per_block,
        "compiled: {compiled} s, per block {per_block} s"
    );
    assert!(per_block < per_module);
}

/// A context-parallel ring moves at its slowest hop. On two 8-GPU nodes,
/// `cp = 4` over `tp = 4` puts ranks 0, 4, 8, 12 in one ring, across the
/// node boundary, while `cp = 4` over `tp = 2` keeps ranks 0, 2, 4, 6 in
/// one node: the same bytes per step must then take the ratio of the
/// link's to the NIC's effective bandwidth longer (within 2%, the sends'
/// latencies; each step paid the link's rate whatever the ring spanned
/// before, so the ratio was about 1).
#[test]
fn a_context_parallel_ring_across_nodes_waits_for_the_nics() {
    // Long enough that each send's launch and latency are under 1% of it.
    let p = two_nodes("heads = 16, kv_heads = 4", 1 << 20, 4);
    let ring = |fix: &str| seconds_per_byte(&p, fix, "context-parallel K/V ring");
    let (across, link_over_nic) = ring("tp=4,cp=4,dp=1");
    let (inside, _) = ring("tp=2,cp=4,dp=2");
    assert!(link_over_nic > 3.0, "{link_over_nic}");
    let ratio = across / inside;
    assert!(
        (ratio / link_over_nic - 1.0).abs() < 0.02,
        "seconds per byte across / inside {ratio}, link / NIC {link_over_nic}"
    );
}

/// A 4-layer Llama block (`heads` as given) training at `seq` tokens and
/// `batch` sequences a step on two Grand Teton nodes (16 H100s), one
/// pipeline stage, ZeRO-1, no recomputation, microbatch 1 unless pinned.
fn two_nodes(heads: &str, seq: u64, batch: u64) -> Plan {
    let src = format!(
        r#"import "stdlib/clusters/grand_teton_roce.gantry"
import "stdlib/models/llama.gantry"
workload w {{
  model Llama(layers = 4, d_model = 2048, {heads}, d_ff = 5632, vocab = 32000)
  train {{ seq = {seq}, global_batch = {batch}, dtype = bf16, optimizer = adamw }}
}}
plan p on GrandTetonRoCE96(nodes = 2) for w {{
  fix pp = 1, zero = 1, recompute = none, microbatch = 1
}}
"#
    );
    let c = check(&["test.gantry".to_string()], &WithSource(src));
    assert!(!c.has_errors(), "{}", c.render(false));
    c.program.plans.get("p").cloned().expect("plan p")
}

/// The step charges what the report says of the context-parallel ring:
/// its three passes (forward, and blocks then gradients backward), each
/// hidden by that pass's attention, `3 max(0, ring - attention)` per
/// microbatch and layer. Eight short sequences with as many key/value heads
/// as query heads, over a ring that leaves the node, expose most of it. (The step charged `max(0, ring -
/// 3 attention)`, one pass of the ring, while the report said three.)
#[test]
fn the_exposed_context_parallel_ring_is_what_the_report_says() {
    let p = two_nodes("heads = 16, kv_heads = 16", 2048, 8);
    let ev =
        evaluate(&p, &parse_fix("tp=4,cp=4,dp=1,microbatch=8").expect("pins")).expect("evaluates");
    let ring = ev
        .estimate
        .comms
        .iter()
        .find(|c| c.what == "context-parallel K/V ring")
        .expect("a K/V ring");
    let step = ev.estimate.time.cp_comm;
    assert!(
        ring.exposed > 0.5 * ring.time,
        "{} of {}",
        ring.exposed,
        ring.time
    );
    assert!(
        (step - ring.exposed).abs() <= 1e-12 * ring.exposed,
        "step {step}, report {}",
        ring.exposed
    );
}

/// The step charges what the report says of the pipeline's sends: the
/// `m` microbatches' exposed sends are the step's `pipeline sends`, and
/// those of the `(p - 1) / v` warm-up and drain slots are inside its
/// bubble. (The report counted the bubble's sends as well, `m + (p - 1) /
/// v` slots of them: 165.9 ms against the step's 155.5 ms on
/// examples/llm_train.gantry.)
#[test]
fn the_exposed_pipeline_sends_are_what_the_report_says() {
    let p = two_nodes("heads = 16, kv_heads = 4", 1 << 14, 8);
    let ev = evaluate(
        &p,
        &parse_fix("tp=4,pp=4,dp=1,virtual_stages=1,sequence_parallel=true").expect("pins"),
    )
    .expect("evaluates");
    let sends = ev
        .estimate
        .comms
        .iter()
        .find(|c| c.what == "pipeline activations and gradients")
        .expect("pipeline sends");
    let step = ev.estimate.time.pp_comm;
    assert!(step > 0.0, "no pipeline time in the step");
    assert!(
        (step - sends.exposed).abs() <= 1e-12 * step,
        "step {step}, report {}",
        sends.exposed
    );
    // Not overlapped (the default): all of the sends' time is exposed.
    assert!(
        (sends.time - sends.exposed).abs() <= 1e-12 * step,
        "time {}, exposed {}",
        sends.time,
        sends.exposed
    );
}

/// A pipeline whose stages span two nodes waits for the boundary between
/// them: four 4-rank stages on two 8-GPU nodes (stages 1 and 2 on
/// different nodes) send at the NIC's rate, four 2-rank stages in one node
/// at the link's (`Topology::pipeline_hop`; each pair of neighbouring
/// stages was priced as 4 ranks apart, inside the node, before).
#[test]
fn a_pipeline_across_nodes_waits_for_its_slowest_boundary() {
    // Long enough that each send's launch and latency are under 1% of it.
    let p = two_nodes("heads = 16, kv_heads = 4", 1 << 18, 4);
    let sends = |fix: &str| seconds_per_byte(&p, fix, "pipeline activations and gradients");
    // Sequence parallel: each rank sends its own share (without it the
    // report counts the tp-fold re-gather as well).
    let (across, link_over_nic) = sends("tp=4,pp=4,dp=1,virtual_stages=1,sequence_parallel=true");
    let (inside, _) = sends("tp=2,pp=4,dp=1,virtual_stages=1,sequence_parallel=true");
    let ratio = across / inside;
    assert!(
        (ratio / link_over_nic - 1.0).abs() < 0.02,
        "seconds per byte across / inside {ratio}, link / NIC {link_over_nic}"
    );
}

/// Seconds per reported byte of the communication `what` at point `fix`,
/// and the link's effective bandwidth over the NIC's.
fn seconds_per_byte(p: &Plan, fix: &str, what: &str) -> (f64, f64) {
    let ev = evaluate(p, &parse_fix(fix).expect("pins")).expect("evaluates");
    let comm = ev
        .estimate
        .comms
        .iter()
        .find(|c| c.what == what)
        .unwrap_or_else(|| panic!("no {what} at {fix}"));
    let topo = ev.hardware.topo;
    (comm.time / comm.bytes, topo.up_bw / topo.out_bw)
}

/// An fp8 decode moves its residual stream in 16 bits: its
/// tensor-parallel collectives send as many bytes as the bf16 decode's,
/// while its weights take half the memory (`Ir::stream_bytes`; one byte
/// per element before, half the bf16 figure).
#[test]
fn an_fp8_decode_all_reduces_its_stream_in_16_bits() {
    let decode = |dtype: &str| {
        let src = format!(
            r#"import "stdlib/clusters/grand_teton_roce.gantry"
import "stdlib/models/llama.gantry"
workload w {{
  model Llama(layers = 4, d_model = 2048, heads = 16, kv_heads = 4, d_ff = 5632, vocab = 32000)
  decode {{ batch = 8, prompt = 128, generate = 128, dtype = {dtype} }}
}}
plan p on GrandTetonRoCE96(nodes = 1) for w {{
  fix tp = 2, pp = 1, dp = 1
}}
"#
        );
        let c = check(&["test.gantry".to_string()], &WithSource(src));
        assert!(!c.has_errors(), "{}", c.render(false));
        let ev = evaluate(&c.program.plans["p"], &BTreeMap::new()).expect("evaluates");
        let tp: f64 = ev
            .estimate
            .comms
            .iter()
            .filter(|c| c.what.contains("tensor"))
            .map(|c| c.bytes)
            .sum();
        (tp, ev.estimate.memory.weights)
    };
    let (tp8, w8) = decode("fp8");
    let (tp16, w16) = decode("bf16");
    assert!(tp16 > 0.0);
    assert_eq!(tp8, tp16);
    assert!((w16 / w8 - 2.0).abs() < 1e-9, "weights {w16} vs {w8}");
}

/// ZeRO-3 gathers and reduce-scatters each op's parameters as the device
/// holds them, over the ranks that shard them: a mixture's experts split
/// over the expert-parallel ranks and sharded over the `dp / ep` ranks
/// holding the same experts (`ep` apart), its router whole and sharded
/// over all `dp`. Four expert-only layers on two 8-GPU nodes at `dp = 16,
/// ep = 8`: each layer gathers twice (forward, backward) and
/// reduce-scatters once, the router over 16 ranks and the experts over 2
/// ranks 8 apart (across the nodes). (The time counted every expert
/// whole, over all 16 ranks: 6.4 times the seconds per reported byte.)
#[test]
fn zero3_traffic_times_the_parameters_each_device_holds() {
    use gantry_compiler::collective::Collective;
    let src = r#"import "stdlib/clusters/grand_teton_roce.gantry"
model M(d = 4096, layers = 4) {
  input x: bf16[batch, seq, d]
  repeat layers {
    x = x + moe(x, experts = 8, top_k = 2, d_ff = 14336)
  }
  output y = x
}
workload w {
  model M
  train { seq = 4096, global_batch = 16, dtype = bf16, optimizer = adamw, fusion = kernels }
}
plan p on GrandTetonRoCE96(nodes = 2) for w {
  fix tp = 1, pp = 1, dp = 16, ep = 8, zero = 3, recompute = full, microbatch = 1
}
"#;
    let c = check(&["test.gantry".to_string()], &WithSource(src.to_string()));
    assert!(!c.has_errors(), "{}", c.render(false));
    let ev = evaluate(&c.program.plans["p"], &BTreeMap::new()).expect("evaluates");
    let z = ev
        .estimate
        .comms
        .iter()
        .find(|c| c.what.starts_with("ZeRO-3"))
        .expect("ZeRO-3 traffic");
    let topo = ev.hardware.topo;
    let (d, f, e) = (4096.0, 14336.0, 8.0);
    let router = d * e * 2.0;
    let experts = 3.0 * d * f * (e / 8.0) * 2.0;
    let both = |c: Collective| topo.time(c, 16, 1, router) + topo.time(c, 2, 8, experts);
    let want = 4.0 * (2.0 * both(Collective::AllGather) + both(Collective::ReduceScatter));
    assert!(
        (z.time - want).abs() <= 1e-9 * want,
        "ZeRO-3 time {} s, want {want} s",
        z.time
    );
    // The bytes: each ring's (n - 1) / n of its buffer, three passes of
    // four layers.
    let bytes = 4.0 * 3.0 * (router * 15.0 / 16.0 + experts / 2.0);
    assert!(
        (z.bytes - bytes).abs() <= 1e-9 * bytes,
        "bytes {} want {bytes}",
        z.bytes
    );
}
