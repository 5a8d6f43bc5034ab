"""The scorer: the face detector and the classifiers of a checked manifest, loaded once, turning one video's decoded
frames into face crops, per-face P(fake), per-person and video scores (`Scorer.score`). `kernel.pipeline` runs it over a
folder of videos; `kernel.explain` and the benchmarks call it on one video."""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Collection, Iterator

import numpy as np
import torch

from dfdc_core.aggregate import Stacker, feature_name, video_features, video_score
from dfdc_core.faces import Track, detector_from_config, face_crops, model_images, normalise, person_tracks
from dfdc_core.manifest import Manifest, ModelSpec, verify_manifest
from dfdc_core.models import fake_probability, forward_logits, load_classifier
from dfdc_core.preprocessing import resolve_config

log = logging.getLogger("kernel")


class NoFaceError(RuntimeError):
    """No usable face was found in any sampled frame."""


@dataclass
class LoadedModel:
    spec: ModelSpec
    module: torch.nn.Module


@dataclass
class VideoPrediction:
    """Everything the kernel knows about one scored video. Model groups (the fold models of one recipe model,
    averaged per face) key `model_scores` and `person_probs`; single models key `face_probs`."""

    score: float
    model_scores: dict[str, float]
    person_probs: dict[str, dict[int, np.ndarray]]
    tracks: list[Track]
    features: dict[str, float]
    crops: list[np.ndarray]  # every face crop, in track order then detection order
    face_probs: dict[str, np.ndarray]  # per model, P(fake) of each crop of `crops`


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` intra-op torch threads (None: unchanged), then restore the setting."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask: `taskset`, container CPU sets), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def detection_threads(config: dict[str, Any], device: str) -> int | None:
    """CPU threads for MTCNN: by default all cores but one, which the prefetch thread decodes on."""
    if device != "cpu":
        return None
    return config["detect_threads"] or max(1, available_cores() - 1)


class Scorer:
    """Detector and classifiers, loaded once; `score(frames)` scores one decoded video."""

    def __init__(self, models: list[LoadedModel], config: dict[str, Any], device: str,
                 stacker: Stacker | None = None):
        self.models = models
        self.config = config
        self.device = device
        self.stacker = stacker
        self.base_stacker = stacker  # the stacker of the whole manifest; `stacker` may be one of its variants
        self.detector = detector_from_config(config, device)
        self.detect_threads = detection_threads(config, device)
        self.timer = StageTimer()

    def find_tracks(self, frames: np.ndarray) -> list[Track]:
        """Person tracks in decoded frames, largest first, at most `max_persons`."""
        start = time.perf_counter()
        with torch_threads(self.detect_threads):
            tracks = person_tracks(self.detector, frames, self.config)
        self.timer.add("detect", time.perf_counter() - start)
        return tracks

    def classify_crops(self, crops: list[np.ndarray]) -> dict[str, np.ndarray]:
        """P(fake) of each face crop under each model."""
        start = time.perf_counter()
        images: dict[int, np.ndarray] = {}  # resized once per input size, shared by the models of that size
        probs = {}
        for model in self.models:
            size = model.spec.input_size
            if size not in images:
                images[size] = model_images(crops, size)
            model_start = time.perf_counter()
            probs[model.spec.name] = self._forward(model, images[size])
            self.timer.add(model_stage(model.spec.name), time.perf_counter() - model_start)
        self.timer.add("classify", time.perf_counter() - start)
        return probs

    def _forward(self, model: LoadedModel, images: np.ndarray) -> np.ndarray:
        """P(fake) of uint8 model images (`model_images`) under `model`, normalised batch by batch."""
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        batch_size, spec = self.config["classify_batch_size"], model.spec
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = normalise(images[start:start + batch_size], spec.mean, spec.std)
                logits = forward_logits(model.module, batch.to(self.device, dtype=dtype),
                                        scored_with_flip(spec, self.config))
                out.append(fake_probability(logits, spec.real_index).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def score(self, frames: np.ndarray) -> VideoPrediction:
        """Score one video's decoded frames; raises `NoFaceError` when no face is usable."""
        tracks = self.find_tracks(frames)
        if not tracks:
            raise NoFaceError("no face found in any sampled frame")
        return self.score_tracks(frames, tracks)

    def score_tracks(self, frames: np.ndarray, tracks: list[Track]) -> VideoPrediction:
        """Crop, classify and aggregate the faces of `tracks`: per-face, per-person and video scores."""
        return self.score_crops(face_crops(frames, tracks, self.config["crop_margin"]), tracks)

    def score_crops(self, crops: list[np.ndarray], tracks: list[Track]) -> VideoPrediction:
        """Classify and aggregate face crops, one per detection of `tracks` in track order."""
        persons = np.array([t.person for t in tracks for _ in t.detections])
        probs = self.classify_crops(crops)
        person_probs = {group: {p: group_probs[persons == p] for p in np.unique(persons).tolist()}
                        for group, group_probs in self.group_probs(probs).items()}
        strategy = self.stacker.aggregation if self.stacker is not None and self.stacker.aggregation else \
            self.config["aggregation"]
        model_scores = {group: video_score(pp, strategy) for group, pp in person_probs.items()}
        features: dict[str, float] = {}
        if self.stacker is None:
            score = float(np.mean(list(model_scores.values())))
        else:
            features = {feature_name(group, stat): value for group, pp in person_probs.items()
                        for stat, value in video_features(pp, strategy).items()}
            score = self.stacker.predict_one(features)
        return VideoPrediction(score, model_scores, person_probs, tracks, features, crops, probs)

    def drop_models(self, names: Collection[str]) -> str:
        """Stop scoring with the models `names`; switch to the stacker (or variant) fitted on the groups left, else
        the plain mean of their scores. Returns how scores are combined from now on."""
        self.models = [model for model in self.models if model.spec.name not in names]
        self.stacker, combiner = combiner_for(self.base_stacker, {model.spec.group for model in self.models})
        if self.base_stacker is not None and self.stacker is None and self.base_stacker.aggregation:
            self.config = dict(self.config, aggregation=self.base_stacker.aggregation)
        return combiner

    def group_probs(self, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each model group's P(fake) per crop: the mean over its (fold) models."""
        members: dict[str, list[np.ndarray]] = defaultdict(list)
        for model in self.models:
            members[model.spec.group].append(probs[model.spec.name])
        return {group: np.mean(arrays, axis=0) for group, arrays in members.items()}


def model_stage(name: str) -> str:
    """The `StageTimer` key of one model's classify seconds."""
    return f"model:{name}"


def combiner_for(stacker: Stacker | None, groups: set[str]) -> tuple[Stacker | None, str]:
    """The stacker (or variant) to use when only `groups` are scored, and how scores are then combined, in words."""
    if stacker is None:
        return None, "the mean of the groups' scores (no stacker)"
    chosen = stacker.for_groups(groups)
    if chosen is None:
        return None, (f"the plain mean of the scores of groups {sorted(groups)}: the stacker has no variant for them "
                      "(ensemble.stack exports variants)")
    return chosen, "the stacker" if chosen is stacker else f"the stacker variant for groups {chosen.groups}"


def load_scorer(manifest: Manifest, config: dict[str, Any], device: str = "cpu") -> Scorer:
    """Verify every weight file of the checked manifest, then load classifiers, stacker and face detector, with the
    config resolved for its models (`resolved_config`: `Scorer.config`)."""
    verify_manifest(manifest)
    config = resolved_config(config, manifest)
    models = [LoadedModel(spec, load_classifier(spec, device)) for spec in manifest.models]
    if manifest.stacker is None:
        log.warning("%s names no stacker or calibrator: raw model scores, fitted at the training data's share of "
                    "fakes, go into the submission; fit one with python -m training.recipe or ensemble.stack",
                    manifest.path)
    return Scorer(models, config, device, manifest.stacker)


def scored_with_flip(spec: ModelSpec, config: dict[str, Any]) -> bool:
    """Whether `spec` scores each crop averaged with its mirror image: as its OOF scores were made when its manifest
    entry records it (the stacker was fitted on them), else as the config's `tta_hflip` says."""
    return spec.tta_hflip if spec.tta_hflip is not None else config["tta_hflip"]


def resolved_config(config: dict[str, Any], manifest: Manifest) -> dict[str, Any]:
    """`config` resolved for the manifest's models (`dfdc_core.preprocessing.resolve_config`): crops cut with the
    geometry they were trained on, other differences from their training logged, and so are models whose recorded
    flip TTA overrides the config's (`scored_with_flip`)."""
    overridden = [spec.name for spec in manifest.models if scored_with_flip(spec, config) != config["tta_hflip"]]
    if overridden:
        log.info("%s: models %s score %s flip TTA, as their OOF scores were made for the stacker (the config's "
                 "tta_hflip is %s)", manifest.path, overridden, "with" if not config["tta_hflip"] else "without",
                 str(config["tta_hflip"]).lower())
    return resolve_config(config, {"crop_margin": manifest.crop_margin, "still_pad": manifest.still_pad},
                          {spec.name: spec.preprocessing for spec in manifest.models if spec.preprocessing is not None},
                          str(manifest.path))
