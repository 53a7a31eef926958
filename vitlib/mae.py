"""Masked autoencoders (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377).

Self-supervised pre-training of a ViT encoder (week 09): hide a random 75% of the patches,
run the encoder on the visible quarter only, and let a light decoder, which sees the
encoded visible patches plus a shared learned *mask token* at every hidden position,
reconstruct the hidden patches' pixels. The loss is the mean squared error on the masked
patches only, against pixels normalised per patch (Section 3, "Reconstruction target").
The encoder is an ordinary `vitlib.ViT` (its head unused), so after pre-training it is
fine-tuned like any other ViT.

The pieces, each a week-09 exercise:
- `random_masking`: per image, a random subset of patches to keep (Section 3, "Masking");
- `patch_targets`: the per-patch normalised pixel targets;
- `mae_loss`: the MSE on masked patches only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from vitlib.encoder import Encoder
from vitlib.model import ViT
from vitlib.patching import patchify, unpatchify

__all__ = ["MAEConfig", "MaskedAutoencoder", "random_masking", "patch_targets", "mae_loss", "pretrain_mae"]


def random_masking(
    x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random ``1 - mask_ratio`` of each image's tokens (He et al. 2021, Section 3).

    x (B, N, D) -> (visible (B, K, D), mask (B, N), ids_restore (B, N)), K = round(N (1 - mask_ratio)).
    ``mask`` is 1 where a patch is hidden, 0 where it is visible, in the original patch order.
    ``ids_restore`` undoes the shuffle: gathering [visible, mask tokens] with it puts every token
    back at its original position. Each image gets its own random subset (uniform noise, sorted).
    """
    B, N, D = x.shape
    K = round(N * (1 - mask_ratio))
    noise = torch.rand(B, N, generator=generator, device=x.device)  # (B, N)
    ids_shuffle = noise.argsort(dim=1)  # (B, N): the first K are kept
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, N): the inverse permutation
    ids_keep = ids_shuffle[:, :K]  # (B, K)
    visible = x.gather(1, ids_keep.unsqueeze(-1).expand(B, K, D))  # (B, K, D)
    mask = torch.ones(B, N, device=x.device)  # (B, N) in shuffled order: K zeros, then ones
    mask[:, :K] = 0
    mask = mask.gather(1, ids_restore)  # (B, N) in the original patch order
    return visible, mask, ids_restore


