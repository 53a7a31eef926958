"""Weeks 02 and 03: scaled dot-product attention and multi-head self-attention.

Dosovitskiy et al. 2020, Appendix A (eqs. 5-8), after Vaswani et al. 2017:

    [q, k, v] = z U_qkv                          (5)
    A = softmax(q kᵀ / √D_h)                     (6)
    SA(z) = A v                                  (7)
    MSA(z) = [SA_1(z); ...; SA_k(z)] U_msa       (8)

Two paths compute the same thing:
- the fused path, `torch.nn.functional.scaled_dot_product_attention` (default, fast,
  memory-efficient; exposes no attention weights);
- the written-out path, `scaled_dot_product_attention` below, for teaching and for
  attention maps. It returns the post-softmax weights A of eq. 6, rows summing to 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["scaled_dot_product_attention", "MultiHeadSelfAttention"]


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out: softmax(q kᵀ / √d_k) v (eqs. 6 and 7).

    Shapes: q (..., N, d_k), k (..., M, d_k), v (..., M, d_v).
    Returns (output (..., N, d_v), weights (..., N, M)); each row of `weights` is a
    probability distribution over the M keys (post-softmax, before dropout).
    """
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., N, M)
    weights = scores.softmax(dim=-1)  # (..., N, M), rows sum to 1
    dropped = F.dropout(weights, p=dropout_p, training=training) if dropout_p > 0 else weights
    return dropped @ v, weights  # (..., N, d_v), (..., N, M)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention, MSA of eq. 8, with one fused qkv projection U_qkv.

    `qkv` packs the query, key and value projections in that order (as torchvision's
    `in_proj_weight` and timm's `attn.qkv`), so weights interchange by renaming.
    Set `fused = False` to run the written-out path (used for attention maps).
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads  # D_h = D / k
        self.attention_dropout = attention_dropout
        self.fused = True
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim, bias=qkv_bias)  # U_qkv
        self.proj = nn.Linear(hidden_dim, hidden_dim)  # U_msa
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """x (B, N, D) -> (B, N, D); with `return_attention`, also the weights (B, heads, N, N)."""
        qkv = self.qkv(x)  # (B, N, 3D)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)  # 3 × (B, h, N, D_h)
        p = self.attention_dropout if self.training else 0.0
        if self.fused and not return_attention:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, N, D_h)
            weights = None
        else:
            out, weights = scaled_dot_product_attention(q, k, v, dropout_p=p, training=self.training)
        out = rearrange(out, "b h n d -> b n (h d)")  # (B, N, D): heads concatenated
        out = self.proj_drop(self.proj(out))  # (B, N, D)
        return (out, weights) if return_attention else out

    def forward_first(self, x: torch.Tensor, count: int = 1) -> torch.Tensor:
        """The output of ``forward`` for the first ``count`` tokens only: x (B, N, D) -> (B, count, D).

        Every token still serves as a key and a value; only the queries are cut. Exact,
        and cheaper: the ViT's last layer needs nothing but the class token (eq. 4).
        """
        D = x.shape[-1]
        weight, bias = self.qkv.weight, self.qkv.bias  # (3D, D), (3D,): rows are q, then k, then v
        q = F.linear(x[:, :count], weight[:D], None if bias is None else bias[:D])  # (B, count, D)
        kv = F.linear(x, weight[D:], None if bias is None else bias[D:])  # (B, N, 2D)
        q = rearrange(q, "b n (h d) -> b h n d", h=self.num_heads)  # (B, h, count, D_h)
        k, v = rearrange(kv, "b n (two h d) -> two b h n d", two=2, h=self.num_heads)  # 2 × (B, h, N, D_h)
        p = self.attention_dropout if self.training else 0.0
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, count, D_h)
        else:
            out, _ = scaled_dot_product_attention(q, k, v, dropout_p=p, training=self.training)
        out = rearrange(out, "b h n d -> b n (h d)")  # (B, count, D)
        return self.proj_drop(self.proj(out))  # (B, count, D)
