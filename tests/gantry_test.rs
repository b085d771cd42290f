//! `gantry test` end to end: the bundled examples pass as CI runs them,
//! a drifted snapshot fails with a diff until `--accept`, an `expect`
//! fails outside its tolerance and passes inside it, an uncalibrated
//! figure is unchecked unless `--strict`, and the exit codes.

use std::path::{Path, PathBuf};

mod common;
use common::gantry;

/// A fresh folder for one test.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gantry-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A small device without fitted factors (so its predictions carry no
/// uncertainty band), a node and a training workload.
const BASE: &str = r#"
device Chip {
  compute { bf16 = 100 TFLOP/s, fp32 = 25 TFLOP/s }
  memory hbm = 16 GB @ 1 TB/s
  power 300 W
  price $1/h
}

node Box {
  device Chip x 8
  link fast = switch(100 GB/s)
}

model Tiny(d = 256) {
  input x: fp32[batch, d]
  output y = linear(x, d, d)
}

workload tiny_train {
  model Tiny
  train { global_batch = 64 }
}
"#;

#[test]
fn the_examples_pass_as_ci_runs_them() {
    let (code, out, err) = gantry(&["test", "examples"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.contains(" 0 failed, "), "{summary}");
    assert!(summary.contains("0 files with errors"), "{summary}");
    // Every reference row of a phase workload is checked (against its
    // band), and every example study has a snapshot that matched.
    assert!(!summary.contains(" 0 expects passed"), "{summary}");
    assert!(!summary.contains(" 0 snapshots matched"), "{summary}");
    for f in [
        "examples/fleet_study.gantry",
        "examples/codesign_study.gantry",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with("ok   ") && l.contains(f)),
            "{f}:\n{out}"
        );
    }
}

/// A weighted study of one workload in `d` (`mix.gantry`) and where its
/// snapshot goes (`mix.snap`).
fn mix_study(d: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let file = d.join("mix.gantry");
    std::fs::write(
        &file,
        format!(
            "{BASE}\nstudy mix on Box {{\n  workloads {{ tiny_train = 1.0 }}\n  objective maximize throughput\n}}\n"
        ),
    )
    .expect("write");
    (file, d.join("mix.snap"))
}

