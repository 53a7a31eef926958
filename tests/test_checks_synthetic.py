"""Week 11 checks pass on right code and fail, with expected / got / hint, on the classic mistakes."""

from __future__ import annotations

import math

import pytest
import torch
from check_helpers import expect_failure as _fails
from check_helpers import stub as _stub

from vitlib import synthetic
from vitlib.checks.synthetic import check_render_disc, check_synthetic_sample, check_to_shape_frame
from vitlib.synthetic import coverage, draw_parameters, pixel_grid, render, render_disc, sample_seed, to_shape_frame

# --- render_disc ----------------------------------------------------------------------------------


def test_render_disc_passes_on_the_reference(capsys):
    check_render_disc(render_disc)
    assert capsys.readouterr().out.startswith("✓ render_disc: matches vitlib on 3 discs")


def _distance(size, cx, cy, radius):
    x, y = pixel_grid(size)
    return torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) - radius


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda s, cx, cy, r: render_disc(s, cy, cx, r), r"x and y swapped"),
        (lambda s, cx, cy, r: (_distance(s, cx, cy, r) < 0).float(), r"not anti-aliased: values are only 0 and 1|not anti-aliased"),
        (lambda s, cx, cy, r: (-_distance(s, cx, cy, r)).clamp(0, 1), r"off by half a pixel"),
        (lambda s, cx, cy, r: 1 - render_disc(s, cx, cy, r), r"light \(1\) on a dark"),
        (lambda s, cx, cy, r: render_disc(s, cx - 0.5, cy - 0.5, r), r"j \+ 0.5"),
        (lambda s, cx, cy, r: render_disc(s, cx, cy, r / 2), r"diameter"),
        (lambda s, cx, cy, r: coverage((pixel_grid(s)[0] - cx) ** 2 + (pixel_grid(s)[1] - cy) ** 2 - r**2), r"squared distance"),
        (lambda s, cx, cy, r: render_disc(s, cx, cy, r)[None], r"no channel or batch axis"),
        (lambda s, cx, cy, r: render_disc(s, cx, cy, r + 1), r"clamp\(0.5 - d, 0, 1\)"),
        (lambda s, cx, cy, r: render_disc(s, cx, cy, r).tolist(), r"a torch.Tensor"),
    ],
)
def test_render_disc_mistakes(wrong, hint):
    _fails(check_render_disc, wrong, hint)


def test_render_disc_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_render_disc(_stub)


# --- to_shape_frame -------------------------------------------------------------------------------


def test_to_shape_frame_passes_on_the_reference(capsys):
    check_to_shape_frame(to_shape_frame)
    assert capsys.readouterr().out == "✓ to_shape_frame: matches vitlib on 3 placements, a batch of them included\n"


def _frame(*, sign=1.0, scale_power=-1, centred=True, divide_first=False, swap=False, forward=False):
    def frame(points, centre, scale, angle):
        if forward:
            c, s = torch.cos(angle), torch.sin(angle)
            return centre + scale[..., None] * torch.stack([c * points[..., 0] - s * points[..., 1],
                                                            s * points[..., 0] + c * points[..., 1]], -1)
        p = points / scale[..., None] if divide_first else points
        d = p - centre if centred else p
        c, s = torch.cos(angle), torch.sin(angle) * sign
        u = c * d[..., 0] + s * d[..., 1]
        v = -s * d[..., 0] + c * d[..., 1]
        if not divide_first:
            u, v = u * scale**scale_power, v * scale**scale_power
        return torch.stack([v, u] if swap else [u, v], dim=-1)

    return frame


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_frame(sign=-1.0), r"rotated the wrong way"),
        (_frame(scale_power=1), r"multiplied by the scale"),
        (_frame(centred=False), r"centre is not subtracted"),
        (_frame(divide_first=True), r"divided before subtracting"),
        (_frame(swap=True), r"u and v swapped"),
        (_frame(forward=True), r"forward placement"),
        (_frame(scale_power=0), r"u = \(cos·dx \+ sin·dy\) / scale"),
        (lambda p, c, s, a: to_shape_frame(p, c, s, a)[..., 0], r"keep the points' shape"),
        (lambda p, c, s, a: to_shape_frame(p, c, s, a).double(), r"wrong dtype"),
    ],
)
def test_to_shape_frame_mistakes(wrong, hint):
    _fails(check_to_shape_frame, wrong, hint)


def test_to_shape_frame_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_to_shape_frame(_stub)


# --- synthetic_sample -----------------------------------------------------------------------------


def test_synthetic_sample_passes_on_the_reference(capsys):
    check_synthetic_sample(synthetic.synthetic_sample)
    assert capsys.readouterr().out.startswith("✓ synthetic_sample: deterministic per (seed, index)")


def _sample(*, generator_for=lambda seed, index: torch.Generator().manual_seed(sample_seed(seed, index)),
            label_for=lambda index, k: index % k, to_uint8=lambda x: (x * 255).round().to(torch.uint8), squeeze=False):
    def sample(seed, index, num_classes):
        label = label_for(index, num_classes)
        parameters = draw_parameters(generator_for(seed, index))
        image = to_uint8(render(torch.tensor([label]), parameters[None]))
        return (image[0, 0] if squeeze else image[0]), label

    return sample


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_sample(generator_for=lambda seed, index: None), r"fresh generator seeded by \(seed, index\)"),
        (_sample(generator_for=lambda seed, index: torch.Generator().manual_seed(seed)), r"the same image for every index"),
        (_sample(generator_for=lambda seed, index: torch.Generator().manual_seed(index)), r"seed is ignored"),
        (_sample(generator_for=lambda seed, index: torch.Generator().manual_seed(seed * 1000 + index + 1)),
         r"a different image from vitlib's"),
        (_sample(label_for=lambda index, k: index // k if index // k < k else k - 1), r"index % num_classes"),
        (lambda seed, index, k: (synthetic.synthetic_sample(seed, index, k)[0], float(index % k)), r"an int"),
        (_sample(to_uint8=lambda x: x), r"\(image \* 255\).round\(\).to\(torch.uint8\)"),
        (_sample(to_uint8=lambda x: (x * 255).to(torch.uint8)), r"rounding"),
        (_sample(squeeze=True), r"channel axis"),
        (_sample(to_uint8=lambda x: (x * 255).round().to(torch.int32)), r"torch.uint8"),
        (lambda seed, index, k: synthetic.synthetic_sample(seed, index, k)[0], r"a pair \(image, label\)"),
    ],
)
def test_synthetic_sample_mistakes(wrong, hint):
    _fails(check_synthetic_sample, wrong, hint)


def test_synthetic_sample_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_synthetic_sample(_stub)


def test_the_disc_check_reports_its_area(capsys):
    check_render_disc(render_disc)
    assert f"π·6² = {math.pi * 36:.1f}" in capsys.readouterr().out
