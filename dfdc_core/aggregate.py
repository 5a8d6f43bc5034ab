"""Frame scores → per-person score → video score, per-video stacker features, and the stacker itself."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

LOGIT_BOUND = 7.0  # |logit| cap of stacker features: P(fake) within [0.0009, 0.9991]
TRIM_SHARE = 0.2   # trimmed_mean drops this share of the frames at each end


def logit(probs, bound: float = LOGIT_BOUND) -> np.ndarray:
    """log(p / (1 - p)), capped at ±`bound`."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.clip(np.log(p) - np.log1p(-p), -bound, bound)


def sigmoid(logits) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def mean_strategy(probs: np.ndarray) -> float:
    return float(np.mean(probs, dtype=np.float64))  # float64 like the other rules, whatever the models give


def trimmed_mean_strategy(probs: np.ndarray, share: float = TRIM_SHARE) -> float:
    """The mean of the frames left after dropping `share` of them at each end (by score)."""
    ordered = np.sort(np.asarray(probs, dtype=np.float64))
    cut = int(len(ordered) * share)
    return float(ordered[cut:len(ordered) - cut].mean())


def logit_mean_strategy(probs: np.ndarray) -> float:
    """The sigmoid of the mean (capped) logit: a geometric pooling of the frames' odds."""
    return float(sigmoid(logit(probs).mean()))


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


STRATEGIES: dict[str, Callable[[np.ndarray], float]] = {
    "mean": mean_strategy, "trimmed_mean": trimmed_mean_strategy, "logit_mean": logit_mean_strategy,
    "confident": confident_strategy}


def person_scores(person_probs: Mapping[int, np.ndarray], strategy: str = "mean") -> dict[int, float]:
    """One score per person from their frame probabilities."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown aggregation '{strategy}'; choose one of {sorted(STRATEGIES)}")
    return {person: STRATEGIES[strategy](probs) for person, probs in person_probs.items() if len(probs)}


def video_score(person_probs: Mapping[int, np.ndarray], strategy: str = "mean") -> float:
    """A video is as fake as its most fake person."""
    scores = person_scores(person_probs, strategy)
    if not scores:
        raise ValueError("no face scores to aggregate")
    return max(scores.values())


# Per-video statistics of one model group's face scores; none depends on how many frames were sampled.
FEATURE_STATS = ("logit", "mean", "std", "share_above_0.8", "share_below_0.2")
DEFAULT_FEATURES = ("logit",)


def video_features(person_probs: Mapping[int, np.ndarray], strategy: str = "mean") -> dict[str, float]:
    """Per-video features of one model group's face scores, for the stacker.

    `logit` is the capped logit of the video score (`video_score` with `strategy`); the others describe the
    frames of the most fake person. All are shares or averages, so 16 and 32 sampled frames agree within noise.
    """
    scores = person_scores(person_probs, strategy)
    if not scores:
        raise ValueError("no face scores to build features from")
    top_person = max(scores, key=scores.get)
    top = np.asarray(person_probs[top_person], dtype=np.float64)
    return {"logit": float(logit(scores[top_person])), "mean": float(top.mean()), "std": float(top.std()),
            "share_above_0.8": float(np.mean(top > 0.8)), "share_below_0.2": float(np.mean(top < 0.2))}


def feature_name(group: str, stat: str) -> str:
    return f"{group}.{stat}"


class Stacker:
    """A logistic regression on per-video features, stored as plain JSON and applied with numpy.

    With one model group and the `logit` feature it is Platt scaling (the calibrator of one model); with several,
    a stacker. Its intercept is set for `target_prior`, the share of fakes it is calibrated to.
    """

    def __init__(self, feature_names: list[str], coef: list[float], intercept: float,
                 aggregation: str | None = None, target_prior: float | None = None,
                 variants: tuple["Stacker", ...] = ()):
        if len(feature_names) != len(coef):
            raise ValueError(f"stacker has {len(feature_names)} feature names but {len(coef)} coefficients")
        self.feature_names = list(feature_names)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        self.aggregation = aggregation  # the frame→person rule its features were computed with
        self.target_prior = target_prior
        self.variants = tuple(variants)  # the same fit on subsets of the groups, for when the kernel drops some

    @classmethod
    def from_json(cls, path: str | Path) -> "Stacker":
        """The stacker of a JSON file; its `variants` (each with feature_names, coef, intercept) share its
        aggregation and target prior. Files without variants read as before."""
        return cls.from_dict(json.loads(Path(path).read_text()), path)

    @classmethod
    def from_dict(cls, data: dict, path: str | Path) -> "Stacker":
        """The stacker of the parsed JSON `data` of the file `path` (named in errors)."""
        try:
            variants = tuple(cls(v["feature_names"], v["coef"], v["intercept"], data.get("aggregation"),
                                 data.get("target_prior")) for v in data.get("variants", []))
            return cls(data["feature_names"], data["coef"], data["intercept"], data.get("aggregation"),
                       data.get("target_prior"), variants)
        except KeyError as error:
            raise ValueError(f"{path}: stacker JSON (or one of its variants) lacks {error}; it needs feature_names, "
                             "coef, intercept") from error

    def for_groups(self, groups: Iterable[str]) -> "Stacker | None":
        """The stacker to use when only `groups` are scored: of itself and its variants, the one fitted on the most
        groups that are all among `groups` (itself first on a tie); None if every one needs a missing group."""
        available = set(groups)
        usable = [stacker for stacker in (self, *self.variants) if set(stacker.groups) <= available]
        return max(usable, key=lambda stacker: len(stacker.groups), default=None)

    @property
    def groups(self) -> list[str]:
        """The model groups its features come from, in first-use order."""
        return list(dict.fromkeys(name.split(".", 1)[0] for name in self.feature_names))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(fake) for a `(n, len(feature_names))` feature matrix."""
        return sigmoid(np.asarray(features, dtype=np.float64) @ self.coef + self.intercept)

    def predict_one(self, features: Mapping[str, float]) -> float:
        missing = [name for name in self.feature_names if name not in features]
        if missing:
            raise KeyError(f"stacker needs features {missing}; check the manifest's model groups")
        return float(self.predict(np.array([[features[name] for name in self.feature_names]]))[0])
