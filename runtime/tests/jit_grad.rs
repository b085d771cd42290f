//! The JIT backward kernels (activation derivatives inside fused
//! expressions, rmsnorm/layernorm/softmax gradients) against the
//! plain-loop reference gradients of `backward.rs`.

use std::collections::BTreeMap;

use gantry_lang::check::check_source;
use gantry_lang::program::{Activation, OpKind, Workload};
use gantry_runtime::RCode;
use gantry_runtime::backward::{self, Overrides, activation_grad};
use gantry_runtime::graph;
use gantry_runtime::init::{Init, Key};
use gantry_runtime::jit::{Binary, Expr, Jit, Unary};
use gantry_runtime::reference as r;

const DIMS: [usize; 6] = [1, 3, 4, 7, 64, 130];
const ROWS: [usize; 3] = [1, 2, 5];

fn data(n: usize, salt: u64) -> Vec<f32> {
    let init = Init::new(salt);
    (0..n as u64)
        .map(|i| init.symmetric(Key(salt), i, 1.0))
        .collect()
}

/// Normwise: max |got - want| relative to the larger of max |want| and
/// `scale`, the size of the terms that cancel in the result (0 where none
/// do). Returns that relative error.
fn close_to(what: &str, got: &[f32], want: &[f32], scale: f64) -> f64 {
    let (abs, _) = graph::compare(got, want);
    let top = want.iter().fold(scale, |m, v| m.max(f64::from(v.abs())));
    let rel = if top > 0.0 { abs / top } else { abs };
    assert!(
        rel <= 1e-5,
        "{what}: abs {abs:.3e} rel {rel:.3e} (scale {top:.3e})\n got {:?}\nwant {:?}",
        &got[..got.len().min(8)],
        &want[..want.len().min(8)]
    );
    rel
}

fn close(what: &str, got: &[f32], want: &[f32]) -> f64 {
    close_to(what, got, want, 0.0)
}

