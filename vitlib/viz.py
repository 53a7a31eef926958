"""Week 06: looking inside a trained ViT (Dosovitskiy et al. 2020, Section 4.5, Figures 6 and 7).

What the model computes, read off its tensors:

- ``attention_maps``: the post-softmax attention A of eq. 6, per layer and head, from the
  written-out path (the fused kernel exposes no weights). Rows sum to 1.
- ``attention_rollout``: Abnar & Zuidema 2020: average the heads, add the identity for
  the residual connection, renormalise the rows, multiply through the layers.
- ``position_similarity``: cosine similarity of the learned position embeddings
  (Figure 7, centre).
- ``mean_attention_distance``: how far, in pixels, each head looks (Figure 7, right).
- ``embedding_filter_components``: principal components of the patch-embedding filters E
  (Figure 7, left).
- ``class_token_features`` and ``knn_accuracy``: the representation y = LN(z_L^0) and how
  well its neighbours agree on the class.

Plots take an :class:`AttentionRecord`, which keeps the images and the maps computed from
them together: a map can only be drawn over the image it came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from vitlib.model import ViT

__all__ = [
    "AttentionRecord",
    "attention_maps",
    "attention_rollout",
    "class_token_features",
    "class_token_grid",
    "embedding_filter_components",
    "knn_accuracy",
    "mean_attention_distance",
    "patch_distances",
    "plot_attention",
    "plot_rollout",
    "position_similarity",
    "record_attention",
    "to_display",
]


def _check_maps(maps: Sequence[torch.Tensor]) -> None:
    if isinstance(maps, torch.Tensor) or not len(maps):
        raise ValueError("expected a list with one attention map per layer, each (B, heads, N+1, N+1)")
    for i, a in enumerate(maps):
        if not isinstance(a, torch.Tensor) or a.dim() != 4 or a.shape[-1] != a.shape[-2] or a.shape != maps[0].shape:
            shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(f"attention map {i}: expected (B, heads, N+1, N+1) like the others, got {shape}")


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_maps(model: ViT, images: torch.Tensor) -> list[torch.Tensor]:
    """The post-softmax attention weights of every layer: L tensors (B, heads, N+1, N+1).

    A = softmax(q kᵀ / √D_h) of eq. 6, computed in eval mode (no dropout, all patches)
    on ``images`` (B, C, H, W), normalised as in training. Row i of a map is how token i
    (0: the class token) distributes its attention over all tokens; each row sums to 1.
    """
    was_training = model.training
    model.eval()
    try:
        _, maps = model.forward_with_attention(images)  # L × (B, h, N+1, N+1)
    finally:
        model.train(was_training)
    return [a.float() for a in maps]


def attention_rollout(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, eq. for Ã): (B, N+1, N+1).

    Per layer ℓ: Â_ℓ = mean over heads of A_ℓ; add the identity for the residual
    connection and renormalise the rows, Ã_ℓ = (Â_ℓ + I) / rowsum; then multiply through
    depth, R = Ã_L ⋯ Ã_2 Ã_1. Row 0 of R says how much each input token contributed to
    the class token's final state. Rows of R sum to 1.
    """
    _check_maps(maps)
    rollout = None
    for a in maps:  # a: (B, h, N+1, N+1)
        mean = a.float().mean(dim=1)  # (B, N+1, N+1): heads averaged
        with_residual = mean + torch.eye(mean.shape[-1], device=mean.device)  # + I: the skip connection of eq. 2
        with_residual = with_residual / with_residual.sum(dim=-1, keepdim=True)  # rows sum to 1 again
        rollout = with_residual if rollout is None else with_residual @ rollout  # Ã_ℓ R_{ℓ-1}
    return rollout


