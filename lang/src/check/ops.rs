//! Built-in ops: argument binding and shape rules.
//!
//! Each op is one match arm that reads its arguments, checks shapes and
//! returns the [`OpKind`] with the output shape. Errors are reported at the
//! call with every shape involved, so the user sees the mismatch whole.
//! docs/LANGUAGE.md lists the same rules; keep the two in step.

use std::collections::BTreeMap;

use crate::ast::BinOp;
use crate::check::eval::{ArgVal, Env, count_of};
use crate::check::value::Value;
use crate::check::{Checker, suggest};
use crate::diagnostic::{Code, Diagnostic};
use crate::program::{Activation, BinaryOp, DType, EmbeddingTable, OpKind, TensorId};
use crate::shape::{Dim, Shape};
use crate::span::Span;

/// Parameters of each op, in positional order.
const SIGS: &[(&str, &[&str], usize)] = &[
    ("linear", &["x", "d_in", "d_out", "bias", "tied"], 3),
    ("matmul", &["a", "b"], 2),
    ("embedding", &["ids", "vocab", "dim"], 3),
    ("embedding_bag", &["ids", "tables"], 2),
    (
        "attention",
        &["q", "k", "v", "heads", "kv_heads", "causal", "dropout"],
        4,
    ),
    ("dropout", &["x", "p"], 1),
    ("rmsnorm", &["x"], 1),
    ("layernorm", &["x"], 1),
    ("softmax", &["x"], 1),
    ("silu", &["x"], 1),
    ("gelu", &["x"], 1),
    ("relu", &["x"], 1),
    ("sigmoid", &["x"], 1),
    ("mlp", &["x", "dims", "activation"], 2),
    ("interact", &["dense", "sparse"], 2),
    ("moe", &["x", "experts", "top_k", "d_ff"], 4),
    ("reshape", &["x", "shape"], 2),
    ("concat", &["xs", "axis"], 1),
];

pub const OP_NAMES: [&str; 18] = [
    "dropout",
    "linear",
    "matmul",
    "embedding",
    "embedding_bag",
    "attention",
    "rmsnorm",
    "layernorm",
    "softmax",
    "silu",
    "gelu",
    "relu",
    "sigmoid",
    "mlp",
    "interact",
    "moe",
    "reshape",
    "concat",
];

pub fn is_op(name: &str) -> bool {
    SIGS.iter().any(|(n, ..)| *n == name)
}

type Args = BTreeMap<&'static str, (Value, Span)>;

struct Out {
    kind: OpKind,
    inputs: Vec<TensorId>,
    shape: Shape,
    dtype: DType,
}

