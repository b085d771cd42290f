//! Where embedding tables live decides what a step pays: the placement
//! the cost model prices is the one `plan` reports (`placement::of_point`),
//! training spreads one copy over every device, inference over the fewest
//! devices that hold it.

mod common;

use std::collections::BTreeMap;

use gantry_compiler::plan::{evaluate, table_placement};
use gantry_lang::check::check;
use gantry_lang::program::Plan;

use common::WithSource;

/// DLE's DLRM with `tables` on one DGX A100 (8 x 80 GB), phase record
/// `phase`, data-parallel over the 8 GPUs.
fn plan(tables: &str, phase: &str) -> Plan {
    let src = format!(
        r#"import "stdlib/hardware/dgx_a100.gantry"
import "stdlib/models/dlrm.gantry"
workload w {{
  model DLRM(tables = {tables})
  {phase}
}}
plan p on DGX_A100 for w {{ fix dp = 8, tp = 1, pp = 1 }}
"#
    );
    let c = check(&["test.gantry".to_string()], &WithSource(src));
    assert!(!c.has_errors(), "{}", c.render(false));
    c.program.plans.get("p").cloned().expect("plan p")
}

fn exchange_group(p: &Plan) -> Option<u64> {
    let ev = evaluate(p, &BTreeMap::new()).expect("point");
    ev.estimate
        .comms
        .iter()
        .find(|c| c.what.contains("embedding all-to-all"))
        .map(|c| c.group)
}

/// Inference: the small variant (15.6 GiB) fits one GPU, so every GPU
/// holds a copy and looks up its own samples (no exchange); the large one
/// (84.9 GiB) needs two, so pairs of GPUs hold a copy and exchange within
/// the pair. Training keeps one copy over all eight.
#[test]
fn inference_spreads_the_tables_over_the_fewest_devices_that_hold_them() {
    let small = plan(
        "criteo_small_tables",
        "prefill { batch = 8192, dtype = fp16 }",
    );
    let ev = evaluate(&small, &BTreeMap::new()).expect("point");
    let (group, tables) = table_placement(&ev);
    assert_eq!(group, 1);
    assert!(tables.iter().all(|t| t.ranks == [0]));
    assert_eq!(exchange_group(&small), None);
    let table_bytes = ev.ir.table_bytes();
    assert_eq!(ev.estimate.memory.embeddings, table_bytes);
    // The tables count once, as tables, not again as dense weights (the
    // MLPs hold a few MB).
    assert!(
        ev.estimate.memory.weights < 1e-3 * table_bytes,
        "{:?}",
        ev.estimate.memory
    );

    let large = plan(
        "criteo_large_tables",
        "prefill { batch = 8192, dtype = fp16 }",
    );
    let ev = evaluate(&large, &BTreeMap::new()).expect("point");
    let (group, tables) = table_placement(&ev);
    assert_eq!(group, 2);
    assert!(tables.iter().all(|t| t.ranks.iter().all(|r| *r < 2)));
    assert_eq!(exchange_group(&large), Some(2));
    assert!(ev.estimate.memory.embeddings >= ev.ir.table_bytes() / 2.0);
    assert!(ev.estimate.feasible);

    let train = plan(
        "criteo_small_tables",
        "train { global_batch = 65_536, dtype = fp16, optimizer = sgd }",
    );
    let ev = evaluate(&train, &BTreeMap::new()).expect("point");
    assert_eq!(table_placement(&ev).0, 8);
    assert_eq!(exchange_group(&train), Some(8));
}

/// Tables that fit nowhere in HBM go to host memory, which has a size:
/// a 1e12-row table (512 TB in fp32) on one DGX A100 (2 TiB of host
/// memory) is infeasible, and the search says it is the host that is
/// short, by how much, per device. The same model with a 3e9-row table
/// (1.5 TB, beyond the 640 GB of HBM, host-resident) fits.
#[test]
fn host_tables_must_fit_the_host_memory() {
    let table = |rows: &str| format!("[CriteoTable(rows = {rows}), CriteoTable(rows = 1000)]");
    let phase = "train { global_batch = 65_536, dtype = fp16, optimizer = sgd }";
    let fits = plan(&table("3e9"), phase);
    let ev = evaluate(&fits, &BTreeMap::new()).expect("point");
    assert!(ev.estimate.memory.host_embeddings > 0.0);
    assert!(ev.estimate.feasible, "1.5 TB of host tables fit 2 TiB");
    let huge = plan(&table("1e12"), phase);
    let ev = evaluate(&huge, &BTreeMap::new()).expect("point");
    assert!(!ev.estimate.feasible, "512 TB do not fit 2 TiB");
    let err = gantry_compiler::plan::search(&huge, &BTreeMap::new(), 1)
        .err()
        .expect("no feasible point");
    assert_eq!(err.code, gantry_lang::diagnostic::Code::C010);
    // 512e12 B / 8 devices against 2 TiB / 8: 232.8 times, +23,183%.
    assert!(
        err.message.contains("misses host memory")
            && err.message.contains("by 23183%")
            && err.message.contains("its share of the host is 256 GiB"),
        "{}",
        err.message
    );
}
