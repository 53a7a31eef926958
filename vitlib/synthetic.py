"""Synthetic labelled images, drawn from formulas: pre-training without a single real image (week 11).

Formula-driven supervised learning (Kataoka et al. 2020, "Pre-training without Natural
Images", ACCV, FractalDB) pre-trains a network on images that a formula draws, labelled by
which formula drew them; Nakashima et al. 2022 ("Can Vision Transformers Learn without
Natural Images?", AAAI) showed that a ViT pre-trained so fine-tunes nearly as well as one
pre-trained on ImageNet, and Kataoka et al. 2022 ("Replacing Labeled Real-image Datasets
with Auto-generated Contours", CVPR) that *contours* (object outlines) are what carries
over. Here the formulas are simple shapes: a class is a shape (disc, ring, square, cross,
star, arc, ...), and every image of it is placed, scaled, rotated, stroked, shaded and
noised at random. Images are 28 × 28 greyscale, light on dark as in Fashion-MNIST.

How an image is drawn (each step a week-11 exercise):

1. every pixel's centre is taken into the shape's own frame by the inverse of a random
   similarity transform (`to_shape_frame`): placement, scale and rotation;
2. the shape's signed distance (negative inside, in pixels) becomes an anti-aliased
   coverage, ``clamp(0.5 - d, 0, 1)``: a pixel half-covered by the edge is half grey
   (`coverage`, `render_disc`);
3. the random numbers of image ``index`` come from a generator seeded by ``(seed, index)``
   alone (`synthetic_sample`): any image can be redrawn on its own, a data set of any
   size needs no storage, and labels cycle through the classes (``index % K``), so every
   class has the same number of images.

Pixel convention: the pixel in row ``i``, column ``j`` has its centre at ``(x, y) = (j, i)``;
the centre of a 28 × 28 image is ``(13.5, 13.5)``. A shape point ``q`` is drawn at
``p = centre + scale · R(angle) q`` with ``R(a) = [[cos a, -sin a], [sin a, cos a]]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from vitlib.data import ImageDataset

__all__ = [
    "IMAGE_SIZE",
    "SHAPES",
    "SCALE_RANGE",
    "coverage",
    "pixel_grid",
    "render_disc",
    "to_shape_frame",
    "shape_distance",
    "sample_seed",
    "draw_parameters",
    "render",
    "synthetic_sample",
    "synthetic_images",
    "synthetic_dataset",
    "SyntheticShapes",
]

IMAGE_SIZE = 28

# The classes: a shape, filled ("fill") or drawn as a stroke of random width along its
# outline ("outline"). No two are the same under rotation (a plus turned by 45° is an X).
SHAPES: tuple[str, ...] = (
    "disc", "ring", "square", "frame", "triangle", "triangle outline", "hexagon", "star",
    "plus", "bar", "arc", "crescent", "ellipse", "corner", "tee", "two bars",
)

# The shapes' radius, as a share of the image side: drawn uniformly between the two. As large as the
# garments of Fashion-MNIST: smaller shapes, (0.16, 0.36), transferred far less (week 11).
SCALE_RANGE = (0.22, 0.42)

# Each image's random numbers, in this order (all uniform in [0, 1)): what each one sets.
_PARAMETERS = ("x", "y", "scale", "angle", "stroke", "foreground", "background", "noise",
               "stripes", "stripe_period", "stripe_angle", "stripe_phase", "gradient", "gradient_angle", "noise_seed")


# -----------------------------------------------------------------------------
# the pieces of the exercises
# -----------------------------------------------------------------------------


def coverage(distance: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage of a pixel from the signed distance ``d`` of its centre to the edge, in pixels.

    ``clamp(0.5 - d, 0, 1)``: 1 well inside (d ≤ -0.5), 0 well outside (d ≥ 0.5), and in
    between the share of a one-pixel-wide box filter that the shape covers when the edge is
    straight: a pixel whose centre sits on the edge is half covered.
    """
    return (0.5 - distance).clamp(0.0, 1.0)


