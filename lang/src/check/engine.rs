//! `engine NAME { ... }`: a serving engine as a declaration.
//!
//! An engine is software, not hardware: the host time an inference
//! server spends around each forward pass and the speed of its
//! decode-attention kernel differ by engine and release, not by device,
//! so they live in their own declaration (stdlib/engines/) rather than in
//! a device's `efficiency` record, and a `serve` workload names the one it
//! runs on. The declaration is a flat list of `key = value` terms, checked
//! here apart from `decls.rs` because every term has its own unit and
//! range and every violation (an unknown key, with a did-you-mean, or a
//! value out of range) is the one code `L094`; a unit that is not the
//! term's is `L041` as everywhere. Every term defaults to the ideal
//! engine (no host time, the device's kernels), so a file without an
//! engine is priced as before.

use crate::ast::{DeclKind, ItemForm};
use crate::check::Checker;
use crate::check::suggest;
use crate::check::value::{Instance, Value};
use crate::diagnostic::{Code, Diagnostic};
use crate::program::Engine;
use crate::span::Span;
use crate::units::{Dim, Quantity};

/// The terms the serving iteration model reads (compiler/src/serve/
/// timing.rs), with their dimension, accepted range `[lo, hi]` (a lower
/// bound of 0 is open for the fractions), default and an example.
pub const ENGINE_TERMS: &[(&str, Dim, f64, f64, f64, &str)] = &[
    // Host time paid by every iteration, whatever it holds.
    (
        "iteration_overhead",
        Dim::TIME,
        0.0,
        1.0,
        0.0,
        "iteration_overhead = 5 ms",
    ),
    // Host time per scheduled sequence per iteration.
    (
        "seq_overhead",
        Dim::TIME,
        0.0,
        1.0,
        0.0,
        "seq_overhead = 40 us",
    ),
    // Decode-attention speed relative to the device's `infer` factors.
    (
        "kv_efficiency",
        Dim::NONE,
        0.0,
        1.0,
        1.0,
        "kv_efficiency = 0.5",
    ),
    // Time from a request's arrival to the scheduler (the API server:
    // HTTP, tokenisation, the hand-off to the engine core).
    (
        "request_overhead",
        Dim::TIME,
        0.0,
        1.0,
        0.0,
        "request_overhead = 5 ms",
    ),
    // Seconds the front end's one process is busy per request (HTTP,
    // tokenisation, the hand-off): requests take turns, so a burst
    // queues there.
    (
        "frontend_time",
        Dim::TIME,
        0.0,
        1.0,
        0.0,
        "frontend_time = 2 ms",
    ),
];

/// What `gantry calibrate --fit` records next to the terms it fitted: the
/// rows (plans) and the leave-one-out |relative error| median and worst.
pub const ENGINE_RECORD_KEYS: &[(&str, f64, &str)] = &[
    ("fit_rows", 1e6, "fit_rows = 13"),
    ("loo_median", 100.0, "loo_median = 0.08"),
    ("loo_max", 100.0, "loo_max = 0.3"),
];

/// Every key an engine takes.
pub const ENGINE_KEYS: &[&str] = &[
    "iteration_overhead",
    "seq_overhead",
    "kv_efficiency",
    "request_overhead",
    "frontend_time",
    "fit_rows",
    "loo_median",
    "loo_max",
];

impl Checker {
    /// A number of `dim` (`L041` for another unit, through the shared
    /// check); its range is the caller's (`L094`).
    fn engine_number(
        &mut self,
        v: &Value,
        span: Span,
        dim: Dim,
        what: &str,
        example: &str,
    ) -> Option<f64> {
        let q = self.num(v, span)?;
        if q.dim != dim {
            return self.quantity(v, span, dim, what, example);
        }
        Some(q.value)
    }

    fn bad_engine(&mut self, span: Span, msg: String, label: &str, help: String) {
        self.diags.push(
            Diagnostic::error(Code::L094, msg, span)
                .with_label(span, label.to_string())
                .with_help(help),
        );
    }

