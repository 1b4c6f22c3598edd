"""HTTP server: health, predictions (PyTorch and ONNX backends), validation, limits, bad paths."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from distilprune.errors import UserError
from distilprune.evaluate import softmax
from distilprune.predictor import load_predictor
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


def test_predict_matches_predictor(any_client, model_dir):
    client, _, _ = any_client
    labels = client.get("/health").json()["labels"]
    response = client.post("/predict", json={"texts": TEXTS})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == len(TEXTS)
    expected = softmax(load_predictor(model_dir).logits(TEXTS))
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
    expected = log_odds(load_predictor(dirs[0]).logits(texts))
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
    (tmp_path / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    with pytest.raises(UserError, match="cannot load ONNX model"):
        create_app(garbage)
    with pytest.raises(UserError, match="positive"):
        create_app(tmp_path, max_batch=0)


@pytest.mark.parametrize("max_batch_size", [1, 32])
def test_inference_off_the_event_loop_and_serialized(model_dir, max_batch_size):
    """A slow prediction does not block /health; forward passes never overlap; with
    --max-batch-size 1 each request has its own pass, otherwise waiting requests share one."""
    app = create_app(model_dir, **LIMITS, max_batch_size=max_batch_size)
    state = {"active": 0, "peak": 0, "threads": set(), "calls": 0}
    loop_thread = threading.get_ident()

    def slow_logits(texts):
        state["calls"] += 1
        state["active"] += 1
        state["peak"] = max(state["peak"], state["active"])
        state["threads"].add(threading.get_ident())
        time.sleep(0.2)
        state["active"] -= 1
        return np.zeros((len(texts), 2), dtype=np.float32)

    replace_forward(app, slow_logits)

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
    if max_batch_size == 1:
        assert all_done >= 0.55 and state["calls"] == 3, "predictions ran concurrently"
    else:
        assert all_done < 0.55 and state["calls"] < 3, "queued requests were not batched"
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


# ----------------------------------------------------------------------------- batching, back-pressure
MIXED = ["ok", "fire!", "Forest fire near La Ronge Sask. Canada", "I love fruits",
         "Just happened a terrible car crash on the highway", "#earthquake", "so hot today",
         "Heard about the evacuation orders in California?"]


def replace_forward(app, logits) -> None:
    """Make ``logits(items)`` the served model's forward pass (its preprocessing still applies)."""
    app.state.model.run = lambda items, bar: logits(items)


def text_logits(texts) -> np.ndarray:
    """A stand-in model whose answer identifies the text (the tiny model's barely differ)."""
    return np.array([[0.0, len(t) / 10 + zlib.crc32(t.encode()) % 97 / 1000] for t in texts])


class Blocked:
    """Replaces a served model: records each forward pass, which waits until ``release``."""

    def __init__(self, app, logits=text_logits) -> None:
        self.logits, self.calls, self.release = logits, [], threading.Event()
        replace_forward(app, self)

    def __call__(self, texts):
        self.calls.append(list(texts))
        assert self.release.wait(10), "never released"
        return self.logits(texts)


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def asgi_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def post(http, texts):
    return asyncio.create_task(http.post("/predict", json={"texts": texts}))