#[test]
fn a_drifted_snapshot_fails_with_a_diff_until_accepted() {
    let d = dir("drift");
    let (file, snap) = mix_study(&d);

    // No snapshot yet: a failure that says how to store one.
    let (code, out, _) = gantry(&["test", &s(&file)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no snapshot"), "{out}");
    assert!(!snap.exists());

    // --accept stores the study's report; then it matches.
    let (code, out, _) = gantry(&["test", "--accept", &s(&file)]);
    assert_eq!(code, 0, "{out}");
    let stored = std::fs::read_to_string(&snap).expect("snapshot written");
    assert!(stored.contains("study mix"), "{stored}");
    let (code, out, _) = gantry(&["test", &s(&file)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 snapshots matched"), "{out}");

    // The answer changes (here: the file's node does): the report
    // drifts, the diff shows the old and new lines, exit 1, and the
    // snapshot is left alone.
    let smaller = std::fs::read_to_string(&file)
        .expect("read")
        .replace("device Chip x 8", "device Chip x 4");
    std::fs::write(&file, smaller).expect("write");
    let (code, out, _) = gantry(&["test", &s(&file)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("drifted"), "{out}");
    assert!(out.contains("(stored)") && out.contains("+++ now"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("-  ")) && out.lines().any(|l| l.starts_with("+  ")),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&snap).expect("read"), stored);

    let (code, _, _) = gantry(&["test", "--accept", &s(&file)]);
    assert_eq!(code, 0);
    assert_ne!(std::fs::read_to_string(&snap).expect("read"), stored);
    let (code, out, _) = gantry(&["test", &s(&file)]);
    assert_eq!(code, 0, "{out}");
}

/// A huge stale snapshot is not diffed line by line (that took time
/// quadratic in its size: 39 s for 200,000 lines); an unreadable one is
/// reported as such, not as missing.
#[test]
fn huge_and_unreadable_snapshots_are_reported_quickly() {
    let d = dir("huge");
    let (file, snap) = mix_study(&d);
    let junk: String = (0..200_000).map(|i| format!("junk line {i}\n")).collect();
    std::fs::write(&snap, &junk).expect("write");
    let (code, out, _) = gantry(&["test", &s(&file)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("too many lines to diff") && out.contains("200000 lines"),
        "{out}"
    );
    assert!(
        out.contains("the first difference is line 1:\n-junk line 0\n"),
        "{out}"
    );

    std::fs::write(&snap, b"\xff\xfe not UTF-8\n").expect("write");
    let (code, out, _) = gantry(&["test", &s(&file)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot read") && !out.contains("no snapshot"),
        "{out}"
    );
    std::fs::remove_file(&snap).expect("remove");
    std::fs::create_dir(&snap).expect("dir");
    let (code, out, _) = gantry(&["test", &s(&file)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot read") && !out.contains("no snapshot"),
        "{out}"
    );
}

/// The plan's predicted step time, from `gantry plan --format json`.
fn predicted_step_time(file: &Path) -> f64 {
    let (code, out, err) = gantry(&["plan", &s(file), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["metrics"]["step_time_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("no step time in {out}"))
}

#[test]
fn an_expect_passes_within_its_tolerance_and_fails_outside() {
    let d = dir("tolerance");
    let plain = d.join("plain.gantry");
    std::fs::write(
        &plain,
        format!("{BASE}\nplan p on Box for tiny_train {{\n  fix tp = 1, pp = 1\n}}\n"),
    )
    .expect("write");
    let t = predicted_step_time(&plain);
    assert!(t > 0.0);
    // Expect 5% above the prediction: within 10%, not within 2%.
    let with = |tol: &str| {
        let f = d.join(format!("p{}.gantry", tol.replace('.', "_")));
        std::fs::write(
            &f,
            format!(
                "{BASE}\nplan p on Box for tiny_train {{\n  fix tp = 1, pp = 1\n  expect step_time = {} s\n  tolerance = {tol}\n}}\n",
                t * 1.05
            ),
        )
        .expect("write");
        gantry(&["test", "-v", &s(&f)])
    };
    let (code, out, _) = with("0.1");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("pass plan p step_time") && out.contains("-4.8%"),
        "{out}"
    );
    let (code, out, _) = with("0.02");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL plan p step_time"), "{out}");
    assert!(out.contains("outside the tolerance of 2.0%"), "{out}");
}

#[test]
fn an_uncalibrated_figure_is_unchecked_unless_strict() {
    let d = dir("strict");
    let f = d.join("u.gantry");
    std::fs::write(
        &f,
        format!("{BASE}\nplan p on Box for tiny_train {{\n  expect step_time = 1 s\n}}\n"),
    )
    .expect("write");
    let (code, out, _) = gantry(&["test", &s(&f)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 unchecked"), "{out}");
    let (code, out, _) = gantry(&["test", "--strict", &s(&f)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--strict"), "{out}");
}

#[test]
fn a_calibrated_figure_is_held_to_the_model_band() {
    // An H100 plan states a step time ten times what the model predicts;
    // without a tolerance it is judged against the device's stated
    // leave-one-out band, and fails.
    let d = dir("band");
    let f = d.join("h.gantry");
    std::fs::write(
        &f,
        r#"import "stdlib/hardware/h100.gantry"
import "stdlib/models/llama.gantry"

node DGX {
  device H100_SXM x 8
  link nvlink = switch(450 GB/s)
}

workload w {
  model Llama(layers = 2, d_model = 1024, heads = 8, d_ff = 4096, vocab = 32000)
  prefill { batch = 8, prompt = 512 }
}

plan p on DGX for w {
  fix tp = 1, pp = 1
  expect step_time = 100 s
}
"#,
    )
    .expect("write");
    let (code, out, _) = gantry(&["test", &s(&f)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("outside the uncertainty of"), "{out}");
}

#[test]
fn exit_codes() {
    let (code, _, err) = gantry(&["test", "no/such/path.gantry"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such file or folder"), "{err}");
    let d = dir("bad");
    let f = d.join("bad.gantry");
    std::fs::write(&f, "let x = 80 GB + 3 GB/s\n").expect("write");
    let (code, out, _) = gantry(&["test", &s(&f)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[L040]") && out.contains("1 files with errors"),
        "{out}"
    );
}
