"""Where one learner update's time goes (issue 15, item 1).

For each model, one update is split into parts, each timed on its own (CPU: the clock is the
work; on CUDA every part ends with a device sync, so the parts are device time too):

* ``batch``: collating B windows of length L from in-memory trajectories
  (:func:`learner.synthetic.collate`, the learner-side half of sampling; the replay service's
  decode and network time are not in it);
  ``Sampler.sample`` from an in-process fakeredis is shown beside the table (not summed);
* ``to_device``: :meth:`AmagoLearner._to_tensors` (checks + host->device copy);
* ``obs_stats``: the observation-normaliser update, lr schedule, RNG fork/restore;
* ``forward``: :meth:`AmagoLearner.compute_losses` without the PopArt update inside it;
* ``popart``: ``agent.popart.update`` (timed through a wrapper around the very call);
* ``backward``: ``zero_grad`` + ``loss.backward()``;
* ``grad_clip``: ``clip_grad_norm_`` (foreach);
* ``optimizer``: ``AdamW.step`` (fused);
* ``target_ema``: ``agent.update_targets``;
* ``metrics``: stacking the metric tensors + :meth:`AmagoLearner.resolve` of that one update
  (what ``train_step`` does; the Ray worker resolves once per ``train`` call instead);
* ``publish``: :meth:`AmagoLearner.policy_weights` divided by ``publish_every`` (20: the
  worker publishes every 20 updates);
* ``glue``: the instrumented update's wall time minus the parts above (timers, Python between
  the sections).

The instrumented update (:func:`profiled_step`) performs the same operations in the same
order as ``train_step`` with the same RNG stream, so parameters after N profiled updates equal
those after N ``train_step`` calls (``tests/test_learner_profile.py``). The table also shows a
plain ``train_step`` total (timed interleaved with the instrumented one; the parts should sum
to about it), an estimate of the time outside aten kernels (``torch.profiler``: 1 - summed
aten self time / profiled wall, times the plain total; Python, dispatcher, autograd engine and
profiler overhead; an overlapping view, not a part of the sum), and achieved FLOP/s
(:func:`benchmarks.learner_throughput.update_flops`) against a large fp32 matmul timed on one
thread in the same run.

The ``minigrid`` model (MiniGrid-MemoryS7-v0's observations: a 7x7x20 uint8 image, the
direction, the mission's word ids; the small conv trunk start-up derives for 7x7 images) adds
rows, not in the sum: its image encoder (the CNN) and its text encoder (the mission's token
embedding), each forward + backward on one update's B x L observations, timed alone on the
same batch, as a share of the sum of parts.

    python -m benchmarks.learner_profile                  # the four models
    python -m benchmarks.learner_profile --models tmaze --steps 10 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from benchmarks.learner_throughput import update_flops
from common.records import Trajectory, trim_padding
from common.spec import ArraySpec, EnvSpec, TokenSpec
from learner.amago import AmagoLearner, PendingMetrics
from learner.config import SMALL_IMAGE_CNN
from learner.synthetic import collate, random_batch, tiny_model

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
#: amago/TMaze-v0 (H=10) and popgym-RepeatPreviousEasy-v0 specs (common.envs.factory.env_spec)
TMAZE_SPEC = EnvSpec({"observation": ArraySpec((3,), "float32")}, 4, True, 11)
POPGYM_SPEC = EnvSpec({"observation": ArraySpec((4,), "float32")}, 4, True, 51)
#: MiniGrid-MemoryS7-v0 through the plain env.id (common.envs.factory.env_spec)
MINIGRID_SPEC = EnvSpec(
    {
        "direction": ArraySpec((4,), "float32"),
        "image": ArraySpec((7, 7, 20), "uint8"),  # one-hot cell codes (OneHotCells)
        "mission": TokenSpec((64,), "uint8", vocab=61),
    },
    7,
    True,
    245,
)
PARTS = (
    "batch",
    "to_device",
    "obs_stats",
    "forward",
    "popart",
    "backward",
    "grad_clip",
    "optimizer",
    "target_ema",
    "metrics",
    "publish",
    "glue",
)
PUBLISH_EVERY = 20


def default_learner_cfg(**overrides) -> dict:
    """configs/learner/default.yaml as a dict (worker settings dropped), with ``overrides``."""
    d = OmegaConf.to_container(OmegaConf.load(CONFIGS / "learner" / "default.yaml"))
    d.pop("worker", None)
    for k in ("gammas", "reward_scale"):  # null = by the env's rewards at a run's start:
        if d.get(k) is None:  # here the dataclass's own (AMAGO's, the sparse-reward values)
            d.pop(k, None)
    d.update(device="cpu", num_threads=1)
    for k, v in overrides.items():
        if k == "model":
            d["model"] = {**d["model"], **v}
        else:
            d[k] = v
    return d


def tmaze_cfg() -> dict:
    """The experiment=tmaze learner: default.yaml + configs/experiment/tmaze.yaml overrides."""
    preset = OmegaConf.to_container(OmegaConf.load(CONFIGS / "experiment" / "tmaze.yaml"))
    return default_learner_cfg(**preset["learner"])


def models() -> dict[str, tuple[EnvSpec, dict]]:
    """name -> (spec, learner config dict) of the profiled models."""
    return {
        "tmaze (d64, L12)": (TMAZE_SPEC, tmaze_cfg()),
        "popgym default (d128, L52)": (POPGYM_SPEC, default_learner_cfg(max_seq_len=52)),
        "default (d128, L64)": (POPGYM_SPEC, default_learner_cfg(max_seq_len=64)),
        "minigrid (d128, L64, small CNN)": (MINIGRID_SPEC, minigrid_cfg()),
    }


def minigrid_cfg() -> dict:
    """The plain command's learner for MiniGrid-MemoryS7-v0: the CPU window cap (64) and the
    small conv trunk derived for 7x7 images."""
    channels, kernels, strides = SMALL_IMAGE_CNN
    model = {"cnn_channels": channels, "cnn_kernels": kernels, "cnn_strides": strides}
    return default_learner_cfg(max_seq_len=64, model=model)


def tiny_cfg() -> dict:
    """A fast model for tests."""
    m = tiny_model(16)
    return default_learner_cfg(
        max_seq_len=8, batch_size=4, model={k: getattr(m, k) for k in m.__dataclass_fields__}
    )


# ------------------------------------------------------------------------ the instrumented step


class Timer:
    """Accumulates seconds per part; ``sync`` (CUDA) makes each part's end a device sync."""

    def __init__(self, device: torch.device):
        self.sec: dict[str, float] = dict.fromkeys(PARTS, 0.0)
        self._sync = device.type == "cuda"

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        if self._sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.sec[name] += time.perf_counter() - t0


