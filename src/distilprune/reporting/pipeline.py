"""The pipeline's model card: ``report.md`` plus a self-contained ``report.html``.

The report is built once as a list of blocks (heading, paragraph, list, table, code, image)
and rendered to both formats; the HTML has inline CSS and the PNGs embedded as data URIs.
Figures are copied next to the report (``figures/``) so the markdown links stay valid.
"""

from __future__ import annotations

import base64
import html
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from distilprune.config import to_dict
from distilprune.export.runtime import weights_size
from distilprune.io import atomic_file
from distilprune.reporting.benchmark import BASELINE_NAME
from distilprune.reporting.formatting import count, megabytes, num, pct

Block = tuple[str, Any]

FIGURES = (  # (stage, file, caption)
    ("teacher", "loss.png", "Teacher fine-tuning loss"),
    ("mlm_head", "loss.png", "MLM head fitting loss"),
    ("distill", "loss.png", "Pruned general distillation loss (Prune OFA)"),
    ("finetune", "loss.png", "Mask-locked fine-tuning loss"),
    ("qat", "loss.png", "Quantization-aware training loss"),
    ("teacher", "confusion_matrix.png", "Teacher confusion matrix (validation)"),
    ("final", "confusion_matrix.png", "Compressed student confusion matrix (validation)"),
    ("final", "pr_curve.png", "Compressed student precision-recall curve (validation)"),
    ("distill", "sparsity.png", "Sparsity per layer and tensor after pruned distillation"),
    ("benchmark", "benchmark.png", "Benchmark: accuracy vs latency (Pareto front)"),
)
ROLE_LABELS = {"teacher": "teacher", "student": "student, PyTorch", "compressed": "student, ONNX",
               "baseline": "baseline: TF-IDF + logistic regression"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.5}
