//! Each kernel family against the reference interpreter, on odd shapes
//! and at block boundaries; the matrix product's machine code.
//!
//! Shaped so: one file for the unit tests of all families, since they
//! share the data and comparison helpers and run through the public
//! [`Jit`] methods only.

use super::elementwise;
use super::gather::{GATHER_AHEAD, GATHER_BLOCK};
use super::gemm::{KU, MR};
use super::*;
use crate::error::RCode;
use crate::reference as r;

fn data(n: usize, salt: u64) -> Vec<f32> {
    let init = crate::init::Init::new(salt);
    (0..n as u64)
        .map(|i| init.symmetric(crate::init::Key(salt), i, 1.0))
        .collect()
}

fn close(got: &[f32], want: &[f32]) {
    let (abs, rel) = crate::graph::compare(got, want);
    assert!(
        rel < 1e-5 || abs < 1e-6,
        "abs {abs} rel {rel}\n got {:?}\nwant {:?}",
        &got[..got.len().min(8)],
        &want[..want.len().min(8)]
    );
}

#[test]
fn matmul_matches_reference_on_odd_shapes() {
    let mut jit = Jit::new().expect("jit");
    for (m, k, n) in [
        (1, 1, 1),
        (3, 5, 7),
        (7, 3, 9),
        (13, 17, 8),
        (6, 4, 16),
        (50, 9, 33),
        (1, 64, 3),
        (97, 2, 1),
    ] {
        let a = data(m * k, 1);
        let b = data(k * n, 2);
        let bias = data(n, 3);
        let mut c = vec![f32::NAN; m * n];
        jit.matmul(m, k, n, &a, &pack_b(&b, k, n), Some(&bias), &mut c)
            .expect("runs");
        close(&c, &r::linear(&a, &b, Some(&bias), k, n));
        let mut c = vec![f32::NAN; m * n];
        jit.matmul(m, k, n, &a, &pack_b(&b, k, n), None, &mut c)
            .expect("runs");
        close(&c, &r::matmul(&a, &b, m, k, n));
    }
}

/// The micro-kernel's loop: every accumulator stays in a register (no
/// vector spill or reload), one broadcast per row and step, and `fma`s
/// with a register addend.
#[test]
#[cfg(target_arch = "x86_64")]
fn matmul_inner_loop_keeps_accumulators_in_registers() {
    if !std::arch::is_x86_feature_detected!("fma") || !std::arch::is_x86_feature_detected!("avx2") {
        return;
    }
    let mut jit = Jit::new().expect("jit").with_asm(true);
    let (m, k, n) = (8, 64, 16);
    let mut c = vec![0.0; m * n];
    jit.matmul(
        m,
        k,
        n,
        &[1.0; 8 * 64],
        &pack_b(&[1.0; 64 * 16], k, n),
        None,
        &mut c,
    )
    .expect("runs");
    assert!(c.iter().all(|v| *v == k as f32));
    let (_, asm) = &jit.asm()[0];
    // The loop holding the full MR x NR tile: the block with the most fmas.
    let blocks: Vec<&str> = asm.split("\nblock").collect();
    let tile = blocks
        .iter()
        .max_by_key(|b| b.matches("vfmadd").count())
        .expect("blocks");
    assert_eq!(tile.matches("vfmadd").count(), MR * NR / 4 * KU, "{tile}");
    assert_eq!(tile.matches("vbroadcastss").count(), MR * KU, "{tile}");
    let spills = tile
        .lines()
        .filter(|l| l.contains("rsp") && l.contains("xmm"))
        .count();
    assert_eq!(spills, 0, "vector spills in the micro-kernel:\n{tile}");
}

