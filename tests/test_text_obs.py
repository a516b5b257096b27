"""Text observations (gymnasium ``Text``, MiniGrid's ``MissionSpace``) as token ids, their
embedding in the timestep encoder, and env-declared time limits (MiniGrid's ``max_steps``).
Fast: no Ray; the MiniGrid cases skip without the optional ``minigrid`` package."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from common.config_utils import ConfigError
from common.envs import EnvConfig, env_spec, make_env
from common.envs.standardize import Standardize
from common.envs.text import (
    FIRST_ID,
    MINIGRID_WORDS,
    MISSION_MAX_WORDS,
    PAD_ID,
    UNK_ID,
    TokenBox,
    mission_vocabulary,
    text_converter,
)
from common.spec import ArraySpec, EnvSpec, TokenSpec, array_spec_from_dict, compatible
from learner.amago import AmagoLearner
from learner.config import LearnerConfig
from learner.model import TOKEN_EMBED_DIM, TimestepEncoder, TokenEmbedding
from learner.synthetic import random_batch, tiny_model

torch.set_num_threads(1)


class TextEnv(gym.Env):
    """A vector and a text observation; no time limit of its own unless ``max_steps`` > 0."""

    def __init__(self, max_steps: int = 0, obs_space: gym.Space | None = None):
        self.max_steps = max_steps
        self.observation_space = obs_space or gym.spaces.Dict(
            {
                "pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                "note": gym.spaces.Text(6, charset="cab"),
            }
        )
        self.action_space = gym.spaces.Discrete(2)
        self._t = 0

    def _obs(self):
        return {"pos": np.zeros(2, np.float32), "note": "abcx"[: 1 + self._t % 4]}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self._t += 1
        return self._obs(), 0.0, False, False, {}


for _id, _kw in [
    ("test_text/Text-v0", {"max_steps": 13}),
    ("test_text/NoLimit-v0", {}),
    ("test_text/Graph-v0", {"obs_space": gym.spaces.Sequence(gym.spaces.Discrete(3))}),
]:
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=TextEnv, kwargs=_kw)


# --------------------------------------------------------------------------------------------
# Text spaces: characters
# --------------------------------------------------------------------------------------------


def test_text_space_becomes_character_ids_with_padding_and_unknowns():
    space, convert = text_converter(gym.spaces.Text(5, charset="cab"))
    assert isinstance(space, TokenBox) and space.shape == (5,) and space.dtype == np.uint8
    assert space.vocab == FIRST_ID + 3  # pad, unknown, then a b c (sorted)
    a, b, c = FIRST_ID, FIRST_ID + 1, FIRST_ID + 2
    np.testing.assert_array_equal(convert("cab"), [c, a, b, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(convert("axb"), [a, UNK_ID, b, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(convert(""), [PAD_ID] * 5)
    np.testing.assert_array_equal(convert("abcabcab"), [a, b, c, a, b])  # cut at max_length
    out = convert("abcabcab")
    out[0] = 99  # a copy: the converter's cache is not shared with the caller
    assert convert("abcabcab")[0] == a
    assert space.contains(convert("cab"))


def test_text_ids_do_not_depend_on_the_hash_seed():
    """A frozenset's iteration order changes with PYTHONHASHSEED; the ids must not."""
    code = (
        "import gymnasium as gym; from common.envs.text import text_converter;"
        "_, f = text_converter(gym.spaces.Text(8, charset='qwertyuiop'));"
        "print(list(f('poiuytre')))"
    )
    outs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        outs.add(res.stdout.strip())
    assert len(outs) == 1, outs


