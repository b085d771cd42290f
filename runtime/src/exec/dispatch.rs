//! Walking a program on a device: items in order (a `repeat` iterates
//! with its carried values), each op dispatched to its family's module.
//!
//! The few ops with no sharding of their own (interact, reshape, concat)
//! run replicated here; every op's result then gets the fault injection,
//! the trace record and the tape entry the checks need, in one place.

use gantry_lang::program::{Item, Op, OpKind};

use super::device::{Dev, Local};
use super::elementwise::is_elementwise;
use crate::error::{RuntimeError, unsupported};
use crate::graph::numel;
use crate::jit::KernelSpec;
use crate::layout::Layout;

impl Dev<'_> {
    pub(super) fn items(
        &mut self,
        items: &[Item],
        path: &mut Vec<u64>,
    ) -> Result<(), RuntimeError> {
        for it in items {
            match it {
                Item::Op(op) => self.op(op, path)?,
                Item::Repeat(r) => {
                    for i in 0..r.count {
                        for c in &r.carried {
                            let src = if i == 0 { c.init } else { c.next };
                            let v = self.get(src)?.clone();
                            self.put(c.param, v);
                            self.alias(c.param, src);
                        }
                        path.push(i);
                        self.items(&r.body, path)?;
                        path.pop();
                    }
                    for c in &r.carried {
                        let src = if r.count == 0 { c.init } else { c.next };
                        let v = self.get(src)?.clone();
                        self.put(c.result, v);
                        self.alias(c.result, src);
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn op(&mut self, op: &Op, path: &[u64]) -> Result<(), RuntimeError> {
        if self.fused[op.output.0 as usize] {
            return Ok(());
        }
        self.label("tensor");
        let out = match &op.kind {
            k if is_elementwise(k) => self.elementwise(op)?,
            OpKind::Linear {
                d_in, d_out, bias, ..
            } => self.linear(op, path, *d_in as usize, *d_out as usize, *bias)?,
            OpKind::MatMul => self.matmul(op)?,
            OpKind::Embedding { vocab, dim } => {
                self.embedding(op, path, *vocab as usize, *dim as usize)?
            }
            OpKind::EmbeddingBag { .. } => self.embedding_bag(op, path)?,
            OpKind::Attention { .. } => self.attention(op, path)?,
            OpKind::RmsNorm { .. } | OpKind::LayerNorm { .. } | OpKind::Softmax => {
                self.row_op(op, path)?
            }
            OpKind::Mlp { dims, activation } => self.mlp(op, path, dims, *activation)?,
            OpKind::Interact { vectors, dim } => {
                let dense = self.rep(op.inputs[0])?;
                let sparse = self.rep(op.inputs[1])?;
                let b = self.shapes[op.inputs[0].0 as usize][0];
                // `vectors` counts the dense vector too.
                let (n, d) = ((*vectors as usize).saturating_sub(1), *dim as usize);
                let data = if self.dry {
                    self.jit.prepare(&KernelSpec::Interact { n, dim: d })?;
                    Vec::new()
                } else {
                    let mut out = vec![0.0; self.numel(op.output)];
                    self.jit.interact(n, d, b, &dense, &sparse, &mut out)?;
                    out
                };
                Local {
                    layout: Layout::Rep,
                    data,
                }
            }
            OpKind::Moe {
                experts,
                top_k,
                d_model,
                d_ff,
            } => self.moe(
                op,
                path,
                *experts as usize,
                *top_k as usize,
                *d_model as usize,
                *d_ff as usize,
            )?,
            OpKind::Reshape => Local {
                layout: Layout::Rep,
                data: self.rep(op.inputs[0])?,
            },
            OpKind::Concat { axis } => {
                let parts: Vec<Vec<f32>> = op
                    .inputs
                    .iter()
                    .map(|i| self.rep(*i))
                    .collect::<Result<_, _>>()?;
                let data = if self.dry {
                    Vec::new()
                } else {
                    let out_shape = &self.shapes[op.output.0 as usize];
                    let outer: usize = out_shape[..*axis].iter().product();
                    let mut out = Vec::with_capacity(numel(out_shape));
                    for o in 0..outer {
                        for (p, i) in parts.iter().zip(&op.inputs) {
                            let chunk: usize = self.shapes[i.0 as usize][*axis..].iter().product();
                            out.extend_from_slice(&p[o * chunk..(o + 1) * chunk]);
                        }
                    }
                    out
                };
                Local {
                    layout: Layout::Rep,
                    data,
                }
            }
            other => {
                return Err(unsupported(format!(
                    "op `{}` is not executed by the runtime",
                    other.name()
                )));
            }
        };
        let mut out = out;
        if self.fault == Some(op.output)
            && let Some(x) = out.data.first_mut()
        {
            *x += 1.0;
        }
        self.record(op.output, path, &out);
        self.put(op.output, out);
        if let Some(tape) = &mut self.tape {
            tape.push(op, path, &self.env[&op.output])?;
        }
        Ok(())
    }
}
