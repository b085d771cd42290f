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

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
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

fn main() {
    let mut jit = Jit::new().expect("jit");
    println!(
        "matrix products (GFLOP/s, median; JIT with prepacked weights, and with packing included):"
    );
    println!(
        "{:>16} {:>10} {:>12} {:>10} {:>8} {:>8}",
        "m x k x n", "jit", "jit+pack", "sgemm", "ratio", "ratio+p"
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
        let reps = if m * k * n > 1 << 28 { 5 } else { 11 };
        let flops = 2.0 * (m * k * n) as f64;
        let t_jit = time(reps, || {
            jit.matmul(m, k, n, &a, &bp, None, &mut c).expect("runs")
        });
        let t_pack = time(reps, || {
            let bp = jit::pack_b(&b, k, n);
            jit.matmul(m, k, n, &a, &bp, None, &mut c).expect("runs")
        });
        let t_ref = time(reps, || sgemm(m, k, n, &a, &b, &mut c2));
        let err = c
            .iter()
            .zip(&c2)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-2, "jit and sgemm disagree by {err}");
        println!(
            "{:>16} {:>10.1} {:>12.1} {:>10.1} {:>7.0}% {:>7.0}%",
            format!("{m}x{k}x{n}"),
            flops / t_jit / 1e9,
            flops / t_pack / 1e9,
            flops / t_ref / 1e9,
            100.0 * t_ref / t_jit,
            100.0 * t_ref / t_pack
        );
    }

    let len = 16 << 20; // 64 MiB of f32
    let x: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let mut y = vec![0.0f32; len];
    let bytes = 8.0 * len as f64;
    let t_copy = time(7, || y.copy_from_slice(&x));
    let scale = Expr::Unary(Unary::Scale(2.0f32.to_bits()), Box::new(Expr::Input(0)));
    let t_ew = time(7, || jit.elementwise(&scale, &[&x], &mut y).expect("runs"));
    let silu_mul = Expr::Binary(
        Binary::Mul,
        Box::new(Expr::Unary(Unary::Silu, Box::new(Expr::Input(0)))),
        Box::new(Expr::Input(1)),
    );
    let x2 = x.clone();
    let t_sw = time(7, || {
        jit.elementwise(&silu_mul, &[&x, &x2], &mut y)
            .expect("runs")
    });
    let (rows, dim) = (1 << 16, 64);
    let table: Vec<f32> = (0..rows * dim).map(|i| i as f32).collect();
    let lookups = len / dim;
    let ids: Vec<f32> = (0..lookups).map(|i| ((i * 7919) % rows) as f32).collect();
    let t_g = time(7, || {
        jit.gather(dim, 1, 1, 0, &ids, &table, rows, 0, &mut y)
            .expect("runs")
    });
    println!("\nstreaming, 64 MiB (GB/s of bytes read + written, median):");
    println!("  copy_from_slice           {:>7.2}", bytes / t_copy / 1e9);
    println!(
        "  elementwise scale         {:>7.2}  ({:.0}% of copy)",
        bytes / t_ew / 1e9,
        100.0 * t_copy / t_ew
    );
    println!(
        "  fused silu(a) * b         {:>7.2}  ({:.0}% of copy, 3 streams)",
        1.5 * bytes / t_sw / 1e9,
        150.0 * t_copy / t_sw
    );
    println!(
        "  gather (16 MiB table)     {:>7.2}  ({:.0}% of copy)",
        bytes / t_g / 1e9,
        100.0 * t_copy / t_g
    );

    let specs = [
        KernelSpec::MatMul {
            k: 256,
            n: 256,
            bias: true,
        },
        KernelSpec::Elementwise {
            expr: silu_mul.clone(),
        },
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
