"""The stacker or calibrator fitted on out-of-fold predictions, with nested grouped cross-validation and weighted to the
target prior, exported as plain JSON for the kernel. The command line is `python -m ensemble.stack`."""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dfdc_core.aggregate import (
    DEFAULT_FEATURES,
    FEATURE_STATS,
    feature_name,
    logit,
    sigmoid,
    video_features,
    video_score,
)
from dfdc_core.config import read_regular_file
from dfdc_core.metrics import CLIP, auc, log_loss, prior_weights

C_GRID = tuple(float(c) for c in np.logspace(-2, 2, 9))


OOF_COLUMNS = {"video", "frame", "person", "model", "prob", "label"}


class OOFError(ValueError):
    """An OOF or folds file is unusable; the message names it and the fix."""


@dataclass
class Table:
    """The videos scored by every model group: features, labels, fold groups and each group's video score."""

    videos: list[str]
    features: np.ndarray
    labels: np.ndarray
    clusters: np.ndarray
    scores: np.ndarray  # (videos, groups) video scores by the aggregation
    groups: list[str]
    feature_names: list[str]
    calibrated: np.ndarray | None = None  # the calibrator/stacker's nested-CV P(fake), once fitted

    def subset(self, keep: np.ndarray) -> Table:
        """The videos where the boolean mask `keep` is true."""
        return Table([video for video, kept in zip(self.videos, keep) if kept], self.features[keep],
                     self.labels[keep], self.clusters[keep], self.scores[keep], self.groups, self.feature_names,
                     None if self.calibrated is None else self.calibrated[keep])


OOF_FIX = "pass the oof.csv written by train_fold.py"
FOLDS_FIX = "pass the folds.csv of training/folds.py"


def read_rows(path: Path, columns: set[str], fix: str) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV with (at least) `columns`; `OOFError` naming the file and `fix` otherwise."""
    try:
        reader = csv.DictReader(io.StringIO(read_regular_file(path).decode(), newline=""))
        rows, fields = list(reader), reader.fieldnames or []
    except OSError as error:
        raise OOFError(f"{path}: cannot read it ({error.strerror or error}); {fix}") from error
    except (UnicodeDecodeError, csv.Error) as error:
        raise OOFError(f"{path}: cannot read it as UTF-8 CSV ({error}); {fix}") from error
    missing = columns - set(fields)
    if missing:
        raise OOFError(f"{path}: lacks columns {sorted(missing)}; {fix}")
    return rows


def field(row: dict[str, str], key: str, parse, wanted: str, path: Path, line: int):
    """`parse(row[key])`; `OOFError` naming the file, line, column and `wanted` when it is blank or not that."""
    try:
        return parse(row[key])
    except (TypeError, ValueError) as error:
        raise OOFError(f"{path}: line {line}: '{key}' is {row[key]!r}; it must be {wanted}; {OOF_FIX}") from error


def probability(text: str) -> float:
    """A finite number from 0 to 1 (`ValueError` otherwise: NaN, inf, text, -2, 3)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(text)
    return value


def label_of(text: str) -> int:
    """0 (real) or 1 (fake), written as an integer or a float ('1', '1.0')."""
    value = float(text)
    if value not in (0.0, 1.0):
        raise ValueError(text)
    return int(value)


def non_empty(text: str) -> str:
    """A non-empty name."""
    if not text:
        raise ValueError(text)
    return text


def read_oof(paths: list[Path]) -> tuple[dict[str, dict[str, dict[int, dict[int, list[float]]]]], dict[str, int]]:
    """`{video: {group: {person: {frame: [probs]}}}}` and `{video: label}` from OOF CSVs (a file without a
    `group` column: each model is its own group). `OOFError` naming the file and line of any value that is not what
    train_fold.py writes (a blank field, a probability that is not a number from 0 to 1, a label other than 0/1)."""
    scores: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    labels: dict[str, int] = {}
    for path in paths:
        for line, row in enumerate(read_rows(path, OOF_COLUMNS, OOF_FIX), start=2):
            video = field(row, "video", non_empty, "a video name", path, line)
            group = row.get("group") or field(row, "model", non_empty, "a model name", path, line)
            person = field(row, "person", int, "a whole number", path, line)
            frame = field(row, "frame", int, "a whole number", path, line)
            scores[video][group][person][frame].append(field(row, "prob", probability, "a number from 0 to 1", path,
                                                             line))
            label = field(row, "label", label_of, "0 (real) or 1 (fake)", path, line)
            if labels.setdefault(video, label) != label:
                raise OOFError(f"{path}: video {video} has labels {labels[video]} and {label}")
    return scores, labels


