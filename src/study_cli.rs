//! `gantry study`: runs a file's studies and writes their results (text,
//! Markdown, `gantry.study/1` JSON, CSV), the SVG plots of `--plot` and
//! the HTML report of `--report` (src/html.rs).
//!
//! The CLI owns what the library crates do not do: files, the rayon pool
//! the studies run on (`--jobs`, all cores by default) and the progress
//! bar. The studies' cells run in parallel inside the compiler crate and
//! are collected in sweep order, so every output is the same bytes for
//! any `--jobs` (tests/fleet.rs compares one thread with two). The bar
//! (indicatif) is drawn on stderr only when stderr is a terminal and only
//! once the run has taken a second, so short runs and pipes see nothing.
//!
//! `--shard I/N` and `gantry merge` (compiler/src/shard.rs) split the run
//! over processes: a run is one job list, a shard runs a slice of it and
//! writes the results, a merge reads every slice back; both the single
//! run and the merge end in [`emit`], so their outputs are the same bytes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gantry_compiler::sensitivity::{self, Sensitivity};
use gantry_compiler::study_doc::{self, Outcome};
use gantry_compiler::{fleet, report, shard};
use gantry_lang::program::Study;

use crate::check_files;

#[derive(Copy, Clone, PartialEq, Eq, clap::ValueEnum)]
pub enum StudyFormat {
    Text,
    Markdown,
    Json,
    Csv,
}

#[derive(clap::Args)]
pub struct StudyArgs {
    pub file: String,
    /// Which study (default: all of them).
    #[arg(long)]
    pub study: Option<String>,
    /// text, markdown, json (`gantry.study/1`, docs/SCHEMAS.md) or csv
    /// (fleet studies: one row per fleet kind and pool; weighted
    /// studies: one row per system and workload; with `--sensitivity`, a
    /// further table of one row per system and workload).
    #[arg(long, value_enum, default_value_t = StudyFormat::Text)]
    pub format: StudyFormat,
    /// Also write SVG plots into this folder (created if missing): for
    /// each fleet study, `STUDY-pareto.svg`, its candidate fleets by cost
    /// and power with the Pareto front; with `--sensitivity`,
    /// `STUDY-sensitivity.svg` (bars) and `STUDY-profile.svg` (radar).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also write `DIR/report.html` (created if missing): one
    /// self-contained page with every study's tables (the Markdown form)
    /// and its plots inline; nothing is fetched when it is opened.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Re-plan every (system, workload) cell with +10% of each resource
    /// (compute, HBM bandwidth and capacity, scale-up and scale-out
    /// bandwidth, host memory): elasticities and the binding resource
    /// (docs/COST-MODEL.md §10). Six searches per cell beyond the cell's own.
    #[arg(long)]
    pub sensitivity: bool,
    /// Threads to evaluate cells on (0: one per core; at most 256). The
    /// output does not depend on it.
    #[arg(long, default_value_t = 0, value_parser = jobs)]
    pub jobs: usize,
    /// Evaluate only shard I of N (`I/N`, I from 0 to N-1, N at most 2^20; `env`: from
    /// Slurm's SLURM_ARRAY_TASK_ID/_MIN/_COUNT or a Kubernetes Indexed
    /// Job's JOB_COMPLETION_INDEX with GANTRY_SHARDS) and write its
    /// partial JSON (`gantry.shard/1`) for `gantry merge`: a fixed slice
    /// of the run's cells, every N-th one.
    #[arg(long, value_name = "I/N|env", conflicts_with_all = ["format", "plot", "report"])]
    pub shard: Option<String>,
    /// With `--shard`: write the partial JSON to `DIR/shard-I-of-N.json`
    /// (DIR created if missing) instead of stdout.
    #[arg(long, value_name = "DIR", requires = "shard")]
    pub out: Option<PathBuf>,
    #[arg(long = "lib")]
    pub lib: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The partial JSON files (`gantry.shard/1`) of one `gantry study
    /// --shard` run: every shard once, in any order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The `.gantry` file the shards ran, when it is not at the path
    /// they recorded (it must hold the same studies).
    #[arg(long)]
    pub source: Option<String>,
    /// As `gantry study --format`: the merged result is the same bytes
    /// as the single run's.
    #[arg(long, value_enum, default_value_t = StudyFormat::Text)]
    pub format: StudyFormat,
    /// As `gantry study --plot`.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// As `gantry study --report`.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Threads to assemble on (0: one per core; at most 256).
    #[arg(long, default_value_t = 0, value_parser = jobs)]
    pub jobs: usize,
}

