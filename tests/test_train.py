"""vitlib.train: schedule, optimizer groups, learning, determinism and exact resumption.

Everything runs on tiny models and a few hundred synthetic 28×28 images.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from vitlib.checkpoint import load_checkpoint
from vitlib.configs import create_vit
from vitlib.train import (
    HISTORY_KEYS, TrainConfig, gradient_groups, lr_at, make_optimizer, parameter_groups, select_device, train,
)

TINY = dict(num_layers=1, hidden_dim=32, num_heads=2, mlp_dim=64)


def tiny_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_vit("vit_course_28", **{**TINY, "num_classes": 2, **overrides})


def brightness_data(n: int = 256, seed: int = 0) -> TensorDataset:
    """Two classes told apart by mean brightness: dark (0) or bright (1) noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.rand(n, 1, 28, 28, generator=g) * 0.6 + 0.4 * labels.view(-1, 1, 1, 1).float()
    return TensorDataset((images - 0.5) / 0.3, labels)


class NoisyData(Dataset):
    """A random "augmentation" drawn from the global torch RNG, as torchvision's transforms do."""

    def __init__(self, base: Dataset, fail_at: int | None = None) -> None:
        self.base, self.fail_at, self.calls = base, fail_at, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt  # test-only: simulates Ctrl-C in the middle of an epoch
        image, label = self.base[index]
        return image + 0.1 * torch.randn_like(image), int(label)


def quick(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 32, "warmup_epochs": 0.5, "progress": False,
                          "device": "cpu", **overrides})


# --- schedule and optimizer --------------------------------------------------


def test_lr_warmup_then_cosine():
    total, warmup, base, low = 100, 10, 1e-3, 1e-5
    assert lr_at(0, total, warmup, base, low) == pytest.approx(base / warmup)  # ~0 at the start
    assert lr_at(4, total, warmup, base, low) == pytest.approx(base * 5 / warmup)  # linear
    assert lr_at(warmup - 1, total, warmup, base, low) == pytest.approx(base)  # peak after warm-up
    assert lr_at(warmup, total, warmup, base, low) == pytest.approx(base)  # the cosine starts at the peak
    assert lr_at(55, total, warmup, base, low) == pytest.approx((base + low) / 2)  # half-way down
    assert lr_at(total, total, warmup, base, low) == pytest.approx(low)
    assert lr_at(total + 5, total, warmup, base, low) == pytest.approx(low)  # stays at min_lr
    values = [lr_at(s, total, warmup, base, low) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_lr_without_warmup_starts_at_the_peak():
    assert lr_at(0, 10, 0, 1e-3, 0.0) == pytest.approx(1e-3)
    assert lr_at(5, 10, 0, 1e-3, 0.0) == pytest.approx(0.5e-3)


def test_no_weight_decay_on_biases_norms_class_token_and_positions():
    model = tiny_model()
    decay, no_decay = parameter_groups(model, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): name for name, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert decayed | not_decayed == set(names.values()) and not decayed & not_decayed
    assert {"class_token", "pos_embedding", "head.bias", "norm.weight", "norm.bias"} <= not_decayed
    assert {"head.weight", "patch_embed.proj.weight"} <= decayed
    for name, param in model.named_parameters():
        assert (name in decayed) == (param.ndim >= 2 and name not in {"class_token", "pos_embedding"}), name


def test_optimizer_is_adamw_with_both_groups():
    optimizer = make_optimizer(tiny_model(), quick(weight_decay=0.1))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


# --- configuration and devices -----------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("epochs", 2.5), ("batch_size", 0), ("eval_batch_size", -1), ("lr", 0.0),
    ("lr", float("nan")), ("weight_decay", -0.1), ("warmup_epochs", -1.0), ("min_lr", 1.0),
    ("label_smoothing", 1.0), ("grad_clip", -1.0), ("seed", -1), ("num_workers", -2), ("amp", "yes"),
])
def test_invalid_train_config_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_train_config_round_trips_through_a_dict():
    config = quick(lr=3e-4)
    assert TrainConfig(**dataclasses.asdict(config)) == config


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="unknown device"):
        select_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has cuda")
def test_unavailable_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="'cuda' is unavailable on this machine; available: cpu"):
        select_device("cuda")


# --- training ----------------------------------------------------------------


def test_short_run_learns_an_easy_task():
    history = train(tiny_model(), brightness_data(256, seed=0), brightness_data(128, seed=1), quick(epochs=4))
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["step_loss"][-1] < history["step_loss"][0]
    assert history["test_accuracy"][-1] >= 0.95


