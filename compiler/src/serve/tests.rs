//! Event-level and property tests of the simulator on synthetic iteration
//! models (round numbers, so schedules can be computed by hand).

use gantry_lang::program::{Arrivals, Disaggregate, Lengths, Scheduler, Serve, Slo};
use proptest::prelude::*;

use super::report::{percentile, unstable};
use super::sample::{Request, requests};
use super::scheduler::Limits;
use super::sim::{Deployment, Outcome, simulate};
use super::timing::IterModel;

/// An iteration of `n` tokens takes `max(t_weights, n c_token)` seconds.
fn model(t_weights: f64, c_token: f64, kv_tokens: f64) -> IterModel {
    IterModel {
        tp: 1,
        pp: 1,
        t_fixed: 0.0,
        c_seq: 0.0,
        host_fixed: 0.0,
        host_seq: 0.0,
        t_weights,
        c_token,
        c_comm: 0.0,
        c_kv: 0.0,
        c_pair: 0.0,
        admission: 0.0,
        frontend: 0.0,
        kv_bytes_per_token: 1.0,
        kv_bytes_per_token_model: 1.0,
        kv_capacity_tokens: kv_tokens,
        price_per_s: Some(1.0),
        power: 1.0,
    }
}

/// A proptest configuration with a fixed seed, so that a run (and CI) is
/// a function of the code: `cases` cases from the same stream every time.
fn fixed(cases: u32) -> ProptestConfig {
    crate::seeded::seeded(cases, 0x5e57_0001)
}

fn colocated(m: IterModel, replicas: u64, budget: u64, max_seqs: u64) -> Deployment {
    Deployment {
        colocated: replicas,
        prefill: 0,
        decode: 0,
        prefill_model: m,
        decode_model: m,
        limits: Limits {
            token_budget: budget,
            max_seqs,
            chunked_prefill: true,
            async_scheduling: false,
            prefix_hit: 0.0,
            window: None,
        },
        kv_block: 16,
        transfer_per_byte: 0.0,
        transfer_latency: 0.0,
    }
}

