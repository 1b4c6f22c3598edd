"""HTTP server: health, predictions (PyTorch and ONNX backends), validation, limits, bad paths."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from distilprune.errors import UserError
from distilprune.evaluate import softmax
from distilprune.jobs.inference import SavedClassifier
from distilprune.serve import create_app, serve

TEXTS = ["Forest fire near La Ronge Sask. Canada", "I love fruits", "ok"]
LIMITS = {"max_batch": 4, "max_text_chars": 50, "max_body_bytes": 2000}


@pytest.fixture(scope="module")
def model_dir(tiny_model_factory):
    return tiny_model_factory("bert")


@pytest.fixture(scope="module")
def onnx_dir(model_dir, tmp_path_factory):
    from distilprune.export import export_onnx

    out = tmp_path_factory.mktemp("serve-onnx") / "onnx"
    export_onnx(model_dir, out, parity_texts=TEXTS)
    return out


@pytest.fixture(scope="module")
def client(model_dir):
    return TestClient(create_app(model_dir, **LIMITS))


@pytest.fixture(scope="module", params=["torch", "onnx"])
def any_client(request, model_dir, onnx_dir):
    """``(client, path, backend)`` for the model directory and for its ONNX export."""
    path = model_dir if request.param == "torch" else onnx_dir
    return TestClient(create_app(path, **LIMITS)), path, request.param


def test_health(any_client):
    client, path, backend = any_client
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["backend"] == backend and body["model"] == str(path)
    assert len(body["labels"]) == 2 and all(isinstance(x, str) for x in body["labels"])


def test_predict_matches_saved_classifier(any_client, model_dir):
    client, _, _ = any_client
    labels = client.get("/health").json()["labels"]
    response = client.post("/predict", json={"texts": TEXTS})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == len(TEXTS)
    expected = softmax(SavedClassifier(model_dir).logits(TEXTS))
    probs = np.array([p["probabilities"] for p in predictions])
    assert probs.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    for p, row in zip(predictions, probs, strict=True):
        assert p["label"] == labels[int(row.argmax())]
        assert p["score"] == pytest.approx(row.max())


def log_odds(logits: np.ndarray) -> np.ndarray:
    """Binary log-odds: resolves the tiny random model's small differences (p ~ 0.5)."""
    return logits[:, 1] - logits[:, 0]


def test_training_metadata_used_by_both_backends(model_dir, onnx_dir, tmp_path):
    """distilprune.json (preprocessing, labels, max length) applies to torch and ONNX alike."""
    import json
    import shutil

    from distilprune.export import OnnxClassifier

    meta = {"preprocess": ["html", "urls", "users", "hashtags"], "max_length": 64,
            "label_names": ["calm", "disaster"]}
    texts = ["13,000 people receive #wildfires evacuation orders http://t.co/x @user",
             "#earthquake &amp; #fire near #canada"]
    dirs = [shutil.copytree(d, tmp_path / d.name) for d in (model_dir, onnx_dir)]
    for d in dirs:
        (d / "distilprune.json").write_text(json.dumps(meta))
    expected = log_odds(SavedClassifier(dirs[0]).logits(texts))
    raw = log_odds(OnnxClassifier(onnx_dir).predict_logits(texts))
    assert np.abs(raw - expected).max() > 1e-5, "preprocessing does not change these texts"
    for d in dirs:
        with TestClient(create_app(d)) as http:
            assert http.get("/health").json()["labels"] == ["calm", "disaster"]
            predictions = http.post("/predict", json={"texts": texts}).json()["predictions"]
        served = log_odds(np.log([p["probabilities"] for p in predictions]))
        np.testing.assert_allclose(served, expected, atol=1e-6)


def test_batch_of_one_equals_batch_row(client):
    """Padding in a batch does not change a text's prediction."""
    batch = client.post("/predict", json={"texts": TEXTS}).json()["predictions"]
    single = client.post("/predict", json={"texts": TEXTS[1:2]}).json()["predictions"]
    np.testing.assert_allclose(single[0]["probabilities"], batch[1]["probabilities"], atol=1e-5)


