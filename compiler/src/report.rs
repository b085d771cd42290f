//! Reports of an evaluated design point: text, markdown and the
//! `gantry.plan/2` JSON contract. Only formatting lives here; every number
//! is a field or method of [`crate::cost::Estimate`].

use gantry_lang::program::Phase;
use gantry_lang::units::{Dim, Quantity, format_number};
use serde_json::{Map, Value, json};

use crate::cost::Estimate;
use crate::hardware::{Hardware, Uncertainty, phase_key};
use crate::plan::Evaluation;
use crate::sharded::Form;

/// The band every prediction of a device and phase carries: the
/// leave-one-out errors `gantry calibrate --fit` recorded, in words.
pub fn uncertainty_text(u: Option<&Uncertainty>) -> String {
    match u {
        Some(u) => format!(
            "\u{b1}{:.1}% median, {:.1}% worst leave-one-out over {} rows{}",
            100.0 * u.median,
            100.0 * u.max,
            u.rows,
            match &u.borrowed_from {
                Some(d) => format!(" of {d} (borrowed; the transfer is not measured)"),
                None => String::new(),
            }
        ),
        None => "uncalibrated".to_string(),
    }
}

/// The band of a report: `{"rows", "loo_median", "loo_max"}` (fractions),
/// or `"uncalibrated"`.
pub fn uncertainty_json(u: Option<&Uncertainty>) -> Value {
    match u {
        Some(u) => {
            let mut v = json!({ "rows": u.rows, "loo_median": u.median, "loo_max": u.max });
            if let Some(d) = &u.borrowed_from {
                v["borrowed_from"] = json!(d);
            }
            v
        }
        None => json!("uncalibrated"),
    }
}

/// "uncertainty: ..." for the report of `hw` on a workload of `phase`.
fn uncertainty_line(hw: &Hardware, phase: &Phase) -> String {
    let what = match phase_key(phase) {
        "train" => "training",
        _ => "inference",
    };
    match &hw.uncertainty {
        Some(u) if u.borrowed_from.is_some() => format!(
            "uncertainty: \u{b1}{:.1}% median, {:.1}% worst leave-one-out over {} rows of {} {what}, whose factors {} borrows (the transfer is not measured)",
            100.0 * u.median,
            100.0 * u.max,
            u.rows,
            u.borrowed_from.as_deref().unwrap_or_default(),
            hw.device
        ),
        Some(_) => format!(
            "uncertainty: {} ({} {what})",
            uncertainty_text(hw.uncertainty.as_ref()),
            hw.device
        ),
        None => format!(
            "uncertainty: uncalibrated (no fit of {} {what} to reference runs)",
            hw.device
        ),
    }
}

fn opt(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!(x))
}

/// The version tag of [`json`]'s output; `schemas/gantry.plan.v2.json` is
/// its JSON Schema (docs/SCHEMAS.md). A breaking change (a field renamed,
/// removed or given another unit) bumps the number.
pub const SCHEMA: &str = "gantry.plan/2";

