//! A study's result in the forms people use: the `gantry.study/1` JSON
//! document (schemas/gantry.study.v1.json, docs/SCHEMAS.md), CSV, and the
//! weighted study as Markdown. Text stays in `report::study_text` and
//! `fleet::report`.
//!
//! A file may declare several studies, so the document is one object with
//! a `studies` array; each entry is a weighted study (`kind: "weighted"`,
//! one row per system with a cell per workload and the per-workload
//! Pareto fronts) or a fleet study (`kind: "fleet"`, the object of
//! [`crate::fleet::doc::json`]). Every figure is a field the text report
//! prints, in base units, so the forms cannot disagree.

use serde_json::{Value, json};

use gantry_lang::program::{Goal, Study};

use crate::fleet::{self, Answer, front::Fronts};
use crate::pareto::{Sense, front};
use crate::study::Row;

/// The version tag of the document.
pub const SCHEMA: &str = "gantry.study/1";

/// What one study produced.
pub enum Outcome<'a> {
    Weighted(&'a [Row]),
    Fleet(&'a Answer, &'a Fronts),
}

fn num(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

fn point_json(p: &crate::point::DesignPoint) -> Value {
    json!({
        "dp": p.dp, "tp": p.tp, "pp": p.pp, "cp": p.cp, "ep": p.ep, "zero": p.zero,
        "recompute": p.recompute.name(), "microbatch": p.microbatch,
        "virtual_stages": p.virtual_stages, "sequence_parallel": p.sequence_parallel,
        "batch": p.batch,
    })
}

/// The figures a weighted cell's front is taken on: (price, throughput,
/// power), price left out when any feasible cell lacks one.
fn cell_scores(rows: &[Row], j: usize) -> (Vec<Vec<f64>>, Vec<Sense>, Vec<&'static str>) {
    let priced = rows
        .iter()
        .filter_map(|r| r.cells.get(j)?.best.as_ref().ok())
        .all(|e| e.price_per_s.is_some());
    let pts = rows
        .iter()
        .map(|r| match r.cells.get(j).map(|c| &c.best) {
            Some(Ok(e)) => {
                let mut v = vec![e.metric("throughput").unwrap_or(f64::NAN), e.power];
                if priced {
                    v.insert(0, e.price_per_s.unwrap_or(f64::NAN));
                }
                v
            }
            _ => vec![f64::NAN; if priced { 3 } else { 2 }],
        })
        .collect();
    if priced {
        (
            pts,
            vec![Sense::Minimize, Sense::Maximize, Sense::Minimize],
            vec!["price_usd_per_s", "throughput_per_s", "power_w"],
        )
    } else {
        (
            pts,
            vec![Sense::Maximize, Sense::Minimize],
            vec!["throughput_per_s", "power_w"],
        )
    }
}

/// Per workload of a weighted study: the objectives and the indices of
/// the systems on its front.
pub fn weighted_fronts(rows: &[Row]) -> Vec<(Vec<&'static str>, Vec<usize>)> {
    let n = rows.first().map_or(0, |r| r.cells.len());
    (0..n)
        .map(|j| {
            let (pts, senses, names) = cell_scores(rows, j);
            (names, front(&pts, &senses))
        })
        .collect()
}

fn weighted_json(st: &Study, rows: &[Row]) -> Value {
    let rows_json: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let cells: Vec<Value> = r
                .cells
                .iter()
                .map(|c| {
                    let e = c.best.as_ref().ok();
                    json!({
                        "workload": c.workload,
                        "weight": c.weight,
                        "phase": c.phase,
                        "feasible": e.is_some(),
                        "reason": c.best.as_ref().err(),
                        "objective_value": c.value.map_or(Value::Null, num),
                        "relative": c.relative,
                        "uncertainty": crate::report::uncertainty_json(c.uncertainty.as_ref()),
                        "devices": e.map(|e| e.devices),
                        "parallelism": e.map_or(Value::Null, |e| point_json(&e.point)),
                        "throughput_per_s": e.and_then(|e| e.metric("throughput")).map_or(Value::Null, num),
                        "power_w": e.map_or(Value::Null, |e| num(e.power)),
                        "price_usd_per_s": e.and_then(|e| e.price_per_s).map_or(Value::Null, num),
                    })
                })
                .collect();
            json!({
                "system_index": i,
                "system": r.system,
                "devices": r.devices,
                "score": r.score,
                "cells": cells,
            })
        })
        .collect();
    let fronts: Vec<Value> = weighted_fronts(rows)
        .into_iter()
        .zip(&st.workloads)
        .map(|((objectives, systems), (w, _))| {
            json!({ "workload": w.name, "objectives": objectives, "systems": systems })
        })
        .collect();
    json!({
        "objective": {
            "goal": match st.objective.0 { Goal::Maximize => "maximize", Goal::Minimize => "minimize" },
            "metric": st.objective.1,
        },
        "rows": rows_json,
        "pareto": fronts,
    })
}

/// One study's entry of the document.
pub fn study_json(st: &Study, out: &Outcome) -> Value {
    let systems: Vec<Value> = st
        .systems
        .iter()
        .map(|s| json!({ "name": s.name, "devices": s.devices() }))
        .collect();
    let (kind, body) = match out {
        Outcome::Weighted(rows) => ("weighted", weighted_json(st, rows)),
        Outcome::Fleet(a, f) => match &st.site {
            Some(site) => ("fleet", fleet::doc::json(a, &st.demand, site, f)),
            None => ("fleet", Value::Null),
        },
    };
    let mut v = json!({ "name": st.name, "kind": kind, "systems": systems });
    v[kind] = body;
    v
}

