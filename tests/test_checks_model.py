"""Week 04's checks: they pass right answers and name the usual mistakes (eq. 4, the ViT, Table 1, torchvision)."""

from __future__ import annotations


import pytest
import torch
from einops import rearrange
from torch import nn

import vitlib
from vitlib import checks
from vitlib.checks import model as cm
from check_helpers import expect_failure as _fails_with, stub as _stub

# --------------------------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------------------------- exercise 1


def head_right(z, norm, head):
    return head(norm(z[:, 0]))


def test_classification_head_passes(capsys):
    cm.check_classification_head(head_right)
    assert capsys.readouterr().out == "✓ classification_head: matches head(LN(z_L^0)) on 2 seeded inputs\n"
    assert checks.has_passed("classification_head")


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda z, norm, head: head(norm(z.mean(dim=1))), r"mean pooling"),
        (lambda z, norm, head: head(norm(z[:, -1])), r"last token"),
        (lambda z, norm, head: head(z[:, 0]), r"final LayerNorm is missing"),
        (lambda z, norm, head: head(norm(z)), r"wrong shape[\s\S]*logits for every token[\s\S]*z\[:, 0\]"),
        (lambda z, norm, head: head(norm(z[:, :1])), r"wrong shape[\s\S]*token axis is still there"),
    ],
)
def test_classification_head_mistakes(wrong, hint):
    _fails_with(cm.check_classification_head, wrong, hint)


def test_classification_head_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        cm.check_classification_head(_stub)


# --------------------------------------------------------------------------------------------- exercise 2


class StudentViT(nn.Module):
    """A correct ViT as the exercise asks for it, from vitlib's parts; flags switch on the usual mistakes."""

    def __init__(self, image_size, patch_size, in_channels, num_classes, hidden_dim, mlp_dim, num_layers, num_heads, *, mistake=None):
        super().__init__()
        self.mistake = mistake
        n = (image_size // patch_size) ** 2
        self.patch_embed = vitlib.PatchEmbedding(patch_size, in_channels, hidden_dim)
        if mistake == "tensor_class_token":
            self.class_token = torch.zeros(1, 1, hidden_dim)
        else:
            self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        if mistake == "randn_positions":
            self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, hidden_dim))
        elif mistake == "zero_positions":
            self.pos_embedding = nn.Parameter(torch.zeros(1, n + 1, hidden_dim))
        else:
            self.pos_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, n + 1, hidden_dim), std=0.02))
        blocks = [vitlib.EncoderBlock(hidden_dim, num_heads, mlp_dim) for _ in range(num_layers)]
        if mistake == "python_list":
            self.encoder = nn.Module()
            self.encoder.layers = blocks
        else:
            self.encoder = nn.ModuleDict({"layers": nn.ModuleList(blocks)})
        self.norm = nn.LayerNorm(hidden_dim, eps=1e-5 if mistake == "eps" else 1e-6)
        self.head = nn.Linear(hidden_dim, num_classes)
        if mistake != "random_head":  # Section 3.2: a zero-initialised head
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, images):
        x = self.patch_embed(images)
        cls = self.class_token.expand(x.shape[0], -1, -1)
        if self.mistake == "no_class_token":
            z = x + self.pos_embedding
        elif self.mistake == "not_expanded":
            z = torch.cat([self.class_token, x], dim=1) + self.pos_embedding
        else:
            z = torch.cat([cls, x], dim=1)
            if self.mistake != "no_positions":
                z = z + self.pos_embedding
        for block in self.encoder.layers:
            z = block(z)
        y = z.mean(dim=1) if self.mistake == "mean" else z[:, 0]
        return self.head(self.norm(y))


def _vit(mistake):
    return lambda *args, **kwargs: StudentViT(*args, mistake=mistake, **kwargs)


def test_vit_passes_with_a_correct_vit_and_with_vitlibs(capsys):
    cm.check_vit(_vit(None))
    cm.check_vit(vitlib.ViT)
    line = "✓ ViT: matches vitlib's logits on 2 configurations; class token and positions are trained parameters\n"
    assert capsys.readouterr().out == line * 2