def pixel_grid(size: int = IMAGE_SIZE, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel centres ``(x, y)``, each (size, size): x = column index, y = row index."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    coords = torch.arange(size, dtype=torch.float32, device=device)  # (S,)
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (S, S) each: y varies down the rows
    return x, y


def render_disc(size: int, cx: float, cy: float, radius: float) -> torch.Tensor:
    """An anti-aliased disc of ``radius`` pixels centred at ``(cx, cy)``: (size, size) float32 in [0, 1]."""
    x, y = pixel_grid(size)  # (S, S) each
    distance = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) - radius  # (S, S): negative inside
    return coverage(distance)  # (S, S)


def to_shape_frame(points: torch.Tensor, centre, scale, angle) -> torch.Tensor:
    """Pixel positions (..., 2) as (x, y) -> the same points in the shape's frame (..., 2).

    The inverse of ``p = centre + scale · R(angle) q``: ``q = R(angle)ᵀ (p - centre) / scale``
    (R's inverse is its transpose: a rotation by ``-angle``). ``centre`` is (..., 2) or a
    pair; ``scale`` and ``angle`` (radians) are numbers or tensors that broadcast against
    ``points[..., 0]``.
    """
    centre = torch.as_tensor(centre, dtype=points.dtype, device=points.device)  # (..., 2)
    scale = torch.as_tensor(scale, dtype=points.dtype, device=points.device)  # (...)
    angle = torch.as_tensor(angle, dtype=points.dtype, device=points.device)  # (...)
    d = points - centre  # (..., 2)
    cos, sin = torch.cos(angle), torch.sin(angle)  # (...)
    u = (cos * d[..., 0] + sin * d[..., 1]) / scale  # (...): Rᵀ's first row
    v = (-sin * d[..., 0] + cos * d[..., 1]) / scale  # (...): Rᵀ's second row
    return torch.stack([u, v], dim=-1)  # (..., 2)


def sample_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of the data set ``seed``: ``seed · 2²⁰ + index``.

    PyTorch's CPU generator keeps 32 bits of a seed, so the pair is packed into 32 bits: 12 for
    the data set (seed < 4,096) and 20 for the image (index < 1,048,576), different for every pair.
    """
    if not (isinstance(seed, int) and isinstance(index, int)) or isinstance(seed, bool) or isinstance(index, bool):
        raise TypeError(f"seed and index must be integers, got {seed!r} and {index!r}")
    if not 0 <= seed < 2**12 or not 0 <= index < 2**20:
        raise ValueError(f"need 0 <= seed < 4096 and 0 <= index < 1048576 (2**20), got seed={seed}, index={index}")
    return seed * 2**20 + index


def draw_parameters(generator: torch.Generator) -> torch.Tensor:
    """One image's random numbers: (P,) uniform in [0, 1), P = len(_PARAMETERS), drawn from ``generator``."""
    return torch.rand(len(_PARAMETERS), generator=generator)  # (P,)


# -----------------------------------------------------------------------------
# signed distances of the shapes, in the shape's frame (a shape is about 1 across its radius)
# -----------------------------------------------------------------------------


def _box(q: torch.Tensor, half_w: float, half_h: float) -> torch.Tensor:
    """Exact signed distance to an axis-aligned box: q (..., 2) -> (...)."""
    dx = q[..., 0].abs() - half_w  # (...)
    dy = q[..., 1].abs() - half_h  # (...)
    outside = torch.sqrt(dx.clamp_min(0) ** 2 + dy.clamp_min(0) ** 2)  # (...)
    inside = torch.maximum(dx, dy).clamp_max(0)  # (...)
    return outside + inside


