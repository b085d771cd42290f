//! Figures of one simulated deployment, and how they read.
//!
//! Everything here is computed from the per-request latencies and the
//! counters of [`Outcome`]: percentiles by nearest rank, goodput as the
//! requests that met every SLO per second of the run, utilisation as busy
//! seconds over the run's seconds per replica. The text and JSON writers
//! only format these fields; JSON writes base units (seconds, bytes,
//! dollars) with the unit in the name, as `gantry.plan/2` does.

use gantry_lang::program::{Arrivals, Serve, Slo};
use serde_json::{Value, json};

use super::sim::{Deployment, Outcome};
use super::timing::IterModel;

/// P50, P90, P99 and the percentile at the attainment target.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// The mean of the finite values (genai-perf and `vllm bench` print it).
    pub mean: f64,
    /// At the workload's attainment (what the SLO is checked against).
    pub at_target: f64,
}

/// Nearest-rank percentile `q` in (0, 1] of sorted finite values (0 if none).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

/// The percentiles of the completed requests' latencies `v` (what a
/// benchmark prints), and the one at `target` over every request, one not
/// completed (dropped, or never served) counting as never: the SLO check.
/// With no request completed every figure is infinite.
fn percentiles(mut v: Vec<f64>, target: f64) -> Percentiles {
    let all = v.len();
    v.retain(|x| x.is_finite());
    // Unstable is the same order: values equal under `total_cmp` have
    // the same bits. The mean sums in this order.
    v.sort_unstable_by(f64::total_cmp);
    if v.is_empty() {
        return Percentiles {
            mean: f64::INFINITY,
            p50: f64::INFINITY,
            p90: f64::INFINITY,
            p99: f64::INFINITY,
            at_target: f64::INFINITY,
        };
    }
    // The rank among all requests; past the completed ones, never.
    let k = ((target * all as f64).ceil() as usize).clamp(1, all.max(1));
    Percentiles {
        mean: v.iter().sum::<f64>() / v.len() as f64,
        p50: percentile(&v, 0.5),
        p90: percentile(&v, 0.9),
        p99: percentile(&v, 0.99),
        at_target: v.get(k - 1).copied().unwrap_or(f64::INFINITY),
    }
}

/// An SLO's target and the deployment's percentile at the attainment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SloCheck {
    pub name: &'static str,
    pub target: f64,
    pub achieved: f64,
}

impl SloCheck {
    pub fn ratio(&self) -> f64 {
        self.achieved / self.target
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub deployment: Deployment,
    /// The arrival rate simulated, requests per second (requests over the
    /// arrival span).
    pub rate: f64,
    pub requests: u64,
    pub completed: u64,
    pub dropped: u64,
    pub ttft: Percentiles,
    pub tpot: Percentiles,
    pub e2e: Percentiles,
    /// Completed requests and generated tokens per second of the run.
    pub throughput: f64,
    pub tokens_per_s: f64,
    /// Prompt tokens (a batching window's items) of completed requests
    /// per second.
    pub items_per_s: f64,
    /// Requests that met every SLO, per second of the run.
    pub goodput: f64,
    /// Share of all requests that met every SLO.
    pub attainment: f64,
    pub target_attainment: f64,
    pub slos: Vec<SloCheck>,
    pub unstable: bool,
    pub meets: bool,
    pub utilisation_prefill: f64,
    pub utilisation_decode: f64,
    /// Compute-busy share of the deployment's device-seconds: the tokens
    /// each pool batched times its linear layers' compute per token
    /// (`c_token`, on all `tp` devices of a replica), over devices times
    /// the run's seconds (what a fleet pool's power is priced at;
    /// docs/COST-MODEL.md §9).
    pub compute_busy: f64,
    /// Tokens per iteration, averaged over iterations.
    pub mean_batch_tokens: f64,
    pub preemptions: u64,
    pub transfer_bytes: f64,
    pub devices: u64,
    pub price_per_s: Option<f64>,
    pub power: f64,
    pub goodput_per_dollar: Option<f64>,
    pub kv_capacity_tokens: f64,
    pub little: (f64, f64, f64),
    /// With prefix caches (`after`, `conversations`): the share of the fresh
    /// prompts' tokens found cached. `None` without them.
    pub prefix_cached: Option<f64>,
    /// The requests are a multi-turn dataset's entries (`conversations`).
    pub conversations: bool,
    /// The clients of a closed loop (all the requests for a burst);
    /// `None` for open-loop arrivals, whose `rate` is offered.
    pub clients: Option<u64>,
}

/// How the requests of a run came: `gantry.serve/1`'s `arrivals.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Open-loop arrivals (drawn or a trace's times): `rate` is offered.
    Open,
    /// A closed loop of fewer clients than requests: `rate` is what the
    /// clients sent at, which is what the deployment served.
    Closed(u64),
    /// Every request at time 0 (`burst()`, a closed loop with a client per
    /// request, a trace whose times span no time): there is no arrival
    /// span, so `rate` is 0.
    Burst(u64),
}

impl Load {
    pub fn kind(self) -> &'static str {
        match self {
            Load::Open => "open",
            Load::Closed(_) => "closed",
            Load::Burst(_) => "burst",
        }
    }
}

