"""Learner throughput: sequence-timesteps per second of ``AmagoLearner.train_step``.

The AMAGO default model (d_model 256, 3 layers, 8 heads, d_ff 1024, 4 critics x 7 discounts)
on a T-Maze-shaped spec (3 float obs, 4 discrete actions), batch 24, at several sequence
lengths, thread counts and dtypes; on a GPU (when present) with bf16 autocast + flash SDPA.

Reference: the original AMAGO code on the 2-core CPU dev VM, same model and batch, 1 thread,
eager fp32: 0.108 s/update at L=11, 0.48 s at L=64, 2.38 s at L=256.

    python -m benchmarks.learner_throughput                      # all CPU rows (slow)
    python -m benchmarks.learner_throughput --lengths 11 64 --threads 1 --dtypes fp32 bf16
    python -m benchmarks.learner_throughput --device cuda --lengths 256 1024 --dtypes bf16

FLOPs per update are counted with ``torch.utils.flop_counter`` (matmuls and attention,
forward and backward); achieved TFLOP/s and, on GPU, MFU against ``--peak-tflops`` follow.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.spec import ArraySpec, EnvSpec
from learner.amago import AmagoLearner
from learner.config import LearnerConfig
from learner.synthetic import random_batch

#: original AMAGO, 1 CPU thread, eager fp32, same model and batch (s/update by length)
REFERENCE_S = {11: 0.108, 64: 0.48, 256: 2.38}
SPEC = EnvSpec({"observation": ArraySpec((3,), "float32")}, 4, True, 1024)


def measure(
    length: int, threads: int, dtype: str, device: str, steps: int, batch: int, compile_: bool
) -> dict[str, float]:
    torch.set_num_threads(threads)
    cfg = LearnerConfig(
        max_seq_len=length,
        device=device,
        bf16="on" if dtype == "bf16" else "off",
        num_threads=threads,
        compile=compile_,
    )
    learner = AmagoLearner(SPEC, cfg)
    rng = np.random.default_rng(0)
    data = [random_batch(SPEC, batch, length, rng) for _ in range(2)]
    with FlopCounterMode(display=False) as counter:
        learner.train_step(data[0])
    flops = counter.get_total_flops()
    t0 = time.perf_counter()
    learner.train_step(data[1])  # warm-up (compile happens here when enabled)
    warm_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        learner.train_step(data[i % 2])
    if device == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    return {"s": sec, "tps": batch * length / sec, "flops": flops, "warm_s": warm_s}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lengths", type=int, nargs="+", default=[11, 64, 256, 1024])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=0, help="timed updates per row (0 = by length)")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--compile", action="store_true", help="torch.compile the loss computation")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="accelerator peak for MFU (default: H100/H200 dense bf16)",
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    threads = args.threads if args.device == "cpu" else [torch.get_num_threads()]
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device={where} batch={args.batch} compile={args.compile} torch={torch.__version__}")
    head = (
        f"{'L':>5} {'thr':>3} {'dtype':>5} {'s/update':>9} {'timesteps/s':>12} "
        f"{'vs AMAGO':>8} {'GFLOP/upd':>9} {'TFLOP/s':>8}"
    )
    if args.device == "cuda":
        head += f" {'MFU':>6}"
    print(head)
    for length in args.lengths:
        steps = args.steps or max(2, int(4000 // length))
        for thr in threads:
            for dtype in args.dtypes:
                r = measure(length, thr, dtype, args.device, steps, args.batch, args.compile)
                ref = REFERENCE_S.get(length)
                ratio = f"{ref / r['s']:.2f}x" if ref else "-"
                tflops = r["flops"] / r["s"] / 1e12
                line = (
                    f"{length:>5} {thr:>3} {dtype:>5} {r['s']:>9.4f} {r['tps']:>12.0f} "
                    f"{ratio:>8} {r['flops'] / 1e9:>9.1f} {tflops:>8.3f}"
                )
                if args.device == "cuda":
                    line += f" {100 * tflops / args.peak_tflops:>5.1f}%"
                print(line, flush=True)
    print(
        "vs AMAGO = reference s/update (original AMAGO, 1 CPU thread, fp32 eager, 2-core dev VM)"
        " / this row's s/update. GFLOP/upd: torch.utils.flop_counter (matmuls + attention,"
        " forward + backward; causal attention counted as full L^2)."
    )


if __name__ == "__main__":
    main()
