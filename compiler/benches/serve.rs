//! Serving simulator speed: simulated requests per second of wall time
//! for Llama 3 70B (fp8) on 2 x tp8 H100 replicas at a steady Poisson
//! rate with lognormal lengths (examples/llm_serve.gantry), and the full
//! plan search of that example. Run with `cargo bench -p gantry-compiler
//! --bench serve`; prints figures, asserts nothing.

#[path = "../tests/common.rs"]
mod common;

use std::time::Instant;

use gantry_compiler::serve::{self, Deployment, scheduler::Limits, timing};

fn main() {
    let p = common::plan("examples/llm_serve.gantry", Some("llama3_70b_serve_h100"));
    let mut s = p.workload.serve.as_deref().expect("serve workload").clone();
    let m = timing::build(&p.workload, &p.system, 8, 8192, 1280).expect("iteration model");
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
            prefix_hit: s.prefix_hit,
        },
        kv_block: s.scheduler.kv_block,
        transfer_per_byte: 0.0,
        transfer_latency: 0.0,
    };
    // 70% of the deployment's capacity (about 60 req/s): a steady queue.
    s.requests = 1_000_000;
    let reqs = serve::requests(&s, Some(40.0), &[]);
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
    let t = Instant::now();
    let sp = serve::plan(&p, &[], None).expect("plan");
    println!(
        "plan search: {} candidates, {} simulated, best {}, in {:.3} s",
        sp.candidates,
        sp.simulated,
        serve::report::describe(&sp.best.deployment),
        t.elapsed().as_secs_f64()
    );
}
