"""A real Redis from Debian's ``redis-server``, on a free loopback port, without persistence."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from trackdelivery.devenv.exceptions import DevEnvError
from trackdelivery.devenv.ports import free_port, wait_for
from trackdelivery.devenv.process import ManagedProcess


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise DevEnvError("redis-server is not installed: run `make install` (apt-get install redis-server)")
    return binary


class RedisServer(ManagedProcess):
    def __init__(self, workdir: Path, port: int | None = None, *, maxmemory: str = "0") -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.maxmemory = maxmemory
        super().__init__()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0, *, detach: bool = False) -> None:
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--save", "", "--appendonly", "no",
            "--maxmemory", self.maxmemory, "--daemonize", "no",
            "--logfile", str(self.workdir / "redis.log"),
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=detach,
        )
        self.pid = self._process.pid
        wait_for(self._ready, timeout, f"Redis on port {self.port}")

    def _ready(self) -> bool:
        if not self.running:
            log = self.workdir / "redis.log"
            raise DevEnvError(f"redis-server exited during start-up: {log.read_text()[-2000:] if log.exists() else ''}")
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False