def read_groups(path: Path) -> dict[str, int]:
    """`{video: original cluster}` from the folds CSV written by training/folds.py."""
    rows = read_rows(path, {"video", "group"}, FOLDS_FIX)
    groups = {}
    for line, row in enumerate(rows, start=2):
        try:
            groups[non_empty(row["video"])] = int(row["group"])
        except (TypeError, ValueError) as error:
            raise OOFError(f"{path}: line {line}: video {row['video']!r}, group {row['group']!r}; each row needs a "
                           f"video name and a whole-number group; {FOLDS_FIX}") from error
    return groups


def calibration_items(folds_path: Path) -> set[str] | None:
    """The OOF items the calibrator is fitted on: those of every source (the folds CSV's `source` column) that holds
    both classes, since a real-only or fake-only source cannot say where the prior-weighted boundary lies; None
    (every item) when that is all of them, when none has both or when the CSV names no sources. With 64 dev videos
    beside 3,761 FF++ crops, fitting on both instead of the videos alone lowered the videos' nested-CV log loss on 9
    runs of 9 (mean 0.573 to 0.531, AUC 0.781 to 0.825): 64 items are too few for a stable fit."""
    rows = read_rows(folds_path, {"video", "group"}, FOLDS_FIX)
    if not rows or not {"source", "label"} <= set(rows[0]):
        return None
    classes: dict[str, set[int]] = defaultdict(set)
    for line, row in enumerate(rows, start=2):
        try:
            classes[row["source"]].add(label_of(row["label"]))
        except (TypeError, ValueError) as error:
            raise OOFError(f"{folds_path}: line {line}: label {row['label']!r}; it must be 0 (real) or 1 (fake); "
                           f"{FOLDS_FIX}") from error
    chosen = {row["video"] for row in rows if len(classes[row["source"]]) == 2}
    return chosen if 0 < len(chosen) < len(rows) else None


def person_arrays(persons: dict[int, dict[int, list[float]]]) -> dict[int, np.ndarray]:
    """Each person's P(fake) in frame order (the mean where several models of the group scored a frame)."""
    return {person: np.array([np.mean(frames[f]) for f in sorted(frames)]) for person, frames in persons.items()}


def build_table(scores, labels: dict[str, int], clusters: dict[str, int], groups: list[str], strategy: str,
                stats: tuple[str, ...] = DEFAULT_FEATURES) -> Table:
    """Per-video features (`stats` of each group) of the videos every group scored."""
    names = [feature_name(group, stat) for group in groups for stat in stats]
    videos = sorted(v for v in scores if all(g in scores[v] for g in groups))
    missing = [v for v in videos if v not in clusters]
    if missing:
        raise OOFError(f"{len(missing)} OOF videos are not in the folds CSV (e.g. {missing[:3]}); "
                       "pass the folds.csv the models were trained with")
    features, video_scores = [], []
    for video in videos:
        row, per_group = {}, []
        for group in groups:
            persons = person_arrays(scores[video][group])
            row.update({feature_name(group, k): v for k, v in video_features(persons, strategy).items()})
            per_group.append(video_score(persons, strategy))
        features.append([row[name] for name in names])
        video_scores.append(per_group)
    return Table(videos, np.array(features).reshape(len(videos), len(names)), np.array([labels[v] for v in videos]),
                 np.array([clusters[v] for v in videos]), np.array(video_scores), groups, names)


