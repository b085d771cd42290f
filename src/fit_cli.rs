//! `gantry calibrate --fit DIR [--write]` and `gantry validate --cross
//! DIR`: the driver around [`gantry_compiler::fit`] (reading the reference
//! files, printing the fit, rewriting device records in place).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use gantry_compiler::fit::{self, Fit, Reference, median_max, rel_error};

use crate::check_files;

/// Every reference figure under `dir`, or the exit code of why there is
/// none: `C017` (exit 2) for a missing folder or one without reference
/// rows, the check's diagnostics (exit 1) for a file that does not check.
pub fn load(dir: &Path) -> Result<Vec<Reference>, ExitCode> {
    if !dir.is_dir() {
        crate::errln!(
            "error[C017]: `{}` is not a folder of reference files\n  help: pass the folder that holds them, e.g. `examples/reference`",
            dir.display()
        );
        return Err(ExitCode::from(2));
    }
    let files = crate::gantry_files(dir);
    let mut refs = Vec::new();
    let mut broken = false;
    for f in &files {
        let checked = check_files(&[f.to_string_lossy().into_owned()], &[]);
        if checked.has_errors() {
            crate::errprint!("{}", checked.render(false));
            broken = true;
            continue;
        }
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        refs.extend(fit::references(&stem, &checked.program, &checked.sources));
    }
    if broken {
        return Err(ExitCode::from(1));
    }
    if refs.is_empty() {
        crate::errln!(
            "error[C017]: no reference rows under `{}`: {} .gantry file{} and no plan with an `expect` figure\n  help: a reference row is a plan's `expect metric = value` line (examples/reference)",
            dir.display(),
            files.len(),
            if files.len() == 1 { "" } else { "s" }
        );
        return Err(ExitCode::from(2));
    }
    Ok(refs)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// "median% / max%" of the absolute values, "-" for none.
fn band(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let (m, x) = median_max(v);
    format!("{} / {}", pct(m), pct(x))
}

/// Per section: (figures, in-sample errors, leave-one-out errors) of rows.
/// The errors of `rows` by section, in sample and left out, over the
/// figures the fit fitted (those with a leave-one-out prediction); the
/// figures of rows left out of the fit (Little's law) are counted apart.
struct Sections {
    by: BTreeMap<char, (Vec<f64>, Vec<f64>)>,
    unfitted: Unfitted,
}

/// Figures with no leave-one-out prediction: of serving rows an engine
/// fit left out (Little's law), and of plans alone in their group or that
/// the refit without them could not predict.
#[derive(Default)]
struct Unfitted {
    little: usize,
    alone: usize,
}

impl Unfitted {
    fn add(&mut self, fit: &Fit, reference: usize) {
        let little = fit
            .engines
            .iter()
            .any(|g| g.left_out.iter().any(|(r, _)| *r == reference));
        if little {
            self.little += 1;
        } else {
            self.alone += 1;
        }
    }
}

fn by_section<'a>(
    fit: &Fit,
    refs: &[Reference],
    rows: impl Iterator<Item = &'a usize>,
    in_sample: impl Fn(&fit::FitRow) -> f64,
) -> Sections {
    let mut out = Sections {
        by: BTreeMap::new(),
        unfitted: Unfitted::default(),
    };
    for &i in rows {
        let r = &fit.rows[i];
        let Some(l) = r.loo else {
            out.unfitted.add(fit, r.reference);
            continue;
        };
        let e = out.by.entry(refs[r.reference].section).or_default();
        e.0.push(rel_error(in_sample(r), r.published));
        e.1.push(rel_error(l, r.published));
    }
    out
}

/// The line that says how many figures a table leaves out, if any.
fn unfitted_line(s: &mut String, n: &Unfitted) {
    use std::fmt::Write;
    if n.little > 0 {
        let _ = writeln!(
            s,
            "  (not counted: {} figures of rows left out of the fit, whose published figures miss Little's law; listed with their errors above)",
            n.little
        );
    }
    // It read as the Little's law line above for every such figure, a
    // training plan's too.
    if n.alone > 0 {
        let _ = writeln!(
            s,
            "  (not counted: {} figures with no leave-one-out prediction: their plan is the only one of its group (device and phase, or engine), or the refit without it could not predict it)",
            n.alone
        );
    }
}

