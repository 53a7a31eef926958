"""Checks of week 06: attention maps, attention rollout, position-embedding similarity, attention distance.

The references are in `vitlib.viz`. Each check computes, next to the right answer, the
results of the classic mistakes of published ViT visualisations (pre-softmax scores drawn
as "attention", a rollout without the residual, cosine similarity of unnormalised vectors,
distances in patches instead of pixels, ...), so a result equal to one of them is named.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from vitlib import checks, viz
from vitlib.configs import create_vit

__all__ = [
    "check_attention_maps",
    "check_attention_rollout",
    "check_mean_attention_distance",
    "check_position_similarity",
]


def _small_vit(seed: int = 0):
    torch.manual_seed(seed)
    model = create_vit("vit_course_28", patch_size=7, hidden_dim=32, num_layers=3, num_heads=4, mlp_dim=64,
                       attention_dropout=0.1, dropout=0.1, patch_dropout=0.25)
    with torch.no_grad():
        for p in model.parameters():  # away from the initialisation: the class token is 0, LayerNorms 1 and 0
            p.add_(0.3 * torch.randn_like(p))
    return model


def _written_out(model, images, *, softmax=True, scale=True, norm=True, chain=True) -> list[torch.Tensor]:
    """Attention of every layer, with one step of the right computation switched off (the mistakes)."""
    with torch.no_grad():
        z0 = model.embed(images)  # (B, N+1, D)
        z, maps = z0, []
        for block in model.encoder.layers:
            x = z if chain else z0
            h = block.norm1(x) if norm else x
            q, k, _ = rearrange(block.attn.qkv(h), "b n (three h d) -> three b h n d", three=3, h=block.attn.num_heads)
            scores = q @ k.transpose(-2, -1)  # (B, h, N+1, N+1)
            if scale:
                scores = scores / math.sqrt(q.shape[-1])
            maps.append(scores.softmax(dim=-1) if softmax else scores)
            z = block(x)
    return maps


@checks.exercise("attention_maps")
def check_attention_maps(attention_maps) -> None:
    """`attention_maps(model, images)`: L tensors (B, heads, N+1, N+1), post-softmax, of the model's own layers."""
    name = "attention_maps"
    model = _small_vit()
    model.train()  # the student's function must not depend on the mode it finds the model in
    images = checks.seeded(3, 1, 28, 28, seed=1)
    # No hooks on the model (in grading it is a copy in the student's kernel): what the calls leave tells.
    got = checks.call_student(name, attention_maps, model, images)
    left_in_training = model.training  # still True: the function never called model.eval()
    model.train()
    again = checks.call_student(name, attention_maps, model, images)
    model.eval()
    if isinstance(got, (list, tuple)) and isinstance(again, (list, tuple)) and len(got) == len(again) and not all(
        isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
        for a, b in zip(got, again)
    ):
        if left_in_training:
            checks.fail(f"{name}: not reproducible", "the same maps for the same images, every time",
                        "different maps (or shapes) on a second call: your forward passes ran in training mode",
                        "dropout and PatchDropout are on in training mode: call model.eval() first")
        checks.fail(f"{name}: not reproducible", "the same maps for the same images, every time",
                    "different maps (or shapes) on a second call, with the model in eval mode",
                    "something random is in your computation: the maps depend only on the weights and the images")
    expected = viz.attention_maps(model, images)
    L, (B, h, n, _) = len(expected), expected[0].shape
    if isinstance(got, torch.Tensor) and got.dim() == 4 and got.shape[0] == B:
        checks.fail(f"{name}: one tensor", f"a list of {L} tensors, one per layer", f"one tensor of shape {tuple(got.shape)}",
                    "collect the map of every layer in a list (maps.append(...) inside the loop over the blocks)")
    if not isinstance(got, (list, tuple)) or len(got) != L:
        what = f"{len(got)} items" if isinstance(got, (list, tuple)) else type(got).__name__
        checks.fail(f"{name}: one map per layer", f"a list of {L} maps (the model has {L} layers)", what,
                    "loop over model.encoder.layers and append each layer's map")
    mistakes = {
        "these are the scores before the softmax (rows don't sum to 1): attention weights are softmax(q kᵀ / √D_h) over the keys, dim=-1":
            _written_out(model, images, softmax=False),
        "softmax(q kᵀ) without dividing by √D_h: eq. 6 scales the scores by 1 / √D_h, D_h = D / heads":
            _written_out(model, images, scale=False),
        "attention reads the normalised input: q and k come from block.norm1(z) (eq. 2: MSA(LN(z)))":
            _written_out(model, images, norm=False),
        "every layer got z_0: feed each block the previous block's output (z = block(z) inside the loop)":
            _written_out(model, images, chain=False),
    }
    for layer, (mine, reference) in enumerate(zip(got, expected)):
        what = f"{name}: layer {layer}"
        wrong = {hint: maps[layer] for hint, maps in mistakes.items()}
        if isinstance(mine, torch.Tensor) and mine.shape == (B, n, n):
            checks.fail(f"{what}: wrong shape", f"shape {(B, h, n, n)}", f"shape {tuple(mine.shape)}",
                        "keep one map per head (B, heads, N+1, N+1): don't average over the heads here")
        if isinstance(mine, torch.Tensor) and mine.shape == reference.shape and (mine.sum(-1) - 1).abs().max() > 1e-3 \
                and (mine.sum(-2) - 1).abs().max() < 1e-3:
            checks.fail(f"{what}: rows don't sum to 1", "rows (queries) that sum to 1", "columns that sum to 1",
                        "softmax over the keys, dim=-1, and keep q kᵀ (not k qᵀ): row i is where token i looks")
        checks.expect_close(what, mine, reference, tol=1e-4, mistakes=wrong,
                            hint="compare with eq. 6 step by step: LN, q and k from qkv, q kᵀ / √D_h, softmax",
                            shape_hint=f"each map is (B, heads, N+1, N+1) = {(B, h, n, n)}")
    graph = any(isinstance(m, torch.Tensor) and m.requires_grad for m in got)
    if graph:
        checks.fail(f"{name}: computed with autograd on", "every forward pass under torch.no_grad()",
                    "maps that require grad (they carry a graph)",
                    "wrap the loop in `with torch.no_grad():` (or decorate the function with @torch.no_grad()): "
                    "nothing is differentiated here, and the graph of every layer would be kept in memory")
    checks.passed(name, f"post-softmax maps of all {L} layers match vitlib's")


