//! Values of the checker's evaluator.

use std::fmt;

use crate::ast::DeclKind;
use crate::program::TensorId;
use crate::span::Span;
use crate::units::Quantity;

/// A declaration applied to arguments (all parameters bound).
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub kind: DeclKind,
    pub name: String,
    pub args: Vec<(String, Value)>,
}

impl Instance {
    /// `Name` or `Name(a=1, b=2)`: the key for memoization and display.
    pub fn key(&self) -> String {
        if self.args.is_empty() {
            return self.name.clone();
        }
        let args: Vec<String> = self.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}({})", self.name, args.join(", "))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Num(Quantity),
    Bool(bool),
    Str(String),
    /// A bare name bound to nothing: an enum choice such as `bf16`, or a
    /// typo that a consumer expecting a number reports as undefined.
    Sym(String, Span),
    List(Vec<(Value, Span)>),
    Set(Vec<(Value, Span)>),
    /// `lo..hi` (doubling in sweeps) or `lo..hi step s` (linear).
    Range(Quantity, Quantity, Option<Quantity>),
    Record(Vec<(String, Span, Value, Span)>),
    Pair(Box<(Value, Span)>, Box<(Value, Span)>),
    /// A call of a built-in constructor such as `switch(450 GB/s)`.
    Ctor(String, Vec<(Option<String>, Value, Span)>),
    Decl(Instance),
    Tensor(TensorId),
    /// A symbolic tensor dimension such as `batch*seq`, from a product of
    /// symbols in a shape list (`reshape(x, [batch * seq, d])`).
    Dim(crate::shape::Dim),
    /// Already reported; consumers stay quiet to avoid cascades.
    Error,
}

impl Value {
    pub fn describe(&self) -> String {
        match self {
            Value::Num(q) => q.dim.describe(),
            Value::Bool(_) => "a boolean".into(),
            Value::Str(_) => "a string".into(),
            Value::Sym(n, _) => format!("the name `{n}`"),
            Value::List(_) => "a list".into(),
            Value::Set(_) => "a set".into(),
            Value::Range(..) => "a range".into(),
            Value::Record(_) => "a record `{ ... }`".into(),
            Value::Pair(..) => "a `capacity @ bandwidth` pair".into(),
            Value::Ctor(n, _) => format!("`{n}(...)`"),
            Value::Decl(i) => format!("{} `{}`", i.kind.keyword(), i.name),
            Value::Tensor(_) => "a tensor".into(),
            Value::Dim(d) => format!("the dimension `{d}`"),
            Value::Error => "an invalid value".into(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |xs: &[(Value, Span)]| {
            xs.iter()
                .map(|(v, _)| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Value::Num(q) => write!(f, "{q}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Sym(n, _) => write!(f, "{n}"),
            Value::List(xs) => write!(f, "[{}]", list(xs)),
            Value::Set(xs) => write!(f, "{{{}}}", list(xs)),
            Value::Range(a, b, None) => write!(f, "{a}..{b}"),
            Value::Range(a, b, Some(s)) => write!(f, "{a}..{b} step {s}"),
            Value::Record(fs) => {
                let parts: Vec<String> = fs.iter().map(|(k, _, v, _)| format!("{k}={v}")).collect();
                write!(f, "{{{}}}", parts.join(", "))
            }
            Value::Pair(a, b) => write!(f, "{} @ {}", a.0, b.0),
            Value::Ctor(n, args) => {
                let parts: Vec<String> = args
                    .iter()
                    .map(|(k, v, _)| match k {
                        Some(k) => format!("{k}={v}"),
                        None => v.to_string(),
                    })
                    .collect();
                write!(f, "{n}({})", parts.join(", "))
            }
            Value::Decl(i) => write!(f, "{}", i.key()),
            Value::Tensor(t) => write!(f, "%{}", t.0),
            Value::Dim(d) => write!(f, "{d}"),
            Value::Error => write!(f, "<error>"),
        }
    }
}
