"""vitlib.checkpoint: atomic writes, weights_only loading, clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from vitlib.checkpoint import (
    CheckpointError,
    config_differences,
    load_checkpoint,
    load_model,
    load_weights,
    save_checkpoint,
)
from vitlib.configs import create_vit

TINY = dict(num_layers=1, hidden_dim=32, num_heads=2, mlp_dim=64)


def tiny_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_vit("vit_course_28", **{**TINY, **overrides})
    with torch.no_grad():  # the head starts at zero: make logits depend on every weight
        model.head.weight.normal_(std=0.02)
    return model


def history() -> dict[str, list]:
    return {"epoch": [1], "test_accuracy": [0.5], "step_loss": [2.3, 2.2]}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, Path]:
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    optimizer.step()  # the optimizer now has state worth saving
    path = save_checkpoint(
        tmp_path / "run" / "last.pt", model, optimizer=optimizer, epoch=1, step=2,
        history=history(), train_config={"epochs": 3, "lr": 1e-3}, extra={"dataset": "fashion-mnist-small"},
    )
    return model, optimizer, path


def test_save_creates_folder_and_leaves_no_temp_file(saved):
    _, _, path = saved
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_file_loads_with_weights_only(saved):
    model, _, path = saved
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "vitlib-checkpoint" and raw["version"] == 1
    assert raw["model_config"] == dataclasses.asdict(model.config)
    assert raw["epoch"] == 1 and raw["step"] == 2
    assert raw["history"] == history()
    assert raw["train_config"] == {"epochs": 3, "lr": 1e-3}
    assert raw["extra"] == {"dataset": "fashion-mnist-small"}
    assert set(raw["model"]) == set(model.state_dict())
    assert load_checkpoint(path)["epoch"] == 1


def test_optimizer_state_round_trips(saved):
    model, optimizer, path = saved
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(load_checkpoint(path)["optimizer"])
    for a, b in zip(optimizer.state.values(), fresh.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_load_model_rebuilds_an_equal_model(saved):
    model, _, path = saved
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_a_run_folder_means_its_last_pt(saved):
    model, _, path = saved
    assert load_model(path.parent).config == model.config


def test_failed_save_keeps_the_old_checkpoint(saved, monkeypatch):
    model, optimizer, path = saved
    before = path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, model, optimizer=optimizer, epoch=2, step=4, history=history())
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_interrupted_save_leaves_no_temp_file(tmp_path, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last.pt", tiny_model(), epoch=1, step=1, history={})
    assert list(tmp_path.iterdir()) == []


def test_save_needs_a_model_with_a_config(tmp_path):
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2), epoch=0, step=0, history={})


def test_missing_file_says_where_and_how_to_train(tmp_path):
    path = tmp_path / "nowhere" / "last.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "python -m vitlib.train" in str(info.value) and "--out" in str(info.value)
    with pytest.raises(FileNotFoundError):
        load_model(path)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="noise.pt is not a vitlib checkpoint"):
        load_checkpoint(path)


def test_a_saved_tensor_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2, 3), path)
    with pytest.raises(ValueError, match=r"tensor.pt is not a vitlib checkpoint.*tensor of shape \(2, 3\)"):
        load_checkpoint(path)


def test_a_bare_state_dict_gets_a_hint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="bare state_dict.*load_state_dict"):
        load_model(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"format": "vitlib-checkpoint", "config": tiny_model().config}, path)  # a dataclass instance
    with pytest.raises(ValueError, match="pickled.pt is not a vitlib checkpoint"):
        load_checkpoint(path)


def test_newer_version_is_refused(tmp_path, saved):
    _, _, path = saved
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_load_weights_into_a_model_of_the_same_config(saved):
    model, _, path = saved
    other = tiny_model(seed=1)
    assert load_weights(other, path) is other
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_weights_into_another_config_names_the_fields(saved):
    _, _, path = saved
    other = tiny_model(hidden_dim=48, num_heads=3)
    with pytest.raises(ValueError) as info:
        load_weights(other, path)
    message = str(info.value)
    assert "hidden_dim: checkpoint=32, model=48" in message
    assert "num_heads: checkpoint=2, model=3" in message
    assert "mlp_dim" not in message  # only the fields that differ
    assert "load_model(path)" in message


def test_config_differences():
    a = {"hidden_dim": 32, "num_layers": 1}
    assert config_differences(a, dict(a)) == []
    assert config_differences(a, {"hidden_dim": 64}) == [
        "hidden_dim: checkpoint=32, model=64",
        "num_layers: checkpoint=1, model=<missing>",
    ]
