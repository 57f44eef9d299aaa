"""A small HTTP client of the query service API for the CLI (standard library only)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


def _error_message(body: bytes) -> str:
    try:
        detail = orjson.loads(body).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        return body[:300].decode(errors="replace")
    if isinstance(detail, list):
        return "; ".join(f"{(item.get('loc') or ['?'])[-1]}: {item.get('msg')}" for item in detail)
    return str(detail)


class ApiClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ApiError(0, f"the service URL must start with http:// or https://: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, path: str, params: list[tuple[str, str]] | None, accept: str) -> urllib.request.Request:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked in __init__

    def get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        request = self._request(path, params, "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, _error_message(error.read())) from None
        except urllib.error.URLError as error:
            raise ApiError(0, f"cannot reach {self.base_url}: {error.reason}") from None

    def stream(self, path: str, params: list[tuple[str, str]] | None = None) -> Iterator[dict[str, Any]]:
        """Yield the JSON ``data`` of each server-sent event until the server closes the stream."""
        request = self._request(path, params, "text/event-stream")
        try:
            response = urllib.request.urlopen(request, timeout=None)  # noqa: S310
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, _error_message(error.read())) from None
        except urllib.error.URLError as error:
            raise ApiError(0, f"cannot reach {self.base_url}: {error.reason}") from None
        with response:
            data: list[str] = []
            for raw_line in response:
                line = raw_line.decode(errors="replace").rstrip("\r\n")
                if not line:
                    if data:
                        yield orjson.loads("\n".join(data))
                    data = []
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
