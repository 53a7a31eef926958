"""Serve a trained ViT over HTTP: a JSON API and a web page to draw or upload an image (issue 7, week 08).

    python -m vitlib.serve runs/week05/last.pt [--host 127.0.0.1] [--port 8000]

- ``GET /``: the web page (plain HTML, CSS and JavaScript, no build step, works offline).
- ``GET /health``: ``{"status": "ok", ...}``.
- ``POST /predict``: an image file (multipart field ``file``, PNG, JPEG, GIF, BMP or WebP, at
  most 5 MB and 40 megapixels) → the top-k labels with probabilities, every class's
  probability, and the class token's attention rollout as a small grid for a heat-map, with
  the square of the upload it covers (``region``).

Preprocessing turns any reasonable image into what the model was trained on: grey or RGB as
the model needs; for dark-background datasets (MNIST, Fashion-MNIST) a light background (a
drawing on white) inverted; for datasets of cropped objects (the same two) cropped to the
object; the aspect ratio kept by padding to a square with the background colour; resized
to the model's size; then the training normalisation.
Bad input gets a 4xx answer with a message, and the server goes on serving.
Binds to 127.0.0.1 by default: put it behind a reverse proxy to expose it (see deploy/).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse
from PIL import Image, UnidentifiedImageError

from vitlib.augment import BatchTransform
from vitlib.checkpoint import load_checkpoint, load_model
from vitlib.data import CLASS_NAMES, MEAN_STD
from vitlib.model import ViT

__all__ = [
    "MAX_BYTES",
    "MAX_PIXELS",
    "BackgroundServer",
    "BadImage",
    "Predictor",
    "create_app",
    "crop_to_object",
    "free_port",
    "object_box",
    "main",
    "pad_to_square",
    "top_k_predictions",
    "validate_upload",
]

MAX_BYTES = 5 * 1024 * 1024  # 5 MB
MAX_PIXELS = 40_000_000  # width × height, checked before decoding (a small file can decode to gigabytes)
CONTENT_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp")
DARK_BACKGROUND = ("mnist", "fashion-mnist", "fashion-mnist-small")
# Datasets of single centred objects, made by cropping each object to its bounding box and scaling
# its longer side to fill the frame (Fashion-MNIST) or a 20×20 box in the 28×28 frame (MNIST):
# an upload is cropped the same way, so a small drawing on a large canvas is not a tiny garment.
# The value is the margin on each side, as a fraction of the object's longer side.
OBJECT_MARGIN = {"fashion-mnist": 0.0, "fashion-mnist-small": 0.0, "mnist": 0.2}
PAGE = Path(__file__).with_name("web") / "index.html"


class BadImage(ValueError):
    """The upload is not an image the server can use; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def validate_upload(data: bytes, content_type: str | None, max_bytes: int = MAX_BYTES) -> None:
    """Refuse what cannot be an image before decoding anything (week 08, exercise 1).

    Raises ``BadImage`` with the HTTP status that names the problem: 413 (Payload Too
    Large) over ``max_bytes`` (exactly ``max_bytes`` is allowed), 400 (Bad Request) for an
    empty upload, 415 (Unsupported Media Type) unless the content type, lower-cased and
    without parameters (``"image/PNG; x=1"`` → ``"image/png"``), is one of ``CONTENT_TYPES``.
    """
    if len(data) > max_bytes:
        raise BadImage(413, f"the upload is {len(data):,} bytes; the limit is {max_bytes:,}")
    if len(data) == 0:
        raise BadImage(400, "the upload is empty: send an image file")
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in CONTENT_TYPES:
        raise BadImage(415, f"unsupported content type {content_type!r}; send one of: {', '.join(CONTENT_TYPES)}")


def pad_to_square(image: torch.Tensor, fill: int) -> torch.Tensor:
    """(C, H, W) -> (C, S, S), S = max(H, W): the image centred on a square of ``fill`` (week 08, exercise 2).

    Padding, not stretching, keeps the aspect ratio, as every training image had it. The
    offsets are ``(S - H + 1) // 2`` from the top and ``(S - W + 1) // 2`` from the left: an
    odd extra row or column goes above or left, as in Fashion-MNIST (in the bundled test
    images, 1,015 of the 1,037 unequal pairs of margins, top/bottom or left/right, have the
    larger one at the top or left).
    """
    C, H, W = image.shape
    side = max(H, W)
    top, left = (side - H + 1) // 2, (side - W + 1) // 2
    square = torch.full((C, side, side), fill, dtype=image.dtype)  # (C, S, S)
    square[:, top : top + H, left : left + W] = image
    return square


