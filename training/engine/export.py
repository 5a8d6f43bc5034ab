"""A run's folder and its export: the fp16 weights loaded the kernel's way, their manifest entry and the
out-of-fold predictions (with classes, per-class columns and a confusion matrix)."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from dfdc_core.io import write_atomic
from dfdc_core.manifest import ModelSpec, manifest_entry, update_manifest
from dfdc_core.models import load_classifier
from dfdc_core.plots import plot_confusion_matrix
from dfdc_core.preprocessing import Preprocessing, crops_preprocessing
from kernel.config import load_config as load_kernel_config
from training.engine.evaluate import (
    class_metrics,
    crop_fake_probs,
    predict_logits,
    video_class_matrix,
)
from training.engine.validation import metric_columns, validation_metrics, write_metrics

log = logging.getLogger("train_fold")


OOF_COLUMNS = ["video", "frame", "person", "model", "group", "prob", "label"]


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path
    manifest: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def weights(self) -> Path:
        return self.run_dir / "weights_fp16.pth"


def run_paths(config: dict[str, Any]) -> RunPaths:
    """Run folder and manifest; the weights must lie under the manifest's folder (entries are relative)."""
    out = Path(config["out"])
    manifest = Path(config["manifest"]) if config["manifest"] else out / "weights_manifest.json"
    run_dir = out / config["name"]
    if not run_dir.resolve().is_relative_to(manifest.parent.resolve()):
        raise ValueError(f"run folder {run_dir} is not under the manifest's folder {manifest.parent}; "
                         "set 'manifest' to a file in OUT or a parent of it")
    return RunPaths(run_dir, manifest)


def trained_preprocessing(crops: Path) -> Preprocessing:
    """What made the crops under `crops` (extract_faces.py's settings.json; without one, the kernel's defaults)."""
    settings = crops / "settings.json"
    if settings.is_file():
        return crops_preprocessing(json.loads(settings.read_text()))
    return Preprocessing.of_config(load_kernel_config())


def exported_epoch(config: dict[str, Any], history: list[dict[str, float]]) -> dict[str, float]:
    """The metrics row of the epoch whose weights are exported (`export: best` or `last`)."""
    if config["export"] == "best":
        return min(history, key=lambda row: row["val_log_loss"])
    return history[-1]


def export(config: dict[str, Any], paths: RunPaths, history: list[dict[str, float]], val: pd.DataFrame,
           val_loader: DataLoader, device: torch.device) -> pd.DataFrame:
    """OOF predictions of the exported weights loaded the kernel's way, then their manifest entry (the last epoch's
    metrics come from those predictions when the epoch was not validated: `validate_every`)."""
    classes = {"num_classes": config["num_classes"], "classes": config["classes"],
               "real_class": config["real_class"]} if config["num_classes"] > 1 else {}
    logits = predict_logits(load_classifier(exported_spec(config, paths), str(device)), val_loader, device,
                            config["tta_hflip"])
    if "val_log_loss" not in history[-1]:
        history[-1].update(validation_metrics(val, logits, config))
        write_metrics(paths.run_dir, history, metric_columns(config))
    best = exported_epoch(config, history)
    entry = manifest_entry(config["name"], config["arch"], paths.weights, paths.manifest.parent,
                           config["input_size"], config["mean"], config["std"], group=config["group"],
                           preprocessing=trained_preprocessing(Path(config["crops"])).as_dict(),
                           tta_hflip=config["tta_hflip"], fold=config["fold"],
                           epoch=int(best["epoch"]), val_log_loss=round(best["val_log_loss"], 6),
                           val_auc=round(best["val_auc"], 6) if not math.isnan(best["val_auc"]) else None, **classes)
    update_manifest(paths.manifest, [entry])
    oof = val[["video", "frame", "person"]].assign(model=config["name"], group=config["group"],
                                                   prob=crop_fake_probs(logits, config), label=val["label"])
    oof = oof[OOF_COLUMNS]
    if classes:
        oof = oof.join(class_outputs(val, logits, config, paths.run_dir))
    write_atomic(paths.run_dir / "oof.csv", oof.to_csv(index=False, float_format="%.6f"))
    log.info("exported epoch %d (%s): val log loss %.4f, AUC %.4f; %s added to %s; OOF: %s", best["epoch"],
             config["export"], best["val_log_loss"], best["val_auc"], paths.weights, paths.manifest,
             paths.run_dir / "oof.csv")
    return oof


def exported_spec(config: dict[str, Any], paths: RunPaths) -> ModelSpec:
    """The exported weights as the kernel builds them from their manifest entry."""
    return ModelSpec(name=config["name"], arch=config["arch"], file=paths.weights, sha256="",
                     bytes=paths.weights.stat().st_size, input_size=config["input_size"], mean=tuple(config["mean"]),
                     std=tuple(config["std"]), num_classes=config["num_classes"], group=config["group"])


def class_outputs(val: pd.DataFrame, logits: np.ndarray, config: dict[str, Any], run_dir: Path) -> pd.DataFrame:
    """`p_<class>` OOF columns; confusion_matrix.csv and .png of the validation videos (logged per class)."""
    classes = config["classes"]
    matrix = video_class_matrix(val, logits, len(classes))
    accuracy = class_metrics(matrix, classes)
    log.info("attribution: video accuracy %.3f; per class: %s", accuracy["val_class_accuracy"],
             ", ".join(f"{name} {accuracy[f'val_acc_{name}']:.2f}" for name in classes))
    table = pd.DataFrame(matrix, index=pd.Index(classes, name="true"), columns=classes)
    write_atomic(run_dir / "confusion_matrix.csv", table.to_csv())
    plot_confusion_matrix(matrix, classes, run_dir / "confusion_matrix.png",
                          f"{config['name']}\nvalidation videos, accuracy {accuracy['val_class_accuracy']:.2f}")
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    return pd.DataFrame(probs, index=val.index, columns=[f"p_{name}" for name in classes])

