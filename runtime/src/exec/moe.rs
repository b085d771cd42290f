//! Mixture of experts: routing, the all-to-all dispatch of tokens to the
//! expert-parallel rank holding their expert, the experts (their width
//! split over `tp`) and the return.
//!
//! The routing and record layout ([`route`], [`expert_rows`]) are free
//! functions because the backward pass in `grad.rs` replays them.

use std::collections::HashMap;

use gantry_lang::program::Op;

use super::device::{Dev, Local};
use crate::error::RuntimeError;
use crate::jit::{self, Binary, Expr, Unary};
use crate::layout::{Layout, block};

/// What a `moe` op's backward pass reuses from its forward pass: the
/// routing, the records each device sent and received, and the experts'
/// outputs that came back.
pub(super) struct MoeSaved {
    pub(super) choices: Vec<Vec<(usize, f32)>>,
    pub(super) sent: Vec<Vec<(usize, usize)>>,
    pub(super) received: Vec<Vec<f32>>,
    pub(super) back: Vec<Vec<f32>>,
}

impl Dev<'_> {
    /// Sends `[expert, token row]` records to the expert owners (an
    /// all-to-all over the expert-parallel group). Returns, per owner, the
    /// `(token, choice)` pairs sent (in record order) and, per sender, the
    /// records received.
    #[allow(clippy::type_complexity)]
    pub(super) fn moe_dispatch(
        &self,
        x: &[f32],
        choices: &[Vec<(usize, f32)>],
        d: usize,
        experts: usize,
    ) -> Result<(Vec<Vec<(usize, usize)>>, Vec<Vec<f32>>), RuntimeError> {
        let ep = self.par.ep;
        let per_owner = experts / ep;
        let mut sent: Vec<Vec<(usize, usize)>> = vec![Vec::new(); ep];
        let mut parts: Vec<Vec<f32>> = vec![Vec::new(); ep];
        for (tk, ch) in choices.iter().enumerate() {
            for (c, (e, _)) in ch.iter().enumerate() {
                let o = e / per_owner.max(1);
                sent[o].push((tk, c));
                parts[o].push(*e as f32);
                parts[o].extend_from_slice(&x[tk * d..(tk + 1) * d]);
            }
        }
        Ok((sent, self.ep_exchange(parts)?))
    }

    /// An all-to-all over the expert-parallel group (the identity at `ep = 1`).
    pub(super) fn ep_exchange(&self, parts: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, RuntimeError> {
        if self.par.ep > 1 {
            let was = self.label("expert");
            let out = self.endpoint()?.all_to_all(&self.ep_group(), parts);
            self.label(was);
            out
        } else {
            Ok(parts)
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn moe(
        &mut self,
        op: &Op,
        path: &[u64],
        experts: usize,
        top_k: usize,
        d: usize,
        f: usize,
    ) -> Result<Local, RuntimeError> {
        let (tp, t, ep) = (self.par.tp, self.t, self.par.ep);
        let fl = Layout::cols(tp).range(f, tp, t);
        let flen = fl.len();
        let ep_rank = self.d % ep;
        let local_experts = block(experts, ep, ep_rank);
        let first = local_experts.start;
        let w = self.weights(op, path, |dev, ps| {
            let mut v = vec![jit::pack_b(
                &ps[0].full(&dev.init, op.output, path),
                d,
                experts,
            )];
            for e in local_experts.clone() {
                v.push(jit::pack_b(
                    &ps[1 + 3 * e].block(&dev.init, op.output, path, 0..d, fl.clone()),
                    d,
                    flen,
                ));
                v.push(jit::pack_b(
                    &ps[2 + 3 * e].block(&dev.init, op.output, path, 0..d, fl.clone()),
                    d,
                    flen,
                ));
                v.push(jit::pack_b(
                    &ps[3 + 3 * e].block(&dev.init, op.output, path, fl.clone(), 0..d),
                    flen,
                    d,
                ));
            }
            v
        });
        let swiglu = Expr::Binary(
            Binary::Mul,
            Box::new(Expr::Unary(Unary::Silu, Box::new(Expr::Input(0)))),
            Box::new(Expr::Input(1)),
        );
        let x = self.rep(op.inputs[0])?;
        if self.dry {
            self.mm(0, d, experts, &[], &[], None)?;
            self.mm(0, d, flen, &[], &[], None)?;
            self.ew(&swiglu, &[], 0)?;
            self.mm(0, flen, d, &[], &[], None)?;
            return Ok(Local {
                layout: Layout::Rep,
                data: Vec::new(),
            });
        }
        let tokens = x.len() / d.max(1);
        let logits = self.mm(tokens, d, experts, &x, &w[0], None)?;
        let choices = route(&logits, experts, top_k);
        let (sent, received) = self.moe_dispatch(&x, &choices, d, experts)?;
        let mut replies = Vec::with_capacity(received.len());
        for msg in &received {
            let recs = msg.len() / (d + 1);
            let mut reply = vec![0.0; recs * d];
            for e in local_experts.clone() {
                let Some((rows, xe)) = expert_rows(msg, d, e) else {
                    continue;
                };
                let base = 1 + 3 * (e - first);
                let a = self.mm(rows.len(), d, flen, &xe, &w[base], None)?;
                let b = self.mm(rows.len(), d, flen, &xe, &w[base + 1], None)?;
                let hgate = self.ew(&swiglu, &[&a, &b], a.len())?;
                let y = self.mm(rows.len(), flen, d, &hgate, &w[base + 2], None)?;
                for (i, r) in rows.iter().enumerate() {
                    reply[r * d..(r + 1) * d].copy_from_slice(&y[i * d..(i + 1) * d]);
                }
            }
            replies.push(reply);
        }
        let back = self.ep_exchange(replies)?;
        if self.grad {
            // The backward pass reuses the routing and the exchanges.
            self.moe_saved.insert(
                (self.mb, op.output.0, path.to_vec()),
                MoeSaved {
                    choices: choices.clone(),
                    sent: sent.clone(),
                    received: received.clone(),
                    back: back.clone(),
                },
            );
        }
        let mut ys: HashMap<(usize, usize), &[f32]> = HashMap::new();
        for (o, recs) in sent.iter().enumerate() {
            for (i, key) in recs.iter().enumerate() {
                ys.insert(*key, &back[o][i * d..(i + 1) * d]);
            }
        }
        let mut out = vec![0.0f32; x.len()];
        for (tk, ch) in choices.iter().enumerate() {
            for (c, (_, gate)) in ch.iter().enumerate() {
                if let Some(y) = ys.get(&(tk, c)) {
                    for j in 0..d {
                        out[tk * d + j] += gate * y[j];
                    }
                }
            }
        }
        self.all_reduce_tp(&mut out)?;
        Ok(Local {
            layout: Layout::Rep,
            data: out,
        })
    }
}

/// The records of dispatch message `msg` (`[expert, token row]` records
/// of `d + 1` floats) for expert `e`: their indices and token rows, or
/// `None` when there are none.
pub(super) fn expert_rows(msg: &[f32], d: usize, e: usize) -> Option<(Vec<usize>, Vec<f32>)> {
    let recs = msg.len() / (d + 1);
    let rows: Vec<usize> = (0..recs)
        .filter(|r| msg[r * (d + 1)] as usize == e)
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut xe = Vec::with_capacity(rows.len() * d);
    for r in &rows {
        xe.extend_from_slice(&msg[r * (d + 1) + 1..(r + 1) * (d + 1)]);
    }
    Some((rows, xe))
}

/// MoE routing of every token: the `top_k` largest logits (ties to the
/// lower expert) with softmax gates over the chosen logits.
pub(super) fn route(logits: &[f32], experts: usize, top_k: usize) -> Vec<Vec<(usize, f32)>> {
    logits
        .chunks(experts.max(1))
        .map(|row| {
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
            order.truncate(top_k);
            let max = order
                .iter()
                .map(|e| row[*e])
                .fold(f32::NEG_INFINITY, f32::max);
            let ex: Vec<f32> = order.iter().map(|e| (row[*e] - max).exp()).collect();
            let sum: f32 = ex.iter().sum();
            order
                .into_iter()
                .zip(ex)
                .map(|(e, x)| (e, x / sum))
                .collect()
        })
        .collect()
}
