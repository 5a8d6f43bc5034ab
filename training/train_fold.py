"""Train one fold of a face classifier and export it for the kernel.

    python training/train_fold.py --config training/configs/effnet_lite0_dev.yaml --fold 0 [--resume]
    torchrun --nproc_per_node N training/train_fold.py --config CONFIG --fold K

Writes to OUT/NAME/: config.yaml, last.pt (checkpoint every epoch), metrics.csv, loss_curve.png,
best_fp16.pth (best val log loss) and oof.csv (`video, frame, person, model, prob, label` per crop of the
fold's validation videos); adds or replaces the model's entry in the weights manifest.
"""
from __future__ import annotations

import argparse
import fcntl
import io
import json
import logging
import math
import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel.aggregate import video_score  # noqa: E402
from kernel.metrics import auc, binary_report  # noqa: E402
from kernel.models import (create_classifier, load_classifier, load_manifest, manifest_entry,  # noqa: E402
                           model_family, save_fp16_state_dict)
from kernel.submission import write_atomic  # noqa: E402
from training.data import BalancedSampler, CropDataset, build_augmentation  # noqa: E402
from training.defences import defence_from_config  # noqa: E402
from training.extract_faces import read_index  # noqa: E402
from training.pretrained import load_pretrained  # noqa: E402

log = logging.getLogger("train_fold")

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_log_loss", "val_auc", "val_accuracy",
                  "val_crop_auc", "seconds"]
OOF_COLUMNS = ["video", "frame", "person", "model", "prob", "label"]


# ---------------------------------------------------------------- config

def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping (JSON is valid YAML)."""
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found; pass --config a YAML/JSON file like "
                                "training/configs/effnet_lite0_dev.yaml")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def resolve_config(path: Path, fold: int) -> dict[str, Any]:
    """Defaults overridden by the file at `path`; `augment` is merged per transform."""
    config = read_config_file(DEFAULT_CONFIG)
    update = read_config_file(path)
    unknown = sorted(set(update) - set(config))
    if unknown:
        raise KeyError(f"{path}: unknown config keys {unknown}; known keys are in {DEFAULT_CONFIG}")
    augment = {**config["augment"], **(update.pop("augment", None) or {})}
    config.update(update, augment=augment, fold=fold)
    model_family(config["arch"])
    for key, allowed in (("optimizer", ("adamw", "sgd")), ("schedule", ("cosine", "onecycle")),
                         ("balance", ("sampler", "weights", "none")), ("device", ("auto", "cpu", "cuda"))):
        if config[key] not in allowed:
            raise ValueError(f"{path}: {key} is {config[key]!r}; choose one of {allowed}")
    if not config["crops"]:
        raise ValueError(f"{path}: set 'crops' to the folder written by extract_faces.py")
    config["name"] = config["name"].format(arch=config["arch"], fold=fold, input_size=config["input_size"])
    config["mean"], config["std"] = normalisation(config)
    defence_from_config(config)  # a bad adversarial/lipschitz setting fails here, before any data is read
    return config


def normalisation(config: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The config's mean/std, or the timm pretrained_cfg values of its arch."""
    import timm

    pretrained_cfg = timm.models.get_pretrained_cfg(config["arch"])
    mean = config["mean"] or (pretrained_cfg.mean if pretrained_cfg else (0.485, 0.456, 0.406))
    std = config["std"] or (pretrained_cfg.std if pretrained_cfg else (0.229, 0.224, 0.225))
    return [float(v) for v in mean], [float(v) for v in std]


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path
    manifest: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_weights(self) -> Path:
        return self.run_dir / "best_fp16.pth"


def run_paths(config: dict[str, Any]) -> RunPaths:
    """Run folder and manifest; the weights must lie under the manifest's folder (entries are relative)."""
    out = Path(config["out"])
    manifest = Path(config["manifest"]) if config["manifest"] else out / "weights_manifest.json"
    run_dir = out / config["name"]
    if not run_dir.resolve().is_relative_to(manifest.parent.resolve()):
        raise ValueError(f"run folder {run_dir} is not under the manifest's folder {manifest.parent}; "
                         "set 'manifest' to a file in OUT or a parent of it")
    return RunPaths(run_dir, manifest)


# ---------------------------------------------------------------- distributed

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


# ---------------------------------------------------------------- data

