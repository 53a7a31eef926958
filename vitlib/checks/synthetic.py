"""Checks of week 11: drawing labelled images from formulas, against `vitlib.synthetic`.

- `check_render_disc`: a disc from its signed distance, anti-aliased: ``clamp(0.5 - d, 0, 1)``;
- `check_to_shape_frame`: pixel positions into a shape's frame, the inverse of a placement
  ``p = centre + scale · R(angle) q``;
- `check_synthetic_sample`: image ``index`` of data set ``seed``, drawn from a generator seeded
  by ``(seed, index)`` alone, its label ``index % K``.
"""

from __future__ import annotations

import math

import torch

from vitlib import checks
from vitlib.synthetic import SHAPES, coverage, pixel_grid, render_disc, synthetic_sample, to_shape_frame

__all__ = ["check_render_disc", "check_to_shape_frame", "check_synthetic_sample"]


# --- render_disc ----------------------------------------------------------------------------------


def _disc_mistakes(size: int, cx: float, cy: float, radius: float) -> dict[str, torch.Tensor]:
    x, y = pixel_grid(size)  # (S, S) each
    distance = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) - radius  # (S, S)
    return {
        "your disc is centred at the wrong place: x and y swapped? x is the column (the last axis), y the row":
            render_disc(size, cy, cx, radius),
        "off by half a pixel: the coverage is clamp(0.5 - d, 0, 1), so that a pixel whose centre is on the edge is half covered":
            (-distance).clamp(0, 1),
        "inside and outside swapped: the shape is light (1) on a dark (0) background, and d is negative inside":
            1 - coverage(distance),
        "pixel centres at j + 0.5: here the pixel in row i, column j has its centre at (x, y) = (j, i)":
            render_disc(size, cx - 0.5, cy - 0.5, radius),
        "the radius is taken as a diameter: d = |p - centre| - radius":
            render_disc(size, cx, cy, radius / 2),
        "the distance must be in pixels: d = sqrt((x - cx)² + (y - cy)²) - radius, not the squared distance":
            coverage((x - cx) ** 2 + (y - cy) ** 2 - radius**2),
    }


@checks.exercise("render_disc")
def check_render_disc(student_render_disc) -> None:
    """`render_disc(size, cx, cy, radius)`: an anti-aliased disc, (size, size) float32 in [0, 1]."""
    cases = [(28, 13.5, 13.5, 6.0), (20, 5.0, 12.0, 3.3), (16, 10.25, 4.6, 4.0)]
    for size, cx, cy, radius in cases:
        what = f"render_disc(size={size}, cx={cx}, cy={cy}, radius={radius})"
        got = checks.call_student("render_disc", student_render_disc, size, cx, cy, radius)
        got = checks.expect_tensor(what, got)
        expected = render_disc(size, cx, cy, radius)
        if tuple(got.shape) != (size, size):
            checks.expect_shape(what, got, (size, size),
                                "one value per pixel: (size, size), no channel or batch axis (squeeze it)")
        if ((got == 0) | (got == 1)).all():
            known = checks.diagnose(got.float(), _disc_mistakes(size, cx, cy, radius))
            checks.fail(f"{what}: not anti-aliased", "values between 0 and 1 along the edge, e.g. 0.5 where the edge "
                        "crosses a pixel's centre", "values that are only 0 and 1",
                        known or "not anti-aliased: a hard threshold (d < 0) makes jagged edges; "
                                 "use coverage = clamp(0.5 - d, 0, 1)")
        checks.expect_close(what, got, expected, tol=1e-4, mistakes=_disc_mistakes(size, cx, cy, radius),
                            hint="d = sqrt((x - cx)² + (y - cy)²) - radius with x the column and y the row index; "
                                 "then clamp(0.5 - d, 0, 1)")
    area = float(render_disc(28, 13.5, 13.5, 6.0).sum())
    checks.passed("render_disc", f"matches vitlib on {len(cases)} discs; coverage sums to the area, "
                                 f"{area:.1f} ≈ π·6² = {math.pi * 36:.1f}")


