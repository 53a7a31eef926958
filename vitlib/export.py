"""Export a trained ViT for serving: ONNX (run by onnxruntime) or TorchScript (issue 7, week 08).

    python -m vitlib.export runs/week05/last.pt --format onnx --out vit.onnx
    python -m vitlib.export runs/week05/last.pt --format torchscript --out vit.pt

The exported model takes normalised images (B, C, H, W), float32, any batch size, and
returns logits (B, num_classes): the same contract as ``ViT.forward``. Preprocessing
(scaling and normalising) stays outside, where the server does it the way training did.

Every export is verified before it is kept: the exported model is loaded back and run
on seeded images of two batch sizes, and its logits must match PyTorch's to within
``atol`` (1e-4 by default). The file is written atomically: to a temporary file beside
``--out``, verified, then renamed, so a failed export never leaves a broken file.
The last line on stdout is JSON: format, path, largest difference, parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from vitlib.checkpoint import CheckpointError, load_model
from vitlib.model import ViT

__all__ = ["FORMATS", "ExportError", "export", "export_onnx", "export_torchscript", "max_difference", "main"]

FORMATS = ("onnx", "torchscript")


class ExportError(RuntimeError):
    """The exported model does not reproduce PyTorch's logits, or could not be written."""


def _example(model: ViT, batch: int, seed: int = 0) -> torch.Tensor:
    c = model.config
    return torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(seed))


def export_onnx(model: ViT, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as one ONNX file (torch's dynamo exporter), with a dynamic batch axis."""
    model = model.eval().cpu()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress lines and deprecation notes
        torch.onnx.export(
            model, (_example(model, 2),), str(path), dynamo=True, input_names=["images"], output_names=["logits"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, verbose=False,
            external_data=False,  # one self-contained file (fine below protobuf's 2 GB: up to ViT-L)
        )
    return Path(path)


def export_torchscript(model: ViT, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as TorchScript (a trace; torch.jit is deprecated upstream in favour of torch.export)."""
    model = model.eval().cpu()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about einops' unpacking: the shapes are fixed by the config
        traced = torch.jit.trace(model, _example(model, 2))
    traced.save(str(path))
    return Path(path)


def _run(kind: str, path: Path, images: torch.Tensor) -> torch.Tensor:
    if kind == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return loaded(images)


def max_difference(model: ViT, kind: str, path: str | os.PathLike[str], batches: Sequence[int] = (1, 5)) -> float:
    """The largest |exported logits − PyTorch logits| over seeded images of the given batch sizes."""
    model = model.eval().cpu()
    worst = 0.0
    for i, batch in enumerate(batches):
        images = _example(model, batch, seed=100 + i)  # (batch, C, H, W)
        with torch.no_grad():
            expected = model(images)  # (batch, classes)
        got = _run(kind, Path(path), images)
        if got.shape != expected.shape:
            raise ExportError(f"the {kind} model returned shape {tuple(got.shape)} for a batch of {batch}, expected {tuple(expected.shape)}")
        worst = max(worst, (got - expected).abs().max().item())
    return worst


def export(model: ViT, kind: str, out: str | os.PathLike[str], atol: float = 1e-4) -> float:
    """Export, verify against PyTorch (≤ ``atol``), then move into place atomically. Returns the difference."""
    if kind not in FORMATS:
        raise ValueError(f"unknown format {kind!r}; use one of: {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        (export_onnx if kind == "onnx" else export_torchscript)(model, temporary)
        difference = max_difference(model, kind, temporary)
        if not difference <= atol:
            raise ExportError(f"the {kind} model's logits differ from PyTorch's by {difference:.2e} (> {atol:.0e}); nothing written")
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
        for extra in out.parent.glob(f"{temporary.name}*"):  # an exporter's side files, if any
            extra.unlink(missing_ok=True)
    return difference


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlib.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a vitlib checkpoint (last.pt) or the run folder holding it")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed difference from PyTorch's logits")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.checkpoint)
        difference = export(model, args.format, args.out, atol=args.atol)
    except (FileNotFoundError, CheckpointError, ExportError, ValueError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(json.dumps({"format": args.format, "out": str(args.out), "max_abs_difference": difference,
                      "parameters": model.num_parameters(), "config": model.config.__dict__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
