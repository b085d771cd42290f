//! The backward pass of one training step on the simulated devices.
//!
//! The loss is the one [`crate::backward`] defines: the sum of every
//! element of every graph output. In training mode each device records a
//! tape of its forward pass per microbatch (fusion is off, so every op's
//! result is a value on the tape; carried values are aliased, not
//! copied) and runs the backward pass when the 1F1B schedule reaches
//! `Backward(mb)`: the last stage seeds the outputs with ones, the other
//! stages receive the gradients of the values they sent and send the
//! gradients of the values they received.
//!
//! A gradient is kept in the layout of its forward value, and every rank
//! holds the *complete* gradient of its local part (a replicated value's
//! gradient is replicated). An op's backward yields, per input, either a
//! complete gradient in some layout or a *partial* sum over the
//! tensor-parallel ranks (a column-parallel linear's input, attention's
//! keys and values under head parallelism); [`Dev::to_layout`] turns it
//! into the input's layout: partial sums are all-reduced (reduce-scattered
//! for sequence-parallel rows, the adjoint of the forward all-gather), a
//! slice that was read from a replicated value is all-gathered. This is
//! Megatron's f/g pair derived from layouts rather than written per op.
//!
//! GEMMs of the backward pass (`dX = dY Wᵀ`, `dW = Xᵀ dY`, experts, MLPs)
//! and the elementwise, norm and softmax gradients run on JIT kernels;
//! attention's, interact's, concat's, the embedding bag's and the SwiGLU
//! gate's local gradients are [`super::grad_ops`]'s own (none of the
//! reference's gradient arithmetic is called: it is what they are checked
//! against). Parameter gradients are summed over the microbatches and then
//! reduced: over data-parallel replicas, over tensor-parallel ranks too
//! where the forward ran on sequence-parallel rows (norm gains), over the
//! replicas that hold the same experts, and not at all for embedding
//! tables sharded table-, row- or column-wise (the holder of a block
//! already received every sample's gradient through the all-to-all).
//! [`check`] compares every device's blocks with the reference gradients
//! and checks that the blocks cover every parameter.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use gantry_lang::program::{Activation, BinaryOp, Graph, Op, OpKind, TensorId};

use super::device::{Dev, Local};
use super::grad_ops;
use super::moe::route;
use super::parallel::TableShard;
use crate::backward::{Gradients, ParamKey};
use crate::comm::Kind;
use crate::error::{RCode, RuntimeError, unsupported};
use crate::graph::{self, numel};
use crate::jit::{self, Binary, Expr, Unary};
use crate::layout::Layout;
use crate::reference::clamp_id;

/// How a parameter gradient is reduced after the last microbatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// Summed over the data-parallel replicas.
    Replicas,
    /// Summed over the tensor-parallel ranks (each saw its own rows), then
    /// over the replicas.
    TensorAndReplicas,
    /// Summed over the replicas that hold the same experts.
    ExpertReplicas,
    /// Already complete on its one owner.
    Owner,
}

/// A block of one parameter's gradient on one device.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGrad {
    pub key: ParamKey,
    /// Rows and columns of the parameter (rows `0..1` for a vector).
    pub rows: Range<usize>,
    pub cols: Range<usize>,
    pub data: Vec<f32>,
    pub reduce: Reduce,
}

/// Every device's parameter gradients compared with the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheck {
    /// Parameter instances (per op, iteration and slot) in the reference.
    pub params: usize,
    /// Their elements, all covered by some device's block.
    pub elements: usize,
    /// How many of those are not zero in the reference.
    pub nonzero: usize,
    /// Parameter instances whose reference gradient is all zero (a check
    /// of zero gradients, e.g. behind a dead ReLU, checks little).
    pub zero_params: usize,
    /// Blocks compared (summed over devices).
    pub blocks: usize,
    pub max_abs: f64,
    pub max_rel: f64,
    /// The parameter with the largest relative error.
    pub worst: String,
    /// A parameter some of whose gradient no device holds.
    pub uncovered: Option<String>,
}

impl GradCheck {
    pub fn passed(&self, tolerance: f64) -> bool {
        self.max_rel <= tolerance && self.uncovered.is_none()
    }
    /// The R001 diagnostic of a failed gradient check.
    pub fn error(&self, tolerance: f64) -> Option<RuntimeError> {
        if let Some(p) = &self.uncovered {
            return Some(RuntimeError::new(
                RCode::R001,
                format!("no device holds the whole gradient of {p}"),
            ));
        }
        (self.max_rel > tolerance).then(|| {
            RuntimeError::new(
                RCode::R001,
                format!(
                    "the gradient of {} differs from the reference: max rel error {:.3e} > {tolerance:e}",
                    self.worst, self.max_rel
                ),
            )
            .with_help(super::run::divergence_help(tolerance))
        })
    }
}

/// The optimizer step of one or more devices: every parameter block's
/// update under the design point's ZeRO stage against the replicated
/// update of the same block, and the optimizer state held.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepCheck {
    pub optimizer: String,
    pub zero: u8,
    /// Parameter blocks updated (summed over devices).
    pub blocks: usize,
    /// Blocks whose sharded update differs from the replicated one.
    pub mismatched: Vec<String>,
    /// Optimizer-state floats held: the most on one device, and what that
    /// device would hold with the state of its blocks unsharded.
    pub state: usize,
    pub state_unsharded: usize,
}

impl StepCheck {
    pub(super) fn merge(mut self, o: StepCheck) -> StepCheck {
        self.blocks += o.blocks;
        self.mismatched.extend(o.mismatched);
        if o.state > self.state {
            self.state = o.state;
            self.state_unsharded = o.state_unsharded;
        }
        self
    }
    /// The R001 diagnostic of a sharded step that differs.
    pub fn error(&self) -> Option<RuntimeError> {
        let first = self.mismatched.first()?;
        Some(RuntimeError::new(
            RCode::R001,
            format!(
                "the ZeRO-{} {} step of {first} differs from the unsharded step ({} blocks differ)",
                self.zero,
                self.optimizer,
                self.mismatched.len()
            ),
        ))
    }
}

/// A gradient contribution to one input of an op.
enum Grad {
    /// Complete, for the local part of the given layout.
    In(Layout, Vec<f32>),
    /// The whole tensor's shape; the gradient is the sum over the
    /// tensor-parallel ranks.
    Partial(Vec<f32>),
}

struct Entry {
    op: TensorId,
    path: Vec<u64>,
    ins: Vec<usize>,
    out: usize,
}

/// The forward values of one microbatch on one device.
#[derive(Default)]
pub(super) struct Tape {
    values: Vec<Local>,
    ids: Vec<TensorId>,
    slot_of: HashMap<TensorId, usize>,
    entries: Vec<Entry>,
    /// Values received from the previous stage, in message order.
    pub(super) received: Vec<usize>,
    /// Values sent to the next stage, in message order.
    pub(super) sent: Vec<usize>,
}

impl Tape {
    pub(super) fn slot(&self, t: TensorId) -> Result<usize, RuntimeError> {
        self.slot_of
            .get(&t)
            .copied()
            .ok_or_else(|| unsupported(format!("tensor %{} is not on the tape", t.0)))
    }
    fn bind(&mut self, t: TensorId, v: Local) -> usize {
        self.values.push(v);
        self.ids.push(t);
        let s = self.values.len() - 1;
        self.slot_of.insert(t, s);
        s
    }
    /// Records the op producing `out` (its inputs are already bound).
    pub(super) fn push(&mut self, op: &Op, path: &[u64], out: &Local) -> Result<(), RuntimeError> {
        let ins = op
            .inputs
            .iter()
            .map(|i| self.slot(*i))
            .collect::<Result<Vec<_>, _>>()?;
        let out = self.bind(op.output, out.clone());
        self.entries.push(Entry {
            op: op.output,
            path: path.to_vec(),
            ins,
            out,
        });
        Ok(())
    }
}

