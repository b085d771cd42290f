"""Bytes one Llama 3 block keeps for its backward, per token, measured in torch.

Not run by CI (it needs torch); its output is committed next to it as
measure_block_memory.txt and read by a person comparing it with Gantry's
per-layer activation accounting (compiler/src/ir.rs `save`, cost.rs
`segment`).

The block is written as torchtitan writes its Llama 3 (models/llama/model.py
at the commit of the reference runs): RMSNorm computed in fp32 and cast back,
rotary embeddings through complex multiplication, `repeat_kv` before
scaled_dot_product_attention, SwiGLU feed-forward. bf16 on CPU at small widths
with the Llama 3 8B ratios (d_ff = 3.5 d, 4 query heads per KV head, head dim
128); bytes are reported per token in units of d_model bytes so that they scale
to any width with these ratios.

Counted:
- eager, recompute none: every tensor autograd saves, deduplicated by storage
  (saved_tensors_hooks);
- torch.compile, recompute none: what AOTAutograd's min-cut partitioner (the one
  torch.compile uses) saves between its forward and backward graphs;
- op-level selective AC (torchtitan's policy: keep the outputs of every other
  matrix product and of attention, recompute the rest): the block input plus the
  outputs of the kept ops, read from a dispatch-mode trace of the forward;
- full AC: the block input.
Also the loss's peak bytes per logit (Gantry's `LOSS_BYTES_PER_LOGIT`).
"""

import math
import sys

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

DT = torch.bfloat16


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(d, dtype=DT))

    def forward(self, x):
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


def rope(xq, xk, freqs):
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    f = freqs.view(1, xq_.shape[1], 1, xq_.shape[-1])
    xq_out = torch.view_as_real(xq_ * f).flatten(3)
    xk_out = torch.view_as_real(xk_ * f).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


def repeat_kv(x, n):
    bs, s, kv, hd = x.shape
    if n == 1:
        return x
    return x[:, :, :, None, :].expand(bs, s, kv, n, hd).reshape(bs, s, kv * n, hd)


