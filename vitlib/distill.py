"""Knowledge distillation into a ViT (Touvron et al. 2021, "Training data-efficient image
transformers & distillation through attention", DeiT, arXiv:2012.12877).

Week 10. A ViT trained on little data lacks the inductive biases of a convnet (locality,
translation equivariance) and must learn them from the images. DeiT's answer: let a
convnet *teacher* label the training images as the student sees them, and train the
student on those labels as well as on the true ones. Section 5.2, "Distillation through
attention", adds a second learned token, the **distillation token**, next to the class
token: it goes through every layer, attends to the patches and to the class token, and a
second linear head on its output is trained on the teacher's labels.

The pieces, with the paper's notation (Z_s: the student's logits, Z_t: the teacher's,
ψ: softmax, y: the true label, L_CE: cross-entropy, KL: Kullback-Leibler divergence):

- `hard_distillation_loss`, "hard-label distillation" (Section 5.2), with y_t = argmax_c Z_t(c):

      L_global^hardDistill = ½ L_CE(ψ(Z_s), y) + ½ L_CE(ψ(Z_s), y_t)

  with the class head's logits in the first term and the distillation head's in the second;
- `soft_distillation_loss`, "soft distillation" (Hinton et al. 2015, DeiT Section 5.2):

      L_global = (1 - λ) L_CE(ψ(Z_s), y) + λ τ² KL(ψ(Z_t / τ), ψ(Z_s / τ))

  (the τ² keeps the gradients of the soft term at the scale of the hard one when τ changes);
- `averaged_prediction`, the inference of Section 5.2 ("Classification with our approach:
  joint classifiers"): "we add the softmax output by the two classifiers to make the
  prediction";
- `DistilledViT`: an ordinary `vitlib.ViT` with the distillation token, its position
  embedding and a second head;
- `ConvTeacher`: a small convnet, the teacher trained in the notebook (DeiT Table 2 finds a
  convnet teacher better than a transformer of the same accuracy: it passes on its biases);
- `train_distillation`: one training loop for the teacher, the plain student and the
  distilled student (AdamW, warm-up and cosine decay of `vitlib.train`, batch augmentation
  of `vitlib.augment`), so that only the loss differs between the runs it compares;
- `images_per_second`: inference throughput, for the compression table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitlib.model import ViT

__all__ = [
    "DISTILLATION_MODES",
    "prepend_tokens",
    "ConvTeacher",
    "DistilledViT",
    "averaged_prediction",
    "hard_distillation_loss",
    "soft_distillation_loss",
    "train_distillation",
    "images_per_second",
    "num_parameters",
]

DISTILLATION_MODES = ("none", "hard", "soft")


def _check_logits(name: str, logits: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name}: expected logits of shape (B, num_classes), got {shape}")
    if like is not None and logits.shape != like.shape:
        raise ValueError(f"{name}: expected the shape of the student's logits {tuple(like.shape)}, got {tuple(logits.shape)}")


def prepend_tokens(x: torch.Tensor, class_token: torch.Tensor, dist_token: torch.Tensor,
                   pos_embedding: torch.Tensor) -> torch.Tensor:
    """DeiT's input sequence (Section 5.2, Figure 2): [x_class; x_distill; x_p^1 E; ...; x_p^N E] + E_pos.

    x (B, N, D) the embedded patches; class_token, dist_token (1, 1, D), two different learned
    vectors; pos_embedding (1, N+2, D) -> z_0 (B, N+2, D). The class token is at position 0 (as in
    the ViT, eq. 1), the distillation token at position 1, the patches after them.
    """
    if x.ndim != 3 or pos_embedding.shape[-2:] != (x.shape[1] + 2, x.shape[2]):
        raise ValueError(f"prepend_tokens: expected x (B, N, D) and pos_embedding (1, N+2, D), "
                         f"got {tuple(x.shape)} and {tuple(pos_embedding.shape)}")
    B = x.shape[0]
    tokens = torch.cat([class_token.expand(B, -1, -1), dist_token.expand(B, -1, -1)], dim=1)  # (B, 2, D)
    return torch.cat([tokens, x], dim=1) + pos_embedding  # (B, N+2, D)


def hard_distillation_loss(class_logits: torch.Tensor, distill_logits: torch.Tensor, labels: torch.Tensor,
                           teacher_logits: torch.Tensor) -> torch.Tensor:
    """Hard-label distillation (DeiT Section 5.2): ½ CE(class head, y) + ½ CE(distillation head, argmax Z_t).

    class_logits, distill_logits, teacher_logits (B, K); labels (B,) int -> a scalar. The
    teacher's decision y_t = argmax_c Z_t(c) is a label like y, with no gradient (a teacher
    is not trained by its student). With a plain ViT (one head), pass its logits twice.
    """
    _check_logits("class_logits", class_logits)
    _check_logits("distill_logits", distill_logits, class_logits)
    _check_logits("teacher_logits", teacher_logits, class_logits)
    teacher_labels = teacher_logits.detach().argmax(dim=-1)  # (B,) y_t
    return 0.5 * F.cross_entropy(class_logits, labels) + 0.5 * F.cross_entropy(distill_logits, teacher_labels)


def soft_distillation_loss(class_logits: torch.Tensor, distill_logits: torch.Tensor, labels: torch.Tensor,
                           teacher_logits: torch.Tensor, tau: float = 3.0, lam: float = 0.1) -> torch.Tensor:
    """Soft distillation (Hinton et al. 2015; DeiT Section 5.2, with DeiT's τ = 3, λ = 0.1):

        (1 - λ) CE(class head, y) + λ τ² KL(ψ(Z_t / τ) ‖ ψ(Z_s / τ))

    with Z_s the distillation head's logits, the KL summed over classes and averaged over the
    batch (``reduction="batchmean"``, the true KL divergence per image). Shapes as in
    `hard_distillation_loss`; no gradient reaches the teacher.
    """
    _check_logits("class_logits", class_logits)
    _check_logits("distill_logits", distill_logits, class_logits)
    _check_logits("teacher_logits", teacher_logits, class_logits)
    if not tau > 0:
        raise ValueError(f"soft_distillation_loss: the temperature tau must be > 0, got {tau!r}")
    if not 0 <= lam <= 1:
        raise ValueError(f"soft_distillation_loss: lam weighs two terms and must be in [0, 1], got {lam!r}")
    student_log_p = F.log_softmax(distill_logits / tau, dim=-1)  # (B, K) log ψ(Z_s / τ)
    teacher_log_p = F.log_softmax(teacher_logits.detach() / tau, dim=-1)  # (B, K) log ψ(Z_t / τ)
    kl = F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True)  # KL(teacher ‖ student)
    return (1 - lam) * F.cross_entropy(class_logits, labels) + lam * tau**2 * kl


def averaged_prediction(class_logits: torch.Tensor, distill_logits: torch.Tensor) -> torch.Tensor:
    """DeiT's inference (Section 5.2): the mean of the two heads' softmax outputs, (B, K) each -> (B, K).

    The result is a probability distribution per row (its argmax is the prediction). timm's
    DeiT averages the logits instead, which usually picks the same class but is not the paper's rule.
    """
    _check_logits("class_logits", class_logits)
    _check_logits("distill_logits", distill_logits, class_logits)
    return 0.5 * (class_logits.softmax(dim=-1) + distill_logits.softmax(dim=-1))  # (B, K)


class DistilledViT(nn.Module):
    """A ViT with a class token AND a distillation token (DeiT Section 5.2, Figure 2).

    Built around an ordinary `vitlib.ViT` (``self.vit``: its patch embedding, class token,
    position embeddings, encoder, final LayerNorm and head are used as they are), it adds

    - ``dist_token`` (1, 1, D): the learned distillation token, its own vector, not the class token's;
    - ``dist_pos_embedding`` (1, 1, D): its position embedding (timm keeps one (1, N+2, D) table;
      a separate row is the same thing);
    - ``head_dist``: a second linear head, on the distillation token's output.

    The input sequence is [x_class; x_distill; patches], (B, N+2, D), as in DeiT's code.
    ``forward_heads`` gives both heads' logits (for training); ``forward`` gives the log of
    `averaged_prediction`, so that `vitlib.train.evaluate` (argmax and cross-entropy) works on it.
    Wrapping a copy of a plain ViT gives a student that starts from exactly that ViT's weights.
    """

    def __init__(self, vit: ViT) -> None:
        super().__init__()
        if not isinstance(vit, ViT):
            raise TypeError(f"DistilledViT wraps a vitlib.ViT, got {type(vit).__name__}")
        c = vit.config
        if c.num_classes < 1:
            raise ValueError("DistilledViT needs a ViT with a classification head (num_classes >= 1)")
        if c.patch_dropout > 0:
            raise ValueError("DistilledViT does not support patch_dropout (it would have to keep both tokens)")
        self.vit = vit
        self.config = c
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c.hidden_dim))  # (1, 1, D)
        self.dist_pos_embedding = nn.Parameter(torch.zeros(1, 1, c.hidden_dim))  # (1, 1, D)
        self.head_dist = nn.Linear(c.hidden_dim, c.num_classes)
        # as timm's DeiT: the tokens and position embedding truncated normal, the new head like the ViT's (zeros)
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        nn.init.trunc_normal_(self.dist_pos_embedding, std=0.02)
        nn.init.zeros_(self.head_dist.weight)
        nn.init.zeros_(self.head_dist.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> z_0 (B, N+2, D): [x_class + E_pos[0]; x_distill + E_dist; x_p E + E_pos[1:]]."""
        vit = self.vit
        x = vit.patch_embed(images)  # (B, N, D)
        pos = torch.cat([vit.pos_embedding[:, :1], self.dist_pos_embedding, vit.pos_embedding[:, 1:]], dim=1)  # (1, N+2, D)
        return vit.pos_drop(prepend_tokens(x, vit.class_token, self.dist_token, pos))  # (B, N+2, D)

    def forward_heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) -> (class head logits (B, K), distillation head logits (B, K))."""
        from vitlib.validation import check_images

        check_images(images, self.config)
        # the last layer computes the two tokens' rows only (the heads read nothing else), as `ViT.forward` does the class token's
        z = self.vit.norm(self.vit.encoder.forward_class_token(self.embed(images), num_tokens=2))  # (B, 2, D)
        return self.vit.head(z[:, 0]), self.head_dist(z[:, 1])  # (B, K), (B, K)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> log of the averaged prediction (B, K): argmax and cross-entropy as for logits."""
        class_logits, distill_logits = self.forward_heads(images)  # (B, K) each
        return averaged_prediction(class_logits, distill_logits).clamp_min(1e-12).log()  # (B, K)

    def num_parameters(self) -> int:
        return num_parameters(self)