def test_text_key_through_the_factory_gives_a_token_spec():
    cfg = EnvConfig(id="test_text/Text-v0")
    spec = env_spec(cfg)
    assert spec.obs["note"] == TokenSpec((6,), "uint8", FIRST_ID + 3)
    assert spec.obs["pos"] == ArraySpec((2,), "float32")
    env = make_env(cfg, seed=0)
    obs, _ = env.reset()
    assert obs["note"].dtype == np.uint8 and obs["note"].shape == (6,)
    np.testing.assert_array_equal(obs["note"], [FIRST_ID, 0, 0, 0, 0, 0])  # "a"
    obs = env.step(0)[0]
    np.testing.assert_array_equal(obs["note"][:2], [FIRST_ID, FIRST_ID + 1])  # "ab"
    # standardising a standardised env keeps the token ids (what export's load_policy may do)
    again = Standardize(env)
    assert isinstance(again.observation_space["note"], TokenBox)
    env.close()


@pytest.mark.parametrize("env_id", ["test_text/Text-v0", "MiniGrid-MemoryS7-v0"])
def test_standardised_text_envs_pass_gymnasium_checker(env_id):
    if env_id.startswith("MiniGrid"):
        pytest.importorskip("minigrid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*different from the unwrapped.*")
        check_env(make_env(EnvConfig(id=env_id), seed=3), skip_render_check=True)


def test_token_spec_round_trip_and_mismatch_messages():
    tok = TokenSpec((6,), "uint8", 5)
    assert array_spec_from_dict(dataclasses.asdict(tok)) == tok
    plain = ArraySpec((6,), "uint8")
    assert dataclasses.asdict(plain) == {"shape": (6,), "dtype": "uint8"}  # unchanged layout
    assert array_spec_from_dict(dataclasses.asdict(plain)) == plain
    assert tok != plain
    a = EnvSpec({"m": tok}, 3, True, 10)
    b = EnvSpec({"m": TokenSpec((6,), "uint8", 7)}, 3, True, 10)
    (msg,) = compatible(a, b)
    assert "vocab 7" in msg and "vocab 5" in msg


# --------------------------------------------------------------------------------------------
# MiniGrid: missions as words, max_steps as the time limit
# --------------------------------------------------------------------------------------------


def test_mission_vocabulary_is_the_same_for_two_env_instances():
    pytest.importorskip("minigrid")
    cfg = EnvConfig(id="minigrid:MiniGrid-MemoryS7-v0")
    spec1, spec2 = env_spec(cfg), env_spec(cfg)
    assert spec1 == spec2
    mission = spec1.obs["mission"]
    assert isinstance(mission, TokenSpec) and mission.shape == (MISSION_MAX_WORDS,)
    e1, e2 = make_env(cfg, seed=3), make_env(cfg, seed=3)
    o1, o2 = e1.reset()[0], e2.reset()[0]
    np.testing.assert_array_equal(o1["mission"], o2["mission"])
    # the ids decode to the mission's words: no unknown word in MiniGrid's own grammar
    vocab = mission_vocabulary(e1.unwrapped.observation_space["mission"])
    ids = o1["mission"][o1["mission"] != PAD_ID]
    assert " ".join(vocab[i - FIRST_ID] for i in ids) == e1.unwrapped.mission
    e1.close()
    e2.close()


def test_mission_placeholders_join_the_vocabulary_and_unknown_words_map_to_unk():
    pytest.importorskip("minigrid")
    from minigrid.core.mission import MissionSpace

    space = MissionSpace(
        mission_func=lambda c, o: f"fetch the {c} {o}!",
        ordered_placeholders=[["teal", "red"], ["widget", "ball"]],
    )
    vocab = mission_vocabulary(space)
    assert vocab == sorted(set(MINIGRID_WORDS) | {"teal", "widget"})
    box, convert = text_converter(space)
    assert box.vocab == FIRST_ID + len(vocab)
    ids = convert("Fetch the TEAL widget, then dance!")
    words = ["fetch", "the", "teal", "widget", "then"]
    assert list(ids[:6]) == [FIRST_ID + vocab.index(w) for w in words] + [UNK_ID]
    assert (ids[6:] == PAD_ID).all()


