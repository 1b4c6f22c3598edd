"""HTTP inference server: ``GET /health`` and ``POST /predict`` for one classifier.

The model (a PyTorch model directory, an ONNX export directory or a ``.onnx`` file) is loaded
once by :func:`create_app`, so a bad path fails before the server starts. Inference is CPU-bound:
it runs in the threadpool, one request at a time behind a lock, keeping the event loop free.
ONNX models are served without importing torch.
"""

# No ``from __future__ import annotations``: FastAPI must see the per-app request model.
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from distilprune.errors import UserError, require
from distilprune.export.runtime import ONNX_FILENAME, OnnxClassifier, resolve_onnx

TRAINING_METADATA = "distilprune.json"  # = distilprune.jobs.common.METADATA_FILE (imports torch)

Backend = Literal["torch", "onnx", "sparse", "deepsparse"]


@dataclass
class LoadedModel:
    """A classifier behind one interface: ``logits(texts) -> (n, num_labels)``."""

    path: str
    backend: Backend
    labels: list[str]
    logits: Callable[[Sequence[str]], np.ndarray]


def _is_onnx(path: Path) -> bool:
    return path.suffix == ".onnx" or (path.is_dir() and (path / ONNX_FILENAME).is_file())


def _training_metadata(folder: Path) -> dict[str, Any]:
    """The ``distilprune.json`` copied next to an export (read without importing torch)."""
    path = folder / TRAINING_METADATA
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is corrupt: {exc.msg}") from exc


def _load_onnx(path: Path, threads: int) -> LoadedModel:
    """An ONNX export, with the training preprocessing, max length and labels when recorded."""
    from distilprune.engine.deepsparse import DeepSparseRunner, is_deepsparse_export

    onnx_file, folder = resolve_onnx(path)
    meta = _training_metadata(folder)
    if is_deepsparse_export(folder):
        runner = DeepSparseRunner(folder, threads)
        labels = meta.get("label_names") or runner.metadata.get("labels") or ["0", "1"]
        return LoadedModel(str(path), "deepsparse", [str(x) for x in labels],
                           _with_preprocessing(runner.predict_logits, meta.get("preprocess")))
    clf = OnnxClassifier(onnx_file, threads=threads, max_length=meta.get("max_length"))
    labels = meta.get("label_names") or [str(clf.id2label[i]) for i in sorted(clf.id2label)]
    return LoadedModel(str(path), "onnx", [str(x) for x in labels],
                       _with_preprocessing(clf.predict_logits, meta.get("preprocess")))


def _with_preprocessing(logits: Callable[[Sequence[str]], np.ndarray],
                        steps: list[str] | None) -> Callable[[Sequence[str]], np.ndarray]:
    """``logits`` applied to texts cleaned like the training data (as SavedClassifier does)."""
    if not steps:
        return logits
    from distilprune.data.preprocess import build_preprocessor

    clean = build_preprocessor(steps)
    return lambda texts: logits([clean(t, {}) for t in texts])


def _load_torch(path: Path, threads: int, engine: str = "auto") -> LoadedModel:
    import torch

    from distilprune.jobs.inference import SavedClassifier

    require((path / "config.json").is_file(),
            f"{path} is not a model directory, an ONNX export directory or a .onnx file")
    torch.set_num_threads(threads)
    try:
        clf = SavedClassifier(path, engine)
    except (OSError, ValueError) as exc:  # transformers: missing weights / tokenizer files
        raise UserError(f"cannot load model {path}: {exc}") from exc
    backend = "sparse" if engine == "sparse" or (path / "model.sparse.safetensors").is_file() else "torch"
    return LoadedModel(str(path), backend, list(clf.label_names), clf.logits)


def _resolve_path(model_path: str | Path) -> Path:
    """An existing path, or the directory of a packaged model alias (e.g. ``minilm-l6``)."""
    path = Path(model_path).expanduser()
    if not path.exists() and "/" not in str(model_path):
        from distilprune.models.registry import ALIASES, resolve_model

        if str(model_path) in ALIASES:
            return Path(resolve_model(str(model_path)))
    require(path.exists(), f"model not found: {path}")
    return path