/// A request (its prompt's key, read only by a prefix cache by key, is 0:
/// a test with caches sets its own).
fn req(arrival: f64, prompt: u32, generate: u32) -> Request {
    Request {
        arrival,
        prompt,
        generate,
        key: 0,
        doc: None,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Budget 200 tokens, 2 sequences, 1 s per iteration of up to 100 tokens
/// and 10 ms per token above. A (t=0, 100 in, 3 out), B (t=0.5, 300 in,
/// 2 out), C (t=0.6, 50 in, 1 out):
///
/// - [0, 1]: A's prompt (100 tokens, 1 s). A's first token at 1.
/// - [1, 3]: A decodes (1) + B's first chunk (199): 200 tokens, 2 s.
///   C waits: two sequences run.
/// - [3, 4.02]: A decodes + B's last 101 tokens: 102 tokens, 1.02 s. A
///   completes (3 tokens), B's first token.
/// - [4.02, 5.02]: B decodes + C's prompt (50): 1 s. B completes; C's
///   first token is its last.
#[test]
fn three_requests_by_hand() {
    let d = colocated(model(1.0, 0.01, 1e6), 1, 200, 2);
    let reqs = [req(0.0, 100, 3), req(0.5, 300, 2), req(0.6, 50, 1)];
    let o = simulate(&d, &reqs, 100);
    let ttft = [1.0, 4.02 - 0.5, 5.02 - 0.6];
    let e2e = [4.02, 5.02 - 0.5, 5.02 - 0.6];
    for i in 0..3 {
        assert!(close(o.ttft[i], ttft[i]), "ttft {i}: {:?}", o.ttft);
        assert!(close(o.e2e[i], e2e[i]), "e2e {i}: {:?}", o.e2e);
    }
    assert_eq!((o.completed, o.tokens_generated, o.iterations), (3, 6, 4));
    assert!(close(o.makespan, 5.02));
    assert_eq!(o.batched_tokens, 100 + 200 + 102 + 51);
}

/// The compute-busy share a fleet prices power at, by hand on the three
/// requests above: 453 tokens x 10 ms of linear-layer compute is 4.53 s
/// of a 5.02 s run on one device (the last iteration, 51 tokens, is
/// bound by its 1 s weight read, not by compute).
#[test]
fn compute_busy_by_hand() {
    let d = colocated(model(1.0, 0.01, 1e6), 1, 200, 2);
    let reqs = [req(0.0, 100, 3), req(0.5, 300, 2), req(0.6, 50, 1)];
    let s = super::run_with(&d, &reqs, &serve(1.0, 3, 1), 100);
    assert!(close(s.compute_busy, 4.53 / 5.02), "{}", s.compute_busy);
    // Disaggregated, the decode pool's replica at tp 2: the prefill pool
    // batches the prompt (100 tokens x 10 ms on 1 device), the decode
    // pool its 2 further tokens (2 x 10 ms on 2 devices), over 3 devices
    // for the 4.5 s run (1 s prefill, 1.5 s transfer, 2 s of decode).
    let m = model(1.0, 0.01, 1e6);
    let d = Deployment {
        colocated: 0,
        prefill: 1,
        decode: 1,
        decode_model: IterModel { tp: 2, ..m },
        transfer_per_byte: 0.01,
        transfer_latency: 0.5,
        ..colocated(m, 1, 1000, 8)
    };
    let s = super::run_with(&d, &[req(0.0, 100, 3)], &serve(1.0, 1, 1), 100);
    assert!(
        close(s.compute_busy, (1.0 + 2.0 * 0.01 * 2.0) / (3.0 * 4.5)),
        "{}",
        s.compute_busy
    );
}

/// Async scheduling, by hand (same model as above): A (t=0, 100 in, 3
/// out), B (t=0.5, 300 in, 2 out).
///
/// - [0, 1]: the idle replica forms A's prefill at once. A's first token.
/// - [1, 2]: formed at 0, before B arrived: A decodes alone (1 s).
/// - [2, 4]: formed at 1: A decodes + B's first chunk (199): 2 s.
/// - [4, 5.01]: A completes at 4 (3 tokens); B's last 101 tokens: 1.01 s,
///   B's first token at 5.01.
/// - [5.01, 6.01]: B decodes and completes.
///
/// Without the lag B's chunk would start at 1 (`three_requests_by_hand`).
#[test]
fn async_scheduling_by_hand() {
    let mut d = colocated(model(1.0, 0.01, 1e6), 1, 200, 2);
    d.limits.async_scheduling = true;
    let o = simulate(&d, &[req(0.0, 100, 3), req(0.5, 300, 2)], 100);
    assert!(close(o.ttft[0], 1.0) && close(o.e2e[0], 4.0), "{o:?}");
    assert!(close(o.ttft[1], 5.01 - 0.5), "{:?}", o.ttft);
    assert!(close(o.e2e[1], 6.01 - 0.5), "{:?}", o.e2e);
    assert_eq!(o.iterations, 5);
}

/// Two sequences that cannot both grow: the later one is preempted,
/// recomputes, and every token is still generated once.
#[test]
fn preemption_recomputes_and_conserves_tokens() {
    // 4 blocks of 16 tokens: two 20-token prompts take 2 blocks each and
    // the first to cross 32 tokens needs a fifth.
    let d = colocated(model(1.0, 0.0, 64.0), 1, 1000, 8);
    let reqs = [req(0.0, 20, 30), req(0.0, 20, 30)];
    let o = simulate(&d, &reqs, 100);
    assert!(o.preemptions >= 1, "{o:?}");
    assert_eq!(o.completed, 2);
    assert_eq!(o.tokens_generated, 60);
    assert!(o.e2e.iter().all(|e| e.is_finite()));
}

#[test]
fn too_long_for_the_cache_is_dropped() {
    let d = colocated(model(1.0, 0.0, 64.0), 1, 1000, 8);
    let o = simulate(&d, &[req(0.0, 100, 10), req(1.0, 10, 10)], 100);
    assert_eq!((o.dropped, o.completed, o.tokens_generated), (1, 1, 10));
    assert_eq!(o.tokens_requested, 20);
}

/// Disaggregated: the prompt on the prefill pool, the transfer, then
/// decode; TTFT is the prefill's end, the transfer delays the second token.
#[test]
fn disaggregated_hands_over_after_the_transfer() {
    let m = model(1.0, 0.0, 1e6);
    let d = Deployment {
        colocated: 0,
        prefill: 1,
        decode: 1,
        transfer_per_byte: 0.01,
        transfer_latency: 0.5,
        ..colocated(m, 1, 1000, 8)
    };
    // 100 prompt tokens x 1 byte per token: 1 s + 0.5 s of transfer.
    let o = simulate(&d, &[req(0.0, 100, 3)], 100);
    assert!(close(o.ttft[0], 1.0), "{:?}", o.ttft);
    // Prefill ends at 1, transfer at 2.5, two decode iterations: 4.5.
    assert!(close(o.e2e[0], 4.5), "{:?}", o.e2e);
    assert_eq!((o.transfers, o.tokens_generated), (1, 3));
}

/// `m` run by an engine of `fixed` seconds of host time per iteration
/// and `seq` per scheduled sequence (as `IterModel::with_engine` adds
/// them), in a pipeline of `pp` stages.
fn hosted(m: IterModel, fixed: f64, seq: f64, pp: u64) -> IterModel {
    IterModel {
        pp,
        t_fixed: m.t_fixed + fixed,
        c_seq: m.c_seq + seq,
        host_fixed: fixed,
        host_seq: seq,
        ..m
    }
}

/// Two virtual engines of one pipeline share its host, by hand: 0.9 s of
/// host time per iteration and 0.1 s per sequence, a device part of
/// max(0.5 s, 10 ms per token). A (t=0) and B (t=0), 40-token prompts, 3
/// tokens out; C (t=1.7, 40 in, 3 out) goes to engine 0 (a tie of loads).
///
/// - 0: E0 forms A's prefill: host [0, 1], device [1, 1.5]. B reaches E1
///   at 0 with the host busy: E1 waits.
/// - 1: E1 forms B's prefill: host [1, 2], device [2, 2.5].
/// - 1.5: A's first token; E0 waits for the host (busy to 2).
/// - 2: E0 forms A's decode and C's prefill (C arrived while it waited;
///   2 sequences): host [2, 3.1], device [3.1, 3.6].
/// - 2.5: B's first token; E1 waits. 3.1: E1 forms B's decode: host
///   [3.1, 4.1], device [4.1, 4.6].
/// - 3.6: A's second token, C's first; 4.1: E0 forms both decodes: host
///   [4.1, 5.2], device [5.2, 5.7].
/// - 4.6: B's second token; 5.2: E1: host [5.2, 6.2], device [6.2, 6.7].
/// - 5.7: A completes; 6.2: E0 forms C's decode: host [6.2, 7.2], device
///   [7.2, 7.7]. 6.7: B completes; 7.7: C completes.
///
/// As two replicas with their own hosts every iteration would start when
/// the last ended: A and B take 1.5 s per iteration, done at 4.5.
#[test]
fn virtual_engines_share_the_pipeline_host_by_hand() {
    let m = model(0.5, 0.01, 1e6);
    let reqs = [req(0.0, 40, 3), req(0.0, 40, 3), req(1.7, 40, 3)];
    let o = simulate(&colocated(hosted(m, 0.9, 0.1, 2), 2, 200, 4), &reqs, 100);
    let ttft = [1.5, 2.5, 3.6 - 1.7];
    let e2e = [5.7, 6.7, 7.7 - 1.7];
    for i in 0..3 {
        assert!(close(o.ttft[i], ttft[i]), "ttft {i}: {:?}", o.ttft);
        assert!(close(o.e2e[i], e2e[i]), "e2e {i}: {:?}", o.e2e);
    }
    assert_eq!((o.completed, o.iterations), (3, 7));
    assert!(close(o.makespan, 7.7), "{}", o.makespan);
    // Each engine busy from its host part's start to its device part's
    // end: five iterations of 1.5 s and two of 1.6 s (two sequences).
    assert!(
        close(o.busy_prefill, 5.0 * 1.5 + 2.0 * 1.6),
        "{}",
        o.busy_prefill
    );
    // Waits: E1 [0, 1], [2.5, 3.1], [4.6, 5.2]; E0 [1.5, 2], [3.6, 4.1],
    // [5.7, 6.2].
    assert!(
        close(o.host_wait, 1.0 + 2.0 * 0.6 + 3.0 * 0.5),
        "{}",
        o.host_wait
    );
    // Own hosts (one stage each): A and B never wait.
    let o = simulate(
        &colocated(hosted(m, 0.9, 0.1, 1), 2, 200, 4),
        &reqs[..2],
        100,
    );
    for i in 0..2 {
        assert!(close(o.ttft[i], 1.5), "{:?}", o.ttft);
        assert!(close(o.e2e[i], 4.5), "{:?}", o.e2e);
    }
    assert_eq!(o.host_wait, 0.0);
}

/// The planner's lower bound of a run counts a pipeline's host: by hand
/// on the requests above, 6 decode steps at 0.1 s of host each and at
/// least 6 / 4 iterations (4 sequences at most) at 0.9 s, 1.95 s on the
/// one host, above the engines' own bound (each of the two: half of 6 x
/// 0.1 s + 1.5 x 1.4 s, 1.35 s); both below the 7.7 s the run takes.
#[test]
fn the_work_bound_counts_the_pipeline_host() {
    let m = model(0.5, 0.01, 1e6);
    let reqs = [req(0.0, 40, 3), req(0.0, 40, 3), req(1.7, 40, 3)];
    let shared = colocated(hosted(m, 0.9, 0.1, 2), 2, 200, 4);
    let own = colocated(hosted(m, 0.9, 0.1, 1), 2, 200, 4);
    let bound = |d: &Deployment| super::planner::work_bound(d, &reqs, 0.0);
    assert!(close(bound(&own), 1.35), "{}", bound(&own));
    assert!(close(bound(&shared), 1.95), "{}", bound(&shared));
    assert!(bound(&shared) <= simulate(&shared, &reqs, 100).makespan);
}

/// The host is shared only where there is a pipeline and an engine with
/// host time: without a pipeline the host split changes nothing, and a
/// pipeline without the engine's host terms (the device's own overhead
/// included) runs exactly as at `pp = 1` (the whole outcome's `Debug`
/// output compared); with both,
/// under load, the shared host slows the run.
#[test]
fn only_a_pipeline_with_host_terms_shares_its_host() {
    let s = serve(40.0, 2_000, 7);
    let reqs = requests(&s, None);
    let bits = |o: &Outcome| format!("{o:?}");
    let base = IterModel {
        t_fixed: 0.003,
        c_seq: 2e-4,
        ..small()
    };
    let run = |m: IterModel| simulate(&colocated(m, 4, 512, 32), &reqs, 20_000);
    // No pipeline: the engine's time as host part or as device time.
    let host = run(hosted(base, 0.02, 2e-4, 1));
    let in_device = IterModel {
        t_fixed: base.t_fixed + 0.02,
        c_seq: base.c_seq + 2e-4,
        ..base
    };
    let device = run(in_device);
    assert_eq!(bits(&host), bits(&device));
    // A pipeline without the engine's host terms.
    assert_eq!(bits(&run(IterModel { pp: 2, ..base })), bits(&run(base)));
    assert_eq!(bits(&run(IterModel { pp: 4, ..in_device })), bits(&device));
    // Both: the virtual engines wait for one another's host parts.
    let shared = run(hosted(base, 0.02, 2e-4, 2));
    assert!(!unstable(&shared, reqs.len()) && !unstable(&host, reqs.len()));
    let mean = |o: &Outcome| o.e2e.iter().sum::<f64>() / o.e2e.len() as f64;
    assert!(
        mean(&shared) > 1.1 * mean(&host),
        "{} vs {}",
        mean(&shared),
        mean(&host)
    );
}

fn serve(rate: f64, n: u64, seed: u64) -> Serve {
    Serve {
        arrivals: Arrivals::Poisson { rate },
        input: Lengths::LogNormal {
            mean: 200.0,
            spread: 0.5,
        },
        output: Lengths::Uniform { lo: 1, hi: 60 },
        slo: Slo {
            ttft_p99: 1.0,
            tpot_p99: 0.1,
            e2e_p99: None,
        },
        attainment: 0.99,
        scheduler: Scheduler {
            token_budget: 512,
            max_seqs: 32,
            chunked_prefill: true,
            kv_block: 16,
            async_scheduling: false,
        },
        prefix_hit: 0.0,
        memory_utilization: 1.0,
        requests: n,
        seed,
        disaggregate: Disaggregate::No,
        batching: None,
        engine: None,
        after: Vec::new(),
        conversations: None,
        span: gantry_lang::span::Span::new(0, 0),
    }
}

/// 10 ms per iteration up to 200 tokens, 50 us per token above: about
/// 60 requests per second at most on one replica.
fn small() -> IterModel {
    model(0.01, 5e-5, 20_000.0)
}

/// Little's law within 2% over the outcome's window: `L = lambda W`.
fn assert_little(o: &Outcome) {
    let lw = o.little_lambda * o.little_w;
    assert!(
        (o.little_l - lw).abs() <= 0.02 * lw,
        "L {} vs lambda W {}",
        o.little_l,
        lw
    );
}

fn p99(o: &Outcome, f: impl Fn(&Outcome) -> &Vec<f64>) -> f64 {
    let mut v: Vec<f64> = f(o).iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.99)
}

#[test]
fn littles_law_holds_at_steady_state() {
    let s = serve(20.0, 20_000, 11);
    let reqs = requests(&s, None);
    let o = simulate(&colocated(small(), 1, 512, 32), &reqs, 20_000);
    assert!(!unstable(&o, reqs.len()));
    let (l, lambda, w) = (o.little_l, o.little_lambda, o.little_w);
    assert!(l > 1.0, "{l}");
    assert!(
        (l / (lambda * w) - 1.0).abs() < 0.02,
        "L {l} vs lambda W {}",
        lambda * w
    );
}

#[test]
fn a_rate_above_capacity_is_unstable() {
    let s = serve(200.0, 4000, 5);
    let reqs = requests(&s, None);
    let o = simulate(&colocated(small(), 1, 512, 32), &reqs, 1000);
    assert!(
        unstable(&o, reqs.len()),
        "{:?}",
        (o.backlog_mid, o.backlog_end)
    );
    let s = serve(10.0, 4000, 5);
    let reqs = requests(&s, None);
    let o = simulate(&colocated(small(), 1, 512, 32), &reqs, 1000);
    assert!(!unstable(&o, reqs.len()));
}

proptest! {
    #![proptest_config(fixed(48))]

    /// Every request completes or is dropped; tokens generated equal the
    /// tokens requested by the requests not dropped; first tokens come
    /// before last ones. On any load, cache size and pool shape.
    #[test]
    fn conservation(rate in 1.0f64..200.0, seed in 0u64..1000, kv in 64.0f64..40_000.0,
                    max_seqs in 1u64..64, budget in 1u64..1024, disagg in any::<bool>(),
                    chunked in any::<bool>(), lag in any::<bool>()) {
        let s = serve(rate, 300, seed);
        let reqs = requests(&s, None);
        let mut d = colocated(model(0.01, 5e-5, kv), 2, budget, max_seqs);
        d.limits.chunked_prefill = chunked;
        d.limits.async_scheduling = lag;
        if disagg {
            d = Deployment { colocated: 0, prefill: 1, decode: 2, transfer_per_byte: 1e-6, transfer_latency: 1e-3, ..d };
        }
        let o = simulate(&d, &reqs, u64::MAX);
        prop_assert!(!o.aborted);
        prop_assert_eq!(o.completed + o.dropped, reqs.len() as u64);
        let kept: u64 = reqs.iter().zip(&o.e2e).filter(|(_, e)| e.is_finite()).map(|(r, _)| r.generate as u64).sum();
        prop_assert_eq!(o.tokens_generated, kept);
        prop_assert_eq!(o.tokens_requested, reqs.iter().map(|r| r.generate as u64).sum::<u64>());
        for (f, e) in o.ttft.iter().zip(&o.e2e) {
            prop_assert!(e.is_nan() || (f.is_finite() && *f > 0.0 && f <= e));
        }
    }

    /// At a fixed rate, more replicas never raise P99 TTFT or E2E, and on
    /// the same requests on one replica a higher rate never lowers them,
    /// by more than two iterations (20 ms here): where an arrival falls
    /// within the running iteration, and where the prompt's end falls,
    /// each shift a request by less than one (seed 223 at 5 req/s lowers
    /// P99 E2E by 0.08 ms at 7.5 req/s; seed 93 at 74 req/s raises it by
    /// 10.3 ms from 3 to 4 replicas).
    /// The rate direction does not hold across replicas: least-loaded
    /// routing of a compressed stream pairs other requests (seed 102 at
    /// 68 req/s on 3 replicas: TTFT P99 56.3 ms, and 46.2 ms at 1.5 times
    /// the rate), so it is checked on one.
    #[test]
    fn monotone_in_replicas_and_rate(rate in 5.0f64..80.0, seed in 0u64..1000, replicas in 1u64..4) {
        let s = serve(rate, 400, seed);
        let reqs = requests(&s, None);
        let run = |r: u64, reqs: &[Request]| simulate(&colocated(small(), r, 512, 32), reqs, u64::MAX);
        let (a, b) = (run(replicas, &reqs), run(replicas + 1, &reqs));
        let slot = 2.0 * small().t_weights;
        prop_assert!(p99(&b, |o| &o.ttft) <= p99(&a, |o| &o.ttft) + slot);
        prop_assert!(p99(&b, |o| &o.e2e) <= p99(&a, |o| &o.e2e) + slot);
        let faster = requests(&s, Some(rate * 1.5));
        let (a, c) = (run(1, &reqs), run(1, &faster));
        prop_assert!(p99(&c, |o| &o.ttft) >= p99(&a, |o| &o.ttft) - slot);
        prop_assert!(p99(&c, |o| &o.e2e) >= p99(&a, |o| &o.e2e) - slot);
    }

    /// Little's law on steady runs: the time-average number of requests
    /// in the system over the middle half of the arrivals equals the
    /// arrival rate there times their mean latency, within 2%, for any
    /// stable load, replica count, scheduler lag and seed.
    #[test]
    fn littles_law_on_steady_runs(load in 0.1f64..0.6, seed in 0u64..1000, replicas in 1u64..4,
                                  lag in any::<bool>()) {
        // About 60 req/s per replica at most (`small`).
        let s = serve(60.0 * load * replicas as f64, 8000, seed);
        let reqs = requests(&s, None);
        let mut d = colocated(small(), replicas, 512, 32);
        d.limits.async_scheduling = lag;
        let o = simulate(&d, &reqs, u64::MAX);
        prop_assert!(!unstable(&o, reqs.len()));
        let (l, lambda, w) = (o.little_l, o.little_lambda, o.little_w);
        prop_assert!((l / (lambda * w) - 1.0).abs() < 0.02, "L {} vs lambda W {}", l, lambda * w);
    }

    /// With async scheduling too, more replicas never raise P99 TTFT or
    /// E2E at a fixed rate beyond two iterations, and a higher rate on one
    /// replica never lowers them beyond two iterations (the slack of
    /// `monotone_in_replicas_and_rate`).
    #[test]
    fn monotone_with_async_scheduling(rate in 5.0f64..80.0, seed in 0u64..1000, replicas in 1u64..4) {
        let s = serve(rate, 400, seed);
        let reqs = requests(&s, None);
        let run = |r: u64, reqs: &[Request]| {
            let mut d = colocated(small(), r, 512, 32);
            d.limits.async_scheduling = true;
            simulate(&d, reqs, u64::MAX)
        };
        let (a, b) = (run(replicas, &reqs), run(replicas + 1, &reqs));
        let slot = 2.0 * small().t_weights;
        prop_assert!(p99(&b, |o| &o.ttft) <= p99(&a, |o| &o.ttft) + slot);
        prop_assert!(p99(&b, |o| &o.e2e) <= p99(&a, |o| &o.e2e) + slot);
        let faster = requests(&s, Some(rate * 1.5));
        let (a, c) = (run(1, &reqs), run(1, &faster));
        prop_assert!(p99(&c, |o| &o.ttft) >= p99(&a, |o| &o.ttft) - slot);
        prop_assert!(p99(&c, |o| &o.e2e) >= p99(&a, |o| &o.e2e) - slot);
    }

    /// Async scheduling only delays admission: on the same requests the
    /// median first token comes no earlier than without it, by more than
    /// the iteration it may shift. The tail is not held to it: near
    /// saturation a lagged admission gathers the queue into fewer, larger
    /// prefills (rate 49.23, seed 309: P99 TTFT 124.4 ms without, 102.8 ms
    /// with async scheduling, more than the 20 ms allowance).
    #[test]
    fn async_scheduling_never_speeds_up_ttft(rate in 1.0f64..50.0, seed in 0u64..1000) {
        let s = serve(rate, 400, seed);
        let reqs = requests(&s, None);
        let run = |lag: bool| {
            let mut d = colocated(small(), 1, 512, 32);
            d.limits.async_scheduling = lag;
            simulate(&d, &reqs, u64::MAX)
        };
        let (sync, lagged) = (run(false), run(true));
        let slot = 2.0 * small().t_weights;
        let pct = |o: &Outcome, q: f64| {
            let mut v: Vec<f64> = o.ttft.iter().copied().filter(|x| x.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, q)
        };
        prop_assert!(pct(&lagged, 0.5) >= pct(&sync, 0.5) - slot);
    }
}

/// A batching-window replica: every batch takes `max(1 s, 0.01 s x
/// items)`, at most 4 items, a window of 0.5 s.
fn windowed(replicas: u64, budget: u64, wait: f64) -> Deployment {
    let mut d = colocated(model(1.0, 0.01, 1e6), replicas, budget, budget);
    d.limits.chunked_prefill = false;
    d.limits.window = Some(wait);
    d.kv_block = 1;
    d
}

/// By hand: A (t=0, 1 item), B (0.2, 2 items), C (0.3, 1 item), D (0.4,
/// 3 items), E (3.0, 1 item); at most 4 items a batch, window 0.5 s,
/// 1 s a batch.
///
/// - t=0: A waits (1 item); the replica sleeps until 0.5.
/// - t=0.3: C fills the batch (1 + 2 + 1 = 4): A, B, C run [0.3, 1.3].
/// - t=0.4: D waits behind the running batch; at 1.3 its window (0.9)
///   has passed: D runs alone [1.3, 2.3].
/// - t=3.0: E waits its whole window: [3.5, 4.5].
#[test]
fn batching_window_by_hand() {
    let d = windowed(1, 4, 0.5);
    let reqs = [
        req(0.0, 1, 1),
        req(0.2, 2, 1),
        req(0.3, 1, 1),
        req(0.4, 3, 1),
        req(3.0, 1, 1),
    ];
    let o = simulate(&d, &reqs, 100);
    let e2e = [1.3, 1.1, 1.0, 1.9, 1.5];
    for (i, want) in e2e.iter().enumerate() {
        assert!(close(o.e2e[i], *want), "e2e {i}: {:?}", o.e2e);
        assert!(close(o.ttft[i], *want), "ttft {i}: {:?}", o.ttft);
    }
    assert_eq!((o.completed, o.iterations, o.items_completed), (5, 3, 8));
    assert_eq!(o.batched_tokens, 8);
    assert!(close(o.makespan, 4.5));
    // Busy 3 s of 4.5.
    assert!(close(o.busy_prefill, 3.0));
}

/// A closed loop by hand: 2 clients, 1 s per iteration (prompt 50, one
/// token). An idle replica starts on the first event, and a request
/// released by a completion arrives after the iteration that starts at
/// that moment was formed (as a client's next request reaches a running
/// engine), so here the two clients alternate:
///
/// - 0 and 1 arrive at 0; 0 runs [0, 1];
/// - 0 completes at 1 and releases 2; 1 runs [1, 2];
/// - 1 completes at 2, releases 3; 2 runs [2, 3]; then 3 [3, 4], 4 [4, 5].
#[test]
fn closed_loop_by_hand() {
    let d = colocated(model(1.0, 0.0, 1e6), 1, 1000, 8);
    let reqs: Vec<Request> = (0..5).map(|_| req(0.0, 50, 1)).collect();
    let o = super::sim::simulate_closed(&d, &reqs, 2);
    assert_eq!(o.arrivals, vec![0.0, 0.0, 1.0, 2.0, 3.0]);
    let e2e = [1.0, 2.0, 2.0, 2.0, 2.0];
    for (i, want) in e2e.iter().enumerate() {
        assert!(close(o.e2e[i], *want), "e2e {i}: {:?}", o.e2e);
    }
    assert!(close(o.makespan, 5.0));
    assert_eq!(o.completed, 5);
}

fn windowed_serve(rate: f64, n: u64, seed: u64) -> Serve {
    Serve {
        input: Lengths::LogNormal {
            mean: 8.0,
            spread: 0.8,
        },
        output: Lengths::Fixed(1),
        ..serve(rate, n, seed)
    }
}

proptest! {
    #![proptest_config(fixed(48))]

    /// Batching windows and closed loops conserve requests and items:
    /// every request completes or is dropped, the items scored are those
    /// of the completed requests, each answer is its first token, and a
    /// closed loop never has more than its clients in flight (arrivals
    /// sorted, the k-th after the (k - clients)-th completion).
    #[test]
    fn windows_and_closed_loops_conserve(rate in 1.0f64..40.0, seed in 0u64..1000,
                                         budget in 1u64..64, wait in 0.0f64..2.0,
                                         replicas in 1u64..4, clients in 1u64..16,
                                         closed in any::<bool>()) {
        let s = windowed_serve(rate, 300, seed);
        let reqs = requests(&s, None);
        let d = windowed(replicas, budget, wait);
        let o = if closed {
            super::sim::simulate_closed(&d, &reqs, clients)
        } else {
            simulate(&d, &reqs, u64::MAX)
        };
        prop_assert_eq!(o.completed + o.dropped, reqs.len() as u64);
        let kept: u64 = reqs.iter().zip(&o.e2e).filter(|(_, e)| e.is_finite()).map(|(r, _)| r.prompt as u64).sum();
        prop_assert_eq!(o.items_completed, kept);
        for (f, e) in o.ttft.iter().zip(&o.e2e) {
            prop_assert!(e.is_nan() || f == e);
        }
        prop_assert!(o.arrivals.windows(2).all(|w| w[0] <= w[1]));
        if closed {
            let mut ends: Vec<f64> = o.arrivals.iter().zip(&o.e2e).map(|(a, e)| a + e).collect();
            ends.sort_by(f64::total_cmp);
            for k in clients as usize..reqs.len() {
                prop_assert!(close(o.arrivals[k], ends[k - clients as usize]));
            }
        }
    }

    /// Without a window (each batch starts as soon as a replica is free),
    /// more replicas never raise the P99 latency at a fixed rate, and a
    /// higher rate on one replica never lowers it, beyond two batches'
    /// time (1 s each here; where an arrival falls in the running batch).
    /// With a window neither holds: a lone request waits its window, so
    /// spreading requests over more replicas, or sending fewer, makes
    /// batches fill later (`a_window_is_not_monotone`).
    #[test]
    fn no_window_is_monotone(rate in 0.2f64..4.0, seed in 0u64..1000, replicas in 1u64..4) {
        let s = windowed_serve(rate, 300, seed);
        let reqs = requests(&s, None);
        let run = |r: u64, reqs: &[Request]| simulate(&windowed(r, 64, 0.0), reqs, u64::MAX);
        let slot = 2.0;
        let (a, b) = (run(replicas, &reqs), run(replicas + 1, &reqs));
        prop_assert!(p99(&b, |o| &o.e2e) <= p99(&a, |o| &o.e2e) + slot);
        let faster = requests(&s, Some(rate * 1.5));
        let (a, c) = (run(1, &reqs), run(1, &faster));
        prop_assert!(p99(&c, |o| &o.e2e) >= p99(&a, |o| &o.e2e) - slot);
    }
}

/// With a window, a lone request waits it out: at a low rate the P99
/// latency is the window plus a batch, and a higher rate that fills
/// batches before the window ends lowers it.
#[test]
fn a_window_is_not_monotone() {
    // 1 s a batch, at most 4 items a batch, a window of 5 s.
    let d = windowed(1, 4, 5.0);
    let slow: Vec<Request> = (0..40).map(|i| req(i as f64 * 20.0, 1, 1)).collect();
    let fast: Vec<Request> = (0..40).map(|i| req(i as f64 * 0.3, 1, 1)).collect();
    let (a, b) = (simulate(&d, &slow, 100), simulate(&d, &fast, 100));
    assert!(close(p99(&a, |o| &o.e2e), 6.0), "{:?}", a.e2e);
    assert!(p99(&b, |o| &o.e2e) < 3.0, "{:?}", b.e2e);
}

/// Little's law in a closed loop: the time-average number in the system
/// over the run is the clients while every client waits, so the
/// throughput times the mean latency is the concurrency (within 2%: the
/// last requests drain with fewer in flight).
#[test]
fn closed_loop_keeps_its_clients_busy() {
    let s = serve(1.0, 4000, 7);
    let reqs = requests(&s, None);
    let o = super::sim::simulate_closed(&colocated(small(), 2, 512, 32), &reqs, 24);
    let sum: f64 = o.e2e.iter().sum();
    let l = sum / o.makespan;
    assert!((l / 24.0 - 1.0).abs() < 0.02, "L = {l}");
}

proptest! {
    #![proptest_config(fixed(32))]

    /// With open-loop arrivals a disaggregated deployment's prefill pool
    /// never hears from its decode pool: every first token, and whether
    /// the run overflows, are the same for any decode pool (of the same
    /// smallest cache). The planner's prefill-pool pruning rests on this.
    #[test]
    fn first_tokens_do_not_depend_on_the_decode_pool(rate in 1.0f64..200.0, seed in 0u64..1000,
                                                     prefill in 1u64..3, a in 1u64..4, b in 1u64..4,
                                                     decode_speed in 0.2f64..5.0) {
        let s = serve(rate, 300, seed);
        let reqs = requests(&s, None);
        let pool = |decode: u64, speed: f64| {
            let mut d = colocated(model(0.01, 5e-5, 20_000.0), 1, 512, 32);
            d.colocated = 0;
            d.prefill = prefill;
            d.decode = decode;
            d.decode_model = model(0.01 * speed, 5e-5 * speed, 20_000.0);
            d.transfer_per_byte = 1e-6;
            d.transfer_latency = 1e-3;
            d
        };
        let (x, y) = (simulate(&pool(a, 1.0), &reqs, 100), simulate(&pool(b, decode_speed), &reqs, 100));
        prop_assert_eq!(x.aborted, y.aborted);
        if !x.aborted {
            for (f, g) in x.ttft.iter().zip(&y.ttft) {
                prop_assert!(f == g || (f.is_nan() && g.is_nan()));
            }
        }
    }
}

/// A burst (`arrivals = burst()`, vLLM's `--request-rate inf`) sends every
/// request at 0: the sampled requests all arrive at 0, the run is the
/// closed loop with as many clients as requests, and an overloaded burst
/// is served to the end and never flagged unstable (its queue is bounded
/// by its requests), where the same requests at an open-loop rate far
/// above capacity are.
#[test]
fn a_burst_is_every_request_at_zero() {
    let mut s = serve(1.0, 400, 3);
    s.arrivals = Arrivals::Burst;
    let reqs = requests(&s, None);
    assert_eq!(reqs.len(), 400);
    assert!(reqs.iter().all(|r| r.arrival == 0.0));
    // The requests are those of a closed loop (same seed, same draws).
    let mut c = serve(1.0, 400, 3);
    c.arrivals = Arrivals::Closed { concurrency: 400 };
    assert_eq!(reqs, requests(&c, None));
    let d = colocated(small(), 1, 512, 32);
    let o = super::outcome(&d, &reqs, &s, 100);
    let c = super::sim::simulate_closed(&d, &reqs, 400);
    assert_eq!(o.completed, 400);
    assert_eq!(o.e2e, c.e2e);
    assert_eq!(o.ttft, c.ttft);
    let sum = super::run_with(&d, &reqs, &s, 100);
    assert!(!sum.unstable);
    assert_eq!(sum.completed, 400);
    let flood = serve(1e6, 400, 3);
    let f = super::run_with(&d, &requests(&flood, None), &flood, 100);
    assert!(f.unstable, "an open loop far above capacity is unstable");
}

/// `trace("file.csv")` lengths: request `i` takes row `i` of the file,
/// from the first row again past the last, and the arrivals are the ones
/// the same workload draws with fixed lengths (a replayed length draws
/// nothing from the stream, so it cannot shift the arrival times).
#[test]
fn replayed_lengths_follow_the_rows_and_leave_arrivals_alone() {
    let rows = |v: &[u32]| Lengths::Replay {
        path: "lengths.csv".into(),
        rows: std::sync::Arc::new(v.to_vec()),
    };
    let mut s = serve(4.0, 7, 11);
    s.input = rows(&[13, 329, 933]);
    s.output = rows(&[120, 1, 780]);
    let reqs = requests(&s, None);
    let prompts: Vec<u32> = reqs.iter().map(|r| r.prompt).collect();
    let outputs: Vec<u32> = reqs.iter().map(|r| r.generate).collect();
    assert_eq!(prompts, vec![13, 329, 933, 13, 329, 933, 13]);
    assert_eq!(outputs, vec![120, 1, 780, 120, 1, 780, 120]);
    let mut f = serve(4.0, 7, 11);
    f.input = Lengths::Fixed(1);
    f.output = Lengths::Fixed(1);
    let fixed_arrivals: Vec<f64> = requests(&f, None).iter().map(|r| r.arrival).collect();
    let arrivals: Vec<f64> = reqs.iter().map(|r| r.arrival).collect();
    assert_eq!(arrivals, fixed_arrivals);
    assert!(arrivals.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(s.input.mean(), (13.0 + 329.0 + 933.0) / 3.0);
}

/// An engine's `request_overhead` (`IterModel::admission`) delays each
/// request's admission by exactly that long: on requests spaced far
/// apart (each finds the deployment idle) every TTFT and end-to-end
/// latency grows by `d` and nothing else moves, and Little's law, counted
/// from admission, still holds on a loaded run.
#[test]
fn request_overhead_delays_admission_by_exactly_its_time() {
    let d = 0.0085;
    let spaced: Vec<Request> = (0..6)
        .map(|i| Request {
            arrival: 10.0 * i as f64,
            prompt: 100 + 37 * i,
            generate: 5 + i,
            key: i,
            doc: None,
        })
        .collect();
    let m = small();
    let run = |m: IterModel, reqs: &[Request]| simulate(&colocated(m, 1, 512, 32), reqs, 1000);
    let base = run(m, &spaced);
    let late = run(IterModel { admission: d, ..m }, &spaced);
    for i in 0..spaced.len() {
        assert!((late.ttft[i] - base.ttft[i] - d).abs() < 1e-12, "ttft {i}");
        assert!((late.e2e[i] - base.e2e[i] - d).abs() < 1e-12, "e2e {i}");
    }
    assert_eq!(late.completed, base.completed);
    assert_eq!(late.iterations, base.iterations);
    // Loaded: Little's law from admission.
    let s = serve(60.0, 4_000, 5);
    let reqs = requests(&s, None);
    let o = run(IterModel { admission: d, ..m }, &reqs);
    assert_eq!(o.completed, 4_000);
    assert_little(&o);
}

/// An engine's `frontend_time` (`IterModel::frontend`) is one process's
/// work per request: a burst of `n` requests reaches the scheduler one
/// every `f` seconds (request `k` at `(k + 1) f` after its arrival at 0),
/// spaced requests each pay `f` and nothing else moves, and Little's law,
/// counted from admission, holds on a loaded run.
#[test]
fn frontend_time_serves_one_request_at_a_time() {
    let f = 0.004;
    let m = small();
    let run = |m: IterModel, reqs: &[Request]| simulate(&colocated(m, 1, 512, 32), reqs, 1000);
    // Spaced: a delay of exactly f.
    let spaced: Vec<Request> = (0..6)
        .map(|i| req(10.0 * i as f64, 100 + 37 * i, 5 + i))
        .collect();
    let base = run(m, &spaced);
    let late = run(IterModel { frontend: f, ..m }, &spaced);
    for i in 0..spaced.len() {
        assert!((late.ttft[i] - base.ttft[i] - f).abs() < 1e-12, "ttft {i}");
        assert!((late.e2e[i] - base.e2e[i] - f).abs() < 1e-12, "e2e {i}");
    }
    assert_eq!(late.completed, base.completed);
    assert_eq!(late.iterations, base.iterations);
    // A burst on a model whose iterations take no time: request k's
    // first token is its admission, (k + 1) f.
    let instant = model(0.0, 0.0, 1e9);
    let burst: Vec<Request> = (0..20).map(|_| req(0.0, 64, 1)).collect();
    let o = run(
        IterModel {
            frontend: f,
            ..instant
        },
        &burst,
    );
    for (k, t) in o.ttft.iter().enumerate() {
        assert!(close(*t, (k + 1) as f64 * f), "request {k}: {t}");
    }
    // Loaded, with the front end a third busy: Little's law from admission.
    let s = serve(60.0, 4_000, 5);
    let reqs = requests(&s, None);
    let o = run(
        IterModel {
            frontend: 0.005,
            admission: 0.002,
            ..m
        },
        &reqs,
    );
    assert_eq!(o.completed, 4_000);
    assert_little(&o);
}

/// Two turns of one conversation share their common prompt blocks: in
/// a cache of 10 blocks of 16 tokens, prompts of 6 and 7 whole blocks run
/// side by side (7 + 2 blocks taken), where two unrelated prompts of the
/// same lengths (7 + 8 blocks) take turns. A turn finds the longest
/// computed earlier prompt's whole blocks, up to its own.
#[test]
fn turns_of_one_conversation_share_their_blocks() {
    let m = IterModel {
        kv_capacity_tokens: 160.0,
        ..small()
    };
    let d = colocated(m, 1, 512, 32);
    let pair = |same: bool| {
        let reqs = [
            Request {
                key: 0,
                ..req(0.0, 96, 3)
            },
            Request {
                key: u32::from(!same),
                ..req(0.0, 112, 3)
            },
            Request {
                key: 0,
                ..req(1.0, 128, 3)
            },
        ];
        let mut caches = super::sim::fresh_caches(&d);
        super::sim::simulate_cached(&d, &reqs, u64::MAX, None, &mut caches)
    };
    let shared = pair(true);
    let apart = pair(false);
    assert_eq!(shared.completed, 3);
    assert_eq!(apart.completed, 3);
    // Shared, the second prompt's first token comes before the first
    // request is done (the second arrives as the first's iteration has
    // started, and joins the next); apart, only after.
    assert!(
        shared.ttft[1] < shared.e2e[0],
        "{} vs {}",
        shared.ttft[1],
        shared.e2e[0]
    );
    assert!(
        apart.ttft[1] > apart.e2e[0],
        "{} vs {}",
        apart.ttft[1],
        apart.e2e[0]
    );
    // The second turn joins once the first's prefill is done: it finds
    // those 6 blocks, and the third the second's 7.
    assert_eq!(
        (shared.prefix_looked_up, shared.prefix_found),
        (96 + 112 + 128, 96 + 112)
    );
    // Apart, the second prompt's 8 blocks leave 2 free: the first's 6
    // idle blocks are evicted, and the third finds nothing.
    assert_eq!(apart.prefix_found, 0);
}

/// A multi-turn dataset sends each of its entries once per shuffle, and
/// turn k + 1's prompt is turn k's prompt, its answer and one more
/// message, after the conversation's document.
#[test]
fn a_multi_turn_dataset_sends_each_entry_once_with_its_history() {
    use gantry_lang::program::{Conversations, Lengths};
    let s = Serve {
        input: Lengths::Uniform { lo: 10, hi: 50 },
        output: Lengths::Uniform { lo: 100, hi: 200 },
        conversations: Some(Conversations {
            count: 4,
            turns: 5,
            documents: Some((2, Lengths::Fixed(1000))),
        }),
        ..serve(5.0, 60, 3)
    };
    let r = requests(&s, None);
    assert_eq!(r.len(), 60);
    let entries = |c: &[Request]| {
        let mut v: Vec<(u32, u32, u32)> = c.iter().map(|r| (r.key, r.prompt, r.generate)).collect();
        v.sort();
        v
    };
    let first = entries(&r[..20]);
    assert!(first.windows(2).all(|w| w[0] != w[1]), "{first:?}");
    assert_eq!(entries(&r[20..40]), first);
    assert_eq!(entries(&r[40..]), first);
    assert_ne!(
        r[..20].iter().map(|x| x.prompt).collect::<Vec<_>>(),
        r[20..40].iter().map(|x| x.prompt).collect::<Vec<_>>(),
        "a fresh shuffle"
    );
    for c in 0..4u32 {
        let turns: Vec<(u32, u32)> = first
            .iter()
            .filter(|e| e.0 == c)
            .map(|e| (e.1, e.2))
            .collect();
        assert_eq!(turns.len(), 5);
        assert!((1010..=1050).contains(&turns[0].0), "{turns:?}");
        for w in turns.windows(2) {
            let message = w[1].0 - w[0].0 - w[0].1;
            assert!((10..=50).contains(&message), "{turns:?}");
        }
        let doc = r.iter().find(|x| x.key == c).and_then(|x| x.doc);
        assert!(matches!(doc, Some((0 | 1, 1000))), "{doc:?}");
        assert!(r.iter().filter(|x| x.key == c).all(|x| x.doc == doc));
    }
}

/// A run `after` earlier runs of the same requests (`sim::simulate_cached`
/// with the caches they left): one replica with room for every prompt
/// finds each prompt's whole 16-token blocks, never its last token, and
/// the first run finds none; a cache with room for few prompts finds
/// fewer, since the least recently used leave first.
#[test]
fn a_rerun_finds_the_whole_blocks_of_its_prompts() {
    let m = small();
    let reqs: Vec<Request> = (0..40)
        .map(|i| Request {
            key: i,
            ..req(0.05 * i as f64, 7 + 29 * (i % 11), 3 + i % 4)
        })
        .collect();
    let whole: u64 = reqs
        .iter()
        .map(|r| ((r.prompt as u64 / 16) * 16).min(r.prompt as u64 - 1))
        .sum();
    let tokens: u64 = reqs.iter().map(|r| r.prompt as u64).sum();
    let d = colocated(m, 1, 512, 32);
    let mut caches = super::sim::fresh_caches(&d);
    let first = super::sim::simulate_cached(&d, &reqs, u64::MAX, None, &mut caches);
    assert_eq!((first.prefix_looked_up, first.prefix_found), (tokens, 0));
    let second = super::sim::simulate_cached(&d, &reqs, u64::MAX, None, &mut caches);
    assert_eq!(
        (second.prefix_looked_up, second.prefix_found),
        (tokens, whole)
    );
    // Less prefill: the first tokens come sooner on average.
    let mean = |o: &Outcome| o.ttft.iter().sum::<f64>() / o.ttft.len() as f64;
    assert!(
        mean(&second) < mean(&first),
        "{} vs {}",
        mean(&second),
        mean(&first)
    );
    // Room for about 12 blocks of cache beside the running requests.
    let small_cache = IterModel {
        kv_capacity_tokens: 16.0 * 40.0,
        ..m
    };
    let d = colocated(small_cache, 1, 512, 32);
    let mut caches = super::sim::fresh_caches(&d);
    super::sim::simulate_cached(&d, &reqs, u64::MAX, None, &mut caches);
    let again = super::sim::simulate_cached(&d, &reqs, u64::MAX, None, &mut caches);
    assert!(
        again.prefix_found < whole,
        "{} of {whole}",
        again.prefix_found
    );
    // Without caches, nothing is looked up.
    let plain = simulate(&d, &reqs, u64::MAX);
    assert_eq!((plain.prefix_looked_up, plain.prefix_found), (0, 0));
}

/// What a run with prefix caches keeps: every request completes or is
/// dropped, the tokens generated are those of the completed requests, it
/// finds no more prompt tokens than it looks up and none past each
/// prompt's whole 16-token blocks (never its last token), and it is a
/// function of its inputs (two runs agree bit for bit).
fn cached_runs_conserve(
    d: &Deployment,
    reqs: &[Request],
    s: &Serve,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let o = super::outcome(d, reqs, s, u64::MAX);
    prop_assert_eq!(o.completed + o.dropped, reqs.len() as u64);
    let done: u64 = reqs
        .iter()
        .zip(&o.e2e)
        .filter(|(_, e)| e.is_finite())
        .map(|(r, _)| r.generate as u64)
        .sum();
    prop_assert_eq!(o.tokens_generated, done);
    let whole: u64 = reqs
        .iter()
        .map(|r| ((r.prompt as u64 / 16) * 16).min(r.prompt as u64 - 1))
        .sum();
    prop_assert!(o.prefix_found <= o.prefix_looked_up);
    prop_assert!(o.prefix_found <= whole);
    let again = super::outcome(d, reqs, s, u64::MAX);
    prop_assert_eq!(format!("{o:?}"), format!("{again:?}"));
    Ok(())
}

proptest! {
    #![proptest_config(fixed(24))]

    /// A multi-turn dataset on replicas whose caches share documents and
    /// conversations keeps what [`cached_runs_conserve`] checks, and
    /// every block comes back (the simulator's debug check).
    #[test]
    fn conversations_conserve(rate in 2.0f64..40.0, seed in 0u64..1000,
                              replicas in 1u64..4, count in 1u64..30, turns in 1u64..6,
                              documents in 0u64..4, kv in 2_000.0f64..40_000.0) {
        use gantry_lang::program::{Conversations, Lengths};
        let s = Serve {
            input: Lengths::LogNormal { mean: 60.0, spread: 0.8 },
            output: Lengths::LogNormal { mean: 40.0, spread: 0.8 },
            conversations: Some(Conversations {
                count,
                turns,
                documents: (documents > 0).then_some((documents, Lengths::Uniform { lo: 20, hi: 400 })),
            }),
            ..serve(rate, 300, seed)
        };
        let reqs = requests(&s, None);
        let m = IterModel { kv_capacity_tokens: kv, ..small() };
        let d = colocated(m, replicas, 512, 32);
        cached_runs_conserve(&d, &reqs, &s)?;
    }

    /// A run after earlier runs of the same requests (`outcome` with an
    /// `after` chain) keeps what [`cached_runs_conserve`] checks.
    #[test]
    fn runs_after_runs_conserve(rate in 2.0f64..40.0, seed in 0u64..1000,
                                replicas in 1u64..4, earlier in 1usize..4,
                                kv in 2_000.0f64..40_000.0) {
        let s = serve(rate, 400, seed);
        let reqs = requests(&s, None);
        let m = IterModel { kv_capacity_tokens: kv, ..small() };
        let d = colocated(m, replicas, 512, 32);
        let warm = Serve { after: vec![serve(rate / 2.0, 400, seed); earlier], ..s.clone() };
        cached_runs_conserve(&d, &reqs, &warm)?;
    }
}

/// Two requests 1e10 s apart, each served in a second: the stated rate
/// is one gap over the span (1e-10 req/s), and throughput and goodput
/// may not exceed it (they read 2e-10 req/s: two completions over a run
/// one gap long). With many requests the run's own length still wins.
#[test]
fn throughput_never_exceeds_the_stated_rate() {
    let s = serve(1.0, 2, 1);
    let reqs = [req(0.0, 100, 2), req(1e10, 100, 2)];
    let d = colocated(model(0.5, 1e-6, 1e6), 1, 512, 32);
    let o = simulate(&d, &reqs, 100);
    assert_eq!(o.completed, 2);
    let arrivals: Vec<f64> = reqs.iter().map(|r| r.arrival).collect();
    let sum = super::summarize(&d, &o, &arrivals, &[2, 2], &s);
    assert!(close(sum.rate * 1e10, 1.0), "{}", sum.rate);
    assert!(
        sum.throughput <= sum.rate,
        "{} > {}",
        sum.throughput,
        sum.rate
    );
    assert!(sum.goodput <= sum.rate, "{} > {}", sum.goodput, sum.rate);
    let s = serve(20.0, 2000, 3);
    let reqs = requests(&s, None);
    let o = simulate(&d, &reqs, 2000);
    let arrivals: Vec<f64> = reqs.iter().map(|r| r.arrival).collect();
    let generate: Vec<u32> = reqs.iter().map(|r| r.generate).collect();
    let sum = super::summarize(&d, &o, &arrivals, &generate, &s);
    assert!(
        sum.throughput <= sum.rate,
        "{} > {}",
        sum.throughput,
        sum.rate
    );
    assert!(close(sum.throughput * o.makespan, o.completed as f64));
}
