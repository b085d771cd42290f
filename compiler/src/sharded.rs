//! The sharded program: the one tensor-parallel form of a model that the
//! cost model prices and the runtime executes.
//!
//! A model graph becomes, for one mesh (a tensor-parallel degree and
//! whether sequence parallelism is on), a list of [`ShardedOp`]s in graph
//! order (`repeat` bodies once): each op with the layout it reads every
//! input in, the layout of its result, its strategy, and every collective
//! it causes, forward and backward, with the tensor and its elements per
//! sample. The rule is [`build`]; `ir.rs` derives its tensor-parallel
//! costs from it and the runtime asks it, op by op, which layouts to use.
//! Nothing else decides a layout. That the runtime's bytes equal the
//! priced ones is checked by `tests/sharding.rs`, `tests/sharding_prop.rs`
//! and `tests/traffic.rs`, uneven splits and grouped key/value heads
//! included (the busiest rank's share is [`Comm::busiest_sent`]).
//!
//! The rule goes by op class, not by pattern (outputs and gradients of
//! random blocks equal the reference in `tests/sharding_prop.rs`):
//! - contractions (`linear`, `matmul`): a linear whose input is split along
//!   its features is row-parallel (partial sums, all-reduced, or
//!   reduce-scattered into sequence rows); otherwise column-parallel on the
//!   whole input. `matmul` keeps a split of its right operand's kept
//!   dimension; anything else is gathered.
//! - elementwise ops keep a common layout of their inputs (a replicated
//!   input is sliced locally, which is free).
//! - reductions over the last dimension (`rmsnorm`, `layernorm`,
//!   `softmax`) need that dimension whole: sequence rows stay, a feature
//!   split is all-gathered and the result is replicated.
//! - attention splits heads when its queries are split (keys and values
//!   follow, or are gathered); otherwise it runs replicated.
//! - embeddings are vocab-parallel; `moe` splits every expert's width (an
//!   all-reduce of the combined output); DLRM ops, `reshape` and `concat`
//!   run replicated on gathered inputs.
//! - a contraction whose form the e-graph's extraction pinned
//!   ([`Mesh::forms`], checked by the cost model in
//!   `plan::extract_layers`) takes that form: whole (inputs read whole,
//!   gathered if split; result whole), or a linear column-parallel on a
//!   gathered input, or row-parallel on a locally sliced one;
//! - a carried value (a `repeat`'s residual stream) leaves an iteration in
//!   the layout it entered with: the elementwise op producing it is asked
//!   for that layout; a body where that cannot hold (a linear produces the
//!   carried value) runs its linears whole, which always can.
//!
//! Backward collectives are derived from the same layouts, as the
//! runtime's backward pass does: a contribution that is a partial sum over
//! the ranks is reduced once per value (all-reduce, or reduce-scatter into
//! rows), a gradient read in a slice of its value's layout is gathered, and
//! a value re-read in another layout in backward is gathered again.

use std::collections::{BTreeMap, BTreeSet};

use gantry_lang::program::{BinaryOp, Graph, Item, Op, OpKind, TensorId};

/// How a tensor lies across the tensor-parallel ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layout {
    /// Every rank holds the whole tensor.
    Rep,
    /// The last dimension is cut into `groups` blocks (`groups` divides the
    /// degree; ranks `t` with equal `t / (tp / groups)` hold one block).
    Cols { groups: usize },
    /// Sequence parallelism: the rows are cut into `tp` blocks.
    Rows,
}

impl Layout {
    /// A split into `groups` blocks (one block is no split).
    pub fn cols(groups: usize) -> Layout {
        if groups <= 1 {
            Layout::Rep
        } else {
            Layout::Cols { groups }
        }
    }
    pub fn name(self) -> String {
        match self {
            Layout::Rep => "replicated".into(),
            Layout::Cols { groups } => format!("features/{groups}"),
            Layout::Rows => "rows/tp".into(),
        }
    }
    /// The block held by tensor-parallel rank `rank` of `tp`.
    pub fn block_of(self, tp: usize, rank: usize) -> usize {
        match self {
            Layout::Rep => 0,
            Layout::Cols { groups } => rank / (tp / groups).max(1),
            Layout::Rows => rank,
        }
    }
    /// The range of the last dimension (of length `len`) that `rank` of
    /// `tp` holds (all of it for `Rep` and `Rows`).
    pub fn range(self, len: usize, tp: usize, rank: usize) -> std::ops::Range<usize> {
        match self {
            Layout::Rep | Layout::Rows => 0..len,
            Layout::Cols { groups } => block(len, groups, self.block_of(tp, rank)),
        }
    }
    /// A number for messages: 0 for `Rep`, -1 for `Rows`, else the block
    /// count.
    pub fn code(self) -> f32 {
        match self {
            Layout::Rep => 0.0,
            Layout::Rows => -1.0,
            Layout::Cols { groups } => groups as f32,
        }
    }
    /// The layout of a message's code (see [`Layout::code`]).
    pub fn from_code(code: f32) -> Layout {
        if code < 0.0 {
            Layout::Rows
        } else {
            Layout::cols(code as usize)
        }
    }
    /// Whether `rows` rows cut into `tp` row blocks fall on row boundaries
    /// (so that [`Layout::Rows`] can hold them).
    pub fn rows_fit(rows: usize, tp: usize) -> bool {
        tp > 1 && rows.is_multiple_of(tp)
    }
}

