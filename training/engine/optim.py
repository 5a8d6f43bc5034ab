"""Optimisers and learning-rate schedules by name (the training config's `optimizer` and `schedule`: the keys of
`OPTIMIZERS` and `SCHEDULES`), and the exponential moving average of the weights (`ema`)."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def sgd(groups: list[dict], config: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"],
                           nesterov=True)


def adamw(groups: list[dict], config: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=config["lr"], weight_decay=config["weight_decay"])


OPTIMIZERS: dict[str, Callable[[list[dict], dict[str, Any]], torch.optim.Optimizer]] = {"adamw": adamw, "sgd": sgd}


Scheduler = torch.optim.lr_scheduler.LRScheduler


def onecycle(config: dict[str, Any], optimizer: torch.optim.Optimizer, total: int) -> Scheduler:
    """One-cycle over `total` steps, peaking at each group's learning rate."""
    max_lrs = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total)


def cosine(config: dict[str, Any], optimizer: torch.optim.Optimizer, total: int) -> Scheduler:
    """A linear warm-up over `warmup` of the `total` steps, then cosine down to `min_lr_ratio` of the rate."""
    warmup, floor = int(config["warmup"] * total), config["min_lr_ratio"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


SCHEDULES: dict[str, Callable[[dict[str, Any], torch.optim.Optimizer, int], Scheduler]] = {
    "cosine": cosine, "onecycle": onecycle}


def build_optimizer(config: dict[str, Any], model: torch.nn.Module) -> torch.optim.Optimizer:
    """The config's optimizer (`OPTIMIZERS`); the backbone at `backbone_lr_scale` times the head's learning rate."""
    head = {id(p) for p in model.get_classifier().parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) in head], "lr": config["lr"]},
              {"params": [p for p in model.parameters() if id(p) not in head],
               "lr": config["lr"] * config["backbone_lr_scale"]}]
    return OPTIMIZERS[config["optimizer"]](groups, config)


def build_scheduler(config: dict[str, Any], optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> Scheduler:
    """The config's schedule (`SCHEDULES`) over every batch of every epoch."""
    return SCHEDULES[config["schedule"]](config, optimizer, max(1, config["epochs"] * steps_per_epoch))


def build_ema(config: dict[str, Any], model: torch.nn.Module) -> AveragedModel | None:
    """An exponential moving average of the weights (and BN buffers) with decay `ema` per step, or None."""
    if not config["ema"]:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config["ema"]), use_buffers=True)

