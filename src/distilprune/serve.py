"""HTTP inference server: ``GET /health``, ``POST /predict`` and ``GET /metrics`` for one model.

``/predict`` takes ``{"texts": [...]}`` (a pair classifier: ``[[text, second text], ...]``) and
returns labels with probabilities, or (token classification) the entities of each text with
character offsets; a QA model takes ``{"question": ..., "context": ...}`` and returns the answer
span with its score and character offsets.

The model (a PyTorch model directory, an ONNX export directory or a ``.onnx`` file) is loaded
once by :func:`create_app`, so a bad path fails before the server starts. Concurrent requests are
queued and coalesced into batches by one inference thread (:mod:`distilprune.serving.batcher`),
keeping the event loop free; a full queue answers 503 with ``Retry-After``, a request not answered
within ``request_timeout`` 504. SIGTERM stops accepting connections, answers the requests in
flight and exits 0 (bounded by ``shutdown_timeout``). ONNX models are served without torch.
"""

# No ``from __future__ import annotations``: FastAPI must see the per-app request model.
import asyncio
import contextlib
import functools
import gc
import ipaddress
import json
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from distilprune.errors import Interrupted, require, require_at_least
from distilprune.predictor import Backend, Predictor, load_predictor
from distilprune.serving.batcher import Batcher, Closed, QueueFull
from distilprune.serving.gate import NOTES, Gate, busy_response
from distilprune.serving.metrics import CONTENT_TYPE, Metrics

API_KEY_ENV = "DISTILPRUNE_API_KEY"
SETTINGS_ENV = "DISTILPRUNE_SERVE_SETTINGS"  # create_app keyword arguments for --workers processes
log = logging.getLogger("uvicorn.error")



def load_model(model_path: str | Path, threads: int = 1, engine: str = "auto") -> Predictor:
    """The served model: a PyTorch model directory (or alias), an ONNX export directory or a
    ``.onnx`` file (:func:`~distilprune.predictor.load_predictor`; ``engine="sparse"`` runs a
    PyTorch model on the sparse int8 kernels)."""
    require(threads >= 1, "threads must be at least 1")
    return load_predictor(model_path, threads, engine, serving=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float64, numerically stable)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- request / response
class Prediction(BaseModel):
    label: str
    score: float
    probabilities: list[float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class Health(BaseModel):
    status: str
    model: str
    backend: Backend
    labels: list[str]


def request_model(max_batch: int, max_text_chars: int, task: str = "classification",
                  pairs: bool = False) -> type[BaseModel]:
    """The ``/predict`` body schema with this server's limits: ``{"texts": [...]}`` (text pairs as
    two-element lists), or ``{"question": ..., "context": ...}`` for a QA model (the context is
    bounded by the body size only)."""
    text = Annotated[str, StringConstraints(strict=True, max_length=max_text_chars)]
    if task == "question-answering":
        class QuestionRequest(BaseModel):
            model_config = ConfigDict(extra="forbid")
            question: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=max_text_chars)]
            context: Annotated[str, StringConstraints(strict=True, min_length=1)]

        return QuestionRequest
    item = tuple[text, text] if pairs else text

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: Annotated[list[item], Field(min_length=1, max_length=max_batch)]  # type: ignore[valid-type]

    return PredictRequest


def _describe(error: dict[str, Any], max_batch: int, max_text_chars: int,
              fields: str = "'texts'") -> str:
    """One readable sentence for a pydantic / FastAPI validation error."""
    kind, loc = error.get("type", ""), [p for p in error.get("loc", ()) if p != "body"]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if kind == "json_invalid":
        return f"request body is not valid JSON: {error.get('ctx', {}).get('error', '')}".rstrip(": ")
    messages = {
        "missing": f"missing field '{where}'" if where else 'body must be {"texts": [...]}',
        "extra_forbidden": f"unexpected field '{where}' (expected only {fields})",
        "too_short": "'texts' must contain at least one text",
        "too_long": f"too many texts: at most {max_batch} per request",
        "string_too_long": f"{where} is longer than {max_text_chars} characters",
        "string_type": f"{where} must be a string",
        "list_type": "'texts' must be a list of strings",
        "tuple_type": f"{where} must be a [text, second text] pair",
        "string_too_short": f"{where} is empty",
        "model_attributes_type": 'body must be a JSON object {"texts": [...]}',
        "dict_type": 'body must be a JSON object {"texts": [...]}',
    }
    return messages.get(kind, f"{where or 'body'}: {error.get('msg', 'invalid value')}")


