//! Request-level simulation of LLM serving under latency SLOs.
//!
//! The static cost model prices one step; serving is a queue of requests
//! whose latencies depend on how steps are shared. This module is a
//! discrete-event simulator of one deployment, split by concept:
//!
//! - `sample`: the seeded request stream (arrivals, lengths, traces);
//! - `timing`: one engine iteration's time, derived from the cost model
//!   (docs/COST-MODEL.md §4a), the only place hardware reaches the
//!   simulator;
//! - `kv`: paged KV-cache blocks, and the prefix cache by key (a
//!   conversation's turns share their history's blocks; a run `after`
//!   earlier ones starts with theirs);
//! - `scheduler`: one replica's continuous batching (chunked prefill,
//!   admission, preemption with recomputation, prefix hits);
//! - `sim`: the event loop over replicas, pools and KV transfers;
//! - `report`: percentiles, goodput, utilisation, text and JSON;
//! - `planner`: the cheapest deployment meeting the SLOs.
//!
//! Nothing here reads files or clocks: a trace arrives as parsed rows.

pub mod kv;
pub mod planner;
pub mod report;
pub mod sample;
pub mod scheduler;
pub mod sim;
pub mod timing;

pub use planner::{ServePlan, plan};
pub use report::{Summary, summarize};
pub use sample::{Request, requests};
pub use sim::{Deployment, Outcome, simulate, simulate_closed};

/// Simulates `d` on `reqs` against `serve`'s SLOs (one `--sweep-rate` point).
pub fn run(d: &Deployment, reqs: &[Request], serve: &gantry_lang::program::Serve) -> Summary {
    run_with(d, reqs, serve, (reqs.len() as u64 / 4).max(64))
}

/// [`run`], stopping once more than `max_backlog` requests wait
/// (`u64::MAX`: serve every request, as a finite benchmark does).
pub fn run_with(
    d: &Deployment,
    reqs: &[Request],
    serve: &gantry_lang::program::Serve,
    max_backlog: u64,
) -> Summary {
    let generate: Vec<u32> = reqs.iter().map(|r| r.generate).collect();
    let o = outcome(d, reqs, serve, max_backlog);
    summarize(d, &o, &o.arrivals, &generate, serve)
}

/// Simulates `d` on `reqs` as `serve` sends them: at their arrival
/// times, or from a closed loop of clients (`arrivals = closed(...)`).
pub fn outcome(
    d: &Deployment,
    reqs: &[Request],
    serve: &gantry_lang::program::Serve,
    max_backlog: u64,
) -> Outcome {
    // A burst (every request at 0) is a closed loop of as many clients as
    // requests: all are released at once and none follows. Without
    // earlier runs or conversations no replica keeps a cache by prompt.
    if serve.after.is_empty() && serve.conversations.is_none() {
        return match serve.arrivals.clients(reqs.len() as u64) {
            Some(clients) => simulate_closed(d, reqs, clients),
            None => simulate(d, reqs, max_backlog),
        };
    }
    // The runs before this one, on this deployment: their requests as
    // their own settings send them, served to the end and not measured;
    // what they leave is each replica's prefix cache.
    let mut caches = sim::fresh_caches(d);
    for before in &serve.after {
        let r = requests(before, None);
        let closed = before.arrivals.clients(r.len() as u64);
        sim::simulate_cached(d, &r, u64::MAX, closed, &mut caches);
    }
    // A closed loop's queue is bounded by its clients: served to its end,
    // as `simulate_closed` serves it.
    let closed = serve.arrivals.clients(reqs.len() as u64);
    let backlog = if closed.is_some() {
        u64::MAX
    } else {
        max_backlog
    };
    sim::simulate_cached(d, reqs, backlog, closed, &mut caches)
}

#[cfg(test)]
mod tests;
