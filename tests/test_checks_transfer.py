"""Week 07 checks pass on right code and fail, with expected / got / hint, on the classic mistakes."""

from __future__ import annotations

import re

import pytest
import torch
from check_helpers import expect_failure as _fails
from check_helpers import stub as _stub
from torch import nn

from vitlib.checks.transfer import (
    check_auroc,
    check_max_softmax_probability,
    check_open_set_labels,
    check_prepare_linear_probe,
)
from vitlib.transfer import (
    auroc,
    max_softmax_probability,
    open_set_labels,
    prepare_linear_probe,
)

# --- maximum softmax probability ------------------------------------------------------------------


def test_msp_passes_on_the_reference(capsys):
    check_max_softmax_probability(max_softmax_probability)
    assert capsys.readouterr().out == "✓ max_softmax_probability: matches vitlib on 3 batches of logits\n"


def test_msp_passes_on_a_hand_written_stable_softmax(capsys):
    def mine(logits):
        shifted = logits - logits.max(dim=-1, keepdim=True).values
        probabilities = shifted.exp() / shifted.exp().sum(dim=-1, keepdim=True)
        return probabilities.max(dim=-1).values

    check_max_softmax_probability(mine)
    assert capsys.readouterr().out.startswith("✓ max_softmax_probability")


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda logits: logits.max(dim=-1).values, "that is the largest logit"),
        (lambda logits: logits.softmax(dim=0).max(dim=-1).values, "softmax over the batch axis"),
        (lambda logits: logits.softmax(dim=-1).argmax(dim=-1), "argmax gives which class wins"),
        (lambda logits: logits.log_softmax(dim=-1).max(dim=-1).values, "log of the probability"),
        (lambda logits: logits.softmax(dim=-1).max(dim=-1, keepdim=True).values, "drop keepdim=True"),
        (lambda logits: logits.softmax(dim=-1).max(dim=-1), "take .values"),
        (lambda logits: (logits.exp() / logits.exp().sum(dim=-1, keepdim=True)).max(dim=-1).values, "subtract the row maximum"),
        (lambda logits: logits.softmax(dim=-1).min(dim=-1).values, "take the max"),
    ],
)
def test_msp_mistakes(wrong, hint):
    _fails(check_max_softmax_probability, wrong, re.escape(hint))


def test_msp_stub():
    with pytest.raises(NotImplementedError, match="max_softmax_probability is not written yet"):
        check_max_softmax_probability(_stub)


# --- AUROC ------------------------------------------------------------------------------------------


def _pairwise(known, unknown, tie=0.5, reverse=False):
    k, u = known[:, None].double(), unknown[None, :].double()
    if reverse:
        k, u = u, k
    return ((k > u).double() + tie * (k == u).double()).mean().item()


def test_auroc_passes_on_the_reference(capsys):
    check_auroc(auroc)
    assert capsys.readouterr().out == "✓ auroc: matches the Mann-Whitney form on 4 sets of scores, ties counted ½\n"


def test_auroc_passes_on_the_pairwise_form_and_a_0d_tensor(capsys):
    check_auroc(lambda k, u: torch.tensor(_pairwise(k, u)))
    assert capsys.readouterr().out.startswith("✓ auroc")


def _accuracy_at_half(known, unknown):
    return (((known >= 0.5).sum() + (unknown < 0.5).sum()) / (len(known) + len(unknown))).item()


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda k, u: _pairwise(k, u, reverse=True), "orientation is reversed"),
        (lambda k, u: 1 - _pairwise(k, u), "orientation is reversed"),
        (lambda k, u: _pairwise(k, u, tie=0.0), "ties are ignored"),
        (lambda k, u: _pairwise(k, u, tie=1.0), "ties count ½, not 1"),
        (_accuracy_at_half, "accuracy at one threshold"),
        (lambda k, u: [_pairwise(k, u)], "return a float"),
        (lambda k, u: (k.mean() - u.mean()).item(), "compare every known score with every unknown score"),
    ],
)
def test_auroc_mistakes(wrong, hint):
    _fails(check_auroc, wrong, re.escape(hint))


def test_auroc_stub():
    with pytest.raises(NotImplementedError, match="auroc is not written yet"):
        check_auroc(_stub)


