"""Week 09 checks pass on right code and fail, with expected / got / hint, on the classic mistakes; vitlib.mae itself."""

from __future__ import annotations

import pytest
import torch
from check_helpers import expect_failure as _fails
from check_helpers import stub as _stub

from vitlib.checks.mae import check_mae_loss, check_patch_targets, check_random_masking
from vitlib.configs import create_vit
from vitlib.data import eval_transform, load_dataset
from vitlib.mae import MAEConfig, MaskedAutoencoder, mae_loss, patch_targets, random_masking
from vitlib.patching import patchify

# --- random_masking -------------------------------------------------------------------------------


def test_random_masking_passes_on_the_reference(capsys):
    check_random_masking(random_masking)
    assert capsys.readouterr().out.startswith("✓ random_masking: 3 batches")


def _masking(*, invert=False, same_for_all=False, restore_is_shuffle=False, shuffled_mask=False, keep_hidden=False,
             fixed_seed=False):
    def masking(x, mask_ratio):
        B, N, D = x.shape
        K = round(N * (1 - mask_ratio))
        generator = torch.Generator().manual_seed(0) if fixed_seed else None
        noise = torch.rand(1 if same_for_all else B, N, generator=generator).expand(B, N)
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle if restore_is_shuffle else ids_shuffle.argsort(dim=1)
        keep = ids_shuffle[:, K:] if keep_hidden else ids_shuffle[:, :K]
        visible = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(B, N)
        mask[:, :K] = 0
        if not shuffled_mask:
            mask = mask.gather(1, ids_shuffle.argsort(dim=1))
        return visible, (1 - mask if invert else mask), ids_restore

    return masking


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_masking(invert=True), r"1 where a patch is HIDDEN"),
        (_masking(same_for_all=True), r"draw the noise per image"),
        (_masking(restore_is_shuffle=True), r"argsort a second time"),
        (_masking(shuffled_mask=True), r"ORIGINAL order"),
        (_masking(keep_hidden=True), r"keep K = round"),
        (_masking(fixed_seed=True), r"draw fresh noise every call"),
        (lambda x, r: (x[:, : round(x.shape[1] * (1 - r))] + 1, *random_masking(x, r)[1:]), r"gather the tokens"),
        (lambda x, r: random_masking(x, r)[0], r"return all three"),
    ],
)
def test_random_masking_mistakes(wrong, hint):
    _fails(check_random_masking, wrong, hint)


def test_random_masking_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_random_masking(_stub)


def test_random_masking_puts_tokens_back_in_order():
    x = torch.randn(5, 20, 3)
    visible, mask, ids_restore = random_masking(x, 0.75)
    B, K, D = visible.shape
    filler = torch.zeros(B, 20 - K, D)
    restored = torch.cat([visible, filler], dim=1).gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, D))
    assert torch.equal(restored * (1 - mask).unsqueeze(-1), x * (1 - mask).unsqueeze(-1))
    assert (mask.sum(1) == 15).all()


# --- patch_targets --------------------------------------------------------------------------------


def test_patch_targets_passes_on_the_reference(capsys):
    check_patch_targets(patch_targets)
    assert capsys.readouterr().out == "✓ patch_targets: matches vitlib on 2 batches\n"


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda images, P: patchify(images, P), r"no normalisation"),
        (lambda images, P: (patchify(images, P) - patchify(images, P).mean()) / (patchify(images, P).var() + 1e-6).sqrt(),
         r"whole image"),
        (lambda images, P: patchify(images, P) - patchify(images, P).mean(-1, keepdim=True), r"only the mean"),
        (lambda images, P: (lambda t: (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt())(
            patchify(images, P)), r"biased variance"),
        (lambda images, P: (lambda t: (t - t.mean(1, keepdim=True)) / (t.var(1, keepdim=True) + 1e-6).sqrt())(patchify(images, P)),
         r"dim=1"),
        (lambda images, P: images, r"patchify first"),
    ],
)
def test_patch_targets_mistakes(wrong, hint):
    _fails(check_patch_targets, wrong, hint)


def test_patch_targets_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_patch_targets(_stub)


# --- mae_loss -------------------------------------------------------------------------------------


def test_mae_loss_passes_on_the_reference(capsys):
    check_mae_loss(mae_loss)
    assert capsys.readouterr().out == "✓ mae_loss: matches vitlib: the squared error on masked patches only\n"


def _per_patch(pred, target):
    return ((pred - target) ** 2).mean(-1)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda p, t, m: _per_patch(p, t).mean(), r"over every patch"),
        (lambda p, t, m: (_per_patch(p, t) * (1 - m)).sum() / (1 - m).sum(), r"VISIBLE patches"),
        (lambda p, t, m: (_per_patch(p, t) * m).sum() / m.numel(), r"divide by mask.sum\(\)"),
        (lambda p, t, m: (_per_patch(p, t) * m).sum(), r"summed, not averaged"),
        (lambda p, t, m: ((_per_patch(p, t) * m).sum(1) / m.sum(1)).mean(), r"averaged per image first"),
        (lambda p, t, m: (((p - t) ** 2).sum(-1) * m).sum() / m.sum(), r"MEAN of its squared differences"),
        (lambda p, t, m: ((p - t).abs().mean(-1) * m).sum() / m.sum(), r"squared error"),
        (lambda p, t, m: _per_patch(p, t) * m, r"a single number"),
    ],
)
def test_mae_loss_mistakes(wrong, hint):
    _fails(check_mae_loss, wrong, hint)


def test_mae_loss_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_mae_loss(_stub)


# --- the model ------------------------------------------------------------------------------------


def test_the_encoder_sees_only_the_visible_patches_and_learns():
    torch.manual_seed(0)
    vit = create_vit("vit_course_28", num_layers=2)
    mae = MaskedAutoencoder(vit, MAEConfig(decoder_layers=1))
    test = load_dataset("fashion-mnist-small", "test")
    images = eval_transform(test)(test.images[:8])  # (8, 1, 28, 28): real garments, learnable
    latent, mask, _ = mae.forward_encoder(images, 0.75)
    assert latent.shape == (8, 1 + 12, 128) and (mask.sum(1) == 37).all()
    optimizer = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    first = None
    for _ in range(30):
        loss, pred, mask = mae(images, generator)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert pred.shape == (8, 49, 16) and loss.item() < 0.8 * first
    masked, recon, pasted, mask = mae.reconstruct(images)
    visible = (1 - mask).bool()
    assert masked.shape == recon.shape == pasted.shape == images.shape
    assert torch.allclose(patchify(pasted, 4)[visible], patchify(images, 4)[visible])
