#!/usr/bin/env python3
"""Acceptance of Gantry's exports by the real frameworks (issue 14).

For every plan of every example (``examples/*.gantry`` and
``examples/reference/*.gantry``) and every export target, this script runs
``gantry plan FILE --plan NAME --export KIND --output F`` and hands F to
the framework's own code:

- ``megatron``: Megatron-LM's ``parse_args`` and ``validate_args``
  (``megatron/training/arguments.py``) with ``WORLD_SIZE`` the plan's
  device count and the export's environment variables set, then
  ``core_transformer_config_from_args`` (the ``TransformerConfig`` the
  model is built from).
- ``torchtitan``: torchtitan's ``ConfigManager.parse_args(["--job.config_file",
  F])``, ``ParallelDims`` with the plan's world size, the model flavor
  built on the meta device, the pipeline schedule class looked up by name,
  the module split checked against the model's modules, and the batch
  arithmetic of torchtitan's trainer.
- ``torchrec``: TorchRec's ``construct_module_sharding_plan`` for an
  ``EmbeddingBagCollection`` of the export's tables (meta device), with
  the export's sharding types, compute kernels and ranks; the plan TorchRec
  builds must equal the exported one shard by shard.
- ``trace``: the Trace Event Format as Perfetto imports it (no Perfetto
  binary is installed: its Python package downloads one at run time); the
  JSON is loaded and its invariants checked (integer nanoseconds, no
  overlap per track, metadata names, the step's length).

A ``C021`` refusal (exit 1) is recorded as ``refused`` with its reason:
that is Gantry declining a target the plan cannot satisfy, not a client
rejecting an export.

Setup (needs Python >= 3.12, which Megatron-LM requires, and network
access to PyPI only)::

    python3.12 tests/clients/check_exports.py --setup --venv /tmp/gclients
    python3.12 tests/clients/check_exports.py --venv /tmp/gclients \\
        --megatron /path/to/Megatron-LM --megatron-commit SHA \\
        --gantry target/debug/gantry --results /tmp/results.json --record

``--setup`` creates the virtual environment and installs ``torch`` (PyPI;
``--torch-index`` for the CPU wheel index where it is reachable),
``torchrec``, ``torchtitan`` (0.2.2, the last release that reads TOML
configs) and Megatron-LM's light dependencies, then reinstalls
``fbgemm-gpu-cpu`` with ``--no-deps`` (``torchrec`` pulls the GPU build).
Megatron-LM is not installed: the checkout given with ``--megatron`` is
put on ``sys.path``.

``--record`` writes ``tests/clients/megatron_flags.json`` (every option of
Megatron's parser with its constraints, and the version and commit it came
from) and ``tests/clients/torchtitan_schema.json`` (every section and
field of torchtitan's ``JobConfig``); Rust tests check every emitted flag
and key against them, so CI keeps the structure without the frameworks.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KINDS = ["megatron", "torchtitan", "torchrec", "trace"]
PACKAGES = {
    "torch": "2.14.1",
    "torchrec": "1.9.2",
    "fbgemm-gpu-cpu": "1.9.0",
    "torchtitan": "0.2.2",
}
# What megatron/training/arguments.py imports beyond torch.
MEGATRON_DEPS = ["numpy", "packaging", "einops", "pyyaml", "typing_extensions"]


def pip(venv, *args):
    subprocess.run([str(Path(venv) / "bin" / "pip"), "install", *args], check=True)


def setup(venv, torch_index):
    if sys.version_info < (3, 12):
        sys.exit("Megatron-LM needs Python >= 3.12; run this script with python3.12")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    torch = f"torch=={PACKAGES['torch']}"
    if torch_index:
        pip(venv, "--index-url", torch_index, torch)
    else:
        pip(venv, torch)
    pip(venv, f"torchrec=={PACKAGES['torchrec']}", f"torchtitan=={PACKAGES['torchtitan']}")
    pip(venv, "--no-deps", "--force-reinstall", f"fbgemm-gpu-cpu=={PACKAGES['fbgemm-gpu-cpu']}")
    pip(venv, *MEGATRON_DEPS)


# ---------------------------------------------------------------- examples


def plans_of(path):
    return re.findall(r"^\s*plan\s+(\w+)\s+on\b", Path(path).read_text(), re.M)


def examples():
    files = sorted(ROOT.glob("examples/*.gantry")) + sorted(ROOT.glob("examples/reference/*.gantry"))
    for f in files:
        for p in plans_of(f):
            yield f.relative_to(ROOT), p


def export(gantry, file, plan, kind, out):
    r = subprocess.run(
        [gantry, "plan", str(file), "--plan", plan, "--export", kind, "--output", out, "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    report = None
    if r.stdout.strip():
        try:
            report = json.loads(r.stdout)
        except json.JSONDecodeError:
            pass
    return r.returncode, r.stderr, report


# ------------------------------------------------------------------ checks
# Each runs in a fresh interpreter (Megatron keeps global state).


def device_arch(name):
    """The CUDA compute capability's major version of a Gantry device."""
    for prefix, arch in [("A100", 8), ("H100", 9), ("H200", 9), ("GH200", 9), ("B200", 10), ("GB200", 10), ("B300", 10), ("GB300", 10), ("MI300X", 9)]:
        if name.upper().startswith(prefix):
            return arch
    raise AssertionError(f"no CUDA architecture known for device {name}")