# --- open-set labels ---------------------------------------------------------------------------------


def _right_labels(labels, known, other):
    new = torch.full_like(labels, -1)
    for i, c in enumerate(known):
        new[labels == c] = i
    for c in other:
        new[labels == c] = len(known)
    return new


def test_open_set_labels_passes(capsys):
    check_open_set_labels(open_set_labels)
    check_open_set_labels(_right_labels)
    assert capsys.readouterr().out == "✓ open_set_labels: known, other and unseen classes labelled as vitlib does\n" * 2


def _sorted_known(labels, known, other):
    return _right_labels(labels, sorted(known), other)


def _unseen_kept(labels, known, other):
    new = labels.clone()
    for i, c in enumerate(known):
        new[labels == c] = i
    for c in other:
        new[labels == c] = len(known)
    return new


def _other_minus_one(labels, known, other):
    return _right_labels(labels, known, [])


def _other_each_own(labels, known, other):
    new = _right_labels(labels, known, [])
    for j, c in enumerate(other):
        new[labels == c] = len(known) + j
    return new


def _in_place(labels, known, other):
    for i, c in enumerate(known):
        labels[labels == c] = i
    return labels


def _collision(labels, known, other):
    new = labels.clone()
    for i, c in enumerate(known):
        new[new == c] = i  # compares with labels already rewritten
    for c in other:
        new[new == c] = len(known)
    new[new > len(known)] = -1
    return new


def _float(labels, known, other):
    return _right_labels(labels, known, other).float()


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda labels, known, other: labels.clone(), "the original labels were kept"),
        (_sorted_known, "in the order of `known`"),
        (_unseen_kept, "unseen class kept its original label"),
        (_other_minus_one, "single extra class K"),
        (_other_each_own, "single extra class K"),
        (_in_place, "build the result in a new tensor"),
        (_collision, "collided with an original one"),
        (_float, "torch.int64"),
    ],
)
def test_open_set_labels_mistakes(wrong, hint):
    _fails(check_open_set_labels, wrong, re.escape(hint))


def test_open_set_labels_stub():
    with pytest.raises(NotImplementedError, match="open_set_labels is not written yet"):
        check_open_set_labels(_stub)


# --- linear probe -------------------------------------------------------------------------------------


def test_prepare_linear_probe_passes(capsys):
    check_prepare_linear_probe(prepare_linear_probe)
    assert capsys.readouterr().out == "✓ prepare_linear_probe: a new zero-initialised head learns, everything else is frozen\n"


def _zero_head(model, num_classes):
    head = nn.Linear(model.config.hidden_dim, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def _not_frozen(model, num_classes):
    model.head = _zero_head(model, num_classes)
    return model


def _only_eval(model, num_classes):
    model.eval()
    model.head = _zero_head(model, num_classes)
    return model


def _head_frozen(model, num_classes):
    model.head = _zero_head(model, num_classes)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _old_head(model, num_classes):
    for p in model.parameters():
        p.requires_grad_(False)
    model.head.requires_grad_(True)
    return model


def _random_head(model, num_classes):
    for p in model.parameters():
        p.requires_grad_(False)
    model.head = nn.Linear(model.config.hidden_dim, num_classes)
    return model


def _no_return(model, num_classes):
    prepare_linear_probe(model, num_classes)


def _reinitialised(model, num_classes):
    model.reset_parameters()
    return prepare_linear_probe(model, num_classes)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_not_frozen, "the backbone is not frozen"),
        (_only_eval, "model.eval() does not freeze"),
        (_head_frozen, "freeze the backbone BEFORE you create the new head"),
        (_old_head, "the old 10-class head is still there"),
        (_random_head, "nn.init.zeros_"),
        (_no_return, "return model"),
        (_reinitialised, "do not re-initialise"),
    ],
)
def test_prepare_linear_probe_mistakes(wrong, hint):
    _fails(check_prepare_linear_probe, wrong, re.escape(hint))


def test_prepare_linear_probe_stub():
    with pytest.raises(NotImplementedError, match="prepare_linear_probe is not written yet"):
        check_prepare_linear_probe(_stub)
