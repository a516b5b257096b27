"""Loopback networking helpers shared by local runs, the embedded replay server and tests."""

from __future__ import annotations

import socket

#: The address every local service binds to (never an external interface).
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS picks it; bind it soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