@pytest.mark.parametrize(
    "mistake, hint",
    [
        ("no_positions", r"position embeddings are not added"),
        ("mean", r"mean pooling"),
        ("eps", r"eps=1e-6"),
        ("tensor_class_token", r"not a registered parameter[\s\S]*nn\.Parameter[\s\S]*\.to\(device\)"),
        ("python_list", r"Python list hides the blocks"),
        ("no_class_token", r"size mismatch[\s\S]*class token prepended"),
        ("not_expanded", r"expand it to the batch"),
        ("random_head", r"head is not initialised to zeros[\s\S]*nn\.init\.zeros_\(self\.head\.weight\)"),
        ("randn_positions", r"std 1, as torch\.randn draws, is 50 times too large[\s\S]*trunc_normal_\(self\.pos_embedding, std=0\.02\)"),
        ("zero_positions", r"E_pos is not random[\s\S]*trunc_normal_"),
    ],
)
def test_vit_mistakes(mistake, hint):
    _fails_with(cm.check_vit, _vit(mistake), hint)


@pytest.mark.parametrize("seed", range(20))
def test_vit_accepts_trunc_normal_positions_whatever_the_seed(seed, capsys):
    class Seeded(StudentViT):  # the global seed is the check's own; draw E_pos from other seeds too
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                self.pos_embedding.copy_(nn.init.trunc_normal_(torch.empty_like(self.pos_embedding), std=0.02, generator=generator))

    cm.check_vit(Seeded)
    assert capsys.readouterr().out.startswith("✓ ViT:")


def test_vit_accepts_positions_truncated_at_two_std(capsys):
    class TwoStd(StudentViT):  # timm-style bounds in units of std: a=-0.04, b=0.04
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            nn.init.trunc_normal_(self.pos_embedding, std=0.02, a=-0.04, b=0.04)

    cm.check_vit(TwoStd)
    assert capsys.readouterr().out.startswith("✓ ViT:")