impl Summary {
    /// How the requests came: offered, from a closed loop, or all at once.
    pub fn load(&self) -> Load {
        match self.clients {
            Some(c) if c >= self.requests => Load::Burst(c),
            Some(c) => Load::Closed(c),
            None => Load::Open,
        }
    }

    /// How the requests came, in words: at the offered rate, or from a
    /// closed loop (whose rate is what the deployment served).
    pub fn load_text(&self) -> String {
        match self.load() {
            Load::Burst(_) => format!("{} requests sent at once (a burst)", self.requests),
            Load::Closed(c) => format!(
                "{} requests from a closed loop of {c} clients",
                self.requests
            ),
            Load::Open => format!("{} requests at {} req/s", self.requests, rate(self.rate, 3)),
        }
    }
}

impl Summary {
    /// Tokens a (decode) replica's KV cache holds: under a pipeline, its
    /// `pp` virtual engines' caches together (`kv_capacity_tokens` is one
    /// engine's).
    pub fn kv_tokens_per_replica(&self) -> f64 {
        self.kv_capacity_tokens * self.deployment.decode_model.pp.max(1) as f64
    }

    /// The named figure, for `expect` (base units: seconds, requests or
    /// tokens per second): `ttft_p50`, `tpot_p99`, `e2e_p90`, ...,
    /// `throughput` (completed requests per second), `tokens_per_s`,
    /// `goodput`, `devices`. `None` for a metric a serving run has not.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let pick = |p: &Percentiles, q: &str| match q {
            "p50" => Some(p.p50),
            "p90" => Some(p.p90),
            "p99" => Some(p.p99),
            "mean" => Some(p.mean),
            _ => None,
        };
        if let Some((what, q)) = name.split_once('_') {
            match what {
                "ttft" => return pick(&self.ttft, q),
                "tpot" => return pick(&self.tpot, q),
                "e2e" => return pick(&self.e2e, q),
                _ => {}
            }
        }
        Some(match name {
            "throughput" | "samples_per_s" => self.throughput,
            "tokens_per_s" => self.tokens_per_s,
            "goodput" => self.goodput,
            "devices" => self.devices as f64,
            "throughput_per_dollar" => self.goodput_per_dollar?,
            _ => return None,
        })
    }
}

/// Whether the queue grew: the run stopped on its backlog, or more than
/// 2% of the requests (at least 8) waited at the last arrival and the
/// backlog grew by half since the middle arrival.
pub fn unstable(o: &Outcome, requests: usize) -> bool {
    let floor = (0.02 * requests as f64).max(8.0);
    o.aborted || (o.backlog_end as f64 > floor && o.backlog_end as f64 > 1.5 * o.backlog_mid as f64)
}

