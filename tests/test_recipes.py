"""vitlib.recipes and `python -m vitlib.train --recipe NAME`.

The recipes' accuracy goals are measured by running them (BENCHMARKS.md), not here.
Here: every recipe is well formed and plain (no convolutional stem), and each one runs
end to end through the command line for one epoch on small files in its data set's
real format (MNIST and CIFAR-10 cannot be downloaded on the machines that run these tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_files import make_cifar_folder, make_idx_split
from vitlib import recipes
from vitlib.configs import create_vit
from vitlib.data import AUGMENTATIONS, DATASET_NAMES
from vitlib.train import main
from vitlib.train_config import TrainConfig

REQUIRED = ("fashion-mnist", "fashion-mnist-cpu", "mnist", "mnist-cpu", "cifar10")
IMAGE = {"mnist": (28, 1), "fashion-mnist": (28, 1), "fashion-mnist-small": (28, 1), "cifar10": (32, 3)}
TINY = ["--set", "num_layers=1", "--set", "hidden_dim=32", "--set", "num_heads=2", "--set", "mlp_dim=64"]


@pytest.mark.parametrize("name", REQUIRED)
def test_the_issue_named_recipes_exist(name):
    assert recipes.get_recipe(name).name == name


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_every_recipe_is_well_formed(name):
    recipe = recipes.RECIPES[name]
    assert recipe.name == name and recipe.description
    assert recipe.dataset in DATASET_NAMES and recipe.augment in AUGMENTATIONS
    assert isinstance(recipe.train, TrainConfig) and 0.0 <= recipe.goal < 1.0
    size, channels = IMAGE[recipe.dataset]
    model = create_vit(recipe.model, image_size=size, in_channels=channels, num_classes=10, **recipe.model_overrides)
    # a plain ViT: the patch embedding is one linear map of flattened patches, no convolutional stem
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert model.config.dropout == 0.0  # no dropout at small scale


@pytest.mark.parametrize("name, goal", [("fashion-mnist-cpu", 0.90), ("mnist-cpu", 0.995)])
def test_the_cpu_recipes_stop_themselves_within_ten_minutes(name, goal):
    recipe = recipes.get_recipe(name)
    assert recipe.goal >= goal and recipe.device_class == "cpu"
    assert 0 < recipe.train.time_limit <= 570  # the rest of 600 s: start-up, loading, the final report
    assert recipe.train.compile is False  # measured: torch.compile gains nothing on the CPU and costs 20 s


def test_gpu_goals_are_the_issues():
    assert recipes.get_recipe("fashion-mnist").goal >= 0.95
    assert recipes.get_recipe("mnist").goal >= 0.995
    assert recipes.get_recipe("cifar10").goal >= 0.91 and recipes.get_recipe("cifar10").train.time_limit <= 900


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        recipes.get_recipe("imagenet")
    assert all(name in str(info.value) for name in REQUIRED)


@pytest.mark.parametrize("chosen, full, expected", [
    ("smoke", True, "smoke"), ("cpu", True, "fashion-mnist-cpu"), ("gpu", True, "fashion-mnist"),
    ("cpu", False, "fashion-mnist-small"), ("gpu", False, "fashion-mnist-small"),
])
def test_week_05_picks_the_recipe_of_its_budget(chosen, full, expected):
    assert recipes.for_budget(chosen, full_data=full).name == expected


@pytest.mark.parametrize("chosen, full, expected", [
    ("smoke", True, "smoke"), ("cpu", True, "mnist-cpu"), ("gpu", True, "mnist"),
    ("cpu", False, "fashion-mnist-small"),  # no MNIST is bundled: the Fashion-MNIST subset
])
def test_week_05_picks_mnists_recipes_when_asked(chosen, full, expected):
    recipe = recipes.for_budget(chosen, full_data=full, dataset="mnist")
    assert recipe.name == expected
    assert recipe.dataset == ("fashion-mnist-small" if expected == "smoke" or not full else "mnist")


def test_week_05_refuses_a_data_set_it_has_no_recipe_for():
    with pytest.raises(ValueError, match="'fashion-mnist' or 'mnist', not 'cifar10'"):
        recipes.for_budget("cpu", dataset="cifar10")


def test_budget_follows_the_environment(monkeypatch):
    monkeypatch.setenv("VITLIB_BUDGET", "smoke")
    assert recipes.budget() == "smoke"
    monkeypatch.setenv("VITLIB_BUDGET", "tpu")
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        recipes.budget()


def run_recipe_cli(capsys, *args: str) -> dict:
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


@pytest.mark.parametrize("name", REQUIRED)
def test_each_recipe_runs_end_to_end_on_files_in_the_real_format(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VITLIB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    recipe = recipes.get_recipe(name)
    root = tmp_path / "data"
    if recipe.dataset == "cifar10":
        make_cifar_folder(root / "cifar-10-batches-py", per_batch=20)
    else:
        folder = root / {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}[recipe.dataset]
        make_idx_split(folder, "train", 100)
        make_idx_split(folder, "test", 40, seed=1)
    summary = run_recipe_cli(
        capsys, "--recipe", name, "--data-root", str(root), "--epochs", "1", "--batch-size", "32",
        "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run"), *TINY,
        *(["--set", "patch_size=4"] if recipe.dataset != "cifar10" else []),
        *([] if name == "mnist" else ["--no-compile"]),  # compile once (slow on a CPU), on mnist
    )
    assert summary["recipe"] == name and summary["dataset"] == recipe.dataset and summary["model"] == recipe.model
    assert summary["augment"] == recipe.augment and summary["goal"] == recipe.goal
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["seconds"] > 0 and summary["wall_seconds"] > 0
    assert summary["train_size"] == (100 if recipe.dataset != "cifar10" else 100)
    train_config = summary["train_config"]
    assert train_config["epochs"] == 1 and train_config["batch_size"] == 32  # the command line wins
    for key in ("lr", "label_smoothing", "mixup", "cutmix", "time_limit", "weight_decay"):
        assert train_config[key] == getattr(recipe.train, key), key  # the rest is the recipe's
    assert train_config["compile"] is (recipe.train.compile and name == "mnist")
    assert summary["model_config"]["hidden_dim"] == 32  # --set overrides the recipe's model
    assert Path(summary["checkpoint"]).is_file()


def test_a_recipe_needs_no_other_option(tmp_path, capsys, monkeypatch):
    # the smoke recipe with the bundled subset: the command students type, as is
    monkeypatch.chdir(tmp_path)
    summary = run_recipe_cli(capsys, "--recipe", "smoke", "--no-progress")
    assert summary["recipe"] == "smoke" and summary["model_config"]["patch_size"] == 7
    assert summary["train_size"] == 8000 and summary["reached_goal"] is True
    assert (tmp_path / summary["checkpoint"]).resolve() == tmp_path / "runs" / "smoke" / "last.pt"


@pytest.mark.parametrize("args, message", [
    (["--recipe", "imagenet"], "unknown recipe 'imagenet'"),
    (["--epochs", "1"], "--recipe NAME, or both --model and --dataset"),
    (["--model", "vit_course_28"], "--recipe NAME, or both --model and --dataset"),
    (["--recipe", "smoke", "--augment", "heavy"], "unknown augment 'heavy'"),
])
def test_recipe_mistakes_are_one_line_errors(args, message, capsys):
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