def test_minigrid_cells_become_one_hot_planes_and_rgb_views_stay_pixels():
    """The symbolic 7x7x3 view becomes 7x7x20 planes of 0/255: one plane per object type,
    colour and door state, exactly one of each set per cell (so a key and a ball differ by a
    whole plane, not by 1/255); an RGB view (minigrid's own wrapper) is left as pixels."""
    pytest.importorskip("minigrid")
    import gymnasium as gym
    from minigrid.core.constants import OBJECT_TO_IDX
    from minigrid.wrappers import RGBImgPartialObsWrapper

    from common.envs.minigrid_envs import OneHotCells, has_symbolic_image

    spec = env_spec(EnvConfig(id="MiniGrid-MemoryS7-v0"))
    assert spec.obs["image"].shape == (7, 7, 20) and spec.obs["image"].dtype == "uint8"
    raw = gym.make("MiniGrid-MemoryS7-v0")
    codes = raw.reset(seed=5)[0]["image"]
    env = OneHotCells(gym.make("MiniGrid-MemoryS7-v0"))
    planes = env.reset(seed=5)[0]["image"]
    assert planes.shape == (7, 7, 20) and set(np.unique(planes)) <= {0, 255}
    for first, size, channel in ((0, 11, 0), (11, 6, 1), (17, 3, 2)):
        hot = planes[..., first : first + size] == 255
        assert (hot.sum(-1) == 1).all()  # one object / colour / state per cell
        np.testing.assert_array_equal(hot.argmax(-1), codes[..., channel])
    assert (planes[..., OBJECT_TO_IDX["wall"]] == 255).any()
    env.close()
    raw.close()
    rgb = RGBImgPartialObsWrapper(gym.make("MiniGrid-MemoryS7-v0"))
    assert not has_symbolic_image(rgb) and has_symbolic_image(gym.make("MiniGrid-Empty-5x5-v0"))
    assert not has_symbolic_image(gym.make("CartPole-v1"))


def test_minigrid_max_steps_is_the_time_limit():
    pytest.importorskip("minigrid")
    spec = env_spec(EnvConfig(id="minigrid:MiniGrid-MemoryS7-v0"))
    assert spec.max_episode_steps == 245  # env.unwrapped.max_steps; no TimeLimit registered
    assert env_spec(EnvConfig(id="minigrid:MiniGrid-Empty-5x5-v0")).max_episode_steps == 100
    small = EnvConfig(id="minigrid:MiniGrid-Empty-5x5-v0", max_episode_steps=7)
    assert env_spec(small).max_episode_steps == 7
    # BabyAI levels set max_steps on each reset: refused with a hint, fixed by the kwarg
    with pytest.raises(ConfigError) as e:
        env_spec(EnvConfig(id="minigrid:BabyAI-GoToObj-v0"))
    assert e.value.field == "max_episode_steps" and "max_steps" in str(e.value)
    fixed = EnvConfig(id="minigrid:BabyAI-GoToObj-v0", kwargs={"max_steps": 64})
    assert env_spec(fixed).max_episode_steps == 64


def test_minigrid_ids_import_minigrid_or_name_the_package(monkeypatch):
    from common.envs import minigrid_envs

    monkeypatch.setattr(minigrid_envs, "minigrid_installed", lambda: False)
    with pytest.raises(ConfigError) as e:
        EnvConfig(id="BabyAI-GoToObj-v0").validate()
    assert e.value.field == "id" and "pip install minigrid" in str(e.value)
    monkeypatch.undo()
    pytest.importorskip("minigrid")
    EnvConfig(id="MiniGrid-MemoryS7-v0").validate()  # no "minigrid:" prefix needed


def test_max_steps_attribute_is_a_time_limit_without_minigrid(caplog):
    with caplog.at_level("INFO", logger="common.envs.factory"):
        spec = env_spec(EnvConfig(id="test_text/Text-v0"))
    assert spec.max_episode_steps == 13
    assert "max_steps" in caplog.text
    env = make_env(EnvConfig(id="test_text/Text-v0"), seed=0)
    env.reset()
    truncs = [env.step(0)[3] for _ in range(13)]
    assert truncs == [False] * 12 + [True]
    with pytest.raises(ConfigError) as e:
        make_env(EnvConfig(id="test_text/NoLimit-v0"))
    assert e.value.field == "max_episode_steps" and "no time limit" in str(e.value)


