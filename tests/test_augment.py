"""vitlib.augment: batched augmentation does what the per-image transforms of torchvision do."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from vitlib.augment import BatchTransform, mix


def images(n: int = 16, channels: int = 1, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))  # (n, C, H, W)


def test_without_augmentation_it_is_torchvisions_normalise():
    x = images(channels=3, size=32)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    expected = v2.Normalize(list(mean), list(std))(v2.ToDtype(torch.float32, scale=True)(x))
    ours = BatchTransform(mean, std)
    assert not ours.augments
    torch.testing.assert_close(ours(x), expected)
    torch.testing.assert_close(ours(x[3]), expected[3])  # one image (C, H, W) works too


def test_shift_is_a_crop_of_the_zero_padded_image():
    x = images()
    shifted = BatchTransform((0.0,), (1.0,), padding=3)(x, torch.Generator().manual_seed(1))  # (B, 1, 28, 28)
    padded = F.pad(x.float() / 255, (3, 3, 3, 3))  # (B, 1, 34, 34)
    offsets = set()
    for i in range(len(x)):
        matches = [(a, b) for a, b in itertools.product(range(7), repeat=2)
                   if torch.equal(shifted[i], padded[i, :, a:a + 28, b:b + 28])]
        assert matches, f"image {i} is not a 28×28 window of its padded self"
        offsets.add(matches[0])
    assert len(offsets) > 4  # each image draws its own shift


def test_flip_mirrors_about_half_the_images():
    x = images(n=200)
    out = BatchTransform((0.0,), (1.0,), flip=True)(x, torch.Generator().manual_seed(0))
    plain = x.float() / 255
    flipped = [torch.equal(out[i], plain[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(out[i], plain[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 60 < sum(flipped) < 140


def test_erasing_sets_one_rectangle_to_zero_in_the_chosen_images():
    x = torch.full((400, 1, 28, 28), 255, dtype=torch.uint8)
    out = BatchTransform((0.0,), (1.0,), erasing=0.5)(x, torch.Generator().manual_seed(0))
    erased = out == 0  # (B, 1, 28, 28)
    chosen = erased.flatten(1).any(dim=1)
    assert 150 < chosen.sum() < 250
    for mask in erased[chosen][:, 0]:
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all(), "the erased pixels should form one filled rectangle"
        assert 0.01 * 784 <= mask.sum() <= 0.34 * 784 + 28


def _dot_positions(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's intensity-weighted centroid, as distance from the centre and angle in degrees."""
    B, _, H, W = out.shape
    ys, xs = torch.meshgrid(torch.arange(H) - (H - 1) / 2, torch.arange(W) - (W - 1) / 2, indexing="ij")
    mass = out[:, 0].flatten(1).sum(1)  # (B,)
    cy = (out[:, 0] * ys).flatten(1).sum(1) / mass  # (B,)
    cx = (out[:, 0] * xs).flatten(1).sum(1) / mass  # (B,)
    return torch.hypot(cx, cy), torch.rad2deg(torch.atan2(cy, cx))


def _dot_images(n: int) -> torch.Tensor:
    """A 2×2 bright dot 8 pixels right of the centre of a 28×28 image, n times."""
    x = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 13:15, 21:23] = 255  # centroid at (0, +8) from the centre (13.5, 13.5)
    return x


def test_rotation_turns_each_image_about_its_centre_within_the_range():
    out = BatchTransform((0.0,), (1.0,), rotate=15.0)(_dot_images(200), torch.Generator().manual_seed(0))
    radius, angle = _dot_positions(out)
    torch.testing.assert_close(radius, torch.full_like(radius, 8.0), atol=0.3, rtol=0)
    assert angle.abs().max() <= 15.5, "turned by more than ±15 degrees"
    assert angle.min() < -10 and angle.max() > 10, "the angles should spread over the range"
    assert len(set(angle.round().tolist())) > 15, "each image draws its own angle"


def test_scale_zooms_each_image_about_its_centre_within_the_range():
    out = BatchTransform((0.0,), (1.0,), scale=0.2)(_dot_images(200), torch.Generator().manual_seed(0))
    radius, angle = _dot_positions(out)
    assert angle.abs().max() < 1.0, "zooming alone should not turn the image"
    assert 8 * 0.8 - 0.3 <= radius.min() and radius.max() <= 8 * 1.2 + 0.3
    assert radius.min() < 7.0 and radius.max() > 9.0, "the zoom should spread over 1 ± 0.2"


def test_no_turn_and_no_zoom_leave_the_image_as_it_was():
    x = images()
    t = BatchTransform((0.0,), (1.0,), rotate=1e-6)
    torch.testing.assert_close(t(x, torch.Generator().manual_seed(0)), x.float() / 255, atol=1e-4, rtol=0)


def test_same_generator_same_augmentation():
    t = BatchTransform((0.3,), (0.3,), padding=3, flip=True, erasing=0.5, rotate=10.0, scale=0.1)
    x = images()
    a = t(x, torch.Generator().manual_seed(7))
    b = t(x, torch.Generator().manual_seed(7))
    c = t(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mean=(0.5,), std=(0.5, 0.5)), "one value per channel"),
    (dict(mean=(0.5,), std=(0.0,)), "std must be positive"),
    (dict(mean=(0.5,), std=(0.5,), padding=-1), "padding"),
    (dict(mean=(0.5,), std=(0.5,), erasing=2.0), "probability"),
    (dict(mean=(0.5,), std=(0.5,), rotate=-5.0), "angle in degrees"),
    (dict(mean=(0.5,), std=(0.5,), scale=1.0), "fraction"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchTransform(**kwargs)


def test_wrong_number_of_channels_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        BatchTransform((0.5,) * 3, (0.5,) * 3)(images(channels=1))


def test_mixup_targets_follow_the_mixing_weight():
    x = torch.stack([torch.full((1, 4, 4), float(i)) for i in range(6)])  # image i is constant i
    labels = torch.arange(6)
    mixed, targets = mix(x, labels, 6, mixup=0.4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))
    lam = targets[0, 0].item()  # image 0 mixes with image 5
    assert 0 <= lam <= 1 and targets[0, 5].item() == pytest.approx(1 - lam)
    torch.testing.assert_close(mixed[0], torch.full((1, 4, 4), 5 * (1 - lam)))


def test_cutmix_weight_is_the_area_kept():
    x = torch.zeros(4, 1, 16, 16)
    x[1] = 1.0  # partner of image 2
    for seed in range(10):
        mixed, targets = mix(x, torch.arange(4), 4, cutmix=1.0, generator=torch.Generator().manual_seed(seed))
        pasted = mixed[2].mean().item()  # the fraction of image 2 that came from image 1
        assert targets[2, 2].item() == pytest.approx(1 - pasted)
        assert targets[2, 1].item() == pytest.approx(pasted)


def test_no_mixing_gives_one_hot_targets():
    x = images(n=4).float()
    mixed, targets = mix(x, torch.tensor([0, 2, 1, 2]), 3)
    assert torch.equal(mixed, x)
    assert torch.equal(targets, F.one_hot(torch.tensor([0, 2, 1, 2]), 3).float())
