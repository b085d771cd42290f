//! R007's memory estimate ([`exec::footprint`]) against the bytes a run
//! really allocates, counted by this binary's global allocator: the
//! estimate must be an upper bound and within 1.5x, over examples and
//! design points of every parallelism. Both tests hold [`ONE`], so no
//! other test thread allocates while a run is counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use gantry::runtime_cli::{TargetArgs, resolve_target};
use gantry_lang::program::Phase;
use gantry_runtime::exec::{self, RunConfig};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded to the system allocator with the same layout.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from this allocator with layout `l`.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: as above.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                grew(new - l.size());
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Held by each test: no other test allocates while a run is counted.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn target(
    file: &str,
    plan: Option<&str>,
    fix: &str,
    scale: Option<&str>,
) -> gantry::runtime_cli::Target {
    let a = TargetArgs {
        file: file.into(),
        plan: plan.map(str::to_string),
        fix: Some(fix.to_string()),
        plan_json: None,
        devices: None,
        scale: scale.map(str::to_string),
        lib: Vec::new(),
        whole: Vec::new(),
        column: Vec::new(),
        row: Vec::new(),
    };
    match resolve_target(&a) {
        Ok(t) => t,
        Err(_) => panic!("{file} {fix}: does not resolve (see stderr)"),
    }
}

/// The most bytes live at once during `exec::run`, above what was live
/// before it, and the estimate.
fn measure(file: &str, plan: Option<&str>, fix: &str, scale: Option<&str>) -> (f64, f64) {
    let t = target(file, plan, fix, scale);
    let gradients = matches!(t.workload.phase, Phase::Train { .. });
    let cfg = RunConfig {
        gradients,
        max_bytes: f64::INFINITY,
        ..RunConfig::default()
    };
    // The fixed amounts stand for memory the allocator does not see (the
    // process, thread stacks, JIT pages): not a run's allocations.
    let fixed = exec::PER_RUN + exec::PER_DEVICE * t.par.devices() as f64;
    let est = exec::footprint(&t.workload, &t.par, gradients).expect("estimate") - fixed;
    // The devices' threads interleave differently from run to run, and
    // so does the peak (by up to 1.25x on small runs): the most of three.
    let mut peak: f64 = 0.0;
    for _ in 0..3 {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let r = exec::run(&t.workload, &t.par, &cfg)
            .unwrap_or_else(|e| panic!("{file} {fix}: {}", e.render()));
        assert!(r.passed(), "{file} {fix}");
        peak = peak.max((PEAK.load(Ordering::Relaxed) - base) as f64);
    }
    (est, peak)
}

#[test]
fn footprint_bounds_the_allocations() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let llama = "layers=4,d_model=64,heads=4,kv_heads=2,d_ff=128,vocab=256,seq=16,batch=8";
    let cases: &[(&str, Option<&str>, &str, Option<&str>)] = &[
        (
            "examples/llm_train.gantry",
            Some("llama3_405b_best"),
            "tp=1,pp=1,dp=1,cp=1,virtual_stages=1,sequence_parallel=false",
            Some(llama),
        ),
        (
            "examples/llm_train.gantry",
            Some("llama3_405b_best"),
            "tp=2,pp=2,dp=2,cp=1,microbatch=1,virtual_stages=1,sequence_parallel=false",
            Some(llama),
        ),
        (
            "examples/llm_train.gantry",
            Some("llama3_405b_best"),
            "tp=4,pp=2,dp=1,cp=1,microbatch=1,virtual_stages=2,sequence_parallel=true",
            Some(llama),
        ),
        (
            "examples/llm_train.gantry",
            Some("llama3_405b_meta"),
            "tp=8,pp=2,dp=1,microbatch=4",
            Some("layers=16,d_model=64,heads=8,kv_heads=8,d_ff=128,vocab=256,seq=16,batch=16"),
        ),
        (
            "examples/llm_prefill.gantry",
            None,
            "tp=2,pp=2,dp=2,cp=1,microbatch=1,virtual_stages=1,sequence_parallel=false",
            Some(llama),
        ),
        (
            "examples/llm_decode.gantry",
            None,
            "tp=2,pp=1,dp=2,cp=1,microbatch=2,virtual_stages=1,sequence_parallel=false",
            Some(llama),
        ),
        (
            "examples/moe_train.gantry",
            None,
            "tp=2,pp=1,dp=2,cp=1,microbatch=2,virtual_stages=1,sequence_parallel=false",
            None,
        ),
        ("examples/dlrm_train.gantry", None, "tp=1,pp=1,dp=4", None),
        (
            "examples/dlrm_inference.gantry",
            None,
            "tp=1,pp=1,dp=2",
            None,
        ),
    ];
    let mut bad = Vec::new();
    for (file, plan, fix, scale) in cases {
        let (est, peak) = measure(file, *plan, fix, *scale);
        eprintln!(
            "{file} {fix}: estimate {:.2} MB, peak {:.2} MB, ratio {:.2}",
            est / 1e6,
            peak / 1e6,
            est / peak
        );
        if !(est >= peak && est <= 1.5 * peak) {
            bad.push(format!("{file} {fix}: estimate {est} vs peak {peak}"));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The command suggested in `examples/llm_train.gantry`'s comment
/// (`gantry run ... --plan llama3_405b_meta --fix tp=8,pp=4,dp=2,microbatch=1`)
/// passes R007's default limit (running it takes about 14 s in release; a
/// smaller mesh of the same plan runs in the test above).
#[test]
fn suggested_meta_run_fits_the_default_limit() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let t = target(
        "examples/llm_train.gantry",
        Some("llama3_405b_meta"),
        "tp=8,pp=4,dp=2,microbatch=1",
        None,
    );
    let need = exec::footprint(&t.workload, &t.par, true).expect("estimate");
    let limit = RunConfig::default().max_bytes;
    assert!(need < limit, "{need} >= {limit}");
    // Not vacuous: 64 devices of a 16-layer model are not nothing.
    assert!(need > 64.0 * exec::PER_DEVICE, "{need}");
}