# ----------------------------------------------------------------------------- body size limit
class BodyLimit:
    """ASGI middleware: 413 when Content-Length or the bytes actually sent exceed ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._reject(scope, receive, send, declared.isdigit())
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._reject(scope, receive, send, True)
        return await self.app(scope, _replay(bytes(body), receive), send)

    async def _reject(self, scope: dict, receive: Callable, send: Callable, too_big: bool) -> None:
        status, detail = (413, f"request body larger than {self.max_bytes} bytes") if too_big \
            else (400, "invalid Content-Length header")
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that yields the buffered body once, then defers to the real one."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# ----------------------------------------------------------------------------- the app
def create_app(model_path: str | Path, *, max_batch: int = 64, max_text_chars: int = 2000,
               max_body_bytes: int = 1_000_000, threads: int = 1, engine: str = "auto",
               max_batch_size: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256,
               request_timeout: float = 30.0, api_key: str | None = None,
               access_log: bool = False) -> FastAPI:
    """A FastAPI app serving the classifier at ``model_path`` (loaded now; UserError if bad).

    ``max_batch``: most texts in one request; ``max_batch_size``: most texts coalesced into one
    batch; ``max_wait_ms``: longest a batch waits for requests still arriving; ``max_queue``: most
    texts waiting (then 503); ``request_timeout``: seconds before 504; ``api_key``: required from
    every client (except on /health); ``access_log``: one JSON line per request on stderr.
    """
    _check_options(max_batch, max_text_chars, max_body_bytes, max_batch_size, max_wait_ms,
                   max_queue, request_timeout)
    model = load_model(model_path, threads, engine)
    metrics = Metrics(model.load_seconds)
    forward = (model if model.task != "classification"
               else lambda texts: softmax(np.asarray(model(texts))))
    batcher = Batcher(forward,
                      max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                      lengths=model.lengths, on_batch=metrics.batch)
    metrics.queue_depth = lambda: batcher.depth
    app = FastAPI(title="distilprune classifier", version="1", lifespan=_lifespan(batcher, metrics))
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.serving, app.state.draining = threading.Event(), threading.Event()
    app.add_middleware(Gate, metrics=metrics, batcher=batcher, api_key=api_key, access_log=access_log,
                       draining=app.state.draining)
    app.state.model, app.state.batcher, app.state.metrics = model, batcher, metrics
    _add_error_handler(app, max_batch, max_text_chars,
                       "'question' and 'context'" if model.task == "question-answering" else "'texts'")
    _add_routes(app, request_model(max_batch, max_text_chars, model.task, model.pairs), request_timeout)
    return app


def _check_options(max_batch: int, max_text_chars: int, max_body_bytes: int, max_batch_size: int,
                   max_wait_ms: float, max_queue: int, request_timeout: float) -> None:
    require(max_batch >= 1 and max_text_chars >= 1 and max_body_bytes >= 1,
            "max_batch, max_text_chars and max_body_bytes must be positive")
    require_at_least("--max-batch-size", max_batch_size, 1)
    require_at_least("--max-wait-ms", max_wait_ms, 0)
    require_at_least("--max-queue", max_queue, 1)
    require_at_least("--request-timeout", request_timeout, 0, strict=True)


def _lifespan(batcher: Batcher, metrics: Metrics) -> Callable[[FastAPI], Any]:
    """Startup marks the app serving and watches for shutdown signals; shutdown (after uvicorn's
    drain) stops the batcher."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.serving.set()
        _watch_shutdown_signals(app.state.draining)
        yield
        await asyncio.to_thread(batcher.close, 5.0)
        log.info("drained: %s", json.dumps(metrics.summary()))

    return lifespan


def _watch_shutdown_signals(draining: threading.Event) -> None:
    """Chain onto the SIGTERM / SIGINT handlers uvicorn installed (it restores its own saved ones
    when it stops): a signal first marks the app draining, then uvicorn begins its shutdown."""
    if threading.current_thread() is not threading.main_thread():
        return  # not run by uvicorn in the main thread (tests): no signals to watch
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if callable(previous):
            signal.signal(signum, functools.partial(_mark_draining, draining, previous))


def _mark_draining(draining: threading.Event, previous: Callable, signum: int, frame: Any) -> None:
    draining.set()
    previous(signum, frame)


def _add_error_handler(app: FastAPI, max_batch: int, max_text_chars: int, fields: str = "'texts'") -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        not_object = any(e.get("type") in ("model_attributes_type", "dict_type") for e in errors)
        if not_object and "json" not in request.headers.get("content-type", ""):
            return JSONResponse({"detail": "Content-Type must be application/json"}, 415)
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        detail = "; ".join(dict.fromkeys(_describe(e, max_batch, max_text_chars, fields) for e in errors))
        return JSONResponse({"detail": detail}, status_code=status)


