//! Exports to the frameworks people run: a Megatron-LM argument line, a
//! TorchRec sharding plan, and a Chrome trace of one training step.

use serde_json::{Value, json};

use crate::cost::Estimate;
use crate::ir::Ir;
use crate::placement::TablePlacement;
use crate::point::Recompute;

/// Megatron-LM arguments for a training design point.
pub fn megatron(e: &Estimate, ir: &Ir) -> String {
    let p = &e.point;
    let mut a = vec![
        format!("--tensor-model-parallel-size {}", p.tp),
        format!("--pipeline-model-parallel-size {}", p.pp),
        format!("--context-parallel-size {}", p.cp),
        format!("--micro-batch-size {}", p.microbatch),
        format!("--global-batch-size {}", ir.samples_per_step()),
    ];
    if p.virtual_stages > 1 {
        let layers = ir.layers();
        if layers.is_multiple_of(p.pp * p.virtual_stages)
            && e.stage_layers.iter().all(|n| *n == layers / p.pp)
        {
            a.push(format!(
                "--num-layers-per-virtual-pipeline-stage {}",
                layers / (p.pp * p.virtual_stages)
            ));
        } else {
            // Uneven stages: Megatron-LM's virtual stages per rank.
            a.push(format!(
                "--num-virtual-stages-per-pipeline-rank {}",
                p.virtual_stages
            ));
        }
    }
    if p.pp > 1 && e.stage_layers.windows(2).any(|w| w[0] != w[1]) {
        let (first, last) = (e.stage_layers[0], e.stage_layers[e.stage_layers.len() - 1]);
        a.push(format!(
            "--decoder-first-pipeline-num-layers {first} --decoder-last-pipeline-num-layers {last}"
        ));
    }
    if p.sequence_parallel {
        a.push("--sequence-parallel".into());
    }
    match p.recompute {
        Recompute::Full => a.push(
            "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1"
                .into(),
        ),
        Recompute::Selective => a.push("--recompute-granularity selective".into()),
        Recompute::None => {}
    }
    if p.ep > 1 {
        a.push(format!("--expert-model-parallel-size {}", p.ep));
    }
    if p.zero >= 1 {
        a.push("--use-distributed-optimizer".into());
    }
    a.join(" ")
}

/// A TorchRec-style sharding plan for the embedding tables.
pub fn torchrec(tables: &[TablePlacement]) -> Value {
    let plan: serde_json::Map<String, Value> = tables
        .iter()
        .map(|t| {
            (
                t.table.clone(),
                json!({
                    "sharding_type": t.sharding,
                    "compute_kernel": if t.sharding == "host" { "fused_uvm_caching" } else { "fused" },
                    "ranks": t.ranks,
                    "bytes": t.bytes,
                }),
            )
        })
        .collect();
    json!({ "schema": "gantry.torchrec/1", "plan": plan })
}

/// A Chrome trace (open in Perfetto) of one step's pipeline schedule: one
/// track per stage, forward and backward slots per microbatch in 1F1B order.
pub fn trace(e: &Estimate) -> Value {
    let p = &e.point;
    let stages = p.pp.max(1) as usize;
    let m = (e.samples_per_step / (p.dp as f64 * p.microbatch as f64))
        .round()
        .max(1.0) as usize;
    // Split the slot time of the slowest stage into forward and backward
    // (backward about twice the forward, plus recomputation).
    let slot = (e.time.step - e.time.dp_exposed - e.time.optimizer - e.time.overhead)
        / (m as f64 + (stages as f64 - 1.0) / p.virtual_stages as f64);
    let fwd = slot / 3.0;
    let bwd = slot - fwd;
    let us = |s: f64| s * 1e6;
    let mut events = Vec::new();
    for s in 0..stages {
        events.push(json!({ "name": "thread_name", "ph": "M", "pid": 0, "tid": s, "args": { "name": format!("stage {s}") } }));
        // 1F1B: stage s warms up with (stages - s) forwards, then alternates.
        let warm = (stages - s).min(m);
        let mut t = s as f64 * fwd;
        let mut next_f = 0;
        let mut next_b = 0;
        let mut order = Vec::new();
        for _ in 0..warm {
            order.push(('F', next_f));
            next_f += 1;
        }
        while next_b < m {
            order.push(('B', next_b));
            next_b += 1;
            if next_f < m {
                order.push(('F', next_f));
                next_f += 1;
            }
        }
        for (kind, mb) in order {
            let dur = if kind == 'F' { fwd } else { bwd };
            events.push(json!({ "name": format!("{kind}{mb}"), "cat": if kind == 'F' { "forward" } else { "backward" }, "ph": "X", "pid": 0, "tid": s, "ts": us(t), "dur": us(dur) }));
            t += dur;
        }
    }
    json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}
