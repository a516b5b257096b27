"""Cached one-step inference equals a full forward pass over the same history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.records import StepInput
from common.spec import ArraySpec, EnvSpec
from learner.amago import AmagoLearner
from learner.config import LearnerConfig
from learner.synthetic import random_batch, tiny_model

torch.set_num_threads(1)


def small_cfg(encoder: str, **model_kw) -> LearnerConfig:
    model = tiny_model(encoder=encoder, **model_kw)
    return LearnerConfig(
        model=model,
        gammas=[0.9, 0.99],
        num_critics=2,
        device="cpu",
        max_seq_len=16,
        lr=1e-3,
        warmup_steps=0,
    )


def trained_learner(spec: EnvSpec, cfg: LearnerConfig) -> AmagoLearner:
    """A learner after a few updates (non-trivial weights and observation statistics)."""
    learner = AmagoLearner(spec, cfg)
    rng = np.random.default_rng(0)
    for _ in range(3):
        learner.train_step(random_batch(spec, 4, 8, rng, min_len=4))
    return learner


def random_step(spec: EnvSpec, rng: np.random.Generator, t: int) -> dict[str, np.ndarray]:
    """One timestep of one slot (unbatched arrays)."""
    obs = {k: rng.standard_normal(s.shape).astype(np.float32) for k, s in spec.obs.items()}
    if spec.discrete:
        a = np.eye(spec.action_dim, dtype=np.float32)[rng.integers(spec.action_dim)]
    else:
        a = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
    return {
        "obs": obs,
        "prev_action": a,
        "prev_reward": np.float32(rng.standard_normal()),
        "time_idx": np.int64(t),
    }


def stack_steps(spec: EnvSpec, steps: list[dict]) -> StepInput:
    return StepInput(
        obs={k: np.stack([s["obs"][k] for s in steps]) for k in spec.obs},
        prev_action=np.stack([s["prev_action"] for s in steps]),
        prev_reward=np.array([s["prev_reward"] for s in steps], dtype=np.float32),
        time_idx=np.array([s["time_idx"] for s in steps], dtype=np.int64),
    )


def full_forward(policy, spec: EnvSpec, history: list[dict], window: int | None) -> torch.Tensor:
    """Main-discount actor output at the last step of ``history``, recomputed from scratch."""
    seq = stack_steps(spec, history)
    with torch.no_grad():
        h = policy.net.encode(
            {k: torch.as_tensor(v)[None] for k, v in seq.obs.items()},
            torch.as_tensor(seq.prev_action)[None],
            torch.as_tensor(seq.prev_reward)[None],
            torch.as_tensor(seq.time_idx)[None],
            window=window,
        )  # (1, L, D)
        return policy.net.actor(h[:, -1])[0, -1]


def run_schedule(
    encoder: str,
    context_len: int,
    discrete: bool,
    n_steps: int = 14,
    window: str = "exact",
    reset_one_at: int = 7,
    reset_all_at: int | None = 9,
    **model_kw,
):
    """Drive 4 slots through ``n_steps`` calls (late joins, shuffled partial subsets, resets)
    and compare every cached output with a from-scratch forward: in ``"exact"`` mode a fresh
    causal forward over exactly the last ``context_len`` timesteps of the slot's history; in
    ``"sliding"`` mode the whole history with a banded mask of width ``context_len``
    (Transformer) or unbounded (GRU)."""
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 3, discrete, 50)
    learner = trained_learner(spec, small_cfg(encoder, **model_kw))
    num_slots = 4
    policy = learner.make_policy(num_slots, context_len, window=window)
    rng = np.random.default_rng(1)
    histories: list[list[dict]] = [[] for _ in range(num_slots)]
    band = context_len if encoder == "transformer" else None
    max_err = 0.0
    checked = 0
    for k in range(n_steps):
        # slots join late, act in shuffled subsets, and some reset mid-way
        active = [s for s in range(num_slots) if k >= s]
        rng.shuffle(active)
        active = active[: max(1, len(active) - (k % 2))]
        if k == reset_one_at:
            policy.reset(np.array([1]))
            histories[1] = []
        if k == reset_all_at:
            policy.reset(np.arange(num_slots))
            histories = [[] for _ in range(num_slots)]
        steps = []
        for s in active:
            st = random_step(spec, rng, len(histories[s]))
            histories[s].append(st)
            steps.append(st)
        out = policy.dist_params(stack_steps(spec, steps), np.array(active))
        for row, s in enumerate(active):
            if window == "exact":
                ref = full_forward(policy, spec, histories[s][-context_len:], None)
            else:
                ref = full_forward(policy, spec, histories[s], band)
            max_err = max(max_err, float((out[row] - ref).abs().max()))
            checked += 1
    return max_err, checked, histories


@pytest.mark.parametrize("window", ["exact", "sliding"])
@pytest.mark.parametrize("encoder", ["transformer", "gru", "mlp"])
def test_cached_inference_matches_full_forward(encoder, window):
    """Histories within the window: both modes equal the full forward (atol 1e-5, fp32)."""
    err, checked, _ = run_schedule(encoder, context_len=32, discrete=True, window=window)
    assert checked > 30
    assert err < 1e-5, err


@pytest.mark.parametrize("window", ["exact", "sliding"])
@pytest.mark.parametrize(
    "model_kw",
    [
        {"time_embedding": "learned", "max_time": 6},  # also clamps indices beyond max_time
        {"normformer": False, "sigma_reparam": False},
    ],
)
def test_cached_inference_matches_full_forward_variants(model_kw, window):
    err, checked, _ = run_schedule(
        "transformer", context_len=5, discrete=True, window=window, **model_kw
    )
    assert checked > 30
    assert err < 1e-5, err


def test_sliding_context_cap_rolls_oldest_entries_off():
    """Sliding mode, context_len smaller than the history: cached inference equals a full
    forward pass with a banded causal mask of that width (atol 1e-5, fp32)."""
    err, checked, histories = run_schedule(
        "transformer", context_len=3, discrete=False, window="sliding"
    )
    assert max(len(h) for h in histories) > 3
    assert err < 1e-5, err


L_EXACT = 5


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_exact_window_matches_fresh_window_forward(encoder, discrete):
    """Exact mode on rollouts ~5x the window (L = 5, 2-layer models, 25 calls; slots at
    different positions, slot 1 reset mid-way so calls mix slots within and past the window):
    at every step the cached ``dist_params`` equals a fresh full forward over exactly the
    last L timesteps (time_idx as given), to atol 1e-5 in fp32."""
    err, checked, histories = run_schedule(
        encoder,
        context_len=L_EXACT,
        discrete=discrete,
        n_steps=5 * L_EXACT,
        window="exact",
        reset_one_at=12,
        reset_all_at=None,
    )
    assert max(len(h) for h in histories) >= 4 * L_EXACT
    assert checked > 60
    assert err < 1e-5, err


@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_sliding_window_differs_from_fresh_window(encoder):
    """Negative control for the exact test: with 2 layers, sliding mode past the window is
    not a fresh forward over the last L timesteps (errors well above the 1e-5 tolerance)."""
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 3, True, 50)
    learner = trained_learner(spec, small_cfg(encoder))
    assert learner.cfg.model.n_layers >= 2
    rng = np.random.default_rng(2)
    hist = [random_step(spec, rng, t) for t in range(4 * L_EXACT)]
    errs = {}
    for window in ("exact", "sliding"):
        policy = learner.make_policy(1, L_EXACT, window=window)
        worst = 0.0
        for t, st in enumerate(hist):
            out = policy.dist_params(stack_steps(spec, [st]), np.array([0]))[0]
            ref = full_forward(policy, spec, hist[max(0, t + 1 - L_EXACT) : t + 1], None)
            worst = max(worst, float((out - ref).abs().max()))
        errs[window] = worst
    assert errs["exact"] < 1e-5, errs
    assert errs["sliding"] > 1e-3, errs


@pytest.mark.parametrize(
    ("encoder", "window", "capacity"),
    [
        ("transformer", "exact", L_EXACT),
        ("transformer", "sliding", L_EXACT),
        ("gru", "exact", L_EXACT),
        ("gru", "sliding", 0),  # a hidden state only
        ("mlp", "exact", 0),
    ],
)
def test_state_holds_at_most_the_window(encoder, window, capacity):
    """After many more steps than the window, every slot's state spans exactly L timesteps
    (KV ring and input ring); the sliding GRU keeps only its hidden state."""
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 3, True, 50)
    policy = AmagoLearner(spec, small_cfg(encoder)).make_policy(3, L_EXACT, window=window)
    rng = np.random.default_rng(9)
    for t in range(6 * L_EXACT):
        policy.act(stack_steps(spec, [random_step(spec, rng, t) for _ in range(3)]), np.arange(3))
    assert policy.capacity_timesteps() == capacity
    state = policy.state
    if encoder == "transformer":
        assert state.k.shape[3] == state.v.shape[3] == L_EXACT
    if window == "exact" and encoder != "mlp":
        assert tuple(state.inputs.shape[:2]) == (3, L_EXACT)
        assert state.length.tolist() == [6 * L_EXACT] * 3
    if window == "sliding":
        assert state.inputs is None


def test_window_mode_validated():
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 3, True, 50)
    learner = AmagoLearner(spec, small_cfg("transformer"))
    assert learner.make_policy(1).window == "exact"
    with pytest.raises(ValueError):
        learner.make_policy(1, window="banded")


def test_full_window_differs_from_capped_window():
    """Sanity check that the window actually matters (the cap test above could not pass
    vacuously)."""
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 3, True, 50)
    learner = trained_learner(spec, small_cfg("transformer"))
    policy = learner.make_policy(1, 3)
    rng = np.random.default_rng(2)
    hist = [random_step(spec, rng, t) for t in range(8)]
    assert (
        float(
            (full_forward(policy, spec, hist, 3) - full_forward(policy, spec, hist, None))
            .abs()
            .max()
        )
        > 1e-4
    )


def test_act_greedy_and_sampled_shapes_and_version():
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 3, True, 50)
    learner = trained_learner(spec, small_cfg("transformer"))
    policy = learner.make_policy(4)
    assert policy.version == learner.version == 3
    rng = np.random.default_rng(3)
    step = stack_steps(spec, [random_step(spec, rng, 0) for _ in range(4)])
    a = policy.act(step, np.arange(4), greedy=True)
    assert a.dtype == np.int64 and a.shape == (4,) and ((0 <= a) & (a < 3)).all()
    policy.reset(np.arange(4))
    logits = policy.dist_params(step, np.arange(4))
    assert np.array_equal(a, logits.argmax(-1).numpy())
    samples = np.stack([policy.act(step, np.arange(4)) for _ in range(50)])
    assert len(np.unique(samples)) > 1  # sampling explores


def test_continuous_actions_in_box():
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 2, False, 50)
    learner = trained_learner(spec, small_cfg("gru"))
    policy = learner.make_policy(3)
    rng = np.random.default_rng(4)
    step = stack_steps(spec, [random_step(spec, rng, 0) for _ in range(3)])
    for greedy in (True, False):
        a = policy.act(step, np.arange(3), greedy=greedy)
        assert a.dtype == np.float32 and a.shape == (3, 2) and (np.abs(a) <= 1).all()


def test_bad_slots_rejected():
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 3, True, 50)
    policy = AmagoLearner(spec, small_cfg("mlp")).make_policy(2)
    rng = np.random.default_rng(5)
    step = stack_steps(spec, [random_step(spec, rng, 0) for _ in range(2)])
    with pytest.raises(ValueError):
        policy.act(step, np.array([1, 1]))
    with pytest.raises(IndexError):
        policy.act(step, np.array([0, 2]))


@pytest.mark.parametrize("encoder,window", [("transformer", 16), ("transformer", 4), ("gru", 4)])
def test_per_step_cost_does_not_re_encode_history(encoder, window):
    """The timestep encoder (CNN, MLP) sees each timestep once, within the window (the cache
    grows by one entry per step) and past it (exact mode re-encodes only the trajectory
    encoder over its stored inputs)."""
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 3, True, 50)
    policy = AmagoLearner(spec, small_cfg(encoder)).make_policy(2, window)
    seen = []
    policy.net.tstep.register_forward_hook(lambda m, inp, out: seen.append(out.shape[0]))
    rng = np.random.default_rng(6)
    for t in range(10):
        policy.act(stack_steps(spec, [random_step(spec, rng, t) for _ in range(2)]), np.arange(2))
    assert seen == [2] * 10
    assert policy.state.length.tolist() == [10, 10]


def test_new_weights_take_effect_immediately():
    """Acting caches sigma-reparameterised weights; loading new weights must invalidate them."""
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 3, True, 50)
    learner = trained_learner(spec, small_cfg("transformer"))
    policy = learner.make_policy(1, 8)
    rng = np.random.default_rng(7)
    hist = [random_step(spec, rng, t) for t in range(3)]
    for st in hist:
        before = policy.dist_params(stack_steps(spec, [st]), np.array([0]))[0]
    for _ in range(3):
        learner.train_step(random_batch(spec, 4, 8, rng, min_len=4))
    policy.load_weights(learner.version, learner.policy_weights())
    assert policy.version == 6
    policy.reset(np.array([0]))
    for st in hist:
        after = policy.dist_params(stack_steps(spec, [st]), np.array([0]))[0]
    assert float((after - before).abs().max()) > 1e-4
    assert float((after - full_forward(policy, spec, hist, None)).abs().max()) < 1e-5


def test_numpy_weights_and_empty_slot_list():
    """Actors receive weights as (read-only) numpy arrays through the Ray object store."""
    spec = EnvSpec({"observation": ArraySpec((5,), "float32")}, 3, True, 50)
    learner = trained_learner(spec, small_cfg("gru"))
    policy = AmagoLearner(spec, small_cfg("gru")).make_policy(2)
    weights = {k: v.numpy() for k, v in learner.policy_weights().items()}
    for v in weights.values():
        v.setflags(write=False)
    policy.load_weights(9, weights)
    assert policy.version == 9
    ref = learner.make_policy(2)
    rng = np.random.default_rng(8)
    step = stack_steps(spec, [random_step(spec, rng, 0) for _ in range(2)])
    assert torch.allclose(
        policy.dist_params(step, np.arange(2)), ref.dist_params(step, np.arange(2))
    )
    empty = StepInput(
        obs={"observation": np.zeros((0, 5), np.float32)},
        prev_action=np.zeros((0, 3), np.float32),
        prev_reward=np.zeros(0, np.float32),
        time_idx=np.zeros(0, np.int64),
    )
    assert policy.act(empty, np.array([], dtype=np.int64)).shape == (0,)
