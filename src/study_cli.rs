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

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gantry_compiler::sensitivity::{self, Sensitivity};
use gantry_compiler::study_doc::{self, Outcome};
use gantry_compiler::{fleet, report};
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
    /// (docs/COST-MODEL.md §10). Seven searches per cell.
    #[arg(long)]
    pub sensitivity: bool,
    /// Threads to evaluate cells on (0: one per core). The output does
    /// not depend on it.
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    #[arg(long = "lib")]
    pub lib: Vec<PathBuf>,
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

pub fn study_cmd(a: &StudyArgs) -> ExitCode {
    let checked = check_files(std::slice::from_ref(&a.file), &a.lib);
    if checked.has_errors() {
        let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        eprint!("{}", checked.render(color));
        return ExitCode::from(1);
    }
    // Every study (or the one named), in the order they are declared.
    let mut studies: Vec<&Study> = checked
        .program
        .studies
        .values()
        .filter(|s| a.study.as_deref().is_none_or(|n| s.name == n))
        .collect();
    studies.sort_by_key(|s| (s.span.file, s.span.start));
    if studies.is_empty() {
        eprintln!(
            "error[C007]: {}",
            a.study
                .as_deref()
                .map_or("the file declares no study".to_string(), |n| format!(
                    "no study named `{n}`"
                ))
        );
        return ExitCode::from(1);
    }
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(a.jobs).build() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot start {} threads: {e}", a.jobs);
            return ExitCode::from(2);
        }
    };
    let total: u64 = studies
        .iter()
        .map(|st| {
            let systems = st.systems.len() as u64;
            let cells = if st.demand.is_empty() {
                st.workloads.len() as u64
            } else {
                st.demand.len() as u64
            } * systems;
            let sens = if a.sensitivity {
                st.workloads.len() as u64 * systems * sensitivity::SEARCHES_PER_CELL
            } else {
                0
            };
            cells + sens
        })
        .sum();
    let progress = Progress::new(total);
    let tick = || progress.tick();
    // Run every study first; a fleet study whose demand cannot be met
    // (`C025`) is reported on stderr and left out of the output.
    let mut code = ExitCode::SUCCESS;
    let ran: Vec<(&Study, Ran, Option<sensitivity::Table>)> = pool.install(|| {
        let mut ran = Vec::new();
        for st in &studies {
            let r = if st.demand.is_empty() {
                Ran::Weighted(gantry_compiler::study::run_with(st, &tick))
            } else {
                match fleet::run_with(st, &tick) {
                    Ok(Some(ans)) => {
                        let cap = st
                            .site
                            .as_ref()
                            .and_then(|s| s.power_cap)
                            .unwrap_or(f64::INFINITY);
                        let f = fleet::front::of(&ans, cap);
                        Ran::Fleet(Box::new(ans), f)
                    }
                    Ok(None) => continue,
                    Err(u) => {
                        progress.bar.suspend(|| {
                            eprintln!("error[C025]: {}\n  help: {}", u.message, u.help)
                        });
                        code = ExitCode::from(1);
                        continue;
                    }
                }
            };
            let sens = a.sensitivity.then(|| sensitivity::study(st, &tick));
            ran.push((*st, r, sens));
        }
        ran
    });
    progress.bar.finish_and_clear();
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
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        if let Some(dir) = &a.plot
            && let Err(e) = write_plots(dir, &svgs.iter().flatten().collect::<Vec<_>>())
        {
            eprintln!("error: {e}");
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
            let page = crate::html::report(&format!("Gantry studies of {}", a.file), &sections);
            let path = dir.join("report.html");
            if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, page)) {
                eprintln!("error: cannot write `{}`: {e}", path.display());
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
                match o {
                    Outcome::Weighted(rows) => out!(
                        "{}{}",
                        report::study_text(st, rows),
                        study_doc::weighted_fronts_text(st, rows, false)
                    ),
                    Outcome::Fleet(a, f) => out!(
                        "study {}: {} systems x {} demands, the cheapest fleet meeting the demand\n{}{}",
                        st.name,
                        st.systems.len(),
                        st.demand.len(),
                        fleet::report::text(a),
                        fleet::report::fronts_text(a, f, false)
                    ),
                }
                if let Some(t) = sens {
                    out!("{}", sensitivity::text(st, t, false));
                }
            }
        }
    }
    code
}
