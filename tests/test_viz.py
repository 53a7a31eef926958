"""vitlib.viz: the numbers behind week 06's pictures (Figures 6 and 7 of the paper)."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from vitlib import viz
from vitlib.configs import create_vit

matplotlib.use("Agg")


def small_vit(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = create_vit("vit_course_28", **{**dict(patch_size=7, hidden_dim=32, num_layers=3, num_heads=4, mlp_dim=64), **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_attention_maps_are_post_softmax_rows_of_every_layer_and_head():
    model = small_vit(dropout=0.1, attention_dropout=0.1, patch_dropout=0.5).train()
    maps = viz.attention_maps(model, images())
    assert len(maps) == 3 and all(a.shape == (4, 4, 17, 17) for a in maps)  # all 16 patches: eval mode
    for a in maps:
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(dim=-1), torch.ones(4, 4, 17))  # rows sum to 1
    assert model.training  # the caller's mode is restored
    assert all(torch.equal(a, b) for a, b in zip(maps, viz.attention_maps(model, images())))  # no dropout


def test_attention_maps_equal_eq_6_written_out_by_hand():
    model = small_vit().eval()
    x = images()
    with torch.no_grad():
        z = model.embed(x)
        for block, a in zip(model.encoder.layers, viz.attention_maps(model, x)):
            qkv = block.attn.qkv(block.norm1(z)).reshape(4, 17, 3, 4, 8).permute(2, 0, 3, 1, 4)  # (3, B, h, N+1, D_h)
            expected = (qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(8)).softmax(dim=-1)
            torch.testing.assert_close(a, expected, atol=1e-6, rtol=1e-5)
            z = block(z)


def test_rollout_equals_the_formula_on_a_hand_made_example():
    # layer 1: heads [[1, 0], [.5, .5]] and [[0, 1], [.5, .5]] -> mean [[.5, .5], [.5, .5]]; + I, renormalised: [[.75, .25], [.25, .75]]
    # layer 2: both heads [[1, 0], [1, 0]] -> + I: [[2, 0], [1, 1]] -> [[1, 0], [.5, .5]]
    # rollout = layer 2 @ layer 1 = [[.75, .25], [.5, .5]]
    layer1 = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]]])  # (1, 2 heads, 2, 2)
    layer2 = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]]])
    rollout = viz.attention_rollout([layer1, layer2])
    torch.testing.assert_close(rollout, torch.tensor([[[0.75, 0.25], [0.5, 0.5]]]))
    torch.testing.assert_close(viz.attention_rollout([layer1]), torch.tensor([[[0.75, 0.25], [0.25, 0.75]]]))


def test_rollout_rows_sum_to_one_and_identity_attention_rolls_out_to_identity():
    maps = viz.attention_maps(small_vit(), images(2))
    rollout = viz.attention_rollout(maps)
    assert rollout.shape == (2, 17, 17)
    torch.testing.assert_close(rollout.sum(dim=-1), torch.ones(2, 17))
    eye = torch.eye(5).expand(1, 3, 5, 5)
    torch.testing.assert_close(viz.attention_rollout([eye, eye]), torch.eye(5).expand(1, 5, 5))


@pytest.mark.parametrize("bad", [[], torch.ones(1, 2, 3, 3), [torch.ones(1, 2, 3, 4)], [torch.ones(1, 2, 3, 3), torch.ones(1, 2, 4, 4)]])
def test_rollout_rejects_what_is_not_a_stack_of_maps(bad):
    with pytest.raises(ValueError, match="attention map"):
        viz.attention_rollout(bad)


def test_position_similarity_is_the_cosine_of_the_patch_embeddings():
    pos = torch.randn(1, 17, 8) * torch.rand(1, 17, 1).add(0.1)
    sim = viz.position_similarity(pos)
    assert sim.shape == (16, 16)  # the class token is dropped
    torch.testing.assert_close(sim.diagonal(), torch.ones(16))
    torch.testing.assert_close(sim, sim.T)
    torch.testing.assert_close(sim[2, 5], torch.nn.functional.cosine_similarity(pos[0, 3], pos[0, 6], dim=0))
    torch.testing.assert_close(viz.position_similarity(pos * 7.0), sim)  # lengths don't matter
    torch.testing.assert_close(viz.position_similarity(pos[0]), sim)  # (N+1, D) works too


def test_mean_attention_distance_in_pixels():
    n = 16
    to_self = torch.eye(n + 1).expand(2, 3, n + 1, n + 1)  # every token attends to itself only
    torch.testing.assert_close(viz.mean_attention_distance(to_self, 7), torch.zeros(3))
    uniform = torch.full((2, 3, n + 1, n + 1), 1.0 / (n + 1))
    expected = viz.patch_distances(4, 7).mean()  # uniform over the patches: the mean distance of the grid
    torch.testing.assert_close(viz.mean_attention_distance(uniform, 7), expected.expand(3))
    torch.testing.assert_close(viz.mean_attention_distance(uniform, 14), 2 * expected.expand(3))
    assert viz.patch_distances(4, 7)[0, 15].item() == pytest.approx(7 * math.sqrt(18))  # corner to corner
    with pytest.raises(ValueError, match="one layer"):
        viz.mean_attention_distance(torch.ones(3, 5, 5), 7)


def test_embedding_filter_components_are_orthonormal_filters_sorted_by_variance():
    model = small_vit()
    components, variance = viz.embedding_filter_components(model, k=10)
    assert components.shape == (10, 1, 7, 7)
    flat = components.flatten(1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(10), atol=1e-5, rtol=0)
    assert (variance[:-1] >= variance[1:]).all() and 0 < variance.sum() <= 1 + 1e-6


def test_class_token_features_and_knn_accuracy():
    model = small_vit(dropout=0.2).train()
    x = images(6)
    features = viz.class_token_features(model, x, batch_size=4)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(features, model.forward_features(x))
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 5
    labels = torch.arange(3).repeat_interleave(20)
    points = centres[labels] + torch.randn(60, 16, generator=g) * 0.1
    assert viz.knn_accuracy(points, labels, points + 0.01, labels, k=5) == 1.0
    assert viz.knn_accuracy(points, labels, points, labels.roll(20), k=5) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        viz.knn_accuracy(points, labels, points, labels, k=0)


def test_drawn_maps_come_from_the_drawn_images():
    """The published mistake: maps computed from random input drawn over a real image. A record
    keeps images and maps together, and the plots draw the record's own image under its own map."""
    import matplotlib.pyplot as plt

    model = small_vit()
    x = images(3)
    record = viz.record_attention(model, x)
    assert torch.equal(record.images, x)
    for mine, expected in zip(record.maps, viz.attention_maps(model, x)):
        torch.testing.assert_close(mine, expected)
    ax = viz.plot_attention(record, index=2, layer=1, head=3)
    drawn, heat = ax.get_images()
    torch.testing.assert_close(torch.as_tensor(drawn.get_array()), viz.to_display(x[2]))
    expected_heat = viz.class_token_grid(viz.attention_maps(model, x[2:3])[1][:, 3, 0])[0]
    torch.testing.assert_close(torch.as_tensor(heat.get_array()), expected_heat, atol=1e-6, rtol=1e-5)
    fig = viz.plot_rollout(record, [0, 2], class_names=[str(i) for i in range(10)])
    top = [ax.get_images()[0].get_array() for ax in fig.axes[:2]]
    for shown, i in zip(top, [0, 2]):
        torch.testing.assert_close(torch.as_tensor(shown), viz.to_display(x[i]))
    rollout = viz.attention_rollout(viz.attention_maps(model, x[2:3]))
    torch.testing.assert_close(torch.as_tensor(fig.axes[3].get_images()[1].get_array()),
                               viz.class_token_grid(rollout[:, 0])[0], atol=1e-6, rtol=1e-5)
    plt.close("all")
