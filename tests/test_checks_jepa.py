"""Week 12 checks pass on right code and fail, with expected / got / hint, on the classic mistakes; vitlib.jepa itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from check_helpers import expect_failure as _fails
from check_helpers import stub as _stub

from vitlib import jepa
from vitlib.checks.jepa import check_ema_update, check_jepa_loss, check_multi_block_mask
from vitlib.configs import create_vit

# --- multi_block_mask -----------------------------------------------------------------------------


def test_multi_block_mask_passes_on_the_reference(capsys):
    check_multi_block_mask(jepa.multi_block_mask)
    assert capsys.readouterr().out.startswith("✓ multi_block_mask: 28 draws")


def _mask(*, keep_targets=False, fixed=False, same_place=False, target_size_per_block=False, scattered=False,
          context_scale_for_targets=False, unsorted=False):
    def sampler(grid, num_targets=4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0)):
        generator = torch.Generator().manual_seed(0) if fixed else None
        scale = context_scale if context_scale_for_targets else target_scale
        h, w = jepa.block_size(grid, scale, target_aspect, generator)
        blocks = []
        for i in range(num_targets):
            if target_size_per_block and i:
                h, w = (h + 1, w) if h + 1 < grid else (h - 1, w)
            if same_place and blocks:
                blocks.append(blocks[0])
                continue
            top, left = (int(torch.randint(0, grid - n + 1, (1,), generator=generator)) for n in (h, w))
            blocks.append(jepa.block_indices(top, left, h, w, grid))
        hidden = torch.zeros(grid * grid, dtype=torch.bool)
        for b in blocks:
            hidden[b] = True
        if scattered:
            context = (~hidden).nonzero().flatten()
        else:
            ch, cw = jepa.block_size(grid, context_scale, (1.0, 1.0), generator)
            top, left = (int(torch.randint(0, grid - n + 1, (1,), generator=generator)) for n in (ch, cw))
            block = jepa.block_indices(top, left, ch, cw, grid)
            context = block if keep_targets else block[~hidden[block]]
        if unsorted:
            context = context.flip(0)
        targets = torch.stack(blocks) if not target_size_per_block else blocks
        return context, targets

    return sampler


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_mask(keep_targets=True), r"remove every target patch from the context"),
        (_mask(fixed=True), r"no fixed seed inside"),
        (_mask(same_place=True), r"a new top-left corner for every block"),
        (_mask(context_scale_for_targets=True), r"draw the size ONCE, with jepa.block_size\(grid, target_scale"),
        (_mask(scattered=True), r"one block with jepa.block_size\(grid, context_scale"),
        (_mask(unsorted=True), r"context.sort\(\).values"),
        (lambda grid, **o: jepa.multi_block_mask(grid, **o)[0], r"return both"),
        (lambda grid, **o: (jepa.multi_block_mask(grid, **o)[0].float(), jepa.multi_block_mask(grid, **o)[1]), r"torch.long"),
        (lambda grid, num_targets=4, **o: jepa.multi_block_mask(grid, max(1, num_targets - 1), **o), r"draw num_targets blocks"),
    ],
)
def test_multi_block_mask_mistakes(wrong, hint):
    _fails(check_multi_block_mask, wrong, hint)


def test_multi_block_mask_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_multi_block_mask(_stub)


def test_blocks_follow_the_papers_ranges_on_a_7_by_7_grid():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        context, targets = jepa.multi_block_mask(7, generator=generator)
        assert targets.shape[0] == 4 and 4 <= targets.shape[1] <= 12  # 0.15-0.2 of 49 patches, rounded to a block
        assert not set(context.tolist()) & set(targets.flatten().tolist())
        assert len(context) >= 1 and context.tolist() == sorted(context.tolist())
    assert jepa.block_indices(1, 2, 2, 3, 7).tolist() == [9, 10, 11, 16, 17, 18]
    assert jepa.size_at(7, (0.85, 1.0), (1.0, 1.0), 1.0, 0.5) == (6, 6)  # never the whole grid


# --- ema_update -----------------------------------------------------------------------------------


def test_ema_update_passes_on_the_reference(capsys):
    check_ema_update(jepa.ema_update)
    assert capsys.readouterr().out.startswith("✓ ema_update: in place")


def _swapped(target, online, momentum):
    with torch.no_grad():
        for bar, theta in zip(target.parameters(), online.parameters()):
            bar.copy_((1 - momentum) * bar + momentum * theta)


def _with_graph(target, online, momentum):
    for bar, theta in zip(target.parameters(), online.parameters()):
        bar.mul_(momentum).add_(theta, alpha=1 - momentum)  # no torch.no_grad(): autograd records it


def _rebinds(target, online, momentum):
    for bar, theta in zip(target.parameters(), online.parameters()):
        bar = momentum * bar + (1 - momentum) * theta  # noqa: F841 (the classic mistake: a new tensor)


def _copies(target, online, momentum):
    target.load_state_dict(online.state_dict())


def _moves_online(target, online, momentum):
    jepa.ema_update(online, target, momentum)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_swapped, r"the weights are swapped"),
        (_with_graph, r"torch.no_grad\(\)"),
        (_rebinds, r"assigning to the loop variable changes nothing"),
        (_copies, r"that copies the context encoder"),
        (_moves_online, r"update the FIRST argument"),
    ],
)
def test_ema_update_mistakes(wrong, hint):
    _fails(check_ema_update, wrong, hint)


def test_ema_update_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_ema_update(_stub)


def test_momentum_rises_linearly_to_one():
    assert jepa.momentum_at(0, 100) == 0.996 and jepa.momentum_at(100, 100) == 1.0
    assert math.isclose(jepa.momentum_at(50, 100, 0.99, 1.0), 0.995)


# --- jepa_loss ------------------------------------------------------------------------------------


def test_jepa_loss_passes_on_the_reference(capsys):
    check_jepa_loss(jepa.jepa_loss)
    assert capsys.readouterr().out.startswith("✓ jepa_loss: matches vitlib")


def _norm(t):
    return F.layer_norm(t, t.shape[-1:])


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda p, t, ids: ((p - t.detach()[:, ids]) ** 2).mean(), r"not layer-normalised"),
        (lambda p, t, ids: ((p - _norm(t)[:, ids]) ** 2).mean(), r"detach the targets"),
        (lambda p, t, ids: ((p - _norm(t.detach())[:, ids]) ** 2).sum(-1).mean(), r"summed over the features"),
        (lambda p, t, ids: ((p - _norm(t.detach())[:, ids]) ** 2).sum(-1).sqrt().mean(), r"not squared"),
        (lambda p, t, ids: (p - _norm(t.detach())[:, ids]).abs().mean(), r"absolute error"),
        (lambda p, t, ids: ((_norm(p) - _norm(t.detach())[:, ids]) ** 2).mean(), r"the predictions are normalised too"),
        # over all patches: a prediction per block compared with every patch's target
        (lambda p, t, ids: ((p.mean(2, keepdim=True) - _norm(t.detach()).unsqueeze(1)) ** 2).mean(), r"target patches only"),
        (lambda p, t, ids: ((p.detach() - _norm(t.detach())[:, ids]) ** 2).mean(), r"backpropagates into the predictions"),
    ],
)
def test_jepa_loss_mistakes(wrong, hint):
    _fails(check_jepa_loss, wrong, hint)


def test_jepa_loss_without_the_targets_selected_says_where_they_are():
    from vitlib.checks import CheckFailed

    with pytest.raises(CheckFailed, match=r"raised RuntimeError(.|\n)*hint: +take the targets at the target patches first: s\[:, target_ids\]"):
        check_jepa_loss(lambda p, t, ids: ((p - _norm(t.detach())) ** 2).mean())


def test_jepa_loss_stub():
    with pytest.raises(NotImplementedError, match="not written yet"):
        check_jepa_loss(_stub)


# --- the model ------------------------------------------------------------------------------------


def _small():
    torch.manual_seed(0)
    return jepa.IJEPA(create_vit("vit_course_28", num_layers=1, hidden_dim=32, mlp_dim=64, num_heads=2))


def test_the_target_encoder_gets_no_gradient_and_follows_by_ema():
    model = _small()
    images = torch.randn(4, 1, 28, 28)
    context, targets = model.sample_masks(torch.Generator().manual_seed(0))
    loss = model(images, context, targets)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert model.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    before = [p.clone() for p in model.target.parameters()]
    jepa.ema_update(model.target, model.vit, 0.5)  # equal weights so far: the EMA keeps them equal
    assert all(torch.equal(a, b) for a, b in zip(before, model.target.parameters()))


def test_the_predictor_predicts_each_block_from_the_context_alone():
    model = _small().eval()
    context = torch.randn(2, 5, 32)  # (B, N_c, D)
    ids, one = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([[10, 11, 17, 18]])
    both = torch.tensor([[10, 11, 17, 18], [30, 31, 37, 38]])
    alone = model.predictor(context, ids, one)  # (2, 1, 4, 32)
    together = model.predictor(context, ids, both)  # (2, 2, 4, 32)
    assert together.shape == (2, 2, 4, 32)
    assert torch.allclose(alone[:, 0], together[:, 0], atol=1e-6)  # block 0 does not see block 1's mask tokens


def test_pretraining_lowers_the_loss_and_records_the_spread():
    model = _small()
    images = (torch.rand(64, 1, 28, 28) * 255).to(torch.uint8)
    history = jepa.pretrain_ijepa(model, images, lambda x: x.float() / 255, epochs=2, batch_size=16, seed=0,
                                  watch=images[:16].float() / 255, progress=False)
    assert len(history["loss"]) == 2 and len(history["spread"]) == 3
    assert all(s > 0 for s in history["spread"])
    assert not any(p.requires_grad for p in model.target.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(model.target.parameters(), model.vit.parameters()))
    features = jepa.pooled_features(model.target, images[:10], lambda x: x.float() / 255)
    assert features.shape == (10, 32)
