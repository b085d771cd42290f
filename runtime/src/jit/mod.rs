//! Kernel generation with Cranelift: the only module with `unsafe`.
//!
//! A [`Jit`] is a reusable context: it owns the `JITModule`s (the code
//! memory), Cranelift's compilation context and the function-builder
//! context, and a cache of compiled kernels keyed by [`KernelSpec`]. Each
//! kernel is built by a short-lived `Gen` (a `FunctionBuilder` plus
//! helpers), defined, finalized and cached. Cranelift types never leave
//! this module: callers describe kernels with plain data and call them
//! through typed, length-checked methods, so no caller can make a kernel
//! read or write outside its buffers. Function pointers never escape the
//! context; dropping it frees the code.
//!
//! Shapes are baked in as constants (`k`, `n`, `dim`, head sizes, ...);
//! only the batch-like outer count (rows, lookups, samples) is a runtime
//! argument, so one kernel serves every microbatch and every expert's
//! share of tokens. Every kernel has one ABI:
//! `extern "C" fn(ptrs: *const *mut f32, ints: *const i64)`.
//!
//! Vectors are 128 bits (`f32x4`; the x64 backend has no wider float
//! vectors): width comes from unrolling with independent accumulators.
//!
//! Why it is shaped so: one submodule per kernel family, each holding both
//! the typed entry point (`impl Jit`, which checks every buffer length)
//! and the code generator (`impl Gen`) whose loads and stores those checks
//! cover, so the two are read and changed together. The pieces every
//! family shares sit apart: `spec` (plain-data kernel descriptions, the
//! public vocabulary), `context` (the modules, the compile cache and the
//! only calls into generated code) and `codegen` (IR-building helpers:
//! loops, memory access, `exp`, row traversals).
//!
//! - `spec`: `Unary`, `Binary`, `Expr`, `AttentionSpec`, `KernelSpec`.
//! - `context`: `Jit`, Cranelift settings, compile and call.
//! - `codegen`: `Gen`, the helpers every kernel uses.
//! - `gemm`: packed-B matrix product (`pack_b`, micro-kernel).
//! - `elementwise`: fused expressions and activation functions.
//! - `norm`: rmsnorm, layernorm, softmax.
//! - `backward`: the norms' and softmax's gradients.
//! - `attention`: blocked online-softmax attention.
//! - `gather`: embedding lookups and bags, with host prefetch.
//! - `interact`: the DLRM pairwise interaction.

mod attention;
mod backward;
mod codegen;
mod context;
mod elementwise;
mod gather;
mod gemm;
mod interact;
mod norm;
mod spec;
#[cfg(test)]
mod tests;

pub use attention::KEY_BLOCK;
pub use context::Jit;
pub use gemm::{NR, pack_b, packed_len};
pub use spec::{AttentionSpec, Binary, Expr, KernelSpec, Unary};