/// The `gantry.plan/2` JSON object: every figure in base units (seconds,
/// bytes, FLOP, FLOP/s, watts, joules, US dollars), named with its unit.
pub fn json(ev: &Evaluation) -> Value {
    let e = &ev.estimate;
    let p = &e.point;
    let t = &e.time;
    let m = &e.memory;
    let mut metrics = Map::new();
    metrics.insert("step_time_s".into(), json!(t.step));
    metrics.insert(
        "tokens_per_s".into(),
        if e.tokens_per_step > 0.0 {
            json!(e.tokens_per_s())
        } else {
            Value::Null
        },
    );
    metrics.insert(
        "tokens_per_s_per_device".into(),
        if e.tokens_per_step > 0.0 {
            json!(e.tokens_per_s() / e.devices.max(1) as f64)
        } else {
            Value::Null
        },
    );
    metrics.insert("samples_per_s".into(), json!(e.samples_per_s()));
    // Base units, like every other figure (FLOP/s, not TFLOP/s).
    metrics.insert(
        "model_flops_per_s_per_device".into(),
        json!(e.model_tflops_per_device() * 1e12),
    );
    metrics.insert(
        "hardware_flops_per_s_per_device".into(),
        json!(e.hardware_tflops_per_device() * 1e12),
    );
    metrics.insert("mfu".into(), json!(e.mfu()));
    metrics.insert("hfu".into(), json!(e.hfu()));
    metrics.insert("memory_per_device_bytes".into(), json!(m.total()));
    metrics.insert("power_w".into(), json!(e.power));
    metrics.insert("energy_per_step_j".into(), json!(e.energy_per_step()));
    metrics.insert(
        "cost_per_million_tokens_usd".into(),
        opt(e.cost_per_million_tokens()),
    );
    metrics.insert(
        "cost_per_million_samples_usd".into(),
        opt(e.cost_per_million_samples()),
    );
    if !matches!(ev.ir.phase, Phase::Train { .. }) {
        metrics.insert("ttft_s".into(), opt(e.ttft));
        metrics.insert("tpot_s".into(), opt(e.tpot));
    }
    let comms: Vec<Value> = e
        .comms
        .iter()
        .map(|c| {
            json!({
                "what": c.what,
                "collective": c.collective.name(),
                "group": c.group,
                "level": c.level.name(),
                "algorithm": c.algorithm,
                "bytes_per_step": c.bytes,
                "time_s": c.time,
                "exposed_s": c.exposed,
            })
        })
        .collect();
    let mut j = json!({
        "schema": SCHEMA,
        "plan": ev.plan,
        "workload": ev.workload,
        "system": ev.system,
        "device": ev.hardware.device,
        "devices": e.devices,
        "parallelism": {
            "dp": p.dp, "tp": p.tp, "pp": p.pp, "cp": p.cp, "ep": p.ep, "zero": p.zero,
            "recompute": p.recompute.name(), "microbatch": p.microbatch,
            "virtual_stages": p.virtual_stages, "sequence_parallel": p.sequence_parallel,
            "batch": p.batch, "shard": p.shard, "stage_layers": e.stage_layers,
            "whole_ops": ev.ir.pinned(p.tp as usize, Form::Whole).iter().map(|t| ev.ir.tensor_name(*t)).collect::<Vec<_>>(),
            "column_ops": ev.ir.pinned(p.tp as usize, Form::Column).iter().map(|t| ev.ir.tensor_name(*t)).collect::<Vec<_>>(),
            "row_ops": ev.ir.pinned(p.tp as usize, Form::Row).iter().map(|t| ev.ir.tensor_name(*t)).collect::<Vec<_>>(),
        },
        "feasible": ev.feasible(),
        "uncertainty": uncertainty_json(ev.hardware.uncertainty.as_ref()),
        "metrics": metrics,
        "breakdown": {
            "time_s": {
                "compute": {
                    "matmul": t.compute.matmul, "attention": t.compute.attention,
                    "elementwise": t.compute.elementwise, "embedding": t.compute.embedding,
                    "layout": t.compute.layout,
                },
                "recompute": t.recompute,
                "tensor_parallel_comm": t.tp_comm,
                "context_parallel_comm": t.cp_comm,
                "all_to_all": t.all_to_all,
                "pipeline_comm": t.pp_comm,
                "pipeline_bubble": t.bubble,
                "data_parallel_exposed": t.dp_exposed,
                "optimizer": t.optimizer,
                "prefill_share": t.prefill,
                "step_overhead": t.overhead,
                "host_embedding_lookups": t.host_lookups,
                "step": t.step,
            },
            "memory_bytes": {
                "weights": m.weights, "gradients": m.gradients, "optimizer_states": m.optimizer,
                "activations": m.activations, "kv_cache": m.kv_cache, "embedding_tables": m.embeddings,
                "working_buffers": m.working, "reserve": m.reserve, "total": m.total(), "capacity": m.capacity,
                "host_embedding_tables": m.host_embeddings,
            },
            "communication": comms,
            "flops_per_step": { "model": e.model_flops, "hardware": e.hardware_flops },
            "calibration": ev.hardware.declared,
        },
    });
    let (group, tables) = crate::plan::table_placement(ev);
    if let Some(t) = crate::placement::summary(&ev.ir, group, &tables) {
        j["breakdown"]["embedding_placement"] = t;
    }
    j
}

