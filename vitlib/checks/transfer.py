"""Checks of week 07: open-set scores, their evaluation, the task's labels, and a linear probe.

The references are in `vitlib.transfer`: `max_softmax_probability` (Hendrycks & Gimpel
2017), `auroc` (the Mann-Whitney form, ties counted ½), `open_set_labels` and
`prepare_linear_probe` (Dosovitskiy et al. 2020, Section 3.2: a zero-initialised head).
"""

from __future__ import annotations

import torch
from torch import nn

from vitlib import checks
from vitlib.configs import create_vit
from vitlib.transfer import auroc, max_softmax_probability, open_set_labels

__all__ = ["check_auroc", "check_max_softmax_probability", "check_open_set_labels", "check_prepare_linear_probe"]


# --- maximum softmax probability ------------------------------------------------------------------


def _msp_inputs() -> list[torch.Tensor]:
    return [
        checks.seeded(6, 4, seed=0) * 3,  # (B, K) with B != K: softmax over the wrong axis shows
        checks.seeded(5, 3, seed=1),
        checks.seeded(4, 2, seed=2) * 50 + 900,  # large logits: a hand-written exp overflows
    ]


@checks.exercise("max_softmax_probability")
def check_max_softmax_probability(student_msp) -> None:
    """`max_softmax_probability(logits)`: logits (B, K) -> max_k softmax(logits)_k, (B,)."""
    for logits in _msp_inputs():
        got = checks.call_student("max_softmax_probability", student_msp, logits.clone())
        if isinstance(got, tuple) and hasattr(got, "values"):
            checks.fail(
                "max_softmax_probability's result",
                "a tensor of shape (B,)",
                f"{type(got).__name__} (values and indices)",
                "tensor.max(dim=-1) returns (values, indices): take .values",
            )
        got = checks.expect_tensor("max_softmax_probability", got)
        B = logits.shape[0]
        if not got.dtype.is_floating_point and tuple(got.shape) == (B,) and torch.equal(got, logits.argmax(-1)):
            checks.fail(
                "max_softmax_probability",
                "the probability of the most likely class, e.g. 0.87",
                f"its index: {got.tolist()}",
                "argmax gives which class wins; the score is how sure the model is: softmax(...).max(dim=-1).values",
            )
        expected = max_softmax_probability(logits)
        checks.expect_close(
            f"max_softmax_probability of logits {tuple(logits.shape)}",
            got,
            expected,
            tol=1e-5,
            mistakes={
                "that is the largest logit: turn the logits into probabilities first (softmax over dim=-1), then take the max": logits.max(dim=-1).values,
                "softmax over the batch axis (dim=0): each image's probabilities are over its own K classes, so use dim=-1": logits.softmax(dim=0).max(dim=-1).values,
                "that is the log of the probability (log_softmax): use softmax": logits.log_softmax(dim=-1).max(dim=-1).values,
                "that is the smallest probability: take the max": logits.softmax(dim=-1).min(dim=-1).values,
                "one number per image, shape (B,): drop keepdim=True": logits.softmax(dim=-1).max(dim=-1, keepdim=True).values,
            },
            hint="softmax over the classes (dim=-1), then the largest probability of each row",
            shape_hint="one number per image: shape (B,), the maximum over the classes (dim=-1)",
        )
    checks.passed("max_softmax_probability", f"matches vitlib on {len(_msp_inputs())} batches of logits")


# --- AUROC ------------------------------------------------------------------------------------------


def _auroc_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [
        # by hand: 3 + 2.5 + 2.5 + 1 = 9 of 12 pairs -> 0.75 (the two 0.8-0.8 ties count ½ each)
        ("the example in the text", torch.tensor([0.9, 0.8, 0.8, 0.3]), torch.tensor([0.8, 0.4, 0.1])),
        ("40 known vs 25 unknown scores with many ties",
         torch.randint(3, 11, (40,), generator=g).float() / 10, torch.randint(0, 8, (25,), generator=g).float() / 10),
        ("30 known vs 50 unknown scores, no ties", torch.rand(30, generator=g) * 0.6 + 0.4, torch.rand(50, generator=g) * 0.7),
        ("every known score above every unknown one", torch.tensor([0.7, 0.95, 0.6]), torch.tensor([0.2, 0.55, 0.1, 0.3])),
    ]


def _pairs(known: torch.Tensor, unknown: torch.Tensor) -> tuple[float, float, float]:
    """(share of pairs known > unknown, share tied, share known < unknown)."""
    k, u = known.double()[:, None], unknown.double()[None, :]
    return (k > u).double().mean().item(), (k == u).double().mean().item(), (k < u).double().mean().item()


