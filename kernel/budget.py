"""The time budget: seconds per video as measured, and the models the kernel drops so the remaining videos finish.

Before each video the kernel asks `BudgetPlanner.to_drop`: if the measured rate says the videos left will not finish
inside the budget with the models kept, it names the fewest models to drop, in the manifest's drop order, whose
measured classify time brings the projection inside it (or every droppable model when none does: the most videos
then get a score). Dropping a fold model keeps its group (the average of its other folds) and the stacker; dropping
a group's last model makes the kernel switch to the stacker variant fitted without that group (`Stacker.for_groups`)
or to the plain mean. Dropped models stay dropped. Only when the smallest set cannot finish either do the last
videos get the prior (`time_budget`), as before.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Collection, Sequence

from dfdc_core.manifest import Manifest, ModelSpec

log = logging.getLogger("kernel")


def default_drop_order(models: Sequence[ModelSpec]) -> list[str]:
    """Most expendable first: every group's extra (fold) models, last listed first; then the groups, last listed
    first. The first model of the first group is never dropped: list the models that matter most first."""
    first_of_group: dict[str, str] = {}
    for spec in models:
        first_of_group.setdefault(spec.group, spec.name)
    extras = [spec.name for spec in reversed(models) if first_of_group[spec.group] != spec.name]
    return extras + list(reversed(first_of_group.values()))[:-1]


def drop_order(manifest: Manifest) -> list[str]:
    """The manifest's `drop_order` (models not listed are never dropped), else `default_drop_order`."""
    return list(manifest.drop_order) if manifest.drop_order is not None else default_drop_order(manifest.models)


@dataclass(frozen=True)
class VideoCost:
    """Measured seconds of one video: wall (end to end of the loop), decode (background thread) and each model's
    classify time, with the models kept while it was scored."""

    wall: float
    decode: float
    models: dict[str, float]
    kept: frozenset[str]

    def without(self, kept: Collection[str]) -> float:
        """The wall seconds this video would have taken with only `kept` of its models."""
        return self.wall - sum(seconds for name, seconds in self.models.items() if name not in kept)


class BudgetPlanner:
    """The rate of the last `window` videos and the drops it calls for; no decision before `min_videos`."""

    def __init__(self, budget_s: float, order: list[str], models: list[str], min_videos: int = 3, window: int = 20):
        self.budget_s = budget_s
        self.order = order
        self.kept = list(models)
        self.min_videos = min_videos
        self.costs: deque[VideoCost] = deque(maxlen=window)
        self.projected = False

    def record(self, wall: float, decode: float, model_seconds: dict[str, float]) -> None:
        self.costs.append(VideoCost(wall, decode, model_seconds, frozenset(self.kept)))

    def rate(self, kept: Collection[str], minimum: int = 1) -> float | None:
        """Projected seconds per video with `kept` models (never below the decoding thread's rate); None with fewer
        than `minimum` videos measured."""
        if len(self.costs) < max(1, minimum):
            return None
        wall = sum(cost.without(kept) for cost in self.costs) / len(self.costs)
        return max(wall, sum(cost.decode for cost in self.costs) / len(self.costs))

    def fits_next(self, elapsed: float) -> bool:
        """Whether one more video, at the current rate, ends inside the budget."""
        return elapsed + (self.rate(self.kept) or 0.0) <= self.budget_s

    def to_drop(self, elapsed: float, remaining: int, device: str) -> list[str]:
        """The models to drop before the next video so `remaining` videos fit in the time left (often none)."""
        rate = self.rate(self.kept, self.min_videos)
        if rate is None:
            return []
        left = self.budget_s - elapsed
        if not self.projected:
            self.projected = True
            log.info("on %s: %.2f s/video measured over %d videos; the %d videos left project to %.2f h, %.2f h of "
                     "the budget left", device, rate, len(self.costs), remaining, rate * remaining / 3600, left / 3600)
        if rate * remaining <= left:
            return []
        droppable = [name for name in self.order if name in self.kept]
        for count in range(1, len(droppable) + 1):
            if self.rate(set(self.kept) - set(droppable[:count])) * remaining <= left:
                return droppable[:count]
        return droppable

    def drop(self, names: list[str], elapsed: float, remaining: int) -> None:
        """Stop counting `names` as kept, logging the rates before and after."""
        before = self.rate(self.kept, self.min_videos)
        self.kept = [name for name in self.kept if name not in names]
        after = self.rate(self.kept, self.min_videos)
        left = self.budget_s - elapsed
        log.warning("time budget: %.2f s/video x %d videos left = %.2f h > %.2f h left; dropping %s (projected %.2f "
                    "s/video, %.2f h%s)", before, remaining, before * remaining / 3600, left / 3600, ", ".join(names),
                    after, after * remaining / 3600,
                    "" if after * remaining <= left else "; still over: the last videos will get the prior")
