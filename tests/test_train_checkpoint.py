"""`train_fold.py --resume` loads its checkpoint with `weights_only=True`: RNG states and metrics survive as tensors
and plain values, and a checkpoint holding any other object is refused unread."""
import random

import numpy as np
import pytest
import torch

from training.engine.optim import build_ema, build_scheduler
from training.engine.train_fold import ResumeError, TrainState, load_checkpoint, save_checkpoint

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


# ------------------------------------------------------------------------------------------ issue 33

def saved_checkpoint(path):
    """A real checkpoint of `training_objects`, written as train_fold.py writes it."""
    model, optimizer, scheduler, scaler = training_objects()
    save_checkpoint(path, model, None, optimizer, scheduler, scaler, TrainState(epoch=1), CONFIG)
    return path


def resume(path, ema: bool = False):
    model, *rest = training_objects()
    return load_checkpoint(path, model, build_ema({"ema": 0.9}, model) if ema else None, *rest, CONFIG)


@pytest.mark.parametrize("content,message", [
    (b"", "is an empty file that torch.load cannot read (EOFError); run without --resume to start afresh"),
    (b"last epoch: 3\n", "is a text file that torch.load cannot read ("),
    ("half", "is a zip archive (torch.save's format) that torch.load cannot read ("),
    ("weights", "is no train_fold.py checkpoint (OrderedDict without ['model', 'optimizer', 'scheduler', 'scaler', "
                "'train_state', 'rng', 'arch', 'input_size', 'ema']); run without --resume to start afresh"),
    ("list", "is no train_fold.py checkpoint (list without ['model', 'optimizer', 'scheduler', 'scaler', "
             "'train_state', 'rng', 'arch', 'input_size', 'ema']); run without --resume to start afresh"),
])
def test_a_checkpoint_that_cannot_be_resumed_is_named_with_the_fix(tmp_path, content, message):
    path = tmp_path / "last.pt"
    if content == "half":
        data = saved_checkpoint(path).read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif content == "weights":
        torch.save(torch.nn.Linear(4, 1).state_dict(), path)
    elif content == "list":
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    with pytest.raises(ResumeError) as error:
        resume(path)
    assert str(error.value).startswith(f"--resume: {path} {message}")


def test_a_missing_checkpoint_or_a_folder_says_how_to_start(tmp_path):
    for path in (tmp_path / "last.pt", tmp_path):
        with pytest.raises(ResumeError) as error:
            resume(path)
        assert str(error.value) == f"--resume: no checkpoint at {path}; run without --resume to start"


def test_a_checkpoint_of_another_run_is_named(tmp_path):
    path = saved_checkpoint(tmp_path / "last.pt")
    with pytest.raises(ResumeError) as error:
        resume(path, ema=True)
    assert str(error.value) == f"--resume: {path} was trained without ema; use the run's own config"
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "model": {"weight": torch.ones(3, 3)}}, path)
    with pytest.raises(ResumeError, match=r"does not fit this run \(RuntimeError: Error\(s\) in loading state_dict"):
        resume(path)
    torch.save({**payload, "train_state": {"epochs_done": 3}}, path)
    with pytest.raises(ResumeError, match=r"does not fit this run \(TypeError: .*epochs_done.*\); use the run's own "
                                          r"config, or run without --resume to start afresh$"):
        resume(path)
    torch.save({**payload, "arch": "other"}, path)
    with pytest.raises(ResumeError, match=r"is other@64, the config asks for test_efficientnet@64; use the run's own"):
        resume(path)
