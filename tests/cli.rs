//! The `gantry` binary end to end: exit codes, JSON diagnostics, fmt,
//! plan, search and validate on bundled files.

use std::process::Command;

mod common;
use common::gantry;

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
    assert_eq!(v["schema"], "gantry.plan/2");
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
        "elapsed_s",
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
    // torchtitan: a TOML job config that parses, for the llama3 405B flavor.
    let (code, out, err) = gantry(&[
        "plan",
        "examples/reference/f15_llama31_405b_512gpu.gantry",
        "--export",
        "torchtitan",
    ]);
    assert_eq!(code, 0, "{err}");
    let t: toml::Table = toml::from_str(&out).expect("toml");
    assert_eq!(t["model"]["flavor"].as_str(), Some("405B"));
    let (code, out, err) = gantry(&[
        "plan",
        "examples/reference/b01_22b.gantry",
        "--plan",
        "b01_gpt_22b_sp_selective",
        "--export",
        "torchtitan",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[C021]") && out.is_empty(), "{err}");
    let (code, out, _) = gantry(&["plan", "examples/dlrm_train.gantry", "--export", "torchrec"]);
    assert_eq!(code, 0);
    assert!(out.contains("gantry.torchrec/2"));
    // A target the plan cannot satisfy: exit 1, C021, no artifact.
    let (code, out, err) = gantry(&["plan", "examples/dlrm_train.gantry", "--export", "megatron"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[C021]") && !out.contains("--num-layers"),
        "{err}"
    );
    let (code, out, err) = gantry(&[
        "plan",
        "examples/reference/b01_22b.gantry",
        "--plan",
        "b01_gpt_22b_sp_selective",
        "--export",
        "torchrec",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[C021]") && !out.contains("gantry.torchrec"),
        "{err}"
    );
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

/// A ZeRO-3 run says why its data-parallel bytes are not the cost
/// model's: the model prices the parameter gathers before each pass, the
/// run steps as ZeRO-2 (docs/RUNTIME.md); a ZeRO-2 run's bytes agree and
/// carry no such note.
#[test]
fn run_says_why_zero3_traffic_differs() {
    let scale = "layers=2,d_model=32,heads=4,kv_heads=2,d_ff=48,vocab=40,seq=8,batch=4";
    let (code, out, err) = gantry(&[
        "run",
        "examples/llm_train.gantry",
        "--fix",
        "dp=4,tp=1,pp=1,zero=3",
        "--scale",
        scale,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("steps ZeRO-3 as ZeRO-2"), "{out}");
    let (code, out, err) = gantry(&[
        "run",
        "examples/llm_train.gantry",
        "--fix",
        "dp=4,tp=1,pp=1,zero=2",
        "--scale",
        scale,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("ZeRO-2:"), "{out}");
}

/// A run with expert and tensor parallelism says why its expert bytes
/// are not the cost model's (each tensor-parallel rank dispatches every
/// token; the model prices Megatron-LM's 1/tp share); without tensor
/// parallelism no note.
#[test]
fn run_says_why_expert_and_recomputed_traffic_differs() {
    let (code, out, err) = gantry(&[
        "run",
        "examples/moe_train.gantry",
        "--fix",
        "dp=2,tp=2,pp=1,ep=2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dispatches every token here"), "{out}");
    let (code, out, err) = gantry(&[
        "run",
        "examples/moe_train.gantry",
        "--fix",
        "dp=2,tp=1,pp=1,ep=2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("expert all-to-all") && !out.contains("dispatches every token"),
        "{out}"
    );
    // Full recomputation: the model counts the recomputed forward's
    // collectives, the run does not recompute.
    let scale = "layers=2,d_model=32,heads=4,kv_heads=2,d_ff=48,vocab=40,seq=8,batch=4";
    for (fix, note) in [
        ("dp=1,tp=2,pp=1,recompute=full", true),
        ("dp=1,tp=2,pp=1,recompute=selective", false),
    ] {
        let (code, out, err) = gantry(&[
            "run",
            "examples/llm_train.gantry",
            "--fix",
            fix,
            "--scale",
            scale,
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            out.contains("the run does not recompute"),
            note,
            "{fix}: {out}"
        );
    }
}

/// With stderr's reader gone (`gantry check DIR 2>&1 | head -1`), a
/// failing command still ends with its own exit code: the diagnostic is
/// dropped, not a panic (exit 101 from `eprint!` on a closed pipe).
#[test]
fn a_closed_stderr_keeps_the_exit_code() {
    for args in [
        &["check", "/tmp"][..],
        &["check", "no-such-file.gantry"][..],
    ] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(writer)
            .status()
            .expect("runs");
        assert_eq!(status.code(), Some(1), "{args:?}");
    }
}

/// Sizes whose element counts overflow 64 bits are refused, not wrapped
/// to a tiny estimate that let the run start and panic: past 2^63
/// elements the scaled workload no longer checks (R004 with the
/// checker's L046), past 2^61 the runtime's memory guard refuses it (R007).
#[test]
fn run_refuses_sizes_that_overflow() {
    for scale in [
        "seq=4294967296,batch=4294967296",
        "seq=4294967295,batch=4294967296",
        "seq=65536,batch=281474976710656",
    ] {
        let (code, _, err) = gantry(&["run", "examples/llm_train.gantry", "--scale", scale]);
        no_panic(code, &err);
        assert_eq!(code, 1, "{scale}: {err}");
        assert!(
            err.contains("error[R004]") && err.contains("L046") && err.contains("2^63 elements"),
            "{scale}: {err}"
        );
    }
    let scale = "seq=134217728,batch=134217728";
    let (code, _, err) = gantry(&["run", "examples/llm_train.gantry", "--scale", scale]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{scale}: {err}");
    assert!(
        err.contains("error[R007]") && err.contains("more than any memory holds"),
        "{scale}: {err}"
    );
}

/// `--max-memory` above the machine's memory is capped at it: the run is
/// refused with R007 instead of aborting on an allocation failure.
#[cfg(target_os = "linux")]
#[test]
fn max_memory_is_capped_at_the_machines_memory() {
    let (code, _, err) = gantry(&[
        "run",
        "examples/llm_train.gantry",
        "--max-memory",
        "1e300",
        "--scale",
        "d_model=1048576",
    ]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("note: --max-memory 1e300 GB is more than this machine's")
            && err.contains("error[R007]"),
        "{err}"
    );
}

/// A step shorter than the trace's nanosecond is C021 naming it, not a
/// trace without a slice (a one-wide Llama prefill prices 0.3 ns).
#[test]
fn a_trace_of_a_sub_nanosecond_step_is_refused() {
    let root = std::fs::canonicalize(".").expect("root");
    let f = temp(
        "tiny_step.gantry",
        &format!(
            "import \"{0}/stdlib/hardware/dgx_h100.gantry\"\nimport \"{0}/stdlib/models/llama.gantry\"\n\
             workload W {{\n  model Llama(layers = 1, d_model = 1, heads = 1, d_ff = 1, vocab = 1)\n  prefill {{ batch = 1, prompt = 1, dtype = bf16 }}\n}}\n\
             plan P on DGX_H100 for W {{\n  fix tp = 1, pp = 1, dp = 1\n}}\n",
            root.display()
        ),
    );
    let (code, out, err) = gantry(&["plan", &f, "--export", "trace"]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.is_empty()
            && err.contains("error[C021]")
            && err.contains("shorter than the trace's resolution of 1 ns"),
        "{out}{err}"
    );
}

/// A one-wide Llama's figures keep their digits: cost per million
/// samples, MFU and TFLOP/s per device read `$0.000`, `0.0% / 0.0%` and
/// `0.0`, which are nonzero.
#[test]
fn tiny_figures_are_printed_with_significant_digits() {
    let root = std::fs::canonicalize(".").expect("root");
    let f = temp(
        "tiny_figures.gantry",
        &format!(
            "import \"{0}/stdlib/hardware/dgx_h100.gantry\"\nimport \"{0}/stdlib/models/llama.gantry\"\n\
             workload W {{\n  model Llama(layers = 1, d_model = 1, heads = 1, d_ff = 1, vocab = 1)\n  prefill {{ batch = 1, prompt = 1, dtype = bf16 }}\n}}\n\
             plan P on DGX_H100 for W {{\n  fix tp = 1, pp = 1, dp = 1\n}}\n",
            root.display()
        ),
    );
    let (code, out, err) = gantry(&["plan", &f]);
    assert_eq!(code, 0, "{err}");
    for nonsense in ["$0.000 ", "0.0% / 0.0%"] {
        assert!(!out.contains(nonsense), "{nonsense}: {out}");
    }
    let cost = out
        .lines()
        .find(|l| l.contains("cost per million samples"))
        .expect("cost row");
    assert!(cost.contains('e'), "{cost}");
}

/// A tiny `--max-memory` is printed with significant figures in R007
/// (`1e-300` read `more than the 0.000 GB allowed`).
#[test]
fn a_tiny_max_memory_is_printed_with_its_digits() {
    let (code, _, err) = gantry(&["run", "examples/llm_train.gantry", "--max-memory", "1e-300"]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[R007]")
            && err.contains("more than the 1.000e-300 GB allowed")
            && !err.contains("0.000 GB"),
        "{err}"
    );
}

/// `--tolerance 0` (or any value below float32's epsilon) is a usage
/// error naming the floor: runs need not be bit-exact (this one differs by
/// 4.6e-7, asserted below), and R001 called the
/// rounding a runtime bug. A tolerance tighter than the default that is
/// missed says so instead of calling it a bug.
#[test]
fn a_tolerance_below_float_rounding_is_a_usage_error() {
    let f = "examples/llm_train.gantry";
    for t in ["0", "1e-9", "0.0000001"] {
        let (code, out, err) = gantry(&["run", f, &format!("--tolerance={t}")]);
        assert_eq!(code, 2, "{t}: {err}");
        assert!(
            out.is_empty() && err.contains("float32's epsilon"),
            "{t}: {err}"
        );
    }
    // Deterministic: this run's rounding (4.6e-7) exceeds 2e-7.
    let (code, _, err) = gantry(&["run", f, "--tolerance=2e-7"]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[R001]")
            && err.contains("> 2e-7")
            && err.contains("tighter than the default 1e-4")
            && !err.contains("runtime bug unless"),
        "{err}"
    );
}

/// Nested repeats run every iteration: more than 10^6 op instances is
/// R007 before anything runs (this ran 10^9 relus and never ended).
#[test]
fn run_refuses_unbounded_nested_repeats() {
    let f = temp(
        "nested_repeat.gantry",
        "model M {
  input x: f32[batch, 4]
  y = x
  repeat 1000 {
    repeat 1000 {
      repeat 1000 {
        y = relu(y)
      }
    }
  }
  output o = y
}
workload w {
  model M
  prefill { batch = 8 }
  simulate \"batch=4\"
}
",
    );
    let (code, _, err) = gantry(&["run", &f]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[R007]") && err.contains("op instances"),
        "{err}"
    );
}

/// A fused attention keeps no scores, so a long sequence at a tiny width
/// passed the memory guard: `seq=1000000` compared 10^12 pairs of rows
/// and ran for days in 41 MB. More than 10^10 multiply-adds per forward
/// pass is R007 before anything runs.
#[test]
fn run_refuses_work_that_memory_does_not_bound() {
    let scale = "layers=1,d_model=4,heads=1,kv_heads=1,d_ff=4,vocab=4,seq=1000000,batch=1";
    let (code, _, err) = gantry(&["run", "examples/llm_train.gantry", "--scale", scale]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[R007]") && err.contains("multiply-adds"),
        "{err}"
    );
}

/// An output that overflows f32 on the devices and in the reference alike
/// is not a runtime bug (it was R001 with an infinite error): the run
/// passes and warns that the reference's output is not finite.
#[test]
fn an_output_overflowing_f32_on_both_sides_is_a_warning_not_r001() {
    let f = temp(
        "overflow.gantry",
        "model M {
  input x: f32[batch, 4]
  output y = x * 1e39
}
workload w {
  model M
  prefill { batch = 8 }
  simulate \"batch=4\"
}
",
    );
    for fix in ["tp=1,dp=1", "tp=1,dp=2"] {
        let (code, out, err) = gantry(&["run", &f, "--fix", fix]);
        no_panic(code, &err);
        assert_eq!(code, 0, "{fix}: {out}{err}");
        assert!(!err.contains("R001"), "{fix}: {err}");
        assert!(
            err.contains("warning: 16 values of the reference's `y` are not finite"),
            "{fix}: {err}"
        );
    }
}

/// A model with no arithmetic: its FLOP figures are 0, not -0.0 (the
/// empty f64 sum), and a step with no work at all is a C016 that says
/// so, not one that calls itself a bug.
#[test]
fn a_model_without_arithmetic_prints_zero_and_says_it_does_no_work() {
    let model = |phase: &str| {
        format!(
            "import \"stdlib/hardware/dgx_h100.gantry\"
model M() {{
  input x: f32[batch, 4]
  output y = x
}}
workload w {{
  model M
  prefill {{ {phase} }}
}}
plan p on DGX_H100 for w {{
  search tp in {{1, 2}}, dp = auto
}}
"
        )
    };
    let f = temp("identity_prompt.gantry", &model("batch = 8, prompt = 16"));
    let (code, out, err) = gantry(&["plan", &f]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("MFU / HFU") && !out.contains("-0.0"), "{out}");
    let (code, out, err) = gantry(&["plan", &f, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let mfu = v["metrics"]["mfu"].as_f64().expect("mfu");
    assert!(mfu == 0.0 && mfu.is_sign_positive(), "{out}");
    let f = temp("identity.gantry", &model("batch = 8"));
    let (code, _, err) = gantry(&["plan", &f]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[C016]") && err.contains("does no work") && !err.contains("bug"),
        "{err}"
    );
}

/// `gantry calibrate` prints only declarations `gantry check` takes: a
/// reserved word or built-in name, or a power above 1 MW, is a usage
/// error before anything is measured.
#[test]
fn calibrate_refuses_declarations_the_checker_would_refuse() {
    for (args, code_wanted) in [
        (&["--name", "plan"][..], "[L010]"),
        (&["--name", "len"], "[L031]"),
        (&["--power", "1e308"], "[L046]"),
    ] {
        let mut all = vec!["calibrate", "--quick"];
        all.extend_from_slice(args);
        let (code, out, err) = gantry(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(code_wanted), "{args:?}: {err}");
    }
}

/// No panic, whatever the command: a panic exits 101 and says "panicked".
fn no_panic(code: i32, err: &str) {
    assert!(code != 101 && !err.contains("panicked"), "{code}: {err}");
}

/// The exit-code table of docs/PLANNER.md ("Exit codes"), one row at a
/// time: 0 ok, 1 diagnostics or an infeasible point, 2 usage.
#[test]
fn exit_code_table() {
    // 0: a clean check, a feasible fixed point, a search.
    let (code, _, err) = gantry(&["check", "examples/llm_train.gantry"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = gantry(&["plan", "examples/reference/b01_22b.gantry"]);
    assert_eq!(code, 0, "{err}");
    // 1: diagnostics in a file.
    let bad = temp("exit1.gantry", "let x = 80 GB + 3 GB/s\n");
    let (code, _, _) = gantry(&["check", &bad]);
    assert_eq!(code, 1);
    // 1: pins that do not fit the plan (C001-C005, C012).
    let (code, _, err) = gantry(&["plan", "examples/reference/b01_22b.gantry", "--fix", "tp=3"]);
    assert_eq!(code, 1, "{err}");
    // 1: an infeasible --fix (over HBM, or missing a `subject to`): the
    // point is still reported on stdout.
    let (code, out, err) = gantry(&[
        "plan",
        "examples/llm_train.gantry",
        "--fix",
        "tp=8,pp=4,dp=2,microbatch=1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("C010") && err.contains("INFEASIBLE") && err.contains("memory <="),
        "{err}"
    );
    assert!(out.contains("INFEASIBLE"), "{out}");
    // 2: usage, from clap or a malformed/out-of-range pin (C006), the same
    // code whichever check finds it, in plan, search and run alike.
    let (code, _, _) = gantry(&["plan"]);
    assert_eq!(code, 2);
    for args in [
        &["plan", "examples/llm_train.gantry", "--fix", "tp"][..],
        &["plan", "examples/llm_train.gantry", "--fix", "tp=0"],
        &["plan", "examples/llm_train.gantry", "--pin", "tp=0"],
        &["plan", "examples/llm_train.gantry", "--fix", "zero=4"],
        &["run", "examples/llm_train.gantry", "--fix", "tp=0"],
    ] {
        let (code, _, err) = gantry(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("C006"), "{args:?}: {err}");
    }
}

/// `--pin tp=0` divided by zero in the search; `--fix
/// tp=4611686018427387904,pp=4` overflowed the device product.
#[test]
fn pins_are_bounded_and_products_checked() {
    for pin in ["tp=0", "pp=0", "cp=0", "dp=0", "microbatch=0", "batch=-1"] {
        for flag in ["--pin", "--fix"] {
            let (code, _, err) = gantry(&["plan", "examples/llm_train.gantry", flag, pin]);
            no_panic(code, &err);
            assert_eq!(code, 2, "{flag} {pin}: {err}");
            assert!(err.contains("C006"), "{flag} {pin}: {err}");
        }
    }
    let (code, _, err) = gantry(&[
        "plan",
        "examples/llm_train.gantry",
        "--fix",
        "tp=4611686018427387904,pp=4",
    ]);
    no_panic(code, &err);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("16777216"), "{err}");
    // Every pin at the bound: the product overflows i64, and is checked.
    let big = "tp=16777216,pp=16777216,cp=16777216,dp=16777216";
    for flag in ["--pin", "--fix"] {
        let (code, _, err) = gantry(&["plan", "examples/llm_train.gantry", flag, big]);
        no_panic(code, &err);
        assert_eq!(code, 1, "{flag}: {err}");
        assert!(
            err.contains("C001") || err.contains("C010"),
            "{flag}: {err}"
        );
    }
    let (code, _, err) = gantry(&["run", "examples/llm_train.gantry", "--fix", big]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{err}");
    // The knob named is the one pinned past the system, not `dp`.
    let (code, _, err) = gantry(&["plan", "examples/reference/b01_22b.gantry", "--fix", "cp=2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("C001") && err.contains("knob `cp`"), "{err}");
}

/// Pins that did nothing are errors; a pin over the file's `fix` warns.
#[test]
fn pins_the_plan_cannot_use() {
    let b01 = "examples/reference/b01_22b.gantry";
    for (pin, needle) in [
        ("batch=4096", "training plan"),
        ("ep=8", "no experts"),
        ("nodes=2", "node count"),
    ] {
        let (code, _, err) = gantry(&["plan", b01, "--fix", pin]);
        assert_eq!(code, 1, "{pin}: {err}");
        assert!(err.contains("C012") && err.contains(needle), "{pin}: {err}");
    }
    let (code, _, err) = gantry(&["plan", b01, "--pin", "ep=8"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("C012"), "{err}");
    let (code, _, err) = gantry(&["plan", b01, "--fix", "tpp=2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown knob `tpp`"), "{err}");
    // The plan fixes recompute = full: --fix overrides it, with a warning
    // that names both values.
    let (code, out, err) = gantry(&["plan", b01, "--fix", "microbatch=2"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("C013") && err.contains("microbatch=2") && err.contains("fix microbatch = 4"),
        "{err}"
    );
    assert!(out.contains("microbatch=2"), "{out}");
    // The same value: no warning.
    let (_, _, err) = gantry(&["plan", b01, "--fix", "microbatch=4"]);
    assert!(!err.contains("C013"), "{err}");
    // --fix evaluates one point: the search's flags are refused.
    let (code, _, err) = gantry(&["plan", b01, "--fix", "tp=8", "--pin", "pp=1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--fix") && err.contains("--pin"), "{err}");
}

/// `search tp in 1..1000000` ran 119 s and `batch in 1..10000000000`
/// aborted on an 80 GB allocation: both are refused before any work.
#[test]
fn search_space_is_bounded() {
    let head = r#"import "stdlib/hardware/dgx_h100.gantry"
import "stdlib/models/llama.gantry"
workload w {
  model Llama(layers = 4, d_model = 512, heads = 8, kv_heads = 8, d_ff = 1024, vocab = 1000)
  train { seq = 128, global_batch = 64, dtype = bf16, optimizer = adamw }
}
workload d {
  model Llama(layers = 4, d_model = 512, heads = 8, kv_heads = 8, d_ff = 1024, vocab = 1000)
  decode { batch = 8, context = 128, dtype = bf16 }
}
"#;
    let cases = [
        (
            "tp_range.gantry",
            "plan p on DGX_H100 for w {\n  search tp in 1..1000000\n  objective maximize tokens_per_s\n}\n",
            &["plan"][..],
            "C011",
        ),
        (
            "batch_range.gantry",
            "plan p on DGX_H100 for d {\n  search batch in 1..10000000000\n  objective maximize tokens_per_s\n}\n",
            &["plan"][..],
            "L046",
        ),
        (
            "vs_range.gantry",
            "plan p on DGX_H100 for w {\n  search virtual_stages in 1..100000, pp = 2\n  objective maximize tokens_per_s\n}\n",
            &["plan"][..],
            "C011",
        ),
        (
            "batch_fix.gantry",
            "plan p on DGX_H100 for d {\n  search batch in 1..1000000\n  objective maximize tokens_per_s\n}\n",
            &["plan", "--fix", "tp=1"][..],
            "C011",
        ),
    ];
    for (name, plan, args, want) in cases {
        let f = temp(name, &format!("{head}{plan}"));
        let mut a = vec![args[0], f.as_str()];
        a.extend_from_slice(&args[1..]);
        let started = std::time::Instant::now();
        let (code, _, err) = gantry(&a);
        no_panic(code, &err);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
        assert!(started.elapsed().as_secs() < 20, "{name} took too long");
    }
}

/// `/dev/zero` has a length of 0 in its metadata: every read is bounded
/// by the 64 MiB limit itself.
#[cfg(target_os = "linux")]
#[test]
fn unbounded_inputs_are_refused() {
    for args in [
        &["check", "/dev/zero"][..],
        &["plan", "/dev/zero"],
        &["fmt", "--check", "/dev/zero"],
    ] {
        let (code, _, err) = gantry(args);
        no_panic(code, &err);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("L006"), "{args:?}: {err}");
    }
    let (code, _, err) = gantry(&[
        "run",
        "examples/llm_train.gantry",
        "--plan-json",
        "/dev/zero",
    ]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("R002") && err.contains("byte limit"), "{err}");
}

/// A long chain of constants (`let a1 = a0 + 1`, ...) is evaluated one
/// inside the next: 3,000 links overflowed the stack and aborted the
/// process; now it is `L013` when each constant names a later one.
/// Declarations are evaluated in the order declared, so a chain whose
/// constants each name an earlier one is one level deep per link: checked
/// (it was `L013` too, the names sorting `a10000` before `a2`).
#[test]
fn long_constant_chains_are_l013_not_a_stack_overflow() {
    let n = 20_000;
    let up: String = std::iter::once("let a0 = 1\n".to_string())
        .chain((1..=n).map(|i| format!("let a{i} = a{} + 1\n", i - 1)))
        .collect();
    let down: String = (0..n)
        .map(|i| format!("let a{i} = a{} + 1\n", i + 1))
        .chain(std::iter::once(format!("let a{n} = 1\n")))
        .collect();
    let f = temp("chain_up.gantry", &up);
    let (code, _, err) = gantry(&["check", &f]);
    assert_eq!(code, 0, "chain_up.gantry: {err}");
    let f = temp("chain_down.gantry", &down);
    let (code, _, err) = gantry(&["check", &f]);
    no_panic(code, &err);
    assert_eq!(code, 1, "chain_down.gantry: {err}");
    assert!(
        err.contains("L013") && err.contains("1 error"),
        "chain_down.gantry: {err}"
    );
}

/// Flags that were silently ignored or disabled a check are usage errors.
#[test]
fn runtime_flags_are_validated() {
    let f = "examples/llm_train.gantry";
    let json = temp("plan.json", "{}");
    for args in [
        &["run", f, "--devices", "0"][..],
        &["run", f, "--max-memory", "nan"],
        &["run", f, "--max-memory", "-1"],
        &["run", f, "--max-memory", "inf"],
        &["run", f, "--tolerance=nan"],
        &["run", f, "--tolerance=-1"],
        &["run", f, "--tolerance=inf"],
        &["kernels", f, "--devices", "0"],
        &["calibrate", "--power", "nan"],
    ] {
        let (code, _, err) = gantry(args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    for other in [["--fix", "tp=2"], ["--devices", "4"]] {
        let (code, _, err) = gantry(&["run", f, "--plan-json", &json, other[0], other[1]]);
        assert_eq!(code, 2, "{other:?}: {err}");
        assert!(
            err.contains("--plan-json") && err.contains(other[0]),
            "{other:?}: {err}"
        );
    }
}

/// `--top 0` listed one design point (or deployment) anyway: a setting
/// silently changed. It is a usage error now, in either kind of plan.
#[test]
fn top_zero_is_a_usage_error() {
    for f in ["examples/llm_train.gantry", "examples/llm_serve.gantry"] {
        for bad in ["0", "-1", "x"] {
            let (code, out, err) = gantry(&["plan", f, &format!("--top={bad}")]);
            assert_eq!(code, 2, "{f} --top {bad}: {err}");
            assert!(
                out.is_empty() && err.contains("--top"),
                "{f} --top {bad}: {err}"
            );
        }
    }
}

/// `--jobs` starts that many threads: above 256 it is a usage error, not
/// a run that spends minutes (or forever) starting threads.
#[test]
fn thread_counts_are_bounded() {
    let f = "examples/codesign_study.gantry";
    for n in ["257", "100000", "18446744073709551615"] {
        for args in [
            &["study", f, "--jobs", n][..],
            &["merge", "absent-shard.json", "--jobs", n],
        ] {
            let (code, _, err) = gantry(args);
            no_panic(code, &err);
            assert_eq!(code, 2, "{args:?}: {err}");
            assert!(err.contains("at most 256 threads"), "{args:?}: {err}");
        }
    }
    let (code, out, err) = gantry(&["study", f, "--jobs", "256"]);
    assert_eq!(code, 0, "{err}");
    let (code, serial, err) = gantry(&["study", f, "--jobs", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, serial);
}

/// Spawns gantry with stdout piped, reads at most one line (or none) and
/// closes the pipe: the process must end quietly (exit 0, no panic).
fn closed_pipe(args: &[&str], read_first_line: bool) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    if let Some(out) = child.stdout.take()
        && read_first_line
    {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let out = child.wait_with_output().expect("waits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
}

/// `gantry kernels ... | head -1` (also `run`) panicked on the closed pipe.
#[test]
fn closed_stdout_ends_quietly() {
    let scale = "layers=2,d_model=32,heads=4,kv_heads=2,d_ff=48,vocab=40,seq=8,batch=4";
    let f = "examples/llm_train.gantry";
    closed_pipe(
        &["kernels", f, "--fix", "dp=1,tp=2", "--scale", scale],
        true,
    );
    closed_pipe(&["run", f, "--fix", "dp=2", "--scale", scale], true);
    closed_pipe(&["explain"], true);
    closed_pipe(&["plan", "examples/reference/b01_22b.gantry"], true);
    // calibrate prints once, at the end: the pipe is closed long before.
    closed_pipe(&["calibrate", "--quick"], false);
}

/// The checker's `efficiency` names are the ones the cost model reads,
/// plus what a fit records next to them (`fit_rows`, `loo_*`: the band
/// `Hardware::uncertainty` reads, not factors).
#[test]
fn efficiency_schema_matches_the_cost_model() {
    let lang: Vec<&str> = gantry_lang::check::EFFICIENCY
        .iter()
        .map(|(n, ..)| *n)
        .filter(|n| !gantry_compiler::fit::RECORD_KEYS.contains(n))
        .collect();
    let cost: Vec<&str> = gantry_compiler::hardware::FACTORS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(lang, cost);
    let f = temp(
        "eff.gantry",
        "device D {\n  compute { bf16 = 100 TFLOP/s }\n  memory hbm = 16 GB @ 1 TB/s\n  power 300 W\n  efficiency { matmull = 0.5, scale_up = 0.3, memory = 2 GB }\n}\n",
    );
    let (code, _, err) = gantry(&["check", "--color", "never", &f]);
    assert_eq!(code, 1, "{err}");
    for needle in ["did you mean `matmul`?", "did you mean `scaleup`?", "L041"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

const RELIABILITY: &str = "tests/inputs/_cli/reliability.gantry";

fn step_time(plan: &str) -> f64 {
    let (code, out, err) = gantry(&["plan", RELIABILITY, "--plan", plan, "--format", "json"]);
    assert_eq!(code, 0, "{plan}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    v["metrics"]["step_time_s"].as_f64().expect("step_time_s")
}

/// A fabric's `bandwidth` was ignored (issue 11): it is the per-port limit
/// on the NIC, so ports slower than the NICs slow the data-parallel
/// all-reduce, and faster ones change nothing.
#[test]
fn fabric_bandwidth_limits_the_nic() {
    let base = step_time("base");
    let slow = step_time("slow_ports");
    let fast = step_time("fast_ports");
    assert!(slow > 5.0 * base, "1 Gb/s ports: {slow} vs {base}");
    assert_eq!(fast, base, "ports faster than the NICs");
}

/// A node without a `link` priced tensor-parallel traffic at inf and was
/// picked as the best point (issue 11): now C014 naming the node, whether
/// pinned or searched; serving replicas, which do not talk, still run.
#[test]
fn a_link_the_node_does_not_declare_is_an_error_naming_it() {
    for plan in ["no_link", "no_link_search"] {
        let (code, out, err) = gantry(&["plan", RELIABILITY, "--plan", plan]);
        no_panic(code, &err);
        assert_eq!(code, 1, "{plan}: {err}");
        assert!(
            err.contains("C014") && err.contains("node `Linkless` declares no `link`"),
            "{plan}: {err}"
        );
        assert!(!out.contains("inf") && !out.contains("NaN"), "{out}");
    }
    let (code, _, err) = gantry(&["plan", RELIABILITY, "--plan", "no_link_serving"]);
    assert_eq!(code, 0, "{err}");
}

/// `subject to ttft <= 1 ns` on a training plan was treated as met.
#[test]
fn a_metric_the_plan_does_not_have_is_an_error() {
    for (plan, what) in [
        ("ttft_on_training", "constrains `ttft`"),
        ("tpot_objective", "optimizes `tpot`"),
    ] {
        for extra in [&[][..], &["--fix", "tp=8"]] {
            let mut args = vec!["plan", RELIABILITY, "--plan", plan];
            args.extend_from_slice(extra);
            let (code, _, err) = gantry(&args);
            assert_eq!(code, 1, "{plan}: {err}");
            assert!(err.contains("C015") && err.contains(what), "{plan}: {err}");
        }
    }
}

/// The new codes are in `gantry explain`.
#[test]
fn explain_knows_the_reliability_codes() {
    for c in ["C014", "C015", "C016"] {
        let (code, out, _) = gantry(&["explain", c]);
        assert_eq!(code, 0, "{c}");
        assert!(out.starts_with(c), "{out}");
    }
}

/// One rule for the default plan (README, "Which plan runs"): without
/// `--plan`, `plan` takes the plan declared first, not the alphabetically
/// first; `study` runs every study in declaration order.
#[test]
fn default_plan_is_the_first_declared() {
    let base = std::fs::read_to_string("tests/inputs/valid/plan.gantry").expect("input");
    let body = base
        .split("plan p on C")
        .next()
        .expect("declarations before the plan");
    let plans = "plan zeta on C for pretrain {\n  fix tp = 8, pp = 1\n  objective maximize tokens_per_s\n}\n\nplan alpha on C for pretrain {\n  fix tp = 4, pp = 1\n  objective maximize tokens_per_s\n}\n";
    let f = temp("two_plans.gantry", &format!("{body}{plans}"));
    let (_, out, err) = gantry(&["plan", &f, "--fix", "zero=1"]);
    assert!(out.starts_with("plan zeta:"), "{out}{err}");
    let (_, out, err) = gantry(&["plan", &f, "--plan", "alpha", "--fix", "zero=1"]);
    assert!(out.starts_with("plan alpha:"), "{out}{err}");
    let (_, out, err) = gantry(&["plan", &f, "--top", "1"]);
    assert!(out.starts_with("plan zeta:"), "{out}{err}");
}

/// Every diagnostic code written anywhere in the sources (`L0xx`, `C0xx`,
/// `R0xx` in the `.rs` files of every crate) is known to `gantry explain`
/// with its long text: a new code without a text fails here.
#[test]
fn explain_knows_every_code_in_the_sources() {
    fn rs_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                rs_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for d in ["src", "lang/src", "compiler/src", "runtime/src"] {
        rs_files(std::path::Path::new(d), &mut files);
    }
    // A code: one of L, C, R, then three digits, not inside a longer word.
    let mut codes = std::collections::BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source");
        let b = text.as_bytes();
        for i in 0..b.len().saturating_sub(3) {
            let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
            let word_end = b
                .get(i + 4)
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
            if word_start
                && word_end
                && matches!(b[i], b'L' | b'C' | b'R')
                && b[i + 1..i + 4].iter().all(u8::is_ascii_digit)
            {
                codes.insert(text[i..i + 4].to_string());
            }
        }
    }
    assert!(codes.len() > 60, "found only {codes:?}");
    for needed in ["L040", "C010", "R007"] {
        assert!(codes.contains(needed), "{needed} not found in {codes:?}");
    }
    let (code, list, _) = gantry(&["explain"]);
    assert_eq!(code, 0);
    for c in &codes {
        assert!(
            list.lines().any(|l| l.starts_with(c.as_str())),
            "`gantry explain` does not list {c}"
        );
        let (status, out, err) = gantry(&["explain", c]);
        assert_eq!(status, 0, "gantry explain {c}: {err}");
        let long = out.split_once("\n\n").map_or("", |(_, l)| l.trim());
        assert!(
            long.len() >= 60 && long.contains("Fix:"),
            "gantry explain {c} has no long text (add one in src/explain.rs):\n{out}"
        );
    }
    // Lowercase works; an unknown code is a usage error.
    assert_eq!(gantry(&["explain", "r007"]).0, 0);
    assert_eq!(gantry(&["explain", "X999"]).0, 2);
}

/// `gantry fmt DIR` formats every `.gantry` file beneath the folder and
/// nothing else; comments at the end of a line (after code, after an
/// opening or closing bracket) and at the end of the file stay where they
/// were (tests/inputs/_fmt: the input and its expected output).
#[test]
fn fmt_formats_folders_and_keeps_trailing_comments() {
    let src = std::fs::read_to_string("tests/inputs/_fmt/trailing_comments.gantry").expect("input");
    let want = std::fs::read_to_string("tests/inputs/_fmt/trailing_comments.gantry.expected")
        .expect("expected");
    assert!(
        !src.ends_with('\n'),
        "the input ends in a comment without a newline"
    );
    let dir = std::env::temp_dir().join(format!("gantry-fmt-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nested")).expect("dir");
    let a = dir.join("a.gantry");
    let b = dir.join("nested/b.gantry");
    let other = dir.join("notes.txt");
    for p in [&a, &b, &other] {
        std::fs::write(p, &src).expect("write");
    }
    let d = dir.to_string_lossy().into_owned();
    let (code, _, err) = gantry(&["fmt", "--check", &d]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("a.gantry") && err.contains("b.gantry"),
        "{err}"
    );
    let (code, _, err) = gantry(&["fmt", &d]);
    assert_eq!(code, 0, "{err}");
    for p in [&a, &b] {
        assert_eq!(
            std::fs::read_to_string(p).expect("read"),
            want,
            "{}",
            p.display()
        );
    }
    assert_eq!(std::fs::read_to_string(&other).expect("read"), src);
    assert_eq!(gantry(&["fmt", "--check", &d]).0, 0);
    // Every comment survives, on a line with code where it trailed code.
    for line in src.lines().filter(|l| l.contains("// after")) {
        let comment = &line[line.find("//").expect("comment")..];
        assert!(
            want.lines()
                .any(|l| l.ends_with(comment) && !l.trim_start().starts_with("//")),
            "`{comment}` no longer trails its line:\n{want}"
        );
    }
    // A folder without .gantry files is a usage error.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    assert_eq!(gantry(&["fmt", &empty.to_string_lossy()]).0, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--export` keeps stdout one document: with `--output FILE` the report
/// (JSON here, so it must parse) is on stdout and the export in the file;
/// without it, the export is on stdout and the report on stderr.
#[test]
fn export_output_keeps_stdout_one_document() {
    let dir = std::env::temp_dir().join(format!("gantry-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = "examples/reference/b01_22b.gantry";
    for (kind, marker) in [
        ("megatron", "--tensor-model-parallel-size"),
        ("trace", "traceEvents"),
    ] {
        let path = dir.join(format!("{kind}.out"));
        let p = path.to_string_lossy().into_owned();
        let (code, out, err) = gantry(&[
            "plan",
            file,
            "--plan",
            "b01_gpt_22b_sp_selective",
            "--format",
            "json",
            "--export",
            kind,
            "--output",
            &p,
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is one JSON document");
        assert_eq!(v["schema"], "gantry.plan/2");
        let written = std::fs::read_to_string(&path).expect("export written");
        assert!(written.contains(marker), "{written}");
        assert!(!out.contains(marker));
        // Without --output: only the export on stdout.
        let (code, out, err) = gantry(&[
            "plan",
            file,
            "--plan",
            "b01_gpt_22b_sp_selective",
            "--format",
            "json",
            "--export",
            kind,
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, written);
        assert!(err.contains("\"schema\""), "{err}");
    }
    let torch = dir.join("torchrec.json");
    let (code, out, err) = gantry(&[
        "plan",
        "examples/dlrm_train.gantry",
        "--export",
        "torchrec",
        "--output",
        &torch.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("plan "), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&torch).expect("written")).expect("json");
    assert_eq!(v["schema"], "gantry.torchrec/2");
    // --output needs --export; an unwritable path is a usage error.
    assert_eq!(gantry(&["plan", file, "--output", "x.txt"]).0, 2);
    let (code, _, _) = gantry(&[
        "plan",
        file,
        "--export",
        "megatron",
        "--output",
        "/nonexistent-dir/x.txt",
    ]);
    assert_eq!(code, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sources are cited by paper or upstream document, never by a path
/// outside the repository (`shared/data/reference-runs.md` is not in it;
/// issue 11). Covers the stdlib, the examples, the docs and the README.
#[test]
fn no_file_cites_a_path_outside_the_repository() {
    let mut files: Vec<std::path::PathBuf> = ["stdlib", "examples"]
        .iter()
        .flat_map(|d| gantry::gantry_files(std::path::Path::new(d)))
        .collect();
    files.extend(
        std::fs::read_dir("docs")
            .expect("docs/")
            .flatten()
            .map(|e| e.path()),
    );
    files.push("README.md".into());
    assert!(files.len() > 80, "{}", files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).expect("reads");
        for bad in ["reference-runs.md", "/work/", "shared/data/"] {
            assert!(!text.contains(bad), "{} cites `{bad}`", f.display());
        }
    }
}

/// `--fix` honours the plan's constraints: the serving batch it picks
/// meets them (it picked the largest batch that fit HBM, over the plan's
/// `memory <= 0.9 * hbm` and `tpot <= 50 ms`, and exited 1), and a pinned
/// point that misses one is INFEASIBLE in the text and `feasible: false`
/// in the JSON, not only on stderr (issue 11).
#[test]
fn fixed_points_meet_or_report_the_plans_constraints() {
    let decode = "examples/llm_decode.gantry";
    let (code, out, err) = gantry(&["plan", decode, "--fix", "tp=8,pp=1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("\n  feasible\n") && !err.contains("C010"),
        "{out}{err}"
    );
    // The same batch as the search pinned to that mesh.
    let (code, searched, err) = gantry(&["plan", decode, "--pin", "tp=8,pp=1"]);
    assert_eq!(code, 0, "{err}");
    let point = |s: &str| {
        s.lines()
            .find(|l| l.contains("design point:"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    assert_eq!(point(&out), point(&searched));
    // Fits HBM, misses `memory <= 0.9 * hbm` and `tpot <= 50 ms`.
    let (code, out, err) = gantry(&["plan", decode, "--fix", "tp=8,pp=1,batch=848"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("C010") && err.contains("tpot <= 50 ms"),
        "{err}"
    );
    assert!(
        out.contains("INFEASIBLE: misses `subject to memory <= (0.9 * hbm)`"),
        "{out}"
    );
    let (code, json, _) = gantry(&[
        "plan",
        decode,
        "--fix",
        "tp=8,pp=1,batch=848",
        "--format",
        "json",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["feasible"], serde_json::Value::Bool(false), "{json}");
}

/// C019 under arrivals that offer no rate (a burst, a closed loop) says
/// how the requests came: the offered rate is infinite there and printed
/// as "at inf req/s".
#[test]
fn c019_without_an_offered_rate_names_the_burst_or_the_loop() {
    let root = std::env::current_dir().expect("cwd");
    for (arrivals, words) in [
        ("burst()", "in a burst of 50 requests"),
        ("closed(concurrency = 8)", "from a closed loop of 8 clients"),
    ] {
        let f = temp(
            &format!("c019_{}.gantry", &arrivals[..5]),
            &format!(
                "import \"{root}/stdlib/hardware/dgx_h100.gantry\"
import \"{root}/stdlib/models/llama.gantry\"

workload w {{
  model Llama(layers = 2, d_model = 1024, heads = 8, kv_heads = 8, d_ff = 4096, vocab = 32000)
  serve {{
    arrivals = {arrivals}
    prompt = 512
    generate = 64
    slo = {{ ttft_p99 = 1 us, tpot_p99 = 1 us }}
    requests = 50
  }}
}}

plan p on DGX_H100 for w {{
  search tp in {{1}}, dp = auto
  objective maximize throughput_per_dollar
}}
",
                root = root.display()
            ),
        );
        let (code, _, err) = gantry(&["plan", &f]);
        no_panic(code, &err);
        assert_eq!(code, 1, "{arrivals}: {err}");
        assert!(
            err.contains("C019") && err.contains(words),
            "{arrivals}: {err}"
        );
        assert!(!err.contains("inf req/s"), "{arrivals}: {err}");
        // The 1 us targets print in us, not as "0.0 ms".
        assert!(
            err.contains("against 1.0 us") && !err.contains("0.0 ms"),
            "{arrivals}: {err}"
        );
    }
}

/// An inference workload whose batch cannot fit is not said to need
/// "gradients and optimizer state" (it keeps none) but its KV cache.
#[test]
fn inference_that_cannot_fit_names_the_kv_cache_not_gradients() {
    let root = std::env::current_dir().expect("cwd");
    let f = temp(
        "decode_too_long.gantry",
        &format!(
            "import \"{root}/stdlib/hardware/dgx_h100.gantry\"
import \"{root}/stdlib/models/llama.gantry\"

workload w {{
  model Llama(layers = 32, d_model = 4096, heads = 32, kv_heads = 8, d_ff = 14336, vocab = 128256)
  decode {{ batch = 64, prompt = 1e12, generate = 512, dtype = fp8 }}
}}

plan p on DGX_H100 for w {{
  search tp in {{1, 2, 4, 8}}, dp = auto
  objective maximize throughput_per_dollar
}}
",
            root = root.display()
        ),
    );
    let (code, _, err) = gantry(&["plan", &f]);
    no_panic(code, &err);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("C010") && err.contains("KV cache"), "{err}");
    assert!(!err.contains("gradients"), "{err}");
}

/// A serving plan replays a trace read beside its file; a bad trace is
/// the checker's L096 naming the file and the line (a missing one too); --sweep-rate gives one row per rate; a serving
/// plan with `subject to` is C015.
#[test]
fn serving_plans_read_traces_and_sweep_rates() {
    let root = std::env::current_dir().expect("cwd");
    let source = |arrivals: &str, extra: &str| {
        format!(
            "import \"{}/stdlib/hardware/dgx_h100.gantry\"
import \"{}/stdlib/models/llama.gantry\"

workload w {{
  model Llama(layers = 80, d_model = 8192, heads = 64, kv_heads = 8, d_ff = 28672, vocab = llama3_vocab)
  serve {{
    dtype = fp8
    arrivals = {arrivals}
    prompt = trace
    generate = trace
    slo = {{ ttft_p99 = 2 s, tpot_p99 = 100 ms }}
  }}
}}

plan p on DGX_H100 for w {{
  search tp in {{8}}
  objective maximize throughput_per_dollar
{extra}}}
",
            root.display(),
            root.display()
        )
    };
    let rows: String = (0..200)
        .map(|i| format!("{},{},{}\n", i as f64 * 0.25, 100 + i, 20 + i % 7))
        .collect();
    temp(
        "requests.csv",
        &format!("arrival_s,prompt,generate\n{rows}"),
    );
    temp("bad.csv", "0,10,5\n0.5,ten,5\n");
    let good = temp("trace_serve.gantry", &source("trace(\"requests.csv\")", ""));
    let (code, out, err) = gantry(&["plan", &good, "--sweep-rate", "2,4"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("200 requests at 4.000 req/s"), "{out}");
    assert_eq!(
        out.matches("\n  2.000 ").count() + out.matches("\n  4.000 ").count(),
        2,
        "{out}"
    );
    let bad = temp("bad_serve.gantry", &source("trace(\"bad.csv\")", ""));
    let (code, _, err) = gantry(&["plan", &bad]);
    assert_eq!(code, 1);
    assert!(
        err.contains("L096") && err.contains("`bad.csv`: line 2:"),
        "{err}"
    );
    let missing = temp(
        "missing_serve.gantry",
        &source("trace(\"nowhere.csv\")", ""),
    );
    let (code, _, err) = gantry(&["plan", &missing]);
    assert!(
        code == 1 && err.contains("L096") && err.contains("nowhere.csv"),
        "{err}"
    );
    let constrained = temp(
        "constrained_serve.gantry",
        &source(
            "trace(\"requests.csv\")",
            "  subject to memory <= 0.9 * hbm\n",
        ),
    );
    let (code, _, err) = gantry(&["plan", &constrained]);
    assert!(code == 1 && err.contains("C015"), "{err}");
    let (code, _, err) = gantry(&["plan", &good, "--sweep-rate", "0,nan"]);
    assert!(code == 2 && err.contains("--sweep-rate"), "{err}");
}

/// A plan JSON written at full scale and run scaled down: its
/// `stage_layers` and `batch` are not what the run uses, and the run says
/// so instead of dropping them silently (issue 11).
#[test]
fn plan_json_figures_the_run_does_not_take_are_noted() {
    let (_, json, err) = gantry(&[
        "plan",
        "examples/llm_train.gantry",
        "--fix",
        "tp=2,pp=2,dp=1,microbatch=1",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|_| panic!("{err}"));
    assert_eq!(
        v["parallelism"]["stage_layers"],
        serde_json::json!([63, 63])
    );
    let path = temp("full_scale_plan.json", &json);
    let (code, _, err) = gantry(&["run", "examples/llm_train.gantry", "--plan-json", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("stage_layers [63, 63] do not split the 4 layers")
            && err.contains("the run splits them [2, 2]"),
        "{err}"
    );
    assert!(
        err.contains("batch 2048 is the plan's; the run takes the global batch 8"),
        "{err}"
    );
}

/// `gantry plan --picks` on a reference plan prints the pick with every pin
/// released next to the published configuration, in text, markdown and
/// JSON, with the words `gantry validate --picks` computes for that plan
/// (`validate::pick` is the one path); without `--picks` the section is
/// absent, and a plan that records no published run has none.
#[test]
fn plan_picks_next_to_the_published_configuration() {
    let file = "examples/reference/f01_llama31_8b_8gpu.gantry";
    let c = gantry::check_files(&[file.to_string()], &[]);
    assert!(!c.has_errors(), "{}", c.render(false));
    let picks = gantry_compiler::validate::picks(&c.program);
    assert_eq!(picks.len(), 1);
    let p = picks[0].as_ref().expect("pick");
    let why = p
        .why
        .as_deref()
        .expect("f01's pick differs from its published point");
    // The kinds name what the sentence turns on.
    assert!(!p.kinds.is_empty());
    for k in &p.kinds {
        let said = if *k == gantry_compiler::explain::MEMORY_MARGIN {
            "HBM"
        } else {
            k
        };
        assert!(why.contains(said), "{k} not in: {why}");
    }
    let (code, text, err) = gantry(&["plan", file, "--picks"]);
    assert_eq!(code, 0, "{err}");
    let section = text
        .split("\nPublished configuration\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no section in\n{text}"));
    assert!(section.contains(&format!("published  {}", p.published.point)));
    assert!(section.contains(&format!("pick       {}", p.pick.point)));
    assert!(section.contains(&format!("why        {why}")), "{section}");
    let (code, md, _) = gantry(&["plan", file, "--picks", "--format", "markdown"]);
    assert_eq!(code, 0);
    assert!(md.contains("### Published configuration"), "{md}");
    assert!(md.contains(&format!("- why        {why}")), "{md}");
    let (code, js, _) = gantry(&["plan", file, "--picks", "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&js).expect("JSON");
    assert_eq!(v["published"]["why"], why);
    assert_eq!(v["published"]["pick"]["point"], p.pick.point.to_string());
    assert!(v["published"]["gain_pct"].as_f64().expect("gain") > 0.0);
    // Gated: without the flag, and on a plan with no published run.
    let (_, plain, _) = gantry(&["plan", file]);
    assert!(!plain.contains("Published configuration"), "{plain}");
    let (code, other, err) = gantry(&["plan", "examples/llm_train.gantry", "--picks"]);
    assert_eq!(code, 0, "{err}");
    assert!(!other.contains("Published configuration"), "{other}");
    assert!(
        err.contains("records no published training configuration"),
        "{err}"
    );
}

/// Serving inputs past the front end that once printed nonsense: a plan
/// whose only pipeline is deeper than the model (C004, not "the queue
/// grows on all 0 candidates"); requests that never fit the KV cache
/// (their SLOs missed, the dropped requests named, never "met at 0 ms");
/// a trace whose arrivals span no time (a burst: served, not "unstable at
/// inf req/s"); and --sweep-rate on a file with errors (the file's
/// diagnostics, not C006).
#[test]
fn serving_edge_inputs_get_their_causes() {
    let dir = "tests/inputs/_cli";
    let (code, _, err) = gantry(&["plan", &format!("{dir}/serve_pp_beyond_layers.gantry")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("C004") && err.contains("2 layers"), "{err}");
    let all_dropped = format!("{dir}/serve_all_dropped.gantry");
    let (code, _, err) = gantry(&["plan", &all_dropped]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("C019") && err.contains("200 of its 200 requests were dropped"),
        "{err}"
    );
    assert!(!err.contains("meets ttft_p99"), "{err}");
    let (code, out, err) = gantry(&["plan", &all_dropped, "--fix", "tp=2,dp=1"]);
    assert!(
        out.contains("0 completed, 200 dropped"),
        "{code} {out} {err}"
    );
    assert!(!out.contains("(met)"), "{out}");
    let (code, out, err) = gantry(&["plan", &format!("{dir}/serve_burst_trace.gantry")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 completed, 0 dropped"), "{out}");
    let (code, _, err) = gantry(&[
        "plan",
        &format!("{dir}/serve_prompt_zero.gantry"),
        "--sweep-rate",
        "1,2",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("L046") && !err.contains("C006"), "{err}");
    // Rates below the floor are refused on the command line too.
    let (code, _, err) = gantry(&[
        "plan",
        &format!("{dir}/serve_burst_trace.gantry"),
        "--sweep-rate",
        "1e-12",
    ]);
    assert_eq!(code, 2, "{err}");
}

/// `gantry.serve/1` says what its `rate_per_s` is: a burst's (every request
/// at time 0) was a bare `0.0`, read as a deployment that received nothing.
/// `arrivals` gives the kind (open, closed, burst) and a closed loop's or
/// burst's clients.
#[test]
fn serve_json_says_how_the_requests_came() {
    let best = |file: &str, plan: &str| {
        let (code, out, err) = gantry(&["plan", file, "--plan", plan, "--format", "json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["best"].clone()
    };
    let burst = best("examples/reference/s05_a_a100_tp8.gantry", "s05_a1_4_plan");
    assert_eq!(burst["arrivals"]["kind"], "burst", "{burst}");
    assert_eq!(burst["arrivals"]["clients"], 200);
    assert_eq!(burst["rate_per_s"], 0.0);
    let closed = best(
        "examples/reference/s03_c_b200_closed_loop.gantry",
        "s03_c1_3_plan",
    );
    assert_eq!(closed["arrivals"]["kind"], "closed", "{closed}");
    assert_eq!(closed["arrivals"]["clients"], 16);
    assert!(closed["rate_per_s"].as_f64().is_some_and(|r| r > 0.0));
    let open = best("examples/reference/s05_a_a100_tp8.gantry", "s05_a1_1_plan");
    assert_eq!(open["arrivals"]["kind"], "open", "{open}");
    assert!(open["arrivals"]["clients"].is_null());
    assert!(open["rate_per_s"].as_f64().is_some_and(|r| r > 0.0));
}

/// A `serve` workload of one request under Poisson arrivals read `1
/// requests at 0.000 req/s` (`rate_per_s` 0 with open arrivals): one
/// arrival has no gap to measure a rate over. It is the workload's rate.
#[test]
fn one_drawn_request_is_offered_at_the_workloads_rate() {
    let f = temp(
        "one_request.gantry",
        &std::fs::read_to_string("examples/llm_serve.gantry")
            .expect("example")
            .replace("requests = 2000", "requests = 1")
            .replace(
                "import \"stdlib/",
                &format!("import \"{}/stdlib/", env!("CARGO_MANIFEST_DIR")),
            ),
    );
    let (code, out, err) = gantry(&[
        "plan",
        &f,
        "--fix",
        "tp=8,dp=1,batch=64,token_budget=2048",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["best"]["arrivals"]["kind"], "open", "{out}");
    assert_eq!(v["best"]["rate_per_s"], 8.0, "{out}");
    let (code, out, err) = gantry(&["plan", &f, "--fix", "tp=8,dp=1,batch=64,token_budget=2048"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 requests at 8.000 req/s"), "{out}");
}

/// A serving plan ranked by goodput per dollar on hardware without a
/// `price` printed every deployment at `0.0000 requests/$` and picked one
/// arbitrarily; it is `C015`, as for a training plan.
#[test]
fn a_serving_plan_per_dollar_without_a_price_is_c015() {
    let f = temp(
        "serve_no_price.gantry",
        &format!(
            "import \"{}/tests/inputs/_common/base.gantry\"\n{}",
            env!("CARGO_MANIFEST_DIR"),
            r#"
workload w {
  model Decoder(layers = 2, d_model = 512, heads = 8, d_ff = 1536, vocab = 32000)
  serve {
    arrivals = poisson(rate = 4)
    prompt = 100
    generate = 20
    slo = { ttft_p99 = 1 s, tpot_p99 = 100 ms }
    requests = 50
  }
}
plan p on Box for w {
  search tp in {1, 2}, dp = auto
  objective maximize throughput_per_dollar
}
"#
        ),
    );
    let (code, out, err) = gantry(&["plan", &f]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("C015") && err.contains("`price`"), "{err}");
    assert!(!out.contains("requests/$"), "{out}");
    let g = temp(
        "serve_no_price_goodput.gantry",
        &std::fs::read_to_string(&f)
            .expect("written")
            .replace("throughput_per_dollar", "throughput"),
    );
    let (code, _, err) = gantry(&["plan", &g]);
    assert_eq!(code, 0, "{err}");
}

/// The lowest rate a `serve` accepts, `poisson(rate = 0.000001)`, read
/// `3 requests at 0.000 req/s`, `goodput 0.000 req/s`, `0.0 tokens/s` and
/// `goodput per dollar 0.0 requests/$` (and zeros in the `--sweep-rate`
/// table): now to four significant figures.
#[test]
fn the_lowest_rate_is_not_printed_as_zero() {
    let f = temp(
        "serve_slow.gantry",
        &std::fs::read_to_string("examples/llm_serve.gantry")
            .expect("example")
            .replace("poisson(rate = 8)", "poisson(rate = 0.000001)")
            .replace("requests = 2000", "requests = 3")
            .replace(
                "import \"stdlib/",
                &format!("import \"{}/stdlib/", env!("CARGO_MANIFEST_DIR")),
            ),
    );
    let fix = "tp=8,dp=1,batch=64,token_budget=2048";
    let (code, out, err) = gantry(&["plan", &f, "--fix", fix, "--sweep-rate", "0.000002"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(" 0.000 ") && !out.contains(" 0.0 "), "{out}");
    // Nor the utilisation (it read `0.0% prefill and decode`).
    assert!(!out.contains(" 0.0%"), "{out}");
    assert!(out.contains("3 requests at 2.093e-6 req/s"), "{out}");
    // Three requests at the stated rate take three gaps: goodput is the
    // rate (it read 3.140e-6 req/s, above the 2.093e-6 offered).
    assert!(out.contains("goodput 2.093e-6 req/s"), "{out}");
    assert!(out.contains("\n  4.187e-6  "), "{out}");
    assert!(out.contains(" 4.187e-6   100.00%"), "{out}");
}

/// A folder holding symbolic links to folders above it (`a/up -> ..`,
/// `a/again -> ../a`): `gantry test`, `fmt --check` and `validate` walked
/// it for ever, each turn down a longer path (two links: exponentially
/// many), and printed nothing. Each folder is now walked once.
#[cfg(unix)]
#[test]
fn folders_linked_in_a_loop_are_walked_once() {
    let dir = std::env::temp_dir().join(format!("gantry-cli-loop-{}", std::process::id()));
    let a = dir.join("a");
    std::fs::create_dir_all(&a).expect("dir");
    std::fs::write(a.join("one.gantry"), "let x = 1\n").expect("write");
    for (name, to) in [("up", ".."), ("again", "../a")] {
        let link = a.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(to, &link).expect("symlink");
    }
    let d = dir.to_string_lossy().into_owned();
    for args in [
        vec!["test", d.as_str()],
        vec!["fmt", "--check", d.as_str()],
        vec!["validate", d.as_str()],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs");
        let started = std::time::Instant::now();
        while child.try_wait().expect("waits").is_none() {
            if started.elapsed() > std::time::Duration::from_secs(60) {
                let _ = child.kill();
                panic!("`gantry {}` still walking after 60 s", args.join(" "));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}");
        if args[0] == "test" {
            assert!(stdout.contains("1 files"), "{stdout}");
        }
    }
}

/// C019 named the rate as `n / span` (three requests at 0, 1 and 2 s:
/// `at 1.500 req/s`), while every report of the same requests (and a
/// fleet's demand it was drawn for) states `(n - 1) / span`, 1.000.
#[test]
fn c019_states_the_rate_the_reports_state() {
    temp("three_a_second.csv", "0,16000,10\n1,16000,10\n2,16000,10\n");
    let f = temp(
        "three_a_second.gantry",
        &std::fs::read_to_string("examples/llm_serve.gantry")
            .expect("example")
            .replace("poisson(rate = 8)", "trace(\"three_a_second.csv\")")
            .replace("lognormal(mean = 1024, spread = 0.6)", "trace")
            .replace("lognormal(mean = 256, spread = 0.6)", "trace")
            .replace("ttft_p99 = 500 ms", "ttft_p99 = 1 us")
            .replace(
                "import \"stdlib/",
                &format!("import \"{}/stdlib/", env!("CARGO_MANIFEST_DIR")),
            ),
    );
    let (code, out, err) = gantry(&["plan", &f, "--fix", "tp=8,dp=1,batch=64,token_budget=2048"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 requests at 1.000 req/s"), "{out}");
    let (code, _, err) = gantry(&["plan", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[C019]") && err.contains("at 1.000 req/s"),
        "{err}"
    );
}

/// A study's snapshot that is a link to `/dev/zero` was read whole:
/// `gantry test` ran until memory ran out. It is read only as far as it
/// could match the report, then reported unreadable.
#[cfg(target_os = "linux")]
#[test]
fn a_snapshot_without_end_is_unreadable_not_read_for_ever() {
    let f = temp(
        "endless_snapshot.gantry",
        &format!(
            "import \"{}/tests/inputs/_common/base.gantry\"\n{}",
            env!("CARGO_MANIFEST_DIR"),
            r#"
cluster Fleet(n = 1) {
  node Box x n
  fabric ib = fat_tree(bandwidth = 400 Gb/s, latency = 5 us)
}
study s on Fleet(n = {1}) {
  workloads { tiny_train = 1 }
  search dp = auto
}
"#
        ),
    );
    let snap = f.replace(".gantry", ".snap");
    let _ = std::fs::remove_file(&snap);
    std::os::unix::fs::symlink("/dev/zero", &snap).expect("symlink");
    let (code, out, err) = gantry(&["test", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(
        out.contains("cannot read") && out.contains("far longer than the report"),
        "{out}"
    );
}

/// Serving latencies and SLO targets under 0.1 ms printed as `0.0 ms`
/// (`tpot_p99 = 1 us`: `SLO tpot_p99 <= 0.0 ms`); they are written in
/// microseconds, as C019 writes them.
#[test]
fn a_microsecond_slo_is_not_zero_milliseconds() {
    let f = temp(
        "serve_us_slo.gantry",
        &std::fs::read_to_string("examples/llm_serve.gantry")
            .expect("example")
            .replace("tpot_p99 = 50 ms", "tpot_p99 = 1 us")
            .replace("requests = 2000", "requests = 20")
            .replace(
                "import \"stdlib/",
                &format!("import \"{}/stdlib/", env!("CARGO_MANIFEST_DIR")),
            ),
    );
    let (code, out, err) = gantry(&["plan", &f, "--fix", "tp=8,dp=1,batch=64,token_budget=2048"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SLO         tpot_p99 <= 1.0 us: "), "{out}");
    assert!(!out.contains(" 0.0 ms"), "{out}");
}

/// `calibrate --fit` and `validate --cross` on a folder of one training
/// plan (no other plan to leave it out against) said its figures were
/// "rows left out of the fit, whose published figures miss Little's law",
/// a serving reason, and left the section table empty without saying why.
#[test]
fn a_plan_alone_in_a_fit_is_not_blamed_on_littles_law() {
    let dir = std::env::temp_dir().join(format!("gantry-cli-fit-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("one.gantry"),
        format!(
            "import \"{root}/stdlib/hardware/dgx_h100.gantry\"\nimport \"{root}/tests/inputs/_common/base.gantry\"\n{}",
            r#"
workload lm {
  model Decoder(layers = 2, d_model = 1024, heads = 8, d_ff = 4096, vocab = 32000)
  train { seq = 1024, global_batch = 64 }
}
plan p on DGX_H100 for lm {
  fix tp = 1, dp = 8, pp = 1
  expect step_time = 300 ms
}
"#,
            root = env!("CARGO_MANIFEST_DIR")
        ),
    )
    .expect("write");
    let d = dir.to_string_lossy().into_owned();
    for args in [
        ["calibrate", "--fit", d.as_str()],
        ["validate", "--cross", d.as_str()],
    ] {
        let (code, out, err) = gantry(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!out.contains("Little's law"), "{args:?}: {out}");
        assert!(
            out.contains("(not counted: 1 figures with no leave-one-out prediction"),
            "{args:?}: {out}"
        );
    }
}

/// `--sweep-rate` on a closed loop (or a burst) ran the same closed
/// simulation once per rate and printed identical rows under the rate it
/// served (`rate/s 9544.618` for `--sweep-rate 1,2`): it offers no rate
/// to sweep, and is C006.
#[test]
fn sweep_rate_on_a_closed_loop_is_c006() {
    for (from, to) in [
        ("poisson(rate = 8)", "closed(concurrency = 4)"),
        ("poisson(rate = 8)", "burst()"),
    ] {
        let f = temp(
            "closed_sweep.gantry",
            &std::fs::read_to_string("examples/llm_serve.gantry")
                .expect("example")
                .replace(from, to)
                .replace("requests = 2000", "requests = 20")
                .replace(
                    "import \"stdlib/",
                    &format!("import \"{}/stdlib/", env!("CARGO_MANIFEST_DIR")),
                ),
        );
        let fix = "tp=8,dp=1,batch=64,token_budget=2048";
        let (code, out, err) = gantry(&["plan", &f, "--fix", fix, "--sweep-rate", "1,2"]);
        assert_eq!(code, 2, "{to}: {out}");
        assert!(
            err.contains("error[C006]: --sweep-rate") && err.contains("not a rate to sweep"),
            "{to}: {err}"
        );
    }
}

/// `--sweep-rate` is bounded like a plan's search: 64 rates of 10^7
/// requests each (6.4e8 simulated requests, minutes) is C006 before
/// anything runs, and so are 5 rates of 10^7 (just over 4e7); 4 rates
/// of 10^7 would run (checked by the bound's arithmetic, not run here:
/// minutes).
#[test]
fn sweep_rate_over_the_simulation_bound_is_c006() {
    let f = temp(
        "big_sweep.gantry",
        &std::fs::read_to_string("examples/llm_serve.gantry")
            .expect("example")
            .replace("requests = 2000", "requests = 10000000")
            .replace(
                "import \"stdlib/",
                &format!("import \"{}/stdlib/", env!("CARGO_MANIFEST_DIR")),
            ),
    );
    let rates: Vec<String> = (1..=64).map(|r| r.to_string()).collect();
    let fix = "tp=8,dp=1,batch=64,token_budget=2048";
    let (code, out, err) = gantry(&["plan", &f, "--fix", fix, "--sweep-rate", &rates.join(",")]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("error[C006]: --sweep-rate: 64 rates of 10000000 requests"),
        "{err}"
    );
    let (code, _, err) = gantry(&["plan", &f, "--fix", fix, "--sweep-rate", "1,2,3,4,5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("5 rates of 10000000 requests"), "{err}");
    const { assert!(4 * 10_000_000 <= gantry_compiler::serve::planner::MAX_SIMULATED_REQUESTS) };
}

/// A request too long for any KV cache is dropped; when the attainment's
/// percentile falls on it, the report read `tpot_p99 <= 50.0 ms: inf ms`
/// and `Binding tpot_p99 at inf% of its target (inf ms of 50.0 ms)`, and
/// the JSON wrote `null` where its schema said a number.
#[test]
fn a_dropped_request_is_never_not_inf() {
    temp("one_huge.csv", "0,10,10\n1,16777216,16777216\n");
    let f = temp(
        "one_huge.gantry",
        &std::fs::read_to_string("examples/llm_serve.gantry")
            .expect("example")
            .replace("poisson(rate = 8)", "trace(\"one_huge.csv\")")
            .replace("lognormal(mean = 1024, spread = 0.6)", "trace")
            .replace("lognormal(mean = 256, spread = 0.6)", "trace")
            .replace(
                "import \"stdlib/",
                &format!("import \"{}/stdlib/", env!("CARGO_MANIFEST_DIR")),
            ),
    );
    let fix = "tp=8,dp=1,batch=64,token_budget=2048";
    let (code, out, err) = gantry(&["plan", &f, "--fix", fix]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 completed, 1 dropped"), "{out}");
    assert!(!out.contains("inf"), "{out}");
    assert!(out.contains("tpot_p99 <= 50.0 ms: never"), "{out}");
    assert!(
        out.contains("fewer than 99% of the requests complete (1 of 2 dropped"),
        "{out}"
    );
    let (code, out, err) = gantry(&["plan", &f, "--fix", fix, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    for slo in v["best"]["slos"].as_array().expect("slos") {
        assert!(slo["achieved_s"].is_null() && slo["met"] == false, "{slo}");
    }
}
