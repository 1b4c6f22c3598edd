"""Fault injection: kill -9 / SIGTERM at random moments of checkpointed runs, then ``--resume``;
concurrent runs on one ``--out``. Writes ``results/faults.{json,md}``.

Per interrupted run: the resumed run must succeed, end with the uninterrupted run's weights bit for
bit, and leave nothing beside its output (``.NAME.tmp-*``, ``.NAME.old-*``, ``.NAME.lock``, the
checkpoint). A SIGTERM'd run must also clean up after itself at once (its checkpoint stays). A run
that finished before its signal landed is checked the same way (exit 0 after a signal was sent is a
failure: the run ignored it), and the kill point is drawn again (earlier), so every scenario gets
``--n`` runs really killed. Per concurrent trial: exactly one of K
runs succeeds, the others fail at start with one line (every other trial's ``--out`` is under
directories that do not exist yet); K ``distilprune run`` of one recipe: exactly one runs the stage,
the others fail at start (or, started after it finished, find it up to date).

    python benchmarks/faults.py --n 20 --k 4
"""

from __future__ import annotations

import argparse
import csv
import json
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

from common import run_main, write_results

from distilprune.reporting.formatting import markdown_table

LEFTOVER = re.compile(r"^\..+\.(tmp|old|probe)-\d+|^\..+\.lock$|\.checkpoint$")
ATTEMPTS = 4  # draws of a kill point per round and scenario (a run may finish before its signal)
TEXTS = ["forest fire near the town", "people evacuated after the earthquake", "what a lovely day",
         "the summer is great", "flood waters rising fast", "i love this movie", "storm damage everywhere",
         "nice coffee this morning"]


@dataclass
class Tally:
    """Counts of one scenario (command x signal)."""

    name: str
    runs: int = 0
    killed: int = 0
    rounds: int = 0
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
    """Wait for ``proc`` (no timeout: on the shared machine the whole job may be paused with SIGSTOP,
    and a deadline would expire during the pause)."""
    _out, err = proc.communicate()
    return proc.returncode, err


def wait_started(proc: subprocess.Popen, out: Path) -> float | None:
    """When ``out``'s lock appeared (the run is past its imports and start checks), or ``None`` if
    the process ended first: signal times are drawn from then on, whatever the import time."""
    lock = out.with_name(f".{out.name}.lock")
    while proc.poll() is None:
        if lock.exists():
            return time.perf_counter()
        time.sleep(0.02)
    return None


def run_ok(args: list[Any], out: Path) -> float:
    """Run ``distilprune ARGS --out OUT`` to success; returns its seconds after its start checks."""
    proc = cli([*args, "--out", out])
    started = wait_started(proc, out) or time.perf_counter()
    code, err = finish(proc)
    if code != 0:
        raise SystemExit(f"setup run failed ({code}): {' '.join(map(str, args))}\n{err[-2000:]}")
    return time.perf_counter() - started


def weights_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def where(out: Path) -> str:
    """``out`` relative to the run's temporary root (for the notes)."""
    return re.sub(r"^.*?distilprune-faults-[^/]+/", "", str(out))


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if LEFTOVER.search(p.name))


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
    run_ok(["fit-mlm-head", "--teacher", model, "--corpus", data, "--steps", "2", "--batch-size", "8",
            "--max-length", "32"], teacher)
    small = ["--batch-size", "4", "--max-length", "32", "--checkpoint-every", "2"]
    return {
        "pipeline": pipeline_command(root, model, data),
        "finetune": ["finetune", "--model", model, "--data", data, "--max-steps", steps, "--seed", "3",
                     "--patience", "100", *small],
        "distill-mlm": ["distill-mlm", "--teacher", teacher, "--corpus", data, "--layers", "1",
                        "--steps", steps, "--prune", "unstructured", "--final-sparsity", "0.5", *small],
    }


