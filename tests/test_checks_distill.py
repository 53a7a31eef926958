"""Week 10 checks pass on right code and fail, with expected / got / hint, on the classic mistakes; vitlib.distill itself."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from check_helpers import expect_failure as _fails
from check_helpers import stub as _stub

from vitlib.checks.distill import (
    check_averaged_prediction,
    check_hard_distillation_loss,
    check_prepend_tokens,
    check_soft_distillation_loss,
)
from vitlib.configs import create_vit
from vitlib.data import eval_transform, load_dataset, train_transform
from vitlib.distill import (
    ConvTeacher,
    DistilledViT,
    averaged_prediction,
    hard_distillation_loss,
    images_per_second,
    prepend_tokens,
    soft_distillation_loss,
    train_distillation,
)
from vitlib.train import evaluate

# --- prepend_tokens -------------------------------------------------------------------------------


def test_prepend_tokens_passes_on_the_reference(capsys):
    check_prepend_tokens(prepend_tokens)
    assert capsys.readouterr().out.startswith("✓ prepend_tokens: matches vitlib on 2 batches")


def _expand(t, B):
    return t.expand(B, -1, -1)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x, c, d, p: torch.cat([_expand(d, len(x)), _expand(c, len(x)), x], 1) + p, r"swapped"),
        (lambda x, c, d, p: torch.cat([_expand(c, len(x)), x, _expand(d, len(x))], 1) + p, r"wrong position"),
        (lambda x, c, d, p: torch.cat([_expand(c, len(x)), _expand(c, len(x)), x], 1) + p, r"not shared with the class token"),
        (lambda x, c, d, p: torch.cat([_expand(c, len(x)), _expand(d, len(x)), x], 1), r"position embeddings are missing"),
        (lambda x, c, d, p: torch.cat([_expand(c, len(x)), _expand(d, len(x)), x + p[:, 2:]], 1), r"two tokens included"),
        (lambda x, c, d, p: torch.cat([_expand(d, len(x)), x], 1) + p[:, 1:], r"N\+2 = "),
    ],
)
def test_prepend_tokens_mistakes(wrong, hint):
    _fails(check_prepend_tokens, wrong, hint)


def test_prepend_tokens_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_prepend_tokens(_stub)


# --- hard_distillation_loss -----------------------------------------------------------------------


def test_hard_distillation_loss_passes_on_the_reference(capsys):
    check_hard_distillation_loss(hard_distillation_loss)
    assert capsys.readouterr().out.startswith("✓ hard_distillation_loss: matches vitlib")


_ce = F.cross_entropy


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda c, d, y, t: 0.5 * _ce(c, y) + 0.5 * _ce(d, t.softmax(-1)), r"soft probabilities where hard-label distillation takes its argmax"),
        (lambda c, d, y, t: 0.5 * _ce(c, y) + 0.5 * _ce(d, t), r"logits taken as targets"),
        (lambda c, d, y, t: 0.5 * _ce(d, y) + 0.5 * _ce(c, t.argmax(-1)), r"heads are swapped"),
        (lambda c, d, y, t: 0.5 * _ce(c, y) + 0.5 * _ce(c, t.argmax(-1)), r"both terms on the class head"),
        (lambda c, d, y, t: 0.5 * _ce(c, y) + 0.5 * _ce(d, y), r"distillation head learns the true label"),
        (lambda c, d, y, t: 0.5 * _ce(c, t.argmax(-1)) + 0.5 * _ce(d, t.argmax(-1)), r"class head learns the teacher's label"),
        (lambda c, d, y, t: _ce(c, y) + _ce(d, t.argmax(-1)), r"½ is missing"),
        (lambda c, d, y, t: 0.5 * _ce(d, t.argmax(-1)), r"only the distillation term"),
        (lambda c, d, y, t: 0.5 * _ce(c, y), r"only the true-label term"),
        (lambda c, d, y, t: 0.5 * _ce(c, y, reduction="none") + 0.5 * _ce(d, t.argmax(-1), reduction="none"), r"a single number"),
        (lambda c, d, y, t: 0.5 * _ce(c, y) + 0.5 * _ce(d, t.argmin(-1)), r"compare your steps"),
    ],
)
def test_hard_distillation_loss_mistakes(wrong, hint):
    _fails(check_hard_distillation_loss, wrong, hint)


def test_hard_distillation_loss_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_hard_distillation_loss(_stub)


# --- soft_distillation_loss -----------------------------------------------------------------------


def test_soft_distillation_loss_passes_on_the_reference(capsys):
    check_soft_distillation_loss(soft_distillation_loss)
    assert capsys.readouterr().out.startswith("✓ soft_distillation_loss: matches vitlib for 2")


def _soft(*, power=2, reverse=False, mean=False, t_teacher=True, t_student=True, swap=False, on_class=False,
          ce_on_dist=False, detach=True):
    def loss(c, d, y, t, tau, lam):
        s = c if on_class else d
        teacher = t.detach() if detach else t
        log_p_s = (s / (tau if t_student else 1.0)).log_softmax(-1)
        log_p_t = (teacher / (tau if t_teacher else 1.0)).log_softmax(-1)
        if reverse:
            kl = F.kl_div(log_p_t, log_p_s, reduction="batchmean", log_target=True)
        else:
            kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) / (c.shape[1] if mean else 1)
        ce = _ce(d if ce_on_dist else c, y)
        w_ce, w_kl = (lam, 1 - lam) if swap else (1 - lam, lam)
        return w_ce * ce + w_kl * tau**power * kl

    return loss


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_soft(power=0), r"forgot τ²"),
        (_soft(power=1), r"multiplied by τ, not τ²"),
        (_soft(reverse=True), r"wrong way round"),
        (_soft(mean=True), r"batchmean"),
        (_soft(t_teacher=False), r"teacher's logits are not divided by τ"),
        (_soft(t_student=False), r"student's logits are not divided by τ"),
        (_soft(swap=True), r"λ and 1 - λ are swapped"),
        (_soft(on_class=True), r"soft term is on the class head"),
        (_soft(ce_on_dist=True), r"cross-entropy is on the distillation head"),
        (_soft(detach=False), r"gradients must not flow"),
        (lambda c, d, y, t, tau, lam: soft_distillation_loss(c.detach(), d.detach(), y, t, tau, lam), r"keep the student's logits"),
    ],
)
def test_soft_distillation_loss_mistakes(wrong, hint):
    _fails(check_soft_distillation_loss, wrong, hint)


def test_soft_distillation_loss_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_soft_distillation_loss(_stub)


# --- averaged_prediction --------------------------------------------------------------------------


def test_averaged_prediction_passes_on_the_reference(capsys):
    check_averaged_prediction(averaged_prediction)
    assert capsys.readouterr().out == "✓ averaged_prediction: matches vitlib: the mean of the two heads' softmax outputs\n"


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda c, d: ((c + d) / 2).softmax(-1), r"timm's shortcut"),
        (lambda c, d: (c + d) / 2, r"averaged logits"),
        (lambda c, d: c.softmax(-1) + d.softmax(-1), r"halve it"),
        (lambda c, d: c.softmax(-1), r"only the class head"),
        (lambda c, d: d.softmax(-1), r"only the distillation head"),
        (lambda c, d: (c.softmax(0) + d.softmax(0)) / 2, r"dim=-1"),
        (lambda c, d: (c.log_softmax(-1) + d.log_softmax(-1)) / 2, r"not log_softmax"),
        (lambda c, d: torch.stack([c.softmax(-1), d.softmax(-1)]), r"\(B, K\)"),
    ],
)
def test_averaged_prediction_mistakes(wrong, hint):
    _fails(check_averaged_prediction, wrong, hint)


def test_averaged_prediction_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_averaged_prediction(_stub)


# --- the model, the teacher, the loop -------------------------------------------------------------


def _small_vit(**overrides):
    overrides = {"num_layers": 1, **overrides}
    return create_vit("vit_course_28", patch_size=7, hidden_dim=32, num_heads=2, mlp_dim=64, **overrides)


def test_distilled_vit_starts_from_the_wrapped_vit_and_has_two_different_tokens():
    torch.manual_seed(0)
    plain = _small_vit()
    student = DistilledViT(copy.deepcopy(plain))
    assert student.num_parameters() == plain.num_parameters() + 2 * 32 + 32 * 10 + 10
    images = torch.randn(3, 1, 28, 28)
    z0 = student.embed(images)  # (3, 16+2, 32)
    assert z0.shape == (3, 18, 32)
    assert not torch.allclose(z0[:, 0], z0[:, 1])  # the distillation token is not the class token
    assert torch.allclose(z0[:, 2:], plain.embed(images)[:, 1:])  # patches as in the plain ViT
    class_logits, distill_logits = student.forward_heads(images)
    assert class_logits.shape == distill_logits.shape == (3, 10)
    assert torch.allclose(student(images).exp(), averaged_prediction(class_logits, distill_logits), atol=1e-6)
    for layers in (1, 3):  # the last layer computes only the two tokens' rows: the same as the whole sequence
        deep = DistilledViT(_small_vit(num_layers=layers))
        with torch.no_grad():  # heads start at zero: give them weights, so that the comparison means something
            deep.vit.head.weight.normal_()
            deep.head_dist.weight.normal_()
        z = deep.vit.norm(deep.vit.encoder(deep.embed(images)))  # (3, 18, 32): every row
        full = deep.vit.head(z[:, 0]), deep.head_dist(z[:, 1])
        for fast, slow in zip(deep.forward_heads(images), full):
            assert torch.allclose(fast, slow, atol=1e-5)
    with pytest.raises(ValueError, match="28×28"):
        student(torch.randn(2, 1, 32, 32))
    with pytest.raises(TypeError, match="wraps a vitlib.ViT"):
        DistilledViT(ConvTeacher())
    with pytest.raises(ValueError, match="patch_dropout"):
        DistilledViT(_small_vit(patch_dropout=0.25))


def test_losses_refuse_mismatched_logits():
    c = torch.randn(4, 10)
    with pytest.raises(ValueError, match="teacher_logits"):
        hard_distillation_loss(c, c, torch.zeros(4, dtype=torch.long), torch.randn(4, 5))
    with pytest.raises(ValueError, match="tau"):
        soft_distillation_loss(c, c, torch.zeros(4, dtype=torch.long), c, tau=0.0)
    with pytest.raises(ValueError, match="lam"):
        soft_distillation_loss(c, c, torch.zeros(4, dtype=torch.long), c, lam=1.5)
    with pytest.raises(ValueError, match="prepend_tokens"):
        prepend_tokens(torch.randn(2, 4, 3), torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), torch.zeros(1, 5, 3))


def test_distillation_loop_trains_the_student_and_leaves_the_teacher_alone():
    data = load_dataset("fashion-mnist-small", "train")
    test = load_dataset("fashion-mnist-small", "test")
    test.transform = eval_transform(test)
    images, labels = data.images[:512], data.labels[:512]
    augment = train_transform(data, "basic")
    torch.manual_seed(0)
    teacher = ConvTeacher(width=8)
    train_distillation(teacher, images, labels, augment, epochs=2, lr=5e-3, progress=False)
    before = copy.deepcopy(teacher.state_dict())
    torch.manual_seed(0)
    student = DistilledViT(_small_vit())
    losses = train_distillation(student, images, labels, augment, epochs=3, teacher=teacher, distillation="hard",
                                progress=False)
    assert losses[-1] < losses[0] and not student.training
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included: eval mode
    assert 0.0 <= evaluate(student, test)["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="distillation must be one of"):
        train_distillation(student, images, labels, augment, epochs=1, teacher=teacher, distillation="medium")


def test_same_seed_same_run():
    data = load_dataset("fashion-mnist-small", "train")
    augment = train_transform(data, "basic")
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = _small_vit()
        runs.append(train_distillation(model, data.images[:256], data.labels[:256], augment, epochs=1, seed=3,
                                       progress=False))
    assert runs[0] == runs[1]


def test_images_per_second_is_positive_and_checks_its_input():
    model = _small_vit()
    assert images_per_second(model, torch.randn(64, 1, 28, 28), batch_size=32, repeats=1) > 0
    with pytest.raises(ValueError, match="float images"):
        images_per_second(model, torch.randn(1, 28, 28))
