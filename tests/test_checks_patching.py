"""The checks of week 01 (patches and eq. 1): pass on a right answer, name the common mistakes, explain a stub."""

from __future__ import annotations

import re

import pytest
import torch
from einops import rearrange
from torch import nn

import vitlib.patching
from vitlib import checks
from vitlib.checks import patching as week
from check_helpers import expect_failure as _fails_with, stub as _stub


# --- patchify ------------------------------------------------------------------------------------


def _patchify_loops(images, p):
    """A right patchify written without einops: raster order, (p1 p2 c) inside a patch."""
    b, c, h, w = images.shape
    patches = [
        images[:, :, i : i + p, j : j + p].permute(0, 2, 3, 1).reshape(b, -1)
        for i in range(0, h, p)
        for j in range(0, w, p)
    ]
    return torch.stack(patches, dim=1)


def test_patchify_passes_for_vitlib_and_for_loops(capsys):
    week.check_patchify(vitlib.patching.patchify)
    week.check_patchify(_patchify_loops)
    line = "✓ patchify: matches vitlib on 5 seeded batches (C = 1, 2, 3; square and non-square grids)\n"
    assert capsys.readouterr().out == line * 2
    assert checks.has_passed("patchify")


def _pattern(right):
    return lambda x, p: rearrange(x, f"b c (h p1) (w p2) -> {right}", p1=p, p2=p)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_pattern("b (h w) (c p1 p2)"), r"channel-first flattening \(c p1 p2\).*\(p1 p2 c\)"),
        (_pattern("b (w h) (p1 p2 c)"), r"column by column.*raster order"),
        (_pattern("b (h w) (p2 p1 c)"), r"each patch is transposed"),
        (lambda x, p: x.reshape(x.shape[0], -1, p * p * x.shape[1]), r"plain reshape/view does not cut"),
        (_pattern("b (h w) p1 p2 c"), r"patches are not flattened"),
    ],
)
def test_patchify_mistakes(wrong, hint):
    _fails_with(week.check_patchify, wrong, hint)


def _scrambled(images, p):
    """The right pixels, each patch's numbers in a shuffled order: no known mistake."""
    patches = vitlib.patching.patchify(images, p)
    order = torch.randperm(patches.shape[-1], generator=torch.Generator().manual_seed(0))
    return patches[..., order]


def test_patchify_scrambled_pixels_say_where_they_differ():
    message = _fails_with(week.check_patchify, _scrambled, r"every pixel is there, some in the wrong place: patch n = ")
    assert re.search(r"\n  differs:  \d+ of 128 values differ; the first at index \[0, 0, \d+\]: \S+ where \S+ was expected", message), message
    assert len(message.splitlines()) <= 8


def test_patchify_changed_values_are_not_called_moved():
    message = _fails_with(week.check_patchify, lambda x, p: 2 * vitlib.patching.patchify(x, p), r"some values are not the image's pixels")
    assert "differs:" in message and "every pixel is there" not in message


def test_patchify_stub():
    with pytest.raises(NotImplementedError, match="patchify is not written yet"):
        week.check_patchify(_stub)


# --- num_patches ---------------------------------------------------------------------------------


def test_num_patches_passes(capsys):
    week.check_num_patches(week.num_patches)
    assert capsys.readouterr().out == "✓ num_patches: right for 8 sizes, and ValueError when P does not divide the size\n"


def _no_value_error(size, p):
    return (size // p) ** 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda s, p: s // p, r"along ONE side"),
        (lambda s, p: s * s // p, r"divide by P², the area of a patch"),
        (lambda s, p: s * s / p**2, r"integer division //"),
        (_no_value_error, r"raise ValueError when image_size % patch_size != 0"),
    ],
)
def test_num_patches_mistakes(wrong, hint):
    _fails_with(week.check_num_patches, wrong, hint)


def test_num_patches_stub():
    with pytest.raises(NotImplementedError, match="num_patches is not written yet"):
        week.check_num_patches(_stub)


# --- PatchEmbedding ------------------------------------------------------------------------------


class RightEmbedding(nn.Module):
    def __init__(self, patch_size, in_channels, hidden_dim):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size * patch_size * in_channels, hidden_dim)

    def forward(self, images):
        return self.proj(_patchify_loops(images, self.patch_size))


class NoProjection(RightEmbedding):
    def forward(self, images):
        return vitlib.patching.patchify(images, self.patch_size)


class WrongInFeatures(RightEmbedding):
    def __init__(self, patch_size, in_channels, hidden_dim):
        super().__init__(patch_size, in_channels, hidden_dim)
        self.proj = nn.Linear(patch_size * patch_size, hidden_dim)


