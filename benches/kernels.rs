//! JIT kernel throughput against reference implementations in the same run:
//! matrix products against `matrixmultiply::sgemm`, streaming elementwise
//! and gather kernels against `copy_from_slice`, and the median JIT
//! compile time per kernel. Run with `cargo bench --bench kernels`.

use std::time::Instant;

use gantry_runtime::jit::{self, AttentionSpec, Binary, Expr, Jit, KernelSpec, Unary};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the contenders `fs` in `rounds` interleaved rounds (each one once
/// per round, in order, after one warm-up round), so that a burst of noise
/// from other processes on shared cores hits all of them alike. Returns
/// each contender's (best, median) seconds.
fn interleaved(rounds: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<(f64, f64)> {
    let mut times = vec![Vec::with_capacity(rounds); fs.len()];
    for round in 0..=rounds {
        for (f, t) in fs.iter_mut().zip(&mut times) {
            let start = Instant::now();
            f();
            if round > 0 {
                t.push(start.elapsed().as_secs_f64());
            }
        }
    }
    times
        .into_iter()
        .map(|t| (t.iter().copied().fold(f64::INFINITY, f64::min), median(t)))
        .collect()
}

fn sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    // SAFETY: the slices hold m*k, k*n and m*n floats, row-major, as the strides say.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `silu(x0) * x1`, the SwiGLU gate.
fn silu_mul() -> Expr {
    Expr::Binary(
        Binary::Mul,
        Box::new(Expr::Unary(Unary::Silu, Box::new(Expr::Input(0)))),
        Box::new(Expr::Input(1)),
    )
}

/// SplitMix64's output for draw `i` of stream `seed`.
fn splitmix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic uniform ids in `0..n`.
fn random_ids(count: usize, n: usize, seed: u64) -> Vec<f32> {
    (0..count as u64)
        .map(|i| (splitmix(seed, i) % n as u64) as f32)
        .collect()
}

/// A random permutation of `0..n` (Fisher-Yates).
fn permutation(n: usize, seed: u64) -> Vec<f32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = (splitmix(seed, i as u64) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p.into_iter().map(|v| v as f32).collect()
}

/// Streaming kernels against `copy_from_slice` of the same bytes: 64 MiB
/// read and 64 MiB written into the same destination by every kernel
/// (twice L3 each on the reference host). The contenders run in
/// interleaved rounds, so that a burst of noise from other processes hits
/// all of them alike, and each one's best round is its bandwidth (the
/// median round is shown too). Bytes are those read plus written, the
/// same count for a kernel and for the copy (gather ids, 1/64 more, are
/// not counted).
fn streaming(jit: &mut Jit) {
    const ROUNDS: usize = 21;
    let len = 16 << 20; // 64 MiB of f32
    let x: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let x2 = x.clone();
    let y = vec![0.0f32; len];
    let bytes = 8.0 * len as f64;
    let dim = 64;
    let lookups = len / dim;
    // A 16 MiB table read at random rows (each row about 4 times).
    let rows = 1 << 16;
    let table: Vec<f32> = (0..rows * dim).map(|i| i as f32).collect();
    let ids = random_ids(lookups, rows, 7);
    // The copy's own 64 MiB source as the table, each row exactly once in
    // random order: the same bytes from the same memory as the copy.
    let perm = permutation(lookups, 11);
    let scale = Expr::Unary(Unary::Scale(2.0f32.to_bits()), Box::new(Expr::Input(0)));
    let sm = silu_mul();
    let names = [
        "copy_from_slice",
        "elementwise scale",
        "fused silu(a) * b",
        "gather, 16 MiB table",
        "gather, permuted 64 MiB",
    ];
    let (x, x2, table) = (&x, &x2, &table);
    let (ids, perm) = (&ids, &perm);
    let y = std::cell::RefCell::new(y);
    let jit = std::cell::RefCell::new(jit);
    let stats = interleaved(
        ROUNDS,
        &mut [
            &mut || y.borrow_mut().copy_from_slice(x),
            &mut || {
                let out = &mut y.borrow_mut()[..];
                jit.borrow_mut()
                    .elementwise(&scale, &[x], out)
                    .expect("runs")
            },
            &mut || {
                let out = &mut y.borrow_mut()[..];
                jit.borrow_mut()
                    .elementwise(&sm, &[x, x2], out)
                    .expect("runs")
            },
            &mut || {
                let out = &mut y.borrow_mut()[..];
                jit.borrow_mut()
                    .gather(dim, 1, 1, 0, ids, table, rows, 0, out)
                    .expect("runs")
            },
            &mut || {
                let out = &mut y.borrow_mut()[..];
                jit.borrow_mut()
                    .gather(dim, 1, 1, 0, perm, x, lookups, 0, out)
                    .expect("runs")
            },
        ],
    );
    let y = y.into_inner();
    // The permuted gather (last each round) must have moved the copy's rows.
    for (r, id) in perm.iter().enumerate().step_by(4099) {
        let id = *id as usize;
        assert_eq!(y[r * dim..][..dim], x[id * dim..][..dim], "gather row {r}");
    }
    let best: Vec<f64> = stats.iter().map(|s| s.0).collect();
    let med: Vec<f64> = stats.iter().map(|s| s.1).collect();
    println!(
        "\nstreaming, 64 MiB read + 64 MiB written (GB/s, best of {ROUNDS} interleaved rounds; \
         % of copy: best vs best, median vs median):"
    );
    for (k, name) in names.iter().enumerate() {
        // The fused kernel reads two streams: 1.5 times the bytes.
        let f = if k == 2 { 1.5 } else { 1.0 };
        let gbs = f * bytes / best[k] / 1e9;
        if k == 0 {
            println!(
                "  {name:<26} {gbs:>7.2}  (median {:.2})",
                bytes / med[k] / 1e9
            );
        } else {
            println!(
                "  {name:<26} {gbs:>7.2}  ({:>3.0}% of copy, median {:>3.0}%)",
                100.0 * f * best[0] / best[k],
                100.0 * f * med[0] / med[k]
            );
        }
    }
}

fn main() {
    let mut jit = Jit::new().expect("jit");
    println!(
        "matrix products (GFLOP/s, best and median of interleaved rounds: JIT with prepacked \
         weights, JIT with packing included, sgemm; % of sgemm: best vs best, median vs median):"
    );
    println!(
        "{:>16} {:>15} {:>15} {:>15} {:>13} {:>13}",
        "m x k x n", "jit", "jit+pack", "sgemm", "jit/sgemm", "jit+p/sgemm"
    );
    for (m, k, n) in [
        (256, 256, 256),
        (512, 512, 512),
        (1024, 1024, 1024),
        (8, 4096, 4096),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let bp = jit::pack_b(&b, k, n);
        let mut c = vec![0.0f32; m * n];
        let mut c2 = vec![0.0f32; m * n];
        let rounds = if m * k * n > 1 << 28 { 5 } else { 11 };
        let flops = 2.0 * (m * k * n) as f64;
        let jit_cell = std::cell::RefCell::new(&mut jit);
        let c_cell = std::cell::RefCell::new(&mut c);
        let s = interleaved(
            rounds,
            &mut [
                &mut || {
                    let c = &mut c_cell.borrow_mut()[..];
                    jit_cell
                        .borrow_mut()
                        .matmul(m, k, n, &a, &bp, None, c)
                        .expect("runs")
                },
                &mut || {
                    let c = &mut c_cell.borrow_mut()[..];
                    let bp = jit::pack_b(&b, k, n);
                    jit_cell
                        .borrow_mut()
                        .matmul(m, k, n, &a, &bp, None, c)
                        .expect("runs")
                },
                &mut || sgemm(m, k, n, &a, &b, &mut c2),
            ],
        );
        let err = c
            .iter()
            .zip(&c2)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-2, "jit and sgemm disagree by {err}");
        let rate = |t: f64| flops / t / 1e9;
        let pair = |(best, med): (f64, f64)| format!("{:.1} / {:.1}", rate(best), rate(med));
        let pct = |(b0, m0): (f64, f64), (b1, m1): (f64, f64)| {
            format!("{:.0}% / {:.0}%", 100.0 * b1 / b0, 100.0 * m1 / m0)
        };
        println!(
            "{:>16} {:>15} {:>15} {:>15} {:>13} {:>13}",
            format!("{m}x{k}x{n}"),
            pair(s[0]),
            pair(s[1]),
            pair(s[2]),
            pct(s[0], s[2]),
            pct(s[1], s[2]),
        );
    }

    streaming(&mut jit);

    let specs = [
        KernelSpec::MatMul {
            k: 256,
            n: 256,
            bias: true,
        },
        KernelSpec::Elementwise { expr: silu_mul() },
        KernelSpec::RmsNorm { dim: 256 },
        KernelSpec::LayerNorm { dim: 256 },
        KernelSpec::Softmax { dim: 256 },
        KernelSpec::Attention(AttentionSpec {
            heads: 4,
            head_dim: 64,
            seq_q: 16,
            seq_kv: 16,
            group: 2,
            q_head_offset: 0,
            kv_head_offset: 0,
            kv_heads: 2,
            causal: true,
        }),
        KernelSpec::Gather {
            dim: 128,
            pooling: 2,
            stride: 26,
        },
        KernelSpec::Interact { n: 26, dim: 128 },
    ];
    println!("\nJIT compile time per kernel (median of 21, ms):");
    let mut all = Vec::new();
    for s in &specs {
        let ms: Vec<f64> = (0..21)
            .map(|_| {
                let t = Instant::now();
                jit.compile_fresh(s).expect("compiles");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let m = median(ms.clone());
        all.extend(ms);
        println!("  {:<48} {:>7.3}", s.name(), m);
    }
    println!("  {:<48} {:>7.3}", "median over all kernels", median(all));
}
