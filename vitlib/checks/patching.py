"""Checks of week 01: images to patches and eq. 1 (Dosovitskiy et al. 2020, Section 3.1).

    z_0 = [x_class; x_p^1 E; x_p^2 E; ...; x_p^N E] + E_pos      (1)

Each `check_<name>` runs the student's code on seeded inputs through `checks.call_student`,
compares it with vitlib's reference, and names the common mistakes (channel-first
flattening, column-major patch order, class token at the end, positions not added, ...).

`num_patches` and `add_class_token_and_positions` are not separate functions in vitlib
(the model does both inline), so their references live here, public, for the fallbacks of
the notebook: `checks.mine_or_reference("num_patches", num_patches, checks.patching.num_patches)`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn

from vitlib import checks
from vitlib.patching import PatchEmbedding, patchify

__all__ = [
    "num_patches",
    "add_class_token_and_positions",
    "check_patchify",
    "check_num_patches",
    "check_patch_embedding",
    "check_add_class_token_and_positions",
]


# --- references that vitlib does not have as functions --------------------------------------------


def num_patches(image_size: int, patch_size: int) -> int:
    """N = HW / P² for a square image of side `image_size`; ValueError if P does not divide it."""
    if image_size % patch_size:
        raise ValueError(f"patch size {patch_size} does not divide the image size {image_size}")
    return (image_size // patch_size) ** 2


def add_class_token_and_positions(x: torch.Tensor, class_token: torch.Tensor, pos_embedding: torch.Tensor) -> torch.Tensor:
    """Eq. 1 from the patch embeddings on: x (B, N, D) -> z_0 = [x_class; x] + E_pos, (B, N+1, D)."""
    x_class = class_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
    return torch.cat([x_class, x], dim=1) + pos_embedding  # (B, N+1, D)


# --- patchify ------------------------------------------------------------------------------------

_ORDER_HINT = (
    "each patch must be flattened as (p1 p2 c): row inside the patch, then column, then channel, "
    "i.e. the pixel's C values side by side. The paper writes images as H×W×C (channels last), and "
    "the weight conversion Linear <-> Conv2d of this week relies on exactly this order"
)


def _patchify_mistakes(images: torch.Tensor, p: int) -> dict[str, torch.Tensor]:
    b, c, h, w = images.shape
    return {
        "channel-first flattening (c p1 p2): " + _ORDER_HINT:
            rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p),
        "the patches come out column by column: the sequence must be in raster order, row by row "
        "(patch index = row · w + column), so write (h w), not (w h)":
            rearrange(images, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=p, p2=p),
        "each patch is transposed (p2 p1 c): flatten a patch row by row, (p1 p2 c), "
        "with p1 the row inside the patch":
            rearrange(images, "b c (h p1) (w p2) -> b (h w) (p2 p1 c)", p1=p, p2=p),
        "the whole image is transposed (H and W swapped): split H into (h p1) and W into (w p2), "
        "and keep that order on the right":
            rearrange(images, "b c (h p1) (w p2) -> b (w h) (p2 p1 c)", p1=p, p2=p),
        "a plain reshape/view does not cut P×P patches, it cuts the memory into runs of P²·C "
        "numbers (pieces of pixel rows): use rearrange with (h p1) (w p2)":
            images.reshape(b, -1, p * p * c),
        "the patches are not flattened: the last axis must hold the P²·C numbers of a patch, "
        "'... -> b (h w) (p1 p2 c)'":
            rearrange(images, "b c (h p1) (w p2) -> b (h w) p1 p2 c", p1=p, p2=p),
        "the patch grid is not flattened into one sequence axis: write (h w) on the right":
            rearrange(images, "b c (h p1) (w p2) -> b h w (p1 p2 c)", p1=p, p2=p),
    }


@checks.exercise("patchify")
def check_patchify(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """patchify(images, patch_size): (B, C, H, W) -> (B, N, P²·C), raster order, (p1 p2 c) per patch."""
    cases = [
        (checks.seeded(2, 1, 8, 8, seed=1), 4),  # grey, 2×2 patches
        (checks.seeded(2, 3, 8, 8, seed=2), 4),  # colour
        (checks.seeded(1, 3, 8, 12, seed=3), 4),  # a non-square grid: 2 rows of 3 patches
        (checks.seeded(3, 1, 28, 28, seed=4), 7),  # Fashion-MNIST size
        (checks.seeded(1, 2, 6, 4, seed=5), 2),  # 3 rows of 2 patches, 2 channels
    ]
    for images, p in cases:
        keep = images.clone()
        got = checks.call_student("patchify", fn, images, p)
        if not torch.equal(images, keep):
            checks.fail("patchify: the input images were modified", "the images left as they were",
                        "different values after the call", "don't write into the input; return a new tensor")
        b, c, h, w = images.shape
        expected = patchify(images, p)
        where = ("patch n = (row r, column s) of the patch grid, n = r·(W/P) + s, holds the pixels "
                 "images[b, :, r·P:(r+1)·P, s·P:(s+1)·P], flattened in the order (p1 p2 c)")
        moved = (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype
                 and torch.equal(got.detach().flatten().sort().values, expected.flatten().sort().values))
        checks.expect_close(
            f"patchify(images of shape ({b}, {c}, {h}, {w}), patch_size={p})",
            got,
            expected,
            mistakes=_patchify_mistakes(images, p),
            hint=("every pixel is there, some in the wrong place: " if moved else
                  "some values are not the image's pixels (patchify only moves them): ") + where,
            shape_hint=f"the output shape is (B, N, P²·C) with N = HW/P² = {(h // p) * (w // p)} here",
        )
    checks.passed("patchify", "matches vitlib on 5 seeded batches (C = 1, 2, 3; square and non-square grids)")


# --- num_patches ---------------------------------------------------------------------------------


@checks.exercise("num_patches")
def check_num_patches(fn: Callable[[int, int], int]) -> None:
    """num_patches(image_size, patch_size) -> N = HW/P² as an int; ValueError when P does not divide."""
    cases = [(28, 4), (28, 7), (28, 14), (28, 28), (224, 16), (224, 14), (384, 16), (32, 4)]
    for size, p in cases:
        got = checks.call_student("num_patches", fn, size, p)
        want = num_patches(size, p)
        what = f"num_patches({size}, {p})"
        if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.dtype.is_floating_point:
            got = got.item()
        if isinstance(got, numbers.Integral) and not isinstance(got, bool):
            got = int(got)
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            checks.fail(what, f"the int {want}", f"{type(got).__name__} {got!r}", "return a Python int")
        if got != want:
            side = size // p
            known = {
                side: "that is the number of patches along ONE side (H/P); an H×W image has (H/P)·(W/P) of them",
                size * size // p: "divide by P², the area of a patch, not by P",
                size // (p * p): "N = HW/P²: the image area H·W divided by the patch area P²",
                size * size: "that is the number of pixels, HW; divide by the patch area P²",
                size * size // (p * p) * 3: "N does not depend on the channels; P²·C is the size of one flattened patch",
            }
            checks.fail(what, f"N = {size}·{size}/{p}² = {want}", repr(got),
                        known.get(got, "N = HW/P²: the image area divided by the patch area"))
        if not isinstance(got, int):
            checks.fail(what, f"the int {want}", f"{type(got).__name__} {got!r}",
                        "a count is an int: use integer division //, not / (which gives a float)")
    for size, p in [(30, 4), (224, 33)]:
        try:
            got = fn(size, p)
        except ValueError:
            continue
        except NotImplementedError:
            raise
        except Exception as error:
            checks.fail(f"num_patches({size}, {p})", "ValueError (the patches do not fit)",
                        f"{type(error).__name__}: {error}", "raise ValueError(...) when image_size % patch_size != 0")
        checks.fail(f"num_patches({size}, {p})", "ValueError: the image cannot be cut into whole patches",
                    f"returned {got!r}", f"{size} is not a multiple of {p}: raise ValueError when image_size % patch_size != 0 "
                    "(vitlib.ViTConfig refuses such a model too)")
    checks.passed("num_patches", "right for 8 sizes, and ValueError when P does not divide the size")


# --- PatchEmbedding ------------------------------------------------------------------------------


def _reference_embedding(p: int, c: int, d: int, seed: int) -> PatchEmbedding:
    ref = PatchEmbedding(p, c, d)
    with torch.no_grad():
        ref.proj.weight.copy_(checks.seeded(d, p * p * c, seed=seed) / (p * p * c) ** 0.5)
        ref.proj.bias.copy_(checks.seeded(d, seed=seed + 1) * 0.1)
    return ref


@checks.exercise("PatchEmbedding")
def check_patch_embedding(cls: type[nn.Module]) -> None:
    """PatchEmbedding(patch_size, in_channels, hidden_dim): a Linear `proj` (P²·C -> D) on patchify's output."""
    cases = [(4, 1, 16, (2, 1, 8, 8)), (4, 3, 8, (2, 3, 8, 12)), (7, 1, 12, (3, 1, 28, 28))]
    for i, (p, c, d, shape) in enumerate(cases):
        what = f"PatchEmbedding(patch_size={p}, in_channels={c}, hidden_dim={d})"
        student = checks.call_student("PatchEmbedding", cls, p, c, d)
        if not isinstance(student, nn.Module):
            checks.fail(what, "an nn.Module", type(student).__name__, "subclass nn.Module and call super().__init__() first")
        proj = getattr(student, "proj", None)
        if proj is None:
            checks.fail(f"{what}: no attribute proj", "self.proj = nn.Linear(P*P*C, D)", "no self.proj",
                        "store the projection E of eq. 1 as self.proj (the name the check and vitlib use)")
        if isinstance(proj, nn.Conv2d):
            checks.fail(f"{what}: proj is a Conv2d", "proj an nn.Linear(P*P*C, D)", "an nn.Conv2d",
                        "a Conv2d does compute the same thing (see the demo below), but this exercise builds the "
                        "Linear E of eq. 1 on patchify's output")
        if not isinstance(proj, nn.Linear):
            checks.fail(f"{what}: proj is not a Linear", "an nn.Linear(P*P*C, D)", type(proj).__name__,
                        "E of eq. 1 is one nn.Linear layer")
        if proj.in_features != p * p * c or proj.out_features != d:
            in_hint = {
                p * p: "in_features must count the channels too: a flattened patch holds P²·C numbers",
                p: "in_features is P²·C (the whole flattened patch), not P",
                c: "in_features is P²·C (the whole flattened patch), not C",
                p * c: "in_features is P·P·C: the patch has P² pixels of C values",
            }.get(proj.in_features, "in_features = P*P*C, out_features = D (hidden_dim)")
            if proj.in_features == p * p * c:
                in_hint = "out_features must be D = hidden_dim"
            checks.fail(f"{what}: proj has the wrong size",
                        f"nn.Linear(in_features={p * p * c}, out_features={d})",
                        f"nn.Linear(in_features={proj.in_features}, out_features={proj.out_features})", in_hint)
        ref = _reference_embedding(p, c, d, seed=20 + 2 * i)
        checks.load_reference_weights(what, student, ref)
        images = checks.seeded(*shape, seed=30 + i)
        got = checks.call_student("PatchEmbedding", student, images)
        want = ref(images)
        weight, bias = ref.proj.weight.detach(), ref.proj.bias.detach()
        mistakes = {
            "you return the patches themselves: apply the projection, self.proj(patches)": patchify(images, p),
            "the patches are flattened channel-first (c p1 p2): use patchify's (p1 p2 c) order, the order the "
            "weights (and the Conv2d conversion) assume":
                rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p) @ weight.T + bias,
            "the patches are taken column by column (w h): keep patchify's raster order (h w)":
                rearrange(images, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=p, p2=p) @ weight.T + bias,
            "the output is (B, D, N): keep the tokens on axis 1, (B, N, D)": want.detach().transpose(1, 2),
        }
        checks.expect_close(
            f"{what} on images of shape {tuple(shape)}", got, want.detach(), tol=1e-5, mistakes=mistakes,
            hint="forward(images) = self.proj(patchify(images, self.patch_size))",
            shape_hint=f"the output shape is (B, N, D) = ({shape[0]}, {(shape[2] // p) * (shape[3] // p)}, {d})",
        )
        if not got.requires_grad:
            checks.fail(f"{what}: no gradient", "an output that depends on proj's weights",
                        "an output cut from the graph", "no torch.no_grad(), .detach() or .data in forward: E is learned")
        g = checks.seeded(*want.shape, seed=40 + i)
        (got * g).sum().backward()
        (want * g).sum().backward()
        checks.expect_close(f"{what}: gradient of proj.weight", student.proj.weight.grad, ref.proj.weight.grad,
                            tol=1e-4, hint="the output must be computed from self.proj, once per patch")
    checks.passed("PatchEmbedding", "matches vitlib.PatchEmbedding (values and gradients) for 3 sizes")


