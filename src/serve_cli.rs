//! `gantry plan` on a plan of a `serve` workload: the serving planner's
//! search (or one `--fix` deployment), its report as text or
//! `gantry.serve/1` JSON, and the latency-versus-rate curve of
//! `--sweep-rate`. A trace's rows are part of the checked program (the
//! checker reads `trace("file.csv")` files as it reads imports), so
//! nothing here reads a file.

use std::process::ExitCode;

use gantry_compiler::point::Pin;
use gantry_compiler::serve::{self, Summary, report};
use gantry_lang::program::Plan;
use serde_json::{Value, json};

/// The JSON contract's name.
pub const SCHEMA: &str = report::SCHEMA;

/// How `gantry plan` reports a serving plan.
pub struct Options<'a> {
    pub file: &'a str,
    pub fix: Option<std::collections::BTreeMap<String, Pin>>,
    pub top: usize,
    pub json: bool,
    /// Markdown tables instead of text (ignored with `json`).
    pub markdown: bool,
    /// Rates (requests per second) for the latency-versus-rate curve.
    pub sweep: Option<Vec<f64>>,
}

/// Parses `--sweep-rate 1,2,4,8` (positive, finite rates).
pub fn parse_rates(s: &str) -> Result<Vec<f64>, String> {
    let v: Result<Vec<f64>, String> = s
        .split(',')
        .map(|x| match x.trim().parse::<f64>() {
            Ok(r) if (gantry_lang::check::MIN_RATE..=gantry_lang::check::MAX_RATE).contains(&r) => {
                Ok(r)
            }
            _ => Err(format!(
                "`{}` is not a rate from 0.000001 to 1e9 (requests per second)",
                x.trim()
            )),
        })
        .collect();
    match v {
        Ok(v) if v.is_empty() || v.len() > 64 => Err("give 1 to 64 rates".into()),
        other => other,
    }
}

fn head(p: &Plan) -> Value {
    report::plan_head(p)
}

fn sweep_rows(p: &Plan, best: &Summary, rates: &[f64]) -> Vec<Summary> {
    let Some(s) = p.workload.serve.as_deref() else {
        return Vec::new();
    };
    rates
        .iter()
        .map(|r| serve::run(&best.deployment, &serve::requests(s, Some(*r)), s))
        .collect()
}

fn sweep_text(rows: &[Summary]) -> String {
    if rows
        .first()
        .is_some_and(|s| s.deployment.limits.window.is_some())
    {
        // A batching window: the request latency, in microseconds.
        let mut t = String::from(
            "\nLatency against rate (the deployment above)\n  rate/s      latency P50  latency P90  latency P99  goodput/s     attainment\n",
        );
        for s in rows {
            if s.unstable {
                t.push_str(&format!(
                    "  {:<11} unstable: the queue grows\n",
                    report::rate(s.rate, 1)
                ));
            } else {
                t.push_str(&format!(
                    "  {:<11} {:<12} {:<12} {:<12} {:<13} {:.2}%\n",
                    report::rate(s.rate, 1),
                    format!("{:.1} us", s.e2e.p50 * 1e6),
                    format!("{:.1} us", s.e2e.p90 * 1e6),
                    format!("{:.1} us", s.e2e.p99 * 1e6),
                    report::rate(s.goodput, 1),
                    100.0 * s.attainment
                ));
            }
        }
        return t;
    }
    let mut t = String::from(
        "\nLatency against rate (the deployment above)\n  rate/s    TTFT P50   TTFT P99   TPOT P50   TPOT P99   goodput/s  attainment\n",
    );
    for s in rows {
        if s.unstable {
            t.push_str(&format!(
                "  {:<9} unstable: the queue grows\n",
                report::rate(s.rate, 3)
            ));
        } else {
            t.push_str(&format!(
                "  {:<9} {:<10} {:<10} {:<10} {:<10} {:<10} {:.2}%\n",
                report::rate(s.rate, 3),
                report::ms(s.ttft.p50),
                report::ms(s.ttft.p99),
                report::ms(s.tpot.p50),
                report::ms(s.tpot.p99),
                report::rate(s.goodput, 3),
                100.0 * s.attainment
            ));
        }
    }
    t
}

fn sweep_json(rows: &[Summary]) -> Value {
    Value::Array(
        rows.iter()
            .map(|s| {
                json!({
                    "rate_per_s": s.rate,
                    "unstable": s.unstable,
                    "ttft_p50_s": s.ttft.p50, "ttft_p99_s": s.ttft.p99,
                    "tpot_p50_s": s.tpot.p50, "tpot_p99_s": s.tpot.p99,
                    "goodput_per_s": s.goodput, "attainment": s.attainment,
                })
            })
            .collect(),
    )
}