def load_model(model_path: str | Path, threads: int = 1, engine: str = "auto") -> LoadedModel:
    """Load a PyTorch model directory (or alias), an ONNX export directory or a ``.onnx`` file.

    ``engine="sparse"`` runs a PyTorch model on the sparse int8 kernels (see ``engine/``).
    """
    path = _resolve_path(model_path)
    require(threads >= 1, "threads must be at least 1")
    if _is_onnx(path):
        require(engine == "auto", f"{path} is an ONNX export: it runs on its own engine (no --engine)")
        return _load_onnx(path, threads)
    return _load_torch(path, threads, engine)


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


def request_model(max_batch: int, max_text_chars: int) -> type[BaseModel]:
    """The ``/predict`` body schema with this server's limits."""
    text = Annotated[str, StringConstraints(strict=True, max_length=max_text_chars)]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: Annotated[list[text], Field(min_length=1, max_length=max_batch)]

    return PredictRequest


def _describe(error: dict[str, Any], max_batch: int, max_text_chars: int) -> str:
    """One readable sentence for a pydantic / FastAPI validation error."""
    kind, loc = error.get("type", ""), [p for p in error.get("loc", ()) if p != "body"]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if kind == "json_invalid":
        return f"request body is not valid JSON: {error.get('ctx', {}).get('error', '')}".rstrip(": ")
    messages = {
        "missing": f"missing field '{where}'" if where else 'body must be {"texts": [...]}',
        "extra_forbidden": f"unexpected field '{where}' (expected only 'texts')",
        "too_short": "'texts' must contain at least one text",
        "too_long": f"too many texts: at most {max_batch} per request",
        "string_too_long": f"{where} is longer than {max_text_chars} characters",
        "string_type": f"{where} must be a string",
        "list_type": "'texts' must be a list of strings",
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
               max_body_bytes: int = 1_000_000, threads: int = 1, engine: str = "auto") -> FastAPI:
    """A FastAPI app serving the classifier at ``model_path`` (loaded now; UserError if bad)."""
    require(max_batch >= 1 and max_text_chars >= 1 and max_body_bytes >= 1,
            "max_batch, max_text_chars and max_body_bytes must be positive")
    model = load_model(model_path, threads, engine)
    lock = threading.Lock()
    body_model = request_model(max_batch, max_text_chars)
    app = FastAPI(title="distilprune classifier", version="1")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.model = model

    def infer(texts: list[str]) -> list[Prediction]:
        with lock:
            logits = model.logits(texts)
        probs = softmax(np.asarray(logits))
        return [Prediction(label=model.labels[int(p.argmax())], score=float(p.max()),
                           probabilities=p.tolist()) for p in probs]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        not_object = any(e.get("type") in ("model_attributes_type", "dict_type") for e in errors)
        if not_object and "json" not in request.headers.get("content-type", ""):
            return JSONResponse({"detail": "Content-Type must be application/json"}, 415)
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        detail = "; ".join(dict.fromkeys(_describe(e, max_batch, max_text_chars) for e in errors))
        return JSONResponse({"detail": detail}, status_code=status)

    @app.get("/health")
    async def health() -> Health:
        return Health(status="ok", model=model.path, backend=model.backend, labels=model.labels)

    @app.post("/predict")
    async def predict(body: body_model) -> PredictResponse:  # type: ignore[valid-type]
        return PredictResponse(predictions=await run_in_threadpool(infer, list(body.texts)))

    return app


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000,
          **limits: Any) -> None:
    """Load the model, then serve it with uvicorn until interrupted (loopback by default)."""
    import uvicorn

    require(0 < port < 65536, f"port must be between 1 and 65535, got {port}")
    app = create_app(model_path, **limits)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
