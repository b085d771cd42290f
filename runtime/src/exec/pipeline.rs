//! Pipeline parallelism on a device: one microbatch of one model chunk,
//! and the send/recv of the values that cross a stage boundary.
//!
//! The largest top-level `repeat` is cut into the stages' layers
//! ([`super::schedule::chunk_layers`]); the first virtual stage also runs
//! what precedes it, the last what follows. What crosses a boundary is
//! the repeat's carried values plus the values made before it that later
//! stages read ([`boundary_live`]), sent scattered over the
//! tensor-parallel ranks as Megatron-LM does ([`Dev::scattered`]).

use std::collections::BTreeSet;

use gantry_lang::program::{Graph, Item, Repeat, TensorId};

use crate::comm::Kind;
use crate::error::{RCode, RuntimeError};
use crate::layout::Layout;

use super::device::{Dev, Local};
use super::grad::Tape;
use super::schedule::chunk_layers;

/// The top-level `repeat` with the most iterations (ties: the first), and
/// its index among the top-level items.
pub fn pipelined_repeat(items: &[Item]) -> Option<(usize, &Repeat)> {
    let mut best: Option<(usize, &Repeat)> = None;
    for (i, it) in items.iter().enumerate() {
        if let Item::Repeat(r) = it
            && best.is_none_or(|(_, b)| r.count > b.count)
        {
            best = Some((i, r));
        }
    }
    best
}

impl Dev<'_> {
    /// Runs one microbatch of this device's stage. Returns the graph
    /// outputs on the last stage's first tensor-parallel rank.
    pub(super) fn microbatch(
        &mut self,
        mb: usize,
        chunk: usize,
        inputs: &[Vec<f32>],
    ) -> Result<Option<Vec<Vec<f32>>>, RuntimeError> {
        if self.grad {
            self.tape = Some(Tape::default());
        }
        let outs = self.forward(mb, chunk, inputs)?;
        if let Some(tape) = self.tape.take() {
            self.tapes.insert((mb, chunk), tape);
        }
        Ok(outs)
    }

    /// This device's virtual pipeline stage for model chunk `chunk`, and
    /// the last virtual stage.
    pub(super) fn virtual_stage(&self, chunk: usize) -> (usize, usize) {
        (
            chunk * self.par.pp + self.stage,
            self.par.pp * self.par.vp - 1,
        )
    }
    /// The devices of the previous and the next virtual stage.
    pub(super) fn neighbours(&self) -> (usize, usize) {
        let pp = self.par.pp;
        (
            self.rank_of((self.stage + pp - 1) % pp, self.d, self.t),
            self.rank_of((self.stage + 1) % pp, self.d, self.t),
        )
    }

    pub(super) fn forward(
        &mut self,
        mb: usize,
        chunk: usize,
        inputs: &[Vec<f32>],
    ) -> Result<Option<Vec<Vec<f32>>>, RuntimeError> {
        self.mb = mb;
        self.env.clear();
        self.converted.get_mut().clear();
        for (i, t) in self.g.inputs.iter().enumerate() {
            let data = inputs.get(i).cloned().unwrap_or_default();
            self.put(
                *t,
                Local {
                    layout: Layout::Rep,
                    data,
                },
            );
            self.bind(*t);
        }
        let g = self.g;
        match pipelined_repeat(&g.body).filter(|_| self.par.pp > 1) {
            None => self.items(&g.body, &mut Vec::new())?,
            Some((idx, rep)) => {
                let (k, last) = self.virtual_stage(chunk);
                let range = chunk_layers(&self.par.stage_layers, self.par.vp)[k].clone();
                let (l0, l1) = (range.start, range.end);
                let live = boundary_live(g, idx);
                let (prev, next) = self.neighbours();
                if k == 0 {
                    self.items(&g.body[..idx], &mut Vec::new())?;
                } else {
                    self.recv_boundary(rep, &live, prev)?;
                }
                for i in l0..l1 {
                    for c in &rep.carried {
                        if i == 0 {
                            let v = self.get(c.init)?.clone();
                            self.put(c.param, v);
                            self.alias(c.param, c.init);
                        } else if i > l0 {
                            let v = self.get(c.next)?.clone();
                            self.put(c.param, v);
                            self.alias(c.param, c.next);
                        }
                    }
                    let mut path = vec![i as u64];
                    self.items(&rep.body, &mut path)?;
                }
                if k < last {
                    self.send_boundary(rep, &live, next)?;
                    return Ok(None);
                }
                for c in &rep.carried {
                    let v = self.get(c.next)?.clone();
                    self.put(c.result, v);
                    self.alias(c.result, c.next);
                }
                self.items(&g.body[idx + 1..], &mut Vec::new())?;
            }
        }
        // Gathering the outputs for the comparison is not the model's traffic.
        self.label("");
        let mut outs = Vec::new();
        for (_, t) in &g.outputs {
            outs.push(self.rep(*t)?);
        }
        Ok((self.t == 0).then_some(outs))
    }

    pub(super) fn send_boundary(
        &mut self,
        rep: &Repeat,
        live: &[TensorId],
        dst: usize,
    ) -> Result<(), RuntimeError> {
        if self.dry {
            return Ok(());
        }
        let tensors: Vec<TensorId> = rep
            .carried
            .iter()
            .map(|c| c.next)
            .chain(live.iter().copied())
            .collect();
        for t in tensors {
            if let Some(tape) = &mut self.tape {
                tape.sent.push(tape.slot(t)?);
            }
            let (layout, data) = self.scattered(t, self.get(t)?)?;
            let mut msg = vec![layout.code()];
            msg.extend_from_slice(&data);
            let prev = self.label("pipeline");
            self.endpoint()?.send(dst, Kind::SendRecv, msg)?;
            self.label(prev);
        }
        Ok(())
    }

    /// What a device sends of `x` (a part of `t`) to the next stage:
    /// Megatron-LM's scatter/gather, each tensor-parallel rank sends only
    /// its block of rows of a whole (or row-block) value when the rows
    /// divide by `tp`; a split value goes as it is.
    pub(super) fn scattered(
        &self,
        t: TensorId,
        x: &Local,
    ) -> Result<(Layout, Vec<f32>), RuntimeError> {
        let rows = self.numel(t) / self.width(t).max(1);
        Ok(match x.layout {
            Layout::Rep | Layout::Rows if Layout::rows_fit(rows, self.par.tp) => {
                (Layout::Rows, self.convert(t, x, Layout::Rows)?)
            }
            Layout::Rows => (Layout::Rep, self.convert(t, x, Layout::Rep)?),
            l => (l, x.data.clone()),
        })
    }

    pub(super) fn recv_boundary(
        &mut self,
        rep: &Repeat,
        live: &[TensorId],
        src: usize,
    ) -> Result<(), RuntimeError> {
        let tensors: Vec<TensorId> = rep
            .carried
            .iter()
            .map(|c| c.param)
            .chain(live.iter().copied())
            .collect();
        for t in tensors {
            let local = if self.dry {
                Local {
                    layout: Layout::Rep,
                    data: Vec::new(),
                }
            } else {
                let msg = self.endpoint()?.recv(src, Kind::SendRecv)?;
                let layout = Layout::from_code(msg.first().copied().unwrap_or(0.0));
                let data = msg.get(1..).unwrap_or(&[]).to_vec();
                if data.len() != self.local_len(t, layout) {
                    return Err(RuntimeError::new(
                        RCode::R006,
                        format!(
                            "device {} received {} floats for %{}, expected {}",
                            self.rank,
                            data.len(),
                            t.0,
                            self.local_len(t, layout)
                        ),
                    ));
                }
                // Without sequence parallelism the stage works on whole
                // values: the row blocks are all-gathered (Megatron-LM's
                // gather after the scattered send).
                if layout == Layout::Rows && !self.par.sp {
                    let was = self.label("pipeline");
                    let data = self.convert(t, &Local { layout, data }, Layout::Rep);
                    self.label(was);
                    let data = data?;
                    Local {
                        layout: Layout::Rep,
                        data,
                    }
                } else {
                    Local { layout, data }
                }
            };
            self.put(t, local);
            self.bind(t);
            if let Some(tape) = &mut self.tape {
                let s = tape.slot(t)?;
                tape.received.push(s);
            }
        }
        Ok(())
    }
}

