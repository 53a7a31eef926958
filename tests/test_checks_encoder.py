"""The checks of week 03 pass right code, and name the usual mistakes of wrong code."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import vitlib
from vitlib.checks import CheckFailed
from vitlib.checks.encoder import check_encoder_block, check_gelu, check_mlp, check_multi_head_self_attention
from check_helpers import expect_failure as _fails, stub as _stub


# --- gelu ----------------------------------------------------------------------------------------


def gelu_right(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def test_gelu_passes(capsys):
    check_gelu(gelu_right)
    check_gelu(F.gelu)
    check_gelu(nn.GELU())
    out = capsys.readouterr().out
    assert out.count("✓ gelu: matches nn.GELU() (exact erf form) and its gradient on 2 seeded inputs") == 3


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x: F.gelu(x, approximate="tanh"), r"tanh approximation: close \(at most about 5e-4 off\)"),
        (lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))), r"tanh approximation"),
        (F.relu, r"that is ReLU"),
        (lambda x: x * (1 + torch.erf(x / math.sqrt(2))), r"missing the 0.5"),
        (lambda x: 0.5 * x * (1 + torch.erf(x)), r"divide by √2 inside erf"),
        (lambda x: x * torch.sigmoid(1.702 * x), r"sigmoid"),
    ],
)
def test_gelu_mistakes(wrong, hint):
    _fails(check_gelu, wrong, hint)


def test_gelu_stub():
    with pytest.raises(NotImplementedError, match="gelu is not written yet"):
        check_gelu(_stub)


# --- MultiHeadSelfAttention ----------------------------------------------------------------------


class MSARight(nn.Module):
    """Written out with einsum and a hand-made softmax: a different order of operations than vitlib's."""

    def __init__(self, hidden_dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.proj = nn.Linear(hidden_dim, hidden_dim)

    def split(self, x):
        return rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)

    def attend(self, q, k, v):
        scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(q.shape[-1])
        return scores.softmax(-1) @ v

    def merge(self, out):
        return rearrange(out, "b h n d -> b n (h d)")

    def forward(self, x):
        q, k, v = self.split(x)
        return self.proj(self.merge(self.attend(q, k, v)))


class MSAWrongSplit(MSARight):
    def split(self, x):
        return rearrange(self.qkv(x), "b n (h d three) -> three b h n d", three=3, h=self.num_heads)


class MSAWrongHeadOrder(MSARight):
    def split(self, x):
        return rearrange(self.qkv(x), "b n (three d h) -> three b h n d", three=3, h=self.num_heads)


class MSAUnscaled(MSARight):
    def attend(self, q, k, v):
        return (q @ k.transpose(-2, -1)).softmax(-1) @ v


class MSANoProjInForward(MSARight):
    def forward(self, x):
        return self.merge(self.attend(*self.split(x)))


class MSANoProj(nn.Module):
    def __init__(self, hidden_dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        return rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")


class MSASeparateProjections(MSARight):
    """q, k, v as three Linear layers: right maths, but the weights cannot be loaded by name."""

    def __init__(self, hidden_dim, num_heads):
        super().__init__(hidden_dim, num_heads)
        self.q = nn.Linear(hidden_dim, hidden_dim)


def test_mhsa_passes(capsys):
    check_multi_head_self_attention(MSARight)
    check_multi_head_self_attention(vitlib.MultiHeadSelfAttention)
    out = capsys.readouterr().out
    assert out.count("✓ MultiHeadSelfAttention: matches vitlib with its weights for 2 sizes, with gradients") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (MSAWrongSplit, r"heads split in the wrong order: the qkv features are packed as \(three h d\)"),
        (MSAWrongHeadOrder, r"heads split in the wrong order: within q .* not \(d h\)"),
        (MSAUnscaled, r"missing scaling: divide the scores by √D_h"),
        (MSANoProjInForward, r"no output projection in forward"),
        (MSANoProj, r"no output projection\? Eq. 8 ends with U_msa"),
        (MSASeparateProjections, r"parameter names differ from vitlib's(.|\n)*unexpected: q.bias, q.weight"),
    ],
)
def test_mhsa_mistakes(wrong, hint):
    _fails(check_multi_head_self_attention, wrong, hint)


def test_mhsa_stub():
    class Stub(nn.Module):
        def __init__(self, hidden_dim, num_heads):
            super().__init__()
            raise NotImplementedError("write this exercise, then run the check cell below")

    with pytest.raises(NotImplementedError, match="MultiHeadSelfAttention is not written yet"):
        check_multi_head_self_attention(Stub)


def test_mhsa_stub_in_forward():
    class Stub(MSARight):
        def forward(self, x):
            raise NotImplementedError("write this exercise, then run the check cell below")

    with pytest.raises(NotImplementedError, match="not written yet"):
        check_multi_head_self_attention(Stub)


# --- MLP -----------------------------------------------------------------------------------------