def check_megatron(path, report, megatron):
    sys.path.insert(0, megatron)
    text = Path(path).read_text().strip().splitlines()
    for line in text[:-1]:
        k, v = line.removeprefix("export ").split("=", 1)
        os.environ[k] = v
    os.environ["WORLD_SIZE"] = str(report["devices"])
    os.environ["RANK"] = "0"
    import torch
    import megatron.training.arguments as margs
    from megatron.training.arguments import parse_args, validate_args
    from megatron.training.argument_utils import core_transformer_config_from_args

    # validate_args asks the first GPU for its architecture; answer as the
    # plan's device would (no GPU here).
    arch = device_arch(report["device"])
    margs.get_device_arch_version = lambda: arch
    torch.cuda.get_device_capability = lambda *a, **k: (arch, 0)

    sys.argv = ["pretrain_gpt.py", *shlex.split(text[-1])]
    args = parse_args()
    validate_args(args)
    # Transformer Engine is a GPU package: without it TransformerConfig
    # refuses the fused kernels Megatron turns on by default, which a GPU
    # install has. Those defaults are turned off for this check only.
    notes = []
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        for k in ["apply_rope_fusion", "masked_softmax_fusion", "bias_swiglu_fusion", "gradient_accumulation_fusion"]:
            if getattr(args, k, False):
                setattr(args, k, False)
                notes.append(k)
    cfg = core_transformer_config_from_args(args)
    off = f" (no Transformer Engine: {', '.join(notes)} off for TransformerConfig)" if notes else ""
    return f"parse_args+validate_args with WORLD_SIZE={report['devices']}, TransformerConfig(num_layers={cfg.num_layers}, hidden_size={cfg.hidden_size}), dp={args.data_parallel_size}{off}"


