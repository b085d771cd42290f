//! Attention: heads split over `tp`, sequences over `cp` (keys and
//! values all-gathered, gradients reduce-scattered back), and the KV
//! cache a decode step reads.
//!
//! [`Dev::attention_plan`] decides the kernel and the layouts once;
//! the forward and the backward pass both follow it.

use std::collections::HashMap;

use gantry_lang::program::{Op, OpKind};

use super::device::{Dev, Local};
use crate::error::{RuntimeError, unsupported};
use crate::jit::{AttentionSpec, KernelSpec};
use crate::layout::Layout;

/// Local keys and values per (microbatch, attention op, iterations).
pub(super) type KvCache = HashMap<(usize, u32, Vec<u64>), (Vec<f32>, Vec<f32>)>;

impl Dev<'_> {
    /// The local attention of `op` given its operands' layouts: the
    /// kernel's spec (local heads and their offsets), the layout the query
    /// (and result) is used in and the layout of the keys and values.
    pub(super) fn attention_plan(
        &self,
        op: &Op,
    ) -> Result<(AttentionSpec, Layout, Layout), RuntimeError> {
        let OpKind::Attention {
            heads,
            kv_heads,
            head_dim,
            causal,
            ..
        } = op.kind
        else {
            return Err(unsupported("not attention"));
        };
        let (h, kvh, hd, tp, t) = (
            heads as usize,
            kv_heads as usize,
            head_dim as usize,
            self.par.tp,
            self.t,
        );
        let group = h / kvh.max(1);
        // The sharded program reads q split by heads (or whole) and k, v
        // split into their own blocks (or whole).
        let planned = self.planned(op.output)?;
        let read = |i: usize| planned.reads.get(i).copied().unwrap_or(Layout::Rep);
        let (q_layout, kv_layout) = (read(0), read(1));
        let (hl, qoff) = if q_layout == Layout::Rep {
            (h, 0)
        } else {
            (h / tp, t * (h / tp))
        };
        let (kv_off, kv_local) = match kv_layout {
            Layout::Cols { groups } => {
                let per = kvh / groups.max(1);
                (kv_layout.block_of(tp, t) * per, per)
            }
            _ => (0, kvh),
        };
        // Every local query head must find its key/value head locally.
        let need = (qoff / group, (qoff + hl).saturating_sub(1) / group + 1);
        if need.0 < kv_off || need.1 > kv_off + kv_local {
            return Err(unsupported(format!(
                "attention %{}: query heads {}..{} read key/value heads outside the local block",
                op.output.0,
                qoff,
                qoff + hl
            )));
        }
        let qs = &self.shapes[op.inputs[0].0 as usize];
        let ks = &self.shapes[op.inputs[1].0 as usize];
        let spec = AttentionSpec {
            heads: hl,
            head_dim: hd,
            seq_q: qs[1],
            seq_kv: ks[1],
            group,
            q_head_offset: qoff,
            kv_head_offset: kv_off,
            kv_heads: kv_local,
            causal,
        };
        Ok((spec, q_layout, kv_layout))
    }

    /// With context parallelism, how many sequence chunks of keys the
    /// local queries read: those up to their own (causal) or all.
    pub(super) fn cp_chunks(&self, spec: &AttentionSpec) -> usize {
        if spec.causal { self.c + 1 } else { self.par.cp }
    }

    /// All-gathers keys (or values) `x [b, chunk, w]` over the
    /// context-parallel group and keeps the first `n` chunks of every
    /// sample: `[b, n * chunk, w]`. Query `i` of chunk `c` then sees key
    /// `j <= i + (n - 1) * chunk`, its global position, under the kernel's
    /// causal rule.
    pub(super) fn cp_gather(
        &self,
        x: &[f32],
        b: usize,
        n: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        if self.dry {
            return Ok(Vec::new());
        }
        let was = self.label("context");
        let parts = self.endpoint()?.all_gather(&self.cp_group(), x)?;
        self.label(was);
        let per = x.len() / b.max(1);
        let mut out = Vec::with_capacity(b * n * per);
        for bi in 0..b {
            for p in &parts[..n] {
                out.extend_from_slice(&p[bi * per..(bi + 1) * per]);
            }
        }
        Ok(out)
    }

    /// The adjoint of [`Dev::cp_gather`]: gradients `dx [b, n * chunk, w]`
    /// summed over the group into each rank's own chunk.
    pub(super) fn cp_scatter(
        &self,
        dx: &[f32],
        b: usize,
        n: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let per = dx.len() / (b * n).max(1);
        let mut buf = vec![0.0; self.par.cp * b * per];
        for bi in 0..b {
            for c in 0..n {
                buf[(c * b + bi) * per..][..per].copy_from_slice(&dx[(bi * n + c) * per..][..per]);
            }
        }
        let was = self.label("context");
        let out = self.endpoint()?.reduce_scatter(&self.cp_group(), &buf);
        self.label(was);
        out
    }

    pub(super) fn attention(&mut self, op: &Op, path: &[u64]) -> Result<Local, RuntimeError> {
        let (mut spec, q_layout, kv_layout) = self.attention_plan(op)?;
        let q = self.as_layout(op.inputs[0], q_layout)?;
        let mut k = self.as_layout(op.inputs[1], kv_layout)?;
        let mut v = self.as_layout(op.inputs[2], kv_layout)?;
        let b = self.shapes[op.inputs[0].0 as usize][0];
        if self.par.cp > 1 {
            let n = self.cp_chunks(&spec);
            spec.seq_kv *= n;
            k = self.cp_gather(&k, b, n)?;
            v = self.cp_gather(&v, b, n)?;
        }
        let key = (self.mb, op.output.0, path.to_vec());
        if self.dry {
            spec.seq_kv += self.dry_context;
        }
        if self.kv_record && !self.dry {
            self.kv_cache.insert(key, (k.clone(), v.clone()));
        } else if let Some((ck, cv)) = self.kv_cache.get(&key) {
            // Decode: each sample's cached keys and values, then the step's.
            let step = k.len() / b.max(1);
            let past = ck.len() / b.max(1);
            let join = |cached: &[f32], new: &[f32]| -> Vec<f32> {
                (0..b)
                    .flat_map(|bi| {
                        cached[bi * past..(bi + 1) * past]
                            .iter()
                            .chain(&new[bi * step..(bi + 1) * step])
                            .copied()
                    })
                    .collect()
            };
            spec.seq_kv += past / (step / spec.seq_kv.max(1)).max(1);
            k = join(ck, &k);
            v = join(cv, &v);
        }
        let data = if self.dry {
            self.jit.prepare(&KernelSpec::Attention(spec))?;
            Vec::new()
        } else {
            let mut out = vec![0.0; q.len()];
            self.jit.attention(&spec, b, &q, &k, &v, &mut out)?;
            out
        };
        Ok(Local {
            layout: q_layout,
            data,
        })
    }
}