/// The most threads `--jobs` starts. Each is an OS thread with its own
/// stack, and the pool starts them all whatever the work: 10,000 took
/// 38 s to start and stop on a two-core machine and 2^64-1 never ended.
pub const MAX_JOBS: usize = 256;

/// `--jobs`: a whole number from 0 (one thread per core) to [`MAX_JOBS`].
fn jobs(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|e| format!("{e} (a whole number of threads, 0 for one per core)"))?;
    if n > MAX_JOBS {
        return Err(format!(
            "at most {MAX_JOBS} threads, got {n} (0: one per core)"
        ));
    }
    Ok(n)
}

/// A progress bar that stays hidden until the run has taken a second,
/// and for good when stderr is not a terminal.
struct Progress {
    bar: indicatif::ProgressBar,
    start: Instant,
    shown: AtomicBool,
    terminal: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::hidden(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} searches, eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress {
            bar,
            start: Instant::now(),
            shown: AtomicBool::new(false),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&self) {
        self.bar.inc(1);
        if self.terminal
            && !self.shown.load(Ordering::Relaxed)
            && self.start.elapsed() > Duration::from_secs(1)
            && !self.shown.swap(true, Ordering::Relaxed)
        {
            self.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }
}

/// What one study produced.
enum Ran {
    Weighted(Vec<gantry_compiler::study::Row>),
    Fleet(Box<fleet::Answer>, fleet::front::Fronts),
}

/// The cells a study's sensitivity plots show, labelled by workload:
/// for a fleet study each demand's workload on its pooled system, for a
/// weighted study every workload on the best-scoring system.
fn plotted<'a>(
    st: &Study,
    ran: &Ran,
    table: &'a sensitivity::Table,
) -> (String, Vec<(String, &'a Sensitivity)>) {
    let index = |name: &str| st.workloads.iter().position(|(w, _)| w.name == name);
    match ran {
        Ran::Fleet(a, _) => {
            let cells = st
                .demand
                .iter()
                .zip(&a.pooled.choice)
                .filter_map(|(d, &s)| {
                    let c = table.get(s)?.get(index(&d.workload)?)?.as_ref().ok()?;
                    Some((d.workload.clone(), c))
                })
                .collect();
            ("each workload on its pooled system".into(), cells)
        }
        Ran::Weighted(rows) => {
            let best =
                (0..rows.len()).fold(0, |b, i| if rows[i].score > rows[b].score { i } else { b });
            let cells = table
                .get(best)
                .map(|row| {
                    st.workloads
                        .iter()
                        .zip(row)
                        .filter_map(|((w, _), c)| Some((w.name.clone(), c.as_ref().ok()?)))
                        .collect()
                })
                .unwrap_or_default();
            (
                format!(
                    "on {}",
                    st.systems.get(best).map_or("", |s| s.name.as_str())
                ),
                cells,
            )
        }
    }
}

/// An SVG file written by `--plot`: its name and its text.
pub struct Svg {
    pub name: String,
    pub title: String,
    pub text: String,
}

fn plots(st: &Study, ran: &Ran, sens: Option<&sensitivity::Table>) -> Result<Vec<Svg>, String> {
    let mut v = Vec::new();
    if let Ran::Weighted(rows) = ran {
        let title = format!(
            "{}: weighted score per system, by workload ({})",
            st.name, st.objective.1
        );
        v.push(Svg {
            name: format!("{}-systems.svg", st.name),
            text: crate::plot::per_system_svg(&title, rows)?,
            title,
        });
    }
    if let Ran::Fleet(_, f) = ran {
        v.push(Svg {
            name: format!("{}-pareto.svg", st.name),
            title: "Candidate fleets by TCO and power, Pareto front in red".into(),
            text: crate::plot::fleet_pareto_svg(&st.name, f)?,
        });
    }
    if let Some(t) = sens {
        let (on, cells) = plotted(st, ran, t);
        let title = format!("{}: elasticity to +10% of each resource, {on}", st.name);
        v.push(Svg {
            name: format!("{}-sensitivity.svg", st.name),
            text: crate::plot::sensitivity_svg(&title, &cells)?,
            title,
        });
        let title = format!("{}: demand profile, {on}", st.name);
        v.push(Svg {
            name: format!("{}-profile.svg", st.name),
            text: crate::plot::profile_svg(&title, &cells)?,
            title,
        });
    }
    Ok(v)
}

/// A study's Markdown form: its tables and, with `--sensitivity`, the
/// sensitivity table.
fn markdown(st: &Study, o: &Outcome, sens: Option<&sensitivity::Table>) -> String {
    let mut s = match o {
        Outcome::Weighted(rows) => study_doc::weighted_markdown(st, rows),
        Outcome::Fleet(a, f) => fleet::report::markdown(&st.name, a, f),
    };
    if let Some(t) = sens {
        s.push_str(&sensitivity::text(st, t, true));
    }
    s
}

fn write_plots(dir: &Path, svgs: &[&Svg]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    for s in svgs {
        let path = dir.join(&s.name);
        std::fs::write(&path, &s.text)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    }
    Ok(())
}

/// The studies of a checked program to run, in declaration order: all,
/// or the one named (`C007` if there is none).
fn select<'a>(
    program: &'a gantry_lang::program::Program,
    name: Option<&str>,
) -> Option<Vec<&'a Study>> {
    let mut studies: Vec<&Study> = program
        .studies
        .values()
        .filter(|s| name.is_none_or(|n| s.name == n))
        .collect();
    studies.sort_by_key(|s| (s.span.file, s.span.start));
    if studies.is_empty() {
        crate::errln!(
            "error[C007]: {}",
            name.map_or("the file declares no study".to_string(), |n| format!(
                "no study named `{n}`"
            ))
        );
        return None;
    }
    Some(studies)
}

