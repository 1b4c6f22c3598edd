"""Fault injection: kill -9 / SIGTERM at random moments of checkpointed runs, then ``--resume``;
concurrent runs on one ``--out``. Writes ``results/faults.{json,md}``.

Per interrupted run: the resumed run must succeed, end with the uninterrupted run's weights bit for
bit, and leave nothing beside its output (``.NAME.tmp-*``, ``.NAME.old-*``, ``.NAME.lock``, the
checkpoint). A SIGTERM'd run must also clean up after itself at once (its checkpoint stays). Per
concurrent trial: exactly one of K runs succeeds, the others fail at start with one line.

    python benchmarks/faults.py --n 20 --k 4
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import markdown_table, write_results

LEFTOVER = re.compile(r"^\..+\.(tmp|old|probe)-\d+|^\..+\.lock$|\.checkpoint$")
TEXTS = ["forest fire near the town", "people evacuated after the earthquake", "what a lovely day",
         "the summer is great", "flood waters rising fast", "i love this movie", "storm damage everywhere",
         "nice coffee this morning"]


@dataclass
class Tally:
    """Counts of one scenario (command x signal)."""

    name: str
    runs: int = 0
    killed: int = 0
    finished_before_signal: int = 0
    failures: int = 0
    mismatches: int = 0
    leftovers: int = 0
    notes: list[str] = field(default_factory=list)


def cli(args: list[Any], **kwargs: Any) -> subprocess.Popen:
    """Start ``distilprune ARGS`` in a fresh process (one thread: bit-exact runs)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "distilprune.cli", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=600)
    return proc.returncode, err


def run_ok(args: list[Any]) -> float:
    start = time.perf_counter()
    code, err = finish(cli(args))
    if code != 0:
        raise SystemExit(f"setup run failed ({code}): {' '.join(map(str, args))}\n{err[-2000:]}")
    return time.perf_counter() - start


def import_seconds() -> float:
    """How long a fresh process takes to import the training code (no signal is worth sending earlier)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import distilprune.jobs.finetune, distilprune.jobs.distill"],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def weights_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if LEFTOVER.search(p.name))


def setup(root: Path, steps: int) -> dict[str, list[Any]]:
    """Tiny model, CSV and fitted MLM teacher; the two checkpointed commands (without ``--out``)."""
    from distilprune.models.tiny import build_tiny_model

    data = root / "train.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "target"])
        for i in range(64):
            writer.writerow([i, f"{TEXTS[i % 8]} {i}", int(i % 8 < 3 or i % 8 == 4 or i % 8 == 6)])
    model = build_tiny_model("bert", root / "model", TEXTS, num_layers=2)
    teacher = root / "mlm"
    run_ok(["fit-mlm-head", "--teacher", model, "--out", teacher, "--corpus", data, "--steps", "2",
            "--batch-size", "8", "--max-length", "32"])
    small = ["--batch-size", "4", "--max-length", "32", "--checkpoint-every", "2"]
    return {
        "finetune": ["finetune", "--model", model, "--data", data, "--max-steps", steps, "--seed", "3",
                     "--patience", "100", *small],
        "distill-mlm": ["distill-mlm", "--teacher", teacher, "--corpus", data, "--layers", "1",
                        "--steps", steps, "--prune", "unstructured", "--final-sparsity", "0.5", *small],
    }


def interrupt_trial(tally: Tally, command: list[Any], clean: Path, out: Path, signum: int,
                    delay: float) -> float:
    """Signal a run after ``delay`` seconds, resume it, compare with ``clean``; returns how long the
    last run that was not interrupted took (the machine's current pace)."""
    tally.runs += 1
    start = time.perf_counter()
    proc = cli([*command, "--out", out])
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signum)
    code, first_err = finish(proc)
    pace = time.perf_counter() - start
    if out.exists():  # renamed into place before the signal landed: complete, nothing to resume
        tally.finished_before_signal += 1
    else:
        tally.killed += 1
        expected = {-signal.SIGKILL} if signum == signal.SIGKILL else {128 + signum, -signum}
        if code not in expected:
            tally.failures += 1
            tally.notes.append(f"{out.name}: interrupted run exited {code}: {first_err.strip()[-300:]}")
        left = [n for n in leftovers(out.parent) if not n.endswith(".checkpoint")]
        if signum == signal.SIGTERM and code == 128 + signum and left:
            tally.leftovers += len(left)
            tally.notes.append(f"{out.name}: SIGTERM left {left}")
        start = time.perf_counter()
        code, err = finish(cli([*command, "--out", out, "--resume"]))
        pace = time.perf_counter() - start
        if code != 0:
            tally.failures += 1
            tally.notes.append(f"{out.name}: resume exited {code}: {err.strip()[-300:]}")
            return pace
    if leftover := leftovers(out.parent):
        tally.leftovers += len(leftover)
        tally.notes.append(f"{out.name}: left {leftover}")
    if not weights_equal(clean, out):
        tally.mismatches += 1
        tally.notes.append(f"{out.name}: weights differ from the uninterrupted run")
    return pace


