"""Loopback port helpers for the local services."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Collection

from trackdelivery.devenv.exceptions import DevEnvError


def free_port(exclude: Collection[int] = ()) -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in exclude:
            return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise DevEnvError(f"timed out after {timeout:.0f}s waiting for {what}")
