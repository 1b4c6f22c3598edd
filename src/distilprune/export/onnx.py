"""Export Hugging Face sequence classifiers to ONNX (optionally int8) and check logits parity.

The output is a self-contained directory: ``model.onnx`` + tokenizer files + ``config.json`` +
``export.json`` (export settings) + ``parity.json`` (ONNX vs PyTorch logits on sample texts).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

from distilprune.errors import UserError, require
from distilprune.export.runtime import (
    METADATA_FILENAME,
    ONNX_FILENAME,
    SAMPLE_TEXTS,
    EncoderSpec,
    OnnxClassifier,
    TextEncoder,
    max_sequence_length,
    read_config,
    read_export_metadata,
    resolve_onnx,
    weights_size,
)
from distilprune.export.source import load_model_and_tokenizer
from distilprune.io import atomic_dir, write_json
from distilprune.models.loading import model_input_names
from distilprune.models.registry import resolve_model
from distilprune.reporting.modelcard import copy_training_metadata, write_model_card
from distilprune.task import OUTPUTS, task_of_module

PARITY_FILENAME = "parity.json"
FP32_TOLERANCE = 1e-3  # max |logit diff| (relative to max(1, |logit|)) an fp32 export may show
# qat-static vs the fake-quantized PyTorch model: the same arithmetic, but the fp32 ops between
# quantizers differ in the last bits (ORT kernels vs PyTorch), and an activation that lands on
# the other side of a rounding boundary moves by a whole int8 step. Measured on the QAT MiniLM of
# benchmarks/qat.py (500 tweets, max |logit| 2.5): mean |Δlogit| 0.003-0.004, heavy-tailed max
# 0.05-0.24 (0.05 with ORT's graph optimizations off), agreement 1.0. Limits, relative to
# max(1, max |logit|): a wrong scale or zero point shifts the mean by an order of magnitude.
QAT_STATIC_TOLERANCE = 0.2  # max |Δlogit|
QAT_STATIC_MEAN_TOLERANCE = 0.01  # mean |Δlogit|
QAT_STATIC_MIN_AGREEMENT = 0.99
QUANTIZATIONS = ("dynamic", "qat-static")  # int8 methods of export_onnx

DEFAULT_PARITY_TEXTS = SAMPLE_TEXTS
EXPORTERS = ("dynamo", "torchscript")  # tried in this order
ANSI = re.compile(r"\x1b\[[0-9;]*m")
log = logging.getLogger(__name__)


def load_for_export(model_dir: str | Path) -> tuple[torch.nn.Module, Any]:
    """Load ``(classifier in eval mode, tokenizer)``: plain, shrunk, compact or headless."""
    return load_model_and_tokenizer(model_dir)


def input_names(model: torch.nn.Module, tokenizer: Any) -> list[str]:
    """Tokenizer outputs the model's ``forward`` accepts (e.g. no token_type_ids for MPNet)."""
    accepted = model_input_names(model)
    names = [n for n in tokenizer.model_input_names if n in accepted]
    require("input_ids" in names, f"tokenizer outputs {tokenizer.model_input_names} lack input_ids")
    return names