h1,h2{border-bottom:1px solid #d0d7de;padding-bottom:.3em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.35em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfcfd}
code{background:#f6f8fa;padding:.1em .3em;border-radius:4px;font-size:.9em}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;border-radius:6px}
pre code{padding:0}
figure{margin:1.5em 0}
img{max-width:100%;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9em}
"""


def _summary(records: dict[str, dict], stage: str) -> dict[str, Any]:
    return (records.get(stage) or {}).get("summary") or {}


def final_stage(cfg: Any) -> str:
    """The stage holding the final PyTorch student."""
    return "qat" if cfg.qat.enabled else "finetune"


# ----------------------------------------------------------------------------- sections
def _compression_phrase(cfg: Any, final: dict[str, Any]) -> str:
    prune = cfg.distill.prune
    if prune is not None and prune.method == "structured":
        return (f"with **{prune.heads:.0%}** of its attention heads and **{prune.neurons:.0%}** of its "
                "FFN neurons removed")
    return f"with **{pct(final.get('sparsity'))}** sparse transformer weights"


def _deployed_sentence(bench: list[dict[str, Any]]) -> str:
    """Speed-ups of the deployed (last) model at every batch size, and the baseline's accuracy."""
    last = bench[-1]
    ratios, size = last.get("ratios", {}), last.get("ratios", {}).get("size")
    speedups = [f"{num(ratios.get(f'speedup_b{b}'), '{:.1f}')}× at batch {b}"
                for b in last.get("latency", {})]
    text = (f" The deployed model `{last.get('name')}` runs faster than the teacher by "
            f"{' and '.join(speedups)}, and is {num(1 / size if size else None, '{:.1f}')}× smaller "
            "on disk.")
    baseline = next((m for m in bench if m.get("kind") == BASELINE_NAME), None)
    if baseline is not None and baseline.get("accuracy") is not None:
        text += (f" On the same {baseline.get('n', '?')} validation rows it scores "
                 f"{num(last.get('accuracy'))}; the TF-IDF + logistic-regression baseline "
                 f"{num(baseline.get('accuracy'))}.")
    return text


def _headline(cfg: Any, records: dict[str, dict]) -> list[Block]:
    teacher, final = _summary(records, "teacher"), _summary(records, final_stage(cfg))
    student = _summary(records, "student")
    acc_t, acc_s = teacher.get("metrics", {}).get("accuracy"), final.get("metrics", {}).get("accuracy")
    text = (f"Compressed **{cfg.teacher.model}** into a **{student.get('student_layers', '?')}-layer "
            f"student** {_compression_phrase(cfg, final)}"
            f"{' and int8 quantization' if cfg.qat.enabled or cfg.export.int8 else ''}. "
            f"Validation accuracy {num(acc_s)} (teacher {num(acc_t)}).")
    bench = _bench_models(records)
    if len(bench) > 1:
        text += _deployed_sentence(bench)
    return [("h1", f"Model card: {Path(cfg.out).name}"), ("p", text)]


def _data_blocks(cfg: Any, records: dict[str, dict]) -> list[Block]:
    data = _summary(records, "teacher").get("data", {})
    split = (f"validation file `{cfg.data.validation}`" if cfg.data.validation else
             f"stratified {cfg.data.val_fraction:.0%} split of the training file "
             f"(seed {cfg.data.split_seed})")
    items = [f"Training data: `{cfg.data.train}` ({data.get('n_train', '?')} rows used for training)",
             f"Validation: {split}, {data.get('n_val', '?')} rows",
             f"Task: {cfg.data.kind}; labels: {cfg.data.num_labels or 'from the data'}"
             + (f" classes; imbalance handling: {cfg.data.imbalance}"
                if cfg.data.kind == "classification" else ""),
             f"Training file SHA-256: `{str(data.get('train_sha256', '?'))[:16]}…`"]
    train_bal, val_bal = data.get("class_balance_train", {}), data.get("class_balance_val", {})
    rows = [[name, pct(share), pct(val_bal.get(name))] for name, share in train_bal.items()]
    return [("h2", "Data"), ("ul", items),
            ("table", (["Class", "Share (train)", "Share (validation)"], rows))]


def _preprocessing_blocks(cfg: Any, records: dict[str, dict]) -> list[Block]:
    steps = ", ".join(f"`{s}`" for s in cfg.data.preprocess) or "none (raw text)"
    corpus = cfg.distill.corpus
    distill = _summary(records, "distill")
    files = ", ".join(f"`{f}`" for f in corpus.files) or "the default corpus (tweets + SST-2)"
    items = [f"Text preprocessing: {steps}",
             f"Tokenizer: the teacher's (`{cfg.teacher.model}`); max length {cfg.data.max_length} tokens",
             f"Distillation corpus: {files}; {distill.get('corpus_texts', '?')} texts of at least "
             f"{corpus.min_words} words, max length {corpus.max_length}"]
    return [("h2", "Preprocessing"), ("ul", items)]


def _stage_result(stage: str, summary: dict[str, Any]) -> str:
    metrics = summary.get("metrics") or {}
    if metrics:
        return f"accuracy {num(metrics.get('accuracy'))}, F1 {num(metrics.get('f1'))}"
    if "masked_accuracy" in summary:
        return f"masked-token accuracy {num(summary['masked_accuracy'])}"
    if stage == "student":
        return f"{summary.get('student_layers')} layers, {count(summary.get('parameters'))} parameters"
    if stage == "export" and summary.get("onnx"):
        parity = summary["onnx"].get("parity", {})
        size = megabytes(summary["onnx"].get("size_bytes"))
        return f"ONNX {size} MB, agreement {num(parity.get('agreement'))}"
    if stage == "benchmark":
        return f"{len(summary.get('models', []))} models benchmarked"
    return ""


def _stages_blocks(records: dict[str, dict]) -> list[Block]:
    rows = [[stage, f"`{stage}/`", num(rec.get("seconds"), "{:.0f}"), rec.get("finished", "–"),
             _stage_result(stage, rec.get("summary") or {})]
            for stage, rec in records.items() if stage != "report"]
    return [("h2", "Pipeline"),
            ("table", (["Stage", "Output", "Seconds", "Finished", "Result"], rows))]


def _size(root: Path, stage: str) -> int | None:
    path = root / stage
    return weights_size(path) if path.is_dir() else None


def _model_row(label: str, summary: dict[str, Any], size: int | None, note: str = "") -> list[str]:
    metrics = summary.get("metrics") or {}
    return [label, num(metrics.get("accuracy")), num(metrics.get("f1")),
            num(metrics.get("f1_macro")), pct(summary.get("sparsity")),
            count(summary.get("parameters")), count(summary.get("nonzero_parameters")),
            megabytes(size), note]


def _accuracy_blocks(cfg: Any, records: dict[str, dict]) -> list[Block]:
    root = Path(cfg.out)
    distill = _summary(records, "distill")
    rows = [_model_row("teacher (fine-tuned)", _summary(records, "teacher"), _size(root, "teacher")),
            _model_row("student after pruned distillation", distill, _size(root, "distill"),
                       f"masked-token accuracy {num(distill.get('masked_accuracy'))} "
                       f"(teacher {num(distill.get('teacher_masked_accuracy'))})"),
            _model_row("student, mask-locked fine-tune", _summary(records, "finetune"),
                       _size(root, "finetune"))]
    if cfg.qat.enabled:
        rows.append(_model_row("student after QAT", _summary(records, "qat"), _size(root, "qat")))
    export, sparsity = _summary(records, "export"), _summary(records, final_stage(cfg)).get("sparsity")
    for label, bench in zip(_roles(records), _bench_models(records), strict=False):
        kind = bench.get("kind", "")
        if kind.startswith("onnx") or kind == BASELINE_NAME:
            rows.append([label, num(bench.get("accuracy")),
                         num(bench.get("f1")), "–", pct(sparsity) if kind != BASELINE_NAME else "–",
                         count(bench.get("params")), "–", megabytes(bench.get("size_bytes")),
                         f"benchmark subset, n={bench.get('n', '?')}"])
    if export.get("compact"):
        compact = export["compact"]
        rows.append([f"student, compact storage (`{compact.get('path')}`)", "–", "–", "–", "–", "–", "–",
                     megabytes(compact.get("compact_bytes")),
                     f"{num(compact.get('ratio'), '{:.1f}')}× smaller than dense fp32; "
                     f"{pct(compact.get('sparsity'))} zeros over all weights"])
    head = ["Model", "Accuracy", "F1", "F1 macro", "Sparsity", "Params", "Non-zero", "Size MB", "Note"]
    return [("h2", "Accuracy, sparsity and size by stage"),
            ("p", "Accuracy and F1 on the validation split (F1 of the positive class for binary "
                  "tasks). Sparsity is over the prunable transformer weights. Size is the weight "
                  "files on disk."),
            ("table", (head, rows))]


def _sparsity_blocks(cfg: Any, records: dict[str, dict], figures: dict[str, Path]) -> list[Block]:
    prune = cfg.distill.prune
    final = _summary(records, final_stage(cfg))
    if prune is None:
        target = "no pruning configured (dense student)"
    elif prune.method == "structured":
        target = (f"{prune.heads:.0%} of the attention heads and {prune.neurons:.0%} of the FFN "
                  f"neurons pruned on the cubic schedule (reached at {prune.end_fraction:.0%} of the "
                  "distillation steps), then removed from the weight matrices")
    else:
        pattern = f"1×{prune.block_size} blocks ({prune.block_norm} norm)" if prune.method == "block" \
            else "unstructured"
        target = (f"target {prune.final_sparsity:.0%} {pattern}, cubic schedule from "
                  f"{prune.initial_sparsity:.0%} reached at {prune.end_fraction:.0%} of the "
                  f"distillation steps, masks updated every {prune.frequency} steps")
    blocks: list[Block] = [
        ("h2", "Sparsity"),
        ("p", f"Prune Once for All: {target}. Final student: **{pct(final.get('sparsity'))}** of the "
              "prunable weights are zero; fine-tuning and QAT kept the mask locked."),
    ]
    if "distill-sparsity.png" in figures:
        blocks.append(("img", ("Sparsity heatmap", figures["distill-sparsity.png"])))
    return blocks


def _bench_models(records: dict[str, dict]) -> list[dict[str, Any]]:
    return list(_summary(records, "benchmark").get("models") or [])


def _roles(records: dict[str, dict]) -> list[str]:
    """Display names of the benchmarked models (by their pipeline role)."""
    models = _bench_models(records)
    roles = _summary(records, "benchmark").get("roles") or [m.get("name", "?") for m in models]
    return [f"{ROLE_LABELS.get(role, role)} (`{m.get('name')}`)"
            for role, m in zip(roles, models, strict=False)]


def _latency_blocks(records: dict[str, dict], figures: dict[str, Path]) -> list[Block]:
    models = _bench_models(records)
    if not models:
        return []
    batches = list(models[0].get("latency", {}))
    head = ["Model", "Kind", "Size MB", "Params"]
    head += [f"p50 / p95 b{b} (ms)" for b in batches]
    head += ["Throughput (seq/s)", "Peak RSS MB", "Accuracy", "F1"]
    head += [f"Speed-up b{b}" for b in batches] + ["Size ×"]
    rows = []
    for label, m in zip(_roles(records), models, strict=False):
        lat, ratios = m.get("latency", {}), m.get("ratios", {})
        row = [label, m.get("kind", "?"), megabytes(m.get("size_bytes")), count(m.get("params"))]
        row += [f"{num(lat[b].get('p50_ms'), '{:.1f}')} / {num(lat[b].get('p95_ms'), '{:.1f}')}"
                for b in batches]
        row += [num(m.get("throughput"), "{:.1f}"), num(m.get("peak_rss_mb"), "{:.0f}"),
                num(m.get("accuracy")), num(m.get("f1"))]
        row += [num(ratios.get(f"speedup_b{b}"), "{:.2f}×") for b in batches]
        row.append(num(ratios.get("size"), "{:.2f}×"))
        rows.append(row)
    first = models[0]
    note = (f"Sequence length {first.get('seq_len')}, {first.get('threads')} thread(s), "
            f"{first.get('repeats')} timed runs after {first.get('warmup')} warm-up runs; each model "
            f"in its own process; accuracy on the first {first.get('n', '?')} validation rows. "
            f"Ratios relative to the first row. Full results: `benchmark/benchmark.json`.")
    blocks: list[Block] = [("h2", "Latency (CPU benchmark)"), ("p", note), ("table", (head, rows))]
    if "benchmark-benchmark.png" in figures:
        blocks.append(("img", ("Accuracy vs latency", figures["benchmark-benchmark.png"])))
    return blocks


def _figure_blocks(figures: dict[str, Path]) -> list[Block]:
    shown = {"distill-sparsity.png", "benchmark-benchmark.png"}
    captions = {_figure_key(stage, name): caption for stage, name, caption in FIGURES}
    blocks: list[Block] = [("img", (captions[key], path)) for key, path in figures.items()
                           if key not in shown]
    return [("h2", "Figures"), *blocks] if blocks else []


def _recipe_blocks(cfg: Any) -> list[Block]:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    return [("h2", "Recipe"), ("p", "Run it again with `distilprune run RECIPE.yaml`:"),
            ("code", ("yaml", text))]


def _environment_blocks(cfg: Any) -> list[Block]:
    from distilprune.metadata import read_metadata

    env = read_metadata(Path(cfg.out) / final_stage(cfg)).get("environment") or {}
    if not env:
        return []
    return [("h2", "Environment"), ("ul", [f"{k}: `{v}`" for k, v in env.items()])]


def build_blocks(cfg: Any, records: dict[str, dict], figures: dict[str, Path]) -> list[Block]:
    """Every section of the model card, in order."""
    return [*_headline(cfg, records), *_data_blocks(cfg, records),
            *_preprocessing_blocks(cfg, records), *_stages_blocks(records),
            *_accuracy_blocks(cfg, records), *_sparsity_blocks(cfg, records, figures),
            *_latency_blocks(records, figures), *_figure_blocks(figures),
            *_recipe_blocks(cfg), *_environment_blocks(cfg)]


# ----------------------------------------------------------------------------- figures
def _figure_key(stage: str, name: str) -> str:
    return f"{stage}-{name}"


def collect_figures(cfg: Any, dest: Path) -> dict[str, Path]:
    """Copy the stages' PNGs into ``dest``; returns ``{key: copied path}`` in display order."""
    root, figures = Path(cfg.out), {}
    for stage, name, _ in FIGURES:
        source = root / (final_stage(cfg) if stage == "final" else stage) / name
        if source.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            target = dest / f"{stage}-{name}"
            shutil.copyfile(source, target)
            figures[_figure_key(stage, name)] = target
    return figures


# ----------------------------------------------------------------------------- rendering
def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block], base: Path) -> str:
    """Render blocks as GitHub-flavoured markdown (image paths relative to ``base``)."""
    parts = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"{'#' * int(kind[1])} {value}")
        elif kind == "p":
            parts.append(value)
        elif kind == "ul":
            parts.append("\n".join(f"- {item}" for item in value))
        elif kind == "table":
            head, rows = value
            lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
            parts.append("\n".join(lines))
        elif kind == "code":
            lang, text = value
            parts.append(f"```{lang}\n{text.rstrip()}\n```")
        elif kind == "img":
            caption, path = value
            parts.append(f"![{caption}]({path.relative_to(base).as_posix()})\n\n*{caption}*")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Escape ``text`` and render the inline markdown we emit: ``code`` and **bold**."""
    out = html.escape(str(text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_block(kind: str, value: Any) -> str:
    if kind in ("h1", "h2", "h3"):
        return f"<{kind}>{_inline(value)}</{kind}>"
    if kind == "p":
        return f"<p>{_inline(value)}</p>"
    if kind == "ul":
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in value) + "</ul>"
    if kind == "table":
        head, rows = value
        thead = "<tr>" + "".join(f"<th>{_inline(h)}</th>" for h in head) + "</tr>"
        body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead>{thead}</thead><tbody>{body}</tbody></table>"
    if kind == "code":
        lang, text = value
        return f'<pre><code class="language-{lang}">{html.escape(text)}</code></pre>'
    if kind == "img":
        caption, path = value
        return (f'<figure><img src="{_data_uri(path)}" alt="{html.escape(caption)}">'
                f"<figcaption>{_inline(caption)}</figcaption></figure>")
    raise ValueError(f"unknown block kind {kind!r}")


def to_html(blocks: list[Block], title: str) -> str:
    """A standalone HTML page (inline CSS, images embedded as base64 data URIs)."""
    body = "\n".join(_html_block(kind, value) for kind, value in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def write_report(out_dir: str | Path, cfg: Any, stage_summaries: dict[str, dict]) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` (+ ``figures/``) into ``out_dir``.

    ``cfg`` is the :class:`~distilprune.jobs.pipeline.PipelineConfig`; ``stage_summaries`` maps
    each stage to its ``stage.json`` record (``summary``, ``seconds``, ``finished``...).
    """
    out_dir = Path(out_dir)
    figures = collect_figures(cfg, out_dir / "figures")
    blocks = build_blocks(cfg, stage_summaries, figures)
    files = {"md": out_dir / "report.md", "html": out_dir / "report.html"}
    with atomic_file(files["md"]) as handle:
        handle.write(to_markdown(blocks, out_dir))
    with atomic_file(files["html"]) as handle:
        handle.write(to_html(blocks, f"Model card: {Path(cfg.out).name}"))
    return files
