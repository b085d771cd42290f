//! The `gantry` command line. The only place that prints, exits with codes
//! and decides about colour; all work is in the library crates.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use gantry::check_files;

use gantry::{errln, errprint, out, outln, pin_error, pin_error_with};
use gantry_compiler::sharded::Form;
use gantry_lang::diagnostic;

#[derive(Parser)]
#[command(
    name = "gantry",
    version,
    about = "Hardware/software co-design for AI infrastructure"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum ExportKind {
    Megatron,
    Torchtitan,
    Torchrec,
    Trace,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum Command {
    /// Check .gantry files: syntax, names, units, shapes. Exit 0 if clean, 1 on errors.
    Check {
        /// Files to check (their imports are checked too).
        #[arg(required = true)]
        files: Vec<String>,
        /// Output format for diagnostics.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Print the resolved program after a clean check.
        #[arg(long, short)]
        verbose: bool,
        /// Extra folders to resolve imports against.
        #[arg(long = "lib")]
        lib: Vec<PathBuf>,
        /// Colour in diagnostics (auto: only on a terminal).
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
    /// Format .gantry files canonically (in place, or check with --check).
    Fmt {
        /// Files, or folders: a folder stands for every .gantry file beneath it.
        #[arg(required = true)]
        files: Vec<String>,
        /// Do not write; exit 1 if any file is not formatted.
        #[arg(long)]
        check: bool,
        /// Print the formatted text instead of writing it.
        #[arg(long)]
        stdout: bool,
    },
    /// Evaluate a plan at one design point and report its cost.
    Plan {
        file: String,
        /// Which plan of the file (default: the first declared; README, "Which plan runs").
        #[arg(long)]
        plan: Option<String>,
        /// Evaluate this one design point instead of searching, e.g.
        /// `dp=4,tp=8,pp=2,recompute=full,microbatch=1` (unpinned knobs take
        /// their documented defaults).
        #[arg(long, conflicts_with_all = ["pin", "top", "export"])]
        fix: Option<String>,
        /// Pins that narrow the search without stopping it (same syntax as --fix).
        #[arg(long)]
        pin: Option<String>,
        /// How many of the best design points to list (at least 1).
        #[arg(long, default_value_t = 5, value_parser = top_count)]
        top: usize,
        /// Also write an export of the best plan: megatron, torchtitan, torchrec or trace
        /// (to --output FILE; without it, the export goes to stdout and the
        /// report to stderr, so stdout is always one document).
        #[arg(long, value_enum)]
        export: Option<ExportKind>,
        /// The file the export is written to (stdout keeps the report).
        #[arg(long, short, requires = "export")]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[arg(long = "lib")]
        lib: Vec<PathBuf>,
        /// On a plan that records a published training configuration (a
        /// reference plan: `fix` pins and `expect` figures), also search
        /// with every pin released and say why that pick differs from the
        /// published configuration (as `gantry validate --picks`).
        #[arg(long, conflicts_with = "fix")]
        picks: bool,
        /// For a `serve` workload: also simulate the chosen deployment at
        /// these rates (requests per second, e.g. `1,2,4,8,16`): the
        /// latency-versus-rate curve.
        #[arg(long = "sweep-rate")]
        sweep_rate: Option<String>,
    },
    /// Run the co-design studies of a file: every system of each sweep
    /// against its workload mix.
    Study(gantry::study_cli::StudyArgs),
    /// Put the shards of one `gantry study --shard I/N` run together: the
    /// output is the same bytes as the single run's.
    Merge(gantry::study_cli::MergeArgs),
    /// Test .gantry files: every `expect` of their plans and studies
    /// (within its `tolerance`, or the model's stated uncertainty) and each
    /// study's report against the snapshot beside the file. Exit 0 when all
    /// hold, 1 when one fails, 2 on a usage error.
    Test(gantry::test_cli::TestArgs),
    /// Compare predictions with the published figures in examples/reference
    /// (each plan's prediction is what `gantry plan` reports: its search's best point).
    Validate {
        /// Folder of reference files.
        #[arg(default_value = "examples/reference")]
        dir: PathBuf,
        /// Also print each figure's leave-one-out error: its plan predicted
        /// with factors fitted (as `gantry calibrate --fit` does) without it.
        #[arg(long)]
        cross: bool,
        /// Instead, for each training reference plan: the planner's pick with
        /// every pin released, next to the published configuration, and why
        /// the published one loses in the model.
        #[arg(long, conflicts_with = "cross")]
        picks: bool,
    },
    /// Explain a diagnostic code (e.g. `gantry explain L040`, `C010`, `R007`), or list them all.
    Explain { code: Option<String> },
    /// Run a design point on simulated devices and compare with the reference interpreter.
    Run(gantry::runtime_cli::RunArgs),
    /// Print the JIT kernels of one device's shard (Cranelift IR).
    Kernels(gantry::runtime_cli::KernelsArgs),
    /// Time the JIT kernels on this host and print a `device` declaration for it,
    /// or, with `--fit DIR`, fit the stdlib's efficiency factors to reference runs.
    Calibrate(gantry::runtime_cli::CalibrateArgs),
}

fn use_color(c: Color) -> bool {
    match c {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

/// `--top`: a whole number of at least 1. `--top 0` listed one point
/// anyway (the search keeps the best), a setting silently changed.
fn top_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("at least 1 (the best design point is always listed)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e} (a whole number of design points, at least 1)")),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check {
            files,
            format,
            verbose,
            lib,
            color,
        } => {
            let checked = check_files(&files, &lib);
            match format {
                Format::Json => {
                    let json = diagnostic::to_json(&checked.diagnostics, &checked.sources);
                    outln!(
                        "{}",
                        serde_json::to_string_pretty(&json).unwrap_or_else(|_| "[]".into())
                    );
                }
                Format::Text => {
                    errprint!("{}", checked.render(use_color(color)));
                    if verbose && !checked.has_errors() {
                        out!("{}", checked.program.summary());
                    }
                    let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
                    let warnings = checked.diagnostics.len() - errors;
                    if errors > 0 || warnings > 0 {
                        errln!(
                            "{errors} error{}, {warnings} warning{}",
                            plural(errors),
                            plural(warnings)
                        );
                    }
                }
            }
            if checked.has_errors() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Fmt {
            files,
            check,
            stdout,
        } => fmt_files(&files, check, stdout),
        Command::Explain { code } => explain(code.as_deref()),
        Command::Plan {
            file,
            plan,
            fix,
            pin,
            top,
            export,
            output,
            format,
            lib,
            sweep_rate,
            picks,
        } => match serve_plan(
            &file,
            plan.as_deref(),
            fix.as_deref(),
            pin.is_some() || export.is_some(),
            top,
            format,
            sweep_rate.as_deref(),
            &lib,
        ) {
            Some(code) => code,
            None if sweep_rate.is_some() => {
                errln!("error[C006]: --sweep-rate is for plans of `serve` workloads");
                ExitCode::from(2)
            }
            None => match fix {
                Some(f) => plan_cmd(&file, plan.as_deref(), Some(&f), format, &lib),
                None => search_cmd(
                    &file,
                    plan.as_deref(),
                    pin.as_deref(),
                    top,
                    picks,
                    export.map(|k| (k, output.as_deref())),
                    format,
                    &lib,
                ),
            },
        },
        Command::Validate { dir, cross, picks } => {
            if picks {
                picks_cmd(&dir)
            } else if cross {
                gantry::fit_cli::validate_cross_cmd(&dir)
            } else {
                validate_cmd(&dir)
            }
        }
        Command::Study(a) => gantry::study_cli::study_cmd(&a),
        Command::Merge(a) => gantry::study_cli::merge_cmd(&a),
        Command::Test(a) => gantry::test_cli::test_cmd(&a),
        Command::Run(a) => gantry::runtime_cli::run_cmd(&a),
        Command::Kernels(a) => gantry::runtime_cli::kernels_cmd(&a),
        Command::Calibrate(a) => gantry::runtime_cli::calibrate_cmd(&a),
    }
}

/// `write!` into a `String` (the report is assembled before it is printed,
/// to stdout or, when an export takes stdout, to stderr).
macro_rules! push {
    ($s:expr, $($t:tt)*) => {{
        use std::fmt::Write;
        let _ = write!($s, $($t)*);
    }};
}

/// `writeln!` into a `String` (see [`push!`]).
macro_rules! pushln {
    ($s:expr, $($t:tt)*) => {{
        use std::fmt::Write;
        let _ = writeln!($s, $($t)*);
    }};
}

/// `gantry plan` on a plan of a `serve` workload (`None`: not one).
#[allow(clippy::too_many_arguments)]
fn serve_plan(
    file: &str,
    plan: Option<&str>,
    fix: Option<&str>,
    pin_or_export: bool,
    top: usize,
    format: ReportFormat,
    sweep: Option<&str>,
    lib: &[PathBuf],
) -> Option<ExitCode> {
    let checked = check_files(&[file.to_string()], lib);
    let serving = match plan {
        Some(n) => checked.program.plans.get(n),
        None => gantry::default_plan(&checked.program),
    }
    .is_some_and(|p| p.workload.serve.is_some());
    if checked.has_errors() && sweep.is_some() {
        // The file's own errors, not that --sweep-rate needs a serving
        // plan (which it may well name).
        return Some(match load_plan(file, plan, lib) {
            Err(code) => code,
            Ok(_) => ExitCode::from(1),
        });
    }
    if checked.has_errors() || !serving {
        return None;
    }
    let p = match load_plan(file, plan, lib) {
        Ok(p) => p,
        Err(code) => return Some(code),
    };
    if pin_or_export {
        errln!(
            "error[C006]: --pin and --export are not available for serving plans\n  help: search, or evaluate one deployment with --fix tp=..,dp=..,batch=.."
        );
        return Some(ExitCode::from(2));
    }
    let fix = match fix.map(gantry_compiler::point::parse_fix).transpose() {
        Ok(f) => f,
        Err(e) => return Some(pin_error(&e)),
    };
    let sweep = match sweep.map(gantry::serve_cli::parse_rates).transpose() {
        Ok(s) => s,
        Err(m) => {
            errln!("error[C006]: --sweep-rate: {m}");
            return Some(ExitCode::from(2));
        }
    };
    // A closed loop or a burst offers no rate to vary: every row of the
    // table was the same run, labelled with the rate it served.
    if sweep.is_some()
        && let Some(s) = p.workload.serve.as_deref()
        && let Some(c) = s.arrivals.clients(s.requests)
    {
        let how = match s.arrivals {
            gantry_lang::program::Arrivals::Closed { .. } => {
                format!("a closed loop of {c} clients")
            }
            _ => format!("a burst of {c} requests"),
        };
        errln!(
            "error[C006]: --sweep-rate: workload `{}` is {how}: its rate is what the deployment serves, not a rate to sweep\n  help: give it `poisson(rate = ..)` or `gamma(rate = .., cv = ..)` arrivals to sweep the offered rate",
            p.workload.name
        );
        return Some(ExitCode::from(2));
    }
    // Each rate simulates every request once more: bounded like a plan's
    // search (`MAX_SIMULATED_REQUESTS`).
    if let Some(rates) = &sweep
        && let Some(s) = p.workload.serve.as_deref()
    {
        let limit = gantry_compiler::serve::planner::MAX_SIMULATED_REQUESTS;
        let total = (rates.len() as u64).saturating_mul(s.requests);
        if total > limit {
            errln!(
                "error[C006]: --sweep-rate: {} rates of {} requests each would simulate {total} requests, over the {limit:.0e} a sweep may simulate\n  help: sweep fewer rates, or give the workload fewer `requests`",
                rates.len(),
                s.requests
            );
            return Some(ExitCode::from(2));
        }
    }
    let o = gantry::serve_cli::Options {
        file,
        fix,
        top,
        json: format == ReportFormat::Json,
        markdown: format == ReportFormat::Markdown,
        sweep,
    };
    Some(gantry::serve_cli::serve_cmd(&p, &o))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn explain(code: Option<&str>) -> ExitCode {
    match code {
        None => {
            for e in gantry::explain::all() {
                outln!("{}  {}", e.code, e.summary);
            }
            ExitCode::SUCCESS
        }
        Some(want) => match gantry::explain::find(want) {
            Some(e) => {
                outln!("{}: {}\n\n{}", e.code, e.summary, e.long);
                ExitCode::SUCCESS
            }
            None => {
                errln!("error: unknown diagnostic code `{want}`; `gantry explain` lists them");
                ExitCode::from(2)
            }
        },
    }
}

fn fmt_files(args: &[String], check: bool, stdout: bool) -> ExitCode {
    let mut status = 0u8;
    // A folder stands for every `.gantry` file beneath it, sorted.
    let mut files = Vec::new();
    for a in args {
        let p = std::path::Path::new(a);
        if p.is_dir() {
            let found = gantry::gantry_files(p);
            if found.is_empty() {
                errln!("error: no .gantry files under `{a}`");
                status = 2;
            }
            files.extend(found.iter().map(|f| f.to_string_lossy().into_owned()));
        } else {
            files.push(a.clone());
        }
    }
    for f in &files {
        let limit = gantry_lang::check::MAX_FILE_BYTES as u64;
        let text = match gantry::read_bounded(std::path::Path::new(f), limit) {
            Ok(Ok(b)) => match String::from_utf8(b) {
                Ok(t) => t,
                Err(_) => {
                    errln!("error[L005]: `{f}` is not UTF-8 text");
                    status = status.max(1);
                    continue;
                }
            },
            Ok(Err(_)) => {
                errln!("error[L006]: `{f}` is more than the {limit} byte limit");
                status = status.max(1);
                continue;
            }
            Err(e) => {
                errln!("error: cannot read `{f}`: {e}");
                status = 2;
                continue;
            }
        };
        match gantry_lang::fmt::format_source(&text) {
            Ok(out) => {
                if stdout {
                    out!("{out}");
                } else if check {
                    if out != text {
                        errln!("{f}: not formatted");
                        status = status.max(1);
                    }
                } else if out != text
                    && let Err(e) = std::fs::write(f, &out)
                {
                    errln!("error: cannot write `{f}`: {e}");
                    status = 2;
                }
            }
            Err(diags) => {
                let mut sources = gantry_lang::source::SourceMap::default();
                let id = sources.add(f.clone(), text.clone());
                let diags: Vec<_> = diags.into_iter().map(|d| d.in_file(id)).collect();
                errprint!(
                    "{}",
                    diagnostic::render(&diags, &sources, use_color(Color::Auto))
                );
                errln!("{f}: not formatted because it has syntax errors");
                status = status.max(1);
            }
        }
    }
    ExitCode::from(status)
}

fn plan_cmd(
    file: &str,
    plan: Option<&str>,
    fix: Option<&str>,
    format: ReportFormat,
    lib: &[PathBuf],
) -> ExitCode {
    use gantry_compiler::{plan, point, report};
    let pins = match fix.map(point::parse_fix).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => return pin_error(&e),
    };
    let p = match load_plan(file, plan, lib) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let p = &p;
    gantry::warn_overridden("--fix", &pins, &p.fixed);
    match plan::evaluate(p, &pins) {
        Ok(ev) => {
            match format {
                ReportFormat::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&report::json(&ev)).unwrap_or_default()
                ),
                ReportFormat::Text => out!("{}", report::text(&ev, false)),
                ReportFormat::Markdown => out!("{}", report::text(&ev, true)),
            }
            // The point is reported either way; an infeasible one (over
            // HBM, or missing a `subject to` constraint) exits 1.
            let e = &ev.estimate;
            let mut misses = Vec::new();
            if !e.feasible {
                misses.push(format!(
                    "needs {} per device, HBM holds {}",
                    gantry_lang::units::Quantity::new(
                        e.memory.total(),
                        gantry_lang::units::Dim::BYTES
                    ),
                    gantry_lang::units::Quantity::new(
                        e.memory.capacity,
                        gantry_lang::units::Dim::BYTES
                    )
                ));
            }
            misses.extend(ev.missed.iter().map(|c| format!("misses `subject to {c}`")));
            if misses.is_empty() {
                ExitCode::SUCCESS
            } else {
                errln!(
                    "error[C010]: the pinned design point is INFEASIBLE: {}\n  help: pin other knobs, or search without --fix",
                    misses.join("; ")
                );
                ExitCode::from(1)
            }
        }
        Err(e) => pin_error_with(&e, &pins),
    }
}