/// The whole document.
pub fn json(studies: &[(&Study, Outcome)]) -> Value {
    json!({
        "schema": SCHEMA,
        "studies": studies.iter().map(|(s, o)| study_json(s, o)).collect::<Vec<_>>(),
    })
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One CSV line of `cells`, quoted as needed.
pub fn csv_line(cells: &[String]) -> String {
    line(cells)
}

fn line(cells: &[String]) -> String {
    let mut s = cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(",");
    s.push('\n');
    s
}

/// The CSV header of weighted studies.
const WEIGHTED_HEADER: &[&str] = &[
    "study",
    "system",
    "devices",
    "score",
    "workload",
    "weight",
    "feasible",
    "objective_value",
    "relative",
    "plan_dp",
    "plan_tp",
    "plan_pp",
    "throughput_per_s",
    "power_w",
    "price_usd_per_s",
];

fn weighted_rows(st: &Study, rows: &[Row]) -> Vec<Vec<String>> {
    let opt = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    let mut out = Vec::new();
    for r in rows {
        for c in &r.cells {
            let e = c.best.as_ref().ok();
            out.push(vec![
                st.name.clone(),
                r.system.clone(),
                r.devices.to_string(),
                r.score.to_string(),
                c.workload.clone(),
                c.weight.to_string(),
                e.is_some().to_string(),
                opt(c.value),
                c.relative.to_string(),
                e.map_or(String::new(), |e| e.point.dp.to_string()),
                e.map_or(String::new(), |e| e.point.tp.to_string()),
                e.map_or(String::new(), |e| e.point.pp.to_string()),
                opt(e.and_then(|e| e.metric("throughput"))),
                opt(e.map(|e| e.power)),
                opt(e.and_then(|e| e.price_per_s)),
            ]);
        }
    }
    out
}

/// CSV: fleet studies one row per (fleet kind, workload pool), weighted
/// studies one row per (system, workload). A file with both kinds gives
/// two tables, the fleet one first, separated by a blank line.
pub fn csv(studies: &[(&Study, Outcome)]) -> String {
    let mut fleet_part = String::new();
    let mut weighted_part = String::new();
    for (st, out) in studies {
        match out {
            Outcome::Fleet(a, _) => {
                if fleet_part.is_empty() {
                    fleet_part = line(
                        &fleet::doc::CSV_HEADER
                            .iter()
                            .map(|h| h.to_string())
                            .collect::<Vec<_>>(),
                    );
                }
                for r in fleet::doc::csv_rows(&st.name, a) {
                    fleet_part.push_str(&line(&r));
                }
            }
            Outcome::Weighted(rows) => {
                if weighted_part.is_empty() {
                    weighted_part = line(
                        &WEIGHTED_HEADER
                            .iter()
                            .map(|h| h.to_string())
                            .collect::<Vec<_>>(),
                    );
                }
                for r in weighted_rows(st, rows) {
                    weighted_part.push_str(&line(&r));
                }
            }
        }
    }
    match (fleet_part.is_empty(), weighted_part.is_empty()) {
        (false, false) => format!("{fleet_part}\n{weighted_part}"),
        _ => fleet_part + &weighted_part,
    }
}

/// A weighted study as Markdown: one table row per (system, workload),
/// systems by score, and the per-workload fronts.
pub fn weighted_markdown(st: &Study, rows: &[Row]) -> String {
    use gantry_lang::units::format_number as n;
    let mut s = format!(
        "## Study `{}`: {} systems x {} workloads, objective {}\n\n| system | devices | score | workload | weight | {} | of best | plan |\n|---|---:|---:|---|---:|---:|---:|---|\n",
        st.name,
        rows.len(),
        st.workloads.len(),
        st.objective.1,
        st.objective.1
    );
    let mut order: Vec<&Row> = rows.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    for r in order {
        for c in &r.cells {
            let (value, plan) = match &c.best {
                Ok(e) => (
                    c.value.map_or("-".into(), |v| format!("{v:.4e}")),
                    e.point.to_string(),
                ),
                Err(m) => ("-".to_string(), m.replace('|', "\\|")),
            };
            s.push_str(&format!(
                "| {} | {} | {:.3} | {} | {} | {} | {:.0}% | {} |\n",
                r.system,
                r.devices,
                r.score,
                c.workload,
                n(c.weight),
                value,
                100.0 * c.relative,
                plan
            ));
        }
    }
    s.push_str(&weighted_fronts_text(st, rows, true));
    s
}

/// The per-workload fronts of a weighted study as lines (text) or a list
/// (Markdown).
pub fn weighted_fronts_text(st: &Study, rows: &[Row], markdown: bool) -> String {
    let mut s = if markdown {
        "\n### Pareto front per workload\n\n".to_string()
    } else {
        "  Pareto front per workload:\n".to_string()
    };
    for ((objectives, members), (w, _)) in weighted_fronts(rows).iter().zip(&st.workloads) {
        let names: Vec<&str> = members
            .iter()
            .filter_map(|&i| rows.get(i).map(|r| r.system.as_str()))
            .collect();
        s.push_str(&format!(
            "{}{} ({}): {}\n",
            if markdown { "- " } else { "    " },
            w.name,
            objectives.join(", "),
            names.join("; ")
        ));
    }
    s
}