def concurrent_trial(tally: Tally, command: list[Any], out: Path, k: int) -> None:
    """``k`` runs on one ``--out`` at once: exactly one succeeds, the others fail with one line."""
    tally.runs += k
    procs = [cli([*command, "--out", out]) for _ in range(k)]
    results = [finish(p) for p in procs]
    winners = [code for code, _err in results if code == 0]
    losers = [err for code, err in results if code != 0]
    good_losers = [e for e in losers if len(e.strip().splitlines()) == 1
                   and ("is writing" in e or "already exists" in e)]
    tally.failures += len(losers)
    if len(winners) != 1 or len(good_losers) != len(losers):
        tally.mismatches += 1
        tally.notes.append(f"{out.name}: {len(winners)} succeeded; loser messages: "
                           f"{[e.strip()[-200:] for e in losers]}")
    if leftover := leftovers(out.parent):
        tally.leftovers += len(leftover)
        tally.notes.append(f"{out.name}: left {leftover}")


def report(args: argparse.Namespace, tallies: list[Tally], startup: float,
           cleans: dict[str, tuple[Path, float]], seconds: float) -> str:
    """Write ``results/faults.{json,md}`` for the trials so far; returns the markdown."""
    rows = [{k: v for k, v in vars(t).items() if k != "notes"} for t in tallies]
    payload = {"args": vars(args), "import_seconds": round(startup, 1),
               "clean_seconds": {name: round(sec, 1) for name, (_dir, sec) in cleans.items()},
               "seconds": round(seconds, 1), "scenarios": rows,
               "notes": [n for t in tallies for n in t.notes]}
    columns = ["name", "runs", "killed", "finished_before_signal", "failures", "leftovers", "mismatches"]
    intro = (f"Up to {args.n} kill -9 and {args.n} SIGTERM (see `runs`) at random moments (seed {args.seed}) "
             f"of each checkpointed run ({args.steps} steps, `--checkpoint-every 2`), each followed by "
             f"`--resume` and compared bit for bit with an uninterrupted run; {args.concurrent_trials} x "
             f"{args.k} concurrent `finetune` runs on one `--out`. Targets: leftovers 0, mismatches 0 (for "
             "the concurrent row, failures = the runs refused at start, a mismatch = a trial where not "
             "exactly one run succeeded).")
    notes = "".join(f"- {n}\n" for n in payload["notes"])
    markdown = (f"# Fault injection (`benchmarks/faults.py`)\n\n{intro}\n\n{markdown_table(rows, columns)}"
                + (f"\nNotes:\n\n{notes}" if notes else "") + f"\nTotal time {payload['seconds']:.0f} s.\n")
    write_results("faults", payload, markdown)
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="interruptions per command and signal")
    parser.add_argument("--k", type=int, default=4, help="concurrent runs per trial")
    parser.add_argument("--concurrent-trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random signal times")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="start no new round after this long (the results say how many ran)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.time()
    deadline = started + 60 * args.budget_minutes if args.budget_minutes else float("inf")
    signals = (signal.SIGKILL, signal.SIGTERM)
    with tempfile.TemporaryDirectory(prefix="distilprune-faults-") as tmp:
        root = Path(tmp)
        commands = setup(root, args.steps)
        concurrent = Tally(f"finetune x{args.k} on one --out")
        for i in range(args.concurrent_trials):
            (root / f"concurrent-{i}").mkdir()
            concurrent_trial(concurrent, commands["finetune"], root / f"concurrent-{i}" / "out", args.k)
        print(concurrent, flush=True)
        startup = import_seconds()
        cleans = {name: (root / f"{name}-clean", run_ok([*command, "--out", root / f"{name}-clean"]))
                  for name, command in commands.items()}
        pace = {name: seconds for name, (_dir, seconds) in cleans.items()}
        tallies = {(name, s): Tally(f"{name} {signal.Signals(s).name}") for name in commands for s in signals}
        for i in range(args.n):  # round-robin, so a time budget cuts every scenario evenly
            if time.time() > deadline:
                break
            for (name, signum), tally in tallies.items():
                folder = root / f"{name}-{signum}-{i}"
                folder.mkdir()
                # a random moment of a whole run at the current pace (the load on the machine varies)
                delay = rng.uniform(0.5, 0.98) * pace[name]
                pace[name] = interrupt_trial(tally, commands[name], cleans[name][0], folder / "out", signum,
                                             delay)
            print(f"round {i + 1}/{args.n}:", *tallies.values(), sep="\n  ", flush=True)
            report(args, [*tallies.values(), concurrent], startup, cleans, time.time() - started)
    print(report(args, [*tallies.values(), concurrent], startup, cleans, time.time() - started))


if __name__ == "__main__":
    main()