def test_length_groups_cover_every_text_in_passes_of_similar_length():
    from distilprune.serving.batcher import length_groups

    lengths = [60, 5, 61, 6, 5, 62, 7, 59, 6, 60]
    groups = length_groups(lengths, max_size=4, overhead=8)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(1 <= len(g) <= 4 for g in groups)
    assert all(max(lengths[i] for i in g) - min(lengths[i] for i in g) <= 3 for g in groups)
    one_pass = length_groups(lengths, max_size=32, overhead=10_000)
    assert one_pass == [sorted(range(10), key=lengths.__getitem__)]
    assert length_groups([], 4) == []


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_batching_returns_each_requests_own_answer(model_dir, onnx_dir, backend):
    """Concurrent clients, 1-3 texts of mixed lengths each: requests waiting for a busy model are
    coalesced into batches of at most --max-batch-size texts; each gets its own rows in order."""
    app = create_app(model_dir if backend == "torch" else onnx_dir, **LIMITS, max_batch_size=8)
    blocked = Blocked(app)
    bodies = [[MIXED[(3 * i + j) % len(MIXED)] for j in range(1 + i % 3)] for i in range(12)]

    async def scenario():
        async with asgi_client(app) as http:
            first = post(http, bodies[0])
            await until(lambda: blocked.calls)  # the model is busy with the first request
            rest = [post(http, body) for body in bodies[1:]]
            await until(lambda: app.state.batcher.depth == sum(map(len, bodies[1:])))
            blocked.release.set()
            return [await first, *await asyncio.gather(*rest)]

    for body, response in zip(bodies, asyncio.run(scenario()), strict=True):
        assert response.status_code == 200, response.text
        got = [p["probabilities"] for p in response.json()["predictions"]]
        np.testing.assert_allclose(got, softmax(text_logits(body)), rtol=0, atol=1e-9)
    batches = app.state.metrics.batch_size
    assert batches.sum == sum(map(len, bodies)) and 1 + 3 <= batches.count < len(bodies)
    assert max(map(len, blocked.calls)) <= 8


def test_lone_request_does_not_wait_for_a_batch(model_dir):
    app = create_app(model_dir, **LIMITS, max_wait_ms=3000)

    async def scenario() -> float:
        async with asgi_client(app) as http:
            start = time.perf_counter()
            assert (await http.post("/predict", json={"texts": ["ok"]})).status_code == 200
            return time.perf_counter() - start

    assert asyncio.run(scenario()) < 1.5


def test_queue_full_503_with_retry_after(model_dir):
    """--max-queue counts texts: a request that does not fit is refused at once (after reading it);
    once not even one text fits, before reading it. Then the queued requests are answered."""
    app = create_app(model_dir, **LIMITS, max_batch_size=1, max_queue=3)
    blocked = Blocked(app)

    async def scenario():
        async with asgi_client(app) as http:
            running = post(http, ["ok"])
            await until(lambda: blocked.calls)
            queued = [post(http, ["fire", "flood"])]
            await until(lambda: app.state.batcher.depth == 2)
            start = time.perf_counter()
            too_many = await http.post("/predict", json={"texts": ["two", "more"]})
            queued.append(post(http, ["fits"]))
            await until(lambda: app.state.batcher.depth == 3)
            full = await http.post("/predict", json={"texts": ["one more"]})
            unread = await http.post("/predict", json={"texts": []})  # refused before validation
            waited = time.perf_counter() - start
            blocked.release.set()
            return [too_many, full, unread], waited, await running, await asyncio.gather(*queued)

    refused, waited, running, queued = asyncio.run(scenario())
    for response in refused:
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 1 and "--max-queue" in response.json()["detail"]
    assert waited < 1.0 and running.status_code == 200
    assert [len(r.json()["predictions"]) for r in queued] == [2, 1]
    assert value(parse_prometheus(TestClient(app).get("/metrics").text), "distilprune_requests_total",
                 path="/predict", status="503") == 3


def test_request_timeout_504(model_dir):
    """Timed-out requests get 504; a queued one that timed out is never computed."""
    app = create_app(model_dir, **LIMITS, max_batch_size=1, request_timeout=0.3)
    blocked = Blocked(app)

    async def scenario():
        async with asgi_client(app) as http:
            start = time.perf_counter()
            answers = await asyncio.gather(post(http, ["ok"]), post(http, ["queued"]))
            waited = time.perf_counter() - start
            blocked.release.set()
            await until(lambda: app.state.batcher.depth == 0)
            return answers, waited, await http.post("/predict", json={"texts": ["later"]})

    (running, queued), waited, later = asyncio.run(scenario())
    assert running.status_code == 504 and queued.status_code == 504, (running.text, queued.text)
    assert "--request-timeout" in running.json()["detail"] and 0.25 < waited < 3
    assert later.status_code == 200
    assert [c for c in blocked.calls if c == ["queued"]] == []


