//! Snapshots of `gantry plan` reports (text and `gantry.plan/1` JSON) for
//! examples of every workload class, plus the JSON contract's keys.
//! Numbers are rounded to 6 significant digits so a snapshot states the
//! model's figures, not floating-point noise.

use std::collections::BTreeMap;

use gantry_compiler::plan::evaluate;
use gantry_compiler::point::parse_fix;
use gantry_compiler::report::{json, text};
use serde_json::Value;

fn round(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && f.fract() != 0.0
            {
                let digits = 6 - (f.abs().log10().floor() as i32 + 1);
                let scale = 10f64.powi(digits.clamp(-300, 300));
                if let Some(r) = serde_json::Number::from_f64((f * scale).round() / scale) {
                    *n = r;
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(round),
        Value::Object(o) => o.values_mut().for_each(round),
        _ => {}
    }
}

const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "llm_train_meta",
        "examples/llm_train.gantry",
        "llama3_405b_meta",
        "zero=1,recompute=full,microbatch=1,virtual_stages=1",
    ),
    ("llm_decode", "examples/llm_decode.gantry", "", ""),
    (
        "llm_prefill",
        "examples/llm_prefill.gantry",
        "llama3_70b_prefill_throughput",
        "",
    ),
    ("dlrm_train", "examples/dlrm_train.gantry", "", ""),
    ("dlrm_inference", "examples/dlrm_inference.gantry", "", ""),
    (
        "a01_gpt_1p7b",
        "examples/reference/a01_gpt_1p7b.gantry",
        "",
        "",
    ),
    (
        "b02_175b_selective",
        "examples/reference/b02_175b.gantry",
        "b02_gpt_175b_sp_selective",
        "",
    ),
    (
        "a16_zero3",
        "examples/reference/a16_gpt3_175b_zero3_1536.gantry",
        "",
        "",
    ),
];

#[test]
fn plan_reports() {
    for (name, file, plan, fix) in CASES {
        let c = gantry::check_files(&[file.to_string()], &[]);
        assert!(!c.has_errors(), "{}", c.render(false));
        let p = if plan.is_empty() {
            gantry::default_plan(&c.program)
        } else {
            c.program.plans.get(*plan)
        }
        .expect("plan");
        let pins = if fix.is_empty() {
            BTreeMap::new()
        } else {
            parse_fix(fix).expect("pins")
        };
        let ev = evaluate(p, &pins).unwrap_or_else(|e| panic!("{name}: {}", e.message));
        let mut j = json(&ev);
        // The contract's keys, spelled exactly.
        for k in [
            "schema",
            "workload",
            "system",
            "devices",
            "parallelism",
            "feasible",
            "uncertainty",
            "metrics",
            "breakdown",
        ] {
            assert!(j.get(k).is_some(), "{name}: missing `{k}`");
        }
        assert_eq!(j["schema"], gantry_compiler::report::SCHEMA);
        for k in [
            "dp",
            "tp",
            "pp",
            "cp",
            "ep",
            "zero",
            "recompute",
            "microbatch",
            "virtual_stages",
        ] {
            assert!(
                j["parallelism"].get(k).is_some(),
                "{name}: missing parallelism.{k}"
            );
        }
        for k in [
            "step_time_s",
            "tokens_per_s",
            "samples_per_s",
            "model_flops_per_s_per_device",
            "hardware_flops_per_s_per_device",
            "mfu",
            "hfu",
            "memory_per_device_bytes",
            "power_w",
            "energy_per_step_j",
            "cost_per_million_tokens_usd",
        ] {
            assert!(j["metrics"].get(k).is_some(), "{name}: missing metrics.{k}");
        }
        if !matches!(p.workload.phase, gantry_lang::program::Phase::Train { .. }) {
            assert!(
                j["metrics"].get("ttft_s").is_some() && j["metrics"].get("tpot_s").is_some(),
                "{name}: ttft/tpot"
            );
        }
        // The time breakdown adds up to the step.
        let t = &j["breakdown"]["time_s"];
        let c = &t["compute"];
        let parts: f64 = ["matmul", "attention", "elementwise", "embedding", "layout"]
            .iter()
            .map(|k| c[k].as_f64().unwrap_or(0.0))
            .sum::<f64>()
            + [
                "recompute",
                "tensor_parallel_comm",
                "context_parallel_comm",
                "all_to_all",
                "pipeline_comm",
                "pipeline_bubble",
                "data_parallel_exposed",
                "optimizer",
                "prefill_share",
                "host_embedding_lookups",
                "step_overhead",
            ]
            .iter()
            .map(|k| t[k].as_f64().unwrap_or(0.0))
            .sum::<f64>();
        let step = t["step"].as_f64().unwrap_or(0.0);
        if matches!(p.workload.phase, gantry_lang::program::Phase::Train { .. }) {
            assert!(
                (parts - step).abs() <= 1e-6 * step,
                "{name}: parts {parts} vs step {step}"
            );
        }
        round(&mut j);
        insta::with_settings!({ snapshot_path => "report_snapshots", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(format!("{name}.txt"), text(&ev, false));
            insta::assert_snapshot!(format!("{name}.json"), serde_json::to_string_pretty(&j).unwrap_or_default());
        });
    }
}

