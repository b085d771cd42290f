//! Kernel generation with Cranelift: the only module with `unsafe`.
//!
//! A [`Jit`] is a reusable context: it owns the `JITModule` (the code
//! memory), Cranelift's compilation context and the function-builder
//! context, and a cache of compiled kernels keyed by [`KernelSpec`]. Each
//! kernel is built by a short-lived `Gen` (a `FunctionBuilder` plus
//! helpers), defined, finalized and cached. Cranelift types never leave this
//! file: callers describe kernels with plain data and call them through
//! typed, length-checked methods, so no caller can make a kernel read or
//! write outside its buffers. Function pointers never escape the context;
//! dropping it frees the code.
//!
//! Shapes are baked in as constants (`k`, `n`, `dim`, head sizes, ...);
//! only the batch-like outer count (rows, lookups, samples) is a runtime
//! argument, so one kernel serves every microbatch and every expert's
//! share of tokens. Every kernel has one ABI:
//! `extern "C" fn(ptrs: *const *mut f32, ints: *const i64)`.
//!
//! The gather kernel also calls one host function, `host_prefetch`
//! (Cranelift has no prefetch instruction): it prefetches the table rows
//! of lookups a block ahead, hints that read nothing and never fault.
//!
//! Vectors are 128 bits (`f32x4`; the x64 backend has no wider float
//! vectors): width comes from unrolling with independent accumulators.
//! Matrix products read the right-hand matrix *packed* ([`pack_b`]):
//! panels of [`NR`] columns, each `k` rows of `NR` contiguous floats,
//! zero-padded, so that the micro-kernel streams it linearly. Weights are
//! packed once when they are made.

use std::collections::HashMap;

use cranelift_codegen::Context;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    AbiParam, Endianness, FuncRef, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Type,
    UserFuncName, Value, types,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module, default_libcall_names};

use crate::error::{RCode, RuntimeError};

/// Columns per packed panel of a matrix product's right-hand side.
pub const NR: usize = 8;
/// Rows of the matrix-product micro-kernel (4 x 8: 8 accumulator registers).
const MR: usize = 4;
/// Steps of `k` per iteration of the micro-kernel's loop.
const KU: usize = 2;
/// Rows per cache block of the left-hand side.
const MC: i64 = 48;
/// Keys per block of the attention kernel's online softmax.
pub const KEY_BLOCK: usize = 64;
/// Lookups per block of the gather kernel: one call prefetches the rows
/// of a later block, then the block is copied.
const GATHER_BLOCK: i64 = 8;
/// Lookups between a row's prefetch and its copy (a multiple of
/// [`GATHER_BLOCK`]): about the rows in flight from memory.
const GATHER_AHEAD: i64 = 16;
/// Most bytes prefetched per lookup (the start of a pooled run of rows;
/// the hardware prefetcher streams the rest).
const PREFETCH_CAP: usize = 1024;

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

type KernelFn = unsafe extern "C" fn(*const *mut f32, *const i64);

/// The gather kernel's prefetch: `bytes` from each of the `n` addresses
/// in `addrs` (0: none), clipped at `end`, into the L2 cache (`T1`: on
/// this host `T0` is slower for random rows from DRAM). Prefetches are
/// hints: they read no data and never fault, whatever the address.
#[cfg(target_arch = "x86_64")]
extern "C" fn host_prefetch(addrs: *const usize, n: i64, bytes: i64, end: usize) {
    use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
    for i in 0..n.max(0) as usize {
        // SAFETY: the kernel passes its stack array of at least `n`
        // addresses (see `Gen::gather`).
        let a = unsafe { *addrs.add(i) };
        if a == 0 {
            continue;
        }
        let stop = end.min(a.saturating_add(bytes.max(0) as usize));
        // From the start of the first line (rows need not be aligned).
        let mut p = a & !63;
        while p < stop {
            // SAFETY: a prefetch is a hint: it reads nothing and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) };
            p += 64;
        }
    }
}