# --- to_shape_frame -------------------------------------------------------------------------------


def _frame_cases() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    points = checks.seeded(7, 2, seed=11) * 6 + 14  # (7, 2) pixel positions
    grid = torch.stack(pixel_grid(5), dim=-1)[None].expand(3, 5, 5, 2)  # (3, 5, 5, 2): a batch of small grids
    return [
        (points, torch.tensor([13.5, 12.0]), torch.tensor(6.0), torch.tensor(0.7)),
        (points, torch.tensor([10.0, 17.0]), torch.tensor(2.5), torch.tensor(-2.1)),
        (grid, torch.tensor([[2.0, 1.0], [3.0, 2.5], [0.5, 4.0]])[:, None, None],  # (3, 1, 1, 2)
         torch.tensor([1.5, 2.0, 0.8])[:, None, None], torch.tensor([0.3, 1.9, -1.0])[:, None, None]),  # (3, 1, 1)
    ]


@checks.exercise("to_shape_frame")
def check_to_shape_frame(student_to_shape_frame) -> None:
    """`to_shape_frame(points, centre, scale, angle)`: (..., 2) pixels -> (..., 2) in the shape's frame."""
    cases = _frame_cases()
    for points, centre, scale, angle in cases:
        what = f"to_shape_frame(points of shape {tuple(points.shape)}, ...)"
        got = checks.call_student("to_shape_frame", student_to_shape_frame, points.clone(), centre.clone(),
                                  scale.clone(), angle.clone())
        expected = to_shape_frame(points, centre, scale, angle)
        d = points - centre  # (..., 2)
        rotated_forward = torch.stack([torch.cos(angle) * d[..., 0] - torch.sin(angle) * d[..., 1],
                                       torch.sin(angle) * d[..., 0] + torch.cos(angle) * d[..., 1]], dim=-1)  # R d
        mistakes = {
            "rotated the wrong way: to undo a rotation by R(angle), rotate by R(-angle) = R(angle)ᵀ: "
            "u = (cos·dx + sin·dy) / scale, v = (-sin·dx + cos·dy) / scale": rotated_forward / scale[..., None],
            "multiplied by the scale: undoing the placement divides by it": expected * scale[..., None] ** 2,
            "the centre is not subtracted: first move the centre to the origin (p - centre), then rotate, then divide":
                to_shape_frame(points, torch.zeros_like(centre), scale, angle),
            "divided before subtracting the centre: q = Rᵀ (p - centre) / scale, not Rᵀ p / scale - centre":
                to_shape_frame(points / scale[..., None], centre, torch.ones_like(scale), angle),
            "u and v swapped: return torch.stack([u, v], dim=-1)": expected.flip(-1),
            "that is the forward placement, centre + scale · R(angle) q; the exercise asks for its inverse":
                centre + scale[..., None] * torch.stack([torch.cos(angle) * points[..., 0] - torch.sin(angle) * points[..., 1],
                                                         torch.sin(angle) * points[..., 0] + torch.cos(angle) * points[..., 1]], -1),
        }
        checks.expect_close(what, got, expected, tol=1e-4, mistakes=mistakes,
                            shape_hint="keep the points' shape (..., 2): stack u and v on the last axis",
                            hint="dx, dy = p - centre; u = (cos·dx + sin·dy) / scale, v = (-sin·dx + cos·dy) / scale")
    # the round trip: the placement of what it returns is the pixel itself
    points, centre, scale, angle = cases[0]
    q = to_shape_frame(points, centre, scale, angle)
    back = centre + scale * torch.stack([torch.cos(angle) * q[..., 0] - torch.sin(angle) * q[..., 1],
                                         torch.sin(angle) * q[..., 0] + torch.cos(angle) * q[..., 1]], dim=-1)
    assert checks.rel_error(back, points) < 1e-5
    checks.passed("to_shape_frame", f"matches vitlib on {len(cases)} placements, a batch of them included")