#[test]
fn codesign_study_table() {
    let c = gantry::check_files(&["examples/codesign_study.gantry".to_string()], &[]);
    assert!(!c.has_errors(), "{}", c.render(false));
    let st = c.program.studies.get("fleet_size").expect("study");
    let rows = gantry_compiler::study::run(st);
    assert_eq!(rows.len(), st.systems.len());
    // The best system scores 1 on every workload it wins; scores are in [0, 1].
    assert!(rows.iter().all(|r| (0.0..=1.0 + 1e-9).contains(&r.score)));
    assert!(
        rows.iter()
            .any(|r| r.cells.iter().any(|c| (c.relative - 1.0).abs() < 1e-12))
    );
    insta::with_settings!({ snapshot_path => "report_snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("codesign_study_fleet_size", gantry_compiler::report::study_text(st, &rows));
    });
}

/// Every prediction carries the leave-one-out band recorded for its
/// device and phase (`fit_rows`, `loo_median`, `loo_max` in the phase's
/// `efficiency` record), in text, markdown and JSON, and "uncalibrated"
/// for a phase without one; a study shows both per system.
#[test]
fn reports_carry_the_uncertainty_band() {
    let file = "tests/inputs/_cli/calibrated.gantry";
    let c = gantry::check_files(&[file.to_string()], &[]);
    assert!(!c.has_errors(), "{}", c.render(false));
    let band = "\u{b1}5.0% median, 12.0% worst leave-one-out over 16 rows";
    for (plan, calibrated) in [("train_plan", true), ("serve_plan", false)] {
        let p = c.program.plans.get(plan).expect("plan");
        let ev = evaluate(p, &BTreeMap::new()).unwrap_or_else(|e| panic!("{plan}: {}", e.message));
        let j = json(&ev);
        for markdown in [false, true] {
            let t = text(&ev, markdown);
            let line = t
                .lines()
                .find(|l| l.trim_start().starts_with("uncertainty: "))
                .unwrap_or_else(|| panic!("{plan}: no uncertainty line in\n{t}"));
            if calibrated {
                assert!(
                    line.contains(band) && line.contains("(Gpu training)"),
                    "{line}"
                );
            } else {
                assert!(
                    line.contains("uncalibrated") && line.contains("Gpu inference"),
                    "{line}"
                );
            }
        }
        if calibrated {
            assert_eq!(
                j["uncertainty"],
                serde_json::json!({ "rows": 16, "loo_median": 0.05, "loo_max": 0.12 })
            );
        } else {
            assert_eq!(j["uncertainty"], "uncalibrated");
        }
    }
    let st = c.program.studies.get("both").expect("study");
    let out = gantry_compiler::report::study_text(st, &gantry_compiler::study::run(st));
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("uncertainty:")).collect();
    assert_eq!(lines.len(), 2, "one per system:\n{out}");
    for l in lines {
        assert!(
            l.contains(&format!("train {band}")) && l.contains("infer uncalibrated"),
            "{l}"
        );
    }
}