fn validate_cmd(dir: &std::path::Path) -> ExitCode {
    use gantry_compiler::validate;
    let files = gantry::gantry_files(dir);
    if files.is_empty() {
        errln!("error: no .gantry files under {}", dir.display());
        return ExitCode::from(2);
    }
    let mut by_section: std::collections::BTreeMap<char, Vec<f64>> = Default::default();
    // Figures of serving rows whose published figures miss Little's law
    // (`engine_fit::inexpressible`): listed, not in the sections' errors.
    let mut unfitted: std::collections::BTreeMap<char, usize> = Default::default();
    let mut failed = false;
    outln!(
        "{:<44} {:<28} {:>14} {:>14} {:>8}",
        "plan",
        "metric",
        "predicted",
        "published",
        "error"
    );
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let section = name.chars().next().unwrap_or('?').to_ascii_uppercase();
        let checked = check_files(&[f.to_string_lossy().into_owned()], &[]);
        if checked.has_errors() {
            errprint!("{}", checked.render(false));
            failed = true;
            continue;
        }
        for r in validate::rows(&checked.program) {
            match r {
                Ok(row) => {
                    let e = row.error_pct();
                    let little = checked
                        .program
                        .plans
                        .get(&row.plan)
                        .is_some_and(gantry_compiler::engine_fit::inexpressible);
                    outln!(
                        "{:<44} {:<28} {:>14} {:>14} {:>+7.1}%{}",
                        format!("{}:{}", name.trim_end_matches(".gantry"), row.plan),
                        row.metric,
                        gantry::fmt_metric(&row.metric, row.predicted),
                        gantry::fmt_metric(&row.metric, row.published),
                        e,
                        if !row.feasible {
                            "  (infeasible)"
                        } else if little {
                            "  (misses Little's law: not counted)"
                        } else {
                            ""
                        }
                    );
                    if little {
                        *unfitted.entry(section).or_default() += 1;
                    } else {
                        by_section.entry(section).or_default().push(e);
                    }
                }
                Err((plan, e)) => {
                    outln!("{name}:{plan}: error[{}]: {}", e.code, e.message);
                    failed = true;
                }
            }
        }
    }
    outln!();
    for (s, errs) in &by_section {
        let max = errs.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        let not_counted = match unfitted.get(s) {
            Some(n) => {
                format!(" ({n} more not counted: their rows' published figures miss Little's law)")
            }
            None => String::new(),
        };
        outln!(
            "section {s}: {} figures, median |error| {:.1}%, max |error| {:.1}%{not_counted}",
            errs.len(),
            validate::median(errs),
            max
        );
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn picks_cmd(dir: &std::path::Path) -> ExitCode {
    use gantry_compiler::validate;
    let files = gantry::gantry_files(dir);
    if files.is_empty() {
        errln!("error[C017]: no .gantry files under {}", dir.display());
        return ExitCode::from(2);
    }
    let mut failed = false;
    let (mut same, mut total) = (0, 0);
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for f in &files {
        let checked = check_files(&[f.to_string_lossy().into_owned()], &[]);
        if checked.has_errors() {
            errprint!("{}", checked.render(false));
            failed = true;
            continue;
        }
        for r in validate::picks(&checked.program) {
            match r {
                Ok(p) => {
                    total += 1;
                    if p.why.is_none() {
                        same += 1;
                    }
                    for k in &p.kinds {
                        *kinds.entry(*k).or_insert(0usize) += 1;
                    }
                    outln!("{}", p.plan);
                    out!("{}", gantry_compiler::report::pick_lines(&p, false));
                }
                Err((plan, e)) => {
                    outln!("{plan}: error[{}]: {}", e.code, e.message);
                    failed = true;
                }
            }
        }
    }
    outln!();
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (k, n) in kinds {
        outln!("why: {k} in {n} of {total}");
    }
    outln!("{same} of {total} training plans: the planner picks the published configuration");
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn load_plan(
    file: &str,
    plan: Option<&str>,
    lib: &[PathBuf],
) -> Result<gantry_lang::program::Plan, ExitCode> {
    let checked = check_files(&[file.to_string()], lib);
    if checked.has_errors() {
        errprint!("{}", checked.render(use_color(Color::Auto)));
        return Err(ExitCode::from(1));
    }
    let chosen = match plan {
        Some(name) => checked.program.plans.get(name),
        None => gantry::default_plan(&checked.program),
    };
    match chosen {
        Some(p) => Ok(p.clone()),
        None => {
            let names: Vec<&str> = checked.program.plans.keys().map(|s| s.as_str()).collect();
            errln!(
                "error[C007]: {}\n  help: plans in this file: {}",
                plan.map_or("the file declares no plan".to_string(), |n| format!(
                    "no plan named `{n}`"
                )),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            );
            Err(ExitCode::from(1))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn search_cmd(
    file: &str,
    plan: Option<&str>,
    pin: Option<&str>,
    top: usize,
    picks: bool,
    export: Option<(ExportKind, Option<&std::path::Path>)>,
    format: ReportFormat,
    lib: &[PathBuf],
) -> ExitCode {
    use gantry_compiler::{export as ex, placement, plan as gplan, point, report};
    let p = match load_plan(file, plan, lib) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let pins = match pin.map(point::parse_fix).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => return pin_error(&e),
    };
    gantry::warn_overridden("--pin", &pins, &p.fixed);
    let started = std::time::Instant::now();
    let result = gplan::search(&p, &pins, top.max(1));
    let seconds = started.elapsed().as_secs_f64();
    let s = match result {
        Ok(s) => s,
        Err(e) => return pin_error_with(&e, &pins),
    };
    let metric = &p.objective.1;
    let mut report = String::new();
    let best = &s.best.estimate;
    // A plan that records a published configuration (a reference plan):
    // the pick with its pins released, next to it ([`validate::pick`],
    // the path `gantry validate --picks` takes). The published point is
    // the plan's own prediction: this search's best unless `--pin` moved it.
    if picks && !gantry_compiler::validate::records_published(&p) {
        errln!(
            "note: --picks: plan `{}` records no published training configuration (no `expect` on a training workload)",
            p.name
        );
    }
    let pick = (picks && gantry_compiler::validate::records_published(&p))
        .then(|| {
            let published = if pins.is_empty() {
                Ok(best.clone())
            } else {
                gantry_compiler::validate::predict(&p).map(|e| e.estimate)
            };
            published.and_then(|e| gantry_compiler::validate::pick(&p, e))
        })
        .and_then(|r| {
            r.map_err(|e| {
                errln!(
                    "warning: no pick with the pins released: error[{}]: {}",
                    e.code,
                    e.message
                )
            })
            .ok()
        });
    match format {
        ReportFormat::Json => {
            let mut j = report::json(&s.best);
            j["search"] = serde_json::json!({
                "evaluated": s.stats.evaluated,
                "pruned": s.stats.pruned,
                "invalid": s.stats.invalid,
                "infeasible": s.stats.infeasible,
                "off_target": s.stats.off_target,
                "redundant": s.stats.redundant,
                "egraph_sequence_parallel": s.stats.egraph,
                "space": s.space_size,
                "egraph_nodes": s.egraph_nodes,
                "egraph_stop_reason": s.egraph_stop,
                "stop_reason": s.stop.name(),
                "elapsed_s": seconds,
                "objective_metric": metric,
                "optimality_gap": s.optimality_gap,
                "optimality_gap_to": s.stats.gap_to(),
            });
            j["placement"] = placement::json(best, &p.system, &s.best.hardware.topo);
            j["explanation"] = serde_json::json!(s.explanation);
            if let Some(pk) = &pick {
                j["published"] = report::pick_json(pk);
            }
            j["layer_plans"] = serde_json::Value::Array(
                s.layer_plans
                    .iter()
                    .map(|l| serde_json::json!({ "tp": l.tp, "sequence_parallel": l.sequence_parallel, "allreduces": l.allreduces, "reduce_scatters": l.reduce_scatters, "all_gathers": l.all_gathers, "forward_s": l.seconds, "term": l.term, "whole": l.pinned(Form::Whole), "column": l.pinned(Form::Column), "row": l.pinned(Form::Row) }))
                    .collect(),
            );
            j["top"] = serde_json::Value::Array(
                s.top.iter().map(|e| serde_json::json!({ "point": e.point.to_string(), "objective_value": e.metric(metric), "step_time_s": e.time.step, "memory_per_device_bytes": e.memory.total() })).collect(),
            );
            pushln!(
                report,
                "{}",
                serde_json::to_string_pretty(&j).unwrap_or_default()
            );
        }
        _ => {
            push!(
                report,
                "{}",
                report::text(&s.best, format == ReportFormat::Markdown)
            );
            pushln!(report, "\nSearch");
            pushln!(
                report,
                "  {} design points in the space; {} evaluated, {} pruned by the memory bound, {} invalid, {} infeasible, {} redundant, {} set aside by the e-graph's sequence-parallel choice; {} in {:.3} s; optimality gap {} to {}",
                s.space_size,
                s.stats.evaluated,
                s.stats.pruned,
                s.stats.invalid,
                s.stats.infeasible,
                s.stats.redundant,
                s.stats.egraph,
                s.stop.name(),
                seconds,
                s.optimality_gap,
                s.stats.gap_to()
            );
            if let Some(t) = &p.target {
                pushln!(
                    report,
                    "  target \"{t}\": {} feasible points set aside that it cannot run",
                    s.stats.off_target
                );
            }
            pushln!(report, "\nTop {} by {}", s.top.len(), metric);
            for (i, e) in s.top.iter().enumerate() {
                pushln!(
                    report,
                    "  {:>2}. {:<110} {}",
                    i + 1,
                    e.point.to_string(),
                    gantry_lang::units::format_number(e.metric(metric).unwrap_or(f64::NAN))
                );
            }
            if !s.layer_plans.is_empty() {
                pushln!(
                    report,
                    "\nRepeated block (e-graph: {} nodes, {})",
                    s.egraph_nodes,
                    s.egraph_stop
                );
                for l in &s.layer_plans {
                    pushln!(
                        report,
                        "  tp={:<3} {:<22} all-reduce x{} reduce-scatter x{} all-gather x{}{}",
                        l.tp,
                        if l.sequence_parallel {
                            "sequence parallel"
                        } else if l.tp > 1 {
                            "tensor parallel"
                        } else {
                            "replicated"
                        },
                        l.allreduces,
                        l.reduce_scatters,
                        l.all_gathers,
                        l.forms
                            .iter()
                            .map(|(n, f)| format!(", {n}: {}", f.name()))
                            .collect::<String>()
                    );
                }
            }
            pushln!(report, "\nWhy");
            for line in &s.explanation {
                pushln!(report, "  {line}");
            }
            if let Some(pk) = &pick {
                push!(
                    report,
                    "{}",
                    report::pick_text(pk, format == ReportFormat::Markdown)
                );
            }
        }
    }
    let Some((kind, output)) = export else {
        out!("{report}");
        return ExitCode::SUCCESS;
    };
    let exported = match kind {
        ExportKind::Megatron => ex::megatron(best, &s.best.ir, &p.workload).map(|m| m.to_string()),
        ExportKind::Torchtitan => ex::torchtitan(best, &s.best.ir, &p.workload).map(|t| {
            format!(
                "# torchtitan {} job config written by gantry (--job.config_file)\n{}",
                ex::TORCHTITAN_VERSION,
                toml::to_string(&t).unwrap_or_default()
            )
        }),
        ExportKind::Torchrec => ex::torchrec(
            &s.tables,
            &p.workload,
            s.table_group,
            p.system.node.devices_per_node,
        )
        .map(|j| serde_json::to_string_pretty(&j).unwrap_or_default()),
        ExportKind::Trace => ex::trace(best, &p.workload.phase)
            .map(|t| serde_json::to_string(&t).unwrap_or_default()),
    };
    let mut text = match exported {
        Ok(t) => t,
        Err(e) => {
            // The report goes where it would have gone; no export is written.
            if output.is_some() {
                out!("{report}");
            } else {
                errprint!("{report}");
            }
            errln!("error[{}]: {}\n  help: {}", e.code, e.message, e.help);
            return ExitCode::from(1);
        }
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    // stdout holds one document: the report, with the export in `--output`,
    // or, without `--output`, the export, with the report on stderr.
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                errln!("error: cannot write `{}`: {e}", path.display());
                return ExitCode::from(2);
            }
            out!("{report}");
        }
        None => {
            errprint!("{report}");
            out!("{text}");
        }
    }
    ExitCode::SUCCESS
}
