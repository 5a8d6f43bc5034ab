"""Out-of-fold evaluation shared by training, the robustness report and the benchmarks: a fold's index rows, logits in
loader order, P(fake) as the kernel computes it, per-video scores as the kernel aggregates them."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from dfdc_core.aggregate import video_score
from dfdc_core.models import fake_probability, forward_logits
from training.data.index import read_index
from training.engine.train_config import check_classes

log = logging.getLogger("train_fold")


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
    rows = with_targets(rows, config, index_path)
    train, val = rows[rows["fold"] != fold], rows[rows["fold"] == fold]
    if train.empty or val.empty:
        raise ValueError(f"fold {fold}: {len(train)} training and {len(val)} validation crops; need both")
    return train.reset_index(drop=True), val.reset_index(drop=True)


def with_classes(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with its `classes` resolved: a multi-class run that leaves them null learns the sorted names of the
    index's `label_column` (rows without one are left out). Resolved before the run's config.yaml is saved, so that
    file is what the run used."""
    if config["num_classes"] == 1 or config["classes"]:
        return config
    index_path = Path(config["crops"]) / "index.csv"
    names = class_names(read_index(index_path), config, index_path)
    return dict(config, classes=sorted(names[names != ""].unique()))


def class_names(rows: pd.DataFrame, config: dict[str, Any], index_path: Path) -> pd.Series:
    """Each row's class name (its `label_column`, "" for none); an error naming the fix if the index has no column."""
    column = config["label_column"]
    if column not in rows.columns:
        raise ValueError(f"{index_path} has no column {column!r} for label_column; add one, e.g. "
                         f"python -m training.methods --index {index_path}")
    return rows[column].astype(str)


def with_targets(rows: pd.DataFrame, config: dict[str, Any], index_path: Path) -> pd.DataFrame:
    """Add `target`, what the loss learns: the 0/1 label, or the class index of `label_column` among the config's
    `classes` (resolved: `with_classes`).

    With classes, `label` becomes class != real_class (for the binary metrics and the stacker), and rows without a
    class are left out.
    """
    if config["num_classes"] == 1:
        return rows.assign(target=rows["label"])
    names = class_names(rows, config, index_path)
    if (names == "").any():
        log.warning("%d crops of %d videos have no %s: left out", int((names == "").sum()),
                    rows.loc[names == "", "video"].nunique(), config["label_column"])
        rows, names = rows[names != ""], names[names != ""]
    check_classes(config, index_path)
    unknown = sorted(set(names) - set(config["classes"]))
    if unknown:
        raise ValueError(f"{index_path}: {config['label_column']} has classes {unknown} that are not in classes "
                         f"{config['classes']}")
    return rows.assign(target=names.map(config["classes"].index),
                       label=(names != config["real_class"]).astype(int))


def real_index(config: dict[str, Any]) -> int:
    return config["classes"].index(config["real_class"]) if config["num_classes"] > 1 else 0


def predict_logits(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                   hflip: bool = False) -> np.ndarray:
    """`(crops, outputs)` logits in loader order (the model's own dtype: fp16 kernel models work too), with the
    kernel's horizontal-flip test-time augmentation when `hflip`."""
    model.eval()
    dtype = next(model.parameters()).dtype
    out = []
    with torch.inference_mode():
        for images, _ in loader:
            out.append(forward_logits(model, images.to(device, dtype=dtype), hflip).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def video_probs(rows: pd.DataFrame, probs: np.ndarray, aggregation: str) -> pd.DataFrame:
    """`video, label, prob`: each video's score from its persons' crop scores, as the kernel aggregates them."""
    frame = rows[["video", "person", "label"]].assign(prob=probs)
    scores = [{"video": video, "label": int(group["label"].iloc[0]),
               "prob": video_score({p: g["prob"].to_numpy() for p, g in group.groupby("person")}, aggregation)}
              for video, group in frame.groupby("video")]
    return pd.DataFrame(scores)


def crop_fake_probs(logits: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """P(fake) of each crop, as the kernel computes it (`dfdc_core.models.fake_probability`)."""
    return fake_probability(torch.from_numpy(logits), real_index(config)).numpy().astype(np.float64)


def video_class_matrix(rows: pd.DataFrame, logits: np.ndarray, count: int) -> np.ndarray:
    """Confusion matrix of videos: true class vs argmax of the mean softmax over the video's crops."""
    from sklearn.metrics import confusion_matrix

    probs = pd.DataFrame(torch.softmax(torch.from_numpy(logits), dim=1).numpy(), index=rows.index)
    videos = probs.groupby(rows["video"]).mean()
    truth = rows.groupby("video")["target"].first().loc[videos.index]
    return confusion_matrix(truth, videos.to_numpy().argmax(axis=1), labels=list(range(count)))


def class_metrics(matrix: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Video accuracy over all classes and per true class (NaN for a class with no validation video)."""
    totals = matrix.sum(axis=1)
    per_class = {f"val_acc_{name}": float(matrix[i, i] / totals[i]) if totals[i] else math.nan
                 for i, name in enumerate(classes)}
    return {"val_class_accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)), **per_class}
