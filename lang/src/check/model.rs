//! Model bodies: statements build a graph of built-in ops.
//!
//! Shapes are checked as the graph is built, at the call that introduces
//! them, so an error names the call and shows both shapes. A `repeat` body
//! is walked once: values the body reassigns become loop-carried tensors
//! whose shape must not change across an iteration.

use std::collections::{BTreeMap, BTreeSet};

use crate::ast::{Decl, Stmt};
use crate::check::Checker;
use crate::check::eval::Env;
use crate::check::value::{Instance, Value};
use crate::diagnostic::{Code, Diagnostic};
use crate::program::{
    Carry, DType, Graph, Item, ModelInstance, Op, OpKind, Repeat, Tensor, TensorId,
};
use crate::shape::{Dim, Shape};
use crate::span::Span;

#[derive(Default)]
pub struct GraphBuilder {
    pub tensors: Vec<Tensor>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<(String, TensorId)>,
    /// Item lists under construction; the last is the innermost `repeat`.
    pub blocks: Vec<Vec<Item>>,
    /// Where each output was declared, to report one declared twice.
    pub output_spans: BTreeMap<String, Span>,
}

impl GraphBuilder {
    pub fn tensor(&mut self, name: &str, shape: Shape, dtype: DType) -> TensorId {
        self.tensors.push(Tensor {
            name: name.to_string(),
            shape,
            dtype,
        });
        TensorId(self.tensors.len() as u32 - 1)
    }
    pub fn get(&self, id: TensorId) -> &Tensor {
        &self.tensors[id.0 as usize]
    }
    pub fn push(
        &mut self,
        kind: OpKind,
        inputs: Vec<TensorId>,
        shape: Shape,
        dtype: DType,
        span: Span,
    ) -> TensorId {
        let output = self.tensor("", shape, dtype);
        if let Some(b) = self.blocks.last_mut() {
            b.push(Item::Op(Op {
                kind,
                inputs,
                output,
                span,
            }));
        }
        output
    }
}

