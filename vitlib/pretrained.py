"""Trained ViTs for the weeks after training (06: inside the ViT, 07: transfer).

Where the model comes from, in order:

1. ``course_model()``: the checkpoint week 05 wrote (``runs/week05/last.pt`` next to the
   notebooks), if it holds a Fashion-MNIST model that reached ``min_accuracy``;
   otherwise a quick model trained on the bundled subset (recipe
   ``fashion-mnist-small``, about half a minute on 2 cores), kept in ``runs/quick/``
   so that the next notebook loads it instead of training again (an interrupted run
   resumes).
2. ``imagenet_vit_b_16()``: torchvision's ViT-B/16 with its ImageNet-1k weights, from
   torch's cache or, with ``download=True``, from the internet; converted into a
   ``vitlib.ViT`` and checked to give torchvision's logits exactly.
3. ``transfer_backbone(download)``: 2 where it works, else 1, saying which and why.

Every model comes as a :class:`TrainedModel`: the ViT, where it came from, and the
``preprocess`` that turns Fashion-MNIST's uint8 images (B, 1, 28, 28) into its input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vitlib.augment import BatchTransform
from vitlib.checkpoint import CheckpointError, load_checkpoint, load_model
from vitlib.data import MEAN_STD, load_dataset, train_transform
from vitlib.interop import from_torchvision
from vitlib.model import ViT

__all__ = [
    "FASHION_MNIST_NAMES",
    "PretrainedUnavailable",
    "TrainedModel",
    "course_model",
    "imagenet_vit_b_16",
    "transfer_backbone",
]

WEEK05_CHECKPOINT = Path("runs/week05/last.pt")
QUICK_DIR = Path("runs/quick")
FASHION_MNIST_NAMES = ("fashion-mnist", "fashion-mnist-small")
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class PretrainedUnavailable(RuntimeError):
    """Published weights are not on this machine and could not be downloaded."""


@dataclass
class TrainedModel:
    """A trained ViT and what a notebook needs to use it on Fashion-MNIST."""

    model: ViT
    source: str  # a sentence: where the weights came from
    dataset: str  # what it was trained on: "fashion-mnist", "fashion-mnist-small", "imagenet-1k"
    accuracy: float | None  # its test accuracy there, where known
    preprocess: Callable[[torch.Tensor], torch.Tensor]  # uint8 (B, 1, 28, 28) -> model input
    history: dict[str, Any] = field(default_factory=dict)  # its training history, where known
    checkpoint: Path | None = None


def _fashion_mnist_preprocess() -> BatchTransform:
    mean, std = MEAN_STD["fashion-mnist"]
    return BatchTransform(mean, std)  # (B, 1, 28, 28) uint8 -> normalised float


def _why_not(checkpoint: Path, min_accuracy: float) -> tuple[str | None, dict[str, Any] | None]:
    """(None, the checkpoint) if it is a usable Fashion-MNIST model, else (the reason, None)."""
    try:
        loaded = load_checkpoint(checkpoint)
    except FileNotFoundError:
        return f"no week-05 checkpoint at {checkpoint}", None
    except CheckpointError as error:
        return str(error), None
    config = loaded["model_config"]
    dataset = (loaded.get("extra") or {}).get("dataset")
    shape = (config.get("in_channels"), config.get("image_size"), config.get("num_classes"))
    if shape != (1, 28, 10) or (dataset is not None and dataset not in FASHION_MNIST_NAMES):
        return f"{checkpoint} is not a Fashion-MNIST model (dataset {dataset}, channels/size/classes {shape})", None
    accuracy = (loaded.get("history") or {}).get("test_accuracy") or [None]
    if accuracy[-1] is None or accuracy[-1] < min_accuracy:
        reached = "unknown" if accuracy[-1] is None else f"{accuracy[-1]:.1%}"
        return f"{checkpoint} reached {reached} test accuracy, below the {min_accuracy:.0%} this week needs", None
    return None, loaded


def course_model(
    checkpoint: str | Path = WEEK05_CHECKPOINT,
    quick_dir: str | Path = QUICK_DIR,
    min_accuracy: float = 0.80,
    recipe: str = "fashion-mnist-small",
    progress: bool = True,
) -> TrainedModel:
    """Week 05's trained ViT, or a quick one trained now on the bundled Fashion-MNIST subset.

    ``checkpoint`` is used if it holds a 28×28 grey, 10-class Fashion-MNIST ViT whose
    last test accuracy is at least ``min_accuracy`` (a run interrupted early, or the
    smoke budget's one-epoch model, is not). Otherwise ``recipe`` is trained into
    ``quick_dir`` (or loaded from there if a finished run is already there).
    """
    from vitlib.recipes import get_recipe  # (recipes and train are only needed here)
    from vitlib.train import train

    checkpoint, quick_dir = Path(checkpoint), Path(quick_dir)
    reason, loaded = _why_not(checkpoint, min_accuracy)
    if loaded is not None:
        accuracy = loaded["history"]["test_accuracy"][-1]
        dataset = (loaded.get("extra") or {}).get("dataset") or "fashion-mnist"
        print(f"using your week-05 model {checkpoint} ({accuracy:.1%} test accuracy on {dataset})")
        return TrainedModel(load_model(checkpoint), f"the week-05 checkpoint {checkpoint}", dataset,
                            accuracy, _fashion_mnist_preprocess(), loaded["history"], checkpoint)

    chosen = get_recipe(recipe)
    quick = quick_dir / "last.pt"
    _, finished = _why_not(quick, 0.0)
    if finished is not None and finished.get("epoch") == chosen.train.epochs and \
            (finished.get("extra") or {}).get("recipe") == chosen.name:
        accuracy = finished["history"]["test_accuracy"][-1]
        print(f"{reason}: using the quick model {quick} trained earlier ({accuracy:.1%} on {chosen.dataset})")
        return TrainedModel(load_model(quick), f"a quick model ({chosen.name}) in {quick}",
                            chosen.dataset, accuracy, _fashion_mnist_preprocess(), finished["history"], quick)

    print(f"{reason}: training a quick model instead (recipe {chosen.name!r}: {chosen.description})")
    train_data = load_dataset(chosen.dataset, "train")
    test_data = load_dataset(chosen.dataset, "test")
    train_data.transform = train_transform(train_data, chosen.augment)
    test_data.transform = _fashion_mnist_preprocess()
    torch.manual_seed(chosen.train.seed)
    from vitlib.configs import create_vit

    model = create_vit(chosen.model, **chosen.model_overrides)
    config = dataclasses.replace(chosen.train, progress=progress, device="cpu")
    history = train(model, train_data, test_data, config, out_dir=quick_dir, resume=True,
                    extra={"dataset": chosen.dataset, "recipe": chosen.name})
    accuracy = history["test_accuracy"][-1]
    print(f"quick model: {accuracy:.1%} test accuracy on {chosen.dataset}, saved to {quick}")
    return TrainedModel(model.cpu().eval(), f"a quick model ({chosen.name}) in {quick}", chosen.dataset,
                        accuracy, _fashion_mnist_preprocess(), history, quick)


class _ImageNetPreprocess:
    """Fashion-MNIST uint8 (B, 1, 28, 28) -> ImageNet input (B, 3, 224, 224): bilinear
    resize, grey copied into R, G and B, ImageNet's mean and std."""

    def __init__(self, size: int = 224) -> None:
        self.size = size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(255)  # (B, 1, 28, 28) in [0, 1]
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)  # (B, 1, 224, 224)
        x = x.expand(-1, 3, -1, -1)  # (B, 3, 224, 224)
        mean = torch.tensor(IMAGENET_MEAN_STD[0]).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_MEAN_STD[1]).view(1, 3, 1, 1)
        return (x - mean) / std


