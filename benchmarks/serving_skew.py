"""Training–serving skew of vitlib.serve's preprocessing: does an upload reach the model as its training image did?

    python benchmarks/serving_skew.py CHECKPOINT [--images 2000]

Each bundled Fashion-MNIST test image is sent through `Predictor.image_tensor` in two forms:
as the PNG it is, and as a user would send it (dark on a white page, 150×90, smaller and off
centre, a JPEG). For each form and each variant of the preprocessing (vitlib's; without the
crop to the object; with the odd padding row below instead of on top), the table gives how
often the model's class on the served input equals its class on the original image, the
accuracy, and how many served inputs equal the original pixel for pixel.

A benchmark, not a test: put the figures in BENCHMARKS.md with the device, date and command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from unittest import mock

import torch
from PIL import Image

import vitlib.serve as serve
from vitlib.data import load_dataset


def as_png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def as_drawing_on_a_page(image: torch.Tensor) -> bytes:
    page = Image.new("L", (150, 90), 255)
    page.paste(Image.fromarray((255 - image).numpy()).resize((60, 60)), (70, 20))
    buffer = io.BytesIO()
    page.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def pad_below(image: torch.Tensor, fill: int) -> torch.Tensor:
    C, H, W = image.shape
    side = max(H, W)
    top, left = (side - H) // 2, (side - W) // 2
    square = torch.full((C, side, side), fill, dtype=image.dtype)
    square[:, top : top + H, left : left + W] = image
    return square


VARIANTS = {
    "vitlib (crop, pad, resize)": {},
    "no crop to the object": {"OBJECT_MARGIN": {}},
    "odd padding row below": {"pad_to_square": pad_below},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    predictor = serve.Predictor.from_checkpoint(args.checkpoint, "cpu")
    test = load_dataset("fashion-mnist-small", "test")
    images, labels = test.images[: args.images], test.labels[: args.images]
    with torch.no_grad():
        direct = predictor.model(predictor.transform(images)).argmax(dim=-1)  # (N,)
    print(f"{args.checkpoint}: {len(images)} test images, accuracy on the originals {(direct == labels).float().mean():.2%}")
    print(f"{'upload':22s} {'preprocessing':28s} {'same class':>10s} {'accuracy':>9s} {'pixel-exact':>12s}")
    rows = []
    for form, make in [("PNG as it is", as_png), ("JPEG drawing on a page", as_drawing_on_a_page)]:
        uploads = [make(images[i, 0]) for i in range(len(images))]
        for variant, patches in VARIANTS.items():
            with mock.patch.multiple(serve, **patches) if patches else contextlib.nullcontext():
                served = torch.cat([predictor.image_tensor(u) for u in uploads])  # (N, 1, 28, 28)
            with torch.no_grad():
                classes = predictor.model(predictor.transform(served)).argmax(dim=-1)
            row = {"upload": form, "preprocessing": variant,
                   "same_class": (classes == direct).float().mean().item(),
                   "accuracy": (classes == labels).float().mean().item(),
                   "pixel_exact": (served == images).flatten(1).all(dim=1).float().mean().item()}
            rows.append(row)
            print(f"{form:22s} {variant:28s} {row['same_class']:10.1%} {row['accuracy']:9.1%} {row['pixel_exact']:12.1%}")
    print(json.dumps({"checkpoint": args.checkpoint, "images": len(images), "rows": rows}))


if __name__ == "__main__":
    main()
