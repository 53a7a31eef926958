"""Checks of week 12: the three pieces of I-JEPA (Assran et al. 2023), against `vitlib.jepa`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitlib import checks
from vitlib.jepa import jepa_loss, size_at
from vitlib.model import ViT, ViTConfig

__all__ = ["check_multi_block_mask", "check_ema_update", "check_jepa_loss"]

_MASK_CASES = [  # (grid, keyword arguments, seeds)
    (7, {}, range(12)),
    (4, dict(num_targets=2), range(12, 20)),
    (7, dict(num_targets=3, target_scale=(0.1, 0.15), context_scale=(0.6, 0.8)), range(20, 28)),
]
_DEFAULTS = dict(num_targets=4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0))


def _sizes(grid: int, scale, aspect) -> set[tuple[int, int]]:
    """Every (h, w) that `jepa.block_size` can draw for these ranges."""
    steps = [i / 100 for i in range(101)]
    return {size_at(grid, scale, aspect, u, v) for u in steps for v in steps}


def _box(ids: torch.Tensor, grid: int) -> tuple[int, int, int, int]:
    rows, cols = (ids // grid).tolist(), (ids % grid).tolist()
    return min(rows), min(cols), max(rows) - min(rows) + 1, max(cols) - min(cols) + 1  # top, left, h, w


def _is_block(ids: torch.Tensor, grid: int) -> bool:
    top, left, h, w = _box(ids, grid)
    return len(set(ids.tolist())) == len(ids) == h * w


def _mask_call(student, grid: int, options: dict, seed: int):
    what = f"multi_block_mask({grid}{''.join(f', {k}={v}' for k, v in options.items())}) after torch.manual_seed({seed})"
    torch.manual_seed(seed)
    got = checks.call_student("multi_block_mask", student, grid, **options)
    if not isinstance(got, tuple) or len(got) != 2:
        checks.fail(what, "a tuple (context, targets)", f"{type(got).__name__}", "return both: the context's indices and the targets'")
    context, targets = (checks.expect_tensor(f"{what}: {name}", t) for name, t in zip(("context", "targets"), got))
    if context.dim() != 1 or context.dtype != torch.long or targets.dim() != 2 or targets.dtype != torch.long:
        checks.fail(what, "context (N_c,) and targets (M, N_t), both of integer dtype torch.long",
                    f"context {tuple(context.shape)} {context.dtype}, targets {tuple(targets.shape)} {targets.dtype}",
                    "torch.stack the M blocks' indices (jepa.block_indices gives each as a LongTensor)")
    return what, context, targets


def _check_targets(what: str, targets: torch.Tensor, grid: int, o: dict, sizes: set) -> None:
    if targets.shape[0] != o["num_targets"]:
        checks.fail(f"{what}: targets", f"{o['num_targets']} target blocks", f"{targets.shape[0]}", "draw num_targets blocks")
    if not all(_is_block(t, grid) for t in targets):
        checks.fail(f"{what}: targets", "each row the patches of one h×w rectangle", f"{targets.tolist()[0]} ...",
                    "build each block with jepa.block_indices(top, left, h, w, grid)")
    size = _box(targets[0], grid)[2:]
    if size not in sizes or any(_box(t, grid)[2:] != size for t in targets):
        checks.fail(f"{what}: target size", f"one (h, w) for every block, from the target ranges, e.g. {sorted(sizes)[:3]}",
                    f"blocks of {[_box(t, grid)[2:] for t in targets]}",
                    "draw the size ONCE, with jepa.block_size(grid, target_scale, target_aspect), then place every block")


def _check_context(what: str, context: torch.Tensor, targets: torch.Tensor, grid: int, o: dict, sizes: set) -> None:
    hidden = set(targets.flatten().tolist())
    if len(context) == 0:
        checks.fail(f"{what}: context", "at least one context patch", "none", "the context is a block minus the targets: draw a new block if nothing is left")
    if set(context.tolist()) & hidden:
        checks.fail(f"{what}: context", "no patch of any target block", f"{sorted(set(context.tolist()) & hidden)} in both",
                    "remove every target patch from the context block: with them in it, predicting a target is copying it")
    if context.tolist() != sorted(set(context.tolist())):
        checks.fail(f"{what}: context", "sorted indices, each once", f"{context.tolist()}", "context.sort().values (and no index twice)")
    top, left, h, w = _box(context, grid)
    largest = max(max(s) for s in sizes)
    block = {r * grid + c for r in range(top, top + h) for c in range(left, left + w)}
    if h > largest or w > largest or not block <= set(context.tolist()) | hidden:
        checks.fail(f"{what}: context", f"the patches of one square block (side up to {largest}) without the targets",
                    f"patches spread over a {h}×{w} box, {len(context)} of them",
                    "draw one block with jepa.block_size(grid, context_scale, (1.0, 1.0)), then keep its patches that are no target's")


@checks.exercise("multi_block_mask")
def check_multi_block_mask(student_mask) -> None:
    """`multi_block_mask(grid, num_targets=4, ...)`: (context (N_c,), targets (M, N_t)), targets removed from the context."""
    places, calls, repeated = set(), 0, 0
    for grid, options, seeds in _MASK_CASES:
        o = {**_DEFAULTS, **options}
        target_sizes = _sizes(grid, o["target_scale"], o["target_aspect"])
        context_sizes = _sizes(grid, o["context_scale"], (1.0, 1.0))
        for seed in seeds:
            what, context, targets = _mask_call(student_mask, grid, options, seed)
            _check_targets(what, targets, grid, o, target_sizes)
            _check_context(what, context, targets, grid, o, context_sizes)
            repeated += len(targets) > 1 and all(torch.equal(t, targets[0]) for t in targets)
            places.add((grid, tuple(targets[0].tolist())))
            calls += 1
    if repeated > calls // 2:  # (by chance, now and then, on a small grid)
        checks.fail("multi_block_mask over many calls", "each block at its own random place",
                    f"the same block M times in {repeated} of {calls} calls", "draw a new top-left corner for every block (torch.randint)")
    if len(places) < calls // 3:
        checks.fail("multi_block_mask over many calls", "blocks all over the grid", f"{len(places)} different first blocks in {calls} calls",
                    "draw the places at random on every call, from torch's generator (no fixed seed inside)")
    checks.passed("multi_block_mask", f"{calls} draws: blocks of the right sizes, the targets removed from the context")


def _tiny_vit(seed: int) -> ViT:
    torch.manual_seed(seed)
    return ViT(ViTConfig(image_size=8, patch_size=4, in_channels=1, num_classes=3, hidden_dim=8, mlp_dim=16,
                         num_layers=1, num_heads=2))


@checks.exercise("ema_update")
def check_ema_update(student_update) -> None:
    """`ema_update(target, online, momentum)`: theta_bar <- m theta_bar + (1 - m) theta, in place, no gradient."""
    for momentum in (0.9, 0.996):
        target, online = _tiny_vit(1).requires_grad_(False), _tiny_vit(2)
        with torch.no_grad():
            online.head.weight.normal_(generator=torch.Generator().manual_seed(3))  # every parameter differs
            online.class_token.normal_(generator=torch.Generator().manual_seed(4))
        bar, theta = [p.detach().clone() for p in target.parameters()], [p.detach().clone() for p in online.parameters()]
        what = f"ema_update(target, online, momentum={momentum})"
        checks.call_student("ema_update", student_update, target, online, momentum)
        after, online_after = list(target.parameters()), list(online.parameters())
        if any(not torch.equal(a, b) for a, b in zip(online_after, theta)):
            checks.fail(f"{what}: the context encoder", "unchanged (only the target encoder moves)", "changed weights",
                        "update the FIRST argument, the target encoder; the context encoder learns by gradient descent only")
        if any(p.requires_grad or p.grad_fn is not None for p in after):
            checks.fail(f"{what}: the target encoder", "weights that no gradient reaches (requires_grad False)",
                        "weights that autograd now tracks", "update under torch.no_grad() (or with theta.detach()): the target encoder gets no gradient")
        got, expected = torch.cat([p.detach().flatten() for p in after]), torch.cat([(momentum * b + (1 - momentum) * t).flatten() for b, t in zip(bar, theta)])
        flat_bar, flat_theta = torch.cat([b.flatten() for b in bar]), torch.cat([t.flatten() for t in theta])
        checks.expect_close(f"{what}: the target's weights", got, expected, tol=1e-5, mistakes={
            "unchanged: update the target's parameters in place (bar.mul_(m).add_(theta, alpha=1 - m)); assigning to the loop variable changes nothing": flat_bar,
            "that copies the context encoder: the EMA keeps m of the target's own weights": flat_theta,
            "the weights are swapped: m (near 1) multiplies the TARGET's weights, theta_bar <- m theta_bar + (1 - m) theta": (1 - momentum) * flat_bar + momentum * flat_theta,
        }, hint="theta_bar <- m · theta_bar + (1 - m) · theta, for every pair of parameters in order")
    checks.passed("ema_update", "in place and without gradient, theta_bar <- m theta_bar + (1 - m) theta, for m = 0.9 and 0.996")


_LOSS_CRASHES = {
    r"must match the size|size of tensor a|broadcast": "take the targets at the target patches first: s[:, target_ids] is (B, M, N_t, D), as the predictions",
}


@checks.exercise("jepa_loss")
def check_jepa_loss(student_loss) -> None:
    """`jepa_loss(predicted, target_output, target_ids)`: the L2 loss against the layer-normalised targets at the target patches."""
    B, M, Nt, N, D = 3, 4, 6, 16, 8
    target_ids = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(i))[:Nt] for i in range(M)])  # (M, N_t)
    predicted = checks.seeded(B, M, Nt, D, seed=7).requires_grad_(True)
    target_output = (checks.seeded(B, N, D, seed=8) * 3 + 1).requires_grad_(True)  # not normalised yet
    got = checks.call_student("jepa_loss", student_loss, predicted, target_output, target_ids, crash_hints=_LOSS_CRASHES)
    got = checks.expect_tensor("jepa_loss", got)
    if got.numel() != 1:
        checks.fail("jepa_loss", "a single number (a 0-dim tensor)", f"shape {tuple(got.shape)}", "average over everything: (...).mean()")
    changed = target_output.detach().clone()
    outside = torch.ones(N, dtype=torch.bool)
    outside[target_ids.flatten()] = False
    changed[:, outside] = checks.seeded(B, int(outside.sum()), D, seed=9)  # (B, N, D): new patches outside the targets only
    again = checks.expect_tensor("jepa_loss", checks.call_student("jepa_loss", student_loss, predicted.detach(), changed, target_ids))
    if again.numel() != 1 or not torch.allclose(again.detach().reshape(()).float(), got.detach().reshape(()).float(), rtol=1e-5):
        checks.fail("jepa_loss, with the patches outside the targets changed", "the same loss", "a different loss",
                    "the loss is taken on the target patches only: select them with target_ids")
    with torch.no_grad():
        s = F.layer_norm(target_output, (D,))[:, target_ids]  # (B, M, N_t, D)
        raw = target_output[:, target_ids]
        p = predicted
        mistakes = {
            "the targets are not layer-normalised: F.layer_norm(target_output, (D,)) first, over the features": ((p - raw) ** 2).mean(),
            "normalised over the patches (dim 1): layer-normalise each patch's D features": ((p - ((target_output - target_output.mean(1, keepdim=True)) / (target_output.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt())[:, target_ids]) ** 2).mean(),
            "the predictions are normalised too: only the targets are": ((F.layer_norm(p, (D,)) - s) ** 2).mean(),
            "the L2 distance, not squared: the loss is the SQUARED distance (Eq. 1)": ((p - s) ** 2).sum(-1).sqrt().mean(),
            "summed over the features: average them too, .mean() over everything": ((p - s) ** 2).sum(-1).mean(),
            "absolute error: the loss is the squared error": (p - s).abs().mean(),
        }
    checks.expect_close("jepa_loss", got.detach().reshape(()), jepa_loss(predicted, target_output, target_ids).detach(),
                        tol=1e-5, mistakes=mistakes, hint="s = F.layer_norm(target_output, (D,)); ((predicted - s[:, target_ids]) ** 2).mean()")
    if not got.requires_grad:
        checks.fail("jepa_loss: gradient", "a loss that backpropagates into the predictions", "a loss without a graph",
                    "compute it from `predicted` itself (no .detach() or torch.no_grad() around it)")
    got.sum().backward()
    if target_output.grad is not None and target_output.grad.abs().sum() > 0:
        checks.fail("jepa_loss: gradient", "no gradient into target_output (the target encoder learns only by the EMA)",
                    "a gradient in target_output.grad", "detach the targets: F.layer_norm(target_output.detach(), (D,))")
    checks.passed("jepa_loss", "matches vitlib: the squared error against layer-normalised targets, target patches only, no gradient into them")