/// `x` to `decimals` places, or to three significant figures where those
/// places would print a nonzero figure as zero (a one-wide model's
/// `$0.000` per million samples, `0.0%` MFU).
pub fn fixed(x: f64, decimals: usize) -> String {
    if x != 0.0 && x.is_finite() && x.abs() < 0.5 * 10f64.powi(-(decimals as i32)) {
        format!("{x:.2e}")
    } else {
        format!("{x:.decimals$}")
    }
}

fn q(v: f64, d: Dim) -> String {
    Quantity::new(v, d).to_string()
}

fn pct(x: f64, of: f64) -> String {
    if of > 0.0 {
        format!("{:5.1}%", 100.0 * x / of)
    } else {
        "    -".into()
    }
}

/// The report's status line: `feasible`, or `INFEASIBLE: ` and why (over
/// HBM, each `subject to` the point misses).
fn status_line(ev: &Evaluation) -> String {
    let (e, m) = (&ev.estimate, &ev.estimate.memory);
    if ev.feasible() {
        return "feasible".to_string();
    }
    let mut why: Vec<String> = ev
        .missed
        .iter()
        .map(|c| format!("misses `subject to {c}`"))
        .collect();
    if !e.feasible {
        why.insert(
            0,
            format!(
                "needs {} per device, HBM holds {}",
                q(m.total(), Dim::BYTES),
                q(m.capacity, Dim::BYTES)
            ),
        );
    }
    format!("INFEASIBLE: {}", why.join("; "))
}

