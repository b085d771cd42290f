//! Every JSON document the CLI writes validates against its JSON Schema in
//! `schemas/` (docs/SCHEMAS.md), for every bundled example:
//!
//! - `gantry check --format json` (`gantry.diagnostics.v1.json`) on every
//!   example and every invalid and warning input of `tests/inputs`;
//! - `gantry plan --format json` (`gantry.plan.v2.json`) for every plan of
//!   every example, searched and at the found point with `--fix`;
//! - `--export trace` (`gantry.trace.v1.json`) for the plans of the
//!   top-level examples (not `reference/`, not DLRM inference) and
//!   `--export torchrec` (`gantry.torchrec.v2.json`) for the DLRM plans;
//! - `gantry study --shard` (`gantry.shard.v1.json`), two slices;
//! - `gantry study --format json` (`gantry.study.v1.json`) for every
//!   example that declares a study, and each fleet pool's embedded plan
//!   against `gantry.plan.v2.json`.
//!
//! The schemas forbid unknown fields (`additionalProperties: false`) and
//! require every field that is always written, so a field added to an
//! output fails validation; and every property a schema declares must
//! appear in at least one output, so a field removed from an output (or
//! renamed) fails too. Either way the schema has to change with the output.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value, json};

mod common;
use common::gantry;

/// One schema, its compiled validator and the schema properties seen in
/// the outputs validated so far.
struct Schema {
    name: &'static str,
    root: Value,
    validator: jsonschema::Validator,
    seen: BTreeSet<String>,
    parts: Parts,
    documents: usize,
}

impl Schema {
    fn load(name: &'static str) -> Schema {
        let text = std::fs::read_to_string(format!("schemas/{name}.json")).expect("schema file");
        let root: Value = serde_json::from_str(&text).expect("schema is JSON");
        assert!(
            jsonschema::draft202012::meta::is_valid(&root),
            "{name} is not a valid 2020-12 JSON Schema"
        );
        let validator = jsonschema::validator_for(&root).expect("schema compiles");
        Schema {
            name,
            root,
            validator,
            seen: BTreeSet::new(),
            parts: Parts::new(),
            documents: 0,
        }
    }

    /// Validates one document, panicking with every error, and records
    /// which schema properties it has.
    fn check(&mut self, what: &str, doc: &Value) {
        let errors: Vec<String> = self
            .validator
            .iter_errors(doc)
            .map(|e| format!("  at `{}`: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what} does not validate against schemas/{}.json:\n{}",
            self.name,
            errors.join("\n")
        );
        let root = self.root.clone();
        walk(&root, &root, "#", doc, &mut self.seen, &mut self.parts);
        self.documents += 1;
    }

    /// Every property the schema declares appeared in some output.
    fn assert_covered(&self) {
        let mut all = BTreeSet::new();
        declared(&self.root, "#", &mut all);
        let missing: Vec<&String> = all.difference(&self.seen).collect();
        assert!(
            missing.is_empty(),
            "schemas/{}.json declares properties no output has (removed or renamed?): {missing:?}",
            self.name
        );
    }
}

/// Compiled validators of schema parts, by location.
type Parts = std::collections::HashMap<String, jsonschema::Validator>;

/// Is `doc` valid against `node`, the part of `root` at `at` (it may use
/// `$defs`)? Each part is compiled once.
fn valid_against(root: &Value, node: &Value, at: &str, doc: &Value, parts: &mut Parts) -> bool {
    parts
        .entry(at.to_string())
        .or_insert_with(|| {
            let mut s = json!({ "allOf": [node] });
            if let Some(d) = root.get("$defs") {
                s["$defs"] = d.clone();
            }
            jsonschema::validator_for(&s).expect("part compiles")
        })
        .is_valid(doc)
}

/// Walks a document along its schema and records the schema location of
/// every property the document has.
fn walk(
    root: &Value,
    node: &Value,
    at: &str,
    doc: &Value,
    seen: &mut BTreeSet<String>,
    parts: &mut Parts,
) {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        walk(root, &root["$defs"][name], r, doc, seen, parts);
        return;
    }
    if let Some(variants) = node.get("oneOf").and_then(Value::as_array) {
        for (i, v) in variants.iter().enumerate() {
            let here = format!("{at}/oneOf/{i}");
            if valid_against(root, v, &here, doc, parts) {
                walk(root, v, &here, doc, seen, parts);
                break;
            }
        }
    }
    if let (Some(props), Some(obj)) = (
        node.get("properties").and_then(Value::as_object),
        doc.as_object(),
    ) {
        for (k, sub) in props {
            if let Some(v) = obj.get(k) {
                let here = format!("{at}/properties/{k}");
                walk(root, sub, &here, v, seen, parts);
                seen.insert(here);
            }
        }
    }
    if let (Some(sub), Some(obj)) = (
        node.get("additionalProperties").filter(|a| a.is_object()),
        doc.as_object(),
    ) {
        for v in obj.values() {
            walk(
                root,
                sub,
                &format!("{at}/additionalProperties"),
                v,
                seen,
                parts,
            );
        }
    }
    if let (Some(items), Some(arr)) = (node.get("items"), doc.as_array()) {
        for v in arr {
            walk(root, items, &format!("{at}/items"), v, seen, parts);
        }
    }
}

