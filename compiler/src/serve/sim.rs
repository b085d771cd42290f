//! The discrete-event loop of one deployment.
//!
//! Three kinds of event: a request arrives (it joins the least-loaded
//! replica that prefills), an iteration ends (the replica advances its
//! sequences and starts the next iteration at once if it has work), and,
//! with disaggregated pools, a KV transfer ends (the sequence joins the
//! least-loaded decode replica). A replica with a batching window adds a
//! fourth, its wake-up (the window of its oldest request ends), handled
//! as an iteration end with nothing to finish. Arrivals are a sorted
//! array, iteration ends and wake-ups one time per replica, transfers a
//! heap; ties go iteration ends first, then transfers, then arrivals, so
//! a run is a function of its inputs.
//!
//! A closed loop of `C` clients ([`simulate_closed`]) is the same loop
//! with arrival times written as it runs: the first `C` requests arrive
//! at the start, and each completion (or drop) releases the next request
//! at that moment, so the arrivals stay sorted. Latencies are recorded per request; the report's figures
//! are computed from them afterwards (`report.rs`).
//!
//! A request first passes its front end (the API server; one per
//! pipeline of entry replicas), which takes requests one at a time for
//! the engine's `frontend_time` each, then reaches the scheduler the
//! engine's `request_overhead` later: a burst queues at the front end.
//! A run can start with the prefix caches earlier runs of the same
//! requests left in its replicas ([`simulate_cached`], `after`).
//!
//! A pipeline's virtual engines share one host process (vLLM's V0 runs
//! them in one asyncio loop; V1, by our reading, from one engine core).
//! An iteration is then two parts in
//! order: its host part ([`IterModel::host`], the engine's host terms:
//! scheduling this iteration and processing the last one's outputs),
//! which runs only while the pipeline's host is free and keeps it busy,
//! then its device part (the rest of [`IterModel::time`]), which overlaps
//! the other engines' parts (each stage is its own GPUs). An engine with
//! work that finds the host busy (or others already waiting for it) waits
//! in the host's first-come queue; when the host frees (a fifth event,
//! ordered after iteration ends and before transfers), the engine at the
//! head forms its iteration then, with what has arrived by then. The
//! tokens of an iteration are out at the end of its device part. Without
//! a pipeline, or with an engine without host terms, there is no shared
//! host and no engine waits: the test
//! `only_a_pipeline_with_host_terms_shares_its_host` holds such runs,
//! bit for bit, to the same time charged to the device and to `pp = 1`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::kv::PrefixCache;
use super::sample::Request;
use super::scheduler::{Done, Limits, Replica, Role, Seq};
use super::timing::IterModel;

/// One deployment: colocated replicas, or a prefill and a decode pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Deployment {
    /// Replicas running both phases (0 when disaggregated).
    pub colocated: u64,
    pub prefill: u64,
    pub decode: u64,
    pub prefill_model: IterModel,
    pub decode_model: IterModel,
    pub limits: Limits,
    pub kv_block: u64,
    /// KV transfer between pools: seconds per byte and per transfer.
    pub transfer_per_byte: f64,
    pub transfer_latency: f64,
}

impl Deployment {
    pub fn disaggregated(&self) -> bool {
        self.colocated == 0
    }
    pub fn devices(&self) -> u64 {
        if self.disaggregated() {
            self.prefill * self.prefill_model.tp + self.decode * self.decode_model.tp
        } else {
            self.colocated * self.prefill_model.tp
        }
    }
}