def _regular_polygon(q: torch.Tensor, sides: int, radius: float = 1.0, turn: float = 0.0) -> torch.Tensor:
    """Signed distance to a regular polygon with circumradius ``radius`` (exact inside and along the edges)."""
    apothem = radius * math.cos(math.pi / sides)
    normals = [turn + (2 * k + 1) * math.pi / sides for k in range(sides)]
    planes = torch.stack([q[..., 0] * math.cos(a) + q[..., 1] * math.sin(a) for a in normals], dim=-1)  # (..., sides)
    return planes.max(dim=-1).values - apothem  # (...)


def _segment(q: torch.Tensor, a: tuple[float, float], b: tuple[float, float]) -> torch.Tensor:
    """Distance to the segment from a to b: q (..., 2) -> (...), never negative."""
    ax, ay = a
    bx, by = b
    px, py = q[..., 0] - ax, q[..., 1] - ay  # (...)
    ex, ey = bx - ax, by - ay
    t = ((px * ex + py * ey) / (ex * ex + ey * ey)).clamp(0, 1)  # (...)
    return torch.sqrt((px - t * ex) ** 2 + (py - t * ey) ** 2)


def _arc(q: torch.Tensor, half_angle: float) -> torch.Tensor:
    """Distance to the unit circle's arc from -half_angle to +half_angle (around +x)."""
    r = q.norm(dim=-1)  # (...)
    theta = torch.atan2(q[..., 1], q[..., 0])  # (...)
    on_arc = (r - 1).abs()  # (...)
    ends = torch.minimum(
        torch.sqrt((q[..., 0] - math.cos(half_angle)) ** 2 + (q[..., 1] - math.sin(half_angle)) ** 2),
        torch.sqrt((q[..., 0] - math.cos(half_angle)) ** 2 + (q[..., 1] + math.sin(half_angle)) ** 2),
    )  # (...)
    return torch.where(theta.abs() <= half_angle, on_arc, ends)


def shape_distance(name: str, q: torch.Tensor, stroke: torch.Tensor | float = 0.15) -> torch.Tensor:
    """Signed distance of shape ``name`` at points ``q`` (..., 2) of its frame -> (...), in shape units.

    Negative inside. ``stroke`` (a number, or a tensor that broadcasts against ``q[..., 0]``) is
    the half width of the outline shapes (ring, frame, ...), in shape units. Outlines are the
    absolute value of a filled shape's distance less the half width: ``|d| - stroke``.
    """
    disc = q.norm(dim=-1) - 1  # (...)
    if name == "disc":
        return disc
    if name == "ring":
        return disc.abs() - stroke
    if name == "square":
        return _box(q, 0.8, 0.8)
    if name == "frame":
        return _box(q, 0.8, 0.8).abs() - stroke
    if name == "triangle":
        return _regular_polygon(q, 3, 1.1)
    if name == "triangle outline":
        return _regular_polygon(q, 3, 1.1).abs() - stroke
    if name == "hexagon":
        return _regular_polygon(q, 6, 1.0)
    if name == "star":  # a six-pointed star: two triangles
        return torch.minimum(_regular_polygon(q, 3, 1.1), _regular_polygon(q, 3, 1.1, turn=math.pi / 3))
    if name == "plus":
        return torch.minimum(_box(q, 1.0, 0.3), _box(q, 0.3, 1.0))
    if name == "bar":
        return _segment(q, (-1.0, 0.0), (1.0, 0.0)) - stroke
    if name == "arc":
        return _arc(q, 2.0) - stroke
    if name == "crescent":
        shifted = torch.stack([q[..., 0] - 0.55, q[..., 1]], dim=-1)  # (..., 2)
        return torch.maximum(disc, -(shifted.norm(dim=-1) - 0.85))
    if name == "ellipse":  # axes 1 and 0.45 (an approximate distance, exact at the ends of the axes)
        stretched = torch.stack([q[..., 0], q[..., 1] / 0.45], dim=-1)  # (..., 2)
        return (stretched.norm(dim=-1) - 1) * 0.45
    if name == "corner":  # an L
        return torch.minimum(_box(q + torch.tensor([0.0, -0.7]), 0.9, 0.22), _box(q + torch.tensor([0.7, 0.0]), 0.22, 0.9))
    if name == "tee":
        return torch.minimum(_box(q + torch.tensor([0.0, 0.75]), 0.95, 0.22), _box(q, 0.22, 0.95))
    if name == "two bars":
        return torch.minimum(_box(q + torch.tensor([0.0, 0.45]), 0.95, 0.2), _box(q - torch.tensor([0.0, 0.45]), 0.95, 0.2))
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")


