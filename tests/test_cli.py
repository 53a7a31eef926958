"""`python -m vitlib.train`: a JSON summary as the last stdout line, resume, one-line errors.

Runs the real command in a subprocess on the bundled fashion-mnist-small (no download).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "num_layers=1", "--set", "hidden_dim=32", "--set", "num_heads=2", "--set", "mlp_dim=64"]
QUICK = ["--model", "vit_course_28", "--dataset", "fashion-mnist-small", "--subset", "512", *TINY, "--no-progress"]
REQUIRED = {"test_accuracy", "epochs", "seconds", "device", "checkpoint", "model", "dataset", "parameters"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "vitlib.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def summary_of(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    folder = tmp_path_factory.mktemp("cli")
    out = folder / "run"
    return run_cli(*QUICK, "--epochs", "1", "--out", str(out), cwd=folder), out


def test_training_prints_a_json_summary_last(first_run):
    result, out = first_run
    summary = summary_of(result)
    assert REQUIRED <= set(summary)
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["epochs"] == 1
    assert summary["model"] == "vit_course_28" and summary["dataset"] == "fashion-mnist-small"
    assert summary["device"] == "cpu" or torch.cuda.is_available()
    assert summary["parameters"] > 0 and summary["seconds"] > 0
    assert summary["model_config"]["hidden_dim"] == 32 and summary["model_config"]["in_channels"] == 1
    assert summary["train_size"] == 512 and summary["test_size"] == 128
    assert Path(summary["checkpoint"]) == out / "last.pt"
    assert "Warning" not in result.stderr and "Traceback" not in result.stderr


def test_the_checkpoint_loads_with_weights_only(first_run):
    _, out = first_run
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["format"] == "vitlib-checkpoint" and checkpoint["epoch"] == 1
    assert checkpoint["extra"]["dataset"] == "fashion-mnist-small"


def test_resume_continues_to_more_epochs(first_run, tmp_path):
    _, out = first_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    result = run_cli(*QUICK, "--epochs", "2", "--out", str(copy), "--resume", cwd=tmp_path)
    summary = summary_of(result)
    assert summary["epochs"] == 2
    assert "resuming from" in result.stdout
    assert torch.load(copy / "last.pt", weights_only=True)["epoch"] == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "vit_nonexistent"], "unknown ViT configuration 'vit_nonexistent'"),
    (["--model", "vit_course_28", "--set", "patch_size=5"], "image_size=28 is not divisible by patch_size=5"),
])
def test_mistakes_are_one_line_errors_with_exit_code_2(args, message, tmp_path):
    result = run_cli("--dataset", "fashion-mnist-small", "--epochs", "1", "--out", str(tmp_path / "run"),
                     "--no-progress", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--set", "num_layer=2"], "--set num_layer: unknown model setting"),
    (["--set", "num_layers"], "--set expects KEY=VALUE"),
    (["--set", "image_size=32"], "image_size comes from the dataset"),
    (["--lr", "-1"], "lr must be"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--augment", "extreme"], "unknown augment 'extreme'"),
    (["--subset", "0"], "--subset must be a positive integer"),
])
def test_more_mistakes_in_process(args, message, tmp_path, capsys):
    from vitlib.train import main

    code = main(["--model", "vit_course_28", "--dataset", "fashion-mnist-small", "--out", str(tmp_path / "run"),
                 "--no-progress", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has cuda")
def test_unavailable_device_is_an_error(tmp_path, capsys):
    from vitlib.train import main

    assert main([*QUICK, "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert "error: device 'cuda' is unavailable" in capsys.readouterr().err
