"""vitlib.synthetic: shapes drawn from formulas, deterministic per (seed, index), balanced, in range."""

from __future__ import annotations

import math

import pytest
import torch

from vitlib import synthetic
from vitlib.data import ImageDataset, eval_transform
from vitlib.synthetic import (
    SHAPES,
    SyntheticShapes,
    coverage,
    render,
    render_disc,
    sample_seed,
    synthetic_dataset,
    synthetic_images,
    synthetic_sample,
    to_shape_frame,
)


def test_coverage_is_the_box_filter_of_a_straight_edge():
    d = torch.tensor([-2.0, -0.5, -0.25, 0.0, 0.25, 0.5, 2.0])
    assert torch.allclose(coverage(d), torch.tensor([1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]))


def test_a_disc_covers_its_area_and_sits_where_it_is_told():
    disc = render_disc(40, 15.0, 22.0, 7.5)  # (40, 40)
    assert disc.shape == (40, 40) and disc.dtype == torch.float32
    assert abs(disc.sum().item() - math.pi * 7.5**2) < 0.5  # anti-aliasing keeps the area
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    centre = ((disc * xs).sum() / disc.sum(), (disc * ys).sum() / disc.sum())
    assert abs(centre[0] - 15.0) < 1e-3 and abs(centre[1] - 22.0) < 1e-3  # x is the column, y the row
    edge = disc[(disc > 0) & (disc < 1)]
    assert len(edge) > 20  # grey pixels along the edge


def test_to_shape_frame_inverts_the_placement():
    q = torch.randn(50, 2)
    centre, scale, angle = torch.tensor([9.0, 17.0]), torch.tensor(4.0), torch.tensor(1.1)
    rotation = torch.tensor([[math.cos(1.1), -math.sin(1.1)], [math.sin(1.1), math.cos(1.1)]])
    p = centre + scale * q @ rotation.T  # (50, 2): the placement
    assert torch.allclose(to_shape_frame(p, centre, scale, angle), q, atol=1e-5)


def test_samples_are_a_pure_function_of_seed_and_index():
    a, label_a = synthetic_sample(3, 41)
    synthetic_sample(3, 40)  # draws in between change nothing
    torch.manual_seed(123)
    b, label_b = synthetic_sample(3, 41)
    assert torch.equal(a, b) and label_a == label_b == 41 % len(SHAPES)
    assert not torch.equal(a, synthetic_sample(4, 41)[0])
    assert not torch.equal(a, synthetic_sample(3, 41 + len(SHAPES))[0])


def test_batched_images_equal_the_samples_one_at_a_time():
    images, labels = synthetic_images(2, 40, num_classes=8, start=100, batch_size=16)
    assert images.shape == (40, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    for i in (0, 17, 39):
        image, label = synthetic_sample(2, 100 + i, num_classes=8)
        assert torch.equal(images[i], image) and labels[i].item() == label


def test_classes_are_balanced_and_every_shape_is_drawn():
    images, labels = synthetic_images(0, 5 * len(SHAPES))
    assert torch.bincount(labels).tolist() == [5] * len(SHAPES)
    assert images.float().mean() < 80  # light on dark: mostly dark
    corners = images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]].float()  # (N, 4): the background
    assert corners.mean() < 40
    assert images.float().amax(dim=(1, 2, 3)).min() > 100  # every image draws a bright shape


def test_values_span_the_range_and_images_differ():
    images, _ = synthetic_images(1, 64)
    assert images.max() >= 200 and images.min() <= 10
    assert len({bytes(img.flatten().tolist()) for img in images}) == 64
    # anti-aliased: grey levels between background and foreground, not two values per image
    assert all(len(img.unique()) > 10 for img in images[:8])


def test_render_is_deterministic_and_independent_of_the_batch():
    labels = torch.arange(6)
    parameters = torch.rand(6, len(synthetic._PARAMETERS), generator=torch.Generator().manual_seed(0))
    whole = render(labels, parameters)
    assert whole.shape == (6, 1, 28, 28) and 0 <= whole.min() and whole.max() <= 1
    assert torch.equal(whole[2:3], render(labels[2:3], parameters[2:3]))


def test_dataset_fits_the_training_engine():
    data = synthetic_dataset(0, 32, num_classes=4)
    assert isinstance(data, ImageDataset) and data.num_classes == 4 and data.classes == list(SHAPES[:4])
    data.transform = eval_transform(data)
    x, y = data[5]
    assert x.shape == (1, 28, 28) and y == 1
    lazy = SyntheticShapes(0, 32, num_classes=4)
    image, label = lazy[5]
    assert len(lazy) == 32 and label == 1 and torch.equal((image * 255).round().to(torch.uint8), data.images[5])


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: synthetic_sample(0, 0, num_classes=1), ValueError),
        (lambda: synthetic_sample(0, 0, num_classes=len(SHAPES) + 1), ValueError),
        (lambda: synthetic_images(0, 0), ValueError),
        (lambda: sample_seed(-1, 0), ValueError),
        (lambda: sample_seed(0, 2**20), ValueError),
        (lambda: sample_seed(0.5, 1), TypeError),
        (lambda: SyntheticShapes(0, 10)[10], IndexError),
        (lambda: render(torch.tensor([0, 99]), torch.rand(2, len(synthetic._PARAMETERS))), ValueError),
        (lambda: render(torch.tensor([0]), torch.rand(1, 3)), ValueError),
        (lambda: synthetic.pixel_grid(0), ValueError),
    ],
)
def test_bad_input_gets_a_clear_error(call, error):
    with pytest.raises(error):
        call()


def test_seeds_pack_into_32_bits_without_collisions():
    assert sample_seed(0, 5) != sample_seed(1, 5) and sample_seed(4095, 2**20 - 1) < 2**32
