"""`vitlib.pretraining.pretrain`, the loop under MAE's and I-JEPA's pre-training: hooks, schedule, seeds."""

from __future__ import annotations

import torch

from vitlib.pretraining import pretrain
from vitlib.train import lr_at


def _run(seed: int, steps: list, epochs: list):
    images = torch.arange(40, dtype=torch.uint8).reshape(10, 1, 2, 2)  # (10, 1, 2, 2)
    weight = torch.nn.Parameter(torch.zeros(()))
    draws = []

    def loss_of(batch, generator):
        draws.append(torch.rand(1, generator=generator).item())  # the masks' draws come from the same generator
        return (weight - batch.mean()) ** 2

    losses = pretrain([weight], images, lambda b: b.float() / 40, loss_of, epochs=3, batch_size=4, lr=0.1,
                      weight_decay=0.0, warmup_epochs=1.0, seed=seed, desc="test",
                      after_step=lambda step, total: steps.append((step, total)), after_epoch=epochs.append, progress=False)
    return losses, draws, weight.item()


def test_hooks_see_every_step_and_epoch_and_the_loss_goes_down():
    steps, epochs = [], []
    losses, _, weight = _run(0, steps, epochs)
    assert steps == [(s, 9) for s in range(9)]  # 3 epochs of ceil(10 / 4) = 3 steps
    assert epochs == [1, 2, 3] and len(losses) == 3
    assert losses[-1] < losses[0] and weight > 0


def test_the_same_seed_gives_the_same_run_and_another_seed_another_order():
    first, again, other = _run(1, [], []), _run(1, [], []), _run(2, [], [])
    assert first == again
    assert first[1] != other[1]


def test_the_learning_rate_follows_warmup_and_cosine(monkeypatch):
    made, seen = [], []

    class Spy(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    weight = torch.nn.Parameter(torch.zeros(()))
    pretrain([weight], torch.zeros(8, 1, 1, 1, dtype=torch.uint8), lambda b: b.float(), lambda b, g: (weight - 1) ** 2,
             epochs=2, batch_size=2, lr=0.5, weight_decay=0.0, warmup_epochs=1.0, seed=0, desc="test", progress=False,
             after_step=lambda step, total: seen.append(made[0].param_groups[0]["lr"]))
    assert seen == [lr_at(s, 8, 4, 0.5, 0.005) for s in range(8)]  # warm-up over the first epoch, then cosine to lr / 100
    assert made[0].param_groups[0]["betas"] == (0.9, 0.95)