def _add_routes(app: FastAPI, body_model: type[BaseModel], timeout: float) -> None:
    model, batcher, metrics = app.state.model, app.state.batcher, app.state.metrics

    @app.get("/health")
    async def health() -> Health:
        return Health(status="ok", model=model.path, backend=model.backend, labels=model.labels)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/predict")
    async def predict(body: body_model, request: Request) -> PredictResponse:  # type: ignore[valid-type]
        notes = request.scope.setdefault(NOTES, {})
        items = _request_items(body)
        notes["texts"] = len(items)
        try:
            probs = await batcher.predict(items, timeout, notes.get("arrival"))
        except (QueueFull, Closed) as exc:
            return _unavailable(exc, batcher)  # type: ignore[return-value]
        except TimeoutError:
            return JSONResponse({"detail": f"no answer within {timeout:g} s (--request-timeout)"},
                                504)  # type: ignore[return-value]
        except Exception as exc:  # the model failed on this batch
            log.exception("inference failed")
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return JSONResponse({"detail": f"inference failed: {first}"}, 500)  # type: ignore[return-value]
        if model.task != "classification":
            return JSONResponse({"predictions": list(probs)})  # type: ignore[return-value]
        return PredictResponse(predictions=_predictions(probs, model.labels))


def _request_items(body: BaseModel) -> list[Any]:
    """The texts of a request (pairs as tuples; a QA request: one (question, context) pair)."""
    if hasattr(body, "question"):
        return [(body.question, body.context)]  # type: ignore[attr-defined]
    return [tuple(t) if isinstance(t, list | tuple) else t for t in body.texts]  # type: ignore[attr-defined]


def _predictions(probs: np.ndarray, labels: list[str]) -> list[Prediction]:
    return [Prediction(label=labels[int(p.argmax())], score=float(p.max()), probabilities=p.tolist())
            for p in probs]


def _unavailable(exc: Exception, batcher: Batcher) -> JSONResponse:
    """503 with Retry-After: the queue is full, or the server is shutting down."""
    if isinstance(exc, QueueFull):
        return busy_response(batcher, exc.retry_after)
    return JSONResponse({"detail": "server is shutting down"}, 503, headers={"Retry-After": "5"})


# ----------------------------------------------------------------------------- serving
def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_api_key(host: str, api_key: str | None, no_auth: bool) -> str | None:
    """The key clients must send (``api_key``, else DISTILPRUNE_API_KEY), or None; a server bound
    beyond loopback needs one unless ``no_auth``."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    key = key or None
    require(not (key and no_auth),
            f"--no-auth and an API key (--api-key or {API_KEY_ENV}) exclude each other")
    require(bool(key) or no_auth or is_loopback(host),
            f"--host {host} is not a loopback address: set an API key (--api-key or {API_KEY_ENV}) "
            "or pass --no-auth to serve without one")
    return key


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1,
          api_key: str | None = None, no_auth: bool = False, shutdown_timeout: float = 20.0,
          **options: Any) -> None:
    """Load the model, then serve it with uvicorn until SIGTERM / SIGINT (loopback by default).

    ``workers`` > 1 runs that many processes on one socket, each with its own model, batcher and
    metrics. On SIGTERM the server stops accepting connections, answers the requests it holds
    (at most ``shutdown_timeout`` s, then they are cancelled) and returns (exit code 0).
    """
    import uvicorn

    require(0 < port < 65536, f"port must be between 1 and 65535, got {port}")
    require_at_least("--workers", workers, 1)
    require_at_least("--shutdown-timeout", shutdown_timeout, 0)
    key = resolve_api_key(host, api_key, no_auth)
    app = create_app(model_path, api_key=key, **options)  # fails here, once, on a bad model
    run = {"host": host, "port": port, "log_level": "info", "access_log": False,
           "timeout_graceful_shutdown": shutdown_timeout}
    if workers == 1:
        with _sigterm_drains(app.state.serving):
            uvicorn.run(app, **run)
        return
    app.state.batcher.close()  # this copy only proved the model loads; each worker loads its own
    del app
    gc.collect()
    os.environ[SETTINGS_ENV] = json.dumps({"model_path": str(model_path), "api_key": key, **options})
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, **run)


def worker_app() -> FastAPI:
    """The app of one ``--workers`` process (a uvicorn factory), configured by SETTINGS_ENV."""
    return create_app(**json.loads(os.environ[SETTINGS_ENV]))


@contextlib.contextmanager
def _sigterm_drains(serving: threading.Event) -> Iterator[None]:
    """uvicorn drains on SIGTERM, then re-raises it to the handler it found: make that handler a
    no-op once serving (a drained server exits 0, not 143); before that, SIGTERM interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        if not serving.is_set():
            raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
