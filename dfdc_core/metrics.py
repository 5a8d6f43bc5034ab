"""The competition metric and friends, shared by validation, training and the stacker."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

CLIP = (0.01, 0.99)


def log_loss(labels, probs, clip: tuple[float, float] = CLIP, weights=None) -> float:
    """Binary log loss with probabilities clipped to `clip` (as the kernel writes them), optionally weighted."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), clip[0], clip[1])
    return float(-np.average(y * np.log(p) + (1 - y) * np.log(1 - p), weights=weights))


def prior_weights(labels, target_prior: float) -> np.ndarray:
    """Per-video weights (mean 1) under which the fakes make up `target_prior` of the total weight.

    The DFDC training set is 83.9 % fake, its test sets 50 %: a log loss weighted to 0.5 is what the same
    detector would score on a test set with the same videos per class, and a fit weighted so is calibrated to it.
    """
    y = np.asarray(labels, dtype=np.float64)
    share = y.mean()
    if share in (0.0, 1.0):
        return np.ones_like(y)
    return np.where(y > 0.5, target_prior / share, (1 - target_prior) / (1 - share))


def auc(labels, probs) -> float:
    """ROC AUC, or NaN when only one class is present."""
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, np.asarray(probs, dtype=np.float64)))


def accuracy(labels, probs, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(probs) > threshold) == (np.asarray(labels) > 0.5)))


def binary_report(labels, probs, clip: tuple[float, float] = CLIP) -> dict[str, float]:
    return {"log_loss": log_loss(labels, probs, clip), "auc": auc(labels, probs),
            "accuracy": accuracy(labels, probs), "n": int(len(labels))}
