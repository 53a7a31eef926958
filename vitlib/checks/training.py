"""Checks of week 05: the learning-rate schedule, one training step, and evaluation.

The references are in `vitlib.train`: `lr_at` (linear warm-up, cosine decay; Appendix B.1
of the paper) and the step inside `train` (cross-entropy with label smoothing, gradient
clipping at a global norm, AdamW).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from vitlib import checks
from vitlib.configs import create_vit
from vitlib.train import lr_at

__all__ = ["check_lr_schedule", "check_train_step", "check_evaluate_accuracy", "reference_train_step"]

_SCHEDULES = [  # (total_steps, warmup_steps, base_lr, min_lr)
    (100, 10, 1e-3, 1e-5),
    (50, 0, 3e-4, 0.0),
    (37, 5, 2e-3, 1e-4),
]


def _schedule(fn, total: int, warmup: int, base: float, low: float) -> torch.Tensor:
    return torch.tensor([float(fn(s, total, warmup, base, low)) for s in range(total)], dtype=torch.float64)


def _as_float(what: str, value) -> float:
    """The student's learning rate as a float (a number or a one-element tensor), else a failure that says what came."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        checks.fail(f"{what}: not a number", "a Python float (the learning rate)", checks._short(value), "return the number itself, e.g. base_lr * (step + 1) / warmup_steps")
    return float(value)


@checks.exercise("lr_schedule")
def check_lr_schedule(student_lr_at) -> None:
    """`lr_at(step, total_steps, warmup_steps, base_lr, min_lr)`: linear warm-up, then cosine to min_lr."""
    for total, warmup, base, low in _SCHEDULES:
        call = f"lr_at(step, {total}, {warmup}, {base:g}, {low:g})"
        got = torch.tensor(
            [_as_float(call.replace("step", str(s), 1), checks.call_student("lr_at", student_lr_at, s, total, warmup, base, low)) for s in range(total)],
            dtype=torch.float64,
        )
        expected = _schedule(lr_at, total, warmup, base, low)

        def cosine_from_zero(s, t, w, b, m):
            return m + 0.5 * (b - m) * (1 + math.cos(math.pi * s / t))

        def warmup_from_zero(s, t, w, b, m):
            return b * s / w if s < w else lr_at(s, t, w, b, m)

        def decays_to_zero(s, t, w, b, m):
            return lr_at(s, t, w, b, 0.0)

        def linear_decay(s, t, w, b, m):
            return b * (s + 1) / w if s < w else m + (b - m) * (1 - (s - w) / max(1, t - w))

        mistakes = {
            "no warm-up: the first `warmup_steps` steps should grow linearly from base_lr / warmup_steps to base_lr": _schedule(cosine_from_zero, total, warmup, base, low),
            "the first warm-up step should already be base_lr / warmup_steps (use (step + 1) / warmup_steps), not 0": _schedule(warmup_from_zero, total, warmup, base, low),
            "the cosine should end at min_lr, not at 0: min_lr + ½ (base_lr − min_lr)(1 + cos(π·progress))": _schedule(decays_to_zero, total, warmup, base, low),
            "that is a linear decay; after warm-up use a cosine: min_lr + ½ (base_lr − min_lr)(1 + cos(π·progress))": _schedule(linear_decay, total, warmup, base, low),
        }
        _, first = checks.where_they_differ(got, expected, 1e-9, "step")
        step = first[0]
        if step < warmup:
            hint = f"step {step} is in the warm-up (step < warmup_steps = {warmup}): there η = base_lr · (step + 1) / warmup_steps"
        else:
            hint = (
                f"step {step} is after the warm-up: η = min_lr + ½ (base_lr − min_lr)(1 + cos(π·progress)), "
                "progress = (step − warmup_steps) / (total_steps − warmup_steps)"
            )
        shown = ", ".join(f"{v:.4g}" for v in got[step : step + 4].tolist())
        checks.expect_close(
            f"lr_at over {total} steps with {warmup} warm-up steps",
            got,
            expected,
            tol=1e-9,
            mistakes=mistakes,
            hint=hint,
            index="step",
            got_as=f"{total} floats from {call}, from step {step}: [{'..., ' if step else ''}{shown}{', ...' if step + 4 < total else ''}]",
        )
    checks.passed("lr_schedule", f"matches vitlib on {len(_SCHEDULES)} schedules")


