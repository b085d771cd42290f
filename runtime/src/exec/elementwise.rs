//! Elementwise ops and row-wise ops (norms, softmax), and the fusion of
//! elementwise chains into one kernel.
//!
//! Fusion is decided once per device ([`mark_fused`]): an elementwise op
//! whose only consumer is an elementwise op of the same block is computed
//! inside it, and [`Dev::elementwise`] builds the chain's expression from
//! the fused producers ([`Dev::expr_of`]).

use std::collections::BTreeSet;

use gantry_lang::program::{Activation, BinaryOp, Item, Op, OpKind, TensorId};

use super::device::{Dev, Local};
use crate::error::RuntimeError;
use crate::jit::{Binary, Expr, KernelSpec, Unary};
use crate::layout::Layout;

pub(super) fn is_elementwise(k: &OpKind) -> bool {
    matches!(
        k,
        OpKind::Activation(_) | OpKind::Binary(_) | OpKind::Scale(_) | OpKind::Dropout(_)
    )
}

pub(super) fn unary_of(a: Activation) -> Unary {
    match a {
        Activation::Relu => Unary::Relu,
        Activation::Gelu => Unary::Gelu,
        Activation::Silu => Unary::Silu,
        Activation::Sigmoid => Unary::Sigmoid,
    }
}

pub(super) fn binary_of(b: BinaryOp) -> Binary {
    match b {
        BinaryOp::Add => Binary::Add,
        BinaryOp::Sub => Binary::Sub,
        BinaryOp::Mul => Binary::Mul,
        BinaryOp::Div => Binary::Div,
    }
}

impl Dev<'_> {
    pub(super) fn ew(
        &mut self,
        expr: &Expr,
        inputs: &[&[f32]],
        len: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        if self.dry {
            self.jit
                .prepare(&KernelSpec::Elementwise { expr: expr.clone() })?;
            return Ok(Vec::new());
        }
        let mut out = vec![0.0; len];
        self.jit.elementwise(expr, inputs, &mut out)?;
        Ok(out)
    }

    /// A fused elementwise chain ending at `op`.
    pub(super) fn elementwise(&mut self, op: &Op) -> Result<Local, RuntimeError> {
        let mut leaves = Vec::new();
        let expr = self.expr_of(op, &mut leaves);
        // The sharded program's layout of the chain's result; every leaf
        // is read in it (a replicated leaf is sliced locally).
        let layout = self.layout(op.output);
        let data: Vec<Vec<f32>> = leaves
            .iter()
            .map(|l| self.as_layout(*l, layout))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
        let len = self.local_len(op.output, layout);
        let out = self.ew(&expr, &refs, len)?;
        Ok(Local { layout, data: out })
    }

    pub(super) fn expr_of(&self, op: &Op, leaves: &mut Vec<TensorId>) -> Expr {
        let arg =
            |this: &Self, i: usize, leaves: &mut Vec<TensorId>| this.expr_at(op.inputs[i], leaves);
        match &op.kind {
            OpKind::Activation(a) => Expr::Unary(unary_of(*a), Box::new(arg(self, 0, leaves))),
            OpKind::Scale(c) => Expr::Unary(
                Unary::Scale((*c as f32).to_bits()),
                Box::new(arg(self, 0, leaves)),
            ),
            OpKind::Binary(b) => {
                let x = arg(self, 0, leaves);
                let y = arg(self, 1, leaves);
                Expr::Binary(binary_of(*b), Box::new(x), Box::new(y))
            }
            _ => arg(self, 0, leaves),
        }
    }

    pub(super) fn expr_at(&self, t: TensorId, leaves: &mut Vec<TensorId>) -> Expr {
        if self.fused[t.0 as usize]
            && let Some(op) = self.producer.get(&t)
        {
            return self.expr_of(op, leaves);
        }
        let i = match leaves.iter().position(|l| *l == t) {
            Some(i) => i,
            None => {
                leaves.push(t);
                leaves.len() - 1
            }
        };
        Expr::Input(i as u8)
    }

    pub(super) fn row_op(&mut self, op: &Op, path: &[u64]) -> Result<Local, RuntimeError> {
        // Row blocks are normalized where they are; anything else is read
        // whole (a feature split is gathered) and the result is whole.
        let layout = self.layout(op.output);
        let x = if layout == Layout::Rows {
            self.get(op.inputs[0])?.data.clone()
        } else {
            self.rep(op.inputs[0])?
        };
        let dim = self.width(op.inputs[0]);
        let w = self.weights(op, path, |dev, ps| {
            ps.iter()
                .map(|p| p.full(&dev.init, op.output, path))
                .collect()
        });
        let full = if self.dry {
            let spec = match op.kind {
                OpKind::RmsNorm { .. } => KernelSpec::RmsNorm { dim },
                OpKind::LayerNorm { .. } => KernelSpec::LayerNorm { dim },
                _ => KernelSpec::Softmax { dim },
            };
            self.jit.prepare(&spec)?;
            Vec::new()
        } else {
            let mut out = vec![0.0; x.len()];
            match op.kind {
                OpKind::RmsNorm { .. } => self.jit.rmsnorm(dim, &x, &w[0], &mut out)?,
                OpKind::LayerNorm { .. } => self.jit.layernorm(dim, &x, &w[0], &w[1], &mut out)?,
                _ => self.jit.softmax(dim, &x, &mut out)?,
            }
            out
        };
        Ok(Local { layout, data: full })
    }
}

pub(super) fn count_uses(items: &[Item], uses: &mut [u32]) {
    for it in items {
        match it {
            Item::Op(op) => {
                for i in &op.inputs {
                    uses[i.0 as usize] += 1;
                }
            }
            Item::Repeat(r) => {
                for c in &r.carried {
                    uses[c.init.0 as usize] += 1;
                    uses[c.next.0 as usize] += 1;
                }
                count_uses(&r.body, uses);
            }
        }
    }
}

/// Marks elementwise ops computed inside their only consumer, an
/// elementwise op of the same block.
pub(super) fn mark_fused(items: &[Item], uses: &[u32], fused: &mut [bool]) {
    let mut elementwise_here: BTreeSet<TensorId> = BTreeSet::new();
    for it in items {
        match it {
            Item::Op(op) => {
                if is_elementwise(&op.kind) {
                    for i in &op.inputs {
                        if elementwise_here.contains(i) && uses[i.0 as usize] == 1 {
                            fused[i.0 as usize] = true;
                        }
                    }
                    elementwise_here.insert(op.output);
                }
            }
            Item::Repeat(r) => mark_fused(&r.body, uses, fused),
        }
    }
}