/// What one simulation measured, per request and in total.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Seconds from arrival to first token (NaN: none).
    pub ttft: Vec<f64>,
    /// Seconds from arrival to last token (NaN: not completed).
    pub e2e: Vec<f64>,
    pub completed: u64,
    /// Requests whose prompt and output could never fit a replica's cache.
    pub dropped: u64,
    pub tokens_requested: u64,
    pub tokens_generated: u64,
    /// Prompt tokens (a batching window's items) of completed requests.
    pub items_completed: u64,
    pub preemptions: u64,
    pub transfers: u64,
    pub transfer_bytes: f64,
    /// First arrival to last completion, seconds.
    pub makespan: f64,
    /// Busy seconds per pool (colocated: all in `busy_prefill`).
    pub busy_prefill: f64,
    pub busy_decode: f64,
    pub iterations: u64,
    /// Seconds virtual engines holding requests waited for their
    /// pipeline's host (summed over engines; 0 without a shared host).
    pub host_wait: f64,
    pub batched_tokens: u64,
    /// Of `batched_tokens`, those batched by prefill (or colocated)
    /// replicas; the decode pool's are the rest.
    pub batched_prefill: u64,
    /// Requests queued and not admitted, at the middle and at the last arrival.
    pub backlog_mid: u64,
    pub backlog_end: u64,
    /// The run stopped early: more requests waited than `max_backlog`.
    pub aborted: bool,
    /// Little's law over the window of the middle half of arrivals: the
    /// time-average number of requests in the system, the arrival rate in
    /// the window and the mean end-to-end latency of those arrivals, from
    /// when each reached the scheduler (less the engine's admission time).
    pub little_l: f64,
    pub little_lambda: f64,
    pub little_w: f64,
    /// Each request's arrival time as simulated (a closed loop's are
    /// only known once it ran).
    pub arrivals: Vec<f64>,
    /// With prefix caches by prompt (`after`): prompt tokens of fresh
    /// prompts admitted by this run, and of them those found cached.
    pub prefix_looked_up: u64,
    pub prefix_found: u64,
}

/// A transfer in flight, ordered by end time (then issue order).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Transfer {
    at: f64,
    n: u64,
    seq: Seq,
}
impl Eq for Transfer {}
impl PartialOrd for Transfer {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Transfer {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.at.total_cmp(&o.at).then(self.n.cmp(&o.n))
    }
}

fn least_loaded(rs: &[Replica], role: Role) -> Option<usize> {
    rs.iter()
        .enumerate()
        .filter(|(_, r)| r.role == role)
        .min_by_key(|(i, r)| (r.load(), *i))
        .map(|(i, _)| i)
}

struct Clock {
    now: f64,
    in_system: u64,
    window: (f64, f64),
    area: f64,
}

impl Clock {
    /// Moves time to `t`, integrating requests in the system over the window.
    fn advance(&mut self, t: f64) {
        let (a, b) = self.window;
        let lo = self.now.max(a);
        let hi = t.min(b);
        if hi > lo {
            self.area += self.in_system as f64 * (hi - lo);
        }
        self.now = t;
    }
}

/// The host process a pipeline's virtual engines share.
#[derive(Debug, Default)]
struct Host {
    /// When the running host part ends.
    free_at: f64,
    /// Engines (replica indices) waiting for the host, first come first.
    queue: VecDeque<usize>,
}

/// The pipelines' hosts, and which one each replica uses (`None`: the
/// replica's host is its own, never contended).
struct Hosts {
    hosts: Vec<Host>,
    of: Vec<Option<usize>>,
    /// When each replica joined its host's queue (`None`: not queued).
    queued: Vec<Option<f64>>,
    /// Seconds replicas waited in the queues.
    wait: f64,
}

impl Hosts {
    /// One host per pipeline of `pp` colocated virtual engines (replicas
    /// `k pp .. (k + 1) pp`) when the engine has host terms; none else.
    fn new(d: &Deployment, replicas: usize) -> Hosts {
        let m = d.prefill_model;
        let shared = !d.disaggregated()
            && m.pp > 1
            && (m.host_fixed > 0.0 || m.host_seq > 0.0)
            && d.limits.window.is_none();
        let pp = m.pp.max(1) as usize;
        let of: Vec<Option<usize>> = (0..replicas).map(|i| shared.then_some(i / pp)).collect();
        let n = if shared { replicas.div_ceil(pp) } else { 0 };
        Hosts {
            hosts: (0..n)
                .map(|_| Host {
                    free_at: f64::NEG_INFINITY,
                    queue: VecDeque::new(),
                })
                .collect(),
            of,
            queued: vec![None; replicas],
            wait: 0.0,
        }
    }

