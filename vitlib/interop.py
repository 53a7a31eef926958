"""Exact weight interchange with torchvision and timm.

torchvision's `VisionTransformer` and timm's `VisionTransformer` hold the same tensors as
`vitlib.ViT` under other names: q, k and v are packed in the same order in all three,
so converting is renaming, plus one reshape (both libraries implement the patch
projection E as a Conv2d with kernel = stride = P; vitlib as a Linear on flattened
patches, see `vitlib.patching`).

    from_torchvision(torchvision.models.vit_b_16(weights="DEFAULT"))   # online
    from_timm(timm.create_model("vit_base_patch16_224", pretrained=True))
    to_torchvision_state_dict(model), to_timm_state_dict(model)       # the way back

A state dict carries no head count; it is read from a model object, or taken as
D / 64 (true for every configuration of Table 1 and DeiT), or given as `num_heads`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import nn

from vitlib.model import ViT, ViTConfig
from vitlib.patching import conv_weight_from_linear, linear_weight_from_conv

__all__ = ["from_torchvision", "from_timm", "to_torchvision_state_dict", "to_timm_state_dict"]

# (vitlib key pattern, other library's key pattern); {i} is the layer index.
_TORCHVISION_NAMES = [
    ("patch_embed.proj.", "conv_proj."),
    ("class_token", "class_token"),
    ("pos_embedding", "encoder.pos_embedding"),
    ("encoder.layers.{i}.norm1.", "encoder.layers.encoder_layer_{i}.ln_1."),
    ("encoder.layers.{i}.attn.qkv.weight", "encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight"),
    ("encoder.layers.{i}.attn.qkv.bias", "encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias"),
    ("encoder.layers.{i}.attn.proj.", "encoder.layers.encoder_layer_{i}.self_attention.out_proj."),
    ("encoder.layers.{i}.norm2.", "encoder.layers.encoder_layer_{i}.ln_2."),
    ("encoder.layers.{i}.mlp.fc1.", "encoder.layers.encoder_layer_{i}.mlp.0."),
    ("encoder.layers.{i}.mlp.fc2.", "encoder.layers.encoder_layer_{i}.mlp.3."),
    ("norm.", "encoder.ln."),
    ("head.", "heads.head."),
]
_TIMM_NAMES = [
    ("patch_embed.proj.", "patch_embed.proj."),
    ("class_token", "cls_token"),
    ("pos_embedding", "pos_embed"),
    ("encoder.layers.{i}.", "blocks.{i}."),
    ("norm.", "norm."),
    ("head.", "head."),
]


def _rename(key: str, table: list[tuple[str, str]], reverse: bool = False) -> str | None:
    """Rename `key` by the first matching prefix pattern of `table`; None if nothing matches."""
    for ours, theirs in table:
        src, dst = (theirs, ours) if reverse else (ours, theirs)
        pattern = "^" + re.escape(src).replace(re.escape("{i}"), r"(?P<i>\d+)")
        match = re.match(pattern, key)
        if match:
            return dst.replace("{i}", match.groupdict().get("i") or "") + key[match.end() :]
    return None


def _state_dict(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], library: str) -> dict[str, torch.Tensor]:
    if isinstance(model_or_state_dict, nn.Module):
        return {k: v.detach() for k, v in model_or_state_dict.state_dict().items()}
    if isinstance(model_or_state_dict, Mapping):
        return dict(model_or_state_dict)
    raise TypeError(f"expected a {library} model or its state dict, got {type(model_or_state_dict).__name__}")


def _convert(
    theirs: dict[str, torch.Tensor],
    table: list[tuple[str, str]],
    library: str,
    prefix: str,
    layer_key: str,
    num_heads: int | None,
    layer_norm_eps: float,
) -> ViT:
    """Build a vitlib.ViT from another library's state dict, inferring the configuration from the shapes."""
    try:
        conv = theirs[prefix + "weight"]  # (D, C, P, P)
        pos = theirs[_rename("pos_embedding", table)]  # (1, N+1, D)
    except KeyError as missing:
        raise ValueError(f"this does not look like a {library} ViT state dict: no key {missing}") from None
    hidden_dim, in_channels, patch_size, _ = conv.shape
    grid = math.isqrt(pos.shape[1] - 1)
    if grid * grid != pos.shape[1] - 1:
        raise ValueError(f"{library} position embedding of {pos.shape[1]} tokens is not 1 + a square grid of patches")
    num_layers = sum(1 for k in theirs if re.fullmatch(layer_key, k))
    fc1 = theirs[_rename("encoder.layers.0.mlp.fc1.weight", table)]  # (mlp_dim, D)
    head = theirs.get(_rename("head.weight", table))
    config = ViTConfig(
        image_size=grid * patch_size,
        patch_size=patch_size,
        in_channels=in_channels,
        num_classes=0 if head is None else head.shape[0],
        hidden_dim=hidden_dim,
        mlp_dim=fc1.shape[0],
        num_layers=num_layers,
        num_heads=num_heads or max(1, hidden_dim // 64),
        qkv_bias=_rename("encoder.layers.0.attn.qkv.bias", table) in theirs,
        layer_norm_eps=layer_norm_eps,
    )
    model = ViT(config)
    ours = {}
    for key in model.state_dict():
        their_key = _rename(key, table)
        if their_key not in theirs:
            raise ValueError(f"{library} state dict has no {their_key!r} (for vitlib's {key!r})")
        ours[key] = theirs.pop(their_key)
    leftover = [k for k, v in theirs.items() if v.numel() > 0]
    if leftover:
        raise ValueError(
            f"{library} weights hold parts that a plain ViT (Dosovitskiy et al. 2020) does not have: "
            f"{', '.join(leftover[:5])}{' ...' if len(leftover) > 5 else ''}"
        )
    ours["patch_embed.proj.weight"] = linear_weight_from_conv(ours["patch_embed.proj.weight"])  # (D, P²·C)
    model.load_state_dict(ours)
    return model.eval()


def from_torchvision(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], num_heads: int | None = None) -> ViT:
    """A vitlib.ViT with the weights of a torchvision `VisionTransformer` (or its state dict).

    Its logits equal torchvision's (float32, eval mode). Works the same on a randomly
    initialised `torchvision.models.vit_b_16()` and on pretrained weights.
    """
    eps = 1e-6
    if isinstance(model_or_state_dict, nn.Module):
        source = model_or_state_dict
        if getattr(source, "representation_size", None):
            raise ValueError("torchvision ViTs with a pre-logits layer (representation_size) are not supported")
        num_heads = num_heads or source.encoder.layers[0].self_attention.num_heads
        eps = source.encoder.ln.eps
    theirs = _state_dict(model_or_state_dict, "torchvision")
    return _convert(
        theirs,
        _TORCHVISION_NAMES,
        "torchvision",
        "conv_proj.",
        r"encoder\.layers\.encoder_layer_\d+\.ln_1\.weight",
        num_heads,
        eps,
    )


