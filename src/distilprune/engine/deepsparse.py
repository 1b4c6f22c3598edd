"""DeepSparse (Neural Magic) as an optional CPU inference engine for fp32 ONNX exports.

DeepSparse 1.8.0 is end-of-life, closed source and Python 3.11 only; its compiler wants fp32
ONNX with static sequence length and eager (not SDPA) attention, and it speeds up *unstructured
or block-sparse fp32* weights. It cannot live in the main venv: it pins ``onnx<1.15`` and, via
``sparsezoo``, ``numpy<2``. ``make deepsparse`` therefore installs it into ``.venv-deepsparse``.

* :func:`export_for_deepsparse` (main venv, needs torch) writes an export directory with the
  layout and ``export.json`` of :func:`distilprune.export.onnx.export_onnx`, plus a
  ``"deepsparse"`` field (static batch/seq). The batch axis stays symbolic unless ``batch_size``
  is given: DeepSparse fixes it when it compiles (a graph traced with a static batch bakes it
  into its Reshape nodes and only compiles for that batch size).
* :class:`DeepSparseRunner` implements the benchmark ``Runner`` protocol. When ``deepsparse``
  imports in this interpreter it compiles in-process; otherwise it drives a worker process of
  ``.venv-deepsparse`` (``python -m distilprune.engine.deepsparse serve``) over pipes with
  ``.npy`` frames, so the main venv can use it too (tests, parity). For latency numbers run the
  runner inside ``.venv-deepsparse`` (``python -m distilprune.engine.deepsparse bench``), so no
  pipe round trip is timed; :func:`deepsparse_python` gives that interpreter.

This module imports neither torch nor deepsparse at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from distilprune.errors import UserError, require
from distilprune.export.runtime import (
    METADATA_FILENAME,
    ONNX_FILENAME,
    SAMPLE_TEXTS,
    EncoderSpec,
    TextEncoder,
    read_export_metadata,
    resolve_onnx,
    weights_size,
)
from distilprune.formats import DEEPSPARSE_KEY, is_deepsparse_export

DEEPSPARSE_VERSION = "1.8.0"
VENV_NAME = ".venv-deepsparse"
PYTHON_ENV = "DISTILPRUNE_DEEPSPARSE_PYTHON"  # override the worker interpreter
DEFAULT_OPSET = 14
INSTALL_HINT = (f"run `make deepsparse` (installs deepsparse=={DEEPSPARSE_VERSION} into {VENV_NAME}; "
                "Python 3.11 only, it cannot share the main venv: it pins onnx<1.15 and numpy<2)")


# --------------------------------------------------------------------------- availability

def _import_deepsparse() -> Any:
    """``import deepsparse`` (a function so tests can make it fail); no analytics pings."""
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    import deepsparse

    return deepsparse


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return text.splitlines()[0][:300]


def _python_version() -> tuple[int, int]:
    return sys.version_info[0], sys.version_info[1]


def _in_process() -> tuple[Any | None, str]:
    """``(deepsparse module, description)`` or ``(None, why not)`` for this interpreter."""
    major, minor = _python_version()
    if (major, minor) != (3, 11):
        return None, f"this is Python {major}.{minor} (DeepSparse 1.8.0 needs 3.11)"
    try:
        module = _import_deepsparse()
    except ImportError as exc:
        return None, f"deepsparse is not importable ({_first_line(exc)})"
    except Exception as exc:  # a broken install raises anything (e.g. a missing shared library)
        return None, f"deepsparse fails to import ({_first_line(exc)})"
    return module, f"deepsparse {getattr(module, '__version__', '?')} in this interpreter"


def deepsparse_python() -> Path | None:
    """The interpreter of the DeepSparse venv: ``$DISTILPRUNE_DEEPSPARSE_PYTHON``, or
    ``.venv-deepsparse/bin/python`` in the source checkout or the working directory."""
    if os.environ.get(PYTHON_ENV):
        path = Path(os.environ[PYTHON_ENV]).expanduser()
        return path if path.is_file() else None
    checkout = Path(__file__).resolve().parents[3]  # src/distilprune/engine/deepsparse.py
    for root in (checkout, Path.cwd()):
        path = root / VENV_NAME / "bin" / "python"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=8)
def _probe_python(python: str) -> tuple[bool, str]:
    """Whether ``python`` imports deepsparse (cached per interpreter)."""
    code = "import deepsparse, sys; print(deepsparse.__version__, *sys.version_info[:2])"
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120,
                              env=_worker_env(None))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{python} does not run ({_first_line(exc)})"
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return False, f"{python} cannot import deepsparse ({lines[-1] if lines else proc.returncode})"
    version = proc.stdout.split()[0] if proc.stdout.split() else "?"
    return True, f"deepsparse {version} via {python}"


def deepsparse_available() -> tuple[bool, str]:
    """``(True, how)`` when DeepSparse runs in-process or through the DeepSparse venv,
    else ``(False, why not + how to install)``."""
    module, why = _in_process()
    if module is not None:
        return True, why
    python = deepsparse_python()
    if python is None:
        return False, f"{why} and no {VENV_NAME} was found; {INSTALL_HINT}"
    ok, how = _probe_python(str(python))
    return (True, how) if ok else (False, f"{why} and {how}; {INSTALL_HINT}")


def require_deepsparse() -> None:
    """Raise a one-line :class:`UserError` when DeepSparse cannot be used at all."""
    ok, message = deepsparse_available()
    if not ok:
        raise UserError(f"DeepSparse is not available: {message}")


# --------------------------------------------------------------------------- export

def _set_eager_attention(model: Any) -> None:
    """Eager attention: DeepSparse does not compile the SDPA export pattern."""
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        model.config._attn_implementation = "eager"  # older/unusual classes (e.g. XLNet)


def _static_dummy(tokenizer: Any, names: list[str], seq_len: int, batch: int) -> tuple[Any, ...]:
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(batch)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len,
                    return_tensors="pt")
    return tuple(enc[n] for n in names)


def _export_static(model: Any, tokenizer: Any, names: list[str], out_file: Path, seq_len: int,
                   batch_size: int | None, opset: int) -> str:
    """TorchScript export with a static sequence axis (and batch axis when ``batch_size``)."""
    import warnings

    import onnx
    import torch

    from distilprune.export.onnx import _LogitsOnly, _quiet_loggers

    wrapper = _LogitsOnly(model, names).eval()
    dummy = _static_dummy(tokenizer, names, seq_len, batch_size or 2)
    axes = None if batch_size else {n: {0: "batch"} for n in [*names, "logits"]}
    try:
        with warnings.catch_warnings(), _quiet_loggers(), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, dummy, str(out_file), input_names=names,
                              output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        onnx.checker.check_model(str(out_file))
    except Exception as exc:  # the exporter raises many types
        arch = getattr(model.config, "model_type", "?")
        raise UserError(f"cannot export this {arch} model for DeepSparse: {_first_line(exc)}") from exc
    finally:
        model.eval()
    return "torch.onnx.export (torchscript, static sequence length)"


def export_for_deepsparse(model_dir: str | Path, out_dir: str | Path, seq_len: int = 128,
                          batch_size: int | None = None, *, opset: int = DEFAULT_OPSET,
                          parity_texts: Sequence[str] | None = None, overwrite: bool = False,
                          check_engine: bool = True) -> dict[str, Any]:
    """Export a classifier directory to fp32 ONNX for DeepSparse (written atomically).

    Static sequence length ``seq_len`` and eager attention; a symbolic batch axis unless
    ``batch_size`` is given (then the graph only runs at that batch size; smaller batches are
    padded by :class:`DeepSparseRunner`). ``parity.json`` compares onnxruntime (and DeepSparse,
    when ``check_engine`` and it is available) with PyTorch; an fp32 mismatch raises
    :class:`UserError`. Returns the ``export.json`` metadata plus ``path`` and ``parity``.
    """
    from distilprune.export.onnx import (
        PARITY_FILENAME,
        _check_parity,
        check_export_target,
        compare_logits,
        export_metadata,
        input_names,
        load_for_export,
        torch_logits,
    )
    from distilprune.export.runtime import OnnxClassifier, max_sequence_length
    from distilprune.io import atomic_dir, write_json
    from distilprune.reporting.modelcard import copy_training_metadata, write_model_card

    out = Path(out_dir)
    check_export_target(out, overwrite, opset)
    require(batch_size is None or batch_size > 0, f"batch size must be positive, got {batch_size}")
    model, tokenizer = load_for_export(model_dir)
    _set_eager_attention(model)
    limit = max_sequence_length(model.config.to_dict())
    require(seq_len > 1 and (limit is None or seq_len <= limit),
            f"sequence length must be between 2 and {limit} for this model, got {seq_len}")
    names = input_names(model, tokenizer)
    texts = list(parity_texts or SAMPLE_TEXTS)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        onnx_file = tmp / ONNX_FILENAME
        exporter = _export_static(model, tokenizer, names, onnx_file, seq_len, batch_size, opset)
        meta = {
            **export_metadata(model, tokenizer, names, tmp, exporter=exporter, opset=opset,
                              max_length=seq_len, texts=texts, source=model_dir),
            "engine": "deepsparse",
            DEEPSPARSE_KEY: {"version": DEEPSPARSE_VERSION, "seq_len": seq_len,
                             "batch_size": batch_size, "static_shapes": True,
                             "attn_implementation": "eager"},
        }
        write_json(tmp / METADATA_FILENAME, meta)
        reference = torch_logits(model, tokenizer, texts, names, 32, seq_len)
        classifier = OnnxClassifier(tmp, threads=None)
        encoded = classifier.encode(texts, pad_to=seq_len)
        ort_logits = _run_batched(classifier.run, encoded, names, batch_size or 8, pad=bool(batch_size))
        parity = {**compare_logits(reference, ort_logits), "runtime": "onnxruntime"}
        del classifier
        if check_engine and deepsparse_available()[0]:
            with DeepSparseRunner(tmp, threads=1) as runner:  # 1 core: robust on a busy box
                parity[DEEPSPARSE_KEY] = compare_logits(reference, runner.predict_logits(texts, 8))
        write_json(tmp / PARITY_FILENAME, parity)
        _check_parity(parity)
        if DEEPSPARSE_KEY in parity:
            _check_parity(parity[DEEPSPARSE_KEY])
        copy_training_metadata(model_dir, tmp)
        write_model_card(tmp)
    return {**meta, "path": str(out), "parity": parity}


# --------------------------------------------------------------------------- engines

def _run_batched(run: Any, encoded: dict[str, np.ndarray], names: Sequence[str], size: int,
                 pad: bool) -> np.ndarray:
    """Run ``encoded`` in chunks of ``size`` rows; ``pad``: repeat the last row of a short chunk
    up to ``size`` rows and drop the extra logits (for graphs compiled at one batch size)."""
    rows = len(encoded[names[0]])
    parts = []
    for start in range(0, rows, size):
        chunk = {n: encoded[n][start:start + size] for n in names}
        real = len(chunk[names[0]])
        if pad and real < size:
            chunk = {n: np.concatenate([a, np.repeat(a[-1:], size - real, axis=0)])
                     for n, a in chunk.items()}
        parts.append(np.asarray(run(chunk))[:real])
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


class _LocalEngines:
    """DeepSparse engines of one ONNX file compiled in this process, one per batch size."""

    mode = "in-process"

    def __init__(self, module: Any, onnx_path: Path) -> None:
        self.module, self.onnx_path = module, str(onnx_path)
        self.engines: dict[int, Any] = {}
        self.compile_s: dict[int, float] = {}
        self.version = getattr(module, "__version__", "?")

    def compile(self, batch_size: int, num_cores: int | None) -> float:
        start = time.perf_counter()
        try:
            self.engines[batch_size] = self.module.Engine(
                model=self.onnx_path, batch_size=batch_size, num_cores=num_cores or None)
        except Exception as exc:  # the compiler raises RuntimeError("NM: error: ...")
            raise UserError(f"DeepSparse cannot compile {self.onnx_path} at batch size {batch_size}: "
                            f"{_first_line(exc)}") from exc
        self.compile_s[batch_size] = time.perf_counter() - start
        return self.compile_s[batch_size]

    def compiled(self) -> list[int]:
        return sorted(self.engines)

    def run(self, batch_size: int, arrays: list[np.ndarray]) -> np.ndarray:
        return self.engines[batch_size].run(arrays, val_inp=False)[0]

    def reset(self) -> None:
        self.engines.clear()

    def close(self) -> None:
        self.engines.clear()


def _worker_env(threads: int | None) -> dict[str, str]:
    """Environment of a DeepSparse-venv child: this checkout's distilprune first on the path."""
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding distilprune/
    paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore", "NM_DISABLE_ANALYTICS": "1"}
    env.pop("VIRTUAL_ENV", None)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _write_frame(stream: Any, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
    """One JSON header line (with the byte size of each array), then the arrays as ``.npy``
    blobs: a format both numpy 1 (DeepSparse venv) and numpy 2 read, unlike pickles."""
    blobs = []
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        blobs.append(buffer.getvalue())
    stream.write((json.dumps({**header, "sizes": [len(b) for b in blobs]}) + "\n").encode())
    for blob in blobs:
        stream.write(blob)
    stream.flush()


def _read_frame(stream: Any) -> tuple[dict[str, Any] | None, list[np.ndarray]]:
    line = stream.readline()
    if not line:
        return None, []
    header = json.loads(line)
    arrays = []
    for size in header["sizes"]:
        blob = stream.read(size)
        if len(blob) != size:
            return None, []
        arrays.append(np.load(io.BytesIO(blob), allow_pickle=False))
    return header, arrays


def _stop(proc: subprocess.Popen, stderr: Any) -> None:
    if proc.poll() is None:
        try:
            proc.stdin.close()
            proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - best effort at exit
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, stderr):
        with contextlib.suppress(Exception):
            stream.close()


