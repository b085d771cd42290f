"""Peak memory of a torchtitan-style Llama 3 training step on one CUDA GPU:
what the caching allocator reserves beyond what tensors occupy.

Not run by CI (it needs torch and a GPU); its output is committed next to
it as measure_allocator_gpu.txt and read by a person comparing it with
Gantry's memory accounting (docs/COST-MODEL.md §6). Section F of the shared
reference runs reports torch's `max_reserved` (torchtitan's logged peak);
Gantry estimates tensors (allocated bytes), so the gap between the two is
the allocator's, and is measured here rather than fitted.

The model is measure_block_memory.py's block (torchtitan's Llama 3) at the
Llama 3.1 8B widths (d_model 4096, 32 heads, 8 KV heads, d_ff 14336, vocab
128256), bf16 weights, with `L` layers, an embedding, a final norm and the
output projection; the loss is torchtitan's (logits upcast to fp32,
cross-entropy). Recomputation: op-level selective (torchtitan's policy:
keep the output of every second `mm` and of attention) or full (each block
checkpointed). Each configuration runs in its own process (the allocator
setting must precede CUDA's start) at L = 2 and L = 4 layers, so the
per-layer and the fixed parts separate: after a warm-up step (gradients
kept), the peak is read over one more forward and backward.
Printed per run: the bytes allocated before the step (weights and
gradients), the step's peak allocated above that, the peak reserved, and
reserved minus allocated at the peak.
"""

import json
import os
import subprocess
import sys

GiB = 2**30


def run_one(cfg):
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import measure_block_memory as mb

    torch.manual_seed(0)
    dev = torch.device("cuda")
    d, heads, kv_heads, ff, vocab = 4096, 32, 8, 14336, 128256
    layers, bs, s, recompute = cfg["layers"], cfg["batch"], cfg["seq"], cfg["recompute"]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = torch.nn.Embedding(vocab, d, dtype=mb.DT)
            self.blocks = torch.nn.ModuleList(mb.Block(d, heads, kv_heads, ff) for _ in range(layers))
            self.norm = mb.RMSNorm(d)
            self.out = torch.nn.Linear(d, vocab, bias=False, dtype=mb.DT)

        def forward(self, tokens, freqs):
            x = self.tok(tokens)
            for b in self.blocks:
                if recompute == "full":
                    x = checkpoint(b, x, freqs, use_reentrant=False)
                elif recompute == "selective":
                    x = checkpoint(b, x, freqs, use_reentrant=False, context_fn=sac_context)
                else:
                    x = b(x, freqs)
            return self.out(self.norm(x))

    aten = torch.ops.aten
    save = {
        aten.mm.default,
        aten._scaled_dot_product_efficient_attention.default,
        aten._scaled_dot_product_flash_attention.default,
        aten._scaled_dot_product_cudnn_attention.default,
    }

    def sac_context():
        meta = {"forward": 0, "recompute": 0}

        def policy(ctx, func, *args, **kwargs):
            mode = "recompute" if ctx.is_recompute else "forward"
            if func == aten.mm.default:
                meta[mode] += 1
            keep = func in save and not (func == aten.mm.default and meta[mode] % 2 == 0)
            return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    model = Model().to(dev)
    freqs = mb.freqs_cis(d // heads, s).to(dev)
    tokens = torch.randint(0, vocab, (bs, s), device=dev)
    labels = torch.randint(0, vocab, (bs, s), device=dev)

    def step():
        pred = model(tokens, freqs).float()
        loss = F.cross_entropy(pred.flatten(0, 1), labels.flatten(0, 1))
        del pred
        loss.backward()

    step()  # warm-up: gradients now exist and stay (accumulated)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    return {
        **cfg,
        "base": base,
        "step_peak_above_base": peak - base,
        "peak_allocated": peak,
        "peak_reserved": reserved,
        "reserved_minus_allocated": reserved - peak,
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
    }


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--summarize":
        # The table again from a run's printed JSON lines (a run cut short).
        with open(sys.argv[2]) as f:
            summarize([json.loads(line) for line in f if line.startswith("{")])
        return
    if len(sys.argv) > 1:
        print(json.dumps(run_one(json.loads(sys.argv[1]))))
        return
    rows = []
    for alloc in ["", "expandable_segments:True"]:
        for recompute, batch, seq in [("selective", 2, 8192), ("full", 2, 8192), ("full", 1, 32768)]:
            for layers in [2, 4]:
                cfg = {"alloc": alloc, "recompute": recompute, "batch": batch, "seq": seq, "layers": layers}
                env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF=alloc)
                r = subprocess.run([sys.executable, __file__, json.dumps(cfg)], env=env, capture_output=True, text=True)
                if r.returncode != 0:
                    print("failed:", cfg, r.stderr[-2000:], file=sys.stderr)
                    continue
                row = json.loads(r.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    summarize(rows)


def summarize(rows):
    print()
    print(f"{rows[0]['gpu']}, torch {rows[0]['torch']}; Llama 3.1 8B widths, bf16; GiB")
    print(f"{'allocator':26s} {'recompute':10s} {'batch':>5s} {'seq':>6s} {'L':>2s} {'base':>7s} {'step peak':>9s} {'reserved':>9s} {'res-alloc':>9s}")
    for r in rows:
        print(
            f"{r['alloc'] or 'default':26s} {r['recompute']:10s} {r['batch']:5d} {r['seq']:6d} {r['layers']:2d}"
            f" {r['base'] / GiB:7.2f} {r['step_peak_above_base'] / GiB:9.2f} {r['peak_reserved'] / GiB:9.2f}"
            f" {r['reserved_minus_allocated'] / GiB:9.2f}"
        )
    print()
    print("per layer (L=4 minus L=2, halved) and fixed part of the step peak, GiB; per layer in d_model bytes per token:")
    by = {(r["alloc"], r["recompute"], r["batch"], r["seq"], r["layers"]): r for r in rows}
    for (alloc, rec, b, s, layers), r4 in by.items():
        if layers != 4 or (alloc, rec, b, s, 2) not in by:
            continue
        r2 = by[(alloc, rec, b, s, 2)]
        per = (r4["step_peak_above_base"] - r2["step_peak_above_base"]) / 2
        fixed = r2["step_peak_above_base"] - 2 * per
        gap = (r4["reserved_minus_allocated"] + r2["reserved_minus_allocated"]) / 2
        print(
            f"  {alloc or 'default':26s} {rec:10s} batch {b} seq {s}: per layer {per / GiB:6.3f} GiB"
            f" ({per / (b * s) / 4096:6.2f} d), fixed {fixed / GiB:6.2f} GiB"
            f" ({fixed / (b * s * 128256):5.2f} B per logit), reserved-allocated {gap / GiB:5.2f} GiB"
        )


if __name__ == "__main__":
    main()