def check_torchtitan(path, report, _):
    import torch
    from torchtitan.config import ConfigManager
    from torchtitan.distributed.parallel_dims import ParallelDims
    from torchtitan.protocols.train_spec import get_train_spec
    from torch.distributed.pipelining.schedules import get_schedule_class

    cfg = ConfigManager().parse_args(["--job.config_file", str(path)])
    p = cfg.parallelism
    world = report["devices"]
    dims = ParallelDims(
        dp_replicate=p.data_parallel_replicate_degree,
        dp_shard=p.data_parallel_shard_degree,
        cp=p.context_parallel_degree,
        tp=p.tensor_parallel_degree,
        pp=p.pipeline_parallel_degree,
        ep=p.expert_parallel_degree,
        etp=p.expert_tensor_parallel_degree,
        world_size=world,
    )
    spec = get_train_spec(cfg.model.name)
    margs = spec.model_args[cfg.model.flavor]
    margs.update_from_config(cfg)
    with torch.device("meta"):
        model = spec.model_cls(margs)
    # The trainer's batch arithmetic (torchtitan/train.py).
    dp = dims.dp_replicate * dims.dp_shard
    t = cfg.training
    gbs = t.global_batch_size if t.global_batch_size > 0 else t.local_batch_size * dp
    assert gbs % (t.local_batch_size * dp) == 0, f"global batch {gbs} not a multiple of local {t.local_batch_size} x dp {dp}"
    notes = [f"flavor {cfg.model.flavor}", f"mesh {dims.dp_replicate}x{dims.dp_shard}x{dims.cp}x{dims.tp}x{dims.pp}"]
    if dims.pp > 1:
        cls = get_schedule_class(p.pipeline_parallel_schedule)
        parts = p.module_fqns_per_model_part
        names = [n for n, _ in model.named_children() if n != "layers"]
        names += [f"layers.{k}" for k in model.layers.keys()]
        flat = [n for part in parts for n in part]
        assert sorted(flat) == sorted(names), f"split {flat} vs modules {names}"
        from torch.distributed.pipelining.schedules import PipelineScheduleMulti

        looped = issubclass(cls, PipelineScheduleMulti)
        assert len(parts) == dims.pp * (len(parts) // dims.pp) and (looped or len(parts) == dims.pp), (
            f"{len(parts)} parts for {cls.__name__} on {dims.pp} ranks"
        )
        m = t.local_batch_size // p.pipeline_parallel_microbatch_size
        assert t.local_batch_size % p.pipeline_parallel_microbatch_size == 0
        notes.append(f"{cls.__name__}, {len(parts)} stages, {m} microbatches")
    return ", ".join(notes)