/// Block `i` of `len` cut into `parts` nearly equal contiguous blocks:
/// `[i len / parts, (i + 1) len / parts)`. The one block rule of every
/// split (features, rows, collective buffers); [`busiest_sent`] prices
/// its largest (last) block.
pub fn block(len: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    (i * len / parts)..((i + 1) * len / parts)
}

/// A collective over the tensor-parallel axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    AllReduce,
    ReduceScatter,
    AllGather,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::AllReduce => "all-reduce",
            Kind::ReduceScatter => "reduce-scatter",
            Kind::AllGather => "all-gather",
        }
    }
    /// Bytes one rank sends per byte of the whole buffer, on a ring of `tp`.
    pub fn sent_per_byte(self, tp: f64) -> f64 {
        let ring = if tp > 1.0 { (tp - 1.0) / tp } else { 0.0 };
        match self {
            Kind::AllReduce => 2.0 * ring,
            Kind::ReduceScatter | Kind::AllGather => ring,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pass {
    Forward,
    Backward,
}

/// Why a collective is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Why {
    /// An input is read in a layout it is not stored in.
    Gather,
    /// Partial sums of the op's result.
    Reduce,
    /// Backward: partial input gradients summed over the ranks.
    GradReduce,
    /// Backward: a gradient gathered into its value's layout.
    GradGather,
    /// Backward: a forward value gathered again to be read in another
    /// layout (the weight gradient of a column-parallel linear under
    /// sequence parallelism).
    Regather,
}

/// One collective: kind, pass, the tensor and its elements per sample
/// (the whole tensor, before any split).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comm {
    pub kind: Kind,
    pub pass: Pass,
    pub tensor: TensorId,
    pub elems: f64,
    pub why: Why,
    /// An all-gather's source layout (what each rank contributes); `Rep`
    /// for reductions, whose buffer is cut into `tp` flat blocks.
    pub from: Layout,
}

impl Comm {
    /// Elements the busiest rank sends for a buffer of `n` elements whose
    /// rows are `width` wide, on `tp` ranks, as the runtime's collectives
    /// move them: blocks are cut with `block(len, parts, i) = [i len /
    /// parts, (i + 1) len / parts)`, so the last rank always holds a largest
    /// block and sends the most in every kind (an all-reduce is a
    /// reduce-scatter, `n - b`, then an all-gather, `(tp - 1) b`; an
    /// all-gather sends its block to every other rank, including ranks
    /// holding a copy of the same key/value group). Exact for uneven
    /// splits; `(tp - 1) / tp` of the buffer (twice for an all-reduce) when
    /// blocks are even. A reduce-scatter's blocks are sequence rows, which
    /// are even by construction (sequence parallelism needs them to be).
    pub fn busiest_sent(&self, n: f64, width: f64, tp: usize) -> f64 {
        busiest_sent(self.kind, self.from, n, width, tp)
    }
}

/// [`Comm::busiest_sent`] of a collective of `kind` whose ranks contribute
/// blocks of layout `from`.
pub fn busiest_sent(kind: Kind, from: Layout, n: f64, width: f64, tp: usize) -> f64 {
    let t = tp as f64;
    if tp <= 1 {
        return 0.0;
    }
    // The last of `parts` blocks of `len`: len - floor((parts-1) len / parts).
    let last = |len: f64, parts: f64| len - ((parts - 1.0) * len / parts).floor();
    match (kind, from) {
        (Kind::AllReduce, _) => n - last(n, t) + (t - 1.0) * last(n, t),
        (Kind::ReduceScatter, _) => n - last(n, t),
        (Kind::AllGather, Layout::Cols { groups }) if width > 0.0 => {
            (t - 1.0) * (n / width) * last(width, groups as f64)
        }
        (Kind::AllGather, _) => (t - 1.0) * last(n, t),
    }
}

