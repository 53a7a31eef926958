"""I-JEPA (Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding
Predictive Architecture", arXiv:2301.08243): predicting representations, not pixels.

Week 12. From one image, a large *context block* and a few *target blocks* of patches are drawn
on the patch grid, and the targets are removed from the context (Section 3, Figure 4). The
*context encoder* (an ordinary `vitlib.ViT`) sees the context patches only. A *target encoder*,
an exponential moving average (EMA) of the context encoder that gets no gradient, sees the whole
image; its outputs at the target patches, layer-normalised, are the targets. A narrow *predictor*
takes the encoded context plus one mask token per target patch (a shared learned vector plus that
patch's position embedding) and predicts the targets' representations. The loss is the squared L2
distance in representation space on the target patches only (Eq. 1). No pixel decoder, no
hand-made augmentation.

The pieces, each a week-12 exercise:
- `multi_block_mask`: the context block and the target blocks, targets removed from the context;
- `ema_update`: the target encoder's update, theta_bar <- m theta_bar + (1 - m) theta;
- `jepa_loss`: the layer-normalised targets at the target patches, and the L2 loss against the predictions.

Where this differs from the paper, for 28×28 images on a laptop CPU:
- one set of blocks per batch (the paper draws positions per image): plain indexing, no ragged batches;
- the course's ViT keeps its class token; it is prepended to the context, its output is not predicted;
- the encoder's position embeddings are learned (the paper's are fixed 2-D sin-cos; the predictor's are).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitlib.encoder import Encoder
from vitlib.model import ViT

__all__ = [
    "JEPAConfig", "block_size", "size_at", "block_indices", "multi_block_mask", "ema_update", "momentum_at", "jepa_loss",
    "encode", "sincos_positions", "Predictor", "IJEPA", "representation_spread", "pretrain_ijepa", "pooled_features", "probe_accuracy",
]


# -----------------------------------------------------------------------------
# multi-block masking (Section 3, "Targets" and "Context")
# -----------------------------------------------------------------------------


def block_size(grid: int, scale: tuple[float, float], aspect: tuple[float, float],
               generator: torch.Generator | None = None) -> tuple[int, int]:
    """A block's (height, width) in patches: a scale of the grid's area and an aspect ratio h/w, drawn at random.

    As the paper's code draws them: the scale uniformly, the aspect ratio log-uniformly;
    h = round(sqrt(area · aspect)), w = round(sqrt(area / aspect)), each at least 1 and smaller than the grid.
    """
    u, v = torch.rand(2, generator=generator).tolist()
    return size_at(grid, scale, aspect, u, v)


def size_at(grid: int, scale: tuple[float, float], aspect: tuple[float, float], u: float, v: float) -> tuple[int, int]:
    """`block_size` for the uniform draws u (the scale) and v (the aspect ratio), both in [0, 1]."""
    area = grid * grid * (scale[0] + u * (scale[1] - scale[0]))  # patches
    ratio = math.exp(math.log(aspect[0]) + v * (math.log(aspect[1]) - math.log(aspect[0])))  # h / w
    h = min(max(1, round(math.sqrt(area * ratio))), grid - 1)
    w = min(max(1, round(math.sqrt(area / ratio))), grid - 1)
    return h, w


def block_indices(top: int, left: int, h: int, w: int, grid: int) -> torch.Tensor:
    """The patch indices (h·w,) of the h×w block whose top-left patch is (top, left), row-major, on a grid×grid grid."""
    rows = torch.arange(top, top + h).unsqueeze(1)  # (h, 1)
    cols = torch.arange(left, left + w).unsqueeze(0)  # (1, w)
    return (rows * grid + cols).flatten()  # (h·w,)


def _random_block(grid: int, h: int, w: int, generator: torch.Generator | None) -> torch.Tensor:
    top = int(torch.randint(0, grid - h + 1, (1,), generator=generator))
    left = int(torch.randint(0, grid - w + 1, (1,), generator=generator))
    return block_indices(top, left, h, w, grid)  # (h·w,)


def multi_block_mask(grid: int, num_targets: int = 4, target_scale: tuple[float, float] = (0.15, 0.2),
                     target_aspect: tuple[float, float] = (0.75, 1.5), context_scale: tuple[float, float] = (0.85, 1.0),
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The context and the target blocks of one image (Section 3, Figure 4) -> (context (N_c,), targets (M, N_t)).

    M = ``num_targets`` blocks of one size (scale and aspect ratio drawn once), each at its own
    random place; they may overlap each other. The context is one block of scale ``context_scale``
    and aspect ratio 1, *minus every target patch*, so that predicting a target is never copying.
    Indices are row-major on the grid×grid patch grid; the context's are sorted. Should the targets
    cover the whole context block, the context block is drawn again.
    """
    h, w = block_size(grid, target_scale, target_aspect, generator)
    targets = torch.stack([_random_block(grid, h, w, generator) for _ in range(num_targets)])  # (M, h·w)
    hidden = torch.zeros(grid * grid, dtype=torch.bool)
    hidden[targets.flatten()] = True  # (N,): patches of some target block
    for _ in range(100):
        ch, cw = block_size(grid, context_scale, (1.0, 1.0), generator)
        block = _random_block(grid, ch, cw, generator)  # (ch·cw,)
        context = block[~hidden[block]].sort().values  # (N_c,): the context block without the targets
        if len(context) > 0:
            return context, targets
    raise RuntimeError(f"multi_block_mask: the targets cover every context block on a {grid}×{grid} grid")


