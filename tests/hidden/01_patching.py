"""Hidden tests of week 01, added by `python -m vitlib.grade` after each check; never shown to students.

Each `hidden_<exercise>(thing)` gets what the exercise's check gets, and raises on a mistake.
They probe cases the visible checks do not: other sizes, more channels, other dtypes.
"""

import torch

import vitlib


def hidden_patchify(patchify):
    images = torch.randn(2, 4, 6, 10, generator=torch.Generator().manual_seed(11))  # 4 channels, 2×2 patches
    got = patchify(images, 2)
    assert torch.equal(got, vitlib.patchify(images, 2)), "patchify differs from vitlib on 4-channel 6×10 images"
    half = patchify(images.half(), 2)
    assert half.dtype == torch.float16, "patchify must keep the dtype"


def hidden_num_patches(num_patches):
    assert num_patches(384, 16) == 576
    assert num_patches(32, 32) == 1


def hidden_patch_embedding(PatchEmbedding):
    torch.manual_seed(12)
    module = PatchEmbedding(2, 4, 6)
    reference = vitlib.PatchEmbedding(2, 4, 6)
    module.load_state_dict(reference.state_dict())
    x = torch.randn(3, 4, 8, 8)
    assert torch.allclose(module(x), reference(x), atol=1e-6)


def hidden_add_class_token_and_positions(add_class_token_and_positions):
    x, token, pos = torch.randn(5, 9, 3), torch.randn(1, 1, 3), torch.randn(1, 10, 3)
    expected = torch.cat([token.expand(5, -1, -1), x], dim=1) + pos
    assert torch.allclose(add_class_token_and_positions(x, token, pos), expected)