class ConvTeacher(nn.Module):
    """A small convnet teacher: three 3×3 conv-BN-ReLU stages (28 -> 14 -> 7 -> 1 by pooling), a linear head.

    Locality and translation equivariance are built in, so it learns Fashion-MNIST from a few
    thousand images faster and better than a ViT does: that is what DeiT's student inherits.
    images (B, C, H, W) -> logits (B, num_classes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        if width < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError(f"ConvTeacher: in_channels, num_classes and width must be >= 1, got {in_channels}, {num_classes}, {width}")

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            stage(in_channels, width), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            stage(width, 2 * width), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4w)
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"ConvTeacher expects images (B, C, H, W), got {getattr(images, 'shape', type(images).__name__)}")
        return self.head(self.features(images))  # (B, num_classes)

    def num_parameters(self) -> int:
        return num_parameters(self)


def num_parameters(model: nn.Module) -> int:
    """The number of parameters (a frozen teacher's included)."""
    return sum(p.numel() for p in model.parameters())


def _student_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, teacher: nn.Module | None,
                  distillation: str, tau: float, lam: float, loss_fn: Callable | None = None) -> torch.Tensor:
    """The training loss of one batch: CE without a teacher; with one, the chosen distillation loss."""
    if distillation == "none":
        return F.cross_entropy(model(images), labels)  # (a DistilledViT without a teacher: its averaged prediction)
    with torch.no_grad():
        teacher_logits = teacher(images)  # (B, K), on the same augmented images the student sees
    if isinstance(model, DistilledViT):
        class_logits, distill_logits = model.forward_heads(images)  # (B, K) each
    else:  # a one-head student: both terms on its only head
        class_logits = distill_logits = model(images)  # (B, K)
    if distillation == "hard":
        return (loss_fn or hard_distillation_loss)(class_logits, distill_logits, labels, teacher_logits)
    return (loss_fn or soft_distillation_loss)(class_logits, distill_logits, labels, teacher_logits, tau, lam)


