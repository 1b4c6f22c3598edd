"""One summary table of the Prune OFA trial runs in ``results/trials/`` -> ``results/trials/README.md``.

Reads every trial's json (``prune.py`` / ``prune_seeds.py`` results written with
``--name trials/<stem>``): the question it asked (below, else the first sentence of its ``note``),
its headline figures (accuracy and retention of dense per cell) and the command that reproduces it.

    python benchmarks/trials.py
"""

from __future__ import annotations

import json
import re

from common import RESULTS, run_main

TRIALS = RESULTS / "trials"
WORK_ROOT = "/root/.cache/distilprune/bench-work-session1/"  # where the recorded runs kept their stages
QUESTIONS = {  # in reading order; a trial not listed here follows, asked by its note
    "prune_203": "First full matrix on 203 fine-tuning steps (lr 8e-5): is that budget enough?",
    "prune_x1": "Does a 609-step locked fine-tune lift 90 % OFA (dense still the 203-step one)?",
    "prune_x2": "90 % OFA vs GMP with the dense fine-tune also on 609 steps (lr 1e-4)?",
    "prune_x4": "90 % OFA vs GMP on 1,015 fine-tuning steps?",
    "prune_low": "OFA from 50 % to 90 % sparsity on `../prune.md`'s budget: how flat is it?",
    "prune_low_gmp": "GMP at 50 % on the same budget?",
    "prune_lr2e4": "Does a higher sparse fine-tuning rate (2e-4, dense stays 1e-4) help at 85/90 %?",
    "prune_gdcos": "Sparse pre-training on the every-layer hidden-state cosine alone (no soft targets)?",
    "prune_gd800": "Does a 5x longer sparse pre-training (800 steps, every-layer cosine) close the gap?",
    "prune_global": "One global magnitude threshold across all tensors instead of one per tensor?",
    "prune_nokd": "What is task distillation worth to the sparse fine-tunes (labels only)?",
    "prune_mpnetkd": "Task-distil from the 12L MPNet teacher (0.8555) instead of the dense MiniLM?",
    "prune_taskcos": "Add an every-layer hidden-state cosine to the dense fine-tune while fine-tuning?",
    "prune_control": "Control: dense on the sparse cells' recipe (1,015 distilled steps, no pruning)?",
    "prune_dense1015": "Dense on the labels for 1,015 steps: schedule length or task distillation?",
    "prune_denserecipe": "Sparse fine-tunes on the dense baseline's own recipe (609 steps, labels only)?",
    "prune_denserecipe_seeds": "Is the dense-recipe 50 % result seed noise (3 fine-tuning seeds)?",
    "prune_seed1": "`../prune.md`'s 85/90 % OFA cells with fine-tuning seed 1 (for `../prune_seeds.md`)",
    "prune_seed2": "The same with fine-tuning seed 2 (for `../prune_seeds.md`)",
    "prune_engine": "90 % OFA, 1x4 and unstructured, 609 steps (`benchmarks/work/prune609`, the sparse "
                    "engine's models): what do they keep?",
    "prune_engine80": "The same at 80 %",
    "tasks_broad": "Tasks (#20): does sparse pre-training on a corpus covering the tasks (SQuAD paragraphs, "
                   "QNLI, SST-2, WNUT-17, tweets; length 128, 800 steps, every-layer cosine) lift the "
                   "80 % retention on SQuAD and QNLI (was 18 % / 75 % after 150 steps on tweets)?",
    "tasks_activation": "Tasks (#20): does the activation-aware criterion (Wanda) at lr 1e-3, which "
                        "brings the pruned hidden states closest to the dense ones "
                        "(`../sparse_pretrain.md`), lift SQuAD at 80 % 1x4 (400 steps on the broad "
                        "corpus; was F1 11.42 after 800 magnitude steps), and SST-2 (was 0.8619)?",
    "tasks_long": "Tasks (#20): is the mask-locked fine-tune's budget what limits the sparse model? "
                  "SST-2 with 3x the steps (1,800) for dense and sparse80 alike, on the "
                  "`tasks_activation` pre-training (was 96.3 % at 600 steps)",
    "tasks_qnli_diagnosis": "Tasks (#20): why does the sparse model not learn QNLI (0.61 at 80 %, dense "
                            "0.82)? The tasks.md cell on the `tasks_activation` pre-training, the same "
                            "sparse weights with the mask free, and the dense weights through the sparse "
                            "cell's recipe (teacher, lock, 2x lr)",
    "tasks_qnli_unstructured": "Tasks (#20): are the 1x4 blocks what cost QNLI? The same 80 % pre-training "
                               "(activation criterion, lr 1e-3, 400 steps) with unstructured masks, then "
                               "the same locked, task-distilled QNLI fine-tune",
    "tasks_qnli_long": "Tasks (#20): does 3x the sparse pre-training close the QNLI gap? "
                       "`tasks_qnli_unstructured`'s 80 % unstructured pre-training at 1,200 steps instead "
                       "of 400 (was 0.6164, dense 0.8149), then the same locked QNLI fine-tune",
    "tasks_qnli_longer": "Tasks (#20): does the gain go on? The same pre-training at 2,400 steps "
                         "(0.6164 at 400, 0.6687 at 1,200), then the same locked QNLI fine-tune",
    "tasks_qnli_4000": "Tasks (#20): the fourth point of the curve: the same pre-training at 4,000 steps "
                       "(0.7552 at 2,400, the fit put 97 % at ~4,600), made by `tasks.py --pretrain-steps "
                       "4000`, then the same locked QNLI fine-tune",
    "tasks_qnli_scaling": "Tasks (#20): how many sparse pre-training steps would reach 97 % of dense on "
                          "QNLI? Every locked QNLI score above against its pre-training steps, one "
                          "log-linear fit per pruning setting",
    "tasks_u4000": "Tasks (#20): QNLI on the 4,000-step sparse model through `tasks.py` itself (its int8 "
                   "ONNX and sparse-engine rows beside the fp32 ones)",
    "tasks_block150": "Tasks (#20), the first table: the sparse models were `prune.py`'s 1x4-block Prune OFA "
                      "models (150 steps of general distillation on the tweet corpus)",
    "tasks_budget_2x": "Tasks (#20): does twice the table's fine-tuning steps close the gap on QNLI and "
                       "SQuAD too (840 / 1,200 x 16 steps for dense and the locked sparse80 alike)?",
    "tasks_wnut_budget": "Tasks (#20): is the fine-tuning budget what holds the sparse model back on "
                         "WNUT-17 (0.434 vs dense 0.562 after 500 steps)? Twice the steps for both",
    "tasks_wnut_lr": "Tasks (#20): WNUT-17 at 80 % flattens at F1 0.50-0.51 whatever the steps; is it the "
                     "locked fine-tune's learning rate? 1,000 steps at lr x 4 (4e-4) instead of x 2",
    "hidden_fidelity": "Tasks (#20): how closely do the sparse pre-trained models reproduce the dense "
                       "teacher's hidden states, layer by layer, beyond the cosine they were trained on "
                       "(held-out corpus texts)?",
    "tasks_wnut_mse": "Tasks (#20): does continuing sparse80's pre-training (1,200 steps, mask locked) with "
                      "TinyBERT's hidden-state MSE beside the cosine lift WNUT-17 (0.492 at 1,000 steps)?",
    "tasks_wnut_layers": "Tasks (#20): which layers' pruning costs WNUT-17 at 80 %? sparse80 with its last "
                         "layer dense again, and the dense model with only sparse80's last layer",
}
SHORT = {"(a) Prune OFA": "OFA", "(b) GMP on task": "GMP", "unstructured": "unstructured", "block": "1x4"}