    /// The earliest host that frees with engines waiting: (host, time).
    fn next(&self) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for (h, x) in self.hosts.iter().enumerate() {
            if !x.queue.is_empty() && best.is_none_or(|(_, b)| x.free_at < b) {
                best = Some((h, x.free_at));
            }
        }
        best
    }

    /// Starts replica `i`'s next iteration at `now` if it is idle: at
    /// once when its host is its own, or free with no engine waiting;
    /// else, if it holds requests, it joins its host's queue.
    fn launch(&mut self, reps: &mut [Replica], i: usize, now: f64) {
        let r = &mut reps[i];
        if r.busy_until.is_some() {
            return;
        }
        let Some(h) = self.of[i] else {
            begin(r, now);
            return;
        };
        if self.queued[i].is_some() {
            return;
        }
        let host = &mut self.hosts[h];
        if host.queue.is_empty() && host.free_at <= now {
            if let Some(held) = begin(r, now) {
                host.free_at = now + held;
            }
        } else if r.has_work() {
            host.queue.push_back(i);
            self.queued[i] = Some(now);
        }
    }

    /// Host `h` is free at `now`: the engines at the head of its queue
    /// form their iterations, until one holds the host again.
    fn serve(&mut self, reps: &mut [Replica], h: usize, now: f64) {
        let host = &mut self.hosts[h];
        while host.free_at <= now
            && let Some(i) = host.queue.pop_front()
        {
            if let Some(since) = self.queued[i].take() {
                self.wait += now - since;
            }
            if let Some(held) = begin(&mut reps[i], now) {
                host.free_at = now + held;
            }
        }
    }
}

/// Forms `r`'s next iteration at `now`, if it has one to run: how long
/// that iteration holds the host (its host part, within its time).
fn begin(r: &mut Replica, now: f64) -> Option<f64> {
    let dt = r.start(now)?;
    r.busy_until = Some(now + dt);
    Some(r.host.min(dt))
}

/// Simulates `reqs` (sorted by arrival) on `d`. Stops early, marking the
/// outcome `aborted`, when more than `max_backlog` requests wait.
pub fn simulate(d: &Deployment, reqs: &[Request], max_backlog: u64) -> Outcome {
    simulate_cached(d, reqs, max_backlog, None, &mut Vec::new())
}

/// Simulates `reqs` (lengths only: arrival times are ignored) sent by
/// `clients` clients in a closed loop: each sends its next request when
/// its previous one completes. No Little's-law window (the number in the
/// system is `clients` by construction).
pub fn simulate_closed(d: &Deployment, reqs: &[Request], clients: u64) -> Outcome {
    simulate_cached(d, reqs, u64::MAX, Some(clients), &mut Vec::new())
}

/// Empty prefix caches by prompt, one per replica of `d` that prefills
/// (a decode pool's replicas receive their prompts' KV, and keep none).
pub fn fresh_caches(d: &Deployment) -> Vec<PrefixCache> {
    let n = if d.disaggregated() {
        d.prefill + d.decode
    } else {
        d.colocated
    };
    vec![PrefixCache::default(); n as usize]
}

/// [`simulate`] (`closed`: `None`) or [`simulate_closed`] on a server
/// whose replicas hold the prefix caches `caches` (as [`fresh_caches`]
/// makes them), which the run updates: a run after earlier ones on the
/// same requests. Everything else starts idle and empty, as a benchmark
/// starts its next run once the last one completed.
pub fn simulate_cached(
    d: &Deployment,
    reqs: &[Request],
    max_backlog: u64,
    closed: Option<u64>,
    caches: &mut Vec<PrefixCache>,
) -> Outcome {
    let closed = closed.map(|c| c.max(1));
    let mut reps = replicas(d);
    if caches.len() == reps.len() {
        for (r, mut c) in reps.iter_mut().zip(caches.drain(..)) {
            if r.role != Role::Decode {
                // This run's lookups only.
                c.looked_up = 0;
                c.found = 0;
                r.cache = Some(c);
            }
        }
    }
    let result = run_on(d, reqs, max_backlog, closed, &mut reps);
    if caches.is_empty() && reps.iter().any(|r| r.cache.is_some()) {
        caches.extend(reps.iter_mut().map(|r| r.cache.take().unwrap_or_default()));
    }
    result
}

