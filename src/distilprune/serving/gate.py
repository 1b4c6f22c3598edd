"""The request gate (ASGI middleware): API key, metrics and the JSON access log of every request.

With an API key, every path except ``/health`` (left open for liveness probes) needs the header
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; otherwise 401. Each ``/predict`` request is
announced to the batcher as soon as it arrives, so that a young batch can wait for it. Once the
server is draining, every answer says ``Connection: close``: a keep-alive client reconnects (and
is refused) instead of sending its next request on a connection the server is about to close.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse

from distilprune.serving.batcher import Arrival, Batcher
from distilprune.serving.metrics import Metrics

OPEN_PATHS = frozenset({"/health"})
NOTES = "distilprune"  # scope key of the per-request notes the handler fills (texts, arrival)
ACCESS_LOGGER = "distilprune.access"
CLOSE = (b"connection", b"close")


def access_logger() -> logging.Logger:
    """The access logger: one JSON object per line on stderr."""
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(getattr(h, "distilprune", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.distilprune = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger


def given_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (raw bytes)."""
    found = dict(headers)
    auth = found.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return found.get(b"x-api-key")


class Gate:
    """Checks the API key, counts and times requests, writes the access log."""

    def __init__(self, app: Any, *, metrics: Metrics, batcher: Batcher, api_key: str | None = None,
                 access_log: bool = False, draining: threading.Event | None = None) -> None:
        self.app, self.metrics, self.batcher = app, metrics, batcher
        self.draining = draining or threading.Event()
        self.key = api_key.encode() if api_key else None
        self.log = access_logger() if access_log else None

    def authorized(self, scope: dict) -> bool:
        if self.key is None or scope["path"] in OPEN_PATHS:
            return True
        given = given_key(scope.get("headers") or [])
        return given is not None and hmac.compare_digest(given, self.key)

    def _route(self, scope: dict) -> Callable:
        """Who answers: 401 without the key; 503 at once, body unread, when the queue is full."""
        if not self.authorized(scope):
            return _unauthorized
        if scope["path"] == "/predict" and self.batcher.full:
            return busy_response(self.batcher)
        return self.app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 0
        arrival = self.batcher.arrival() if scope["path"] == "/predict" else None
        notes: dict[str, Any] = scope.setdefault(NOTES, {})
        notes["arrival"] = arrival
        self.metrics.started()

        async def tracked(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.draining.is_set():  # shutting down: the client must not reuse the connection
                    message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        try:
            await self._route(scope)(scope, receive, tracked)
        except Exception:
            status = status or 500  # the server's error middleware answers 500 after us
            raise
        finally:
            self._done(scope, status, time.perf_counter() - start, arrival, notes)

    def _done(self, scope: dict, status: int, seconds: float, arrival: Arrival | None,
              notes: dict[str, Any]) -> None:
        if arrival is not None:
            arrival.close()
        self.metrics.finished(scope["path"], status, seconds)
        if self.log is not None:
            self.log.info(access_line(scope, status, seconds, notes.get("texts")))


async def _unauthorized(scope: dict, receive: Callable, send: Callable) -> None:
    detail = "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')"
    response = JSONResponse({"detail": detail}, 401, headers={"WWW-Authenticate": "Bearer"})
    await response(scope, receive, send)


def busy_response(batcher: Batcher, retry_after: int | None = None) -> JSONResponse:
    """503 with Retry-After (seconds for the queue to drain at the current pace)."""
    detail = f"server busy: {batcher.max_queue} texts queued (--max-queue); retry later"
    retry = retry_after if retry_after is not None else batcher.retry_after()
    return JSONResponse({"detail": detail}, 503, headers={"Retry-After": str(retry)})


def access_line(scope: dict, status: int, seconds: float, texts: int | None) -> str:
    """One access-log record as a JSON line."""
    client = scope.get("client") or ("", 0)
    return json.dumps({
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "client": client[0], "method": scope.get("method"), "path": scope["path"],
        "status": status, "ms": round(seconds * 1000, 2), "texts": texts,
    })
