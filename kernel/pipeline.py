"""The inference kernel: videos → faces → classifiers → video scores → submission.csv."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from kernel.aggregate import Stacker, feature_name, video_features, video_score
from kernel.config import load_config
from kernel.faces import Track, crop_face, detector_from_config, isotropic_resize_pad, normalise, person_tracks
from kernel.models import (ModelSpec, fake_probability, forward_logits, load_classifier, load_manifest,
                           verify_manifest)
from kernel.submission import Checkpoint, target_filenames, write_submission
from kernel.video import VideoReadError, read_frames

log = logging.getLogger("kernel")

KAGGLE_INPUT = Path("/kaggle/input/deepfake-detection-challenge")
KAGGLE_VIDEOS = KAGGLE_INPUT / "test_videos"
KAGGLE_SAMPLE_SUBMISSION = KAGGLE_INPUT / "sample_submission.csv"
KAGGLE_OUT = Path("/kaggle/working/submission.csv")


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


@dataclass
class KernelRun:
    """What `predict` returns: the written submission, each video's outcome, and stage timings."""

    submission: pd.DataFrame
    reasons: dict[str, str]
    stage_seconds: dict[str, float]
    videos_scored: int

    @property
    def fallback_counts(self) -> Counter:
        return Counter(reason for reason in self.reasons.values() if reason != "ok")


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
        resized: dict[int, np.ndarray] = {}
        probs = {}
        for model in self.models:
            size = model.spec.input_size
            if size not in resized:
                resized[size] = np.stack([isotropic_resize_pad(crop, size) for crop in crops])
            probs[model.spec.name] = self._forward(model, resized[size])
        self.timer.add("classify", time.perf_counter() - start)
        return probs

    def _forward(self, model: LoadedModel, images: np.ndarray) -> np.ndarray:
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        batch_size = self.config["classify_batch_size"]
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = normalise(images[start:start + batch_size], model.spec.mean, model.spec.std)
                logits = forward_logits(model.module, batch.to(self.device, dtype=dtype), self.config["tta_hflip"])
                out.append(fake_probability(logits, model.spec.real_index).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def score(self, frames: np.ndarray) -> VideoPrediction:
        """Score one video's decoded frames; raises `NoFaceError` when no face is usable."""
        tracks = self.find_tracks(frames)
        if not tracks:
            raise NoFaceError("no face found in any sampled frame")
        return self.score_tracks(frames, tracks)

    def score_tracks(self, frames: np.ndarray, tracks: list[Track]) -> VideoPrediction:
        """Crop, classify and aggregate the faces of `tracks`: per-face, per-person and video scores."""
        margin = self.config["crop_margin"]
        crops = [crop_face(frames[d.frame], d.box, margin) for t in tracks for d in t.detections]
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

    def group_probs(self, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each model group's P(fake) per crop: the mean over its (fold) models."""
        members: dict[str, list[np.ndarray]] = defaultdict(list)
        for model in self.models:
            members[model.spec.group].append(probs[model.spec.name])
        return {group: np.mean(arrays, axis=0) for group, arrays in members.items()}


def load_scorer(manifest_path: str | Path, config: dict[str, Any], device: str = "cpu") -> Scorer:
    """Verify every file of the manifest, then load classifiers, stacker and face detector."""
    manifest = load_manifest(manifest_path)
    verify_manifest(manifest)
    models = [LoadedModel(spec, load_classifier(spec, device)) for spec in manifest.models]
    stacker = Stacker.from_json(manifest.stacker) if manifest.stacker is not None else None
    if stacker is None:
        log.warning("%s names no stacker or calibrator: raw model scores, fitted at the training data's share of "
                    "fakes, go into the submission; fit one with python -m training.recipe or ensemble.stack",
                    manifest.path)
    return Scorer(models, config, device, stacker)


def decode_video(path: Path, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's frame sample of one video: `(frames, frame numbers)` with the config's count and backends."""
    return read_frames(path, config["frames"], tuple(config["decode_backends"]))


def prefetch_frames(videos_dir: Path, filenames: list[str], config: dict[str, Any],
                    stop: threading.Event) -> Iterator[tuple[str, np.ndarray | Exception, float]]:
    """Decode videos in a background thread, `prefetch_videos` ahead of the consumer.

    Yields `(filename, frames or the decode error, decode seconds)` in order.
    """
    slots: queue.Queue = queue.Queue(maxsize=max(1, config["prefetch_videos"]))

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        for filename in filenames:
            if stop.is_set():  # the run ended (or crashed): start no new decode
                return
            start = time.perf_counter()
            try:
                item: np.ndarray | Exception = decode_video(videos_dir / filename, config)[0]
            except Exception as error:  # handed to the consumer, which logs it and uses the prior
                item = error
            if not put((filename, item, time.perf_counter() - start)):
                return
        put(None)

    worker = threading.Thread(target=produce, name="decode", daemon=True)
    worker.start()
    try:
        while (entry := slots.get()) is not None:
            yield entry
    finally:
        stop.set()
        worker.join()


def fallback_reason(error: Exception) -> str:
    if isinstance(error, VideoReadError):
        return "decode_error"
    if isinstance(error, NoFaceError):
        return "no_face"
    return f"error:{type(error).__name__}"


def run_signature(manifest_path: Path, config: dict[str, Any]) -> str:
    """Identifies a model + config set-up, so a checkpoint is only resumed by the same set-up."""
    digest = hashlib.sha256(Path(manifest_path).read_bytes())
    digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()


def predict(videos_dir: str | Path = KAGGLE_VIDEOS, sample_submission: str | Path | None = KAGGLE_SAMPLE_SUBMISSION,
            manifest: str | Path = "weights_manifest.json", out: str | Path = KAGGLE_OUT, device: str = "cpu",
            config: dict[str, Any] | None = None, progress: bool = True) -> KernelRun:
    """Predict P(fake) for every target video and write the submission CSV.

    Nothing is processed until every weight file in the manifest is verified. A video that fails in any
    way gets the configured prior, with the reason logged; finished videos are checkpointed beside `out`
    so a rerun after a crash resumes. Videos that cannot finish inside the time budget get the prior.
    """
    started = time.monotonic()
    config = config or load_config()
    videos_dir, out = Path(videos_dir), Path(out)
    scorer = load_scorer(manifest, config, device)
    filenames = target_filenames(videos_dir, Path(sample_submission) if sample_submission else None)
    checkpoint = Checkpoint(out.with_name(out.name + ".partial.jsonl"), run_signature(Path(manifest), config))
    todo = [name for name in filenames if name not in checkpoint.done]
    if len(todo) < len(filenames):
        log.info("resuming: %d of %d videos already done in %s", len(filenames) - len(todo), len(filenames),
                 checkpoint.path)
    budget_s = config["time_budget_hours"] * 3600.0
    prior = float(config["prior"])
    scored, first_scored_at = 0, None
    stop = threading.Event()
    bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress)
    try:
        for filename, frames, decode_s in prefetch_frames(videos_dir, todo, config, stop):
            scorer.timer.add("decode", decode_s)
            elapsed = time.monotonic() - started
            per_video = (time.monotonic() - first_scored_at) / scored if scored else 0.0
            if elapsed + per_video > budget_s:
                break
            if scored == 0:
                first_scored_at = time.monotonic()
            try:
                if isinstance(frames, Exception):
                    raise frames
                label, reason = scorer.score(frames).score, "ok"
            except Exception as error:  # one bad video costs its prior, never the run
                label, reason = prior, fallback_reason(error)
                log.warning("%s: %s (%s): using %.2f", filename, reason, error, prior)
            scored += 1
            checkpoint.add(filename, label, reason)
            bar.update(1)
    finally:
        stop.set()
        bar.close()
        checkpoint.close()
    late = [name for name in filenames if name not in checkpoint.done]
    if late:
        log.warning("time budget of %.2f h reached: %d videos get the prior %.2f", config["time_budget_hours"],
                    len(late), prior)
    reasons = {name: checkpoint.done[name][1] if name in checkpoint.done else "time_budget" for name in filenames}
    labels = {name: checkpoint.done[name][0] if name in checkpoint.done else prior for name in filenames}
    submission = write_submission(out, filenames, labels, tuple(config["clip"]))
    run = KernelRun(submission, reasons, dict(scorer.timer.seconds), scored)
    log_summary(run, out)
    return run


def log_summary(run: KernelRun, out: Path) -> None:
    """Per-stage seconds per video and fallback counts by reason."""
    per_video = max(1, run.videos_scored)
    stages = ", ".join(f"{stage} {run.stage_seconds.get(stage, 0.0) / per_video:.2f}"
                       for stage in ("decode", "detect", "classify"))
    log.info("wrote %s: %d videos; s/video: %s", out, len(run.submission), stages)
    counts = run.fallback_counts
    log.info("fallbacks: %s", ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "none")
