"""Shared fixtures: tiny random models of every architecture, real data paths, thread limits."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

ARCHITECTURES = ("bert", "roberta", "distilbert", "xlnet", "mpnet")
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

SAMPLE_TEXTS = [
    "Forest fire near La Ronge Sask. Canada",
    "All residents asked to 'shelter in place' are being notified by officers.",
    "13,000 people receive #wildfires evacuation orders in California",
    "I love fruits and the summer is lovely",
    "What a wonderful day to go to the beach",
    "My car is so fast it is on fire lol",
    "Earthquake hits the city, buildings collapsed and people injured",
    "this movie was the bomb, totally explosive fun",
]


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """``make(arch, num_layers=4)`` -> directory of a saved tiny random classifier (cached)."""
    from distilprune.models.tiny import build_tiny_model

    cache: dict[tuple[str, int], Path] = {}

    def make(arch: str, num_layers: int = 4) -> Path:
        key = (arch, num_layers)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{arch}-{num_layers}")
            cache[key] = build_tiny_model(arch, out / "model", SAMPLE_TEXTS, num_layers=num_layers)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only data folder beside the repo (skips when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    """A small labelled CSV in the Kaggle disaster format."""
    import csv

    path = tmp_path / "tiny.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "keyword", "location", "text", "target"])
        for i in range(40):
            text = SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]
            label = int(any(w in text.lower() for w in ("fire", "earthquake", "evacuation", "shelter")))
            writer.writerow([i, "fire" if label else "", "", f"{text} #{i}", label])
    return path


def write(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``; returns ``path``."""
    path.write_text(text, encoding="utf-8")
    return path


def labelled_csv(path: Path, labels: list[str]) -> Path:
    """An ``id,text,target`` CSV with one row per label (texts from :data:`SAMPLE_TEXTS`)."""
    rows = "".join(f'{i},"{SAMPLE_TEXTS[i % 8]} {i}",{label}\n' for i, label in enumerate(labels))
    return write(path, "id,text,target\n" + rows)


# ----------------------------------------------------------------------------- bad-input fixtures
# Shared by test_errors.py (the list of every bad input) and test_trust.py (issue #19 behaviour).
@pytest.fixture(scope="session")
def model(tiny_model_factory) -> Path:
    """A tiny 2-layer BERT classifier with its tokenizer."""
    return tiny_model_factory("bert", 2)


@pytest.fixture
def work(tmp_path) -> Path:
    """An empty-but-for ``good.csv`` (20 rows, labels 0/1) working directory."""
    labelled_csv(tmp_path / "good.csv", [str(i % 2) for i in range(20)])
    return tmp_path


@pytest.fixture(scope="session")
def mlm_teacher(tmp_path_factory, model) -> Path:
    """A tiny masked-LM (its head saved with it, i.e. 'fitted')."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    out = tmp_path_factory.mktemp("mlm") / "teacher"
    AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(model)).save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def no_tokenizer(tmp_path_factory, model) -> Path:
    """The tiny model's config and weights only: no tokenizer files."""
    out = tmp_path_factory.mktemp("no-tok") / "model"
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, out / name)
    return out


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory, model) -> Path:
    """An ONNX export of the tiny model (with its tokenizer)."""
    from distilprune.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "onnx"
    export_onnx(model, out, max_length=16, parity_texts=SAMPLE_TEXTS[:2])
    return out


@pytest.fixture(scope="session")
def onnx_no_tokenizer(tmp_path_factory, onnx_export) -> Path:
    """:func:`onnx_export` without its tokenizer files."""
    out = tmp_path_factory.mktemp("onnx-no-tok") / "onnx"
    shutil.copytree(onnx_export, out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (out / name).unlink(missing_ok=True)
    return out


@pytest.fixture(scope="session")
def yes_no_model(tmp_path_factory, model) -> Path:
    """The tiny model as if fine-tuned on string labels ``no``/``yes``."""
    out = tmp_path_factory.mktemp("yes-no") / "model"
    shutil.copytree(model, out)
    write(out / "distilprune.json", json.dumps({"kind": "classifier", "label_names": ["no", "yes"]}))
    return out


@pytest.fixture(scope="session")
def truncated(tmp_path_factory, model) -> Path:
    """The tiny model with half of its ``model.safetensors`` cut off."""
    out = tmp_path_factory.mktemp("truncated") / "model"
    shutil.copytree(model, out)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return out


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_cli(monkeypatch, capfd, *args: str | Path) -> tuple[int, str, str]:
    """Run ``distilprune ARGS`` in-process; returns ``(exit code, stdout, stderr)``."""
    capfd.readouterr()
    monkeypatch.setattr(sys, "argv", ["distilprune", *map(str, args)])
    code = 0
    try:
        from distilprune import cli

        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capfd.readouterr()
    return code, ANSI.sub("", out), ANSI.sub("", err)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (``None`` for directories)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def assert_user_error(monkeypatch, capfd, root: Path, args: list, fragment: str) -> str:
    """The command fails with exit 2 and one ``error: ...`` line; ``root`` is left unchanged."""
    before = snapshot(root)
    code, _out, err = run_cli(monkeypatch, capfd, *args)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert fragment.lower() in lines[0].lower(), err
    assert snapshot(root) == before, "the failed command changed the file system"
    return lines[0]


PAUSED = """
import importlib, sys
module, name = sys.argv[1].rsplit(".", 1)
owner = importlib.import_module(module)
real = getattr(owner, name)

def paused(*args, **kwargs):
    print("paused", flush=True)
    sys.stdin.readline()
    return real(*args, **kwargs)

setattr(owner, name, paused)
sys.argv = ["distilprune", *sys.argv[2:]]
from distilprune import cli
cli.main()
"""


class PausedRun:
    """A ``distilprune`` process stopped inside ``MODULE.FUNCTION`` until :meth:`resume`."""

    def __init__(self, where: str, args: tuple[str | Path, ...], timeout: float) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-c", PAUSED, where, *map(str, args)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.timeout = timeout
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "paused":
            code, err = self.resume()
            raise AssertionError(f"the run never reached {where} (exit {code}): {err[-2000:]}")

    def resume(self) -> tuple[int, str]:
        """Let the run go on; returns its exit code and stderr."""
        try:
            _out, err = self.proc.communicate("\n", timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
        return self.proc.returncode, ANSI.sub("", err)


@contextlib.contextmanager
def paused_run(where: str, *args: str | Path, timeout: float = 300) -> Iterator[PausedRun]:
    """Run ``distilprune ARGS`` in another process, paused when it calls ``where`` (e.g.
    ``distilprune.jobs.finetune.train``): another run can be tried while this one holds its locks."""
    run = PausedRun(where, args, timeout)
    try:
        yield run
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.communicate()