@checks.exercise("auroc")
def check_auroc(student_auroc) -> None:
    """`auroc(scores_known, scores_unknown) -> float`: P(known scores higher than unknown), ties ½."""
    cases = _auroc_cases()
    for what, known, unknown in cases:
        got = checks.call_student("auroc", student_auroc, known.clone(), unknown.clone())
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, float):
            checks.fail("auroc's result", "a Python float in [0, 1]", repr(got), "return a float, e.g. with .item()")
        expected = auroc(known, unknown)
        if abs(got - expected) <= 1e-6:
            continue
        above, tied, below = _pairs(known, unknown)
        n = known.numel() + unknown.numel()
        accuracies = {t: (((known >= t).sum() + (unknown < t).sum()) / n).item() for t in (0.5, float(torch.cat([known, unknown]).median()))}
        mistakes = [
            (1 - expected, "the orientation is reversed (you get 1 − AUROC): count the pairs where the KNOWN image scores higher"),
            (above, "ties are ignored: a tied pair (same score) counts ½, as a coin flip would decide it"),
            (above + tied, "ties count ½, not 1: use (known > unknown) + 0.5 · (known == unknown)"),
            (below + 0.5 * tied, "the orientation is reversed (you get 1 − AUROC): count the pairs where the KNOWN image scores higher"),
        ]
        for t, acc in accuracies.items():
            hint = (f"that is the accuracy at one threshold ({t:.2g}); the AUROC looks at every threshold "
                    "at once: the share of (known, unknown) pairs in which the known image scores higher")
            mistakes.append((acc, hint))
        hint = next((h for value, h in mistakes if abs(got - value) < 1e-6),
                    "compare every known score with every unknown score: mean of (known > unknown) + 0.5 · (known == unknown)")
        checks.fail(f"auroc on {what}", f"{expected:.6f}", f"{got:.6f}", hint)
    checks.passed("auroc", f"matches the Mann-Whitney form on {len(cases)} sets of scores, ties counted ½")


# --- open-set labels ---------------------------------------------------------------------------------

_KNOWN, _OTHER = (7, 2), (4, 9)  # known out of order: known[0] = 7 becomes 0


@checks.exercise("open_set_labels")
def check_open_set_labels(student_labels) -> None:
    """`open_set_labels(labels, known, other)`: known[i] -> i, other -> K, everything else -> -1."""
    labels = torch.randperm(60, generator=torch.Generator().manual_seed(3)) % 10  # (60,) every class, shuffled
    given = labels.clone()
    got = checks.call_student("open_set_labels", student_labels, given, _KNOWN, _OTHER)
    if not torch.equal(given, labels):
        checks.fail(
            "open_set_labels changed its input",
            "the labels you are given left as they are",
            "they were modified in place",
            "build the result in a new tensor (e.g. torch.full_like(labels, -1)) and compare with the original labels",
        )
    expected = open_set_labels(labels, _KNOWN, _OTHER)
    checks.expect_shape("open_set_labels", checks.expect_tensor("open_set_labels", got), tuple(expected.shape),
                        "one new label per image, the same shape as `labels`")
    if got.dtype != torch.long:
        checks.fail("open_set_labels: wrong dtype", "torch.int64 (labels for cross-entropy)", f"{got.dtype}",
                    "start from torch.full_like(labels, -1) (int64 like the labels), not from zeros of another dtype")
    if torch.equal(got, expected):
        checks.passed("open_set_labels", "known, other and unseen classes labelled as vitlib does")
        return
    K = len(_KNOWN)
    is_known = torch.isin(labels, torch.tensor(_KNOWN))  # (N,)
    is_other = torch.isin(labels, torch.tensor(_OTHER))  # (N,)
    is_unseen = ~(is_known | is_other)  # (N,)
    bad = got != expected  # (N,)
    # the first wrong image, known classes first: their mistakes explain the others
    for role, mask in (("known", is_known), ("other", is_other), ("unseen", is_unseen)):
        if (bad & mask).any():
            break
    first = int(torch.nonzero(bad & mask).flatten()[0])
    c = int(labels[first])
    if torch.equal(got, labels):
        hint = "the original labels were kept: the new task has its own labels, 0..K-1 for the known classes"
    elif role == "known" and int(got[first]) == sorted(_KNOWN).index(c):
        hint = "the known classes are numbered in the order of `known` (known[0] -> 0), not sorted"
    elif role == "known":
        hint = f"the i-th known class gets label i: class {c} is known[{_KNOWN.index(c)}]"
    elif role == "other":
        hint = f"every class in `other` becomes the single extra class K = len(known) = {K}"
    elif bool((got[is_unseen & (labels > K)] == -1).all()):
        hint = ("unseen images of classes 0..K kept labels of the task: a relabelled value collided with an original "
                "one. Compare with the ORIGINAL labels, and write into a new tensor filled with -1")
    elif int(got[first]) == c:
        hint = "an unseen class kept its original label: every class neither known nor other becomes -1"
    else:
        hint = "every class that is neither known nor other becomes -1"
    checks.fail(
        f"open_set_labels with known={_KNOWN}, other={_OTHER}: an image of class {c} ({role})",
        f"label {int(expected[first])}",
        f"label {int(got[first])} ({int(bad.sum())} of {len(labels)} labels differ)",
        hint,
    )


