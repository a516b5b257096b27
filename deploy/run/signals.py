"""Graceful stop of a training run on SIGINT (Ctrl-C) and SIGTERM (``ray job stop``, Kubernetes).

    stop = StopRequest()
    with stop.installed():          # the driver's main thread, after Ray started
        while not stop.requested and ...:
            ...                     # the run loop
    summary["stop_reason"] = stop.reason or "budget"
    sys.exit(stop.exit_code)        # 130 (SIGINT) / 143 (SIGTERM)

The first signal only sets a flag: the driver leaves its loop, the learner writes its final
checkpoint, and ``summary.json`` is written with ``stop_reason: "signal:SIGTERM"``. A second
signal exits at once (``os._exit``; the embedded server's watchdog and Ray's fate-sharing end
the rest). Ray's core worker installs a handler for SIGTERM that aborts the process, so the
handlers are installed after ``ray.init`` and the previous ones restored on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Whether (and by which signal) a graceful stop was asked for."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def reason(self) -> str | None:
        """``"signal:SIGINT"`` / ``"signal:SIGTERM"``, or None."""
        return None if self.signum is None else f"signal:{signal.Signals(self.signum).name}"

    @property
    def exit_code(self) -> int:
        """The shell's code for death by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 0 if self.signum is None else 128 + self.signum

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # the second signal: no more waiting
            os._exit(128 + signum)
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name} received: stopping the run (final checkpoint and "
            "summary follow; send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGINT and SIGTERM while inside (main thread only: elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