def load_fold_rows(config: dict[str, Any], fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index rows of the training folds and of validation fold `fold`."""
    crops = Path(config["crops"])
    index_path = crops / "index.csv"
    folds_path = Path(config["folds"]) if config["folds"] else crops / "folds.csv"
    index = read_index(index_path)
    if not folds_path.is_file():
        raise FileNotFoundError(f"{folds_path} not found; "
                                f"run training/folds.py --index {index_path} --out {folds_path}")
    folds = pd.read_csv(folds_path, dtype={"original": str}, keep_default_na=False)
    rows = index.merge(folds[["video", "fold"]], on="video", how="left")
    unassigned = rows.loc[rows["fold"].isna(), "video"].unique()
    if len(unassigned):  # e.g. a held-out test set: its videos never reach training or validation
        log.warning("%d videos of %s are not in %s (e.g. %s): left out of training and validation",
                    len(unassigned), index_path, folds_path, unassigned[0])
        rows = rows[rows["fold"].notna()].astype({"fold": int})
    if fold not in set(folds["fold"]):
        raise ValueError(f"--fold {fold} is not in {folds_path}; it has folds {sorted(set(folds['fold']))}")
    train, val = rows[rows["fold"] != fold], rows[rows["fold"] == fold]
    if train.empty or val.empty:
        raise ValueError(f"fold {fold}: {len(train)} training and {len(val)} validation crops; need both")
    return train.reset_index(drop=True), val.reset_index(drop=True)


def make_loaders(config: dict[str, Any], train: pd.DataFrame, val: pd.DataFrame,
                 context: Dist) -> tuple[DataLoader, DataLoader]:
    crops, size = Path(config["crops"]), config["input_size"]
    mean, std = config["mean"], config["std"]
    train_set = CropDataset(train, crops, size, mean, std, build_augmentation(config["augment"]))
    val_set = CropDataset(val, crops, size, mean, std)
    if config["balance"] == "sampler":
        sampler = BalancedSampler(train_set.labels, context.rank, context.world_size, config["seed"])
    else:
        sampler = DistributedSampler(train_set, context.world_size, context.rank, shuffle=True, seed=config["seed"])
    common = dict(batch_size=config["batch_size"], num_workers=config["num_workers"],
                  pin_memory=context.device.type == "cuda")
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=len(train_set) > config["batch_size"], **common)
    return train_loader, DataLoader(val_set, shuffle=False, **common)


# ---------------------------------------------------------------- model, optimiser, checkpoint

def build_model(config: dict[str, Any]) -> torch.nn.Module:
    model = create_classifier(config["arch"])
    if config["pretrained"]:
        load_pretrained(model, config["pretrained"], config["arch"])
    return model


def build_optimizer(config: dict[str, Any], model: torch.nn.Module) -> torch.optim.Optimizer:
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                               weight_decay=config["weight_decay"], nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])


def build_scheduler(config: dict[str, Any], optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    total = max(1, config["epochs"] * steps_per_epoch)
    if config["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config["lr"], total_steps=total)
    floor = config["lr"] * config["min_lr_ratio"]
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=floor)


def build_loss(config: dict[str, Any], train_labels: np.ndarray, device: torch.device) -> torch.nn.Module:
    pos_weight = None
    if config["balance"] == "weights":
        fakes = float(train_labels.sum())
        pos_weight = torch.tensor([(len(train_labels) - fakes) / max(fakes, 1.0)], device=device)
    return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)


@dataclass
class TrainState:
    """What survives a kill: the last finished epoch, early-stopping state and the metrics so far."""

    epoch: int = 0
    best_log_loss: float = math.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, scaler, state: TrainState,
                    config: dict[str, Any]) -> None:
    """Everything needed to continue after the last finished epoch, written atomically."""
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "scaler": scaler.state_dict(), "train_state": vars(state), "rng": rng_state(),
               "arch": config["arch"], "input_size": config["input_size"]}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, scaler,
                    config: dict[str, Any]) -> TrainState:
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}; run without --resume to start")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if (payload["arch"], payload["input_size"]) != (config["arch"], config["input_size"]):
        raise ValueError(f"--resume: {path} is {payload['arch']}@{payload['input_size']}, the config asks for "
                         f"{config['arch']}@{config['input_size']}; use the run's own config")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    scaler.load_state_dict(payload["scaler"])
    restore_rng(payload["rng"])
    return TrainState(**payload["train_state"])


# ---------------------------------------------------------------- train / evaluate

def train_one_epoch(model, loader: DataLoader, criterion, optimizer, scheduler, scaler, config: dict[str, Any],
                    context: Dist, epoch: int) -> float:
    """One pass over this rank's share of the training crops; returns the mean loss over all ranks."""
    model.train()
    use_amp = scaler.is_enabled()
    smoothing = config["label_smoothing"]
    total, count = 0.0, 0
    defence = defence_from_config(config)
    bar = tqdm(loader, desc=f"epoch {epoch}/{config['epochs']}", unit="batch", disable=not context.main,
               dynamic_ncols=True)

    def batch_loss(net: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            return criterion(net(images)[:, 0].float(), targets)

    for images, labels in bar:
        images, labels = images.to(context.device, non_blocking=True), labels.to(context.device, non_blocking=True)
        targets = labels * (1 - smoothing) + 0.5 * smoothing
        images = defence.mix_adversarial(model, images, targets, batch_loss)
        objective, loss = defence.objective(model, images, targets, batch_loss)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(objective).backward()
        if config["grad_clip"]:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += float(loss.item()) * len(labels)
        count += len(labels)
        bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return mean_over_ranks(total / max(count, 1), context)


def predict_logits(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Logits of every crop in loader order (the model's own dtype: fp16 kernel models work too)."""
    model.eval()
    dtype = next(model.parameters()).dtype
    out = []
    with torch.inference_mode():
        for images, _ in loader:
            out.append(model(images.to(device, dtype=dtype))[:, 0].float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def video_probs(rows: pd.DataFrame, probs: np.ndarray, aggregation: str) -> pd.DataFrame:
    """`video, label, prob`: each video's score from its persons' crop scores, as the kernel aggregates them."""
    frame = rows[["video", "person", "label"]].assign(prob=probs)
    scores = [{"video": video, "label": int(group["label"].iloc[0]),
               "prob": video_score({p: g["prob"].to_numpy() for p, g in group.groupby("person")}, aggregation)}
              for video, group in frame.groupby("video")]
    return pd.DataFrame(scores)


def validation_metrics(rows: pd.DataFrame, logits: np.ndarray, aggregation: str) -> dict[str, float]:
    labels = rows["label"].to_numpy(dtype=np.float64)
    crop_loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels))
    probs = 1.0 / (1.0 + np.exp(-logits))
    videos = video_probs(rows, probs, aggregation)
    report = binary_report(videos["label"], videos["prob"])
    return {"val_loss": float(crop_loss), "val_log_loss": report["log_loss"], "val_auc": report["auc"],
            "val_accuracy": report["accuracy"], "val_crop_auc": auc(labels, probs)}


# ---------------------------------------------------------------- outputs

def write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    """metrics.csv and loss_curve.png, both atomically."""
    frame = pd.DataFrame(history, columns=METRIC_COLUMNS)
    write_atomic(run_dir / "metrics.csv", frame.to_csv(index=False, float_format="%.6f"))
    plot_curves(frame, run_dir / "loss_curve.png")


def plot_curves(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, scores) = plt.subplots(1, 2, figsize=(11, 4))
    for column in ("train_loss", "val_loss", "val_log_loss"):
        losses.plot(frame["epoch"], frame[column], marker="o", label=column)
    losses.set(xlabel="epoch", ylabel="loss", title="losses (val_log_loss: per video, clipped)")
    losses.legend()
    for column in ("val_auc", "val_crop_auc", "val_accuracy"):
        scores.plot(frame["epoch"], frame[column], marker="o", label=column)
    scores.set(xlabel="epoch", ylim=(0, 1.02), title="validation")
    scores.legend()
    save_png(figure, path)


def save_png(figure, path: Path) -> None:
    """Write a matplotlib figure to `path` as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside `path`, so folds trained in parallel do not lose each other's entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_manifest(manifest: Path, entry: dict[str, Any]) -> None:
    """Add `entry` to the manifest, replacing any entry of the same name; atomic."""
    with locked(manifest):
        data = json.loads(manifest.read_text()) if manifest.is_file() else {"models": [], "stacker": None}
        data["models"] = [m for m in data.get("models", []) if m.get("name") != entry["name"]] + [entry]
        write_atomic(manifest, json.dumps(data, indent=1) + "\n")


def export(config: dict[str, Any], paths: RunPaths, state: TrainState, val: pd.DataFrame,
           val_loader: DataLoader, device: torch.device) -> pd.DataFrame:
    """Manifest entry for the best weights, then OOF predictions from those weights loaded the kernel's way."""
    best = min(state.history, key=lambda row: row["val_log_loss"])
    entry = manifest_entry(config["name"], config["arch"], paths.best_weights, paths.manifest.parent,
                           config["input_size"], config["mean"], config["std"], fold=config["fold"],
                           epoch=int(best["epoch"]), val_log_loss=round(best["val_log_loss"], 6),
                           val_auc=round(best["val_auc"], 6) if not math.isnan(best["val_auc"]) else None)
    update_manifest(paths.manifest, entry)
    spec = next(s for s in load_manifest(paths.manifest).models if s.name == config["name"])
    model = load_classifier(spec, str(device))
    probs = 1.0 / (1.0 + np.exp(-predict_logits(model, val_loader, device)))
    oof = val[["video", "frame", "person"]].assign(model=config["name"], prob=probs, label=val["label"])
    write_atomic(paths.run_dir / "oof.csv", oof[OOF_COLUMNS].to_csv(index=False, float_format="%.6f"))
    log.info("best epoch %d: val log loss %.4f, AUC %.4f; %s added to %s; OOF: %s", best["epoch"],
             best["val_log_loss"], best["val_auc"], paths.best_weights, paths.manifest, paths.run_dir / "oof.csv")
    return oof


# ---------------------------------------------------------------- main

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    model = build_model(config).to(context.device)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=config["amp"] and context.device.type == "cuda")
    criterion = build_loss(config, train_loader.dataset.labels, context.device)
    state = TrainState()
    if resume:
        state = load_checkpoint(paths.checkpoint, model, optimizer, scheduler, scaler, config)
        log.info("resumed from %s after epoch %d", paths.checkpoint, state.epoch)
    elif paths.checkpoint.is_file():
        log.warning("%s exists: starting afresh (pass --resume to continue it)", paths.checkpoint)
    log.info("fold %d: %d training crops (%d videos), %d validation crops (%d videos); %s on %s x%d",
             config["fold"], len(train_rows), train_rows["video"].nunique(), len(val_rows),
             val_rows["video"].nunique(), config["arch"], context.device, context.world_size)
    trained = DistributedDataParallel(model) if context.world_size > 1 else model
    epochs_run = 0
    while state.epoch < config["epochs"] and not state.stopped_early:
        if stop_after is not None and epochs_run >= stop_after:
            log.info("stopping after %d epoch(s) as asked; continue with --resume", epochs_run)
            return state
        epoch, started = state.epoch + 1, time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        lr = scheduler.get_last_lr()[0]
        train_loss = train_one_epoch(trained, train_loader, criterion, optimizer, scheduler, scaler, config,
                                     context, epoch)
        metrics = validation_metrics(val_rows, predict_logits(model, val_loader, context.device),
                                     config["aggregation"]) if context.main else {}
        val_log_loss = broadcast_float(metrics.get("val_log_loss", 0.0), context)
        is_best = improved(state, val_log_loss)
        state.epoch = epoch
        state.stopped_early = config["early_stopping"] is not None and state.bad_epochs >= config["early_stopping"]
        if context.main:
            state.history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss, **metrics,
                                  "seconds": round(time.perf_counter() - started, 1)})
            log.info("epoch %d: train loss %.4f, val loss %.4f, val log loss %.4f, AUC %.4f, accuracy %.3f%s",
                     epoch, train_loss, metrics["val_loss"], metrics["val_log_loss"], metrics["val_auc"],
                     metrics["val_accuracy"], " (best)" if is_best else "")
            if is_best:
                save_fp16_state_dict(model, paths.best_weights)
            write_metrics(paths.run_dir, state.history)
            save_checkpoint(paths.checkpoint, model, optimizer, scheduler, scaler, state, config)
        epochs_run += 1
        if state.stopped_early:
            log.info("early stopping: val log loss has not improved for %d epochs", state.bad_epochs)
    if context.main:
        export(config, paths, state, val_rows, val_loader, context.device)
    return state


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="YAML/JSON overriding training/configs/default.yaml")
    parser.add_argument("--fold", type=int, required=True, help="validation fold; the others are trained on")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/NAME/last.pt")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="train at most this many epochs in this invocation (time-boxed sessions), then exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = resolve_config(args.config, args.fold)
    context = init_distributed(config["device"])
    logging.basicConfig(level=logging.INFO if context.main else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s %(name)s[{context.rank}]: %(message)s")
    if context.main:
        paths = run_paths(config)
        resolved = yaml.safe_dump({**config, "resume": args.resume, "world_size": context.world_size}, sort_keys=False)
        print(resolved, flush=True)
        write_atomic(paths.run_dir / "config.yaml", resolved)
    try:
        train(config, context, args.resume, args.stop_after)
    finally:
        if context.world_size > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
