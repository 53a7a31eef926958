"""Checks of week 09: the three pieces of a masked autoencoder (He et al. 2021), against `vitlib.mae`."""

from __future__ import annotations

import torch

from vitlib import checks
from vitlib.mae import mae_loss, patch_targets
from vitlib.patching import patchify

__all__ = ["check_random_masking", "check_patch_targets", "check_mae_loss"]


@checks.exercise("random_masking")
def check_random_masking(student_masking) -> None:
    """`random_masking(x, mask_ratio)`: (visible (B, K, D), mask (B, N) 1 = hidden, ids_restore (B, N))."""
    cases = [(4, 16, 8, 0.75), (3, 49, 5, 0.75), (2, 10, 3, 0.5)]
    for B, N, D, ratio in cases:
        K = round(N * (1 - ratio))
        x = checks.seeded(B, N, D, seed=N)  # (B, N, D): every token different
        what = f"random_masking(x of shape {(B, N, D)}, mask_ratio={ratio})"
        torch.manual_seed(0)
        got = checks.call_student("random_masking", student_masking, x.clone(), ratio)
        if not isinstance(got, tuple) or len(got) != 3:
            checks.fail(what, "a tuple (visible, mask, ids_restore)", f"{type(got).__name__}", "return all three")
        visible, mask, ids_restore = got
        checks.expect_shape(f"{what}: visible", visible, (B, K, D),
                            f"keep K = round(N × (1 - mask_ratio)) = {K} tokens of each image, not the hidden ones")
        checks.expect_shape(f"{what}: mask", mask, (B, N), "one 0/1 entry per patch, in the original patch order")
        checks.expect_shape(f"{what}: ids_restore", ids_restore, (B, N), "one index per patch")
        hidden = mask.float().sum(dim=1)  # (B,)
        if not torch.all(hidden == N - K):
            if torch.all(hidden == K):
                checks.fail(f"{what}: mask", f"{N - K} ones per image (1 = hidden)", f"{K} ones per image",
                            "the mask is 1 where a patch is HIDDEN (the loss is taken there) and 0 where it is visible")
            checks.fail(f"{what}: mask", f"{N - K} ones per image", f"{hidden.tolist()}", "mask[:, :K] = 0 before un-shuffling")
        # every visible token is a token of its image, and exactly the ones the mask calls visible
        for b in range(B):
            kept = (mask[b] == 0).nonzero().flatten()  # (K,) in patch order
            rows = [int((x[b] == v).all(dim=-1).nonzero().flatten()[0]) if (x[b] == v).all(dim=-1).any() else -1
                    for v in visible[b]]
            if -1 in rows:
                checks.fail(f"{what}: visible", "tokens of x itself", "vectors that are not rows of x",
                            "gather the tokens: x.gather(1, ids_keep[..., None].expand(-1, -1, D))")
            if sorted(rows) != kept.tolist():
                checks.fail(f"{what}: mask", f"0 at the visible patches {sorted(rows)}", f"0 at {kept.tolist()}",
                            "the mask must be in the ORIGINAL order: build it in shuffled order, then gather it with ids_restore")
        # ids_restore puts [visible, hidden] back in order
        order = ids_restore.argsort(dim=1)  # (B, N): the shuffle
        if not torch.equal(x.gather(1, order[:, :K, None].expand(-1, -1, D)), visible):
            checks.fail(f"{what}: ids_restore", "the inverse of the shuffle (ids_shuffle.argsort(dim=1))",
                        "a permutation that does not bring the visible tokens back",
                        "ids_restore = ids_shuffle.argsort(dim=1): argsort a second time; the shuffle itself is not its own inverse")
    # a different subset for each image, and for each call
    x = checks.seeded(64, 16, 4, seed=1)
    _, mask_a, _ = checks.call_student("random_masking", student_masking, x, 0.75)
    _, mask_b, _ = checks.call_student("random_masking", student_masking, x, 0.75)
    if torch.equal(mask_a[0], mask_a[1]) and torch.equal(mask_a[1], mask_a[2]):
        checks.fail("random_masking on a batch", "a different random subset per image", "the same patches hidden in every image",
                    "draw the noise per image: torch.rand(B, N), not torch.rand(N)")
    if torch.equal(mask_a, mask_b):
        checks.fail("random_masking called twice", "a new random subset each call", "the same mask twice",
                    "no fixed seed inside the function: draw fresh noise every call")
    checks.passed("random_masking", f"{len(cases)} batches: K visible tokens of each image, mask and ids_restore consistent")


