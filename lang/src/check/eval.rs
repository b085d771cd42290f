//! Expression evaluation: names, units, arithmetic, calls.
//!
//! One evaluator serves every context. Inside a model body the same code
//! sees tensors, and arithmetic or calls on tensors are handed to the graph
//! builder (`model.rs`); elsewhere they are plain constant evaluation. A
//! bare name bound to nothing evaluates to [`Value::Sym`], which consumers
//! that want a choice (`dtype = bf16`) accept and consumers that want a
//! number report as undefined; so no context needs its own name rules.

use std::collections::BTreeMap;

use crate::ast::{BinOp, Decl, Expr, ExprKind, Param};
use crate::check::model::GraphBuilder;
use crate::check::value::{Instance, Value};
use crate::check::{Checker, LetState, suggest};
use crate::diagnostic::{Code, Diagnostic};
use crate::span::Span;
use crate::units::{Dim, Quantity};

/// Functions every file can call; top-level names may not shadow them.
pub const BUILTIN_FUNCTIONS: [&str; 16] = [
    "len",
    "min",
    "max",
    "switch",
    "mesh",
    "fat_tree",
    "rail_optimized",
    "poisson",
    "gamma",
    "trace",
    "fixed",
    "uniform",
    "lognormal",
    "closed",
    "burst",
    "batch_window",
];

#[derive(Clone, Debug)]
pub struct Binding {
    pub value: Value,
    pub span: Span,
    pub used: bool,
    /// Report this binding if it is never read (model statements).
    pub warn_unused: bool,
}

/// Local scopes, innermost last, and the graph under construction when
/// evaluating a model body.
#[derive(Default)]
pub struct Env {
    pub scopes: Vec<BTreeMap<String, Binding>>,
    pub graph: Option<GraphBuilder>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            scopes: vec![BTreeMap::new()],
            graph: None,
        }
    }
    pub fn bind(&mut self, name: &str, value: Value, span: Span) {
        self.bind_with(name, value, span, false);
    }
    pub fn bind_with(&mut self, name: &str, value: Value, span: Span, warn_unused: bool) {
        if let Some(s) = self.scopes.last_mut() {
            s.insert(
                name.to_string(),
                Binding {
                    value,
                    span,
                    used: false,
                    warn_unused,
                },
            );
        }
    }
    pub fn lookup(&mut self, name: &str) -> Option<Value> {
        for s in self.scopes.iter_mut().rev() {
            if let Some(b) = s.get_mut(name) {
                b.used = true;
                return Some(b.value.clone());
            }
        }
        None
    }
    pub fn names(&self) -> Vec<String> {
        self.scopes.iter().flat_map(|s| s.keys().cloned()).collect()
    }
}

/// An evaluated call argument.
pub struct ArgVal {
    pub name: Option<(String, Span)>,
    pub value: Value,
    pub span: Span,
}

/// How deep evaluation may nest across definitions: a name that is a
/// `let` evaluates that constant's expression (lazily, inside the current
/// one), a call instantiates its declaration, so a chain of constants
/// (`let a2 = a1 + 1`, `let a3 = a2 + 1`, ...) nests one evaluation per
/// link. Each expression is at most [`crate::ast::MAX_EXPR_DEPTH`] deep,
/// but a chain is as long as the file: 3,000 links overflowed the stack
/// (an abort, not a diagnostic). 512 nested evaluations (a few hundred
/// KB of stack) is far beyond any real file (the stdlib's deepest chain is
/// under 20) and leaves room on a 2 MB thread.
pub const MAX_EVAL_DEPTH: usize = 512;

