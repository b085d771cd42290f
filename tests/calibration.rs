//! Calibration end to end: `validate` predicts what `plan` reports, the
//! fit (`gantry calibrate --fit`) holds the search's choices exactly, the
//! stdlib's factors are the fit's output, `--write` rewrites a copy of the
//! tree in place (formatted, idempotent), and bad arguments are `C017`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use gantry_compiler::fit::{self, Fit, Reference};

fn gantry_in(dir: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gantry"));
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c.output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gantry(args: &[&str]) -> (i32, String, String) {
    gantry_in(None, args)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gantry-calibration-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// Every reference figure of a folder, checked as the CLI checks it.
fn references(dir: &Path) -> Vec<Reference> {
    let mut refs = Vec::new();
    for f in gantry::gantry_files(dir) {
        let c = gantry::check_files(&[f.to_string_lossy().into_owned()], &[]);
        assert!(!c.has_errors(), "{}", c.render(false));
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        refs.extend(fit::references(&stem, &c.program, &c.sources));
    }
    refs
}

/// The fit of `examples/reference`, once per test binary.
fn reference_fit() -> &'static (Vec<Reference>, Fit) {
    static FIT: OnceLock<(Vec<Reference>, Fit)> = OnceLock::new();
    FIT.get_or_init(|| {
        let refs = references(Path::new("examples/reference"));
        let f = fit::fit(&refs);
        (refs, f)
    })
}

/// The JSON key of `gantry plan --format json` for an `expect` metric
/// (base units: FLOP/s, not TFLOP/s).
fn json_key(metric: &str) -> &str {
    match metric {
        "iteration_time" | "step_time" => "step_time_s",
        "hardware_tflops_per_device" => "hardware_flops_per_s_per_device",
        "model_tflops_per_device" => "model_flops_per_s_per_device",
        "ttft" => "ttft_s",
        "tpot" => "tpot_s",
        "memory" => "memory_per_device_bytes",
        "power" => "power_w",
        other => other,
    }
}

/// `--fix tp=..,dp=..,batch=..` of a serving plan's pins (`None` for a
/// plan of another workload).
fn serving_fix(p: &gantry_lang::program::Plan) -> Option<String> {
    p.workload.serve.as_ref()?;
    let pins: Vec<String> = p
        .fixed
        .iter()
        .map(|(k, d)| match d {
            gantry_lang::program::Domain::Ints(v) => format!("{k}={}", v[0]),
            other => panic!("{}: `{k}` pinned to {other:?}", p.name),
        })
        .collect();
    Some(pins.join(","))
}

/// A serving figure in a `gantry.serve/1` deployment object.
fn serve_json(best: &serde_json::Value, metric: &str) -> Option<f64> {
    if let Some((what, q)) = metric.split_once('_')
        && ["ttft", "tpot", "e2e"].contains(&what)
    {
        return best[what][format!("{q}_s")].as_f64();
    }
    match metric {
        "throughput" => best["throughput_per_s"].as_f64(),
        "tokens_per_s" => best["tokens_per_s"].as_f64(),
        "goodput" => best["goodput_per_s"].as_f64(),
        _ => None,
    }
}

/// Issue 10, item 6: for every reference file and plan, the figure
/// `validate` predicts is the figure `gantry plan --plan NAME --format
/// json` reports (the search's best point, not the `--fix` defaults).
#[test]
fn validate_predicts_what_plan_reports() {
    let mut compared = 0;
    for f in gantry::gantry_files(Path::new("examples/reference")) {
        let file = f.to_string_lossy().into_owned();
        let c = gantry::check_files(std::slice::from_ref(&file), &[]);
        assert!(!c.has_errors(), "{}", c.render(false));
        for row in gantry_compiler::validate::rows(&c.program) {
            let row = row.unwrap_or_else(|(p, e)| panic!("{file}:{p}: {}", e.message));
            // A serving reference pins its deployment: `gantry plan --fix`
            // with those pins, read from `gantry.serve/1`.
            let plan = &c.program.plans[&row.plan];
            let fix = serving_fix(plan);
            let mut args = vec!["plan", &file, "--plan", &row.plan, "--format", "json"];
            if let Some(f) = &fix {
                args.extend(["--fix", f.as_str()]);
            }
            let (code, out, err) = gantry(&args);
            assert_eq!(code, 0, "{file} {}: {err}", row.plan);
            let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
            let key = json_key(&row.metric);
            let found = if fix.is_some() {
                serve_json(&v["best"], &row.metric)
            } else {
                v["metrics"][key].as_f64()
            };
            let reported = found.unwrap_or_else(|| {
                panic!("{file}: no metric `{key}` for `{}` in {out}", row.metric)
            });
            assert!(
                (row.predicted - reported).abs() <= 1e-12 * reported.abs(),
                "{file} {} {}: validate {} vs plan {reported}",
                row.plan,
                row.metric,
                row.predicted
            );
            compared += 1;
        }
    }
    assert!(compared >= 40, "only {compared} figures");
}

/// Holding a search's choices and evaluating its point reproduces the
/// search's figure exactly, so the inner loop fits what `plan` predicts;
/// every reference figure is in the fit, and the last search kept the
/// choices the factors were fitted with.
#[test]
fn the_fit_holds_the_search_exactly() {
    let (refs, f) = reference_fit();
    assert!(
        f.held_mismatch <= 1e-12,
        "held mismatch {}",
        f.held_mismatch
    );
    let figures: usize = refs.iter().map(|r| r.expect.len()).sum();
    assert!(f.failed.is_empty(), "{:?}", f.failed);
    assert_eq!(f.rows.len(), figures);
    assert!(f.stable, "the last search changed the fitted choices");
    // Every group fits the factors its record declares, in (0, 1] for
    // fractions; each figure has a leave-one-out prediction.
    for g in &f.groups {
        assert!(!g.factors.is_empty(), "{} {}", g.device, g.phase);
        for x in &g.factors {
            assert!(x.fitted >= 0.0 && x.fitted.is_finite(), "{x:?}");
            if x.dim.is_none() {
                assert!(x.fitted > 0.0 && x.fitted <= 1.0, "{x:?}");
            }
        }
        assert!(g.loo.is_some());
    }
    // Each figure has a leave-one-out prediction, but those of the serving
    // rows an engine fit leaves out (published figures that miss Little's
    // law: reported, not fitted).
    for r in &f.rows {
        let left_out = f
            .engines
            .iter()
            .any(|g| g.left_out.iter().any(|(i, _)| *i == r.reference));
        assert_eq!(r.loo.is_none(), left_out, "{}", refs[r.reference].plan.name);
    }
    // The engine fit's in-sample figures are `validate`'s (what the
    // simulator predicts with the written terms), and it identified at
    // least one term of every engine or said why not.
    for g in &f.engines {
        assert!(g.objective <= g.objective_ideal, "{}", g.engine);
        assert!(g.loo.is_some(), "{}", g.engine);
        // A selected term lowered the leave-one-out objective by the
        // selection's least gain, not only the fitted rows' (a term that
        // fits the rows' noise is not selected).
        for t in &g.terms {
            if t.selected {
                assert!(
                    t.loo_gain
                        .is_some_and(|l| l >= gantry_compiler::engine_fit::MIN_GAIN),
                    "{} {}: {:?}",
                    g.engine,
                    t.name,
                    t.loo_gain
                );
            }
        }
        for &i in &g.rows {
            let r = &f.rows[i];
            assert!(
                (r.in_sample - r.current).abs() <= 1e-12 * r.current.abs(),
                "{} {}: fit {} vs stdlib {}",
                g.engine,
                r.metric,
                r.in_sample,
                r.current
            );
        }
    }
    // The per-figure in-sample prediction is the search at the written
    // values: the same as the model's figure for a group whose factors
    // are already the fit's (checked by the --write test below).
    assert!(
        f.rows
            .iter()
            .all(|r| r.in_sample.is_finite() && r.in_sample > 0.0)
    );
}

/// Issue 10, item 6: the stdlib's factors are exactly the output of
/// `gantry calibrate --fit examples/reference` (3 significant digits),
/// with the fit's row count and leave-one-out band recorded next to them.
/// Fails until `gantry calibrate --fit examples/reference --write` is run
/// on the model's final physics.
#[test]
fn stdlib_factors_are_the_fit_output() {
    let (refs, f) = reference_fit();
    let mut differ = Vec::new();
    for g in &f.groups {
        let r = refs
            .iter()
            .find(|r| r.plan.system.node.device.name == g.device)
            .expect("a reference of the group");
        let eff = &r.plan.system.node.device.efficiency;
        let declared = |k: &str| {
            eff.get(&format!("{}.{k}", g.phase))
                .map(|q| fit::round_sig(q.value))
        };
        let shown = |k: &str| {
            eff.get(&format!("{}.{k}", g.phase))
                .map_or("not in the phase record".to_string(), |q| q.to_string())
        };
        for x in &g.factors {
            if declared(&x.name) != Some(x.fitted) {
                differ.push(format!(
                    "{} {}.{}: stdlib {}, fit {}",
                    g.device,
                    g.phase,
                    x.name,
                    shown(&x.name),
                    x.text()
                ));
            }
        }
        let (m, w) = g.loo.unwrap_or_default();
        for (k, v) in [
            ("fit_rows", g.rows.len() as f64),
            ("loo_median", fit::round_sig(m)),
            ("loo_max", fit::round_sig_up(w)),
        ] {
            if declared(k) != Some(v) {
                differ.push(format!(
                    "{} {}.{k}: stdlib {}, fit {v}",
                    g.device,
                    g.phase,
                    shown(k)
                ));
            }
        }
    }
    // The serving engines (stdlib/engines/): the selected terms as
    // fitted, the others undeclared (ideal), and the fit's record.
    assert!(!f.engines.is_empty(), "no engine was fitted");
    for g in &f.engines {
        let Some(e) = refs
            .iter()
            .filter_map(|r| r.plan.workload.serve.as_ref()?.engine.as_ref())
            .find(|e| e.name == g.engine)
        else {
            differ.push(format!(
                "engine {}: not declared by any reference",
                g.engine
            ));
            continue;
        };
        for t in &g.terms {
            let value = match t.name {
                "iteration_overhead" => e.iteration_overhead,
                "seq_overhead" => e.seq_overhead,
                "request_overhead" => e.request_overhead,
                "frontend_time" => e.frontend_time,
                "kv_efficiency" => e.kv_efficiency,
                other => panic!("an engine term this test does not know: {other}"),
            };
            let declared = e.declared.iter().any(|d| d == t.name);
            if declared != t.selected || value != t.fitted {
                differ.push(format!(
                    "engine {} {}: stdlib {value} (declared: {declared}), fit {} (selected: {})",
                    g.engine,
                    t.name,
                    t.text(),
                    t.selected
                ));
            }
        }
        let loo = g
            .loo
            .map(|(m, x)| (fit::round_sig(m), fit::round_sig_up(x)));
        if e.fit_rows != Some(g.plans as u64) || e.loo != loo {
            differ.push(format!(
                "engine {}: stdlib fit_rows {:?} loo {:?}, fit {} {:?}",
                g.engine, e.fit_rows, e.loo, g.plans, loo
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "the stdlib's factors are not the fit's output; run `gantry calibrate --fit examples/reference --write`:\n  {}",
        differ.join("\n  ")
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for e in std::fs::read_dir(from).expect("read").flatten() {
        let p = e.path();
        let t = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).expect("copy");
        }
    }
}

/// `--write` on a copy of the tree (a few reference files of two devices
/// and phases): each fitted record is rewritten in place and formatted,
/// the rest of each file is kept, a second fit reproduces the written
/// values (so the stdlib test above holds after one `--write`), `validate`
/// then prints the fit's in-sample errors, and reports carry the band.
#[test]
fn write_rewrites_a_copy_in_place() {
    let root = temp_dir("write");
    copy_dir(Path::new("stdlib"), &root.join("stdlib"));
    let refdir = root.join("examples/reference");
    std::fs::create_dir_all(&refdir).expect("dir");
    let picked = [
        "c01_dlrm_small_1gpu",
        "c03_dlrm_xl_8gpu",
        "d01_llama31_70b_tp1_128_128",
        "d06_llama31_70b_tp8_128_128",
    ];
    for stem in picked {
        let name = format!("{stem}.gantry");
        std::fs::copy(
            Path::new("examples/reference").join(&name),
            refdir.join(&name),
        )
        .expect("copy");
    }
    let before: Vec<(PathBuf, String)> = gantry::gantry_files(&root.join("stdlib"))
        .into_iter()
        .map(|p| {
            let t = std::fs::read_to_string(&p).expect("read");
            (p, t)
        })
        .collect();
    let (code, out, err) = gantry_in(
        Some(&root),
        &["calibrate", "--fit", "examples/reference", "--write"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("wall time") && out.contains("leave-one-out"),
        "{out}"
    );
    assert!(
        out.contains("A100_SXM4_80GB train") && out.contains("H100_SXM infer"),
        "{out}"
    );
    let mut written = Vec::new();
    for (p, old) in &before {
        let new = std::fs::read_to_string(p).expect("read");
        if &new == old {
            continue;
        }
        written.push(
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        assert!(
            new.contains("// Written by `gantry calibrate --fit examples/reference`"),
            "{new}"
        );
        assert!(
            new.contains("fit_rows = ")
                && new.contains("loo_median = ")
                && new.contains("loo_max = "),
            "{new}"
        );
        // Only the record changed: the text before `efficiency {` is kept.
        let head = |t: &str| t.split("efficiency {").next().map(str::to_string);
        assert_eq!(head(&new), head(old), "{}", p.display());
        assert_eq!(
            gantry_lang::fmt::format_source(&new).as_deref(),
            Ok(new.as_str()),
            "{} is not formatted",
            p.display()
        );
    }
    written.sort();
    assert_eq!(written, ["a100.gantry", "h100.gantry"]);
    assert!(out.contains("wrote stdlib/hardware/a100.gantry"), "{out}");
    let (code, _, err) = gantry_in(Some(&root), &["fmt", "--check", "stdlib"]);
    assert_eq!(code, 0, "{err}");
    // A second fit starts from the written values and reproduces them.
    // (Imports resolve from each file's folder up: the copy's stdlib.)
    let second = fit::fit(&references(&refdir));
    for g in &second.groups {
        for x in &g.factors {
            assert_eq!(
                fit::round_sig(x.current),
                x.fitted,
                "{} {} {x:?}",
                g.device,
                g.phase
            );
        }
        // `validate` (with the written values) predicts what the fit's
        // in-sample column says.
        for &i in &g.rows {
            let r = &second.rows[i];
            assert!(
                (r.current - r.in_sample).abs() <= 1e-12 * r.in_sample,
                "{r:?}"
            );
        }
    }
    // Every prediction of a fitted device and phase now carries its band.
    let (code, out, err) = gantry_in(
        Some(&root),
        &[
            "plan",
            "examples/reference/d01_llama31_70b_tp1_128_128.gantry",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("uncertainty: \u{b1}")
            && out.contains("leave-one-out over 2 rows (H100_SXM inference)"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// `validate --cross` prints every figure's leave-one-out error next to
/// its in-sample one, per row and per section.
#[test]
fn validate_cross_prints_leave_one_out() {
    let root = temp_dir("cross");
    for stem in [
        "d01_llama31_70b_tp1_128_128",
        "d02_llama31_70b_tp2_128_128",
        "d06_llama31_70b_tp8_128_128",
    ] {
        let name = format!("{stem}.gantry");
        std::fs::copy(
            Path::new("examples/reference").join(&name),
            root.join(&name),
        )
        .expect("copy");
    }
    let dir = root.to_string_lossy().into_owned();
    let (code, out, err) = gantry(&["validate", "--cross", &dir]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("leave-one-out"), "{out}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("d0")).collect();
    assert_eq!(rows.len(), 3, "{out}");
    for r in rows {
        // in-sample error, then the leave-one-out error, both signed.
        assert_eq!(r.matches('%').count(), 2, "{r}");
    }
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("D ")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Bad arguments are `C017` with exit 2, never a panic; `--write` needs
/// `--fit`.
#[test]
fn bad_arguments_are_c017() {
    let empty = temp_dir("empty");
    std::fs::write(
        empty.join("no_rows.gantry"),
        "device G {\n  compute { bf16 = 1 TFLOP/s }\n  memory hbm = 1 GB @ 1 GB/s\n  power 1 W\n}\n",
    )
    .expect("write");
    let e = empty.to_string_lossy().into_owned();
    for args in [
        vec!["calibrate", "--fit", "/nonexistent/reference"],
        vec!["calibrate", "--fit", "Cargo.toml"],
        vec!["calibrate", "--fit", &e],
        vec!["validate", "--cross", "/nonexistent/reference"],
        vec!["validate", "--cross", &e],
    ] {
        let (code, out, err) = gantry(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains("error[C017]") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = gantry(&["calibrate", "--write"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = gantry(&["explain", "C017"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("C017"), "{out}");
    let _ = std::fs::remove_dir_all(&empty);
}

/// The H200 has the H100's compute die: its inference factors are the
/// H100's fitted `infer` record, factor by factor (the fit's bookkeeping,
/// `fit_rows` and `loo_*`, stays with the H100, whose rows it describes).
/// A refit of the H100 that is not copied fails here.
#[test]
fn h200_takes_the_h100_inference_calibration() {
    let c = gantry::check_files(
        &[
            "stdlib/hardware/h100.gantry".to_string(),
            "stdlib/hardware/h200.gantry".to_string(),
        ],
        &[],
    );
    assert!(!c.has_errors(), "{}", c.render(false));
    let infer = |d: &str| -> Vec<(String, f64)> {
        c.program.devices[d]
            .efficiency
            .iter()
            .filter(|(k, _)| k.starts_with("infer."))
            .filter(|(k, _)| !fit::RECORD_KEYS.iter().any(|r| k.ends_with(r)))
            // The framework's and the engine's host times and the memory
            // reserve are not lent (docs/LANGUAGE.md, "Borrowed factors").
            .filter(|(k, _)| {
                !gantry_lang::check::NOT_LENT
                    .iter()
                    .any(|n| k.rsplit('.').next() == Some(*n))
            })
            .map(|(k, q)| (k.clone(), q.value))
            .collect()
    };
    let (h100, h200) = (infer("H100_SXM"), infer("H200_SXM"));
    assert!(!h100.is_empty());
    assert_eq!(h100, h200);
    // It is borrowed by name, so a refit of the H100 moves the H200.
    assert_eq!(
        c.program.devices["H200_SXM"]
            .borrowed
            .get("infer")
            .map(String::as_str),
        Some("H100_SXM")
    );
}

/// `--write` on a copy of the tree whose `vLLM_0_8_3` engine declares
/// nothing (the ideal engine), with only that engine's reference file
/// (section A1): the fit writes back exactly the record the stdlib holds
/// (an engine is fitted on its own rows only, from the ideal engine, so
/// the rows decide it and nothing else), the device records are untouched
/// (serving rows fit no device factor), and the output names the engine,
/// its terms and what the rows do not identify.
#[test]
fn write_fits_an_engine_into_a_copy() {
    let root = temp_dir("engine");
    copy_dir(Path::new("stdlib"), &root.join("stdlib"));
    let refdir = root.join("examples/reference");
    std::fs::create_dir_all(&refdir).expect("dir");
    let name = "s05_a_a100_tp8.gantry";
    std::fs::copy(
        Path::new("examples/reference").join(name),
        refdir.join(name),
    )
    .expect("copy");
    // Its rows replay the runs' recorded requests.
    copy_dir(
        Path::new("examples/reference/requests"),
        &refdir.join("requests"),
    );
    let file = root.join("stdlib/engines/vllm.gantry");
    let fitted = std::fs::read_to_string(&file).expect("read");
    let start = fitted.find("engine vLLM_0_8_3 {").expect("the engine");
    let end = start + fitted[start..].find('}').expect("its end");
    let ideal = format!(
        "{}engine vLLM_0_8_3 {{\n{}",
        &fitted[..start],
        &fitted[end..]
    );
    std::fs::write(&file, &ideal).expect("write");
    let hardware = |root: &Path| -> Vec<String> {
        gantry::gantry_files(&root.join("stdlib/hardware"))
            .into_iter()
            .map(|p| std::fs::read_to_string(p).expect("read"))
            .collect()
    };
    let before = hardware(&root);
    let (code, out, err) = gantry_in(
        Some(&root),
        &["calibrate", "--fit", "examples/reference", "--write"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("engine vLLM_0_8_3"), "{out}");
    assert!(out.contains("not identified by the rows"), "{out}");
    assert!(
        out.contains("wrote stdlib/engines/vllm.gantry (engine vLLM_0_8_3)"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), fitted);
    assert_eq!(hardware(&root), before);
    let _ = std::fs::remove_dir_all(&root);
}

/// The KV cache the serving rows' servers logged, against the simulator's
/// (`memory_utilization = 0.9` in each file, vLLM's default). Section B's
/// server log (vLLM 0.14.1, one H200, FP8 KV): "GPU KV cache size:
/// 348,304 tokens". Section A3's (vLLM 0.8.3 V0, TP 4 PP 2 on A100-40GB):
/// "Maximum concurrency for 131072 tokens per request: 3.12x", 3.12 x
/// 131072 tokens over the pipeline's virtual engines.
///
/// The simulator leaves out memory the servers hold, so its caches must
/// be at least the logged ones (checked), and larger by what is left out:
/// - B (+11%): the H200's runtime total is 139.81 GiB, so the server's
///   share is 125.83 GiB; less the logged 67.7 GiB of weights and 53.15
///   GiB of KV that leaves 4.98 GiB for the profiling run and non-torch
///   memory, of which the model holds back 1.10 GiB (sampling 1024
///   sequences); and the model prices the checkpoint's bf16 embedding and
///   output layer at fp8 (1.96 GiB less than the logged weights).
///   Before the stdlib's capacities were the runtime totals (141e9 B for
///   the H200, 7.6 GiB of the server's share less) these errors
///   cancelled to -1.3%.
/// - A3 (+21%): about 3.2 GiB per GPU that V0 holds outside the weights,
///   the KV cache and the modelled profiling peak (NCCL and custom
///   all-reduce buffers for TP 4 PP 2).
#[test]
fn kv_caches_match_the_serving_logs() {
    let cases = [
        (
            "examples/reference/s01_b1_h200_sharegpt.gantry",
            "s01_b1_1_plan",
            348_304.0,
            0.12,
        ),
        (
            "examples/reference/s02_b2_h200_multiturn.gantry",
            "s02_b2_1_plan",
            348_304.0,
            0.12,
        ),
        (
            "examples/reference/s06_a_a100_tp4_pp2.gantry",
            "s06_a3_1_plan",
            3.12 * 131_072.0,
            0.25,
        ),
    ];
    for (file, plan, logged, tol) in cases {
        let (code, out, err) = gantry(&["plan", file, "--plan", plan, "--format", "json"]);
        assert_eq!(code, 0, "{file} {plan}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let best = &v["best"];
        let per_engine = best["kv_capacity_tokens"]
            .as_f64()
            .expect("kv_capacity_tokens");
        // A pipeline's virtual engines each hold a `pp`-th of the cache.
        let pp = best["pools"][0]["pp"].as_f64().unwrap_or(1.0);
        let tokens = per_engine * pp;
        let err = tokens / logged - 1.0;
        assert!(
            err >= 0.0,
            "{plan}: {tokens} KV tokens, below the {logged} logged although the model leaves memory out"
        );
        assert!(
            err <= tol,
            "{plan}: {tokens} KV tokens against {logged} logged ({:+.1}%, allowed {:.0}%)",
            100.0 * err,
            100.0 * tol
        );
    }
}

/// The prefix caches the A runs leave for the next run (`after`), against
/// what the servers logged, which no input tells the simulator: A3's V0
/// server (`lws-run-2.sh`) prints a cumulative prefix-cache hit rate of
/// 0.00% through its QPS 1 run and 51.66% after the four runs. Each
/// virtual engine of V0's pipeline keeps its own cache, so a prompt is
/// found only on an engine that served it before (a run with the prompts
/// spread over one engine's cache would find all but their last partial
/// block, about 97%, in each later run: 72.5% over four). A1's one
/// replica finds every prompt but its last partial 16-token block from
/// its second run on: 7.5 of 213.3 tokens recomputed on average, 96.5%
/// found (the runs' `input_lens`).
#[test]
fn prefix_caches_match_the_serving_logs() {
    let share = |file: &str, plan: &str| -> f64 {
        let (code, out, err) = gantry(&["plan", file, "--plan", plan, "--format", "json"]);
        assert_eq!(code, 0, "{file} {plan}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["best"]["prefix_cached_share"].as_f64().unwrap_or(0.0)
    };
    let a3 = "examples/reference/s06_a_a100_tp4_pp2.gantry";
    let runs: Vec<f64> = (1..=4)
        .map(|k| share(a3, &format!("s06_a3_{k}_plan")))
        .collect();
    assert_eq!(runs[0], 0.0, "the first run is cold: {runs:?}");
    // The same prompts in every run: the cumulative rate is the runs' mean.
    let cumulative = runs.iter().sum::<f64>() / 4.0;
    assert!(
        (cumulative - 0.5166).abs() <= 0.03,
        "A3: {:.1}% of the prompt tokens found over the four runs ({runs:?}), the log 51.66%",
        100.0 * cumulative
    );
    assert!(runs[1] < runs[2] && runs[2] < runs[3], "{runs:?}");
    let a1 = "examples/reference/s05_a_a100_tp8.gantry";
    for k in 2..=4 {
        let s = share(a1, &format!("s05_a1_{k}_plan"));
        assert!((s - 0.965).abs() <= 0.005, "A1.{k}: {s}");
    }
}