/// How an op's work is divided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Every rank computes the whole op.
    Replicated,
    /// Output features split, whole input (Megatron's column-parallel).
    Column,
    /// Input features split, partial sums reduced (row-parallel).
    Row,
    /// Attention heads split.
    Heads,
    /// Embedding rows (vocabulary) split, partial lookups reduced.
    Vocab,
    /// Every expert's hidden width split, the combined output reduced.
    ExpertWidth,
    /// Elementwise or row-wise work on the local part of its layout.
    Local,
}

impl Strategy {
    /// Whether the op's arithmetic is divided over the ranks.
    pub fn divides_work(self, out: Layout) -> bool {
        match self {
            Strategy::Replicated => false,
            Strategy::Local => out != Layout::Rep,
            _ => true,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ShardedOp {
    pub output: TensorId,
    pub op: &'static str,
    pub strategy: Strategy,
    /// The layout each input is read in.
    pub reads: Vec<Layout>,
    /// The layout the result is stored in.
    pub layout: Layout,
    pub comms: Vec<Comm>,
    /// Its parameters' gradients are partial sums over the ranks (a
    /// row-wise op with weights on sequence rows): all-reduced once per
    /// step, after the last microbatch.
    pub params_partial: bool,
}

/// The mesh a program is built for.
#[derive(Clone, Debug, PartialEq)]
pub struct Mesh {
    pub tp: usize,
    pub sp: bool,
    /// Per tensor, whether its rows cut into `tp` blocks (sequence
    /// parallelism needs it); `None` assumes they do (the cost model's
    /// per-sample view, where a microbatch is a multiple of the degree).
    pub rows_fit: Option<Vec<bool>>,
    /// The cost model's view: `tp` stands for any degree the planner
    /// accepts (it divides the attention heads), so head splits are not
    /// re-checked; key/value heads are replicated when fewer than `tp`.
    pub symbolic: bool,
    /// The form the e-graph's extraction chose for a contraction (by
    /// output tensor; `crate::egraph::forms`, checked by the cost model):
    /// run whole, or a linear column- or row-parallel whatever layout its
    /// input arrives in. A contraction not listed follows the rule.
    pub forms: Forms,
}

/// Pinned contraction forms, by output tensor.
pub type Forms = BTreeMap<TensorId, Form>;

/// A contraction's form, when the extraction pins it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Form {
    /// Unsplit on every rank: inputs read whole (gathered if split), the
    /// result whole. Linear, matmul or attention.
    Whole,
    /// A linear reading its input whole (gathered if it arrives split)
    /// and splitting its output features.
    Column,
    /// A linear reading its input split along its features (a local slice
    /// of a replicated input) and reducing its partial sums.
    Row,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Whole => "whole",
            Form::Column => "column",
            Form::Row => "row",
        }
    }
}

impl Mesh {
    pub fn new(tp: usize, sp: bool) -> Mesh {
        Mesh {
            tp,
            sp,
            rows_fit: None,
            symbolic: false,
            forms: BTreeMap::new(),
        }
    }
    /// The pinned form of the contraction producing `t`, if any.
    pub fn form(&self, t: TensorId) -> Option<Form> {
        self.forms.get(&t).copied()
    }
    fn whole(&self, t: TensorId) -> bool {
        self.form(t) == Some(Form::Whole)
    }
    /// A degree standing for any the planner accepts (what is split, not
    /// how much): head splits are not re-checked.
    pub fn symbolic(tp: usize) -> Mesh {
        Mesh {
            symbolic: true,
            ..Mesh::new(tp, false)
        }
    }
}

/// Why a graph has no sharded program on a mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unshardable {
    pub reason: String,
}

/// The sharded program of one graph on one mesh.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub tp: usize,
    pub sp: bool,
    /// Layout of every tensor of the graph (`Rep` for those never computed).
    pub layouts: Vec<Layout>,
    /// Every op in graph order, each `repeat` body once.
    pub ops: Vec<ShardedOp>,
    index: BTreeMap<TensorId, usize>,
}

