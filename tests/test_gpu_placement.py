"""Where the learner runs (issue 17 item 6): ``learner.device`` decides whether the learner
asks Ray for a GPU; ``cuda`` fails clearly where none can come (a local Ray without one: at
once; a cluster: after ``deploy.gpu_wait_s``) instead of waiting forever, ``auto`` says
when it falls back to CPU, and the learner gets the resolved device, never ``auto``."""

from __future__ import annotations

import types

import pytest

from common.config_utils import ConfigError
from deploy.run.builder import learner_placement, wait_for_learner


def test_cpu_never_asks_for_a_gpu():
    assert learner_placement("cpu", 8, local=False) == (False, "cpu")


def test_cuda_asks_ray_for_a_gpu_even_when_none_is_up_yet_on_a_cluster():
    assert learner_placement("cuda", 1, local=True) == (True, "cuda")
    assert learner_placement("cuda", 0, local=False) == (True, "cuda")  # autoscaler may add


def test_cuda_on_a_local_ray_without_gpu_fails_naming_the_field():
    with pytest.raises(ConfigError, match="learner.device.*no GPU"):
        learner_placement("cuda", 0, local=True)


def test_auto_takes_a_gpu_only_if_one_exists_and_says_when_not(capsys):
    assert learner_placement("auto", 2, local=False) == (True, "cuda")
    assert capsys.readouterr().out == ""
    assert learner_placement("auto", 0, local=False) == (False, "cpu")
    assert "device auto -> cpu" in capsys.readouterr().out


def test_waiting_for_a_gpu_that_never_comes_fails_clearly(monkeypatch):
    import ray

    def get(ref, timeout=None):
        assert timeout == 7.0
        raise ray.exceptions.GetTimeoutError("pending")

    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    learner = types.SimpleNamespace(version=types.SimpleNamespace(remote=lambda: "ref"))
    with pytest.raises(ConfigError, match=r"learner.device.*gpu_wait_s=7 s.*'CPU': 4.0"):
        wait_for_learner(learner, True, 7.0)


def test_the_learner_setup_gets_the_resolved_device(monkeypatch):
    import ray

    from deploy.config import TrainConfig
    from deploy.run import builder
    from learner.worker import LearnerSetup

    seen = {}

    class Remote:
        def options(self, **kw):
            seen["options"] = kw
            return self

        def remote(self, setup, broker):
            seen["setup"] = setup
            return "handle"

    monkeypatch.setattr(ray, "remote", lambda cls: Remote())
    cfg = TrainConfig()
    for use_gpu, device in ((True, "cuda"), (False, "cpu")):
        builder.start_learner(cfg, None, None, "/tmp/x", use_gpu)
        assert isinstance(seen["setup"], LearnerSetup)
        assert seen["setup"].learner.device == device and cfg.learner.device == "auto"
        assert seen["options"]["num_gpus"] == (1 if use_gpu else 0)