/// The figures of `o`, a run of `d` on requests with these `arrivals`
/// and `generate` lengths, against `serve`'s SLOs.
pub fn summarize(
    d: &Deployment,
    o: &Outcome,
    arrivals: &[f64],
    generate: &[u32],
    serve: &Serve,
) -> Summary {
    let n = arrivals.len();
    let target = serve.attainment;
    // A batching window serves whole requests: one target, the latency.
    let batched = d.limits.window.is_some();
    let closed = serve.arrivals.clients(n as u64).is_some();
    let Slo {
        ttft_p99,
        tpot_p99,
        e2e_p99,
    } = serve.slo;
    let tpot: Vec<f64> = o
        .ttft
        .iter()
        .zip(&o.e2e)
        .zip(generate)
        .map(|((f, e), g)| {
            if *g > 1 {
                (e - f) / (*g - 1) as f64
            } else {
                0.0
            }
        })
        .collect();
    let ok = o
        .ttft
        .iter()
        .zip(&o.e2e)
        .zip(&tpot)
        .filter(|((f, e), t)| {
            e.is_finite()
                && (batched || (**f <= ttft_p99 && **t <= tpot_p99))
                && e2e_p99.is_none_or(|x| **e <= x)
        })
        .count() as u64;
    let span = match (arrivals.first(), arrivals.last()) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => 0.0,
    };
    let rate = if span > 0.0 {
        (n - 1) as f64 / span
    } else {
        // One drawn open arrival has no gap to measure a rate over: it was
        // offered at the workload's rate (it read `1 requests at 0.000
        // req/s`). A burst's requests all arrive at 0: no rate (`Load`).
        match serve.arrivals {
            Arrivals::Poisson { rate } | Arrivals::Gamma { rate, .. } => rate,
            _ => 0.0,
        }
    };
    // `n` requests at the stated rate (`n - 1` gaps over the span) take
    // `n` gaps: the run lasts at least that long, so throughput and
    // goodput never exceed the rate (two requests 1e10 s apart served at
    // once read 2e-10 req/s against 1e-10 offered). Open arrivals only:
    // a closed loop's arrivals follow its completions, and its rate is
    // what it served.
    let run = if span > 0.0 && !closed {
        o.makespan.max(span * n as f64 / (n - 1) as f64)
    } else {
        o.makespan
    };
    let per_s = |x: f64| if run > 0.0 { x / run } else { 0.0 };
    // A closed loop's queue is bounded by its clients, a burst's by its
    // requests: never unstable.
    let unstable = !closed && unstable(o, n);
    let (ttft, tpot, e2e) = (
        percentiles(o.ttft.clone(), target),
        percentiles(tpot, target),
        percentiles(o.e2e.clone(), target),
    );
    let mut slos = if batched {
        Vec::new()
    } else {
        vec![
            SloCheck {
                name: "ttft_p99",
                target: ttft_p99,
                achieved: ttft.at_target,
            },
            SloCheck {
                name: "tpot_p99",
                target: tpot_p99,
                achieved: tpot.at_target,
            },
        ]
    };
    if let Some(x) = e2e_p99 {
        slos.push(SloCheck {
            name: if batched { "latency_p99" } else { "e2e_p99" },
            target: x,
            achieved: e2e.at_target,
        });
    }
    let attainment = if n > 0 { ok as f64 / n as f64 } else { 0.0 };
    let goodput = per_s(ok as f64);
    let price_per_s = price(d);
    let (pre_n, dec_n) = if d.disaggregated() {
        (d.prefill, d.decode)
    } else {
        (d.colocated, 0)
    };
    let util = |busy: f64, k: u64| {
        if k > 0 && run > 0.0 {
            busy / (k as f64 * run)
        } else {
            0.0
        }
    };
    let (pm, dm) = (&d.prefill_model, &d.decode_model);
    let compute = o.batched_prefill as f64 * pm.c_token * pm.tp as f64
        + o.batched_tokens.saturating_sub(o.batched_prefill) as f64 * dm.c_token * dm.tp as f64;
    let device_seconds = d.devices() as f64 * run;
    let compute_busy = if device_seconds > 0.0 {
        (compute / device_seconds).clamp(0.0, 1.0)
    } else {
        0.0
    };
    Summary {
        deployment: *d,
        rate,
        requests: n as u64,
        completed: o.completed,
        dropped: o.dropped,
        ttft,
        tpot,
        e2e,
        throughput: per_s(o.completed as f64),
        tokens_per_s: per_s(o.tokens_generated as f64),
        items_per_s: per_s(o.items_completed as f64),
        goodput,
        attainment,
        target_attainment: target,
        meets: !unstable && attainment >= target,
        slos,
        unstable,
        utilisation_prefill: util(o.busy_prefill, pre_n),
        utilisation_decode: util(o.busy_decode, dec_n),
        compute_busy,
        mean_batch_tokens: if o.iterations > 0 {
            o.batched_tokens as f64 / o.iterations as f64
        } else {
            0.0
        },
        preemptions: o.preemptions,
        transfer_bytes: o.transfer_bytes,
        devices: d.devices(),
        price_per_s,
        power: power(d),
        goodput_per_dollar: price_per_s.filter(|p| *p > 0.0).map(|p| goodput / p),
        kv_capacity_tokens: d.decode_model.kv_capacity_tokens,
        little: (o.little_l, o.little_lambda, o.little_w),
        conversations: serve.conversations.is_some(),
        prefix_cached: ((!serve.after.is_empty() || serve.conversations.is_some())
            && o.prefix_looked_up > 0)
            .then(|| o.prefix_found as f64 / o.prefix_looked_up as f64),
        clients: serve.arrivals.clients(n as u64),
    }
}

fn price(d: &Deployment) -> Option<f64> {
    if d.disaggregated() {
        Some(
            d.prefill as f64 * d.prefill_model.price_per_s?
                + d.decode as f64 * d.decode_model.price_per_s?,
        )
    } else {
        Some(d.colocated as f64 * d.prefill_model.price_per_s?)
    }
}

fn power(d: &Deployment) -> f64 {
    if d.disaggregated() {
        d.prefill as f64 * d.prefill_model.power + d.decode as f64 * d.decode_model.power
    } else {
        d.colocated as f64 * d.prefill_model.power
    }
}

/// `max_seqs 256, budget 8192` (`, unchunked` without chunked prefill).
fn scheduler(d: &Deployment) -> String {
    format!(
        "max_seqs {}, budget {}{}",
        d.limits.max_seqs,
        d.limits.token_budget,
        if d.limits.chunked_prefill {
            ""
        } else {
            ", unchunked"
        }
    )
}

/// `8` or, pipelined, `4 x pp2`: an iteration model's degrees.
pub fn degrees(m: &IterModel) -> String {
    if m.pp > 1 {
        format!("{} x pp{}", m.tp, m.pp)
    } else {
        m.tp.to_string()
    }
}

/// `colocated 2 x tp8` or `disaggregated 3 x tp4 prefill : 2 x tp8 decode`.
pub fn describe(d: &Deployment) -> String {
    if let Some(w) = d.limits.window {
        return format!(
            "{} x tp{}, batch {} items, window {:.0} us",
            d.colocated,
            d.prefill_model.tp,
            d.limits.token_budget,
            w * 1e6
        );
    }
    if d.disaggregated() {
        format!(
            "disaggregated {} x tp{} prefill : {} x tp{} decode, {}",
            d.prefill,
            d.prefill_model.tp,
            d.decode,
            d.decode_model.tp,
            scheduler(d)
        )
    } else {
        let m = &d.prefill_model;
        if m.pp > 1 {
            format!(
                "colocated {} x tp{} pp{} ({} virtual engines), {}",
                d.colocated / m.pp,
                m.tp,
                m.pp,
                d.colocated,
                scheduler(d)
            )
        } else {
            format!("colocated {} x tp{}, {}", d.colocated, m.tp, scheduler(d))
        }
    }
}

