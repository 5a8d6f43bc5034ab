"""Grouped OOF figures of finished recipe runs, shared by the quality benchmarks (`recipe_quality`, `heldout_manifest`,
`shortcut_baseline`, `people_scaling`): the FF++ subset, rows per score column, per manipulation method and per
source."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dfdc_core.metrics import auc, log_loss, prior_weights
from training.data.methods import REAL, method_of
from training.pipelines.recipe import reported_items

FFPP_PAIRS = r"ffc\d+_(yt|df|f2f|fs|nt)_.*"


def subset_rows(videos: pd.DataFrame, target_prior: float) -> list[dict[str, float | str]]:
    """Log loss (prior-weighted) and AUC of each score column of `oof_videos.csv` rows, and the constant."""
    y = videos["label"].to_numpy()
    weights = prior_weights(y, target_prior)
    groups = [c for c in videos.columns if c.startswith("score_")]
    columns = {f"model {c.removeprefix('score_')}": videos[c] for c in groups}
    columns["mean of models"] = videos[groups].mean(axis=1)
    columns["stacker (nested CV)"] = videos["calibrated"]
    columns["constant prior"] = pd.Series(np.full(len(y), target_prior))
    return [{"name": name, "log_loss": log_loss(y, probs, weights=weights), "auc": auc(y, probs)}
            for name, probs in columns.items()]


def method_rows(videos: pd.DataFrame) -> list[dict[str, float | str]]:
    """Per method of `oof_videos.csv` rows: the stacker's log loss on its videos and, for a fake method, the AUC
    of its videos against every real one (NaN without reals)."""
    methods = pd.Series([method_of(video, label, unmatched="label")
                         for video, label in zip(videos["video"], videos["label"])])
    reals = videos[methods.eq(REAL).to_numpy()]
    rows = []
    for method in sorted(methods.unique(), key=lambda name: (name != REAL, name)):
        chosen = videos[methods.eq(method).to_numpy()]
        scored = chosen if method == REAL else pd.concat([reals, chosen])
        rows.append({"name": method, "n": len(chosen),
                     "log_loss": log_loss(chosen["label"], chosen["calibrated"]),
                     "auc": auc(scored["label"], scored["calibrated"])})
    return rows


def in_subset(names: pd.Series, subset: str) -> np.ndarray:
    """Which video names the `subset` regex matches whole."""
    return names.map(lambda name: re.fullmatch(subset, name) is not None).to_numpy(dtype=bool)


def seed_results(out: Path, seed: int, subset: str) -> list[dict]:
    """One seed's rows: all OOF videos (the recipe's report), the subset and each method (the stacker's)."""
    report = json.loads((out / "report.json").read_text())
    videos = pd.read_csv(out / "oof_videos.csv", keep_default_na=False)
    reported = reported_items(videos)  # the recipe's rule: the videos, beside stills
    videos = videos[videos["video"].isin(reported)] if reported is not None else videos
    chosen = videos[in_subset(videos["video"], subset)].reset_index(drop=True)
    rows = [{"seed": seed, "videos": "all", "n": report["videos"], "minutes": report["minutes"], **row}
            for row in report["rows"]]
    rows += [{"seed": seed, "videos": "subset", "n": len(chosen), "minutes": report["minutes"], **row}
             for row in subset_rows(chosen, report["target_prior"])]
    rows += [{"seed": seed, "videos": "by method", "minutes": report["minutes"], **row} for row in method_rows(videos)]
    rows += [{"seed": seed, "videos": f"source {row['source']}", "name": row["method"] or "stacker", "n": row["n"],
              "minutes": report["minutes"], "log_loss": row["log_loss"], "auc": row["auc"],
              "constant": row["constant"], "reals_called_fake": row["reals_called_fake"]}
             for row in report.get("sources", [])]
    return rows


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds of each (videos, name) row."""
    grouped = table.groupby(["videos", "name"], sort=False)
    extra = {"reals_called_fake": ("reals_called_fake", "mean")} if "reals_called_fake" in table.columns else {}
    return grouped.agg(log_loss=("log_loss", "mean"), log_loss_sd=("log_loss", "std"), auc=("auc", "mean"),
                       auc_sd=("auc", "std"), worst_log_loss=("log_loss", "max"), n=("n", "first"),
                       **extra).reset_index()