    /// Checks engine `inst` (memoized): `None` when it has an error.
    pub(crate) fn engine(&mut self, inst: &Instance, use_span: Span) -> Option<Engine> {
        let key = inst.key();
        if let Some(e) = self.memo_engines.get(&key) {
            return e.clone();
        }
        let (b, before, mut env) = self.open(inst, use_span)?;
        let mut e = Engine::ideal(&inst.label());
        e.span = b.name.span;
        let mut seen: Vec<(String, Span)> = Vec::new();
        let (mut loo_median, mut loo_max) = (None, None);
        for it in &b.items {
            let name = it.key.name.as_str();
            if name.is_empty() || self.broken(it.span) {
                continue; // a syntax error, already reported
            }
            if !ENGINE_KEYS.contains(&name) {
                let help = match suggest(name, ENGINE_KEYS.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("an engine takes: {}", ENGINE_KEYS.join(", ")),
                };
                self.bad_engine(
                    it.key.span,
                    format!("engine `{}` has no term `{name}`", inst.name),
                    "unknown engine term",
                    help,
                );
                continue;
            }
            if it.form != ItemForm::Assign || it.count.is_some() {
                self.diags.push(
                    Diagnostic::error(
                        Code::L043,
                        format!("engine term `{name}` is written in the wrong form"),
                        it.span,
                    )
                    .with_label(it.span, "written like this")
                    .with_help(format!("write it as `{name} = value`")),
                );
                continue;
            }
            if let Some((_, first)) = seen.iter().find(|(n, _)| n == name) {
                self.diags.push(
                    Diagnostic::error(
                        Code::L062,
                        format!("engine term `{name}` is given twice"),
                        it.key.span,
                    )
                    .with_label(it.key.span, "given again here")
                    .with_label(*first, "first given here")
                    .with_help("remove one of them"),
                );
                continue;
            }
            seen.push((name.to_string(), it.key.span));
            let v = self.eval(&it.value, &mut env);
            let vs = it.value.span;
            if let Some(&(_, dim, lo, hi, _, example)) =
                ENGINE_TERMS.iter().find(|(n, ..)| *n == name)
            {
                let what = format!("engine `{name}`");
                let Some(x) = self.engine_number(&v, vs, dim, &what, example) else {
                    continue;
                };
                let fraction = dim.is_none();
                let ok = if fraction {
                    x > lo && x <= hi
                } else {
                    x >= lo && x <= hi
                };
                if !ok {
                    let range = if fraction {
                        "(0, 1]".to_string()
                    } else {
                        format!("[0, {}]", Quantity::new(hi, dim))
                    };
                    self.bad_engine(
                        vs,
                        format!("{what} must lie in {range}, got {}", Quantity::new(x, dim)),
                        "out of range",
                        format!("write it like `{example}`"),
                    );
                    continue;
                }
                match name {
                    "iteration_overhead" => e.iteration_overhead = x,
                    "seq_overhead" => e.seq_overhead = x,
                    "request_overhead" => e.request_overhead = x,
                    "frontend_time" => e.frontend_time = x,
                    _ => e.kv_efficiency = x,
                }
                e.declared.push(name.to_string());
            } else if let Some(&(_, hi, example)) =
                ENGINE_RECORD_KEYS.iter().find(|(n, ..)| *n == name)
            {
                let what = format!("engine `{name}`");
                let Some(x) = self.engine_number(&v, vs, Dim::NONE, &what, example) else {
                    continue;
                };
                let whole = name != "fit_rows" || x.fract() == 0.0;
                if !(x >= 0.0 && x <= hi && whole) {
                    self.bad_engine(
                        vs,
                        format!(
                            "{what} must be {} from 0 to {}, got {}",
                            if name == "fit_rows" {
                                "a whole number"
                            } else {
                                "a fraction"
                            },
                            crate::units::format_number(hi),
                            crate::units::format_number(x)
                        ),
                        "out of range",
                        format!("`gantry calibrate --fit` writes it, e.g. `{example}`"),
                    );
                    continue;
                }
                match name {
                    "fit_rows" => e.fit_rows = Some(x as u64),
                    "loo_median" => loo_median = Some(x),
                    _ => loo_max = Some(x),
                }
            }
        }
        if let (Some(m), Some(x)) = (loo_median, loo_max) {
            e.loo = Some((m, x));
        }
        self.leave(&key);
        let ok = self.error_count() == before && !self.broken(b.span);
        let result = ok.then_some(e);
        if let Some(e) = &result {
            self.program.engines.insert(key.clone(), e.clone());
        }
        self.memo_engines.insert(key, result.clone());
        result
    }

    /// The `engine = NAME` setting of a `serve` record: a declared engine,
    /// else `L095` on the name (with the closest declared engine).
    pub(crate) fn serve_engine(&mut self, v: &Value, span: Span) -> Option<Engine> {
        match v {
            Value::Decl(i) if i.kind == DeclKind::Engine => self.engine(i, span),
            Value::Error => None,
            other => {
                let engines: Vec<String> = self
                    .decls
                    .iter()
                    .filter(|(_, d)| d.kind == DeclKind::Engine)
                    .map(|(n, _)| n.clone())
                    .collect();
                let (msg, label) = match other {
                    Value::Sym(n, _) => (
                        format!("`{n}` is not a declared engine"),
                        "no engine of this name".to_string(),
                    ),
                    Value::Decl(i) => (
                        format!("`{}` is a {}, not an engine", i.name, i.kind.keyword()),
                        "expected an engine".to_string(),
                    ),
                    o => (
                        format!("`engine` names an engine, not {}", o.describe()),
                        "expected an engine's name".to_string(),
                    ),
                };
                let near = match other {
                    Value::Sym(n, _) | Value::Decl(Instance { name: n, .. }) => {
                        suggest(n, engines.iter().map(|s| s.as_str()))
                    }
                    _ => None,
                };
                let help = match near {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if engines.is_empty() => "declare it with `engine NAME { ... }` (stdlib/engines/), and import its file".to_string(),
                    None => format!("declared engines: {}", engines.join(", ")),
                };
                self.diags.push(
                    Diagnostic::error(Code::L095, msg, span)
                        .with_label(span, label)
                        .with_help(help),
                );
                None
            }
        }
    }
}