class ChannelFirst(RightEmbedding):
    def forward(self, images):
        p = self.patch_size
        return self.proj(rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p))


class Detached(RightEmbedding):
    def forward(self, images):
        with torch.no_grad():
            return self.proj(vitlib.patching.patchify(images, self.patch_size))


class OtherName(nn.Module):
    def __init__(self, patch_size, in_channels, hidden_dim):
        super().__init__()
        self.linear = nn.Linear(patch_size * patch_size * in_channels, hidden_dim)


class Stub(nn.Module):
    def __init__(self, patch_size, in_channels, hidden_dim):
        super().__init__()
        raise NotImplementedError("write this exercise, then run the check cell below")


def test_patch_embedding_passes(capsys):
    week.check_patch_embedding(vitlib.patching.PatchEmbedding)
    week.check_patch_embedding(RightEmbedding)
    line = "✓ PatchEmbedding: matches vitlib.PatchEmbedding (values and gradients) for 3 sizes\n"
    assert capsys.readouterr().out == line * 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (NoProjection, r"you return the patches themselves"),
        (WrongInFeatures, r"in_features must count the channels too"),
        (ChannelFirst, r"flattened channel-first \(c p1 p2\)"),
        (Detached, r"no torch.no_grad\(\)"),
        (OtherName, r"store the projection E of eq. 1 as self.proj"),
    ],
)
def test_patch_embedding_mistakes(wrong, hint):
    _fails_with(week.check_patch_embedding, wrong, hint)


def test_patch_embedding_stub():
    with pytest.raises(NotImplementedError, match="PatchEmbedding is not written yet"):
        week.check_patch_embedding(Stub)


# --- class token and position embeddings --------------------------------------------------------


def test_add_class_token_and_positions_passes(capsys):
    def right(x, class_token, pos_embedding):
        return torch.cat([class_token.repeat(len(x), 1, 1), x], dim=1) + pos_embedding

    week.check_add_class_token_and_positions(week.add_class_token_and_positions)
    week.check_add_class_token_and_positions(right)
    line = "✓ add_class_token_and_positions: matches eq. 1 on 3 seeded batches (B = 1, 3, 2), gradients included\n"
    assert capsys.readouterr().out == line * 2


def _expanded(x, class_token):
    return class_token.expand(x.shape[0], -1, -1)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x, t, e: torch.cat([x, _expanded(x, t)], dim=1) + e, r"class token is at the end"),
        (lambda x, t, e: torch.cat([_expanded(x, t), x], dim=1), r"position embeddings are not added"),
        (lambda x, t, e: torch.cat([_expanded(x, t), x + e[:, 1:]], dim=1), r"class token got no position embedding"),
        (lambda x, t, e: torch.cat([t, x], dim=1) + e, r"worked for a batch of 1 but not for B = 3.*expand"),
        (lambda x, t, e: torch.cat([t, x + e], dim=1), r"prepend the class token first"),
        (lambda x, t, e: (torch.cat([_expanded(x, t), x], dim=1) + e).detach(), r"no \.detach\(\)"),
    ],
)
def test_add_class_token_and_positions_mistakes(wrong, hint):
    _fails_with(week.check_add_class_token_and_positions, wrong, hint)


def _typo(x, class_token, pos_embedding):
    return torch.cat([class_token.expand(x.shape[0], -1, -1), x], dim=1) + pos_embeding  # noqa: F821


def test_add_class_token_and_positions_crash_of_another_kind_claims_no_cause():
    with pytest.raises(checks.CheckFailed, match=r"raised NameError") as info:
        week.check_add_class_token_and_positions(_typo)
    message = str(info.value)
    assert "prepend" not in message and "expand" not in message, message
    assert isinstance(info.value.__cause__, NameError)


def test_add_class_token_and_positions_keeps_the_students_error_attached():
    with pytest.raises(checks.CheckFailed, match=r"N tokens met the N\+1 rows of E_pos") as info:
        week.check_add_class_token_and_positions(lambda x, t, e: torch.cat([t, x + e], dim=1))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_add_class_token_and_positions_in_place():
    def in_place(x, t, e):
        x.data.add_(1.0)
        return week.add_class_token_and_positions(x, t, e)

    _fails_with(week.check_add_class_token_and_positions, in_place, r"no in-place ops")


def test_add_class_token_and_positions_stub():
    with pytest.raises(NotImplementedError, match="add_class_token_and_positions is not written yet"):
        week.check_add_class_token_and_positions(_stub)