/// A rate (requests or items per second) to `decimals` places, or to four
/// significant figures where those places would show none of it (the
/// lowest rate a `serve` accepts, `poisson(rate = 0.000001)`, read
/// `0.000 req/s`).
pub fn rate(x: f64, decimals: usize) -> String {
    if x == 0.0 || x.abs() >= 0.1f64.powi(decimals as i32) {
        format!("{x:.decimals$}")
    } else {
        format!("{x:.3e}")
    }
}

/// Milliseconds to one decimal, or microseconds below 0.1 ms (as C019
/// writes them): a `tpot_p99 = 1 us` target read `tpot_p99 <= 0.0 ms`.
pub fn ms(x: f64) -> String {
    if x < 1e-4 {
        format!("{:.1} us", x * 1e6)
    } else {
        format!("{:.1} ms", x * 1e3)
    }
}

/// [`ms`], or microseconds below a millisecond (a batching window's
/// latencies are often that short).
fn lat(s: &Summary, x: f64) -> String {
    if !x.is_finite() {
        // The percentile falls on requests that never completed (dropped:
        // too long for the KV cache): it read `inf ms`.
        "never".into()
    } else if batched(s) && x < 1e-3 {
        format!("{:.1} us", x * 1e6)
    } else {
        ms(x)
    }
}

/// What limits a deployment: queueing when unstable, else the SLO
/// closest to (or furthest past) its target, named by the resource it
/// stresses.
pub fn binding(s: &Summary) -> String {
    if s.unstable {
        return "queueing: requests arrive faster than the deployment serves them".into();
    }
    let Some(worst) = s.slos.iter().max_by(|a, b| a.ratio().total_cmp(&b.ratio())) else {
        return "none".into();
    };
    let why = match worst.name {
        "ttft_p99" if s.deployment.disaggregated() => "prefill pool compute and queueing",
        "ttft_p99" if !s.deployment.limits.chunked_prefill => {
            "prefill compute (whole prompts share iterations with decode)"
        }
        "ttft_p99" => "prefill compute (chunks share iterations with decode)",
        "tpot_p99" if s.preemptions > 0 => "KV-cache capacity (preemptions recompute)",
        "tpot_p99" if s.deployment.disaggregated() && s.transfer_bytes > 0.0 => {
            "decode bandwidth and KV transfer"
        }
        "tpot_p99" => "decode bandwidth (weights and KV cache read each iteration)",
        "latency_p99" if s.utilisation_prefill > 0.8 => {
            "batch compute (the replicas are busy; batches queue)"
        }
        "latency_p99" => "the batching window and one batch's time",
        _ => "end-to-end latency",
    };
    if !worst.achieved.is_finite() {
        // It read `tpot_p99 at inf% of its target (inf ms of 50.0 ms)`.
        return format!(
            "{}: fewer than {:.0}% of the requests complete ({} of {} dropped, too long for the KV cache)",
            worst.name,
            100.0 * s.target_attainment,
            s.dropped,
            s.requests
        );
    }
    format!(
        "{} at {:.0}% of its target ({} of {}): {why}",
        worst.name,
        100.0 * worst.ratio(),
        lat(s, worst.achieved),
        ms(worst.target)
    )
}

/// The report's text (deterministic: no wall-clock figures).
pub fn text(s: &Summary) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "Deployment  {}", describe(&s.deployment));
    if batched(s) {
        let _ = writeln!(
            t,
            "  {} devices; at most {:.0} items in flight per replica",
            s.devices, s.kv_capacity_tokens
        );
    } else if s.deployment.decode_model.pp > 1 {
        let _ = writeln!(
            t,
            "  {} devices; KV cache {:.0} tokens per replica, {:.0} for each of its {} virtual engines",
            s.devices,
            s.kv_tokens_per_replica(),
            s.kv_capacity_tokens,
            s.deployment.decode_model.pp
        );
    } else {
        let _ = writeln!(
            t,
            "  {} devices; KV cache {:.0} tokens per replica",
            s.devices, s.kv_capacity_tokens
        );
    }
    let _ = writeln!(
        t,
        "Load        {}; {} completed, {} dropped",
        s.load_text(),
        s.completed,
        s.dropped
    );
    if s.unstable {
        let _ = writeln!(
            t,
            "UNSTABLE    the queue grows: the rate is above what this deployment serves; latencies are not reported"
        );
        return t;
    }
    let _ = writeln!(t, "Latency     P50         P90         P99");
    for (name, p) in latencies(s) {
        let _ = writeln!(
            t,
            "  {name:<9} {:<11} {:<11} {}",
            lat(s, p.p50),
            lat(s, p.p90),
            lat(s, p.p99)
        );
    }
    for c in &s.slos {
        let _ = writeln!(
            t,
            "SLO         {} <= {}: {} at {:.1}% ({})",
            c.name,
            ms(c.target),
            lat(s, c.achieved),
            100.0 * s.target_attainment,
            if c.achieved <= c.target {
                "met"
            } else {
                "missed"
            }
        );
    }
    for (label, _, value) in figures(s) {
        let _ = writeln!(t, "{label:<11} {value}");
    }
    t
}

fn batched(s: &Summary) -> bool {
    s.deployment.limits.window.is_some()
}

