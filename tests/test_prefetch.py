"""learner.prefetch: batches sampled ahead of the updates, in a child process (the default)
or on a thread. The samplers here are picklable stand-ins whose state lives where they run
(the child, for ``process``); each batch carries its call number in ``prev_reward``, so the
tests see which attempts became batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from common.config_utils import ConfigError
from common.replay import RateLimitTimeout, ReplayStats
from common.spec import ArraySpec, EnvSpec
from learner.prefetch import ProcessPrefetcher, ThreadPrefetcher, make_prefetcher
from learner.synthetic import random_batch
from learner.worker_config import LearnerWorkerConfig

SPEC = EnvSpec({"observation": ArraySpec((3,), "float32")}, 2, True, 8)


@dataclass
class NumberedSampler:
    """Call ``k`` refuses (RateLimitTimeout) while ``k < refuse``, raises when ``k`` is in
    ``fail``, else returns a batch whose ``prev_reward`` is all ``k``."""

    refuse: int = 0
    fail: tuple[int, ...] = ()
    calls: int = field(default=0)

    def sample(self, batch_size: int, timeout_s: float | None = None):
        k, self.calls = self.calls, self.calls + 1
        if k < self.refuse:
            time.sleep(0.01)
            raise RateLimitTimeout("wait")
        if k in self.fail:
            raise ConnectionError(f"replay down at call {k}")
        b = random_batch(SPEC, batch_size, 4, np.random.default_rng(k))
        b.prev_reward[:] = k
        return b

    def stats(self) -> ReplayStats:
        """What only this sampler knows: how many attempts it made (as shard outages)."""
        return ReplayStats(shard_outages=self.calls)


@dataclass(frozen=True)
class MakeNumbered:
    """A picklable sampler factory (what the builder hands the learner)."""

    refuse: int = 0
    fail: tuple[int, ...] = ()

    def __call__(self) -> NumberedSampler:
        return NumberedSampler(self.refuse, self.fail)


def numbers(pf, n: int, timeout: float = 30.0) -> list[int]:
    """Call numbers of the next ``n`` batches."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} batches arrived"
        b = pf.get(timeout=1.0)
        if b is not None:
            out.append(int(b.prev_reward.flat[0]))
    return out


def build(kind: str, factory: MakeNumbered, waits: list[float] | None = None):
    on_wait = waits.append if waits is not None else (lambda s: None)
    return make_prefetcher(kind, factory, 4, 0.2, 2, on_wait)


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_batches_arrive_in_sampling_order_and_waits_are_reported(kind):
    waits: list[float] = []
    pf = build(kind, MakeNumbered(refuse=3), waits)
    try:
        assert isinstance(pf, ProcessPrefetcher if kind == "process" else ThreadPrefetcher)
        assert numbers(pf, 5) == [3, 4, 5, 6, 7]  # refusals are skipped, not errors
        assert pf.errors == 0
        assert sum(waits) >= 0.03  # three refused attempts of >= 10 ms each
    finally:
        pf.close()


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_failed_attempt_is_counted_and_sampling_goes_on(kind):
    pf = build(kind, MakeNumbered(fail=(1, 2)))
    try:
        assert numbers(pf, 3) == [0, 3, 4]
        assert pf.errors == 2
    finally:
        pf.close()


def test_a_killed_sampler_process_is_restarted():
    pf = build("process", MakeNumbered())
    try:
        assert numbers(pf, 2) == [0, 1]
        first = pf.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pf._proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        got = numbers(pf, 6)  # what the dead child had sent, then a new one's from 0
        assert pf.restarts == 1 and pf.errors == 1 and pf.pid != first
        i = got.index(0)
        assert i <= 2 and all(x >= 2 for x in got[:i]), got  # at most depth were in flight
        assert got[i:] == list(range(len(got) - i)), got
    finally:
        pf.close()
    assert not pf._proc.is_alive()


def test_close_ends_the_sampler_process():
    pf = build("process", MakeNumbered(refuse=10**9))  # a child forever refused
    assert pf.get(timeout=0.3) is None
    t0 = time.monotonic()
    pf.close()
    assert time.monotonic() - t0 < 5 and not pf._proc.is_alive()


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may be slow to collect it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_sampler_process_exits_when_its_parent_is_killed(tmp_path):
    """A learner killed outright (SIGKILL: no atexit) leaves no sampler behind."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path[:0] = {[os.getcwd(), os.path.dirname(__file__)]!r}
            from test_prefetch import build, MakeNumbered
            if __name__ == "__main__":
                pf = build("process", MakeNumbered(refuse=10**9))
                print(pf.pid, flush=True)
                time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert running(child)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and running(child):
            time.sleep(0.1)
        if running(child):
            os.kill(child, signal.SIGKILL)
            pytest.fail("the sampler process outlived its killed parent by 10 s")
    finally:
        parent.kill()


def test_sample_in_is_validated():
    LearnerWorkerConfig(sample_in="thread").validate()
    with pytest.raises(ConfigError) as e:
        LearnerWorkerConfig(sample_in="fork").validate()
    assert e.value.field == "sample_in" and "process, thread" in str(e.value)


def test_the_sampler_process_memory_is_reported_also_after_close():
    from common.metrics import rss_mb

    pf = build("process", MakeNumbered())
    assert numbers(pf, 1) == [0]
    now = pf.child_rss_mb()
    assert now > 10  # a Python process with numpy loaded
    assert rss_mb(2**22 + 1) is None  # above Linux's largest pid: no such process
    pf.close()
    assert pf.child_rss_mb() == pytest.approx(now, rel=0.5)  # as it was when closed
    t = build("thread", MakeNumbered())
    assert t.child_rss_mb() == 0.0
    t.close()


def test_the_sampler_process_sends_its_samplers_statistics():
    """Counters only the sampling sampler keeps (a sharded sampler's shard outages) reach the
    learner: the child sends ``sampler.stats()`` about every second."""
    pf = build("process", MakeNumbered())
    try:
        numbers(pf, 1)
        first = pf.stats()
        assert first is not None  # sent before the first attempt
        time.sleep(1.2)
        numbers(pf, 4)
        assert pf.stats().shard_outages > first.shard_outages  # a newer snapshot
        assert pf.errors == 0
    finally:
        pf.close()
    t = build("thread", MakeNumbered())
    assert t.stats() is None  # the learner asks its own sampler
    t.close()
