"""Checks of week 10: the pieces of DeiT's distillation (Touvron et al. 2021, Section 5.2), against `vitlib.distill`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitlib import checks
from vitlib.distill import averaged_prediction, hard_distillation_loss, prepend_tokens, soft_distillation_loss

__all__ = ["check_prepend_tokens", "check_hard_distillation_loss", "check_soft_distillation_loss",
           "check_averaged_prediction"]


@checks.exercise("prepend_tokens")
def check_prepend_tokens(student_prepend) -> None:
    """`prepend_tokens(x, class_token, dist_token, pos_embedding)`: (B, N, D) -> (B, N+2, D)."""
    cases = [(2, 4, 3), (3, 9, 8)]
    for B, N, D in cases:
        x = checks.seeded(B, N, D, seed=N)  # (B, N, D)
        cls, dist = checks.seeded(1, 1, D, seed=100 + D), checks.seeded(1, 1, D, seed=200 + D)  # (1, 1, D) each
        pos = checks.seeded(1, N + 2, D, seed=300 + N)  # (1, N+2, D)
        what = f"prepend_tokens(x of shape {(B, N, D)}, class_token, dist_token, pos_embedding of shape {(1, N + 2, D)})"
        got = checks.call_student("prepend_tokens", student_prepend, x.clone(), cls.clone(), dist.clone(), pos.clone())
        expected = prepend_tokens(x, cls, dist, pos)
        c, d = cls.expand(B, -1, -1), dist.expand(B, -1, -1)  # (B, 1, D)
        mistakes = {
            "the two tokens are swapped: the class token stays at position 0 (as in the ViT), the distillation token "
            "comes second, [x_class; x_distill; patches]": torch.cat([d, c, x], 1) + pos,
            "distillation token at the wrong position: DeiT puts it right after the class token, at position 1, "
            "not after the patches": torch.cat([c, x, d], 1) + pos,
            "the class token is used twice: the distillation token is a vector of its own (dist_token), "
            "not shared with the class token": torch.cat([c, c, x], 1) + pos,
            "the position embeddings are missing: add pos_embedding (1, N+2, D) to the whole sequence":
                torch.cat([c, d, x], 1),
            "only the patches got position embeddings: add pos_embedding to the whole sequence, the two tokens included":
                torch.cat([c, d, x + pos[:, 2:]], 1),
        }
        checks.expect_close(what, got, expected, tol=1e-6, mistakes=mistakes,
                            shape_hint=f"both tokens before the N = {N} patches: N+2 = {N + 2} tokens, "
                                       "torch.cat([class, distillation, x], dim=1) with each token expanded to (B, 1, D)")
    checks.passed("prepend_tokens", f"matches vitlib on {len(cases)} batches: [class; distillation; patches] + E_pos")


def _logits(seed: int, B: int = 6, K: int = 5, scale: float = 2.0) -> torch.Tensor:
    return checks.seeded(B, K, seed=seed) * scale  # (B, K)


def _loss_inputs():
    """Logits of two heads and a teacher, and labels, where the teacher disagrees with y on half the batch."""
    class_logits, distill_logits, teacher_logits = _logits(1), _logits(2), _logits(3, scale=3.0)  # (6, 5) each
    teacher_labels = teacher_logits.argmax(-1)  # (6,)
    labels = teacher_labels.clone()
    labels[::2] = (teacher_labels[::2] + 1) % 5  # (6,): the teacher is "wrong" on images 0, 2, 4
    return class_logits, distill_logits, labels, teacher_logits


def _expect_scalar(what: str, got) -> torch.Tensor:
    got = checks.expect_tensor(what, got)
    if got.numel() != 1:
        checks.fail(what, "a single number (a 0-dim tensor): the mean over the batch", f"shape {tuple(got.shape)}",
                    "F.cross_entropy averages over the batch by default; do not pass reduction='none'")
    return got.reshape(())


@checks.exercise("hard_distillation_loss")
def check_hard_distillation_loss(student_loss) -> None:
    """`hard_distillation_loss(class_logits, distill_logits, labels, teacher_logits)`: ½ CE(Z_cls, y) + ½ CE(Z_dist, y_t)."""
    c, d, y, t = _loss_inputs()
    what = "hard_distillation_loss"
    got = checks.call_student(what, student_loss, c.clone(), d.clone(), y.clone(), t.clone())
    got = _expect_scalar(what, got)
    expected = hard_distillation_loss(c, d, y, t)
    yt = t.argmax(-1)  # (B,)
    ce = F.cross_entropy
    mistakes = {
        "you used the teacher's soft probabilities where hard-label distillation takes its argmax: "
        "y_t = teacher_logits.argmax(dim=-1), then an ordinary cross-entropy with it": 0.5 * ce(c, y) + 0.5 * ce(d, t.softmax(-1)),
        "the teacher's logits taken as targets: hard-label distillation takes their argmax, "
        "y_t = teacher_logits.argmax(dim=-1)": 0.5 * ce(c, y) + 0.5 * ce(d, t),
        "the heads are swapped: the CLASS head learns the true label y, the DISTILLATION head the teacher's label y_t":
            0.5 * ce(d, y) + 0.5 * ce(c, yt),
        "both terms on the class head: the second term trains the distillation head (distill_logits)":
            0.5 * ce(c, y) + 0.5 * ce(c, yt),
        "the distillation head learns the true label: its target is the teacher's decision argmax Z_t":
            0.5 * ce(c, y) + 0.5 * ce(d, y),
        "the class head learns the teacher's label: its target is the true label y": 0.5 * ce(c, yt) + 0.5 * ce(d, yt),
        "the ½ is missing: each of the two terms weighs ½": ce(c, y) + ce(d, yt),
        "only the distillation term: the loss also has ½ CE(class head, y)": 0.5 * ce(d, yt),
        "only the true-label term: the loss also has ½ CE(distillation head, argmax of the teacher)": 0.5 * ce(c, y),
    }
    checks.expect_close(what, got, expected, tol=1e-5, mistakes=mistakes)
    checks.passed(what, "matches vitlib: ½ CE(class head, y) + ½ CE(distillation head, argmax of the teacher)")


@checks.exercise("soft_distillation_loss")
def check_soft_distillation_loss(student_loss) -> None:
    """`soft_distillation_loss(class_logits, distill_logits, labels, teacher_logits, tau, lam)`."""
    c, d, y, t = _loss_inputs()
    ce = F.cross_entropy
    for tau, lam in [(3.0, 0.1), (2.0, 0.5)]:
        what = f"soft_distillation_loss(..., tau={tau}, lam={lam})"
        got = checks.call_student("soft_distillation_loss", student_loss, c.clone(), d.clone(), y.clone(), t.clone(), tau, lam)
        got = _expect_scalar(what, got)
        expected = soft_distillation_loss(c, d, y, t, tau=tau, lam=lam)

        def kl(student_logits, teacher_logits, t_s=tau, t_t=tau):  # KL(ψ(teacher) ‖ ψ(student)) per image, averaged
            p = (teacher_logits / t_t).softmax(-1)  # (B, K)
            return (p * (p.log() - (student_logits / t_s).log_softmax(-1))).sum(-1).mean()

        p_t, log_p_s = (t / tau).softmax(-1), (d / tau).log_softmax(-1)  # (B, K)
        reverse = (log_p_s.exp() * (log_p_s - p_t.log())).sum(-1).mean()  # KL(student ‖ teacher)
        hard = (1 - lam) * ce(c, y)
        mistakes = {
            "forgot τ² in the soft loss: multiply the KL term by tau ** 2 (it keeps its gradients at the hard "
            "term's scale, Hinton et al. 2015)": hard + lam * kl(d, t),
            "the KL term is multiplied by τ, not τ²": hard + lam * tau * kl(d, t),
            "the KL is the wrong way round: KL(teacher ‖ student) = Σ p_t (log p_t - log p_s); "
            "F.kl_div(log p_s, p_t) computes it (input = the student's LOG-probabilities, target = the teacher's)":
                hard + lam * tau**2 * reverse,
            "the KL is averaged over classes too: sum it over the K classes and average over the batch, "
            "F.kl_div(..., reduction='batchmean')": hard + lam * tau**2 * kl(d, t) / c.shape[1],
            "the teacher's logits are not divided by τ: soften both, ψ(Z_t / τ) and ψ(Z_s / τ)": hard + lam * tau**2 * kl(d, t, t_t=1.0),
            "the student's logits are not divided by τ: soften both, ψ(Z_t / τ) and ψ(Z_s / τ)": hard + lam * tau**2 * kl(d, t, t_s=1.0),
            "λ and 1 - λ are swapped: λ weighs the distillation term, 1 - λ the cross-entropy with y":
                lam * ce(c, y) + (1 - lam) * tau**2 * kl(d, t),
            "the soft term is on the class head: the teacher's distribution is matched by the distillation head":
                hard + lam * tau**2 * kl(c, t),
            "the cross-entropy is on the distillation head: the true label y trains the class head":
                (1 - lam) * ce(d, y) + lam * tau**2 * kl(d, t),
        }
        checks.expect_close(what, got, expected, tol=1e-5, mistakes=mistakes)
    # no gradient may reach the teacher
    teacher_logits = t.clone().requires_grad_(True)
    student_logits = d.clone().requires_grad_(True)
    loss = checks.call_student("soft_distillation_loss", student_loss, c.clone(), student_logits, y.clone(), teacher_logits, 3.0, 0.1)
    loss = _expect_scalar("soft_distillation_loss", loss)
    if not loss.requires_grad:
        checks.fail("soft_distillation_loss: gradients", "a loss that can be back-propagated into distill_logits",
                    "a loss without a gradient (requires_grad=False)",
                    "keep the student's logits in the graph: no .detach() or torch.no_grad() on them")
    loss.backward()
    if teacher_logits.grad is not None and teacher_logits.grad.abs().sum() > 0:
        checks.fail("soft_distillation_loss: gradients", "no gradient into teacher_logits (the teacher is fixed)",
                    "a gradient flows into teacher_logits",
                    "detach the teacher: use teacher_logits.detach() (its gradients must not flow; the teacher "
                    "is not trained by its student)")
    if student_logits.grad is None or student_logits.grad.abs().sum() == 0:
        checks.fail("soft_distillation_loss: gradients", "a gradient into distill_logits", "none",
                    "keep the student's logits in the graph: no .detach() or torch.no_grad() on them")
    checks.passed("soft_distillation_loss", "matches vitlib for 2 (τ, λ): (1-λ) CE(class head, y) + λ τ² KL, "
                  "no gradient to the teacher")


@checks.exercise("averaged_prediction")
def check_averaged_prediction(student_average) -> None:
    """`averaged_prediction(class_logits, distill_logits)`: the mean of the two heads' softmax outputs."""
    c, d = _logits(4), _logits(5, scale=4.0)  # (6, 5) each
    what = "averaged_prediction"
    got = checks.call_student(what, student_average, c.clone(), d.clone())
    expected = averaged_prediction(c, d)
    mistakes = {
        "that is the softmax of the averaged logits (timm's shortcut): the paper adds the softmax outputs "
        "of the two classifiers, (softmax(class) + softmax(distill)) / 2": ((c + d) / 2).softmax(-1),
        "those are the averaged logits: take each head's softmax first, then average": (c + d) / 2,
        "the sum of the two softmaxes: halve it, so that each row is a probability distribution (sums to 1)":
            c.softmax(-1) + d.softmax(-1),
        "only the class head: average it with the distillation head's softmax": c.softmax(-1),
        "only the distillation head: average it with the class head's softmax": d.softmax(-1),
        "softmax over the batch (dim=0): each image's softmax is over its classes, dim=-1":
            (c.softmax(0) + d.softmax(0)) / 2,
        "averaged log-probabilities: average the probabilities themselves (softmax, not log_softmax)":
            (c.log_softmax(-1) + d.log_softmax(-1)) / 2,
    }
    checks.expect_close(what, got, expected, tol=1e-5, mistakes=mistakes,
                        shape_hint="one probability per image and class: (B, K), like each head's logits")
    checks.passed(what, "matches vitlib: the mean of the two heads' softmax outputs")
