"""The named pieces of the training engine, each on its own (vitlib.train, issue 19).

The engine's behaviour as a whole is tested in test_train.py, test_distributed.py and
test_cli.py; here each piece that train() calls is pinned down by itself.
"""

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import vitlib.deadline
from vitlib.checkpoint import CheckpointError
from vitlib.configs import create_vit
from vitlib.deadline import Deadline
from vitlib.history import HISTORY_KEYS, EpochRecord, StepResult, new_history
from vitlib.processes import DistributedProcesses, OneProcess, process_group
from vitlib.run_state import RunState, restore_run, save_run
from vitlib.train import TrainConfig, TrainingStep, _epoch_batches, make_optimizer, train

VITLIB = Path(__file__).resolve().parents[1] / "vitlib"
ENGINE = ["train.py", "train_cli.py", "train_config.py", "deadline.py", "processes.py", "history.py",
          "run_state.py", "batches.py"]


def tiny_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_vit("vit_course_28", **{"num_layers": 1, "hidden_dim": 32, "num_heads": 2, "mlp_dim": 64,
                                         "num_classes": 3, **overrides})


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(vitlib.deadline.time, "perf_counter", fake)
    return fake


# --- the deadline ---------------------------------------------------------------


def test_without_a_time_limit_the_schedule_follows_the_steps(clock):
    deadline = Deadline(0.0)
    clock.now += 1e6
    assert deadline.position(7, 100) == 7 and not deadline.stopped


def test_the_deadline_moves_the_schedule_on_with_the_clock(clock):
    deadline = Deadline(100.0)  # reserve 5 s until an evaluation is timed
    clock.now += 19.0  # 19 s of 100, one step of 1 s since the last check
    deadline.last_check = clock.now - 1.0
    assert deadline.position(3, 1000) == math.floor(1000 * 19.0 / (100 - 5 - 1))  # the clock is ahead of step 3
    clock.now += 0.1
    assert deadline.position(900, 1000) == 900  # the steps are ahead of the clock


def test_the_deadline_stops_before_a_step_that_could_end_past_it(clock):
    deadline = Deadline(100.0, seconds_before=90.0)  # a resumed run, 90 s spent already
    deadline.last_check = clock.now - 1.0
    clock.now += 4.5  # 94.5 s, past 100 - 5 (the reserve) - 5.5 (this step took): stop
    assert deadline.position(10, 1000) is None and deadline.stopped


def test_the_reserve_is_learned_from_an_evaluation_and_bounded(clock):
    deadline = Deadline(100.0)
    deadline.evaluated(2.0)
    assert deadline.reserve == pytest.approx(2 * 2.0 + 1.0)
    deadline.evaluated(60.0)
    assert deadline.reserve == 25.0  # at most a quarter of the limit


def test_the_deadline_takes_the_agreed_decision(clock):
    decisions = []

    def rank_zero_says_stop(stop, position):
        decisions.append((stop, position))
        return True, position

    deadline = Deadline(100.0, agree=rank_zero_says_stop)
    clock.now += 1.0
    assert deadline.position(0, 1000) is None and deadline.stopped
    assert decisions == [(False, 10)]  # this process alone would have gone on, at the clock's step 10


def test_the_elapsed_time_includes_the_seconds_before_a_resume(clock):
    deadline = Deadline(100.0, seconds_before=40.0)
    clock.now += 2.5
    assert deadline.elapsed() == 42.5


# --- the process group ----------------------------------------------------------


def test_one_process_is_the_identity():
    processes = process_group()
    assert isinstance(processes, OneProcess) and (processes.rank, processes.world, processes.is_main) == (0, 1, True)
    images, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert all(a is b for a, b in zip(processes.share(images, targets, targets), (images, targets, targets)))
    logits = torch.randn(4, 3)
    assert torch.equal(processes.loss(logits, targets, 0.1), F.cross_entropy(logits, targets, label_smoothing=0.1))
    assert processes.correct(torch.tensor([0, 1, 1, 1]), targets).item() == 2
    assert processes.agree(True, 5) == (True, 5)
    sums = torch.tensor([1.0, 2.0])
    processes.sum_up(sums)
    assert sums.tolist() == [1.0, 2.0]
    assert processes.note({"a": 1}) == {"a": 1} and processes.place(torch.device("cpu")) == torch.device("cpu")
    model = torch.nn.Linear(2, 2)
    assert processes.wrap(model) is model