impl Checker {
    /// Evaluates `e`; past [`MAX_EVAL_DEPTH`] nested evaluations, `L013`
    /// (once per check) and an error value.
    pub(crate) fn eval(&mut self, e: &Expr, env: &mut Env) -> Value {
        if self.eval_depth >= MAX_EVAL_DEPTH {
            self.too_deep(
                e.span,
                format!(
                    "evaluation nested deeper than {MAX_EVAL_DEPTH} levels: a chain of constants or calls too long to follow"
                ),
                "too deep to evaluate here",
                "shorten the chain of `let` constants (write an intermediate value as a number)",
            );
            return Value::Error;
        }
        self.eval_depth += 1;
        let v = self.eval_inner(e, env);
        self.eval_depth -= 1;
        v
    }

    fn eval_inner(&mut self, e: &Expr, env: &mut Env) -> Value {
        let span = e.span;
        match &e.kind {
            ExprKind::Number(v, _) => Value::Num(Quantity::plain(*v)),
            ExprKind::Quantity(q, _) => Value::Num(*q),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::Error => Value::Error,
            ExprKind::Name(n) => {
                if let Some(v) = env.lookup(n) {
                    return v;
                }
                self.lookup_global(n, span)
            }
            ExprKind::Neg(a) => {
                let v = self.eval(a, env);
                match v {
                    Value::Num(q) => Value::Num(Quantity::new(-q.value, q.dim)),
                    Value::Tensor(t) if env.graph.is_some() => {
                        self.tensor_scale(env, t, -1.0, span)
                    }
                    other => self.type_error(&other, a.span, "a number to negate"),
                }
            }
            ExprKind::Binary(op, a, b) => {
                let va = self.eval(a, env);
                let vb = self.eval(b, env);
                self.binary(*op, (va, a.span), (vb, b.span), span, env)
            }
            ExprKind::Range(a, b, step) => {
                let va = self.eval(a, env);
                let vb = self.eval(b, env);
                let (Some(lo), Some(hi)) = (self.num(&va, a.span), self.num(&vb, b.span)) else {
                    return Value::Error;
                };
                if lo.dim != hi.dim {
                    return self.unit_mismatch("..", (lo, a.span), (hi, b.span), span);
                }
                if lo.value > hi.value {
                    self.diags.push(
                        Diagnostic::error(Code::L044, format!("range `{lo}..{hi}` is empty"), span)
                            .with_label(a.span, "the start")
                            .with_label(b.span, "is above the end")
                            .with_help(format!("write `{hi}..{lo}`")),
                    );
                    return Value::Error;
                }
                let step = match step {
                    None => None,
                    Some(s) => {
                        let vs = self.eval(s, env);
                        let Some(q) = self.num(&vs, s.span) else {
                            return Value::Error;
                        };
                        if q.dim != lo.dim {
                            return self.unit_mismatch("step", (lo, a.span), (q, s.span), span);
                        }
                        if !(q.value > 0.0 && q.value.is_finite()) {
                            self.diags.push(
                                Diagnostic::error(
                                    Code::L046,
                                    format!("a range's step must be above 0, not {q}"),
                                    s.span,
                                )
                                .with_label(s.span, "not a positive step"),
                            );
                            return Value::Error;
                        }
                        Some(q)
                    }
                };
                Value::Range(lo, hi, step)
            }
            ExprKind::At(a, b) => {
                let va = self.eval(a, env);
                let vb = self.eval(b, env);
                Value::Pair(Box::new((va, a.span)), Box::new((vb, b.span)))
            }
            ExprKind::List(xs) => {
                Value::List(xs.iter().map(|x| (self.eval(x, env), x.span)).collect())
            }
            ExprKind::Set(xs) => {
                // A repeated element is warned about and kept once.
                let mut vals: Vec<(Value, Span)> = Vec::with_capacity(xs.len());
                for x in xs {
                    let v = self.eval(x, env);
                    if let Some((_, first)) =
                        vals.iter().find(|(w, _)| *w == v && v != Value::Error)
                    {
                        self.diags.push(
                            Diagnostic::warning(
                                Code::L062,
                                format!("`{v}` appears twice in this set"),
                                x.span,
                            )
                            .with_label(x.span, "repeated here")
                            .with_label(*first, "first here")
                            .with_help("a set holds each value once; the repeat is ignored"),
                        );
                        continue;
                    }
                    vals.push((v, x.span));
                }
                Value::Set(vals)
            }
            ExprKind::Record(fields) => {
                let mut out: Vec<(String, Span, Value, Span)> = Vec::new();
                for f in fields {
                    if let Some((_, first, _, _)) = out.iter().find(|(k, ..)| *k == f.name.name) {
                        self.diags.push(
                            Diagnostic::error(
                                Code::L062,
                                format!("field `{}` is given twice", f.name.name),
                                f.name.span,
                            )
                            .with_label(f.name.span, "given again here")
                            .with_label(*first, "first given here")
                            .with_help("remove one of them"),
                        );
                        continue;
                    }
                    let v = self.eval(&f.value, env);
                    out.push((f.name.name.clone(), f.name.span, v, f.value.span));
                }
                Value::Record(out)
            }
            ExprKind::Member(a, field) => {
                let v = self.eval(a, env);
                match v {
                    Value::Record(fs) => match fs.iter().find(|(k, ..)| *k == field.name) {
                        Some((_, _, v, _)) => v.clone(),
                        None => {
                            let names: Vec<String> = fs.iter().map(|(k, ..)| k.clone()).collect();
                            let mut d = Diagnostic::error(
                                Code::L060,
                                format!("this record has no field `{}`", field.name),
                                field.span,
                            )
                            .with_label(field.span, "unknown field");
                            d = match suggest(&field.name, names.iter().map(|s| s.as_str())) {
                                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                                None if names.is_empty() => {
                                    d.with_help("this record has no fields")
                                }
                                None => d.with_help(format!(
                                    "its fields are: {}",
                                    names
                                        .iter()
                                        .map(|n| format!("`{n}`"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )),
                            };
                            self.diags.push(d);
                            Value::Error
                        }
                    },
                    Value::Error => Value::Error,
                    other => self.type_error(&other, a.span, "a record"),
                }
            }
            ExprKind::Call(callee, args) => self.call(callee, args, span, env),
        }
    }

    fn call(
        &mut self,
        callee: &Expr,
        args: &[crate::ast::Arg],
        span: Span,
        env: &mut Env,
    ) -> Value {
        let Some(name) = callee.as_name() else {
            let v = self.eval(callee, env);
            return self.type_error(&v, callee.span, "the name of a declaration, op or function");
        };
        let mut vals = Vec::with_capacity(args.len());
        // `reshape`'s shape may hold products of symbols (`[batch * seq, d]`),
        // which are dimensions, not numbers.
        let reshape = name == "reshape" && env.graph.is_some() && !self.decls.contains_key(name);
        let mut positional = 0;
        for a in args {
            let is_shape = reshape
                && match &a.name {
                    Some(n) => n.name == "shape",
                    None => positional == 1,
                };
            if a.name.is_none() {
                positional += 1;
            }
            let value = match &a.value.kind {
                ExprKind::List(xs) if is_shape => Value::List(
                    xs.iter()
                        .map(|x| {
                            let d = self.dim_expr(x, env);
                            (d.map_or(Value::Error, Value::Dim), x.span)
                        })
                        .collect(),
                ),
                _ => self.eval(&a.value, env),
            };
            vals.push(ArgVal {
                name: a.name.as_ref().map(|n| (n.name.clone(), n.span)),
                value,
                span: a.value.span,
            });
        }
        // A local name shadows declarations and built-ins only if it is callable.
        if let Some(decl) = self.decls.get(name).cloned() {
            if env.scopes.iter().any(|s| s.contains_key(name)) {
                // A local value of the same name is not callable.
                let v = env.lookup(name).unwrap_or(Value::Error);
                return self.type_error(&v, callee.span, "something callable");
            }
            return self.instantiate_call(&decl, name, vals, callee.span, span);
        }
        if crate::check::ops::is_op(name) {
            if env.graph.is_none() {
                self.diags.push(
                    Diagnostic::error(
                        Code::L051,
                        format!("`{name}` is a model op and can only be used inside a model"),
                        callee.span,
                    )
                    .with_label(callee.span, "outside any model")
                    .with_help(
                        "ops build model graphs; declare a `model` and call it from a workload",
                    ),
                );
                return Value::Error;
            }
            return self.apply_op(name, vals, span, env);
        }
        match name {
            "len" => {
                if let Some((n, ns)) = vals.iter().find_map(|a| a.name.clone()) {
                    self.diags.push(
                        Diagnostic::error(Code::L033, format!("`len` has no parameter `{n}`"), ns)
                            .with_label(ns, "the argument of `len` has no name")
                            .with_help("write `len(xs)`"),
                    );
                    return Value::Error;
                }
                if vals.len() != 1 {
                    return self.arg_count("len", 1, vals.len(), span);
                }
                match &vals[0].value {
                    Value::List(xs) | Value::Set(xs) => {
                        Value::Num(Quantity::plain(xs.len() as f64))
                    }
                    Value::Error => Value::Error,
                    other => self.type_error(other, vals[0].span, "a list"),
                }
            }
            "min" | "max" => {
                if vals.is_empty() {
                    return self.arg_count(name, 1, 0, span);
                }
                if let Some((n, ns)) = vals.iter().find_map(|a| a.name.clone()) {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L033,
                            format!("`{name}` has no parameter `{n}`"),
                            ns,
                        )
                        .with_label(ns, "arguments of `min` and `max` have no names")
                        .with_help(format!("write `{name}(a, b, ...)`")),
                    );
                    return Value::Error;
                }
                let mut best: Option<(Quantity, Span)> = None;
                for a in &vals {
                    let Some(q) = self.num(&a.value, a.span) else {
                        return Value::Error;
                    };
                    if let Some((b, bs)) = best {
                        if b.dim != q.dim {
                            return self.unit_mismatch(name, (b, bs), (q, a.span), span);
                        }
                        let better = if name == "min" {
                            q.value < b.value
                        } else {
                            q.value > b.value
                        };
                        if better {
                            best = Some((q, a.span));
                        }
                    } else {
                        best = Some((q, a.span));
                    }
                }
                best.map_or(Value::Error, |(q, _)| Value::Num(q))
            }
            "switch" | "mesh" | "fat_tree" | "rail_optimized" | "poisson" | "gamma" | "trace"
            | "fixed" | "uniform" | "lognormal" | "closed" | "burst" | "batch_window" => {
                Value::Ctor(
                    name.to_string(),
                    vals.into_iter()
                        .map(|a| (a.name.map(|n| n.0), a.value, a.span))
                        .collect(),
                )
            }
            _ => {
                let mut known: Vec<&str> = self.decls.keys().map(|s| s.as_str()).collect();
                known.extend(crate::check::ops::OP_NAMES);
                known.extend(BUILTIN_FUNCTIONS);
                let mut d = Diagnostic::error(
                    if env.graph.is_some() {
                        Code::L052
                    } else {
                        Code::L030
                    },
                    format!("`{name}` is not an op, function or declaration"),
                    callee.span,
                )
                .with_label(callee.span, "not defined");
                if let Some(s) = suggest(name, known.into_iter()) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                } else if env.graph.is_some() {
                    d = d.with_help("the built-in ops are listed in docs/LANGUAGE.md");
                }
                self.diags.push(d);
                Value::Error
            }
        }
    }

    pub(crate) fn arg_count(&mut self, name: &str, want: usize, got: usize, span: Span) -> Value {
        self.diags.push(
            Diagnostic::error(
                if got > want { Code::L035 } else { Code::L034 },
                format!("`{name}` takes {}, got {got}", count_of(want, "argument")),
                span,
            )
            .with_label(span, "in this call"),
        );
        Value::Error
    }

    /// Looks up a top-level name: a `let` constant or a declaration.
    pub(crate) fn lookup_global(&mut self, name: &str, span: Span) -> Value {
        if let Some(state) = self.lets.get(name).cloned() {
            return match state {
                LetState::Done(v) => v,
                LetState::InProgress => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::L037,
                            format!("`{name}` is defined in terms of itself"),
                            span,
                        )
                        .with_label(span, "used here while it is being computed")
                        .with_help("break the cycle by writing one of the values as a number"),
                    );
                    Value::Error
                }
                LetState::Pending(file, idx) => self.eval_let(name, file, idx),
            };
        }
        if let Some(d) = self.decls.get(name).cloned() {
            // A bare declaration is its instance with the default
            // arguments, the same wherever it is named: made once. A chain
            // of declarations whose defaults each name the one before
            // (`device D2(prev = D1)`) is then one level deep per link, not
            // as deep as the chain.
            if let Some(v) = self.bare_decls.get(name) {
                return v.clone();
            }
            let v = self.instantiate_call(&d, name, Vec::new(), span, span);
            self.bare_decls.insert(name.to_string(), v.clone());
            return v;
        }
        Value::Sym(name.to_string(), span)
    }

    pub(crate) fn eval_let(&mut self, name: &str, file: usize, idx: usize) -> Value {
        let files = self.files.clone();
        let Decl::Let { value, .. } = &files[file].decls[idx] else {
            return Value::Error;
        };
        self.lets.insert(name.to_string(), LetState::InProgress);
        let mut env = Env::new();
        let v = self.eval(value, &mut env);
        let v = match v {
            Value::Sym(n, s) => {
                self.undefined(&n, s, &env);
                Value::Error
            }
            v => v,
        };
        self.lets
            .insert(name.to_string(), LetState::Done(v.clone()));
        v
    }

    /// Binds call arguments to a declaration's parameters: positional first,
    /// then named; defaults are evaluated with earlier parameters in scope.
    /// A missing parameter is not reported when an argument error already
    /// explains it: a positional argument after a named one (which slot it
    /// meant is unknown), or an unknown name close to the parameter's.
    pub(crate) fn bind_params(
        &mut self,
        what: &str,
        params: &[Param],
        args: Vec<ArgVal>,
        call_span: Span,
    ) -> Option<Vec<(String, Value)>> {
        let mut slots: Vec<Option<(Value, Span)>> = vec![None; params.len()];
        let mut ok = true;
        let mut positional_done = false;
        let mut unplaced: Vec<Span> = Vec::new();
        let mut meant: Vec<String> = Vec::new();
        let mut pos = 0;
        for a in args {
            match a.name {
                None => {
                    if positional_done {
                        ok = false;
                        unplaced.push(a.span);
                        continue;
                    }
                    if pos >= params.len() {
                        self.diags.push(
                            Diagnostic::error(
                                Code::L035,
                                format!(
                                    "`{what}` takes {}, got more",
                                    count_of(params.len(), "argument")
                                ),
                                a.span,
                            )
                            .with_label(a.span, "this one is extra")
                            .with_help(format!("the parameters are: {}", param_list(params))),
                        );
                        ok = false;
                        continue;
                    }
                    slots[pos] = Some((a.value, a.span));
                    pos += 1;
                }
                Some((n, nspan)) => {
                    positional_done = true;
                    match params.iter().position(|p| p.name.name == n) {
                        None => {
                            let mut d = Diagnostic::error(
                                Code::L033,
                                format!("`{what}` has no parameter `{n}`"),
                                nspan,
                            )
                            .with_label(nspan, "unknown parameter");
                            d = match suggest(&n, params.iter().map(|p| p.name.name.as_str())) {
                                Some(s) => {
                                    let help = format!("did you mean `{s}`?");
                                    meant.push(s);
                                    d.with_help(help)
                                }
                                None => d.with_help(format!(
                                    "the parameters are: {}",
                                    param_list(params)
                                )),
                            };
                            self.diags.push(d);
                            ok = false;
                        }
                        Some(i) => {
                            if let Some((_, first)) = &slots[i] {
                                self.diags.push(
                                    Diagnostic::error(
                                        Code::L036,
                                        format!("argument `{n}` is given twice"),
                                        nspan,
                                    )
                                    .with_label(nspan, "given again here")
                                    .with_label(*first, "first given here"),
                                );
                                ok = false;
                            } else {
                                slots[i] = Some((a.value, a.span));
                            }
                        }
                    }
                }
            }
        }
        self.positional_after_named(&unplaced);
        let mut env = Env::new();
        let mut out = Vec::with_capacity(params.len());
        for (p, slot) in params.iter().zip(slots) {
            let v = match slot {
                Some((v, _)) => v,
                None => match &p.default {
                    Some(def) => {
                        let v = self.eval(def, &mut env);
                        if let Value::Sym(n, s) = &v
                            && !is_choice_name(n)
                        {
                            self.undefined(n, *s, &env);
                        }
                        v
                    }
                    None => {
                        if unplaced.is_empty() && !meant.contains(&p.name.name) {
                            self.diags.push(
                                Diagnostic::error(
                                    Code::L034,
                                    format!("`{what}` needs argument `{}`", p.name.name),
                                    call_span,
                                )
                                .with_label(call_span, format!("`{}` is not given", p.name.name))
                                .with_label(p.name.span, "declared here without a default")
                                .with_help(format!("pass `{} = ...`", p.name.name)),
                            );
                        }
                        ok = false;
                        Value::Error
                    }
                },
            };
            env.bind(&p.name.name, v.clone(), p.name.span);
            out.push((p.name.name.clone(), v));
        }
        ok.then_some(out)
    }

    /// One diagnostic for the positional arguments of a call that follow a
    /// named one (none if `spans` is empty).
    pub(crate) fn positional_after_named(&mut self, spans: &[Span]) {
        let Some(&first) = spans.first() else { return };
        let (msg, help) = if spans.len() == 1 {
            (
                "positional argument after a named one",
                "write positional arguments first, or name this one",
            )
        } else {
            (
                "positional arguments after a named one",
                "write positional arguments first, or name these",
            )
        };
        let mut d = Diagnostic::error(Code::L043, msg, first);
        for s in spans {
            d = d.with_label(*s, "this argument has no name");
        }
        self.diags.push(d.with_help(help));
    }

    fn instantiate_call(
        &mut self,
        decl: &crate::check::DeclRef,
        name: &str,
        args: Vec<ArgVal>,
        callee_span: Span,
        call_span: Span,
    ) -> Value {
        let files = self.files.clone();
        let params: &[Param] = match &files[decl.file].decls[decl.idx] {
            Decl::Block(b) => &b.params,
            Decl::Model(m) => &m.params,
            Decl::Plan(_) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::L032,
                        format!(
                            "`{name}` is a {} and cannot be used as a value",
                            decl.kind.keyword()
                        ),
                        callee_span,
                    )
                    .with_label(callee_span, "used as a value here"),
                );
                return Value::Error;
            }
            _ => &[],
        };
        match self.bind_params(name, params, args, call_span) {
            Some(args) => Value::Decl(Instance::new(decl.kind, name, args)),
            None => Value::Error,
        }
    }

    fn binary(
        &mut self,
        op: BinOp,
        a: (Value, Span),
        b: (Value, Span),
        span: Span,
        env: &mut Env,
    ) -> Value {
        if matches!(a.0, Value::Error) || matches!(b.0, Value::Error) {
            return Value::Error;
        }
        if env.graph.is_some()
            && (matches!(a.0, Value::Tensor(_)) || matches!(b.0, Value::Tensor(_)))
        {
            return self.tensor_binary(op, a, b, span, env);
        }
        let (Some(x), Some(y)) = (self.num_in(&a.0, a.1, env), self.num_in(&b.0, b.1, env)) else {
            return Value::Error;
        };
        let same = |c: &mut Checker| {
            if x.dim != y.dim {
                c.unit_mismatch(op.symbol(), (x, a.1), (y, b.1), span);
                false
            } else {
                true
            }
        };
        match op {
            BinOp::Add | BinOp::Sub => {
                if !same(self) {
                    return Value::Error;
                }
                let v = if op == BinOp::Add {
                    x.value + y.value
                } else {
                    x.value - y.value
                };
                Value::Num(Quantity::new(v, x.dim))
            }
            BinOp::Mul => Value::Num(Quantity::new(x.value * y.value, x.dim.times(y.dim))),
            BinOp::Div | BinOp::Rem => {
                if y.value == 0.0 {
                    self.diags.push(
                        Diagnostic::error(Code::L042, "division by zero", span)
                            .with_label(b.1, "this is zero"),
                    );
                    return Value::Error;
                }
                if op == BinOp::Div {
                    Value::Num(Quantity::new(x.value / y.value, x.dim.per(y.dim)))
                } else {
                    if !same(self) {
                        return Value::Error;
                    }
                    Value::Num(Quantity::new(x.value % y.value, x.dim))
                }
            }
            _ => {
                if !same(self) {
                    return Value::Error;
                }
                Value::Bool(match op {
                    BinOp::Lt => x.value < y.value,
                    BinOp::Le => x.value <= y.value,
                    BinOp::Gt => x.value > y.value,
                    BinOp::Ge => x.value >= y.value,
                    BinOp::Eq => x.value == y.value,
                    _ => x.value != y.value,
                })
            }
        }
    }

    pub(crate) fn unit_mismatch(
        &mut self,
        op: &str,
        a: (Quantity, Span),
        b: (Quantity, Span),
        span: Span,
    ) -> Value {
        let help = if a.0.dim.per(b.0.dim) == Dim::TIME || b.0.dim.per(a.0.dim) == Dim::TIME {
            "one side is a rate; multiply or divide by a time to convert".to_string()
        } else {
            "both sides must measure the same thing".to_string()
        };
        self.diags.push(
            Diagnostic::error(
                Code::L040,
                format!(
                    "cannot apply `{op}` to {} and {}",
                    a.0.dim.describe(),
                    b.0.dim.describe()
                ),
                span,
            )
            .with_label(a.1, format!("this is in {}", unit_name(a.0.dim)))
            .with_label(b.1, format!("this is in {}", unit_name(b.0.dim)))
            .with_help(help),
        );
        Value::Error
    }

    /// A number, or a reported error. Reports undefined names.
    pub(crate) fn num(&mut self, v: &Value, span: Span) -> Option<Quantity> {
        let env = Env::new();
        self.num_in(v, span, &env)
    }

    pub(crate) fn num_in(&mut self, v: &Value, span: Span, env: &Env) -> Option<Quantity> {
        match v {
            Value::Num(q) => Some(*q),
            Value::Error => None,
            Value::Sym(n, s) => {
                self.undefined(n, *s, env);
                None
            }
            other => {
                self.type_error(other, span, "a number");
                None
            }
        }
    }

    /// A plain integer, or a reported error.
    pub(crate) fn int(&mut self, v: &Value, span: Span, what: &str) -> Option<i64> {
        self.int_in(v, span, what, &Env::new())
    }

    /// [`Self::int`], suggesting `env`'s local names for an undefined one.
    pub(crate) fn int_in(&mut self, v: &Value, span: Span, what: &str, env: &Env) -> Option<i64> {
        let q = self.num_in(v, span, env)?;
        if !q.dim.is_none() {
            self.diags.push(
                Diagnostic::error(
                    Code::L041,
                    format!("{what} must be a plain number, not {}", q.dim.describe()),
                    span,
                )
                .with_label(span, format!("this is in {}", unit_name(q.dim))),
            );
            return None;
        }
        match q.as_int() {
            Some(i) => Some(i),
            // A whole number too large for a double to count in steps of
            // one (2^53 and up): `1e18` is whole, and "must be a whole
            // number" misled.
            None if q.value.is_finite() && q.value.fract() == 0.0 => {
                self.diags.push(
                    Diagnostic::error(
                        Code::L046,
                        format!(
                            "{what} must be below 2^53 = 9007199254740992 in magnitude, got {q}"
                        ),
                        span,
                    )
                    .with_label(span, "too large for a whole number")
                    .with_help("counts, sizes and seeds must be whole numbers below 2^53"),
                );
                None
            }
            None => {
                self.diags.push(
                    Diagnostic::error(
                        Code::L045,
                        format!("{what} must be a whole number, got {}", q),
                        span,
                    )
                    .with_label(span, "not an integer"),
                );
                None
            }
        }
    }

    /// A positive integer (counts, sizes), or a reported error.
    pub(crate) fn count(&mut self, v: &Value, span: Span, what: &str) -> Option<u64> {
        self.count_in(v, span, what, &Env::new())
    }

    /// [`Self::count`], suggesting `env`'s local names for an undefined one.
    pub(crate) fn count_in(&mut self, v: &Value, span: Span, what: &str, env: &Env) -> Option<u64> {
        let i = self.int_in(v, span, what, env)?;
        if i < 1 {
            self.diags.push(
                Diagnostic::error(
                    Code::L046,
                    format!("{what} must be at least 1, got {i}"),
                    span,
                )
                .with_label(span, "too small"),
            );
            return None;
        }
        Some(i as u64)
    }

    pub(crate) fn undefined(&mut self, name: &str, span: Span, env: &Env) {
        let mut known: Vec<String> = env.names();
        known.extend(self.decls.keys().cloned());
        known.extend(self.lets.keys().cloned());
        let mut d = Diagnostic::error(Code::L030, format!("`{name}` is not defined"), span)
            .with_label(span, "not found in this scope");
        if let Some(s) = suggest(name, known.iter().map(|s| s.as_str())) {
            d = d.with_help(format!("did you mean `{s}`?"));
        }
        self.diags.push(d);
    }

    pub(crate) fn type_error(&mut self, got: &Value, span: Span, want: &str) -> Value {
        self.type_error_in(got, span, want, &Env::new())
    }

    /// [`Self::type_error`], suggesting `env`'s local names for an undefined one.
    pub(crate) fn type_error_in(
        &mut self,
        got: &Value,
        span: Span,
        want: &str,
        env: &Env,
    ) -> Value {
        match got {
            Value::Error => {}
            Value::Sym(n, s) => self.undefined(n, *s, env),
            _ => self.diags.push(
                Diagnostic::error(
                    Code::L043,
                    format!("expected {want}, found {}", got.describe()),
                    span,
                )
                .with_label(span, format!("this is {}", got.describe())),
            ),
        }
        Value::Error
    }
}

/// Names that legitimately evaluate to symbols (enum choices).
pub fn is_choice_name(n: &str) -> bool {
    crate::program::DType::parse(n).is_some()
        || matches!(
            n,
            "auto"
                | "none"
                | "selective"
                | "full"
                | "adam"
                | "adamw"
                | "sgd"
                | "sgd_momentum"
                | "adagrad"
                | "lamb"
                | "adafactor"
                | "relu"
                | "gelu"
                | "silu"
                | "sigmoid"
        )
}

pub fn unit_name(d: Dim) -> String {
    if d.is_none() {
        "plain numbers".to_string()
    } else {
        format!("`{d}`")
    }
}

/// "1 argument", "3 arguments".
pub fn count_of(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// "a" or "an" before `word`, by its first letter.
pub fn article(word: &str) -> &'static str {
    match word.trim_start_matches('`').chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u' | 'A' | 'E' | 'I' | 'O' | 'U') => "an",
        _ => "a",
    }
}

fn param_list(params: &[Param]) -> String {
    if params.is_empty() {
        return "none".into();
    }
    params
        .iter()
        .map(|p| format!("`{}`", p.name.name))
        .collect::<Vec<_>>()
        .join(", ")
}