impl Checker {
    /// Binds an op's arguments like a declaration's: positional first, then
    /// named, and a missing argument is not reported when an argument error
    /// already explains it.
    fn bind_op(&mut self, name: &str, vals: Vec<ArgVal>, span: Span) -> Option<Args> {
        let (_, params, required) = SIGS.iter().find(|(n, ..)| *n == name)?;
        let mut out: Args = BTreeMap::new();
        let mut pos = 0;
        let mut ok = true;
        let mut named_seen = false;
        let mut unplaced: Vec<Span> = Vec::new();
        let mut meant: Vec<&str> = Vec::new();
        for a in vals {
            let pname: &'static str = match &a.name {
                None if named_seen => {
                    ok = false;
                    unplaced.push(a.span);
                    continue;
                }
                None => match params.get(pos) {
                    Some(p) => {
                        pos += 1;
                        p
                    }
                    None => {
                        self.diags.push(
                            Diagnostic::error(
                                Code::L035,
                                format!(
                                    "`{name}` takes at most {}",
                                    count_of(params.len(), "argument")
                                ),
                                a.span,
                            )
                            .with_label(a.span, "this one is extra")
                            .with_help(format!("`{name}({})`", params.join(", "))),
                        );
                        ok = false;
                        continue;
                    }
                },
                Some((n, nspan)) => {
                    named_seen = true;
                    match params.iter().find(|p| **p == n.as_str()) {
                        Some(p) => p,
                        None => {
                            let mut d = Diagnostic::error(
                                Code::L033,
                                format!("`{name}` has no parameter `{n}`"),
                                *nspan,
                            )
                            .with_label(*nspan, "unknown parameter");
                            d = match suggest(n, params.iter().copied()) {
                                Some(s) => {
                                    if let Some(p) = params.iter().find(|p| **p == s) {
                                        meant.push(p);
                                    }
                                    d.with_help(format!(
                                        "did you mean `{s}`? the signature is `{name}({})`",
                                        params.join(", ")
                                    ))
                                }
                                None => d.with_help(format!("`{name}({})`", params.join(", "))),
                            };
                            self.diags.push(d);
                            ok = false;
                            continue;
                        }
                    }
                }
            };
            if out.contains_key(pname) {
                self.diags.push(
                    Diagnostic::error(
                        Code::L036,
                        format!("argument `{pname}` of `{name}` is given twice"),
                        a.span,
                    )
                    .with_label(a.span, "given again here"),
                );
                ok = false;
                continue;
            }
            if matches!(a.value, Value::Error) {
                ok = false;
            }
            out.insert(pname, (a.value, a.span));
        }
        self.positional_after_named(&unplaced);
        for p in &params[..*required] {
            if !out.contains_key(p) {
                if unplaced.is_empty() && !meant.contains(p) {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L034,
                            format!("`{name}` needs argument `{p}`"),
                            span,
                        )
                        .with_label(span, format!("`{p}` is missing"))
                        .with_help(format!("`{name}({})`", params.join(", "))),
                    );
                }
                ok = false;
            }
        }
        ok.then_some(out)
    }

    fn tensor_arg(
        &mut self,
        args: &Args,
        p: &str,
        env: &Env,
    ) -> Option<(TensorId, Shape, DType, Span)> {
        let (v, s) = args.get(p)?;
        match v {
            Value::Tensor(t) => {
                let tt = env.graph.as_ref()?.get(*t);
                Some((*t, tt.shape.clone(), tt.dtype, *s))
            }
            other => {
                self.type_error_in(other, *s, "a tensor", env);
                None
            }
        }
    }

    fn int_arg(&mut self, args: &Args, p: &str, env: &Env) -> Option<u64> {
        let (v, s) = args.get(p)?.clone();
        self.count_in(&v, s, &format!("`{p}`"), env)
    }

    fn bool_arg(&mut self, args: &Args, p: &str, default: bool) -> Option<bool> {
        match args.get(p) {
            None => Some(default),
            Some((Value::Bool(b), _)) => Some(*b),
            Some((other, s)) => {
                let (o, s) = (other.clone(), *s);
                self.type_error(&o, s, "`true` or `false`");
                None
            }
        }
    }

    /// A probability in [0, 1); absent means 0.
    fn probability(&mut self, args: &Args, p: &str) -> Option<f64> {
        let Some((v, s)) = args.get(p).cloned() else {
            return Some(0.0);
        };
        let q = self.num(&v, s)?;
        if !q.dim.is_none() || !(0.0..1.0).contains(&q.value) {
            self.diags.push(
                Diagnostic::error(
                    Code::L046,
                    format!("`{p}` must be a probability in [0, 1), got {q}"),
                    s,
                )
                .with_label(s, "out of range"),
            );
            return None;
        }
        Some(q.value)
    }

    fn activation_arg(&mut self, args: &Args, p: &str) -> Option<Activation> {
        match args.get(p) {
            None => Some(Activation::Relu),
            Some((Value::Sym(n, _), s)) => {
                let a = match n.as_str() {
                    "relu" => Activation::Relu,
                    "gelu" => Activation::Gelu,
                    "silu" => Activation::Silu,
                    "sigmoid" => Activation::Sigmoid,
                    _ => {
                        self.diags.push(
                            Diagnostic::error(Code::L063, format!("unknown activation `{n}`"), *s)
                                .with_label(*s, "not an activation")
                                .with_help("choose one of relu, gelu, silu, sigmoid"),
                        );
                        return None;
                    }
                };
                Some(a)
            }
            Some((other, s)) => {
                let (o, s) = (other.clone(), *s);
                self.type_error(&o, s, "an activation name (relu, gelu, silu, sigmoid)");
                None
            }
        }
    }

    fn shape_error(
        &mut self,
        span: Span,
        msg: String,
        labels: Vec<(Span, String)>,
        help: Option<String>,
    ) -> Option<Out> {
        let mut d = Diagnostic::error(Code::L050, msg, span);
        for (s, l) in labels {
            d = d.with_label(s, l);
        }
        if let Some(h) = help {
            d = d.with_help(h);
        }
        self.diags.push(d);
        None
    }

    fn rank_error(
        &mut self,
        name: &str,
        what: &str,
        shape: &Shape,
        want: &str,
        span: Span,
    ) -> Option<Out> {
        self.diags.push(
            Diagnostic::error(
                Code::L053,
                format!("`{name}` needs {what} of rank {want}, got {shape}"),
                span,
            )
            .with_label(span, format!("this has shape {shape}")),
        );
        None
    }

    pub(crate) fn apply_op(
        &mut self,
        name: &str,
        vals: Vec<ArgVal>,
        span: Span,
        env: &mut Env,
    ) -> Value {
        let Some(args) = self.bind_op(name, vals, span) else {
            return Value::Error;
        };
        let out = self.op_rule(name, &args, span, env);
        match (out, env.graph.as_mut()) {
            (Some(o), Some(g)) => Value::Tensor(g.push(o.kind, o.inputs, o.shape, o.dtype, span)),
            _ => Value::Error,
        }
    }

    fn op_rule(&mut self, name: &str, args: &Args, span: Span, env: &Env) -> Option<Out> {
        let act = DType::Act;
        match name {
            "linear" => {
                let (x, xs, _, xspan) = self.tensor_arg(args, "x", env)?;
                let d_in = self.int_arg(args, "d_in", env)?;
                let d_out = self.int_arg(args, "d_out", env)?;
                let bias = self.bool_arg(args, "bias", false)?;
                let tied = self.bool_arg(args, "tied", false)?;
                let Some(last) = xs.last() else {
                    return self.rank_error(name, "an input", &xs, "at least 1", xspan);
                };
                if *last != Dim::known(d_in as i64) {
                    let want = xs.with_last(Dim::known(d_in as i64));
                    return self.shape_error(
                        span,
                        format!("`linear` expects input features {d_in}, but the input has shape {xs}"),
                        vec![
                            (xspan, format!("this has shape {xs}")),
                            (args["d_in"].1, format!("`d_in` = {d_in} expects shape {want}")),
                        ],
                        Some(format!("the last dimension of the input is {last}; pass `d_in = {last}` or reshape the input")),
                    );
                }
                Some(Out {
                    kind: OpKind::Linear {
                        d_in,
                        d_out,
                        bias,
                        tied,
                    },
                    inputs: vec![x],
                    shape: xs.with_last(Dim::known(d_out as i64)),
                    dtype: act,
                })
            }
            "matmul" => {
                let (a, as_, _, aspan) = self.tensor_arg(args, "a", env)?;
                let (b, bs, _, bspan) = self.tensor_arg(args, "b", env)?;
                if as_.rank() < 2 {
                    return self.rank_error(name, "`a`", &as_, "at least 2", aspan);
                }
                if as_.rank() != bs.rank() {
                    return self.rank_error(name, "`b`", &bs, &as_.rank().to_string(), bspan);
                }
                let r = as_.rank();
                let ok_batch = as_.0[..r - 2] == bs.0[..r - 2];
                if as_.0[r - 1] != bs.0[r - 2] || !ok_batch {
                    return self.shape_error(
                        span,
                        format!("`matmul` of {as_} by {bs}: inner dimensions {} and {} differ", as_.0[r - 1], bs.0[r - 2]),
                        vec![(aspan, format!("this has shape {as_}")), (bspan, format!("this has shape {bs}"))],
                        Some("`matmul(a, b)` needs a: [..., m, k] and b: [..., k, n] with the same leading dimensions".into()),
                    );
                }
                let mut shape = as_.0.clone();
                shape[r - 1] = bs.0[r - 1].clone();
                Some(Out {
                    kind: OpKind::MatMul,
                    inputs: vec![a, b],
                    shape: Shape(shape),
                    dtype: act,
                })
            }
            "embedding" => {
                let (ids, is, idt, ispan) = self.tensor_arg(args, "ids", env)?;
                let vocab = self.int_arg(args, "vocab", env)?;
                let dim = self.int_arg(args, "dim", env)?;
                if !idt.is_int() {
                    return self.dtype_error(name, "ids", idt, ispan);
                }
                let mut shape = is.0.clone();
                shape.push(Dim::known(dim as i64));
                Some(Out {
                    kind: OpKind::Embedding { vocab, dim },
                    inputs: vec![ids],
                    shape: Shape(shape),
                    dtype: act,
                })
            }
            "embedding_bag" => {
                let (ids, is, idt, ispan) = self.tensor_arg(args, "ids", env)?;
                if !idt.is_int() {
                    return self.dtype_error(name, "ids", idt, ispan);
                }
                let (tv, tspan) = args["tables"].clone();
                let tables = self.tables(&tv, tspan)?;
                if is.rank() != 2 {
                    return self.rank_error(name, "`ids`", &is, "2 ([batch, tables])", ispan);
                }
                if is.0[1] != Dim::known(tables.len() as i64) {
                    return self.shape_error(
                        span,
                        format!(
                            "`embedding_bag` has {} tables but the ids have shape {is}",
                            tables.len()
                        ),
                        vec![
                            (ispan, format!("{} columns of ids", is.0[1])),
                            (tspan, format!("{} tables", tables.len())),
                        ],
                        Some("ids need one column per table: [batch, number of tables]".into()),
                    );
                }
                let dim = tables[0].dim;
                if let Some(t) = tables.iter().find(|t| t.dim != dim) {
                    return self.shape_error(
                        span,
                        format!("`embedding_bag` tables must share one dimension: `{}` has {}, the first has {dim}", t.name, t.dim),
                        vec![(tspan, "these tables".into())],
                        Some("pooled lookups are stacked into [batch, tables, dim]; give every table the same dim".into()),
                    );
                }
                Some(Out {
                    kind: OpKind::EmbeddingBag { tables },
                    inputs: vec![ids],
                    shape: Shape(vec![
                        is.0[0].clone(),
                        is.0[1].clone(),
                        Dim::known(dim as i64),
                    ]),
                    dtype: act,
                })
            }
            "attention" => {
                let (q, qs, _, qspan) = self.tensor_arg(args, "q", env)?;
                let (k, ks, _, kspan) = self.tensor_arg(args, "k", env)?;
                let (v, vs, _, vspan) = self.tensor_arg(args, "v", env)?;
                let heads = self.int_arg(args, "heads", env)?;
                let kv_heads = match args.get("kv_heads") {
                    Some(_) => self.int_arg(args, "kv_heads", env)?,
                    None => heads,
                };
                let causal = self.bool_arg(args, "causal", true)?;
                let dropout = self.probability(args, "dropout")?;
                for (s, sp, n) in [(&qs, qspan, "q"), (&ks, kspan, "k"), (&vs, vspan, "v")] {
                    if s.rank() != 3 {
                        return self.rank_error(
                            name,
                            &format!("`{n}`"),
                            s,
                            "3 ([batch, seq, features])",
                            sp,
                        );
                    }
                }
                let hspan = args["heads"].1;
                if heads % kv_heads != 0 {
                    let mut d = Diagnostic::error(
                        Code::L055,
                        format!(
                            "{heads} query heads cannot be grouped over {kv_heads} key/value heads"
                        ),
                        span,
                    )
                    .with_label(hspan, format!("heads = {heads}"));
                    if let Some((_, kspan)) = args.get("kv_heads") {
                        d = d.with_label(*kspan, format!("kv_heads = {kv_heads}"));
                    }
                    self.diags.push(d.with_help(
                        "grouped-query attention needs `heads` to be a multiple of `kv_heads`",
                    ));
                    return None;
                }
                let Some(hd) = qs.0[2].div(&Dim::known(heads as i64)) else {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L055,
                            format!("query features {} do not split into {heads} heads", qs.0[2]),
                            span,
                        )
                        .with_label(qspan, format!("this has shape {qs}"))
                        .with_label(hspan, format!("heads = {heads}"))
                        .with_help("the last dimension of q must be heads * head_dim"),
                    );
                    return None;
                };
                let want_kv = hd.mul(&Dim::known(kv_heads as i64));
                if ks.0[2] != want_kv || vs != ks || qs.0[0] != ks.0[0] {
                    let want = Shape(vec![qs.0[0].clone(), ks.0[1].clone(), want_kv.clone()]);
                    return self.shape_error(
                        span,
                        format!("`attention` keys and values must have shape {want} for {kv_heads} kv heads of size {hd}"),
                        vec![
                            (qspan, format!("q has shape {qs}")),
                            (kspan, format!("k has shape {ks}")),
                            (vspan, format!("v has shape {vs}")),
                        ],
                        Some(format!("k and v need kv_heads * head_dim = {want_kv} features")),
                    );
                }
                let Some(head_dim) = hd.as_known().map(|h| h.max(0) as u64) else {
                    return self.shape_error(
                        span,
                        format!("`attention` needs a known head size, but q's features {} over {heads} heads give {hd}", qs.0[2]),
                        vec![(qspan, format!("q has shape {qs}"))],
                        Some("the last dimension of q must be a number (heads * head_dim), not a shape symbol".into()),
                    );
                };
                Some(Out {
                    kind: OpKind::Attention {
                        heads,
                        kv_heads,
                        head_dim,
                        causal,
                        dropout,
                    },
                    inputs: vec![q, k, v],
                    shape: qs,
                    dtype: act,
                })
            }
            "rmsnorm" | "layernorm" | "softmax" | "silu" | "gelu" | "relu" | "sigmoid" => {
                let (x, xs, _, xspan) = self.tensor_arg(args, "x", env)?;
                let Some(last) = xs.last().cloned() else {
                    return self.rank_error(name, "an input", &xs, "at least 1", xspan);
                };
                let dim = match (name, last.as_known()) {
                    (_, Some(d)) => d.max(0) as u64,
                    ("rmsnorm" | "layernorm", None) => {
                        return self.shape_error(
                            span,
                            format!("`{name}` normalizes over the last dimension, which must be a number, not `{last}`"),
                            vec![(xspan, format!("this has shape {xs}"))],
                            Some("normalize over the feature dimension: make it the last one".into()),
                        );
                    }
                    (_, None) => 0,
                };
                let kind = match name {
                    "rmsnorm" => OpKind::RmsNorm { dim },
                    "layernorm" => OpKind::LayerNorm { dim },
                    "softmax" => OpKind::Softmax,
                    "silu" => OpKind::Activation(Activation::Silu),
                    "gelu" => OpKind::Activation(Activation::Gelu),
                    "relu" => OpKind::Activation(Activation::Relu),
                    _ => OpKind::Activation(Activation::Sigmoid),
                };
                Some(Out {
                    kind,
                    inputs: vec![x],
                    shape: xs,
                    dtype: act,
                })
            }
            "dropout" => {
                let (x, xs, _, _) = self.tensor_arg(args, "x", env)?;
                let p = match args.get("p") {
                    Some(_) => self.probability(args, "p")?,
                    None => 0.1,
                };
                Some(Out {
                    kind: OpKind::Dropout(p),
                    inputs: vec![x],
                    shape: xs,
                    dtype: act,
                })
            }
            "mlp" => {
                let (x, xs, _, xspan) = self.tensor_arg(args, "x", env)?;
                let (items, dspan) = self.list_arg(
                    args,
                    "dims",
                    "a list of layer widths such as [512, 256, 128]",
                )?;
                if items.is_empty() {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L051,
                            "`mlp` needs at least one layer width",
                            dspan,
                        )
                        .with_label(dspan, "empty list"),
                    );
                    return None;
                }
                let Some(first) = xs.last().and_then(|d| d.as_known()) else {
                    return self.rank_error(
                        name,
                        "an input with a known last dimension",
                        &xs,
                        "at least 1",
                        xspan,
                    );
                };
                let mut dims = vec![first as u64];
                for (v, s) in &items {
                    dims.push(self.count(v, *s, "a layer width")?);
                }
                let activation = self.activation_arg(args, "activation")?;
                let out = *dims.last().unwrap_or(&0);
                Some(Out {
                    kind: OpKind::Mlp { dims, activation },
                    inputs: vec![x],
                    shape: xs.with_last(Dim::known(out as i64)),
                    dtype: act,
                })
            }
            "interact" => {
                let (a, as_, _, aspan) = self.tensor_arg(args, "dense", env)?;
                let (b, bs, _, bspan) = self.tensor_arg(args, "sparse", env)?;
                if as_.rank() != 2 {
                    return self.rank_error(name, "`dense`", &as_, "2 ([batch, dim])", aspan);
                }
                if bs.rank() != 3 {
                    return self.rank_error(
                        name,
                        "`sparse`",
                        &bs,
                        "3 ([batch, tables, dim])",
                        bspan,
                    );
                }
                if as_.0[0] != bs.0[0] || as_.0[1] != bs.0[2] {
                    return self.shape_error(
                        span,
                        format!("`interact` needs dense [batch, d] and sparse [batch, n, d]; got {as_} and {bs}"),
                        vec![(aspan, format!("dense has shape {as_}")), (bspan, format!("sparse has shape {bs}"))],
                        Some("the bottom MLP's output width must equal the embedding dim".into()),
                    );
                }
                // The output width d + n'(n' - 1)/2 is no monomial, so both
                // the vector count and the width must be numbers.
                let (Some(n), Some(d)) = (bs.0[1].as_known(), as_.0[1].as_known()) else {
                    let mut labels = Vec::new();
                    if bs.0[1].as_known().is_none() {
                        labels.push((
                            bspan,
                            format!(
                                "sparse has shape {bs}: `{}` vectors is not a number",
                                bs.0[1]
                            ),
                        ));
                    }
                    if as_.0[1].as_known().is_none() {
                        labels.push((
                            aspan,
                            format!(
                                "dense has shape {as_}: width `{}` is not a number",
                                as_.0[1]
                            ),
                        ));
                    }
                    return self.shape_error(
                        span,
                        format!("`interact` needs a known number of vectors and a known width; got dense {as_} and sparse {bs}"),
                        labels,
                        Some("the output width is d + n(n + 1)/2; make the table count and the embedding dim numbers or model parameters".into()),
                    );
                };
                let n = n.max(0) as u64 + 1;
                let d = d.max(0) as u64;
                let out = d + n * (n - 1) / 2;
                Some(Out {
                    kind: OpKind::Interact { vectors: n, dim: d },
                    inputs: vec![a, b],
                    shape: Shape(vec![as_.0[0].clone(), Dim::known(out as i64)]),
                    dtype: act,
                })
            }
            "moe" => {
                let (x, xs, _, xspan) = self.tensor_arg(args, "x", env)?;
                let experts = self.int_arg(args, "experts", env)?;
                let top_k = self.int_arg(args, "top_k", env)?;
                let d_ff = self.int_arg(args, "d_ff", env)?;
                if top_k > experts {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L046,
                            format!("`top_k` = {top_k} is more than the {experts} experts"),
                            args["top_k"].1,
                        )
                        .with_label(args["top_k"].1, "too many")
                        .with_help(
                            "each token is routed to top_k of the experts; top_k <= experts",
                        ),
                    );
                    return None;
                }
                let Some(d_model) = xs.last().and_then(|d| d.as_known()) else {
                    return self.rank_error(
                        name,
                        "an input with a known last dimension",
                        &xs,
                        "at least 1",
                        xspan,
                    );
                };
                Some(Out {
                    kind: OpKind::Moe {
                        experts,
                        top_k,
                        d_model: d_model as u64,
                        d_ff,
                    },
                    inputs: vec![x],
                    shape: xs,
                    dtype: act,
                })
            }
            "reshape" => {
                let (x, xs, xdt, _) = self.tensor_arg(args, "x", env)?;
                let (items, sspan) =
                    self.list_arg(args, "shape", "a shape such as [batch, seq, 4096]")?;
                let mut dims = Vec::new();
                for (v, s) in &items {
                    match v {
                        Value::Sym(n, _) => dims.push(Dim::sym(n)),
                        Value::Dim(d) => dims.push(d.clone()),
                        Value::Error => return None,
                        other => {
                            dims.push(Dim::known(
                                self.count_in(other, *s, "a dimension", env)? as i64
                            ))
                        }
                    }
                }
                let new = Shape(dims);
                if new.numel() != xs.numel() {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L056,
                            format!("cannot reshape {xs} ({} elements) to {new} ({} elements)", xs.numel(), new.numel()),
                            span,
                        )
                        .with_label(sspan, format!("{} elements", new.numel()))
                        .with_help("reshape keeps every element; the products of the dimensions must match"),
                    );
                    return None;
                }
                Some(Out {
                    kind: OpKind::Reshape,
                    inputs: vec![x],
                    shape: new,
                    dtype: xdt,
                })
            }
            "concat" => {
                let (items, lspan) =
                    self.list_arg(args, "xs", "a list of tensors such as [a, b]")?;
                let g = env.graph.as_ref()?;
                let mut ts = Vec::new();
                for (v, s) in &items {
                    match v {
                        Value::Tensor(t) => ts.push((*t, g.get(*t).shape.clone(), *s)),
                        other => {
                            let (o, s) = (other.clone(), *s);
                            self.type_error(&o, s, "a tensor");
                            return None;
                        }
                    }
                }
                if ts.is_empty() {
                    self.diags.push(
                        Diagnostic::error(Code::L051, "`concat` needs at least one tensor", lspan)
                            .with_label(lspan, "empty list"),
                    );
                    return None;
                }
                let rank = ts[0].1.rank() as i64;
                let axis = match args.get("axis") {
                    None => -1,
                    Some((v, s)) => {
                        let (v, s) = (v.clone(), *s);
                        self.int(&v, s, "`axis`")?
                    }
                };
                let ax = if axis < 0 { rank + axis } else { axis };
                if ax < 0 || ax >= rank {
                    let s = args.get("axis").map_or(span, |a| a.1);
                    self.diags.push(
                        Diagnostic::error(
                            Code::L046,
                            format!("axis {axis} is out of range for rank {rank}"),
                            s,
                        )
                        .with_label(s, "no such axis"),
                    );
                    return None;
                }
                let ax = ax as usize;
                let mut total = Dim::known(0);
                let mut known_total: Option<i64> = Some(0);
                for (_, sh, s) in &ts {
                    let mut a = sh.clone();
                    let mut b = ts[0].1.clone();
                    if a.rank() != b.rank() {
                        return self.rank_error(name, "inputs", sh, &b.rank().to_string(), *s);
                    }
                    a.0[ax] = Dim::known(0);
                    b.0[ax] = Dim::known(0);
                    if a != b {
                        return self.shape_error(
                            span,
                            format!(
                                "`concat` inputs differ outside axis {ax}: {} and {sh}",
                                ts[0].1
                            ),
                            vec![
                                (ts[0].2, format!("shape {}", ts[0].1)),
                                (*s, format!("shape {sh}")),
                            ],
                            None,
                        );
                    }
                    known_total = known_total.and_then(|t| sh.0[ax].as_known().map(|k| t + k));
                    total = sh.0[ax].clone();
                }
                let mut shape = ts[0].1.clone();
                shape.0[ax] = match known_total {
                    Some(t) => Dim::known(t),
                    None if ts.len() == 1 => total,
                    None => {
                        self.diags.push(
                            Diagnostic::error(
                                Code::L050,
                                "`concat` along a symbolic axis is not supported",
                                span,
                            )
                            .with_label(span, "the concatenated axis must have known sizes"),
                        );
                        return None;
                    }
                };
                Some(Out {
                    kind: OpKind::Concat { axis: ax },
                    inputs: ts.iter().map(|t| t.0).collect(),
                    shape,
                    dtype: act,
                })
            }
            _ => None,
        }
    }

    fn dtype_error(&mut self, op: &str, arg: &str, got: DType, span: Span) -> Option<Out> {
        self.diags.push(
            Diagnostic::error(
                Code::L054,
                format!("`{op}` needs integer `{arg}`, got {}", got.name()),
                span,
            )
            .with_label(span, format!("element type {}", got.name()))
            .with_help("declare the input with an integer type, e.g. `input ids: i32[batch, seq]`"),
        );
        None
    }

    /// A list-valued argument, or a reported type error naming `what`.
    fn list_arg(&mut self, args: &Args, p: &str, what: &str) -> Option<(Vec<(Value, Span)>, Span)> {
        let (v, span) = args.get(p)?.clone();
        match v {
            Value::List(items) => Some((items, span)),
            other => {
                self.type_error(&other, span, what);
                None
            }
        }
    }

    fn tables(&mut self, v: &Value, span: Span) -> Option<Vec<EmbeddingTable>> {
        let Value::List(items) = v else {
            self.type_error(v, span, "a list of tables");
            return None;
        };
        if items.is_empty() {
            self.diags.push(
                Diagnostic::error(Code::L051, "`embedding_bag` needs at least one table", span)
                    .with_label(span, "empty list"),
            );
            return None;
        }
        let mut out = Vec::new();
        for (i, (item, s)) in items.iter().enumerate() {
            let Value::Decl(inst) = item else {
                self.type_error(item, *s, "a table");
                return None;
            };
            if inst.kind != crate::ast::DeclKind::Table {
                self.diags.push(
                    Diagnostic::error(
                        Code::L032,
                        format!("`{}` is a {}, not a table", inst.name, inst.kind.keyword()),
                        *s,
                    )
                    .with_label(*s, "expected a table"),
                );
                return None;
            }
            let mut t = self.table(inst, *s)?;
            t.name = format!("{}#{i}", t.name);
            out.push(t);
        }
        Some(out)
    }

    pub(crate) fn tensor_binary(
        &mut self,
        op: BinOp,
        a: (Value, Span),
        b: (Value, Span),
        span: Span,
        env: &mut Env,
    ) -> Value {
        let bop = match op {
            BinOp::Add => BinaryOp::Add,
            BinOp::Sub => BinaryOp::Sub,
            BinOp::Mul => BinaryOp::Mul,
            BinOp::Div => BinaryOp::Div,
            _ => {
                self.diags.push(
                    Diagnostic::error(
                        Code::L043,
                        format!("`{}` is not defined on tensors", op.symbol()),
                        span,
                    )
                    .with_label(span, "tensors support + - * /"),
                );
                return Value::Error;
            }
        };
        match (&a.0, &b.0) {
            (Value::Tensor(x), Value::Tensor(y)) => {
                let Some(g) = env.graph.as_mut() else {
                    return Value::Error;
                };
                let (xs, ys) = (g.get(*x).shape.clone(), g.get(*y).shape.clone());
                if xs != ys {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L050,
                            format!("`{}` of tensors with shapes {xs} and {ys}", op.symbol()),
                            span,
                        )
                        .with_label(a.1, format!("this has shape {xs}"))
                        .with_label(b.1, format!("this has shape {ys}"))
                        .with_help("elementwise ops need equal shapes"),
                    );
                    return Value::Error;
                }
                Value::Tensor(g.push(OpKind::Binary(bop), vec![*x, *y], xs, DType::Act, span))
            }
            (Value::Tensor(t), other) | (other, Value::Tensor(t)) => {
                let t = *t;
                let ospan = if matches!(a.0, Value::Tensor(_)) {
                    b.1
                } else {
                    a.1
                };
                let tensor_first = matches!(a.0, Value::Tensor(_));
                let Some(q) = self.num(&other.clone(), ospan) else {
                    return Value::Error;
                };
                if !q.dim.is_none() {
                    return self.type_error(other, ospan, "a plain number");
                }
                let factor = match (bop, tensor_first) {
                    (BinaryOp::Mul, _) => q.value,
                    (BinaryOp::Div, true) if q.value != 0.0 => 1.0 / q.value,
                    _ => {
                        self.diags.push(
                            Diagnostic::error(
                                Code::L043,
                                format!(
                                    "`{}` of a tensor and a number is not supported",
                                    op.symbol()
                                ),
                                span,
                            )
                            .with_label(ospan, "a number")
                            .with_help("a tensor may be scaled: `x * 0.5` or `x / 2`"),
                        );
                        return Value::Error;
                    }
                };
                self.tensor_scale(env, t, factor, span)
            }
            _ => Value::Error,
        }
    }

    pub(crate) fn tensor_scale(
        &mut self,
        env: &mut Env,
        t: TensorId,
        factor: f64,
        span: Span,
    ) -> Value {
        let Some(g) = env.graph.as_mut() else {
            return Value::Error;
        };
        let shape = g.get(t).shape.clone();
        Value::Tensor(g.push(OpKind::Scale(factor), vec![t], shape, DType::Act, span))
    }
}