def test_vit_stub():
    class Stub(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            raise NotImplementedError("write this exercise, then run the check cell below")

    with pytest.raises(NotImplementedError, match="not written yet"):
        cm.check_vit(Stub)


# --------------------------------------------------------------------------------------------- exercise 3


def count_right(c):
    d, m, n = c.hidden_dim, c.mlp_dim, (c.image_size // c.patch_size) ** 2
    per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (2 * d * m + m + d)
    return (c.patch_size**2 * c.in_channels * d + d) + d + (n + 1) * d + c.num_layers * per_layer + 2 * d + (d * c.num_classes + c.num_classes)


def test_count_parameters_passes_and_matches_table_1(capsys):
    cm.check_count_parameters(count_right)
    assert capsys.readouterr().out.startswith("✓ count_parameters: equals vitlib's count for vit_course_28")
    assert count_right(vitlib.get_config("vit_b_16")) == 86_567_656
    assert count_right(vitlib.get_config("vit_l_16")) == 304_326_632
    assert count_right(vitlib.get_config("vit_h_14")) == 632_045_800
    parts = cm.parameter_count_parts(vitlib.get_config("vit_b_16"))
    assert sum(parts.values()) == 86_567_656


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda c: count_right(c) - c.hidden_dim, r"too few: exactly the size of the class token"),
        (lambda c: count_right(c) - ((c.image_size // c.patch_size) ** 2 + 1) * c.hidden_dim, r"the position embeddings, \(N\+1\)·D"),
        (lambda c: count_right(c) - c.num_layers * 2 * c.hidden_dim, r"each LayerNorm has a weight AND a bias"),
        (lambda c: count_right(c) - c.num_classes, r"the head's bias"),
        (lambda c: count_right(c) + 2 * c.hidden_dim, r"too many: exactly the size of the final LayerNorm[\s\S]*counted twice"),
        (lambda c: count_right(c) - c.num_layers * 2 * c.hidden_dim**2, r"U_qkv is D × 3D"),
        (lambda c: float(count_right(c)), r"a Python int"),
        (lambda c: count_right(c) - 12345, r"no single part"),
    ],
)
def test_count_parameters_mistakes(wrong, hint):
    _fails_with(cm.check_count_parameters, wrong, hint)


def test_count_parameters_forgetting_biases():
    def no_biases(c):
        d, m, n = c.hidden_dim, c.mlp_dim, (c.image_size // c.patch_size) ** 2
        per_layer = 4 * d + 3 * d * d + d * d + 2 * d * m
        return c.patch_size**2 * c.in_channels * d + d + (n + 1) * d + c.num_layers * per_layer + 2 * d + d * c.num_classes

    _fails_with(cm.check_count_parameters, no_biases, r"every bias")


def test_count_parameters_by_building_the_model_is_refused():
    def by_building(c):
        with torch.device("meta"):
            return vitlib.ViT(c).num_parameters()

    _fails_with(cm.check_count_parameters, by_building, r"pencil and paper")
    assert nn.Module.__init__ is torch.nn.modules.module.Module.__init__
    nn.Linear(2, 2)  # construction works again after the check


def test_count_parameters_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        cm.check_count_parameters(_stub)


# --------------------------------------------------------------------------------------------- exercise 4

RENAMES = [
    ("conv_proj.", "patch_embed.proj."),
    ("encoder.pos_embedding", "pos_embedding"),
    ("encoder.layers.encoder_layer_", "encoder.layers."),
    (".ln_1.", ".norm1."),
    (".ln_2.", ".norm2."),
    ("self_attention.in_proj_", "attn.qkv."),
    ("self_attention.out_proj.", "attn.proj."),
    (".mlp.0.", ".mlp.fc1."),
    (".mlp.3.", ".mlp.fc2."),
    ("encoder.ln.", "norm."),
    ("heads.head.", "head."),
]


def convert_right(state_dict, flatten="d c p1 p2 -> d (p1 p2 c)", skip=()):
    out = {}
    for key, value in state_dict.items():
        for old, new in RENAMES:
            if old not in skip:
                key = key.replace(old, new)
        out[key] = value
    if flatten:
        out["patch_embed.proj.weight"] = rearrange(out["patch_embed.proj.weight"], flatten)
    return out


def test_convert_passes_and_loads(capsys):
    cm.check_convert_torchvision_state_dict(convert_right)
    assert capsys.readouterr().out == "✓ convert_torchvision_state_dict: equals vitlib.interop.from_torchvision on a random torchvision ViT\n"
    source = cm._torchvision_source()
    model = vitlib.ViT(image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    model.load_state_dict(convert_right(source.state_dict()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - source(x)).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda sd: convert_right(sd, flatten="d c p1 p2 -> d (c p1 p2)"), r"\(c p1 p2\) order"),
        (lambda sd: convert_right(sd, flatten=None), r"wrong shape[\s\S]*must become a Linear weight"),
        (lambda sd: convert_right(sd, skip=("encoder.ln.",)), r"missing: norm\.bias, norm\.weight[\s\S]*norm\.bias <- encoder\.ln\.bias"),
        (lambda sd: {**convert_right(sd), "head.bias": torch.zeros(10)}, r"head\.bias is torchvision's heads\.head\.bias"),
    ],
)
def test_convert_mistakes(wrong, hint):
    _fails_with(cm.check_convert_torchvision_state_dict, wrong, hint)


def test_convert_must_not_change_its_input():
    def in_place(sd):
        for key in list(sd):
            sd[key.replace("heads.head.", "head.")] = sd.pop(key)
        return convert_right(dict(sd))

    _fails_with(cm.check_convert_torchvision_state_dict, in_place, r"build a new dict")


def test_convert_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        cm.check_convert_torchvision_state_dict(_stub)