/// `gantry plan` on a serving plan.
pub fn serve_cmd(p: &Plan, o: &Options) -> ExitCode {
    // A plan that pins every knob and searches none is one deployment
    // (a serving reference row): reported as `--fix` reports it, the SLOs
    // checked but not required, as `gantry validate` predicts it.
    let pinned = (o.fix.is_none() && p.search.is_empty())
        .then(|| serve::planner::plan_pins(p))
        .and_then(Result::ok);
    if let Some(pins) = o.fix.as_ref().or(pinned.as_ref()) {
        let label = if o.fix.is_some() {
            "--fix"
        } else {
            "every knob pinned"
        };
        return match serve::planner::fixed(p, pins, None) {
            Ok(s) => {
                let rows = o.sweep.as_ref().map(|r| sweep_rows(p, &s, r));
                if o.json {
                    let mut j = head(p);
                    j["best"] = report::json(&s);
                    if let Some(r) = &rows {
                        j["sweep"] = sweep_json(r);
                    }
                    outln!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
                } else if o.markdown {
                    outln!(
                        "## Serving plan `{}` ({label})\n\n`{}` on `{}`.\n\nEngine: {}.\n",
                        p.name,
                        p.workload.name,
                        p.system.name,
                        report::engine_text(p)
                    );
                    out!("{}", report::markdown(&s));
                    if let Some(r) = &rows {
                        out!(
                            "\n### Latency against rate (the deployment above)\n\n{}",
                            report::sweep_markdown(r)
                        );
                    }
                } else {
                    outln!(
                        "Serving plan {} for {} on {} ({label})",
                        p.name,
                        p.workload.name,
                        p.system.name
                    );
                    outln!("Engine      {}", report::engine_text(p));
                    out!("{}", report::text(&s));
                    if let Some(r) = &rows {
                        out!("{}", sweep_text(r));
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => crate::pin_error(&e),
        };
    }
    let sp = match serve::plan(p, None) {
        Ok(sp) => sp,
        Err(e) => return crate::pin_error(&e),
    };
    let rows = o.sweep.as_ref().map(|r| sweep_rows(p, &sp.best, r));
    let top = &sp.top[..sp.top.len().min(o.top.max(1))];
    if o.json {
        let mut j = report::plan_json(p, &sp, o.top);
        if let Some(r) = &rows {
            j["sweep"] = sweep_json(r);
        }
        outln!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if o.markdown {
        out!("{}", report::plan_markdown(p, &sp, o.top));
        if let Some(r) = &rows {
            out!(
                "\n### Latency against rate (the deployment above)\n\n{}",
                report::sweep_markdown(r)
            );
        }
        return ExitCode::SUCCESS;
    }
    outln!(
        "Serving plan {} for {} on {}",
        p.name,
        p.workload.name,
        p.system.name
    );
    outln!("Objective   maximize {} under the SLOs", sp.rank.name());
    out!("{}", report::text(&sp.best));
    if let Some(c) = &sp.cheaper {
        outln!(
            "Cheaper     {} ({} device{}) misses: {}",
            report::describe(&c.deployment),
            c.devices,
            if c.devices == 1 { "" } else { "s" },
            report::binding(c)
        );
    }
    outln!("\nIteration model (docs/COST-MODEL.md §4a)");
    // The engine's terms are inside the figures below.
    outln!("  engine {}", report::engine_text(p));
    let batched = sp.best.deployment.limits.window.is_some();
    for m in sp.models.values().chain(sp.pipelines.values()) {
        if batched {
            outln!(
                "  one device: fixed {:.3} ms, one item {:.3} ms, {:.3} us per item at the largest batch; at most {:.0} items per batch",
                m.t_fixed * 1e3,
                m.t_weights * 1e3,
                m.c_token * 1e6,
                m.kv_capacity_tokens
            );
            continue;
        }
        outln!(
            "  tp{:<3} fixed {:.3} ms, weights {:.3} ms, {:.2} us/token, {:.3} us/token comm, {:.4} us/KV token, {:.3} ns/pair; KV cache {:.0} tokens",
            report::degrees(m),
            m.t_fixed * 1e3,
            m.t_weights * 1e3,
            m.c_token * 1e6,
            m.c_comm * 1e6,
            m.c_kv * 1e6,
            m.c_pair * 1e9,
            m.kv_capacity_tokens
        );
    }
    outln!("\nBest deployments ({})", sp.rank.name());
    for (i, s) in top.iter().enumerate() {
        if batched {
            outln!(
                "  {}. {}: {} devices, {} {}, latency P99 {:.3} ms",
                i + 1,
                report::describe(&s.deployment),
                s.devices,
                report::rate(sp.rank.value(s), 4),
                match sp.rank {
                    serve::planner::Rank::PerDollar => "requests/$",
                    serve::planner::Rank::PerWatt => "req/s/W",
                    serve::planner::Rank::Goodput => "req/s",
                },
                s.e2e.p99 * 1e3
            );
            continue;
        }
        outln!(
            "  {}. {}: {} devices, {} {}, TTFT P99 {}, TPOT P99 {}",
            i + 1,
            report::describe(&s.deployment),
            s.devices,
            report::rate(sp.rank.value(s), 4),
            match sp.rank {
                serve::planner::Rank::PerDollar => "requests/$",
                serve::planner::Rank::PerWatt => "req/s/W",
                serve::planner::Rank::Goodput => "req/s",
            },
            report::ms(s.ttft.p99),
            report::ms(s.tpot.p99)
        );
    }
    outln!(
        "\nSearch      {} candidates; {} simulated ({} requests each), {} unstable by their work alone, {} pruned by the goodput bound, {} by a prefill pool already seen to miss",
        sp.candidates,
        sp.simulated,
        sp.requests.len(),
        sp.unstable_unsimulated,
        sp.pruned,
        sp.prefill_pruned
    );
    if sp.limited > 0 {
        outln!(
            "Note        {}",
            serve::planner::limit_note(sp.limited, sp.requests.len() as u64)
        );
    }
    if let Some(r) = &rows {
        out!("{}", sweep_text(r));
    }
    ExitCode::SUCCESS
}
