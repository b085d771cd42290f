//! Symbolic tensor shapes.
//!
//! A dimension is a monomial: an integer coefficient times a product of
//! symbols (`batch`, `seq`, `2 * seq`, `batch * seq`). Model parameters are
//! concrete when a model is instantiated, so only the workload-bound symbols
//! stay symbolic; monomials are closed under the products and exact
//! divisions that shape rules need (`reshape`, head splits), and equality is
//! structural. Workloads bind the symbols to numbers with [`Dim::eval`].

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Dim {
    pub coef: i64,
    /// Symbols, sorted, with repetition for powers.
    pub syms: Vec<String>,
}

impl Dim {
    pub fn known(n: i64) -> Dim {
        Dim {
            coef: n,
            syms: Vec::new(),
        }
    }
    pub fn sym(name: &str) -> Dim {
        Dim {
            coef: 1,
            syms: vec![name.to_string()],
        }
    }
    pub fn as_known(&self) -> Option<i64> {
        self.syms.is_empty().then_some(self.coef)
    }
    pub fn mul(&self, o: &Dim) -> Dim {
        let mut syms = self.syms.clone();
        syms.extend(o.syms.iter().cloned());
        syms.sort();
        Dim {
            coef: self.coef.saturating_mul(o.coef),
            syms,
        }
    }
    /// Exact division; `None` when the result is not a monomial with an
    /// integer coefficient.
    pub fn div(&self, o: &Dim) -> Option<Dim> {
        if o.coef == 0 || self.coef % o.coef != 0 {
            return None;
        }
        let mut syms = self.syms.clone();
        for s in &o.syms {
            let i = syms.iter().position(|x| x == s)?;
            syms.remove(i);
        }
        Some(Dim {
            coef: self.coef / o.coef,
            syms,
        })
    }
    /// The value under a binding of every symbol.
    pub fn eval(&self, binding: &BTreeMap<String, i64>) -> Option<i64> {
        let mut v = self.coef;
        for s in &self.syms {
            v = v.checked_mul(*binding.get(s)?)?;
        }
        Some(v)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.syms.is_empty() {
            return write!(f, "{}", self.coef);
        }
        let mut parts = Vec::new();
        if self.coef != 1 {
            parts.push(self.coef.to_string());
        }
        parts.extend(self.syms.iter().cloned());
        write!(f, "{}", parts.join("*"))
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn last(&self) -> Option<&Dim> {
        self.0.last()
    }
    /// Product of all dimensions.
    pub fn numel(&self) -> Dim {
        self.0.iter().fold(Dim::known(1), |a, d| a.mul(d))
    }
    pub fn with_last(&self, d: Dim) -> Shape {
        let mut v = self.0.clone();
        if let Some(l) = v.last_mut() {
            *l = d;
        }
        Shape(v)
    }
    pub fn eval(&self, binding: &BTreeMap<String, i64>) -> Option<Vec<i64>> {
        self.0.iter().map(|d| d.eval(binding)).collect()
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monomials_multiply_and_divide() {
        let bs = Dim::sym("batch").mul(&Dim::sym("seq"));
        assert_eq!(bs.to_string(), "batch*seq");
        let twice = bs.mul(&Dim::known(2));
        assert_eq!(twice.to_string(), "2*batch*seq");
        assert_eq!(
            twice.div(&Dim::sym("seq")),
            Some(Dim::sym("batch").mul(&Dim::known(2)))
        );
        assert_eq!(Dim::known(10).div(&Dim::known(3)), None);
        assert_eq!(Dim::known(4096).div(&Dim::known(32)), Some(Dim::known(128)));
        assert_eq!(Dim::sym("batch").div(&Dim::sym("seq")), None);
    }

    #[test]
    fn equality_is_order_independent() {
        let a = Dim::sym("seq").mul(&Dim::sym("batch"));
        let b = Dim::sym("batch").mul(&Dim::sym("seq"));
        assert_eq!(a, b);
    }

    #[test]
    fn numel_and_eval() {
        let s = Shape(vec![Dim::sym("batch"), Dim::sym("seq"), Dim::known(4096)]);
        assert_eq!(s.to_string(), "[batch, seq, 4096]");
        let mut b = BTreeMap::new();
        b.insert("batch".to_string(), 2);
        b.insert("seq".to_string(), 8);
        assert_eq!(s.numel().eval(&b), Some(2 * 8 * 4096));
        assert_eq!(s.eval(&b), Some(vec![2, 8, 4096]));
        b.remove("seq");
        assert_eq!(s.eval(&b), None);
    }
}
