"""Checks of week 03: the Transformer encoder (Section 3.1, eqs. 2-3; Appendix A, eq. 8).

    z'_ℓ = MSA(LN(z_{ℓ-1})) + z_{ℓ-1}      (2)
    z_ℓ  = MLP(LN(z'_ℓ)) + z'_ℓ            (3)

Module exercises are instantiated with given sizes; vitlib's reference weights are copied
in (`checks.load_reference_weights`: the parameter names must be vitlib's), and both run
in float64 on seeded inputs, so a correct implementation matches to about 1e-15 whatever
the order of its operations. Known mistakes (heads split in the wrong order, no output
projection, ReLU, post-norm, a shared LayerNorm, a missing residual, ...) are computed
from the same weights, and a result equal to one of them names it.

The reference modules are built under `torch.random.fork_rng`, so running a check does not
change the notebook's random numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vitlib import checks
from vitlib.attention import MultiHeadSelfAttention as RefMSA
from vitlib.encoder import MLP as RefMLP
from vitlib.encoder import EncoderBlock as RefBlock

__all__ = ["check_gelu", "check_multi_head_self_attention", "check_mlp", "check_encoder_block"]

F64 = torch.float64


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


# --- exercise 1: gelu ----------------------------------------------------------------------------


@checks.exercise("gelu")
def check_gelu(gelu) -> None:
    """gelu(x) must be the exact form x·Φ(x) = 0.5·x·(1 + erf(x/√2)), as nn.GELU()."""
    name = "gelu"
    inputs = [torch.linspace(-5, 5, 201, dtype=F64), 2 * checks.seeded(3, 4, 16, seed=100, dtype=F64)]
    for x in inputs:
        got = checks.call_student(name, gelu, x.clone())
        checks.expect_close(
            f"{name}(x) for x of shape {tuple(x.shape)}",
            got,
            F.gelu(x),
            tol=1e-6,
            mistakes={
                "that is the tanh approximation: close (at most about 5e-4 off), but nn.GELU(), torchvision, timm and vitlib use the exact form 0.5·x·(1 + erf(x/√2))": _gelu_tanh(x),
                "that is x·sigmoid(1.702·x), a cruder approximation: use the exact form 0.5·x·(1 + erf(x/√2))": x * torch.sigmoid(1.702 * x),
                "that is ReLU: GELU weighs x by Φ(x), the standard normal CDF, instead of cutting it at 0": F.relu(x),
                "missing the 0.5: Φ(x) = 0.5·(1 + erf(x/√2))": x * (1 + torch.erf(x / math.sqrt(2))),
                "divide by √2 inside erf: Φ(x) = 0.5·(1 + erf(x/√2))": 0.5 * x * (1 + torch.erf(x)),
                "multiply by x: GELU(x) = x·Φ(x), not Φ(x) alone": 0.5 * (1 + torch.erf(x / math.sqrt(2))),
            },
            hint="GELU(x) = x·Φ(x) = 0.5·x·(1 + erf(x/√2)), with torch.erf",
        )
    xg = checks.seeded(20, seed=101, dtype=F64).requires_grad_()
    out = checks.call_student(name, gelu, xg)
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        checks.fail(f"{name}: no gradient", "a result that autograd can differentiate", "a result detached from x", "use torch operations on x (torch.erf, no math.erf, no .numpy())")
    (grad,) = torch.autograd.grad(out.sum(), xg)
    x_ref = xg.detach().clone().requires_grad_()
    (grad_ref,) = torch.autograd.grad(F.gelu(x_ref).sum(), x_ref)
    checks.expect_close(f"{name}: gradient", grad, grad_ref, tol=1e-6, hint="build the result from x with torch operations only")
    got = checks.call_student(name, gelu, checks.seeded(2, 5, seed=102))
    checks.expect_shape(f"{name} on float32 inputs", got, (2, 5), "return a tensor of the input's shape")
    if got.dtype != torch.float32:
        checks.fail(f"{name} on float32 inputs: wrong dtype", "dtype torch.float32 (as the input)", f"dtype {got.dtype}", "keep the input's dtype (no .double())")
    checks.passed(name, "matches nn.GELU() (exact erf form) and its gradient on 2 seeded inputs")


# --- helpers for the module exercises ------------------------------------------------------------


def _reference(factory, seed: int, perturb_norms: bool = False) -> nn.Module:
    """A float64 reference module with seeded weights, built without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory().double().eval()
        if perturb_norms:  # LayerNorms start at weight 1, bias 0: make norm1 and norm2 differ
            with torch.no_grad():
                for sub in module.modules():
                    if isinstance(sub, nn.LayerNorm):
                        sub.weight.add_(0.2 * torch.randn_like(sub.weight))
                        sub.bias.add_(0.2 * torch.randn_like(sub.bias))
    return module


