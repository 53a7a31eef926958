"""Week 06 checks pass on right code and fail, with expected / got / hint, on the classic mistakes."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from check_helpers import expect_failure as _fails
from check_helpers import stub as _stub
from einops import rearrange

from vitlib import viz
from vitlib.checks.viz import (
    check_attention_maps,
    check_attention_rollout,
    check_mean_attention_distance,
    check_position_similarity,
)

# --- attention maps ---------------------------------------------------------------------------


def _maps(model, images, *, eval_mode=True, no_grad=True, softmax=True, scale=True, norm=True, chain=True, transpose=False, mean=False):
    """A student's attention_maps, written out, with switches for the mistakes."""
    if eval_mode:
        model.eval()
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        z0 = model.embed(images)
        z, maps = z0, []
        for block in model.encoder.layers:
            x = z if chain else z0
            h = block.norm1(x) if norm else x
            q, k, _ = rearrange(block.attn.qkv(h), "b n (three h d) -> three b h n d", three=3, h=block.attn.num_heads)
            scores = (k @ q.transpose(-2, -1)) if transpose else (q @ k.transpose(-2, -1))
            if scale:
                scores = scores / math.sqrt(q.shape[-1])
            a = scores.softmax(dim=-2 if transpose else -1) if softmax else scores
            maps.append(a.mean(dim=1) if mean else a)
            z = block(x)
    return maps


def test_attention_maps_passes_on_the_written_out_solution_and_on_vitlib(capsys):
    check_attention_maps(_maps)
    check_attention_maps(viz.attention_maps)
    assert capsys.readouterr().out == "✓ attention_maps: post-softmax maps of all 3 layers match vitlib's\n" * 2


@pytest.mark.parametrize(
    "mistake, hint",
    [
        (dict(softmax=False), "before the softmax"),
        (dict(scale=False), "without dividing by √D_h"),
        (dict(norm=False), "norm1"),
        (dict(chain=False), "every layer got z_0"),
        (dict(eval_mode=False), "model.eval()"),
        (dict(mean=True), "don't average over the heads"),
        (dict(transpose=True), "row i is where token i looks"),
    ],
)
def test_attention_maps_mistakes(mistake, hint):
    _fails(check_attention_maps, lambda model, images: _maps(model, images, **mistake), hint.replace("(", r"\(").replace(")", r"\)").replace(".", r"\."))


def test_attention_maps_without_no_grad():
    _fails(check_attention_maps, lambda m, x: _maps(m, x, no_grad=False), r"autograd on[\s\S]*require grad[\s\S]*with torch\.no_grad\(\):")
    # Maps computed with autograd on, then detached, are right and carry no graph: not caught (the check sees only
    # what the function returns and leaves; no hook on the model, which in grading is a copy in the student's kernel).


def test_attention_maps_under_inference_mode_or_a_decorator_pass(capsys):
    @torch.inference_mode()
    def inference(model, images):
        return _maps(model, images, no_grad=False)

    @torch.no_grad()
    def decorated(model, images):
        return _maps(model, images, no_grad=False)

    check_attention_maps(inference)
    check_attention_maps(decorated)
    assert capsys.readouterr().out == "✓ attention_maps: post-softmax maps of all 3 layers match vitlib's\n" * 2


def test_attention_maps_random_in_eval_mode():
    def noisy(model, images):
        return [a + 1e-3 * torch.rand_like(a) for a in _maps(model, images)]

    message = _fails(check_attention_maps, noisy, r"something random is in your computation")
    assert "model.eval()" not in message


def test_attention_maps_only_the_last_layer_or_one_tensor():
    _fails(check_attention_maps, lambda m, x: _maps(m, x)[-1:], "loop over model.encoder.layers")
    _fails(check_attention_maps, lambda m, x: _maps(m, x)[-1], "collect the map of every layer")


def test_attention_maps_stub():
    with pytest.raises(NotImplementedError, match="attention_maps is not written yet"):
        check_attention_maps(_stub)


# --- rollout ------------------------------------------------------------------------------------