#[test]
fn elementwise_chains_match_reference() {
    use gantry_lang::program::{Activation as A, BinaryOp as B};
    let mut jit = Jit::new().expect("jit");
    for len in [1, 3, 4, 5, 17, 33, 64, 101] {
        let x = data(len, 4);
        let y: Vec<f32> = data(len, 5).iter().map(|v| v + 2.5).collect();
        for (u, a) in [
            (Unary::Relu, A::Relu),
            (Unary::Gelu, A::Gelu),
            (Unary::Silu, A::Silu),
            (Unary::Sigmoid, A::Sigmoid),
        ] {
            let e = Expr::Unary(u, Box::new(Expr::Input(0)));
            let mut out = vec![f32::NAN; len];
            jit.elementwise(&e, &[&x], &mut out).expect("runs");
            let want: Vec<f32> = x.iter().map(|v| r::activation(a, *v * 4.0) / 1.0).collect();
            let _ = want;
            let want: Vec<f32> = x.iter().map(|v| r::activation(a, *v)).collect();
            close(&out, &want);
        }
        for (bop, rb) in [
            (Binary::Add, B::Add),
            (Binary::Sub, B::Sub),
            (Binary::Mul, B::Mul),
            (Binary::Div, B::Div),
        ] {
            // silu(x0) op scale(x1), a fused chain of three ops.
            let e = Expr::Binary(
                bop,
                Box::new(Expr::Unary(Unary::Silu, Box::new(Expr::Input(0)))),
                Box::new(Expr::Unary(
                    Unary::Scale(0.5f32.to_bits()),
                    Box::new(Expr::Input(1)),
                )),
            );
            let mut out = vec![f32::NAN; len];
            jit.elementwise(&e, &[&x, &y], &mut out).expect("runs");
            let want: Vec<f32> = x
                .iter()
                .zip(&y)
                .map(|(a, b)| r::binary(rb, r::activation(A::Silu, *a), b * 0.5))
                .collect();
            close(&out, &want);
        }
    }
    // Large magnitudes: exp must saturate, not produce NaN.
    let x = vec![-1000.0, -90.0, -30.0, 0.0, 30.0, 90.0, 1000.0];
    let mut out = vec![0.0; x.len()];
    jit.elementwise(
        &Expr::Unary(Unary::Sigmoid, Box::new(Expr::Input(0))),
        &[&x],
        &mut out,
    )
    .expect("runs");
    let want: Vec<f32> = x.iter().map(|v| r::activation(A::Sigmoid, *v)).collect();
    close(&out, &want);
}

#[test]
fn row_kernels_match_reference() {
    let mut jit = Jit::new().expect("jit");
    for (rows, dim) in [(1, 1), (3, 5), (2, 4), (4, 7), (1, 64), (5, 129)] {
        let x: Vec<f32> = data(rows * dim, 6).iter().map(|v| v * 3.0 + 0.5).collect();
        let g: Vec<f32> = data(dim, 7).iter().map(|v| 1.0 + 0.1 * v).collect();
        let b = data(dim, 8);
        let mut out = vec![f32::NAN; rows * dim];
        jit.rmsnorm(dim, &x, &g, &mut out).expect("runs");
        close(&out, &r::rmsnorm(&x, &g, dim));
        jit.layernorm(dim, &x, &g, &b, &mut out).expect("runs");
        if dim > 1 {
            close(&out, &r::layernorm(&x, &g, &b, dim));
        }
        jit.softmax(dim, &x, &mut out).expect("runs");
        close(&out, &r::softmax(&x, dim));
    }
}

#[test]
fn attention_matches_reference() {
    let mut jit = Jit::new().expect("jit");
    // (batch, seq_q, seq_kv, heads, kv_heads, head_dim, causal)
    for (b, sq, skv, h, kvh, hd, causal) in [
        (1, 1, 1, 1, 1, 1, true),
        (2, 5, 5, 4, 2, 3, true),
        (1, 7, 7, 2, 2, 8, false),
        (2, 3, 9, 6, 3, 5, true),
        (1, 70, 70, 2, 1, 16, true),
        (1, 9, 4, 2, 2, 4, true),
        (3, 1, 130, 4, 1, 12, false),
    ] {
        let q = data(b * sq * h * hd, 9);
        let k = data(b * skv * kvh * hd, 10);
        let v = data(b * skv * kvh * hd, 11);
        let spec = AttentionSpec {
            heads: h,
            head_dim: hd,
            seq_q: sq,
            seq_kv: skv,
            group: h / kvh,
            q_head_offset: 0,
            kv_head_offset: 0,
            kv_heads: kvh,
            causal,
        };
        let mut out = vec![f32::NAN; q.len()];
        jit.attention(&spec, b, &q, &k, &v, &mut out).expect("runs");
        close(
            &out,
            &r::attention(&q, &k, &v, b, sq, skv, h, kvh, hd, causal),
        );
    }
}

#[test]
fn gather_and_interact_match_reference() {
    let mut jit = Jit::new().expect("jit");
    let (rows, dim, pooling) = (11, 5, 3);
    let table = data(rows * dim, 12);
    let ids = vec![0.0, 10.0, 4.0, 7.0, 99.0, -3.0];
    let stride = 2;
    let mut out = vec![0.0; 3 * stride * dim];
    for col in 0..stride {
        jit.gather(dim, pooling, stride, col, &ids, &table, rows, 0, &mut out)
            .expect("runs");
    }
    let mut want = vec![0.0; out.len()];
    for (i, id) in ids.iter().enumerate() {
        let id = r::clamp_id(*id, rows as u64);
        for p in 0..pooling {
            let row = (id + p) % rows;
            for j in 0..dim {
                want[i * dim + j] += table[row * dim + j];
            }
        }
    }
    close(&out, &want);
    // A shard holding rows 4..8 only contributes those rows.
    let mut part = vec![0.0; 3 * stride * dim];
    jit.gather(
        dim,
        pooling,
        stride,
        0,
        &ids,
        &table[4 * dim..8 * dim],
        rows,
        4,
        &mut part,
    )
    .expect("runs");
    assert!(
        part[..dim].iter().all(|v| *v == 0.0),
        "ids 0..3 miss rows 4..8"
    );
    for (n, d, b) in [(1, 1, 1), (3, 5, 2), (4, 8, 3), (26, 16, 2)] {
        let dense = data(b * d, 13);
        let sparse = data(b * n * d, 14);
        let mut out = vec![f32::NAN; b * (d + (n + 1) * n / 2)];
        jit.interact(n, d, b, &dense, &sparse, &mut out)
            .expect("runs");
        close(&out, &r::interact(&dense, &sparse, b, n, d));
    }
}

