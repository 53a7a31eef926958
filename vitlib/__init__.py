"""vitlib: the Vision Transformer of Dosovitskiy et al. 2020 (arXiv:2010.11929), built from scratch.

The reference solutions of the course's exercises and the machinery the notebooks use.
The training engine is `vitlib.train` (import it explicitly; it is also the CLI
`python -m vitlib.train`).

The names below are imported on first use (PEP 562), so that `import vitlib.notebooks`
(the git filter of `make git-setup`) and the other light commands do not load PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "MultiHeadSelfAttention": "vitlib.attention",
    "scaled_dot_product_attention": "vitlib.attention",
    "CONFIGS": "vitlib.configs",
    "create_vit": "vitlib.configs",
    "get_config": "vitlib.configs",
    "MLP": "vitlib.encoder",
    "Encoder": "vitlib.encoder",
    "EncoderBlock": "vitlib.encoder",
    "from_timm": "vitlib.interop",
    "from_torchvision": "vitlib.interop",
    "ViT": "vitlib.model",
    "ViTConfig": "vitlib.model",
    "PatchEmbedding": "vitlib.patching",
    "patchify": "vitlib.patching",
    "unpatchify": "vitlib.patching",
}

__all__ = [
    "CONFIGS",
    "MLP",
    "Encoder",
    "EncoderBlock",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "ViT",
    "ViTConfig",
    "create_vit",
    "data",
    "from_timm",
    "from_torchvision",
    "get_config",
    "patchify",
    "scaled_dot_product_attention",
    "unpatchify",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name == "data":
        value = importlib.import_module("vitlib.data")
    else:
        raise AttributeError(f"module 'vitlib' has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from vitlib import data
    from vitlib.attention import MultiHeadSelfAttention, scaled_dot_product_attention
    from vitlib.configs import CONFIGS, create_vit, get_config
    from vitlib.encoder import MLP, Encoder, EncoderBlock
    from vitlib.interop import from_timm, from_torchvision
    from vitlib.model import ViT, ViTConfig
    from vitlib.patching import PatchEmbedding, patchify, unpatchify