/// The size of the terms of a norm's `dx` that cancel:
/// `max over rows of inv * max |g dy|`, `inv = 1 / sqrt(var + eps)` (the
/// mean square for rmsnorm), in f64. At dim 1 the rmsnorm `dx` is
/// `g dy inv eps / (x^2 + eps)`, computed by both sides as a difference
/// of terms of size `g dy inv`, so a relative error against the result
/// alone would measure the cancellation, not the kernel.
fn norm_scale(x: &[f32], g: &[f32], dy: &[f32], dim: usize, center: bool) -> f64 {
    let mut top = 0.0f64;
    for (row, dyr) in x.chunks(dim).zip(dy.chunks(dim)) {
        let n = dim as f64;
        let mean = if center {
            row.iter().map(|v| f64::from(*v)).sum::<f64>() / n
        } else {
            0.0
        };
        let var = row
            .iter()
            .map(|v| (f64::from(*v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let inv = 1.0 / (var + f64::from(graph::NORM_EPS)).sqrt();
        let m = g
            .iter()
            .zip(dyr)
            .map(|(a, b)| f64::from((a * b).abs()))
            .fold(0.0, f64::max);
        top = top.max(inv * m);
    }
    top
}

fn workload(src: &str) -> Workload {
    let c = check_source("t.gantry", src);
    assert!(!c.has_errors(), "{}", c.render(false));
    c.program.workloads["w"].clone()
}

/// `y = op(x) * w`: the reference gradient flowing into `op` is `w`, so
/// `dy` is arbitrary data. Returns the workload, the op's output id.
fn norm_model(op: &str, dim: usize, rows: usize) -> Workload {
    workload(&format!(
        "model M(d = {dim}) {{
  input x: f32[batch, d]
  input w: f32[batch, d]
  output y = {op}(x) * w
}}
workload w {{
  model M
  train {{ seq = 1, global_batch = {rows}, dtype = fp32 }}
}}
"
    ))
}

struct Case {
    x: Vec<f32>,
    dy: Vec<f32>,
    /// The op's parameters (gain, bias) as initialized.
    params: Vec<Vec<f32>>,
    /// The reference: dx, then the parameter gradients by slot.
    dx: Vec<f32>,
    dparams: Vec<Vec<f32>>,
}

fn reference(op: &str, dim: usize, rows: usize) -> Case {
    let w = norm_model(op, dim, rows);
    let g = &w.model.graph;
    let init = Init::new(11);
    let x: Vec<f32> = data(rows * dim, 3 + dim as u64)
        .iter()
        .map(|v| v * 3.0 + 0.5)
        .collect();
    let dy = data(rows * dim, 5 + dim as u64);
    let grads = backward::backward(
        g,
        &w.bindings,
        &init,
        Some(vec![x.clone(), dy.clone()]),
        &Overrides::new(),
    )
    .expect("backward");
    let op = graph::ops(&g.body)
        .into_iter()
        .find(|o| !matches!(o.kind, OpKind::Binary(_)))
        .expect("the norm op");
    let ps = graph::params(&op.kind);
    let params: Vec<Vec<f32>> = ps.iter().map(|p| p.full(&init, op.output, &[])).collect();
    let dparams = ps
        .iter()
        .map(|p| grads.params[&(op.output, vec![], p.slot)].clone())
        .collect();
    Case {
        x,
        dy,
        params,
        dx: grads.inputs[0].clone(),
        dparams,
    }
}

#[test]
fn rmsnorm_grad_matches_reference() {
    let mut jit = Jit::new().expect("jit");
    let mut worst = 0.0f64;
    for dim in DIMS {
        for rows in ROWS {
            let c = reference("rmsnorm", dim, rows);
            let mut dx = vec![f32::NAN; rows * dim];
            // dgain accumulates onto what is there.
            let before = data(dim, 99);
            let mut dgain = before.clone();
            jit.rmsnorm_grad(dim, &c.x, &c.params[0], &c.dy, &mut dx, &mut dgain)
                .expect("runs");
            let what = format!("rmsnorm dim {dim} rows {rows}");
            let scale = norm_scale(&c.x, &c.params[0], &c.dy, dim, false);
            worst = worst.max(close_to(&format!("{what} dx"), &dx, &c.dx, scale));
            let want: Vec<f32> = before
                .iter()
                .zip(&c.dparams[0])
                .map(|(a, b)| a + b)
                .collect();
            worst = worst.max(close(&format!("{what} dgain"), &dgain, &want));
        }
    }
    eprintln!("rmsnorm_grad: max rel err {worst:.2e}");
}

#[test]
fn layernorm_grad_matches_reference() {
    let mut jit = Jit::new().expect("jit");
    let mut worst = 0.0f64;
    for dim in DIMS {
        for rows in ROWS {
            let c = reference("layernorm", dim, rows);
            let mut dx = vec![f32::NAN; rows * dim];
            let (b0, b1) = (data(dim, 97), data(dim, 98));
            let (mut dgain, mut dbias) = (b0.clone(), b1.clone());
            jit.layernorm_grad(
                dim,
                &c.x,
                &c.params[0],
                &c.dy,
                &mut dx,
                &mut dgain,
                &mut dbias,
            )
            .expect("runs");
            let what = format!("layernorm dim {dim} rows {rows}");
            let scale = norm_scale(&c.x, &c.params[0], &c.dy, dim, true);
            worst = worst.max(close_to(&format!("{what} dx"), &dx, &c.dx, scale));
            let plus = |b: &[f32], g: &[f32]| -> Vec<f32> {
                b.iter().zip(g).map(|(a, b)| a + b).collect()
            };
            // dgain starts from b0: compare the increments (at dim 1 the
            // normalized x and so dgain are 0).
            let inc: Vec<f32> = dgain.iter().zip(&b0).map(|(a, b)| a - b).collect();
            worst = worst.max(close(&format!("{what} dgain"), &inc, &c.dparams[0]));
            worst = worst.max(close(
                &format!("{what} dbias"),
                &dbias,
                &plus(&b1, &c.dparams[1]),
            ));
        }
    }
    eprintln!("layernorm_grad: max rel err {worst:.2e}");
}

#[test]
fn softmax_grad_matches_reference() {
    let mut jit = Jit::new().expect("jit");
    let mut worst = 0.0f64;
    for dim in DIMS {
        for rows in ROWS {
            let c = reference("softmax", dim, rows);
            let y = r::softmax(&c.x, dim);
            let mut dx = vec![f32::NAN; rows * dim];
            jit.softmax_grad(dim, &y, &c.dy, &mut dx).expect("runs");
            worst = worst.max(close(
                &format!("softmax dim {dim} rows {rows} dx"),
                &dx,
                &c.dx,
            ));
        }
    }
    eprintln!("softmax_grad: max rel err {worst:.2e}");
}

#[test]
fn row_grads_reject_bad_buffers() {
    let mut jit = Jit::new().expect("jit");
    let (x, g, dy) = (vec![1.0; 8], vec![1.0; 4], vec![1.0; 8]);
    let mut dx = vec![0.0; 8];
    let mut dg = vec![0.0; 4];
    let mut db = vec![0.0; 4];
    let r005 = |e: Result<(), gantry_runtime::RuntimeError>| {
        assert_eq!(e.expect_err("rejected").code, RCode::R005);
    };
    // x not whole rows, dy/dx short, gain or gradients short.
    r005(jit.rmsnorm_grad(4, &x[..7], &g, &dy, &mut dx, &mut dg));
    r005(jit.rmsnorm_grad(4, &x, &g, &dy[..7], &mut dx, &mut dg));
    r005(jit.rmsnorm_grad(4, &x, &g, &dy, &mut dx[..7], &mut dg));
    r005(jit.rmsnorm_grad(4, &x, &g[..3], &dy, &mut dx, &mut dg));
    r005(jit.rmsnorm_grad(4, &x, &g, &dy, &mut dx, &mut dg[..3]));
    r005(jit.layernorm_grad(4, &x, &g, &dy, &mut dx, &mut dg, &mut db[..3]));
    r005(jit.layernorm_grad(4, &x, &g, &dy, &mut dx, &mut dg[..3], &mut db));
    r005(jit.softmax_grad(4, &x, &dy[..4], &mut dx));
    r005(jit.softmax_grad(3, &x, &dy, &mut dx));
    // Nothing to do: no rows, or rows of nothing.
    jit.softmax_grad(4, &[], &[], &mut []).expect("no rows");
    jit.rmsnorm_grad(0, &[], &[], &[], &mut [], &mut [])
        .expect("dim 0");
}

/// Every activation derivative, alone and fused as `dy * f'(x)`, at
/// lengths covering the 16-, 4- and 1-wide loops.
#[test]
fn activation_grads_match_reference() {
    let mut jit = Jit::new().expect("jit");
    // -12..12 densely, plus large magnitudes (exp saturates, no NaN).
    let mut x: Vec<f32> = (0..2401).map(|i| -12.0 + 0.01 * i as f32).collect();
    x.extend([-1000.0, -90.0, -30.0, -0.0, 0.0, 1e-30, 30.0, 90.0, 1000.0]);
    let mut worst = BTreeMap::new();
    for (u, a) in [
        (Unary::ReluGrad, Activation::Relu),
        (Unary::GeluGrad, Activation::Gelu),
        (Unary::SiluGrad, Activation::Silu),
        (Unary::SigmoidGrad, Activation::Sigmoid),
    ] {
        for len in [1, 3, 4, 5, 17, 33, x.len()] {
            let xs = &x[x.len() - len..];
            let dy = data(len, 21);
            let want: Vec<f32> = xs.iter().map(|v| activation_grad(a, *v)).collect();
            let e = Expr::Unary(u, Box::new(Expr::Input(0)));
            let mut out = vec![f32::NAN; len];
            jit.elementwise(&e, &[xs], &mut out).expect("runs");
            // Pointwise, against values of order 1.
            let err = out
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0f32, f32::max);
            assert!(
                err <= 2e-6,
                "{u:?} len {len}: max abs err {err:.2e}\n got {:?}\nwant {:?}",
                &out[..len.min(8)],
                &want[..len.min(8)]
            );
            let w = worst.entry(format!("{u:?}")).or_insert(0.0f32);
            *w = w.max(err);
            // dx = dy * f'(x), one fused kernel.
            let fused = Expr::Binary(
                Binary::Mul,
                Box::new(Expr::Input(0)),
                Box::new(Expr::Unary(u, Box::new(Expr::Input(1)))),
            );
            let mut dx = vec![f32::NAN; len];
            jit.elementwise(&fused, &[&dy, xs], &mut dx).expect("runs");
            let want: Vec<f32> = want.iter().zip(&dy).map(|(f, d)| f * d).collect();
            close(&format!("dy * {u:?}(x) len {len}"), &dx, &want);
        }
    }
    eprintln!("activation derivatives, max abs err: {worst:?}");
}

/// The new specs have names and print their IR like the other kernels.
#[test]
fn grad_kernels_compile_with_names_and_clif() {
    use gantry_runtime::jit::KernelSpec;
    let mut jit = Jit::new().expect("jit").with_clif(true);
    let specs = [
        KernelSpec::RmsNormGrad { dim: 5 },
        KernelSpec::LayerNormGrad { dim: 5 },
        KernelSpec::SoftmaxGrad { dim: 5 },
        KernelSpec::Elementwise {
            expr: Expr::Binary(
                Binary::Mul,
                Box::new(Expr::Input(0)),
                Box::new(Expr::Unary(Unary::GeluGrad, Box::new(Expr::Input(1)))),
            ),
        },
    ];
    for s in &specs {
        jit.prepare(s).expect("compiles");
    }
    let names: Vec<&str> = jit.clif().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "rmsnorm_grad dim=5",
            "layernorm_grad dim=5",
            "softmax_grad dim=5",
            "elementwise mul(x0, gelugrad(x1))"
        ]
    );
    assert!(jit.clif().iter().all(|(_, c)| c.contains("function")));
}
