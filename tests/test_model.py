"""The model: shapes of eqs. 1-4, patch embedding vs Conv2d, attention paths, Table 1 counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitlib.attention
from vitlib import (
    CONFIGS,
    EncoderBlock,
    MultiHeadSelfAttention,
    PatchEmbedding,
    ViT,
    ViTConfig,
    create_vit,
    get_config,
    patchify,
    scaled_dot_product_attention,
    unpatchify,
)
from vitlib.patching import conv_weight_from_linear, linear_weight_from_conv

TINY = dict(image_size=16, patch_size=4, in_channels=3, num_classes=5, hidden_dim=32, mlp_dim=64, num_layers=2, num_heads=4)


@pytest.fixture
def tiny() -> ViT:
    torch.manual_seed(0)
    model = ViT(ViTConfig(**TINY)).eval()
    with torch.no_grad():  # the head and class token start at zero: perturb so nothing can hide
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


# --- eq. 1: patches, projection, class token, position embedding -------------------------------


def test_patchify_shape_and_order():
    images = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)  # (B, C, H, W)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 4 * 4 * 3)  # (B, N, P²·C), N = 8·12 / 16
    # Raster order, each patch flattened as (p1 p2 c): patch 1 is rows 0-3, columns 4-7.
    expected = images[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1], expected)
    assert torch.equal(unpatchify(patches, 4, 3, 8, 12), images)


def test_patch_embedding_equals_conv2d_with_shared_weights():
    torch.manual_seed(0)
    embed = PatchEmbedding(patch_size=4, in_channels=3, hidden_dim=10)
    conv = nn.Conv2d(3, 10, kernel_size=4, stride=4)
    with torch.no_grad():
        conv.weight.copy_(conv_weight_from_linear(embed.proj.weight, 4, 3))
        conv.bias.copy_(embed.proj.bias)
    x = torch.randn(2, 3, 16, 16)
    by_conv = conv(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)
    torch.testing.assert_close(embed(x), by_conv, rtol=1e-5, atol=1e-5)
    assert torch.equal(linear_weight_from_conv(conv.weight), embed.proj.weight)


def test_eq1_embedding_shape_class_token_and_positions(tiny):
    x = torch.randn(3, 3, 16, 16)
    z0 = tiny.embed(x)
    assert z0.shape == (3, 16 + 1, 32)  # (B, N+1, D)
    # Token 0 is the class token plus its position embedding, the same for every image.
    expected = (tiny.class_token + tiny.pos_embedding[:, :1]).expand(3, -1, -1)
    torch.testing.assert_close(z0[:, :1], expected)
    torch.testing.assert_close(z0[:, 1:], tiny.patch_embed(x) + tiny.pos_embedding[:, 1:])


def test_class_token_and_position_embedding_are_registered_parameters(tiny):
    names = dict(tiny.named_parameters())
    assert names["class_token"].shape == (1, 1, 32)
    assert names["pos_embedding"].shape == (1, 17, 32)
    moved = tiny.to(torch.float64)  # still registered after .to(), unlike a tensor moved by hand
    assert dict(moved.named_parameters())["pos_embedding"].dtype == torch.float64


# --- eqs. 2-3: the encoder block ----------------------------------------------------------------


def test_eq2_eq3_block_keeps_shape_and_has_two_layer_norms():
    block = EncoderBlock(hidden_dim=32, num_heads=4, mlp_dim=64)
    z = torch.randn(2, 17, 32)
    assert block(z).shape == (2, 17, 32)
    assert block.norm1 is not block.norm2


def test_block_equals_torch_pre_norm_transformer_layer():
    """Eqs. 2 and 3 are nn.TransformerEncoderLayer(norm_first=True) with GELU."""
    torch.manual_seed(0)
    ours = EncoderBlock(hidden_dim=32, num_heads=4, mlp_dim=64).eval()
    ref = nn.TransformerEncoderLayer(
        32, 4, 64, dropout=0.0, activation="gelu", layer_norm_eps=1e-6, batch_first=True, norm_first=True
    ).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
        pairs = {
            "self_attn.in_proj_weight": ours.attn.qkv.weight,
            "self_attn.in_proj_bias": ours.attn.qkv.bias,
            "self_attn.out_proj.weight": ours.attn.proj.weight,
            "self_attn.out_proj.bias": ours.attn.proj.bias,
            "linear1.weight": ours.mlp.fc1.weight,
            "linear1.bias": ours.mlp.fc1.bias,
            "linear2.weight": ours.mlp.fc2.weight,
            "linear2.bias": ours.mlp.fc2.bias,
            "norm1.weight": ours.norm1.weight,
            "norm1.bias": ours.norm1.bias,
            "norm2.weight": ours.norm2.weight,
            "norm2.bias": ours.norm2.bias,
        }
        ref.load_state_dict(pairs)
    z = torch.randn(2, 17, 32)
    torch.testing.assert_close(ours(z), ref(z), rtol=1e-5, atol=1e-5)


# --- eq. 4 and the head ------------------------------------------------------------------------


def test_eq4_features_and_logits_shapes(tiny):
    x = torch.randn(4, 3, 16, 16)
    y = tiny.forward_features(x)
    assert y.shape == (4, 32)  # y = LN(z_L^0), (B, D)
    assert tiny(x).shape == (4, 5)  # (B, num_classes)
    torch.testing.assert_close(tiny.head(y), tiny(x))


def test_head_reads_the_class_token_only(tiny):
    """Changing one patch changes the logits only through attention, via the class token (eq. 4)."""
    z = tiny.encoder(tiny.embed(torch.randn(1, 3, 16, 16)))
    z2 = z.clone()
    z2[:, 1:] = 0  # wipe the patch tokens at the output: the head must not notice
    torch.testing.assert_close(tiny.head(tiny.norm(z[:, 0])), tiny.head(tiny.norm(z2[:, 0])))


def test_num_classes_zero_gives_features():
    model = ViT(ViTConfig(**{**TINY, "num_classes": 0}))
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32)


def test_gradients_reach_every_parameter(tiny):
    tiny.train()
    tiny(torch.randn(2, 3, 16, 16)).sum().backward()
    missing = [n for n, p in tiny.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


# --- attention: written out vs fused ----------------------------------------------------------------


def test_written_out_attention_equals_torch_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)  # (B, h, N, d)
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)
    assert weights.shape == (2, 4, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7))
    scores = q @ k.transpose(-2, -1) / 8**0.5
    torch.testing.assert_close(weights, scores.softmax(-1))


def test_fused_and_written_out_paths_give_the_same_output(tiny):
    x = torch.randn(2, 3, 16, 16)
    fused = tiny(x)
    tiny.set_fused_attention(False)
    explicit = tiny(x)
    tiny.set_fused_attention(True)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    logits, maps = tiny.forward_with_attention(x)
    torch.testing.assert_close(logits, fused, rtol=1e-5, atol=1e-5)
    assert len(maps) == 2 and all(m.shape == (2, 4, 17, 17) for m in maps)
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, 17))
        assert (m >= 0).all()


def test_default_forward_never_runs_the_written_out_path(tiny, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the default path must use the fused kernel")

    monkeypatch.setattr(vitlib.attention, "scaled_dot_product_attention", forbidden)
    tiny(torch.randn(1, 3, 16, 16))  # does not raise
    with pytest.raises(AssertionError, match="fused kernel"):
        tiny.forward_with_attention(torch.randn(1, 3, 16, 16))


def test_multi_head_attention_shapes_and_heads():
    attn = MultiHeadSelfAttention(hidden_dim=24, num_heads=3)
    out, weights = attn(torch.randn(2, 5, 24), return_attention=True)
    assert out.shape == (2, 5, 24) and weights.shape == (2, 3, 5, 5)
    assert attn.head_dim == 8


# --- configurations: Table 1 --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [("vit_b_16", 86_567_656), ("vit_l_16", 304_326_632), ("vit_h_14", 632_045_800)],
)
def test_parameter_counts_equal_torchvision(name, expected):
    with torch.device("meta"):  # count without allocating 2.5 GB for ViT-H
        model = create_vit(name)
    assert model.num_parameters() == expected


def test_deit_counts_and_every_config_builds():
    with torch.device("meta"):
        assert round(create_vit("vit_ti_16").num_parameters() / 1e6, 2) == 5.72
        assert round(create_vit("vit_s_16").num_parameters() / 1e6, 2) == 22.05
        for name in CONFIGS:
            create_vit(name)
    for name in ("vit_course_28", "vit_course_32"):
        c = get_config(name)
        model = create_vit(name)
        assert model(torch.randn(2, c.in_channels, c.image_size, c.image_size)).shape == (2, 10)


def test_create_vit_overrides():
    model = create_vit("vit_course_28", num_layers=1, num_classes=3)
    assert model.config.num_layers == 1 and model.config.num_classes == 3
    assert len(model.encoder.layers) == 1


def test_patch_dropout_keeps_the_class_token_and_a_random_subset_in_training_only():
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=28, patch_size=4, in_channels=1, num_classes=10, hidden_dim=32,
                          mlp_dim=64, num_layers=1, num_heads=2, patch_dropout=0.5))
    images = torch.randn(3, 1, 28, 28)
    model.eval()
    full = model.embed(images)  # (3, 50, 32)
    assert full.shape == (3, 50, 32)
    model.train()
    kept = model.embed(images)  # (3, 1 + 24, 32): round(49 * 0.5) = 24 patches stay
    assert kept.shape == (3, 25, 32)
    torch.testing.assert_close(kept[:, 0], full[:, 0])  # the class token is always kept
    for b in range(3):  # every kept token is one of the image's own tokens, each at most once
        distances = (kept[b, 1:, None, :] - full[b, None, 1:, :]).abs().amax(dim=-1)  # (24, 49)
        matches = distances.argmin(dim=1)
        assert distances.min(dim=1).values.max() < 1e-6
        assert len(set(matches.tolist())) == 24
    assert model(images).shape == (3, 10)  # the head still reads the class token


def test_patch_dropout_must_be_a_fraction():
    with pytest.raises(ValueError, match="patch_dropout must be in"):
        ViTConfig(patch_dropout=1.0)


@pytest.mark.parametrize("fused", [True, False])
def test_last_layer_for_the_class_token_only_equals_the_full_stack(fused):
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=28, patch_size=4, in_channels=1, num_classes=10, hidden_dim=32,
                          mlp_dim=64, num_layers=3, num_heads=4))
    model.set_fused_attention(fused)
    images = torch.randn(5, 1, 28, 28)
    z0 = model.embed(images)  # (5, 50, 32)
    full = model.encoder(z0)  # (5, 50, 32)
    torch.testing.assert_close(model.encoder.forward_class_token(z0), full[:, :1], rtol=1e-5, atol=1e-6)
    # and the logits, with their gradients, are those of the full computation of eq. 4
    logits = model(images)
    reference = model.head(model.norm(full[:, 0]))
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-6)
    fast = torch.autograd.grad(logits.square().sum(), list(model.parameters()), allow_unused=True)
    slow = torch.autograd.grad(model.head(model.norm(model.encoder(model.embed(images))[:, 0])).square().sum(),
                               list(model.parameters()), allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
