"""Train a recipe with one known defect in the model: does its floor catch it? (not a test)

    .venv/bin/python benchmarks/broken_model.py --break no-position -- \\
        --recipe mnist-cpu --data-root ../shared/data/mnist --no-progress

Week 05 asserts a floor under each CPU recipe (``Recipe.floor``). The floor must hold on
a machine half as fast, and still fail a broken model (issue 18). This trains the
recipe exactly as ``python -m vitlib.train`` does (everything after ``--`` goes to it),
with one defect put into the model it builds:

- ``no-position``: E_pos (eq. 1) is zero and frozen. The encoder sees a bag of patches,
  as if a student had left the position embeddings out.
- ``frozen-encoder``: the L encoder blocks keep their initial weights. Only the patch
  embedding, x_class, E_pos, the last LN and the head learn, as if an optimizer had
  been given the wrong parameters.

Prints ``python -m vitlib.train``'s JSON line, with ``"broken"`` added.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from typing import Callable

import torch.nn as nn

import vitlib.configs
import vitlib.train


def _no_position(model: nn.Module) -> None:
    model.pos_embedding.data.zero_()
    model.pos_embedding.requires_grad_(False)


def _frozen_encoder(model: nn.Module) -> None:
    model.encoder.requires_grad_(False)


BREAKS: dict[str, Callable[[nn.Module], None]] = {"no-position": _no_position, "frozen-encoder": _frozen_encoder}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--break", dest="defect", choices=sorted(BREAKS), required=True)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then python -m vitlib.train's arguments")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    create_vit = vitlib.configs.create_vit

    trainable: list[int] = []

    def broken_vit(*a, **kw):
        model = create_vit(*a, **kw)
        BREAKS[args.defect](model)
        trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
        return model

    vitlib.configs.create_vit = broken_vit  # what vitlib.train's command line builds its model with
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = vitlib.train.main(train_args)
    lines = stdout.getvalue().strip().splitlines()
    if code != 0 or not lines:
        sys.stdout.write(stdout.getvalue())
        return code
    summary = json.loads(lines[-1])
    summary["broken"] = args.defect
    summary["trainable_parameters"] = trainable[-1]  # ("parameters" counts the frozen ones too)
    for line in lines[:-1]:
        print(line)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