def _instantiate(name: str, what: str, cls, *args) -> nn.Module:
    """The student's module with the given sizes, in float64 and eval mode."""
    with torch.random.fork_rng(devices=[]):
        module = checks.call_student(name, cls, *args)
    if not isinstance(module, nn.Module):
        checks.fail(f"{what}: not a module", "an nn.Module", type(module).__name__, "subclass nn.Module and call super().__init__() first")
    return module.double().eval()


def _expect_linear(what: str, module: nn.Module, attr: str, in_features: int, out_features: int, hint: str) -> None:
    layer = getattr(module, attr, None)
    if not isinstance(layer, nn.Linear):
        checks.fail(
            f"{what}: no layer `{attr}`",
            f"self.{attr} = nn.Linear({in_features}, {out_features})",
            "no attribute " + attr if layer is None else f"self.{attr} is a {type(layer).__name__}",
            hint,
        )
    if (layer.in_features, layer.out_features) != (in_features, out_features):
        checks.fail(
            f"{what}: `{attr}` has the wrong size",
            f"nn.Linear({in_features}, {out_features})",
            f"nn.Linear({layer.in_features}, {layer.out_features})",
            hint,
        )


def _expect_close_lazy(what: str, got, expected: torch.Tensor, mistakes, **kwargs) -> None:
    """checks.expect_close, computing the known mistakes (a callable giving the dict) only when `got` is wrong."""
    tol = kwargs.get("tol", 1e-5)
    if (
        isinstance(got, torch.Tensor)
        and got.shape == expected.shape
        and got.dtype == expected.dtype
        and bool(torch.isfinite(got).all())
        and checks.rel_error(got, expected) <= tol
    ):
        return
    checks.expect_close(what, got, expected, mistakes=mistakes(), **kwargs)


