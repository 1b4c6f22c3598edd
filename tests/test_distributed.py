"""Data-parallel training: ``accelerate launch`` with 2 CPU processes (gloo) == one process.

Two processes with a per-process batch of B take, at each optimizer step, two consecutive batches
of the length-grouped sampler (accelerate's ``BatchSamplerShard``: process 0 the even ones,
process 1 the odd ones) and average their gradients (DDP all-reduce). A single process whose
batches of 2B are exactly those unions takes the same steps, so with dropout off and the same
seed the final weights agree up to float rounding (batch padding and summation order differ).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Sampler

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

PER_PROCESS_BATCH = 4
TRAIN_ROWS = 32  # a multiple of 2 x PER_PROCESS_BATCH: every step has two full shards
# --epochs, not --max-steps: the step count must come from the *sharded* loader (4 steps an
# epoch), and 2.5 epochs cross two epoch boundaries, where the sampler must reshuffle.
EPOCHS = 2.5
STEPS = int(EPOCHS * TRAIN_ROWS / (2 * PER_PROCESS_BATCH))  # 10
TOLERANCE = 1e-4  # max |weight difference|, distributed vs single process (measured 1e-7)
EXPECTED_FILES = ("model.safetensors", "config.json", "tokenizer.json", "distilprune.json",
                  "metrics.json", "train_log.json")
MOVED = 1e-3  # training must move some weight by 10x the tolerance, or the check proves nothing


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def model_without_dropout(tiny_model_factory, tmp_path) -> Path:
    """The tiny BERT with dropout off, so no randomness can differ between the two setups."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model_factory("bert", num_layers=2), path)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def recipe(tmp_path) -> Path:
    """Evaluate only at the last step, so the saved weights are those after all ``STEPS``."""
    path = tmp_path / "recipe.yaml"
    path.write_text(f"finetune:\n  train:\n    eval_every: {10 * STEPS}\n")
    return path


def finetune_args(model: Path, data: Path, out: Path, recipe: Path, batch_size: int) -> list[str]:
    return ["finetune", "--model", str(model), "--data", str(data), "--out", str(out),
            "--recipe", str(recipe), "--limit", str(TRAIN_ROWS), "--epochs", str(EPOCHS),
            "--batch-size", str(batch_size), "--max-length", "32", "--seed", "3", "--lr", "1e-3",
            "--checkpoint-every", "4"]  # checkpoints are written by the main process only


class UnionOfShards(Sampler[list[int]]):
    """Batches of 2B = the union of the two B-batches the two processes take at the same step."""

    def __init__(self, inner):
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self):
        batches = iter(self.inner)
        for even, odd in zip(batches, batches, strict=True):
            yield even + odd

    def __len__(self) -> int:
        return len(self.inner) // 2