fn run_on(
    d: &Deployment,
    reqs: &[Request],
    max_backlog: u64,
    closed: Option<u64>,
    reps: &mut [Replica],
) -> Outcome {
    let mut hosts = Hosts::new(d, reps.len());
    let admit = d.prefill_model.admission;
    // The front ends (API servers): one per pipeline of entry replicas
    // (a pipeline's virtual engines share one server process). Each is
    // busy `frontend` seconds per request (the engine's `frontend_time`:
    // HTTP, tokenisation, the hand-off), one request at a time, so a
    // burst queues there; a request goes to the front end that frees
    // first, and reaches the scheduler `admit` after it leaves it.
    let busy = d.prefill_model.frontend;
    let pp = d.prefill_model.pp.max(1) as usize;
    let entries = reps.iter().filter(|r| r.role != Role::Decode).count();
    let mut fronts = vec![f64::NEG_INFINITY; entries.div_ceil(pp).max(1)];
    let mut admitted = vec![f64::NAN; reqs.len()];
    let n = reqs.len();
    let mut o = Outcome {
        ttft: vec![f64::NAN; n],
        e2e: vec![f64::NAN; n],
        ..Outcome::default()
    };
    // Arrival times, and how many are known (a closed loop releases one
    // per completion).
    let mut arr: Vec<f64> = match closed {
        None => reqs.iter().map(|r| r.arrival).collect(),
        Some(_) => vec![0.0; n],
    };
    let mut released = closed.map_or(n, |c| (c as usize).min(n));
    if n == 0 || reps.is_empty() {
        o.arrivals = arr;
        return o;
    }
    let window = d.limits.window.is_some();
    let entry = if d.disaggregated() {
        Role::Prefill
    } else {
        Role::Both
    };
    // The smallest cache decides what can ever be served.
    let smallest = reps
        .iter()
        .map(|r| r.blocks)
        .min_by_key(|b| b.total)
        .unwrap_or(super::kv::Blocks::new(0.0, 1));
    let fits = |r: &Request| {
        let tokens = if window {
            r.prompt as u64
        } else {
            r.prompt as u64 + r.generate as u64
        };
        smallest.for_tokens(tokens) <= smallest.total
    };
    let t0 = arr[0];
    let (wa, wb) = if closed.is_some() {
        (f64::INFINITY, f64::INFINITY)
    } else {
        (arr[n / 4], arr[(3 * n) / 4])
    };
    let mut clock = Clock {
        now: t0,
        in_system: 0,
        window: (wa, wb),
        area: 0.0,
    };
    let mut transfers: BinaryHeap<Reverse<Transfer>> = BinaryHeap::new();
    let mut next = 0usize;
    let mut done = Vec::new();
    let mut issued = 0u64;
    loop {
        // The earliest event: iteration ends, then hosts freeing, then
        // transfers, then arrivals.
        let mut rep: Option<(usize, f64)> = None;
        for (i, r) in reps.iter().enumerate() {
            if let Some(t) = r.busy_until.or(r.wake_at)
                && rep.is_none_or(|(_, b)| t < b)
            {
                rep = Some((i, t));
            }
        }
        let xfer = transfers.peek().map(|t| t.0.at);
        // The next request leaves the front end that frees first (after
        // the requests before it there, `busy` each) and reaches the
        // scheduler the engine's `request_overhead` later
        // (`IterModel::admission`); its latencies count from the arrival.
        // Without front-end time no front end is ever busy past an
        // arrival (arrivals are sorted), so there is nothing to scan.
        let (front, front_free) = if busy > 0.0 && next < released {
            fronts
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(&b.0)))
                .map_or((0, f64::NEG_INFINITY), |(i, t)| (i, *t))
        } else {
            (0, f64::NEG_INFINITY)
        };
        let leave = (next < released).then(|| arr[next].max(front_free) + busy);
        let arrival = leave.map(|l| l + admit);
        let host = hosts.next();
        let t_rep = rep.map_or(f64::INFINITY, |r| r.1);
        let t_h = host.map_or(f64::INFINITY, |h| h.1);
        let t_x = xfer.unwrap_or(f64::INFINITY);
        let t_a = arrival.unwrap_or(f64::INFINITY);
        let touched = if rep.is_some() && t_rep <= t_h && t_rep <= t_x && t_rep <= t_a {
            let (i, t) = rep.unwrap_or((0, t_rep));
            clock.advance(t);
            done.clear();
            if reps[i].busy_until.take().is_some() {
                reps[i].finish(&mut done);
            } else {
                // A batching window's wake-up: nothing to finish.
                reps[i].wake_at = None;
            }
            for ev in &done {
                match *ev {
                    Done::First(q) => o.ttft[q as usize] = t - arr[q as usize],
                    Done::Complete(q) => {
                        o.e2e[q as usize] = t - arr[q as usize];
                        o.completed += 1;
                        o.tokens_generated += reqs[q as usize].generate as u64;
                        o.items_completed += reqs[q as usize].prompt as u64;
                        clock.in_system -= 1;
                        o.makespan = t - t0;
                        if released < n {
                            arr[released] = t;
                            released += 1;
                        }
                    }
                    Done::Handoff(s) => {
                        let bytes = s.kv as f64 * d.prefill_model.kv_bytes_per_token_model;
                        o.transfers += 1;
                        o.transfer_bytes += bytes;
                        issued += 1;
                        transfers.push(Reverse(Transfer {
                            at: t + d.transfer_latency + bytes * d.transfer_per_byte,
                            n: issued,
                            seq: s,
                        }));
                    }
                }
            }
            i
        } else if let Some((h, t)) = host
            && t <= t_x
            && t <= t_a
        {
            clock.advance(t);
            hosts.serve(reps, h, t);
            continue;
        } else if xfer.is_some() && t_x <= t_a {
            let Some(Reverse(x)) = transfers.pop() else {
                break;
            };
            clock.advance(x.at);
            let Some(i) = least_loaded(reps, Role::Decode) else {
                break;
            };
            let mut s = x.seq;
            s.ready = x.at;
            reps[i].enqueue(s);
            i
        } else if let (Some(r), Some(at)) = (reqs.get(next), arrival) {
            clock.advance(at);
            fronts[front] = leave.unwrap_or(at);
            let q = next as u32;
            admitted[next] = at;
            next += 1;
            if next == n / 2 + 1 || next == n {
                let b: u64 = reps.iter().map(|r| r.waiting.len() as u64).sum();
                if next == n {
                    o.backlog_end = b;
                } else {
                    o.backlog_mid = b;
                }
            }
            o.tokens_requested += r.generate as u64;
            if !fits(r) {
                o.dropped += 1;
                if released < n {
                    arr[released] = at;
                    released += 1;
                }
                continue;
            }
            clock.in_system += 1;
            let Some(i) = least_loaded(reps, entry) else {
                break;
            };
            let mut s = Seq::new(q, r.prompt, r.generate);
            s.key = r.key;
            s.doc = r.doc;
            s.ready = at;
            reps[i].enqueue(s);
            if reps[i].waiting.len() as u64 > max_backlog {
                o.aborted = true;
                break;
            }
            i
        } else {
            break;
        };
        hosts.launch(reps, touched, clock.now);
    }
    // Every block comes back: a replica that holds no request holds no
    // block (its cache's idle blocks are free blocks).
    debug_assert!(
        o.aborted
            || reps
                .iter()
                .all(|r| r.has_work() || r.blocks.free == r.blocks.total),
        "KV blocks leaked"
    );
    tally(&mut o, reps, &arr, &admitted, &clock);
    o.host_wait = hosts.wait;
    o.arrivals = arr;
    o
}