def check_torchrec(path, report, _):
    import torch
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.sharding_plan import (
        column_wise,
        construct_module_sharding_plan,
        row_wise,
        table_row_wise,
        table_wise,
    )
    from torchrec.distributed.types import ShardingPlan, ShardingType
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    j = json.loads(Path(path).read_text())
    (module, tables), = j["plan"].items()
    gantry = j["gantry"]["tables"]
    configs = [
        EmbeddingBagConfig(name=n, embedding_dim=gantry[n]["dim"], num_embeddings=gantry[n]["rows"], feature_names=[n])
        for n in tables
    ]
    with torch.device("meta"):
        ebc = EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
    world = report["devices"]
    local = report["placement"]["devices_per_node"]
    per_param = {}
    for n, ps in tables.items():
        ShardingType(ps["sharding_type"])
        EmbeddingComputeKernel(ps["compute_kernel"])
        kernel = ps["compute_kernel"]
        st = ps["sharding_type"]
        if st == "table_wise":
            per_param[n] = table_wise(rank=ps["ranks"][0], compute_kernel=kernel)
        elif st == "row_wise":
            assert ps["ranks"] == list(range(world)), f"{n}: row-wise over {ps['ranks']}"
            per_param[n] = row_wise(compute_kernel=kernel)
        elif st == "column_wise":
            per_param[n] = column_wise(ranks=ps["ranks"], compute_kernel=kernel)
        elif st == "table_row_wise":
            per_param[n] = table_row_wise(host_index=ps["ranks"][0] // local, compute_kernel=kernel)
        else:
            raise AssertionError(f"{n}: sharding type {st}")
    built = construct_module_sharding_plan(ebc, per_param_sharding=per_param, local_size=local, world_size=world, device_type="cuda")
    ShardingPlan(plan={module: built})
    for n, ps in tables.items():
        b = built[n]
        assert b.sharding_type == ps["sharding_type"], f"{n}: {b.sharding_type}"
        assert b.compute_kernel == ps["compute_kernel"], f"{n}: {b.compute_kernel}"
        assert list(b.ranks) == ps["ranks"], f"{n}: ranks {b.ranks} vs {ps['ranks']}"
        theirs = [(list(s.shard_offsets), list(s.shard_sizes), str(s.placement)) for s in b.sharding_spec.shards]
        ours = [(s["shard_offsets"], s["shard_sizes"], s["placement"]) for s in ps["sharding_spec"]]
        assert theirs == ours, f"{n}: TorchRec builds {theirs}, export has {ours}"
    return f"{len(tables)} tables under {module}, equal to construct_module_sharding_plan's"


def check_trace(path, report, _):
    t = json.loads(Path(path).read_text())
    ev = t["traceEvents"]
    tracks = {}
    for e in ev:
        if e["ph"] != "X":
            continue
        for k in ("ts", "dur"):
            # Perfetto's JSON importer truncates microseconds x 1000 to
            # integer nanoseconds; rounding must agree with it.
            ns = e[k] * 1000
            assert int(ns) == round(ns), f"{k} {e[k]} us truncates to {int(ns)} ns, not {round(ns)}"
        a = round(e["ts"] * 1000)
        tracks.setdefault((e["pid"], e["tid"]), []).append((a, a + round(e["dur"] * 1000), e["name"]))
    for k, v in tracks.items():
        v.sort()
        for x, y in zip(v, v[1:]):
            assert x[1] <= y[0], f"track {k}: {x} overlaps {y}"
    names = {e["name"] for e in ev if e["ph"] == "M"}
    assert {"process_name", "thread_name"} <= names, names
    end = max(s[1] for v in tracks.values() for s in v)
    step = report["metrics"]["step_time_s"]
    if True:
        assert abs(end - round(step * 1e9)) <= 1, f"trace ends at {end} ns, step {step} s"
    return f"{sum(len(v) for v in tracks.values())} slices on {len(tracks)} tracks, ends at {end} ns"


CHECKS = {"megatron": check_megatron, "torchtitan": check_torchtitan, "torchrec": check_torchrec, "trace": check_trace}


def one(kind, path, report_path, megatron):
    import io
    import contextlib
    import traceback

    report = json.loads(Path(report_path).read_text())
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            detail = CHECKS[kind](path, report, megatron)
        print(json.dumps({"accepted": True, "detail": detail}))
    except BaseException as e:  # SystemExit from argparse too
        tb = traceback.format_exc().strip().splitlines()
        print(json.dumps({"accepted": False, "detail": f"{type(e).__name__}: {e}", "where": tb[-12:], "log": buf.getvalue()[-800:]}))


# ------------------------------------------------------------------ record


def record(megatron, commit):
    sys.path.insert(0, megatron)
    from megatron.training.arguments import add_megatron_arguments
    from megatron.core import package_info

    parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    flags = {}
    for a in parser._actions:
        for o in a.option_strings:
            flags[o] = {
                "takes_value": a.nargs != 0,
                "nargs": a.nargs if isinstance(a.nargs, (int, str)) or a.nargs is None else str(a.nargs),
                "type": getattr(a.type, "__name__", None) if a.type else None,
                "choices": [str(c) for c in a.choices] if a.choices else None,
            }
    data = {
        "source": "Megatron-LM megatron/training/arguments.py add_megatron_arguments, recorded by tests/clients/check_exports.py --record",
        "megatron_core_version": package_info.__version__,
        "commit": commit,
        "flags": dict(sorted(flags.items())),
    }
    (HERE / "megatron_flags.json").write_text(json.dumps(data, indent=1) + "\n")

    import dataclasses
    import typing
    import torchtitan
    from importlib.metadata import version
    from torchtitan.config.job_config import JobConfig

    def fields(cls):
        out = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if dataclasses.is_dataclass(t):
                out[f.name] = fields(t)
            else:
                out[f.name] = str(t).replace("typing.", "")
        return out

    data = {
        "source": "torchtitan torchtitan/config/job_config.py JobConfig, recorded by tests/clients/check_exports.py --record",
        "torchtitan_version": version("torchtitan"),
        "sections": fields(JobConfig),
    }
    (HERE / "torchtitan_schema.json").write_text(json.dumps(data, indent=1) + "\n")


# -------------------------------------------------------------------- main


def versions(megatron):
    from importlib.metadata import version

    out = {k: version(k) for k in ["torch", "torchrec", "fbgemm-gpu-cpu", "torchtitan"]}
    sys.path.insert(0, megatron)
    from megatron.core import package_info

    out["megatron-core (checkout)"] = package_info.__version__
    out["python"] = sys.version.split()[0]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", required=True)
    ap.add_argument("--setup", action="store_true")
    ap.add_argument("--torch-index")
    ap.add_argument("--megatron")
    ap.add_argument("--megatron-commit", default="unknown")
    ap.add_argument("--gantry", default=str(ROOT / "target" / "debug" / "gantry"))
    ap.add_argument("--results", default="/tmp/gantry-client-results.json")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--only", help="regular expression on `file:plan`")
    ap.add_argument("--one", nargs=3, metavar=("KIND", "EXPORT", "REPORT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.setup:
        setup(a.venv, a.torch_index)
        return
    py = str(Path(a.venv) / "bin" / "python")
    if Path(sys.prefix).resolve() != Path(a.venv).resolve():
        os.execv(py, [py, __file__, *sys.argv[1:]])
    if a.one:
        one(*a.one, a.megatron)
        return
    if not a.megatron:
        sys.exit("--megatron PATH (a Megatron-LM checkout) is required")
    if a.record:
        record(a.megatron, a.megatron_commit)
    results = {"versions": versions(a.megatron), "megatron_commit": a.megatron_commit, "rows": []}
    tmp = Path(tempfile.mkdtemp(prefix="gantry-clients-"))
    for file, plan in examples():
        if a.only and not re.search(a.only, f"{file}:{plan}"):
            continue
        for kind in KINDS:
            out = tmp / f"{plan}.{kind}"
            rc, err, report = export(a.gantry, file, plan, kind, str(out))
            row = {"file": str(file), "plan": plan, "export": kind}
            if rc != 0:
                m = re.search(r"error\[(\w+)\]: (.*)", err)
                row["result"] = "refused" if m and m.group(1) == "C021" else "gantry error"
                row["detail"] = m.group(0) if m else err.strip()[-300:]
            else:
                rp = tmp / f"{plan}.{kind}.report.json"
                rp.write_text(json.dumps(report))
                r = subprocess.run([py, __file__, "--venv", a.venv, "--megatron", a.megatron, "--one", kind, str(out), str(rp)],
                                   capture_output=True, text=True)
                try:
                    v = json.loads(r.stdout.strip().splitlines()[-1])
                except (json.JSONDecodeError, IndexError):
                    v = {"accepted": False, "detail": (r.stderr or r.stdout)[-500:]}
                row["result"] = "accepted" if v["accepted"] else "rejected"
                row.update({k: v[k] for k in v if k != "accepted"})
            results["rows"].append(row)
            print(f"{row['result']:9} {kind:10} {file}:{plan}  {row.get('detail', '')[:160]}", flush=True)
    Path(a.results).write_text(json.dumps(results, indent=1) + "\n")
    counts = {}
    for r in results["rows"]:
        counts.setdefault(r["export"], {}).setdefault(r["result"], 0)
        counts[r["export"]][r["result"]] += 1
    print(json.dumps({"versions": results["versions"], "counts": counts}, indent=1))


if __name__ == "__main__":
    main()
