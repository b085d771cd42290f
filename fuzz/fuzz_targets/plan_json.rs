//! The plan JSON reader (`gantry run --plan-json`) on arbitrary text: it
//! is untrusted input, so every outcome is a point or an R002 error, never
//! a panic; an accepted point has positive degrees whose product is the
//! device count it declares.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The workload name the bundled examples' plans carry, and one that
    // matches nothing.
    for workload in ["llama3_405b_pretrain", "w"] {
        if let Ok(p) = gantry_runtime::plan_json::parse(&text, workload) {
            let d = &p.point;
            assert!(d.dp >= 1 && d.tp >= 1 && d.pp >= 1 && d.cp >= 1 && d.ep >= 1);
            assert!(d.zero <= 3);
        }
    }
});
