"""Training one model on one fold: the loop (distributed set-up, data loaders and the config's sampler, checkpoints
that resume, validation each epoch, early stopping) over `optim.py` (optimiser, schedule, EMA by name), `losses.py`,
`validation.py` (metrics, curves) and `export.py` (the fp16 weights, their manifest entry and the out-of-fold
predictions). The command line is `training/train_fold.py`."""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from dfdc_core.config import SettingsError, save_resolved
from dfdc_core.models import (
    UnreadableWeights,
    create_classifier,
    load_tensors,
    save_fp16_state_dict,
)
from training.data.dataset import (
    SAMPLERS,
    CropDataset,
    EpochSampler,
    build_augmentation,
)
from training.engine.evaluate import load_fold_rows, predict_logits, with_classes
from training.engine.export import export, run_paths, trained_preprocessing
from training.engine.losses import build_loss
from training.engine.optim import build_ema, build_optimizer, build_scheduler
from training.engine.pretrained import class_shares, init_head, load_pretrained
from training.engine.train_config import resolve_config
from training.engine.validation import metric_columns, validation_metrics, write_metrics
from training.tools.defences import defence_from_config

log = logging.getLogger("train_fold")


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_setting: str) -> Dist:
    """Join the torchrun process group (nccl on GPU, gloo on CPU) when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_setting == "cuda" or (device_setting == "auto" and torch.cuda.is_available())
    if device_setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda in the config, but no CUDA device is visible; use device: auto or cpu")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if not use_cuda:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Dist(rank, world_size, device)


def broadcast_float(value: float, context: Dist) -> float:
    """Rank 0's `value` on every rank."""
    if context.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def mean_over_ranks(value: float, context: Dist) -> float:
    if context.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def make_sampler(config: dict[str, Any], train: pd.DataFrame, dataset: CropDataset, context: Dist) -> EpochSampler:
    """The `sampler` of the config over the training crops (and their self-blended fakes with `sbi`)."""
    common = dict(rank=context.rank, world_size=context.world_size, seed=config["seed"],
                  size=config["samples_per_epoch"])
    sbi = float(config["sbi"]["p"]) if config["sbi"] else 0.0
    if sbi > 0 and not len(dataset.blendable()):
        raise ValueError(f"sbi: no real training crop of {config['crops']} has landmarks; re-run "
                         "training/extract_faces.py (it stores MTCNN's five points per face)")
    bases = config["sbi"].get("bases", "crop") if config["sbi"] else "crop"
    return SAMPLERS[config["sampler"]](train, dataset, sbi, bases=bases, **common)


def make_loaders(config: dict[str, Any], train: pd.DataFrame, val: pd.DataFrame,
                 context: Dist) -> tuple[DataLoader, DataLoader]:
    crops, size = Path(config["crops"]), config["input_size"]
    mean, std = config["mean"], config["std"]
    margin = trained_preprocessing(crops).crop_margin if config["sbi"] else None
    train_set = CropDataset(train, crops, size, mean, std, build_augmentation(config["augment"]), "target",
                            seed=config["seed"], sbi_margin=margin)
    val_set = CropDataset(val, crops, size, mean, std, label_column="target")
    sampler = make_sampler(config, train, train_set, context)
    common = dict(batch_size=config["batch_size"], num_workers=config["num_workers"],
                  pin_memory=context.device.type == "cuda")
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=len(sampler) > config["batch_size"], **common)
    return train_loader, DataLoader(val_set, shuffle=False, **common)


def sampler_shares(config: dict[str, Any], labels: np.ndarray) -> np.ndarray:
    """Class shares the sampler presents: equal for balanced, pairs and class weights, else the data's."""
    count = max(2, config["num_classes"])
    if config["sampler"] != "shuffle" or config["class_weights"]:
        return np.full(count, 1.0 / count)
    return class_shares(labels, count)


def build_model(config: dict[str, Any], train_labels: np.ndarray) -> torch.nn.Module:
    """The arch with its pretrained weights and a small head biased to the sampler's class shares."""
    model = create_classifier(config["arch"], config["num_classes"])
    if config["pretrained"]:
        load_pretrained(model, config["pretrained"], config["arch"])
    init_head(model, sampler_shares(config, train_labels))
    return model