/// The location of every property a schema declares.
fn declared(node: &Value, at: &str, out: &mut BTreeSet<String>) {
    if let Some(defs) = node.get("$defs").and_then(Value::as_object) {
        for (k, d) in defs {
            declared(d, &format!("#/$defs/{k}"), out);
        }
    }
    if let Some(variants) = node.get("oneOf").and_then(Value::as_array) {
        for (i, v) in variants.iter().enumerate() {
            declared(v, &format!("{at}/oneOf/{i}"), out);
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            let here = format!("{at}/properties/{k}");
            declared(sub, &here, out);
            out.insert(here);
        }
    }
    if let Some(sub) = node.get("additionalProperties").filter(|a| a.is_object()) {
        declared(sub, &format!("{at}/additionalProperties"), out);
    }
    if let Some(items) = node.get("items") {
        declared(items, &format!("{at}/items"), out);
    }
}

fn files(dir: &str) -> Vec<String> {
    gantry::gantry_files(Path::new(dir))
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// `--fix` pins for the point a search output chose.
fn pins_of(search: &Value) -> String {
    let p = &search["parallelism"];
    let mut pins: Vec<String> = [
        "dp",
        "tp",
        "pp",
        "cp",
        "ep",
        "zero",
        "recompute",
        "microbatch",
        "virtual_stages",
        "sequence_parallel",
    ]
    .iter()
    .map(|k| {
        let v = &p[*k];
        format!(
            "{k}={}",
            v.as_str().map_or_else(|| v.to_string(), str::to_string)
        )
    })
    .collect();
    // The batch is a knob only outside training (inference reports ttft).
    if search["metrics"].get("ttft_s").is_some() {
        pins.push(format!("batch={}", p["batch"]));
    }
    pins.join(",")
}

#[test]
fn every_json_output_matches_its_schema() {
    let mut diagnostics = Schema::load("gantry.diagnostics.v1");
    let mut plan = Schema::load("gantry.plan.v2");
    let mut trace = Schema::load("gantry.trace.v1");
    let mut torchrec = Schema::load("gantry.torchrec.v2");
    let mut serve = Schema::load("gantry.serve.v1");
    let mut serve_plans = 0;
    let examples = files("examples");
    assert!(examples.len() >= 30, "{examples:?}");

    // Diagnostics: clean examples (an empty array) and every input with
    // errors or warnings, one `check` per folder.
    for group in [
        examples.clone(),
        files("tests/inputs/invalid"),
        files("tests/inputs/warning"),
    ] {
        let mut args = vec!["check", "--format", "json"];
        args.extend(group.iter().map(String::as_str));
        let (_, out, err) = gantry(&args);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        diagnostics.check(&format!("check --format json on {} files", group.len()), &v);
    }

    let dir = std::env::temp_dir().join(format!("gantry-schemas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let trace_file = dir.join("trace.json").to_string_lossy().into_owned();
    let torchrec_file = dir.join("torchrec.json").to_string_lossy().into_owned();
    let mut plans = 0;
    for file in &examples {
        let checked = gantry::check_files(std::slice::from_ref(file), &[]);
        assert!(!checked.has_errors(), "{}", checked.render(false));
        for (name, declared) in &checked.program.plans {
            plans += 1;
            let what = format!("{file} --plan {name}");
            if declared.workload.serve.is_some() {
                // A serving plan: `gantry.serve/1`, searched with a
                // latency-versus-rate sweep, and its best deployment's
                // tp with --fix.
                serve_plans += 1;
                let mut args = vec!["plan", file, "--plan", name, "--format", "json"];
                // A closed loop or a burst offers no rate to sweep (C006).
                let s = declared.workload.serve.as_deref().expect("serve");
                if s.arrivals.clients(s.requests).is_none() {
                    args.extend(["--sweep-rate", "1,4"]);
                }
                let (code, out, err) = gantry(&args);
                assert_eq!(code, 0, "{what}: {err}");
                let searched: Value =
                    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: {e}: {out}"));
                serve.check(&format!("plan {what} --format json"), &searched);
                let tp = format!("tp={}", searched["best"]["pools"][0]["tp"]);
                let (code, out, err) = gantry(&[
                    "plan", file, "--plan", name, "--format", "json", "--fix", &tp,
                ]);
                assert_eq!(code, 0, "{what} --fix {tp}: {err}");
                let fixed: Value = serde_json::from_str(&out).expect("JSON");
                serve.check(&format!("plan {what} --fix {tp} --format json"), &fixed);
                continue;
            }
            // The search; for the examples outside `reference/`, with its
            // trace export in a file. A trace has two events per microbatch
            // and stage: DLRM inference at microbatch 1 and some reference
            // runs have 131,073, too slow to write in a debug build.
            let with_trace = !file.contains("reference") && !file.contains("dlrm_inference");
            let mut args = vec![
                "plan", file, "--plan", name, "--format", "json", "--top", "3",
            ];
            if with_trace {
                args.extend(["--export", "trace", "--output", &trace_file]);
            }
            let (code, out, err) = gantry(&args);
            assert_eq!(code, 0, "{what}: {err}");
            let searched: Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: {e}: {out}"));
            plan.check(&format!("plan {what} --format json"), &searched);
            if with_trace {
                let text = std::fs::read_to_string(&trace_file).expect("trace");
                let t: Value = serde_json::from_str(&text).expect("trace JSON");
                trace.check(&format!("plan {what} --export trace"), &t);
            }
            // The found point, evaluated with --fix.
            let pins = pins_of(&searched);
            let (code, out, err) = gantry(&[
                "plan", file, "--plan", name, "--format", "json", "--fix", &pins,
            ]);
            assert_eq!(code, 0, "{what} --fix {pins}: {err}");
            let fixed: Value = serde_json::from_str(&out).expect("JSON");
            plan.check(&format!("plan {what} --fix {pins} --format json"), &fixed);
            if file.contains("dlrm") {
                let (code, _, err) = gantry(&[
                    "plan",
                    file,
                    "--plan",
                    name,
                    "--export",
                    "torchrec",
                    "--output",
                    &torchrec_file,
                ]);
                assert_eq!(code, 0, "{what}: {err}");
                let t: Value =
                    serde_json::from_str(&std::fs::read_to_string(&torchrec_file).expect("read"))
                        .expect("torchrec JSON");
                torchrec.check(&format!("plan {what} --export torchrec"), &t);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(plans >= 40, "only {plans} plans");
    assert!(serve_plans >= 1, "no serving plan among the examples");
    assert_eq!(plan.documents, 2 * (plans - serve_plans));
    assert_eq!(serve.documents, 2 * serve_plans);
    // A serving plan on a declared engine names it and its terms (the
    // reference row A1.1, every knob pinned, on vLLM 0.8.3).
    let v = plan_json("examples/reference/s05_a_a100_tp8.gantry", "s05_a1_1_plan");
    serve.check("plan s05_a1_1_plan --format json", &v);
    assert_eq!(v["engine"]["name"], "vLLM_0_8_3", "{v}");
    assert!(v["engine"]["iteration_overhead_s"].as_f64().unwrap_or(0.0) > 0.0);
    // No bundled device records a fit band yet: a device that does gives
    // the `uncertainty` object (its training plan), its inference plan
    // the "uncalibrated" form.
    let calibrated = "tests/inputs/_cli/calibrated.gantry";
    for (name, band) in [("train_plan", true), ("serve_plan", false)] {
        for fix in [None, Some("tp=8,pp=1")] {
            let mut args = vec!["plan", calibrated, "--plan", name, "--format", "json"];
            args.extend(fix.map(|f| ["--fix", f]).into_iter().flatten());
            let (code, out, err) = gantry(&args);
            assert_eq!(code, 0, "{name}: {err}");
            let v: Value = serde_json::from_str(&out).expect("JSON");
            assert_eq!(v["uncertainty"].is_object(), band, "{name}: {out}");
            plan.check(&format!("plan {calibrated} --plan {name} {fix:?}"), &v);
        }
    }
    // With `--picks`, a reference plan carries the `published` object:
    // one whose free pick differs (with a memory margin), one whose pick
    // is the published configuration. Two cheap plans (8 GPUs and 1): the
    // released search costs seconds per plan in a debug build.
    for (file, name, same) in [
        (
            "examples/reference/f01_llama31_8b_8gpu.gantry",
            "f01_llama31_8b_8gpu_plan",
            false,
        ),
        (
            "examples/reference/c01_dlrm_small_1gpu.gantry",
            "c01_dlrm_small_mixed_plan",
            true,
        ),
    ] {
        let (code, out, err) =
            gantry(&["plan", file, "--plan", name, "--format", "json", "--picks"]);
        assert_eq!(code, 0, "{file} --picks: {err}");
        let v: Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(v["published"]["same"], json!(same), "{file}: {out}");
        plan.check(&format!("plan {file} --picks --format json"), &v);
    }
    let mut study = Schema::load("gantry.study.v1");
    let mut studies = 0;
    let mut fleet_serve_plans = 0;
    for file in &examples {
        let checked = gantry::check_files(std::slice::from_ref(file), &[]);
        if checked.program.studies.is_empty() {
            continue;
        }
        let (code, out, err) = gantry(&["study", file, "--format", "json"]);
        assert_eq!(code, 0, "study {file}: {err}");
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{file}: {e}: {out}"));
        study.check(&format!("study {file} --format json"), &v);
        let entries = v["studies"].as_array().expect("studies");
        assert_eq!(entries.len(), checked.program.studies.len(), "{file}");
        studies += entries.len();
        // Each fleet pool's plan is a `gantry.plan/2` object, or a serve
        // pool's `gantry.serve/1` document.
        for e in entries.iter().filter(|e| e["kind"] == "fleet") {
            for kind in ["pooled", "homogeneous"] {
                for p in e["fleet"][kind]["pools"].as_array().into_iter().flatten() {
                    let what = format!("study {file}: {kind} pool plan");
                    if p["plan"]["schema"] == "gantry.serve/1" {
                        serve.check(&what, &p["plan"]);
                        fleet_serve_plans += 1;
                    } else {
                        plan.check(&what, &p["plan"]);
                    }
                }
            }
        }
    }
    assert!(studies >= 2, "only {studies} example studies");
    assert!(fleet_serve_plans >= 2, "a fleet example's serve pools");
    // `--sensitivity` adds a member to a weighted and to a fleet entry.
    for file in [
        "tests/inputs/valid/sweep_linear.gantry",
        "examples/fleet_study.gantry",
    ] {
        let (code, out, err) = gantry(&["study", file, "--sensitivity", "--format", "json"]);
        assert_eq!(code, 0, "study {file} --sensitivity: {err}");
        let v: Value = serde_json::from_str(&out).expect("JSON");
        assert!(v["studies"][0]["sensitivity"]["cells"].is_array(), "{file}");
        study.check(&format!("study {file} --sensitivity --format json"), &v);
    }
    // A shard's partial JSON, of a weighted study and of a fleet study
    // with sensitivities (one slice of eight keeps it quick).
    let mut shard = Schema::load("gantry.shard.v1");
    for (file, extra) in [
        ("examples/codesign_study.gantry", None),
        ("examples/fleet_study.gantry", Some("--sensitivity")),
    ] {
        let mut args = vec!["study", file, "--shard", "1/8"];
        args.extend(extra);
        let (code, out, err) = gantry(&args);
        assert_eq!(code, 0, "study {file} --shard: {err}");
        let v: Value = serde_json::from_str(&out).expect("JSON");
        shard.check(&format!("study {file} --shard 1/8"), &v);
    }
    for s in [
        &diagnostics,
        &plan,
        &trace,
        &torchrec,
        &serve,
        &study,
        &shard,
    ] {
        assert!(s.documents > 0, "{}: nothing validated", s.name);
        s.assert_covered();
    }
}

/// `gantry plan FILE --plan PLAN --format json`, which must succeed.
fn plan_json(file: &str, plan: &str) -> Value {
    let (code, out, err) = gantry(&["plan", file, "--plan", plan, "--format", "json"]);
    assert_eq!(code, 0, "{file} {plan}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{file} {plan}: {e}"))
}

/// The schemas are strict: a field added to or removed from an output,
/// or a figure of the wrong type, fails validation.
#[test]
fn schemas_reject_added_removed_and_mistyped_fields() {
    let plan = Schema::load("gantry.plan.v2");
    let good = plan_json(
        "examples/reference/b01_22b.gantry",
        "b01_gpt_22b_sp_selective",
    );
    assert!(plan.validator.is_valid(&good));
    let mut added = good.clone();
    added["metrics"]["hardware_tflops_per_device"] = json!(163.9);
    let mut removed = good.clone();
    removed["metrics"]
        .as_object_mut()
        .expect("metrics")
        .remove("mfu");
    let mut renamed = good.clone();
    let search = renamed["search"].as_object_mut().expect("search");
    let elapsed = search.remove("elapsed_s").expect("elapsed_s");
    search.insert("seconds".into(), elapsed);
    let mut mistyped = good.clone();
    mistyped["metrics"]["step_time_s"] = json!("1 s");
    let mut negative = good.clone();
    negative["breakdown"]["memory_bytes"]["total"] = json!(-1.0);
    let mut old = good.clone();
    old["schema"] = json!("gantry.plan/1");
    for (what, doc) in [
        ("an added field", added),
        ("a removed field", removed),
        ("a renamed field", renamed),
        ("a mistyped field", mistyped),
        ("a negative size", negative),
        ("the old version", old),
    ] {
        assert!(!plan.validator.is_valid(&doc), "{what} passes the schema");
    }
}