@checks.exercise("patch_targets")
def check_patch_targets(student_targets) -> None:
    """`patch_targets(images, patch_size, normalize=True)`: (B, N, P²·C), each patch normalised by itself."""
    cases = [(checks.seeded(2, 1, 8, 8, seed=2) * 2 + 1, 4), (checks.seeded(1, 3, 6, 6, seed=3), 3)]
    for images, P in cases:
        what = f"patch_targets(images of shape {tuple(images.shape)}, patch_size={P})"
        got = checks.call_student("patch_targets", student_targets, images.clone(), P)
        expected = patch_targets(images, P)
        raw = patchify(images, P)
        mistakes = {
            "no normalisation: subtract each patch's mean and divide by its standard deviation": raw,
            "that is normalised over the whole image (or batch): normalise each patch over its own P²·C values (dim=-1)":
                (raw - raw.mean()) / (raw.var() + 1e-6).sqrt(),
            "only the mean is subtracted: divide by sqrt(var + 1e-6) too": raw - raw.mean(-1, keepdim=True),
            "the biased variance: MAE's code uses torch.var's default (unbiased); use .var(dim=-1, keepdim=True)":
                (raw - raw.mean(-1, keepdim=True)) / (raw.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt(),
            "normalised over the patches of each position (dim=1), not within each patch (dim=-1)":
                (raw - raw.mean(1, keepdim=True)) / (raw.var(1, keepdim=True) + 1e-6).sqrt(),
        }
        checks.expect_close(what, got, expected, tol=1e-4, mistakes=mistakes,
                            shape_hint="patchify first: (B, N, P²·C), N = HW/P²")
    checks.passed("patch_targets", f"matches vitlib on {len(cases)} batches")


@checks.exercise("mae_loss")
def check_mae_loss(student_loss) -> None:
    """`mae_loss(pred, target, mask)`: the mean squared error over the masked patches only."""
    B, N, V = 3, 16, 12
    pred, target = checks.seeded(B, N, V, seed=4), checks.seeded(B, N, V, seed=5)
    mask = (torch.rand(B, N, generator=torch.Generator().manual_seed(6)) < 0.75).float()  # (B, N), uneven per image
    mask[0, :] = 1  # an image with every patch hidden, and ...
    mask[1, 1:], mask[1, 0] = 0, 1  # ... one with a single hidden patch: a per-image mean would weigh them alike
    got = checks.call_student("mae_loss", student_loss, pred.clone(), target.clone(), mask.clone())
    expected = mae_loss(pred, target, mask)
    if isinstance(got, torch.Tensor) and got.numel() != 1:
        checks.fail("mae_loss", "a single number (a 0-dim tensor)", f"shape {tuple(got.shape)}",
                    "average over the masked patches: (per_patch * mask).sum() / mask.sum()")
    per_patch = ((pred - target) ** 2).mean(-1)  # (B, N)
    mistakes = {
        "that is the MSE over every patch: the loss counts only the masked (hidden) patches": per_patch.mean(),
        "that is the MSE over the VISIBLE patches: mask is 1 where a patch is hidden": (per_patch * (1 - mask)).sum() / (1 - mask).sum(),
        "divided by the number of all patches: divide by mask.sum(), the number of masked ones": (per_patch * mask).sum() / mask.numel(),
        "summed, not averaged: divide by mask.sum()": (per_patch * mask).sum(),
        "averaged per image first: average over all masked patches together, (per_patch * mask).sum() / mask.sum()":
            ((per_patch * mask).sum(1) / mask.sum(1)).mean(),
        "the mean over values (P²·C) is missing: a patch's error is the MEAN of its squared differences":
            (((pred - target) ** 2).sum(-1) * mask).sum() / mask.sum(),
        "absolute error: the loss is the squared error": ((pred - target).abs().mean(-1) * mask).sum() / mask.sum(),
    }
    got = checks.expect_tensor("mae_loss", got)
    checks.expect_close("mae_loss", got.reshape(()), expected, tol=1e-5, mistakes=mistakes)
    checks.passed("mae_loss", "matches vitlib: the squared error on masked patches only")