/// The gather kernel's blocks (prefetch ahead, then copy) at counts
/// around the block and prefetch distances, pooled and not, with a
/// shard of the table, a column of several, ids out of range.
#[test]
fn gather_blocks_match_reference() {
    let mut jit = Jit::new().expect("jit");
    let total = 37;
    let ahead = (GATHER_AHEAD + GATHER_BLOCK) as usize;
    for dim in [1, 5, 8, 64] {
        let table = data(total * dim, 15);
        for pooling in [1, 3] {
            for (start, local) in [(0, total), (9, 20), (30, 7)] {
                for count in [1, 7, 8, 9, 16, 17, ahead - 1, ahead, ahead + 1, 100] {
                    let (stride, col) = (3, 2);
                    let ids: Vec<f32> = (0..count * stride)
                        .map(|i| match i % 11 {
                            0 => -5.0,
                            1 => 1e9,
                            _ => ((i * 7) % (total + 3)) as f32,
                        })
                        .collect();
                    let mut out = vec![f32::NAN; count * stride * dim];
                    let shard = &table[start * dim..(start + local) * dim];
                    jit.gather(
                        dim, pooling, stride, col, &ids, shard, total, start, &mut out,
                    )
                    .expect("runs");
                    for r in 0..count {
                        let pos = r * stride + col;
                        let id = r::clamp_id(ids[pos], total as u64);
                        let mut want = vec![0.0f32; dim];
                        for p in 0..pooling {
                            let row = (id + p) % total;
                            if (start..start + local).contains(&row) {
                                for (w, t) in want.iter_mut().zip(&table[row * dim..]) {
                                    *w += t;
                                }
                            }
                        }
                        assert_eq!(
                            out[pos * dim..][..dim],
                            want[..],
                            "dim {dim} pooling {pooling} shard {start}+{local} count {count} row {r}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn kernels_reject_short_buffers() {
    let mut jit = Jit::new().expect("jit");
    let a = vec![0.0; 5];
    let mut c = vec![0.0; 4];
    let e = jit
        .matmul(2, 3, 2, &a, &pack_b(&[0.0; 6], 3, 2), None, &mut c)
        .unwrap_err();
    assert_eq!(e.code, RCode::R005);
}

/// The one-body elementwise loop: lengths around both chunk widths (4
/// for expressions that divide or call `exp`, 16 otherwise), a long run,
/// inputs and output off a 16-byte boundary; nothing written outside the
/// output; exact results for exact operations.
#[test]
fn elementwise_tails_and_offsets() {
    let mut jit = Jit::new().expect("jit");
    let scale = Expr::Unary(Unary::Scale(3.0f32.to_bits()), Box::new(Expr::Input(0)));
    let div = Expr::Binary(
        Binary::Div,
        Box::new(Expr::Input(0)),
        Box::new(Expr::Input(1)),
    );
    assert_eq!(
        (elementwise::width(&scale), elementwise::width(&div)),
        (16, 4)
    );
    let n = 100_003;
    let x: Vec<f32> = (0..n + 1).map(|i| (i % 1000) as f32 - 500.0).collect();
    let y: Vec<f32> = (0..n + 1).map(|i| (i % 7) as f32 + 1.0).collect();
    for len in [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 23, 24, 25, 33, n - 1, n] {
        for skew in [0, 1] {
            let (xs, ys) = (&x[skew..skew + len], &y[skew..skew + len]);
            let mut buf = vec![f32::NAN; len + 2];
            let out = &mut buf[skew..skew + len];
            jit.elementwise(&scale, &[xs], out).expect("runs");
            assert!(
                out.iter().zip(xs).all(|(o, a)| *o == a * 3.0),
                "scale len {len} skew {skew}"
            );
            jit.elementwise(&div, &[xs, ys], out).expect("runs");
            assert!(
                out.iter()
                    .zip(xs.iter().zip(ys))
                    .all(|(o, (a, b))| *o == a / b),
                "div len {len} skew {skew}"
            );
            let outside = [&buf[..skew], &buf[skew + len..]];
            assert!(
                outside.iter().all(|s| s.iter().all(|v| v.is_nan())),
                "wrote outside the output, len {len} skew {skew}"
            );
        }
    }
}