def test_unsupported_space_is_still_a_one_line_error():
    with pytest.raises(ConfigError) as e:
        make_env(EnvConfig(id="test_text/Graph-v0", max_episode_steps=5))
    msg = str(e.value)
    assert e.value.field == "id" and "unsupported observation space" in msg
    assert "\n" not in msg


# --------------------------------------------------------------------------------------------
# the timestep encoder
# --------------------------------------------------------------------------------------------


def test_token_embedding_ignores_padding():
    torch.manual_seed(0)
    emb = TokenEmbedding(vocab=10, d=8)
    short = torch.tensor([[4, 7, 3]])  # (1, 3)
    padded = torch.tensor([[4, 7, 3, 0, 0, 0, 0]])  # (1, 7)
    shuffled_pad = torch.tensor([[0, 4, 0, 7, 3, 0, 0]])
    ref = emb(short)
    assert ref.shape == (1, 8)
    torch.testing.assert_close(emb(padded), ref)
    torch.testing.assert_close(emb(shuffled_pad), ref)
    torch.testing.assert_close(emb(torch.zeros(2, 5, dtype=torch.uint8)), torch.zeros(2, 8))
    manual = emb.table.weight[[4, 7, 3]].mean(0)
    torch.testing.assert_close(ref[0], manual)
    assert torch.isfinite(emb(torch.tensor([[-3, 250]]))).all()  # out of range: clamped


def small_cfg() -> LearnerConfig:
    return LearnerConfig(
        model=tiny_model(),
        gammas=[0.9, 0.999],
        num_critics=2,
        device="cpu",
        max_seq_len=16,
        warmup_steps=0,
        lr=1e-3,
    )


TEXT_SPEC = EnvSpec(
    {"pos": ArraySpec((2,), "float32"), "mission": TokenSpec((6,), "uint8", 9)}, 3, True, 20
)


def test_timestep_encoder_shapes_and_padding_invariance():
    torch.manual_seed(0)
    cfg = small_cfg()
    enc = TimestepEncoder(TEXT_SPEC, cfg.model)
    assert enc.token_keys == ["mission"] and enc.vector_keys == ["pos"] and enc.vector_dim == 2
    assert enc.net[0].in_features == 2 + TOKEN_EMBED_DIM + 3 + 1
    b, length = 3, 4
    obs = {
        "pos": torch.randn(b, length, 2),
        "mission": torch.randint(1, 9, (b, length, 6), dtype=torch.uint8),
    }
    obs["mission"][..., 3:] = PAD_ID
    out = enc(obs, torch.zeros(b, length, 3), torch.zeros(b, length))
    assert out.shape == (b, length, cfg.model.tstep_out)
    # the same words with more padding (a space of another max length): the same encoding
    more_pad = torch.zeros(b, length, 5, dtype=torch.uint8)
    obs2 = {**obs, "mission": torch.cat([obs["mission"], more_pad], -1)}  # (B, L, 11)
    out2 = enc(obs2, torch.zeros(b, length, 3), torch.zeros(b, length))
    torch.testing.assert_close(out2, out)
    # and the text matters: other words, another encoding
    obs3 = {**obs, "mission": (obs["mission"] % 8) + (obs["mission"] > 0)}
    assert not torch.allclose(enc(obs3, torch.zeros(b, length, 3), torch.zeros(b, length)), out)


def test_learner_trains_the_token_embedding():
    learner = AmagoLearner(TEXT_SPEC, small_cfg())
    before = learner.agent.policy.tstep.texts["mission"].table.weight.detach().clone()
    rng = np.random.default_rng(0)
    for _ in range(2):
        m = learner.train_step(random_batch(TEXT_SPEC, 2, 5, rng))
    assert np.isfinite(list(m.values())).all()
    after = learner.agent.policy.tstep.texts["mission"].table.weight.detach()
    assert not torch.equal(before, after)
    torch.testing.assert_close(after[PAD_ID], torch.zeros_like(after[PAD_ID]))  # pad stays 0
