//! Values of the checker's evaluator.

use std::fmt;
use std::sync::Arc;

use crate::ast::DeclKind;
use crate::program::TensorId;
use crate::span::Span;
use crate::units::Quantity;

/// A declaration applied to arguments (all parameters bound).
///
/// An argument may itself be an instance (`D(prev = C(prev = B))`), so a
/// chain of instances, each derived from the one before, nests. Nothing
/// here walks the chain: the arguments are shared (`Arc`, so a clone is
/// O(1)), the memo key and the display label are computed once, when the
/// instance is made, from the nested instances' own (already bounded)
/// keys and labels, and an instance is dropped without recursion. A chain
/// of N links costs O(N), where the keys that spelled out every link made
/// it O(N^2) in time and memory (5,000 links: minutes and gigabytes).
#[derive(Clone, Debug)]
pub struct Instance {
    pub kind: DeclKind,
    pub name: String,
    pub args: Arc<Vec<(String, Value)>>,
    /// The memo key: equal for equal instances, and short (see [`Self::new`]).
    key: Arc<str>,
    /// What messages and the program print: `Name(a=1, b=2)`.
    label: Arc<str>,
}

/// Longest nested key or label written out in full inside another's; a
/// longer one is written as its declaration's name and a hash of its key
/// (in the key) or elided (in the label). Real nestings (a cluster of a
/// node: `RoCERail(server=GrandTeton(gpus=8), nodes=2048)`) are far below.
const SPELLED_OUT: usize = 160;

impl Instance {
    pub fn new(kind: DeclKind, name: impl Into<String>, args: Vec<(String, Value)>) -> Instance {
        Instance::with_digits(kind, name, args, 6)
    }

    /// [`Self::new`], its label's numbers printed to `digits` significant
    /// digits (a sweep's points closer than 6 digits).
    pub fn with_digits(
        kind: DeclKind,
        name: impl Into<String>,
        args: Vec<(String, Value)>,
        digits: usize,
    ) -> Instance {
        let name = name.into();
        let (key, label) = if args.is_empty() {
            (name.clone(), name.clone())
        } else {
            let mut key = format!("{name}(");
            let mut label = key.clone();
            for (i, (k, v)) in args.iter().enumerate() {
                if i > 0 {
                    key.push_str(", ");
                    label.push_str(", ");
                }
                match v {
                    Value::Decl(inner) => {
                        if inner.key.len() <= SPELLED_OUT {
                            key.push_str(&format!("{k}={}", inner.key));
                        } else {
                            key.push_str(&format!(
                                "{k}={}#{:032x}",
                                inner.name,
                                digest(&inner.key)
                            ));
                        }
                        if inner.label.len() <= SPELLED_OUT {
                            label.push_str(&format!("{k}={}", inner.label));
                        } else {
                            label.push_str(&format!("{k}={}(...)", inner.name));
                        }
                    }
                    v => {
                        // The key tells every two numbers apart (a
                        // number's value as Rust's shortest round-trip
                        // spelling, with its dimension: `80 GB` and
                        // `80.0000001 GB` shared one six-digit key, so the
                        // second was the first); the label prints `digits`.
                        match v {
                            Value::Num(q) => key.push_str(&format!("{k}={:?}", q)),
                            _ => key.push_str(&format!("{k}={v:.17}")),
                        }
                        label.push_str(&format!("{k}={v:.digits$}"));
                    }
                }
            }
            key.push(')');
            label.push(')');
            (key, label)
        };
        Instance {
            kind,
            name,
            args: Arc::new(args),
            key: key.into(),
            label: label.into(),
        }
    }

    /// The memo key: `Name` or `Name(a=1, b=2)`, with a nested instance
    /// whose own key is long written as `Name#hash` (so the key stays short
    /// however long the chain of instances it ends).
    pub fn key(&self) -> String {
        self.key.to_string()
    }

    /// `Name` or `Name(a=1, b=2)` for messages and the program; a long
    /// nested instance is written `Name(...)`.
    pub fn label(&self) -> String {
        self.label.to_string()
    }
}

/// A 128-bit FNV-1a digest of a key (deterministic across runs and
/// platforms, unlike `std`'s randomly seeded hasher), so two different
/// chains do not share a memo key.
fn digest(s: &str) -> u128 {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in s.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    h
}

impl PartialEq for Instance {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.key == other.key
    }
}

impl Drop for Instance {
    /// Unlinks a chain of instances iteratively: the derived drop would
    /// recurse once per link and overflow the stack on a long chain.
    fn drop(&mut self) {
        if Arc::strong_count(&self.args) > 1 {
            return;
        }
        let take = |i: &mut Instance| std::mem::replace(&mut i.args, Arc::new(Vec::new()));
        let mut stack = vec![take(self)];
        while let Some(args) = stack.pop() {
            if let Ok(args) = Arc::try_unwrap(args) {
                for (_, v) in args {
                    if let Value::Decl(mut inner) = v
                        && Arc::strong_count(&inner.args) == 1
                    {
                        stack.push(take(&mut inner));
                    }
                }
            }
        }
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
            // The formatter's precision passes on (`{:.17}`: more digits).
            Value::Num(q) => fmt::Display::fmt(q, f),
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
            Value::Decl(i) => f.write_str(&i.label),
            Value::Tensor(t) => write!(f, "%{}", t.0),
            Value::Dim(d) => write!(f, "{d}"),
            Value::Error => write!(f, "<error>"),
        }
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    /// An instance's key tells any two numbers apart, one double apart
    /// included, in every range its unit prints (17 printed digits did
    /// not: below 1 they printed 13 to 15 significant digits).
    #[test]
    fn instance_keys_tell_numbers_one_double_apart() {
        use crate::units::{Dim, Quantity};
        for x in [0.00123456789012345_f64, 0.5, 1.0 / 3.0, 80.0e9, 1.234e-12] {
            let y = f64::from_bits(x.to_bits() + 1);
            for dim in [Dim::BYTES, Dim::NONE, Dim::TIME] {
                let key = |v: f64| {
                    Instance::new(
                        DeclKind::Device,
                        "D",
                        vec![("hbm".to_string(), Value::Num(Quantity::new(v, dim)))],
                    )
                    .key
                    .to_string()
                };
                assert_ne!(key(x), key(y), "{x:e} and {y:e} share a key");
            }
        }
    }
}