/// The fleet example's Markdown report (both fleets, the cost of
/// homogeneity and the Pareto fronts) and its CSV, as snapshots: a change
/// to any figure or column shows up as a reviewed diff.
#[test]
fn fleet_study_markdown_and_csv() {
    let c = gantry::check_files(&["examples/fleet_study.gantry".to_string()], &[]);
    assert!(!c.has_errors(), "{}", c.render(false));
    let st = c.program.studies.get("fleet").expect("study");
    let a = gantry_compiler::fleet::run(st)
        .expect("demand met")
        .expect("a fleet study");
    let cap = st
        .site
        .as_ref()
        .and_then(|s| s.power_cap)
        .unwrap_or(f64::INFINITY);
    let f = gantry_compiler::fleet::front::of(&a, cap);
    let md = gantry_compiler::fleet::report::markdown(&st.name, &a, &f);
    let outcomes = [(st, gantry_compiler::study_doc::Outcome::Fleet(&a, &f))];
    let csv = gantry_compiler::study_doc::csv(&outcomes);
    insta::with_settings!({ snapshot_path => "report_snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("fleet_study.md", md);
        insta::assert_snapshot!("fleet_study.csv", csv);
    });
}

/// Exposed seconds of the communications whose `what` passes `f`.
fn exposed_of(e: &gantry_compiler::cost::Estimate, f: &dyn Fn(&str) -> bool) -> f64 {
    e.comms
        .iter()
        .filter(|c| f(&c.what))
        .map(|c| c.exposed)
        .sum()
}

/// The communication table says what the step charges: for every
/// training plan of the examples and the reference runs, at its pinned
/// point, the exposed time of the tensor-parallel collectives, the
/// pipeline's sends and the context-parallel ring each equal the step's
/// part of that name, and the exposed times of every communication
/// together equal the step's communication parts (tensor, context and
/// pipeline parallel, all-to-all, exposed data-parallel). (The pipeline's
/// row counted its sends in the bubble as well.)
#[test]
fn the_communication_table_is_what_the_step_charges() {
    let mut files: Vec<String> = Vec::new();
    for dir in ["examples", "examples/reference"] {
        for e in std::fs::read_dir(dir).expect("examples").flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "gantry") {
                files.push(path.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    let mut checked = 0;
    for file in &files {
        let c = gantry::check_files(std::slice::from_ref(file), &[]);
        assert!(!c.has_errors(), "{}", c.render(false));
        for (name, p) in &c.program.plans {
            if p.workload.serve.is_some() {
                continue;
            }
            let Ok(ev) = evaluate(p, &BTreeMap::new()) else {
                continue;
            };
            let (e, t) = (&ev.estimate, &ev.estimate.time);
            let exposed = |f: &dyn Fn(&str) -> bool| exposed_of(e, f);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12);
            let tp = exposed(&|w| w.starts_with("tensor"));
            let pp = exposed(&|w| w.starts_with("pipeline"));
            let cp = exposed(&|w| w.starts_with("context-parallel"));
            let all = exposed(&|_| true);
            assert!(
                close(tp, t.tp_comm),
                "{file} {name}: tensor-parallel {tp} vs step {}",
                t.tp_comm
            );
            assert!(
                close(pp, t.pp_comm),
                "{file} {name}: pipeline {pp} vs step {}",
                t.pp_comm
            );
            assert!(
                close(cp, t.cp_comm),
                "{file} {name}: context-parallel {cp} vs step {}",
                t.cp_comm
            );
            let parts = t.tp_comm + t.pp_comm + t.cp_comm + t.all_to_all + t.dp_exposed;
            assert!(
                close(all, parts),
                "{file} {name}: table {all} vs step {parts}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} plans checked");
    // Pipelined inference (no example pins one): the pass's sends.
    for file in ["examples/llm_prefill.gantry", "examples/llm_decode.gantry"] {
        let c = gantry::check_files(&[file.to_string()], &[]);
        let p = gantry::default_plan(&c.program).expect("plan");
        let ev = evaluate(p, &parse_fix("dp=1,tp=2,pp=4").expect("pins")).expect("evaluates");
        let pp = exposed_of(&ev.estimate, &|w| w.starts_with("pipeline"));
        let step = ev.estimate.time.pp_comm;
        assert!(
            step > 0.0 && (pp - step).abs() <= 1e-9 * step,
            "{file}: pipeline {pp} vs step {step}"
        );
    }
}
