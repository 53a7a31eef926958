"""The command line of the training engine: ``python -m vitlib.train``.

    python -m vitlib.train --recipe fashion-mnist-cpu          # a named recipe, vitlib.recipes
    python -m vitlib.train --model vit_course_28 --dataset fashion-mnist-small --epochs 5 --out runs/demo
    torchrun --nproc_per_node=4 -m vitlib.train --recipe cifar10 --out runs/c10

Parses the flags over a recipe's settings, loads the data set and builds the model, joins
the process group under torchrun (:mod:`vitlib.processes`), trains with
:func:`vitlib.train.train`, and prints a JSON summary as the last line on stdout. A mistake
on the command line is one ``error:`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from vitlib.checkpoint import CheckpointError
from vitlib.processes import start_processes
from vitlib.train import select_device, train
from vitlib.train_config import TrainConfig

__all__ = ["main", "parse_sets"]


class _UsageError(Exception):
    """A mistake in the command line or its consequences: reported as one `error:` line."""


def _parse_value(text: str) -> bool | int | float | str:
    """``--set`` values: true/false, then int, then float, else the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["num_layers=2", "dropout=0.1"]`` into model-config overrides."""
    from vitlib.model import ViTConfig

    known = [field.name for field in dataclasses.fields(ViTConfig)]
    from_dataset = {"image_size", "in_channels", "num_classes"}
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise _UsageError(f"--set expects KEY=VALUE, got {item!r}")
        if key in from_dataset:
            raise _UsageError(f"--set {key}=... is not allowed: {key} comes from the dataset")
        if key not in known:
            raise _UsageError(f"--set {key}: unknown model setting; known: {', '.join(k for k in known if k not in from_dataset)}")
        overrides[key] = _parse_value(value.strip())
    return overrides


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vitlib.train",
        description="Train a Vision Transformer (Dosovitskiy et al. 2020) on an image data set. "
                    "The last line on stdout is a JSON summary.",
    )
    parser.add_argument("--recipe", help="a named recipe (see vitlib.recipes): model, data set, augmentation and "
                                         "schedule in one; the options below override parts of it")
    parser.add_argument("--model", help="model name, e.g. vit_course_28 (see vitlib.configs.CONFIGS)")
    parser.add_argument("--dataset", help="mnist, fashion-mnist, cifar10 or fashion-mnist-small")
    parser.add_argument("--epochs", type=int, help="number of epochs (default 10)")
    parser.add_argument("--out", help="run folder for last.pt (default runs/MODEL-DATASET)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    parser.add_argument("--device", help="auto (default), cpu, cuda or mps")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--eval-batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine decay")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--grad-clip", type=float, help="clip gradients at this global norm (0 = off)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on cuda")
    parser.add_argument("--mixup", type=float, help="mixup Beta(α, α); 0 = off")
    parser.add_argument("--cutmix", type=float, help="cutmix Beta(α, α); 0 = off")
    parser.add_argument("--time-limit", type=float, help="stop after this many seconds, the schedule ending on time")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model for training (--no-compile: not even if the recipe says so)")
    parser.add_argument("--augment", help="training augmentation: none, flip, basic (default), digits or strong")
    parser.add_argument("--data-root", help="where data sets are stored / downloaded")
    parser.add_argument("--subset", type=int, help="use only the first N train and N//4 test images")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model-config override, repeatable, e.g. --set num_layers=2")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    return parser


def _train_config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Only the options given on the command line override ``base`` (a recipe's, or the defaults)."""
    given = {
        "epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
        "lr": args.lr, "min_lr": args.min_lr, "weight_decay": args.weight_decay,
        "warmup_epochs": args.warmup_epochs, "label_smoothing": args.label_smoothing,
        "grad_clip": args.grad_clip, "seed": args.seed, "num_workers": args.num_workers,
        "device": args.device, "mixup": args.mixup, "cutmix": args.cutmix, "time_limit": args.time_limit,
    }
    kwargs: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    if args.no_amp:
        kwargs["amp"] = False
    if args.no_progress:
        kwargs["progress"] = False
    if args.compile is not None:
        kwargs["compile"] = args.compile
    return dataclasses.replace(base, **kwargs) if base is not None else TrainConfig(**kwargs)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse, build data and model, train, print a JSON summary."""
    started = time.perf_counter()
    parser = _build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: this process's rank; only rank 0 reports
    try:
        summary = _run(args)
    except (_UsageError, CheckpointError, FileNotFoundError) as error:
        # Configuration mistakes (unknown model, patch size that does not divide
        # the image, missing data set, checkpoint of another model, ...): one line, exit 2.
        if rank == 0:
            print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print("interrupted; continue with --resume (OUT/last.pt holds the last finished epoch)", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    summary["wall_seconds"] = round(time.perf_counter() - started, 3)  # loading data and model included
    if rank == 0:
        print(json.dumps(summary))
    return 0


@dataclasses.dataclass
class _Setup:
    """What the command line asks to train, ready: recipe, names, settings, data and model."""

    recipe: Any
    model_name: str
    dataset: str
    augment: str
    config: TrainConfig
    device: torch.device
    train_data: Dataset
    test_data: Dataset
    model: torch.nn.Module


def _set_up(args: argparse.Namespace) -> _Setup:
    """Recipe, flags, data set and model; every ValueError on the way is a mistake on the command line."""
    from vitlib.configs import create_vit
    from vitlib.data import eval_transform, load_dataset, train_transform
    from vitlib.recipes import get_recipe

    try:
        recipe = get_recipe(args.recipe) if args.recipe else None
        model_name = args.model or (recipe.model if recipe else None)
        dataset = args.dataset or (recipe.dataset if recipe else None)
        if model_name is None or dataset is None:
            raise _UsageError("say what to train: --recipe NAME, or both --model and --dataset")
        augment = args.augment or (recipe.augment if recipe else "basic")
        config = _train_config_from_args(args, recipe.train if recipe else None)
        overrides = {**(recipe.model_overrides if recipe else {}), **parse_sets(args.set)}
        device = select_device(config.device)  # fail early, before loading data
        if args.subset is not None and args.subset < 1:
            raise _UsageError(f"--subset must be a positive integer, got {args.subset}")

        train_set = load_dataset(dataset, split="train", root=args.data_root)
        test_set = load_dataset(dataset, split="test", root=args.data_root)
        train_set.transform = train_transform(train_set, augment)
        test_set.transform = eval_transform(test_set)

        torch.manual_seed(config.seed)  # the initial weights depend on the seed too
        model = create_vit(
            model_name, image_size=train_set.image_size, in_channels=train_set.in_channels,
            num_classes=train_set.num_classes, **overrides,
        )
    except (ValueError, TypeError) as error:
        raise _UsageError(_one_line(error).replace("TrainConfig: ", "")) from error
    train_data: Dataset = train_set
    test_data: Dataset = test_set
    if args.subset is not None:
        train_data = Subset(train_set, range(min(args.subset, len(train_set))))
        test_data = Subset(test_set, range(min(max(1, args.subset // 4), len(test_set))))
    return _Setup(recipe, model_name, dataset, augment, config, device, train_data, test_data, model)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, join the processes (under torchrun), train: the JSON summary."""
    setup = _set_up(args)
    processes = start_processes(setup.device)
    out_dir = Path(args.out) if args.out else Path("runs") / (args.recipe or f"{setup.model_name}-{setup.dataset}")
    extra = {"model_name": setup.model_name, "dataset": setup.dataset, "augment": setup.augment,
             "subset": args.subset, "recipe": args.recipe}
    history = train(setup.model, setup.train_data, setup.test_data, setup.config, out_dir=out_dir,
                    resume=args.resume, extra=extra)
    return _summary(args, setup, history, processes)


