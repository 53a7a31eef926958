"""The checks of week 00 (einops warm-up): pass on a right answer, name the common mistakes, explain a stub."""

from __future__ import annotations


import pytest
import torch
from einops import rearrange, reduce, repeat

from vitlib import checks
from vitlib.checks import setup as week
from check_helpers import expect_failure as _fails_with, stub as _stub


# --- right answers pass and print one deterministic line ----------------------------------------


@pytest.mark.parametrize(
    "check, right, line",
    [
        (week.check_channels_last, lambda x: x.permute(0, 2, 3, 1), "✓ channels_last: matches the reference on 3 seeded batches\n"),
        (week.check_downsample, lambda x, f: torch.nn.functional.avg_pool2d(x, f),
         "✓ downsample: matches average pooling on 3 seeded batches (f = 2, 3, 4)\n"),
        (week.check_to_rgb, lambda x: x.expand(-1, 3, -1, -1), "✓ to_rgb: matches the reference on 2 seeded batches\n"),
        (week.check_image_grid, lambda x, r: torch.cat([torch.cat(list(row), dim=-1) for row in x.split(len(x) // r)], dim=-2),
         "✓ image_grid: matches the reference on 3 seeded batches\n"),
    ],
)
def test_a_right_answer_passes(check, right, line, capsys):
    check(right)
    assert capsys.readouterr().out == line
    assert checks.has_passed(line.split(":")[0][2:])


def test_the_references_pass(capsys):
    week.check_channels_last(week.channels_last)
    week.check_downsample(week.downsample)
    week.check_to_rgb(week.to_rgb)
    week.check_image_grid(week.image_grid)
    assert capsys.readouterr().out.count("✓") == 4


# --- stubs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check, name",
    [
        (week.check_channels_last, "channels_last"),
        (week.check_downsample, "downsample"),
        (week.check_to_rgb, "to_rgb"),
        (week.check_image_grid, "image_grid"),
    ],
)
def test_a_stub_says_not_written_yet(check, name):
    with pytest.raises(NotImplementedError, match=f"{name} is not written yet"):
        check(_stub)
    assert not checks.has_passed(name)


# --- common mistakes are named -------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x: rearrange(x, "b c h w -> b w h c"), r"H and W are swapped"),
        (lambda x: x, r"channel axis has not moved"),
        (lambda x: x.reshape(x.shape[0], x.shape[2], x.shape[3], x.shape[1]), r"reshape/view only re-reads"),
        (lambda x: x.permute(0, 3, 2, 1).transpose(1, 2).flip(1), r"hint:     the output pixel"),  # wrong, unknown
    ],
)
def test_channels_last_mistakes(wrong, hint):
    _fails_with(week.check_channels_last, wrong, hint)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x, f: reduce(x, "b c (h f1) (w f2) -> b c h w", "max", f1=f, f2=f), r"max instead of mean"),
        (lambda x, f: reduce(x, "b c (h f1) (w f2) -> b 1 h w", "mean", f1=f, f2=f), r"averaged over the channels too"),
        (lambda x, f: reduce(x, "b c (h f1) (w f2) -> b h w", "mean", f1=f, f2=f), r"averaged over the channels too"),
        (lambda x, f: reduce(x, "b c (f1 h) (f2 w) -> b c h w", "mean", f1=f, f2=f), r"\(f1 h\) groups pixels"),
        (lambda x, f: reduce(x, "b c (h f1) (w f2) -> b c h w", "sum", f1=f, f2=f), r"sum instead of mean"),
    ],
)
def test_downsample_mistakes(wrong, hint):
    _fails_with(week.check_downsample, wrong, hint)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x: repeat(x, "b 1 h w -> b 1 h (w k)", k=3), r"copies went into the width"),
        (lambda x: repeat(x, "b 1 h w -> b 1 (k h) w", k=3), r"tiled three times downwards"),
        (lambda x: repeat(x, "b 1 h w -> b 1 h (k w)", k=3), r"tiled three times side by side"),
        (lambda x: repeat(x, "b 1 h w -> b 4 h w"), r"4 channels instead of 3"),
        (lambda x: repeat(x, "b 1 h w -> b h w 3"), r"channels came out last"),
    ],
)
def test_to_rgb_mistakes(wrong, hint):
    _fails_with(week.check_to_rgb, wrong, hint)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x, r: rearrange(x, "(c r) ch h w -> ch (r h) (c w)", r=r), r"placed column by column"),
        (lambda x, r: rearrange(x, "(r c) ch h w -> ch (c h) (r w)", r=r), r"rows and columns are swapped"),
        (lambda x, r: rearrange(x, "(r c) ch h w -> ch (h r) (w c)", r=r), r"interleaved"),
    ],
)
def test_image_grid_mistakes(wrong, hint):
    _fails_with(week.check_image_grid, wrong, hint)


def test_a_crash_and_an_in_place_edit_are_reported():
    with pytest.raises(checks.CheckFailed, match="channels_last raised RuntimeError"):
        week.check_channels_last(lambda x: x.permute(0, 2, 3, 1, 4))

    def in_place(x, f):
        x.mul_(2)
        return week.downsample(x, f) / 2

    _fails_with(week.check_downsample, in_place, r"don't write into the input")


def test_a_list_is_not_a_tensor():
    _fails_with(week.check_to_rgb, lambda x: x.tolist(), r"return the tensor itself")