def interrupt_trial(tally: Tally, command: list[Any], clean: Path, out: Path, signum: int,
                    delay: float) -> tuple[float, bool]:
    """Signal a run ``delay`` seconds after its start checks, resume it, compare with ``clean``;
    returns how long the first run took from then on and whether the signal stopped it."""
    tally.runs += 1
    proc = cli([*command, "--out", out])
    start = wait_started(proc, out) or time.perf_counter()
    sent = False
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signum)
        sent = True
    code, first_err = finish(proc)
    seconds = time.perf_counter() - start
    killed = False
    if out.exists():  # renamed into place before the signal landed: complete, nothing to resume
        tally.finished_before_signal += 1
        if sent and code == 0:  # the run went on after the signal and reported success
            tally.failures += 1
            tally.notes.append(f"{where(out)}: exited 0 after {signal.Signals(signum).name}: "
                               f"{first_err.strip()[-300:]}")
    else:
        tally.killed += 1
        killed = True
        expected = {-signal.SIGKILL} if signum == signal.SIGKILL else {128 + signum, -signum}
        if code not in expected:
            tally.failures += 1
            tally.notes.append(f"{where(out)}: interrupted run exited {code}: {first_err.strip()[-300:]}")
        left = [n for n in leftovers(out.parent) if not n.endswith(".checkpoint")]
        if signum == signal.SIGTERM and code == 128 + signum and left:
            tally.leftovers += len(left)
            tally.notes.append(f"{where(out)}: SIGTERM left {left}")
        code, err = finish(cli([*command, "--out", out, "--resume"]))
        if code != 0:
            tally.failures += 1
            tally.notes.append(f"{where(out)}: resume exited {code}: {err.strip()[-300:]}")
            return seconds, True
    if leftover := leftovers(out.parent):
        tally.leftovers += len(leftover)
        tally.notes.append(f"{where(out)}: left {leftover}")
    if not weights_equal(clean, out):
        tally.mismatches += 1
        tally.notes.append(f"{where(out)}: weights differ from the uninterrupted run")
    return seconds, killed


def concurrent_trial(tally: Tally, command: list[Any], out: Path, k: int) -> None:
    """``k`` runs on one ``--out`` at once: exactly one succeeds, the others fail with one line."""
    tally.runs, tally.rounds = tally.runs + k, tally.rounds + 1
    procs = [cli([*command, "--out", out]) for _ in range(k)]
    results = [finish(p) for p in procs]
    winners = [code for code, _err in results if code == 0]
    losers = [err for code, err in results if code != 0]
    good_losers = [e for e in losers if len(e.strip().splitlines()) == 1
                   and ("is writing" in e or "already exists" in e)]
    tally.failures += len(losers)
    if len(winners) != 1 or len(good_losers) != len(losers):
        tally.mismatches += 1
        tally.notes.append(f"{where(out)}: {len(winners)} succeeded; loser messages: "
                           f"{[e.strip()[-200:] for e in losers]}")
    if leftover := leftovers(out.parent):
        tally.leftovers += len(leftover)
        tally.notes.append(f"{where(out)}: left {leftover}")


def pipeline_command(root: Path, model: Path, data: Path) -> list[Any]:
    """``distilprune run`` of a recipe whose teacher stage (the only one run) is a short fine-tune."""
    recipe = {"threads": 1, "data": {"train": str(data), "max_length": 32},
              "teacher": {"model": str(model), "train": {"max_steps": 4, "batch_size": 4}},
              "distill": {"corpus": {"files": [str(data)]}}}
    (root / "pipeline.yaml").write_text(json.dumps(recipe))
    return ["run", root / "pipeline.yaml", "--stages", "teacher"]


def concurrent_pipeline_trial(tally: Tally, command: list[Any], out: Path, k: int) -> None:
    """``k`` runs of one recipe at once: exactly one runs the stage; the others fail at start with
    one line, or (started after it finished) find the stage up to date."""
    tally.runs, tally.rounds = tally.runs + k, tally.rounds + 1
    results = [finish(p) for p in [cli([*command, "--out", out]) for _ in range(k)]]
    ran = [err for code, err in results if code == 0 and "stage teacher: running" in err]
    reused = [err for code, err in results if code == 0 and "up to date, skipped" in err]
    refused = [err for code, err in results if code == 2 and len(err.strip().splitlines()) == 1
               and "is writing" in err]
    tally.failures += sum(code != 0 for code, _err in results)
    if len(ran) != 1 or len(ran) + len(reused) + len(refused) != k:
        tally.mismatches += 1
        others = [(c, e.strip()[-200:]) for c, e in results if e not in ran + reused + refused]
        tally.notes.append(f"{where(out)}: {len(ran)} ran the stage, {len(reused)} reused it; "
                           f"others: {others}")
    if leftover := leftovers(out.parent):
        tally.leftovers += len(leftover)
        tally.notes.append(f"{where(out)}: left {leftover}")


