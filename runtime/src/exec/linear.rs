//! Matrix products: `linear` (column- or row-parallel as the sharded
//! program says, with sequence parallelism's reduce-scatter), `matmul`
//! and the replicated `mlp`, with the prepared (packed) weights they
//! share.

use gantry_compiler::sharded::{self, Strategy};
use gantry_lang::program::{Activation, Op};

use super::device::{Dev, Local, Weights};
use super::elementwise::unary_of;
use crate::error::RuntimeError;
use crate::graph::{self, Param, numel};
use crate::jit::{self, Expr, KernelSpec};
use crate::layout::Layout;

impl Dev<'_> {
    pub(super) fn mm(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        bp: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Vec<f32>, RuntimeError> {
        if self.dry {
            self.jit.prepare(&KernelSpec::MatMul {
                k,
                n,
                bias: bias.is_some(),
            })?;
            return Ok(Vec::new());
        }
        let mut c = vec![0.0; m * n];
        self.jit.matmul(m, k, n, a, bp, bias, &mut c)?;
        Ok(c)
    }

    /// Prepared weights of `op` at `path`, made on first use by `make`.
    pub(super) fn weights(
        &mut self,
        op: &Op,
        path: &[u64],
        make: impl FnOnce(&Self, &[Param]) -> Weights,
    ) -> Weights {
        let key = (op.output.0, path.to_vec());
        if let Some(w) = self.weights.get(&key) {
            return w.clone();
        }
        let w = if self.dry {
            Vec::new()
        } else {
            make(self, &graph::params(&op.kind))
        };
        self.weights.insert(key, w.clone());
        w
    }

    pub(super) fn linear(
        &mut self,
        op: &Op,
        path: &[u64],
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Local, RuntimeError> {
        let (tp, t) = (self.par.tp, self.t);
        let row_parallel = self.planned(op.output)?.strategy == Strategy::Row;
        let rows = self.numel(op.inputs[0]) / d_in.max(1);
        if row_parallel {
            let ks = Layout::cols(tp).range(d_in, tp, t);
            let kl = ks.len();
            let with_bias = bias && t == 0;
            let w = self.weights(op, path, |dev, ps| {
                let mut v = vec![jit::pack_b(
                    &ps[0].block(&dev.init, op.output, path, ks.clone(), 0..d_out),
                    kl,
                    d_out,
                )];
                if bias {
                    v.push(ps[1].full(&dev.init, op.output, path));
                }
                v
            });
            // The input split along its features: a local slice of a
            // replicated input, gathered first from any other layout.
            let xl = self.as_layout(op.inputs[0], Layout::cols(tp))?;
            let empty = Vec::new();
            let bias_v = if with_bias {
                Some(w.get(1).unwrap_or(&empty).as_slice())
            } else {
                None
            };
            let empty = Vec::new();
            let mut y = self.mm(rows, kl, d_out, &xl, w.first().unwrap_or(&empty), bias_v)?;
            if self.layout(op.output) == Layout::Rows {
                // Sequence parallelism: each rank keeps its block of rows.
                if !self.dry {
                    y = self.endpoint()?.reduce_scatter(&self.tp_group(), &y)?;
                }
                return Ok(Local {
                    layout: Layout::Rows,
                    data: y,
                });
            }
            self.all_reduce_tp(&mut y)?;
            return Ok(Local {
                layout: Layout::Rep,
                data: y,
            });
        }
        // Column-parallel (or plain when tp = 1).
        let layout = self.layout(op.output);
        let cols = layout.range(d_out, tp, t);
        let nl = cols.len();
        let w = self.weights(op, path, |dev, ps| {
            let mut v = vec![jit::pack_b(
                &ps[0].block(&dev.init, op.output, path, 0..d_in, cols.clone()),
                d_in,
                nl,
            )];
            if bias {
                v.push(ps[1].block(&dev.init, op.output, path, 0..1, cols.clone()));
            }
            v
        });
        let xr = self.rep(op.inputs[0])?;
        let empty = Vec::new();
        let y = self.mm(
            rows,
            d_in,
            nl,
            &xr,
            w.first().unwrap_or(&empty),
            if bias {
                Some(w.get(1).unwrap_or(&empty))
            } else {
                None
            },
        )?;
        Ok(Local { layout, data: y })
    }

    pub(super) fn matmul(&mut self, op: &Op) -> Result<Local, RuntimeError> {
        let planned = self.planned(op.output)?;
        let bl = planned
            .reads
            .get(1)
            .copied()
            .unwrap_or(sharded::Layout::Rep);
        let layout = planned.layout;
        let av = self.rep(op.inputs[0])?;
        let bv = self.as_layout(op.inputs[1], bl)?;
        let ashape = self.shapes[op.inputs[0].0 as usize].clone();
        let r = ashape.len();
        let (m, k) = (ashape[r - 2], ashape[r - 1]);
        let n_full = self.width(op.inputs[1]);
        let n = bl.range(n_full, self.par.tp, self.t).len();
        let count = numel(&ashape) / (m * k).max(1);
        let mut out = Vec::with_capacity(count * m * n);
        for i in 0..count {
            if self.dry {
                self.mm(m, k, n, &[], &[], None)?;
                break;
            }
            let packed = jit::pack_b(&bv[i * k * n..(i + 1) * k * n], k, n);
            let c = self.mm(m, k, n, &av[i * m * k..(i + 1) * m * k], &packed, None)?;
            out.extend_from_slice(&c);
        }
        Ok(Local { layout, data: out })
    }

    pub(super) fn mlp(
        &mut self,
        op: &Op,
        path: &[u64],
        dims: &[u64],
        act: Activation,
    ) -> Result<Local, RuntimeError> {
        let widths = graph::mlp_widths(dims);
        let w = self.weights(op, path, |dev, ps| {
            let mut v = Vec::new();
            for l in 0..widths.len() - 1 {
                v.push(jit::pack_b(
                    &ps[2 * l].full(&dev.init, op.output, path),
                    widths[l],
                    widths[l + 1],
                ));
                v.push(ps[2 * l + 1].full(&dev.init, op.output, path));
            }
            v
        });
        let mut h = self.rep(op.inputs[0])?;
        let rows = self.numel(op.inputs[0]) / widths[0].max(1);
        let expr = Expr::Unary(unary_of(act), Box::new(Expr::Input(0)));
        let empty = Vec::new();
        for l in 0..widths.len() - 1 {
            let y = self.mm(
                rows,
                widths[l],
                widths[l + 1],
                &h,
                w.get(2 * l).unwrap_or(&empty),
                Some(w.get(2 * l + 1).unwrap_or(&empty)),
            )?;
            h = self.ew(&expr, &[&y], rows * widths[l + 1])?;
        }
        Ok(Local {
            layout: Layout::Rep,
            data: h,
        })
    }
}
