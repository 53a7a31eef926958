"""Week 12's search: how a linear probe on I-JEPA's (or MAE's) frozen features grows with pre-training time.

Pre-trains the 4-layer course ViT on the 8,000 bundled Fashion-MNIST images without labels, as
week 12 does, and every ``--every`` epochs probes the target encoder and the context encoder (for
MAE: its encoder) with week 12's linear probe on 5% of the labels (40 per class) and the 2,000
bundled test images. Epoch 0 is the random initialisation: the scratch start. One JSON line per
probe, the wall time of pre-training so far included (probing not counted).

    python benchmarks/jepa_probe.py --method ijepa --epochs 8 --batch-size 16 --lr 5e-4 --momentum 0.999
    python benchmarks/jepa_probe.py --method mae --epochs 8 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vitlib import jepa, mae
from vitlib.configs import create_vit
from vitlib.data import eval_transform, load_dataset


def _labelled(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Week 09's and 12's 5%: ``per_class`` random indices of each class."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([(labels == c).nonzero().flatten()[torch.randperm(int((labels == c).sum()), generator=generator)[:per_class]]
                      for c in range(int(labels.max()) + 1)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=["ijepa", "mae"], default="ijepa")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--every", type=int, default=1, help="probe every this many epochs (MAE: at the end only)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--momentum", type=float, default=0.996, help="I-JEPA: the EMA momentum's start (it rises to 1)")
    parser.add_argument("--predictor-layers", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4, help="the encoder's layers (week 12: 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=0, help="pre-train on the first this many images only (0: all 8,000)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_data, test_data = load_dataset("fashion-mnist-small", "train"), load_dataset("fashion-mnist-small", "test")
    labelled = _labelled(train_data.labels, 40, args.seed)
    normalise = eval_transform(train_data)
    images = train_data.images[: args.images or None]  # (n, 1, 28, 28) uint8: no labels
    torch.manual_seed(args.seed)
    encoder = create_vit("vit_course_28", num_layers=args.layers)
    clock = {"seconds": 0.0, "since": time.perf_counter()}

    def probe(epoch: int, encoders: dict) -> None:
        clock["seconds"] += time.perf_counter() - clock["since"]
        accuracy = {name: round(jepa.probe_accuracy(e, train_data.images[labelled], train_data.labels[labelled],
                                                    test_data.images, test_data.labels, normalise, seed=args.seed), 4)
                    for name, e in encoders.items()}
        if epoch % args.every == 0 or epoch == args.epochs:
            print(json.dumps({**vars(args), "epoch": epoch, "seconds": round(clock["seconds"], 1), "probe": accuracy}), flush=True)
        clock["since"] = time.perf_counter()

    if args.method == "ijepa":
        model = jepa.IJEPA(encoder, jepa.JEPAConfig(momentum=(args.momentum, 1.0), predictor_layers=args.predictor_layers))
        probe(0, {"target": model.target, "context": model.vit})
        jepa.pretrain_ijepa(model, images, normalise, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, progress=False, on_epoch=lambda e: probe(e, {"target": model.target, "context": model.vit}))
    else:
        autoencoder = mae.MaskedAutoencoder(encoder, mae.MAEConfig(mask_ratio=0.75, decoder_dim=64, decoder_layers=2))
        probe(0, {"encoder": encoder})
        mae.pretrain_mae(autoencoder, images, normalise, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         progress=False)
        probe(args.epochs, {"encoder": encoder})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
