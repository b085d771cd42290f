//! The e-graph of a model's repeated block is saturated once per model,
//! not once per system (issue 13's target): a study sweeping one model
//! over many systems runs the rewrites once per distinct block, and
//! running it again runs them no more. In its own test binary, so the
//! process-wide counter sees no other test's work.

use std::sync::atomic::Ordering;

use gantry_compiler::egraph::SATURATIONS;

#[test]
fn a_sweep_saturates_each_model_once() {
    let checked = gantry::check_files(&["examples/codesign_study.gantry".to_string()], &[]);
    assert!(!checked.has_errors(), "{}", checked.render(false));
    let studies: Vec<_> = checked.program.studies.values().collect();
    let systems: usize = studies.iter().map(|s| s.systems.len()).sum();
    let trained: std::collections::BTreeSet<&str> = studies
        .iter()
        .flat_map(|s| s.workloads.iter())
        .filter(|(w, _)| matches!(w.phase, gantry_lang::program::Phase::Train { .. }))
        .map(|(w, _)| w.name.as_str())
        .collect();
    assert!(systems >= 8 && !trained.is_empty());

    let before = SATURATIONS.load(Ordering::Relaxed);
    let first = gantry::study_cli::run_all(&studies).expect("studies run");
    let once = SATURATIONS.load(Ordering::Relaxed) - before;
    // Every training cell extracts its layers on its own system; the
    // block behind them is saturated at most once per trained workload.
    assert!(once >= 1, "no block was saturated");
    assert!(
        once <= trained.len(),
        "{once} saturations for {} trained workloads over {systems} systems",
        trained.len()
    );
    drop(first);
    let _ = gantry::study_cli::run_all(&studies).expect("studies run");
    assert_eq!(
        SATURATIONS.load(Ordering::Relaxed) - before,
        once,
        "a second run saturated again"
    );
}