fn thread_pool(jobs: usize) -> Result<rayon::ThreadPool, ExitCode> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| {
            crate::errln!("error: cannot start {jobs} threads: {e}");
            ExitCode::from(2)
        })
}

/// `--shard I/N` or `--shard env` as (I, N), or the `C032` message.
fn shard_spec(spec: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<(usize, usize), String> {
    let num = |what: &str, v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("{what} `{v}` is not a whole number"))
    };
    let (i, n) = if spec == "env" {
        if let Some(id) = var("SLURM_ARRAY_TASK_ID") {
            let count = var("SLURM_ARRAY_TASK_COUNT")
                .ok_or("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")?;
            let min = var("SLURM_ARRAY_TASK_MIN").unwrap_or_else(|| "0".into());
            let (id, min) = (
                num("SLURM_ARRAY_TASK_ID", &id)?,
                num("SLURM_ARRAY_TASK_MIN", &min)?,
            );
            let i = id.checked_sub(min).ok_or(format!(
                "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
            ))?;
            (i, num("SLURM_ARRAY_TASK_COUNT", &count)?)
        } else if let Some(id) = var("JOB_COMPLETION_INDEX") {
            let count = var("GANTRY_SHARDS").ok_or(
                "JOB_COMPLETION_INDEX is set but GANTRY_SHARDS (the Job's `completions`) is not",
            )?;
            (
                num("JOB_COMPLETION_INDEX", &id)?,
                num("GANTRY_SHARDS", &count)?,
            )
        } else {
            return Err("`--shard env` found neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)".into());
        }
    } else {
        let (i, n) = spec
            .split_once('/')
            .ok_or(format!("`--shard {spec}` is not of the form I/N"))?;
        (num("the shard", i)?, num("the shard count", n)?)
    };
    if n == 0 || i >= n {
        return Err(format!(
            "shard {i} of {n} does not exist: shards are numbered 0 to N-1"
        ));
    }
    if n > shard::MAX_SHARDS {
        return Err(format!(
            "{n} shards are too many: a run is split into at most {} (`gantry merge` reads them all back)",
            shard::MAX_SHARDS
        ));
    }
    Ok((i, n))
}

