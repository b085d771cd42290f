//! `gantry study --shard` and `gantry merge` end to end, through the two
//! launchers users have (examples/launch): the Slurm job-array script run
//! with the variables Slurm sets, and the Kubernetes Indexed Job's
//! container command run with the variables Kubernetes sets, each as four
//! local processes of the built binary. The merged JSON must be the
//! single run's bytes; bad shard sets are `C033`, a bad `--shard` `C032`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_gantry");
const STUDY: &str = "examples/fleet_study.gantry";

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out: Output = cmd.output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gantry(args: &[&str]) -> (i32, String, String) {
    run(Command::new(BIN).args(args))
}

/// A fresh scratch folder under the target dir.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn shard_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("shard dir")
        .map(|e| e.expect("entry").path().display().to_string())
        .filter(|p| p.ends_with(".json"))
        .collect();
    v.sort();
    v
}

fn single_json() -> String {
    let (code, out, err) = gantry(&["study", STUDY, "--format", "json", "--jobs", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"schema\": \"gantry.study/1\""), "{out}");
    out
}

fn merge(files: &[String], extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["merge"];
    args.extend(files.iter().map(String::as_str));
    args.extend(extra);
    gantry(&args)
}

#[test]
fn slurm_array_shards_merge_to_the_single_run_bytes() {
    let dir = scratch("slurm-shards");
    for i in 0..4 {
        let (code, _, err) = run(Command::new("bash")
            .arg("examples/launch/slurm.sh")
            .env("GANTRY", BIN)
            .env("SHARD_DIR", &dir)
            .env("SLURM_ARRAY_TASK_ID", (i + 1).to_string())
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .env("SLURM_ARRAY_TASK_COUNT", "4")
            .env("SLURM_CPUS_PER_TASK", "1"));
        assert_eq!(code, 0, "task {i}: {err}");
    }
    let files = shard_files(&dir);
    assert_eq!(files.len(), 4, "{files:?}");
    // Each shard holds only its own slice.
    for (i, f) in files.iter().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f).expect("read")).expect("json");
        assert_eq!(v["schema"], "gantry.shard/1");
        assert_eq!(v["shard"], i);
        let jobs = v["jobs"].as_u64().expect("jobs");
        let mine: Vec<u64> = v["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["job"].as_u64().expect("job"))
            .collect();
        let want: Vec<u64> = (i as u64..jobs).step_by(4).collect();
        assert_eq!(mine, want);
    }
    let (code, merged, err) = merge(&files, &["--format", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        merged == single_json(),
        "merged JSON differs from the single run's"
    );
    // The other forms come from the same results too.
    let (code, text, _) = merge(&files, &[]);
    let (_, single_text, _) = gantry(&["study", STUDY]);
    assert_eq!(code, 0);
    assert_eq!(text, single_text);
}

/// The Indexed Job's container command (one JSON-style list) and its
/// `GANTRY_SHARDS`, which must equal `completions`.
fn k8s_command() -> (Vec<String>, usize) {
    let y = std::fs::read_to_string("examples/launch/k8s-indexed-job.yaml").expect("manifest");
    let field = |key: &str| {
        y.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no `{key}` in the manifest"))
            .trim()
            .to_string()
    };
    assert_eq!(field("completionMode:"), "Indexed");
    let completions: usize = field("completions:").parse().expect("completions");
    let shards_var = y
        .lines()
        .skip_while(|l| !l.contains("name: GANTRY_SHARDS"))
        .nth(1)
        .and_then(|l| l.trim().strip_prefix("value:"))
        .expect("GANTRY_SHARDS's value")
        .trim()
        .trim_matches('"')
        .parse::<usize>()
        .expect("a number");
    assert_eq!(
        shards_var, completions,
        "GANTRY_SHARDS must equal completions"
    );
    let command: Vec<String> = serde_json::from_str(&field("command:")).expect("a list");
    (command, completions)
}