# --- linear probe -------------------------------------------------------------------------------------


def _probe_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_vit("vit_course_28", patch_size=7, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():  # the head starts at zero: perturb so that "zero-initialised" means something
            p.add_(0.1 * torch.randn_like(p))
    return model


@checks.exercise("prepare_linear_probe")
def check_prepare_linear_probe(student_prepare) -> None:
    """`prepare_linear_probe(model, num_classes)`: a new zero head of num_classes that learns, all else frozen."""
    model = _probe_model()
    backbone_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    num_classes, D = 3, model.config.hidden_dim
    got = checks.call_student("prepare_linear_probe", student_prepare, model, num_classes)
    if got is None:
        checks.fail("prepare_linear_probe's result", "the model, with its new head", "None",
                    "end with `return model`")
    if not isinstance(got, nn.Module) or not isinstance(getattr(got, "head", None), nn.Linear):
        checks.fail("prepare_linear_probe's result", "the ViT, whose .head is an nn.Linear",
                    f"{type(got).__name__} with head {type(getattr(got, 'head', None)).__name__}",
                    "replace model.head by nn.Linear(model.config.hidden_dim, num_classes) and return the model")
    head = got.head
    if (head.in_features, head.out_features) != (D, num_classes):
        checks.fail(
            "prepare_linear_probe: the head's size",
            f"nn.Linear({D}, {num_classes}): D inputs, one output per class of the new task",
            f"nn.Linear({head.in_features}, {head.out_features})",
            "the old 10-class head is still there: the new task has num_classes classes, so make a new head "
            "nn.Linear(model.config.hidden_dim, num_classes)" if head.out_features == 10
            else "nn.Linear(model.config.hidden_dim, num_classes)",
        )
    if head.weight.abs().max() > 0 or (head.bias is not None and head.bias.abs().max() > 0):
        checks.fail("prepare_linear_probe: the new head's initial weights", "all zeros (Section 3.2: a zero-initialized D × K layer)",
                    f"largest |weight| {head.weight.abs().max().item():.3g}",
                    "nn.init.zeros_(head.weight) and nn.init.zeros_(head.bias): the first loss is then exactly log(K)")
    trainable = [name for name, p in got.named_parameters() if p.requires_grad]
    head_names = {f"head.{name}" for name, _ in head.named_parameters()}
    if not head_names <= set(trainable):
        checks.fail(
            "prepare_linear_probe: the head is frozen",
            f"trainable: {', '.join(sorted(head_names))}",
            f"trainable: {', '.join(trainable) or 'nothing'}",
            "a linear probe trains its head: freeze the backbone BEFORE you create the new head "
            "(a new nn.Linear requires gradients), or set requires_grad_(True) on the head's parameters",
        )
    unfrozen = [name for name in trainable if name not in head_names]
    if unfrozen:
        checks.fail(
            "prepare_linear_probe: the backbone is not frozen",
            f"only {', '.join(sorted(head_names))} require gradients",
            f"{len(unfrozen)} more do, e.g. {', '.join(unfrozen[:3])}",
            "call p.requires_grad_(False) on every parameter of the model (model.eval() does not freeze anything: "
            "it only switches dropout off)",
        )
    after = {k: v for k, v in got.state_dict().items() if not k.startswith("head.")}
    changed = [k for k, v in backbone_before.items() if k not in after or not torch.equal(after[k], v)]
    if changed:
        checks.fail("prepare_linear_probe: the backbone's weights", "unchanged (they are what we transfer)",
                    f"changed: {', '.join(changed[:3])}", "only replace the head; do not re-initialise or rebuild the backbone")
    # One step of training: only the head moves, and the logits have the new size.
    images = checks.seeded(4, 1, 28, 28, seed=5)
    trainable_params = [p for p in got.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable_params, lr=0.5)
    got.train()
    logits = checks.call_student("the probe's forward", got, images)
    checks.expect_shape("the probe's logits", logits, (4, num_classes), "the head must map D features to num_classes logits")
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    if torch.equal(head.weight, torch.zeros_like(head.weight)):
        checks.fail("prepare_linear_probe: a training step", "the head's weights change", "they stayed at zero",
                    "the head must be part of the model (model.head = ...) and require gradients")
    moved = [k for k, v in got.state_dict().items() if not k.startswith("head.") and not torch.equal(v, backbone_before[k])]
    if moved:
        checks.fail("prepare_linear_probe: a training step", "only the head changes", f"also {', '.join(moved[:3])}",
                    "freeze every parameter of the backbone: p.requires_grad_(False)")
    checks.passed("prepare_linear_probe", "a new zero-initialised head learns, everything else is frozen")