/// How the results are written.
struct Outputs<'a> {
    format: StudyFormat,
    plot: Option<&'a Path>,
    report: Option<&'a Path>,
}

pub fn study_cmd(a: &StudyArgs) -> ExitCode {
    let checked = check_files(std::slice::from_ref(&a.file), &a.lib);
    if checked.has_errors() {
        let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        crate::errprint!("{}", checked.render(color));
        return ExitCode::from(1);
    }
    let Some(studies) = select(&checked.program, a.study.as_deref()) else {
        return ExitCode::from(1);
    };
    let shard = match a
        .shard
        .as_deref()
        .map(|s| shard_spec(s, &|v| std::env::var(v).ok()))
    {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(m)) => {
            crate::errln!(
                "error[C032]: {m}\n  help: `--shard 0/4` .. `--shard 3/4` run a study in four slices; `gantry merge` puts them together"
            );
            return ExitCode::from(2);
        }
    };
    let pool = match thread_pool(a.jobs) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let jobs = shard::jobs(&studies, a.sensitivity);
    let (index, count) = shard.unwrap_or((0, 1));
    let mine = |k: usize| k % count == index;
    let total: u64 = jobs
        .iter()
        .enumerate()
        .filter(|(k, _)| mine(*k))
        .map(|(_, j)| j.searches())
        .sum();
    let progress = Progress::new(total);
    let tick = || progress.tick();
    let results = pool.install(|| shard::run(&studies, &jobs, &mine, &tick));
    progress.bar.finish_and_clear();
    if shard.is_some() {
        let run = shard::RunId {
            source: a.file.clone(),
            lib: a
                .lib
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            study: a.study.clone(),
            sensitivity: a.sensitivity,
            fingerprint: shard::fingerprint(&studies, a.sensitivity),
        };
        let text = match shard::Partial::of(&run, index, count, jobs.len(), results) {
            Ok(t) => t,
            Err(m) => {
                crate::errln!("error[C032]: shard {index}/{count} cannot be written exactly: {m}");
                return ExitCode::from(1);
            }
        };
        match &a.out {
            None => out!("{text}"),
            Some(dir) => {
                let path = dir.join(format!("shard-{index}-of-{count}.json"));
                if let Err(e) =
                    std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, text))
                {
                    crate::errln!("error: cannot write `{}`: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    let done = results.into_iter().map(|(_, d)| d).collect();
    let answered = match shard::assemble(&studies, a.sensitivity, &jobs, done) {
        Ok(v) => v,
        Err(m) => {
            crate::errln!("error: {m}");
            return ExitCode::from(2);
        }
    };
    let outs = Outputs {
        format: a.format,
        plot: a.plot.as_deref(),
        report: a.report.as_deref(),
    };
    pool.install(|| emit(&a.file, &outs, answered))
}

/// One study's text report, as `gantry study` prints it (and `gantry
/// test` snapshots it).
pub fn text(st: &Study, o: &Outcome, sens: Option<&sensitivity::Table>) -> String {
    let mut s = match o {
        Outcome::Weighted(rows) => format!(
            "{}{}",
            report::study_text(st, rows),
            study_doc::weighted_fronts_text(st, rows, false)
        ),
        Outcome::Fleet(a, f) => format!(
            "study {}: {} systems x {} demands, the cheapest fleet meeting the demand\n{}{}",
            st.name,
            st.systems.len(),
            st.demand.len(),
            fleet::report::text(a),
            fleet::report::fronts_text(a, f, false)
        ),
    };
    if let Some(t) = sens {
        s.push_str(&sensitivity::text(st, t, false));
    }
    s
}

/// Runs `studies` in this process on the current rayon pool, without
/// sensitivity (what `gantry test` compares): each study's answer.
pub fn run_all<'a>(studies: &[&'a Study]) -> Result<Vec<shard::Answered<'a>>, String> {
    let jobs = shard::jobs(studies, false);
    let done = shard::run(studies, &jobs, &|_| true, &|| {})
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    shard::assemble(studies, false, &jobs, done)
}