def test_the_shares_of_a_batch_add_up_to_its_mean_loss():
    """Three processes, a batch of 7: each share's weighted loss, summed, is the batch's mean (DDP averages)."""
    logits, labels = torch.randn(7, 5), torch.randint(0, 5, (7,))
    total = 0.0
    for rank in range(3):
        processes = DistributedProcesses(rank=rank, world=3)
        share_logits, share_targets, _ = processes.share(logits, labels, labels)
        total += processes.loss(share_logits, share_targets, 0.0) / 3  # DDP's average over 3 processes
    assert total.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_a_share_of_nothing_takes_part_with_a_weight_of_zero():
    """A last batch of 2 on 3 processes: rank 2 trains on one image whose loss and accuracy count for nothing."""
    processes = DistributedProcesses(rank=2, world=3)
    images, labels = torch.randn(2, 4), torch.tensor([1, 1])
    share_images, share_targets, share_labels = processes.share(images, labels, labels)
    assert len(share_images) == 1
    assert processes.loss(torch.randn(1, 3), share_targets, 0.0).item() == 0.0
    assert processes.correct(share_labels, share_labels).item() == 0
    assert processes.note({"a": 1}) == {"a": 1, "processes": 3} and not processes.is_main


def test_one_process_takes_no_distributed_branch(monkeypatch, tmp_path):
    """With one process, train() never calls torch.distributed: not even with a time limit and a checkpoint."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a distributed call in a one-process run")

    for name in ("broadcast", "all_reduce", "barrier", "get_rank", "get_world_size"):
        monkeypatch.setattr(torch.distributed, name, forbidden)
    data = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 3, (64,)))
    config = TrainConfig(epochs=2, batch_size=32, progress=False, device="cpu", time_limit=600.0)
    history = train(tiny_model(), data, data, config, out_dir=tmp_path)
    assert history["epoch"] == [1, 2]


# --- the state a resume restores ------------------------------------------------


def test_a_run_state_round_trips_through_its_checkpoint(tmp_path):
    model, config = tiny_model(), TrainConfig(epochs=3, device="cpu")
    optimizer = make_optimizer(model, config)
    history = {**new_history(), "grad_norm_groups": ["embedding"]}
    history["seconds"] = [12.5, 30.0]
    save_run(tmp_path / "last.pt", model, optimizer, RunState(2, 40, 30.0, history), config, {"note": "x"})
    restored_model = tiny_model(seed=1)
    messages = []
    state = restore_run(tmp_path / "last.pt", restored_model, make_optimizer(restored_model, config), config,
                        messages.append)
    assert (state.epoch, state.step, state.seconds) == (2, 40, 30.0)
    assert set(state.history) == set(HISTORY_KEYS) and state.history["seconds"] == [12.5, 30.0]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), restored_model.parameters()))
    assert messages == [f"resuming from {tmp_path / 'last.pt'} after epoch 2 (step 40)"]


def test_restoring_says_which_training_settings_changed(tmp_path):
    model = tiny_model()
    config = TrainConfig(epochs=3, device="cpu")
    save_run(tmp_path / "last.pt", model, make_optimizer(model, config), RunState(history={**new_history(), "grad_norm_groups": []}),
             config, None)
    messages = []
    restore_run(tmp_path / "last.pt", model, make_optimizer(model, config),
                TrainConfig(epochs=5, lr=1e-2, device="cpu"), messages.append)
    assert "lr: checkpoint=0.001, now=0.01" in messages[-1] and "epochs" not in messages[-1]


def test_restoring_without_a_checkpoint_is_a_fresh_state(tmp_path):
    messages = []
    model = tiny_model()
    state = restore_run(tmp_path / "last.pt", model, make_optimizer(model, TrainConfig()), TrainConfig(), messages.append)
    assert state == RunState() and "starting a fresh run" in messages[0]


def test_restoring_refuses_another_models_checkpoint(tmp_path):
    model, config = tiny_model(), TrainConfig(device="cpu")
    save_run(tmp_path / "last.pt", model, make_optimizer(model, config), RunState(history={**new_history(), "grad_norm_groups": []}),
             config, None)
    other = tiny_model(hidden_dim=48, num_heads=3)
    with pytest.raises(CheckpointError, match="hidden_dim: checkpoint=32, model=48"):
        restore_run(tmp_path / "last.pt", other, make_optimizer(other, config), config)


# --- the history ----------------------------------------------------------------


def test_an_epoch_record_joins_the_history_once_per_epoch():
    record = EpochRecord(torch.device("cpu"))
    assert len(record) == 0
    for loss, correct in ((0.5, 3), (0.25, 4)):
        record.add(StepResult(torch.tensor(loss), torch.tensor(1.0), torch.tensor([0.6, 0.8]), torch.tensor(correct), 4),
                   lr=1e-3)
    history = new_history()
    record.append_to(history, 1, {"loss": 0.3, "accuracy": 0.9}, 12.0, lambda *tensors: None)
    assert history["step_loss"] == [0.5, 0.25] and history["step_lr"] == [1e-3, 1e-3]
    assert history["step_group_grad_norm"] == [pytest.approx([0.6, 0.8])] * 2
    assert history["train_loss"] == [pytest.approx((0.5 * 4 + 0.25 * 4) / 8)] and history["train_accuracy"] == [7 / 8]
    assert (history["epoch"], history["test_loss"], history["test_accuracy"], history["seconds"]) == ([1], [0.3], [0.9], [12.0])


# --- an epoch's batches and one training step -----------------------------------


def test_an_epochs_batches_depend_on_the_seed_and_the_epoch_only():
    data = TensorDataset(torch.arange(40.0).view(40, 1), torch.zeros(40, dtype=torch.long))
    config = TrainConfig(batch_size=8, device="cpu", seed=3)

    def first_batch(epoch):
        _, batches, mix_generator = _epoch_batches(data, config, epoch, torch.device("cpu"))
        return next(iter(batches))[0].flatten().tolist(), torch.rand(1, generator=mix_generator).item()

    assert first_batch(2) == first_batch(2)
    assert first_batch(2) != first_batch(3)


def test_one_training_step_is_week_05s_train_step():
    """Forward, cross-entropy with smoothing, backward, clip at norm 1, AdamW at the given lr."""
    config = TrainConfig(device="cpu", label_smoothing=0.1, grad_clip=1.0)
    images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 3, (8,))
    mine, theirs = tiny_model(), tiny_model()
    optimizer = make_optimizer(mine, config)
    result = TrainingStep(mine, optimizer, config, OneProcess(), torch.device("cpu"))(images, labels, 5e-3, None)

    reference_optimizer = make_optimizer(theirs, config)
    for group in reference_optimizer.param_groups:
        group["lr"] = 5e-3
    loss = F.cross_entropy(theirs(images), labels, label_smoothing=0.1)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    reference_optimizer.step()
    assert result.loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert result.grad_norm.item() == pytest.approx(norm.item(), rel=1e-5)
    assert result.batch_size == 8 and optimizer.param_groups[0]["lr"] == 5e-3
    for a, b in zip(mine.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b)


# --- the shape of the engine (issue 19) -----------------------------------------


def test_no_function_of_the_engine_is_longer_than_about_60_lines():
    long = []
    for name in ENGINE:
        for node in ast.walk(ast.parse((VITLIB / name).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 62:
                long.append(f"{name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_the_training_loop_has_no_distributed_branch():
    assert "world > 1" not in (VITLIB / "train.py").read_text()
    assert "torch.distributed" not in (VITLIB / "train.py").read_text()