class Block(torch.nn.Module):
    def __init__(self, d, heads, kv_heads, ff):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, d // heads
        self.attention_norm = RMSNorm(d)
        self.ffn_norm = RMSNorm(d)
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False, dtype=DT)  # noqa: E731
        self.wq, self.wk, self.wv = lin(d, d), lin(d, kv_heads * self.hd), lin(d, kv_heads * self.hd)
        self.wo = lin(d, d)
        self.w1, self.w3, self.w2 = lin(d, ff), lin(d, ff), lin(ff, d)

    def forward(self, x, freqs):
        bs, s, _ = x.shape
        h = self.attention_norm(x)
        xq = self.wq(h).view(bs, s, self.h, self.hd)
        xk = self.wk(h).view(bs, s, self.kv, self.hd)
        xv = self.wv(h).view(bs, s, self.kv, self.hd)
        xq, xk = rope(xq, xk, freqs)
        keys = repeat_kv(xk, self.h // self.kv)
        values = repeat_kv(xv, self.h // self.kv)
        q, k, v = (t.transpose(1, 2) for t in (xq, keys, values))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o = o.transpose(1, 2).contiguous().view(bs, s, -1)
        x = x + self.wo(o)
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


def freqs_cis(hd, s):
    f = 1.0 / (500000.0 ** (torch.arange(0, hd, 2).float() / hd))
    t = torch.arange(s).float()
    return torch.polar(torch.ones(s, hd // 2), torch.outer(t, f))


def eager_saved(block, x, freqs, params):
    # The rotary table is one constant buffer of the model, not a layer's.
    params = params | {freqs.untyped_storage().data_ptr()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        key = st.data_ptr()
        if key not in params:
            seen[key] = max(seen.get(key, 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x, freqs)
    return sum(seen.values()), y


class Trace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        nbytes = sum(t.untyped_storage().nbytes() for t in outs if isinstance(t, torch.Tensor))
        self.ops.append((func, nbytes, [t.nbytes for t in outs if isinstance(t, torch.Tensor)]))
        return out


def sac_saved(block, x, freqs):
    """torchtitan's op-level policy: keep mm outputs except every second one,
    and attention's outputs; recompute everything else."""
    tr = Trace()
    with torch.no_grad(), tr:
        block(x, freqs)
    aten = torch.ops.aten
    mm_count, kept = 0, 0
    for func, nbytes, _ in tr.ops:
        if func in (aten.mm.default,):
            mm_count += 1
            if mm_count % 2 == 0:
                continue
            kept += nbytes
        elif "scaled_dot_product" in str(func):
            kept += nbytes
    return kept + x.nbytes


def compiled_saved(block, x, freqs, tokens_dim):
    from functorch.compile import aot_module, min_cut_rematerialization_partition

    saved = {}

    def fw(gm, example_inputs):
        out = [n for n in gm.graph.nodes if n.op == "output"][0]
        vals = out.args[0]
        # Outputs beyond the block's own result are what backward reads;
        # activations are the ones with a token dimension (weights and the
        # rotary table have none), each storage once (views of the same
        # node, such as a detach of attention's output, are not new bytes).
        b, seen = 0, set()
        for n in vals[1:]:
            v = n.meta.get("val") if hasattr(n, "meta") else None
            if not isinstance(v, torch.Tensor) or v.is_complex():
                continue
            if tokens_dim not in v.shape:
                continue
            base = n
            while base.op == "call_function" and str(base.target) in ("aten.detach.default", "aten.t.default"):
                base = base.args[0]
            if base.name in seen:
                continue
            seen.add(base.name)
            b += v.numel() * v.element_size()
        saved["bytes"] = b
        return gm

    def bw(gm, example_inputs):
        return gm

    m = aot_module(block, fw_compiler=fw, bw_compiler=bw, partition_fn=min_cut_rematerialization_partition)
    y = m(x, freqs)
    y.sum().backward()
    return saved["bytes"]


def loss_peak_bytes_per_logit():
    """Peak bytes per logit of torchtitan's loss: logits upcast to fp32,
    cross-entropy, `del pred`, backward (MemTracker of torch.distributed;
    it tracks CPU tensors too)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tokens, d, vocab = 4096, 64, 32000
    out = torch.nn.Linear(d, vocab, bias=False, dtype=DT)
    h = torch.randn(1, tokens, d, dtype=DT, requires_grad=True)
    labels = torch.randint(0, vocab, (1, tokens))
    mt = MemTracker()
    mt.track_external(out, h, labels)
    with mt:
        pred = out(h).float()
        loss = F.cross_entropy(pred.flatten(0, 1).float(), labels.flatten(0, 1))
        del pred
        loss.backward()
    peak = {str(k).split(".")[-1]: v for _, snap in mt.get_tracker_snapshot("peak").items() for k, v in snap.items()}
    return (peak["ACT"] + peak["TEMP"]) / (tokens * vocab)


def main():
    torch.manual_seed(0)
    d, heads, kv_heads, ff = 512, 4, 1, 1792  # Llama 3 8B ratios, head dim 128
    bs, s = 1, 256
    tokens = bs * s
    block = Block(d, heads, kv_heads, ff)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    freqs = freqs_cis(d // heads, s)
    x = torch.randn(bs, s, d, dtype=DT, requires_grad=True)
    kvd = kv_heads * (d // heads)

    eager, _ = eager_saved(block, x, freqs, params)
    sac = sac_saved(block, x.detach(), freqs)
    full = x.nbytes
    try:
        comp = compiled_saved(block, x, freqs, s)
    except Exception as e:  # noqa: BLE001
        print("compiled: failed:", e, file=sys.stderr)
        comp = math.nan

    # Gantry's accounting (ir.rs `save`): norm inputs, the projections'
    # inputs, q, k, v, attention output, the fused kernel's fp32 log-sum-exp
    # per head, SwiGLU's three ff-wide tensors and w2's input; bf16.
    lse = 4 * heads
    gantry = 2 * (d + d + d + d + 2 * kvd + d + d) + lse + 2 * 4 * ff
    # Op-level selective: the input, attention's output and log-sum-exp, and
    # the outputs of the first, third, ... linear (wq, wv, w1, w2).
    gantry_sac = 2 * (d + d + d + kvd + ff + d) + lse
    print(f"Llama 3 block, d_model {d}, heads {heads}, kv_heads {kv_heads}, d_ff {ff}, {tokens} tokens, bf16")
    print("bytes kept for backward per token per layer, and in units of d_model bytes (bytes / d):")
    for name, b in [
        ("eager, recompute none", eager),
        ("compiled (min-cut), recompute none", comp),
        ("op-level selective AC (torchtitan)", sac),
        ("full AC (block input)", full),
        ("Gantry, recompute none (either fusion)", gantry * tokens),
        ("Gantry, recompute selective", gantry_sac * tokens),
    ]:
        print(f"  {name:40s} {b / tokens:10.1f} B/token  {b / tokens / d:6.2f} d")
    print(f"loss (fp32 cross-entropy) peak: {loss_peak_bytes_per_logit():.2f} bytes per logit (Gantry: 12)")


if __name__ == "__main__":
    main()
