"""Checks of week 00: the einops warm-up (rearrange, reduce, repeat) on image tensors.

Each `check_<name>` runs the student's function on seeded inputs through
`checks.call_student`, compares it with the reference below, and names the common
mistakes (height and width swapped, max instead of mean, a grid filled column-first, ...).

The references are public so that later cells of the notebook can fall back to them:
`checks.mine_or_reference("image_grid", image_grid, checks.setup.image_grid)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange, reduce, repeat

from vitlib import checks

__all__ = [
    "channels_last",
    "downsample",
    "to_rgb",
    "image_grid",
    "check_channels_last",
    "check_downsample",
    "check_to_rgb",
    "check_image_grid",
]


# --- references ----------------------------------------------------------------------------------


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C), the layout matplotlib's imshow wants."""
    return rearrange(images, "b c h w -> b h w c")


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool (B, C, H, W) -> (B, C, H/f, W/f): each output pixel is the mean of an f×f block."""
    return reduce(images, "b c (h f1) (w f2) -> b c h w", "mean", f1=factor, f2=factor)


def to_rgb(gray: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 3, H, W): the grey channel copied into red, green and blue."""
    return repeat(gray, "b 1 h w -> b 3 h w")


def image_grid(images: torch.Tensor, rows: int) -> torch.Tensor:
    """(B, C, H, W) -> (C, rows·H, cols·W), cols = B / rows; image i sits in row i // cols, column i % cols."""
    return rearrange(images, "(r c) ch h w -> ch (r h) (c w)", r=rows)


# --- helpers -------------------------------------------------------------------------------------


def _same_inputs(what: str, before: torch.Tensor, after: torch.Tensor) -> None:
    """The student's function must not change its input in place."""
    if not torch.equal(before, after):
        checks.fail(
            f"{what}: the input was modified",
            "the input tensor left as it was",
            "different values in the input after the call",
            "don't write into the input (no in-place ops such as +=, .copy_(), x[...] = ...); return a new tensor",
        )


def _run_cases(
    name: str,
    student: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    cases: list[tuple],
    mistakes_of: Callable[..., dict[str, torch.Tensor]],
    hint: str,
    shape_hint: str,
) -> None:
    """Call student and reference on each case (tensor first, then extra arguments) and compare."""
    for args in cases:
        x, extra = args[0], args[1:]
        keep = x.clone()
        got = checks.call_student(name, student, x, *extra)
        _same_inputs(name, keep, x)
        shape = ", ".join(str(s) for s in x.shape)
        with_extra = "".join(f", {e}" for e in extra)
        checks.expect_close(
            f"{name}(images of shape ({shape}){with_extra})",
            got,
            reference(x, *extra),
            mistakes=mistakes_of(x, *extra),
            hint=hint,
            shape_hint=shape_hint,
        )


# --- checks --------------------------------------------------------------------------------------