def object_box(image: torch.Tensor, fill: int, threshold: int = 8) -> tuple[int, int, int, int]:
    """(C, H, W) -> (top, left, height, width) of the pixels more than ``threshold`` away from the
    background value ``fill``; the whole image if there are none (a blank upload stays blank)."""
    mask = ((image.float() - fill).abs() > threshold).any(dim=0)  # (H, W)
    rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
    if len(rows) == 0:
        return 0, 0, image.shape[-2], image.shape[-1]
    top, left = int(rows[0]), int(cols[0])
    return top, left, int(rows[-1]) + 1 - top, int(cols[-1]) + 1 - left


def crop_to_object(image: torch.Tensor, fill: int, threshold: int = 8) -> torch.Tensor:
    """(C, H, W) -> (C, h, w): the image cut to ``object_box``."""
    top, left, h, w = object_box(image, fill, threshold)
    return image[:, top : top + h, left : left + w]


def top_k_predictions(logits: torch.Tensor, classes: Sequence[str], k: int) -> list[dict]:
    """Logits (K,) -> the k most probable classes, most probable first (week 08, exercise 3).

    Each is ``{"label": name, "probability": p}`` with p a Python float from the softmax
    over the K classes; k larger than K gives all K.
    """
    probabilities = logits.softmax(dim=-1)  # (K,)
    top = probabilities.topk(min(k, len(classes)))
    return [{"label": classes[i], "probability": p} for p, i in zip(top.values.tolist(), top.indices.tolist())]


