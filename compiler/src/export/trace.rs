//! A Chrome trace (Perfetto) of the step the cost model priced.
//!
//! Training: one track per pipeline stage running the schedule the cost
//! model prices, `m` microbatches in `m + (pp - 1) / v` slots of the
//! slowest stage ([`Estimate::slot`], forward [`Estimate::slot_forward`]):
//! 1F1B (warm-up `pp - s - 1` forwards) or Megatron's interleaved order
//! with `v` chunks per stage (warm-up `2 (pp - s - 1) + (v - 1) pp`), each
//! op starting when its stage is free and its input has arrived. Then the
//! data-parallel reduction that is not hidden, the optimizer step, and the
//! rest of the step (embedding all-to-all, host lookups, fixed overhead),
//! each on its own track. Inference: one forward per stage, the sends
//! between them, the prefill share and the overhead; no backward.
//!
//! Times are integer nanoseconds: every boundary is the exact time rounded
//! once, so slices that touch never overlap, and the trace ends at the
//! priced step time (within 1 ns). `ts` and `dur` are written in
//! microseconds (the format's unit), nudged up by at most one ulp so that
//! multiplying by 1000 and truncating (Perfetto's import) or rounding
//! gives back the nanosecond integer.

use gantry_lang::program::Phase;
use serde_json::{Value, json};

use crate::cost::Estimate;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    F,
    B,
}

/// One op of a stage: pass, model chunk, microbatch.
type Slot = (Pass, usize, usize);

/// The order one stage runs its ops in (Megatron-LM's schedules).
fn stage_order(stages: usize, s: usize, v: usize, m: usize) -> Vec<Slot> {
    let total = m * v;
    let warm = if v == 1 {
        (stages - s - 1).min(m)
    } else {
        ((stages - s - 1) * 2 + (v - 1) * stages).min(total)
    };
    let group = stages * v;
    // The k-th forward or backward of this stage: its chunk and microbatch.
    let at = |k: usize, pass: Pass| {
        let c = (k % group) / stages;
        let chunk = if pass == Pass::F { c } else { v - 1 - c };
        (pass, chunk, (k / group) * stages + k % stages)
    };
    let mut out = Vec::with_capacity(2 * total);
    out.extend((0..warm).map(|k| at(k, Pass::F)));
    for k in 0..total - warm {
        out.push(at(warm + k, Pass::F));
        out.push(at(k, Pass::B));
    }
    out.extend((total - warm..total).map(|k| at(k, Pass::B)));
    out
}

/// One slice on a track, in seconds.
struct Slice {
    tid: usize,
    name: String,
    cat: &'static str,
    start: f64,
    end: f64,
}

