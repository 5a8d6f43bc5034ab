"""`train_fold.py --resume` loads its checkpoint with `weights_only=True`: RNG states and metrics survive as tensors
and plain values, and a checkpoint holding any other object is refused unread."""
import random

import numpy as np
import pytest
import torch

from training.trainer import TrainState, build_ema, build_scheduler, load_checkpoint, save_checkpoint

CONFIG = {"arch": "test_efficientnet", "input_size": 64, "epochs": 2, "schedule": "onecycle", "lr": 1e-3,
          "min_lr_ratio": 0.01}


def training_objects():
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = build_scheduler(CONFIG, optimizer, steps_per_epoch=3)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(1))


def test_checkpoint_round_trips_with_weights_only(tmp_path):
    model, optimizer, scheduler, scaler = training_objects()
    state = TrainState(epoch=1, best_log_loss=0.4, history=[{"epoch": 1, "val_auc": np.float32(0.75),
                                                             "n": np.int64(12), "val_log_loss": np.float64(0.4)}])
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    ema = build_ema({"ema": 0.9}, model)
    ema.update_parameters(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)
    save_checkpoint(tmp_path / "last.pt", model, ema, optimizer, scheduler, scaler, state, CONFIG)
    expected = draws()
    assert isinstance(torch.load(tmp_path / "last.pt", weights_only=True), dict)
    fresh = training_objects()
    fresh_ema = build_ema({"ema": 0.9}, fresh[0])
    restored = load_checkpoint(tmp_path / "last.pt", fresh[0], fresh_ema, *fresh[1:], CONFIG)
    assert draws() == expected
    assert torch.equal(fresh_ema.module.weight, ema.module.weight)
    assert not torch.equal(fresh_ema.module.weight, model.weight)  # the average, not the last weights
    assert restored.history == [{"epoch": 1, "val_auc": 0.75, "n": 12, "val_log_loss": 0.4}]
    assert type(restored.history[0]["n"]) is int and restored.epoch == 1
    assert torch.equal(fresh[0].weight, model.weight)
    assert fresh[2].state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]


class WritesAFile:
    """Unpickling this calls `open(path, 'w')`: what a hostile checkpoint could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_checkpoint_with_other_objects_is_refused_unread(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {}, "rng": WritesAFile(marker)}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="refused unread"):
        model, *rest = training_objects()
        load_checkpoint(tmp_path / "last.pt", model, None, *rest, CONFIG)
    assert not marker.exists()