def imagenet_vit_b_16(download: bool = False) -> TrainedModel:
    """torchvision's ViT-B/16 (ImageNet-1k, 81.1% top-1) as a ``vitlib.ViT``, checked exact.

    The weights (330 MB) come from torch's cache (``torch.hub.get_dir()/checkpoints``),
    or are downloaded there with ``download=True``. Raises PretrainedUnavailable with the
    reason when neither works. The conversion is checked: on two seeded images the
    logits equal torchvision's to within 1e-4.
    """
    import torchvision

    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file() and not download:
        raise PretrainedUnavailable(f"ImageNet weights of ViT-B/16 not in torch's cache ({cached}) and download=False")
    try:
        theirs = torchvision.models.vit_b_16(weights=weights, progress=False).eval()  # looked up late: tests replace it
    except Exception as error:  # no network, a truncated file, ...
        raise PretrainedUnavailable(f"could not load ViT-B/16's ImageNet weights: {type(error).__name__}: {error}") from error
    model = from_torchvision(theirs)
    size = model.config.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (model(images) - theirs(images)).abs().max().item()
    if difference > 1e-4:
        raise PretrainedUnavailable(f"converted ViT-B/16 differs from torchvision's by {difference:.2e} (> 1e-4)")
    accuracy = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    print(f"using torchvision's ViT-B/16 with ImageNet-1k weights ({cached.name}); "
          f"converted to vitlib, logits equal to within {difference:.1e}")
    return TrainedModel(model, "torchvision's ViT-B/16, ImageNet-1k weights", "imagenet-1k",
                        None if accuracy is None else accuracy / 100, _ImageNetPreprocess(size))


def transfer_backbone(download: bool = False, **course_options: Any) -> TrainedModel:
    """ImageNet-pretrained ViT-B/16 where its weights are at hand, else :func:`course_model`."""
    try:
        return imagenet_vit_b_16(download=download)
    except PretrainedUnavailable as error:
        print(f"{error}: falling back to the course's Fashion-MNIST model")
    return course_model(**course_options)
