"""Batches sampled ahead of the learner's updates, on a thread or in a child process.

    from learner.prefetch import make_prefetcher
    pf = make_prefetcher("process", make_sampler, batch_size=24, timeout_s=1.0, depth=2,
                         on_wait=lambda s: ...)
    batch = pf.get(timeout=1.0)    # a Batch, or None if none was ready in time
    pf.errors                      # failed sampling attempts so far (each logged, none fatal)
    pf.close()

Both kinds keep up to ``depth`` batches ready and call ``on_wait(seconds)`` with the time
each sampling attempt took (``amago_replay_sample_wait_seconds``). A sampling attempt that
the rate limiter or an empty store refuses within ``timeout_s`` yields no batch and is retried;
any other exception (replay outage, corrupt data) is counted, logged and retried after a
pause: never fatal.

- ``thread``: the sampler runs on a daemon thread of the learner process. Its Python work
  (index, decode, relabeling, collation) contends for the GIL with the update, whose every
  torch op releases and re-takes it: measured on the T-Maze preset (2 cores), updates ran
  12-15% slower with this thread than with sampling done inline between updates.
- ``process`` (the default): the sampler runs in a child process (``spawn``: the learner's
  threads make ``fork`` unsafe) built from the same factory, so it uses another core, never
  the learner's GIL; batches come back pickled through a ``multiprocessing`` queue, and the
  learner only unpickles them; every second the child also sends its sampler's
  ``stats()`` (:meth:`ProcessPrefetcher.stats`), so counters only the sampling sampler keeps
  (a sharded sampler's shard outages) reach the learner's metrics. A child that dies is restarted at the next ``get`` (counted
  in ``errors`` and ``restarts``; what it had queued is lost); a child whose parent died
  exits within ``timeout_s``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from common.core import ReplaySampler
from common.records import Batch
from common.replay import RateLimitTimeout, ReplayStats

log = logging.getLogger(__name__)

KINDS = ("process", "thread")
RETRY_PAUSE_S = 0.5  # after a failed sampling attempt
STATS_EVERY_S = 1.0  # a sampler process sends its sampler's statistics this often


class Prefetch(Protocol):
    errors: int

    def get(self, timeout: float) -> Batch | None: ...

    def close(self) -> None: ...

    def child_rss_mb(self) -> float: ...

    def stats(self) -> ReplayStats | None:
        """Statistics of the sampler that samples, if it is not the caller's own."""


def sample_once(sampler: ReplaySampler, batch_size: int, timeout_s: float) -> Batch | None:
    """One attempt: a batch, or None when the rate limiter / an empty store said wait."""
    try:
        return sampler.sample(batch_size, timeout_s=timeout_s)
    except RateLimitTimeout:
        return None


class ThreadPrefetcher:
    """``sample_once`` on a daemon thread of this process (see the module docstring)."""

    def __init__(
        self,
        sampler: ReplaySampler,
        batch_size: int,
        timeout_s: float,
        depth: int,
        on_wait: Callable[[float], None],
    ):
        self._sample = lambda: sample_once(sampler, batch_size, timeout_s)
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._on_wait = on_wait
        self._stop = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="prefetch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                batch = self._sample()
            except Exception as e:  # replay outage, corrupt data...: keep the learner alive
                self.errors += 1
                log.warning("batch sampling failed (%s); retrying", e)
                self._stop.wait(RETRY_PAUSE_S)
                continue
            finally:
                self._on_wait(time.perf_counter() - t0)
            while batch is not None and not self._stop.is_set():
                try:
                    self._q.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def get(self, timeout: float) -> Batch | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def child_rss_mb(self) -> float:
        return 0.0  # no child process

    def stats(self) -> ReplayStats | None:
        return None  # the learner's own sampler is the sampling one: ask it


# Messages from the child: (kind, payload, seconds spent sampling since the last message)
#   ("batch", Batch, s)   a batch (sent once the parent has a free slot: at most depth ahead)
#   ("wait", None, s)     attempts the rate limiter / an empty store refused (only if a slot
#                         is free at once, else their time rides on the next message)
#   ("error", str, s)     a failed attempt (or a failed sampler start); the child then pauses
#   ("stats", ReplayStats, s)  the child's ``sampler.stats()``, every STATS_EVERY_S: counters
#                         only the sampling sampler sees (a sharded sampler's shard outages)