def tasks_headline(payload: dict) -> str:
    """Per task of a ``tasks.py`` trial: its metric for dense and each sparse model (retention)."""
    lines = []
    for task, s in payload["summary"].items():
        cells = [f"{key} {s[key]:.4f} ({s[f'retention{key[-2:]}']:.1%})" for key in ("sparse80", "sparse90")
                 if s.get(key) is not None]
        lines.append(f"{task} {s['metric']}: dense {s['dense']:.4f}" + "".join(f", {c}" for c in cells))
    return "<br>".join(lines).replace("%", " %")


def headline(payload: dict) -> str:
    """Accuracy (retention of dense) per cell, one line per variant and method."""
    if payload.get("benchmark") == "tasks" or "summary" in payload:  # older tasks.py results: no key
        return tasks_headline(payload)
    if payload.get("benchmark") == "pretrain_scaling":  # pretrain_scaling.py: one line per fit
        return "<br>".join(f"{setting}: {f['per_doubling']:+.4f} per doubling, {payload['target']:.0%} "
                           f"of dense at ~{f['steps_for_target']:,} steps"
                           for setting, f in payload["fits"].items() if f).replace("%", " %")
    if payload.get("benchmark") == "hidden_fidelity":  # hidden_fidelity.py: one line per model
        return "<br>".join(f"{name}: median per-coordinate R² layers 1-{len(layers) - 1} "
                           f"{min(m['r2_median_coordinate'] for m in layers[:-1]):.2f}-"
                           f"{max(m['r2_median_coordinate'] for m in layers[:-1]):.2f}, last layer "
                           f"{layers[-1]['r2_median_coordinate']:.2f}"
                           for name, layers in payload["models"].items())
    if payload.get("benchmark") == "recipe":  # recipe_report.py: one line per fine-tuning stage
        return "<br>".join(f"{r['stage']} {r['score']:.4f}"
                           + (f" ({r['retention']:.1%})" if r["retention"] is not None else "")
                           for r in payload["rows"]).replace("%", " %")
    rows = payload["rows"]
    if payload["benchmark"] == "prune_seeds":
        return "<br>".join(f"{r['model']} {r['mean']:.4f} ± {r['std']:.4f}"
                           + (f" ({r['retention_of_means']:.1%})" if i else "")
                           for i, r in enumerate(rows)).replace("%", " %")
    lines = [f"dense {rows[0]['accuracy']:.4f}"]
    lines += [f"{r['variant']} {r['accuracy']:.4f} ({r['retention']:.1%})"
              for r in rows[1:] if r["method"] == "-"]
    groups: dict[str, list[str]] = {}
    for r in rows[1:]:
        if r["method"] != "-":
            key = f"{SHORT.get(r['variant'], r['variant'])} {SHORT.get(r['method'], r['method'])}"
            groups.setdefault(key, []).append(
                f"{r['target_sparsity']:.0%} {r['accuracy']:.4f} ({r['retention']:.1%})")
    lines += [f"{key}: {', '.join(cells)}" for key, cells in groups.items()]
    return "<br>".join(lines).replace("%", " %")