/// A readable text report; `markdown` switches to tables.
pub fn text(ev: &Evaluation, markdown: bool) -> String {
    let e: &Estimate = &ev.estimate;
    let p = &e.point;
    let t = &e.time;
    let m = &e.memory;
    let mut s = String::new();
    let h = |s: &mut String, title: &str| {
        if markdown {
            s.push_str(&format!(
                "\n### {title}\n\n| item | value | share |\n|---|---:|---:|\n"
            ));
        } else {
            s.push_str(&format!("\n{title}\n"));
        }
    };
    let row = |s: &mut String, k: &str, v: String, share: String| {
        if markdown {
            s.push_str(&format!("| {k} | {v} | {} |\n", share.trim()));
        } else {
            s.push_str(&format!("  {k:<34} {v:>18}  {share}\n"));
        }
    };
    if markdown {
        s.push_str(&format!(
            "## Plan `{}`: `{}` on `{}`\n\n",
            ev.plan, ev.workload, ev.system
        ));
    } else {
        s.push_str(&format!(
            "plan {}: {} on {} ({} x {})\n",
            ev.plan, ev.workload, ev.system, e.devices, ev.hardware.device
        ));
    }
    s.push_str(&format!(
        "{}design point: dp={} tp={} pp={} cp={} ep={} zero={} recompute={} microbatch={} virtual_stages={} sequence_parallel={}{}\n",
        if markdown { "" } else { "  " },
        p.dp,
        p.tp,
        p.pp,
        p.cp,
        p.ep,
        p.zero,
        p.recompute.name(),
        p.microbatch,
        p.virtual_stages,
        p.sequence_parallel,
        if matches!(ev.ir.phase, Phase::Train { .. }) { String::new() } else { format!(" batch={}", p.batch) }
            + &if p.replicas() > 1 { format!(" shard={} (HSDP: {} replicas)", p.shard, p.replicas()) } else { String::new() },
    ));
    if p.pp > 1 {
        let layers: Vec<String> = e.stage_layers.iter().map(|l| l.to_string()).collect();
        s.push_str(&format!(
            "{}layers per stage: {}\n",
            if markdown { "" } else { "  " },
            layers.join(" ")
        ));
    }
    if ev.hardware.declared.is_empty() {
        s.push_str(&format!(
            "{}note: device {} declares no efficiency factors; figures assume ideal efficiency (optimistic)\n",
            if markdown { "" } else { "  " },
            ev.hardware.device
        ));
    }
    let feas = status_line(ev);
    s.push_str(&format!("{}{feas}\n", if markdown { "" } else { "  " }));
    s.push_str(&format!(
        "{}{}\n",
        if markdown { "" } else { "  " },
        uncertainty_line(&ev.hardware, &ev.ir.phase)
    ));

    h(&mut s, "Metrics");
    row(&mut s, "step time", q(t.step, Dim::TIME), String::new());
    if e.tokens_per_step > 0.0 {
        row(
            &mut s,
            "tokens/s",
            format_number(e.tokens_per_s().round()),
            String::new(),
        );
    }
    row(
        &mut s,
        "samples/s",
        format_number(e.samples_per_s()),
        String::new(),
    );
    row(
        &mut s,
        "model TFLOP/s per device",
        fixed(e.model_tflops_per_device(), 1),
        String::new(),
    );
    row(
        &mut s,
        "hardware TFLOP/s per device",
        fixed(e.hardware_tflops_per_device(), 1),
        String::new(),
    );
    row(
        &mut s,
        "MFU / HFU",
        format!(
            "{}% / {}%",
            fixed(100.0 * e.mfu(), 1),
            fixed(100.0 * e.hfu(), 1)
        ),
        String::new(),
    );
    if let Some(x) = e.ttft {
        row(
            &mut s,
            "time to first token",
            q(x, Dim::TIME),
            String::new(),
        );
    }
    if let Some(x) = e.tpot {
        row(
            &mut s,
            "time per output token",
            q(x, Dim::TIME),
            String::new(),
        );
    }
    row(&mut s, "power", q(e.power, Dim::POWER), String::new());
    row(
        &mut s,
        "energy per step",
        q(e.energy_per_step(), Dim::ENERGY),
        String::new(),
    );
    if let Some(c) = e.cost_per_million_tokens() {
        row(
            &mut s,
            "cost per million tokens",
            format!("${}", fixed(c, 3)),
            String::new(),
        );
    } else if let Some(c) = e.cost_per_million_samples() {
        row(
            &mut s,
            "cost per million samples",
            format!("${}", fixed(c, 3)),
            String::new(),
        );
    }

    h(&mut s, "Step time");
    let st = t.step;
    for (k, v) in [
        ("compute: matmul", t.compute.matmul),
        ("compute: attention", t.compute.attention),
        ("compute: elementwise", t.compute.elementwise),
        ("compute: embedding", t.compute.embedding),
        ("compute: layout", t.compute.layout),
        ("recomputation (forward again)", t.recompute),
        ("tensor/sequence-parallel comms", t.tp_comm),
        ("context-parallel comms", t.cp_comm),
        ("all-to-all", t.all_to_all),
        ("pipeline sends", t.pp_comm),
        ("pipeline bubble", t.bubble),
        ("data-parallel comms (exposed)", t.dp_exposed),
        ("optimizer step", t.optimizer),
        ("prefill share", t.prefill),
        ("fixed step overhead", t.overhead),
        ("embedding lookups from host memory", t.host_lookups),
    ] {
        if v > 0.0 {
            row(&mut s, k, q(v, Dim::TIME), pct(v, st));
        }
    }

    h(&mut s, "Memory per device");
    for (k, v) in [
        ("weights", m.weights),
        ("gradients", m.gradients),
        ("optimizer states", m.optimizer),
        ("activations", m.activations),
        ("KV cache", m.kv_cache),
        ("embedding tables", m.embeddings),
        ("working buffers", m.working),
        ("reserve", m.reserve),
    ] {
        if v > 0.0 {
            row(&mut s, k, q(v, Dim::BYTES), pct(v, m.capacity));
        }
    }
    row(
        &mut s,
        "total",
        q(m.total(), Dim::BYTES),
        pct(m.total(), m.capacity),
    );

    if !e.comms.is_empty() {
        h(&mut s, "Communication per step");
        for c in &e.comms {
            row(
                &mut s,
                &c.what,
                format!("{} in {}", q(c.bytes, Dim::BYTES), q(c.time, Dim::TIME)),
                format!(
                    "{} over {} ({}, {}), exposed {}",
                    c.collective.name(),
                    c.group,
                    c.algorithm,
                    c.level.name(),
                    q(c.exposed, Dim::TIME)
                ),
            );
        }
    }
    let (group, tables) = crate::plan::table_placement(ev);
    if let Some(t) = crate::placement::summary(&ev.ir, group, &tables) {
        h(&mut s, "Embedding tables (the placement priced)");
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        let placement = match t["column_slice"].as_u64() {
            Some(c) => format!(
                "{} (column_slice {c})",
                t["placement"].as_str().unwrap_or("")
            ),
            None => t["placement"].as_str().unwrap_or("").to_string(),
        };
        row(
            &mut s,
            "placement",
            format!(
                "{placement} over {group} {}",
                if group == 1 { "device" } else { "devices" }
            ),
            String::new(),
        );
        row(
            &mut s,
            "shards",
            format!(
                "{} whole, {} column slices, {} row-wise, {} in host memory",
                n("table_wise"),
                n("column_slices"),
                n("row_wise"),
                n("host")
            ),
            String::new(),
        );
        row(
            &mut s,
            "busiest device vs an even spread",
            format!(
                "lookups x{:.3}, all-to-all x{:.3}",
                t["lookup_skew"].as_f64().unwrap_or(1.0),
                t["exchange_skew"].as_f64().unwrap_or(1.0)
            ),
            String::new(),
        );
    }
    s
}

