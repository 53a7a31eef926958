"""Checks of week 02: scaled dot-product attention by hand (Appendix A, eqs. 5-7).

    A = softmax(q kᵀ / √d_k)      (6)
    SA(z) = A v                   (7)

Values are compared in float64 (seeded inputs), so a correct implementation matches to
about 1e-15 whatever the order of its operations; one float32 call checks that the
input's dtype is kept. Known mistakes (no √d_k, softmax over the wrong axis, weights
transposed, ...) are computed too, and a result equal to one of them names it.

`reference_attention_scores` and `reference_softmax` are the fallbacks a notebook uses
(through `checks.mine_or_reference`) while a student's own version has not passed.
"""

from __future__ import annotations

import math

import torch

from vitlib import checks
from vitlib.attention import scaled_dot_product_attention

__all__ = [
    "reference_attention_scores",
    "reference_softmax",
    "check_attention_scores",
    "check_softmax",
    "check_attention",
]

F64 = torch.float64


def reference_attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q kᵀ / √d_k: (..., N, d) and (..., M, d) -> (..., N, M)."""
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def reference_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """torch.softmax with the signature of the exercise."""
    return torch.softmax(x, dim=dim)


def _expect_dtype_kept(what: str, got, expected_shape: tuple[int, ...], shape_hint: str) -> None:
    """A float32 input must give a float32 result of the right shape."""
    checks.expect_shape(what, got, expected_shape, shape_hint)
    if got.dtype != torch.float32:
        checks.fail(f"{what}: wrong dtype", "dtype torch.float32 (as the input)", f"dtype {got.dtype}", "keep the input's dtype (no .double(), no .long())")


# --- exercise 1: attention_scores ----------------------------------------------------------------

_K_DOT_T_HINT = "k.T reverses all axes of a batched tensor ((B, h, M, d) becomes (d, M, h, B)): transpose only the last two, k.transpose(-2, -1)"
_SCORES_SHAPE_HINT = "q (..., N, d) times kᵀ (..., d, M) gives (..., N, M): transpose only the last two axes of k, k.transpose(-2, -1) (k.T reverses all axes of a batched tensor)"


@checks.exercise("attention_scores")
def check_attention_scores(attention_scores) -> None:
    """attention_scores(q, k) must be q kᵀ / √d_k, of shape (..., N, M)."""
    name = "attention_scores"
    cases = [  # (q shape, k shape): one pair of tokens, a batch of heads with N != M, d_k = 64
        ((4, 16), (6, 16)),
        ((2, 3, 5, 8), (2, 3, 7, 8)),
        ((1, 2, 3, 64), (1, 2, 9, 64)),
    ]
    for i, (q_shape, k_shape) in enumerate(cases):
        q, k = checks.seeded(*q_shape, seed=10 + i, dtype=F64), checks.seeded(*k_shape, seed=20 + i, dtype=F64)
        d_k = q.shape[-1]
        raw = q @ k.transpose(-2, -1)
        got = checks.call_student(name, attention_scores, q.clone(), k.clone(), crash_hints={r"\.T\b": _K_DOT_T_HINT})
        checks.expect_close(
            f"{name}(q of shape {q_shape}, k of shape {k_shape})",
            got,
            raw / math.sqrt(d_k),
            tol=1e-6,
            mistakes={
                "scale the scores: divide q kᵀ by √d_k (eq. 6), d_k = q.shape[-1]": raw,
                "your scores are q kᵀ / d_k: divide by √d_k once, not by d_k and not twice by √d_k": raw / d_k,
                "the order is q kᵀ, not k qᵀ: row i holds query i's score against every key, shape (..., N, M)": (k @ q.transpose(-2, -1)) / math.sqrt(d_k),
                "d_k is the size of the last axis of q (and k): q.shape[-1]": raw / math.sqrt(q.shape[-2]),
            },
            hint="compare with eq. 6: scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)",
            shape_hint=_SCORES_SHAPE_HINT,
        )
    got = checks.call_student(name, attention_scores, checks.seeded(2, 5, 8, seed=30), checks.seeded(2, 7, 8, seed=31),
                              crash_hints={r"\.T\b": _K_DOT_T_HINT})
    _expect_dtype_kept(f"{name} on float32 inputs", got, (2, 5, 7), _SCORES_SHAPE_HINT)
    checks.passed(name, f"matches q kᵀ / √d_k on {len(cases)} seeded inputs (N ≠ M, batched heads)")


# --- exercise 2: softmax -------------------------------------------------------------------------


def _naive_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    e = x.exp()
    return e / e.sum(dim, keepdim=True)


@checks.exercise("softmax")
def check_softmax(softmax) -> None:
    """softmax(x, dim=-1) by hand must equal torch.softmax, also on large inputs (±1000)."""
    name = "softmax"
    # 1. ordinary inputs: the axis, the normalisation. A cube, so that a wrong axis (or a sum without keepdim) keeps the shape.
    x = 3 * checks.seeded(4, 4, 4, seed=40, dtype=F64)
    e = (x - x.amax(-1, keepdim=True)).exp()
    got = checks.call_student(name, softmax, x.clone())
    checks.expect_close(
        f"{name}(x) of shape {tuple(x.shape)}",
        got,
        torch.softmax(x, dim=-1),
        tol=1e-6,
        mistakes={
            "normalising over the wrong axis: with dim=-1 every row (the last axis) must sum to 1": torch.softmax(x, dim=-2),
            "normalising over the wrong axis (axis 0): use the `dim` argument, -1 by default": torch.softmax(x, dim=0),
            "forgot to normalise: divide exp(x - max) by its sum over `dim`, so that each row sums to 1": e,
            "forgot to normalise: divide exp(x) by its sum over `dim`, so that each row sums to 1": x.exp(),
            "sum with keepdim=True: e / e.sum(dim, keepdim=True); without it the sum broadcasts against the wrong axis": e / e.sum(-1),
            "normalise by the sum over `dim` only, not by the sum of every entry": e / e.sum(),
        },
        hint="softmax(x)_i = exp(x_i - max) / Σ_j exp(x_j - max), the sum and max taken over `dim`",
    )
    # 2. the `dim` argument is honoured.
    x1 = checks.seeded(3, 4, 6, seed=41, dtype=F64)
    got = checks.call_student(name, softmax, x1.clone(), dim=1)
    checks.expect_close(
        f"{name}(x, dim=1) of shape {tuple(x1.shape)}",
        got,
        torch.softmax(x1, dim=1),
        tol=1e-6,
        mistakes={"use the `dim` argument instead of a fixed -1 (here dim=1: each column sums to 1)": torch.softmax(x1, dim=-1)},
        hint="take the max, the exp and the sum over `dim`",
    )
    # 3. large inputs: exp(1000) = inf in float32 and float64.
    big = 1000 + 5 * checks.seeded(4, 6, seed=42, dtype=F64)
    got = checks.expect_tensor(f"{name} on inputs near 1000", checks.call_student(name, softmax, big.clone()))
    if got.shape == big.shape and not torch.isfinite(got).all():
        checks.fail(
            f"{name} on inputs near 1000: not finite",
            "finite probabilities, e.g. " + ", ".join(f"{v:.3g}" for v in torch.softmax(big, -1)[0, :3].tolist()),
            "NaN or inf: exp(1000) overflows to inf, and inf / inf is NaN",
            "subtract the maximum first: x - x.max(dim, keepdim=True).values (softmax(x - c) = softmax(x) for any constant c, and the largest exponent becomes exp(0) = 1)",
        )
    checks.expect_close(f"{name} on inputs near 1000", got, torch.softmax(big, -1), tol=1e-6)
    # 4. rows far apart (+1000 and -1000): the max must be each row's own.
    offsets = torch.tensor([1000.0, -1000.0, 0.0, 500.0], dtype=F64)[:, None]
    spread = offsets + 5 * checks.seeded(4, 6, seed=43, dtype=F64)
    got = checks.expect_tensor(f"{name} on rows near +1000 and -1000", checks.call_student(name, softmax, spread.clone()))
    if got.shape == spread.shape and not torch.isfinite(got).all():
        checks.fail(
            f"{name} on rows near +1000 and -1000: not finite",
            "finite probabilities in every row",
            "NaN or inf in the rows far below the largest entry of the tensor",
            "subtract each row's own maximum, x.max(dim, keepdim=True).values, not the maximum of the whole tensor: exp(-2000) underflows to 0, and 0 / 0 is NaN",
        )
    checks.expect_close(f"{name} on rows near +1000 and -1000", got, torch.softmax(spread, -1), tol=1e-6)
    # 5. gradients flow, and equal torch's.
    xg = checks.seeded(3, 5, seed=44, dtype=F64).requires_grad_()
    w = checks.seeded(3, 5, seed=45, dtype=F64)
    out = checks.call_student(name, softmax, xg)
    checks.expect_tensor(name, out)
    if not out.requires_grad:
        checks.fail(f"{name}: no gradient", "a result that autograd can differentiate", "a result detached from x", "use torch operations on x (no .detach(), .numpy() or torch.no_grad())")
    (grad,) = torch.autograd.grad((out * w).sum(), xg, allow_unused=True)
    x_ref = xg.detach().clone().requires_grad_()
    (grad_ref,) = torch.autograd.grad((torch.softmax(x_ref, -1) * w).sum(), x_ref)
    if grad is None:
        checks.fail(f"{name}: no gradient", "a gradient with respect to x", "None", "use torch operations on x (no .detach())")
    checks.expect_close(f"{name}: gradient with respect to x", grad, grad_ref, tol=1e-6, hint="build the result from x with torch operations only (in-place edits or .detach() break autograd)")
    # 6. float32 stays float32.
    got = checks.call_student(name, softmax, checks.seeded(2, 5, seed=46))
    _expect_dtype_kept(f"{name} on float32 inputs", got, (2, 5), "return a tensor of the input's shape")
    checks.passed(name, "matches torch.softmax, also on inputs near ±1000, with its gradient")


# --- exercise 3: attention -----------------------------------------------------------------------


def _row_sums(weights: torch.Tensor) -> str:
    sums = weights.detach().sum(-1).flatten()[:4]
    return "rows that sum to [" + ", ".join(f"{v:.3g}" for v in sums.tolist()) + (", ...]" if weights[..., 0].numel() > 4 else "]")


@checks.exercise("attention")
def check_attention(attention) -> None:
    """attention(q, k, v) must return (softmax(q kᵀ / √d_k) v, softmax(q kᵀ / √d_k))."""
    name = "attention"
    # (B, h, N, d_k) x (B, h, M, d_k) x (B, h, M, d_v): self-attention shaped (N = M), then N ≠ M and d_v ≠ d_k.
    cases = [((2, 3, 6, 8), (2, 3, 6, 8), (2, 3, 6, 8)), ((2, 4, 5, 8), (2, 4, 7, 8), (2, 4, 7, 4))]
    for i, (q_shape, k_shape, v_shape) in enumerate(cases):
        q = checks.seeded(*q_shape, seed=50 + i, dtype=F64)
        k = checks.seeded(*k_shape, seed=60 + i, dtype=F64)
        v = checks.seeded(*v_shape, seed=70 + i, dtype=F64)
        d_k = q.shape[-1]
        raw = q @ k.transpose(-2, -1)
        out_ref, w_ref = scaled_dot_product_attention(q, k, v)
        where = f"q {q_shape}, k {k_shape}, v {v_shape}"
        result = checks.call_student(name, attention, q.clone(), k.clone(), v.clone())
        if not (isinstance(result, tuple) and len(result) == 2):
            checks.fail(
                f"{name}({where}): wrong return value",
                "a tuple (output, weights)",
                f"{type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""),
                "end with `return output, weights`",
            )
        out, weights = result
        checks.expect_tensor(f"{name}: weights", weights)
        # the weights: shape, rows that sum to 1, then values.
        checks.expect_shape(
            f"{name}({where}): weights",
            weights,
            tuple(w_ref.shape),
            "the weights are (..., N, M): one row per query, one column per key"
            + ("; return (output, weights) in that order" if tuple(weights.shape) == tuple(out_ref.shape) else ""),
        )
        sums = weights.detach().sum(-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-6):
            columns = weights.detach().sum(-2)
            checks.fail(
                f"{name}({where}): weights",
                "rows that sum to 1 (each query's weights over the keys are a probability distribution)",
                _row_sums(weights),
                "rows of your attention matrix don't sum to 1, its columns do: the softmax is over the queries; use dim=-1 (over the keys)"
                if torch.allclose(columns, torch.ones_like(columns), atol=1e-6)
                else "rows of your attention matrix don't sum to 1: normalise each query's scores over the keys, softmax(scores, dim=-1)",
            )
        checks.expect_close(
            f"{name}({where}): weights",
            weights,
            w_ref,
            tol=1e-6,
            mistakes={
                "missing √d_k: the weights are softmax(q kᵀ / √d_k) (eq. 6)": raw.softmax(-1),
                "these are softmax(q kᵀ / d_k): divide the scores by √d_k once, not by d_k and not twice by √d_k": (raw / d_k).softmax(-1),
            },
            hint="weights = softmax(q kᵀ / √d_k) over the keys (eq. 6)",
        )
        wrong_out = {
            "missing √d_k: the output is softmax(q kᵀ / √d_k) v": raw.softmax(-1) @ v,
            "softmax over the wrong axis: use dim=-1 (over the keys)": raw.div(math.sqrt(d_k)).softmax(-2) @ v,
            "return (output, weights) in that order": w_ref,
        }
        if q.shape[-2] == k.shape[-2]:  # with N ≠ M the transposed product does not even run
            wrong_out["the output is weights @ v, not weightsᵀ @ v: row i mixes the values with query i's weights (eq. 7)"] = w_ref.transpose(-2, -1) @ v
        checks.expect_close(
            f"{name}({where}): output",
            out,
            out_ref,
            tol=1e-6,
            mistakes=wrong_out,
            hint="output = weights @ v (eq. 7), of shape (..., N, d_v)",
            shape_hint="the output is weights (..., N, M) @ v (..., M, d_v) = (..., N, d_v)",
        )
    # gradients with respect to q, k and v (N ≠ M).
    q, k, v = (checks.seeded(*s, seed=80 + j, dtype=F64).requires_grad_() for j, s in enumerate(cases[1]))
    out, _ = checks.call_student(name, attention, q, k, v)
    if not out.requires_grad:
        checks.fail(f"{name}: no gradient", "an output that autograd can differentiate", "an output detached from q, k, v", "use torch operations only (no .detach(), .numpy() or torch.no_grad())")
    w = checks.seeded(*out.shape, seed=89, dtype=F64)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v), allow_unused=True)
    refs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    grads_ref = torch.autograd.grad((scaled_dot_product_attention(*refs)[0] * w).sum(), refs)
    for label, g, g_ref in zip("qkv", grads, grads_ref):
        if g is None:
            checks.fail(f"{name}: no gradient for {label}", f"a gradient with respect to {label}", "None", f"the output must depend on {label} through torch operations")
        checks.expect_close(f"{name}: gradient with respect to {label}", g, g_ref, tol=1e-6, hint="build the output with torch operations only (in-place edits or .detach() break autograd)")
    # float32 stays float32.
    out, weights = checks.call_student(name, attention, *(checks.seeded(*s, seed=90 + j) for j, s in enumerate(cases[1])))
    _expect_dtype_kept(f"{name} on float32 inputs: output", out, (2, 4, 5, 4), "the output is (..., N, d_v)")
    _expect_dtype_kept(f"{name} on float32 inputs: weights", weights, (2, 4, 5, 7), "the weights are (..., N, M)")
    checks.passed(name, "matches vitlib on (B, h, N, d) inputs with N = M and N ≠ M, with gradients")