def class_token_grid(rows: torch.Tensor) -> torch.Tensor:
    """Class-token rows (B, N+1) of an attention map or rollout -> patch grid (B, H/P, W/P).

    The class token's own entry (column 0) is dropped: it has no place on the image.
    """
    if rows.dim() != 2:
        raise ValueError(f"expected class-token rows (B, N+1), got shape {tuple(rows.shape)}")
    n = rows.shape[-1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} patch tokens are not a square grid")
    return rearrange(rows[:, 1:], "b (gh gw) -> b gh gw", gh=side)  # (B, H/P, W/P)


def patch_distances(grid: int, patch_size: int) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every two patches: (N, N), N = grid²."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float() * patch_size  # (N, 2) in pixels
    return torch.cdist(centres, centres)  # (N, N)


def mean_attention_distance(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean attention distance of each head of one layer, in pixels: maps (B, h, N+1, N+1) -> (h,).

    Figure 7 (right): for every patch query, the distance to each patch key weighted by
    the attention between them, averaged over the queries and the images. The class
    token has no position, so it is left out as query and as key, and each query's
    weights over the patches are renormalised to sum to 1 (a weighted mean).
    """
    if maps.dim() != 4 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"expected one layer's maps (B, heads, N+1, N+1), got shape {tuple(maps.shape)}")
    patches = maps[:, :, 1:, 1:].float()  # (B, h, N, N): patch queries, patch keys
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # each query's weights sum to 1
    distances = patch_distances(math.isqrt(patches.shape[-1]), patch_size).to(patches.device)  # (N, N)
    per_query = (patches * distances).sum(dim=-1)  # (B, h, N): weighted mean distance of each query
    return per_query.mean(dim=(0, 2))  # (h,)


# ---------------------------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------------------------


def position_similarity(pos_embedding: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between the position embeddings of every two patches: (N, N).

    ``pos_embedding`` is E_pos, (1, N+1, D) or (N+1, D), with the class token's first; that
    one has no place in the grid and is dropped. Figure 7 (centre) draws row i, reshaped
    to the patch grid, at the position of patch i.
    """
    pos = pos_embedding.detach()
    pos = pos if pos.is_floating_point() else pos.float()
    if pos.dim() == 3:
        pos = pos[0]  # (N+1, D)
    if pos.dim() != 2:
        raise ValueError(f"expected E_pos of shape (1, N+1, D) or (N+1, D), got {tuple(pos_embedding.shape)}")
    patches = F.normalize(pos[1:], dim=-1)  # (N, D), unit rows
    return patches @ patches.T  # (N, N), cosines in [-1, 1]


def embedding_filter_components(model: ViT, k: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` principal components of the patch-embedding filters E (Figure 7, left).

    Each of the D rows of E (D, P²·C) is a filter: a P×P×C pattern whose dot product with
    a patch gives one embedding coordinate. Centred, their principal directions are
    what the embedding is most sensitive to. Returns (components (k, C, P, P), fraction
    of the variance each explains (k,)).
    """
    c = model.config
    filters = model.patch_embed.proj.weight.detach().float()  # (D, P²·C), (p1 p2 c) order
    centred = filters - filters.mean(dim=0, keepdim=True)  # (D, P²·C)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (r, P²·C)
    k = min(k, vh.shape[0])
    components = rearrange(vh[:k], "k (p1 p2 c) -> k c p1 p2", p1=c.patch_size, p2=c.patch_size)  # (k, C, P, P)
    variance = s**2 / (s**2).sum()
    return components, variance[:k]


@torch.no_grad()
def class_token_features(model: ViT, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """y = LN(z_L^0) of eq. 4 for every image, in eval mode: images (B, C, H, W) -> (B, D)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        parts = [model.forward_features(images[i : i + batch_size].to(device)).float().cpu()
                 for i in range(0, len(images), batch_size)]  # each (b, D)
    finally:
        model.train(was_training)
    return torch.cat(parts)  # (B, D)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 10,
) -> float:
    """Accuracy of a k-nearest-neighbour vote (cosine similarity) in feature space.

    Each test feature takes the most common label among its ``k`` most similar
    training features (ties: the smaller class index). A number for "the classes
    form clusters": no training, only the geometry of the features.
    """
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise ValueError("knn_accuracy: one label per feature vector")
    if not 1 <= k <= len(train_features):
        raise ValueError(f"knn_accuracy: k must be between 1 and {len(train_features)}, got {k}")
    a = F.normalize(train_features.float(), dim=-1)  # (M, D)
    b = F.normalize(test_features.float(), dim=-1)  # (Q, D)
    nearest = (b @ a.T).topk(k, dim=-1).indices  # (Q, k)
    votes = F.one_hot(train_labels[nearest], int(train_labels.max()) + 1).sum(dim=1)  # (Q, classes)
    return (votes.argmax(dim=-1) == test_labels).float().mean().item()


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------


@dataclass
class AttentionRecord:
    """Images and what the model computed from exactly those images."""

    images: torch.Tensor  # (B, C, H, W): the model's input
    logits: torch.Tensor  # (B, classes)
    maps: list[torch.Tensor]  # L × (B, heads, N+1, N+1), post-softmax
    patch_size: int

    @property
    def grid(self) -> int:
        return self.images.shape[-1] // self.patch_size


@torch.no_grad()
def record_attention(model: ViT, images: torch.Tensor) -> AttentionRecord:
    """Run ``model`` on ``images`` once and keep the images, logits and attention maps together."""
    was_training = model.training
    model.eval()
    try:
        logits, maps = model.forward_with_attention(images)
    finally:
        model.train(was_training)
    return AttentionRecord(images.detach().cpu(), logits.float().cpu(), [a.float().cpu() for a in maps],
                           model.config.patch_size)


def to_display(image: torch.Tensor) -> torch.Tensor:
    """A model input (C, H, W) -> something ``imshow`` draws: (H, W) grey or (H, W, 3), scaled to [0, 1]."""
    x = image.detach().float().cpu()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    return x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)


def _overlay(ax, image: torch.Tensor, heat: torch.Tensor, title: str, alpha: float = 0.55) -> None:
    """Draw ``image`` (C, H, W) and over it ``heat`` (gh, gw), stretched to the image's size."""
    height, width = image.shape[-2:]
    shown = to_display(image)
    ax.imshow(shown.numpy(), cmap="gray" if shown.dim() == 2 else None)
    ax.imshow(heat.detach().float().cpu().numpy(), cmap="inferno", alpha=alpha, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
              interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_attention(record: AttentionRecord, index: int, layer: int, head: int | None = None, ax=None):
    """The class token's attention in one layer (one head, or the mean of the heads) over image ``index``."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(2.5, 2.5))
    a = record.maps[layer][index : index + 1]  # (1, h, N+1, N+1)
    a = a.mean(dim=1) if head is None else a[:, head]  # (1, N+1, N+1)
    grid = class_token_grid(a[:, 0])[0]  # (gh, gw): the class token's row
    which = "mean of heads" if head is None else f"head {head}"
    _overlay(ax, record.images[index], grid, f"layer {layer}, {which}")
    return ax


def plot_rollout(record: AttentionRecord, indices: Sequence[int], class_names: Sequence[str] | None = None):
    """Each image, and the class-token row of the attention rollout over it (Figure 6)."""
    import matplotlib.pyplot as plt

    rollout = attention_rollout(record.maps)  # (B, N+1, N+1)
    grids = class_token_grid(rollout[:, 0])  # (B, gh, gw)
    fig, axes = plt.subplots(2, len(indices), figsize=(1.6 * len(indices), 3.4), squeeze=False)
    for column, i in enumerate(indices):
        predicted = int(record.logits[i].argmax())
        name = class_names[predicted] if class_names else str(predicted)
        shown = to_display(record.images[i])
        axes[0, column].imshow(shown.numpy(), cmap="gray" if shown.dim() == 2 else None)
        axes[0, column].set_title(name, fontsize=8)
        axes[0, column].axis("off")
        _overlay(axes[1, column], record.images[i], grids[i], "rollout")
    fig.tight_layout()
    return fig
