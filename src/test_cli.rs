//! `gantry test [PATH...]`: the snapshot and `expect` tests of `.gantry`
//! files, for the CI of the people who write them.
//!
//! Two kinds of claim live in a file, and each is held to its own bar:
//! - an `expect` of a plan (a figure the plan should reproduce) passes
//!   when the prediction lies within the plan's `tolerance`, or, where the
//!   file states none, within the model's own stated uncertainty for that
//!   device and phase (the worst leave-one-out error of the fit,
//!   [`gantry_compiler::hardware::Uncertainty::max`]; for a serving
//!   simulation, its engine fit's `loo_max`, which also covers the
//!   fitted rows' in-sample errors). With
//!   neither (an uncalibrated device, a serving workload on no fitted
//!   engine) the figure is *unchecked*
//!   and counted as such; `--strict` fails it. An `expect` of a study
//!   names a figure of its pooled fleet (`cost`, `power`, `devices`) and
//!   needs a `tolerance`, else it is unchecked too.
//! - a study's whole text report (what `gantry study FILE` prints) is
//!   compared with the snapshot stored beside the file (`NAME.snap` next
//!   to `NAME.gantry`); drift shows as a unified diff (the `similar`
//!   crate, the diff insta uses) and fails until `--accept` stores the new
//!   report. The text form is compared, not the JSON, so a change in the
//!   17th digit of a figure is not drift and a change a reader would see
//!   is.
//!
//! Exit codes fit CI: 0 when every claim holds, 1 when one fails (a
//! diagnostic error, an `expect` out of tolerance, a snapshot that
//! drifted or is missing), 2 for a usage error (a path that does not
//! exist). Files run one after another; the work inside a file runs on
//! the rayon pool, so the output is the same for any core count.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gantry_compiler::hardware::Hardware;
use gantry_compiler::shard::Studied;
use gantry_compiler::study_doc::Outcome;
use gantry_compiler::{fleet, validate};
use gantry_lang::program::{Plan, Program};

use crate::{check_files, fmt_metric, normalize};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Files, or folders: a folder stands for every `.gantry` file beneath
    /// it (hidden folders and `target` skipped). Default: the current folder.
    pub paths: Vec<String>,
    /// Store the current report of every study whose snapshot drifted or
    /// is missing (the `expect` checks still run and can still fail).
    #[arg(long)]
    pub accept: bool,
    /// Fail an `expect` that has no tolerance to be checked against
    /// (neither a `tolerance` nor a calibrated uncertainty band).
    #[arg(long)]
    pub strict: bool,
    /// Also list every `expect` that passed or is unchecked, with its error.
    #[arg(long, short)]
    pub verbose: bool,
    /// Extra folders to resolve imports against.
    #[arg(long = "lib")]
    pub lib: Vec<PathBuf>,
}

/// How one `expect` came out.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Within `tolerance` (a fraction), which came from `from`.
    Pass {
        tolerance: f64,
        from: &'static str,
    },
    Fail {
        tolerance: f64,
        from: &'static str,
    },
    /// No tolerance to hold it to.
    Unchecked,
    /// The prediction has no such figure, or does not fit in memory.
    Broken(String),
}

/// One `expect` figure of a plan or study.
#[derive(Clone, Debug)]
pub struct Expectation {
    pub owner: String,
    pub metric: String,
    pub predicted: f64,
    pub published: f64,
    pub verdict: Verdict,
}

/// The verdict for `predicted` against `published` with the stated
/// tolerance `stated`, else the model's band `band`.
pub fn judge(predicted: f64, published: f64, stated: Option<f64>, band: Option<f64>) -> Verdict {
    let (tolerance, from) = match (stated, band) {
        (Some(t), _) => (t, "tolerance"),
        (None, Some(b)) => (b, "uncertainty"),
        (None, None) => return Verdict::Unchecked,
    };
    let err = ((predicted - published) / published).abs();
    // A published zero has no relative error: only an equal prediction passes.
    let within = if published == 0.0 {
        predicted == 0.0
    } else {
        err <= tolerance
    };
    if within {
        Verdict::Pass { tolerance, from }
    } else {
        Verdict::Fail { tolerance, from }
    }
}