def _forward(what: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = checks.call_student(f"{type(module).__name__}.forward", module, x)
    if isinstance(out, tuple):
        checks.fail(f"{what}: wrong return value", "one tensor (B, N, D)", f"a tuple of length {len(out)}", "forward returns the output tensor only")
    return checks.expect_tensor(what, out)


def _compare_grads(what: str, student: nn.Module, reference: nn.Module, x: torch.Tensor, out_student: torch.Tensor) -> None:
    """Gradients of the same loss with respect to every parameter, by name."""
    w = checks.seeded(*out_student.shape, seed=999, dtype=F64)
    if not out_student.requires_grad:
        checks.fail(f"{what}: no gradient", "an output that autograd can differentiate", "an output detached from the parameters", "no torch.no_grad(), .detach() or .data in forward")
    student.zero_grad()
    reference.zero_grad()
    (out_student * w).sum().backward()
    (reference(x) * w).sum().backward()
    params = dict(student.named_parameters())
    for key, p_ref in reference.named_parameters():
        grad = params[key].grad
        if grad is None:
            checks.fail(f"{what}: no gradient for {key}", f"a gradient for {key}", "None", f"the output must depend on {key}: is that layer used in forward?")
        checks.expect_close(f"{what}: gradient of {key}", grad, p_ref.grad, tol=1e-6, hint="forward must use each layer once, as in the equations")


# --- exercise 2: MultiHeadSelfAttention ----------------------------------------------------------


def _msa(ref: RefMSA, x: torch.Tensor, split: str = "b n (three h d) -> three b h n d", merge: str = "b h n d -> b n (h d)", heads: int | None = None, scale: str = "head", proj: bool = True, dim: int = -1) -> torch.Tensor:
    """Multi-head self-attention with ref's weights, written out so that mistakes can be made on purpose."""
    heads = heads or ref.num_heads
    with torch.no_grad():
        q, k, v = rearrange(ref.qkv(x), split, three=3, h=heads)
        d = {"head": q.shape[-1], "model": x.shape[-1], "none": 1}[scale]
        weights = (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(dim)
        out = rearrange(weights @ v, merge)
        return ref.proj(out) if proj else out


_MSA_HINT = "qkv(x) (B, N, 3D) -> q, k, v each (B, h, N, D_h) with rearrange(qkv, 'b n (three h d) -> three b h n d', three=3, h=num_heads); attention per head; rearrange back with 'b h n d -> b n (h d)'; then proj"


@checks.exercise("MultiHeadSelfAttention")
def check_multi_head_self_attention(MultiHeadSelfAttention) -> None:
    """MultiHeadSelfAttention(hidden_dim, num_heads): Linear qkv (D -> 3D: q, k, v) and Linear proj (D -> D), eq. 8."""
    name = "MultiHeadSelfAttention"
    sizes = [(32, 4, 6, 10), (48, 3, 5, 11)]  # (D, heads, N, seed)
    for D, h, N, seed in sizes:
        what = f"{name}(hidden_dim={D}, num_heads={h})"
        student = _instantiate(name, what, MultiHeadSelfAttention, D, h)
        _expect_linear(what, student, "qkv", D, 3 * D, "eq. 5: one nn.Linear(hidden_dim, 3 * hidden_dim) named qkv computes q, k and v together (in that order)")
        _expect_linear(what, student, "proj", D, D, "no output projection? Eq. 8 ends with U_msa: self.proj = nn.Linear(hidden_dim, hidden_dim), applied to the concatenated heads")
        ref = _reference(lambda: RefMSA(D, h), seed)
        checks.load_reference_weights(what, student, ref)
        x = checks.seeded(2, N, D, seed=seed, dtype=F64)
        got = _forward(what, student, x.clone())
        _expect_close_lazy(
            f"{what} on x of shape {tuple(x.shape)}",
            got,
            ref(x),
            tol=1e-6,
            mistakes=lambda: {
                "heads split in the wrong order: the qkv features are packed as (three h d), i.e. 'b n (three h d) -> three b h n d' (q first, then k, then v; each split into heads)": _msa(ref, x, split="b n (h d three) -> three b h n d"),
                "heads split in the wrong order: within q (and k, v) the features are (h d), head by head, not (d h): 'b n (three h d) -> three b h n d'": _msa(ref, x, split="b n (three d h) -> three b h n d"),
                "heads split in the wrong order: qkv packs all of q first, then k, then v, '(three h d)', not each head's q, k, v together '(h three d)'": _msa(ref, x, split="b n (h three d) -> three b h n d"),
                "heads merged in the wrong order: concatenate the heads with 'b h n d -> b n (h d)' (eq. 8), not (d h)": _msa(ref, x, merge="b h n d -> b n (d h)"),
                "missing scaling: divide the scores by √D_h (the head dimension) before the softmax": _msa(ref, x, scale="none"),
                "scale by √D_h, the head dimension hidden_dim // num_heads, not by √hidden_dim": _msa(ref, x, scale="model"),
                "no output projection in forward: apply self.proj to the concatenated heads (U_msa of eq. 8)": _msa(ref, x, proj=False),
                "softmax over the wrong axis: use dim=-1 (over the keys)": _msa(ref, x, dim=-2),
                "only one head: split q, k, v into num_heads heads of size hidden_dim // num_heads": _msa(ref, x, heads=1, scale="model"),
            },
            hint=_MSA_HINT,
            shape_hint="forward maps (B, N, D) to (B, N, D): concatenate the heads back with rearrange(out, 'b h n d -> b n (h d)')",
        )
    _compare_grads(what, student, ref, x, _forward(what, student, x.clone()))
    checks.passed(name, f"matches vitlib with its weights for {len(sizes)} sizes, with gradients")


# --- exercise 3: MLP -----------------------------------------------------------------------------


@checks.exercise("MLP")
def check_mlp(MLP) -> None:
    """MLP(hidden_dim, mlp_dim): fc1 (D -> mlp_dim), GELU, fc2 (mlp_dim -> D)."""
    name = "MLP"
    D, M = 32, 64
    what = f"{name}(hidden_dim={D}, mlp_dim={M})"
    student = _instantiate(name, what, MLP, D, M)
    _expect_linear(what, student, "fc1", D, M, "the first layer: self.fc1 = nn.Linear(hidden_dim, mlp_dim)")
    _expect_linear(what, student, "fc2", M, D, "the second layer: self.fc2 = nn.Linear(mlp_dim, hidden_dim)")
    ref = _reference(lambda: RefMLP(D, M), 200)
    checks.load_reference_weights(what, student, ref)
    for seed, scale in ((201, 1.0), (202, 3.0)):
        x = scale * checks.seeded(2, 7, D, seed=seed, dtype=F64)
        with torch.no_grad():
            h = ref.fc1(x)
        got = _forward(what, student, x.clone())
        _expect_close_lazy(
            f"{what} on x of shape {tuple(x.shape)}",
            got,
            ref(x),
            tol=1e-6,
            mistakes=lambda: {
                "ReLU instead of GELU: the paper's MLP has 'two layers with a GELU non-linearity' (Section 3.1)": ref.fc2(F.relu(h)),
                "missing activation: without a non-linearity between fc1 and fc2 the MLP is just one linear map": ref.fc2(h),
                "the tanh approximation of GELU: close (at most about 5e-4 off), but nn.GELU(), torchvision, timm and vitlib use the exact erf form": ref.fc2(_gelu_tanh(h)),
                "a GELU after fc2 as well: the MLP is fc2(GELU(fc1(x))), nothing after fc2 (the residual add follows)": F.gelu(ref.fc2(F.gelu(h))),
            },
            hint="MLP(x) = fc2(GELU(fc1(x)))",
            shape_hint="fc1 maps D to mlp_dim, fc2 maps mlp_dim back to D",
        )
    _compare_grads(what, student, ref, x, _forward(what, student, x.clone()))
    checks.passed(name, "matches vitlib's fc2(GELU(fc1(x))) with its weights, with gradients")


# --- exercise 4: EncoderBlock --------------------------------------------------------------------


def _block(ref: RefBlock, z: torch.Tensor, mistake: str) -> torch.Tensor:
    """Eqs. 2-3 with ref's weights, or one of the usual mistakes."""
    ln1, ln2, attn, mlp = ref.norm1, ref.norm2, ref.attn, ref.mlp
    with torch.no_grad():
        if mistake == "post-norm":
            z = ln1(z + attn(z))
            return ln2(z + mlp(z))
        if mistake == "shared norm1":
            ln2 = ln1
        if mistake == "shared norm2":
            ln1 = ln2
        if mistake == "residual of the normalised input":
            y = ln1(z)
            z = y + attn(y)
            y = ln2(z)
            return y + mlp(y)
        if mistake == "eps 1e-5":
            ln1 = lambda t: F.layer_norm(t, t.shape[-1:], ref.norm1.weight, ref.norm1.bias, eps=1e-5)  # noqa: E731
            ln2 = lambda t: F.layer_norm(t, t.shape[-1:], ref.norm2.weight, ref.norm2.bias, eps=1e-5)  # noqa: E731
        a = attn(ln1(z))
        z = a if mistake == "no residual 1" else z + a
        m = mlp(ln2(z))
        return m if mistake == "no residual 2" else z + m


_BLOCK_MISTAKES = {
    "post-norm: LayerNorm goes before each sublayer, z + MSA(LN(z)) (eq. 2), not after the residual add, LN(z + MSA(z))": "post-norm",
    "one LayerNorm used twice: the block has two, norm1 before the attention and norm2 before the MLP, with their own weights": "shared norm1",
    "one LayerNorm used twice: use norm1 before the attention and norm2 before the MLP (each has its own weights)": "shared norm2",
    "missing residual connection around the attention: z' = MSA(LN(z)) + z (eq. 2)": "no residual 1",
    "missing residual connection around the MLP: z = MLP(LN(z')) + z' (eq. 3)": "no residual 2",
    "the residual adds the input z itself, not LN(z): z' = MSA(LN(z)) + z; don't overwrite z with its normalised version": "residual of the normalised input",
    "LayerNorm eps: the paper's code and torchvision use eps=1e-6 (PyTorch's default is 1e-5)": "eps 1e-5",
}


@checks.exercise("EncoderBlock")
def check_encoder_block(EncoderBlock) -> None:
    """EncoderBlock(hidden_dim, num_heads, mlp_dim) with norm1, attn, norm2, mlp: eqs. 2-3, pre-norm."""
    name = "EncoderBlock"
    D, h, M = 32, 4, 64
    what = f"{name}(hidden_dim={D}, num_heads={h}, mlp_dim={M})"
    student = _instantiate(name, what, EncoderBlock, D, h, M)
    for attr, hint in [
        ("norm1", "self.norm1 = nn.LayerNorm(hidden_dim, eps=1e-6), the LN of eq. 2"),
        ("attn", "self.attn = a MultiHeadSelfAttention(hidden_dim, num_heads)"),
        ("norm2", "self.norm2 = nn.LayerNorm(hidden_dim, eps=1e-6), the LN of eq. 3"),
        ("mlp", "self.mlp = an MLP(hidden_dim, mlp_dim)"),
    ]:
        if not isinstance(getattr(student, attr, None), nn.Module):
            checks.fail(f"{what}: no submodule `{attr}`", f"a submodule named {attr}", f"no attribute {attr}", hint)
    if student.norm1 is student.norm2:
        checks.fail(
            f"{what}: one LayerNorm shared",
            "two LayerNorms, norm1 and norm2, each with its own weight and bias",
            "student.norm1 is student.norm2 (the same module)",
            "one LayerNorm shared by both sublayers: create two, self.norm1 = nn.LayerNorm(...) and self.norm2 = nn.LayerNorm(...)",
        )
    for attr in ("norm1", "norm2"):
        norm = getattr(student, attr)
        if isinstance(norm, nn.LayerNorm) and norm.eps != 1e-6:
            checks.fail(f"{what}: {attr}.eps", "eps=1e-6 (the paper's code, torchvision and timm)", f"eps={norm.eps:g}", "nn.LayerNorm(hidden_dim, eps=1e-6); PyTorch's default is 1e-5")
    ref = _reference(lambda: RefBlock(D, h, M), 300, perturb_norms=True)
    checks.load_reference_weights(what, student, ref)
    for seed, scale in ((301, 1.0), (302, 0.01)):  # small inputs make eps matter
        z = scale * checks.seeded(2, 9, D, seed=seed, dtype=F64)
        got = _forward(what, student, z.clone())
        _expect_close_lazy(
            f"{what} on z of shape {tuple(z.shape)} (scale {scale:g})",
            got,
            ref(z),
            tol=1e-6,
            mistakes=lambda: {hint: _block(ref, z, mistake) for hint, mistake in _BLOCK_MISTAKES.items()},
            hint="z' = MSA(LN1(z)) + z (eq. 2), then z'' = MLP(LN2(z')) + z' (eq. 3)",
            shape_hint="the block maps (B, N, D) to (B, N, D)",
        )
    _compare_grads(what, student, ref, z, _forward(what, student, z.clone()))
    checks.passed(name, "matches vitlib's pre-norm block (eqs. 2-3) with its weights, with gradients")