def test_history_has_every_key_with_plain_values(tmp_path):
    history = train(tiny_model(), brightness_data(200), brightness_data(64, seed=1), quick(), out_dir=tmp_path)
    steps = 3 * math.ceil(200 / 32)
    for key in ("step_loss", "step_lr", "step_grad_norm"):
        assert len(history[key]) == steps and all(type(v) is float for v in history[key]), key
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"):
        assert len(history[key]) == 3 and all(type(v) is float for v in history[key]), key
    assert history["epoch"] == [1, 2, 3]
    assert set(HISTORY_KEYS) | {"grad_norm_groups", "checkpoint", "device", "stopped_early"} == set(history)
    assert history["stopped_early"] is False
    assert all(0.0 <= a <= 1.0 for a in history["train_accuracy"] + history["test_accuracy"])
    assert history["seconds"] == sorted(history["seconds"])  # cumulative
    assert max(history["step_lr"]) == pytest.approx(1e-3)
    assert history["device"] == "cpu"
    assert history["checkpoint"] == str(tmp_path / "last.pt")
    json.dumps(history)

    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert (checkpoint["epoch"], checkpoint["step"]) == (3, steps)
    assert checkpoint["train_config"] == dataclasses.asdict(quick())
    assert checkpoint["history"] == {key: history[key] for key in (*HISTORY_KEYS, "grad_norm_groups")}
    torch.load(tmp_path / "last.pt", weights_only=True)


def test_without_out_dir_no_checkpoint():
    history = train(tiny_model(), brightness_data(64), brightness_data(32), quick(epochs=1))
    assert history["checkpoint"] is None


def test_progress_goes_to_stderr(capsys):
    train(tiny_model(), brightness_data(64), brightness_data(32), quick(epochs=1, progress=True))
    out, err = capsys.readouterr()
    assert out == ""
    assert "epoch 1/1" in err and "test loss" in err


def test_same_seed_same_weights():
    config = quick(epochs=2)
    a, b = tiny_model(dropout=0.1), tiny_model(dropout=0.1)
    data = NoisyData(brightness_data(128))
    train(a, data, brightness_data(32, seed=1), config)
    train(b, data, brightness_data(32, seed=1), config)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    c = tiny_model(dropout=0.1)
    train(c, data, brightness_data(32, seed=1), quick(epochs=2, seed=1))
    assert not torch.equal(a.head.weight, c.head.weight)


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    """Ctrl-C in the middle of epoch 2, then resume: the same weights, bit for bit."""
    train_data, test_data = brightness_data(256), brightness_data(64, seed=1)
    config = quick(epochs=3)  # 8 batches of 32 per epoch
    model_a = tiny_model(dropout=0.1)
    history_a = train(model_a, NoisyData(train_data), test_data, config, out_dir=tmp_path / "a")

    model_b = tiny_model(dropout=0.1)
    interrupted = NoisyData(train_data, fail_at=256 + 128 + 1)  # half-way through epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(model_b, interrupted, test_data, config, out_dir=tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    # model_b now holds half-trained epoch-2 weights: resuming must replace them.
    history_b = train(model_b, NoisyData(train_data), test_data, config, out_dir=tmp_path / "b", resume=True)

    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(pa, pb), name
    for key in ("epoch", "test_accuracy", "test_loss", "train_loss", "step_loss", "step_lr", "step_grad_norm"):
        assert history_a[key] == history_b[key], key
    optimizer_a = load_checkpoint(tmp_path / "a" / "last.pt")["optimizer"]
    optimizer_b = load_checkpoint(tmp_path / "b" / "last.pt")["optimizer"]
    for key, state in optimizer_a["state"].items():
        assert torch.equal(state["exp_avg_sq"], optimizer_b["state"][key]["exp_avg_sq"])


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    train(tiny_model(), brightness_data(64), brightness_data(32), quick(epochs=1), out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"cannot resume .*hidden_dim: checkpoint=32, model=48"):
        train(tiny_model(hidden_dim=48, num_heads=3), brightness_data(64), brightness_data(32),
              quick(epochs=2), out_dir=tmp_path, resume=True)


def test_resume_without_a_checkpoint_starts_fresh(tmp_path, capsys):
    history = train(tiny_model(), brightness_data(64), brightness_data(32), quick(epochs=1),
                    out_dir=tmp_path / "new", resume=True)
    assert "starting a fresh run" in capsys.readouterr().out
    assert history["epoch"] == [1]


def test_resume_of_a_finished_run_only_evaluates(tmp_path, capsys):
    model = tiny_model()
    first = train(model, brightness_data(64), brightness_data(32), quick(epochs=2), out_dir=tmp_path)
    before = {name: p.clone() for name, p in model.named_parameters()}
    again = train(model, brightness_data(64), brightness_data(32), quick(epochs=2), out_dir=tmp_path, resume=True)
    assert "already at epoch 2 of 2" in capsys.readouterr().out
    assert again["epoch"] == [1, 2] and again["test_accuracy"] == first["test_accuracy"]
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_resume_to_more_epochs_continues(tmp_path):
    model = tiny_model()
    train(model, brightness_data(64), brightness_data(32), quick(epochs=1), out_dir=tmp_path)
    history = train(model, brightness_data(64), brightness_data(32), quick(epochs=2), out_dir=tmp_path, resume=True)
    assert history["epoch"] == [1, 2]
    assert len(history["step_loss"]) == 2 * 2


# --- in-memory batches, mixing and the time limit ------------------------------


