"""Run an ONNX export with onnxruntime, without importing torch (small RSS, fast start-up).

An export directory holds ``model.onnx``, ``tokenizer.json`` (+ config), ``config.json`` and
``export.json``; the latter records how the original Hugging Face tokenizer pads and truncates so
that the plain :mod:`tokenizers` library reproduces its encodings exactly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from distilprune.errors import UserError, require

ONNX_FILENAME = "model.onnx"
METADATA_FILENAME = "export.json"
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".bin", ".pt", ".pth", ".onnx_data")

# Built-in tweet-like texts: parity checks and latency runs when the caller gives none.
SAMPLE_TEXTS = [
    "Forest fire near La Ronge Sask. Canada",
    "Our Deeds are the Reason of this #earthquake May ALLAH Forgive us all",
    "13,000 people receive #wildfires evacuation orders in California",
    "Just got sent this photo from Ruby #Alaska as smoke from #wildfires pours into a school",
    "I love fruits",
    "What a goooooooaaaaaal!!!!!!",
    "My car is so fast it is on fire lol",
    "this is ridiculous....",
    "London is cool ;)",
    "Flood warning issued for the river valley; residents told to move to higher ground now",
    "Three people died from the heat wave so far",
    "Crying out for more! Set me ablaze",
    "@user the new album is the bomb, absolutely explosive",
    "Breaking: train derailment near the station, emergency services at the scene",
    "Summer is lovely",
    "ok",
]


@dataclass
class EncoderSpec:
    """How to pad/truncate like the source Hugging Face tokenizer."""

    input_names: list[str] = field(default_factory=lambda: ["input_ids", "attention_mask"])
    pad_token: str = "[PAD]"
    pad_id: int = 0
    pad_type_id: int = 0
    padding_side: str = "right"
    truncation_side: str = "right"
    backend: str = "tokenizers"

    @classmethod
    def from_hf(cls, tokenizer: Any, input_names: list[str]) -> EncoderSpec:
        """Read the padding settings of a loaded Hugging Face tokenizer."""
        return cls(
            input_names=list(input_names),
            pad_token=str(tokenizer.pad_token),
            pad_id=int(tokenizer.pad_token_id),
            pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
            padding_side=tokenizer.padding_side,
            truncation_side=tokenizer.truncation_side,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model",
                   "sentencepiece.bpe.model")


def require_tokenizer_files(folder: str | Path) -> None:
    """Refuse a model folder without its tokenizer (transformers would build an empty one)."""
    require(any((Path(folder) / name).is_file() for name in TOKENIZER_FILES),
            f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): a model only "
            "runs with the tokenizer it was trained with; copy them from its base model")


class TextEncoder:
    """Tokenize texts into numpy int64 arrays with the :mod:`tokenizers` library (thread-safe)."""

    def __init__(self, tokenizer_dir: str | Path, spec: EncoderSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._state: tuple[int, int | None] | None = None
        self._hf = None
        require_tokenizer_files(tokenizer_dir)
        tokenizer_json = Path(tokenizer_dir) / "tokenizer.json"
        if spec.backend == "tokenizers" and tokenizer_json.is_file():
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(tokenizer_json))
        else:  # slow-only tokenizers: fall back to transformers (imports torch)
            from transformers import AutoTokenizer

            self._tok = None
            self._hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))

    def __call__(
        self, texts: Sequence[str], max_length: int, pad_to: int | None = None,
        pairs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Encode ``texts`` (with ``pairs``: text pairs): truncate to ``max_length``; pad to
        ``pad_to`` or the longest text."""
        texts = list(texts)
        if self._hf is not None:
            padding = "max_length" if pad_to else True
            enc = self._hf(texts, None if pairs is None else list(pairs), padding=padding, truncation=True,
                           max_length=pad_to or max_length, return_tensors="np")
            return {n: enc[n].astype(np.int64) for n in self.spec.input_names}
        inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
        with self._lock:
            self._configure(max_length, pad_to)
            encodings = self._tok.encode_batch(inputs)
        columns = {"input_ids": "ids", "token_type_ids": "type_ids",
                   "attention_mask": "attention_mask"}
        return {
            name: np.asarray([getattr(e, columns[name]) for e in encodings], dtype=np.int64)
            for name in self.spec.input_names
        }

    def _configure(self, max_length: int, pad_to: int | None) -> None:
        if self._state == (max_length, pad_to):
            return
        s = self.spec
        self._tok.enable_truncation(max_length, direction=s.truncation_side)
        self._tok.enable_padding(direction=s.padding_side, pad_id=s.pad_id,
                                 pad_type_id=s.pad_type_id, pad_token=s.pad_token, length=pad_to)
        self._state = (max_length, pad_to)


