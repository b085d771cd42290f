//! The `gantry` binary end to end: exit codes, JSON diagnostics, fmt,
//! plan, search and validate on bundled files.

use std::process::Command;

fn gantry(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("gantry-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.to_string_lossy().into_owned()
}

#[test]
fn check_exit_codes() {
    let (code, _, err) = gantry(&["check", "examples/llm_train.gantry"]);
    assert_eq!(code, 0, "{err}");
    let bad = temp("bad.gantry", "let x = 80 GB + 3 GB/s\n");
    let (code, _, err) = gantry(&["check", &bad]);
    assert_eq!(code, 1);
    assert!(err.contains("L040") && err.contains("1 error"), "{err}");
    // Usage errors exit 2.
    let (code, _, _) = gantry(&["check"]);
    assert_eq!(code, 2);
    let (code, _, _) = gantry(&["check", "--format", "yaml", &bad]);
    assert_eq!(code, 2);
    let (code, _, _) = gantry(&["frobnicate"]);
    assert_eq!(code, 2);
    // Colour only on a terminal: piped output has no escape codes.
    assert!(!err.contains('\u{1b}'));
}

#[test]
fn check_json_contract() {
    let bad = temp("bad2.gantry", "let a = 1\nlet a = 2\nlet b = 2 GB + 1 s\n");
    let (code, out, _) = gantry(&["check", "--format", "json", &bad]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("a JSON array");
    let arr = v.as_array().expect("array");
    assert!(arr.len() >= 2, "{out}");
    for d in arr {
        for k in [
            "code", "severity", "message", "file", "line", "column", "start", "end",
        ] {
            assert!(d.get(k).is_some(), "missing {k} in {d}");
        }
        assert!(d["line"].as_u64().is_some_and(|l| l >= 1));
    }
    assert!(arr.iter().any(|d| d["code"] == "L031" && d["line"] == 2));
}

#[test]
fn help_on_every_subcommand() {
    for sub in [
        "check",
        "fmt",
        "plan",
        "validate",
        "study",
        "explain",
        "run",
        "kernels",
        "calibrate",
    ] {
        let (code, out, _) = gantry(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub} --help");
        assert!(out.contains("Usage"), "{sub}: {out}");
    }
}

#[test]
fn fmt_check_and_write() {
    let f = temp(
        "fmt.gantry",
        "device   D{power 700W\n compute {bf16=1 TFLOP/s} // c\n memory hbm = 1 GB @ 1 GB/s}\n",
    );
    let (code, _, _) = gantry(&["fmt", "--check", &f]);
    assert_eq!(code, 1);
    let (code, _, _) = gantry(&["fmt", &f]);
    assert_eq!(code, 0);
    let (code, _, err) = gantry(&["fmt", "--check", &f]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&f).expect("read");
    assert!(
        text.contains("// c") && text.contains("power 700 W"),
        "{text}"
    );
}

#[test]
fn plan_fix_json_and_errors() {
    let (code, out, err) = gantry(&[
        "plan",
        "examples/reference/b01_22b.gantry",
        "--plan",
        "b01_gpt_22b_full_recompute",
        "--fix",
        "tp=8,dp=1",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["schema"], "gantry.plan/1");
    assert_eq!(v["parallelism"]["tp"], 8);
    // A contradictory pin is a diagnostic naming the knob, not a panic.
    let (code, _, err) = gantry(&["plan", "examples/reference/b01_22b.gantry", "--fix", "tp=3"]);
    assert_eq!(code, 1);
    assert!(err.contains("C002") && err.contains("tp"), "{err}");
    let (code, _, err) = gantry(&["plan", "examples/reference/b01_22b.gantry", "--fix", "tp"]);
    assert_eq!(code, 2);
    assert!(err.contains("C006"), "{err}");
}

#[test]
fn search_with_exports() {
    let (code, out, err) = gantry(&[
        "plan",
        "examples/reference/b01_22b.gantry",
        "--plan",
        "b01_gpt_22b_sp_selective",
        "--pin",
        "tp=8",
        "--format",
        "json",
        "--top",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    for k in [
        "evaluated",
        "pruned",
        "egraph_nodes",
        "stop_reason",
        "seconds",
        "optimality_gap",
    ] {
        assert!(v["search"].get(k).is_some(), "search.{k}");
    }
    assert!(
        v["placement"]["ranks"]
            .as_array()
            .is_some_and(|r| r.len() == 8)
    );
    assert!(
        v["top"]
            .as_array()
            .is_some_and(|t| !t.is_empty() && t.len() <= 3)
    );
    let (code, out, _) = gantry(&[
        "plan",
        "examples/reference/b01_22b.gantry",
        "--plan",
        "b01_gpt_22b_sp_selective",
        "--export",
        "megatron",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("--tensor-model-parallel-size"));
    let (code, out, _) = gantry(&["plan", "examples/dlrm_train.gantry", "--export", "torchrec"]);
    assert_eq!(code, 0);
    assert!(out.contains("gantry.torchrec/1"));
}

#[test]
fn validate_and_study_run() {
    let (code, out, err) = gantry(&["validate"]);
    assert_eq!(code, 0, "{err}");
    for s in ["section A", "section B", "section C", "section D"] {
        assert!(out.contains(s), "{out}");
    }
    let (code, out, err) = gantry(&[
        "study",
        "examples/codesign_study.gantry",
        "--study",
        "fleet_size",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("study fleet_size"));
}

/// A full-scale run is refused before anything is allocated (R007), and
/// a scaled one prints the gradient check.
#[test]
fn run_refuses_full_scale_and_checks_gradients() {
    let (code, _, err) = gantry(&["run", "examples/reference/a01_gpt_1p7b.gantry"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("R007") && err.contains("--scale"), "{err}");
    // The pinned Meta configuration is 16,384 devices: refused too.
    let (code, _, err) = gantry(&[
        "run",
        "examples/llm_train.gantry",
        "--plan",
        "llama3_405b_meta",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("R007") && err.contains("16384 devices"),
        "{err}"
    );
    // The plan's `simulate` scale, with `--scale` keys over it.
    let (code, out, err) = gantry(&[
        "run",
        "examples/llm_train.gantry",
        "--devices",
        "4",
        "--scale",
        "batch=4",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("bind batch=4 seq=16"), "{out}");
    let (code, out, err) = gantry(&[
        "run",
        "examples/llm_train.gantry",
        "--fix",
        "dp=1,tp=2,cp=2,pp=2,virtual_stages=2,microbatch=1,sequence_parallel=true",
        "--scale",
        "layers=4,d_model=32,heads=4,kv_heads=2,d_ff=48,vocab=40,seq=8,batch=4",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("gradients of one step"), "{out}");
    assert!(out.contains("in 2 virtual stages each"), "{out}");
    let (code, out, _) = gantry(&[
        "run",
        "examples/llm_train.gantry",
        "--grad",
        "off",
        "--fix",
        "dp=2,tp=1,pp=1",
        "--scale",
        "layers=2,d_model=32,heads=4,kv_heads=2,d_ff=48,vocab=40,seq=8,batch=4",
    ]);
    assert_eq!(code, 0);
    assert!(!out.contains("gradients of one step"), "{out}");
}