# -----------------------------------------------------------------------------
# the target encoder (Section 3, "Targets"; Appendix C: momentum 0.996 -> 1.0)
# -----------------------------------------------------------------------------


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_bar <- m · theta_bar + (1 - m) · theta, in place, for every parameter; no gradient is recorded.

    ``target`` is the target encoder (theta_bar), ``online`` the context encoder (theta), m = ``momentum``.
    """
    for bar, theta in zip(target.parameters(), online.parameters(), strict=True):
        bar.mul_(momentum).add_(theta.detach(), alpha=1 - momentum)


def momentum_at(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """The EMA momentum at step ``step``: linear from ``start`` to ``end`` over ``total_steps`` (Appendix C)."""
    return start + (end - start) * min(1.0, step / max(1, total_steps))


def jepa_loss(predicted: torch.Tensor, target_output: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Eq. 1, averaged: the squared L2 distance between predictions and targets on the target patches only.

    predicted (B, M, N_t, D): the predictor's output for the M target blocks;
    target_output (B, N, D): the target encoder's output for every patch of the whole image;
    target_ids (M, N_t): each block's patches -> a scalar.
    The targets are ``target_output`` layer-normalised over D (no affine weights, as the paper's
    code), taken at ``target_ids`` and detached: no gradient flows into the target encoder. The
    loss is the mean of (s_hat - s)² over blocks, patches, features and images, which is Eq. 1's
    (1/M) sum_i sum_{j in B_i} ||s_hat_j - s_j||² divided by the constant N_t · D (and averaged over the batch).
    """
    s = F.layer_norm(target_output.detach(), target_output.shape[-1:])  # (B, N, D)
    s_y = s[:, target_ids]  # (B, M, N_t, D)
    return ((predicted - s_y) ** 2).mean()


# -----------------------------------------------------------------------------
# the encoders and the predictor
# -----------------------------------------------------------------------------


