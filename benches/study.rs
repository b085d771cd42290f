//! Study speed: the fleet example (`examples/fleet_study.gantry`, five
//! demands) on its own 4 systems with `--sensitivity`, and swept over
//! 1,000 systems (its 4 servers x 250 node counts), each timed on a rayon
//! pool of 1 thread (serial) and of 2 threads, with the speed-up.
//! The results of both runs are compared (they must be equal); the
//! saturated e-graphs the process keeps are forgotten before each run.
//! Run with `cargo bench --bench study`; prints figures, asserts only
//! that the runs agree. Issue 13's targets: the 1,000-system sweep under
//! 60 s on two cores, a parallel speed-up of at least 1.7x on two cores.

use std::time::Instant;

use gantry_compiler::{fleet, sensitivity};

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool")
}

/// Runs `f` on pools of 1 and 2 threads and prints both times.
fn timed<T: PartialEq + Send>(what: &str, f: impl Fn() -> T + Sync) {
    let mut out = Vec::new();
    let mut secs = Vec::new();
    for threads in [1, 2] {
        // Each run saturates its models itself (the process keeps
        // saturated blocks; a warm cache would flatter the second run).
        gantry_compiler::egraph::forget_saturated();
        let t = Instant::now();
        out.push(pool(threads).install(&f));
        secs.push(t.elapsed().as_secs_f64());
    }
    assert!(
        out[0] == out[1],
        "{what}: the serial and parallel runs differ"
    );
    println!(
        "{what}: serial {:.2} s, 2 threads {:.2} s, speed-up {:.2}x",
        secs[0],
        secs[1],
        secs[0] / secs[1]
    );
}

fn main() {
    let example = std::fs::read_to_string("examples/fleet_study.gantry").expect("example");
    let study_of = |text: &str| {
        let path = std::env::temp_dir().join(format!("gantry-bench-{}.gantry", std::process::id()));
        std::fs::write(&path, text).expect("write");
        let checked = gantry::check_files(&[path.to_string_lossy().into_owned()], &[]);
        let _ = std::fs::remove_file(&path);
        assert!(!checked.has_errors(), "{}", checked.render(false));
        checked
            .program
            .studies
            .values()
            .next()
            .expect("a study")
            .clone()
    };
    // Issue 13's target is the talk's five workload classes: the chat
    // service (a `serve` demand, sized by simulation) is left out here and
    // timed on its own below.
    let five = example
        .lines()
        .filter(|l| !l.contains("fleet_llama3_70b_chat = {"))
        .collect::<Vec<_>>()
        .join("\n");
    let small = study_of(&five);
    let six = study_of(&example);
    let big = study_of(&five.replace("nodes = 16)", "nodes = 16..265 step 1)"));
    assert_eq!(big.systems.len(), 1000);
    println!(
        "machine: {} cores available",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let costs = |a: &fleet::Answer| {
        (
            a.pooled.choice.clone(),
            a.pooled.cost,
            a.homogeneous.as_ref().map(|h| (h.choice.clone(), h.cost)),
        )
    };
    timed("fleet example, 4 systems x 5 demands", || {
        costs(&fleet::run(&small).ok().flatten().expect("answer"))
    });
    timed(
        "fleet example with its serve demand, 4 systems x 6 demands",
        || costs(&fleet::run(&six).ok().flatten().expect("answer")),
    );
    timed(
        "fleet example, 4 systems x 5 workloads, sensitivity (140 searches)",
        || sensitivity::study(&small, &|| {}),
    );
    timed("fleet example swept over 1,000 systems x 5 demands", || {
        costs(&fleet::run(&big).ok().flatten().expect("answer"))
    });
}