def profiled_step(learner: AmagoLearner, batch, timer: Timer) -> dict[str, float]:
    """``learner.train_step(batch)`` with each section timed into ``timer`` (same operations,
    order and RNG stream as :meth:`AmagoLearner.train_step_deferred` + ``resolve``)."""
    cfg = learner.cfg
    t_start = time.perf_counter()
    inner: dict[str, float] = {}
    with timer.part("to_device"):
        t = learner._to_tensors(trim_padding(batch))
    popart = learner.agent.popart
    original = popart.update

    def timed_update(*args, **kwargs):
        t0 = time.perf_counter()
        with timer.part("popart"):
            out = original(*args, **kwargs)
        inner["popart"] = inner.get("popart", 0.0) + time.perf_counter() - t0
        return out

    with learner._own_rng():
        with timer.part("obs_stats"):
            learner._update_obs_stats(t)
            lr = learner.learning_rate(learner._step)
            for group in learner.optimizer.param_groups:
                group["lr"] = lr
        popart.update = timed_update  # instance attribute shadows the method
        try:
            t1 = time.perf_counter()
            with torch.autocast(learner.device.type, dtype=torch.bfloat16, enabled=learner.bf16):
                out = learner._loss_fn(t)
            if timer._sync:
                torch.cuda.synchronize()
            timer.sec["forward"] += time.perf_counter() - t1 - inner.get("popart", 0.0)
        finally:
            del popart.update
        with timer.part("backward"):
            learner.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
        with timer.part("grad_clip"):
            clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(learner._params, clip, foreach=True)
        with timer.part("optimizer"):
            learner.optimizer.step()
        with timer.part("target_ema"):
            learner.agent.update_targets(cfg.tau)
    learner._step += 1
    with timer.part("metrics"):
        names = list(out)
        values = torch.stack([out[k].detach().float() for k in names] + [grad_norm.float()])
        b, seq = batch.mask.shape
        host = dict(
            lr=lr,
            step=float(learner._step),
            seq_timesteps=float(b * seq),
            valid_timesteps=float(batch.mask.sum()),
            data_age=float(learner._step - 1 - np.mean(batch.policy_version)),
        )
        metrics = learner.resolve([PendingMetrics([*names, "grad_norm"], values, host)])[0]
    timer.sec["glue"] += time.perf_counter() - t_start  # minus the parts, in summarize()
    return metrics


# ------------------------------------------------------------------------ measurement


