"""vitlib.transfer: open-set labels and splits, MSP, AUROC, linear probes and fine-tuning (week 07)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from vitlib.augment import BatchTransform
from vitlib.configs import create_vit
from vitlib.train import TrainConfig
from vitlib.transfer import (
    OpenSetSplit,
    auroc,
    extract_features,
    fine_tune,
    max_softmax_probability,
    open_set_labels,
    other_class_score,
    predict_logits,
    prepare_fine_tuning,
    prepare_linear_probe,
    roc_curve,
    select_images,
    train_linear_probe,
)


def _tiny_vit(seed: int = 0, num_classes: int = 10):
    torch.manual_seed(seed)
    model = create_vit("vit_course_28", patch_size=7, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
                       num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


_PREPROCESS = BatchTransform((0.286,), (0.353,))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second thread only adds waiting (40 times slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- AUROC and the ROC curve --------------------------------------------------------------------------


def test_auroc_by_hand_with_ties():
    # pairs known > unknown: 0.9 beats all 3; each 0.8 beats 0.4 and 0.1 and ties 0.8 (½); 0.3 beats 0.1
    # -> (3 + 2.5 + 2.5 + 1) / 12 = 0.75
    assert auroc(torch.tensor([0.9, 0.8, 0.8, 0.3]), torch.tensor([0.8, 0.4, 0.1])) == pytest.approx(0.75, abs=1e-12)


def test_auroc_extremes_and_orientation():
    high, low = torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0])
    assert auroc(high, low) == 1.0
    assert auroc(low, high) == 0.0
    assert auroc(torch.full((4,), 0.7), torch.full((9,), 0.7)) == 0.5  # all tied: a coin flip


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [True, False])
def test_auroc_equals_sklearn(seed, ties):
    g = torch.Generator().manual_seed(seed)
    known = torch.rand(300, generator=g) + 0.2
    unknown = torch.rand(170, generator=g)
    if ties:
        known, unknown = (known * 8).round() / 8, (unknown * 8).round() / 8
    truth = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    expected = roc_auc_score(truth, np.r_[known.numpy(), unknown.numpy()])
    assert auroc(known, unknown) == pytest.approx(expected, abs=1e-12)


def test_auroc_equals_the_pairwise_mann_whitney_form():
    g = torch.Generator().manual_seed(4)
    known, unknown = torch.randint(0, 6, (57,), generator=g).float(), torch.randint(0, 6, (31,), generator=g).float()
    k, u = known[:, None], unknown[None, :]
    pairwise = ((k > u).double() + 0.5 * (k == u).double()).mean().item()
    assert auroc(known, unknown) == pytest.approx(pairwise, abs=1e-12)


def test_auroc_refuses_empty_or_nan():
    with pytest.raises(ValueError, match="both kinds"):
        auroc(torch.tensor([]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="finite"):
        auroc(torch.tensor([float("nan")]), torch.tensor([0.5]))


def test_roc_curve_runs_from_0_to_1_and_its_area_is_the_auroc():
    g = torch.Generator().manual_seed(5)
    known, unknown = (torch.rand(80, generator=g) * 6).round(), (torch.rand(60, generator=g) * 5).round()
    fpr, tpr = roc_curve(known, unknown)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (fpr.diff() >= 0).all() and (tpr.diff() >= 0).all()
    assert torch.trapezoid(tpr, fpr).item() == pytest.approx(auroc(known, unknown), abs=1e-12)


# --- scores ---------------------------------------------------------------------------------------------


def test_msp_is_the_largest_probability_and_stable():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]])
    msp = max_softmax_probability(logits)
    assert msp.shape == (3,)
    assert msp[0].item() == pytest.approx(np.exp(2) / (np.exp(2) + 2), abs=1e-6)
    assert msp[1].item() == pytest.approx(1 / 3)
    assert msp[2].item() == 1.0  # no overflow
    random = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) * 5
    assert ((max_softmax_probability(random) >= 0.25 - 1e-6) & (max_softmax_probability(random) <= 1)).all()


def test_other_class_score_is_one_minus_p_other():
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 10.0]])
    score = other_class_score(logits)
    assert score[0].item() == pytest.approx(2 / 3)
    assert score[1].item() < 1e-3


# --- the open-set task ------------------------------------------------------------------------------------


def test_open_set_labels_example():
    labels = torch.tensor([7, 2, 4, 9, 0, 1, 3, 7, 5, 6, 8, 2])
    before = labels.clone()
    new = open_set_labels(labels, known=(7, 2), other=(4, 9))
    assert new.tolist() == [0, 1, 2, 2, -1, -1, -1, 0, -1, -1, -1, 1]
    assert new.dtype == torch.long
    assert torch.equal(labels, before)  # the input is left alone


def test_split_never_tests_other_on_classes_it_trained_on():
    split = OpenSetSplit(known=(2, 7), other=(4, 5, 1))
    assert split.unseen == (0, 3, 6, 8, 9)
    assert not set(split.unseen) & set(split.other) and not set(split.unseen) & set(split.known)
    labels = torch.arange(10).repeat_interleave(20)  # (200,) twenty images of each class
    test = select_images(labels, split.unseen)
    assert set(labels[test].tolist()) == set(split.unseen)
    assert (open_set_labels(labels[test], split.known, split.other) == -1).all()  # no model trained on these
    train = select_images(labels, split.known + split.other)
    assert not set(labels[train].tolist()) & set(split.unseen)


@pytest.mark.parametrize(
    "known, other, match",
    [((2, 7), (7, 4), "distinct"), ((), (1,), "known"), ((2, 7), tuple(c for c in range(10) if c not in (2, 7)), "unseen"),
     ((2, 11), (1,), "0..9")],
)
def test_split_refuses_bad_choices(known, other, match):
    with pytest.raises(ValueError, match=match):
        OpenSetSplit(known, other)


def test_select_images_per_class_is_seeded_and_sorted():
    labels = torch.arange(10).repeat(30)  # (300,)
    a = select_images(labels, (3, 5), per_class=7, seed=1)
    assert len(a) == 14 and (labels[a] == 3).sum() == 7 and (labels[a] == 5).sum() == 7
    assert torch.equal(a, a.sort().values)
    assert torch.equal(a, select_images(labels, (3, 5), per_class=7, seed=1))
    assert not torch.equal(a, select_images(labels, (3, 5), per_class=7, seed=2))
    assert len(select_images(labels, (3,))) == 30


# --- linear probe and fine-tuning ---------------------------------------------------------------------------


def test_prepare_linear_probe_freezes_all_but_a_zero_head():
    model = _tiny_vit()
    probe = prepare_linear_probe(model, 3)
    assert probe is model
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert probe.head.weight.shape == (3, 16) and probe.head.weight.abs().sum() == 0 and probe.head.bias.abs().sum() == 0
    assert probe.config.num_classes == 3


def test_linear_probe_training_leaves_the_backbone_untouched():
    model = _tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    probe = prepare_linear_probe(model, 2)
    images = _images(64)
    labels = torch.arange(64) % 2
    features = extract_features(probe, images, _PREPROCESS, batch_size=20, progress=False)
    train_linear_probe(probe.head, features, labels, TrainConfig(epochs=3, batch_size=16, lr=1e-2, progress=False))
    after = probe.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert probe.head.weight.abs().sum() > 0  # the head learned
    # training the head on cached features is training the probe model: same logits either way
    assert torch.allclose(predict_logits(probe, images, _PREPROCESS), predict_logits(probe.head, features), atol=1e-5)


def test_train_linear_probe_learns_a_separable_problem_reproducibly():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(200, 8, generator=g)
    labels = (features[:, 0] + features[:, 1] > 0).long()
    config = TrainConfig(epochs=30, batch_size=32, lr=5e-2, weight_decay=0.0, label_smoothing=0.0, progress=False)
    heads = []
    for _ in range(2):
        torch.manual_seed(0)
        head = torch.nn.Linear(8, 2)
        history = train_linear_probe(head, features, labels, config)
        heads.append(head)
    assert history["epoch_loss"][-1] < history["epoch_loss"][0]
    assert (predict_logits(heads[0], features).argmax(-1) == labels).float().mean() > 0.97
    assert torch.equal(heads[0].weight, heads[1].weight)  # seeded: the same head twice
    with pytest.raises(ValueError, match="unseen"):
        train_linear_probe(torch.nn.Linear(8, 2), features, labels - 1, config)


def test_extract_features_matches_forward_features_in_any_batch_size():
    model = _tiny_vit()
    images = _images(37)
    model.train()
    a = extract_features(model, images, _PREPROCESS, batch_size=8, progress=False)
    assert not model.training
    b = extract_features(model, images, _PREPROCESS, batch_size=64, progress=False)
    with torch.no_grad():
        direct = model.forward_features(_PREPROCESS(images))
    assert a.shape == (37, 16) and torch.allclose(a, b, atol=1e-6) and torch.allclose(a, direct, atol=1e-6)


def test_prepare_fine_tuning_trains_everything_with_a_zero_head():
    model = prepare_linear_probe(_tiny_vit(), 5)  # even a frozen model
    tuned = prepare_fine_tuning(model, 3)
    assert all(p.requires_grad for p in tuned.parameters())
    assert tuned.head.out_features == 3 and tuned.head.weight.abs().sum() == 0 and tuned.config.num_classes == 3


@pytest.mark.parametrize("preprocess", [_PREPROCESS, lambda x: _PREPROCESS(x)], ids=["in-memory", "per-image"])
def test_fine_tune_changes_the_backbone_and_learns(preprocess):
    original = _tiny_vit()
    model = prepare_fine_tuning(copy.deepcopy(original), 2)
    images, labels = _images(64, seed=1), torch.arange(64) % 2
    images[labels == 1] //= 4  # class 1 is darker: something to learn
    config = TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup_epochs=0.5, label_smoothing=0.0, progress=False, device="cpu")
    history = fine_tune(model, images, labels, images[:32], labels[:32], preprocess, config)
    assert history["test_accuracy"][-1] > 0.9
    changed = [k for k, v in original.state_dict().items() if not k.startswith("head.") and not torch.equal(v, model.state_dict()[k])]
    assert changed  # all weights learn