impl Program {
    /// A program with no ops.
    pub fn empty() -> Program {
        Program {
            tp: 1,
            sp: false,
            layouts: Vec::new(),
            ops: Vec::new(),
            index: BTreeMap::new(),
        }
    }
    /// The op producing `t`.
    pub fn op(&self, t: TensorId) -> Option<&ShardedOp> {
        self.index.get(&t).map(|&i| &self.ops[i])
    }
    pub fn layout(&self, t: TensorId) -> Layout {
        self.layouts
            .get(t.0 as usize)
            .copied()
            .unwrap_or(Layout::Rep)
    }
    /// Every collective, in op order.
    pub fn comms(&self) -> impl Iterator<Item = &Comm> {
        self.ops.iter().flat_map(|o| o.comms.iter())
    }
    /// Counts of each collective kind in one pass (for reports).
    pub fn counts(&self, pass: Pass) -> BTreeMap<Kind, usize> {
        let mut m = BTreeMap::new();
        for c in self.comms().filter(|c| c.pass == pass) {
            *m.entry(c.kind).or_insert(0) += 1;
        }
        m
    }
}

/// Builds the sharded program of `g` on `mesh`; `numel[t]` is tensor `t`'s
/// elements per sample.
pub fn build(g: &Graph, numel: &[f64], mesh: &Mesh) -> Result<Program, Unshardable> {
    let n = g.tensors.len();
    let mut b = Builder {
        g,
        numel,
        mesh,
        layouts: vec![Layout::Rep; n],
        demand: vec![None; n],
        kv_groups: kv_groups(g, mesh.tp),
        gathered: BTreeSet::new(),
        ops: Vec::new(),
        whole_linears: false,
    };
    if mesh.tp > 1 {
        b.items(&g.body)?;
    } else {
        b.replicated(&g.body);
    }
    let mut prog = Program {
        tp: mesh.tp,
        sp: mesh.sp,
        layouts: b.layouts,
        ops: b.ops,
        index: BTreeMap::new(),
    };
    if mesh.tp > 1 {
        backward(g, numel, &mut prog);
    }
    prog.index = prog
        .ops
        .iter()
        .enumerate()
        .map(|(i, o)| (o.output, i))
        .collect();
    Ok(prog)
}

/// Column splits of key/value projections when there are fewer key/value
/// heads than ranks: one block per head, replicated over `tp / kv_heads`
/// ranks.
fn kv_groups(g: &Graph, tp: usize) -> BTreeMap<TensorId, usize> {
    let mut producer = BTreeMap::new();
    let mut m = BTreeMap::new();
    for op in ops_of(&g.body) {
        producer.insert(op.output, op);
    }
    for op in ops_of(&g.body) {
        if let OpKind::Attention { kv_heads, .. } = op.kind
            && (kv_heads as usize) < tp
        {
            for kv in op.inputs.iter().skip(1).take(2) {
                if matches!(
                    producer.get(kv).map(|o| &o.kind),
                    Some(OpKind::Linear { .. })
                ) {
                    m.insert(*kv, kv_heads as usize);
                }
            }
        }
    }
    m
}

/// Whether key/value heads cut into `groups` blocks over `tp` ranks give
/// every rank the key/value heads its `heads / tp` query heads read.
fn kv_blocks_fit(heads: u64, kv_heads: u64, groups: usize, tp: usize) -> bool {
    let (h, kvh, g) = (heads as usize, kv_heads as usize, groups.max(1));
    if kvh == 0 || !kvh.is_multiple_of(g) || !h.is_multiple_of(kvh) || !tp.is_multiple_of(g) {
        return false;
    }
    let (group, per, hl) = (h / kvh, kvh / g, h / tp.max(1));
    (0..tp).all(|t| {
        let (q0, q1) = (t * hl, (t + 1) * hl);
        let block = t / (tp / g);
        q1 > q0 && block * per <= q0 / group && (q1 - 1) / group < (block + 1) * per
    })
}

/// How reports name the tensor an op produces: its name in the source, or
/// `linear %7` (op and tensor id) for a value the source does not name.
pub fn op_label(g: &Graph, op: &Op) -> String {
    let name = &g.tensor(op.output).name;
    if name.is_empty() {
        format!("{} %{}", op.kind.name(), op.output.0)
    } else {
        name.clone()
    }
}

/// Every op of a body, nested repeats included, in order.
pub fn ops_of(items: &[Item]) -> Vec<&Op> {
    let mut v = Vec::new();
    fn walk<'a>(items: &'a [Item], v: &mut Vec<&'a Op>) {
        for it in items {
            match it {
                Item::Op(op) => v.push(op),
                Item::Repeat(r) => walk(&r.body, v),
            }
        }
    }
    walk(items, &mut v);
    v
}

