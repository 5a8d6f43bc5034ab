"""`python -m ensemble.stack`: fit a LogisticRegression stacker on out-of-fold predictions, export JSON.

    python -m ensemble.stack --oof runs/*/oof.csv --folds crops/folds.csv --out stacker.json

Features per video and model come from `kernel.aggregate.video_features`, the function the kernel uses at
inference. C is chosen by grouped cross-validation (groups = original clusters from the folds CSV), then
the model is refit on every OOF video. Standardisation is folded into the exported coefficients, so the
kernel applies the JSON with one dot product.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kernel.aggregate import FEATURE_STATS, Stacker, feature_name, video_features, video_score
from kernel.metrics import CLIP, log_loss
from kernel.submission import write_atomic

C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 11))


class OOFError(ValueError):
    """An OOF or folds file is unusable; the message names it and the fix."""


def read_oof(paths: list[Path]) -> tuple[dict[str, dict[str, dict[int, list[tuple[int, float]]]]], dict[str, int]]:
    """`{video: {model: {person: [(frame, prob), ...]}}}` and `{video: label}` from OOF CSVs."""
    scores: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    labels: dict[str, int] = {}
    for path in paths:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"video", "frame", "person", "model", "prob", "label"} - set(reader.fieldnames or [])
            if missing:
                raise OOFError(f"{path}: lacks columns {sorted(missing)}; pass the oof.csv written by train_fold.py")
            for row in reader:
                scores[row["video"]][row["model"]][int(row["person"])].append((int(row["frame"]), float(row["prob"])))
                label = int(float(row["label"]))
                if labels.setdefault(row["video"], label) != label:
                    raise OOFError(f"{path}: video {row['video']} has labels {labels[row['video']]} and {label}")
    return scores, labels


def read_groups(path: Path) -> dict[str, int]:
    """`{video: group}` from the folds CSV written by training/folds.py."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"video", "group"} <= set(reader.fieldnames or []):
            raise OOFError(f"{path}: needs 'video' and 'group' columns; pass the folds.csv of training/folds.py")
        return {row["video"]: int(row["group"]) for row in reader}


def person_arrays(persons: dict[int, list[tuple[int, float]]]) -> dict[int, np.ndarray]:
    """Each person's probabilities in frame order."""
    return {person: np.array([prob for _, prob in sorted(rows)]) for person, rows in persons.items()}


def build_table(scores, labels: dict[str, int], groups: dict[str, int], models: list[str],
                strategy: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Videos scored by every model: names, feature matrix, labels, groups, per-model video scores, features."""
    names = [feature_name(model, stat) for model in models for stat in FEATURE_STATS]
    videos = sorted(v for v in scores if all(m in scores[v] for m in models))
    missing = [v for v in videos if v not in groups]
    if missing:
        raise OOFError(f"{len(missing)} OOF videos are not in the folds CSV (e.g. {missing[:3]}); "
                       "pass the folds.csv the models were trained with")
    features, model_scores = [], []
    for video in videos:
        row, video_scores = {}, []
        for model in models:
            persons = person_arrays(scores[video][model])
            row.update({feature_name(model, k): v for k, v in video_features(persons, strategy).items()})
            video_scores.append(video_score(persons, strategy))
        features.append([row[name] for name in names])
        model_scores.append(video_scores)
    return (videos, np.array(features), np.array([labels[v] for v in videos]),
            np.array([groups[v] for v in videos]), np.array(model_scores), names)


def grouped_cv_predictions(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, splits: int) -> np.ndarray:
    """Out-of-group-fold P(fake) of a standardised logistic regression with inverse strength `c`."""
    probs = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=splits).split(x, y, groups):
        if len(np.unique(y[train])) < 2:
            probs[test] = y[train].mean()
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(x[train], y[train])
        probs[test] = model.predict_proba(x[test])[:, 1]
    return probs


def export(model, names: list[str], clip: tuple[float, float]) -> dict:
    """Fold the scaler into the logistic regression: plain coefficients on raw features."""
    scaler, regression = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
    coef = regression.coef_[0] / scaler.scale_
    intercept = float(regression.intercept_[0] - np.sum(regression.coef_[0] * scaler.mean_ / scaler.scale_))
    return {"feature_names": names, "coef": coef.tolist(), "intercept": intercept, "clip": list(clip),
            "sklearn_version": sklearn.__version__}


def fit_stacker(oof_paths: list[Path], folds_path: Path, strategy: str = "confident", splits: int = 5,
                clip: tuple[float, float] = CLIP) -> tuple[dict, dict[str, float]]:
    """Fit the stacker; return its JSON dict and the log losses a user compares (same videos, same groups)."""
    scores, labels = read_oof(oof_paths)
    models = sorted({m for per_model in scores.values() for m in per_model})
    videos, x, y, groups, model_scores, names = build_table(scores, labels, read_groups(folds_path), models, strategy)
    if len(np.unique(y)) < 2:
        raise OOFError("the OOF videos hold one class only: a stacker cannot be fitted")
    splits = min(splits, len(np.unique(groups)))
    if splits < 2:
        raise OOFError("the OOF videos form a single group: grouped cross-validation needs at least two")
    cv_losses = {c: log_loss(y, grouped_cv_predictions(x, y, groups, c, splits), clip) for c in C_GRID}
    best_c = min(cv_losses, key=cv_losses.get)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=best_c, max_iter=1000)).fit(x, y)
    report = {f"model {m}": log_loss(y, model_scores[:, i], clip) for i, m in enumerate(models)}
    report["mean of models"] = log_loss(y, model_scores.mean(axis=1), clip)
    report["stacker (grouped CV)"] = cv_losses[best_c]
    stacker = export(model, names, clip)
    stacker.update({"C": best_c, "aggregation": strategy, "models": models, "videos": len(videos),
                    "cv_log_loss": cv_losses[best_c], "cv_splits": splits})
    return stacker, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oof", type=Path, nargs="+", required=True, help="oof.csv files of train_fold.py")
    parser.add_argument("--folds", type=Path, required=True, help="folds.csv of training/folds.py (groups)")
    parser.add_argument("--out", type=Path, required=True, help="stacker JSON to write")
    parser.add_argument("--aggregation", choices=("mean", "confident"), default="confident")
    parser.add_argument("--splits", type=int, default=5, help="grouped CV folds for choosing C")
    args = parser.parse_args(argv)
    try:
        stacker, report = fit_stacker(args.oof, args.folds, args.aggregation, args.splits)
    except (OOFError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_atomic(args.out, json.dumps(stacker, indent=1))
    Stacker.from_json(args.out)
    print(f"{stacker['videos']} videos, models {stacker['models']}, C = {stacker['C']:.4g}")
    for name, value in report.items():
        print(f"  log loss {name:<28} {value:.4f}")
    verdict = "pays off" if report["stacker (grouped CV)"] < report["mean of models"] else "does not pay off"
    print(f"stacking {verdict} over the plain mean; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
