"""Week 07: transfer a trained ViT to a new task, and notice what it was never taught.

The paper's recipe (Dosovitskiy et al. 2020, Section 3.2, "Fine-tuning and higher
resolution"): remove the pre-trained head, attach a zero-initialised D × K layer,
train on the downstream task. Two ways to do it, compared in the notebook:

- **linear probe**: the backbone is frozen, only the new head learns (the paper's
  "few-shot linear" evaluation, Section 4.1, is a closed-form version of it). Since
  nothing below the head changes, the features are computed once and the head is
  trained on them: :func:`extract_features`, :func:`prepare_linear_probe`,
  :func:`train_linear_probe`;
- **full fine-tuning**: every weight learns (:func:`prepare_fine_tuning`,
  :func:`fine_tune`). Kumar et al. 2022 ("Fine-Tuning can Distort Pretrained Features
  and Underperform Out-of-Distribution") explain why it can do worse than a probe away
  from the training distribution.

The new task is *open-set* (Scheirer et al. 2013): two known Fashion-MNIST classes,
and images of classes the model never saw, which it should flag as unknown rather
than force into a known class. Two detectors:

(a) the **maximum softmax probability** (MSP) of a K-class model, thresholded
    (Hendrycks & Gimpel 2017, "A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples"): :func:`max_softmax_probability`;
(b) an extra **"other" class** trained on images of some held-out classes (a
    "background class", Dhamija et al. 2018; Outlier Exposure, Hendrycks et al. 2019,
    trains on outliers too), scored by 1 − p(other): :func:`other_class_score`, with
    the labels of :func:`open_set_labels`. It is tested on the *other* held-out
    classes only: never on classes it trained on.

Both give a score per image, higher meaning "known". The **AUROC** (:func:`auroc`) is
the probability that a random known image scores higher than a random unknown one
(ties count ½): 1 is perfect, 0.5 is chance, and no threshold has to be chosen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vitlib.augment import BatchTransform
from vitlib.data import ImageDataset
from vitlib.model import ViT
from vitlib.train import TrainConfig, lr_at, make_optimizer, train

__all__ = [
    "OpenSetSplit",
    "auroc",
    "extract_features",
    "fine_tune",
    "max_softmax_probability",
    "open_set_labels",
    "other_class_score",
    "predict_logits",
    "prepare_fine_tuning",
    "prepare_linear_probe",
    "roc_curve",
    "select_images",
    "train_linear_probe",
]


# -----------------------------------------------------------------------------
# the open-set task
# -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OpenSetSplit:
    """Which classes are known, which held-out classes train the "other" class, which are never seen.

    ``known`` and ``other`` are original class indices; every class in neither is
    ``unseen``: used only at test time, by both detectors alike.
    """

    known: tuple[int, ...]
    other: tuple[int, ...]
    num_classes: int = 10

    def __post_init__(self) -> None:
        known, other = tuple(int(c) for c in self.known), tuple(int(c) for c in self.other)
        object.__setattr__(self, "known", known)
        object.__setattr__(self, "other", other)
        every = known + other
        if not known:
            raise ValueError("OpenSetSplit: at least one known class")
        if len(set(every)) != len(every):
            raise ValueError(f"OpenSetSplit: known {known} and other {other} must be distinct classes")
        if any(not 0 <= c < self.num_classes for c in every):
            raise ValueError(f"OpenSetSplit: classes must lie in 0..{self.num_classes - 1}, got {every}")
        if not self.unseen:
            raise ValueError("OpenSetSplit: leave at least one class unseen, to test on")

    @property
    def unseen(self) -> tuple[int, ...]:
        """The classes no model trains on: the unknowns of the test."""
        return tuple(c for c in range(self.num_classes) if c not in self.known and c not in self.other)


def open_set_labels(labels: torch.Tensor, known: Sequence[int], other: Sequence[int]) -> torch.Tensor:
    """Original labels (N,) -> the open-set task's labels (N,), int64.

    The i-th known class becomes i (0..K-1), every class in ``other`` becomes K (the
    "other" class), every remaining class -1 (unseen: no model may train on it).
    """
    new = torch.full_like(labels, -1, dtype=torch.long)  # (N,) unseen unless said otherwise
    for index, c in enumerate(known):
        new[labels == c] = index
    for c in other:
        new[labels == c] = len(known)
    return new


def select_images(
    labels: torch.Tensor,
    classes: Sequence[int],
    per_class: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Indices (M,) of images whose label is in ``classes``, at most ``per_class`` of each, drawn with ``seed``.

    ``per_class=None`` keeps every image. The indices are sorted (the data's order).
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        index = torch.nonzero(labels == c).flatten()  # (n_c,)
        if per_class is not None and per_class < len(index):
            index = index[torch.randperm(len(index), generator=generator)[:per_class]]  # (per_class,)
        chosen.append(index)
    if not chosen:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(chosen).sort().values  # (M,)


# -----------------------------------------------------------------------------
# scores and their evaluation
# -----------------------------------------------------------------------------


def max_softmax_probability(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, K) -> the maximum softmax probability (B,): how sure the model is of its answer.

    Hendrycks & Gimpel 2017: known images tend to get higher MSP than images of
    classes the model never saw, so a threshold on it flags unknowns. Always in
    [1/K, 1]: a classifier has no way to say "none of these".
    """
    return logits.softmax(dim=-1).max(dim=-1).values  # (B,)


