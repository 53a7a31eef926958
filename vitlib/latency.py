"""Inference latency of one ViT in three runtimes, side by side: PyTorch eager, TorchScript, onnxruntime (week 08).

    python -m vitlib.latency runs/week05/last.pt            # a trained checkpoint
    python -m vitlib.latency --config vit_b_16 --batch 1 8   # random weights of any size

Every runtime runs the same weights on the same seeded images. The rounds are
interleaved (each round times every runtime at every batch size once), so the drift of
a shared machine hits all of them alike; the table gives the median time per call and
the speed-up over PyTorch eager, the ratio of medians measured in the same run. The
runtimes use the same number of CPU threads (``torch.get_num_threads()``).

A benchmark, not a test: put the figures in BENCHMARKS.md with device, date and command.
The last line on stdout is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vitlib.model import ViT

__all__ = ["Row", "runtimes", "compare", "format_table", "main"]

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Row:
    runtime: str
    batch: int
    median_ms: float  # per call of `batch` images
    p90_ms: float
    images_per_second: float
    speedup: float  # PyTorch eager's median / this median, same batch, same run


def runtimes(model: ViT, onnx_path: str | Path | None = None, torchscript_path: str | Path | None = None,
             threads: int | None = None, ort_spinning: bool = False) -> dict[str, Runner]:
    """Callables images (B, C, H, W) float32 -> logits (B, K), on the CPU, eager first.

    ``ort_spinning``: leave onnxruntime's default of threads that busy-wait after each run
    (off here: on a small machine they take the cores from whatever runs next)."""
    threads = threads or torch.get_num_threads()
    model = model.eval().cpu()

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    runners: dict[str, Runner] = {"PyTorch eager": eager}
    if torchscript_path is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.load(str(torchscript_path)).eval()

        def torchscript(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return scripted(x)

        runners["TorchScript"] = torchscript
    if onnx_path is not None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: keep the notebook's stderr clean
        # onnxruntime's threads spin-wait after each run by default, which steals the cores from whatever
        # runs next (here: the other runtimes, interleaved; in a server: the web framework)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if ort_spinning else "0")
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def ort(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

        runners["onnxruntime"] = ort
    return runners


def compare(runners: dict[str, Runner], image_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64),
            rounds: int = 20, warmup: int = 2, progress: bool = True) -> list[Row]:
    """Time every runner at every batch size, interleaved over ``rounds``; one Row each (eager first)."""
    if rounds < 1 or not batch_sizes:
        raise ValueError("need at least one round and one batch size")
    images = {b: torch.randn(b, *image_shape, generator=torch.Generator().manual_seed(b)) for b in batch_sizes}
    for x in images.values():  # warm-up: allocations, thread pools, lazy initialisation
        for run in runners.values():
            for _ in range(warmup):
                run(x)
    times: dict[tuple[str, int], list[float]] = {(name, b): [] for name in runners for b in batch_sizes}
    for _ in tqdm(range(rounds), desc="latency rounds", disable=not progress):
        for b, x in images.items():
            for name, run in runners.items():
                start = time.perf_counter()
                run(x)
                times[name, b].append(time.perf_counter() - start)
    rows = []
    first = next(iter(runners))
    for b in batch_sizes:
        base = statistics.median(times[first, b])
        for name in runners:
            t = sorted(times[name, b])
            median = statistics.median(t)
            p90 = t[min(len(t) - 1, round(0.9 * (len(t) - 1)))]
            rows.append(Row(name, b, 1000 * median, 1000 * p90, b / median, base / median))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    lines = [f"{'runtime':15s} {'batch':>5s} {'median ms':>10s} {'p90 ms':>8s} {'images/s':>9s} {'vs eager':>9s}"]
    for r in rows:
        lines.append(f"{r.runtime:15s} {r.batch:5d} {r.median_ms:10.2f} {r.p90_ms:8.2f} "
                     f"{r.images_per_second:9.0f} {r.speedup:8.2f}×")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from vitlib.checkpoint import CheckpointError, load_model
    from vitlib.configs import create_vit
    from vitlib.export import ExportError, export

    parser = argparse.ArgumentParser(prog="python -m vitlib.latency", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="a vitlib checkpoint (else --config with random weights)")
    parser.add_argument("--config", default="vit_course_28", help="a vitlib config, when no checkpoint is given")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every runtime (default: torch's)")
    parser.add_argument("--ort-spinning", action="store_true", help="leave onnxruntime's threads spin-waiting (its default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.checkpoint:
            model, what = load_model(args.checkpoint), args.checkpoint
        else:
            torch.manual_seed(0)
            model, what = create_vit(args.config), f"{args.config} (random weights)"
        with tempfile.TemporaryDirectory() as folder:
            onnx_path, ts_path = Path(folder) / "model.onnx", Path(folder) / "model.pt"
            export(model, "onnx", onnx_path)
            export(model, "torchscript", ts_path)
            c = model.config
            runners = runtimes(model, onnx_path, ts_path, ort_spinning=args.ort_spinning)
            rows = compare(runners, (c.in_channels, c.image_size, c.image_size),
                           args.batch, rounds=args.rounds, progress=sys.stderr.isatty())
    except (FileNotFoundError, CheckpointError, ExportError, ValueError, KeyError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"{what}: {model.num_parameters():,} parameters, {torch.get_num_threads()} CPU threads, "
          f"{platform.processor() or platform.machine()}")
    print(format_table(rows))
    print(json.dumps({"model": what, "threads": torch.get_num_threads(), "ort_spinning": args.ort_spinning,
                      "rows": [asdict(r) for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