@checks.exercise("attention_rollout")
def check_attention_rollout(attention_rollout) -> None:
    """`attention_rollout(maps)`: mean over heads, + I, renormalise rows, multiply through the layers."""
    name = "attention_rollout"

    def rollout(maps, residual=True, renormalise=True, reverse=False, reduce="mean"):
        r = None
        for a in maps:
            m = a.mean(dim=1) if reduce == "mean" else a.amax(dim=1)
            if residual:
                m = m + torch.eye(m.shape[-1], dtype=m.dtype)
            if renormalise:
                m = m / m.sum(dim=-1, keepdim=True)
            r = m if r is None else (r @ m if reverse else m @ r)
        return r

    cases = [
        [torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(s)).mul(2).softmax(-1) for s in range(4)],
        [torch.randn(1, 2, 10, 10, generator=torch.Generator().manual_seed(9 + s)).mul(3).softmax(-1) for s in range(2)],
    ]
    for maps in cases:
        got = checks.call_student(name, attention_rollout, [a.clone() for a in maps])
        expected = viz.attention_rollout(maps)
        mistakes = {
            "no residual: add the identity to each layer's mean map (the skip connection of eq. 2 carries each token on)":
                rollout(maps, residual=False),
            "rows no longer sum to 1: after adding I, divide each row by its sum": rollout(maps, renormalise=False),
            "the product is in the wrong order: later layers multiply from the left, R = Ã_L ⋯ Ã_1 (r = a @ r)":
                rollout(maps, reverse=True),
            "the heads are combined by their maximum: Abnar & Zuidema average them (mean over dim=1)":
                rollout(maps, reduce="max"),
        }
        checks.expect_close(f"{name} of {len(maps)} layers", got, expected, tol=1e-5, mistakes=mistakes,
                            hint="per layer: mean over heads, + I, rows / row sums; then multiply, later layers on the left",
                            shape_hint="the rollout is (B, N+1, N+1): the heads are averaged, the layers multiplied")
    checks.passed(name, f"matches vitlib on {len(cases)} stacks of maps")