def from_timm(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], num_heads: int | None = None) -> ViT:
    """A vitlib.ViT with the weights of a timm `VisionTransformer` (or its state dict).

    Only timm's plain ViT fits: a class token, learned position embeddings that
    include the class token's, class-token pooling, no register tokens or layer scale.
    """
    eps = 1e-6
    if isinstance(model_or_state_dict, nn.Module):
        source = model_or_state_dict
        pooling = getattr(source, "global_pool", "token")
        if pooling != "token" or getattr(source, "cls_token", None) is None:
            raise ValueError(f"only class-token ViTs convert to vitlib (this timm model pools with {pooling!r})")
        if getattr(source, "no_embed_class", False):
            raise ValueError("this timm model gives the class token no position embedding; vitlib's ViT does (eq. 1)")
        num_heads = num_heads or source.blocks[0].attn.num_heads
        eps = source.norm.eps
    theirs = _state_dict(model_or_state_dict, "timm")
    return _convert(theirs, _TIMM_NAMES, "timm", "patch_embed.proj.", r"blocks\.\d+\.norm1\.weight", num_heads, eps)


def _export(model: ViT, table: list[tuple[str, str]], conv_key: str) -> dict[str, torch.Tensor]:
    c = model.config
    out = {_rename(k, table): v.detach().clone() for k, v in model.state_dict().items()}
    out[conv_key] = conv_weight_from_linear(out[conv_key], c.patch_size, c.in_channels)  # (D, C, P, P)
    return out


def to_torchvision_state_dict(model: ViT) -> dict[str, torch.Tensor]:
    """The state dict of the equal torchvision `VisionTransformer` (load it with `load_state_dict`)."""
    return _export(model, _TORCHVISION_NAMES, "conv_proj.weight")


def to_timm_state_dict(model: ViT) -> dict[str, torch.Tensor]:
    """The state dict of the equal timm `VisionTransformer` (load it with `load_state_dict`)."""
    return _export(model, _TIMM_NAMES, "patch_embed.proj.weight")
