"""vitlib: the Vision Transformer of Dosovitskiy et al. 2020 (arXiv:2010.11929), built from scratch.

The reference solutions of the course's exercises and the machinery the notebooks use.
The training engine is `vitlib.train` (import it explicitly; it is also the CLI
`python -m vitlib.train`).
"""

from vitlib import data
from vitlib.attention import MultiHeadSelfAttention, scaled_dot_product_attention
from vitlib.configs import CONFIGS, create_vit, get_config
from vitlib.encoder import MLP, Encoder, EncoderBlock
from vitlib.interop import from_timm, from_torchvision
from vitlib.model import ViT, ViTConfig
from vitlib.patching import PatchEmbedding, patchify, unpatchify

__version__ = "0.1.0"

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
