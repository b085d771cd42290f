//! Each sensitivity perturbation scales exactly the figure the cost model
//! reads for its resource (`Hardware::new`, `Topology::new`) and leaves
//! the others as they were; a resource the system lacks gives `None`.

mod common;

use gantry_compiler::hardware::Hardware;
use gantry_compiler::sensitivity::{Resource, perturb};

/// The figures the cost model reads, one per resource.
fn figures(h: &Hardware) -> [f64; 6] {
    [
        h.peak,
        h.hbm_bandwidth,
        h.hbm_capacity,
        h.topo.up_bw,
        h.topo.out_bw,
        h.host_bandwidth,
    ]
}

#[test]
fn each_perturbation_scales_its_own_figure() {
    let c = common::checked("examples/fleet_study.gantry");
    let st = c.program.studies.get("fleet").expect("study");
    let w = &st.workloads[0].0;
    for sys in &st.systems {
        let base = figures(&Hardware::new(sys, w).expect("hardware"));
        assert!(base.iter().all(|&f| f > 0.0), "{}: {base:?}", sys.name);
        for (i, r) in Resource::ALL.into_iter().enumerate() {
            let p = perturb(sys, r, 1.1).unwrap_or_else(|| panic!("{} has {r:?}", sys.name));
            let got = figures(&Hardware::new(&p, w).expect("hardware"));
            for j in 0..6 {
                let want = if i == j { base[j] * 1.1 } else { base[j] };
                assert!(
                    (got[j] - want).abs() <= 1e-9 * want,
                    "{} {r:?}: figure {j} is {} not {want}",
                    sys.name,
                    got[j]
                );
            }
            assert_eq!(perturb(sys, r, 1.0).as_ref(), Some(sys), "{r:?} x 1");
        }
    }
}

#[test]
fn a_missing_resource_has_no_perturbation() {
    let c = common::checked("tests/inputs/valid/sweep_linear.gantry");
    let st = c.program.studies.values().next().expect("study");
    let sys = &st.systems[0];
    assert!(sys.node.host_memory.is_none());
    assert_eq!(perturb(sys, Resource::HostMemory, 1.1), None);
    let mut one = sys.clone();
    one.nodes = 1;
    assert_eq!(perturb(&one, Resource::ScaleOut, 1.1), None);
    assert!(perturb(sys, Resource::ScaleOut, 1.1).is_some());
}