/// The `expect` figures of one plan, judged.
pub fn plan_expectations(plan: &Plan) -> Vec<Expectation> {
    let band = match plan.workload.serve.as_deref() {
        // A serving simulation is not what the phase fit's band measured:
        // it carries its engine's leave-one-out band (the engine's terms
        // fitted on section S), if the engine was fitted.
        // A row whose published figures miss Little's law is not fitted
        // and stays unchecked.
        Some(s) if !gantry_compiler::engine_fit::inexpressible(plan) => {
            s.engine.as_ref().and_then(|e| e.loo).map(|(_, max)| max)
        }
        Some(_) => None,
        None => Hardware::new(&plan.system, &plan.workload)
            .ok()
            .and_then(|h| h.uncertainty)
            .map(|u| u.max),
    };
    let mk = |metric: &str, predicted: f64, published: f64, verdict| Expectation {
        owner: format!("plan {}", plan.name),
        metric: metric.to_string(),
        predicted,
        published,
        verdict,
    };
    match validate::figures(plan) {
        Err(e) => plan
            .expect
            .iter()
            .map(|(m, q)| {
                mk(
                    m,
                    f64::NAN,
                    q.value,
                    Verdict::Broken(format!(
                        "the plan cannot be evaluated: error[{}]: {}",
                        e.code, e.message
                    )),
                )
            })
            .collect(),
        Ok((values, feasible)) => plan
            .expect
            .iter()
            .zip(values)
            .map(|((m, q), v)| {
                let verdict = if v.is_nan() {
                    Verdict::Broken("the prediction has no such figure".into())
                } else if !feasible {
                    Verdict::Broken("the predicted plan does not fit in memory".into())
                } else {
                    judge(v, q.value, plan.tolerance.of(m), band)
                };
                mk(m, v, q.value, verdict)
            })
            .collect(),
    }
}