def _child_main(
    make_sampler: Callable[[], ReplaySampler],
    batch_size: int,
    timeout_s: float,
    out,
    slots,
    stop,
    parent: int,
) -> None:
    """The sampling loop of a :class:`ProcessPrefetcher` child: sends into the write end
    ``out`` of its own pipe, one message per free slot of ``slots`` (a semaphore the parent
    releases per message read); ends when ``stop`` is set, its parent changes (the learner
    died) or the pipe breaks."""

    def alive() -> bool:
        return not stop.is_set() and os.getppid() == parent

    def send(msg, block: bool) -> bool:
        """Send once a slot is free (``block``: waiting for one), else drop: whether sent."""
        while alive():
            if slots.acquire(timeout=0.1) if block else slots.acquire(block=False):
                out.send(msg)
                return True
            if not block:
                return False
        return False

    sampler, spent, stats_due = None, 0.0, time.monotonic()
    try:
        while alive():
            t0 = time.perf_counter()
            try:
                if sampler is None:
                    sampler = make_sampler()
                if time.monotonic() >= stats_due:
                    stats_due = time.monotonic() + STATS_EVERY_S
                    send(("stats", sampler.stats(), 0.0), block=True)
                batch = sample_once(sampler, batch_size, timeout_s)
            except Exception as e:  # replay outage, corrupt data...: report, pause, retry
                spent += time.perf_counter() - t0
                send(("error", f"{type(e).__name__}: {e}", spent), block=True)
                spent = 0.0
                stop.wait(RETRY_PAUSE_S)
                continue
            spent += time.perf_counter() - t0
            if batch is None:  # refused: report the wait only if a slot is free
                if send(("wait", None, spent), block=False):
                    spent = 0.0
                continue
            if send(("batch", batch, spent), block=True):
                spent = 0.0
    except (BrokenPipeError, EOFError, OSError):  # the parent closed its end
        pass


class ProcessPrefetcher:
    """The sampler in a child process (see the module docstring). Every child gets its own
    pipe, slot semaphore and stop event, so a child killed mid-message (its half-written
    message ends in EOF: the parent holds no write end) or holding a lock cannot stall the
    next one."""

    def __init__(
        self,
        make_sampler: Callable[[], ReplaySampler],
        batch_size: int,
        timeout_s: float,
        depth: int,
        on_wait: Callable[[float], None],
    ):
        self._args = (make_sampler, batch_size, timeout_s)
        self._depth = depth
        self._ctx = mp.get_context("spawn")
        self._on_wait = on_wait
        self.errors = 0
        self.restarts = 0
        self._closed = False
        self._last_rss = 0.0
        self._stats: ReplayStats | None = None
        self._start()

    def _start(self) -> None:
        ctx = self._ctx
        self._recv, send = ctx.Pipe(duplex=False)
        self._slots, self._stop = ctx.Semaphore(self._depth), ctx.Event()
        self._proc = ctx.Process(
            target=_child_main,
            args=(*self._args, send, self._slots, self._stop, os.getpid()),
            name="amago-sampler",
            daemon=True,
        )
        self._proc.start()
        send.close()  # the child holds the only write end: its death reads as EOF

    @property
    def pid(self) -> int | None:
        """The sampler process's pid."""
        return self._proc.pid

    def stats(self) -> ReplayStats | None:
        """The sampler process's latest ``sampler.stats()`` (at most ~STATS_EVERY_S old while
        the learner reads batches); None before the first."""
        return self._stats

    def child_rss_mb(self) -> float:
        """The sampler process's resident memory (MiB): now, or as it was when closed."""
        from common.metrics import rss_mb  # here: common.metrics needs prometheus_client

        now = rss_mb(self._proc.pid) if self._proc.is_alive() else None
        return self._last_rss if now is None else now

    def _restart(self, why: str) -> None:
        self.errors += 1
        self.restarts += 1
        log.warning("sampler process %s (exit code %s); restarting it", why, self._proc.exitcode)
        self._stop_child()
        self._start()

    def _stop_child(self) -> None:
        self._stop.set()
        self._recv.close()
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)

    def get(self, timeout: float) -> Batch | None:
        deadline = time.monotonic() + timeout
        while not self._closed:
            left = deadline - time.monotonic()
            try:
                ready = self._recv.poll(max(min(left, 0.5), 0.0))
                msg = self._recv.recv() if ready else None
            except (EOFError, OSError):
                self._restart("ended")
                continue
            if msg is None:
                if not self._proc.is_alive():
                    self._restart("died")
                elif left <= 0.5:
                    return None
                continue
            self._slots.release()
            kind, payload, spent = msg
            self._on_wait(spent)
            if kind == "batch":
                return payload
            if kind == "stats":
                self._stats = payload
            if kind == "error":
                self.errors += 1
                log.warning("batch sampling failed (%s); retrying", payload)
            if time.monotonic() >= deadline:
                return None
        return None

    def close(self) -> None:
        self._last_rss = self.child_rss_mb()
        self._closed = True
        self._stop_child()


def make_prefetcher(
    kind: str,
    make_sampler: Callable[[], ReplaySampler],
    batch_size: int,
    timeout_s: float,
    depth: int,
    on_wait: Callable[[float], None],
    sampler: ReplaySampler | None = None,
) -> Prefetch:
    """A prefetcher of ``kind`` (``KINDS``); ``thread`` uses ``sampler`` if given (else one
    from ``make_sampler``), ``process`` builds its own in the child."""
    if kind == "thread":
        s = sampler if sampler is not None else make_sampler()
        return ThreadPrefetcher(s, batch_size, timeout_s, depth, on_wait)
    if kind == "process":
        return ProcessPrefetcher(make_sampler, batch_size, timeout_s, depth, on_wait)
    raise ValueError(f"unknown prefetcher kind {kind!r}; one of {KINDS}")
