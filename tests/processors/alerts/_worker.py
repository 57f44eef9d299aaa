"""Running `trackdelivery alerts` as a subprocess, and a real webhook receiver, for the worker tests."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from processors.alerts.webhooks import verify
from tests.processors._support import REPO_ROOT, WorkerProcess, read_topic
from trackdelivery.devenv.ports import free_port
from trackdelivery.topics import create_topics

WEBHOOK_SECRET = "test-secret"


class AlertWorker(WorkerProcess):
    COMMAND = "alerts"


@dataclass
class AlertDeployment:
    bootstrap: str
    redis_url: str
    workdir: Path
    partitions: int = 3
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = self.tag
        self.raw, self.events, self.unparsed = f"raw.{t}", f"events.{t}", f"unparsed.{t}"
        self.signals, self.heartbeats, self.alerts = f"signals.{t}", f"heartbeats.{t}", f"alerts.{t}"
        self.app_id, self.processor_id, self.prefix = f"alerts-{t}", f"proc-{t}", f"al{t}"
        n = self.partitions
        create_topics(self.bootstrap, {
            self.raw: n, self.events: n, self.unparsed: 1, self.signals: n, self.heartbeats: n, self.alerts: 1,
        })

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "TRACKDELIVERY_TOPIC_RAW": self.raw,
            "TRACKDELIVERY_TOPIC_EVENTS": self.events,
            "TRACKDELIVERY_TOPIC_UNPARSED": self.unparsed,
            "TRACKDELIVERY_TOPIC_ALERT_SIGNALS": self.signals,
            "TRACKDELIVERY_TOPIC_HEARTBEATS": self.heartbeats,
            "TRACKDELIVERY_TOPIC_ALERTS": self.alerts,
            "TRACKDELIVERY_ALERTS_APP_ID": self.app_id,
            "TRACKDELIVERY_ALERTS_DATADIR": str(self.workdir / "alerts-data"),
            "TRACKDELIVERY_ALERTS_DEAD_LETTER_PATH": str(self.workdir / "dead-letters.jsonl"),
            "TRACKDELIVERY_ALERTS_COMMIT_INTERVAL": "0.5",
            "TRACKDELIVERY_ALERTS_SESSION_TIMEOUT": "6",
            "TRACKDELIVERY_PROCESSOR_APP_ID": self.processor_id,
            "TRACKDELIVERY_PROCESSOR_DATADIR": str(self.workdir / "processor-data"),
            "TRACKDELIVERY_PROCESSOR_SESSION_TIMEOUT": "6",
            "TRACKDELIVERY_STORE_PREFIX": self.prefix,
            "PYTHONPATH": str(REPO_ROOT),
            **self.extra_env,
        }

    def alert_worker(self, name: str = "alerts") -> AlertWorker:
        return AlertWorker(self.env(), self.workdir / f"{name}.log", free_port())

    def processor(self, name: str = "processor") -> WorkerProcess:
        return WorkerProcess(self.env(), self.workdir / f"{name}.log", free_port())

    def alert_records(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.value) for messages in read_topic(self.bootstrap, self.alerts).values()
                for m in messages]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, workers: list[WorkerProcess]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for worker in workers:
            if not worker.alive:
                raise AssertionError(f"worker exited early:\n{worker.log_tail()}")
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = workers[0].log_tail() if workers else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(0.5)


class FlakyReceiver:
    """A real HTTP server that answers 503 to the first ``failures`` attempts of every delivery, then 204."""

    def __init__(self, failures: int = 2) -> None:
        self.failures = failures
        self.attempts: Counter[str] = Counter()
        self.delivered: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                delivery = self.headers.get("X-Trackdelivery-Delivery", "")
                signed = verify(WEBHOOK_SECRET, self.headers.get("X-Trackdelivery-Timestamp", ""), body,
                                self.headers.get("X-Trackdelivery-Signature", ""))
                with receiver.lock:
                    receiver.attempts[delivery] += 1
                    ok = receiver.attempts[delivery] > receiver.failures
                    if not signed:
                        receiver.bad_signatures += 1
                    if ok:
                        receiver.delivered.append({"delivery": delivery, **orjson.loads(body)})
                self.send_response(204 if ok else 503)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def __enter__(self) -> FlakyReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
