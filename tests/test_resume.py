"""Resumable training: ``kill -9`` mid-run, ``--resume``, same final weights as one clean run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

KILLER = textwrap.dedent("""
    import os, signal, sys
    from distilprune import cli
    from distilprune.jobs import distill as distill_job
    from distilprune.jobs import finetune as job
    from distilprune.train import Hook

    kill_at = int(os.environ.get("KILL_AT_STEP", "0"))

    class Kill(Hook):
        def on_step_end(self, model, step):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    original = job.compression_hooks
    job.compression_hooks = lambda *args: [*original(*args), Kill()]
    distill_train = distill_job.train
    distill_job.train = lambda model, loader, objective, cfg, hooks=(), **kw: distill_train(
        model, loader, objective, cfg, [*hooks, Kill()], **kw)
    sys.argv = ["distilprune", *sys.argv[1:]]
    cli.main()
""")


def run(args: list[str], kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT_STEP": str(kill_at), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", KILLER, *args], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


@pytest.mark.parametrize("extra", [[], ["--prune", "unstructured", "--final-sparsity", "0.5"]],
                         ids=["dense", "pruned"])
def test_kill_and_resume_matches_uninterrupted_run(tiny_model_factory, tiny_csv, tmp_path, extra):
    model = tiny_model_factory("bert")
    common = ["finetune", "--model", str(model), "--data", str(tiny_csv), "--max-steps", "18",
              "--batch-size", "4", "--max-length", "32", "--seed", "3", "--checkpoint-every", "5",
              "--patience", "100", *extra]
    clean = run([*common, "--out", str(tmp_path / "clean")])
    assert clean.returncode == 0, clean.stderr[-2000:]

    killed = run([*common, "--out", str(tmp_path / "resumed")], kill_at=12)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "resumed").exists(), "a killed run must not leave its output behind"
    assert (tmp_path / "resumed.checkpoint" / "trainer.json").is_file()

    resumed = run([*common, "--out", str(tmp_path / "resumed"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (tmp_path / "resumed.checkpoint").exists(), "the checkpoint is removed after success"
    a, b = weights(tmp_path / "clean"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_without_checkpoint_starts_fresh(tiny_model_factory, tiny_csv, tmp_path):
    model = tiny_model_factory("bert")
    result = run(["finetune", "--model", str(model), "--data", str(tiny_csv), "--max-steps", "3",
                  "--batch-size", "4", "--max-length", "32", "--out", str(tmp_path / "out"),
                  "--checkpoint-every", "2", "--resume"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_corrupt_checkpoint_is_a_one_line_error(tiny_model_factory, tiny_csv, tmp_path):
    model = tiny_model_factory("bert")
    ckpt = tmp_path / "out.checkpoint"
    ckpt.mkdir()
    (ckpt / "trainer.json").write_text("{not json")
    result = run(["finetune", "--model", str(model), "--data", str(tiny_csv), "--max-steps", "3",
                  "--batch-size", "4", "--out", str(tmp_path / "out"), "--checkpoint-every", "2",
                  "--resume"])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "checkpoint" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_kill_and_resume_general_distillation_with_pruning(tiny_model_factory, tiny_csv, tmp_path):
    """Masking generator, pruning masks and data order all resume exactly (distill-mlm)."""
    teacher = tmp_path / "mlm"
    head = run(["fit-mlm-head", "--model", str(tiny_model_factory("bert")), "--out", str(teacher),
                "--corpus", str(tiny_csv), "--max-steps", "2", "--batch-size", "8", "--max-length", "32"])
    assert head.returncode == 0, head.stderr[-2000:]
    common = ["distill-mlm", "--teacher", str(teacher), "--corpus", str(tiny_csv), "--layers", "2",
              "--max-steps", "12", "--batch-size", "4", "--max-length", "32", "--checkpoint-every", "4",
              "--prune", "unstructured", "--final-sparsity", "0.5"]
    clean = run([*common, "--out", str(tmp_path / "clean")])
    assert clean.returncode == 0, clean.stderr[-2000:]
    killed = run([*common, "--out", str(tmp_path / "resumed")], kill_at=6)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run([*common, "--out", str(tmp_path / "resumed"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = weights(tmp_path / "clean"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