# --- class token and position embeddings --------------------------------------------------------


@checks.exercise("add_class_token_and_positions")
def check_add_class_token_and_positions(fn: Callable[..., torch.Tensor]) -> None:
    """add_class_token_and_positions(x, class_token, pos_embedding) -> [x_class; x] + E_pos, (B, N+1, D)."""
    cases = [(1, 4, 6), (3, 6, 8), (2, 16, 4)]
    for i, (b, n, d) in enumerate(cases):
        x = checks.seeded(b, n, d, seed=50 + i).requires_grad_()
        class_token = checks.seeded(1, 1, d, seed=60 + i).requires_grad_()
        pos = checks.seeded(1, n + 1, d, seed=70 + i).requires_grad_()
        keep = [t.detach().clone() for t in (x, class_token, pos)]
        what = f"add_class_token_and_positions(x of shape ({b}, {n}, {d}), class_token (1, 1, {d}), pos_embedding (1, {n + 1}, {d}))"
        try:
            got = checks.call_student("add_class_token_and_positions", fn, x, class_token, pos)
        except checks.CheckFailed as error:
            cause, message = error.__cause__, str(error.__cause__)
            hint = None
            if b > 1 and i > 0 and "Sizes of tensors must match" in message:  # torch.cat of (1, 1, D) with (B, N, D)
                hint = (f"it worked for a batch of 1 but not for B = {b}: the class token is (1, 1, D), "
                        "expand it to the batch first, class_token.expand(B, -1, -1), then torch.cat along dim=1")
            elif f"tensor a ({n})" in message and f"tensor b ({n + 1})" in message:  # N tokens + N+1 positions
                hint = ("N tokens met the N+1 rows of E_pos: prepend the class token first (torch.cat([x_class, x], dim=1) "
                        "gives N+1 tokens), then add E_pos, one row for the class token and one per patch")
            if hint is None:
                raise
            try:
                checks.fail(what, f"z_0 of shape ({b}, {n + 1}, {d})", f"an error ({cause})", hint)
            except checks.CheckFailed as failure:
                raise failure from cause  # the student's lines stay attached
        for t, before in zip((x, class_token, pos), keep):
            if not torch.equal(t.detach(), before):
                checks.fail(f"{what}: an input was modified", "the inputs left as they were",
                            "different values after the call", "no in-place ops (+=, .add_()) on the inputs: return a new tensor")
        with torch.no_grad():
            x_class = class_token.expand(b, -1, -1)
            want = torch.cat([x_class, x], dim=1) + pos
            mistakes = {
                "the class token is at the end: eq. 1 PREPENDS it, z_0 = [x_class; x_p^1 E; ...], "
                "so torch.cat([x_class, x], dim=1)": torch.cat([x, x_class], dim=1) + pos,
                "the position embeddings are not added: z_0 = [x_class; x] + E_pos": torch.cat([x_class, x], dim=1),
                "the class token got no position embedding: prepend it first, then add all N+1 rows of E_pos "
                "(row 0 is the class token's)": torch.cat([x_class, x + pos[:, 1:]], dim=1),
                "the positions were added before prepending the class token, shifted by one: prepend first, then add "
                "E_pos to all N+1 tokens": torch.cat([x_class, x + pos[:, :n]], dim=1),
                "the class token is at the end and without a position: torch.cat([x_class, x], dim=1) + E_pos":
                    torch.cat([x + pos[:, :n], x_class], dim=1),
                "the class token was added to the patches instead of prepended as an extra token: "
                "torch.cat([x_class, x], dim=1) + E_pos": x + x_class + pos[:, 1:],
            }
        checks.expect_close(
            what, got, want, mistakes=mistakes,
            hint="z_0[:, 0] = x_class + E_pos[0] and z_0[:, i] = x[:, i-1] + E_pos[i] for i = 1..N",
            shape_hint=f"z_0 has N+1 tokens: shape (B, N+1, D) = ({b}, {n + 1}, {d})",
        )
        if not got.requires_grad:
            checks.fail(f"{what}: no gradient", "z_0 that depends on the class token and E_pos",
                        "a result cut from the graph", "no .detach(), .data or torch.no_grad(): x_class and E_pos are learned")
        g = checks.seeded(b, n + 1, d, seed=80 + i)
        grads = torch.autograd.grad((got * g).sum(), (class_token, pos), allow_unused=True)
        for name, grad, expected in (("class_token", grads[0], g[:, :1].sum(0, keepdim=True)),
                                     ("pos_embedding", grads[1], g.sum(0, keepdim=True))):
            if grad is None:
                checks.fail(f"{what}: no gradient for {name}", f"a gradient for {name}", "None",
                            f"use {name} itself in the result (no .detach(), .data or copies through numpy)")
            checks.expect_close(f"{what}: gradient of {name}", grad, expected,
                                hint=f"{name} must enter the result once per image of the batch")
    checks.passed("add_class_token_and_positions", "matches eq. 1 on 3 seeded batches (B = 1, 3, 2), gradients included")