@dataclass
class TrainState:
    """What survives a kill: the last finished epoch, early-stopping state and the metrics so far."""

    epoch: int = 0
    best_log_loss: float = math.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values, so a checkpoint loads with `weights_only=True`."""
    numpy_state = np.random.get_state(legacy=False)
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"key": numpy_state["state"]["key"].tolist(), "pos": int(numpy_state["state"]["pos"]),
                       "has_gauss": int(numpy_state["has_gauss"]), "gauss": float(numpy_state["gauss"])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": numpy_state["has_gauss"],
                         "gauss": numpy_state["gauss"],
                         "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32), "pos": numpy_state["pos"]}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: torch.nn.Module, ema: AveragedModel | None, optimizer, scheduler, scaler,
                    state: TrainState, config: dict[str, Any]) -> None:
    """Everything needed to continue after the last finished epoch, written atomically.

    Only tensors and plain Python values (numpy scalars in the metrics become Python numbers), so
    `load_checkpoint` never unpickles arbitrary objects.
    """
    train_state = json.loads(json.dumps(vars(state), default=lambda value: value.item()))
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "scaler": scaler.state_dict(), "train_state": train_state, "rng": rng_state(),
               "arch": config["arch"], "input_size": config["input_size"],
               "ema": ema.state_dict() if ema is not None else None}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "train_state", "rng", "arch", "input_size", "ema")


class ResumeError(SettingsError):
    """`--resume` cannot continue from the checkpoint; the message names it and the fix (train_fold.py exits 2)."""


def load_checkpoint(path: Path, model: torch.nn.Module, ema: AveragedModel | None, optimizer, scheduler, scaler,
                    config: dict[str, Any]) -> TrainState:
    """Restore a `save_checkpoint` file with `weights_only=True`: tensors and plain values, no other object.
    `ResumeError` naming the file and the fix when it is missing, empty, damaged, not a train_fold.py checkpoint, or
    of another run."""
    afresh = "run without --resume to start afresh"
    if not os.path.isfile(path):
        raise ResumeError(f"--resume: no checkpoint at {path}; run without --resume to start")
    try:
        payload = load_tensors(path)
    except UnreadableWeights as error:
        raise ResumeError(f"--resume: {path} is {error}; {afresh}") from error
    missing = [key for key in CHECKPOINT_KEYS if key not in payload] if isinstance(payload, dict) else CHECKPOINT_KEYS
    if missing:
        raise ResumeError(f"--resume: {path} is no train_fold.py checkpoint ({type(payload).__name__} without "
                          f"{list(missing)}); {afresh}")
    if (payload["arch"], payload["input_size"]) != (config["arch"], config["input_size"]):
        raise ResumeError(f"--resume: {path} is {payload['arch']}@{payload['input_size']}, the config asks for "
                          f"{config['arch']}@{config['input_size']}; use the run's own config")
    if ema is not None and payload["ema"] is None:
        raise ResumeError(f"--resume: {path} was trained without ema; use the run's own config")
    try:
        model.load_state_dict(payload["model"])
        if ema is not None:
            ema.load_state_dict(payload["ema"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        restore_rng(payload["rng"])
        return TrainState(**payload["train_state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ResumeError(f"--resume: {path} does not fit this run ({type(error).__name__}: {error}); use the run's "
                          f"own config, or {afresh}") from error


def train_one_epoch(model, ema: AveragedModel | None, loader: DataLoader, criterion, optimizer, scheduler, scaler,
                    config: dict[str, Any], context: Dist, epoch: int) -> float:
    """One pass over this rank's share of the training crops; returns the mean loss over all ranks."""
    model.train()
    use_amp = scaler.is_enabled()
    total, count = 0.0, 0
    defence = defence_from_config(config)
    bar = tqdm(loader, desc=f"epoch {epoch}/{config['epochs']}", unit="batch", disable=not context.main,
               dynamic_ncols=True)

    def batch_loss(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            return criterion(net(images), labels)

    for images, labels in bar:
        images, labels = images.to(context.device, non_blocking=True), labels.to(context.device, non_blocking=True)
        images = defence.mix_adversarial(model, images, labels, batch_loss)
        objective, loss = defence.objective(model, images, labels, batch_loss)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(objective).backward()
        if config["grad_clip"]:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model.module if isinstance(model, DistributedDataParallel) else model)
        total += float(loss.item()) * len(labels)
        count += len(labels)
        bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return mean_over_ranks(total / max(count, 1), context)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def validates(config: dict[str, Any], epoch: int) -> bool:
    """Whether `epoch` is validated: every `validate_every` epochs (0: never; the export validates the last)."""
    every = config["validate_every"]
    return every > 0 and (epoch % every == 0 or epoch == config["epochs"])


def improved(state: TrainState, val_log_loss: float) -> bool:
    """Update the early-stopping state with this epoch's val log loss; True if it is the best so far."""
    if val_log_loss < state.best_log_loss:
        state.best_log_loss, state.bad_epochs = val_log_loss, 0
        return True
    state.bad_epochs += 1
    return False


