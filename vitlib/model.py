"""Week 04: the Vision Transformer, assembled (Dosovitskiy et al. 2020, Section 3.1, Figure 1).

    z_0 = [x_class; x_p^1 E; x_p^2 E; ...; x_p^N E] + E_pos    (1)
    z'_ℓ = MSA(LN(z_{ℓ-1})) + z_{ℓ-1}                          (2)
    z_ℓ  = MLP(LN(z'_ℓ)) + z'_ℓ                                (3)
    y    = LN(z_L^0)                                           (4)

and a linear classification head on y. State-dict names:

    patch_embed.proj.{weight,bias}     E of eq. 1, a Linear on (P²·C)-sized patches
    class_token                        x_class, (1, 1, D)
    pos_embedding                      E_pos, (1, N+1, D), learned 1-D
    encoder.layers.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2
    norm                               the LN of eq. 4
    head                               the classification head
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitlib.encoder import Encoder
from vitlib.patching import PatchEmbedding
from vitlib.validation import check_images

__all__ = ["ViTConfig", "ViT"]


@dataclass
class ViTConfig:
    """Hyper-parameters of a ViT; the names follow Table 1 and torchvision.

    Defaults are ViT-B/16 at 224×224 with 1000 classes.
    """

    image_size: int = 224
    patch_size: int = 16  # P
    in_channels: int = 3  # C
    num_classes: int = 1000
    hidden_dim: int = 768  # D, "Hidden size" in Table 1
    mlp_dim: int = 3072  # "MLP size"
    num_layers: int = 12  # L, "Layers"
    num_heads: int = 12  # k, "Heads"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    patch_dropout: float = 0.0  # fraction of patch tokens dropped in training (PatchDropout); 0 = off
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_channels", "hidden_dim", "mlp_dim", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer ≥ 0 (0: no head), got {self.num_classes!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}: "
                f"the image cannot be cut into whole {self.patch_size}×{self.patch_size} patches"
            )
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} is not divisible by num_heads={self.num_heads}: "
                "each head gets D / k dimensions (eq. 8)"
            )
        for name in ("dropout", "attention_dropout", "patch_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")

    @property
    def num_patches(self) -> int:
        """N = HW / P²."""
        return (self.image_size // self.patch_size) ** 2


class ViT(nn.Module):
    """The Vision Transformer: eqs. 1 to 4 and a linear head on the class token."""

    def __init__(self, config: ViTConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = ViTConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a ViTConfig or keyword arguments, not both")
        self.config = config
        c = config
        self.patch_embed = PatchEmbedding(c.patch_size, c.in_channels, c.hidden_dim)
        self.class_token = nn.Parameter(torch.zeros(1, 1, c.hidden_dim))  # x_class, (1, 1, D)
        self.pos_embedding = nn.Parameter(torch.zeros(1, c.num_patches + 1, c.hidden_dim))  # E_pos, (1, N+1, D)
        self.pos_drop = nn.Dropout(c.dropout)  # Appendix B.1: dropout after the position embeddings
        self.encoder = Encoder(
            c.num_layers,
            hidden_dim=c.hidden_dim,
            num_heads=c.num_heads,
            mlp_dim=c.mlp_dim,
            dropout=c.dropout,
            attention_dropout=c.attention_dropout,
            qkv_bias=c.qkv_bias,
            layer_norm_eps=c.layer_norm_eps,
        )
        self.norm = nn.LayerNorm(c.hidden_dim, eps=c.layer_norm_eps)  # LN of eq. 4
        self.head = nn.Linear(c.hidden_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as timm and torchvision do: truncated normal (std 0.02) weights, zero biases, zero head.

        The head starts at zero, as the paper's fine-tuning head (Section 3.1), so the
        first loss is exactly log(num_classes).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        nn.init.zeros_(self.class_token)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Eq. 1: images (B, C, H, W) -> z_0 (B, N+1, D)."""
        check_images(images, self.config)
        x = self.patch_embed(images)  # (B, N, D)
        x_class = self.class_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        z0 = torch.cat([x_class, x], dim=1) + self.pos_embedding  # (B, N+1, D)
        if self.training and self.config.patch_dropout > 0:
            z0 = self.drop_patches(z0)  # (B, 1+K, D)
        return self.pos_drop(z0)

    def drop_patches(self, z0: torch.Tensor) -> torch.Tensor:
        """PatchDropout (Liu et al. 2022): keep a random ``1 - patch_dropout`` of the patch tokens.

        Training only. The position embeddings are already added, so the kept tokens
        still know where they came from; attention does not care about their order.
        Fewer tokens make a step cheaper (attention and MLP cost scale with N) and act
        as augmentation; at test time every patch is used. z0 (B, N+1, D) -> (B, 1+K, D).
        """
        B, n_plus_1, D = z0.shape
        N = n_plus_1 - 1
        K = max(1, round(N * (1 - self.config.patch_dropout)))
        keep = torch.rand(B, N, device=z0.device).argsort(dim=1)[:, :K]  # (B, K) random patch indices
        patches = z0[:, 1:].gather(1, keep.unsqueeze(-1).expand(B, K, D))  # (B, K, D)
        return torch.cat([z0[:, :1], patches], dim=1)  # (B, 1+K, D): the class token stays

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Eqs. 1 to 4: images (B, C, H, W) -> y = LN(z_L^0), the class-token features (B, D)."""
        z = self.encoder.forward_class_token(self.embed(images))  # z_L^0, (B, 1, D): all eq. 4 needs
        return self.norm(z[:, 0])  # y, (B, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W), float, normalised -> logits (B, num_classes)."""
        return self.head(self.forward_features(images))  # (B, num_classes)

    def forward_with_attention(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, num_classes) and the post-softmax attention weights of every layer.

        Uses the written-out attention path for this call only; the default `forward`
        keeps the fused kernel. Each map is (B, heads, N+1, N+1) and its rows sum to 1.
        """
        z, maps = self.encoder(self.embed(images), return_attention=True)  # (B, N+1, D), L × (B, h, N+1, N+1)
        return self.head(self.norm(z[:, 0])), maps

    def set_fused_attention(self, fused: bool) -> None:
        """Switch every attention layer between the fused kernel (True) and the written-out path."""
        for layer in self.encoder.layers:
            layer.attn.fused = fused

    def num_parameters(self) -> int:
        """The number of trainable parameters (Table 1 counts)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
