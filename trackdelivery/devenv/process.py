"""Child processes the dev tooling starts, stops and finds again by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().split(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return True


def terminate_pid(pid: int, sig: signal.Signals, timeout: float) -> None:
    """Send ``sig``, wait for the exit, SIGKILL when it does not come in time."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return


class ManagedProcess:
    """A service process we started (``_process``) or only know by pid (after ``dev up``)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    @property
    def running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown (SIGTERM); SIGKILL if it does not exit in time."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._signal_and_wait(signal.SIGKILL, 30.0)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        if self.pid is None:
            return
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(sig)
                try:
                    self._process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(30)
        else:
            terminate_pid(self.pid, sig, timeout)
        self._process = None
        self.pid = None