# -----------------------------------------------------------------------------
# drawing whole batches
# -----------------------------------------------------------------------------


def render(labels: torch.Tensor, parameters: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Draw images: labels (N,) in 0..K-1 (K ≤ len(SHAPES)), parameters (N, P) from `draw_parameters`.

    Returns float32 images (N, 1, size, size) in [0, 1]. Deterministic: the same labels and
    parameters give the same images (the pixel noise, too, comes from the parameters).
    """
    if labels.ndim != 1 or parameters.shape != (len(labels), len(_PARAMETERS)):
        raise ValueError(f"need labels (N,) and parameters (N, {len(_PARAMETERS)}), "
                         f"got {tuple(labels.shape)} and {tuple(parameters.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(SHAPES)):
        raise ValueError(f"labels must lie in 0..{len(SHAPES) - 1}, found {labels.min()}..{labels.max()}")
    N = len(labels)
    p = {name: parameters[:, k] for k, name in enumerate(_PARAMETERS)}  # each (N,)
    half = (size - 1) / 2
    low, high = SCALE_RANGE
    scale = size * (low + (high - low) * p["scale"])  # (N,): the radius, 6 to 12 pixels on 28 × 28: as large as the garments
    room = (half - scale).clamp_min(0) * 0.7  # (N,): how far the centre may move and keep most of the shape in
    centre = torch.stack([half + (2 * p["x"] - 1) * room, half + (2 * p["y"] - 1) * room], dim=-1)  # (N, 2)
    angle = 2 * math.pi * p["angle"]  # (N,)
    stroke = (0.6 + 1.2 * p["stroke"]) / scale  # (N,): half width 0.6 to 1.8 px, in shape units

    x, y = pixel_grid(size)  # (S, S) each
    points = torch.stack([x, y], dim=-1)  # (S, S, 2)
    q = to_shape_frame(points[None], centre[:, None, None], scale[:, None, None], angle[:, None, None])  # (N, S, S, 2)
    distance = torch.zeros(N, size, size)  # (N, S, S), in pixels
    for k in labels.unique().tolist():
        chosen = labels == k  # (N,)
        d = shape_distance(SHAPES[k], q[chosen], stroke[chosen, None, None])  # (n, S, S) shape units
        distance[chosen] = d * scale[chosen, None, None]  # shape units -> pixels (a similarity keeps distances)
    shape = coverage(distance)  # (N, S, S)

    # shading: a bright foreground, sometimes striped, on a dark background with a gentle gradient and noise
    foreground = 0.55 + 0.45 * p["foreground"]  # (N,)
    period = 2.5 + 4.0 * p["stripe_period"]  # (N,) pixels
    direction = math.pi * p["stripe_angle"]  # (N,)
    along = x[None] * torch.cos(direction)[:, None, None] + y[None] * torch.sin(direction)[:, None, None]  # (N, S, S)
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * (along / period[:, None, None] + p["stripe_phase"][:, None, None]))
    striped = (p["stripes"] < 0.3)[:, None, None]  # (N, 1, 1): a third of the images are textured
    fill = foreground[:, None, None] * torch.where(striped, 0.45 + 0.55 * wave, torch.ones_like(wave))  # (N, S, S)
    background = 0.15 * p["background"]  # (N,)
    tilt = 0.08 * p["gradient"]  # (N,)
    g_angle = 2 * math.pi * p["gradient_angle"]  # (N,)
    ramp = ((x[None] - half) * torch.cos(g_angle)[:, None, None] + (y[None] - half) * torch.sin(g_angle)[:, None, None]) / size
    back = (background[:, None, None] + tilt[:, None, None] * ramp).clamp_min(0)  # (N, S, S)
    image = back + (fill - back) * shape  # (N, S, S)
    noise = torch.empty(N, size, size)  # (N, S, S)
    for n in range(N):  # each image's own noise, from its own numbers: the image does not depend on the batch
        g = torch.Generator().manual_seed(int(p["noise_seed"][n].item() * 2**31))
        noise[n] = torch.randn(size, size, generator=g)
    image = image + 0.06 * p["noise"][:, None, None] * noise  # (N, S, S)
    return image.clamp(0, 1).unsqueeze(1)  # (N, 1, S, S)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)  # (..., S, S) in 0..255


def _check_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be an integer from 2 to {len(SHAPES)} (the shapes {SHAPES}), got {num_classes!r}")


def synthetic_sample(seed: int, index: int, num_classes: int = len(SHAPES)) -> tuple[torch.Tensor, int]:
    """Image ``index`` of the synthetic data set ``seed``: (uint8 image (1, 28, 28), label).

    The label is ``index % num_classes`` (balanced classes); the image's random numbers come
    from a fresh generator seeded with ``sample_seed(seed, index)``: the same pair always
    gives the same image, whatever was drawn before.
    """
    _check_classes(num_classes)
    generator = torch.Generator().manual_seed(sample_seed(seed, index))
    label = index % num_classes
    image = render(torch.tensor([label]), draw_parameters(generator)[None])  # (1, 1, 28, 28)
    return _to_uint8(image[0]), label


def synthetic_images(seed: int, count: int, num_classes: int = len(SHAPES), start: int = 0,
                     batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``start .. start+count-1`` of data set ``seed``: uint8 (count, 1, 28, 28) and int64 labels (count,).

    The same images as `synthetic_sample`, one at a time, but drawn a batch at a time.
    """
    _check_classes(num_classes)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    indices = range(start, start + count)
    labels = torch.tensor([i % num_classes for i in indices], dtype=torch.int64)  # (count,)
    parameters = torch.stack([draw_parameters(torch.Generator().manual_seed(sample_seed(seed, i))) for i in indices])  # (count, P)
    images = torch.cat([_to_uint8(render(labels[b:b + batch_size], parameters[b:b + batch_size]))
                        for b in range(0, count, batch_size)])  # (count, 1, 28, 28)
    return images, labels


def synthetic_dataset(seed: int, count: int, num_classes: int = len(SHAPES), start: int = 0) -> ImageDataset:
    """`synthetic_images` as an in-memory `vitlib.data.ImageDataset`, ready for `vitlib.train.train`."""
    images, labels = synthetic_images(seed, count, num_classes, start)
    return ImageDataset(images, labels, list(SHAPES[:num_classes]), name="synthetic-shapes", split="train",
                        source=f"vitlib.synthetic(seed={seed}, start={start}, count={count})")


class SyntheticShapes(Dataset):
    """A synthetic data set drawn on demand: item ``i`` is ``(float image (1, 28, 28) in [0, 1], label)``.

    Nothing is stored: each item is redrawn from ``(seed, i)`` (`synthetic_sample`). For
    training, `synthetic_dataset` (drawn once, in memory) is faster.
    """

    def __init__(self, seed: int, length: int, num_classes: int = len(SHAPES)) -> None:
        _check_classes(num_classes)
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        sample_seed(seed, length - 1)  # raises early for a bad seed or length
        self.seed, self.length, self.num_classes = seed, length, num_classes
        self.classes: Sequence[str] = SHAPES[:num_classes]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        image, label = synthetic_sample(self.seed, index % self.length, self.num_classes)
        return image.float() / 255, label  # (1, 28, 28)