/// The pooled-fleet figure `metric` of a study's answer (a
/// [`gantry_lang::program::STUDY_METRICS`] name), in base units.
pub fn fleet_figure(a: &fleet::Answer, metric: &str) -> Option<f64> {
    let f = &a.pooled;
    match metric {
        "cost" => Some(f.cost),
        "power" => Some(f.power),
        // Devices bought: whole nodes (what the report's pool lines count).
        "devices" => Some(f.pools.iter().map(|p| p.tco.devices as f64).sum()),
        _ => None,
    }
}

/// `gantry merge`: the shards of one `gantry study --shard` run put
/// together, written as the single run writes it. Every way the files
/// can be wrong is `C033` (exit 1).
pub fn merge_cmd(a: &MergeArgs) -> ExitCode {
    let fail = |b: shard::Bad| {
        let at = if b.file.is_empty() {
            String::new()
        } else {
            format!("{}: ", b.file)
        };
        crate::errln!("error[C033]: {at}{}\n  help: {}", b.message, b.help);
        ExitCode::from(1)
    };
    let mut parts = Vec::new();
    for f in &a.files {
        let name = f.display().to_string();
        // A regular file by its length, without reading it; a device or
        // pipe (length 0) by a bounded read.
        let len = std::fs::metadata(f).map_or(0, |m| m.len());
        let read = if len > shard::MAX_SHARD_BYTES {
            Ok(Err(len))
        } else {
            crate::read_bounded(f, shard::MAX_SHARD_BYTES)
        };
        let text = match read {
            Ok(Ok(b)) => match String::from_utf8(b) {
                Ok(t) => t,
                Err(_) => {
                    return fail(shard::Bad {
                        file: name,
                        message: "cannot read the file: it is not UTF-8 text".into(),
                        help: "pass the files `gantry study --shard` wrote".into(),
                    });
                }
            },
            Ok(Err(_)) => {
                return fail(shard::Bad {
                    file: name,
                    message: format!(
                        "the file is larger than {} bytes, more than any shard's JSON",
                        shard::MAX_SHARD_BYTES
                    ),
                    help: "pass the files `gantry study --shard` wrote".into(),
                });
            }
            Err(e) => {
                return fail(shard::Bad {
                    file: name,
                    message: format!("cannot read the file: {e}"),
                    help: "pass the files `gantry study --shard` wrote".into(),
                });
            }
        };
        match shard::parse(&name, &text) {
            Ok(p) => parts.push((name, p)),
            Err(b) => return fail(b),
        }
    }
    if let Err(b) = shard::check_set(&parts) {
        return fail(b);
    }
    let run = parts[0].1.run();
    let source = a.source.clone().unwrap_or_else(|| run.source.clone());
    let lib: Vec<PathBuf> = run.lib.iter().map(PathBuf::from).collect();
    let checked = check_files(std::slice::from_ref(&source), &lib);
    if checked.has_errors() {
        let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        crate::errprint!("{}", checked.render(color));
        return ExitCode::from(1);
    }
    let Some(studies) = select(&checked.program, run.study.as_deref()) else {
        return ExitCode::from(1);
    };
    let fingerprint = shard::fingerprint(&studies, run.sensitivity);
    let jobs = shard::jobs(&studies, run.sensitivity);
    if fingerprint != run.fingerprint || jobs.len() != parts[0].1.jobs {
        return fail(shard::Bad {
            file: parts[0].0.clone(),
            message: format!(
                "the studies of `{source}` are not those the shards ran (fingerprint {fingerprint}, the shards' {}): the file, an import or the stdlib changed since",
                run.fingerprint
            ),
            help: "rerun the shards on the file as it is now, or merge with the file they ran (`--source`)".into(),
        });
    }
    let done = match shard::collect(parts) {
        Ok(d) => d,
        Err(b) => return fail(b),
    };
    let answered = match shard::assemble(&studies, run.sensitivity, &jobs, done) {
        Ok(v) => v,
        Err(m) => {
            return fail(shard::Bad {
                file: String::new(),
                message: m,
                help: "pass the files `gantry study --shard` wrote, unedited, by the same Gantry version".into(),
            });
        }
    };
    let pool = match thread_pool(a.jobs) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let outs = Outputs {
        format: a.format,
        plot: a.plot.as_deref(),
        report: a.report.as_deref(),
    };
    pool.install(|| emit(&run.source, &outs, answered))
}