@checks.exercise("position_similarity")
def check_position_similarity(position_similarity) -> None:
    """`position_similarity(pos_embedding)`: cosine similarity (N, N) of the patches' position embeddings."""
    name = "position_similarity"
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(1, 17, 12, generator=g, dtype=torch.float64)
    pos = pos * torch.rand(1, 17, 1, generator=g, dtype=torch.float64).mul(3).add(0.2)  # rows of unequal length
    got = checks.call_student(name, position_similarity, pos.clone())
    expected = viz.position_similarity(pos)
    patches = pos[0, 1:]
    unit = F.normalize(pos[0], dim=-1)
    mistakes = {
        "that is the plain dot product: cosine similarity divides by both lengths (normalise each row, F.normalize(..., dim=-1))":
            patches @ patches.T,
        "normalised over the wrong axis: each embedding (row, dim=-1) must have length 1, not each coordinate":
            F.normalize(patches, dim=0) @ F.normalize(patches, dim=0).T,
        "the class token is still in: drop row 0 of E_pos (it has no position on the grid)": unit @ unit.T,
    }
    checks.expect_close(name, got, expected, tol=1e-8, mistakes=mistakes,
                        hint="cos(a, b) = a·b / (|a| |b|) for every pair of patch embeddings",
                        shape_hint="(N, N) for N patches: E_pos has N+1 rows, the first is the class token's")
    checks.passed(name, "cosine similarities of 16 position embeddings match vitlib's")


@checks.exercise("mean_attention_distance")
def check_mean_attention_distance(mean_attention_distance) -> None:
    """`mean_attention_distance(maps, patch_size)`: per head, the attention-weighted distance in pixels."""
    name = "mean_attention_distance"
    g = torch.Generator().manual_seed(5)
    maps = torch.randn(3, 4, 17, 17, generator=g).mul(2).softmax(-1)  # 3 images, 4 heads, 16 patches + class token
    patch_size = 7
    got = checks.call_student(name, mean_attention_distance, maps.clone(), patch_size)
    expected = viz.mean_attention_distance(maps, patch_size)
    distances = viz.patch_distances(4, patch_size)  # (16, 16)
    patches = maps[:, :, 1:, 1:]
    renormalised = patches / patches.sum(-1, keepdim=True)
    with_class = F.pad(distances, (1, 0, 1, 0))  # the class token at distance 0 from everything
    mistakes = {
        "distances in patches, not pixels: multiply the grid distance by patch_size":
            (renormalised * distances / patch_size).sum(-1).mean(dim=(0, 2)),
        "the weights over the patches don't sum to 1 once the class token is dropped: renormalise each query's row":
            (patches * distances).sum(-1).mean(dim=(0, 2)),
        "the class token is in: leave it out as query and as key (row and column 0), it has no position":
            (maps * with_class).sum(-1).mean(dim=(0, 2)),
    }
    checks.expect_close(name, got, expected, tol=1e-5, mistakes=mistakes,
                        hint="per head: Σ_k A[q, k] · distance(q, k) over patch keys, averaged over queries and images",
                        shape_hint="one distance per head: average over the images (dim 0) and the queries, keep the heads")
    checks.passed(name, "distances of 4 heads match vitlib's")