def other_class_score(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, K+1) of a model whose last class is "other" -> 1 − p(other) (B,): high means known."""
    return 1.0 - logits.softmax(dim=-1)[:, -1]  # (B,)


def auroc(scores_known: torch.Tensor, scores_unknown: torch.Tensor) -> float:
    """Area under the ROC curve of "known" against "unknown", higher scores meaning known.

    Equals the probability that a random known image scores higher than a random
    unknown one, ties counting ½: the Mann-Whitney U statistic divided by n_k · n_u
    (Hanley & McNeil 1982). Computed from ranks: sort every score, give tied scores
    the mean of their ranks, then U = (sum of the known ranks) − n_k (n_k + 1) / 2.
    O(n log n) time and O(n) memory, where comparing all pairs would need n_k · n_u.
    """
    known = scores_known.detach().flatten().double()  # (n_k,)
    unknown = scores_unknown.detach().flatten().double()  # (n_u,)
    n_k, n_u = known.numel(), unknown.numel()
    if n_k == 0 or n_u == 0:
        raise ValueError(f"auroc needs scores of both kinds, got {n_k} known and {n_u} unknown")
    if not (torch.isfinite(known).all() and torch.isfinite(unknown).all()):
        raise ValueError("auroc: the scores must be finite (no NaN or inf)")
    _, inverse, counts = torch.unique(torch.cat([known, unknown]), return_inverse=True, return_counts=True)
    below = torch.cumsum(counts, 0) - counts  # (U,) how many scores are smaller than each distinct value
    mean_rank = below.double() + (counts.double() + 1) / 2  # (U,) 1-based ranks, ties averaged
    rank_sum = mean_rank[inverse[:n_k]].sum().item()  # over the known scores
    return (rank_sum - n_k * (n_k + 1) / 2) / (n_k * n_u)


def roc_curve(scores_known: torch.Tensor, scores_unknown: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ROC curve as (false positive rate, true positive rate), each (T+1,), from (0, 0) to (1, 1).

    At threshold t an image is called known when its score is ≥ t. The true positive
    rate is the share of known images called known, the false positive rate the share
    of unknown images called known; one point per distinct score, highest first.
    The trapezoid area under it equals :func:`auroc`.
    """
    known = scores_known.detach().flatten().double()  # (n_k,)
    unknown = scores_unknown.detach().flatten().double()  # (n_u,)
    thresholds = torch.unique(torch.cat([known, unknown])).flip(0)  # (T,) highest first

    def share_at_least(scores: torch.Tensor) -> torch.Tensor:  # (T,): the share of scores >= each threshold
        below = torch.searchsorted(scores.sort().values, thresholds, right=False)  # (T,) how many are < t
        return 1.0 - below.double() / len(scores)

    tpr, fpr = share_at_least(known), share_at_least(unknown)  # (T,), (T,)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fpr]), torch.cat([zero, tpr])


# -----------------------------------------------------------------------------
# models: a new head, frozen or not
# -----------------------------------------------------------------------------


def _new_head(model: ViT, num_classes: int) -> None:
    """Section 3.2: a zero-initialised D × K head in place of the old one; the config says K."""
    device = next(model.parameters()).device
    model.head = nn.Linear(model.config.hidden_dim, num_classes, device=device)  # D -> K
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    model.config = dataclasses.replace(model.config, num_classes=num_classes)


def prepare_linear_probe(model: ViT, num_classes: int) -> ViT:
    """Freeze every weight of ``model``, then give it a new zero-initialised, trainable head of ``num_classes``.

    Changes ``model`` in place and returns it. Only the head's weight (K, D) and bias
    (K,) then require gradients: training updates nothing else.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    _new_head(model, num_classes)  # a new nn.Linear: its parameters require gradients
    return model


def prepare_fine_tuning(model: ViT, num_classes: int) -> ViT:
    """A new zero-initialised head of ``num_classes``, and every weight trainable (in place; returns ``model``)."""
    _new_head(model, num_classes)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


# -----------------------------------------------------------------------------
# features, probes and fine-tuning
# -----------------------------------------------------------------------------


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def extract_features(
    model: ViT,
    images: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "features",
) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> the class-token features y = LN(z_L^0) (N, D), float32 on the CPU.

    In eval mode, without gradients, ``batch_size`` images at a time (a tqdm bar
    counts images); ``preprocess`` turns a uint8 batch into the model's input.
    ``device`` defaults to the model's. The model is left in eval mode.
    """
    device = _device_of(model) if device is None else torch.device(device)
    model.to(device).eval()
    features = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False, mininterval=1.0) as bar:
        for start in range(0, len(images), batch_size):
            batch = preprocess(images[start:start + batch_size]).to(device)  # (b, C', H', W')
            features.append(model.forward_features(batch).float().cpu())  # (b, D)
            bar.update(len(batch))
    if not features:
        return torch.zeros(0, model.config.hidden_dim)
    return torch.cat(features)  # (N, D)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    inputs: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    batch_size: int = 512,
) -> torch.Tensor:
    """Logits (N, K), float32 on the CPU, of ``model`` on ``inputs`` (features, or uint8 images with ``preprocess``)."""
    device = _device_of(model)
    model.eval()
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]  # (b, ...)
        if preprocess is not None:
            batch = preprocess(batch)
        out.append(model(batch.to(device)).float().cpu())  # (b, K)
    return torch.cat(out) if out else torch.zeros(0, 0)