/// Writes the studies' results: the one path of a single run and of a
/// merge, so the two are the same bytes. A fleet study whose demand
/// cannot be met (`C025`) is reported on stderr and left out.
fn emit(file: &str, a: &Outputs, answered: Vec<shard::Answered>) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    let mut ran: Vec<(&Study, Ran, Option<sensitivity::Table>)> = Vec::new();
    for an in answered {
        let st = an.study;
        let r = match an.outcome {
            Ok(shard::Studied::Weighted(rows)) => Ran::Weighted(rows),
            Ok(shard::Studied::Fleet(ans)) => {
                let cap = st
                    .site
                    .as_ref()
                    .and_then(|s| s.power_cap)
                    .unwrap_or(f64::INFINITY);
                let f = fleet::front::of(&ans, cap);
                Ran::Fleet(ans, f)
            }
            Err(u) => {
                crate::errln!("error[C025]: {}\n  help: {}", u.message, u.help);
                code = ExitCode::from(1);
                continue;
            }
        };
        ran.push((st, r, an.sensitivity));
    }
    let outcomes: Vec<(&Study, Outcome)> = ran
        .iter()
        .map(|(st, r, _)| {
            let o = match r {
                Ran::Weighted(rows) => Outcome::Weighted(rows),
                Ran::Fleet(a, f) => Outcome::Fleet(a, f),
            };
            (*st, o)
        })
        .collect();
    if a.plot.is_some() || a.report.is_some() {
        let svgs = match ran
            .iter()
            .map(|(st, r, s)| plots(st, r, s.as_ref()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(v) => v,
            Err(e) => {
                crate::errln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        if let Some(dir) = &a.plot
            && let Err(e) = write_plots(dir, &svgs.iter().flatten().collect::<Vec<_>>())
        {
            crate::errln!("error: {e}");
            return ExitCode::from(2);
        }
        if let Some(dir) = &a.report {
            let sections: Vec<crate::html::Section> = outcomes
                .iter()
                .zip(&ran)
                .zip(svgs)
                .map(|(((st, o), (_, _, sens)), svgs)| crate::html::Section {
                    name: st.name.clone(),
                    markdown: markdown(st, o, sens.as_ref()),
                    plots: svgs.into_iter().map(|s| (s.title, s.text)).collect(),
                })
                .collect();
            let page = crate::html::report(&format!("Gantry studies of {file}"), &sections);
            let path = dir.join("report.html");
            if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, page)) {
                crate::errln!("error: cannot write `{}`: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    match a.format {
        StudyFormat::Json => {
            let mut doc = study_doc::json(&outcomes);
            for (i, (st, _, s)) in ran.iter().enumerate() {
                if let Some(t) = s {
                    doc["studies"][i]["sensitivity"] = sensitivity::json(st, t);
                }
            }
            out!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default())
        }
        StudyFormat::Csv => {
            let mut s = study_doc::csv(&outcomes);
            let mut rows = Vec::new();
            for (st, _, t) in &ran {
                if let Some(t) = t {
                    rows.extend(sensitivity::csv_rows(st, t));
                }
            }
            if !rows.is_empty() {
                s.push('\n');
                s.push_str(&study_doc::csv_line(&sensitivity::csv_header()));
                for r in rows {
                    s.push_str(&study_doc::csv_line(&r));
                }
            }
            out!("{s}")
        }
        StudyFormat::Text | StudyFormat::Markdown => {
            let md = a.format == StudyFormat::Markdown;
            for ((st, o), (_, _, sens)) in outcomes.iter().zip(&ran) {
                if md {
                    out!("{}", markdown(st, o, sens.as_ref()));
                    continue;
                }
                out!("{}", text(st, o, sens.as_ref()));
            }
        }
    }
    code
}