impl Checker {
    /// Builds the graph of a model instance (memoized per argument list).
    pub(crate) fn build_model(&mut self, inst: &Instance) -> Option<ModelInstance> {
        let key = inst.key();
        if let Some(m) = self.models.get(&key) {
            return m.clone();
        }
        let decl = self.decls.get(&inst.name)?.clone();
        let files = self.files.clone();
        let Decl::Model(m) = &files[decl.file].decls[decl.idx] else {
            return None;
        };
        let errors_before = self.error_count();
        let mut env = Env::new();
        for (k, v) in inst.args.iter() {
            let span = m
                .params
                .iter()
                .find(|p| p.name.name == *k)
                .map_or(m.name.span, |p| p.name.span);
            env.bind(k, v.clone(), span);
        }
        env.graph = Some(GraphBuilder {
            blocks: vec![Vec::new()],
            ..GraphBuilder::default()
        });
        self.run_stmts(&m.body, &mut env);
        self.report_unused(&mut env);
        let mut g = env.graph.take()?;
        if g.outputs.is_empty() && self.error_count() == errors_before && !self.broken(m.span) {
            self.diags.push(
                Diagnostic::error(
                    Code::L058,
                    format!("model `{}` has no output", m.name.name),
                    m.name.span,
                )
                .with_label(m.name.span, "declares no `output`")
                .with_help("add `output name = expression` to say what the model computes"),
            );
        }
        // A tied output projection needs the embedding whose table it
        // reuses: `d_out` rows of `d_in` features.
        if self.error_count() == errors_before {
            let mut embeddings = Vec::new();
            let mut tied = Vec::new();
            tied_ops(
                g.blocks.first().map_or(&[][..], |b| &b[..]),
                &mut embeddings,
                &mut tied,
            );
            for (d_in, d_out, span) in tied {
                if !embeddings.contains(&(d_out, d_in)) {
                    let have = if embeddings.is_empty() {
                        "the model has no `embedding`".to_string()
                    } else {
                        format!(
                            "its embeddings are {}",
                            embeddings
                                .iter()
                                .map(|(v, d)| format!("{v} x {d}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    self.diags.push(
                        Diagnostic::error(
                            Code::L050,
                            format!(
                                "`tied = true` reuses an `embedding` of {d_out} rows and {d_in} features, but {have}"
                            ),
                            span,
                        )
                        .with_label(span, format!("a {d_in} -> {d_out} projection"))
                        .with_help("tie the output projection to the token embedding: `linear(x, dim, vocab, tied = true)` after `embedding(tokens, vocab, dim)`"),
                    );
                }
            }
        }
        let result = if self.error_count() > errors_before || self.broken(m.span) {
            None
        } else {
            Some(ModelInstance {
                name: inst.name.clone(),
                args: inst
                    .args
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect(),
                graph: Graph {
                    tensors: std::mem::take(&mut g.tensors),
                    inputs: g.inputs,
                    outputs: g.outputs,
                    body: g.blocks.pop().unwrap_or_default(),
                },
            })
        };
        self.models.insert(key, result.clone());
        result
    }

    fn report_unused(&mut self, env: &mut Env) {
        if let Some(scope) = env.scopes.last() {
            for (name, b) in scope {
                if b.warn_unused && !b.used && !name.starts_with('_') {
                    self.diags.push(
                        Diagnostic::warning(
                            Code::L080,
                            format!("`{name}` is computed but never used"),
                            b.span,
                        )
                        .with_label(b.span, "assigned here")
                        .with_help(format!(
                            "use it, make it an `output`, or rename it `_{name}`"
                        )),
                    );
                }
            }
        }
    }

    fn run_stmts(&mut self, stmts: &[Stmt], env: &mut Env) {
        for st in stmts {
            match st {
                Stmt::Error(_) => {}
                Stmt::Let { name, value, .. } => {
                    let v = self.eval(value, env);
                    env.bind(&name.name, v, name.span);
                }
                Stmt::Assign { name, value, .. } => {
                    let v = self.eval(value, env);
                    if let (Value::Tensor(t), Some(g)) = (&v, env.graph.as_mut()) {
                        let tensor = &mut g.tensors[t.0 as usize];
                        if tensor.name.is_empty() {
                            tensor.name = name.name.clone();
                        }
                    }
                    let warn = matches!(v, Value::Tensor(_));
                    env.bind_with(&name.name, v, name.span, warn);
                }
                Stmt::Output { name, value, .. } => {
                    let v = self.eval(value, env);
                    match v {
                        Value::Tensor(t) => {
                            if let Some(g) = env.graph.as_mut() {
                                if let Some(first) = g.output_spans.get(&name.name) {
                                    self.diags.push(
                                        Diagnostic::error(
                                            Code::L031,
                                            format!("output `{}` is declared twice", name.name),
                                            name.span,
                                        )
                                        .with_label(name.span, "declared again here")
                                        .with_label(*first, "first declared here")
                                        .with_help("give each output its own name"),
                                    );
                                } else {
                                    g.output_spans.insert(name.name.clone(), name.span);
                                }
                                if g.tensors[t.0 as usize].name.is_empty() {
                                    g.tensors[t.0 as usize].name = name.name.clone();
                                }
                                g.outputs.push((name.name.clone(), t));
                            }
                        }
                        other => {
                            self.type_error(&other, value.span, "a tensor");
                        }
                    }
                }
                Stmt::Input {
                    name, dtype, dims, ..
                } => {
                    let dt = DType::parse(&dtype.name);
                    if dt.is_none() {
                        let mut d = Diagnostic::error(
                            Code::L063,
                            format!("unknown element type `{}`", dtype.name),
                            dtype.span,
                        )
                        .with_label(dtype.span, "not an element type");
                        d = match crate::check::suggest(&dtype.name, DType::NAMES.iter().copied()) {
                            Some(s) => d.with_help(format!("did you mean `{s}`?")),
                            None => d.with_help(DType::help()),
                        };
                        self.diags.push(d);
                    }
                    let mut shape = Some(Vec::new());
                    for d in dims {
                        let dim = self.dim_expr(d, env);
                        shape = shape.zip(dim).map(|(mut s, d)| {
                            s.push(d);
                            s
                        });
                    }
                    // A broken input is still bound, so its uses stay quiet.
                    let v = match (dt, shape, env.graph.as_mut()) {
                        (Some(dt), Some(shape), Some(g)) => {
                            let t = g.tensor(&name.name, Shape(shape), dt);
                            g.inputs.push(t);
                            Value::Tensor(t)
                        }
                        _ => Value::Error,
                    };
                    env.bind(&name.name, v, name.span);
                }
                Stmt::Repeat { count, body, span } => self.run_repeat(count, body, *span, env),
            }
        }
    }

    fn run_repeat(&mut self, count: &crate::ast::Expr, body: &[Stmt], span: Span, env: &mut Env) {
        let cv = self.eval(count, env);
        let n = self.count(&cv, count.span, "a repeat count");
        // Values reassigned in the body that exist outside it are carried.
        let mut assigned = BTreeSet::new();
        collect_assigned(body, &mut assigned);
        let mut carried: Vec<(String, TensorId, TensorId)> = Vec::new();
        let mut inner = BTreeMap::new();
        for name in &assigned {
            let outer = env
                .scopes
                .iter()
                .rev()
                .find_map(|s| s.get(name))
                .map(|b| (b.value.clone(), b.span));
            if let (Some((Value::Tensor(t), bspan)), Some(g)) = (outer, env.graph.as_mut()) {
                let tt = g.get(t).clone();
                let p = g.tensor(name, tt.shape, tt.dtype);
                carried.push((name.clone(), t, p));
                inner.insert(
                    name.clone(),
                    crate::check::eval::Binding {
                        value: Value::Tensor(p),
                        span: bspan,
                        used: false,
                        warn_unused: false,
                    },
                );
                // Reading the outer value to enter the loop counts as a use.
                for s in env.scopes.iter_mut().rev() {
                    if let Some(b) = s.get_mut(name) {
                        b.used = true;
                        break;
                    }
                }
            }
        }
        env.scopes.push(inner);
        if let Some(g) = env.graph.as_mut() {
            g.blocks.push(Vec::new());
        }
        self.run_stmts(body, env);
        // Carried values read in the next iteration count as used.
        if let Some(scope) = env.scopes.last_mut() {
            for (name, ..) in &carried {
                if let Some(b) = scope.get_mut(name) {
                    b.used = true;
                }
            }
        }
        let scope = env.scopes.last().cloned().unwrap_or_default();
        self.report_unused(env);
        env.scopes.pop();
        let Some(g) = env.graph.as_mut() else {
            return;
        };
        let items = g.blocks.pop().unwrap_or_default();
        let mut carries = Vec::new();
        let mut results = Vec::new();
        for (name, init, param) in carried {
            let Some(b) = scope.get(&name) else {
                continue;
            };
            let Value::Tensor(next) = b.value else {
                continue;
            };
            let (ps, ns) = (g.get(param).shape.clone(), g.get(next).shape.clone());
            if ps != ns {
                self.diags.push(
                    Diagnostic::error(
                        Code::L057,
                        format!("`{name}` changes shape inside `repeat`: {ps} before, {ns} after"),
                        b.span,
                    )
                    .with_label(b.span, format!("`{name}` becomes {ns} here"))
                    .with_label(span, format!("but each iteration starts from {ps}"))
                    .with_help("a value carried across repeat iterations must keep its shape"),
                );
                continue;
            }
            let dtype = g.get(param).dtype;
            let result = g.tensor(&name, ps, dtype);
            carries.push(Carry {
                init,
                param,
                next,
                result,
            });
            results.push((name, result, b.span));
        }
        if let (Some(count), Some(block)) = (n, g.blocks.last_mut()) {
            block.push(Item::Repeat(Repeat {
                count,
                carried: carries,
                body: items,
                span,
            }));
        }
        for (name, result, s) in results {
            env.bind_with(&name, Value::Tensor(result), s, true);
        }
    }
}

impl Checker {
    /// A tensor dimension: a positive integer, a symbol (`batch`), or a
    /// product of these (`batch * seq`, `2 * seq`); `None` once reported.
    pub(crate) fn dim_expr(&mut self, e: &crate::ast::Expr, env: &mut Env) -> Option<Dim> {
        if let crate::ast::ExprKind::Binary(crate::ast::BinOp::Mul, a, b) = &e.kind {
            let x = self.dim_expr(a, env);
            let y = self.dim_expr(b, env);
            return Some(x?.mul(&y?));
        }
        let v = self.eval(e, env);
        match v {
            Value::Sym(n, _) => Some(Dim::sym(&n)),
            Value::Dim(d) => Some(d),
            Value::Error => None,
            other => self
                .count_in(&other, e.span, "a dimension", env)
                .map(|n| Dim::known(n as i64)),
        }
    }
}

/// Embedding tables (vocab, dim) and tied linears (d_in, d_out, span) of
/// a model body, `repeat`s included.
fn tied_ops(items: &[Item], embeddings: &mut Vec<(u64, u64)>, tied: &mut Vec<(u64, u64, Span)>) {
    for item in items {
        match item {
            Item::Op(op) => match op.kind {
                OpKind::Embedding { vocab, dim } => embeddings.push((vocab, dim)),
                OpKind::Linear {
                    d_in,
                    d_out,
                    tied: true,
                    ..
                } => tied.push((d_in, d_out, op.span)),
                _ => {}
            },
            Item::Repeat(r) => tied_ops(&r.body, embeddings, tied),
        }
    }
}

fn collect_assigned(stmts: &[Stmt], out: &mut BTreeSet<String>) {
    for s in stmts {
        match s {
            Stmt::Assign { name, .. } => {
                out.insert(name.name.clone());
            }
            Stmt::Repeat { body, .. } => collect_assigned(body, out),
            _ => {}
        }
    }
}