struct Builder<'a> {
    g: &'a Graph,
    numel: &'a [f64],
    mesh: &'a Mesh,
    layouts: Vec<Layout>,
    /// The layout a carried value must leave its iteration in.
    demand: Vec<Option<Layout>>,
    kv_groups: BTreeMap<TensorId, usize>,
    /// Forward conversions already made (one per value and layout).
    gathered: BTreeSet<(TensorId, Layout)>,
    ops: Vec<ShardedOp>,
    /// Inside a `repeat` whose split form would change the carried
    /// value's layout: linears run whole (replicated).
    whole_linears: bool,
}

impl Builder<'_> {
    fn l(&self, t: TensorId) -> Layout {
        self.layouts[t.0 as usize]
    }

    fn elems(&self, t: TensorId) -> f64 {
        self.numel.get(t.0 as usize).copied().unwrap_or(0.0)
    }

    fn fits(&self, t: TensorId) -> bool {
        self.mesh
            .rows_fit
            .as_ref()
            .is_none_or(|f| f.get(t.0 as usize).copied().unwrap_or(false))
    }

    /// Reads `t` in layout `want`: free from the same layout or from a
    /// replicated value (a local slice), else an all-gather, made once.
    fn read(&mut self, t: TensorId, want: Layout, comms: &mut Vec<Comm>) -> Layout {
        let have = self.l(t);
        if have != want && have != Layout::Rep && self.gathered.insert((t, want)) {
            comms.push(Comm {
                kind: Kind::AllGather,
                pass: Pass::Forward,
                tensor: t,
                elems: self.elems(t),
                why: Why::Gather,
                from: have,
            });
        }
        want
    }

    /// Partial sums of `out`, reduced: into sequence rows under sequence
    /// parallelism, else whole.
    fn reduce(&self, out: TensorId, comms: &mut Vec<Comm>) -> Layout {
        let rows = self.mesh.sp && self.fits(out);
        comms.push(Comm {
            kind: if rows {
                Kind::ReduceScatter
            } else {
                Kind::AllReduce
            },
            pass: Pass::Forward,
            tensor: out,
            elems: self.elems(out),
            why: Why::Reduce,
            from: Layout::Rep,
        });
        if rows { Layout::Rows } else { Layout::Rep }
    }

    fn replicated(&mut self, items: &[Item]) {
        for op in ops_of(items) {
            self.ops.push(ShardedOp {
                output: op.output,
                op: op.kind.name(),
                strategy: Strategy::Replicated,
                reads: vec![Layout::Rep; op.inputs.len()],
                layout: Layout::Rep,
                comms: Vec::new(),
                params_partial: false,
            });
        }
    }

    fn items(&mut self, items: &[Item]) -> Result<(), Unshardable> {
        for it in items {
            match it {
                Item::Op(op) => self.op(op)?,
                Item::Repeat(r) => {
                    // A body whose split form would change the carried
                    // value's layout runs with whole linears instead
                    // (sound, and the same layout every iteration).
                    let saved = (self.ops.len(), self.layouts.clone(), self.gathered.clone());
                    let first = self.repeat(r);
                    if first.is_err() && !self.whole_linears {
                        self.ops.truncate(saved.0);
                        self.layouts = saved.1;
                        self.gathered = saved.2;
                        self.whole_linears = true;
                        let second = self.repeat(r);
                        self.whole_linears = false;
                        second?;
                    } else {
                        first?;
                    }
                }
            }
        }
        Ok(())
    }

    fn repeat(&mut self, r: &gantry_lang::program::Repeat) -> Result<(), Unshardable> {
        for c in &r.carried {
            let l = self.l(c.init);
            self.layouts[c.param.0 as usize] = l;
            self.demand[c.next.0 as usize] = Some(l);
        }
        self.items(&r.body)?;
        for c in &r.carried {
            let (enter, leave) = (self.l(c.init), self.l(c.next));
            if enter != leave {
                return Err(Unshardable {
                    reason: format!(
                        "the carried value `{}` enters each iteration {} but leaves it {}",
                        self.g.tensor(c.param).name,
                        enter.name(),
                        leave.name()
                    ),
                });
            }
            self.layouts[c.result.0 as usize] = leave;
        }
        Ok(())
    }

    fn op(&mut self, op: &Op) -> Result<(), Unshardable> {
        let tp = self.mesh.tp;
        let mut comms = Vec::new();
        let ins = &op.inputs;
        let (strategy, reads, layout) = match &op.kind {
            OpKind::Activation(_) | OpKind::Scale(_) | OpKind::Dropout(_) | OpKind::Binary(_) => {
                let lay = self.demand[op.output.0 as usize].unwrap_or_else(|| {
                    let ls: Vec<Layout> = ins.iter().map(|t| self.l(*t)).collect();
                    ls.iter()
                        .copied()
                        .find(|l| matches!(l, Layout::Cols { .. }))
                        .or_else(|| ls.iter().copied().find(|l| *l == Layout::Rows))
                        .unwrap_or(Layout::Rep)
                });
                let reads = ins.iter().map(|t| self.read(*t, lay, &mut comms)).collect();
                (Strategy::Local, reads, lay)
            }
            OpKind::Linear { .. } if self.whole_linears || self.mesh.whole(op.output) => {
                let r = self.read(ins[0], Layout::Rep, &mut comms);
                (Strategy::Replicated, vec![r], Layout::Rep)
            }
            OpKind::Linear { .. } => {
                let x = ins[0];
                let row = match self.mesh.form(op.output) {
                    Some(Form::Row) => true,
                    Some(Form::Column) => false,
                    _ => self.l(x) == Layout::cols(tp),
                };
                if row {
                    let r = self.read(x, Layout::cols(tp), &mut comms);
                    let out = self.reduce(op.output, &mut comms);
                    (Strategy::Row, vec![r], out)
                } else {
                    let r = self.read(x, Layout::Rep, &mut comms);
                    let groups = self.kv_groups.get(&op.output).copied().unwrap_or(tp);
                    (Strategy::Column, vec![r], Layout::cols(groups))
                }
            }
            OpKind::MatMul => {
                let (a, bt) = (ins[0], ins[1]);
                if self.l(a) == Layout::Rep
                    && matches!(self.l(bt), Layout::Cols { .. })
                    && !self.mesh.whole(op.output)
                {
                    let bl = self.l(bt);
                    (Strategy::Column, vec![Layout::Rep, bl], bl)
                } else {
                    let ra = self.read(a, Layout::Rep, &mut comms);
                    let rb = self.read(bt, Layout::Rep, &mut comms);
                    (Strategy::Replicated, vec![ra, rb], Layout::Rep)
                }
            }
            OpKind::Attention {
                heads, kv_heads, ..
            } => {
                let (q, k, v) = (ins[0], ins[1], ins[2]);
                let split = self.l(q) == Layout::cols(tp)
                    && !self.mesh.whole(op.output)
                    && (self.mesh.symbolic || (*heads as usize).is_multiple_of(tp));
                if split {
                    // Keys and values are read split only in whole
                    // key/value heads per block, every local query head's
                    // among them; otherwise whole.
                    let kvl = match (self.l(k), self.l(v)) {
                        (a @ Layout::Cols { groups }, b)
                            if a == b
                                && (self.mesh.symbolic
                                    || kv_blocks_fit(*heads, *kv_heads, groups, tp)) =>
                        {
                            a
                        }
                        _ => Layout::Rep,
                    };
                    let rk = self.read(k, kvl, &mut comms);
                    let rv = self.read(v, kvl, &mut comms);
                    (
                        Strategy::Heads,
                        vec![Layout::cols(tp), rk, rv],
                        Layout::cols(tp),
                    )
                } else {
                    let reads = [q, k, v]
                        .iter()
                        .map(|t| self.read(*t, Layout::Rep, &mut comms))
                        .collect();
                    (Strategy::Replicated, reads, Layout::Rep)
                }
            }
            OpKind::RmsNorm { .. } | OpKind::LayerNorm { .. } | OpKind::Softmax => {
                if self.l(ins[0]) == Layout::Rows {
                    (Strategy::Local, vec![Layout::Rows], Layout::Rows)
                } else {
                    let r = self.read(ins[0], Layout::Rep, &mut comms);
                    (Strategy::Replicated, vec![r], Layout::Rep)
                }
            }
            OpKind::Embedding { .. } => {
                let r = self.read(ins[0], Layout::Rep, &mut comms);
                let out = self.reduce(op.output, &mut comms);
                (Strategy::Vocab, vec![r], out)
            }
            OpKind::Moe { .. } => {
                let r = self.read(ins[0], Layout::Rep, &mut comms);
                comms.push(Comm {
                    kind: Kind::AllReduce,
                    pass: Pass::Forward,
                    tensor: op.output,
                    elems: self.elems(op.output),
                    why: Why::Reduce,
                    from: Layout::Rep,
                });
                (Strategy::ExpertWidth, vec![r], Layout::Rep)
            }
            OpKind::EmbeddingBag { .. }
            | OpKind::Mlp { .. }
            | OpKind::Interact { .. }
            | OpKind::Reshape
            | OpKind::Concat { .. } => {
                let reads = ins
                    .iter()
                    .map(|t| self.read(*t, Layout::Rep, &mut comms))
                    .collect();
                (Strategy::Replicated, reads, Layout::Rep)
            }
        };
        self.layouts[op.output.0 as usize] = layout;
        let params_partial = layout == Layout::Rows
            && matches!(op.kind, OpKind::RmsNorm { .. } | OpKind::LayerNorm { .. });
        self.ops.push(ShardedOp {
            output: op.output,
            op: op.kind.name(),
            strategy,
            reads,
            layout,
            comms,
            params_partial,
        });
        Ok(())
    }
}