/// The latency rows: TTFT, TPOT and end to end, or a batching window's
/// one request latency.
fn latencies(s: &Summary) -> Vec<(&'static str, &Percentiles)> {
    if batched(s) {
        vec![("Request", &s.e2e)]
    } else {
        vec![("TTFT", &s.ttft), ("TPOT", &s.tpot), ("E2E", &s.e2e)]
    }
}

/// The summary's figures after the latency table, as (text label,
/// Markdown label, value): one list for both renderings.
fn figures(s: &Summary) -> Vec<(&'static str, &'static str, String)> {
    let mut rows = vec![
        (
            "Attainment",
            "attainment",
            format!(
                "{:.2}% of requests meet every SLO (target {:.2}%): {}",
                100.0 * s.attainment,
                100.0 * s.target_attainment,
                if s.meets { "met" } else { "missed" }
            ),
        ),
        (
            "Throughput",
            "throughput",
            if batched(s) {
                format!(
                    "{} req/s, {} items/s; goodput {} req/s",
                    rate(s.throughput, 3),
                    rate(s.items_per_s, 1),
                    rate(s.goodput, 3)
                )
            } else {
                format!(
                    "{} req/s, {} tokens/s; goodput {} req/s",
                    rate(s.throughput, 3),
                    rate(s.tokens_per_s, 1),
                    rate(s.goodput, 3)
                )
            },
        ),
    ];
    if let (Some(p), Some(g)) = (s.price_per_s, s.goodput_per_dollar) {
        rows.push((
            "Cost",
            "cost",
            format!(
                "${:.2}/h; goodput per dollar {} requests/$",
                p * 3600.0,
                rate(g, 1)
            ),
        ));
    }
    if batched(s) {
        rows.push((
            "Utilisation",
            "utilisation",
            format!(
                "{}% busy; {:.1} items per batch",
                crate::report::fixed(100.0 * s.utilisation_prefill, 1),
                s.mean_batch_tokens
            ),
        ));
        rows.push(("Binding", "binding", binding(s)));
        return rows;
    }
    rows.push((
        "Utilisation",
        "utilisation",
        format!(
            "{}% prefill{}; {:.1} tokens per iteration; {} preemptions",
            crate::report::fixed(100.0 * s.utilisation_prefill, 1),
            if s.deployment.disaggregated() {
                format!(
                    ", {}% decode",
                    crate::report::fixed(100.0 * s.utilisation_decode, 1)
                )
            } else {
                " and decode".to_string()
            },
            s.mean_batch_tokens,
            s.preemptions
        ),
    ));
    if let Some(c) = s.prefix_cached {
        rows.push((
            "Prefix cache",
            "prefix cache",
            format!(
                "{:.1}% of the prompt tokens found cached ({})",
                100.0 * c,
                if s.conversations {
                    "each replica's cache by document and conversation: earlier turns' prompts and shared documents"
                } else {
                    "the prompts the earlier runs named by `after` left in each replica's cache"
                }
            ),
        ));
    }
    if s.transfer_bytes > 0.0 {
        rows.push((
            "KV transfer",
            "KV transfer",
            format!(
                "{:.1} MB per request",
                s.transfer_bytes / s.completed.max(1) as f64 / 1e6
            ),
        ));
    }
    rows.push(("Binding", "binding", binding(s)));
    rows
}

fn pct(p: &Percentiles) -> Value {
    json!({ "mean_s": p.mean, "p50_s": p.p50, "p90_s": p.p90, "p99_s": p.p99, "at_attainment_s": p.at_target })
}

/// The `gantry.serve/1` fields of one deployment.
pub fn json(s: &Summary) -> Value {
    let d = &s.deployment;
    let pools = if d.disaggregated() {
        json!([
            { "role": "prefill", "replicas": d.prefill, "tp": d.prefill_model.tp, "utilisation": s.utilisation_prefill },
            { "role": "decode", "replicas": d.decode, "tp": d.decode_model.tp, "utilisation": s.utilisation_decode },
        ])
    } else {
        let m = &d.prefill_model;
        let mut pool = json!({ "role": "colocated", "replicas": d.colocated / m.pp.max(1), "tp": m.tp, "utilisation": s.utilisation_prefill });
        // Pipelined: `pp` stages, run as `pp` virtual engines per replica.
        if m.pp > 1 {
            pool["pp"] = json!(m.pp);
        }
        json!([pool])
    };
    json!({
        "deployment": describe(d),
        "disaggregated": d.disaggregated(),
        "pools": pools,
        "max_seqs": d.limits.max_seqs,
        "token_budget": d.limits.token_budget,
        "chunked_prefill": d.limits.chunked_prefill,
        "batching_window_s": d.limits.window,
        "items_per_s": s.items_per_s,
        "async_scheduling": d.limits.async_scheduling,
        "request_latency": if batched(s) { pct(&s.e2e) } else { Value::Null },
        "devices": s.devices,
        "kv_capacity_tokens": s.kv_capacity_tokens,
        "rate_per_s": s.rate,
        // What `rate_per_s` is: offered (open), the closed loop's, or 0
        // for a burst, whose requests all arrive at 0 (no arrival span).
        "arrivals": {
            "kind": s.load().kind(),
            "clients": match s.load() {
                Load::Open => None,
                Load::Closed(c) | Load::Burst(c) => Some(c),
            },
        },
        "requests": s.requests,
        "completed": s.completed,
        "dropped": s.dropped,
        "unstable": s.unstable,
        "ttft": pct(&s.ttft),
        "tpot": pct(&s.tpot),
        "e2e": pct(&s.e2e),
        "slos": s.slos.iter().map(|c| json!({ "name": c.name, "target_s": c.target, "achieved_s": c.achieved, "met": c.achieved <= c.target })).collect::<Vec<_>>(),
        "attainment": s.attainment,
        "target_attainment": s.target_attainment,
        "meets_slos": s.meets,
        "throughput_per_s": s.throughput,
        "tokens_per_s": s.tokens_per_s,
        "goodput_per_s": s.goodput,
        "price_per_hour_usd": s.price_per_s.map(|p| p * 3600.0),
        "goodput_per_usd": s.goodput_per_dollar,
        "power_w": s.power,
        "mean_batch_tokens": s.mean_batch_tokens,
        "preemptions": s.preemptions,
        "kv_transfer_bytes": s.transfer_bytes,
        "prefix_cached_share": s.prefix_cached,
        "binding": binding(s),
    })
}