/// A study as a table: one row per system, one column per workload.
pub fn study_text(st: &gantry_lang::program::Study, rows: &[crate::study::Row]) -> String {
    let mut s = format!(
        "study {}: {} systems x {} workloads, objective {} (per workload relative to the best system, weighted)\n",
        st.name,
        rows.len(),
        st.workloads.len(),
        st.objective.1
    );
    let mut order: Vec<&crate::study::Row> = rows.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    for r in order {
        s.push_str(&format!(
            "  {:<44} {:>6} devices  score {:.3}\n",
            r.system, r.devices, r.score
        ));
        // The band of each phase the mix runs on this system, once.
        let mut bands: Vec<String> = Vec::new();
        for c in &r.cells {
            let b = format!("{} {}", c.phase, uncertainty_text(c.uncertainty.as_ref()));
            if !bands.contains(&b) {
                bands.push(b);
            }
        }
        s.push_str(&format!("      uncertainty: {}\n", bands.join("; ")));
        for c in &r.cells {
            match &c.best {
                Ok(e) => s.push_str(&format!(
                    "      {:<34} x{:<4} {} = {:<12} ({:.0}% of best)  [{}]\n",
                    c.workload,
                    format_number(c.weight),
                    st.objective.1,
                    c.value.map_or("-".to_string(), |v| format!("{v:.4e}")),
                    100.0 * c.relative,
                    e.point
                )),
                Err(m) => s.push_str(&format!(
                    "      {:<34} x{:<4} no feasible plan: {m}\n",
                    c.workload,
                    format_number(c.weight)
                )),
            }
        }
    }
    s
}

/// The section of `gantry plan` (text or markdown) on a plan that records
/// a published configuration: [`pick_lines`] under a heading.
pub fn pick_text(p: &crate::validate::Pick, markdown: bool) -> String {
    let head = if markdown {
        "\n### Published configuration\n\n"
    } else {
        "\nPublished configuration\n"
    };
    format!("{head}{}", pick_lines(p, markdown))
}

/// The planner's pick with the plan's pins released next to the published
/// configuration the plan records ([`crate::validate::pick`]): the body of
/// [`pick_text`] and the lines `gantry validate --picks` prints per plan,
/// so both say the same words.
pub fn pick_lines(p: &crate::validate::Pick, markdown: bool) -> String {
    let mut s = String::new();
    let (pre, code) = if markdown { ("- ", "`") } else { ("  ", "") };
    s.push_str(&format!(
        "{pre}published  {code}{}{code}\n",
        p.published.point
    ));
    match &p.why {
        None => s.push_str(&format!(
            "{pre}pick       the published configuration (every pin released)\n"
        )),
        Some(why) => {
            s.push_str(&format!(
                "{pre}pick       {code}{}{code}  ({:+.1}% {}, every pin released)\n",
                p.pick.point,
                p.gain_pct(),
                p.metric
            ));
            s.push_str(&format!("{pre}why        {why}\n"));
        }
    }
    s
}

/// [`pick_text`] as the `published` object of `gantry plan --format json`.
pub fn pick_json(p: &crate::validate::Pick) -> Value {
    json!({
        "point": p.published.point.to_string(),
        "objective_value": p.published.metric(&p.metric),
        "pick": {
            "point": p.pick.point.to_string(),
            "objective_value": p.pick.metric(&p.metric),
            "memory_per_device_bytes": p.pick.memory.total(),
        },
        "same": p.why.is_none(),
        "gain_pct": if p.why.is_none() { 0.0 } else { p.gain_pct() },
        "why": p.why,
        "kinds": p.kinds,
    })
}