/// A gradient contribution to an input: complete in a layout, or a
/// partial sum over the ranks.
#[derive(Clone, Copy, PartialEq)]
enum Contribution {
    In(Layout),
    Partial,
}

/// Adds the backward collectives to every op, walking the ops in reverse
/// as the runtime's backward pass does. A value's partial input gradients
/// are reduced once, when the op producing it runs backward; those of a
/// value no op of the graph produces (a carried value inside its
/// iteration, or the result of a `repeat`) are reduced where the first
/// contribution came from, once per iteration.
fn backward(g: &Graph, numel: &[f64], prog: &mut Program) {
    let tp = prog.tp;
    let layouts = prog.layouts.clone();
    let lay = |t: TensorId| layouts.get(t.0 as usize).copied().unwrap_or(Layout::Rep);
    let elems = |t: TensorId| numel.get(t.0 as usize).copied().unwrap_or(0.0);
    let ops: BTreeMap<TensorId, &Op> = ops_of(&g.body).into_iter().map(|o| (o.output, o)).collect();
    let mut regathered: BTreeSet<(TensorId, Layout)> = BTreeSet::new();
    // Values with partial contributions, and the op (index) that first gave one.
    let mut partial: BTreeMap<TensorId, usize> = BTreeMap::new();
    let reduction = |t: TensorId| Comm {
        kind: if lay(t) == Layout::Rows {
            Kind::ReduceScatter
        } else {
            Kind::AllReduce
        },
        pass: Pass::Backward,
        tensor: t,
        elems: elems(t),
        why: Why::GradReduce,
        from: Layout::Rep,
    };
    for i in (0..prog.ops.len()).rev() {
        let so = &prog.ops[i];
        let Some(op) = ops.get(&so.output).copied() else {
            continue;
        };
        let mut comms: Vec<Comm> = Vec::new();
        if partial.remove(&op.output).is_some() {
            comms.push(reduction(op.output));
        }
        let mut reread = |t: TensorId, want: Layout, comms: &mut Vec<Comm>| {
            let have = lay(t);
            if have != want && have != Layout::Rep && regathered.insert((t, want)) {
                let mut c = gather(t, elems(t), have);
                c.why = Why::Regather;
                comms.push(c);
            }
        };
        let mut convert = |t: TensorId, from: Layout, to: Layout, comms: &mut Vec<Comm>| {
            if from != to && from != Layout::Rep {
                comms.push(gather(t, elems(t), from));
            }
        };
        let cs = contributions(
            op,
            so,
            tp,
            &lay,
            &elems,
            &mut reread,
            &mut convert,
            &mut comms,
        );
        for (k, c) in cs {
            let t = op.inputs[k];
            match c {
                Contribution::Partial => {
                    partial.entry(t).or_insert(i);
                }
                Contribution::In(l) => convert(t, l, lay(t), &mut comms),
            }
        }
        prog.ops[i].comms.extend(comms);
    }
    for (t, i) in partial {
        prog.ops[i].comms.push(reduction(t));
    }
}