/// The JSON contract's name of a serving report (`gantry plan` on a
/// plan of a `serve` workload; a fleet study's serve pool carries one).
pub const SCHEMA: &str = "gantry.serve/1";

/// The head of a `gantry.serve/1` document: the plan, workload, system.
pub fn plan_head(p: &gantry_lang::program::Plan) -> Value {
    let mut j = json!({
        "schema": SCHEMA,
        "plan": p.name,
        "workload": p.workload.name,
        "system": p.system.name,
        "device": p.system.node.device.name,
    });
    if let Some(e) = engine(p) {
        j["engine"] = json!({
            "name": e.name,
            "iteration_overhead_s": e.iteration_overhead,
            "seq_overhead_s": e.seq_overhead,
            "kv_efficiency": e.kv_efficiency,
            "request_overhead_s": e.request_overhead,
            "frontend_time_s": e.frontend_time,
            "fit_rows": e.fit_rows,
            "loo_median": e.loo.map(|l| l.0),
            "loo_max": e.loo.map(|l| l.1),
        });
    }
    j
}

/// The serving engine the plan's workload declares (`engine = NAME`).
fn engine(p: &gantry_lang::program::Plan) -> Option<&gantry_lang::program::Engine> {
    p.workload.serve.as_ref().and_then(|s| s.engine.as_ref())
}

/// The engine a serving plan's figures include, in words: its terms
/// (docs/COST-MODEL.md §4a) and what its fit recorded, or the ideal
/// engine when the workload declares none.
pub fn engine_text(p: &gantry_lang::program::Plan) -> String {
    let Some(e) = engine(p) else {
        return "ideal (none declared: no host time, the device's kernels)".to_string();
    };
    format!(
        "{}: iteration {:.3} ms, {:.1} us per sequence, decode attention time x{} the device's, {:.3} ms per request before scheduling after {:.3} ms of the front end's one process{}",
        e.name,
        e.iteration_overhead * 1e3,
        e.seq_overhead * 1e6,
        gantry_lang::units::format_number(1.0 / e.kv_efficiency),
        e.request_overhead * 1e3,
        e.frontend_time * 1e3,
        match (e.fit_rows, e.loo) {
            (Some(n), Some((m, x))) => format!(
                " (fitted on {n} serving rows; leave-one-out |error| median {:.1}%, worst {:.1}%)",
                100.0 * m,
                100.0 * x
            ),
            _ => " (not fitted)".to_string(),
        }
    )
}

/// The `gantry.serve/1` document of a serving plan's search (without a
/// rate sweep): the best deployment, the `top` best, the closest cheaper
/// one, the search's counts and the iteration models.
pub fn plan_json(
    p: &gantry_lang::program::Plan,
    sp: &super::planner::ServePlan,
    top: usize,
) -> Value {
    let top = &sp.top[..sp.top.len().min(top.max(1))];
    let mut j = plan_head(p);
    j["objective"] = json!(sp.rank.name());
    j["best"] = json(&sp.best);
    j["top"] = Value::Array(
        top.iter()
            .map(|s| json!({ "deployment": describe(&s.deployment), "devices": s.devices, "goodput_per_s": s.goodput, "objective_value": sp.rank.value(s), "ttft_p99_s": s.ttft.p99, "tpot_p99_s": s.tpot.p99 }))
            .collect(),
    );
    j["cheaper"] = sp.cheaper.as_ref().map_or(Value::Null, |c| {
        json!({ "deployment": describe(&c.deployment), "devices": c.devices, "binding": binding(c) })
    });
    j["search"] = json!({
        "candidates": sp.candidates,
        "simulated": sp.simulated,
        "unstable_by_work": sp.unstable_unsimulated,
        "pruned_by_bound": sp.pruned,
        "pruned_by_prefill_pool": sp.prefill_pruned,
        "not_simulated_by_limit": sp.limited,
        "requests_per_simulation": sp.requests.len(),
    });
    j["iteration_model"] = Value::Array(
        sp.models
            .values()
            .chain(sp.pipelines.values())
            .map(|m| {
                let mut o = json!({ "tp": m.tp, "fixed_s": m.t_fixed, "weights_s": m.t_weights, "per_token_s": m.c_token, "comm_per_token_s": m.c_comm, "per_kv_token_s": m.c_kv, "per_pair_s": m.c_pair, "kv_bytes_per_token": m.kv_bytes_per_token, "kv_capacity_tokens": m.kv_capacity_tokens });
                if m.pp > 1 {
                    o["pp"] = json!(m.pp);
                }
                o
            })
            .collect(),
    );
    j
}

