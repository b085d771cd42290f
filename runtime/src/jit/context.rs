//! The JIT context: code memory, compilation contexts, the kernel cache,
//! and the only places generated code is entered or freed.
//!
//! Shaped so: everything `unsafe` about running generated code sits in
//! this one file (the `transmute` to a function pointer, the call, the
//! freeing of code memory), behind [`Jit::call`], which the kernel
//! families reach only after checking their buffers. Compilation reuses
//! one `JITModule` (with its ISA and flags), one Cranelift `Context` and
//! one `FunctionBuilderContext` for the whole life of the context, so a
//! kernel costs only its own code generation.
//!
//! Settings, measured with `cargo bench --bench kernels` and per-kernel
//! timings on the reference host: `opt_level=none` for every kernel. The
//! mid-end's e-graph pass (`speed`) costs about a quarter of a kernel's
//! compile time and made no kernel faster: its elaboration places pure
//! instructions after the loads of a loop body, which lengthens live
//! ranges (the matrix product's accumulators spilled; layernorm ran at
//! half speed, attention and softmax about 30% slower). The IR verifier
//! (about a third of the compile time) runs in debug builds only.

use std::collections::HashMap;

use cranelift_codegen::Context;
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, FuncRef, InstBuilder, Type, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module, default_libcall_names};

use super::codegen::Gen;
#[cfg(target_arch = "x86_64")]
use super::gather::host_prefetch;
use super::spec::KernelSpec;
use crate::error::{RCode, RuntimeError};

type KernelFn = unsafe extern "C" fn(*const *mut f32, *const i64);

extern "C" fn host_fmaf(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

pub(super) fn jit_err(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::new(RCode::R005, format!("kernel compilation failed: {what}"))
        .with_help("this is a runtime bug; please report it with the command line")
}

pub(super) fn buffer_err(kernel: &str, what: &str, need: usize, have: usize) -> RuntimeError {
    RuntimeError::new(
        RCode::R005,
        format!("kernel `{kernel}` needs {need} floats of {what}, got {have}"),
    )
    .with_help("this is a runtime bug; please report it with the command line")
}

/// The JIT module for the host CPU.
pub(super) fn host_module() -> Result<JITModule, RuntimeError> {
    let mut flags = settings::builder();
    for (k, v) in [
        ("opt_level", "none"),
        ("is_pic", "false"),
        ("use_colocated_libcalls", "false"),
        // Debug builds (and so every test) keep the verifier.
        (
            "enable_verifier",
            if cfg!(debug_assertions) {
                "true"
            } else {
                "false"
            },
        ),
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
    ctx: Context,
    fctx: FunctionBuilderContext,
    cache: HashMap<KernelSpec, KernelFn>,
    capture: bool,
    clif: Vec<(String, String)>,
    capture_asm: bool,
    asm: Vec<(String, String)>,
    pub(super) scratch: Vec<f32>,
    next_id: u32,
}

impl Drop for Jit {
    fn drop(&mut self) {
        self.cache.clear();
        if let Some(m) = self.module.take() {
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
        let module = host_module()?;
        Ok(Jit {
            ctx: module.make_context(),
            module: Some(module),
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
        let module = self
            .module
            .as_mut()
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
        let host = match host_import(spec, ptr) {
            Some((symbol, params)) => {
                let mut hsig = module.make_signature();
                hsig.params.extend(params.into_iter().map(AbiParam::new));
                let hid = module
                    .declare_function(symbol, Linkage::Import, &hsig)
                    .map_err(jit_err)?;
                Some(module.declare_func_in_func(hid, &mut self.ctx.func))
            }
            None => None,
        };
        {
            let b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let mut g = Gen::new(b, ptr);
            generate(&mut g, spec, host);
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

    pub(super) fn call(
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
}

pub(super) fn check(
    kernel: &str,
    what: &str,
    need: usize,
    have: usize,
) -> Result<(), RuntimeError> {
    if have < need {
        return Err(buffer_err(kernel, what, need, have));
    }
    Ok(())
}

/// The host function a kernel calls, if any (Cranelift has neither a
/// prefetch nor a streaming store): its symbol and parameter types.
/// x86-64 only; elsewhere the kernels do without.
fn host_import(spec: &KernelSpec, ptr: Type) -> Option<(&'static str, Vec<Type>)> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    match spec {
        KernelSpec::Gather { .. } => Some(("gantry_prefetch", vec![ptr, I64, I64, ptr])),
        _ => None,
    }
}

/// The body of the kernel of `spec`, from the entry block to the return.
fn generate(g: &mut Gen, spec: &KernelSpec, host: Option<FuncRef>) {
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
        } => g.gather(ptrs, ints, *dim, *pooling, *stride, host),
        KernelSpec::Interact { n, dim } => g.interact(ptrs, ints, *n, *dim),
    }
    g.b.ins().return_(&[]);
}
