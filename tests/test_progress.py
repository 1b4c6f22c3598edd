"""Progress bars (#21) on teacher-logit caching, evaluate and predict over files: on a terminal only."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import SAMPLE_TEXTS, run_cli

from distilprune import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fake_predict(texts: list[str]) -> np.ndarray:
    return np.array([[len(t), -len(t)] for t in texts], dtype=np.float32)


@pytest.mark.parametrize(("stream", "shown"), [(Terminal(), True), (io.StringIO(), False)])
def test_bar_only_on_a_terminal(stream, shown):
    texts = [f"text {i}" * (i % 7) for i in range(600)]
    with progress.progress_bar(len(texts), "demo", file=stream) as bar:
        logits = progress.chunked(_fake_predict, texts, bar)
    np.testing.assert_array_equal(logits, _fake_predict(texts))
    assert ("demo: 100%" in stream.getvalue()) == shown
    assert shown or stream.getvalue() == ""


@pytest.fixture
def terminal(monkeypatch):
    """Pretend stderr is a terminal."""
    monkeypatch.setattr(progress, "_wanted", lambda _stream: True)


@pytest.mark.parametrize("kind", ["model", "onnx_export"])
def test_evaluate_and_predict_show_progress(monkeypatch, capfd, request, tmp_path, tiny_csv, terminal, kind):
    model = request.getfixturevalue(kind)
    code, _out, err = run_cli(monkeypatch, capfd, "evaluate", "--model", model, "--data", tiny_csv,
                              "--out", tmp_path / "eval")
    assert code == 0, err
    assert "evaluate: 100%" in err and "40/40" in err
    code, _out, err = run_cli(monkeypatch, capfd, "predict", "--model", model, "--data", tiny_csv,
                              "--out", tmp_path / "p.csv")
    assert code == 0, err
    assert "predict: 100%" in err and "40/40" in err


def test_no_progress_when_not_a_terminal(monkeypatch, capfd, tmp_path, tiny_csv, model):
    code, _out, err = run_cli(monkeypatch, capfd, "predict", "--model", model, "--data", tiny_csv,
                              "--out", tmp_path / "p.csv")
    assert code == 0, err
    assert "%|" not in err and "predict:" not in err


def test_teacher_logits_show_progress(monkeypatch, capfd, tmp_path, model, terminal):
    from distilprune.jobs import distill

    monkeypatch.setattr(distill, "cache_dir", lambda: tmp_path)
    logits = distill.teacher_logits(str(model), SAMPLE_TEXTS * 10, 16)
    assert logits.shape == (80, 2)
    assert "teacher logits: 100%" in capfd.readouterr().err
    distill.teacher_logits(str(model), SAMPLE_TEXTS * 10, 16)  # cached: nothing to show
    assert "teacher logits" not in capfd.readouterr().err
