"""Validation of one fold: crop loss, per-video log loss, AUC and accuracy (class accuracies with classes), and
metrics.csv with its loss curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dfdc_core.io import write_atomic
from dfdc_core.metrics import auc, binary_report
from dfdc_core.plots import pyplot, save_figure
from training.engine.evaluate import (
    class_metrics,
    crop_fake_probs,
    video_class_matrix,
    video_probs,
)
from training.engine.losses import BinaryLoss, MultiClassLoss

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_log_loss", "val_auc", "val_accuracy",
                  "val_crop_auc", "seconds"]


def metric_columns(config: dict[str, Any]) -> list[str]:
    if config["num_classes"] == 1:
        return METRIC_COLUMNS
    return METRIC_COLUMNS + ["val_class_accuracy"] + [f"val_acc_{name}" for name in config["classes"]]


def validation_metrics(rows: pd.DataFrame, logits: np.ndarray, config: dict[str, Any]) -> dict[str, float]:
    """Crop loss, binary real/fake metrics per video (from P(fake)) and, with classes, class accuracies."""
    labels = rows["label"].to_numpy(dtype=np.float64)
    targets = torch.from_numpy(rows["target"].to_numpy(dtype=np.float32))
    crop_loss = BinaryLoss(0.0) if config["num_classes"] == 1 else MultiClassLoss(0.0)
    probs = crop_fake_probs(logits, config)
    videos = video_probs(rows, probs, config["aggregation"])
    report = binary_report(videos["label"], videos["prob"])
    metrics = {"val_loss": float(crop_loss(torch.from_numpy(logits), targets)), "val_log_loss": report["log_loss"],
               "val_auc": report["auc"], "val_accuracy": report["accuracy"], "val_crop_auc": auc(labels, probs)}
    if config["num_classes"] > 1:
        metrics.update(class_metrics(video_class_matrix(rows, logits, config["num_classes"]), config["classes"]))
    return metrics


def write_metrics(run_dir: Path, history: list[dict[str, float]], columns: list[str]) -> None:
    """metrics.csv and loss_curve.png, both atomically."""
    frame = pd.DataFrame(history, columns=columns)
    write_atomic(run_dir / "metrics.csv", frame.to_csv(index=False, float_format="%.6f"))
    plot_curves(frame, run_dir / "loss_curve.png")


def plot_curves(frame: pd.DataFrame, path: Path) -> None:
    figure, (losses, scores) = pyplot().subplots(1, 2, figsize=(11, 4))
    for column in ("train_loss", "val_loss", "val_log_loss"):
        losses.plot(frame["epoch"], frame[column], marker="o", label=column)
    losses.set(xlabel="epoch", ylabel="loss", title="losses (val_log_loss: per video, clipped)")
    losses.legend()
    for column in ("val_auc", "val_crop_auc", "val_accuracy", "val_class_accuracy"):
        if column in frame:
            scores.plot(frame["epoch"], frame[column], marker="o", label=column)
    scores.set(xlabel="epoch", ylim=(0, 1.02), title="validation")
    scores.legend()
    figure.tight_layout()
    save_figure(figure, path)