def train_distillation(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: Callable, *,
                       epochs: int, teacher: nn.Module | None = None, distillation: str = "hard",
                       batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 0.05,
                       warmup_epochs: float = 1.0, tau: float = 3.0, lam: float = 0.1, seed: int = 0,
                       loss_fn: Callable | None = None, progress: bool = True, desc: str = "training") -> list[float]:
    """Train ``model`` on uint8 ``images`` (N, C, H, W) and ``labels`` (N,); the mean loss per epoch.

    Without ``teacher`` (or with ``distillation="none"``) the loss is the cross-entropy with the
    true labels; with one, `hard_distillation_loss` or `soft_distillation_loss` (or ``loss_fn``, a
    function with the same arguments as the chosen one, e.g. a student's own). The teacher runs
    in eval mode (BatchNorm with its running statistics, no dropout) under ``torch.no_grad()`` on the
    very batch the student sees, augmentation included. Everything else is the same for every
    model: ``transform`` (a `vitlib.augment.BatchTransform`) draws its augmentation from a
    generator seeded by ``seed``, the order of the images too, so two runs with the same seed see
    the same augmented images in the same order; AdamW on `vitlib.train.parameter_groups` with
    `vitlib.train.lr_at`'s warm-up and cosine decay, and gradient clipping at norm 1.
    The model ends in eval mode.
    """
    from tqdm.auto import tqdm

    from vitlib.train import lr_at, parameter_groups

    if distillation not in DISTILLATION_MODES:
        raise ValueError(f"distillation must be one of {', '.join(DISTILLATION_MODES)}, got {distillation!r}")
    if teacher is None:
        distillation = "none"
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"expected images (N, C, H, W) and labels (N,) of the same length N >= 1, "
                         f"got {tuple(images.shape)} and {tuple(labels.shape)}")
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout, if any
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total, warmup = epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch)
    losses, step = [], 0
    model.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, mininterval=2.0):
        order = torch.randperm(len(images), generator=generator)  # (N,)
        epoch_loss = torch.zeros(())
        for start in range(0, len(images), batch_size):
            batch = order[start:start + batch_size]  # (B,)
            x = transform(images[batch], generator)  # (B, C, H, W) float, augmented
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, lr, lr / 100)
            loss = _student_loss(model, x, labels[batch], teacher, distillation, tau, lam, loss_fn)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            epoch_loss += loss.detach() * len(batch)
        losses.append(epoch_loss.item() / len(images))
    model.eval()
    return losses


@torch.no_grad()
def images_per_second(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256, repeats: int = 3,
                      warmup: int = 1) -> float:
    """Inference throughput on float images (N, C, H, W): the best of ``repeats`` timed passes over them.

    The model runs in eval mode, in batches of ``batch_size``; the best pass is the one least
    disturbed by whatever else the machine is doing.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected float images (N, C, H, W), got {tuple(images.shape)}")
    model.eval()
    batches = images.split(batch_size)
    for _ in range(warmup):
        model(batches[0])
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            model(batch)
        best = min(best, time.perf_counter() - start)
    return len(images) / best
