"""A minimal in-process ASGI client (the app runs in the test's event loop, lifespan included)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class AsgiClient:
    def __init__(self, app: Any, token: str | None = None) -> None:
        self.app = app
        self.token = token

    def _scope(self, path: str, params: Any, headers: dict[str, str] | None) -> dict[str, Any]:
        query = urlencode(params, doseq=True) if params else ""
        raw_headers = [(b"host", b"testserver")]
        merged = dict(headers or {})
        if self.token is not None and "authorization" not in {k.lower() for k in merged}:
            merged["Authorization"] = f"Bearer {self.token}"
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in merged.items()]
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }

    async def get(self, path: str, params: Any = None, headers: dict[str, str] | None = None) -> Reply:
        scope = self._scope(path, params, headers)
        sent_request = False
        status = 0
        reply_headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # never: the client stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                reply_headers.update({k.decode(): v.decode() for k, v in message.get("headers", [])})
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return Reply(status, reply_headers, b"".join(chunks))

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, params: Any = None
    ) -> AsyncIterator[tuple[asyncio.Queue[bytes], Callable[[], asyncio.Task[None]]]]:
        """Open a streaming GET; yields (chunks queue, task getter) once the response has started (the
        status is the first item of the queue). Leaving the block disconnects."""
        scope = self._scope(path, params, None)
        chunks: asyncio.Queue[bytes] = asyncio.Queue()
        disconnect = asyncio.Event()
        sent_request = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                await chunks.put(b"STATUS %d" % message["status"])
            elif message["type"] == "http.response.body" and message.get("body"):
                await chunks.put(message["body"])

        task = asyncio.create_task(self.app(scope, receive, send))
        started = asyncio.create_task(chunks.get())
        await asyncio.wait({started, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            started.cancel()
            raise AssertionError("the response did not start")
        status_line = started.result()
        if status_line == b"STATUS 200":
            # the body of a live stream starts with a comment, sent once the stream is listening
            first_body = await asyncio.wait_for(chunks.get(), timeout=10)
            chunks.put_nowait(status_line)
            chunks.put_nowait(first_body)
        else:
            chunks.put_nowait(status_line)
        try:
            yield chunks, lambda: task
        finally:
            disconnect.set()
            await asyncio.wait_for(task, timeout=10)


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[Any]:
    """Run the app's lifespan (startup/shutdown) around the block."""
    async with app.router.lifespan_context(app):
        yield app