def test_inference_error_answers_500(model_dir):
    app = create_app(model_dir, **LIMITS)

    def broken(texts):
        raise RuntimeError("kernel exploded\nsecond line")

    replace_forward(app, broken)
    response = TestClient(app).post("/predict", json={"texts": ["ok"]})
    assert response.status_code == 500 and response.json()["detail"] == "inference failed: kernel exploded"


# ----------------------------------------------------------------------------- metrics, access log
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def parse_prometheus(text: str) -> dict[str, dict]:
    """``{family: {"type", "help", "samples": [(name, labels, value)]}}`` of the Prometheus text
    format, checking what a scraper checks: declared families, sample names, numbers, histograms."""
    families: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            _, _, name, help_text = line.split(" ", 3)
            families[name] = {"help": help_text, "samples": []}
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in families and kind in ("counter", "gauge", "histogram"), line
            families[name]["type"], current = kind, name
        else:
            match = SAMPLE.match(line)
            assert match and current, f"not a sample line: {line!r}"
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
            name, value = match[1], float(match[3])
            suffixes = ("_bucket", "_sum", "_count") if families[current]["type"] == "histogram" else ("",)
            assert name in {current + s for s in suffixes}, f"{name} outside its family {current}"
            families[current]["samples"].append((name, labels, value))
    for name, family in families.items():
        if family["type"] == "histogram":
            buckets = [(float(lab["le"]), v) for n, lab, v in family["samples"] if n.endswith("_bucket")]
            count = next(v for n, _, v in family["samples"] if n == name + "_count")
            assert [b for b, _ in buckets] == sorted(b for b, _ in buckets) and buckets[-1][0] == float("inf")
            assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1][1] == count
    return families


def value(families: dict, family: str, sample: str | None = None, **labels) -> float:
    return next(v for n, lab, v in families[family]["samples"]
                if n == (sample or family) and all(lab.get(k) == x for k, x in labels.items()))


def test_metrics_in_prometheus_text_format(model_dir):
    client = TestClient(create_app(model_dir, **LIMITS))
    for texts in (["ok"], ["fire", "flood"], ["ok"] * 5):
        client.post("/predict", json={"texts": texts})
    client.get("/health")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = parse_prometheus(response.text)
    assert value(families, "distilprune_requests_total", path="/predict", status="200") == 2
    assert value(families, "distilprune_requests_total", path="/predict", status="422") == 1
    assert value(families, "distilprune_requests_total", path="/health", status="200") == 1
    assert families["distilprune_request_duration_seconds"]["type"] == "histogram"
    latency = "distilprune_request_duration_seconds"
    assert value(families, latency, latency + "_count") == 3
    assert value(families, "distilprune_batch_size", "distilprune_batch_size_sum") == 3
    assert value(families, "distilprune_batch_size", "distilprune_batch_size_bucket", le="1") == 1
    assert value(families, "distilprune_queue_depth") == 0
    assert value(families, "distilprune_model_load_seconds") > 0
    assert value(families, "distilprune_requests_in_flight") == 1  # this /metrics request


def test_metrics_parser_rejects_broken_text():
    with pytest.raises(AssertionError):
        parse_prometheus("# HELP x a\n# TYPE x counter\ny 1\n")
    with pytest.raises(AssertionError):
        parse_prometheus('# HELP h a\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\n'
                         "h_sum 1\nh_count 1\n")