def train(config: dict[str, Any], context: Dist, resume: bool = False, stop_after: int | None = None) -> TrainState:
    """The fold's whole run; returns its state (rank 0 has exported the outputs if training finished)."""
    paths = run_paths(config)
    seed_everything(config["seed"] + context.rank)
    train_rows, val_rows = load_fold_rows(config, config["fold"])
    train_loader, val_loader = make_loaders(config, train_rows, val_rows, context)
    model = build_model(config, train_loader.dataset.labels).to(context.device)
    ema = build_ema(config, model)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=config["amp"] and context.device.type == "cuda")
    criterion = build_loss(config, train_loader.dataset.labels, context.device)
    state = TrainState()
    if resume:
        state = load_checkpoint(paths.checkpoint, model, ema, optimizer, scheduler, scaler, config)
        log.info("resumed from %s after epoch %d", paths.checkpoint, state.epoch)
    elif paths.checkpoint.is_file():
        log.warning("%s exists: starting afresh (pass --resume to continue it)", paths.checkpoint)
    log.info("fold %d: %d training crops (%d videos), %d items an epoch (%s sampler%s), %d validation crops "
             "(%d videos); %s on %s x%d", config["fold"], len(train_rows), train_rows["video"].nunique(),
             len(train_loader.sampler), config["sampler"], f", sbi p={config['sbi']['p']}" if config["sbi"] else "",
             len(val_rows), val_rows["video"].nunique(), config["arch"], context.device, context.world_size)
    trained = DistributedDataParallel(model) if context.world_size > 1 else model
    evaluated = ema.module if ema is not None else model
    epochs_run = 0
    while state.epoch < config["epochs"] and not state.stopped_early:
        if stop_after is not None and epochs_run >= stop_after:
            log.info("stopping after %d epoch(s) as asked; continue with --resume", epochs_run)
            return state
        epoch, started = state.epoch + 1, time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        train_loader.dataset.set_epoch(epoch)
        lr = scheduler.get_last_lr()[0]
        train_loss = train_one_epoch(trained, ema, train_loader, criterion, optimizer, scheduler, scaler, config,
                                     context, epoch)
        validate = context.main and validates(config, epoch)
        metrics = validation_metrics(val_rows, predict_logits(evaluated, val_loader, context.device,
                                                              config["tta_hflip"]), config) if validate else {}
        val_log_loss = broadcast_float(metrics.get("val_log_loss", 0.0), context)
        is_best = config["validate_every"] == 1 and improved(state, val_log_loss)
        state.epoch = epoch
        state.stopped_early = config["early_stopping"] is not None and state.bad_epochs >= config["early_stopping"]
        if context.main:
            state.history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss, **metrics,
                                  "seconds": round(time.perf_counter() - started, 1)})
            if metrics:
                log.info("epoch %d: train loss %.4f, val loss %.4f, val log loss %.4f, AUC %.4f, accuracy %.3f%s",
                         epoch, train_loss, metrics["val_loss"], metrics["val_log_loss"], metrics["val_auc"],
                         metrics["val_accuracy"], " (best)" if is_best else "")
            else:
                log.info("epoch %d: train loss %.4f (not validated: validate_every %d)", epoch, train_loss,
                         config["validate_every"])
            if "val_class_accuracy" in metrics:
                log.info("epoch %d: class accuracy (videos) %.3f", epoch, metrics["val_class_accuracy"])
            if is_best or config["export"] == "last":
                save_fp16_state_dict(evaluated, paths.weights)
            write_metrics(paths.run_dir, state.history, metric_columns(config))
            save_checkpoint(paths.checkpoint, model, ema, optimizer, scheduler, scaler, state, config)
        epochs_run += 1
        if state.stopped_early:
            log.info("early stopping: val log loss has not improved for %d epochs", state.bad_epochs)
    if context.main:
        export(config, paths, state.history, val_rows, val_loader, context.device)
    return state


def run_training(config_path: Path, fold: int, resume: bool = False, stop_after: int | None = None,
                 overrides: dict[str, Any] | None = None) -> TrainState:
    """Resolve the config at `config_path` (then `overrides`) for `fold`, save it beside the run (`config.yaml`) and
    train."""
    config = with_classes(resolve_config(config_path, fold, overrides))
    context = init_distributed(config["device"])
    logging.basicConfig(level=logging.INFO if context.main else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s %(name)s[{context.rank}]: %(message)s")
    if context.main:
        resolved = {**config, "resume": resume, "world_size": context.world_size}
        save_resolved(resolved, run_paths(config).run_dir / "config.yaml")
        log.info("settings of this run (also in %s):\n%s", run_paths(config).run_dir / "config.yaml",
                 yaml.safe_dump(resolved, sort_keys=False))
    try:
        return train(config, context, resume, stop_after)
    finally:
        if context.world_size > 1:
            dist.destroy_process_group()
