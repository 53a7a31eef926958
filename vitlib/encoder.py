"""Week 03: the Transformer encoder of the ViT (Section 3.1, eqs. 2 and 3, Figure 1 right).

    z'_ℓ = MSA(LN(z_{ℓ-1})) + z_{ℓ-1}      ℓ = 1 ... L     (2)
    z_ℓ  = MLP(LN(z'_ℓ)) + z'_ℓ            ℓ = 1 ... L     (3)

Pre-norm: "Layernorm (LN) is applied before every block, and residual connections
after every block". Each block has two LayerNorms of its own, one per sublayer.
"The MLP contains two layers with a GELU non-linearity."
"""

from __future__ import annotations

import torch
from torch import nn

from vitlib.attention import MultiHeadSelfAttention

__all__ = ["MLP", "EncoderBlock", "Encoder"]


class MLP(nn.Module):
    """The MLP block of eq. 3: Linear, GELU, Dropout, Linear, Dropout (Appendix B.1 applies dropout after every dense layer)."""

    def __init__(self, hidden_dim: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, mlp_dim)
        self.act = nn.GELU()  # exact (erf) form, as torchvision and timm
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(mlp_dim, hidden_dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))  # (B, N, mlp_dim)
        return self.drop2(self.fc2(x))  # (B, N, D)


class EncoderBlock(nn.Module):
    """One pre-norm residual encoder layer: eq. 2 then eq. 3."""

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_dim, eps=layer_norm_eps)
        self.attn = MultiHeadSelfAttention(hidden_dim, num_heads, qkv_bias, attention_dropout, dropout)
        self.norm2 = nn.LayerNorm(hidden_dim, eps=layer_norm_eps)
        self.mlp = MLP(hidden_dim, mlp_dim, dropout)

    def forward(self, z: torch.Tensor, return_attention: bool = False):
        """z (B, N+1, D) -> (B, N+1, D); with `return_attention`, also (B, heads, N+1, N+1)."""
        if return_attention:
            attended, weights = self.attn(self.norm1(z), return_attention=True)
        else:
            attended, weights = self.attn(self.norm1(z)), None
        z = z + attended  # eq. 2: z'_ℓ, (B, N+1, D)
        z = z + self.mlp(self.norm2(z))  # eq. 3: z_ℓ, (B, N+1, D)
        return (z, weights) if return_attention else z

    def forward_class_token(self, z: torch.Tensor, num_tokens: int = 1) -> torch.Tensor:
        """Eqs. 2 and 3 for the class token only: z (B, N+1, D) -> z_ℓ^0 (B, 1, D).

        Every token is still attended to; only the class token's row is computed (the first
        ``num_tokens`` rows, (B, num_tokens, D): 2 for DeiT's class and distillation tokens).
        """
        z0 = z[:, :num_tokens] + self.attn.forward_first(self.norm1(z), num_tokens)  # eq. 2, (B, num_tokens, D)
        return z0 + self.mlp(self.norm2(z0))  # eq. 3, (B, num_tokens, D)


class Encoder(nn.Module):
    """The stack of L encoder blocks (the final LayerNorm of eq. 4 lives in `ViT`)."""

    def __init__(self, num_layers: int, **block_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderBlock(**block_kwargs) for _ in range(num_layers))

    def forward(self, z: torch.Tensor, return_attention: bool = False):
        """z (B, N+1, D) -> z_L (B, N+1, D); with `return_attention`, also a list of L maps (B, heads, N+1, N+1)."""
        maps = []
        for layer in self.layers:
            if return_attention:
                z, weights = layer(z, return_attention=True)
                maps.append(weights)
            else:
                z = layer(z)
        return (z, maps) if return_attention else z

    def forward_class_token(self, z: torch.Tensor, num_tokens: int = 1) -> torch.Tensor:
        """z_0 (B, N+1, D) -> z_L^0 (B, 1, D): all layers, the last one for the class token only.

        Eq. 4 reads only z_L^0, and in the last layer no other token depends on it, so
        computing the other N rows there is wasted work: for ViT-S/16 about 7% of a
        forward and backward pass. The result equals ``forward(z)[:, :1]`` (up to
        floating-point rounding). ``num_tokens`` keeps the first that many tokens instead
        (DeiT's distillation token is the second): (B, num_tokens, D) = ``forward(z)[:, :num_tokens]``.
        """
        for layer in self.layers[:-1]:
            z = layer(z)  # (B, N+1, D)
        return self.layers[-1].forward_class_token(z, num_tokens) if len(self.layers) else z[:, :num_tokens]
