"""Weights interchange exactly with torchvision and timm (random weights: no download needed)."""

from __future__ import annotations

import pytest
import torch

from vitlib import create_vit, from_timm, from_torchvision
from vitlib.interop import to_timm_state_dict, to_torchvision_state_dict

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Both libraries start the head (and torchvision the class token) at zero: a wrong mapping could hide."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def tv_model():
    return _perturbed(torchvision.models.vit_b_16())


@pytest.fixture(scope="module")
def timm_model():
    return _perturbed(timm.create_model("vit_base_patch16_224"))


@torch.no_grad()
def test_from_torchvision_equals_torchvision(tv_model, images):
    ours = from_torchvision(tv_model)
    assert ours.config.num_heads == 12 and ours.config.num_layers == 12
    assert (ours(images) - tv_model(images)).abs().max() <= 1e-4
    from_sd = from_torchvision(tv_model.state_dict())
    assert (from_sd(images) - tv_model(images)).abs().max() <= 1e-4
    ours.set_fused_attention(False)  # the written-out path agrees too
    assert (ours(images) - tv_model(images)).abs().max() <= 1e-4


@torch.no_grad()
def test_from_timm_equals_timm(timm_model, images):
    ours = from_timm(timm_model)
    assert (ours(images) - timm_model(images)).abs().max() <= 1e-4
    from_sd = from_timm(timm_model.state_dict())
    assert (from_sd(images) - timm_model(images)).abs().max() <= 1e-4


@torch.no_grad()
def test_the_way_back(tv_model, timm_model, images):
    ours = from_timm(timm_model)
    tv = torchvision.models.vit_b_16()
    tv.load_state_dict(to_torchvision_state_dict(ours))
    assert (tv.eval()(images) - timm_model(images)).abs().max() <= 1e-4
    tm = timm.create_model("vit_base_patch16_224")
    tm.load_state_dict(to_timm_state_dict(from_torchvision(tv_model)))
    assert (tm.eval()(images) - tv_model(images)).abs().max() <= 1e-4


@torch.no_grad()
def test_small_timm_model_other_size_and_heads():
    source = _perturbed(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10))
    ours = from_timm(source)
    assert ours.config.image_size == 32 and ours.config.patch_size == 4 and ours.config.num_heads == 3
    x = torch.randn(2, 3, 32, 32)
    assert (ours(x) - source(x)).abs().max() <= 1e-4


def test_timm_model_with_average_pooling_is_refused():
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, global_pool="avg")
    with pytest.raises(ValueError, match="only class-token ViTs .* 'avg'"):
        from_timm(source)


def test_not_a_vit_state_dict():
    with pytest.raises(ValueError, match="does not look like a torchvision ViT state dict"):
        from_torchvision({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(TypeError, match="expected a timm model or its state dict, got int"):
        from_timm(3)


def test_extra_parts_are_named():
    sd = to_timm_state_dict(create_vit("vit_course_32", num_layers=1))
    sd["reg_token"] = torch.zeros(1, 4, 128)
    with pytest.raises(ValueError, match="does not have: reg_token"):
        from_timm(sd)