fn section_table(s: &mut String, sections: &Sections, what: &str) {
    use std::fmt::Write;
    let (sections, unfitted) = (&sections.by, &sections.unfitted);
    let _ = writeln!(
        s,
        "  {:<8} {:>7}  {:>22}  {:>26}",
        "section",
        "figures",
        format!("{what} median / max"),
        "leave-one-out median / max"
    );
    let (mut all_in, mut all_loo) = (Vec::new(), Vec::new());
    for (sec, (ins, loo)) in sections {
        let _ = writeln!(
            s,
            "  {:<8} {:>7}  {:>22}  {:>26}",
            sec,
            ins.len(),
            band(ins),
            band(loo)
        );
        all_in.extend(ins);
        all_loo.extend(loo);
    }
    if sections.len() > 1 {
        let _ = writeln!(
            s,
            "  {:<8} {:>7}  {:>22}  {:>26}",
            "all",
            all_in.len(),
            band(&all_in),
            band(&all_loo)
        );
    }
    unfitted_line(s, unfitted);
}

/// The fit as `gantry calibrate --fit` prints it.
pub fn fit_text(fit: &Fit, refs: &[Reference], dir: &Path) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let plans = fit
        .rows
        .iter()
        .map(|r| r.reference)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let _ = writeln!(
        s,
        "Efficiency factors fitted to {} figures of {} plans in {} (least squares on ln(predicted / published))",
        fit.rows.len(),
        plans,
        dir.display()
    );
    for g in &fit.groups {
        let gplans = g
            .rows
            .iter()
            .map(|&i| fit.rows[i].reference)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let _ = writeln!(
            s,
            "\n{} {} ({}): {} figures of {} plans",
            g.device,
            g.phase,
            g.device_file,
            g.rows.len(),
            gplans
        );
        if g.factors.is_empty() {
            let _ = writeln!(
                s,
                "  the device declares no factor for {}: nothing fitted",
                g.phase
            );
        } else {
            let _ = writeln!(
                s,
                "  {:<16} {:>14} {:>14}   fitted on",
                "factor", "declared", "fitted"
            );
            for f in &g.factors {
                let now = gantry_lang::units::Quantity::new(f.current, f.dim).to_string();
                let fitted_on = if f.is_fitted {
                    format!("{} figures ({} depend on it)", g.rows.len(), f.sensitive)
                } else {
                    "not fitted: no figure depends on it".to_string()
                };
                let _ = writeln!(
                    s,
                    "  {:<16} {:>14} {:>14}   {fitted_on}",
                    f.name,
                    now,
                    f.text()
                );
            }
        }
        section_table(
            &mut s,
            &by_section(fit, refs, g.rows.iter(), |r| r.in_sample),
            "in-sample",
        );
    }
    for g in &fit.engines {
        let _ = writeln!(
            s,
            "\nengine {} ({}): {} figures of {} serving plans (rows) fitted, mean |ln error| {:.3} ideal -> {:.3} fitted",
            g.engine,
            g.engine_file,
            g.rows
                .iter()
                .filter(|&&i| !g.left_out.iter().any(|(r, _)| *r == fit.rows[i].reference))
                .count(),
            g.plans,
            g.objective_ideal,
            g.objective
        );
        let _ = writeln!(
            s,
            "  {:<20} {:>12} {:>12}   fitted on",
            "term", "declared", "fitted"
        );
        for t in &g.terms {
            let now = if t.dim.is_none() {
                gantry_lang::units::format_number(t.current)
            } else {
                gantry_lang::units::Quantity::new(t.current, t.dim).to_string()
            };
            let how = if t.selected {
                match t.loo_gain {
                    Some(l) => format!(
                        "{} rows (lowers the objective by {:.3}, left out by {:.3})",
                        g.plans, t.gain, l
                    ),
                    None => format!("{} rows (lowers the objective by {:.3})", g.plans, t.gain),
                }
            } else if let Some(l) = t.loo_gain {
                format!(
                    "not selected: lowers the objective by {:.3} but the left-out rows' by {:.3} (under {}), fitting the rows' noise; left ideal",
                    t.gain,
                    l,
                    gantry_compiler::engine_fit::MIN_GAIN
                )
            } else if t.at_edge {
                format!(
                    "not identified by the rows (would lower it by {:.3} only at an end of its search range, a stand-in); left ideal",
                    t.gain
                )
            } else {
                format!(
                    "not identified by the rows (would lower it by {:.3}); left ideal",
                    t.gain
                )
            };
            let _ = writeln!(s, "  {:<20} {:>12} {:>12}   {how}", t.name, now, t.text());
        }
        section_table(
            &mut s,
            &by_section(fit, refs, g.rows.iter(), |r| r.in_sample),
            "in-sample",
        );
        for (r, miss) in &g.left_out {
            let r = &refs[*r];
            let _ = writeln!(
                s,
                "  left out of the fit: {}:{} (its published throughput x mean latency misses the closed loop's clients by {:.0}%, Little's law; reported, not fitted)",
                r.file,
                r.plan.name,
                100.0 * miss
            );
        }
        let _ = writeln!(s, "  ({} simulations)", g.simulations);
    }
    if fit.groups.len() + fit.engines.len() > 1 {
        let _ = writeln!(s, "\nAll groups");
        let all: Vec<usize> = (0..fit.rows.len()).collect();
        section_table(
            &mut s,
            &by_section(fit, refs, all.iter(), |r| r.in_sample),
            "in-sample",
        );
    }
    for f in &fit.failed {
        let r = &refs[f.reference];
        let _ = writeln!(
            s,
            "\n{}:{}: left out: error[{}]: {}",
            r.file, r.plan.name, f.error.code, f.error.message
        );
    }
    let _ = writeln!(
        s,
        "\n{} rounds of search and fit with the discrete choices held ({}); {} searches, {} evaluations; wall time {:.2} s",
        fit::ROUNDS,
        if fit.stable {
            "the last search kept every choice"
        } else {
            "the last search changed some choices"
        },
        fit.searches,
        fit.evaluations,
        fit.seconds
    );
    s
}