@pytest.mark.parametrize("enabled", [True, False])
def test_access_log_one_json_line_per_request(model_dir, enabled):
    import logging

    from distilprune.serving.gate import ACCESS_LOGGER

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger(ACCESS_LOGGER).addHandler(handler)
    try:
        client = TestClient(create_app(model_dir, **LIMITS, access_log=enabled))
        client.post("/predict", json={"texts": ["ok", "fire"]})
        client.post("/predict", json={"texts": []})
    finally:
        logging.getLogger(ACCESS_LOGGER).removeHandler(handler)
    if not enabled:
        assert records == []
        return
    lines = [json.loads(r) for r in records]
    assert [(x["path"], x["status"], x["texts"]) for x in lines] == [("/predict", 200, 2),
                                                                      ("/predict", 422, None)]
    assert all(x["method"] == "POST" and x["ms"] > 0 and x["time"].endswith("+00:00") for x in lines)


# ----------------------------------------------------------------------------- API key (#21)
def test_api_key_401_without_200_with(model_dir):
    client = TestClient(create_app(model_dir, **LIMITS, api_key="s3cret"))
    body = {"texts": ["ok"]}
    missing = client.post("/predict", json=body)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert client.post("/predict", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/predict", json=body, headers={"X-API-Key": "s3cre"}).status_code == 401
    assert client.post("/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/predict", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/health").status_code == 200  # open: liveness probes carry no secrets


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False),
])
def test_non_loopback_host_needs_a_key_or_no_auth(host, loopback, monkeypatch):
    from distilprune.serve import resolve_api_key

    monkeypatch.delenv("DISTILPRUNE_API_KEY", raising=False)
    if loopback:
        assert resolve_api_key(host, None, False) is None
    else:
        with pytest.raises(UserError, match="not a loopback address.*--no-auth"):
            resolve_api_key(host, None, False)
    assert resolve_api_key(host, None, True) is None
    assert resolve_api_key(host, "k", False) == "k"
    monkeypatch.setenv("DISTILPRUNE_API_KEY", "from-env")
    assert resolve_api_key(host, None, False) == "from-env"
    with pytest.raises(UserError, match="exclude each other"):
        resolve_api_key(host, None, True)


def run_cli(monkeypatch, *args: str) -> None:
    from distilprune import cli

    monkeypatch.setattr(sys, "argv", ["distilprune", *args])
    cli.main()


def test_cli_refuses_public_host_without_key(model_dir, monkeypatch, capsys):
    import uvicorn

    monkeypatch.delenv("DISTILPRUNE_API_KEY", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served without a key"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, "serve", "--model", str(model_dir), "--host", "0.0.0.0")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "--no-auth" in err


def test_cli_api_key_from_environment(model_dir, monkeypatch):
    import uvicorn

    calls = {}
    monkeypatch.setenv("DISTILPRUNE_API_KEY", "env-key")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))
    run_cli(monkeypatch, "serve", "--model", str(model_dir), "--host", "0.0.0.0", "--max-queue", "7")
    assert calls["host"] == "0.0.0.0" and calls["app"].state.batcher.max_queue == 7
    client = TestClient(calls["app"])
    assert client.post("/predict", json={"texts": ["ok"]}).status_code == 401
    assert client.post("/predict", json={"texts": ["ok"]},
                       headers={"Authorization": "Bearer env-key"}).status_code == 200