/// One deployment's report as Markdown tables (the figures of [`text`];
/// deterministic, no wall-clock figures).
pub fn markdown(s: &Summary) -> String {
    use std::fmt::Write;
    let d = &s.deployment;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| deployment | devices | KV cache per replica | token budget |\n|---|---:|---:|---:|\n| {} | {} | {:.0} tokens | {} |\n",
        describe(d),
        s.devices,
        s.kv_tokens_per_replica(),
        d.limits.token_budget
    );
    let _ = writeln!(
        t,
        "Load: {}; {} completed, {} dropped.\n",
        s.load_text(),
        s.completed,
        s.dropped
    );
    if s.unstable {
        let _ = writeln!(
            t,
            "**Unstable**: the queue grows; the rate is above what this deployment serves, so no latency is reported."
        );
        return t;
    }
    let _ = writeln!(t, "| latency | P50 | P90 | P99 |\n|---|---:|---:|---:|");
    for (name, p) in latencies(s) {
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} |",
            lat(s, p.p50),
            lat(s, p.p90),
            lat(s, p.p99)
        );
    }
    let _ = writeln!(
        t,
        "\n| SLO | target | at {:.1}% | |\n|---|---:|---:|---|",
        100.0 * s.target_attainment
    );
    for c in &s.slos {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} |",
            c.name,
            ms(c.target),
            lat(s, c.achieved),
            if c.achieved <= c.target {
                "met"
            } else {
                "missed"
            }
        );
    }
    let _ = writeln!(t, "\n| figure | value |\n|---|---|");
    for (_, label, value) in figures(s) {
        let _ = writeln!(t, "| {label} | {value} |");
    }
    t
}

/// [`plan_markdown`]'s tail for a batching window: the batch model and
/// the best deployments by their request latency.
fn plan_markdown_batched(mut t: String, sp: &super::planner::ServePlan, top: usize) -> String {
    use std::fmt::Write;
    let _ = writeln!(
        t,
        "\n### Batch model (docs/COST-MODEL.md §4a)\n\n| fixed | one item | per item | items per batch at most |\n|---:|---:|---:|---:|"
    );
    for m in sp.models.values() {
        let _ = writeln!(
            t,
            "| {:.3} ms | {:.3} ms | {:.3} us | {:.0} |",
            m.t_fixed * 1e3,
            m.t_weights * 1e3,
            m.c_token * 1e6,
            m.kv_capacity_tokens
        );
    }
    let _ = writeln!(
        t,
        "\n### Best deployments ({})\n\n| # | deployment | devices | value | latency P99 |\n|---:|---|---:|---:|---:|",
        sp.rank.name()
    );
    for (i, s) in sp.top.iter().take(top.max(1)).enumerate() {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            describe(&s.deployment),
            s.devices,
            rate(sp.rank.value(s), 4),
            lat(s, s.e2e.p99)
        );
    }
    let _ = writeln!(
        t,
        "\nSearch: {} candidates; {} simulated ({} requests each), {} unstable by their work alone, {} pruned by the goodput bound.",
        sp.candidates,
        sp.simulated,
        sp.requests.len(),
        sp.unstable_unsimulated,
        sp.pruned
    );
    if sp.limited > 0 {
        let _ = writeln!(
            t,
            "\n**Note**: {}.",
            super::planner::limit_note(sp.limited, sp.requests.len() as u64)
        );
    }
    t
}

/// The latency-versus-rate curve as a Markdown table.
pub fn sweep_markdown(rows: &[Summary]) -> String {
    use std::fmt::Write;
    if rows.first().is_some_and(batched) {
        let mut t = String::from(
            "| rate/s | latency P50 | latency P90 | latency P99 | goodput/s | attainment |\n|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in rows {
            if s.unstable {
                let _ = writeln!(
                    t,
                    "| {} | unstable: the queue grows | | | | |",
                    rate(s.rate, 1)
                );
            } else {
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {} | {:.2}% |",
                    rate(s.rate, 1),
                    lat(s, s.e2e.p50),
                    lat(s, s.e2e.p90),
                    lat(s, s.e2e.p99),
                    rate(s.goodput, 1),
                    100.0 * s.attainment
                );
            }
        }
        return t;
    }
    let mut t = String::from(
        "| rate/s | TTFT P50 | TTFT P99 | TPOT P50 | TPOT P99 | goodput/s | attainment |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in rows {
        if s.unstable {
            let _ = writeln!(
                t,
                "| {} | unstable: the queue grows | | | | | |",
                rate(s.rate, 3)
            );
        } else {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {:.2}% |",
                rate(s.rate, 3),
                ms(s.ttft.p50),
                ms(s.ttft.p99),
                ms(s.tpot.p50),
                ms(s.tpot.p99),
                rate(s.goodput, 3),
                100.0 * s.attainment
            );
        }
    }
    t
}