/// `gantry calibrate --fit DIR [--write]`.
pub fn calibrate_fit_cmd(dir: &Path, write: bool) -> ExitCode {
    let refs = match load(dir) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let fit = fit::fit(&refs);
    out!("{}", fit_text(&fit, &refs, dir));
    if !write {
        return ExitCode::SUCCESS;
    }
    // One file may hold several fitted groups (a device's train and infer).
    let mut by_file: BTreeMap<&str, Vec<&fit::Group>> = BTreeMap::new();
    for g in &fit.groups {
        if !g.factors.is_empty() && !g.rows.is_empty() {
            by_file.entry(g.device_file.as_str()).or_default().push(g);
        }
    }
    let comment = format!(
        "Written by `gantry calibrate --fit {}`; do not edit by hand.",
        dir.display()
    );
    let mut status = ExitCode::SUCCESS;
    // Engines: one file may declare several.
    let mut engine_files: BTreeMap<&str, Vec<&gantry_compiler::engine_fit::EngineGroup>> =
        BTreeMap::new();
    for g in &fit.engines {
        if !g.rows.is_empty() && !g.engine_file.is_empty() {
            engine_files
                .entry(g.engine_file.as_str())
                .or_default()
                .push(g);
        }
    }
    for (file, groups) in engine_files {
        let mut text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                crate::errln!("error[C034]: cannot read `{file}`: {e}");
                status = ExitCode::from(1);
                continue;
            }
        };
        let mut ok = true;
        for g in &groups {
            match gantry_compiler::engine_fit::rewrite_engine(
                &text,
                &g.engine,
                &g.record(),
                &comment,
            ) {
                Ok(t) => text = t,
                Err(e) => {
                    crate::errln!(
                        "error[C034]: cannot write the terms of engine `{}` into `{file}`: {}",
                        g.engine,
                        e.0
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            status = ExitCode::from(1);
            continue;
        }
        if let Err(e) = std::fs::write(file, &text) {
            crate::errln!("error[C034]: cannot write `{file}`: {e}");
            status = ExitCode::from(1);
            continue;
        }
        let names: Vec<String> = groups
            .iter()
            .map(|g| format!("engine {}", g.engine))
            .collect();
        outln!("wrote {file} ({})", names.join(", "));
    }
    for (file, groups) in by_file {
        let mut text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                crate::errln!("error[C018]: cannot read `{file}`: {e}");
                status = ExitCode::from(1);
                continue;
            }
        };
        let mut ok = true;
        for g in &groups {
            match fit::rewrite_record(&text, &g.device, g.phase, &g.record(), &comment) {
                Ok(t) => text = t,
                Err(e) => {
                    crate::errln!(
                        "error[C018]: cannot write the {} factors of `{}` into `{file}`: {}",
                        g.phase,
                        g.device,
                        e.0
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            status = ExitCode::from(1);
            continue;
        }
        if let Err(e) = std::fs::write(file, &text) {
            crate::errln!("error[C018]: cannot write `{file}`: {e}");
            status = ExitCode::from(1);
            continue;
        }
        let names: Vec<String> = groups
            .iter()
            .map(|g| format!("{} {}", g.device, g.phase))
            .collect();
        outln!("wrote {file} ({})", names.join(", "));
    }
    status
}

/// The band for a serving figure: P50 latencies 15%, P99 25%,
/// throughput 10% (`None`: no stated band).
fn serving_band(metric: &str) -> Option<f64> {
    if metric == "throughput" {
        Some(0.10)
    } else if metric.ends_with("_p50") {
        Some(0.15)
    } else if metric.ends_with("_p99") {
        Some(0.25)
    } else {
        None
    }
}

/// The serving rows by metric: their errors in sample (the stdlib's
/// engine terms) and left out (each row predicted with its engine's terms
/// fitted without it; a row on no fitted engine fits nothing, so its
/// leave-one-out figure is its prediction), and how many are within the
/// band.
fn serving_table(s: &mut String, fit: &Fit, refs: &[Reference]) {
    use std::fmt::Write;
    let mut by_metric: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut unfitted = Unfitted::default();
    for r in &fit.rows {
        if refs[r.reference].plan.workload.serve.is_some() {
            let Some(l) = r.loo else {
                unfitted.add(fit, r.reference);
                continue;
            };
            let e = by_metric.entry(r.metric.as_str()).or_default();
            e.0.push(rel_error(r.current, r.published));
            e.1.push(rel_error(l, r.published));
        }
    }
    if by_metric.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nServing figures by metric (simulated with the engines' fitted terms; leave-one-out: each row's engine refitted without it)"
    );
    let _ = writeln!(
        s,
        "  {:<12} {:>7}  {:>22}  {:>26}  {:>6}  {:>22}",
        "metric",
        "figures",
        "in-sample median / max",
        "leave-one-out median / max",
        "band",
        "within (in / left out)"
    );
    for (m, (ins, loo)) in &by_metric {
        let within = serving_band(m).map_or("-".to_string(), |b| {
            let n = |v: &Vec<f64>| v.iter().filter(|e| e.abs() <= b).count();
            format!("{} / {} of {}", n(ins), n(loo), ins.len())
        });
        let _ = writeln!(
            s,
            "  {:<12} {:>7}  {:>22}  {:>26}  {:>6}  {:>22}",
            m,
            ins.len(),
            band(ins),
            band(loo),
            serving_band(m).map_or("-".to_string(), pct),
            within
        );
    }
    unfitted_line(s, &unfitted);
}

/// `gantry validate --cross DIR`: every figure's prediction with the
/// stdlib's factors (in-sample: what `gantry validate` prints) next to its
/// leave-one-out prediction (factors fitted without that plan).
pub fn validate_cross_cmd(dir: &Path) -> ExitCode {
    let refs = match load(dir) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let fit = fit::fit(&refs);
    outln!(
        "{:<44} {:<28} {:>14} {:>14} {:>9} {:>14}",
        "plan",
        "metric",
        "predicted",
        "published",
        "error",
        "leave-one-out"
    );
    let mut order: Vec<usize> = (0..fit.rows.len()).collect();
    order.sort_by_key(|&i| (fit.rows[i].reference, i));
    for &i in &order {
        let r = &fit.rows[i];
        let rf = &refs[r.reference];
        outln!(
            "{:<44} {:<28} {:>14} {:>14} {:>+8.1}% {:>14}",
            format!("{}:{}", rf.file, rf.plan.name),
            r.metric,
            crate::fmt_metric(&r.metric, r.current),
            crate::fmt_metric(&r.metric, r.published),
            100.0 * rel_error(r.current, r.published),
            r.loo.map_or("-".to_string(), |l| format!(
                "{:+.1}%",
                100.0 * rel_error(l, r.published)
            ))
        );
    }
    let mut s = String::from("\n");
    section_table(
        &mut s,
        &by_section(&fit, &refs, order.iter(), |r| r.current),
        "in-sample",
    );
    serving_table(&mut s, &fit, &refs);
    out!("{s}");
    let differ: Vec<String> = fit
        .groups
        .iter()
        .flat_map(|g| {
            g.factors
                .iter()
                .filter(|f| fit::round_sig(f.current) != f.fitted)
                .map(move |f| {
                    format!(
                        "{} {} {}: {} (fit {})",
                        g.device,
                        g.phase,
                        f.name,
                        gantry_lang::units::Quantity::new(f.current, f.dim),
                        f.text()
                    )
                })
        })
        .collect();
    if !differ.is_empty() {
        outln!(
            "\nnote: the stdlib's factors are not the fit's output ({}); `gantry calibrate --fit {} --write` writes them",
            differ.join("; "),
            dir.display()
        );
    }
    for f in &fit.failed {
        let r = &refs[f.reference];
        crate::errln!(
            "{}:{}: error[{}]: {}",
            r.file,
            r.plan.name,
            f.error.code,
            f.error.message
        );
    }
    if fit.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