def fit_regression(x: np.ndarray, y: np.ndarray, c: float, target_prior: float):
    """A standardised logistic regression weighted so the fakes have `target_prior`; a single feature's
    coefficient is kept non-negative (a calibrator never reverses a model), else the constant prior."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    model.fit(x, y, logisticregression__sample_weight=prior_weights(y, target_prior))
    regression = model.named_steps["logisticregression"]
    if x.shape[1] == 1 and regression.coef_[0, 0] < 0:
        regression.coef_[:] = 0.0
        regression.intercept_[:] = float(logit(target_prior))
    return model


def grouped_predictions(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, c: float, splits: int,
                        target_prior: float) -> np.ndarray:
    """Out-of-cluster-fold P(fake) of the regression with inverse strength `c`."""
    probs = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=splits).split(x, y, clusters):
        if len(np.unique(y[train])) < 2:
            probs[test] = target_prior
            continue
        probs[test] = fit_regression(x[train], y[train], c, target_prior).predict_proba(x[test])[:, 1]
    return probs


def choose_c(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, splits: int, target_prior: float,
             clip: tuple[float, float]) -> float:
    """The C of `C_GRID` with the lowest prior-weighted grouped-CV log loss."""
    splits = min(splits, len(np.unique(clusters)))
    if splits < 2 or len(np.unique(y)) < 2:
        return 1.0
    weights = prior_weights(y, target_prior)
    losses = {c: log_loss(y, grouped_predictions(x, y, clusters, c, splits, target_prior), clip, weights)
              for c in C_GRID}
    return min(losses, key=losses.get)


def nested_predictions(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, splits: int, target_prior: float,
                       clip: tuple[float, float]) -> np.ndarray:
    """Outer grouped-CV P(fake) with C chosen inside each outer training part: an honest estimate."""
    probs = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=splits).split(x, y, clusters):
        if len(np.unique(y[train])) < 2:
            probs[test] = target_prior
            continue
        c = choose_c(x[train], y[train], clusters[train], splits, target_prior, clip)
        probs[test] = fit_regression(x[train], y[train], c, target_prior).predict_proba(x[test])[:, 1]
    return probs


def export(model, names: list[str], clip: tuple[float, float]) -> dict:
    """Fold the scaler into the logistic regression: plain coefficients on raw features."""
    scaler, regression = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
    coef = regression.coef_[0] / scaler.scale_
    intercept = float(regression.intercept_[0] - np.sum(regression.coef_[0] * scaler.mean_ / scaler.scale_))
    return {"feature_names": names, "coef": coef.tolist(), "intercept": intercept, "clip": list(clip),
            "sklearn_version": sklearn.__version__}


def shift_prior(probs: np.ndarray, from_prior: float, to_prior: float) -> np.ndarray:
    """Probabilities calibrated for `from_prior` re-expressed for a population with `to_prior` fakes."""
    return sigmoid(logit(probs, 30.0) + logit(to_prior, 30.0) - logit(from_prior, 30.0))


def score_rows(table: Table, stacked: np.ndarray, target_prior: float,
               clip: tuple[float, float]) -> list[dict[str, float | str]]:
    """Log loss (weighted to the target prior, and at the OOF's own share of fakes) and AUC of each group's raw
    video score, their plain mean, the stacker's nested-CV output and the constant prior, on the same videos."""
    y, data_prior = table.labels, float(table.labels.mean())
    weights = prior_weights(y, target_prior)
    rows = [{"name": f"model {g}", "probs": table.scores[:, i], "at_data": table.scores[:, i]}
            for i, g in enumerate(table.groups)]
    mean = table.scores.mean(axis=1)
    rows.append({"name": "mean of models", "probs": mean, "at_data": mean})
    rows.append({"name": "stacker (nested CV)", "probs": stacked,
                 "at_data": shift_prior(stacked, target_prior, data_prior)})
    rows.append({"name": "constant prior", "probs": np.full(len(y), target_prior),
                 "at_data": np.full(len(y), data_prior)})
    return [{"name": row["name"], "log_loss": log_loss(y, row["probs"], clip, weights),
             "log_loss_at_data_prior": log_loss(y, row["at_data"], clip), "auc": auc(y, row["probs"])}
            for row in rows]


def fit_stacker(oof_paths: list[Path], folds_path: Path, strategy: str = "mean", splits: int = 5,
                clip: tuple[float, float] = CLIP, target_prior: float = 0.5,
                stats: tuple[str, ...] = DEFAULT_FEATURES, variants: bool = True,
                only: set[str] | None = None) -> tuple[dict, list[dict], Table]:
    """Fit the calibrator/stacker (and, with `variants` and several groups, its variants for subsets of the groups)
    on the OOF videos (those in `only`, when given); return its JSON dict, the report rows (same videos, same
    clusters), the table."""
    if not 0.0 < target_prior < 1.0:
        raise OOFError(f"--target-prior {target_prior}: must lie strictly between 0 and 1")
    unknown = sorted(set(stats) - set(FEATURE_STATS))
    if unknown:
        raise OOFError(f"--features {unknown}: unknown; choose from {list(FEATURE_STATS)}")
    scores, labels = read_oof(oof_paths)
    if only is not None:
        scores = {video: per_group for video, per_group in scores.items() if video in only}
    groups = sorted({g for per_group in scores.values() for g in per_group})
    table = build_table(scores, labels, read_groups(folds_path), groups, strategy, tuple(stats))
    if len(np.unique(table.labels)) < 2:
        raise OOFError("the OOF videos hold one class only: a calibrator cannot be fitted")
    splits = min(splits, len(np.unique(table.clusters)))
    if splits < 2:
        raise OOFError("the OOF videos form a single cluster: grouped cross-validation needs at least two")
    x, y = table.features, table.labels
    stacked = table.calibrated = nested_predictions(x, y, table.clusters, splits, target_prior, clip)
    best_c = choose_c(x, y, table.clusters, splits, target_prior, clip)
    stacker = export(fit_regression(x, y, best_c, target_prior), table.feature_names, clip)
    report = score_rows(table, stacked, target_prior, clip)
    stacker.update({"kind": "platt" if len(table.feature_names) == 1 else "stacker", "C": best_c,
                    "aggregation": strategy, "groups": groups, "videos": len(table.videos),
                    "target_prior": target_prior, "oof_prior": float(y.mean()), "cv_splits": splits,
                    "report": report})
    if variants and len(groups) > 1:
        stacker["variants"] = fit_variants(table, splits, target_prior, clip)
    return stacker, report, table


def oof_table(oof_paths: list[Path], folds_path: Path, groups: list[str], strategy: str,
              stats: tuple[str, ...]) -> Table:
    """The features and scores of every OOF video that each of `groups` scored (for applying a fitted stacker)."""
    scores, labels = read_oof(oof_paths)
    return build_table(scores, labels, read_groups(folds_path), groups, strategy, tuple(stats))


def fit_variants(table: Table, splits: int, target_prior: float, clip: tuple[float, float]) -> list[dict]:
    """The calibrator/stacker refitted on each proper subset of the table's groups, largest subsets first: what the
    kernel applies when the time budget leaves only those groups (C chosen as for the full fit; `log_loss` from the
    nested grouped CV, weighted to the target prior)."""
    variants = []
    for size in range(len(table.groups) - 1, 0, -1):
        for groups in combinations(table.groups, size):
            columns = [i for i, name in enumerate(table.feature_names) if name.split(".", 1)[0] in groups]
            x, y = table.features[:, columns], table.labels
            c = choose_c(x, y, table.clusters, splits, target_prior, clip)
            fitted = export(fit_regression(x, y, c, target_prior), [table.feature_names[i] for i in columns], clip)
            nested = nested_predictions(x, y, table.clusters, splits, target_prior, clip)
            variants.append({"groups": list(groups), **fitted, "C": c,
                             "log_loss": log_loss(y, nested, clip, prior_weights(y, target_prior))})
    return variants


def format_report(report: list[dict], target_prior: float, data_prior: float) -> str:
    """The report rows as an aligned text table."""
    lines = [f"{'':<28}{'log loss @' + format(target_prior, '.2f'):>16}{'@OOF ' + format(data_prior, '.2f'):>12}"
             f"{'AUC':>8}"]
    for row in report:
        lines.append(f"{row['name']:<28}{row['log_loss']:>16.4f}{row['log_loss_at_data_prior']:>12.4f}"
                     f"{row['auc']:>8.4f}")
    return "\n".join(lines)


def verdict(report: list[dict]) -> str:
    by_name = {row["name"]: row["log_loss"] for row in report}
    beats_mean = by_name["stacker (nested CV)"] < by_name["mean of models"]
    beats_prior = by_name["stacker (nested CV)"] < by_name["constant prior"]
    return (f"stacking {'pays off' if beats_mean else 'does not pay off'} over the plain mean; the calibrated "
            f"score is {'below' if beats_prior else 'NOT below'} the constant prior's log loss")
