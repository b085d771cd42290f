//! Serving simulator speed: simulated requests per second of wall time
//! for Llama 3 70B (fp8) on 2 x tp8 H100 replicas at a steady Poisson
//! rate with lognormal lengths (examples/llm_serve.gantry), and the full
//! plan search of that example (with the simulations each ran and the
//! disaggregated candidates skipped by their prefill pool) and of the
//! recommendation example (examples/recsys_serve.gantry). Run with `cargo bench -p gantry-compiler
//! --bench serve`; prints figures, asserts nothing.

#[path = "../tests/common.rs"]
mod common;

use std::time::Instant;

use gantry_compiler::serve::{self, Deployment, scheduler::Limits, timing};
use gantry_lang::program::Disaggregate;

fn main() {
    let p = common::plan("examples/llm_serve.gantry", Some("llama3_70b_serve_h100"));
    let mut s = p.workload.serve.as_deref().expect("serve workload").clone();
    let m = timing::build(&p.workload, &p.system, 8, 1, 8192, 1280).expect("iteration model");
    let d = Deployment {
        colocated: 2,
        prefill: 0,
        decode: 0,
        prefill_model: m,
        decode_model: m,
        limits: Limits {
            token_budget: s.scheduler.token_budget,
            max_seqs: s.scheduler.max_seqs,
            chunked_prefill: true,
            async_scheduling: false,
            prefix_hit: s.prefix_hit,
            window: None,
        },
        kv_block: s.scheduler.kv_block,
        transfer_per_byte: 0.0,
        transfer_latency: 0.0,
    };
    // 70% of the deployment's capacity (about 60 req/s): a steady queue.
    s.requests = 1_000_000;
    let reqs = serve::requests(&s, Some(40.0));
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let o = serve::simulate(&d, &reqs, u64::MAX);
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(o);
    }
    let o = last.expect("ran");
    let sum = serve::summarize(
        &d,
        &o,
        &reqs.iter().map(|r| r.arrival).collect::<Vec<_>>(),
        &reqs.iter().map(|r| r.generate).collect::<Vec<_>>(),
        &s,
    );
    println!(
        "simulate: {} requests ({} iterations, {:.1} tokens/iteration, unstable {}) in {:.3} s: {:.2} M simulated requests/s",
        reqs.len(),
        o.iterations,
        sum.mean_batch_tokens,
        sum.unstable,
        best,
        reqs.len() as f64 / best / 1e6
    );
    // A fingerprint of every simulated figure (latency bits and counters):
    // an optimisation of the simulator must leave it unchanged.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut mix = |x: u64| h = (h ^ x).wrapping_mul(0x0000_0100_0000_01b3);
    for (a, b) in o.ttft.iter().zip(&o.e2e) {
        mix(a.to_bits());
        mix(b.to_bits());
    }
    for x in [
        o.completed,
        o.dropped,
        o.preemptions,
        o.iterations,
        o.batched_tokens,
        o.backlog_mid,
        o.backlog_end,
        o.makespan.to_bits(),
        o.busy_prefill.to_bits(),
        o.little_l.to_bits(),
        o.little_w.to_bits(),
    ] {
        mix(x);
    }
    println!("simulate fingerprint: {h:016x}");
    // The full plan search of each example plan (tp, replicas, max_seqs,
    // token budget, chunked prefill, colocated or disaggregated, P:D).
    for name in ["llama3_70b_serve_h100", "llama3_70b_serve_h200"] {
        let p = common::plan("examples/llm_serve.gantry", Some(name));
        let t = Instant::now();
        let sp = serve::plan(&p, None).expect("plan");
        println!(
            "plan search {name}: {} candidates, {} simulated, best {}, in {:.3} s",
            sp.candidates,
            sp.simulated,
            serve::report::describe(&sp.best.deployment),
            t.elapsed().as_secs_f64()
        );
    }
    // The recommendation-inference example (batching window).
    let p = common::plan("examples/recsys_serve.gantry", None);
    let t = Instant::now();
    let sp = serve::plan(&p, None).expect("plan");
    println!(
        "plan search dlrm_small_serve_h100: {} candidates, {} simulated ({} requests each), best {}, in {:.3} s",
        sp.candidates,
        sp.simulated,
        sp.requests.len(),
        serve::report::describe(&sp.best.deployment),
        t.elapsed().as_secs_f64()
    );
    // The plan chosen at three rates, colocated against disaggregated.
    println!(
        "\nsystem  rate/s  mode           plan (goodput per dollar, TTFT P99, TPOT P99)  search s"
    );
    for name in ["llama3_70b_serve_h100", "llama3_70b_serve_h200"] {
        for rate in [4.0, 16.0, 48.0] {
            for mode in [Disaggregate::No, Disaggregate::Yes] {
                let mut p = common::plan("examples/llm_serve.gantry", Some(name));
                let mut w = p.workload.serve.as_deref().expect("serve").clone();
                w.disaggregate = mode;
                p.workload.serve = Some(Box::new(w));
                let t = Instant::now();
                let r = serve::plan(&p, Some(rate));
                let secs = t.elapsed().as_secs_f64();
                let what = match r {
                    Ok(sp) => format!(
                        "{}: {:.0} requests/$, {:.0} ms, {:.1} ms [{} simulated, {} skipped by their prefill pool]",
                        serve::report::describe(&sp.best.deployment),
                        sp.best.goodput_per_dollar.unwrap_or(0.0),
                        sp.best.ttft.p99 * 1e3,
                        sp.best.tpot.p99 * 1e3,
                        sp.simulated,
                        sp.prefill_pruned
                    ),
                    Err(e) => format!("{}: {}", e.code, e.message),
                };
                println!(
                    "{}  {rate:>5}  {:<13}  {what}  {secs:.3}",
                    &name[17..],
                    if mode == Disaggregate::No {
                        "colocated"
                    } else {
                        "disaggregated"
                    }
                );
            }
        }
    }
}
