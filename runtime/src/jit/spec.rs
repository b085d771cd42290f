//! What a kernel computes, as plain data: the public vocabulary of the JIT.
//!
//! Shaped so: callers (the executor, the gradient pass, the bench) name
//! kernels with these hashable values and never see a Cranelift type; a
//! [`KernelSpec`] is both the compile-cache key and, through
//! [`KernelSpec::name`], the header of `--emit clif`.

/// A unary elementwise operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    Relu,
    Gelu,
    Silu,
    Sigmoid,
    /// Multiply by a constant (the f32's bits).
    Scale(u32),
    /// `d/dx relu(x)`: 1 where `x > 0`, else 0 (also for NaN).
    ReluGrad,
    /// `d/dx gelu(x)` of the tanh approximation.
    GeluGrad,
    /// `d/dx silu(x) = s (1 + x (1 - s))`, `s = sigmoid(x)`.
    SiluGrad,
    /// `d/dx sigmoid(x) = s (1 - s)`.
    SigmoidGrad,
}

/// A binary elementwise operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

/// A fused elementwise expression over input buffers of one length.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    Input(u8),
    Unary(Unary, Box<Expr>),
    Binary(Binary, Box<Expr>, Box<Expr>),
}

impl Expr {
    /// Number of input buffers the expression reads (highest index + 1).
    pub fn arity(&self) -> usize {
        match self {
            Expr::Input(i) => *i as usize + 1,
            Expr::Unary(_, a) => a.arity(),
            Expr::Binary(_, a, b) => a.arity().max(b.arity()),
        }
    }
    fn describe(&self) -> String {
        match self {
            Expr::Input(i) => format!("x{i}"),
            Expr::Unary(Unary::Scale(b), a) => {
                format!("scale{}({})", f32::from_bits(*b), a.describe())
            }
            Expr::Unary(u, a) => format!("{}({})", format!("{u:?}").to_lowercase(), a.describe()),
            Expr::Binary(o, a, b) => format!(
                "{}({}, {})",
                format!("{o:?}").to_lowercase(),
                a.describe(),
                b.describe()
            ),
        }
    }
}

/// Attention kernel shape: one device's heads of one attention op.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttentionSpec {
    /// Query heads held locally.
    pub heads: usize,
    pub head_dim: usize,
    pub seq_q: usize,
    pub seq_kv: usize,
    /// Query heads per key/value head (globally).
    pub group: usize,
    /// Global index of the first local query head.
    pub q_head_offset: usize,
    /// Global index of the first local key/value head.
    pub kv_head_offset: usize,
    /// Key/value heads held locally.
    pub kv_heads: usize,
    pub causal: bool,
}

/// Everything that identifies a compiled kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KernelSpec {
    /// `c [m, n] = a [m, k] @ packed(b) [k, n] (+ bias)`; `m` at run time.
    MatMul {
        k: usize,
        n: usize,
        bias: bool,
    },
    /// `out[i] = expr(inputs[..][i])`; length at run time.
    Elementwise {
        expr: Expr,
    },
    /// Per row of `dim`; rows at run time.
    RmsNorm {
        dim: usize,
    },
    LayerNorm {
        dim: usize,
    },
    Softmax {
        dim: usize,
    },
    /// Gradients of [`KernelSpec::RmsNorm`] per row of `dim`: `dx`
    /// (overwritten) and the gain's gradient (accumulated); rows at run time.
    RmsNormGrad {
        dim: usize,
    },
    /// Gradients of [`KernelSpec::LayerNorm`]: `dx` (overwritten), the
    /// gain's and the shift's gradients (accumulated).
    LayerNormGrad {
        dim: usize,
    },
    /// Gradient of [`KernelSpec::Softmax`] from its output `y`:
    /// `dx = y (dy - sum(dy y))` per row.
    SoftmaxGrad {
        dim: usize,
    },
    /// Batch at run time.
    Attention(AttentionSpec),
    /// Pooled row lookups: `ids` has `stride` ids per lookup row, the
    /// kernel reads column `col`; rows of `dim`; lookups, table rows, local
    /// range and column at run time.
    Gather {
        dim: usize,
        pooling: usize,
        stride: usize,
    },
    /// DLRM interaction of `n` pooled vectors and the dense vector of `dim`;
    /// samples at run time.
    Interact {
        n: usize,
        dim: usize,
    },
}

impl KernelSpec {
    /// A short readable name (also the header of `--emit clif`).
    pub fn name(&self) -> String {
        match self {
            KernelSpec::MatMul { k, n, bias } => {
                format!("matmul k={k} n={n}{}", if *bias { " +bias" } else { "" })
            }
            KernelSpec::Elementwise { expr } => format!("elementwise {}", expr.describe()),
            KernelSpec::RmsNorm { dim } => format!("rmsnorm dim={dim}"),
            KernelSpec::LayerNorm { dim } => format!("layernorm dim={dim}"),
            KernelSpec::Softmax { dim } => format!("softmax dim={dim}"),
            KernelSpec::RmsNormGrad { dim } => format!("rmsnorm_grad dim={dim}"),
            KernelSpec::LayerNormGrad { dim } => format!("layernorm_grad dim={dim}"),
            KernelSpec::SoftmaxGrad { dim } => format!("softmax_grad dim={dim}"),
            KernelSpec::Attention(a) => format!(
                "attention heads={} head_dim={} seq_q={} seq_kv={} group={} q_off={} kv_off={} kv_heads={}{}",
                a.heads,
                a.head_dim,
                a.seq_q,
                a.seq_kv,
                a.group,
                a.q_head_offset,
                a.kv_head_offset,
                a.kv_heads,
                if a.causal { " causal" } else { "" }
            ),
            KernelSpec::Gather {
                dim,
                pooling,
                stride,
            } => format!("gather dim={dim} pooling={pooling} stride={stride}"),
            KernelSpec::Interact { n, dim } => format!("interact n={n} dim={dim}"),
        }
    }
}