# ----------------------------------------------------------------------------- graceful shutdown
SLOW_SERVER = """
import sys, time
import distilprune.serve as serve
from distilprune import cli

load, delay = serve.load_model, float(sys.argv[1])

def slow_load(*args, **kwargs):
    model = load(*args, **kwargs)
    run = model.run
    def slow_run(items, bar):
        time.sleep(delay)
        return run(items, bar)
    model.run = slow_run
    return model

serve.load_model = slow_load
sys.argv = ["distilprune", *sys.argv[2:]]
cli.main()
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_slow_server(model, seconds_per_pass: float, *options: str):
    """``(process, base URL)`` of ``distilprune serve`` whose forward passes sleep first."""
    import subprocess

    port = free_port()
    args = ["serve", "--model", str(model), "--port", str(port), "--max-batch-size", "1", *options]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(seconds_per_pass), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.1)
    proc.kill()
    pytest.fail("server did not start")


def send_concurrently(url: str, n: int) -> tuple[list, list[threading.Thread], list[bool]]:
    """Statuses (or error names), the client threads, and whether answers said Connection: close."""
    results: list = []
    closing: list[bool] = []

    def one(i: int) -> None:
        try:
            response = httpx.post(url + "/predict", json={"texts": [f"text {i}"]}, timeout=30)
            results.append(response.status_code)
            closing.append(response.headers.get("connection") == "close")
        except httpx.HTTPError as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return results, threads, closing


def queued_texts(url: str) -> float:
    return value(parse_prometheus(httpx.get(url + "/metrics").text), "distilprune_queue_depth")


def test_sigterm_drains_requests_in_flight_then_exits_0(onnx_dir):
    """SIGTERM: no new connections, every accepted request answered, exit code 0."""
    import signal

    proc, url = start_slow_server(onnx_dir, 0.4)
    try:
        results, threads, closing = send_concurrently(url, 4)
        deadline = time.monotonic() + 10
        while queued_texts(url) < 3:  # one request in the model, three queued
            assert time.monotonic() < deadline, "requests never queued"
            time.sleep(0.02)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # draining: the listening socket is closed
            httpx.get(url + "/health", timeout=2)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        proc.kill()
    for t in threads:
        t.join(10)
    assert proc.returncode == 0, err
    assert results == [200] * 4 and took < 10
    assert sum(closing) >= 3, "answers while draining must close their connection"
    assert '"unanswered": 0' in err


def test_shutdown_timeout_bounds_the_drain(onnx_dir):
    """Requests that cannot finish within --shutdown-timeout are cancelled; still exit 0."""
    import signal

    proc, url = start_slow_server(onnx_dir, 1.0, "--shutdown-timeout", "0.3")
    try:
        results, threads, _ = send_concurrently(url, 3)
        deadline = time.monotonic() + 10
        while queued_texts(url) < 2:
            assert time.monotonic() < deadline, "requests never queued"
            time.sleep(0.02)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        proc.kill()
    for t in threads:
        t.join(10)
    assert proc.returncode == 0, err
    assert took < 0.3 + 1.0 + 3.0, "the drain outlived its bound"  # bound + the pass running
    assert 200 not in results and len(results) == 3


def test_workers_serve_and_stop_on_sigterm(onnx_dir):
    """--workers 2: two processes on one socket, each loading the model; SIGTERM stops all, exit 0."""
    import signal
    import subprocess

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "distilprune.cli", "serve", "--model", str(onnx_dir),
                             "--port", str(port), "--workers", "2", "--api-key", "k"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url, headers = f"http://127.0.0.1:{port}", {"X-API-Key": "k"}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "workers did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        assert httpx.post(url + "/predict", json={"texts": ["ok"]}).status_code == 401
        answers = [httpx.post(url + "/predict", json={"texts": ["ok"]}, headers=headers) for _ in range(4)]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert all(a.status_code == 200 for a in answers) and proc.returncode == 0, err
    assert err.count("Application startup complete") == 2


def test_deepsparse_batches_padded_to_powers_of_two():
    """DeepSparse compiles an engine per batch size: the batcher's sizes map to a few of them."""
    from distilprune.predictor import _power_of_two_rows

    sizes = []

    def predict(texts, batch_size):
        sizes.append((len(texts), batch_size))
        return text_logits(texts)

    logits = _power_of_two_rows(predict)
    for n in (1, 2, 3, 5, 8, 9, 32):
        texts = MIXED[:n] if n <= len(MIXED) else (MIXED * 5)[:n]
        np.testing.assert_array_equal(logits(texts), text_logits(texts))
    assert sizes == [(1, 1), (2, 2), (4, 4), (8, 8), (8, 8), (16, 16), (32, 32)]
