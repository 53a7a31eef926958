"""Week 09's experiment outside the notebook: MAE pre-training, then fine-tuning from it and from scratch.

    .venv/bin/python benchmarks/mae_recipes.py --seed 2 --pretrain-batch 64 --augment none
    .venv/bin/python benchmarks/mae_recipes.py --seed 2 --pretrain-batch 256 --augment none,flip,basic

The same steps as solutions/09_masked_autoencoder.ipynb (the same models, seeds, labelled subset and
loops), with the pre-training batch and the fine-tuning augmentation as arguments, so that recipes can be
compared side by side: BENCHMARKS.md records what it printed. One pre-training, then both fine-tunings for
each augmentation listed; one JSON line with the test accuracies and the seconds. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import Subset

from vitlib import mae
from vitlib.configs import create_vit
from vitlib.data import eval_transform, load_dataset, train_transform
from vitlib.train import TrainConfig, evaluate, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--pretrain-batch", type=int, default=64)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=40, help="labelled images per class")
    parser.add_argument("--augment", default="none", help="fine-tuning augmentations to try, comma-separated")
    args = parser.parse_args()
    seed = args.seed

    train_data, test_data = load_dataset("fashion-mnist-small", "train"), load_dataset("fashion-mnist-small", "test")
    generator = torch.Generator().manual_seed(seed)  # the notebook's labelled subset
    labelled = torch.cat([(train_data.labels == c).nonzero().flatten()[
        torch.randperm(int((train_data.labels == c).sum()), generator=generator)[:args.per_class]] for c in range(10)])
    torch.manual_seed(seed)
    encoder = create_vit("vit_course_28", num_layers=4)
    autoencoder = mae.MaskedAutoencoder(encoder, mae.MAEConfig(mask_ratio=0.75, decoder_dim=64, decoder_layers=2))
    start = time.perf_counter()
    mae.pretrain_mae(autoencoder, train_data.images, eval_transform(train_data), epochs=args.pretrain_epochs,
                     batch_size=args.pretrain_batch, seed=seed, progress=False)
    result = {"args": vars(args), "pretrain_seconds": round(time.perf_counter() - start)}
    test_data.transform = eval_transform(test_data)
    config = TrainConfig(epochs=args.finetune_epochs, batch_size=64, lr=1e-3, warmup_epochs=2, seed=seed, device="cpu",
                         progress=False)
    labelled_set, test_quarter = Subset(train_data, labelled.tolist()), Subset(test_data, list(range(0, len(test_data), 4)))
    for augment in args.augment.split(","):
        train_data.transform = train_transform(train_data, augment)
        for start_from in ("scratch", "MAE"):
            torch.manual_seed(seed)
            model = create_vit("vit_course_28", num_layers=4)
            if start_from == "MAE":
                model.load_state_dict({k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")}, strict=False)
            start = time.perf_counter()
            train(model, labelled_set, test_quarter, config)
            result[f"{augment}_{start_from}"] = round(evaluate(model, test_data)["accuracy"], 4)
            result[f"{augment}_{start_from}_seconds"] = round(time.perf_counter() - start)
        result[f"{augment}_gain"] = round(result[f"{augment}_MAE"] - result[f"{augment}_scratch"], 4)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