extern "C" fn host_fmaf(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

fn jit_err(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::new(RCode::R005, format!("kernel compilation failed: {what}"))
        .with_help("this is a runtime bug; please report it with the command line")
}

fn buffer_err(kernel: &str, what: &str, need: usize, have: usize) -> RuntimeError {
    RuntimeError::new(
        RCode::R005,
        format!("kernel `{kernel}` needs {need} floats of {what}, got {have}"),
    )
    .with_help("this is a runtime bug; please report it with the command line")
}

/// A JIT module for the host CPU at Cranelift optimization level `opt`.
fn host_module(opt: &str) -> Result<JITModule, RuntimeError> {
    let mut flags = settings::builder();
    for (k, v) in [
        ("opt_level", opt),
        ("is_pic", "false"),
        ("use_colocated_libcalls", "false"),
    ] {
        flags.set(k, v).map_err(jit_err)?;
    }
    let isa = cranelift_native::builder()
        .map_err(jit_err)?
        .finish(settings::Flags::new(flags))
        .map_err(jit_err)?;
    let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
    // Without the FMA feature Cranelift lowers `fma` to a call to `fmaf`.
    builder.symbol("fmaf", host_fmaf as *const u8);
    #[cfg(target_arch = "x86_64")]
    builder.symbol("gantry_prefetch", host_prefetch as *const u8);
    Ok(JITModule::new(builder))
}

/// The JIT context: code memory, compilation contexts and a kernel cache.
pub struct Jit {
    module: Option<JITModule>,
    /// Matrix products: compiled without Cranelift's mid-end optimizer,
    /// so instructions stay in the order they are built (see `Gen::micro`).
    plain: Option<JITModule>,
    ctx: Context,
    fctx: FunctionBuilderContext,
    cache: HashMap<KernelSpec, KernelFn>,
    capture: bool,
    clif: Vec<(String, String)>,
    capture_asm: bool,
    asm: Vec<(String, String)>,
    scratch: Vec<f32>,
    next_id: u32,
}

impl Drop for Jit {
    fn drop(&mut self) {
        self.cache.clear();
        for m in [self.module.take(), self.plain.take()]
            .into_iter()
            .flatten()
        {
            // SAFETY: kernel pointers never leave this context (they are only
            // called from its methods, which borrow it), so once the context
            // is dropped no kernel is running or can be called again.
            unsafe { m.free_memory() };
        }
    }
}

impl Jit {
    /// A context for the host CPU.
    pub fn new() -> Result<Jit, RuntimeError> {
        let module = host_module("speed")?;
        let plain = host_module("none")?;
        Ok(Jit {
            ctx: module.make_context(),
            module: Some(module),
            plain: Some(plain),
            fctx: FunctionBuilderContext::new(),
            cache: HashMap::new(),
            capture: false,
            clif: Vec::new(),
            capture_asm: false,
            asm: Vec::new(),
            scratch: Vec::new(),
            next_id: 0,
        })
    }

    /// Keeps the Cranelift IR text of every kernel compiled from now on.
    pub fn with_clif(mut self, on: bool) -> Jit {
        self.capture = on;
        self
    }

    /// The IR of the kernels compiled so far (with [`Jit::with_clif`]), by name.
    pub fn clif(&self) -> &[(String, String)] {
        &self.clif
    }

    /// Keeps the machine code (Cranelift's disassembly of the final
    /// instructions, registers allocated) of every kernel compiled from now on.
    pub fn with_asm(mut self, on: bool) -> Jit {
        self.capture_asm = on;
        self
    }

    /// The machine code of the kernels compiled so far (with
    /// [`Jit::with_asm`]), by name.
    pub fn asm(&self) -> &[(String, String)] {
        &self.asm
    }

    /// Number of kernels compiled so far.
    pub fn compiled(&self) -> usize {
        self.cache.len()
    }

    /// Compiles the kernel of `spec` unless it is cached.
    pub fn prepare(&mut self, spec: &KernelSpec) -> Result<(), RuntimeError> {
        if !self.cache.contains_key(spec) {
            let f = self.compile(spec)?;
            self.cache.insert(spec.clone(), f);
        }
        Ok(())
    }

    /// Compiles the kernel of `spec` again, replacing the cached one (for
    /// timing compilation).
    pub fn compile_fresh(&mut self, spec: &KernelSpec) -> Result<(), RuntimeError> {
        let f = self.compile(spec)?;
        self.cache.insert(spec.clone(), f);
        Ok(())
    }

    fn compile(&mut self, spec: &KernelSpec) -> Result<KernelFn, RuntimeError> {
        let module = if matches!(spec, KernelSpec::MatMul { .. }) {
            self.plain.as_mut()
        } else {
            self.module.as_mut()
        }
        .ok_or_else(|| jit_err("the context was freed"))?;
        let cfg = module.target_config();
        let ptr = cfg.pointer_type();
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(ptr));
        let name = format!("k{}", self.next_id);
        self.next_id += 1;
        let id = module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(jit_err)?;
        self.ctx.func.signature = sig;
        self.ctx.func.name = UserFuncName::user(0, id.as_u32());
        // The gather kernel prefetches rows through a host function
        // (Cranelift has no prefetch instruction); x86-64 only.
        let prefetch = if cfg!(target_arch = "x86_64") && matches!(spec, KernelSpec::Gather { .. })
        {
            let mut psig = module.make_signature();
            for ty in [ptr, types::I64, types::I64, ptr] {
                psig.params.push(AbiParam::new(ty));
            }
            let pid = module
                .declare_function("gantry_prefetch", Linkage::Import, &psig)
                .map_err(jit_err)?;
            Some(module.declare_func_in_func(pid, &mut self.ctx.func))
        } else {
            None
        };
        {
            let b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let mut g = Gen::new(b, ptr);
            let entry = g.b.create_block();
            g.b.append_block_params_for_function_params(entry);
            g.b.switch_to_block(entry);
            let ptrs = g.b.block_params(entry)[0];
            let ints = g.b.block_params(entry)[1];
            match spec {
                KernelSpec::MatMul { k, n, bias } => g.matmul(ptrs, ints, *k, *n, *bias),
                KernelSpec::Elementwise { expr } => g.elementwise(ptrs, ints, expr),
                KernelSpec::RmsNorm { dim } => g.norm(ptrs, ints, *dim, false),
                KernelSpec::LayerNorm { dim } => g.norm(ptrs, ints, *dim, true),
                KernelSpec::Softmax { dim } => g.softmax(ptrs, ints, *dim),
                KernelSpec::RmsNormGrad { dim } => g.norm_grad(ptrs, ints, *dim, false),
                KernelSpec::LayerNormGrad { dim } => g.norm_grad(ptrs, ints, *dim, true),
                KernelSpec::SoftmaxGrad { dim } => g.softmax_grad(ptrs, ints, *dim),
                KernelSpec::Attention(a) => g.attention(ptrs, ints, a),
                KernelSpec::Gather {
                    dim,
                    pooling,
                    stride,
                } => g.gather(ptrs, ints, *dim, *pooling, *stride, prefetch),
                KernelSpec::Interact { n, dim } => g.interact(ptrs, ints, *n, *dim),
            }
            g.b.ins().return_(&[]);
            g.b.seal_all_blocks();
            g.b.finalize(cfg);
        }
        if self.capture {
            self.clif
                .push((spec.name(), self.ctx.func.display().to_string()));
        }
        self.ctx.set_disasm(self.capture_asm);
        let defined = module.define_function(id, &mut self.ctx);
        if self.capture_asm
            && let Some(text) = self.ctx.compiled_code().and_then(|c| c.vcode.clone())
        {
            self.asm.push((spec.name(), text));
        }
        module.clear_context(&mut self.ctx);
        defined.map_err(jit_err)?;
        module.finalize_definitions().map_err(jit_err)?;
        let code = module.get_finalized_function(id);
        // SAFETY: `code` is the entry of the function just defined and
        // finalized with exactly this signature (two pointer arguments, no
        // results, the platform's default calling convention).
        Ok(unsafe { std::mem::transmute::<*const u8, KernelFn>(code) })
    }

    fn call(
        &mut self,
        spec: &KernelSpec,
        ptrs: &[*mut f32],
        ints: &[i64],
    ) -> Result<(), RuntimeError> {
        self.prepare(spec)?;
        let f = *self
            .cache
            .get(spec)
            .ok_or_else(|| jit_err("kernel missing from the cache"))?;
        // SAFETY: every public caller checked that each buffer in `ptrs` holds
        // at least as many floats as the kernel of `spec` touches for the
        // runtime counts in `ints` (see the `need` computations), that output
        // buffers come from `&mut` slices (so they alias nothing else), and
        // `f` was compiled for `spec` by this context, which is alive.
        unsafe { f(ptrs.as_ptr(), ints.as_ptr()) };
        Ok(())
    }

    /// `c [m, n] = a [m, k] @ b (+ bias)`, with `b` packed by [`pack_b`].
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        packed_b: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::MatMul {
            k,
            n,
            bias: bias.is_some(),
        };
        let nm = spec.name();
        check(&nm, "a", m * k, a.len())?;
        check(&nm, "packed b", packed_len(k, n), packed_b.len())?;
        check(&nm, "c", m * n, c.len())?;
        if let Some(b) = bias {
            check(&nm, "bias", n, b.len())?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let bias_ptr = bias.map_or(std::ptr::null_mut(), |b| b.as_ptr() as *mut f32);
        self.call(
            &spec,
            &[
                a.as_ptr() as *mut f32,
                packed_b.as_ptr() as *mut f32,
                bias_ptr,
                c.as_mut_ptr(),
            ],
            &[m as i64],
        )
    }

    /// `out[i] = expr(inputs[0][i], inputs[1][i], ...)`.
    pub fn elementwise(
        &mut self,
        expr: &Expr,
        inputs: &[&[f32]],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::Elementwise { expr: expr.clone() };
        let nm = spec.name();
        if inputs.len() < expr.arity() {
            return Err(buffer_err(&nm, "input buffers", expr.arity(), inputs.len()));
        }
        for x in inputs {
            check(&nm, "input", out.len(), x.len())?;
        }
        let mut ptrs: Vec<*mut f32> = inputs.iter().map(|x| x.as_ptr() as *mut f32).collect();
        ptrs.push(out.as_mut_ptr());
        self.call(&spec, &ptrs, &[out.len() as i64])
    }

    /// RMS normalization of rows of `dim` with gain `g`.
    pub fn rmsnorm(
        &mut self,
        dim: usize,
        x: &[f32],
        g: &[f32],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::RmsNorm { dim };
        self.rows_kernel(spec, dim, x, &[g], out)
    }

    /// Layer normalization of rows of `dim` with gain `g` and shift `b`.
    pub fn layernorm(
        &mut self,
        dim: usize,
        x: &[f32],
        g: &[f32],
        b: &[f32],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::LayerNorm { dim };
        self.rows_kernel(spec, dim, x, &[g, b], out)
    }

    /// Softmax over rows of `dim`.
    pub fn softmax(&mut self, dim: usize, x: &[f32], out: &mut [f32]) -> Result<(), RuntimeError> {
        self.rows_kernel(KernelSpec::Softmax { dim }, dim, x, &[], out)
    }

    fn rows_kernel(
        &mut self,
        spec: KernelSpec,
        dim: usize,
        x: &[f32],
        params: &[&[f32]],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let nm = spec.name();
        if dim == 0 {
            return Ok(());
        }
        let rows = x.len() / dim;
        check(&nm, "input", rows * dim, x.len())?;
        check(&nm, "output", rows * dim, out.len())?;
        for p in params {
            check(&nm, "parameters", dim, p.len())?;
        }
        let mut ptrs = vec![x.as_ptr() as *mut f32];
        ptrs.extend(params.iter().map(|p| p.as_ptr() as *mut f32));
        ptrs.push(out.as_mut_ptr());
        self.call(&spec, &ptrs, &[rows as i64])
    }

    /// Gradients of [`Jit::rmsnorm`] over rows of `dim` (`rows =
    /// x.len() / dim`, which must divide): `dx` is overwritten, `dgain`
    /// accumulates (`+=`) the gain's gradient summed over the rows.
    pub fn rmsnorm_grad(
        &mut self,
        dim: usize,
        x: &[f32],
        gain: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dgain: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::RmsNormGrad { dim };
        self.rows_grad(spec, dim, x, &[gain], dy, dx, &mut [dgain])
    }

    /// Gradients of [`Jit::layernorm`] over rows of `dim`: `dx` is
    /// overwritten, `dgain` and `dbias` accumulate (`+=`).
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_grad(
        &mut self,
        dim: usize,
        x: &[f32],
        gain: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dgain: &mut [f32],
        dbias: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::LayerNormGrad { dim };
        self.rows_grad(spec, dim, x, &[gain], dy, dx, &mut [dgain, dbias])
    }

    /// Gradient of [`Jit::softmax`] over rows of `dim` from its output `y`:
    /// `dx = y (dy - sum(dy y))` per row (overwritten).
    pub fn softmax_grad(
        &mut self,
        dim: usize,
        y: &[f32],
        dy: &[f32],
        dx: &mut [f32],
    ) -> Result<(), RuntimeError> {
        self.rows_grad(
            KernelSpec::SoftmaxGrad { dim },
            dim,
            y,
            &[],
            dy,
            dx,
            &mut [],
        )
    }

    /// Row-wise gradient kernels. Buffers go to the kernel in the order
    /// `x, params.., dy, dx, grads..`; `x` must hold whole rows.
    #[allow(clippy::too_many_arguments)]
    fn rows_grad(
        &mut self,
        spec: KernelSpec,
        dim: usize,
        x: &[f32],
        params: &[&[f32]],
        dy: &[f32],
        dx: &mut [f32],
        grads: &mut [&mut [f32]],
    ) -> Result<(), RuntimeError> {
        let nm = spec.name();
        if dim == 0 {
            return Ok(());
        }
        let rows = x.len() / dim;
        if rows * dim != x.len() {
            return Err(RuntimeError::new(
                RCode::R005,
                format!(
                    "kernel `{nm}` needs whole rows of {dim} floats, got {} floats",
                    x.len()
                ),
            )
            .with_help("this is a runtime bug; please report it with the command line"));
        }
        check(&nm, "dy", rows * dim, dy.len())?;
        check(&nm, "dx", rows * dim, dx.len())?;
        for p in params {
            check(&nm, "parameters", dim, p.len())?;
        }
        for p in grads.iter() {
            check(&nm, "parameter gradients", dim, p.len())?;
        }
        if rows == 0 {
            return Ok(());
        }
        let mut ptrs = vec![x.as_ptr() as *mut f32];
        ptrs.extend(params.iter().map(|p| p.as_ptr() as *mut f32));
        ptrs.push(dy.as_ptr() as *mut f32);
        ptrs.push(dx.as_mut_ptr());
        ptrs.extend(grads.iter_mut().map(|p| p.as_mut_ptr()));
        self.call(&spec, &ptrs, &[rows as i64])
    }

    /// Attention of one device's heads: `q [batch, seq_q, heads*hd]`,
    /// `k`, `v [batch, seq_kv, kv_heads*hd]`, `out` like `q`.
    pub fn attention(
        &mut self,
        spec: &AttentionSpec,
        batch: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let s = KernelSpec::Attention(spec.clone());
        let nm = s.name();
        let qn = batch * spec.seq_q * spec.heads * spec.head_dim;
        let kn = batch * spec.seq_kv * spec.kv_heads * spec.head_dim;
        check(&nm, "q", qn, q.len())?;
        check(&nm, "k", kn, k.len())?;
        check(&nm, "v", kn, v.len())?;
        check(&nm, "out", qn, out.len())?;
        // Every local query head must read a local key/value head.
        for h in 0..spec.heads {
            let g = (h + spec.q_head_offset) / spec.group.max(1);
            if spec.group == 0
                || g < spec.kv_head_offset
                || g - spec.kv_head_offset >= spec.kv_heads
            {
                return Err(buffer_err(
                    &nm,
                    "key/value heads",
                    g + 1,
                    spec.kv_head_offset + spec.kv_heads,
                ));
            }
        }
        if qn == 0 {
            return Ok(());
        }
        if self.scratch.len() < KEY_BLOCK {
            self.scratch.resize(KEY_BLOCK, 0.0);
        }
        let scratch = self.scratch.as_mut_ptr();
        self.call(
            &s,
            &[
                q.as_ptr() as *mut f32,
                k.as_ptr() as *mut f32,
                v.as_ptr() as *mut f32,
                out.as_mut_ptr(),
                scratch,
            ],
            &[batch as i64],
        )
    }

    /// Pooled lookups: for each of the `out.len() / dim` lookup rows `r`,
    /// id `i = ids[r * stride + col]` (clamped to `0..total_rows`) sums
    /// rows `(i + p) mod total_rows` for `p < pooling`, counting only those
    /// in `start..start + table.len() / dim` (the locally held rows).
    #[allow(clippy::too_many_arguments)]
    pub fn gather(
        &mut self,
        dim: usize,
        pooling: usize,
        stride: usize,
        col: usize,
        ids: &[f32],
        table: &[f32],
        total_rows: usize,
        start: usize,
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::Gather {
            dim,
            pooling,
            stride,
        };
        let nm = spec.name();
        if dim == 0 || stride == 0 || col >= stride {
            return Err(buffer_err(
                &nm,
                "a column below the stride",
                col + 1,
                stride,
            ));
        }
        let count = ids.len() / stride;
        check(&nm, "ids", count * stride, ids.len())?;
        let local = table.len() / dim;
        check(
            &nm,
            "out",
            (count.saturating_sub(1) * stride + col + 1) * dim,
            out.len(),
        )?;
        if count == 0 {
            return Ok(());
        }
        self.call(
            &spec,
            &[
                ids.as_ptr() as *mut f32,
                table.as_ptr() as *mut f32,
                out.as_mut_ptr(),
            ],
            &[
                count as i64,
                total_rows.max(1) as i64,
                start as i64,
                local as i64,
                col as i64,
            ],
        )
    }

    /// DLRM interaction: `dense [batch, dim]`, `sparse [batch, n, dim]`,
    /// `out [batch, dim + (n+1)n/2]`.
    pub fn interact(
        &mut self,
        n: usize,
        dim: usize,
        batch: usize,
        dense: &[f32],
        sparse: &[f32],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::Interact { n, dim };
        let nm = spec.name();
        check(&nm, "dense", batch * dim, dense.len())?;
        check(&nm, "sparse", batch * n * dim, sparse.len())?;
        check(&nm, "out", batch * (dim + (n + 1) * n / 2), out.len())?;
        if batch == 0 {
            return Ok(());
        }
        self.call(
            &spec,
            &[
                dense.as_ptr() as *mut f32,
                sparse.as_ptr() as *mut f32,
                out.as_mut_ptr(),
            ],
            &[batch as i64],
        )
    }
}