def concurrent_scenarios(root: Path, commands: dict[str, list[Any]], args: argparse.Namespace) -> list[Tally]:
    """The concurrent finetune trials (every other one under new directories) and pipeline trials."""
    finetune = Tally(f"finetune x{args.k} on one --out")
    pipeline = Tally(f"run (pipeline) x{args.k} on one out")
    for i in range(args.concurrent_trials):
        folder = root / f"concurrent-{i}"
        folder.mkdir()
        out = folder / "out" if i % 2 == 0 else folder / "a" / "new" / "out"
        concurrent_trial(finetune, commands["finetune"], out, args.k)
        (folder / "pipeline").mkdir()
        concurrent_pipeline_trial(pipeline, commands["pipeline"], folder / "pipeline" / "out", args.k)
        print(finetune, pipeline, sep="\n", flush=True)
    return [finetune, pipeline]


def interrupt_round(tally: Tally, command: list[Any], clean: Path, folder: Path, signum: int,
                    pace: float, rng: random.Random) -> float:
    """One kill point of a scenario: a signal at a random moment of a run whose work (after its
    start checks) takes ``pace`` seconds, drawn again earlier while the run finished before it;
    returns the pace of the last whole run (the load on the machine varies)."""
    tally.rounds += 1
    for attempt in range(ATTEMPTS):
        out = folder / f"try-{attempt}" / "out"
        out.parent.mkdir(parents=True)
        delay = pace * rng.uniform(0.0, 0.98) * 0.8 ** attempt
        seconds, killed = interrupt_trial(tally, command, clean, out, signum, delay)
        if killed:
            break
        pace = seconds
    return pace


def report(args: argparse.Namespace, tallies: list[Tally], cleans: dict[str, tuple[Path, float]],
           seconds: float) -> str:
    """Write ``results/faults.{json,md}`` for the trials so far; returns the markdown."""
    rows = [{k: v for k, v in vars(t).items() if k != "notes"} for t in tallies]
    clean = {name: round(sec, 1) for name, (_dir, sec) in cleans.items()}
    payload = {"args": vars(args), "clean_work_seconds": clean,
               "seconds": round(seconds, 1), "scenarios": rows,
               "notes": [n for t in tallies for n in t.notes]}
    columns = ["name", "rounds", "runs", "killed", "finished_before_signal", "failures", "leftovers",
               "mismatches"]
    intro = (f"{args.n} rounds of kill -9 and of SIGTERM at a random moment after the start checks (seed "
             f"{args.seed}) of each checkpointed run ({args.steps} steps, `--checkpoint-every 2`), each "
             "followed by `--resume` and compared bit for bit with an uninterrupted run; a run that "
             "finished before its signal landed (also checked, and a failure if it exited 0 although the "
             "signal was sent) is started again with an earlier signal, "
             f"up to {ATTEMPTS} runs a round (`runs`). Then {args.concurrent_trials} x {args.k} concurrent "
             "`finetune` runs on one `--out` (every other trial under directories that do not exist yet) "
             "and as many `distilprune run` of one recipe. Targets: leftovers 0, mismatches 0 (for the "
             "concurrent rows, failures = the runs refused at start, a mismatch = a trial where not "
             "exactly one run did the work).")
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
        concurrent = concurrent_scenarios(root, commands, args)
        del commands["pipeline"]
        cleans = {name: (root / f"{name}-clean", run_ok(command, root / f"{name}-clean"))
                  for name, command in commands.items()}
        pace = {name: seconds for name, (_dir, seconds) in cleans.items()}
        tallies = {(name, s): Tally(f"{name} {signal.Signals(s).name}") for name in commands for s in signals}
        for i in range(args.n):  # round-robin, so a time budget cuts every scenario evenly
            if time.time() > deadline:
                break
            for (name, signum), tally in tallies.items():
                pace[name] = interrupt_round(tally, commands[name], cleans[name][0],
                                             root / f"{name}-{signum}-{i}", signum, pace[name], rng)
            print(f"round {i + 1}/{args.n}:", *tallies.values(), sep="\n  ", flush=True)
            report(args, [*tallies.values(), *concurrent], cleans, time.time() - started)
    print(report(args, [*tallies.values(), *concurrent], cleans, time.time() - started))


if __name__ == "__main__":
    run_main(main)
