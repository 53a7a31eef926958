"""Speed benchmark: vitlib's ViT against timm's, same configuration, same process, interleaved.

    python -m vitlib.bench                       # CPU float32: vit_s_16 at 224 and the course's 28×28 ViT
    python -m vitlib.bench --device cuda --dtype bf16 --compile

Both models get identical weights (converted with `vitlib.interop`), so they do the same
arithmetic. Each round times vitlib then timm (training step, then inference) after a
warm-up; the ratio vitlib/timm of images per second is the median over rounds, which
cancels most of the drift of a shared machine. Model FLOPs utilisation is reported on
CUDA (forward ≈ 2 × parameters × tokens FLOPs per image, training ≈ 3 × forward).

A benchmark, not a test: run it by hand and put the figures in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitlib.configs import get_config
from vitlib.interop import to_timm_state_dict
from vitlib.model import ViT

__all__ = ["CASES", "run", "main"]


@dataclass(frozen=True)
class Case:
    name: str
    vitlib_config: str
    overrides: dict
    batch_size: int


CASES = {
    "vit_s_16": Case("vit_s_16 at 224", "vit_s_16", {}, 32),
    "course_28": Case("vit_course_28 (28×28, patch 4)", "vit_course_28", {}, 256),
}


def _timm_twin(model: ViT) -> torch.nn.Module:
    """The same network in timm, with the same weights."""
    import timm

    c = model.config
    twin = timm.create_model(
        "vit_base_patch16_224", pretrained=False, img_size=c.image_size, patch_size=c.patch_size,
        in_chans=c.in_channels, num_classes=c.num_classes, embed_dim=c.hidden_dim, depth=c.num_layers,
        num_heads=c.num_heads, mlp_ratio=c.mlp_dim / c.hidden_dim, qkv_bias=c.qkv_bias,
    )  # fmt: skip
    twin.load_state_dict(to_timm_state_dict(model))
    return twin


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, iterations: int) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    _sync(device)
    return time.perf_counter() - start


def run(case: Case, device: str = "cpu", dtype: str = "fp32", compile: bool = False, rounds: int = 5, iterations: int = 5) -> dict:
    """Images per second of vitlib and timm (training step and inference) and their ratios."""
    dev = torch.device(device)
    torch.manual_seed(0)
    ours = ViT(get_config(case.vitlib_config, **case.overrides)).to(dev)
    theirs = _timm_twin(ours.cpu()).to(dev)
    ours.to(dev)
    c = ours.config
    x = torch.randn(case.batch_size, c.in_channels, c.image_size, c.image_size, device=dev)
    y = torch.randint(0, max(1, c.num_classes), (case.batch_size,), device=dev)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def steps(model):
        run_model = torch.compile(model) if compile else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step():
            model.train()
            with autocast:
                loss = F.cross_entropy(run_model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        @torch.no_grad()
        def infer():
            model.eval()
            with autocast:
                run_model(x)

        return train_step, infer

    fns = {"vitlib": steps(ours), "timm": steps(theirs)}
    for train_step, infer in fns.values():  # warm-up (and compilation)
        for _ in range(3):
            train_step()
            infer()
    speeds = {(lib, kind): [] for lib in fns for kind in ("train", "infer")}
    for _ in range(rounds):
        for lib, (train_step, infer) in fns.items():
            speeds[(lib, "train")].append(case.batch_size * iterations / _time(train_step, dev, iterations))
            speeds[(lib, "infer")].append(case.batch_size * iterations / _time(infer, dev, iterations))
    result = {"case": case.name, "device": str(dev), "dtype": dtype, "compile": compile, "batch_size": case.batch_size}
    for kind in ("train", "infer"):
        ratios = [a / b for a, b in zip(speeds[("vitlib", kind)], speeds[("timm", kind)])]
        result[f"{kind}_images_per_s_vitlib"] = round(statistics.median(speeds[("vitlib", kind)]), 1)
        result[f"{kind}_images_per_s_timm"] = round(statistics.median(speeds[("timm", kind)]), 1)
        result[f"{kind}_ratio_vitlib_over_timm"] = round(statistics.median(ratios), 3)
    if dev.type == "cuda":
        tokens = c.num_patches + 1
        forward_flops = 2 * ours.num_parameters() * tokens
        peak = 989e12 if dtype == "bf16" else 67e12  # H100 SXM dense bf16 / fp32 (vendor figures)
        result["mfu_train_vitlib"] = round(3 * forward_flops * result["train_images_per_s_vitlib"] / peak, 4)
        result["mfu_infer_vitlib"] = round(forward_flops * result["infer_images_per_s_vitlib"] / peak, 4)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlib.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=list(CASES), action="append", help="default: all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    for name in args.case or list(CASES):
        case = CASES[name]
        if args.batch_size:
            case = Case(case.name, case.vitlib_config, case.overrides, args.batch_size)
        print(json.dumps(run(case, args.device, args.dtype, args.compile, args.rounds, args.iterations)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