class _WorkerEngines:
    """The same interface as :class:`_LocalEngines`, served by a ``.venv-deepsparse`` child."""

    mode = "worker"

    def __init__(self, python: Path, onnx_path: Path) -> None:
        self.python, self.onnx_path = python, onnx_path
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the finalizer
        cmd = [str(python), "-m", "distilprune.engine.deepsparse", "serve", str(onnx_path)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=_worker_env(None))
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.stderr)
        self.version = self._call("hello")[0]["version"]
        self.compile_s: dict[int, float] = {}

    def _call(self, op: str, arrays: Sequence[np.ndarray] = (), **fields: Any
              ) -> tuple[dict[str, Any], list[np.ndarray]]:
        try:
            _write_frame(self.proc.stdin, {"op": op, **fields}, arrays)
            header, out = _read_frame(self.proc.stdout)
        except (BrokenPipeError, OSError, ValueError):
            header, out = None, []
        if header is None:
            raise UserError(f"the DeepSparse worker ({self.python}) died: {self._last_stderr()}")
        if not header.get("ok"):
            raise UserError(header.get("error", "DeepSparse worker error"))
        return header, out

    def _last_stderr(self) -> str:
        self.proc.poll()
        self.stderr.seek(0)
        lines = [ln for ln in self.stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit code {self.proc.returncode}"

    def compile(self, batch_size: int, num_cores: int | None) -> float:
        header, _ = self._call("compile", batch_size=batch_size, num_cores=num_cores)
        self.compile_s[batch_size] = header["seconds"]
        return header["seconds"]

    def compiled(self) -> list[int]:
        return self._call("compiled")[0]["batch_sizes"]

    def run(self, batch_size: int, arrays: list[np.ndarray]) -> np.ndarray:
        return self._call("run", arrays, batch_size=batch_size)[1][0]

    def reset(self) -> None:
        self._call("reset")

    def close(self) -> None:
        self._finalizer()


def _serve(onnx_path: str) -> int:
    """Worker loop (in ``.venv-deepsparse``): compile/run requests on stdin, replies on stdout."""
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything DeepSparse prints goes to stderr, not into the protocol stream
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    module, why = _in_process()
    engines = _LocalEngines(module, Path(onnx_path)) if module is not None else None
    while True:
        header, arrays = _read_frame(requests)
        if header is None:
            return 0
        try:
            require(engines is not None, f"{sys.executable} cannot run it: {why}")
            op = header["op"]
            if op == "hello":
                _write_frame(protocol, {"ok": True, "version": engines.version})
            elif op == "compile":
                seconds = engines.compile(header["batch_size"], header.get("num_cores"))
                _write_frame(protocol, {"ok": True, "seconds": seconds})
            elif op == "compiled":
                _write_frame(protocol, {"ok": True, "batch_sizes": engines.compiled()})
            elif op == "run":
                _write_frame(protocol, {"ok": True}, [engines.run(header["batch_size"], arrays)])
            elif op == "reset":
                engines.reset()
                _write_frame(protocol, {"ok": True})
            else:
                raise UserError(f"unknown worker request {op!r}")
        except Exception as exc:  # report every failure to the parent, keep serving
            _write_frame(protocol, {"ok": False, "error": _first_line(exc)})


# --------------------------------------------------------------------------- runner

class DeepSparseRunner:
    """Benchmark ``Runner`` for a DeepSparse export directory (or its ``model.onnx``).

    Inputs are padded/truncated to the export's static sequence length. With a symbolic batch
    axis, :meth:`run` compiles one engine per batch size it sees (cached; a batch-1 request on a
    batch-8 engine costs as much as 8 rows) while :meth:`predict_logits` pads its last, short
    chunk to ``batch_size`` rows instead of compiling another engine. A static-batch export
    always runs at its batch size: smaller batches are padded, larger ones split.
    ``set_threads(n)`` recompiles the cached engines with ``num_cores=n``.
    """

    kind = "deepsparse"

    def __init__(self, path: str | Path, threads: int | None = None,
                 max_length: int | None = None) -> None:
        self.onnx_path, self.folder = resolve_onnx(path)
        self.path = Path(path)
        self.metadata = read_export_metadata(self.folder)
        settings = self.metadata.get(DEEPSPARSE_KEY)
        require(bool(settings), f"{self.folder} is not a DeepSparse export (no '{DEEPSPARSE_KEY}' in "
                                f"{METADATA_FILENAME}); export it with export_for_deepsparse")
        self.seq_len = int(settings["seq_len"])
        require(max_length in (None, self.seq_len),
                f"{self.folder} has a static sequence length of {self.seq_len}, not {max_length}")
        self.max_length = self.positions = self.seq_len
        self.static_batch = settings.get("batch_size")
        self.names = list(self.metadata["inputs"])
        spec = EncoderSpec(**{**self.metadata.get("tokenizer", {}), "input_names": self.names})
        self.encoder = TextEncoder(self.folder, spec)
        self.threads = threads
        self.engines = self._engines()

    def _engines(self) -> _LocalEngines | _WorkerEngines:
        module, why = _in_process()
        if module is not None:
            return _LocalEngines(module, self.onnx_path)
        python = deepsparse_python()
        if python is None:
            raise UserError(f"DeepSparse is not available: {why} and no {VENV_NAME} was found; "
                            f"{INSTALL_HINT}")
        try:  # no separate probe: the worker's first reply says whether deepsparse imports
            return _WorkerEngines(python, self.onnx_path)
        except UserError as exc:
            raise UserError(f"DeepSparse is not available: {why} and {exc}; {INSTALL_HINT}") from exc

    # -- Runner protocol
    def set_threads(self, threads: int | None) -> None:
        """Use ``threads`` cores (None: all); recompiles the engines compiled so far."""
        if threads == self.threads:
            return
        self.threads = threads
        sizes = self.engines.compiled()
        self.engines.reset()
        for size in sizes:
            self.engines.compile(size, threads)

    def encode(self, texts: Sequence[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Token arrays padded/truncated to the static sequence length."""
        require(pad_to in (None, self.seq_len),
                f"{self.folder} was exported for sequence length {self.seq_len}, cannot pad to {pad_to}")
        return self.encoder(texts, self.seq_len, self.seq_len)

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Logits of encoded inputs (rows of any count)."""
        arrays = [np.asarray(batch[n], dtype=np.int64) for n in self.names]
        rows, width = arrays[0].shape
        require(width == self.seq_len,
                f"inputs have {width} tokens; this DeepSparse export takes exactly {self.seq_len}")
        size = self.static_batch or rows
        return self._run_rows(dict(zip(self.names, arrays, strict=True)), size)

    def predict_logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits ``(len(texts), num_labels)``; one engine of ``batch_size`` rows (short chunks padded)."""
        require(batch_size > 0, "batch size must be positive")
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.metadata.get("labels") or [0, 1])), dtype=np.float32)
        size = self.static_batch or min(batch_size, len(texts))
        return self._run_rows(self.encode(texts), size)

    def _run_rows(self, encoded: dict[str, np.ndarray], size: int) -> np.ndarray:
        if size not in self.engines.compile_s:
            self.engines.compile(size, self.threads)

        def run(chunk: dict[str, np.ndarray]) -> np.ndarray:
            return self.engines.run(size, [chunk[n] for n in self.names])

        return _run_batched(run, encoded, self.names, size, pad=True)

    def info(self) -> dict[str, Any]:
        """Size on disk, weight elements and non-zero weight elements of the ONNX graph."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(self.onnx_path))
        weights = [numpy_helper.to_array(t) for t in model.graph.initializer]
        floats = [w for w in weights if w.dtype.kind == "f"]
        return {"size_bytes": weights_size(self.onnx_path),
                "params": int(sum(w.size for w in weights)),
                "nonzero_params": int(sum(np.count_nonzero(w) for w in floats)
                                      + sum(w.size for w in weights if w.dtype.kind != "f")),
                "engine": f"deepsparse {self.engines.version} ({self.engines.mode})",
                "seq_len": self.seq_len, "static_batch": self.static_batch,
                "compile_s": {str(k): v for k, v in sorted(self.engines.compile_s.items())}}

    # -- lifetime
    def close(self) -> None:
        """Free the engines (and stop the worker process)."""
        self.engines.close()

    def __enter__(self) -> DeepSparseRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- command line

def _bench(args: argparse.Namespace) -> int:
    """Latency of one export at each (threads, batch size), in this process (DeepSparse venv)."""
    from distilprune.engine.timing import measure, peak_rss_mb
    from distilprune.io import write_json

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    runner = DeepSparseRunner(args.export, threads=args.threads[0])
    results = {"export": args.export, "load_s": time.perf_counter() - start, "runs": []}
    for threads in args.threads:
        runner.set_threads(threads)
        for size in args.batch_sizes:  # compile outside the timed runs
            if size not in runner.engines.compile_s:
                runner.engines.compile(size, threads)
        result = measure(runner, list(SAMPLE_TEXTS), batch_sizes=args.batch_sizes,
                         seq_len=runner.seq_len, warmup=args.warmup, repeats=args.repeats,
                         threads=threads)
        result["compile_s"] = {str(k): v for k, v in runner.engines.compile_s.items()}
        result["load_avg"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        results["runs"].append(result)
    results.update(runner.info(), load_avg_start=load, peak_rss_mb=peak_rss_mb())
    write_json(args.json, results)
    runner.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m distilprune.engine.deepsparse {serve ONNX | bench EXPORT --json OUT}``."""
    parser = argparse.ArgumentParser(prog="python -m distilprune.engine.deepsparse")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="worker: compile/run requests on stdin (internal)")
    serve.add_argument("onnx")
    bench = sub.add_parser("bench", help="latency of a DeepSparse export, measured in-process")
    bench.add_argument("export")
    bench.add_argument("--json", required=True)
    bench.add_argument("--threads", type=int, nargs="+", default=[2])
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.onnx)
    try:
        return _bench(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


__all__ = [
    "DEEPSPARSE_KEY",
    "DeepSparseRunner",
    "deepsparse_available",
    "deepsparse_python",
    "export_for_deepsparse",
    "is_deepsparse_export",
    "require_deepsparse",
]

if __name__ == "__main__":
    sys.exit(main())
