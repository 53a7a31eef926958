"""`torchrun -m vitlib.train`: DistributedDataParallel on the CPU (gloo). Two processes follow one process with the
same global batch, only rank 0 reports and writes the checkpoint, and --resume works."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitlib.checkpoint import load_checkpoint

BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun" if (BIN / "torchrun").exists() else shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found next to this Python")

# 249 images, global batch 64: the last batch has 57, shared 29 / 28 (unequal shares must weigh right)
FLAGS = ["--model", "vit_course_28", "--dataset", "fashion-mnist-small", "--subset", "249", "--batch-size", "64",
         "--augment", "none", "--set", "num_layers=2", "--device", "cpu", "--seed", "3", "--label-smoothing", "0.1"]


def _torchrun(processes: int, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}", "-m", "vitlib.train", *FLAGS,
               "--out", str(out), *extra]
    env = {"OMP_NUM_THREADS": "1", "PATH": str(BIN) + ":/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "last.pt")["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    one = _torchrun(1, folder / "one", "--epochs", "2")
    two = _torchrun(2, folder / "two", "--epochs", "2")
    return folder, one, two


def test_two_processes_end_with_the_weights_of_one_with_the_same_global_batch(runs):
    folder, _, _ = runs
    one, two = _weights(folder / "one"), _weights(folder / "two")
    assert one.keys() == two.keys()
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-4, f"largest weight difference {worst:.2e}"
    h1, h2 = (load_checkpoint(folder / name / "last.pt")["history"] for name in ("one", "two"))
    assert h1["step_loss"] == pytest.approx(h2["step_loss"], abs=1e-4)
    assert h1["train_accuracy"] == pytest.approx(h2["train_accuracy"], abs=1e-9)
    assert h1["test_accuracy"] == pytest.approx(h2["test_accuracy"], abs=1e-9)
    assert h1["test_loss"] == pytest.approx(h2["test_loss"], abs=1e-4)


def test_only_rank_zero_reports(runs):
    _, one, two = runs
    lines = [line for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, two.stdout
    summary = json.loads(lines[0])
    assert summary["processes"] == 2 and summary["epochs"] == 2 and json.loads(one.stdout.splitlines()[-1])["processes"] == 1
    assert two.stderr.count("epoch 2/2  train loss") == 1, two.stderr  # rank 1 prints no epoch lines


def test_resume_under_torchrun_continues_to_the_same_weights(runs, tmp_path):
    folder, _, _ = runs
    _torchrun(2, tmp_path / "resumed", "--epochs", "1")
    resumed = _torchrun(2, tmp_path / "resumed", "--epochs", "2", "--resume")
    assert "resuming from" in resumed.stdout and resumed.stdout.count("resuming from") == 1
    straight, again = _weights(folder / "two"), _weights(tmp_path / "resumed")
    assert max((straight[k] - again[k]).abs().max().item() for k in straight) < 1e-6