def trajectory_pool(spec: EnvSpec, n: int, length: int, rng: np.random.Generator) -> list:
    """``n`` random trajectories of ``length`` timesteps (rows of a random batch)."""
    b = random_batch(spec, n, length, rng)
    return [
        Trajectory(
            obs={k: v[i] for k, v in b.obs.items()},
            prev_action=b.prev_action[i],
            prev_reward=b.prev_reward[i],
            time_idx=b.time_idx[i].astype(np.int32),
            terminated=b.terminated[i],
            truncated=b.truncated[i],
        )
        for i in range(n)
    ]


def batch_maker(spec: EnvSpec, batch: int, length: int, seed: int) -> Callable[[], object]:
    """A function drawing B random windows of ``length`` from a pool and collating them."""
    rng = np.random.default_rng(seed)
    pool = trajectory_pool(spec, 64, 2 * length, rng)

    def make():
        idx = rng.integers(len(pool), size=batch)
        starts = rng.integers(0, length + 1, size=batch).tolist()
        return collate([pool[i] for i in idx], length, starts)

    return make


def sampler_seconds(spec: EnvSpec, batch: int, length: int, draws: int = 20) -> float | None:
    """Seconds per ``Sampler.sample(batch)`` from an in-process fakeredis holding 64 random
    trajectories of ``2 * length`` (index refresh, decode, collate; no network); None without
    fakeredis (a test dependency)."""
    try:
        import fakeredis
    except ImportError:
        return None
    from replay_service import RedisConfig, ReplayConfig, ReplayStore, Sampler, SampleShape

    pool = trajectory_pool(spec, 64, 2 * length, np.random.default_rng(2))
    client = fakeredis.FakeRedis()
    cfg = ReplayConfig(redis=RedisConfig(namespace="profile"))
    shape = SampleShape(batch_size=batch, max_seq_len=length)
    store = ReplayStore(client, cfg)
    for t in pool:
        store.insert(t)
    sampler = Sampler(client, cfg, shape, seed=0, spec=spec)
    sampler.sample(batch, timeout_s=5)
    t0 = time.perf_counter()
    for _ in range(draws):
        sampler.sample(batch, timeout_s=5)
    return (time.perf_counter() - t0) / draws


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of an n x n matmul on the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def outside_aten_fraction(learner: AmagoLearner, batches: list, steps: int) -> tuple[float, float]:
    """1 - (summed self CPU time of aten ops) / (profiled wall time) over ``steps`` updates,
    and aten op calls per update (nested calls included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            learner.train_step(batches[i % len(batches)])
        wall = time.perf_counter() - t0
    aten = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    aten_us = sum(e.self_cpu_time_total for e in aten)
    calls = sum(e.count for e in aten) / steps
    return max(0.0, 1.0 - aten_us * 1e-6 / wall), calls


def obs_encoder_seconds(
    learner: AmagoLearner, batch, kind: str = "image", repeats: int = 5
) -> float | None:
    """Median seconds of the timestep encoder's per-key encoders of one ``kind`` ("image":
    the CNNs; "text": the token embeddings), forward + backward (a sum of their outputs as the
    loss), on one update's observations, timed alone; None without keys of that kind."""
    tstep = learner.agent.policy.tstep
    keys, encoders = {
        "image": (tstep.image_keys, tstep.cnns),
        "text": (tstep.token_keys, tstep.texts),
    }[kind]
    if not keys:
        return None
    obs = learner._to_tensors(batch)["obs"]
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        out = sum(encoders[k](obs[k]).sum() for k in keys)
        out.backward()
        times.append(time.perf_counter() - t0)
    learner.agent.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def profile_model(spec: EnvSpec, cfg: dict, steps: int, rounds: int, prof_steps: int) -> dict:
    """Median seconds per part over ``rounds`` rounds of ``steps`` updates, the plain
    train_step total, the outside-aten estimate and FLOPs per update."""
    torch.set_num_threads(1)
    learner = AmagoLearner(spec, cfg)
    plain = AmagoLearner(spec, cfg)
    c = learner.cfg
    make = batch_maker(spec, c.batch_size, c.max_seq_len, seed=1)
    flops = update_flops(AmagoLearner(spec, cfg), make())["useful"]
    for _ in range(2):  # warm-up
        b = make()
        profiled_step(learner, b, Timer(learner.device))
        plain.train_step(b)
    per_round: list[dict[str, float]] = []
    plain_s: list[float] = []
    for _ in range(rounds):
        timer = Timer(learner.device)
        batches = []
        for _ in range(steps):
            with timer.part("batch"):
                b = make()
            batches.append(b)
            profiled_step(learner, b, timer)
        with timer.part("publish"):
            for _ in range(max(1, steps // PUBLISH_EVERY)):
                learner.policy_weights()
        n_pub = max(1, steps // PUBLISH_EVERY)
        timer.sec["publish"] *= steps / (n_pub * PUBLISH_EVERY)  # = per update: cost / 20
        inside = sum(v for k, v in timer.sec.items() if k not in ("batch", "publish", "glue"))
        timer.sec["glue"] -= inside
        per_round.append({k: v / steps for k, v in timer.sec.items()})
        t0 = time.perf_counter()
        for b in batches:
            plain.train_step(b)
        plain_s.append((time.perf_counter() - t0) / steps)
    parts = {k: statistics.median(r[k] for r in per_round) for k in PARTS}
    totals = [sum(r.values()) for r in per_round]
    frac, calls = outside_aten_fraction(plain, [make() for _ in range(2)], prof_steps)
    return {
        "parts": parts,
        "total": statistics.median(totals),
        "total_range": (min(totals), max(totals)),
        "plain": statistics.median(plain_s),
        "plain_range": (min(plain_s), max(plain_s)),
        "outside_aten_frac": frac,
        "aten_calls": calls,
        "sampler": sampler_seconds(spec, c.batch_size, c.max_seq_len),
        "flops": flops,
        "cnn": obs_encoder_seconds(plain, make(), "image"),
        "text": obs_encoder_seconds(plain, make(), "text"),
    }


def table(results: dict[str, dict], peak: float) -> str:
    """Markdown: ms and % per part per model, totals, FLOP/s vs the matmul peak."""
    names = list(results)
    lines = [
        "| part | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for p in PARTS:
        cells = []
        for n in names:
            r = results[n]
            ms, pct = 1e3 * r["parts"][p], 100 * r["parts"][p] / r["total"]
            cells.append(f"{ms:.2f} ms ({pct:.1f}%)")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")

    def row(label: str, f: Callable[[dict], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(f(results[n]) for n in names) + " |")

    row(
        "**sum of parts** (median, range)",
        lambda r: (
            f"**{1e3 * r['total']:.2f} ms** ({1e3 * r['total_range'][0]:.1f}-"
            f"{1e3 * r['total_range'][1]:.1f})"
        ),
    )
    row(
        "plain train_step (median, range)",
        lambda r: (
            f"{1e3 * r['plain']:.2f} ms ({1e3 * r['plain_range'][0]:.1f}-"
            f"{1e3 * r['plain_range'][1]:.1f})"
        ),
    )
    row(
        "of train_step: outside aten ops (est.)",
        lambda r: (
            f"{1e3 * r['outside_aten_frac'] * r['plain']:.2f} ms "
            f"({100 * r['outside_aten_frac']:.0f}%)"
        ),
    )
    row(
        "replay Sampler.sample, fakeredis (not in the sum)",
        lambda r: "-" if r["sampler"] is None else f"{1e3 * r['sampler']:.2f} ms",
    )
    for key, label in (("cnn", "image encoder (CNN)"), ("text", "text encoder (tokens)")):
        row(
            f"{label} fwd+bwd, timed alone (in forward/backward)",
            lambda r, key=key: (
                "-"
                if r.get(key) is None
                else f"{1e3 * r[key]:.2f} ms ({100 * r[key] / r['total']:.1f}% of the sum)"
            ),
        )
    row("aten op calls / update (nested incl.)", lambda r: f"{r['aten_calls']:.0f}")
    row("GFLOP / update", lambda r: f"{r['flops'] / 1e9:.3f}")
    row(
        "achieved GFLOP/s (train_step)",
        lambda r: (
            f"{r['flops'] / r['plain'] / 1e9:.2f} ({100 * r['flops'] / r['plain'] / peak:.1f}%"
            " of peak)"
        ),
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    all_models = models()
    ap.add_argument(
        "--models", nargs="+", default=["all"], help="tmaze, popgym, default, minigrid, tiny"
    )
    ap.add_argument("--steps", type=int, default=20, help="updates per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prof-steps", type=int, default=5, help="updates under torch.profiler")
    ap.add_argument("--matmul-n", type=int, default=2048)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    chosen: dict[str, tuple[EnvSpec, dict]] = {}
    for m in args.models:
        if m == "tiny":
            chosen["tiny (d16, L8)"] = (TMAZE_SPEC, tiny_cfg())
        for name, v in all_models.items():
            if m == "all" or name.startswith(m):
                chosen[name] = v
    peak = matmul_peak_flops(args.matmul_n)
    results = {
        name: profile_model(spec, cfg, args.steps, args.rounds, args.prof_steps)
        for name, (spec, cfg) in chosen.items()
    }
    print(
        f"torch {torch.__version__}, 1 thread, fp32; batch from collate; "
        f"{args.rounds} rounds x {args.steps} updates; matmul peak "
        f"({args.matmul_n}^2 fp32, 1 thread): {peak / 1e9:.1f} GFLOP/s\n"
    )
    print(table(results, peak))
    return {"peak": peak, "results": results}


if __name__ == "__main__":
    main()