/// What testing one file found.
#[derive(Default)]
pub struct FileResult {
    pub expectations: Vec<Expectation>,
    /// Studies compared with the snapshot.
    pub studies: usize,
    /// The diagnostics, when the file has errors.
    pub errors: Option<String>,
    /// The snapshot: `None` (no study), or how it compared.
    pub snapshot: Option<Snapshot>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Snapshot {
    Same,
    /// Differs; the unified diff (stored → now).
    Drifted(String),
    Missing,
    /// Written by `--accept` (new or updated).
    Written,
    /// `--accept` could not write it.
    Unwritable(String),
    /// There, but it cannot be read (not UTF-8 text, a folder): why.
    Unreadable(String),
}

/// The snapshot file of `file`: `NAME.snap` beside `NAME.gantry`.
pub fn snapshot_path(file: &Path) -> PathBuf {
    file.with_extension("snap")
}

/// The snapshot text of the studies of `program` (those declared in
/// `root`): a header, then each study's text report.
fn studies_text(
    program: &Program,
    root: &str,
    sources: &gantry_lang::source::SourceMap,
) -> Option<(String, Vec<Expectation>, usize)> {
    let studies: Vec<_> = program
        .studies
        .values()
        .filter(|st| sources.name(st.span.file) == root)
        .collect();
    if studies.is_empty() {
        return None;
    }
    // The file's own name, not the path it was reached by, so the
    // snapshot is the same from any working folder.
    let name = Path::new(root)
        .file_name()
        .map_or_else(|| root.to_string(), |n| n.to_string_lossy().into_owned());
    let mut s = format!(
        "# gantry test snapshot: the report of `gantry study {name}`.\n# Update with `gantry test --accept {name}` after reading the diff.\n"
    );
    let mut exps = Vec::new();
    match crate::study_cli::run_all(&studies) {
        Err(m) => {
            let _ = writeln!(s, "error: {m}");
        }
        Ok(answered) => {
            for an in answered {
                let st = an.study;
                s.push('\n');
                match an.outcome {
                    Err(u) => {
                        let _ = writeln!(
                            s,
                            "study {}: error[C025]: {}\n  help: {}",
                            st.name, u.message, u.help
                        );
                        exps.extend(st.expect.iter().map(|(m, q)| Expectation {
                            owner: format!("study {}", st.name),
                            metric: m.clone(),
                            predicted: f64::NAN,
                            published: q.value,
                            verdict: Verdict::Broken("no fleet meets the demand".into()),
                        }));
                    }
                    Ok(Studied::Weighted(rows)) => {
                        s.push_str(&crate::study_cli::text(st, &Outcome::Weighted(&rows), None));
                    }
                    Ok(Studied::Fleet(a)) => {
                        let cap = st
                            .site
                            .as_ref()
                            .and_then(|x| x.power_cap)
                            .unwrap_or(f64::INFINITY);
                        let f = fleet::front::of(&a, cap);
                        s.push_str(&crate::study_cli::text(st, &Outcome::Fleet(&a, &f), None));
                        for (m, q) in &st.expect {
                            let v = crate::study_cli::fleet_figure(&a, m).unwrap_or(f64::NAN);
                            let verdict = if v.is_nan() {
                                Verdict::Broken("the fleet has no such figure".into())
                            } else {
                                judge(v, q.value, st.tolerance.of(m), None)
                            };
                            exps.push(Expectation {
                                owner: format!("study {}", st.name),
                                metric: m.clone(),
                                predicted: v,
                                published: q.value,
                                verdict,
                            });
                        }
                    }
                }
            }
        }
    }
    Some((s, exps, studies.len()))
}

/// Tests one file: its diagnostics, its plans' and studies' `expect`
/// figures and its studies' snapshot.
pub fn test_file(path: &Path, lib: &[PathBuf], accept: bool) -> FileResult {
    let root = normalize(path).to_string_lossy().into_owned();
    let checked = check_files(std::slice::from_ref(&root), lib);
    if checked.has_errors() {
        return FileResult {
            errors: Some(checked.render(false)),
            ..FileResult::default()
        };
    }
    let mut r = FileResult::default();
    for plan in checked.program.plans.values() {
        if checked.sources.name(plan.span.file) != root || plan.expect.is_empty() {
            continue;
        }
        r.expectations.extend(plan_expectations(plan));
    }
    if let Some((now, exps, n)) = studies_text(&checked.program, &root, &checked.sources) {
        r.expectations.extend(exps);
        r.studies = n;
        let snap = snapshot_path(path);
        // A file that is there but cannot be read (not UTF-8, a folder)
        // is not a missing one. The read is bounded (a link to
        // `/dev/zero` was read until memory ran out): a file longer than
        // the report by more than a source may be cannot match it.
        let limit = now.len() as u64 + gantry_lang::check::MAX_FILE_BYTES as u64;
        let stored = match crate::read_bounded(&snap, limit) {
            Ok(Ok(b)) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| "stream did not contain valid UTF-8".to_string()),
            Ok(Err(_)) => Err(format!(
                "it is more than {limit} bytes, far longer than the report"
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        r.snapshot = Some(match stored {
            Ok(Some(old)) if old == now => Snapshot::Same,
            _ if accept => match std::fs::write(&snap, &now) {
                Ok(()) => Snapshot::Written,
                Err(e) => Snapshot::Unwritable(e.to_string()),
            },
            Ok(Some(old)) => Snapshot::Drifted(drift(&old, &now, &snap)),
            Ok(None) => Snapshot::Missing,
            Err(e) => Snapshot::Unreadable(e),
        });
    }
    r
}

/// The most lines (stored and now together) a drifted snapshot is diffed
/// over: the diff's time grows with the product of the two sizes (a
/// 200,000-line stale snapshot took 39 s), so past this the report names
/// the sizes and the first differing line instead.
pub const MAX_DIFF_LINES: usize = 10_000;

/// How a drifted snapshot is shown: the unified diff (stored → now), or
/// past [`MAX_DIFF_LINES`] the sizes and the first line that differs.
fn drift(old: &str, now: &str, snap: &Path) -> String {
    let (a, b) = (old.lines().count(), now.lines().count());
    if a + b <= MAX_DIFF_LINES {
        return similar::TextDiff::from_lines(old, now)
            .unified_diff()
            .context_radius(2)
            .header(&format!("{} (stored)", snap.display()), "now")
            .to_string();
    }
    let (mut o, mut n) = (old.lines(), now.lines());
    let mut line = 1;
    let (first_old, first_now) = loop {
        match (o.next(), n.next()) {
            // Only the line endings differ.
            (None, None) => break (None, None),
            (x, y) if x != y => break (x, y),
            _ => line += 1,
        }
    };
    let show = |l: Option<&str>| l.unwrap_or("(end of file)").to_string();
    format!(
        "--- {} (stored): {a} lines\n+++ now: {b} lines\ntoo many lines to diff (more than {MAX_DIFF_LINES}); the first difference is line {line}:\n-{}\n+{}\n",
        snap.display(),
        show(first_old),
        show(first_now)
    )
}

/// The `.gantry` files `paths` stand for, sorted and without repeats;
/// `Err` names a path that does not exist.
pub fn collect(paths: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let roots: Vec<String> = if paths.is_empty() {
        vec![".".into()]
    } else {
        paths.to_vec()
    };
    for p in &roots {
        let path = Path::new(p);
        if path.is_dir() {
            walk(path, &mut out, &mut seen);
        } else if path.is_file() {
            out.push(path.to_path_buf());
        } else {
            return Err(format!("no such file or folder: `{p}`"));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) {
    if !crate::first_visit(dir, seen) {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            if !name.starts_with('.') && name != "target" {
                walk(&p, out, seen);
            }
        } else if p.extension().is_some_and(|x| x == "gantry") {
            out.push(p);
        }
    }
}

/// `v` as the figure `e` names is written: a plan metric in its unit, a
/// fleet's cost in dollars per hour.
fn figure(e: &Expectation, v: f64) -> String {
    if !e.owner.starts_with("study ") {
        return fmt_metric(&e.metric, v);
    }
    match gantry_lang::check::study_metric_dim(&e.metric) {
        Some(d) if d == gantry_lang::units::Dim::PRICE_RATE => {
            format!("${}/h", gantry_lang::units::format_number(v * 3600.0))
        }
        Some(d) if !d.is_none() => gantry_lang::units::Quantity::new(v, d).to_string(),
        _ => gantry_lang::units::format_number(v),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// `gantry test`.
pub fn test_cmd(a: &TestArgs) -> ExitCode {
    let files = match collect(&a.paths) {
        Ok(f) => f,
        Err(m) => {
            crate::errln!("error: {m}");
            return ExitCode::from(2);
        }
    };
    let (mut passed, mut failed, mut unchecked) = (0usize, 0usize, 0usize);
    let (mut snaps_ok, mut snaps_bad, mut snaps_written, mut bad_files) =
        (0usize, 0usize, 0usize, 0usize);
    for f in &files {
        let r = test_file(f, &a.lib, a.accept);
        let mut lines = Vec::new();
        let mut file_failed = false;
        let mut file_unchecked = 0usize;
        if let Some(d) = &r.errors {
            file_failed = true;
            bad_files += 1;
            lines.push(format!("  does not check:\n{d}"));
        }
        for e in &r.expectations {
            let what = format!(
                "{} {}: predicted {}, expected {}",
                e.owner,
                e.metric,
                figure(e, e.predicted),
                figure(e, e.published)
            );
            let err = pct((e.predicted - e.published) / e.published);
            match &e.verdict {
                Verdict::Pass { tolerance, from } => {
                    passed += 1;
                    if a.verbose {
                        lines.push(format!(
                            "  pass {what} ({err}, within the {from} of {})",
                            pct(*tolerance)
                        ));
                    }
                }
                Verdict::Fail { tolerance, from } => {
                    failed += 1;
                    file_failed = true;
                    lines.push(format!(
                        "  FAIL {what} ({err}, outside the {from} of {})",
                        pct(*tolerance)
                    ));
                }
                Verdict::Unchecked if a.strict => {
                    failed += 1;
                    file_failed = true;
                    lines.push(format!("  FAIL {what} ({err}; no tolerance and no calibrated uncertainty, and --strict)"));
                }
                Verdict::Unchecked => {
                    unchecked += 1;
                    file_unchecked += 1;
                    if a.verbose {
                        lines.push(format!(
                            "  unchecked {what} ({err}; state a `tolerance` to check it)"
                        ));
                    }
                }
                Verdict::Broken(why) => {
                    failed += 1;
                    file_failed = true;
                    lines.push(format!("  FAIL {} {}: {why}", e.owner, e.metric));
                }
            }
        }
        let snap = snapshot_path(f);
        match &r.snapshot {
            None => {}
            Some(Snapshot::Same) => snaps_ok += 1,
            Some(Snapshot::Written) => {
                snaps_written += 1;
                lines.push(format!("  wrote {}", snap.display()));
            }
            Some(Snapshot::Missing) => {
                snaps_bad += 1;
                file_failed = true;
                lines.push(format!(
                    "  FAIL no snapshot {}: run `gantry test --accept {}` to store the report",
                    snap.display(),
                    f.display()
                ));
            }
            Some(Snapshot::Drifted(diff)) => {
                snaps_bad += 1;
                file_failed = true;
                lines.push(format!(
                    "  FAIL the studies' report drifted from {} (accept with `gantry test --accept {}`):\n{diff}",
                    snap.display(),
                    f.display()
                ));
            }
            Some(Snapshot::Unwritable(e)) => {
                snaps_bad += 1;
                file_failed = true;
                lines.push(format!("  FAIL cannot write {}: {e}", snap.display()));
            }
            Some(Snapshot::Unreadable(e)) => {
                snaps_bad += 1;
                file_failed = true;
                lines.push(format!(
                    "  FAIL cannot read {}: {e} (`gantry test --accept {}` replaces it)",
                    snap.display(),
                    f.display()
                ));
            }
        }
        let n_exp = r.expectations.len();
        let tag = if file_failed { "FAIL" } else { "ok  " };
        let unchecked_note = if file_unchecked > 0 {
            format!(", {file_unchecked} unchecked")
        } else {
            String::new()
        };
        outln!(
            "{tag} {} ({} expect{}{unchecked_note}, {} stud{})",
            f.display(),
            n_exp,
            if n_exp == 1 { "" } else { "s" },
            r.studies,
            if r.studies == 1 { "y" } else { "ies" }
        );
        for l in lines {
            outln!("{l}");
        }
    }
    outln!(
        "\n{} files: {} expects passed, {} failed, {} unchecked; {} snapshots matched, {} failed, {} written; {} files with errors",
        files.len(),
        passed,
        failed,
        unchecked,
        snaps_ok,
        snaps_bad,
        snaps_written,
        bad_files
    );
    if failed + snaps_bad + bad_files > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
