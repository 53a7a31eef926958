"""The speed benchmark runs (its figures are measured by hand, not asserted here)."""

import pytest

pytest.importorskip("timm")

from vitlib.bench import Case, run  # noqa: E402


def test_bench_runs_both_models_with_the_same_weights_and_reports_ratios():
    case = Case("tiny", "vit_course_28", dict(num_layers=1, hidden_dim=32, num_heads=2, mlp_dim=64), batch_size=8)
    result = run(case, rounds=1, iterations=1)
    for kind in ("train", "infer"):
        assert result[f"{kind}_images_per_s_vitlib"] > 0 and result[f"{kind}_images_per_s_timm"] > 0
        assert result[f"{kind}_ratio_vitlib_over_timm"] > 0


def test_the_gpu_script_dry_run_runs_every_step_on_the_cpu(tmp_path):
    """benchmarks/gpu.sh --dry-run: the one device call of issue 18, each step a few iterations, on the bundled subset."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "DRY_RUN_COMPILE": os.environ.get("DRY_RUN_COMPILE", "0")}
    result = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    steps = (tmp_path / "steps.log").read_text()
    assert result.returncode == 0, steps + result.stderr
    names = ["fashion-mnist", "bench-bf16", "mnist"]
    assert all(f"end   {name}: exit 0" in steps for name in names), steps
    for run in ("fashion-mnist", "mnist"):
        summary = json.loads((tmp_path / f"{run}.log").read_text().strip().splitlines()[-1])
        assert 0 <= summary["test_accuracy"] <= 1 and summary["seconds"] > 0, summary
    assert "torch" in (tmp_path / "device.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["device.txt", "steps.log", *(f"{n}.log" for n in names)])


def test_the_cpu_throughput_benchmark_prints_one_line_per_batch_size():
    """benchmarks/cpu_throughput.py, how the CPU recipes' batch size was chosen: a few steps of a tiny model."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "benchmarks/cpu_throughput.py", "--recipe", "mnist-cpu", "--batch-sizes", "8", "16",
         "--images", "32", "--rounds", "1", "--set", "num_layers=1", "--set", "hidden_dim=32"],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["batch_size"] for line in lines] == [8, 16]
    assert all(line["images_per_second"] > 0 and line["model"]["num_layers"] == 1 for line in lines)
    assert lines[0]["model"]["patch_dropout"] == 0.25  # the recipe's model, with the overrides


@pytest.mark.parametrize("defect", ["no-position", "frozen-encoder"])
def test_the_broken_model_benchmark_trains_the_recipe_with_its_defect(tmp_path, defect):
    """benchmarks/broken_model.py, how week 05's floors were checked against a broken model: one tiny epoch."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from vitlib.checkpoint import load_checkpoint
    from vitlib.model import ViT, ViTConfig

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "benchmarks/broken_model.py", "--break", defect, "--", "--recipe", "fashion-mnist-cpu",
         "--dataset", "fashion-mnist-small", "--subset", "64", "--epochs", "1", "--set", "num_layers=1",
         "--out", str(tmp_path), "--no-progress"],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["broken"] == defect and summary["epochs"] == 1 and 0 <= summary["test_accuracy"] <= 1
    assert summary["trainable_parameters"] < summary["parameters"]
    weights = load_checkpoint(tmp_path)["model"]
    if defect == "no-position":
        assert not weights["pos_embedding"].any()  # zero, and it stayed zero
    else:  # the blocks end with the weights they started with
        torch.manual_seed(summary["train_config"]["seed"])
        initial = ViT(ViTConfig(**summary["model_config"])).state_dict()
        encoder = [key for key in weights if key.startswith("encoder.")]
        assert encoder and all(torch.equal(weights[key], initial[key]) for key in encoder)
        assert not torch.equal(weights["head.weight"], initial["head.weight"])  # the rest learned


def test_the_broken_model_benchmark_passes_on_the_training_commands_errors():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "benchmarks/broken_model.py", "--break", "no-position", "--",
                             "--recipe", "no-such-recipe"], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "error:" in result.stderr


@pytest.mark.parametrize("method, encoders", [("ijepa", {"target", "context"}), ("mae", {"encoder"})])
def test_the_jepa_probe_benchmark_prints_the_probe_before_and_after_pre_training(method, encoders):
    """benchmarks/jepa_probe.py, how week 12's pre-training budgets were searched: one epoch on 64 images."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "benchmarks/jepa_probe.py", "--method", method, "--epochs", "1", "--images", "64",
         "--batch-size", "32", "--threads", "1"], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    assert all(set(line["probe"]) == encoders and all(0 <= a <= 1 for a in line["probe"].values()) for line in lines)
    assert lines[0]["seconds"] == 0 and lines[1]["seconds"] > 0