pub(super) fn inputs_of(items: &[Item], out: &mut BTreeSet<TensorId>) {
    for it in items {
        match it {
            Item::Op(op) => out.extend(op.inputs.iter().copied()),
            Item::Repeat(r) => {
                out.extend(r.carried.iter().map(|c| c.init));
                inputs_of(&r.body, out);
            }
        }
    }
}

pub(super) fn outputs_of(items: &[Item], out: &mut BTreeSet<TensorId>) {
    for it in items {
        match it {
            Item::Op(op) => {
                out.insert(op.output);
            }
            Item::Repeat(r) => out.extend(r.carried.iter().map(|c| c.result)),
        }
    }
}

/// Tensors made before the pipelined repeat (at index `idx`) that later
/// stages read, other than the repeat's carried values.
/// The values made before the pipelined `repeat` (at `idx`) that the
/// repeat, what follows it or the graph's outputs read: they travel with
/// every stage boundary.
pub(super) fn boundary_live(g: &Graph, idx: usize) -> Vec<TensorId> {
    let items = &g.body;
    let mut made = BTreeSet::new();
    outputs_of(&items[..idx], &mut made);
    for t in &g.inputs {
        made.remove(t);
    }
    let mut read: BTreeSet<TensorId> = g.outputs.iter().map(|(_, t)| *t).collect();
    if let Item::Repeat(r) = &items[idx] {
        inputs_of(&r.body, &mut read);
    }
    inputs_of(&items[idx + 1..], &mut read);
    made.intersection(&read).copied().collect()
}