fn replicas(d: &Deployment) -> Vec<Replica> {
    let mut reps: Vec<Replica> = Vec::new();
    if d.disaggregated() {
        for _ in 0..d.prefill {
            reps.push(Replica::new(
                Role::Prefill,
                d.prefill_model,
                d.limits,
                d.kv_block,
            ));
        }
        for _ in 0..d.decode {
            reps.push(Replica::new(
                Role::Decode,
                d.decode_model,
                d.limits,
                d.kv_block,
            ));
        }
    } else {
        for _ in 0..d.colocated {
            reps.push(Replica::new(
                Role::Both,
                d.prefill_model,
                d.limits,
                d.kv_block,
            ));
        }
    }
    reps
}

/// The replicas' counters, and Little's law over the clock's window.
/// `admitted`: when each request reached the scheduler (its front end's
/// `request_overhead`, `IterModel::admission`, after it arrived or after
/// the requests before it): the time-average count of requests in the
/// system counts from admission, so Little's `W` does too.
fn tally(o: &mut Outcome, reps: &[Replica], arrivals: &[f64], admitted: &[f64], clock: &Clock) {
    let (wa, wb) = clock.window;
    for r in reps {
        if let Some(c) = &r.cache {
            o.prefix_looked_up += c.looked_up;
            o.prefix_found += c.found;
        }
        o.preemptions += r.preemptions;
        o.iterations += r.iterations;
        o.batched_tokens += r.batched_tokens;
        match r.role {
            Role::Decode => o.busy_decode += r.busy_time,
            _ => {
                o.busy_prefill += r.busy_time;
                o.batched_prefill += r.batched_tokens;
            }
        }
    }
    let in_window: Vec<f64> = arrivals
        .iter()
        .zip(&o.e2e)
        .zip(admitted)
        .filter(|((a, _), _)| **a >= wa && **a < wb)
        .map(|((a, e), s)| a + e - s)
        .collect();
    if wb > wa && !in_window.is_empty() {
        o.little_l = clock.area / (wb - wa);
        o.little_lambda = in_window.len() as f64 / (wb - wa);
        o.little_w = in_window.iter().sum::<f64>() / in_window.len() as f64;
    }
}