fn gather(t: TensorId, elems: f64, from: Layout) -> Comm {
    Comm {
        kind: Kind::AllGather,
        pass: Pass::Backward,
        tensor: t,
        elems,
        why: Why::GradGather,
        from,
    }
}

/// Re-reads a forward value in a layout, noting the gather it needs.
type Reread<'a> = dyn FnMut(TensorId, Layout, &mut Vec<Comm>) + 'a;
/// Converts a gradient from one layout to another, noting the gather.
type Convert<'a> = dyn FnMut(TensorId, Layout, Layout, &mut Vec<Comm>) + 'a;

/// What an op's backward gives each input, and the collectives its own
/// re-reads and conversions need.
#[allow(clippy::too_many_arguments)]
fn contributions(
    op: &Op,
    so: &ShardedOp,
    tp: usize,
    lay: &dyn Fn(TensorId) -> Layout,
    elems: &dyn Fn(TensorId) -> f64,
    reread: &mut Reread,
    convert: &mut Convert,
    comms: &mut Vec<Comm>,
) -> Vec<(usize, Contribution)> {
    use Contribution::{In, Partial};
    let out = so.layout;
    let ins = &op.inputs;
    match (&op.kind, so.strategy) {
        (OpKind::Activation(_), _) => {
            reread(ins[0], out, comms);
            vec![(0, In(out))]
        }
        (OpKind::Binary(b), _) => {
            if matches!(b, BinaryOp::Mul | BinaryOp::Div) {
                reread(ins[0], out, comms);
                reread(ins[1], out, comms);
            }
            vec![(0, In(out)), (1, In(out))]
        }
        (OpKind::Scale(_) | OpKind::Dropout(_), _) => vec![(0, In(out))],
        (OpKind::Linear { .. }, Strategy::Row) => {
            // The weight gradient reads the input split (free from a
            // replicated or same split input).
            reread(ins[0], Layout::cols(tp), comms);
            convert(op.output, out, Layout::Rep, comms);
            vec![(0, In(Layout::cols(tp)))]
        }
        (OpKind::Linear { .. }, _) => {
            reread(ins[0], Layout::Rep, comms);
            if out == Layout::Rep {
                vec![(0, In(Layout::Rep))]
            } else {
                vec![(0, Partial)]
            }
        }
        (OpKind::MatMul, Strategy::Column) => {
            convert(ins[0], lay(ins[0]), Layout::Rep, comms);
            vec![(0, Partial), (1, In(so.reads[1]))]
        }
        (OpKind::MatMul, _) => {
            convert(ins[0], lay(ins[0]), Layout::Rep, comms);
            convert(ins[1], lay(ins[1]), Layout::Rep, comms);
            vec![(0, In(Layout::Rep)), (1, In(Layout::Rep))]
        }
        (OpKind::Attention { .. }, s) => {
            let (ql, kvl) = (so.reads[0], so.reads[1]);
            for (k, l) in [(0, ql), (1, kvl), (2, kvl)] {
                reread(ins[k], l, comms);
            }
            let own = kvl == Layout::cols(tp);
            if s == Strategy::Replicated || own {
                vec![(0, In(ql)), (1, In(kvl)), (2, In(kvl))]
            } else {
                vec![(0, In(ql)), (1, Partial), (2, Partial)]
            }
        }
        (OpKind::RmsNorm { .. } | OpKind::LayerNorm { .. } | OpKind::Softmax, _) => {
            if out == Layout::Rows {
                vec![(0, In(Layout::Rows))]
            } else {
                reread(ins[0], Layout::Rep, comms);
                vec![(0, In(Layout::Rep))]
            }
        }
        (OpKind::Embedding { .. }, _) => {
            convert(op.output, out, Layout::Rep, comms);
            Vec::new()
        }
        (OpKind::Moe { top_k, .. }, _) => {
            convert(ins[0], lay(ins[0]), Layout::Rep, comms);
            // The experts' returned outputs (top_k per token) are summed
            // over the width shards to give the gates' gradients.
            comms.push(Comm {
                kind: Kind::AllReduce,
                pass: Pass::Backward,
                tensor: op.output,
                elems: *top_k as f64 * elems(op.output),
                why: Why::GradReduce,
                from: Layout::Rep,
            });
            vec![(0, In(Layout::Rep)), (0, Partial)]
        }
        (OpKind::EmbeddingBag { .. }, _) => Vec::new(),
        (OpKind::Mlp { .. } | OpKind::Interact { .. }, _) => {
            for &t in ins {
                reread(t, Layout::Rep, comms);
            }
            (0..ins.len()).map(|k| (k, In(Layout::Rep))).collect()
        }
        (OpKind::Reshape | OpKind::Concat { .. }, _) => {
            (0..ins.len()).map(|k| (k, In(Layout::Rep))).collect()
        }
    }
}