# --- synthetic_sample -----------------------------------------------------------------------------


def _as_sample(what: str, got) -> tuple[torch.Tensor, int]:
    if not isinstance(got, tuple) or len(got) != 2:
        checks.fail(what, "a pair (image, label)", f"{type(got).__name__}", "return image, label")
    image, label = got
    image = checks.expect_tensor(f"{what}: the image", image)
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if not isinstance(label, int) or isinstance(label, bool):
        checks.fail(f"{what}: the label", "an int", f"{type(label).__name__}", "the label is index % num_classes, an int")
    return image, label


@checks.exercise("synthetic_sample")
def check_synthetic_sample(student_sample) -> None:
    """`synthetic_sample(seed, index, num_classes)`: (uint8 image (1, 28, 28), label), a pure function of its inputs."""
    K = 6
    call = lambda seed, index: _as_sample(f"synthetic_sample({seed}, {index}, {K})",  # noqa: E731
                                          checks.call_student("synthetic_sample", student_sample, seed, index, K))
    image, label = call(0, 7)
    what = f"synthetic_sample(0, 7, {K})"
    if image.is_floating_point():
        checks.fail(f"{what}: the image's dtype", "uint8 values 0..255, as the real data sets store them",
                    f"{image.dtype}", "render gives floats in [0, 1]: (image * 255).round().to(torch.uint8)")
    checks.expect_shape(f"{what}: the image", image, (1, 28, 28),
                        "one image with its channel axis: render gives (1, 1, 28, 28), take [0]")
    if image.dtype != torch.uint8:
        checks.fail(f"{what}: the image's dtype", "torch.uint8", f"{image.dtype}", "convert with .to(torch.uint8)")
    labels = [call(0, i)[1] for i in range(2 * K + 1)]
    if labels != [i % K for i in range(2 * K + 1)]:
        checks.fail(f"labels of images 0..{2 * K} with {K} classes", f"{[i % K for i in range(2 * K + 1)]}", f"{labels}",
                    "labels cycle through the classes, index % num_classes: every class gets the same number of images")
    again, _ = call(0, 7)
    if not torch.equal(image, again):
        checks.fail(f"{what}, called twice", "the same image both times", "two different images",
                    "draw from a fresh generator seeded by (seed, index): "
                    "torch.Generator().manual_seed(sample_seed(seed, index)), not from the global random state")
    if torch.equal(call(0, 1)[0], call(0, 1 + K)[0]):
        checks.fail("images 1 and 7 (both of class 1)", "two different images of the same class",
                    "the same image for every index of a class",
                    "the same image for every index: seed the generator per index, with sample_seed(seed, index)")
    if torch.equal(call(1, 7)[0], image):
        checks.fail("synthetic_sample(1, 7) and synthetic_sample(0, 7)", "two different data sets", "the same image",
                    "the data set's seed is ignored: seed the generator with sample_seed(seed, index)")
    for seed, index in ((0, 7), (3, 100)):
        got, got_label = call(seed, index)
        expected, expected_label = synthetic_sample(seed, index, K)
        if not torch.equal(got, expected):
            close = (got.float() - expected.float()).abs().max().item() <= 1
            checks.fail(f"synthetic_sample({seed}, {index}, {K})", checks._short(expected), checks._short(got),
                        "rounding: (image * 255).round() before .to(torch.uint8) (a bare .to() truncates)" if close
                        else "a different image from vitlib's: seed the generator with sample_seed(seed, index), "
                             "draw_parameters(generator), then render(torch.tensor([label]), parameters[None])")
    checks.passed("synthetic_sample", f"deterministic per (seed, index), labels index % K, matches vitlib "
                                      f"({len(SHAPES)} shapes available)")