def uint8_dataset(n: int = 192, seed: int = 0):
    """An ImageDataset (what load_dataset returns) of dark and bright 28×28 images."""
    from vitlib.data import ImageDataset

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = (torch.rand(n, 1, 28, 28, generator=g) * 150 + 100 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    return ImageDataset(images, labels, ["dark", "bright"], name="fashion-mnist", mean=(0.4,), std=(0.3,))


class OneByOne(Dataset):
    """The same items, served one at a time: forces the DataLoader path."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return self.base[index]


@pytest.mark.parametrize("augment", ["none", "basic"])
@pytest.mark.parametrize("patch_dropout", [0.0, 0.25])  # PatchDropout draws from the global RNG
def test_whole_batches_in_memory_train_like_the_dataloader(augment, patch_dropout):
    from vitlib.data import eval_transform, train_transform

    train_set, test_set = uint8_dataset(), uint8_dataset(64, seed=1)
    test_set.transform = eval_transform(test_set)
    train_set.transform = train_transform(train_set, augment)
    fast = tiny_model(patch_dropout=patch_dropout)
    train(fast, train_set, test_set, quick(epochs=2))
    if augment == "none":  # same order, same arithmetic, same random draws: bitwise the same weights
        slow = tiny_model(patch_dropout=patch_dropout)
        train(slow, OneByOne(train_set), OneByOne(test_set), quick(epochs=2))
        for (name, a), b in zip(fast.state_dict().items(), slow.state_dict().values()):
            assert torch.equal(a, b), name
    from vitlib.train import evaluate

    assert evaluate(fast, test_set) == pytest.approx(evaluate(fast, OneByOne(test_set)))


def test_augmented_in_memory_training_is_reproducible():
    from vitlib.data import eval_transform, train_transform

    def run():
        train_set, test_set = uint8_dataset(), uint8_dataset(64, seed=1)
        train_set.transform = train_transform(train_set, "strong")
        test_set.transform = eval_transform(test_set)
        model = tiny_model()
        train(model, train_set, test_set, quick(epochs=2, mixup=0.2, cutmix=1.0))
        return model

    for a, b in zip(run().state_dict().values(), run().state_dict().values()):
        assert torch.equal(a, b)


def test_mixup_and_cutmix_still_learn():
    from vitlib.data import eval_transform

    train_set, test_set = uint8_dataset(384), uint8_dataset(128, seed=1)
    train_set.transform = eval_transform(train_set)
    test_set.transform = eval_transform(test_set)
    history = train(tiny_model(), train_set, test_set, quick(epochs=4, lr=3e-3, mixup=0.2, cutmix=1.0))
    assert history["test_accuracy"][-1] > 0.9


class Slow(Dataset):
    """Each item takes `delay` seconds: a machine slower than the recipe planned for."""

    def __init__(self, base: Dataset, delay: float) -> None:
        self.base, self.delay = base, delay

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        import time

        time.sleep(self.delay)
        return self.base[index]


def test_time_limit_stops_the_run_with_the_schedule_finished():
    config = quick(epochs=100, time_limit=1.5, min_lr=0.0)
    history = train(tiny_model(), Slow(brightness_data(96), 0.002), brightness_data(32, seed=1), config)
    assert history["stopped_early"] is True
    assert len(history["epoch"]) < 100
    assert history["seconds"][-1] <= 1.5
    # the cosine followed the clock: the last steps ran at a small fraction of the peak
    assert history["step_lr"][-1] < 0.2 * config.lr
    assert len(history["test_accuracy"]) == len(history["epoch"])  # every epoch evaluated, the cut one too


def test_time_limit_that_never_binds_changes_nothing():
    a, b = tiny_model(), tiny_model()
    ha = train(a, brightness_data(96), brightness_data(32, seed=1), quick(epochs=2))
    hb = train(b, brightness_data(96), brightness_data(32, seed=1), quick(epochs=2, time_limit=600.0))
    assert hb["stopped_early"] is False and ha["step_lr"] == hb["step_lr"]
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_history_records_the_gradient_norm_of_every_layer():
    """The gradient flow of week 06: one norm per group (embedding, each layer, head) per step,
    and the global norm (the one clipped) is their root sum of squares."""
    model = tiny_model()
    history = train(model, brightness_data(96), brightness_data(32, seed=1), quick(epochs=1))
    layers = [f"layer {i}" for i in range(model.config.num_layers)]
    assert history["grad_norm_groups"] == ["embedding", *layers, "head"]
    assert list(gradient_groups(model)) == history["grad_norm_groups"]
    assert len(history["step_group_grad_norm"]) == len(history["step_grad_norm"])
    for groups, total in zip(history["step_group_grad_norm"], history["step_grad_norm"]):
        assert len(groups) == len(layers) + 2 and all(type(v) is float and v >= 0 for v in groups)
        assert math.sqrt(sum(v * v for v in groups)) == pytest.approx(total, rel=1e-5)
    assert sum(len(p) for p in gradient_groups(model).values()) == len(list(model.parameters()))