def _summary(args: argparse.Namespace, setup: _Setup, history: dict[str, Any], processes: int) -> dict[str, Any]:
    """The last line on stdout: what was trained, how far, how well."""
    recipe, model = setup.recipe, setup.model
    accuracy = history["test_accuracy"][-1] if history["test_accuracy"] else None
    return {
        "recipe": args.recipe,
        "model": setup.model_name,
        "dataset": setup.dataset,
        "augment": setup.augment,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": history["epoch"][-1] if history["epoch"] else 0,
        "test_accuracy": accuracy,
        "goal": recipe.goal if recipe else None,
        "reached_goal": (accuracy is not None and accuracy >= recipe.goal) if recipe else None,
        "test_loss": history["test_loss"][-1] if history["test_loss"] else None,
        "train_loss": history["train_loss"][-1] if history["train_loss"] else None,
        "train_accuracy": history["train_accuracy"][-1] if history["train_accuracy"] else None,
        "seconds": history["seconds"][-1] if history["seconds"] else 0.0,
        "stopped_early": history["stopped_early"],
        "device": history["device"],
        "processes": processes,
        "checkpoint": history["checkpoint"],
        "train_size": len(setup.train_data),
        "test_size": len(setup.test_data),
        "model_config": dataclasses.asdict(model.config),
        "train_config": dataclasses.asdict(setup.config),
    }


if __name__ == "__main__":
    raise SystemExit(main())