/// A serving plan's result as Markdown: the chosen deployment, the
/// iteration model, the best `top` deployments and the search's counts.
pub fn plan_markdown(
    p: &gantry_lang::program::Plan,
    sp: &super::planner::ServePlan,
    top: usize,
) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "## Serving plan `{}`\n\n`{}` on `{}`; objective: maximize {} under the SLOs.\n",
        p.name,
        p.workload.name,
        p.system.name,
        sp.rank.name()
    );
    let _ = writeln!(t, "Engine: {}.\n", engine_text(p));
    t.push_str(&markdown(&sp.best));
    if let Some(c) = &sp.cheaper {
        let _ = writeln!(
            t,
            "\nCheaper: {} ({} device{}) misses: {}.",
            describe(&c.deployment),
            c.devices,
            if c.devices == 1 { "" } else { "s" },
            binding(c)
        );
    }
    if batched(&sp.best) {
        return plan_markdown_batched(t, sp, top);
    }
    let _ = writeln!(
        t,
        "\n### Iteration model (docs/COST-MODEL.md §4a)\n\n| tp | fixed | per sequence | weights | per token | comm per token | per KV token | per pair | KV cache |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in sp.models.values().chain(sp.pipelines.values()) {
        let _ = writeln!(
            t,
            "| {} | {:.3} ms | {:.2} us | {:.3} ms | {:.2} us | {:.3} us | {:.4} us | {:.3} ns | {:.0} tokens |",
            degrees(m),
            m.t_fixed * 1e3,
            m.c_seq * 1e6,
            m.t_weights * 1e3,
            m.c_token * 1e6,
            m.c_comm * 1e6,
            m.c_kv * 1e6,
            m.c_pair * 1e9,
            m.kv_capacity_tokens
        );
    }
    let unit = match sp.rank {
        super::planner::Rank::PerDollar => "requests/$",
        super::planner::Rank::PerWatt => "req/s/W",
        super::planner::Rank::Goodput => "req/s",
    };
    let _ = writeln!(
        t,
        "\n### Best deployments ({})\n\n| # | deployment | devices | {unit} | TTFT P99 | TPOT P99 |\n|---:|---|---:|---:|---:|---:|",
        sp.rank.name()
    );
    for (i, s) in sp.top.iter().take(top.max(1)).enumerate() {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            i + 1,
            describe(&s.deployment),
            s.devices,
            rate(sp.rank.value(s), 4),
            ms(s.ttft.p99),
            ms(s.tpot.p99)
        );
    }
    let _ = writeln!(
        t,
        "\nSearch: {} candidates; {} simulated ({} requests each), {} unstable by their work alone, {} pruned by the goodput bound, {} by a prefill pool already seen to miss.",
        sp.candidates,
        sp.simulated,
        sp.requests.len(),
        sp.unstable_unsimulated,
        sp.pruned,
        sp.prefill_pruned
    );
    if sp.limited > 0 {
        let _ = writeln!(
            t,
            "\n**Note**: {}.",
            super::planner::limit_note(sp.limited, sp.requests.len() as u64)
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unstable sort gives the figures of a stable one, bit for bit
    /// (the mean sums in sorted order), on values with ties, both zeros
    /// and non-finite entries.
    #[test]
    fn percentiles_match_a_stable_sort() {
        let mut rng = super::super::sample::Rng::new(11);
        let mut v: Vec<f64> = (0..5000)
            .map(|i| match i % 7 {
                0 => 0.0,
                1 => -0.0,
                2 => f64::NAN,
                3 => (rng.next_u64() % 16) as f64 * 0.1,
                _ => rng.unit() * 3.0,
            })
            .collect();
        v.push(f64::INFINITY);
        let got = percentiles(v.clone(), 0.97);
        // The SLO's rank is over every request, an unfinished one never.
        let mut every: Vec<f64> = v
            .iter()
            .map(|x| if x.is_finite() { *x } else { f64::INFINITY })
            .collect();
        every.sort_by(f64::total_cmp);
        assert_eq!(got.at_target.to_bits(), percentile(&every, 0.97).to_bits());
        let mut s = v;
        s.retain(|x| x.is_finite());
        s.sort_by(f64::total_cmp);
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        assert_eq!(got.mean.to_bits(), mean.to_bits());
        for (q, x) in [(0.5, got.p50), (0.9, got.p90), (0.99, got.p99)] {
            assert_eq!(x.to_bits(), percentile(&s, q).to_bits(), "q {q}");
        }
        // Finite values only: the SLO's percentile is the completed ones'.
        let fast = percentiles(s.clone(), 0.97);
        assert_eq!(fast.at_target.to_bits(), percentile(&s, 0.97).to_bits());
    }

    /// Requests that never complete (dropped: their prompt and output do
    /// not fit the cache) count against the SLO: 2 of 100 dropped miss a
    /// 99% target however fast the others are, and with none completed
    /// every figure is infinite (never "met at 0 ms").
    #[test]
    fn unfinished_requests_miss_the_slo() {
        let mut v = vec![0.001; 98];
        v.extend([f64::NAN, f64::NAN]);
        let p = percentiles(v.clone(), 0.99);
        assert_eq!(p.p99, 0.001);
        assert!(p.at_target.is_infinite());
        assert_eq!(percentiles(v, 0.98).at_target, 0.001);
        let none = percentiles(vec![f64::NAN; 5], 0.5);
        assert!(none.p50.is_infinite() && none.at_target.is_infinite());
    }
}