#[test]
fn kubernetes_indexed_job_shards_merge_to_the_single_run_bytes() {
    let dir = scratch("k8s-shards");
    let (command, n) = k8s_command();
    assert_eq!(command[0], "gantry");
    for i in 0..n {
        // The pod's command, with the binary and the volume mapped here.
        let args: Vec<String> = command[1..]
            .iter()
            .map(|a| {
                if a == "/shards" {
                    dir.display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let (code, _, err) = run(Command::new(BIN)
            .args(&args)
            .env("JOB_COMPLETION_INDEX", i.to_string())
            .env("GANTRY_SHARDS", n.to_string())
            .env("RAYON_NUM_THREADS", "1"));
        assert_eq!(code, 0, "pod {i}: {err}");
    }
    let files = shard_files(&dir);
    assert_eq!(files.len(), n);
    // Merged in any order.
    let mut reversed = files.clone();
    reversed.reverse();
    let (code, merged, err) = merge(&reversed, &["--format", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        merged == single_json(),
        "merged JSON differs from the single run's"
    );
}

#[test]
fn bad_shard_sets_are_c033_and_bad_specs_c032() {
    let dir = scratch("bad-shards");
    // A small weighted study keeps this quick.
    let study = "examples/codesign_study.gantry";
    for i in 0..3 {
        let s = format!("{i}/3");
        let (code, _, err) = gantry(&[
            "study",
            study,
            "--shard",
            &s,
            "--out",
            dir.to_str().expect("utf-8"),
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let files = shard_files(&dir);
    let expect_c033 = |files: &[String], extra: &[&str], want: &str| {
        let (code, out, err) = merge(files, extra);
        assert_eq!(code, 1, "{err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("error[C033]") && err.contains(want), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    expect_c033(&files[..2], &[], "shard 2 of 3 missing");
    let twice = vec![
        files[0].clone(),
        files[1].clone(),
        files[1].clone(),
        files[2].clone(),
    ];
    expect_c033(&twice, &[], "given twice");
    // Truncated, not JSON, another document, edited figures.
    let text = std::fs::read_to_string(&files[1]).expect("read");
    let bad = dir.join("bad.json");
    let with = |t: &str| {
        std::fs::write(&bad, t).expect("write");
        vec![
            files[0].clone(),
            bad.display().to_string(),
            files[2].clone(),
        ]
    };
    expect_c033(&with(&text[..text.len() / 2]), &[], "not a shard's JSON");
    expect_c033(&with("garbage"), &[], "not a shard's JSON");
    let (_, study_doc, _) = gantry(&["study", study, "--format", "json"]);
    expect_c033(&with(&study_doc), &[], "not `gantry.shard/1`");
    expect_c033(
        &with(&text.replacen("\"Ok\"", "\"Fine\"", 1)),
        &[],
        "malformed",
    );
    expect_c033(
        &with(&text.replacen("\"shards\":3", "\"shards\":2", 1)),
        &[],
        "shard count",
    );
    // A huge shard count is refused, not allocated (it aborted).
    for huge in ["1099511627776", "18446744073709551615"] {
        let edited = text.replacen("\"shards\":3", &format!("\"shards\":{huge}"), 1);
        assert_ne!(edited, text);
        expect_c033(&with(&edited), &[], "at most 1048576");
    }
    // A shard of another run, and the source changed since the shards ran.
    let other = scratch("other-shards");
    let (code, _, err) = gantry(&[
        "study",
        STUDY,
        "--shard",
        "1/3",
        "--out",
        other.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    let mixed = vec![
        files[0].clone(),
        shard_files(&other)[0].clone(),
        files[2].clone(),
    ];
    expect_c033(&mixed, &[], "another run");
    expect_c033(&files, &["--source", STUDY], "not those the shards ran");
    let (code, _, err) = merge(&[dir.join("absent.json").display().to_string()], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error[C033]") && err.contains("cannot read"),
        "{err}"
    );
    // Bad `--shard`.
    for (spec, want) in [
        ("3/3", "does not exist"),
        ("a/3", "not a whole number"),
        ("1", "I/N"),
        ("0/0", "does not exist"),
        ("1/18446744073709551615", "too many"),
        ("0/1048577", "too many"),
    ] {
        let (code, _, err) = gantry(&["study", study, "--shard", spec]);
        assert_eq!(code, 2, "{spec}: {err}");
        assert!(
            err.contains("error[C032]") && err.contains(want),
            "{spec}: {err}"
        );
    }
    let (code, _, err) = run(Command::new(BIN)
        .args(["study", study, "--shard", "env"])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX"));
    assert_eq!(code, 2);
    assert!(
        err.contains("error[C032]") && err.contains("SLURM_ARRAY_TASK_ID"),
        "{err}"
    );
    let (code, _, err) = run(Command::new(BIN)
        .args(["study", study, "--shard", "env"])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env("JOB_COMPLETION_INDEX", "0")
        .env_remove("GANTRY_SHARDS"));
    assert_eq!(code, 2);
    assert!(err.contains("GANTRY_SHARDS"), "{err}");
}

#[test]
fn sharded_sensitivity_merges_to_the_single_run_bytes() {
    // The fleet study with --sensitivity: pools carry their workload's
    // sensitivity, which reuses the pool's first search as its base.
    let study = STUDY;
    let dir = scratch("sens-shards");
    for i in 0..4 {
        let s = format!("{i}/4");
        let (code, _, err) = gantry(&[
            "study",
            study,
            "--sensitivity",
            "--shard",
            &s,
            "--out",
            dir.to_str().expect("utf-8"),
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, merged, err) = merge(&shard_files(&dir), &["--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let (code, single, err) = gantry(&["study", study, "--sensitivity", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        merged == single,
        "merged JSON differs from the single run's"
    );
    assert!(single.contains("\"sensitivity\""));
}

/// A file no shard could be (a 2 GiB checkpoint passed by mistake,
/// `/dev/zero`) was read whole: `gantry merge /dev/zero` held 17 GB after
/// 11 s and ran on until memory ran out. Files over 1 GiB are C033.
#[test]
fn a_file_too_large_for_a_shard_is_c033_unread() {
    let dir = scratch("huge-shard");
    let big = dir.join("shard-0-of-1.json");
    std::fs::File::create(&big)
        .expect("create")
        .set_len(2 << 30)
        .expect("sparse file");
    let (code, out, err) = merge(&[big.display().to_string()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("error[C033]") && err.contains("larger than 1073741824 bytes"),
        "{err}"
    );
}