class MLPRight(nn.Module):
    def __init__(self, hidden_dim, mlp_dim):
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden_dim)
        self.drop = nn.Dropout(0.1)  # parameter-free, and off in eval mode

    def act(self, x):
        return gelu_right(x)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class MLPReLU(MLPRight):
    def act(self, x):
        return F.relu(x)


class MLPLinear(MLPRight):
    def act(self, x):
        return x


class MLPTanh(MLPRight):
    def act(self, x):
        return F.gelu(x, approximate="tanh")


class MLPNamedDifferently(nn.Module):
    def __init__(self, hidden_dim, mlp_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, hidden_dim))

    def forward(self, x):
        return self.net(x)


def test_mlp_passes(capsys):
    check_mlp(MLPRight)
    check_mlp(vitlib.MLP)
    out = capsys.readouterr().out
    assert out.count("✓ MLP: matches vitlib's fc2(GELU(fc1(x))) with its weights, with gradients") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (MLPReLU, r"ReLU instead of GELU"),
        (MLPLinear, r"missing activation"),
        (MLPTanh, r"tanh approximation of GELU"),
        (MLPNamedDifferently, r"no layer `fc1`"),
    ],
)
def test_mlp_mistakes(wrong, hint):
    _fails(check_mlp, wrong, hint)


def test_mlp_stub():
    with pytest.raises(NotImplementedError, match="MLP is not written yet"):
        check_mlp(_stub)


# --- EncoderBlock --------------------------------------------------------------------------------


class BlockRight(nn.Module):
    def __init__(self, hidden_dim, num_heads, mlp_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.attn = MSARight(hidden_dim, num_heads)
        self.norm2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPRight(hidden_dim, mlp_dim)

    def forward(self, z):
        z = z + self.attn(self.norm1(z))
        return z + self.mlp(self.norm2(z))


class BlockPostNorm(BlockRight):
    def forward(self, z):
        z = self.norm1(z + self.attn(z))
        return self.norm2(z + self.mlp(z))


class BlockSharedModule(BlockRight):
    def __init__(self, hidden_dim, num_heads, mlp_dim):
        super().__init__(hidden_dim, num_heads, mlp_dim)
        self.norm2 = self.norm1


class BlockSharedInForward(BlockRight):
    def forward(self, z):
        z = z + self.attn(self.norm1(z))
        return z + self.mlp(self.norm1(z))


class BlockNoResidual(BlockRight):
    def forward(self, z):
        z = self.attn(self.norm1(z))
        return z + self.mlp(self.norm2(z))


class BlockNormalisedResidual(BlockRight):
    def forward(self, z):
        z = self.norm1(z)
        z = z + self.attn(z)
        z = self.norm2(z)
        return z + self.mlp(z)


class BlockDefaultEps(BlockRight):
    def __init__(self, hidden_dim, num_heads, mlp_dim):
        super().__init__(hidden_dim, num_heads, mlp_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)


class _LN(nn.Module):
    """A hand-written LayerNorm with PyTorch's default eps: only the numbers can tell."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + 1e-5) * self.weight + self.bias


class BlockCustomNormEps(BlockRight):
    def __init__(self, hidden_dim, num_heads, mlp_dim):
        super().__init__(hidden_dim, num_heads, mlp_dim)
        self.norm1 = _LN(hidden_dim)
        self.norm2 = _LN(hidden_dim)


def test_block_passes(capsys):
    check_encoder_block(BlockRight)
    check_encoder_block(vitlib.EncoderBlock)
    out = capsys.readouterr().out
    assert out.count("✓ EncoderBlock: matches vitlib's pre-norm block (eqs. 2-3) with its weights, with gradients") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (BlockPostNorm, r"post-norm: LayerNorm goes before each sublayer"),
        (BlockSharedModule, r"one LayerNorm shared by both sublayers(.|\n)*|student.norm1 is student.norm2"),
        (BlockSharedInForward, r"one LayerNorm used twice"),
        (BlockNoResidual, r"missing residual connection around the attention"),
        (BlockNormalisedResidual, r"the residual adds the input z itself, not LN\(z\)"),
        (BlockDefaultEps, r"eps=1e-6"),
        (BlockCustomNormEps, r"LayerNorm eps: the paper's code and torchvision use eps=1e-6"),
    ],
)
def test_block_mistakes(wrong, hint):
    _fails(check_encoder_block, wrong, hint)


def test_block_shared_norm_message_names_the_identity():
    with pytest.raises(CheckFailed, match=r"student.norm1 is student.norm2"):
        check_encoder_block(BlockSharedModule)


def test_block_stub():
    with pytest.raises(NotImplementedError, match="EncoderBlock is not written yet"):
        check_encoder_block(_stub)


def test_module_checks_leave_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    check_encoder_block(BlockRight)
    after = torch.rand(3)
    assert torch.equal(before, after)