@checks.exercise("channels_last")
def check_channels_last(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """channels_last(images): (B, C, H, W) -> (B, H, W, C), pixels unchanged."""
    cases = [(checks.seeded(2, 3, 4, 5, seed=1),), (checks.seeded(1, 3, 6, 6, seed=2),), (checks.seeded(3, 1, 5, 7, seed=3),)]

    def mistakes(x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, c, h, w = x.shape
        return {
            "H and W are swapped: the output axes must be (b h w c), in that order": rearrange(x, "b c h w -> b w h c"),
            "the channel axis has not moved: the output must be (b h w c), channels LAST": x,
            "reshape/view only re-reads the same memory in a new shape, it does not move the channel axis: "
            "use rearrange(images, 'b c h w -> b h w c') (or .permute)": x.reshape(b, h, w, c),
        }

    _run_cases(
        "channels_last", fn, channels_last, cases, mistakes,
        hint="the output pixel [b, i, j, k] must be the input pixel [b, k, i, j]",
        shape_hint="the output shape is (B, H, W, C): the channel axis moves to the end",
    )
    checks.passed("channels_last", "matches the reference on 3 seeded batches")


@checks.exercise("downsample")
def check_downsample(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """downsample(images, factor): f×f average pooling, (B, C, H, W) -> (B, C, H/f, W/f)."""
    cases = [
        (checks.seeded(2, 3, 8, 12, seed=4), 2),
        (checks.seeded(1, 1, 28, 28, seed=5), 4),
        (checks.seeded(3, 2, 6, 9, seed=6), 3),
    ]

    def mistakes(x: torch.Tensor, f: int) -> dict[str, torch.Tensor]:
        return {
            "max instead of mean: reduce(..., 'mean') averages each block, 'max' keeps its largest pixel":
                reduce(x, "b c (h f1) (w f2) -> b c h w", "max", f1=f, f2=f),
            "sum instead of mean: the average of an f×f block is its sum divided by f²":
                reduce(x, "b c (h f1) (w f2) -> b c h w", "sum", f1=f, f2=f),
            "you averaged over the channels too: keep c on the right-hand side ('b c (h f1) (w f2) -> b c h w')":
                reduce(x, "b c (h f1) (w f2) -> b 1 h w", "mean", f1=f, f2=f),
            "you averaged over the channels too (and dropped the channel axis): keep c on the right-hand side":
                reduce(x, "b c (h f1) (w f2) -> b h w", "mean", f1=f, f2=f),
            "(f1 h) groups pixels that are H/f apart, not neighbours: write (h f1) and (w f2), "
            "the block index first and the position inside the block second":
                reduce(x, "b c (f1 h) (f2 w) -> b c h w", "mean", f1=f, f2=f),
        }

    _run_cases(
        "downsample", fn, downsample, cases, mistakes,
        hint="each output pixel [b, c, i, j] is the mean of the input block [b, c, f·i : f·i+f, f·j : f·j+f]",
        shape_hint="the output shape is (B, C, H/f, W/f): only H and W shrink, by the factor f",
    )
    checks.passed("downsample", "matches average pooling on 3 seeded batches (f = 2, 3, 4)")


@checks.exercise("to_rgb")
def check_to_rgb(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """to_rgb(gray): (B, 1, H, W) -> (B, 3, H, W), the grey channel copied three times."""
    cases = [(checks.seeded(2, 1, 4, 5, seed=7),), (checks.seeded(1, 1, 28, 28, seed=8),)]

    def mistakes(x: torch.Tensor) -> dict[str, torch.Tensor]:
        found = {
            "the copies went into the width (each pixel repeated sideways): the new axis of size 3 "
            "must replace the channel axis, 'b 1 h w -> b 3 h w'": repeat(x, "b 1 h w -> b 1 h (w k)", k=3),
            "the image was tiled three times side by side: the 3 copies belong in the channel axis, "
            "'b 1 h w -> b 3 h w'": repeat(x, "b 1 h w -> b 1 h (k w)", k=3),
            "the image was tiled three times downwards (rows): the 3 copies belong in the channel axis, "
            "'b 1 h w -> b 3 h w'": repeat(x, "b 1 h w -> b 1 (k h) w", k=3),
            "channels came out last (B, H, W, 3): keep PyTorch's layout (B, C, H, W)": repeat(x, "b 1 h w -> b h w k", k=3),
            "the one channel was not copied: the output needs 3 channels": x,
        }
        for k in (2, 4):
            found[f"{k} channels instead of 3: RGB has exactly 3 (red, green, blue)"] = repeat(x, "b 1 h w -> b k h w", k=k)
        return found

    _run_cases(
        "to_rgb", fn, to_rgb, cases, mistakes,
        hint="every output channel [b, k, :, :] (k = 0, 1, 2) must equal the grey channel [b, 0, :, :]",
        shape_hint="the output shape is (B, 3, H, W)",
    )
    checks.passed("to_rgb", "matches the reference on 2 seeded batches")


@checks.exercise("image_grid")
def check_image_grid(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """image_grid(images, rows): (B, C, H, W) -> (C, rows·H, cols·W), filled row by row."""
    cases = [
        (checks.seeded(6, 1, 4, 5, seed=9), 2),
        (checks.seeded(6, 3, 3, 4, seed=10), 3),
        (checks.seeded(8, 1, 5, 5, seed=11), 4),
    ]

    def mistakes(x: torch.Tensor, rows: int) -> dict[str, torch.Tensor]:
        return {
            "the images are placed column by column: image i belongs in row i // cols, column i % cols, "
            "so split the batch as (r c), rows first":
                rearrange(x, "(c r) ch h w -> ch (r h) (c w)", r=rows),
            "rows and columns are swapped (the grid is transposed): the output is (C, rows·H, cols·W)":
                rearrange(x, "(r c) ch h w -> ch (c h) (r w)", r=rows),
            "the pixels of different images are interleaved: inside each group put the grid index first, "
            "(r h) and (c w), not (h r) and (w c)":
                rearrange(x, "(r c) ch h w -> ch (h r) (w c)", r=rows),
            "the channel axis came out last: return (C, rows·H, cols·W), channels first":
                rearrange(x, "(r c) ch h w -> (r h) (c w) ch", r=rows),
        }

    _run_cases(
        "image_grid", fn, image_grid, cases, mistakes,
        hint="image i must sit in grid row i // cols, column i % cols (cols = B / rows)",
        shape_hint="the output shape is (C, rows·H, cols·W), with cols = B / rows",
    )
    checks.passed("image_grid", "matches the reference on 3 seeded batches")
