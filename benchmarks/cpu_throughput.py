"""Training images per second of a recipe's model at several batch sizes, side by side (not a test).

    .venv/bin/python benchmarks/cpu_throughput.py --recipe mnist-cpu --batch-sizes 128 256 512 1024

How the CPU recipes' batch size was chosen (BENCHMARKS.md, issue 18). On a small CPU a
ViT of 139k parameters is bound by the cost of each operation more than by its
arithmetic, so bigger batches train more images per second: more epochs fit in a
clock-driven recipe's ten minutes. Each round times every setting once, one after the
other, so a busy machine slows them alike; the figure is the median over rounds. One
training step is the engine's: forward, cross-entropy, backward, AdamW.
``--set KEY=VALUE`` changes the model as ``python -m vitlib.train --set`` does. Prints
one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import vitlib
from vitlib.recipes import get_recipe
from vitlib.train_cli import parse_sets  # the same KEY=VALUE parsing as `python -m vitlib.train --set`


def _step_timer(model_kwargs: dict, model_name: str, batch_size: int):
    """A function that runs ``steps`` training steps on random images and returns their seconds."""
    torch.manual_seed(0)
    model = vitlib.create_vit(model_name, **model_kwargs).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch_size, 1, 28, 28)  # (B, 1, 28, 28)
    labels = torch.randint(0, 10, (batch_size,))  # (B,)

    def run(steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    run(3)  # warm-up
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mnist-cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--images", type=int, default=5120, help="images per timing (default 5120)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    recipe = get_recipe(args.recipe)
    model_kwargs = {**recipe.model_overrides, **parse_sets(args.set)}
    timers = {b: _step_timer(model_kwargs, recipe.model, b) for b in args.batch_sizes}
    rates: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    for _ in range(args.rounds):
        for b, run in timers.items():
            steps = max(1, args.images // b)
            rates[b].append(steps * b / run(steps))
    for b in args.batch_sizes:
        rate = statistics.median(rates[b])
        print(json.dumps({"recipe": recipe.name, "model": model_kwargs, "batch_size": b,
                          "images_per_second": round(rate), "seconds_per_60k_epoch": round(60000 / rate, 1),
                          "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
