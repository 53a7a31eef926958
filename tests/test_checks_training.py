"""Week 05 checks pass on right code and fail, with expected / got / hint, on the classic mistakes."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from vitlib.checks.training import check_evaluate_accuracy, check_lr_schedule, check_train_step
from vitlib.train import lr_at
from check_helpers import expect_failure as _fails, stub as _stub


# --- lr schedule ---------------------------------------------------------------------------------


def test_lr_schedule_passes_on_the_reference(capsys):
    check_lr_schedule(lr_at)
    assert capsys.readouterr().out == "✓ lr_schedule: matches vitlib on 3 schedules\n"


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda s, t, w, b, m: m + 0.5 * (b - m) * (1 + math.cos(math.pi * s / t)), "no warm-up"),
        (lambda s, t, w, b, m: lr_at(s, t, w, b, 0.0), "should end at min_lr, not at 0"),
        (lambda s, t, w, b, m: b * s / w if s < w else lr_at(s, t, w, b, m), "(step + 1) / warmup_steps"),
        (lambda s, t, w, b, m: b * (s + 1) / w if s < w else m + (b - m) * (1 - (s - w) / max(1, t - w)), "linear decay"),
    ],
)
def test_lr_schedule_mistakes(wrong, hint):
    _fails(check_lr_schedule, wrong, re.escape(hint))


def test_lr_schedule_describes_the_floats_and_names_the_step():
    def off_from_37(s, t, w, b, m):
        return lr_at(s, t, w, b, m) * (1.01 if s >= 37 else 1.0)

    message = _fails(check_lr_schedule, off_from_37, r"step 37 is after the warm-up")
    assert "got:      100 floats from lr_at(step, 100, 10, 0.001, 1e-05), from step 37: [..., " in message
    assert "differs:  63 of 100 values differ; the first at step 37: 0.0008039 where 0.000796 was expected" in message
    assert "tensor of shape (100,), dtype torch.float64 from [37]" not in message.split("got:")[1]
    assert len(message.splitlines()) <= 8


def test_lr_schedule_names_a_wrong_warm_up_step():
    def warmup_too_fast(s, t, w, b, m):
        return b * (s + 2) / w if s < w else lr_at(s, t, w, b, m)

    _fails(check_lr_schedule, warmup_too_fast, re.escape("step 0 is in the warm-up (step < warmup_steps = 10)"))


def test_lr_schedule_that_returns_no_number():
    def returns_nothing(s, t, w, b, m):
        lr_at(s, t, w, b, m)

    _fails(check_lr_schedule, returns_nothing, r"lr_at\(0, 100, 10, 0\.001, 1e-05\)[\s\S]*got:      None[\s\S]*return the number itself")


def test_lr_schedule_stub():
    with pytest.raises(NotImplementedError, match="lr_at is not written yet"):
        check_lr_schedule(_stub)


# --- train step ----------------------------------------------------------------------------------


def _right_step(model, images, labels, optimizer, max_norm, label_smoothing):
    model.train()
    loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item(), norm.item()


def test_train_step_passes(capsys):
    check_train_step(_right_step)
    assert capsys.readouterr().out == "✓ train_step: two steps update the weights as vitlib's training loop does\n"


def _no_zero_grad(model, images, labels, optimizer, max_norm, label_smoothing):
    loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item(), norm.item()


def _clip_after_step(model, images, labels, optimizer, max_norm, label_smoothing):
    loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return loss.item(), norm.item()


def _no_smoothing(model, images, labels, optimizer, max_norm, label_smoothing):
    return _right_step(model, images, labels, optimizer, max_norm, 0.0)


def _no_clipping(model, images, labels, optimizer, max_norm, label_smoothing):
    loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    optimizer.step()
    return loss.item(), norm.item()


def _returns_tensors(model, images, labels, optimizer, max_norm, label_smoothing):
    loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss, norm


def _no_train_mode(model, images, labels, optimizer, max_norm, label_smoothing):
    loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item(), norm.item()


def _clip_at_one(model, images, labels, optimizer, max_norm, label_smoothing):
    model.train()
    loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item(), norm.item()


def _norm_after_clipping(model, images, labels, optimizer, max_norm, label_smoothing):
    model.train()
    loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    optimizer.step()
    return loss.item(), norm.item()


def _loss_only(model, images, labels, optimizer, max_norm, label_smoothing):
    return _right_step(model, images, labels, optimizer, max_norm, label_smoothing)[0]


def _lr_too_large(model, images, labels, optimizer, max_norm, label_smoothing):
    for group in optimizer.param_groups:
        group["lr"] = 0.6
    return _right_step(model, images, labels, optimizer, max_norm, label_smoothing)


def _train_mode_by_forward_call(model, images, labels, optimizer, max_norm, label_smoothing):
    model.train()
    loss = F.cross_entropy(model.forward(images), labels, label_smoothing=label_smoothing)  # not model(...): no hook
    optimizer.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item(), norm.item()


def test_train_step_passes_in_another_style(capsys):
    check_train_step(_train_mode_by_forward_call)
    assert capsys.readouterr().out == "✓ train_step: two steps update the weights as vitlib's training loop does\n"


def test_train_step_catch_all_names_no_cause():
    message = _fails(check_train_step, _lr_too_large, r"the first loss matches, the update does not")
    assert "the order is" not in message


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_no_train_mode, "call model.train() first in train_step"),
        (_clip_at_one, "clip at max_norm (here 0.05), the argument, not at 1.0"),
        (_norm_after_clipping, "= max_norm, the norm after clipping"),
        (_loss_only, "a tuple (loss, grad_norm)"),
        (_no_zero_grad, "call optimizer.zero_grad() before loss.backward()"),
        (_clip_after_step, "were not clipped before the update"),
        (_no_smoothing, "label smoothing is missing"),
        (_no_clipping, "were not clipped before the update"),
        (_returns_tensors, "return loss.item()"),
    ],
)
def test_train_step_mistakes(wrong, hint):
    _fails(check_train_step, wrong, re.escape(hint))


def test_train_step_stub():
    with pytest.raises(NotImplementedError, match="train_step is not written yet"):
        check_train_step(_stub)


# --- evaluation ------------------------------------------------------------------------------------


@torch.no_grad()
def _right_evaluate(model, loader):
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (model(images).argmax(-1) == labels).sum().item()
        total += labels.numel()
    return correct / total


def test_evaluate_passes(capsys):
    check_evaluate_accuracy(_right_evaluate)
    assert capsys.readouterr().out == "✓ evaluate_accuracy: eval mode, no gradients, averaged over images\n"


@torch.no_grad()
def _train_mode(model, loader):
    correct = total = 0
    for images, labels in loader:
        correct += (model(images).argmax(-1) == labels).sum().item()
        total += labels.numel()
    return correct / total


def _with_grad(model, loader):
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (model(images).argmax(-1) == labels).sum().item()
        total += labels.numel()
    return correct / total


@torch.no_grad()
def _mean_of_batches(model, loader):
    model.eval()
    accuracies = [(model(x).argmax(-1) == y).float().mean().item() for x, y in loader]
    return sum(accuracies) / len(accuracies)


@torch.no_grad()
def _percent(model, loader):
    return 100 * _right_evaluate(model, loader)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_train_mode, "call model.eval() first"),
        (_with_grad, "torch.no_grad()"),
        (_mean_of_batches, "the last batch is smaller"),
        (_percent, "not a percentage"),
    ],
)
def test_evaluate_mistakes(wrong, hint):
    _fails(check_evaluate_accuracy, wrong, re.escape(hint))


def test_evaluate_stub():
    with pytest.raises(NotImplementedError, match="evaluate_accuracy is not written yet"):
        check_evaluate_accuracy(_stub)
