"""Bad input gets a clear error naming what was expected and what came (not a traceback from torch)."""

from __future__ import annotations

import pytest
import torch

from vitlib import ViTConfig, create_vit, get_config


@pytest.fixture(scope="module")
def model():
    return create_vit("vit_course_32", num_layers=1).eval()  # expects (B, 3, 32, 32)


def test_not_a_tensor(model):
    with pytest.raises(TypeError, match=r"expected a torch\.Tensor .* got list"):
        model([[0.0]])


def test_three_d_tensor_suggests_unsqueeze(model):
    with pytest.raises(ValueError, match=r"4-D .* \(B, 3, 32, 32\).* got 3-D .*\(3, 32, 32\).*unsqueeze\(0\)"):
        model(torch.randn(3, 32, 32))


def test_non_float_tensor_suggests_conversion(model):
    with pytest.raises(TypeError, match=r"floating-point .* got dtype torch\.uint8 .*x\.float\(\) / 255"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_wrong_number_of_channels(model):
    with pytest.raises(ValueError, match=r"expected 3 channel\(s\).* got 1 channel\(s\).*grayscale"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"channels last\? use x\.permute\(0, 3, 1, 2\)"):
        model(torch.randn(2, 32, 32, 3))


def test_image_size_not_divisible_by_patch_size(model):
    with pytest.raises(ValueError, match=r"image size 30×30 is not divisible by the patch size 4"):
        model(torch.randn(1, 3, 30, 30))


def test_image_of_another_size(model):
    with pytest.raises(ValueError, match=r"expected images of 32×32 pixels .* got 64×64"):
        model(torch.randn(1, 3, 64, 64))


def test_config_image_size_not_divisible():
    with pytest.raises(ValueError, match=r"image_size=28 is not divisible by patch_size=16"):
        ViTConfig(image_size=28, patch_size=16)


def test_config_heads_not_dividing_width():
    with pytest.raises(ValueError, match=r"hidden_dim=100 is not divisible by num_heads=3"):
        ViTConfig(hidden_dim=100, num_heads=3)


def test_config_bad_values():
    with pytest.raises(ValueError, match=r"num_layers must be a positive integer, got 0"):
        ViTConfig(num_layers=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        ViTConfig(dropout=1.5)


def test_unknown_configuration_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown ViT configuration 'vit_b_15'\. Did you mean 'vit_b_16'\? Known: vit_b_16, .*vit_course_28"):
        create_vit("vit_b_15")


def test_unknown_override_field():
    with pytest.raises(TypeError, match=r"unknown ViTConfig field\(s\) depth; fields are: .*num_layers"):
        get_config("vit_b_16", depth=3)