@needs_gloo
def test_two_cpu_processes_match_one_process(model_without_dropout, tiny_csv, recipe, tmp_path,
                                             monkeypatch):
    from typer.testing import CliRunner

    from distilprune.cli import app
    from distilprune.jobs import finetune as job

    # -- 2 processes (gloo on loopback), per-process batch B, through `accelerate launch`.
    # `--multi_gpu` selects accelerate's torchrun launcher; without GPUs train() asks for the CPU.
    # (`accelerate launch --cpu --num_processes 2` would start a single process unless mpirun is set up.)
    dist_out = tmp_path / "distributed"
    port = free_port()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--machine_rank", "0",
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "distilprune.cli",
              *finetune_args(model_without_dropout, tiny_csv, dist_out, recipe, PER_PROCESS_BATCH)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           # no user `accelerate config` default file may change the launch
           "HF_HOME": str(tmp_path / "hf-home")}
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo talks over loopback only
    env.pop("ACCELERATE_USE_CPU", None)  # the test is that no extra switch is needed
    started = time.perf_counter()
    proc = subprocess.run(launch, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, check=False)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # Two processes writing the same directory have been seen to leave it without its weights.
    missing = [f for f in EXPECTED_FILES if not (dist_out / f).is_file()]
    assert not missing, f"incomplete output directory, missing {missing}"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith((".distributed", "distributed."))]
    assert not leftovers, f"temporary or checkpoint directories left behind: {leftovers}"

    # -- 1 process, batch 2B, whose batches are the unions of the two shards of each step.
    def union_loader(dataset, tokenizer, batch_size, seed=0, shuffle=True, indices=None) -> DataLoader:
        assert batch_size == 2 * PER_PROCESS_BATCH
        shards = original(dataset, tokenizer, batch_size // 2, seed, shuffle, indices)
        return DataLoader(dataset, batch_sampler=UnionOfShards(shards.batch_sampler),
                          collate_fn=shards.collate_fn, generator=shards.generator)

    original = job.make_loader
    monkeypatch.setattr(job, "make_loader", union_loader)
    single_out = tmp_path / "single"
    single = CliRunner().invoke(app, finetune_args(model_without_dropout, tiny_csv, single_out,
                                                   recipe, 2 * PER_PROCESS_BATCH))
    assert single.exit_code == 0, f"{single.output}\n{single.exception!r}"

    # -- Same data, same number of steps, same evaluation, same weights.
    meta = {name: json.loads((out / "distilprune.json").read_text())
            for name, out in (("distributed", dist_out), ("single", single_out))}
    assert meta["single"]["data"]["n_train"] == TRAIN_ROWS
    assert meta["distributed"]["train"]["steps"] == meta["single"]["train"]["steps"] == STEPS
    logs = {name: json.loads((out / "train_log.json").read_text())["history"]
            for name, out in (("distributed", dist_out), ("single", single_out))}
    assert [h["step"] for h in logs["distributed"]] == [h["step"] for h in logs["single"]] == [STEPS]
    for key in ("accuracy", "f1", "f1_macro"):
        assert logs["distributed"][0][key] == pytest.approx(logs["single"][0][key], abs=1e-6)

    start = load_file(model_without_dropout / "model.safetensors")
    got = load_file(dist_out / "model.safetensors")
    want = load_file(single_out / "model.safetensors")
    assert got.keys() == want.keys()
    diff = max((got[k].float() - want[k].float()).abs().max().item() for k in want)
    moved = max((want[k].float() - start[k].float()).abs().max().item() for k in want if k in start)
    print(f"2-process run {seconds:.1f}s; max |w_2proc - w_1proc| = {diff:.3g} "
          f"(tolerance {TOLERANCE:g}); training moved weights by up to {moved:.3g}")
    assert moved > MOVED, "training barely changed the weights: the comparison would prove nothing"
    assert diff <= TOLERANCE  # also fails for NaN


@pytest.mark.parametrize("command", ["finetune", "student", "fit-mlm-head"])
def test_only_the_main_process_writes_the_output(command, tiny_model_factory, tiny_csv, tmp_path,
                                                 monkeypatch):
    """Deterministic check of the guard the race above needs: a non-main process writes nothing
    and waits for the main one (every job saves through ``save_on_main_process``)."""
    from typer.testing import CliRunner

    from distilprune.cli import app
    from distilprune.jobs import common

    calls = []

    class OtherProcess:
        is_main_process = False

        def wait_for_everyone(self):
            calls.append("wait")

    monkeypatch.setattr(common, "PartialState", OtherProcess)
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it: non-main processes take no output lock
    runs = tmp_path / "runs"
    out = runs / "out"
    model = str(tiny_model_factory("bert", 2))
    args = {
        "finetune": ["--model", model, "--data", str(tiny_csv), "--max-steps", "2", "--batch-size", "8",
                     "--max-length", "32"],
        "student": ["--model", model, "--layers", "1"],
        "fit-mlm-head": ["--model", model, "--corpus", str(tiny_csv), "--max-steps", "1", "--batch-size", "8",
                         "--max-length", "32"],
    }[command]
    result = CliRunner().invoke(app, [command, "--out", str(out), *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert calls == ["wait"]
    assert not runs.exists(), f"a non-main process wrote {[p.name for p in runs.iterdir()]}"
