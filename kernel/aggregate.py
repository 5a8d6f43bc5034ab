"""Frame scores → per-person score → video score, per-video stacker features, and the stacker itself."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import numpy as np


def mean_strategy(probs: np.ndarray) -> float:
    return float(np.mean(probs))


def confident_strategy(probs: np.ndarray, threshold: float = 0.8, min_fakes: int = 11) -> float:
    """Selim Seferbekov's rule (DFDC 1st place): trust a confident majority, else the mean.

    If more than `len/2.5` (and more than `min_fakes`, scaled to 32 frames) frames exceed `threshold`,
    the mean of those; else if over 90 % of frames are below `1 - threshold`, the mean of those; else the mean.
    """
    probs = np.asarray(probs, dtype=np.float64)
    size = len(probs)
    fakes = int(np.count_nonzero(probs > threshold))
    if fakes > size // 2.5 and fakes > min_fakes * size / 32:
        return float(np.mean(probs[probs > threshold]))
    low = probs < 1 - threshold
    if np.count_nonzero(low) > 0.9 * size:
        return float(np.mean(probs[low]))
    return float(np.mean(probs))


STRATEGIES: dict[str, Callable[[np.ndarray], float]] = {"mean": mean_strategy, "confident": confident_strategy}


def person_scores(person_probs: Mapping[int, np.ndarray], strategy: str = "confident") -> dict[int, float]:
    """One score per person from their frame probabilities."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown aggregation '{strategy}'; choose one of {sorted(STRATEGIES)}")
    return {person: STRATEGIES[strategy](probs) for person, probs in person_probs.items() if len(probs)}


def video_score(person_probs: Mapping[int, np.ndarray], strategy: str = "confident") -> float:
    """A video is as fake as its most fake person."""
    scores = person_scores(person_probs, strategy)
    if not scores:
        raise ValueError("no face scores to aggregate")
    return max(scores.values())


FEATURE_STATS = ("mean", "median", "max", "std", "confident", "share_above_0.8", "share_below_0.2",
                 "persons", "frames_with_faces")


def video_features(person_probs: Mapping[int, np.ndarray], strategy: str = "confident") -> dict[str, float]:
    """Per-video features of one model's face scores, for the stacker.

    Score statistics are taken over the most fake person (the one that decides the video); counts over all.
    """
    scores = person_scores(person_probs, strategy)
    if not scores:
        raise ValueError("no face scores to build features from")
    top = np.asarray(person_probs[max(scores, key=scores.get)], dtype=np.float64)
    frames = {f for probs in person_probs.values() for f in range(len(probs))}
    return {
        "mean": float(top.mean()), "median": float(np.median(top)), "max": float(top.max()),
        "std": float(top.std()), "confident": confident_strategy(top),
        "share_above_0.8": float(np.mean(top > 0.8)), "share_below_0.2": float(np.mean(top < 0.2)),
        "persons": float(len(scores)), "frames_with_faces": float(len(frames)),
    }


def feature_name(model: str, stat: str) -> str:
    return f"{model}.{stat}"


class Stacker:
    """A logistic-regression stacker stored as plain JSON and applied with numpy."""

    def __init__(self, feature_names: list[str], coef: list[float], intercept: float,
                 aggregation: str | None = None):
        if len(feature_names) != len(coef):
            raise ValueError(f"stacker has {len(feature_names)} feature names but {len(coef)} coefficients")
        self.feature_names = list(feature_names)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        self.aggregation = aggregation  # the frame→person rule its features were computed with

    @classmethod
    def from_json(cls, path: str | Path) -> "Stacker":
        data = json.loads(Path(path).read_text())
        try:
            return cls(data["feature_names"], data["coef"], data["intercept"], data.get("aggregation"))
        except KeyError as error:
            raise ValueError(f"{path}: stacker JSON lacks {error}; it needs feature_names, coef, intercept") from error

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(fake) for a `(n, len(feature_names))` feature matrix."""
        logits = np.asarray(features, dtype=np.float64) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def predict_one(self, features: Mapping[str, float]) -> float:
        missing = [name for name in self.feature_names if name not in features]
        if missing:
            raise KeyError(f"stacker needs features {missing}; check the manifest's model names")
        return float(self.predict(np.array([[features[name] for name in self.feature_names]]))[0])