@pytest.mark.parametrize(("kwargs", "status", "message"), [
    ({"json": {"texts": []}}, 422, "at least one text"),
    ({"json": {"texts": ["ok", 3]}}, 422, "texts[1] must be a string"),
    ({"json": {"texts": ["ok", None]}}, 422, "texts[1] must be a string"),
    ({"json": {"texts": "ok"}}, 422, "must be a list of strings"),
    ({"json": {}}, 422, "missing field 'texts'"),
    ({"json": {"text": ["ok"]}}, 422, "unexpected field 'text'"),
    ({"json": ["ok"]}, 422, "JSON object"),
    ({}, 422, "body must be"),
    ({"content": b'{"texts": ["ok"', "headers": {"content-type": "application/json"}},
     400, "not valid JSON"),
    ({"content": b'{"texts": ["ok"]}', "headers": {"content-type": "text/plain"}},
     415, "application/json"),
    ({"json": {"texts": ["x" * 51]}}, 422, "texts[0] is longer than 50 characters"),
    ({"json": {"texts": ["ok"] * 5}}, 422, "too many texts: at most 4"),
])
def test_validation_errors(client, kwargs, status, message):
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_limits_are_inclusive(client):
    assert client.post("/predict", json={"texts": ["ok"] * 4}).status_code == 200
    assert client.post("/predict", json={"texts": ["x" * 50]}).status_code == 200


def test_oversize_body_413(client):
    big = {"texts": ["x" * 40] * 60}  # > 2000 bytes (fails the size check before validation)
    response = client.post("/predict", json=big)
    assert response.status_code == 413 and "2000 bytes" in response.json()["detail"]


def test_declared_oversize_body_413_before_reading(client):
    """A Content-Length above the limit is refused without reading the body."""
    response = client.post("/predict", content=b'{"texts": ["ok"]}',
                           headers={"content-type": "application/json", "content-length": "5000"})
    assert response.status_code == 413


def test_oversize_streamed_body_413(client):
    """No Content-Length (chunked): the bytes actually received are counted."""
    chunks = iter([b'{"texts": ["', b"x" * 3000, b'"]}'])
    response = client.post("/predict", content=chunks,
                           headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413


def test_bad_content_length_400(client):
    response = client.post("/predict", content=b'{"texts": ["ok"]}',
                           headers={"content-type": "application/json", "content-length": "x"})
    assert response.status_code == 400 and "Content-Length" in response.json()["detail"]


def test_bad_model_paths_raise_user_error(tmp_path):
    with pytest.raises(UserError, match="model not found"):
        create_app(tmp_path / "missing")
    with pytest.raises(UserError, match="not a model directory"):
        create_app(tmp_path)
    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(b"not an onnx model")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="cannot load ONNX model"):
        create_app(garbage)
    with pytest.raises(UserError, match="positive"):
        create_app(tmp_path, max_batch=0)


def test_inference_off_the_event_loop_and_serialized(model_dir):
    """A slow prediction does not block /health; concurrent predictions never overlap."""
    app = create_app(model_dir, **LIMITS)
    state = {"active": 0, "peak": 0, "threads": set()}
    loop_thread = threading.get_ident()

    def slow_logits(texts):
        state["active"] += 1
        state["peak"] = max(state["peak"], state["active"])
        state["threads"].add(threading.get_ident())
        time.sleep(0.2)
        state["active"] -= 1
        return np.zeros((len(texts), 2), dtype=np.float32)

    app.state.model.logits = slow_logits

    async def scenario() -> tuple[float, float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            start = time.perf_counter()
            predicts = [asyncio.create_task(http.post("/predict", json={"texts": ["ok"]}))
                        for _ in range(3)]
            await asyncio.sleep(0.05)
            assert (await http.get("/health")).status_code == 200
            health_done = time.perf_counter() - start
            assert all(r.status_code == 200 for r in await asyncio.gather(*predicts))
            return health_done, time.perf_counter() - start

    health_done, all_done = asyncio.run(scenario())
    assert health_done < 0.15, "health waited for inference: event loop blocked"
    assert all_done >= 0.55, "predictions ran concurrently"
    assert state["peak"] == 1 and loop_thread not in state["threads"]


def test_serve_binds_loopback_by_default(model_dir, monkeypatch):
    import uvicorn

    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))
    serve(model_dir, max_batch=2)
    assert calls["host"] == "127.0.0.1" and calls["port"] == 8000
    with pytest.raises(UserError):
        serve(model_dir.parent / "missing")


def test_packaged_alias_is_resolved(model_dir, monkeypatch):
    from distilprune.models.registry import ALIASES, PackagedModel

    alias = PackagedModel("tiny-serve", (), "test alias", lambda _: model_dir)
    monkeypatch.setitem(ALIASES, "tiny-serve", alias)
    health = TestClient(create_app("tiny-serve")).get("/health").json()
    assert health["model"] == str(model_dir) and health["backend"] == "torch"
