"""Learner throughput: sequence-timesteps per second of ``AmagoLearner.train_step``.

The AMAGO default model (d_model 256, 3 layers, 8 heads, d_ff 1024, 4 critics x 7 discounts)
on a T-Maze-shaped spec (3 float obs, 4 discrete actions), batch 24, at several sequence
lengths, thread counts and dtypes; on a GPU (when present) with bf16 autocast + flash SDPA.

Reference: the original AMAGO code on the 2-core CPU dev VM, same model and batch, 1 thread,
eager fp32: 0.108 s/update at L=11, 0.48 s at L=64, 2.38 s at L=256.

    python -m benchmarks.learner_throughput                      # all CPU rows (slow)
    python -m benchmarks.learner_throughput --lengths 11 64 --threads 1 --dtypes fp32 bf16
    python -m benchmarks.learner_throughput --device cuda --lengths 256 1024 --dtypes bf16

FLOPs per update (:func:`update_flops`): ``torch.utils.flop_counter`` counts the matmuls,
forward and backward; attention is replaced by its causal count (half of the L^2 score and
value matmuls: the counter charges CUDA's flash kernels at full L^2 and does not see the CPU
flash kernel at all). Achieved TFLOP/s follow and, on GPU, MFU against the peak of the row's
dtype: ``--peak-tflops`` for bf16 rows (default H100/H200 dense bf16, 989), and
``--peak-tflops-fp32`` for fp32 rows (default 67: fp32 without TF32, the learner's
matmul precision).
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


#: peak dense TFLOP/s of one H100/H200 (SXM) by row dtype, for MFU
PEAK_TFLOPS = {"bf16": 989.0, "fp32": 67.0}


def attention_flops(cfg: LearnerConfig, batch: int, length: int, causal: bool = True) -> float:
    """Score (QK^T) and value (PV) matmul FLOPs of one update's encoder pass, forward
    (4 B L^2 D per layer) and backward (8 B L^2 D); ``causal`` counts the lower triangle only
    (what a causal kernel computes). 0 for encoders without attention."""
    m = cfg.model
    if m.encoder != "transformer":
        return 0.0
    full = 12.0 * batch * length * length * m.d_model * m.n_layers
    return full / 2 if causal else full


def update_flops(learner: AmagoLearner, batch) -> dict[str, float]:
    """FLOPs of one ``train_step(batch)`` (it runs one): ``counted`` by
    ``torch.utils.flop_counter``, ``sdpa_counted`` its share charged to SDPA kernels, and
    ``useful`` = counted - sdpa_counted + the causal attention FLOPs (the figure to report)."""
    with FlopCounterMode(display=False) as counter:
        learner.train_step(batch)
    counted = float(counter.get_total_flops())
    sdpa = float(
        sum(
            v
            for k, v in counter.get_flop_counts().get("Global", {}).items()
            if "scaled_dot_product" in str(k)
        )
    )
    b, seq = batch.mask.shape
    causal = attention_flops(learner.cfg, b, seq, causal=True)
    return {"counted": counted, "sdpa_counted": sdpa, "useful": counted - sdpa + causal}


def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (a fraction)."""
    return flops / seconds / (peak_tflops * 1e12)


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
    fl = update_flops(learner, data[0])
    flops = fl["useful"]
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
    return {
        "s": sec,
        "tps": batch * length / sec,
        "flops": flops,
        "counted_flops": fl["counted"],
        "warm_s": warm_s,
    }


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
        default=PEAK_TFLOPS["bf16"],
        help="accelerator bf16 peak for the MFU of bf16 rows (default: H100/H200 dense bf16)",
    )
    ap.add_argument(
        "--peak-tflops-fp32",
        type=float,
        default=PEAK_TFLOPS["fp32"],
        help="accelerator fp32 peak for the MFU of fp32 rows (default: H100/H200, no TF32)",
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
                    peak = args.peak_tflops if dtype == "bf16" else args.peak_tflops_fp32
                    line += f" {100 * mfu(r['flops'], r['s'], peak):>5.1f}%"
                print(line, flush=True)
    print(
        "vs AMAGO = reference s/update (original AMAGO, 1 CPU thread, fp32 eager, 2-core dev VM)"
        " / this row's s/update. GFLOP/upd: torch.utils.flop_counter (matmuls + attention,"
        " forward + backward, with causal attention counted as its lower triangle);"
        " MFU against the peak of the row's dtype."
    )


if __name__ == "__main__":
    main()
