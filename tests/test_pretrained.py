"""vitlib.pretrained: which trained model weeks 06 and 07 get, and why."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

import vitlib.train
from vitlib import pretrained
from vitlib.checkpoint import save_checkpoint
from vitlib.configs import create_vit
from vitlib.pretrained import (
    PretrainedUnavailable,
    course_model,
    imagenet_vit_b_16,
    transfer_backbone,
)


def _checkpoint(path, accuracy=0.9, dataset="fashion-mnist", **overrides):
    model = create_vit("vit_course_28", **{**dict(patch_size=7, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32), **overrides})
    save_checkpoint(path, model, epoch=1, step=10, history={"test_accuracy": [accuracy]}, extra={"dataset": dataset})
    return model


def _no_training(*args, **kwargs):
    raise AssertionError("should not train")


def test_a_good_week_05_checkpoint_is_used(tmp_path, monkeypatch, capsys):
    saved = _checkpoint(tmp_path / "w05.pt")
    monkeypatch.setattr(vitlib.train, "train", _no_training)
    got = course_model(tmp_path / "w05.pt", quick_dir=tmp_path / "quick")
    assert "using your week-05 model" in capsys.readouterr().out
    assert got.accuracy == 0.9 and got.dataset == "fashion-mnist" and got.checkpoint == tmp_path / "w05.pt"
    assert all(torch.equal(a, b) for a, b in zip(got.model.state_dict().values(), saved.state_dict().values()))
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert got.model(got.preprocess(images)).shape == (2, 10)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "no week-05 checkpoint"),
        (lambda p: _checkpoint(p, accuracy=0.3), "reached 30.0% test accuracy, below the 80%"),
        (lambda p: _checkpoint(p, dataset="mnist"), "not a Fashion-MNIST model"),
        (lambda p: _checkpoint(p, num_classes=2), "not a Fashion-MNIST model"),
        (lambda p: p.write_bytes(b"not a checkpoint"), "not a vitlib checkpoint"),
    ],
)
def test_checkpoints_that_are_not_used_and_why(make, reason, tmp_path):
    make(tmp_path / "w05.pt")
    why, loaded = pretrained._why_not(tmp_path / "w05.pt", 0.8)
    assert loaded is None and reason in why


def test_otherwise_a_quick_model_is_trained_once_and_then_reused(tmp_path, monkeypatch, capsys):
    _checkpoint(tmp_path / "w05.pt", accuracy=0.3)
    first = course_model(tmp_path / "w05.pt", quick_dir=tmp_path / "quick", recipe="smoke", progress=False)
    out = capsys.readouterr().out
    assert "below the 80%" in out and "training a quick model instead" in out
    assert first.checkpoint == tmp_path / "quick" / "last.pt" and first.checkpoint.is_file()
    assert first.dataset == "fashion-mnist-small" and "grad_norm_groups" in first.history

    monkeypatch.setattr(vitlib.train, "train", _no_training)
    second = course_model(tmp_path / "w05.pt", quick_dir=tmp_path / "quick", recipe="smoke")
    assert "trained earlier" in capsys.readouterr().out
    assert second.accuracy == first.accuracy
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))


def _small_torchvision_vit(weights=None, progress=True):
    torch.manual_seed(0)
    model = torchvision.models.vision_transformer.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def test_imagenet_weights_not_cached_and_no_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models, "vit_b_16", _no_training)
    with pytest.raises(PretrainedUnavailable, match="not in torch's cache .* and download=False"):
        imagenet_vit_b_16(download=False)


def test_a_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    def offline(weights=None, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models, "vit_b_16", offline)
    with pytest.raises(PretrainedUnavailable, match="URLError.*no network"):
        imagenet_vit_b_16(download=True)


def test_cached_imagenet_weights_are_converted_and_checked_exact(tmp_path, monkeypatch, capsys):
    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / weights.url.rsplit("/", 1)[1]).write_bytes(b"cached")  # present: no download needed
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models, "vit_b_16", _small_torchvision_vit)
    got = imagenet_vit_b_16()
    assert "logits equal" in capsys.readouterr().out
    assert got.dataset == "imagenet-1k" and got.accuracy == pytest.approx(0.81072)
    x = got.preprocess(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8))
    assert x.shape == (3, 3, 32, 32)  # resized to the model's size, grey copied to R, G, B
    with torch.no_grad():
        torch.testing.assert_close(got.model(x), _small_torchvision_vit().eval()(x), atol=1e-5, rtol=1e-4)


def test_transfer_backbone_falls_back_to_the_course_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    _checkpoint(tmp_path / "w05.pt")
    got = transfer_backbone(download=False, checkpoint=tmp_path / "w05.pt", quick_dir=tmp_path / "quick")
    out = capsys.readouterr().out
    assert "falling back to the course's Fashion-MNIST model" in out and got.dataset == "fashion-mnist"
    assert pretrained.WEEK05_CHECKPOINT.as_posix() == "runs/week05/last.pt"