def read_export_metadata(export_dir: str | Path) -> dict[str, Any]:
    """The ``export.json`` of an export directory (empty dict when missing)."""
    path = Path(export_dir) / METADATA_FILENAME
    return json.loads(path.read_text()) if path.is_file() else {}


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The raw ``config.json`` of a model or export directory."""
    path = Path(model_dir) / "config.json"
    require(path.is_file(), f"{model_dir} has no config.json (not a model directory)")
    return json.loads(path.read_text())


def max_sequence_length(config: dict[str, Any]) -> int | None:
    """Longest input the model's position embeddings allow (None: unbounded, e.g. XLNet)."""
    limit = config.get("max_position_embeddings")
    if limit is None:
        return None
    if config.get("model_type") in ("roberta", "mpnet", "xlm-roberta", "camembert"):
        limit -= int(config.get("pad_token_id") or 0) + 1  # positions start after padding_idx
    return int(limit)


def weights_size(path: str | Path) -> int:
    """Bytes of weight files (*.safetensors, *.onnx, *.bin ...) in a directory or of one file."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.name.endswith(WEIGHT_SUFFIXES))


def session_options(threads: int | None = None, spin: bool = True) -> ort.SessionOptions:
    """CPU session options: all graph optimizations, ``threads`` intra-op threads (0: ORT picks);
    ``spin=False`` parks the worker threads as soon as a run ends instead of letting them busy-wait
    for the next one (a server sharing its CPUs with its event loop). They still spin within a run:
    parking them between the ops of one run doubled batch-1 latency (4.0 vs 2.1 ms, MiniLM int8)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads or 0)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def resolve_onnx(path: str | Path) -> tuple[Path, Path]:
    """``(model.onnx file, folder holding tokenizer/config)`` for an export dir or a .onnx file."""
    path = Path(path)
    onnx_file = path / ONNX_FILENAME if path.is_dir() else path
    require(onnx_file.is_file() and onnx_file.suffix == ".onnx",
            f"{path} is neither an ONNX export directory nor a .onnx file")
    return onnx_file, onnx_file.parent


class OnnxClassifier:
    """A text classifier served by onnxruntime from an export directory (or a .onnx file)."""

    def __init__(self, path: str | Path, threads: int | None = None,
                 max_length: int | None = None, spin: bool = True) -> None:
        self.onnx_path, self.folder = resolve_onnx(path)
        self.metadata = read_export_metadata(self.folder)
        self.config = read_config(self.folder)
        self.threads, self.spin = threads, spin
        self.session = self._session(threads)
        names = [i.name for i in self.session.get_inputs()]
        spec = EncoderSpec(**{**self.metadata.get("tokenizer", {}), "input_names": names})
        self.encoder = TextEncoder(self.folder, spec)
        self.max_length = int(max_length or self.metadata.get("max_length") or 128)
        self.id2label = self._id2label()

    def _session(self, threads: int | None) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(self.onnx_path), session_options(threads, self.spin),
                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"cannot load ONNX model {self.onnx_path}: {exc}") from exc

    def _id2label(self) -> dict[int, str]:
        """Label names from config.json, export.json, or the logits width (LABEL_i)."""
        if self.config.get("id2label"):
            return {int(k): v for k, v in self.config["id2label"].items()}
        if self.metadata.get("labels"):
            return dict(enumerate(self.metadata["labels"]))
        width = self.session.get_outputs()[0].shape[-1]
        return {i: f"LABEL_{i}" for i in range(width if isinstance(width, int) else 2)}

    def set_threads(self, threads: int | None) -> None:
        """Recreate the session with ``threads`` intra-op threads."""
        if threads != self.threads:
            self.session, self.threads = self._session(threads), threads

    def encode(self, texts: Sequence[str], pad_to: int | None = None,
               pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Tokenize like the source tokenizer (dynamic padding unless ``pad_to`` is given)."""
        return self.encoder(texts, pad_to or self.max_length, pad_to, pairs)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits for already-encoded inputs."""
        return self.session.run(None, inputs)[0]

    def predict_logits(self, texts: Sequence[str], batch_size: int = 32,
                       pairs: Sequence[str] | None = None) -> np.ndarray:
        """Logits ``(len(texts), num_labels)`` computed in batches (text pairs with ``pairs``)."""
        texts = list(texts)
        require(batch_size > 0, "batch size must be positive")
        parts = [self.run(self.encode(texts[i:i + batch_size], None,
                                      None if pairs is None else pairs[i:i + batch_size]))
                 for i in range(0, len(texts), batch_size)]
        if not parts:
            return np.zeros((0, len(self.id2label)), dtype=np.float32)
        return np.concatenate(parts, axis=0)

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[int]:
        """Predicted class ids."""
        return self.predict_logits(texts, batch_size).argmax(axis=-1).tolist()