def encode(vit: ViT, images: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """The ViT's final representations of the patches ``ids`` (all if None): images (B, C, H, W) -> (B, n, D).

    Patch embedding and position embeddings first, then only the chosen patches are kept, the
    class token is prepended, the encoder runs on those 1 + n tokens, and the final LayerNorm
    (eq. 4's) is applied. The class token's output is dropped: I-JEPA predicts patches.
    """
    x = vit.patch_embed(images) + vit.pos_embedding[:, 1:]  # (B, N, D)
    if ids is not None:
        x = x[:, ids]  # (B, n, D)
    cls = (vit.class_token + vit.pos_embedding[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
    z = vit.encoder(torch.cat([cls, x], dim=1))  # (B, 1+n, D)
    return vit.norm(z)[:, 1:]  # (B, n, D)


@dataclass
class JEPAConfig:
    """I-JEPA's settings; the encoder's come from its ViTConfig. Block ranges follow Section 3 (defaults for a 7×7 grid)."""

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    predictor_dim: int = 64
    predictor_layers: int = 2
    predictor_heads: int = 4
    momentum: tuple[float, float] = (0.996, 1.0)  # Appendix C; 0.99 and 0.999 both did worse here (BENCHMARKS.md)


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (grid·grid, dim), as I-JEPA's predictor uses (and MAE's code builds).

    Half of the features encode the row, half the column; each half is sin and cos of the
    coordinate at frequencies 1 / 10000^(k / (dim/4)). Patches in the same row share the row half.
    """
    if dim % 4:
        raise ValueError(f"sincos_positions: dim must be divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    halves = []
    for coordinate in (rows.flatten(), cols.flatten()):
        angle = coordinate[:, None] * omega[None, :]  # (N, dim/4)
        halves += [angle.sin(), angle.cos()]
    return torch.cat(halves, dim=1).float()  # (N, dim)


class Predictor(nn.Module):
    """The narrow predictor g_phi: context tokens plus mask tokens at a target block's positions -> its representations."""

    def __init__(self, num_patches: int, encoder_dim: int, config: JEPAConfig) -> None:
        super().__init__()
        d = config.predictor_dim
        self.embed = nn.Linear(encoder_dim, d)  # D -> D_pred
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))  # one learned vector, shared by every target patch
        grid = math.isqrt(num_patches)
        self.register_buffer("pos_embedding", sincos_positions(grid, d).unsqueeze(0), persistent=False)  # (1, N, D_pred), fixed
        self.blocks = Encoder(config.predictor_layers, hidden_dim=d, num_heads=config.predictor_heads, mlp_dim=4 * d)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.project = nn.Linear(d, encoder_dim)  # D_pred -> D
        for sub in self.modules():
            if isinstance(sub, nn.Linear):
                nn.init.trunc_normal_(sub.weight, std=0.02)
                nn.init.zeros_(sub.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """context (B, N_c, D) at context_ids (N_c,), target_ids (M, N_t) -> predicted (B, M, N_t, D).

        Each target block is predicted on its own, from the context alone (the blocks run as M
        copies of the batch, side by side).
        """
        B, M, Nt = context.shape[0], *target_ids.shape
        x = self.embed(context) + self.pos_embedding[:, context_ids]  # (B, N_c, D_pred)
        x = x.repeat_interleave(M, dim=0)  # (B·M, N_c, D_pred): image b, block i at row b·M + i
        masks = self.mask_token + self.pos_embedding[0, target_ids]  # (M, N_t, D_pred)
        masks = masks.repeat(B, 1, 1)  # (B·M, N_t, D_pred)
        y = self.blocks(torch.cat([x, masks], dim=1))  # (B·M, N_c + N_t, D_pred)
        y = self.project(self.norm(y[:, -Nt:]))  # (B·M, N_t, D)
        return y.reshape(B, M, Nt, -1)  # (B, M, N_t, D)


class IJEPA(nn.Module):
    """The context encoder (a ViT, trained), its EMA the target encoder (no gradient), and the predictor."""

    def __init__(self, encoder: ViT, config: JEPAConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or JEPAConfig()
        self.vit = encoder  # the context encoder E_theta
        self.target = copy.deepcopy(encoder).requires_grad_(False)  # E_theta_bar, updated by ema_update only
        self.predictor = Predictor(encoder.config.num_patches, encoder.config.hidden_dim, config)
        self.grid = encoder.config.image_size // encoder.config.patch_size

    def sample_masks(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        return multi_block_mask(self.grid, c.num_targets, c.target_scale, c.target_aspect, c.context_scale, generator)

    def forward(self, images: torch.Tensor, context_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W), context_ids (N_c,), target_ids (M, N_t) -> the loss (a scalar)."""
        with torch.no_grad():
            target_output = encode(self.target, images)  # (B, N, D): the whole image
        context = encode(self.vit, images, context_ids)  # (B, N_c, D): the context block only
        predicted = self.predictor(context, context_ids, target_ids)  # (B, M, N_t, D)
        return jepa_loss(predicted, target_output, target_ids)


@torch.no_grad()
def representation_spread(vit: ViT, images: torch.Tensor) -> float:
    """The standard deviation across images of the mean-pooled representations, averaged over features.

    Near 0 means collapse: every image mapped to the same vector, which makes the loss trivially small.
    """
    was_training = vit.training
    vit.eval()
    pooled = encode(vit, images).mean(dim=1)  # (B, D)
    vit.train(was_training)
    return pooled.std(dim=0).mean().item()


@torch.no_grad()
def pooled_features(vit: ViT, images: torch.Tensor, preprocess, batch_size: int = 500) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> the mean over patches of the final representations (N, D), for a linear probe.

    I-JEPA's probes average-pool the last layer (Section 5); the class token, which no loss trained, is left out.
    """
    vit.eval()
    return torch.cat([encode(vit, preprocess(images[i:i + batch_size])).mean(dim=1)
                      for i in range(0, len(images), batch_size)])  # (N, D)


def probe_accuracy(encoder: ViT, train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                   test_labels: torch.Tensor, preprocess, *, epochs: int = 100, lr: float = 1e-2, seed: int = 0) -> float:
    """A linear probe's test accuracy on frozen, mean-pooled features (`pooled_features`), standardised with the
    training images' mean and standard deviation: one linear layer, full-batch AdamW (`train_linear_probe`)."""
    from vitlib.train import TrainConfig
    from vitlib.transfer import train_linear_probe

    train_features = pooled_features(encoder, train_images, preprocess)  # (n, D)
    test_features = pooled_features(encoder, test_images, preprocess)  # (m, D)
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    head = nn.Linear(train_features.shape[1], int(train_labels.max()) + 1)
    config = TrainConfig(epochs=epochs, batch_size=len(train_labels), lr=lr, warmup_epochs=5, weight_decay=0.0,
                         seed=seed, progress=False)
    train_linear_probe(head, (train_features - mean) / std, train_labels, config)
    with torch.no_grad():
        predictions = head((test_features - mean) / std).argmax(dim=1)  # (m,)
    return (predictions == test_labels).float().mean().item()


def pretrain_ijepa(model: IJEPA, images: torch.Tensor, transform, *, epochs: int, batch_size: int = 16,
                   lr: float = 5e-4, weight_decay: float = 0.05, warmup_epochs: float = 1.0, seed: int = 0,
                   watch: torch.Tensor | None = None, on_epoch: Callable[[int], None] | None = None,
                   progress: bool = True) -> dict[str, list[float]]:
    """Pre-train on uint8 images (N, C, H, W), no labels: AdamW on the context encoder and the predictor, warm-up
    and cosine decay (`vitlib.pretraining.pretrain`), the target encoder by EMA after every step with `momentum_at`.

    Returns {"loss": mean per epoch, "spread": the target encoder's `representation_spread` on the
    float images ``watch`` before training and after every epoch} (empty when ``watch`` is None).
    ``on_epoch(epoch)``, if given, is called after each epoch (1, 2, ...), the model in eval mode.
    """
    from vitlib.pretraining import pretrain

    spread: list[float] = []

    def after_epoch(epoch: int) -> None:
        if watch is not None:
            spread.append(representation_spread(model.target, watch))
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch)
            model.train()

    if watch is not None:
        spread.append(representation_spread(model.target, watch))
    trained = [p for name, p in model.named_parameters() if not name.startswith("target.")]
    model.train()
    losses = pretrain(trained, images, transform, lambda batch, generator: model(batch, *model.sample_masks(generator)),
                      epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                      seed=seed, desc="I-JEPA pre-training", progress=progress,
                      after_step=lambda step, total: ema_update(model.target, model.vit, momentum_at(step, total, *model.config.momentum)),
                      after_epoch=after_epoch)
    model.eval()
    return {"loss": losses, "spread": spread}