def patch_targets(images: torch.Tensor, patch_size: int, normalize: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """The reconstruction targets: images (B, C, H, W) -> patches (B, N, P²·C).

    With ``normalize`` (the paper's default, "per-patch normalized pixels" in Table 1c), each
    patch has its own mean subtracted and is divided by its own standard deviation,
    (p - mean) / sqrt(var + eps), with the unbiased variance as MAE's code computes it.
    """
    target = patchify(images, patch_size)  # (B, N, P²·C)
    if normalize:
        mean = target.mean(dim=-1, keepdim=True)  # (B, N, 1)
        var = target.var(dim=-1, keepdim=True)  # (B, N, 1), unbiased
        target = (target - mean) / (var + eps).sqrt()
    return target


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE per patch (mean over its P²·C values), averaged over the masked patches only (Section 3).

    pred, target (B, N, P²·C); mask (B, N), 1 = masked -> a scalar.
    """
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum()


@dataclass
class MAEConfig:
    """The MAE-specific settings; the encoder's come from its ViTConfig."""

    mask_ratio: float = 0.75
    decoder_dim: int = 64
    decoder_layers: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True


class MaskedAutoencoder(nn.Module):
    """A ViT encoder on the visible patches, a light Transformer decoder with mask tokens."""

    def __init__(self, encoder: ViT, config: MAEConfig | None = None) -> None:
        super().__init__()
        self.vit = encoder
        self.config = config = config or MAEConfig()
        c = encoder.config
        self.decoder_embed = nn.Linear(c.hidden_dim, config.decoder_dim)  # D -> D_dec
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_dim))  # one learned vector, shared
        self.decoder_pos = nn.Parameter(torch.zeros(1, c.num_patches + 1, config.decoder_dim))  # (1, N+1, D_dec)
        self.decoder = Encoder(config.decoder_layers, hidden_dim=config.decoder_dim, num_heads=config.decoder_heads,
                               mlp_dim=4 * config.decoder_dim, qkv_bias=True)
        self.decoder_norm = nn.LayerNorm(config.decoder_dim)
        self.decoder_pred = nn.Linear(config.decoder_dim, c.patch_size**2 * c.in_channels)  # D_dec -> P²·C
        for module in (self.decoder_embed, self.decoder, self.decoder_norm, self.decoder_pred):
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.trunc_normal_(sub.weight, std=0.02)
                    nn.init.zeros_(sub.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def forward_encoder(self, images: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        """images (B, C, H, W) -> (latent (B, 1+K, D), mask (B, N), ids_restore (B, N))."""
        vit = self.vit
        x = vit.patch_embed(images) + vit.pos_embedding[:, 1:]  # (B, N, D): positions before masking
        visible, mask, ids_restore = random_masking(x, mask_ratio, generator)  # (B, K, D)
        cls = (vit.class_token + vit.pos_embedding[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        z = vit.encoder(torch.cat([cls, visible], dim=1))  # (B, 1+K, D): the encoder never sees a mask token
        return vit.norm(z), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1+K, D) -> predicted pixels of every patch (B, N, P²·C)."""
        y = self.decoder_embed(latent)  # (B, 1+K, D_dec)
        B, N = ids_restore.shape
        K = y.shape[1] - 1
        tokens = torch.cat([y[:, 1:], self.mask_token.expand(B, N - K, -1)], dim=1)  # (B, N, D_dec), shuffled
        tokens = tokens.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, y.shape[-1]))  # (B, N, D_dec), in order
        y = torch.cat([y[:, :1], tokens], dim=1) + self.decoder_pos  # (B, N+1, D_dec)
        y = self.decoder_norm(self.decoder(y))  # (B, N+1, D_dec)
        return self.decoder_pred(y[:, 1:])  # (B, N, P²·C)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """images (B, C, H, W) -> (loss, pred (B, N, P²·C), mask (B, N))."""
        latent, mask, ids_restore = self.forward_encoder(images, self.config.mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        target = patch_targets(images, self.vit.config.patch_size, self.config.norm_pix_loss)
        return mae_loss(pred, target, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """For plots: (masked input, reconstruction, reconstruction with the visible patches pasted in), each
        (B, C, H, W), and the mask (B, N).

        With normalised targets the prediction is in per-patch normalised units: it is mapped
        back with each masked patch's own mean and standard deviation (as the paper's figures do).
        """
        self.eval()
        c = self.vit.config
        _, pred, mask = self(images, generator)
        patches = patchify(images, c.patch_size)  # (B, N, P²·C)
        if self.config.norm_pix_loss:
            mean, std = patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + mean
        hidden = mask.unsqueeze(-1)  # (B, N, 1)
        size = images.shape[-2:]
        masked = unpatchify(patches * (1 - hidden) + hidden * patches.min(), c.patch_size, c.in_channels, *size)
        recon = unpatchify(pred, c.patch_size, c.in_channels, *size)
        pasted = unpatchify(patches * (1 - hidden) + pred * hidden, c.patch_size, c.in_channels, *size)
        return masked, recon, pasted, mask


def pretrain_mae(mae: MaskedAutoencoder, images: torch.Tensor, transform, *, epochs: int, batch_size: int = 256,
                 lr: float = 1.5e-3, weight_decay: float = 0.05, warmup_epochs: float = 1.0, seed: int = 0,
                 progress: bool = True) -> list[float]:
    """Pre-train on uint8 images (N, C, H, W) with AdamW, warm-up and cosine decay; the mean loss per epoch."""
    from vitlib.pretraining import pretrain

    mae.train()
    losses = pretrain(mae.parameters(), images, transform, lambda batch, generator: mae(batch, generator)[0],
                      epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                      seed=seed, desc="MAE pre-training", progress=progress)
    mae.eval()
    return losses