fn check(kernel: &str, what: &str, need: usize, have: usize) -> Result<(), RuntimeError> {
    if have < need {
        return Err(buffer_err(kernel, what, need, have));
    }
    Ok(())
}

/// Length of `b [k, n]` packed by [`pack_b`].
pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * NR * k
}

/// Packs a row-major `b [k, n]` into panels of [`NR`] columns: panel `p`
/// holds rows `0..k` of columns `p*NR..p*NR+NR`, zero-padded.
pub fn pack_b(b: &[f32], k: usize, n: usize) -> Vec<f32> {
    let panels = n.div_ceil(NR);
    let mut out = vec![0.0f32; panels * NR * k];
    // Row by row, so that `b` is read in order (a panel at a time would
    // read one float run per row, a page apart for wide matrices).
    for (kk, row) in b.chunks_exact(n.max(1)).take(k).enumerate() {
        for (p, cols) in row.chunks(NR).enumerate() {
            let at = (p * k + kk) * NR;
            out[at..at + cols.len()].copy_from_slice(cols);
        }
    }
    out
}

// ---------------------------------------------------------------- codegen

/// A short-lived function builder with the helpers the kernels share.
struct Gen<'a> {
    b: FunctionBuilder<'a>,
    ptr: Type,
}

const V4: Type = types::F32X4;

fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl<'a> Gen<'a> {
    fn new(b: FunctionBuilder<'a>, ptr: Type) -> Gen<'a> {
        Gen { b, ptr }
    }

    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    fn fconst(&mut self, ty: Type, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        if ty == V4 {
            self.b.ins().splat(V4, s)
        } else {
            s
        }
    }

    fn arg_ptr(&mut self, ptrs: Value, i: usize) -> Value {
        self.b.ins().load(self.ptr, mem(), ptrs, (8 * i) as i32)
    }

    fn arg_int(&mut self, ints: Value, i: usize) -> Value {
        self.b.ins().load(types::I64, mem(), ints, (8 * i) as i32)
    }

    fn load(&mut self, ty: Type, base: Value, off: i64) -> Value {
        self.b.ins().load(ty, mem(), base, off as i32)
    }

    fn store(&mut self, v: Value, base: Value, off: i64) {
        self.b.ins().store(mem(), v, base, off as i32);
    }

    /// `base + index * scale` (bytes).
    fn offset(&mut self, base: Value, index: Value, scale: i64) -> Value {
        let o = self.b.ins().imul_imm_s(index, scale);
        self.b.ins().iadd(base, o)
    }

    fn var(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    /// `for (i = start; i < end; i += step) body(i)`; returns the value of
    /// `i` after the loop.
    fn for_range(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value),
    ) -> Value {
        let iv = self.var(types::I64, start);
        let header = self.b.create_block();
        let body_block = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let i = self.b.use_var(iv);
        let go = self.b.ins().icmp(IntCC::SignedLessThan, i, end);
        self.b.ins().brif(go, body_block, &[], exit, &[]);
        self.b.switch_to_block(body_block);
        body(self, i);
        let i = self.b.use_var(iv);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.def_var(iv, next);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(exit);
        self.b.use_var(iv)
    }

    /// `for i in 0..count` over a compile-time count, as a runtime loop.
    fn for_count(&mut self, count: usize, body: impl FnMut(&mut Self, Value)) {
        if count == 0 {
            return;
        }
        let z = self.iconst(0);
        let e = self.iconst(count as i64);
        self.for_range(z, e, 1, body);
    }

    /// Runs `then` when `cond` (an integer truth value) is true.
    fn if_then(&mut self, cond: Value, then: impl FnOnce(&mut Self)) {
        let yes = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, yes, &[], done, &[]);
        self.b.switch_to_block(yes);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    /// Runs `then` when `cond` is true and `other` when it is false.
    fn if_else(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Self),
        other: impl FnOnce(&mut Self),
    ) {
        let yes = self.b.create_block();
        let no = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, yes, &[], no, &[]);
        self.b.switch_to_block(yes);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(no);
        other(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    fn imin(&mut self, a: Value, b: Value) -> Value {
        let lt = self.b.ins().icmp(IntCC::SignedLessThan, a, b);
        self.b.ins().select(lt, a, b)
    }

    fn imax(&mut self, a: Value, b: Value) -> Value {
        let gt = self.b.ins().icmp(IntCC::SignedGreaterThan, a, b);
        self.b.ins().select(gt, a, b)
    }

    /// Sum of the four lanes of a vector.
    fn hsum(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fadd(l[0], l[1]);
        let b = self.b.ins().fadd(l[2], l[3]);
        self.b.ins().fadd(a, b)
    }

    /// Maximum of the four lanes of a vector.
    fn hmax(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fmax(l[0], l[1]);
        let b = self.b.ins().fmax(l[2], l[3]);
        self.b.ins().fmax(a, b)
    }

    fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.b.ins().fma(a, b, c)
    }

    /// `e^x` for f32 or f32x4: Cephes' range reduction and degree-5
    /// polynomial (about 2 ulp), inputs clamped to [-87, 88].
    fn exp(&mut self, ty: Type, x: Value) -> Value {
        let hi = self.fconst(ty, 88.0);
        let lo = self.fconst(ty, -87.0);
        let x = self.b.ins().fmin(x, hi);
        let x = self.b.ins().fmax(x, lo);
        let log2e = self.fconst(ty, std::f32::consts::LOG2_E);
        let t = self.b.ins().fmul(x, log2e);
        let n = self.b.ins().nearest(t);
        let c1 = self.fconst(ty, -0.693_359_4);
        let c2 = self.fconst(ty, 2.121_944_4e-4);
        let r = self.fma(n, c1, x);
        let r = self.fma(n, c2, r);
        let mut p = self.fconst(ty, 1.987_569_2e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            let cv = self.fconst(ty, c);
            p = self.fma(p, r, cv);
        }
        let r2 = self.b.ins().fmul(r, r);
        let y = self.fma(p, r2, r);
        let one = self.fconst(ty, 1.0);
        let y = self.b.ins().fadd(y, one);
        let ity = if ty == V4 { types::I32X4 } else { types::I32 };
        let ni = self.b.ins().fcvt_to_sint_sat(ity, n);
        let bias = if ty == V4 {
            let c = self.b.ins().iconst(types::I32, 127);
            self.b.ins().splat(ity, c)
        } else {
            self.b.ins().iconst(types::I32, 127)
        };
        let e = self.b.ins().iadd(ni, bias);
        let e = self.b.ins().ishl_imm_s(e, 23);
        let pow = self.b.ins().bitcast(
            ty,
            MemFlagsData::new().with_endianness(Endianness::Little),
            e,
        );
        self.b.ins().fmul(y, pow)
    }

    fn sigmoid(&mut self, ty: Type, x: Value) -> Value {
        let nx = self.b.ins().fneg(x);
        let e = self.exp(ty, nx);
        let one = self.fconst(ty, 1.0);
        let d = self.b.ins().fadd(one, e);
        self.b.ins().fdiv(one, d)
    }

    /// `(sigmoid(x), 1 - sigmoid(x))`, the second as `e^-x sigmoid(x)`,
    /// without the cancellation of `1 - s` where `s` is near 1.
    fn sigmoid_pair(&mut self, ty: Type, x: Value) -> (Value, Value) {
        let nx = self.b.ins().fneg(x);
        let e = self.exp(ty, nx);
        let one = self.fconst(ty, 1.0);
        let d = self.b.ins().fadd(one, e);
        let s = self.b.ins().fdiv(one, d);
        let t = self.b.ins().fmul(e, s);
        (s, t)
    }

    fn unary(&mut self, ty: Type, op: Unary, x: Value) -> Value {
        match op {
            Unary::Relu => {
                let z = self.fconst(ty, 0.0);
                self.b.ins().fmax(x, z)
            }
            Unary::Sigmoid => self.sigmoid(ty, x),
            Unary::Silu => {
                let s = self.sigmoid(ty, x);
                self.b.ins().fmul(x, s)
            }
            Unary::Gelu => {
                // 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
                let c = self.fconst(ty, 0.044_715);
                let x2 = self.b.ins().fmul(x, x);
                let one = self.fconst(ty, 1.0);
                let inner = self.fma(c, x2, one);
                let u = self.b.ins().fmul(x, inner);
                let k = self.fconst(ty, 2.0 * (2.0 / std::f32::consts::PI).sqrt());
                let u2 = self.b.ins().fmul(u, k);
                let s = self.sigmoid(ty, u2);
                self.b.ins().fmul(x, s)
            }
            Unary::Scale(bits) => {
                let c = self.fconst(ty, f32::from_bits(bits));
                self.b.ins().fmul(x, c)
            }
            Unary::ReluGrad => {
                let z = self.fconst(ty, 0.0);
                let one = self.fconst(ty, 1.0);
                let pos = self.b.ins().fcmp(FloatCC::GreaterThan, x, z);
                if ty == V4 {
                    // The all-ones lanes of the mask select 1.0's bits.
                    let m = self.b.ins().bitcast(
                        V4,
                        MemFlagsData::new().with_endianness(Endianness::Little),
                        pos,
                    );
                    self.b.ins().band(m, one)
                } else {
                    self.b.ins().select(pos, one, z)
                }
            }
            Unary::SigmoidGrad => {
                let (s, t) = self.sigmoid_pair(ty, x);
                self.b.ins().fmul(s, t)
            }
            Unary::SiluGrad => {
                let (s, t) = self.sigmoid_pair(ty, x);
                let one = self.fconst(ty, 1.0);
                let u = self.fma(x, t, one);
                self.b.ins().fmul(s, u)
            }
            Unary::GeluGrad => {
                // With u = sqrt(2/pi) (x + 0.044715 x^3), t = tanh(u) and
                // s = sigmoid(2u) = (1 + t) / 2, so 1 - t^2 = 4 s (1 - s) and
                // gelu'(x) = s (1 + 2 sqrt(2/pi) x (1 - s) (1 + 3 * 0.044715 x^2)).
                let c = self.fconst(ty, 0.044_715);
                let x2 = self.b.ins().fmul(x, x);
                let one = self.fconst(ty, 1.0);
                let inner = self.fma(c, x2, one);
                let u = self.b.ins().fmul(x, inner);
                let k2 = 2.0 * (2.0 / std::f32::consts::PI).sqrt();
                let k = self.fconst(ty, k2);
                let u2 = self.b.ins().fmul(u, k);
                let (s, t) = self.sigmoid_pair(ty, u2);
                let c3 = self.fconst(ty, 3.0 * 0.044_715);
                let du = self.fma(c3, x2, one);
                let kv = self.fconst(ty, k2);
                let kx = self.b.ins().fmul(x, kv);
                let w = self.b.ins().fmul(kx, du);
                let v = self.fma(w, t, one);
                self.b.ins().fmul(s, v)
            }
        }
    }

    fn expr(&mut self, ty: Type, e: &Expr, leaves: &[Value]) -> Value {
        match e {
            Expr::Input(i) => leaves[*i as usize],
            Expr::Unary(op, a) => {
                let x = self.expr(ty, a, leaves);
                self.unary(ty, *op, x)
            }
            Expr::Binary(op, a, b) => {
                let x = self.expr(ty, a, leaves);
                let y = self.expr(ty, b, leaves);
                match op {
                    Binary::Add => self.b.ins().fadd(x, y),
                    Binary::Sub => self.b.ins().fsub(x, y),
                    Binary::Mul => self.b.ins().fmul(x, y),
                    Binary::Div => self.b.ins().fdiv(x, y),
                }
            }
        }
    }

    // ------------------------------------------------------------ kernels

    fn elementwise(&mut self, ptrs: Value, ints: Value, e: &Expr) {
        let arity = e.arity();
        let ins: Vec<Value> = (0..arity).map(|i| self.arg_ptr(ptrs, i)).collect();
        let out = self.arg_ptr(ptrs, arity);
        let len = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        // 16 floats per iteration, then 4, then one at a time.
        let end16 = self.b.ins().iadd_imm_s(len, -15);
        let i = self.for_range(zero, end16, 16, |g, i| {
            let off = g.b.ins().imul_imm_s(i, 4);
            let mut results = Vec::new();
            for u in 0..4i64 {
                let leaves: Vec<Value> = ins
                    .iter()
                    .map(|p| {
                        let a = g.b.ins().iadd(*p, off);
                        g.load(V4, a, 16 * u)
                    })
                    .collect();
                results.push(g.expr(V4, e, &leaves));
            }
            let o = g.b.ins().iadd(out, off);
            for (u, r) in results.into_iter().enumerate() {
                g.store(r, o, 16 * u as i64);
            }
        });
        let end4 = self.b.ins().iadd_imm_s(len, -3);
        let i = self.for_range(i, end4, 4, |g, i| {
            let off = g.b.ins().imul_imm_s(i, 4);
            let leaves: Vec<Value> = ins
                .iter()
                .map(|p| {
                    let a = g.b.ins().iadd(*p, off);
                    g.load(V4, a, 0)
                })
                .collect();
            let r = g.expr(V4, e, &leaves);
            let o = g.b.ins().iadd(out, off);
            g.store(r, o, 0);
        });
        self.for_range(i, len, 1, |g, i| {
            let off = g.b.ins().imul_imm_s(i, 4);
            let leaves: Vec<Value> = ins
                .iter()
                .map(|p| {
                    let a = g.b.ins().iadd(*p, off);
                    g.load(types::F32, a, 0)
                })
                .collect();
            let r = g.expr(types::F32, e, &leaves);
            let o = g.b.ins().iadd(out, off);
            g.store(r, o, 0);
        });
    }

    /// Folds `f(acc, chunk)` over a row of `dim` floats at `row` (vectors,
    /// then a scalar tail folded with `fs`); returns the vector and scalar
    /// accumulators.
    fn fold_row(
        &mut self,
        row: Value,
        dim: usize,
        acc0: Value,
        s0: Value,
        mut f: impl FnMut(&mut Self, Value, Value) -> Value,
        mut fs: impl FnMut(&mut Self, Value, Value) -> Value,
    ) -> (Value, Value) {
        let acc = self.var(V4, acc0);
        self.for_count(dim / 4, |g, j| {
            let a = g.offset(row, j, 16);
            let x = g.load(V4, a, 0);
            let cur = g.b.use_var(acc);
            let nx = f(g, cur, x);
            g.b.def_var(acc, nx);
        });
        let mut s = s0;
        for t in dim / 4 * 4..dim {
            let x = self.load(types::F32, row, 4 * t as i64);
            s = fs(self, s, x);
        }
        (self.b.use_var(acc), s)
    }

    /// Writes `out[j] = f(x[j], j-th params...)` over a row.
    fn map_row(
        &mut self,
        srcs: &[Value],
        out: Value,
        dim: usize,
        mut f: impl FnMut(&mut Self, Type, &[Value]) -> Value,
    ) {
        let srcs = srcs.to_vec();
        self.for_count(dim / 4, |g, j| {
            let vals: Vec<Value> = srcs
                .iter()
                .map(|p| {
                    let a = g.offset(*p, j, 16);
                    g.load(V4, a, 0)
                })
                .collect();
            let r = f(g, V4, &vals);
            let o = g.offset(out, j, 16);
            g.store(r, o, 0);
        });
        for t in dim / 4 * 4..dim {
            let vals: Vec<Value> = srcs
                .iter()
                .map(|p| self.load(types::F32, *p, 4 * t as i64))
                .collect();
            let r = f(self, types::F32, &vals);
            self.store(r, out, 4 * t as i64);
        }
    }

    fn norm(&mut self, ptrs: Value, ints: Value, dim: usize, layer: bool) {
        let x = self.arg_ptr(ptrs, 0);
        let gain = self.arg_ptr(ptrs, 1);
        let shift = if layer {
            Some(self.arg_ptr(ptrs, 2))
        } else {
            None
        };
        let out = self.arg_ptr(ptrs, if layer { 3 } else { 2 });
        let rows = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        self.for_range(zero, rows, 1, |g, r| {
            let off = g.b.ins().imul_imm_s(r, 4 * dim as i64);
            let row = g.b.ins().iadd(x, off);
            let orow = g.b.ins().iadd(out, off);
            let zv = g.fconst(V4, 0.0);
            let zs = g.fconst(types::F32, 0.0);
            let inv_n = g.fconst(types::F32, 1.0 / dim as f32);
            let mean = if layer {
                let (v, s) = g.fold_row(
                    row,
                    dim,
                    zv,
                    zs,
                    |g, a, x| g.b.ins().fadd(a, x),
                    |g, a, x| g.b.ins().fadd(a, x),
                );
                let h = g.hsum(v);
                let t = g.b.ins().fadd(h, s);
                Some(g.b.ins().fmul(t, inv_n))
            } else {
                None
            };
            let mv = mean.map(|m| g.b.ins().splat(V4, m));
            let (v, s) = g.fold_row(
                row,
                dim,
                zv,
                zs,
                |g, a, x| {
                    let d = match mv {
                        Some(m) => g.b.ins().fsub(x, m),
                        None => x,
                    };
                    g.fma(d, d, a)
                },
                |g, a, x| {
                    let d = match mean {
                        Some(m) => g.b.ins().fsub(x, m),
                        None => x,
                    };
                    g.fma(d, d, a)
                },
            );
            let h = g.hsum(v);
            let t = g.b.ins().fadd(h, s);
            let var = g.b.ins().fmul(t, inv_n);
            let eps = g.fconst(types::F32, crate::graph::NORM_EPS);
            let ve = g.b.ins().fadd(var, eps);
            let sd = g.b.ins().sqrt(ve);
            let one = g.fconst(types::F32, 1.0);
            let inv = g.b.ins().fdiv(one, sd);
            let invv = g.b.ins().splat(V4, inv);
            let mut srcs = vec![row, gain];
            if let Some(sh) = shift {
                srcs.push(sh);
            }
            g.map_row(&srcs, orow, dim, |g, ty, v| {
                let (iv, m) = if ty == V4 { (invv, mv) } else { (inv, mean) };
                let d = match m {
                    Some(m) => g.b.ins().fsub(v[0], m),
                    None => v[0],
                };
                let n = g.b.ins().fmul(d, iv);
                match v.get(2) {
                    Some(b) => g.fma(n, v[1], *b),
                    None => g.b.ins().fmul(n, v[1]),
                }
            });
        });
    }

    fn softmax(&mut self, ptrs: Value, ints: Value, dim: usize) {
        let x = self.arg_ptr(ptrs, 0);
        let out = self.arg_ptr(ptrs, 1);
        let rows = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        self.for_range(zero, rows, 1, |g, r| {
            let off = g.b.ins().imul_imm_s(r, 4 * dim as i64);
            let row = g.b.ins().iadd(x, off);
            let orow = g.b.ins().iadd(out, off);
            let lv = g.fconst(V4, f32::MIN);
            let ls = g.fconst(types::F32, f32::MIN);
            let (v, s) = g.fold_row(
                row,
                dim,
                lv,
                ls,
                |g, a, x| g.b.ins().fmax(a, x),
                |g, a, x| g.b.ins().fmax(a, x),
            );
            let h = g.hmax(v);
            let max = g.b.ins().fmax(h, s);
            let maxv = g.b.ins().splat(V4, max);
            // e = exp(x - max) into out, summed.
            let zv = g.fconst(V4, 0.0);
            let acc = g.var(V4, zv);
            g.for_count(dim / 4, |g, j| {
                let a = g.offset(row, j, 16);
                let xv = g.load(V4, a, 0);
                let d = g.b.ins().fsub(xv, maxv);
                let e = g.exp(V4, d);
                let o = g.offset(orow, j, 16);
                g.store(e, o, 0);
                let cur = g.b.use_var(acc);
                let n = g.b.ins().fadd(cur, e);
                g.b.def_var(acc, n);
            });
            let accv = g.b.use_var(acc);
            let mut sum = g.hsum(accv);
            for t in dim / 4 * 4..dim {
                let xv = g.load(types::F32, row, 4 * t as i64);
                let d = g.b.ins().fsub(xv, max);
                let e = g.exp(types::F32, d);
                g.store(e, orow, 4 * t as i64);
                sum = g.b.ins().fadd(sum, e);
            }
            let one = g.fconst(types::F32, 1.0);
            let inv = g.b.ins().fdiv(one, sum);
            let invv = g.b.ins().splat(V4, inv);
            g.map_row(&[orow], orow, dim, |g, ty, v| {
                let i = if ty == V4 { invv } else { inv };
                g.b.ins().fmul(v[0], i)
            });
        });
    }

    /// Sums over a row of `dim` floats: `f(g, ty, off, imm, accs)` folds
    /// the piece of type `ty` at byte offset `off + imm` into the `n`
    /// running sums `accs` (vectors over the first `dim / 4 * 4` floats,
    /// then scalars); returns the `n` totals.
    fn row_sums(
        &mut self,
        dim: usize,
        n: usize,
        mut f: impl FnMut(&mut Self, Type, Value, i64, &[Value]) -> Vec<Value>,
    ) -> Vec<Value> {
        let zv = self.fconst(V4, 0.0);
        let accs: Vec<Variable> = (0..n).map(|_| self.var(V4, zv)).collect();
        self.for_count(dim / 4, |g, j| {
            let off = g.b.ins().imul_imm_s(j, 16);
            let cur: Vec<Value> = accs.iter().map(|a| g.b.use_var(*a)).collect();
            let next = f(g, V4, off, 0, &cur);
            for (a, v) in accs.iter().zip(next) {
                g.b.def_var(*a, v);
            }
        });
        let zs = self.fconst(types::F32, 0.0);
        let mut tail = vec![zs; n];
        let z = self.iconst(0);
        for t in dim / 4 * 4..dim {
            tail = f(self, types::F32, z, 4 * t as i64, &tail);
        }
        accs.iter()
            .zip(tail)
            .map(|(a, t)| {
                let v = self.b.use_var(*a);
                let h = self.hsum(v);
                self.b.ins().fadd(h, t)
            })
            .collect()
    }

    /// Runs `f(g, ty, off, imm)` over the pieces of a row of `dim` floats,
    /// like [`Gen::row_sums`].
    fn row_each(&mut self, dim: usize, mut f: impl FnMut(&mut Self, Type, Value, i64)) {
        self.for_count(dim / 4, |g, j| {
            let off = g.b.ins().imul_imm_s(j, 16);
            f(g, V4, off, 0);
        });
        let z = self.iconst(0);
        for t in dim / 4 * 4..dim {
            f(self, types::F32, z, 4 * t as i64);
        }
    }

    /// `load(ty, base + off + imm)`.
    fn load_at(&mut self, ty: Type, base: Value, off: Value, imm: i64) -> Value {
        let a = self.b.ins().iadd(base, off);
        self.load(ty, a, imm)
    }

    /// `store(v, base + off + imm)`.
    fn store_at(&mut self, v: Value, base: Value, off: Value, imm: i64) {
        let a = self.b.ins().iadd(base, off);
        self.store(v, a, imm);
    }

    /// Gradients of rmsnorm (`layer = false`) or layernorm: buffers `x,
    /// gain, dy, dx, dgain (, dbias)`, as `backward.rs` defines them.
    fn norm_grad(&mut self, ptrs: Value, ints: Value, dim: usize, layer: bool) {
        let x = self.arg_ptr(ptrs, 0);
        let gain = self.arg_ptr(ptrs, 1);
        let dy = self.arg_ptr(ptrs, 2);
        let dx = self.arg_ptr(ptrs, 3);
        let dgain = self.arg_ptr(ptrs, 4);
        let dbias = if layer {
            Some(self.arg_ptr(ptrs, 5))
        } else {
            None
        };
        let rows = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        self.for_range(zero, rows, 1, |g, r| {
            let roff = g.b.ins().imul_imm_s(r, 4 * dim as i64);
            let xr = g.b.ins().iadd(x, roff);
            let dyr = g.b.ins().iadd(dy, roff);
            let dxr = g.b.ins().iadd(dx, roff);
            let inv_n = g.fconst(types::F32, 1.0 / dim as f32);
            let eps = g.fconst(types::F32, crate::graph::NORM_EPS);
            let one = g.fconst(types::F32, 1.0);
            if let Some(dbias) = dbias {
                let sx = g.row_sums(dim, 1, |g, ty, o, i, a| {
                    let xv = g.load_at(ty, xr, o, i);
                    vec![g.b.ins().fadd(a[0], xv)]
                });
                let mean = g.b.ins().fmul(sx[0], inv_n);
                let mv = g.b.ins().splat(V4, mean);
                // Variance, sum(dy g) and sum(dy g (x - mean)) in one pass.
                let s = g.row_sums(dim, 3, |g, ty, o, i, a| {
                    let xv = g.load_at(ty, xr, o, i);
                    let gv = g.load_at(ty, gain, o, i);
                    let dyv = g.load_at(ty, dyr, o, i);
                    let m = if ty == V4 { mv } else { mean };
                    let d = g.b.ins().fsub(xv, m);
                    let dyg = g.b.ins().fmul(dyv, gv);
                    let var = g.fma(d, d, a[0]);
                    let s1 = g.b.ins().fadd(a[1], dyg);
                    let s2 = g.fma(dyg, d, a[2]);
                    vec![var, s1, s2]
                });
                let var = g.b.ins().fmul(s[0], inv_n);
                let ve = g.b.ins().fadd(var, eps);
                let sd = g.b.ins().sqrt(ve);
                let inv = g.b.ins().fdiv(one, sd);
                let s1 = s[1];
                let s2 = g.b.ins().fmul(s[2], inv);
                let c = g.b.ins().fmul(inv, inv_n);
                let vs = [mv, g.b.ins().splat(V4, inv), g.b.ins().splat(V4, s1)];
                let vs2 = [g.b.ins().splat(V4, s2), g.b.ins().splat(V4, c)];
                // dx = inv dy g - inv / n (s1 + xh s2), xh = (x - mean) inv.
                g.row_each(dim, |g, ty, o, i| {
                    let (m, iv, s1, s2, c) = if ty == V4 {
                        (vs[0], vs[1], vs[2], vs2[0], vs2[1])
                    } else {
                        (mean, inv, s1, s2, c)
                    };
                    let xv = g.load_at(ty, xr, o, i);
                    let gv = g.load_at(ty, gain, o, i);
                    let dyv = g.load_at(ty, dyr, o, i);
                    let d = g.b.ins().fsub(xv, m);
                    let xh = g.b.ins().fmul(d, iv);
                    let dg = g.load_at(ty, dgain, o, i);
                    let dg = g.fma(dyv, xh, dg);
                    g.store_at(dg, dgain, o, i);
                    let db = g.load_at(ty, dbias, o, i);
                    let db = g.b.ins().fadd(db, dyv);
                    g.store_at(db, dbias, o, i);
                    let dyg = g.b.ins().fmul(dyv, gv);
                    let a = g.b.ins().fmul(dyg, iv);
                    let t = g.fma(xh, s2, s1);
                    let t = g.b.ins().fmul(t, c);
                    let r = g.b.ins().fsub(a, t);
                    g.store_at(r, dxr, o, i);
                });
            } else {
                // sum(x^2) and sum(dy g x) in one pass.
                let s = g.row_sums(dim, 2, |g, ty, o, i, a| {
                    let xv = g.load_at(ty, xr, o, i);
                    let gv = g.load_at(ty, gain, o, i);
                    let dyv = g.load_at(ty, dyr, o, i);
                    let ss = g.fma(xv, xv, a[0]);
                    let dyg = g.b.ins().fmul(dyv, gv);
                    let dot = g.fma(dyg, xv, a[1]);
                    vec![ss, dot]
                });
                let ms = g.b.ins().fmul(s[0], inv_n);
                let me = g.b.ins().fadd(ms, eps);
                let sd = g.b.ins().sqrt(me);
                let inv = g.b.ins().fdiv(one, sd);
                // dx = inv g dy - x inv^3 dot / n.
                let i2 = g.b.ins().fmul(inv, inv);
                let i3 = g.b.ins().fmul(i2, inv);
                let k = g.b.ins().fmul(i3, s[1]);
                let k = g.b.ins().fmul(k, inv_n);
                let vs = [g.b.ins().splat(V4, inv), g.b.ins().splat(V4, k)];
                g.row_each(dim, |g, ty, o, i| {
                    let (iv, k) = if ty == V4 { (vs[0], vs[1]) } else { (inv, k) };
                    let xv = g.load_at(ty, xr, o, i);
                    let gv = g.load_at(ty, gain, o, i);
                    let dyv = g.load_at(ty, dyr, o, i);
                    let dyi = g.b.ins().fmul(dyv, iv);
                    let dg = g.load_at(ty, dgain, o, i);
                    let dg = g.fma(dyi, xv, dg);
                    g.store_at(dg, dgain, o, i);
                    let a = g.b.ins().fmul(dyi, gv);
                    let t = g.b.ins().fmul(xv, k);
                    let r = g.b.ins().fsub(a, t);
                    g.store_at(r, dxr, o, i);
                });
            }
        });
    }

    /// Softmax gradient from the output: buffers `y, dy, dx`.
    fn softmax_grad(&mut self, ptrs: Value, ints: Value, dim: usize) {
        let y = self.arg_ptr(ptrs, 0);
        let dy = self.arg_ptr(ptrs, 1);
        let dx = self.arg_ptr(ptrs, 2);
        let rows = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        self.for_range(zero, rows, 1, |g, r| {
            let roff = g.b.ins().imul_imm_s(r, 4 * dim as i64);
            let yr = g.b.ins().iadd(y, roff);
            let dyr = g.b.ins().iadd(dy, roff);
            let dxr = g.b.ins().iadd(dx, roff);
            let s = g.row_sums(dim, 1, |g, ty, o, i, a| {
                let yv = g.load_at(ty, yr, o, i);
                let dyv = g.load_at(ty, dyr, o, i);
                vec![g.fma(yv, dyv, a[0])]
            });
            let dot = s[0];
            let dotv = g.b.ins().splat(V4, dot);
            g.row_each(dim, |g, ty, o, i| {
                let d = if ty == V4 { dotv } else { dot };
                let yv = g.load_at(ty, yr, o, i);
                let dyv = g.load_at(ty, dyr, o, i);
                let t = g.b.ins().fsub(dyv, d);
                let r = g.b.ins().fmul(yv, t);
                g.store_at(r, dxr, o, i);
            });
        });
    }

    /// One micro-tile: `rows` rows from `a_row`, one panel of packed `b`,
    /// into `c_row`; `width` valid columns (`NR` for a full panel).
    ///
    /// Compiled without the mid-end optimizer, so the code keeps this
    /// order: per step, the panel's `NR / 4` vectors, then per row one
    /// broadcast of A and its `fma`s. The accumulators are variables, never
    /// memory; the loop bumps the A and B pointers and compares B against
    /// its end. `KU` steps per iteration let the register allocator
    /// alternate each accumulator between two registers (`vfmadd213ps`
    /// writes over a multiplicand, not the addend) instead of copying it
    /// back at the loop edge.
    #[allow(clippy::too_many_arguments)]
    fn micro(
        &mut self,
        a_row: Value,
        panel: Value,
        c_row: Value,
        bias: Option<Value>,
        rows: usize,
        k: usize,
        n: usize,
        width: usize,
    ) {
        let nv = NR / 4;
        let zero = self.fconst(V4, 0.0);
        let accs: Vec<Vec<Variable>> = (0..rows)
            .map(|_| (0..nv).map(|_| self.var(V4, zero)).collect())
            .collect();
        let lda = 4 * k as i64;
        let step = |g: &mut Self, a: Value, b: Value, u: i64| {
            let bv: Vec<Value> = (0..nv)
                .map(|v| g.load(V4, b, 4 * (u * NR as i64) + 16 * v as i64))
                .collect();
            for (r, acc_r) in accs.iter().enumerate() {
                let s = g.load(types::F32, a, r as i64 * lda + 4 * u);
                let av = g.b.ins().splat(V4, s);
                for (v, acc) in acc_r.iter().enumerate() {
                    let cur = g.b.use_var(*acc);
                    let nx = g.fma(av, bv[v], cur);
                    g.b.def_var(*acc, nx);
                }
            }
        };
        let pa = self.var(self.ptr, a_row);
        let pb = self.var(self.ptr, panel);
        let main = k / KU * KU;
        if main > 0 {
            // A bottom-tested loop (it runs at least once): one compare and
            // one branch per KU steps.
            let bstep = 4 * (KU * NR) as i64;
            let end = self.b.ins().iadd_imm_s(panel, 4 * (main * NR) as i64);
            let body = self.b.create_block();
            let exit = self.b.create_block();
            self.b.ins().jump(body, &[]);
            self.b.switch_to_block(body);
            let a = self.b.use_var(pa);
            let b = self.b.use_var(pb);
            for u in 0..KU {
                step(self, a, b, u as i64);
            }
            let a2 = self.b.ins().iadd_imm_s(a, 4 * KU as i64);
            self.b.def_var(pa, a2);
            let b2 = self.b.ins().iadd_imm_s(b, bstep);
            self.b.def_var(pb, b2);
            let go = self.b.ins().icmp(IntCC::UnsignedLessThan, b2, end);
            self.b.ins().brif(go, body, &[], exit, &[]);
            self.b.switch_to_block(exit);
        }
        let a = self.b.use_var(pa);
        let b = self.b.use_var(pb);
        for u in 0..k - main {
            step(self, a, b, u as i64);
        }
        let ldc = 4 * n as i64;
        for (r, acc_r) in accs.iter().enumerate() {
            for (v, acc) in acc_r.iter().enumerate() {
                let mut val = self.b.use_var(*acc);
                if width == NR {
                    if let Some(bp) = bias {
                        let bv = self.load(V4, bp, 16 * v as i64);
                        val = self.b.ins().fadd(val, bv);
                    }
                    self.store(val, c_row, r as i64 * ldc + 16 * v as i64);
                } else {
                    for lane in 0..4 {
                        let col = 4 * v + lane;
                        if col >= width {
                            break;
                        }
                        let mut s = self.b.ins().extractlane(val, lane as u8);
                        if let Some(bp) = bias {
                            let bs = self.load(types::F32, bp, 4 * col as i64);
                            s = self.b.ins().fadd(s, bs);
                        }
                        self.store(s, c_row, r as i64 * ldc + 4 * col as i64);
                    }
                }
            }
        }
    }

    fn matmul(&mut self, ptrs: Value, ints: Value, k: usize, n: usize, has_bias: bool) {
        let a = self.arg_ptr(ptrs, 0);
        let bp = self.arg_ptr(ptrs, 1);
        let bias = if has_bias {
            Some(self.arg_ptr(ptrs, 2))
        } else {
            None
        };
        let c = self.arg_ptr(ptrs, 3);
        let m = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        let full = n / NR;
        let tail = n % NR;
        let mr = MR;
        self.for_range(zero, m, MC, |g, i0| {
            let i0_mc = g.b.ins().iadd_imm_s(i0, MC);
            let iend = g.imin(i0_mc, m);
            let panel = |g: &mut Self, p: Value, width: usize| {
                let pb = g.offset(bp, p, 4 * (k * NR) as i64);
                let pbias = bias.map(|bb| g.offset(bb, p, 4 * NR as i64));
                let cp = g.offset(c, p, 4 * NR as i64);
                let end_mr = g.b.ins().iadd_imm_s(iend, -(mr as i64 - 1));
                let i = g.for_range(i0, end_mr, mr as i64, |g, i| {
                    let ar = g.offset(a, i, 4 * k as i64);
                    let cr = g.offset(cp, i, 4 * n as i64);
                    g.micro(ar, pb, cr, pbias, mr, k, n, width);
                });
                // The last 1..MR-1 rows in one tile of exactly that many
                // rows, so that the panel is read once more, not once per row.
                let ar = g.offset(a, i, 4 * k as i64);
                let cr = g.offset(cp, i, 4 * n as i64);
                let rem = g.b.ins().isub(iend, i);
                for rows in (1..mr).rev() {
                    let is = g.b.ins().icmp_imm_s(IntCC::Equal, rem, rows as i64);
                    g.if_then(is, |g| g.micro(ar, pb, cr, pbias, rows, k, n, width));
                }
            };
            if full > 0 {
                let z = g.iconst(0);
                let e = g.iconst(full as i64);
                g.for_range(z, e, 1, |g, p| panel(g, p, NR));
            }
            if tail > 0 {
                let p = g.iconst(full as i64);
                panel(g, p, tail);
            }
        });
    }

    /// Dot product of two rows of `len` floats (4 vector accumulators).
    fn dot(&mut self, x: Value, y: Value, len: usize) -> Value {
        let nvec = len / 4;
        let zero = self.fconst(V4, 0.0);
        let mut accs = [zero; 4];
        for v in 0..nvec {
            let a = self.load(V4, x, 16 * v as i64);
            let b = self.load(V4, y, 16 * v as i64);
            accs[v % 4] = self.fma(a, b, accs[v % 4]);
        }
        let s01 = self.b.ins().fadd(accs[0], accs[1]);
        let s23 = self.b.ins().fadd(accs[2], accs[3]);
        let s = self.b.ins().fadd(s01, s23);
        let mut t = self.hsum(s);
        for i in nvec * 4..len {
            let a = self.load(types::F32, x, 4 * i as i64);
            let b = self.load(types::F32, y, 4 * i as i64);
            t = self.fma(a, b, t);
        }
        t
    }

    fn attention(&mut self, ptrs: Value, ints: Value, s: &AttentionSpec) {
        let q = self.arg_ptr(ptrs, 0);
        let k = self.arg_ptr(ptrs, 1);
        let v = self.arg_ptr(ptrs, 2);
        let out = self.arg_ptr(ptrs, 3);
        let scratch = self.arg_ptr(ptrs, 4);
        let batch = self.arg_int(ints, 0);
        let hd = s.head_dim;
        let qf = (s.heads * hd) as i64;
        let kf = (s.kv_heads * hd) as i64;
        let (sq, skv) = (s.seq_q as i64, s.seq_kv as i64);
        let scale = 1.0 / (hd as f32).sqrt();
        let zero = self.iconst(0);
        self.for_range(zero, batch, 1, |g, b| {
            g.for_count(s.heads, |g, h| {
                // Local key/value head of local query head h.
                let gh = g.b.ins().iadd_imm_s(h, s.q_head_offset as i64);
                let gkv = g.b.ins().udiv_imm_s(gh, s.group as i64);
                let kvh = g.b.ins().iadd_imm_s(gkv, -(s.kv_head_offset as i64));
                let kbase = g.offset(k, b, 4 * skv * kf);
                let kbase = g.offset(kbase, kvh, 4 * hd as i64);
                let vbase = g.offset(v, b, 4 * skv * kf);
                let vbase = g.offset(vbase, kvh, 4 * hd as i64);
                g.for_count(s.seq_q, |g, i| {
                    let bi = g.b.ins().imul_imm_s(b, sq);
                    let row = g.b.ins().iadd(bi, i);
                    let qrow = g.offset(q, row, 4 * qf);
                    let qrow = g.offset(qrow, h, 4 * hd as i64);
                    let orow = g.offset(out, row, 4 * qf);
                    let orow = g.offset(orow, h, 4 * hd as i64);
                    let visible = if s.causal {
                        let vis = g.b.ins().iadd_imm_s(i, skv - sq + 1);
                        let z = g.iconst(0);
                        let e = g.iconst(skv);
                        let vis = g.imax(vis, z);
                        g.imin(vis, e)
                    } else {
                        g.iconst(skv)
                    };
                    // Zero the output row; it accumulates unnormalized sums.
                    let zv = g.fconst(V4, 0.0);
                    for c in 0..hd / 4 {
                        g.store(zv, orow, 16 * c as i64);
                    }
                    let zs = g.fconst(types::F32, 0.0);
                    for t in hd / 4 * 4..hd {
                        g.store(zs, orow, 4 * t as i64);
                    }
                    let big = g.fconst(types::F32, -1e30);
                    let mvar = g.var(types::F32, big);
                    let lvar = g.var(types::F32, zs);
                    let z = g.iconst(0);
                    g.for_range(z, visible, KEY_BLOCK as i64, |g, j0| {
                        let rest = g.b.ins().isub(visible, j0);
                        let kb = g.iconst(KEY_BLOCK as i64);
                        let jn = g.imin(rest, kb);
                        // Scores of the block, and their maximum.
                        let bmax = g.var(types::F32, big);
                        let z = g.iconst(0);
                        let scl = g.fconst(types::F32, scale);
                        g.for_range(z, jn, 1, |g, j| {
                            let jj = g.b.ins().iadd(j0, j);
                            let krow = g.offset(kbase, jj, 4 * kf);
                            let d = g.dot(qrow, krow, hd);
                            let sc = g.b.ins().fmul(d, scl);
                            let sp = g.offset(scratch, j, 4);
                            g.store(sc, sp, 0);
                            let cur = g.b.use_var(bmax);
                            let nm = g.b.ins().fmax(cur, sc);
                            g.b.def_var(bmax, nm);
                        });
                        let m_old = g.b.use_var(mvar);
                        let bm = g.b.use_var(bmax);
                        let m_new = g.b.ins().fmax(m_old, bm);
                        let dm = g.b.ins().fsub(m_old, m_new);
                        let corr = g.exp(types::F32, dm);
                        // p = exp(s - m_new), summed.
                        let mv = g.b.ins().splat(V4, m_new);
                        let zv = g.fconst(V4, 0.0);
                        let pacc = g.var(V4, zv);
                        let z = g.iconst(0);
                        let end4 = g.b.ins().iadd_imm_s(jn, -3);
                        let j = g.for_range(z, end4, 4, |g, j| {
                            let sp = g.offset(scratch, j, 4);
                            let x = g.load(V4, sp, 0);
                            let d = g.b.ins().fsub(x, mv);
                            let e = g.exp(V4, d);
                            g.store(e, sp, 0);
                            let cur = g.b.use_var(pacc);
                            let n = g.b.ins().fadd(cur, e);
                            g.b.def_var(pacc, n);
                        });
                        let pv = g.b.use_var(pacc);
                        let ps = g.hsum(pv);
                        let psum = g.var(types::F32, ps);
                        g.for_range(j, jn, 1, |g, j| {
                            let sp = g.offset(scratch, j, 4);
                            let x = g.load(types::F32, sp, 0);
                            let d = g.b.ins().fsub(x, m_new);
                            let e = g.exp(types::F32, d);
                            g.store(e, sp, 0);
                            let cur = g.b.use_var(psum);
                            let n = g.b.ins().fadd(cur, e);
                            g.b.def_var(psum, n);
                        });
                        let l_old = g.b.use_var(lvar);
                        let ps = g.b.use_var(psum);
                        let l_new = g.fma(l_old, corr, ps);
                        g.b.def_var(lvar, l_new);
                        g.b.def_var(mvar, m_new);
                        // out = out * corr + sum_j p_j v_j, in chunks of 8 vectors.
                        let corrv = g.b.ins().splat(V4, corr);
                        let nvec = hd / 4;
                        let mut c0 = 0;
                        while c0 < nvec {
                            let cn = (nvec - c0).min(8);
                            let accs: Vec<Variable> = (0..cn)
                                .map(|c| {
                                    let o = g.load(V4, orow, 16 * (c0 + c) as i64);
                                    let o = g.b.ins().fmul(o, corrv);
                                    g.var(V4, o)
                                })
                                .collect();
                            let z = g.iconst(0);
                            g.for_range(z, jn, 1, |g, j| {
                                let sp = g.offset(scratch, j, 4);
                                let p = g.load(types::F32, sp, 0);
                                let pv = g.b.ins().splat(V4, p);
                                let jj = g.b.ins().iadd(j0, j);
                                let vrow = g.offset(vbase, jj, 4 * kf);
                                for (c, acc) in accs.iter().enumerate() {
                                    let x = g.load(V4, vrow, 16 * (c0 + c) as i64);
                                    let cur = g.b.use_var(*acc);
                                    let n = g.fma(pv, x, cur);
                                    g.b.def_var(*acc, n);
                                }
                            });
                            for (c, acc) in accs.iter().enumerate() {
                                let val = g.b.use_var(*acc);
                                g.store(val, orow, 16 * (c0 + c) as i64);
                            }
                            c0 += cn;
                        }
                        if !hd.is_multiple_of(4) {
                            let tails: Vec<Variable> = (hd / 4 * 4..hd)
                                .map(|t| {
                                    let o = g.load(types::F32, orow, 4 * t as i64);
                                    let o = g.b.ins().fmul(o, corr);
                                    g.var(types::F32, o)
                                })
                                .collect();
                            let z = g.iconst(0);
                            g.for_range(z, jn, 1, |g, j| {
                                let sp = g.offset(scratch, j, 4);
                                let p = g.load(types::F32, sp, 0);
                                let jj = g.b.ins().iadd(j0, j);
                                let vrow = g.offset(vbase, jj, 4 * kf);
                                for (ti, acc) in tails.iter().enumerate() {
                                    let x = g.load(types::F32, vrow, 4 * (hd / 4 * 4 + ti) as i64);
                                    let cur = g.b.use_var(*acc);
                                    let n = g.fma(p, x, cur);
                                    g.b.def_var(*acc, n);
                                }
                            });
                            for (ti, acc) in tails.iter().enumerate() {
                                let val = g.b.use_var(*acc);
                                g.store(val, orow, 4 * (hd / 4 * 4 + ti) as i64);
                            }
                        }
                    });
                    // Normalize (a row that saw no key stays zero).
                    let l = g.b.use_var(lvar);
                    let zs = g.fconst(types::F32, 0.0);
                    let pos = g.b.ins().fcmp(FloatCC::GreaterThan, l, zs);
                    let one = g.fconst(types::F32, 1.0);
                    let inv = g.b.ins().fdiv(one, l);
                    let inv = g.b.ins().select(pos, inv, zs);
                    let invv = g.b.ins().splat(V4, inv);
                    g.map_row(&[orow], orow, hd, |g, ty, vals| {
                        let i = if ty == V4 { invv } else { inv };
                        g.b.ins().fmul(vals[0], i)
                    });
                });
            });
        });
    }

    /// Pooled row lookups. With `prefetch` (a host function, see
    /// `host_prefetch`), lookups go in blocks of [`GATHER_BLOCK`]: before
    /// copying a block, one call prefetches the rows of the lookups
    /// [`GATHER_AHEAD`] further on, so that many rows are in flight from
    /// memory at once instead of the few the out-of-order window holds
    /// (each row costs 16 loads and 16 stores at 128 bits).
    fn gather(
        &mut self,
        ptrs: Value,
        ints: Value,
        dim: usize,
        pooling: usize,
        stride: usize,
        prefetch: Option<FuncRef>,
    ) {
        let ids = self.arg_ptr(ptrs, 0);
        let table = self.arg_ptr(ptrs, 1);
        let out = self.arg_ptr(ptrs, 2);
        let count = self.arg_int(ints, 0);
        let total = self.arg_int(ints, 1);
        let start = self.arg_int(ints, 2);
        let local = self.arg_int(ints, 3);
        let col = self.arg_int(ints, 4);
        let zero = self.iconst(0);
        let last = self.b.ins().iadd_imm_s(total, -1);
        let row_bytes = 4 * dim as i64;
        let nvec = dim / 4;
        // Pieces of a row: (type, byte offset).
        let pieces: Vec<(Type, i64)> = (0..nvec)
            .map(|v| (V4, 16 * v as i64))
            .chain((nvec * 4..dim).map(|t| (types::F32, 4 * t as i64)))
            .collect();
        // Lookup `r`: its position in `ids` (and `out` rows), its first
        // row relative to the local range, and whether that row is local.
        let lookup = |g: &mut Self, r: Value| -> (Value, Value, Value) {
            let rs = g.b.ins().imul_imm_s(r, stride as i64);
            let pos = g.b.ins().iadd(rs, col);
            let ip = g.offset(ids, pos, 4);
            let idf = g.load(types::F32, ip, 0);
            let id = g.b.ins().fcvt_to_sint_sat(types::I64, idf);
            let z = g.iconst(0);
            let id = g.imax(id, z);
            let id = g.imin(id, last);
            let lrow = g.b.ins().isub(id, start);
            let inside = g.b.ins().icmp(IntCC::UnsignedLessThan, lrow, local);
            (pos, lrow, inside)
        };
        let mut body = |g: &mut Self, r: Value| {
            let (pos, lrow, inside) = lookup(g, r);
            let orow = g.offset(out, pos, row_bytes);
            if pooling == 1 {
                // A plain copy of the row (or zeros when it is not held here).
                let tr = g.offset(table, lrow, row_bytes);
                g.if_else(
                    inside,
                    |g| {
                        for chunk in pieces.chunks(8) {
                            let vals: Vec<Value> =
                                chunk.iter().map(|(ty, o)| g.load(*ty, tr, *o)).collect();
                            for ((_, o), v) in chunk.iter().zip(vals) {
                                g.store(v, orow, *o);
                            }
                        }
                    },
                    |g| {
                        let zv = g.fconst(V4, 0.0);
                        let zs = g.fconst(types::F32, 0.0);
                        for (ty, o) in &pieces {
                            g.store(if *ty == V4 { zv } else { zs }, orow, *o);
                        }
                    },
                );
                return;
            }
            // Chunks of up to 8 pieces accumulated over the pooled rows
            // `id, id + 1, ...` (wrapping at `total`).
            let id = g.b.ins().iadd(lrow, start);
            for chunk in pieces.chunks(8) {
                let accs: Vec<Variable> = chunk
                    .iter()
                    .map(|(ty, _)| {
                        let zc = g.fconst(*ty, 0.0);
                        g.var(*ty, zc)
                    })
                    .collect();
                let row = g.var(types::I64, id);
                g.for_count(pooling, |g, _| {
                    let cur = g.b.use_var(row);
                    let lrow = g.b.ins().isub(cur, start);
                    let inside = g.b.ins().icmp(IntCC::UnsignedLessThan, lrow, local);
                    g.if_then(inside, |g| {
                        let tr = g.offset(table, lrow, row_bytes);
                        for ((ty, o), acc) in chunk.iter().zip(&accs) {
                            let x = g.load(*ty, tr, *o);
                            let a = g.b.use_var(*acc);
                            let n = g.b.ins().fadd(a, x);
                            g.b.def_var(*acc, n);
                        }
                    });
                    let next = g.b.ins().iadd_imm_s(cur, 1);
                    let wrap = g.b.ins().icmp(IntCC::Equal, next, total);
                    let z = g.iconst(0);
                    let next = g.b.ins().select(wrap, z, next);
                    g.b.def_var(row, next);
                });
                for ((_, o), acc) in chunk.iter().zip(&accs) {
                    let val = g.b.use_var(*acc);
                    g.store(val, orow, *o);
                }
            }
        };
        let Some(pf) = prefetch else {
            self.for_range(zero, count, 1, body);
            return;
        };
        let slots = GATHER_AHEAD.max(GATHER_BLOCK);
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            8 * slots as u32,
            3,
        ));
        let addrs = self.b.ins().stack_addr(self.ptr, slot, 0);
        let end = self.offset(table, local, row_bytes);
        let bytes = self.iconst(PREFETCH_CAP.min(4 * dim * pooling) as i64);
        // Prefetches the first rows of lookups `lo..hi` (`hi - lo <= slots`).
        let issue = |g: &mut Self, lo: Value, hi: Value| {
            let hi = g.imin(hi, count);
            let n = g.b.ins().isub(hi, lo);
            let some = g.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, n, 0);
            g.if_then(some, |g| {
                g.for_range(lo, hi, 1, |g, j| {
                    let (_, lrow, inside) = lookup(g, j);
                    let tr = g.offset(table, lrow, row_bytes);
                    let z = g.iconst(0);
                    let a = g.b.ins().select(inside, tr, z);
                    let k = g.b.ins().isub(j, lo);
                    let at = g.offset(addrs, k, 8);
                    g.store(a, at, 0);
                });
                g.b.ins().call(pf, &[addrs, n, bytes, end]);
            });
        };
        let ahead = self.iconst(GATHER_AHEAD);
        issue(self, zero, ahead);
        self.for_range(zero, count, GATHER_BLOCK, |g, b0| {
            let lo = g.b.ins().iadd_imm_s(b0, GATHER_AHEAD);
            let hi = g.b.ins().iadd_imm_s(lo, GATHER_BLOCK);
            issue(g, lo, hi);
            let b1 = g.b.ins().iadd_imm_s(b0, GATHER_BLOCK);
            let b1 = g.imin(b1, count);
            g.for_range(b0, b1, 1, &mut body);
        });
    }

    fn interact(&mut self, ptrs: Value, ints: Value, n: usize, dim: usize) {
        let dense = self.arg_ptr(ptrs, 0);
        let sparse = self.arg_ptr(ptrs, 1);
        let out = self.arg_ptr(ptrs, 2);
        let batch = self.arg_int(ints, 0);
        let vecs = n + 1;
        let width = dim + vecs * (vecs - 1) / 2;
        let zero = self.iconst(0);
        self.for_range(zero, batch, 1, |g, s| {
            let drow = g.offset(dense, s, 4 * dim as i64);
            let srow = g.offset(sparse, s, 4 * (n * dim) as i64);
            let orow = g.offset(out, s, 4 * width as i64);
            g.map_row(&[drow], orow, dim, |_, _, v| v[0]);
            let first = g.iconst(dim as i64);
            let idx = g.var(types::I64, first);
            g.for_count(vecs, |g, i| {
                // v_0 is the dense row, v_i (i >= 1) row i - 1 of the sparse block.
                let im1 = g.b.ins().iadd_imm_s(i, -1);
                let sp = g.offset(srow, im1, 4 * dim as i64);
                let is0 = g.b.ins().icmp_imm_s(IntCC::Equal, i, 0);
                let vi = g.b.ins().select(is0, drow, sp);
                let j0 = g.b.ins().iadd_imm_s(i, 1);
                let e = g.iconst(vecs as i64);
                g.for_range(j0, e, 1, |g, j| {
                    let jm1 = g.b.ins().iadd_imm_s(j, -1);
                    let vj = g.offset(srow, jm1, 4 * dim as i64);
                    let d = g.dot(vi, vj, dim);
                    let cur = g.b.use_var(idx);
                    let o = g.offset(orow, cur, 4);
                    g.store(d, o, 0);
                    let nx = g.b.ins().iadd_imm_s(cur, 1);
                    g.b.def_var(idx, nx);
                });
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference as r;

    fn data(n: usize, salt: u64) -> Vec<f32> {
        let init = crate::init::Init::new(salt);
        (0..n as u64)
            .map(|i| init.symmetric(crate::init::Key(salt), i, 1.0))
            .collect()
    }

    fn close(got: &[f32], want: &[f32]) {
        let (abs, rel) = crate::graph::compare(got, want);
        assert!(
            rel < 1e-5 || abs < 1e-6,
            "abs {abs} rel {rel}\n got {:?}\nwant {:?}",
            &got[..got.len().min(8)],
            &want[..want.len().min(8)]
        );
    }

    #[test]
    fn matmul_matches_reference_on_odd_shapes() {
        let mut jit = Jit::new().expect("jit");
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (7, 3, 9),
            (13, 17, 8),
            (6, 4, 16),
            (50, 9, 33),
            (1, 64, 3),
            (97, 2, 1),
        ] {
            let a = data(m * k, 1);
            let b = data(k * n, 2);
            let bias = data(n, 3);
            let mut c = vec![f32::NAN; m * n];
            jit.matmul(m, k, n, &a, &pack_b(&b, k, n), Some(&bias), &mut c)
                .expect("runs");
            close(&c, &r::linear(&a, &b, Some(&bias), k, n));
            let mut c = vec![f32::NAN; m * n];
            jit.matmul(m, k, n, &a, &pack_b(&b, k, n), None, &mut c)
                .expect("runs");
            close(&c, &r::matmul(&a, &b, m, k, n));
        }
    }

    /// The micro-kernel's loop: every accumulator stays in a register (no
    /// vector spill or reload), one broadcast per row and step, and `fma`s
    /// with a register addend.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn matmul_inner_loop_keeps_accumulators_in_registers() {
        if !std::arch::is_x86_feature_detected!("fma")
            || !std::arch::is_x86_feature_detected!("avx2")
        {
            return;
        }
        let mut jit = Jit::new().expect("jit").with_asm(true);
        let (m, k, n) = (8, 64, 16);
        let mut c = vec![0.0; m * n];
        jit.matmul(
            m,
            k,
            n,
            &[1.0; 8 * 64],
            &pack_b(&[1.0; 64 * 16], k, n),
            None,
            &mut c,
        )
        .expect("runs");
        assert!(c.iter().all(|v| *v == k as f32));
        let (_, asm) = &jit.asm()[0];
        // The loop holding the full MR x NR tile: the block with the most fmas.
        let blocks: Vec<&str> = asm.split("\nblock").collect();
        let tile = blocks
            .iter()
            .max_by_key(|b| b.matches("vfmadd").count())
            .expect("blocks");
        assert_eq!(tile.matches("vfmadd").count(), MR * NR / 4 * KU, "{tile}");
        assert_eq!(tile.matches("vbroadcastss").count(), MR * KU, "{tile}");
        let spills = tile
            .lines()
            .filter(|l| l.contains("rsp") && l.contains("xmm"))
            .count();
        assert_eq!(spills, 0, "vector spills in the micro-kernel:\n{tile}");
    }

    #[test]
    fn elementwise_chains_match_reference() {
        use gantry_lang::program::{Activation as A, BinaryOp as B};
        let mut jit = Jit::new().expect("jit");
        for len in [1, 3, 4, 5, 17, 33, 64, 101] {
            let x = data(len, 4);
            let y: Vec<f32> = data(len, 5).iter().map(|v| v + 2.5).collect();
            for (u, a) in [
                (Unary::Relu, A::Relu),
                (Unary::Gelu, A::Gelu),
                (Unary::Silu, A::Silu),
                (Unary::Sigmoid, A::Sigmoid),
            ] {
                let e = Expr::Unary(u, Box::new(Expr::Input(0)));
                let mut out = vec![f32::NAN; len];
                jit.elementwise(&e, &[&x], &mut out).expect("runs");
                let want: Vec<f32> = x.iter().map(|v| r::activation(a, *v * 4.0) / 1.0).collect();
                let _ = want;
                let want: Vec<f32> = x.iter().map(|v| r::activation(a, *v)).collect();
                close(&out, &want);
            }
            for (bop, rb) in [
                (Binary::Add, B::Add),
                (Binary::Sub, B::Sub),
                (Binary::Mul, B::Mul),
                (Binary::Div, B::Div),
            ] {
                // silu(x0) op scale(x1), a fused chain of three ops.
                let e = Expr::Binary(
                    bop,
                    Box::new(Expr::Unary(Unary::Silu, Box::new(Expr::Input(0)))),
                    Box::new(Expr::Unary(
                        Unary::Scale(0.5f32.to_bits()),
                        Box::new(Expr::Input(1)),
                    )),
                );
                let mut out = vec![f32::NAN; len];
                jit.elementwise(&e, &[&x, &y], &mut out).expect("runs");
                let want: Vec<f32> = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| r::binary(rb, r::activation(A::Silu, *a), b * 0.5))
                    .collect();
                close(&out, &want);
            }
        }
        // Large magnitudes: exp must saturate, not produce NaN.
        let x = vec![-1000.0, -90.0, -30.0, 0.0, 30.0, 90.0, 1000.0];
        let mut out = vec![0.0; x.len()];
        jit.elementwise(
            &Expr::Unary(Unary::Sigmoid, Box::new(Expr::Input(0))),
            &[&x],
            &mut out,
        )
        .expect("runs");
        let want: Vec<f32> = x.iter().map(|v| r::activation(A::Sigmoid, *v)).collect();
        close(&out, &want);
    }

    #[test]
    fn row_kernels_match_reference() {
        let mut jit = Jit::new().expect("jit");
        for (rows, dim) in [(1, 1), (3, 5), (2, 4), (4, 7), (1, 64), (5, 129)] {
            let x: Vec<f32> = data(rows * dim, 6).iter().map(|v| v * 3.0 + 0.5).collect();
            let g: Vec<f32> = data(dim, 7).iter().map(|v| 1.0 + 0.1 * v).collect();
            let b = data(dim, 8);
            let mut out = vec![f32::NAN; rows * dim];
            jit.rmsnorm(dim, &x, &g, &mut out).expect("runs");
            close(&out, &r::rmsnorm(&x, &g, dim));
            jit.layernorm(dim, &x, &g, &b, &mut out).expect("runs");
            if dim > 1 {
                close(&out, &r::layernorm(&x, &g, &b, dim));
            }
            jit.softmax(dim, &x, &mut out).expect("runs");
            close(&out, &r::softmax(&x, dim));
        }
    }

    #[test]
    fn attention_matches_reference() {
        let mut jit = Jit::new().expect("jit");
        // (batch, seq_q, seq_kv, heads, kv_heads, head_dim, causal)
        for (b, sq, skv, h, kvh, hd, causal) in [
            (1, 1, 1, 1, 1, 1, true),
            (2, 5, 5, 4, 2, 3, true),
            (1, 7, 7, 2, 2, 8, false),
            (2, 3, 9, 6, 3, 5, true),
            (1, 70, 70, 2, 1, 16, true),
            (1, 9, 4, 2, 2, 4, true),
            (3, 1, 130, 4, 1, 12, false),
        ] {
            let q = data(b * sq * h * hd, 9);
            let k = data(b * skv * kvh * hd, 10);
            let v = data(b * skv * kvh * hd, 11);
            let spec = AttentionSpec {
                heads: h,
                head_dim: hd,
                seq_q: sq,
                seq_kv: skv,
                group: h / kvh,
                q_head_offset: 0,
                kv_head_offset: 0,
                kv_heads: kvh,
                causal,
            };
            let mut out = vec![f32::NAN; q.len()];
            jit.attention(&spec, b, &q, &k, &v, &mut out).expect("runs");
            close(
                &out,
                &r::attention(&q, &k, &v, b, sq, skv, h, kvh, hd, causal),
            );
        }
    }

    #[test]
    fn gather_and_interact_match_reference() {
        let mut jit = Jit::new().expect("jit");
        let (rows, dim, pooling) = (11, 5, 3);
        let table = data(rows * dim, 12);
        let ids = vec![0.0, 10.0, 4.0, 7.0, 99.0, -3.0];
        let stride = 2;
        let mut out = vec![0.0; 3 * stride * dim];
        for col in 0..stride {
            jit.gather(dim, pooling, stride, col, &ids, &table, rows, 0, &mut out)
                .expect("runs");
        }
        let mut want = vec![0.0; out.len()];
        for (i, id) in ids.iter().enumerate() {
            let id = r::clamp_id(*id, rows as u64);
            for p in 0..pooling {
                let row = (id + p) % rows;
                for j in 0..dim {
                    want[i * dim + j] += table[row * dim + j];
                }
            }
        }
        close(&out, &want);
        // A shard holding rows 4..8 only contributes those rows.
        let mut part = vec![0.0; 3 * stride * dim];
        jit.gather(
            dim,
            pooling,
            stride,
            0,
            &ids,
            &table[4 * dim..8 * dim],
            rows,
            4,
            &mut part,
        )
        .expect("runs");
        assert!(
            part[..dim].iter().all(|v| *v == 0.0),
            "ids 0..3 miss rows 4..8"
        );
        for (n, d, b) in [(1, 1, 1), (3, 5, 2), (4, 8, 3), (26, 16, 2)] {
            let dense = data(b * d, 13);
            let sparse = data(b * n * d, 14);
            let mut out = vec![f32::NAN; b * (d + (n + 1) * n / 2)];
            jit.interact(n, d, b, &dense, &sparse, &mut out)
                .expect("runs");
            close(&out, &r::interact(&dense, &sparse, b, n, d));
        }
    }

    /// The gather kernel's blocks (prefetch ahead, then copy) at counts
    /// around the block and prefetch distances, pooled and not, with a
    /// shard of the table, a column of several, ids out of range.
    #[test]
    fn gather_blocks_match_reference() {
        let mut jit = Jit::new().expect("jit");
        let total = 37;
        let ahead = (GATHER_AHEAD + GATHER_BLOCK) as usize;
        for dim in [1, 5, 8, 64] {
            let table = data(total * dim, 15);
            for pooling in [1, 3] {
                for (start, local) in [(0, total), (9, 20), (30, 7)] {
                    for count in [1, 7, 8, 9, 16, 17, ahead - 1, ahead, ahead + 1, 100] {
                        let (stride, col) = (3, 2);
                        let ids: Vec<f32> = (0..count * stride)
                            .map(|i| match i % 11 {
                                0 => -5.0,
                                1 => 1e9,
                                _ => ((i * 7) % (total + 3)) as f32,
                            })
                            .collect();
                        let mut out = vec![f32::NAN; count * stride * dim];
                        let shard = &table[start * dim..(start + local) * dim];
                        jit.gather(
                            dim, pooling, stride, col, &ids, shard, total, start, &mut out,
                        )
                        .expect("runs");
                        for r in 0..count {
                            let pos = r * stride + col;
                            let id = r::clamp_id(ids[pos], total as u64);
                            let mut want = vec![0.0f32; dim];
                            for p in 0..pooling {
                                let row = (id + p) % total;
                                if (start..start + local).contains(&row) {
                                    for (w, t) in want.iter_mut().zip(&table[row * dim..]) {
                                        *w += t;
                                    }
                                }
                            }
                            assert_eq!(
                                out[pos * dim..][..dim],
                                want[..],
                                "dim {dim} pooling {pooling} shard {start}+{local} count {count} row {r}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_reject_short_buffers() {
        let mut jit = Jit::new().expect("jit");
        let a = vec![0.0; 5];
        let mut c = vec![0.0; 4];
        let e = jit
            .matmul(2, 3, 2, &a, &pack_b(&[0.0; 6], 3, 2), None, &mut c)
            .unwrap_err();
        assert_eq!(e.code, RCode::R005);
    }
}