def _tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_vit("vit_course_28", patch_size=7, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
    with torch.no_grad():
        for p in model.parameters():  # the head starts at zero: perturb so every part has a gradient
            p.add_(0.1 * torch.randn_like(p))
    return model


def reference_train_step(model, images, labels, optimizer, max_norm, label_smoothing, *, zero_grad=True, clip_after=False):
    """One training step as `vitlib.train.train` takes it (and two classic mistakes, by switches)."""
    model.train()
    logits = model(images)
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if zero_grad:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_after:
        optimizer.step()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    else:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
    return loss.item(), norm.item()


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@checks.exercise("train_step")
def check_train_step(student_train_step) -> None:
    """`train_step(model, images, labels, optimizer, max_norm, label_smoothing) -> (loss, grad_norm)`."""
    images = checks.seeded(8, 1, 28, 28, seed=1)
    labels = torch.arange(8) % 10
    max_norm, smoothing = 0.05, 0.1  # a small max_norm so that clipping really happens (the norms are about 1.1)

    def run(step_fn, **switches):
        model = _tiny_model(0)
        # Plain SGD: AdamW divides by the gradient's size, which would hide missing clipping.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        results = [step_fn(model, images, labels, optimizer, max_norm, smoothing, **switches) for _ in range(2)]
        return model, results

    def clip_at_one(model, images, labels, optimizer, max_norm, label_smoothing):
        return reference_train_step(model, images, labels, optimizer, 1.0, label_smoothing)

    modes: list[bool] = []  # model.training after each of the student's steps (no hook: the model may be a copy)

    def student(model, *rest):
        model.eval()  # as an evaluation leaves it: train_step must switch to train mode itself
        result = checks.call_student("train_step", student_train_step, model, *rest)
        modes.append(model.training)
        return result

    ref_model, ref_results = run(reference_train_step)
    model, results = run(student)
    for result in results:
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            checks.fail("train_step's return value", "a tuple (loss, grad_norm) of Python floats", checks._short(result), "end with `return loss.item(), grad_norm.item()`")
        loss, norm = result
        if not isinstance(loss, (float, int)) or not isinstance(norm, (float, int)):
            checks.fail(
                "train_step's return value",
                "(loss, grad_norm) as Python floats",
                f"({type(loss).__name__}, {type(norm).__name__})",
                "return loss.item() and the norm that clip_grad_norm_ returns, .item()",
            )
    (loss, _), (ref_loss, _) = results[0], ref_results[0]  # the first step's loss depends on nothing else
    if abs(loss - ref_loss) > 1e-5 * max(1.0, abs(ref_loss)):
        no_smoothing = F.cross_entropy(_tiny_model(0)(images), labels).item()
        hint = (
            "label smoothing is missing: F.cross_entropy(logits, labels, label_smoothing=label_smoothing)"
            if abs(loss - no_smoothing) < 1e-5
            else "the loss is F.cross_entropy(model(images), labels, label_smoothing=label_smoothing), in train mode"
        )
        checks.fail("train_step's loss", f"{ref_loss:.6f}", f"{loss:.6f}", hint)
    mistakes = {
        "gradients accumulate over steps: call optimizer.zero_grad() before loss.backward()": _flat(run(reference_train_step, zero_grad=False)[0]),
        "the gradients were not clipped before the update: call torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) between loss.backward() and optimizer.step()": _flat(run(reference_train_step, clip_after=True)[0]),
        f"that is clipping at 1.0: clip at max_norm (here {max_norm}), the argument, not at 1.0": _flat(run(clip_at_one)[0]),
    }
    checks.expect_close(
        "the weights after two train_step calls",
        _flat(model),
        _flat(ref_model),
        tol=1e-4,
        mistakes=mistakes,
        hint="the first loss matches, the update does not: go through the steps of the text one by one "
        "(zero_grad, backward, clip_grad_norm_(model.parameters(), max_norm), optimizer.step)",
    )
    for (_, norm), (_, ref_norm) in zip(results, ref_results):
        if abs(norm - ref_norm) > 1e-4 * max(1.0, ref_norm):
            after = abs(norm - max_norm) < 1e-4 * max_norm
            checks.fail(
                "train_step's gradient norm",
                f"{ref_norm:.6f} (the total norm before clipping)",
                f"{norm:.6f}" + (" = max_norm, the norm after clipping" if after else ""),
                "return what torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) returns: the norm before clipping",
            )
    if not all(modes):
        checks.fail(
            "train_step: the forward pass ran in eval mode",
            "model(images) in train mode (dropout on), whatever mode the model came in",
            "model.training == False: the check handed in a model in eval mode, as evaluate_accuracy leaves it",
            "call model.train() first in train_step (step 1 of the text): after an evaluation, dropout would stay off",
        )
    checks.passed("train_step", "two steps update the weights as vitlib's training loop does")


class _GradRecorder(torch.nn.Module):
    """Wraps a model and records whether autograd was on during each forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.model(x)


@checks.exercise("evaluate_accuracy")
def check_evaluate_accuracy(student_evaluate) -> None:
    """`evaluate_accuracy(model, loader) -> float`: eval mode, no gradients, averaged over images."""
    torch.manual_seed(0)
    model = create_vit("vit_course_28", patch_size=7, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32, dropout=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    images = checks.seeded(50, 1, 28, 28, seed=3)
    labels = torch.arange(50) % 10
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)  # 16, 16, 16, 2: uneven batches

    model.eval()
    with torch.no_grad():
        predictions = model(images).argmax(-1)
    expected = (predictions == labels).float().mean().item()
    per_batch = sum((p == y).float().mean().item() for p, y in zip(predictions.split(16), labels.split(16))) / 4

    recorder = _GradRecorder(model)
    recorder.train()  # the student's function must switch to eval mode itself
    got = checks.call_student("evaluate_accuracy", student_evaluate, recorder, loader)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, float):
        checks.fail("evaluate_accuracy's result", "a Python float in [0, 1]", repr(got), "return correct / total as a float (e.g. .item())")
    if any(recorder.grad_enabled):
        checks.fail(
            "evaluate_accuracy: gradients were being recorded",
            "every forward pass inside torch.no_grad()",
            "a forward pass with autograd on",
            "wrap the loop in `with torch.no_grad():` (or decorate the function with @torch.no_grad()): it saves memory and time",
        )
    if abs(got - expected) > 1e-6:
        if recorder.training and abs(got - expected) > 1e-6:
            hint = "call model.eval() first: in train mode dropout is active and the predictions are random"
        elif abs(got - per_batch) < 1e-6:
            hint = "you averaged the accuracies of the batches; the last batch is smaller: count correct images and divide by the number of images"
        elif abs(got - expected * 100) < 1e-4:
            hint = "return a fraction in [0, 1], not a percentage"
        else:
            hint = "count (logits.argmax(-1) == labels) over all images, then divide by the number of images"
        checks.fail("evaluate_accuracy", f"{expected:.4f}", f"{got:.4f}", hint)
    checks.passed("evaluate_accuracy", "eval mode, no gradients, averaged over images")