@dataclass
class Predictor:
    """A model, its class names and its preprocessing: bytes in, prediction out."""

    model: ViT
    classes: list[str]
    dataset: str
    transform: BatchTransform
    device: str = "cpu"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Predictor:
        """The model of a vitlib checkpoint, on ``device`` ("auto": the GPU where there is one)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU here: use --device cpu")
        checkpoint = load_checkpoint(path)
        model = load_model(path).eval().to(device)
        dataset = (checkpoint.get("extra") or {}).get("dataset") or "fashion-mnist"
        classes = CLASS_NAMES.get(dataset) or [str(i) for i in range(model.config.num_classes)]
        mean, std = MEAN_STD.get(dataset, ((0.5,) * model.config.in_channels, (0.5,) * model.config.in_channels))
        return cls(model, list(classes), dataset, BatchTransform(mean, std), device)

    def image_tensor(self, data: bytes) -> torch.Tensor:
        """Image file bytes (passed ``validate_upload``) -> uint8 (1, C, H, W) as the training data looks."""
        return self.prepare(data)[0]

    def prepare(self, data: bytes) -> tuple[torch.Tensor, dict]:
        """Image file bytes -> the model's uint8 input (1, C, H, W), and the square of the upload it shows.

        The region is ``{"left", "top", "size"}`` in the upload's pixels (it may reach past the
        image's edges, into the padding), and ``"width"``/``"height"`` of the upload: a client
        draws the rollout grid over that square, which is where the model looked.
        """
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadImage(413, f"the image is {width}×{height} pixels; the limit is {MAX_PIXELS:,} pixels")
            image.load()
        except BadImage:
            raise
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as error:
            raise BadImage(400, f"could not read an image from the upload ({type(error).__name__})") from None
        c = self.model.config
        if image.mode in ("RGBA", "LA", "P"):  # transparent drawing: flatten on white
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("L" if c.in_channels == 1 else "RGB")
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        x = x.view(image.size[1], image.size[0], -1).permute(2, 0, 1)  # (C, H, W)
        if self.dataset in DARK_BACKGROUND:
            border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=-1).float().mean()
            if border > 127:  # dark strokes on a light page: the data set is light on dark
                x = 255 - x
        fill = int(torch.cat([x[:, 0], x[:, -1]], dim=-1).float().median().item())  # the background
        top = left = 0
        if self.dataset in OBJECT_MARGIN:
            top, left, h, w = object_box(x, fill)
            x = x[:, top : top + h, left : left + w]  # (C, h, w): the object's bounding box
        square = pad_to_square(x, fill)  # (C, S, S)
        side = square.shape[-1]
        top, left = top - (side - x.shape[-2] + 1) // 2, left - (side - x.shape[-1] + 1) // 2  # the square's corner
        margin = round(OBJECT_MARGIN.get(self.dataset, 0.0) * side)
        if margin:
            square = torch.nn.functional.pad(square, (margin,) * 4, value=fill)  # (C, S + 2m, S + 2m)
            top, left, side = top - margin, left - margin, side + 2 * margin
        resized = torch.nn.functional.interpolate(square[None].float(), size=(c.image_size, c.image_size),
                                                  mode="area" if side > c.image_size else "bilinear")
        region = {"left": left, "top": top, "size": side, "width": width, "height": height}
        return resized.round().clamp(0, 255).to(torch.uint8), region  # (1, C, H, W)

    @torch.no_grad()
    def predict(self, data: bytes, content_type: str | None = "image/png", top_k: int = 3) -> dict:
        """Image file bytes -> top-k, every probability, and the rollout grid; ``BadImage`` on bad input."""
        from vitlib.viz import attention_rollout, class_token_grid

        validate_upload(data, content_type)
        image, region = self.prepare(data)  # uint8 (1, C, H, W), and where it is in the upload
        images = self.transform(image).to(self.device)  # (1, C, H, W), normalised
        logits, maps = self.model.forward_with_attention(images)  # (1, K), L × (1, h, N+1, N+1)
        logits, maps = logits.float().cpu(), [m.float().cpu() for m in maps]
        probabilities = logits.softmax(dim=-1)[0]  # (K,)
        grid = class_token_grid(attention_rollout(maps)[:, 0])[0]  # (H/P, W/P)
        grid = grid / grid.max().clamp_min(1e-12)
        return {
            "top_k": top_k_predictions(logits[0], self.classes, top_k),
            "probabilities": {name: p for name, p in zip(self.classes, probabilities.tolist())},
            "rollout": [[round(v, 4) for v in row] for row in grid.tolist()],
            "region": region,  # the rollout covers this square of the upload
        }


def create_app(predictor: Predictor):
    """The FastAPI app around ``predictor``."""
    app = FastAPI(title="vitlib ViT", description="A Vision Transformer from the ViT course")

    @app.get("/health")
    def health() -> dict:
        c = predictor.model.config
        return {"status": "ok", "dataset": predictor.dataset, "classes": predictor.classes,
                "image_size": c.image_size, "in_channels": c.in_channels, "device": predictor.device}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.post("/predict")
    async def predict(request: Request, file: UploadFile = File(...)) -> dict:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BYTES + 64 * 1024:
            raise HTTPException(413, f"the upload is larger than the {MAX_BYTES:,}-byte limit (5 MB)")
        data = await file.read(MAX_BYTES + 1)  # one byte more than allowed is enough to refuse it
        try:
            return predictor.predict(data, file.content_type)
        except BadImage as error:
            raise HTTPException(error.status, str(error)) from None

    return app


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody uses now (for a server started next)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class BackgroundServer:
    """``python -m vitlib.serve CHECKPOINT`` in a child process, for a notebook or a test.

        server = BackgroundServer("runs/week05/last.pt")  # waits until /health answers
        httpx.post(f"{server.url}/predict", files={"file": ("x.png", png_bytes, "image/png")})
        server.stop()                                      # or: with BackgroundServer(...) as server:

    It listens on 127.0.0.1 and a free port, writes the server's log to ``log`` (a file,
    so the notebook's output stays clean), and is stopped when Python exits if nobody
    stopped it before.
    """

    def __init__(self, checkpoint: str | Path, port: int | None = None, log: str | Path | None = None,
                 timeout: float = 60.0) -> None:
        import atexit
        import subprocess
        import tempfile
        import time

        import httpx

        port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{port}"
        if log is None:
            handle, log = tempfile.mkstemp(prefix="vitlib-serve-", suffix=".log")
            os.close(handle)
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vitlib.serve", str(checkpoint), "--port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server stopped with exit code {self.process.returncode}:\n{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not answer {self.url}/health within {timeout:.0f} s:\n{self._log_tail()}")
            time.sleep(0.2)

    def _log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the server (politely, then for good after 10 s); harmless if it has stopped."""
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlib.serve", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a vitlib checkpoint (last.pt) or the run folder holding it")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="auto (the GPU where there is one), cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(create_app(predictor), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