def train_linear_probe(
    head: nn.Linear,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    desc: str = "linear probe",
) -> dict[str, list[float]]:
    """Train a probe's head on precomputed features (N, D); returns {"epoch_loss": [...]} per epoch.

    The backbone is frozen and in eval mode, so its features never change: training
    the head on them, once computed, is the same as training the whole probe model, and
    an epoch costs a matrix product instead of a pass through the ViT. The recipe is
    :func:`vitlib.train.train`'s (AdamW without decay on biases, linear warm-up and
    cosine decay with :func:`~vitlib.train.lr_at`, cross-entropy with
    ``config.label_smoothing``, shuffling seeded by ``config.seed``), but the loop
    walks over tensors in memory: a DataLoader would fetch the features one by one and
    spend far more time doing so than the head spends learning. On the CPU it runs on
    one thread: a (B, D) × (D, K) product is too small to share, and waiting for a
    second thread made it 40 times slower on a busy 2-core machine.
    """
    if len(features) != len(labels) or len(labels) == 0:
        raise ValueError(f"train_linear_probe: {len(features)} feature rows but {len(labels)} labels")
    if (labels < 0).any() or (labels >= head.out_features).any():
        raise ValueError(f"train_linear_probe: labels must lie in 0..{head.out_features - 1} (unseen images, -1, are not for training)")
    device = next(head.parameters()).device
    x, y = features.float().to(device), labels.long().to(device)  # (N, D), (N,)
    optimizer = make_optimizer(head, config)
    steps_per_epoch = math.ceil(len(y) / config.batch_size)
    total, warmup = config.epochs * steps_per_epoch, round(config.warmup_epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    history: dict[str, list[float]] = {"epoch_loss": []}
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        _probe_epochs(head, x, y, optimizer, config, total, warmup, generator, history, desc)
    finally:
        torch.set_num_threads(threads)
    head.eval()
    return history


def _probe_epochs(
    head: nn.Linear,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    total: int,
    warmup: int,
    generator: torch.Generator,
    history: dict[str, list[float]],
    desc: str,
) -> None:
    """The loop of :func:`train_linear_probe`."""
    device = x.device
    head.train()
    step = 0
    for _ in tqdm(range(config.epochs), desc=desc, disable=not config.progress, leave=False, mininterval=1.0):
        order = torch.randperm(len(y), generator=generator).to(device)  # (N,)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, len(y), config.batch_size):
            batch = order[start:start + config.batch_size]  # (B,)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, config.lr, config.min_lr)
            loss = F.cross_entropy(head(x[batch]), y[batch], label_smoothing=config.label_smoothing)  # head: (B, D) -> (B, K)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
            optimizer.step()
            loss_sum += loss.detach() * len(batch)
            step += 1
        history["epoch_loss"].append(loss_sum.item() / len(y))


class _PreprocessEach(Dataset):
    """uint8 images (N, C, H, W) and labels (N,), preprocessed one image at a time (for any ``preprocess``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor]):
        self.images, self.labels, self.preprocess = images, labels, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.preprocess(self.images[index:index + 1])[0], int(self.labels[index])  # (C', H', W')


def _as_dataset(images: torch.Tensor, labels: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor]) -> Dataset:
    """The fastest dataset :func:`vitlib.train.train` can read: in memory when ``preprocess`` is a BatchTransform."""
    if isinstance(preprocess, BatchTransform):
        num_classes = int(labels.max().item()) + 1 if len(labels) else 1
        return ImageDataset(images, labels, [str(c) for c in range(num_classes)], name="open-set",
                            mean=preprocess.mean, std=preprocess.std, transform=preprocess)
    return _PreprocessEach(images, labels, preprocess)


def fine_tune(
    model: ViT,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    config: TrainConfig,
) -> dict:
    """Fine-tune every weight of ``model`` (see :func:`prepare_fine_tuning`) on uint8 images with :func:`vitlib.train.train`.

    ``preprocess`` turns a uint8 batch into the model's input (the backbone's own, so
    that the images look as they did in pre-training). Returns the history; the
    validation set is only reported, never used to choose anything.
    """
    train_data = _as_dataset(train_images, train_labels.long(), preprocess)
    val_data = _as_dataset(val_images, val_labels.long(), preprocess)
    return train(model, train_data, val_data, config)