def _rollout(maps, residual=True, renormalise=True, reverse=False, reduce="mean"):
    r = None
    for a in maps:
        m = a.mean(dim=1) if reduce == "mean" else a.amax(dim=1)
        if residual:
            m = 0.5 * m + 0.5 * torch.eye(m.shape[-1])  # the same, written as timm-style 0.5 A + 0.5 I
        if renormalise:
            m = m / m.sum(dim=-1, keepdim=True)
        r = m if r is None else (r @ m if reverse else m @ r)
    return r


def test_attention_rollout_passes(capsys):
    check_attention_rollout(_rollout)
    assert capsys.readouterr().out == "✓ attention_rollout: matches vitlib on 2 stacks of maps\n"


@pytest.mark.parametrize(
    "mistake, hint",
    [
        (dict(residual=False), "no residual"),
        (dict(residual=False, renormalise=False), "no residual"),
        (dict(reverse=True), "wrong order"),
        (dict(reduce="max"), "average them"),
    ],
)
def test_attention_rollout_mistakes(mistake, hint):
    _fails(check_attention_rollout, lambda maps: _rollout(maps, **mistake), hint)


def test_attention_rollout_without_renormalising():
    def unnormalised(maps):
        r = None
        for a in maps:
            m = a.mean(dim=1) + torch.eye(a.shape[-1])
            r = m if r is None else m @ r
        return r

    _fails(check_attention_rollout, unnormalised, "divide each row by its sum")


def test_attention_rollout_keeping_the_heads_is_a_shape_error():
    _fails(check_attention_rollout, lambda maps: maps[-1], r"heads are averaged")


def test_attention_rollout_stub():
    with pytest.raises(NotImplementedError, match="attention_rollout is not written yet"):
        check_attention_rollout(_stub)


# --- position similarity -------------------------------------------------------------------------


def test_position_similarity_passes(capsys):
    def mine(pos):
        p = pos[0, 1:]
        return F.cosine_similarity(p[:, None], p[None, :], dim=-1)

    check_position_similarity(mine)
    assert capsys.readouterr().out == "✓ position_similarity: cosine similarities of 16 position embeddings match vitlib's\n"


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda pos: pos[0, 1:] @ pos[0, 1:].T, "plain dot product"),
        (lambda pos: F.normalize(pos[0, 1:], dim=0) @ F.normalize(pos[0, 1:], dim=0).T, "wrong axis"),
        (lambda pos: F.normalize(pos[0], dim=-1) @ F.normalize(pos[0], dim=-1).T, "class token is still in"),
        (lambda pos: torch.cdist(pos[0, 1:], pos[0, 1:]), "cos\\(a, b\\)"),
    ],
)
def test_position_similarity_mistakes(wrong, hint):
    _fails(check_position_similarity, wrong, hint)


def test_position_similarity_stub():
    with pytest.raises(NotImplementedError, match="position_similarity is not written yet"):
        check_position_similarity(_stub)


# --- mean attention distance -------------------------------------------------------------------


def test_mean_attention_distance_passes(capsys):
    check_mean_attention_distance(viz.mean_attention_distance)
    assert capsys.readouterr().out == "✓ mean_attention_distance: distances of 4 heads match vitlib's\n"


def _distance(maps, patch_size, *, pixels=True, renormalise=True, with_class=False, mean_heads=False):
    n = maps.shape[-1] - 1
    d = viz.patch_distances(math.isqrt(n), patch_size if pixels else 1)
    if with_class:
        a, d = maps, F.pad(d, (1, 0, 1, 0))
    else:
        a = maps[:, :, 1:, 1:]
        if renormalise:
            a = a / a.sum(-1, keepdim=True)
    per_head = (a * d).sum(-1).mean(dim=(0, 2))
    return per_head.mean() if mean_heads else per_head


@pytest.mark.parametrize(
    "mistake, hint",
    [
        (dict(pixels=False), "not pixels"),
        (dict(renormalise=False), "renormalise"),
        (dict(with_class=True), "class token is in"),
        (dict(mean_heads=True), "keep the heads"),
    ],
)
def test_mean_attention_distance_mistakes(mistake, hint):
    _fails(check_mean_attention_distance, lambda maps, p: _distance(maps, p, **mistake), hint)


def test_mean_attention_distance_stub():
    with pytest.raises(NotImplementedError, match="mean_attention_distance is not written yet"):
        check_mean_attention_distance(_stub)