fn acc(slot: &mut Option<Vec<f32>>, g: Vec<f32>) {
    match slot {
        Some(s) => s.iter_mut().zip(g).for_each(|(a, b)| *a += b),
        None => *slot = Some(g),
    }
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

fn col_sums(a: &[f32], cols: usize) -> Vec<f32> {
    let mut s = vec![0.0; cols];
    for row in a.chunks(cols.max(1)) {
        s.iter_mut().zip(row).for_each(|(x, y)| *x += y);
    }
    s
}

fn grad_of(a: Activation) -> Unary {
    match a {
        Activation::Relu => Unary::ReluGrad,
        Activation::Gelu => Unary::GeluGrad,
        Activation::Silu => Unary::SiluGrad,
        Activation::Sigmoid => Unary::SigmoidGrad,
    }
}

fn input(i: u8) -> Box<Expr> {
    Box::new(Expr::Input(i))
}

/// `dy * f'(x)` as one fused kernel expression over `[dy, x]`.
fn chain(a: Activation) -> Expr {
    Expr::Binary(
        Binary::Mul,
        input(0),
        Box::new(Expr::Unary(grad_of(a), input(1))),
    )
}

impl Dev<'_> {
    // ------------------------------------------------------------ tape

    /// Training mode: record tapes, keep every op's result (no fusion).
    pub(super) fn start_gradients(&mut self) {
        self.grad = true;
        self.fused.iter_mut().for_each(|f| *f = false);
    }

    /// Puts the current value of `t` on the tape.
    pub(super) fn bind(&mut self, t: TensorId) {
        if let (Some(tape), Some(v)) = (&mut self.tape, self.env.get(&t)) {
            tape.bind(t, v.clone());
        }
    }

    /// `dst` names the same value as `src` (a carried value).
    pub(super) fn alias(&mut self, dst: TensorId, src: TensorId) {
        if let Some(tape) = &mut self.tape
            && let Some(s) = tape.slot_of.get(&src).copied()
        {
            tape.slot_of.insert(dst, s);
        }
    }

    // ------------------------------------------------------------ groups

    /// The devices holding the same parameter blocks: every replica (or
    /// those with the same experts) and every sequence chunk.
    fn replica_group(&self, same_expert: bool) -> Vec<usize> {
        let ep = self.par.ep.max(1);
        (0..self.par.dp)
            .filter(|d| !same_expert || d % ep == self.d % ep)
            .flat_map(|d| (0..self.par.cp).map(move |c| (d, c)))
            .map(|(d, c)| self.rank_at(self.stage, d, c, self.t))
            .collect()
    }

    // ------------------------------------------------------------ layouts

    /// A gradient contribution to tensor `t` in layout `to`.
    fn to_layout(&self, t: TensorId, g: Grad, to: Layout) -> Result<Vec<f32>, RuntimeError> {
        match g {
            Grad::Partial(mut full) => match to {
                Layout::Rows => self.endpoint()?.reduce_scatter(&self.tp_group(), &full),
                _ => {
                    self.all_reduce_tp(&mut full)?;
                    Ok(if to == Layout::Rep {
                        full
                    } else {
                        crate::layout::local_part(to, &full, self.width(t), self.par.tp, self.t)
                    })
                }
            },
            Grad::In(l, data) => self.convert(t, &Local { layout: l, data }, to),
        }
    }

    // ------------------------------------------------------------ kernels

    /// `aᵀ b` for `a [m, k]`, `b [m, n]`.
    fn mm_tn(
        &mut self,
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        self.mm(k, m, n, &transpose(a, m, k), &jit::pack_b(b, m, n), None)
    }

    /// `a bᵀ` for `a [m, n]`, `b [k, n]`.
    fn mm_nt(
        &mut self,
        a: &[f32],
        b: &[f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        self.mm(m, n, k, a, &jit::pack_b(&transpose(b, k, n), n, k), None)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_pgrad(
        &mut self,
        op: TensorId,
        path: &[u64],
        slot: u32,
        rows: Range<usize>,
        cols: Range<usize>,
        data: Vec<f32>,
        reduce: Reduce,
    ) {
        let key = (op, path.to_vec(), slot);
        // A device may hold several column blocks of one parameter (a
        // column-wise table's slices): they are told apart by their first
        // column.
        match self.pgrads.get_mut(&(key.clone(), cols.start)) {
            Some(p) => p.data.iter_mut().zip(data).for_each(|(a, b)| *a += b),
            None => {
                self.pgrads.insert(
                    (key.clone(), cols.start),
                    ParamGrad {
                        key,
                        rows,
                        cols,
                        data,
                        reduce,
                    },
                );
            }
        }
    }

    // ------------------------------------------------------------ passes

    /// The backward pass of model chunk `chunk` of microbatch `mb`.
    pub(super) fn backward(&mut self, mb: usize, chunk: usize) -> Result<(), RuntimeError> {
        let tape = self.tapes.remove(&(mb, chunk)).ok_or_else(|| {
            unsupported(format!("backward of microbatch {mb} before its forward"))
        })?;
        self.mb = mb;
        self.slot_converted.get_mut().clear();
        let (k, last) = self.virtual_stage(chunk);
        let (prev, next) = self.neighbours();
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; tape.values.len()];
        if self.par.pp == 1 || k == last {
            for (_, t) in &self.g.outputs {
                let s = tape.slot(*t)?;
                acc(&mut grads[s], vec![1.0; tape.values[s].data.len()]);
            }
        } else {
            for &s in &tape.sent {
                let msg = self.endpoint()?.recv(next, Kind::GradSendRecv)?;
                let layout = Layout::from_code(msg.first().copied().unwrap_or(0.0));
                let data = msg.get(1..).unwrap_or(&[]).to_vec();
                let t = tape.ids[s];
                if data.len() != self.local_len(t, layout) {
                    return Err(RuntimeError::new(
                        RCode::R006,
                        format!(
                            "device {} received a gradient of {} floats for %{}, expected {}",
                            self.rank,
                            data.len(),
                            t.0,
                            self.local_len(t, layout)
                        ),
                    ));
                }
                // The gather after a scattered send is the pipeline's.
                let was = self.label("pipeline");
                let g = self.to_layout(t, Grad::In(layout, data), tape.values[s].layout);
                self.label(was);
                acc(&mut grads[s], g?);
            }
        }
        // Partial sums over the tensor-parallel ranks are added up locally
        // and reduced once, when the value's gradient is needed (Megatron's
        // one all-reduce for the q, k and v projections' input).
        let mut partial: Vec<Option<Vec<f32>>> = vec![None; tape.values.len()];
        for e in tape.entries.iter().rev() {
            self.label("tensor");
            let Some(dy) = self.settle(&tape, e.out, &mut grads, &mut partial)? else {
                continue;
            };
            for (i, g) in self.op_backward(&tape, e, dy)? {
                let s = e.ins[i];
                match g {
                    Grad::Partial(p) => acc(&mut partial[s], p),
                    g => {
                        let g = self.to_layout(tape.ids[s], g, tape.values[s].layout)?;
                        acc(&mut grads[s], g);
                    }
                }
            }
        }
        if self.par.pp > 1 && k > 0 {
            for &s in &tape.received {
                self.label("tensor");
                let v = &tape.values[s];
                let g = self
                    .settle(&tape, s, &mut grads, &mut partial)?
                    .unwrap_or_else(|| vec![0.0; v.data.len()]);
                let g = Local {
                    layout: v.layout,
                    data: g,
                };
                // Gradients go back scattered like the activations came.
                let (layout, data) = self.scattered(tape.ids[s], &g)?;
                let mut msg = vec![layout.code()];
                msg.extend_from_slice(&data);
                let was = self.label("pipeline");
                self.endpoint()?.send(prev, Kind::GradSendRecv, msg)?;
                self.label(was);
            }
        }
        Ok(())
    }

    /// Value `x` (slot `s` of tensor `t`) in layout `to`, converted once
    /// per backward pass (the three projections reading one
    /// sequence-parallel input gather it once, as in the forward pass).
    fn slot_as(
        &self,
        t: TensorId,
        s: usize,
        x: &Local,
        to: Layout,
    ) -> Result<Vec<f32>, RuntimeError> {
        if x.layout == to {
            return Ok(x.data.clone());
        }
        if let Some(v) = self.slot_converted.borrow().get(&(s, to)) {
            return Ok(v.clone());
        }
        let v = self.convert(t, x, to)?;
        self.slot_converted.borrow_mut().insert((s, to), v.clone());
        Ok(v)
    }

    /// The whole gradient of slot `s` in its forward layout: the complete
    /// contributions plus the reduced partial sums.
    fn settle(
        &self,
        tape: &Tape,
        s: usize,
        grads: &mut [Option<Vec<f32>>],
        partial: &mut [Option<Vec<f32>>],
    ) -> Result<Option<Vec<f32>>, RuntimeError> {
        let mut g = grads[s].take();
        if let Some(p) = partial[s].take() {
            let r = self.to_layout(tape.ids[s], Grad::Partial(p), tape.values[s].layout)?;
            acc(&mut g, r);
        }
        Ok(g)
    }

    /// Reduces the accumulated parameter gradients over the devices that
    /// share them; returns this device's blocks.
    pub(super) fn finish_gradients(&mut self) -> Result<Vec<ParamGrad>, RuntimeError> {
        let mut pgrads = std::mem::take(&mut self.pgrads);
        let ep = self.endpoint()?;
        ep.label("");
        // The members of each group must hold the same blocks, or the
        // reductions below would pair different parameters.
        for (group, pick) in [
            (self.replica_group(false), Reduce::Replicas),
            (self.replica_group(true), Reduce::ExpertReplicas),
        ] {
            let mine: Vec<f32> = pgrads
                .values()
                .filter(|p| {
                    p.reduce == pick
                        || (pick == Reduce::Replicas && p.reduce == Reduce::TensorAndReplicas)
                })
                .map(|p| p.data.len() as f32)
                .collect();
            let all = ep.all_gather(&group, &[mine.len() as f32, mine.iter().sum()])?;
            if all.iter().any(|a| a[..] != all[0][..]) {
                return Err(RuntimeError::new(
                    RCode::R006,
                    format!(
                        "devices {group:?} hold different parameter gradients to reduce (a runtime bug)"
                    ),
                ));
            }
        }
        // Sequence-parallel partial sums first, then replicas; every device
        // of a group walks the same keys in the same order.
        ep.label("tensor");
        for p in pgrads.values_mut() {
            if p.reduce == Reduce::TensorAndReplicas && self.par.tp > 1 {
                ep.all_reduce(&self.tp_group(), &mut p.data)?;
            }
        }
        // With ZeRO >= 1 only the reduce-scatter half of the all-reduce is
        // the model's traffic; the all-gather half serves the gradient check.
        let reduce = |group: &[usize], data: &mut Vec<f32>| -> Result<(), RuntimeError> {
            if self.par.zero == 0 || group.len() <= 1 {
                return ep.all_reduce(group, data);
            }
            let part = ep.reduce_scatter(group, data)?;
            let was = ep.label("");
            let whole = ep.all_gather(group, &part)?.concat();
            ep.label(was);
            *data = whole;
            Ok(())
        };
        ep.label("data");
        let replicas = self.replica_group(false);
        for p in pgrads.values_mut() {
            if matches!(p.reduce, Reduce::Replicas | Reduce::TensorAndReplicas) {
                reduce(&replicas, &mut p.data)?;
            }
        }
        let experts = self.replica_group(true);
        for p in pgrads.values_mut() {
            if p.reduce == Reduce::ExpertReplicas {
                reduce(&experts, &mut p.data)?;
            }
        }
        let mut out: Vec<ParamGrad> = pgrads.into_values().collect();
        if let Some(f) = self.grad_fault
            && let Some(x) = out
                .iter_mut()
                .find(|p| p.key.0 == f)
                .and_then(|p| p.data.first_mut())
        {
            *x += 1.0;
        }
        Ok(out)
    }

    /// One optimizer step on this device's parameter blocks (gradients
    /// already reduced). Without ZeRO every device updates its whole
    /// blocks with whole state. With `zero >= 1` a block shared by `R`
    /// devices (its reduction group) is cut into `R` contiguous parts:
    /// device `i` keeps state for part `i` only, updates it and the group
    /// all-gathers the parts. (With `zero >= 2` the gradient of part `i` is
    /// the reduce-scatter half of the all-reduce already done, so it is
    /// bit-identical; the all-gather half is kept for the gradient check.)
    /// Every block's result is compared bit for bit with the replicated
    /// update computed here from the same gradient.
    pub(super) fn optimizer_step(
        &mut self,
        grads: &[ParamGrad],
        opt: gantry_lang::program::Optimizer,
    ) -> Result<StepCheck, RuntimeError> {
        let h = crate::optim::defaults(opt);
        self.label("data");
        let mut check = StepCheck {
            optimizer: opt.name().to_string(),
            zero: self.par.zero,
            ..StepCheck::default()
        };
        // Blocks reduced over all replicas first, then expert blocks, as
        // the reductions were ordered.
        for experts in [false, true] {
            for p in grads {
                let group = match p.reduce {
                    Reduce::Owner => vec![self.rank],
                    Reduce::ExpertReplicas if experts => self.replica_group(true),
                    Reduce::Replicas | Reduce::TensorAndReplicas if !experts => {
                        self.replica_group(false)
                    }
                    _ => continue,
                };
                if experts && p.reduce == Reduce::Owner {
                    continue;
                }
                let op = *self
                    .producer
                    .get(&p.key.0)
                    .ok_or_else(|| unsupported(format!("no op produces %{}", p.key.0.0)))?;
                let param = graph::params(&op.kind)
                    .into_iter()
                    .find(|x| x.slot == p.key.2)
                    .ok_or_else(|| unsupported("a gradient of an unknown parameter"))?;
                let w0 = param.block(
                    &self.init,
                    op.output,
                    &p.key.1,
                    p.rows.clone(),
                    p.cols.clone(),
                );
                let mut whole = w0.clone();
                let shape = (p.rows.len(), p.cols.len());
                let state: usize = crate::optim::first_step(opt, &h, &mut whole, &p.data, shape)
                    .iter()
                    .map(Vec::len)
                    .sum();
                check.blocks += 1;
                check.state_unsharded += state;
                let sharded = if self.par.zero == 0 || group.len() == 1 {
                    check.state += state;
                    whole.clone()
                } else if !crate::optim::elementwise(opt) {
                    return Err(unsupported(format!(
                        "ZeRO's sharded step of `{}`: its update needs the whole tensor (a trust ratio or factored moment), and the runtime shards elementwise optimizers only",
                        opt.name()
                    )));
                } else {
                    let mut me = group.iter().position(|r| *r == self.rank).unwrap_or(0);
                    if self.step_fault {
                        me = (me + 1) % group.len();
                    }
                    let part = crate::layout::block(w0.len(), group.len(), me);
                    let mut mine = w0[part.clone()].to_vec();
                    let shape = (1, part.len());
                    check.state +=
                        crate::optim::first_step(opt, &h, &mut mine, &p.data[part.clone()], shape)
                            .iter()
                            .map(Vec::len)
                            .sum::<usize>();
                    self.endpoint()?.all_gather(&group, &mine)?.concat()
                };
                let same = sharded.len() == whole.len()
                    && sharded
                        .iter()
                        .zip(&whole)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                if !same {
                    check.mismatched.push(format!(
                        "`{} %{}` parameter {} on device {}",
                        op.kind.name(),
                        op.output.0,
                        p.key.2,
                        self.rank
                    ));
                }
            }
        }
        Ok(check)
    }

    // ------------------------------------------------------------ ops

    /// The gradient contributions of the op of tape entry `e` to its
    /// inputs, given the gradient `dy` of its result; parameter gradients
    /// are added to the device's blocks. Each op family's backward is a
    /// function of its own below.
    fn op_backward(
        &mut self,
        tape: &Tape,
        e: &Entry,
        dy: Vec<f32>,
    ) -> Result<Vec<(usize, Grad)>, RuntimeError> {
        let op = *self
            .producer
            .get(&e.op)
            .ok_or_else(|| unsupported(format!("no op produces %{}", e.op.0)))?;
        let path = e.path.as_slice();
        let lay = tape.values[e.out].layout;
        let val = |i: usize| &tape.values[e.ins[i]];
        Ok(match &op.kind {
            OpKind::Dropout(_) => vec![(0, Grad::In(lay, dy))],
            OpKind::Activation(a) => {
                let x = self.input_as(op, tape, e, 0, lay)?;
                let dx = self.ew(&chain(*a), &[&dy, &x], dy.len())?;
                vec![(0, Grad::In(lay, dx))]
            }
            OpKind::Scale(c) => {
                let e = Expr::Unary(Unary::Scale((*c as f32).to_bits()), input(0));
                vec![(0, Grad::In(lay, self.ew(&e, &[&dy], dy.len())?))]
            }
            OpKind::Binary(b) => self.binary_backward(op, tape, e, *b, dy)?,
            OpKind::Reshape => vec![(0, Grad::In(Layout::Rep, dy))],
            OpKind::Linear {
                d_in, d_out, bias, ..
            } => self.linear_backward(
                op,
                path,
                (e.ins[0], val(0)),
                lay,
                dy,
                *d_in as usize,
                *d_out as usize,
                *bias,
            )?,
            OpKind::MatMul => self.matmul_backward(op, val(0), val(1), dy)?,
            OpKind::Embedding { vocab, dim } => {
                self.embedding_backward(op, tape, e, dy, *vocab as usize, *dim as usize)?;
                Vec::new()
            }
            OpKind::EmbeddingBag { .. } => {
                self.embedding_bag_backward(op, path, val(0), &dy)?;
                Vec::new()
            }
            OpKind::Attention {
                kv_heads, head_dim, ..
            } => {
                self.attention_backward(op, tape, e, &dy, *kv_heads as usize, *head_dim as usize)?
            }
            OpKind::RmsNorm { .. } | OpKind::LayerNorm { .. } | OpKind::Softmax => {
                self.rowwise_backward(op, tape, e, dy)?
            }
            OpKind::Mlp { dims, activation } => {
                self.mlp_backward(op, tape, e, dims, *activation, dy)?
            }
            OpKind::Interact { vectors, dim } => {
                let dense = self.input_as(op, tape, e, 0, Layout::Rep)?;
                let sparse = self.input_as(op, tape, e, 1, Layout::Rep)?;
                let b = self.shapes[op.inputs[0].0 as usize][0];
                let n = (*vectors as usize).saturating_sub(1);
                let (dd, ds) = grad_ops::interact(&dense, &sparse, &dy, b, n, *dim as usize);
                vec![
                    (0, Grad::In(Layout::Rep, dd)),
                    (1, Grad::In(Layout::Rep, ds)),
                ]
            }
            OpKind::Concat { axis } => {
                let shapes: Vec<&[usize]> = op
                    .inputs
                    .iter()
                    .map(|i| self.shapes[i.0 as usize].as_slice())
                    .collect();
                grad_ops::concat(&dy, &shapes, *axis)
                    .into_iter()
                    .enumerate()
                    .map(|(i, g)| (i, Grad::In(Layout::Rep, g)))
                    .collect()
            }
            OpKind::Moe {
                experts,
                top_k,
                d_model,
                d_ff,
            } => self.moe_backward(
                op,
                path,
                val(0),
                &dy,
                [
                    *experts as usize,
                    *top_k as usize,
                    *d_model as usize,
                    *d_ff as usize,
                ],
            )?,
        })
    }

    /// Input `i` of the op of tape entry `e` in layout `to`.
    fn input_as(
        &self,
        op: &Op,
        tape: &Tape,
        e: &Entry,
        i: usize,
        to: Layout,
    ) -> Result<Vec<f32>, RuntimeError> {
        self.slot_as(op.inputs[i], e.ins[i], &tape.values[e.ins[i]], to)
    }

    /// Both inputs' gradients of an elementwise binary op, in the
    /// result's layout.
    fn binary_backward(
        &mut self,
        op: &Op,
        tape: &Tape,
        e: &Entry,
        b: BinaryOp,
        dy: Vec<f32>,
    ) -> Result<Vec<(usize, Grad)>, RuntimeError> {
        let lay = tape.values[e.out].layout;
        // Sums and differences need no forward values.
        let reads = matches!(b, BinaryOp::Mul | BinaryOp::Div);
        let (x, y) = if reads {
            (
                self.input_as(op, tape, e, 0, lay)?,
                self.input_as(op, tape, e, 1, lay)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let n = dy.len();
        let neg = |e: Box<Expr>| Box::new(Expr::Unary(Unary::Scale((-1.0f32).to_bits()), e));
        let (dx, dyy) = match b {
            BinaryOp::Add => (dy.clone(), dy),
            BinaryOp::Sub => {
                let d = self.ew(&neg(input(0)), &[&dy], n)?;
                (dy, d)
            }
            BinaryOp::Mul => {
                let e = Expr::Binary(Binary::Mul, input(0), input(1));
                (self.ew(&e, &[&dy, &y], n)?, self.ew(&e, &[&dy, &x], n)?)
            }
            BinaryOp::Div => {
                let q = Expr::Binary(Binary::Div, input(0), input(1));
                // d(x/y)/dy = -dy * x / (y * y)
                let r = Expr::Binary(
                    Binary::Div,
                    Box::new(Expr::Binary(Binary::Mul, neg(input(0)), input(1))),
                    Box::new(Expr::Binary(Binary::Mul, input(2), input(2))),
                );
                (self.ew(&q, &[&dy, &y], n)?, self.ew(&r, &[&dy, &x, &y], n)?)
            }
        };
        Ok(vec![(0, Grad::In(lay, dx)), (1, Grad::In(lay, dyy))])
    }

    /// A vocab-parallel embedding's table gradient: each rank adds the
    /// rows of its vocabulary block (the ids get no gradient).
    fn embedding_backward(
        &mut self,
        op: &Op,
        tape: &Tape,
        e: &Entry,
        dy: Vec<f32>,
        vocab: usize,
        dim: usize,
    ) -> Result<(), RuntimeError> {
        let lay = tape.values[e.out].layout;
        let ps = graph::params(&op.kind);
        let rows = Layout::cols(self.par.tp).range(vocab, self.par.tp, self.t);
        let ids = self.input_as(op, tape, e, 0, Layout::Rep)?;
        // Under sequence parallelism the output is row blocks.
        let dy = self.convert(
            op.output,
            &Local {
                layout: lay,
                data: dy,
            },
            Layout::Rep,
        )?;
        let mut dw = vec![0.0; rows.len() * dim];
        for (tok, id) in ids.iter().enumerate() {
            let r = clamp_id(*id, vocab as u64);
            if rows.contains(&r) {
                let o = (r - rows.start) * dim;
                for j in 0..dim {
                    dw[o + j] += dy[tok * dim + j];
                }
            }
        }
        let path = e.path.as_slice();
        self.add_pgrad(
            op.output,
            path,
            ps[0].slot,
            rows,
            0..dim,
            dw,
            Reduce::Replicas,
        );
        Ok(())
    }

    /// Attention's query, key and value gradients over the local heads;
    /// under context parallelism the keys and values of every chunk are
    /// gathered and their gradients scattered back to their chunks.
    fn attention_backward(
        &mut self,
        op: &Op,
        tape: &Tape,
        e: &Entry,
        dy: &[f32],
        kvh: usize,
        hd: usize,
    ) -> Result<Vec<(usize, Grad)>, RuntimeError> {
        let (mut spec, ql, kvl) = self.attention_plan(op)?;
        let q = self.input_as(op, tape, e, 0, ql)?;
        let mut k = self.input_as(op, tape, e, 1, kvl)?;
        let mut v = self.input_as(op, tape, e, 2, kvl)?;
        let b = self.shapes[op.inputs[0].0 as usize][0];
        let n = self.cp_chunks(&spec);
        if self.par.cp > 1 {
            spec.seq_kv *= n;
            k = self.cp_gather(&k, b, n)?;
            v = self.cp_gather(&v, b, n)?;
        }
        let (dq, mut dk, mut dv) = grad_ops::attention(&spec, b, &q, &k, &v, dy);
        if self.par.cp > 1 {
            // Keys and values of other chunks send their gradients home.
            dk = self.cp_scatter(&dk, b, n)?;
            dv = self.cp_scatter(&dv, b, n)?;
        }
        let mut out = vec![(0, Grad::In(ql, dq))];
        // Keys and values split one block per rank are read only by
        // that rank's query heads: their gradients are whole.
        let own = matches!(kvl, Layout::Cols { groups } if groups == self.par.tp);
        if ql == Layout::Rep || own {
            out.push((1, Grad::In(kvl, dk)));
            out.push((2, Grad::In(kvl, dv)));
        } else {
            // Each rank's query heads add to their key/value heads.
            let rows = dk.len() / (spec.kv_heads * hd).max(1);
            let place = |local: &[f32]| {
                let mut full = vec![0.0; rows * kvh * hd];
                let w = spec.kv_heads * hd;
                for r in 0..rows {
                    let o = r * kvh * hd + spec.kv_head_offset * hd;
                    full[o..o + w].copy_from_slice(&local[r * w..(r + 1) * w]);
                }
                full
            };
            out.push((1, Grad::Partial(place(&dk))));
            out.push((2, Grad::Partial(place(&dv))));
        }
        Ok(out)
    }

    /// The row-wise ops (RMS and layer norms, softmax): the input's
    /// gradient and the gains' (and bias') gradients, on sequence-parallel
    /// row blocks or whole rows.
    fn rowwise_backward(
        &mut self,
        op: &Op,
        tape: &Tape,
        e: &Entry,
        dy: Vec<f32>,
    ) -> Result<Vec<(usize, Grad)>, RuntimeError> {
        let path = e.path.as_slice();
        let ps = graph::params(&op.kind);
        let rows_local = tape.values[e.out].layout == Layout::Rows;
        let x = if rows_local {
            self.input_as(op, tape, e, 0, Layout::Rows)?
        } else {
            self.input_as(op, tape, e, 0, Layout::Rep)?
        };
        // The result is row blocks or whole (the sharded program
        // never keeps a row-wise op's result split by features).
        let dyf = dy;
        let dim = self.width(op.inputs[0]);
        let mut dx = vec![0.0; x.len()];
        let reduce = if rows_local {
            Reduce::TensorAndReplicas
        } else {
            Reduce::Replicas
        };
        match op.kind {
            OpKind::RmsNorm { .. } => {
                let gain = ps[0].full(&self.init, op.output, path);
                let mut dg = vec![0.0; dim];
                self.jit
                    .rmsnorm_grad(dim, &x, &gain, &dyf, &mut dx, &mut dg)?;
                self.add_pgrad(op.output, path, ps[0].slot, 0..1, 0..dim, dg, reduce);
            }
            OpKind::LayerNorm { .. } => {
                let gain = ps[0].full(&self.init, op.output, path);
                let (mut dg, mut db) = (vec![0.0; dim], vec![0.0; dim]);
                self.jit
                    .layernorm_grad(dim, &x, &gain, &dyf, &mut dx, &mut dg, &mut db)?;
                self.add_pgrad(op.output, path, ps[0].slot, 0..1, 0..dim, dg, reduce);
                self.add_pgrad(op.output, path, ps[1].slot, 0..1, 0..dim, db, reduce);
            }
            _ => {
                let mut y = vec![0.0; x.len()];
                self.jit.softmax(dim, &x, &mut y)?;
                self.jit.softmax_grad(dim, &y, &dyf, &mut dx)?;
            }
        }
        let l = if rows_local {
            Layout::Rows
        } else {
            Layout::Rep
        };
        Ok(vec![(0, Grad::In(l, dx))])
    }

    /// A replicated MLP: recomputes the layers' inputs and
    /// pre-activations, then walks the layers back.
    fn mlp_backward(
        &mut self,
        op: &Op,
        tape: &Tape,
        e: &Entry,
        dims: &[u64],
        activation: Activation,
        dy: Vec<f32>,
    ) -> Result<Vec<(usize, Grad)>, RuntimeError> {
        let path = e.path.as_slice();
        let ps = graph::params(&op.kind);
        let slot = |i: usize| ps[i].slot;
        let widths = graph::mlp_widths(dims);
        let x = self.input_as(op, tape, e, 0, Layout::Rep)?;
        let rows = x.len() / widths[0].max(1);
        let ws: Vec<Vec<f32>> = (0..widths.len() - 1)
            .map(|l| ps[2 * l].full(&self.init, op.output, path))
            .collect();
        // Recompute the layers' inputs and pre-activations.
        let (mut hs, mut zs) = (vec![x], Vec::new());
        for l in 0..widths.len() - 1 {
            let b = ps[2 * l + 1].full(&self.init, op.output, path);
            let packed = jit::pack_b(&ws[l], widths[l], widths[l + 1]);
            let z = self.mm(rows, widths[l], widths[l + 1], &hs[l], &packed, Some(&b))?;
            let act = Expr::Unary(super::elementwise::unary_of(activation), input(0));
            hs.push(self.ew(&act, &[&z], z.len())?);
            zs.push(z);
        }
        let mut g = dy;
        for l in (0..widths.len() - 1).rev() {
            let dz = self.ew(&chain(activation), &[&g, &zs[l]], g.len())?;
            let (a, b) = (widths[l], widths[l + 1]);
            let dw = self.mm_tn(&hs[l], &dz, rows, a, b)?;
            let db = col_sums(&dz, b);
            self.add_pgrad(
                op.output,
                path,
                slot(2 * l),
                0..a,
                0..b,
                dw,
                Reduce::Replicas,
            );
            self.add_pgrad(
                op.output,
                path,
                slot(2 * l + 1),
                0..1,
                0..b,
                db,
                Reduce::Replicas,
            );
            g = self.mm_nt(&dz, &ws[l], rows, b, a)?;
        }
        Ok(vec![(0, Grad::In(Layout::Rep, g))])
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &mut self,
        op: &Op,
        path: &[u64],
        (xs, x): (usize, &Local),
        out_layout: Layout,
        dy: Vec<f32>,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Vec<(usize, Grad)>, RuntimeError> {
        let (tp, t) = (self.par.tp, self.t);
        let ps = graph::params(&op.kind);
        let rows = self.numel(op.inputs[0]) / d_in.max(1);
        if self.planned(op.output)?.strategy == gantry_compiler::sharded::Strategy::Row {
            // Row-parallel: the output (and its gradient) is whole.
            let ks = Layout::cols(tp).range(d_in, tp, t);
            let kl = ks.len();
            let dyf = self.convert(
                op.output,
                &Local {
                    layout: out_layout,
                    data: dy,
                },
                Layout::Rep,
            )?;
            let w = ps[0].block(&self.init, op.output, path, ks.clone(), 0..d_out);
            let xl = self.slot_as(op.inputs[0], xs, x, Layout::cols(tp))?;
            let dw = self.mm_tn(&xl, &dyf, rows, kl, d_out)?;
            self.add_pgrad(
                op.output,
                path,
                ps[0].slot,
                ks,
                0..d_out,
                dw,
                Reduce::Replicas,
            );
            if bias {
                let db = col_sums(&dyf, d_out);
                self.add_pgrad(
                    op.output,
                    path,
                    ps[1].slot,
                    0..1,
                    0..d_out,
                    db,
                    Reduce::Replicas,
                );
            }
            let dx = self.mm_nt(&dyf, &w, rows, d_out, kl)?;
            return Ok(vec![(0, Grad::In(Layout::cols(tp), dx))]);
        }
        // Column-parallel: each rank's columns add to the whole input.
        let layout = self.layout(op.output);
        let groups = match layout {
            Layout::Cols { groups } => groups,
            _ => 1,
        };
        let cols = layout.range(d_out, tp, t);
        let nl = cols.len();
        let xr = self.slot_as(op.inputs[0], xs, x, Layout::Rep)?;
        let w = ps[0].block(&self.init, op.output, path, 0..d_in, cols.clone());
        let dw = self.mm_tn(&xr, &dy, rows, d_in, nl)?;
        self.add_pgrad(
            op.output,
            path,
            ps[0].slot,
            0..d_in,
            cols.clone(),
            dw,
            Reduce::Replicas,
        );
        if bias {
            let db = col_sums(&dy, nl);
            self.add_pgrad(
                op.output,
                path,
                ps[1].slot,
                0..1,
                cols,
                db,
                Reduce::Replicas,
            );
        }
        let mut dx = self.mm_nt(&dy, &w, rows, nl, d_in)?;
        if layout == Layout::Rep {
            return Ok(vec![(0, Grad::In(Layout::Rep, dx))]);
        }
        // A block held by several ranks adds once.
        if !t.is_multiple_of((tp / groups).max(1)) {
            dx.fill(0.0);
        }
        Ok(vec![(0, Grad::Partial(dx))])
    }

    fn matmul_backward(
        &mut self,
        op: &Op,
        a: &Local,
        b: &Local,
        dy: Vec<f32>,
    ) -> Result<Vec<(usize, Grad)>, RuntimeError> {
        let bl = match self.planned(op.output)?.strategy {
            gantry_compiler::sharded::Strategy::Column => b.layout,
            _ => Layout::Rep,
        };
        let av = self.convert(op.inputs[0], a, Layout::Rep)?;
        let bv = self.convert(op.inputs[1], b, bl)?;
        let ashape = self.shapes[op.inputs[0].0 as usize].clone();
        let r = ashape.len();
        let (m, k) = (ashape[r - 2], ashape[r - 1]);
        let n = bl
            .range(self.width(op.inputs[1]), self.par.tp, self.t)
            .len();
        let count = numel(&ashape) / (m * k).max(1);
        let (mut da, mut db) = (Vec::with_capacity(av.len()), Vec::with_capacity(bv.len()));
        for i in 0..count {
            let dyi = &dy[i * m * n..(i + 1) * m * n];
            da.extend(self.mm_nt(dyi, &bv[i * k * n..(i + 1) * k * n], m, n, k)?);
            db.extend(self.mm_tn(&av[i * m * k..(i + 1) * m * k], dyi, m, k, n)?);
        }
        Ok(match bl {
            Layout::Cols { groups } => {
                if !self.t.is_multiple_of((self.par.tp / groups).max(1)) {
                    da.fill(0.0);
                }
                vec![(0, Grad::Partial(da)), (1, Grad::In(bl, db))]
            }
            _ => vec![
                (0, Grad::In(Layout::Rep, da)),
                (1, Grad::In(Layout::Rep, db)),
            ],
        })
    }

    /// Table gradients: replicated tables from this device's own samples
    /// (summed over the replicas later); served tables (whole, by rows or
    /// by columns) from every requester's pooled gradients (of the
    /// columns the server holds), sent back along the reverse of the
    /// forward all-to-all by one tensor-parallel rank per replica. Each
    /// holder keeps the gradient of the blocks it holds (a column slice:
    /// every row, its columns).
    fn embedding_bag_backward(
        &mut self,
        op: &Op,
        path: &[u64],
        ids: &Local,
        dy: &[f32],
    ) -> Result<(), RuntimeError> {
        let OpKind::EmbeddingBag { tables } = &op.kind else {
            return Err(unsupported("not an embedding_bag"));
        };
        let ps = graph::params(&op.kind);
        let n = tables.len();
        let dim = tables.first().map_or(0, |t| t.dim as usize);
        let group = self.stage_group();
        let size = group.len();
        let me = group.iter().position(|r| *r == self.rank).unwrap_or(0);
        let ids = self.convert(op.inputs[0], ids, Layout::Rep)?;
        let b = self.shapes[op.inputs[0].0 as usize][0];
        let mut dtab: Vec<Vec<f32>> = tables
            .iter()
            .map(|t| vec![0.0; t.rows as usize * dim])
            .collect();
        // Adds the pooled gradients `dq [samples, cols, dim]` of ids `q`.
        let mut scatter = |q: &[f32], dq: &[f32], cols: &[usize]| {
            for (j, ti) in cols.iter().enumerate() {
                let t = &tables[*ti];
                grad_ops::embedding_bag_scatter(
                    &mut dtab[*ti],
                    q,
                    dq,
                    (cols.len(), j),
                    t.rows,
                    t.pooling as usize,
                    dim,
                );
            }
        };
        let pick = |x: &[f32], cols: &[usize], width: usize| -> Vec<f32> {
            (0..b)
                .flat_map(|s| cols.iter().map(move |c| (s, *c)))
                .flat_map(|(s, c)| x[(s * n + c) * width..][..width].iter().copied())
                .collect()
        };
        let local: Vec<usize> = (0..n)
            .filter(|i| self.table_shard(*i, size) == TableShard::Replicated)
            .collect();
        if !local.is_empty() {
            scatter(&pick(&ids, &local, 1), &pick(dy, &local, dim), &local);
        }
        if local.len() < n {
            let served: Vec<Vec<usize>> = (0..size).map(|o| self.served_by(o, n, size)).collect();
            // The columns server `o` holds of each table it serves: the
            // pooled gradients it gets (all but for column-wise tables).
            let held_by: Vec<Vec<Vec<Range<usize>>>> = (0..size)
                .map(|o| {
                    served[o]
                        .iter()
                        .map(|ti| self.held_cols(*ti, dim, size, o))
                        .collect()
                })
                .collect();
            let mut grads_out: Vec<Vec<f32>> = vec![Vec::new(); size];
            if self.t == 0 {
                for (o, out) in grads_out.iter_mut().enumerate() {
                    for s in 0..b {
                        for (ti, cs) in served[o].iter().zip(&held_by[o]) {
                            let row = &dy[(s * n + ti) * dim..][..dim];
                            for c in cs {
                                out.extend_from_slice(&row[c.clone()]);
                            }
                        }
                    }
                }
            }
            // The ids each requester sent in the forward pass, kept by
            // this server (sent again only when the forward kept none).
            let kept = self.emb_ids.remove(&(self.mb, op.output.0, path.to_vec()));
            let ep = self.endpoint()?;
            let ids_in = match kept {
                Some(k) => k,
                None => {
                    ep.label(self.par.ids_label());
                    let ids_out = served.iter().map(|c| pick(&ids, c, 1)).collect();
                    ep.all_to_all(&group, ids_out)?
                }
            };
            ep.label("embedding");
            let grads_in = ep.all_to_all(&group, grads_out)?;
            let mine = &held_by[me];
            let stride = served[me].len();
            let row: usize = mine.iter().flatten().map(|c| c.len()).sum();
            for (q, dq) in ids_in.iter().zip(&grads_in) {
                if dq.is_empty() || row == 0 {
                    continue;
                }
                if row == stride * dim {
                    scatter(q, dq, &served[me]);
                    continue;
                }
                // Full width, zeros in the columns held elsewhere.
                let samples = dq.len() / row;
                let mut full = vec![0.0; samples * stride * dim];
                let mut at = 0;
                for s in 0..samples {
                    for (j, cs) in mine.iter().enumerate() {
                        let to = &mut full[(s * stride + j) * dim..][..dim];
                        for c in cs {
                            to[c.clone()].copy_from_slice(&dq[at..at + c.len()]);
                            at += c.len();
                        }
                    }
                }
                scatter(q, &full, &served[me]);
            }
        }
        for (i, t) in tables.iter().enumerate() {
            let rows = self.held_rows(i, t.rows as usize, size, me);
            let reduce = match self.table_shard(i, size) {
                TableShard::Replicated => Reduce::Replicas,
                TableShard::Table(o) if o != me => continue,
                _ => Reduce::Owner,
            };
            // The gradient of each held block: rows `rows`, columns `c` of
            // the row-major `[rows, dim]` table gradient.
            for c in self.held_cols(i, dim, size, me) {
                let g = if c.len() == dim {
                    dtab[i][rows.start * dim..rows.end * dim].to_vec()
                } else {
                    rows.clone()
                        .flat_map(|r| &dtab[i][r * dim + c.start..r * dim + c.end])
                        .copied()
                        .collect()
                };
                self.add_pgrad(op.output, path, ps[i].slot, rows.clone(), c, g, reduce);
            }
        }
        Ok(())
    }

    /// MoE backward, recomputing the routing, the dispatch and the experts'
    /// activations (activation recomputation of the whole layer). The
    /// phases: routing, the experts' forward pass, the gates' gradients,
    /// the experts' gradients, then the inputs' gradients combined from
    /// the owners' replies and the router's.
    fn moe_backward(
        &mut self,
        op: &Op,
        path: &[u64],
        x: &Local,
        dy: &[f32],
        [experts, top_k, d, f]: [usize; 4],
    ) -> Result<Vec<(usize, Grad)>, RuntimeError> {
        let (tp, t, ep) = (self.par.tp, self.t, self.par.ep);
        let ps = graph::params(&op.kind);
        let fl = Layout::cols(tp).range(f, tp, t);
        let local = crate::layout::block(experts, ep, self.d % ep);
        let x = self.convert(op.inputs[0], x, Layout::Rep)?;
        let tokens = x.len() / d.max(1);
        let router = ps[0].full(&self.init, op.output, path);
        let Routing {
            choices,
            sent,
            received,
            back: saved_back,
        } = self.moe_routing(op, path, &x, &router, [experts, top_k, d])?;
        let ws = self.moe_expert_weights(op, path, local.clone(), d, &fl);
        let (work, replies) = self.moe_recompute(&received, &ws, local, d, fl.len())?;
        // The experts' outputs, whole (they are partial sums over the
        // width shards), give the gates' gradients.
        let back = match saved_back {
            Some(b) => b,
            None => self.ep_exchange(replies)?,
        };
        let dlogits = self.moe_gate_grad(back, &sent, &choices, dy, [tokens, experts, d])?;
        // Gradients of the experts' outputs go back to the owners.
        let parts: Vec<Vec<f32>> = sent
            .iter()
            .map(|recs| {
                recs.iter()
                    .flat_map(|(tk, c)| {
                        let g = choices[*tk][*c].1;
                        dy[tk * d..(tk + 1) * d].iter().map(move |v| g * v)
                    })
                    .collect()
            })
            .collect();
        let dys = self.ep_exchange(parts)?;
        let dx_replies = self.moe_expert_grads(op, path, &work, &dys, &ws, d, &fl)?;
        let dxs = self.ep_exchange(dx_replies)?;
        let mut dx_experts = vec![0.0f32; x.len()];
        for (o, recs) in sent.iter().enumerate() {
            for (i, (tk, _)) in recs.iter().enumerate() {
                for j in 0..d {
                    dx_experts[tk * d + j] += dxs[o][i * d + j];
                }
            }
        }
        let dr = self.mm_tn(&x, &dlogits, tokens, d, experts)?;
        self.add_pgrad(
            op.output,
            path,
            ps[0].slot,
            0..d,
            0..experts,
            dr,
            Reduce::Replicas,
        );
        let dx_router = self.mm_nt(&dlogits, &router, tokens, experts, d)?;
        Ok(vec![
            (0, Grad::In(Layout::Rep, dx_router)),
            (
                0,
                if tp > 1 {
                    Grad::Partial(dx_experts)
                } else {
                    Grad::In(Layout::Rep, dx_experts)
                },
            ),
        ])
    }

    /// The routing and dispatch the forward pass saved for this
    /// microbatch, or recomputed (and dispatched again) when it saved none.
    fn moe_routing(
        &mut self,
        op: &Op,
        path: &[u64],
        x: &[f32],
        router: &[f32],
        [experts, top_k, d]: [usize; 3],
    ) -> Result<Routing, RuntimeError> {
        let saved = self
            .moe_saved
            .remove(&(self.mb, op.output.0, path.to_vec()));
        Ok(match saved {
            Some(s) => Routing {
                choices: s.choices,
                sent: s.sent,
                received: s.received,
                back: Some(s.back),
            },
            None => {
                let tokens = x.len() / d.max(1);
                let logits = self.mm(
                    tokens,
                    d,
                    experts,
                    x,
                    &jit::pack_b(router, d, experts),
                    None,
                )?;
                let choices = route(&logits, experts, top_k);
                let (sent, received) = self.moe_dispatch(x, &choices, d, experts)?;
                Routing {
                    choices,
                    sent,
                    received,
                    back: None,
                }
            }
        })
    }

    /// The local experts' weight blocks `[w1, w3, w2]`. Every local expert
    /// has a gradient, zero when no token chose it here, so the replicas
    /// that reduce it hold the same blocks.
    fn moe_expert_weights(
        &mut self,
        op: &Op,
        path: &[u64],
        local: Range<usize>,
        d: usize,
        fl: &Range<usize>,
    ) -> ExpertWeights {
        let ps = graph::params(&op.kind);
        let mut ws = HashMap::new();
        for e in local.clone() {
            let w1 = ps[1 + 3 * e].block(&self.init, op.output, path, 0..d, fl.clone());
            let w3 = ps[2 + 3 * e].block(&self.init, op.output, path, 0..d, fl.clone());
            let w2 = ps[3 + 3 * e].block(&self.init, op.output, path, fl.clone(), 0..d);
            ws.insert(e, [w1, w3, w2]);
        }
        for e in local {
            let zeros = vec![0.0; d * fl.len()];
            self.add_expert_pgrads(op, path, e, d, fl, [zeros.clone(), zeros.clone(), zeros]);
        }
        ws
    }

    /// Adds expert `e`'s weight gradients `[dw1, dw3, dw2]`.
    fn add_expert_pgrads(
        &mut self,
        op: &Op,
        path: &[u64],
        e: usize,
        d: usize,
        fl: &Range<usize>,
        [dw1, dw3, dw2]: [Vec<f32>; 3],
    ) {
        let ps = graph::params(&op.kind);
        let red = Reduce::ExpertReplicas;
        let p = op.output;
        self.add_pgrad(p, path, ps[1 + 3 * e].slot, 0..d, fl.clone(), dw1, red);
        self.add_pgrad(p, path, ps[2 + 3 * e].slot, 0..d, fl.clone(), dw3, red);
        self.add_pgrad(p, path, ps[3 + 3 * e].slot, fl.clone(), 0..d, dw2, red);
    }

    /// The local experts' forward pass over every received message: the
    /// activations each expert's gradients need, and the replies (the
    /// experts' outputs, partial sums over the width shards).
    fn moe_recompute(
        &mut self,
        received: &[Vec<f32>],
        ws: &ExpertWeights,
        local: Range<usize>,
        d: usize,
        flen: usize,
    ) -> Result<(Vec<Vec<ExpertWork>>, Messages), RuntimeError> {
        let silu = |a: &[f32]| -> Vec<f32> { a.iter().map(|v| v / (1.0 + (-v).exp())).collect() };
        let mut work: Vec<Vec<ExpertWork>> = Vec::with_capacity(received.len());
        let mut replies = Vec::with_capacity(received.len());
        for msg in received {
            let recs = msg.len() / (d + 1);
            let mut reply = vec![0.0; recs * d];
            let mut mine = Vec::new();
            for e in local.clone() {
                let Some((rows, xe)) = super::moe::expert_rows(msg, d, e) else {
                    continue;
                };
                let [w1, w3, w2] = &ws[&e];
                let n = rows.len();
                let a = self.mm(n, d, flen, &xe, &jit::pack_b(w1, d, flen), None)?;
                let b = self.mm(n, d, flen, &xe, &jit::pack_b(w3, d, flen), None)?;
                let h: Vec<f32> = silu(&a).iter().zip(&b).map(|(s, b)| s * b).collect();
                let y = self.mm(n, flen, d, &h, &jit::pack_b(w2, flen, d), None)?;
                for (i, r) in rows.iter().enumerate() {
                    reply[r * d..(r + 1) * d].copy_from_slice(&y[i * d..(i + 1) * d]);
                }
                mine.push(ExpertWork {
                    e,
                    rows,
                    xe,
                    a,
                    b,
                    h,
                });
            }
            work.push(mine);
            replies.push(reply);
        }
        Ok((work, replies))
    }

    /// The router logits' gradients from the experts' outputs `back` (in
    /// the order of the records `sent`), summed over the width shards
    /// here: the softmax gradient over each token's chosen experts.
    fn moe_gate_grad(
        &self,
        back: Vec<Vec<f32>>,
        sent: &[Vec<(usize, usize)>],
        choices: &[Vec<(usize, f32)>],
        dy: &[f32],
        [tokens, experts, d]: [usize; 3],
    ) -> Result<Vec<f32>, RuntimeError> {
        let mut flat: Vec<f32> = back.concat();
        self.all_reduce_tp(&mut flat)?;
        let mut y_of: HashMap<(usize, usize), usize> = HashMap::new();
        let mut off = 0;
        for recs in sent {
            for key in recs {
                y_of.insert(*key, off);
                off += d;
            }
        }
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let mut dlogits = vec![0.0f32; tokens * experts];
        for (tk, ch) in choices.iter().enumerate() {
            let dyt = &dy[tk * d..(tk + 1) * d];
            let dg: Vec<f32> = (0..ch.len())
                .map(|c| {
                    y_of.get(&(tk, c))
                        .map_or(0.0, |o| dot(dyt, &flat[*o..o + d]))
                })
                .collect();
            let mean: f32 = ch.iter().zip(&dg).map(|((_, g), x)| g * x).sum();
            for (c, (e, g)) in ch.iter().enumerate() {
                dlogits[tk * experts + e] = g * (dg[c] - mean);
            }
        }
        Ok(dlogits)
    }

    /// The local experts' weight gradients from the gradients `dys` of
    /// their outputs (one message per sender, as received); returns the
    /// replies: the gradients of the tokens each sender dispatched here.
    #[allow(clippy::too_many_arguments)]
    fn moe_expert_grads(
        &mut self,
        op: &Op,
        path: &[u64],
        work: &[Vec<ExpertWork>],
        dys: &[Vec<f32>],
        ws: &ExpertWeights,
        d: usize,
        fl: &Range<usize>,
    ) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let flen = fl.len();
        let mut dx_replies = Vec::with_capacity(dys.len());
        for (mine, dmsg) in work.iter().zip(dys) {
            let mut reply = vec![0.0; dmsg.len()];
            for wk in mine {
                let n = wk.rows.len();
                let mut dye = Vec::with_capacity(n * d);
                for r in &wk.rows {
                    dye.extend_from_slice(&dmsg[r * d..(r + 1) * d]);
                }
                let [w1, w3, w2] = ws[&wk.e].clone();
                let dh = self.mm_nt(&dye, &w2, n, d, flen)?;
                let dw2 = self.mm_tn(&wk.h, &dye, n, flen, d)?;
                // h = silu(a) * b
                let (da, db) = grad_ops::swiglu_gate(&dh, &wk.a, &wk.b);
                let dw1 = self.mm_tn(&wk.xe, &da, n, d, flen)?;
                let dw3 = self.mm_tn(&wk.xe, &db, n, d, flen)?;
                let mut dxe = self.mm_nt(&da, &w1, n, flen, d)?;
                let dxe3 = self.mm_nt(&db, &w3, n, flen, d)?;
                dxe.iter_mut().zip(dxe3).for_each(|(a, b)| *a += b);
                for (i, r) in wk.rows.iter().enumerate() {
                    reply[r * d..(r + 1) * d].copy_from_slice(&dxe[i * d..(i + 1) * d]);
                }
                self.add_expert_pgrads(op, path, wk.e, d, fl, [dw1, dw3, dw2]);
            }
            dx_replies.push(reply);
        }
        Ok(dx_replies)
    }
}

/// MoE's routing as the backward pass replays it: each token's choices,
/// the `(token, choice)` records sent to each owner, the messages
/// received and, when the forward pass kept them, the experts' outputs
/// returned.
struct Routing {
    choices: Vec<Vec<(usize, f32)>>,
    sent: Vec<Vec<(usize, usize)>>,
    received: Vec<Vec<f32>>,
    back: Option<Vec<Vec<f32>>>,
}

/// The local experts' weight blocks `[w1, w3, w2]`, by expert.
type ExpertWeights = HashMap<usize, [Vec<f32>; 3]>;

/// One message per rank of the expert-parallel group.
type Messages = Vec<Vec<f32>>;

/// One local expert's rows of one received message and its recomputed
/// activations: `a = xe w1`, `b = xe w3`, `h = silu(a) * b`.
struct ExpertWork {
    e: usize,
    rows: Vec<usize>,
    xe: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    h: Vec<f32>,
}

/// The smallest scale a parameter's gradient is compared at, as a
/// fraction of the step's largest gradient element. Some exact gradients
/// are zero (a key projection's bias: the softmax is shift-invariant), and
/// both sides then hold rounding noise that a relative error of its own
/// would call a mismatch.
pub const FLOOR: f64 = 1e-3;

/// Compares every device's gradient blocks with the reference.
pub fn check(
    g: &Graph,
    devices: &[Vec<ParamGrad>],
    want: &Gradients,
) -> Result<GradCheck, RuntimeError> {
    let ops: BTreeMap<TensorId, &Op> = graph::ops(&g.body)
        .into_iter()
        .map(|o| (o.output, o))
        .collect();
    let name = |key: &ParamKey| -> String {
        let kind = ops.get(&key.0).map_or("op", |o| o.kind.name());
        let it = if key.1.is_empty() {
            String::new()
        } else {
            format!(
                " (iteration {})",
                key.1
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(".")
            )
        };
        format!("`{kind} %{}`{it} parameter {}", key.0.0, key.2)
    };
    let shape_of = |key: &ParamKey| -> Option<Vec<usize>> {
        let op = ops.get(&key.0)?;
        graph::params(&op.kind)
            .into_iter()
            .find(|p| p.slot == key.2)
            .map(|p| p.shape)
    };
    let floor = FLOOR
        * want
            .params
            .values()
            .flatten()
            .fold(0.0f64, |m, x| m.max(f64::from(*x).abs()));
    let mut covered: BTreeMap<&ParamKey, Vec<bool>> = BTreeMap::new();
    let mut out = GradCheck {
        params: want.params.len(),
        elements: want.params.values().map(Vec::len).sum(),
        nonzero: want
            .params
            .values()
            .flatten()
            .filter(|x| **x != 0.0)
            .count(),
        zero_params: want
            .params
            .values()
            .filter(|v| v.iter().all(|x| *x == 0.0))
            .count(),
        blocks: 0,
        max_abs: 0.0,
        max_rel: 0.0,
        worst: String::new(),
        uncovered: None,
    };
    for p in devices.iter().flatten() {
        let shape = shape_of(&p.key)
            .ok_or_else(|| unsupported(format!("a gradient for unknown {}", name(&p.key))))?;
        let width = *shape.last().unwrap_or(&1);
        let rows = if shape.len() == 1 {
            0..1
        } else {
            p.rows.clone()
        };
        let zeros;
        let full = match want.params.get(&p.key) {
            Some(v) => v,
            None => {
                zeros = vec![0.0; numel(&shape)];
                &zeros
            }
        };
        let mut block = Vec::with_capacity(p.data.len());
        let mask = covered
            .entry(&p.key)
            .or_insert_with(|| vec![false; full.len()]);
        for r in rows {
            for c in p.cols.clone() {
                let i = r * width + c;
                block.push(full.get(i).copied().unwrap_or(f32::NAN));
                if let Some(m) = mask.get_mut(i) {
                    *m = true;
                }
            }
        }
        let (abs, rel) = graph::compare_at(&p.data, &block, floor);
        out.blocks += 1;
        out.max_abs = out.max_abs.max(abs);
        if out.worst.is_empty() || rel > out.max_rel {
            out.max_rel = rel;
            out.worst = name(&p.key);
        }
    }
    for (key, v) in &want.params {
        let whole = covered.get(key).is_some_and(|m| m.iter().all(|b| *b));
        if !whole && v.iter().any(|x| *x != 0.0) {
            out.uncovered = Some(name(key));
            break;
        }
    }
    Ok(out)
}