/// Runs every stage's order with forward and backward chunk times `f`
/// and `b`: an op starts when its stage is free and its input is ready.
/// `None` if the orders deadlock (a bug).
fn simulate(stages: usize, v: usize, m: usize, f: f64, b: f64) -> Option<Vec<Slice>> {
    let orders: Vec<Vec<Slot>> = (0..stages).map(|s| stage_order(stages, s, v, m)).collect();
    // done[pass][stage][chunk][microbatch] = end time.
    let mut done = vec![vec![vec![vec![None::<f64>; m]; v]; stages]; 2];
    let mut next = vec![0usize; stages];
    let mut free = vec![0.0f64; stages];
    let mut out = Vec::with_capacity(2 * stages * v * m);
    let total: usize = orders.iter().map(Vec::len).sum();
    while out.len() < total {
        let before = out.len();
        for s in 0..stages {
            while let Some(&(pass, c, mb)) = orders[s].get(next[s]) {
                let dep = match pass {
                    Pass::F if s > 0 => done[0][s - 1][c][mb],
                    Pass::F if c > 0 => done[0][stages - 1][c - 1][mb],
                    Pass::F => Some(0.0),
                    Pass::B if s + 1 < stages => done[1][s + 1][c][mb],
                    Pass::B if c + 1 < v => done[1][0][c + 1][mb],
                    Pass::B => done[0][s][c][mb],
                };
                let Some(ready) = dep else { break };
                let start = free[s].max(ready);
                let end = start + if pass == Pass::F { f } else { b };
                done[usize::from(pass == Pass::B)][s][c][mb] = Some(end);
                free[s] = end;
                next[s] += 1;
                let chunk = if v > 1 {
                    format!(".{c}")
                } else {
                    String::new()
                };
                out.push(Slice {
                    tid: s,
                    name: format!("{}{mb}{chunk}", if pass == Pass::F { "F" } else { "B" }),
                    cat: if pass == Pass::F {
                        "forward"
                    } else {
                        "backward"
                    },
                    start,
                    end,
                });
            }
        }
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

/// Microseconds for `ns`, such that `trunc(us * 1000) == ns` in f64.
fn us(ns: i64) -> f64 {
    let mut v = ns as f64 / 1000.0;
    for _ in 0..4 {
        if (v * 1000.0).trunc() as i64 >= ns {
            break;
        }
        v = f64::from_bits(v.to_bits() + 1);
    }
    v
}

fn ns(s: f64) -> i64 {
    (s * 1e9).round() as i64
}

/// Whether a trace of `e` can be drawn, without drawing it (what the
/// search asks of every point under `target "trace"`): `C021` when the
/// priced step is shorter than the trace's resolution of 1 ns.
pub fn drawable(e: &Estimate) -> Result<(), super::ExportError> {
    if ns(e.time.step) < 1 {
        return Err(super::refuse(
            "trace",
            format!(
                "the priced step ({:.3e} s) is shorter than the trace's resolution of 1 ns (Perfetto reads times as whole nanoseconds), so the trace would hold no slice",
                e.time.step
            ),
            "trace a workload whose step takes at least a nanosecond (a larger batch or model)",
        ));
    }
    Ok(())
}

/// The trace of estimate `e` (phase from `phase`), or `C021` when the
/// priced step is shorter than the trace's resolution of 1 ns: every
/// slice would round to nothing (a 0.3 ns step wrote an empty trace).
pub fn trace(e: &Estimate, phase: &Phase) -> Result<Value, super::ExportError> {
    drawable(e)?;
    let stages = e.point.pp.max(1) as usize;
    let (mut slices, t) = if matches!(phase, Phase::Train { .. }) {
        train_slices(e, stages)
    } else {
        infer_slices(e, stages)
    };
    let t0 = tail(e, stages, t, &mut slices);
    debug_assert!((t0 - e.time.step).abs() <= 1e-9 * e.time.step.max(1.0));
    let mut names: Vec<String> = (0..stages).map(|s| format!("stage {s}")).collect();
    names.extend(
        ["data-parallel communication", "optimizer", "step overhead"]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut events = vec![
        json!({ "name": "process_name", "ph": "M", "pid": 0, "tid": 0, "args": { "name": format!("gantry: {}", e.point) } }),
    ];
    for (tid, n) in names.iter().enumerate() {
        events.push(json!({ "name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": { "name": n } }));
        events.push(json!({ "name": "thread_sort_index", "ph": "M", "pid": 0, "tid": tid, "args": { "sort_index": tid } }));
    }
    for s in slices {
        let (a, b) = (ns(s.start), ns(s.end));
        if b <= a {
            continue;
        }
        events.push(json!({ "name": s.name, "cat": s.cat, "ph": "X", "pid": 0, "tid": s.tid, "ts": us(a), "dur": us(b - a) }));
    }
    Ok(
        json!({ "traceEvents": events, "displayTimeUnit": "ms", "otherData": { "step_time_ns": ns(e.time.step) } }),
    )
}

/// The pipeline of one training step; the time it ends.
fn train_slices(e: &Estimate, stages: usize) -> (Vec<Slice>, f64) {
    let p = &e.point;
    let v = p.virtual_stages.max(1) as usize;
    let v = if stages > 1 { v } else { 1 };
    let m = (e.samples_per_step / (p.dp as f64 * p.microbatch as f64))
        .round()
        .max(1.0) as usize;
    let f = e.slot_forward / v as f64;
    let b = (e.slot - e.slot_forward) / v as f64;
    let slices = simulate(stages, v, m, f, b).unwrap_or_default();
    let priced = (m as f64 + (stages as f64 - 1.0) / v as f64) * e.slot;
    let end = slices.iter().map(|s| s.end).fold(0.0, f64::max);
    (slices, end.max(priced))
}

/// One inference pass: each stage's forward and the sends between them.
fn infer_slices(e: &Estimate, stages: usize) -> (Vec<Slice>, f64) {
    let t = &e.time;
    let send = if stages > 1 {
        t.pp_comm / (stages as f64 - 1.0)
    } else {
        0.0
    };
    let fwd = ((t.step - t.pp_comm - t.prefill - t.overhead) / stages as f64).max(0.0);
    let mut out = Vec::new();
    let mut at = 0.0;
    for s in 0..stages {
        if s > 0 && send > 0.0 {
            out.push(Slice {
                tid: s,
                name: "recv".into(),
                cat: "pipeline",
                start: at,
                end: at + send,
            });
            at += send;
        }
        out.push(Slice {
            tid: s,
            name: "forward".into(),
            cat: "forward",
            start: at,
            end: at + fwd,
        });
        at += fwd;
    }
    if t.prefill > 0.0 {
        out.push(Slice {
            tid: stages - 1,
            name: "prefill share".into(),
            cat: "forward",
            start: at,
            end: at + t.prefill,
        });
        at += t.prefill;
    }
    (out, at)
}

/// The rest of the step after `at`: exposed data-parallel communication,
/// optimizer, then the step's other parts on the overhead track. Returns
/// the step's end.
fn tail(e: &Estimate, stages: usize, at: f64, out: &mut Vec<Slice>) -> f64 {
    let t = &e.time;
    let mut at = at;
    let mut push = |tid: usize, name: &str, cat: &'static str, d: f64, at: &mut f64| {
        if d > 0.0 {
            out.push(Slice {
                tid,
                name: name.into(),
                cat,
                start: *at,
                end: *at + d,
            });
            *at += d;
        }
    };
    push(
        stages,
        "gradient reduction (exposed)",
        "communication",
        t.dp_exposed,
        &mut at,
    );
    push(
        stages + 1,
        "optimizer step",
        "optimizer",
        t.optimizer,
        &mut at,
    );
    // What remains of the priced step: embedding all-to-all and host
    // lookups (training), the fixed overhead.
    let overhead = if e.slot > 0.0 {
        t.step - at
    } else {
        t.overhead
    };
    push(
        stages + 2,
        "embedding all-to-all, host lookups, overhead",
        "overhead",
        overhead,
        &mut at,
    );
    at
}

#[cfg(test)]
mod tests {
    use super::{Pass, simulate, stage_order, us};

    /// The simulated schedule ends where the cost model's formula does,
    /// `(m v + pp - 1)` chunk slots, for 1F1B and interleaved schedules.
    #[test]
    fn schedule_length_is_the_priced_one() {
        for (stages, v, m) in [
            (1, 1, 5),
            (4, 1, 8),
            (4, 1, 2),
            (8, 1, 64),
            (4, 2, 8),
            (4, 3, 12),
            (8, 4, 16),
            (3, 2, 6),
        ] {
            let (f, b) = (1.0, 2.0);
            let s = simulate(stages, v, m, f, b).expect("no deadlock");
            assert_eq!(s.len(), 2 * stages * v * m);
            let end = s.iter().map(|x| x.end).fold(0.0, f64::max);
            let priced = (m * v + stages - 1) as f64 * (f + b);
            assert!(
                (end - priced).abs() < 1e-9,
                "pp={stages} v={v} m={m}: {end} vs {priced}"
            );
        }
    }

    /// 1F1B: stage `s` warms up with `pp - s - 1` forwards, so the stages
    /// start their first backward at different times, the last stage
    /// first, and each backward waits for the next stage's.
    #[test]
    fn one_f_one_b_backwards_start_in_stage_order() {
        let order = stage_order(4, 0, 1, 8);
        assert_eq!(
            order[..4].iter().map(|o| o.0).collect::<Vec<_>>(),
            [Pass::F; 4]
        );
        assert_eq!(order[4].0, Pass::B);
        let s = simulate(4, 1, 8, 1.0, 2.0).expect("schedule");
        let first_b = |st: usize| {
            s.iter()
                .filter(|x| x.tid == st && x.name == "B0")
                .map(|x| x.start)
                .next()
                .expect("B0")
        };
        for st in 0..3 {
            assert!(first_b(st) >= first_b(st + 1) + 2.0, "stage {st}");
        }
    }

    /// Interleaved: stage 0 runs chunk 0 of microbatches 0..pp, then
    /// chunk 1, as Megatron-LM orders it.
    #[test]
    fn interleaved_order_alternates_chunks() {
        let names: Vec<_> = stage_order(2, 0, 2, 4).into_iter().take(4).collect();
        assert_eq!(
            names,
            [
                (Pass::F, 0, 0),
                (Pass::F, 0, 1),
                (Pass::F, 1, 0),
                (Pass::F, 1, 1)
            ]
        );
    }

    #[test]
    fn microseconds_give_back_the_nanoseconds() {
        for ns in [
            0i64,
            1,
            999,
            1_234_567,
            11_490_000_001,
            19_484_566_381,
            123_456_789_123,
        ] {
            let v = us(ns);
            assert_eq!((v * 1000.0).trunc() as i64, ns);
            assert_eq!((v * 1000.0).round() as i64, ns);
        }
    }
}
