"""The checks of week 02 pass right code, and name the usual mistakes of wrong code."""

from __future__ import annotations

import math

import pytest
import torch

from vitlib import checks, scaled_dot_product_attention
from vitlib.checks import CheckFailed
from vitlib.checks.attention import (
    check_attention,
    check_attention_scores,
    check_softmax,
    reference_attention_scores,
    reference_softmax,
)
from check_helpers import expect_failure as _fails, stub as _stub


# --- attention_scores ----------------------------------------------------------------------------


def scores_right(q, k):
    return (q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1)  # scaled before the product: same result


def test_scores_pass(capsys):
    check_attention_scores(scores_right)
    check_attention_scores(reference_attention_scores)
    out = capsys.readouterr().out
    assert out.count("✓ attention_scores: matches q kᵀ / √d_k on 3 seeded inputs") == 2
    assert checks.has_passed("attention_scores")


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda q, k: q @ k.transpose(-2, -1), r"scale the scores: divide q kᵀ by √d_k"),
        (lambda q, k: q @ k.transpose(-2, -1) / q.shape[-1], r"your scores are q kᵀ / d_k: divide by √d_k once, not by d_k and not twice by √d_k"),
        (lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) / math.sqrt(k.shape[-1]), r"not twice by √d_k"),
        (lambda q, k: k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1]), r"the order is q kᵀ, not k qᵀ"),
        (lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(q.shape[-2]), r"size of the last axis"),
        (lambda q, k: (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).float(), r"keep the input's dtype"),
    ],
)
def test_scores_mistakes(wrong, hint):
    _fails(check_attention_scores, wrong, hint)


def test_scores_stub():
    with pytest.raises(NotImplementedError, match="attention_scores is not written yet"):
        check_attention_scores(_stub)


def test_scores_crash_is_a_check_failure():
    with pytest.raises(CheckFailed, match="raised RuntimeError") as info:
        check_attention_scores(lambda q, k: q @ k)  # no transpose: shapes do not match
    assert "k.T" not in str(info.value)  # no hint about a .T the student did not write


def _scores_with_dot_t(q, k):
    return q @ k.T / math.sqrt(q.shape[-1])  # fine for (N, d) inputs, wrong for batched heads


@pytest.mark.filterwarnings("ignore:The use of `x.T` on tensors:UserWarning")
def test_scores_with_k_dot_t_crash_on_batched_inputs_names_it():
    with pytest.raises(CheckFailed, match=r"raised RuntimeError") as info:
        check_attention_scores(_scores_with_dot_t)
    message = str(info.value)
    assert message.splitlines()[-1].startswith("  hint:     k.T reverses all axes of a batched tensor")
    assert message.endswith("transpose only the last two, k.transpose(-2, -1)")


# --- softmax -------------------------------------------------------------------------------------


def softmax_right(x, dim=-1):
    e = torch.exp(x - x.max(dim=dim, keepdim=True).values)
    return e / e.sum(dim=dim, keepdim=True)


def test_softmax_passes(capsys):
    check_softmax(softmax_right)
    check_softmax(reference_softmax)
    out = capsys.readouterr().out
    assert out.count("✓ softmax: matches torch.softmax, also on inputs near ±1000, with its gradient") == 2


def _no_max(x, dim=-1):
    e = x.exp()
    return e / e.sum(dim, keepdim=True)


def _global_max(x, dim=-1):
    e = (x - x.max()).exp()
    return e / e.sum(dim, keepdim=True)


def _wrong_axis(x, dim=-1):
    return softmax_right(x, dim=-2)


def _unnormalised(x, dim=-1):
    return torch.exp(x - x.max(dim=dim, keepdim=True).values)


def _no_keepdim(x, dim=-1):
    e = torch.exp(x - x.max(dim=dim, keepdim=True).values)
    return e / e.sum(dim)


def _ignores_dim(x, dim=-1):
    return softmax_right(x, -1)


def _detached(x, dim=-1):
    return softmax_right(x.detach(), dim)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_no_max, r"not finite(.|\n)*subtract the maximum first"),
        (_global_max, r"each row's own maximum"),
        (_wrong_axis, r"normalising over the wrong axis"),
        (_unnormalised, r"forgot to normalise"),
        (_no_keepdim, r"keepdim=True"),
        (_ignores_dim, r"use the `dim` argument"),
        (_detached, r"no gradient"),
    ],
)
def test_softmax_mistakes(wrong, hint):
    _fails(check_softmax, wrong, hint)


def test_softmax_stub():
    with pytest.raises(NotImplementedError, match="softmax is not written yet"):
        check_softmax(_stub)


# --- attention -----------------------------------------------------------------------------------


def attention_right(q, k, v):
    weights = softmax_right(scores_right(q, k), dim=-1)
    return weights @ v, weights


def test_attention_passes(capsys):
    check_attention(attention_right)
    check_attention(scaled_dot_product_attention)
    out = capsys.readouterr().out
    assert out.count("✓ attention: matches vitlib on (B, h, N, d) inputs with N = M and N ≠ M, with gradients") == 2


def _attention_wrong_axis(q, k, v):
    weights = reference_attention_scores(q, k).softmax(dim=-2)
    return weights @ v, weights


def _attention_unnormalised(q, k, v):
    weights = reference_attention_scores(q, k).exp()
    return weights @ v, weights


def _attention_by_d_k(q, k, v):
    weights = (q @ k.transpose(-2, -1) / q.shape[-1]).softmax(dim=-1)
    return weights @ v, weights


def _attention_unscaled(q, k, v):
    weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    return weights @ v, weights


def _attention_transposed(q, k, v):
    weights = reference_attention_scores(q, k).softmax(dim=-1)
    return weights.transpose(-2, -1) @ v, weights


def _attention_swapped(q, k, v):
    out, weights = attention_right(q, k, v)
    return weights, out


def _attention_output_only(q, k, v):
    return attention_right(q, k, v)[0]


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_attention_wrong_axis, r"rows of your attention matrix don't sum to 1, its columns do: the softmax is over the queries; use dim=-1"),
        (_attention_unnormalised, r"rows of your attention matrix don't sum to 1: normalise each query's scores over the keys"),
        (_attention_by_d_k, r"softmax\(q kᵀ / d_k\): divide the scores by √d_k once, not by d_k and not twice by √d_k"),
        (_attention_unscaled, r"missing √d_k"),
        (_attention_transposed, r"weights @ v, not weightsᵀ @ v"),
        (_attention_swapped, r"return \(output, weights\) in that order"),
        (_attention_output_only, r"a tuple \(output, weights\)"),
    ],
)
def test_attention_mistakes(wrong, hint):
    _fails(check_attention, wrong, hint)


def test_attention_stub():
    with pytest.raises(NotImplementedError, match="attention is not written yet"):
        check_attention(_stub)


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    check_attention(attention_right)
    after = torch.rand(3)
    assert torch.equal(before, after)