def command(stem: str, payload: dict) -> str:
    """The recorded command, writing to ``trials/<stem>`` (work root shortened to ``W/``)."""
    cmd = payload["command"].replace(WORK_ROOT, "W/")
    cmd, found = re.subn(r"--name \S+", f"--name trials/{stem}", cmd)
    return cmd if found else f"{cmd} --name trials/{stem}"


def question(stem: str, payload: dict) -> str:
    note = payload.get("note") or ""
    return QUESTIONS.get(stem) or note.split(". ")[0] or "-"


def table() -> str:
    found = {p.stem: json.loads(p.read_text()) for p in sorted(TRIALS.glob("*.json"))}
    order = [s for s in QUESTIONS if s in found] + [s for s in found if s not in QUESTIONS]
    lines = ["| trial | question | headline: accuracy or task metric (retention of dense) | command |",
             "|---|---|---|---|"]
    lines += [f"| [{s}]({s}.md) | {question(s, found[s])} | {headline(found[s])} | `{command(s, found[s])}` |"
              for s in order]
    return ("# Prune OFA trials\n\n"
            "Trial, variant and control runs of `benchmarks/prune.py` / `prune_seeds.py` (MiniLM-L6, "
            "disaster tweets validation, one seed unless named), of `benchmarks/tasks.py` (`tasks_*`: "
            "the four tasks' validation metric) and of `benchmarks/recipe_report.py` (a recipe's "
            "fine-tuning stages against its baseline stage). The canonical results stay one level up: "
            "[`../tasks.md`](../tasks.md) (one sparse pre-trained model, many tasks), "
            "[`../prune.md`](../prune.md) (Prune OFA vs downstream GMP) and "
            "[`../prune_seeds.md`](../prune_seeds.md) (3-seed spread). Each trial's json, md and PNG "
            "sit together here; the README's \"where the gap comes from\" section reads them.\n\n"
            + "\n".join(lines) + "\n\n"
            "Commands as recorded, written to `--name trials/<stem>`; `--report-only` reports the "
            "cells of `--work` trained in lanes by the same command without it (cells listed as not "
            f"run were left out on purpose). `W/` = `{WORK_ROOT.rstrip('/')}`, the work root of those "
            "runs (use fresh `--work` dirs; stages shared with `W/prune-full` were linked in). "
            "Generated by `python benchmarks/trials.py`.\n")


def main() -> None:
    out = TRIALS / "README.md"
    out.write_text(table())
    print(f"-> {out}")


if __name__ == "__main__":
    run_main(main)