class _LogitsOnly(torch.nn.Module):
    """Positional-input wrapper returning only the output tensors of the model's task (logits;
    QA: start and end logits) — what the exporter traces."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names
        self.task = task_of_module(model)
        self.outputs = OUTPUTS[self.task]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.names, inputs, strict=True)))
        values = tuple(getattr(out, name) for name in self.outputs)
        return values[0] if len(values) == 1 else values

    def output_axes(self) -> dict[str, dict[int, str]]:
        """Dynamic axes of the outputs: the batch, and the sequence for per-token outputs."""
        per_token = self.task != "classification"
        return {name: {0: "batch", 1: "sequence"} if per_token else {0: "batch"} for name in self.outputs}


def _dummy_inputs(tokenizer: Any, names: list[str], max_length: int) -> tuple[torch.Tensor, ...]:
    """Two texts of different lengths, so the traced graph sees real padding."""
    texts = [DEFAULT_PARITY_TEXTS[1], DEFAULT_PARITY_TEXTS[4]]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    return tuple(enc[n] for n in names)


def torch_to_onnx(model: torch.nn.Module, tokenizer: Any, names: list[str], out_file: Path,
                  max_length: int = 128, opset: int = 17) -> str:
    """Export with dynamic batch/sequence axes; returns the exporter used.

    The dynamo exporter (``dynamo=True``) is tried first; the deprecated TorchScript exporter is
    the fallback, with the reason logged in one line (on torch 2.13 XLNet takes it: dynamo
    cannot decompose its relative attention).
    """
    wrapper = _LogitsOnly(model, names).eval()
    dummy = _dummy_inputs(tokenizer, names, max_length)
    errors = []
    for exporter in EXPORTERS:
        try:
            _run_exporter(exporter, wrapper, dummy, names, out_file, opset)
            onnx.checker.check_model(str(out_file))
            return f"torch.onnx.export ({exporter})"
        except Exception as exc:  # exporters raise many types; report them all together
            errors.append(f"{exporter}: {_first_line(exc)}")
            out_file.unlink(missing_ok=True)
            if exporter != EXPORTERS[-1]:
                log.warning("ONNX %s export failed (%s); falling back to %s", exporter,
                            errors[-1].split(": ", 1)[1], EXPORTERS[-1])
        finally:
            model.eval()  # the exporters restore the wrapper's (train) mode recursively
    arch = getattr(model.config, "model_type", "?")
    raise UserError(f"cannot export this {arch} model to ONNX ({'; '.join(errors)})")


def _run_exporter(exporter: str, wrapper: _LogitsOnly, dummy: tuple[torch.Tensor, ...],
                  names: list[str], out_file: Path, opset: int) -> None:
    with warnings.catch_warnings(), _quiet_loggers(), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {n: {0: "batch", 1: "sequence"} for n in names} | wrapper.output_axes()
            torch.onnx.export(wrapper, dummy, str(out_file), input_names=names,
                              output_names=wrapper.outputs, dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        else:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
            shapes = (tuple({0: batch, 1: seq} for _ in names),)  # forward(*inputs)
            program = torch.onnx.export(wrapper, dummy, input_names=names,
                                        output_names=wrapper.outputs, dynamic_shapes=shapes,
                                        opset_version=opset, dynamo=True, verbose=False)
            program.save(str(out_file))


@contextlib.contextmanager
def _quiet_loggers():
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def quantize_int8(src: Path, dst: Path, *, per_channel: bool = True,
                  embeddings: bool = True) -> dict[str, Any]:
    """ONNX Runtime dynamic quantization: int8 MatMul weights (and embedding Gathers).

    Per-channel weights halve the logits error of per-tensor ones at no size cost; quantizing
    the embedding Gathers shrinks MiniLM-L6 from 59 to 23 MB with similar parity.
    """
    prepped = src.with_name(src.stem + "-prep.onnx")
    try:
        with warnings.catch_warnings(), _quiet_loggers():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
            ops = ["MatMul", "Gather"] if embeddings else ["MatMul"]
            quantize_dynamic(prepped, dst, op_types_to_quantize=ops, per_channel=per_channel,
                             weight_type=QuantType.QInt8)
    finally:
        prepped.unlink(missing_ok=True)
    return {"method": "onnxruntime.quantize_dynamic", "weight_type": "QInt8",
            "op_types": ops, "per_channel": per_channel}


def torch_logits(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], names: list[str],
                 batch_size: int = 32, max_length: int = 128) -> np.ndarray:
    """PyTorch reference logits with dynamic padding (as :class:`OnnxClassifier` does)."""
    parts = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            parts.append(model(**{n: enc[n] for n in names}).logits.float().numpy())
    return np.concatenate(parts, axis=0)


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Max/mean absolute logits difference and argmax agreement rate."""
    require(reference.shape == candidate.shape,
            f"logits shapes differ: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agree = reference.argmax(-1) == candidate.argmax(-1)
    return {
        "n_texts": int(reference.shape[0]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "agreement": float(agree.mean()),
        "max_abs_logit": float(np.abs(reference).max()),
    }


def _parity(model: torch.nn.Module, tokenizer: Any, classifier: OnnxClassifier,
            texts: Sequence[str], batch_size: int) -> dict[str, Any]:
    names = classifier.encoder.spec.input_names
    ref = torch_logits(model, tokenizer, texts, names, batch_size, classifier.max_length)
    return compare_logits(ref, classifier.predict_logits(texts, batch_size))


def parity_check(model_dir: str | Path, onnx_path: str | Path,
                 texts: Sequence[str] | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Compare ONNX and PyTorch logits on ``texts``; also written to ``parity.json``."""
    texts = list(texts or DEFAULT_PARITY_TEXTS)
    model, tokenizer = load_for_export(model_dir)
    classifier = OnnxClassifier(onnx_path)
    result = _parity(model, tokenizer, classifier, texts, batch_size)
    write_json(classifier.folder / PARITY_FILENAME, result)
    return result


def onnx_parity(reference: str | Path, candidate: str | Path, texts: Sequence[str],
                batch_size: int = 32) -> dict[str, Any]:
    """Compare a quantized ONNX export with its fp32 ONNX source; written to its ``parity.json``."""
    ref, cand = OnnxClassifier(reference), OnnxClassifier(candidate)
    result = compare_logits(ref.predict_logits(texts, batch_size), cand.predict_logits(texts, batch_size))
    result["reference"] = "fp32 ONNX"
    write_json(cand.folder / PARITY_FILENAME, result)
    return result


def static_quantize_export(fp32_export: str | Path, out: str | Path, calibration_texts: Sequence[str], *,
                           parity_texts: Sequence[str] | None = None, max_length: int = 128,
                           overwrite: bool = False) -> dict[str, Any]:
    """Static int8 copy of an fp32 ONNX export (activations calibrated on ``calibration_texts``).

    Written atomically; its ``parity.json`` compares it with the fp32 export on ``parity_texts``
    (default: the calibration texts). Returns that parity.
    """
    from distilprune.models.loading import load_tokenizer
    from distilprune.quantize import static_quantize_onnx

    fp32_export = Path(fp32_export)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        shutil.copytree(fp32_export, tmp, dirs_exist_ok=True)
        static_quantize_onnx(fp32_export / "model.onnx", tmp / "model.onnx", load_tokenizer(fp32_export),
                             calibration_texts, max_length=max_length)
        meta = read_export_metadata(tmp)
        write_json(tmp / METADATA_FILENAME, {**meta, "int8": True, "quantization": {
            "method": "onnxruntime.quantize_static", "calibration_texts": len(calibration_texts)}})
        parity = onnx_parity(fp32_export, tmp, parity_texts or calibration_texts)
        write_model_card(tmp)
        return parity


def _encoder_backend(tokenizer: Any, folder: Path, spec: EncoderSpec, texts: Sequence[str],
                     max_length: int) -> str:
    """``tokenizers`` when it reproduces the HF tokenizer exactly, else ``transformers``."""
    if not (folder / "tokenizer.json").is_file():
        return "transformers"
    encoder = TextEncoder(folder, spec)
    for pad_to in (None, max_length):
        padding = "max_length" if pad_to else True
        ref = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length,
                        return_tensors="np")
        ours = encoder(texts, max_length, pad_to)
        if any(not np.array_equal(ref[n], ours[n]) for n in spec.input_names):
            return "transformers"
    return "tokenizers"


def _check_parity(parity: dict[str, Any]) -> None:
    limit = FP32_TOLERANCE * max(1.0, parity["max_abs_logit"])
    if parity["max_abs_diff"] > limit or parity["agreement"] < 1.0:
        raise UserError(
            f"ONNX export does not match PyTorch: max |logit diff| {parity['max_abs_diff']:.2e}, "
            f"agreement {parity['agreement']:.3f} on {parity['n_texts']} texts"
        )


def _check_qat_parity(parity: dict[str, Any]) -> None:
    scale = max(1.0, parity["max_abs_logit"])
    if (parity["max_abs_diff"] > QAT_STATIC_TOLERANCE * scale
            or parity["mean_abs_diff"] > QAT_STATIC_MEAN_TOLERANCE * scale
            or parity["agreement"] < QAT_STATIC_MIN_AGREEMENT):
        raise UserError(
            f"static int8 ONNX does not match the fake-quantized PyTorch model: |logit diff| max "
            f"{parity['max_abs_diff']:.2e}, mean {parity['mean_abs_diff']:.2e}, agreement "
            f"{parity['agreement']:.3f} on {parity['n_texts']} texts")


def learned_qat_params(model_dir: str | Path) -> dict[str, dict]:
    """The learned int8 scales of a QAT model directory; a one-line error when it has none."""
    from distilprune.quantize import load_qat_params
    from distilprune.quantize.qat import QPARAMS_FILENAME

    params = load_qat_params(resolve_model(model_dir))
    require(params is not None, f"{model_dir} has no learned QAT scales ({QPARAMS_FILENAME}): "
            "qat-static needs a model trained with `finetune --qat`; use --int8 (dynamic) otherwise")
    return params


def export_onnx(
    model_dir: str | Path,
    out_path: str | Path,
    *,
    max_length: int = 128,
    opset: int = 17,
    int8: bool = False,
    parity_texts: Sequence[str] | None = None,
    overwrite: bool = False,
    per_channel: bool = True,
    quantize_embeddings: bool = True,
    quantization: str = "dynamic",
) -> dict[str, Any]:
    """Export ``model_dir`` to the directory ``out_path`` (written atomically) and check parity.

    ``int8`` applies ``quantization``: ``dynamic`` (ONNX Runtime dynamic quantization; parity
    only reported) or ``qat-static`` (implies ``int8``: static QDQ from a QAT model's learned
    scales, checked against the fake-quantized PyTorch model). An fp32 or qat-static export whose
    logits differ from its PyTorch reference raises :class:`UserError`.
    """
    require(quantization in QUANTIZATIONS,
            f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    out = Path(out_path)
    check_export_target(out, overwrite, opset)
    qparams = learned_qat_params(model_dir) if quantization == "qat-static" else None
    int8 = int8 or qparams is not None
    model, tokenizer = load_for_export(model_dir)
    limit = max_sequence_length(model.config.to_dict())
    require(max_length > 1 and (limit is None or max_length <= limit),
            f"max length must be between 2 and {limit} for this model, got {max_length}")
    names = input_names(model, tokenizer)
    inputs = list(parity_texts or DEFAULT_PARITY_TEXTS)
    texts = [t if isinstance(t, str) else t[0] for t in inputs]  # QA inputs: (question, context)
    task = task_of_module(model)
    require(task == "classification" or qparams is None,
            f"qat-static export supports classifiers, not {task}")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        meta = _write_export(model, tokenizer, names, tmp, max_length, opset, int8,
                             per_channel, quantize_embeddings, texts, model_dir, qparams)
        if task != "classification":
            from distilprune.task_runtime import onnx_forward

            parity = task_parity(model, tokenizer, names, onnx_forward(tmp / ONNX_FILENAME), inputs,
                                 max_length)
        else:
            reference = _reference(model, qparams, quantize_embeddings)
            parity = _parity(reference, tokenizer, OnnxClassifier(tmp, threads=None), texts, 32)
        if qparams is not None:
            rows = ", int8 word-embedding rows" if quantize_embeddings else ""
            parity["reference"] = f"fake-quantized PyTorch model (learned scales{rows})"
        write_json(tmp / PARITY_FILENAME, parity)
        if qparams is not None:
            _check_qat_parity(parity)
            meta["quantization"]["parity"] = parity
            write_json(tmp / METADATA_FILENAME, meta)
        elif not int8:
            _check_parity(parity)
        copy_training_metadata(model_dir, tmp)
        write_model_card(tmp)
    return {**meta, "path": str(out), "parity": parity}


def task_parity(model: torch.nn.Module, tokenizer: Any, names: list[str], candidate: tuple[Any, list[str]],
                inputs: Sequence[Any], max_length: int) -> dict[str, Any]:
    """A token-classification model's (on the words of ``inputs``) or a QA model's (``inputs``:
    ``(question, context)`` pairs, or texts read as questions about the texts after them) outputs
    against ``candidate``'s (a forward function and the inputs it takes: an ONNX export, a packed
    sparse model) through the same runner: per-token / per-window logits, argmax agreement."""
    from distilprune.task_runtime import make_runner, torch_forward

    task = task_of_module(model)
    labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    settings = {"max_length": max_length, "doc_stride": max(1, max_length // 4)}
    reference = make_runner(torch_forward(model, task)[0], tokenizer, names, task, settings, labels)
    compared = make_runner(candidate[0], tokenizer, candidate[1], task, settings, labels)
    if task == "token-classification":
        from distilprune.tasks.ner import split_words

        sentences = [split_words(t if isinstance(t, str) else t[0])[0] or ["."] for t in inputs]
        return compare_outputs(reference.logits(sentences), compared.logits(sentences), len(inputs))
    examples = qa_examples(inputs)
    _, ref_start, ref_end = reference.logits(examples)
    _, cand_start, cand_end = compared.logits(examples)
    return compare_outputs([*ref_start, *ref_end], [*cand_start, *cand_end], len(examples))


def qa_examples(inputs: Sequence[Any]) -> list[Any]:
    """QA examples of ``(question, context)`` pairs; a plain text asks about itself and the next
    three texts (so that parity texts alone give contexts of several sentences)."""
    from distilprune.tasks.qa import QAExample

    texts = [t if isinstance(t, str) else t[0] for t in inputs]
    pairs = [t if not isinstance(t, str) else (t, " ".join(texts[i:i + 4])) for i, t in enumerate(inputs)]
    return [QAExample(id=str(i), title="", question=q, context=c, answers=[])
            for i, (q, c) in enumerate(pairs)]


def compare_outputs(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                    n_texts: int) -> dict[str, Any]:
    """:func:`compare_logits` over per-text output arrays of varying length (rows: tokens of a
    token classifier, whole distributions of a QA model's start / end logits)."""
    require(len(reference) == len(candidate), f"{len(reference)} vs {len(candidate)} outputs")
    diffs, agree, largest = [], [], 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        require(ref.shape == cand.shape, f"output shapes differ: {ref.shape} vs {cand.shape}")
        diffs.append(np.abs(ref.astype(np.float64) - cand.astype(np.float64)).ravel())
        agree.append(np.atleast_1d(ref.argmax(-1) == cand.argmax(-1)))
        largest = max(largest, float(np.abs(ref).max(initial=0.0)))
    diff = np.concatenate(diffs) if diffs else np.zeros(1)
    return {"n_texts": n_texts, "max_abs_diff": float(diff.max(initial=0.0)),
            "mean_abs_diff": float(diff.mean()),
            "agreement": float(np.concatenate(agree).mean()) if agree else 1.0, "max_abs_logit": largest}


def _reference(model: torch.nn.Module, qparams: dict[str, dict] | None,
               embeddings: bool) -> torch.nn.Module:
    """What the export must reproduce: the model, or (qat-static) the model fake-quantized with
    its learned scales, its word embeddings on their int8 rows if ``embeddings``."""
    if qparams is None:
        return model
    from distilprune.quantize.qat import attach_input_quant, quantize_embedding_rows

    if embeddings:
        quantize_embedding_rows(model)
    return attach_input_quant(model, qparams).eval()


def _write_export(model: torch.nn.Module, tokenizer: Any, names: list[str], tmp: Path,
                  max_length: int, opset: int, int8: bool, per_channel: bool,
                  quantize_embeddings: bool, texts: list[str], source: str | Path,
                  qparams: dict[str, dict] | None = None) -> dict[str, Any]:
    from distilprune.quantize.qat import qat_static_onnx

    onnx_file = tmp / ONNX_FILENAME
    fp32_file = tmp / "model-fp32.onnx" if int8 else onnx_file
    exporter = torch_to_onnx(model, tokenizer, names, fp32_file, max_length, opset)
    quantization = None
    if int8:
        if qparams is not None:
            quantization = qat_static_onnx(fp32_file, onnx_file, model, qparams, quantize_embeddings)
        else:
            quantization = quantize_int8(fp32_file, onnx_file, per_channel=per_channel,
                                         embeddings=quantize_embeddings)
        quantization["fp32_size_bytes"] = fp32_file.stat().st_size
        fp32_file.unlink()
    meta = export_metadata(model, tokenizer, names, tmp, exporter=exporter, opset=opset,
                           max_length=max_length, texts=texts, source=source, int8=int8,
                           quantization=quantization)
    write_json(tmp / METADATA_FILENAME, meta)
    return meta


def check_export_target(out: Path, overwrite: bool, opset: int) -> None:
    """One-line errors for an output path that is a file name, exists, or an opset below 14."""
    require(out.suffix != ".onnx", f"--out must be a directory (got file name {out.name})")
    require(overwrite or not out.exists(),
            f"output directory {out} already exists (pass --overwrite to replace it)")
    require(opset >= 14, "ONNX opset must be at least 14")


def _write_label_names(folder: Path, source: str | Path) -> list[str]:
    """Write the label names into ``config.json``: the trained ones, else transformers' default
    ``LABEL_i`` (transformers 5 omits that map, so a reader without transformers would find none)."""
    from distilprune.metadata import read_metadata, trained_label_names

    config = read_config(folder)
    id2label = config.get("id2label") or {}
    names = trained_label_names(read_metadata(resolve_model(source)), id2label) or [
        f"LABEL_{i}" for i in range(len(id2label) or int(config.get("num_labels", 2)))]
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
    write_json(folder / "config.json", config)
    return names


def portable_tokenizer_class(folder: Path) -> None:
    """Name transformers 5's generic tokenizer class ``TokenizersBackend`` by its alias
    ``PreTrainedTokenizerFast`` in ``tokenizer_config.json``: transformers 4 (which Optimum's
    ``ORTModel`` needs) knows only the alias; transformers 5 loads both."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    if config.get("tokenizer_class") == "TokenizersBackend":
        write_json(path, {**config, "tokenizer_class": "PreTrainedTokenizerFast"})


def export_metadata(model: torch.nn.Module, tokenizer: Any, names: list[str], folder: Path, *,
                    exporter: str, opset: int, max_length: int, texts: Sequence[str],
                    source: str | Path, int8: bool = False, quantization: dict | None = None
                    ) -> dict[str, Any]:
    """Save tokenizer + config beside ``folder/model.onnx``; the ``export.json`` content."""
    tokenizer.save_pretrained(folder)
    portable_tokenizer_class(folder)
    model.config.save_pretrained(folder)
    labels = _write_label_names(folder, source)
    spec = EncoderSpec.from_hf(tokenizer, names)
    spec.backend = _encoder_backend(tokenizer, folder, spec, list(texts), max_length)
    return {
        "format": "onnx",
        "source": str(resolve_model(source)),
        "architecture": model.config.model_type,
        "exporter": exporter,
        "torch_version": torch.__version__,
        "opset": opset,
        "max_length": max_length,
        "inputs": names,
        "task": task_of_module(model),
        "outputs": OUTPUTS[task_of_module(model)],
        "labels": labels,
        "int8": int8,
        "quantization": quantization,
        "size_bytes": (folder / ONNX_FILENAME).stat().st_size,
        "source_size_bytes": weights_size(resolve_model(source)),
        "tokenizer": spec.to_dict(),
    }


__all__ = [
    "DEFAULT_PARITY_TEXTS",
    "QUANTIZATIONS",
    "OnnxClassifier",
    "compare_logits",
    "export_onnx",
    "parity_check",
    "quantize_int8",
    "resolve_onnx",
]
