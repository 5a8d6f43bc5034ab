"""A kernel run: a folder of videos → `submission.csv`. Checks every input before the first video, decodes ahead in a
thread, scores each video with `kernel.scorer.Scorer`, gives a failed video the prior, checkpoints finished videos so a
rerun resumes, drops models when the time budget says so (`kernel.budget`), and writes the run summary."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from dfdc_core.aggregate import Stacker
from dfdc_core.config import SettingsError
from dfdc_core.manifest import Manifest
from dfdc_core.video import MissingVideoError, VideoReadError, decode_video
from kernel.budget import BudgetPlanner, drop_order
from kernel.checks import check_config, check_device, check_not_an_input, check_paths
from kernel.config import load_config
from kernel.device import DeviceChoice, choose_device
from kernel.kaggle import NotFoundOnKaggle, find_competition, kaggle_root
from kernel.scorer import NoFaceError, Scorer, combiner_for, load_scorer, model_stage
from kernel.submission import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    InFlight,
    Record,
    check_videos_found,
    checkpoint_path,
    inside_folder,
    summary_path,
    target_filenames,
    video_identity,
    write_atomic,
    write_submission,
)

log = logging.getLogger("kernel")


class NonFiniteScoreError(ArithmeticError):
    """The models or the stacker gave a NaN or infinite score for a video."""


@dataclass
class KernelRun:
    """What `predict` returns: the written submission, each video's outcome, and stage timings."""

    submission: pd.DataFrame
    reasons: dict[str, str]
    stage_seconds: dict[str, float]
    videos_scored: int
    seconds: dict[str, float] = field(default_factory=dict)  # per video: decode + score (0 for the prior)
    device: DeviceChoice = DeviceChoice("cpu", "")
    model_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # scored video: the models dropped then
    loop_seconds: float = 0.0  # wall time of this run's video loop

    @property
    def fallback_counts(self) -> Counter:
        return Counter(reason for reason in self.reasons.values() if reason != "ok")


def prefetch_frames(videos_dir: Path, filenames: list[str], config: dict[str, Any], stop: threading.Event,
                    in_flight: InFlight | None = None
                    ) -> Iterator[tuple[str, np.ndarray | Exception, float, dict | None]]:
    """Decode videos in a background thread, `prefetch_videos` ahead of the consumer; `in_flight` is told which video
    is being decoded.

    Yields `(filename, frames or the decode error, decode seconds, the file's identity before decoding)` in order.
    Anything else the thread raises (the in-flight mark cannot be written, a bug) is raised here, in the consumer's
    thread, so the run ends instead of waiting for a video that never comes.
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
        try:
            for filename in filenames:
                if stop.is_set():  # the run ended (or crashed): start no new decode
                    return
                if in_flight is not None:
                    in_flight.mark("decode", filename)
                entry = decoded(videos_dir, filename, config)
                if in_flight is not None:
                    in_flight.mark("decode", None)
                if not put(entry):
                    return
            put(None)
        except BaseException as error:  # handed over whole: the consumer raises it, and the run ends
            put(error)

    worker = threading.Thread(target=produce, name="decode", daemon=True)
    worker.start()
    try:
        while (entry := slots.get()) is not None:
            if isinstance(entry, BaseException):
                raise entry
            yield entry
    finally:
        stop.set()
        worker.join()


def decoded(videos_dir: Path, filename: str, config: dict[str, Any]) -> tuple[str, np.ndarray | Exception, float,
                                                                               dict | None]:
    """One video's entry of `prefetch_frames`: its frames, or the error that stopped them (the consumer logs it and
    uses the prior), the seconds it took, and the file's identity before decoding."""
    start = time.perf_counter()
    identity = video_identity(videos_dir / filename)
    try:
        item: np.ndarray | Exception = decode_video(videos_dir / filename, config)[0]
    except Exception as error:  # handed to the consumer, which logs it and uses the prior
        item = error
    return filename, item, time.perf_counter() - start, identity


def fallback_reason(error: Exception) -> str:
    """The reason logged and recorded for a video that gets the prior because of `error`."""
    if isinstance(error, MissingVideoError):
        return "missing_file"
    if isinstance(error, VideoReadError):
        return "decode_error"
    if isinstance(error, NoFaceError):
        return "no_face"
    if isinstance(error, NonFiniteScoreError):
        return "non_finite"
    return f"error:{type(error).__name__}"


def run_signature(manifest: Manifest, config: dict[str, Any]) -> str:
    """Identifies a set-up (manifest, its stacker, config, checkpoint format), so only the same one resumes. The time
    budget is left out: a resumed run gets the time left, and a video's score does not depend on it."""
    digest = hashlib.sha256(manifest.content)
    scoring = {key: value for key, value in config.items() if key != "time_budget_hours"}
    digest.update(json.dumps(scoring, sort_keys=True).encode())
    digest.update(f"checkpoint format {CHECKPOINT_FORMAT}".encode())
    return digest.hexdigest()


def score_video(scorer: Scorer, frames: np.ndarray | Exception) -> float:
    """The score of one decoded video; raises the decode error, `NoFaceError` or `NonFiniteScoreError`."""
    if isinstance(frames, Exception):
        raise frames
    score = scorer.score(frames).score
    if not math.isfinite(score):
        raise NonFiniteScoreError(f"the models gave the score {score}")
    return score


def outside_names(filenames: list[str], videos_dir: Path) -> set[str]:
    """Target names that point outside the videos folder ('../x.mp4', '/etc/x'): never read, logged."""
    outside = {name for name in filenames if not inside_folder(name)}
    for name in sorted(outside):
        log.warning("%r names a file outside %s: not read, it gets the prior", name, videos_dir)
    return outside


def crashed_names(filenames: list[str], crashed: Collection[str]) -> set[str]:
    """Target names that crashed the kernel twice (the notebook's retry loop names them): never read, logged."""
    names = set(filenames) & set(crashed)
    for name in sorted(names):
        log.warning("%s crashed the kernel twice: not read, it gets the prior", name)
    return names


def kaggle_inputs(videos_dir: str | Path | None, sample: str | Path | None) -> tuple[Path, Path | None]:
    """`videos_dir` and `sample` as given, or, without a videos folder, the competition's data where Kaggle mounts
    it (`kernel.kaggle.find_competition`; the sample submission beside it unless one is given)."""
    if videos_dir is not None:
        return Path(videos_dir), Path(sample) if sample is not None else None
    try:
        found = find_competition()
    except NotFoundOnKaggle as error:
        raise SettingsError(f"--videos not given, and {error}") from error
    log.info("competition data found: %s, %s", found.videos, found.sample_submission or "no sample submission")
    return found.videos, Path(sample) if sample is not None else found.sample_submission


def checked_inputs(videos_dir: Path, sample: Path | None, manifest: Path, out: Path, device: str,
                   config: dict[str, Any]) -> tuple[list[str], Manifest, DeviceChoice]:
    """Check every setting, path, the sample submission, the manifest and its stacker, that some videos are there and
    that no output overwrites an input, and probe the device, before any video; return the target names, the manifest
    and the device. The weight files are checked as `load_scorer` loads them."""
    check_config(config)
    check_device(device)
    check_paths(videos_dir, sample, out)
    filenames = target_filenames(videos_dir, sample)
    manifest_checked = Manifest.load(manifest)
    check_videos_found(videos_dir, filenames, sample)
    check_not_an_input(out, input_files(videos_dir, filenames, sample, manifest_checked))
    choice = choose_device(device)
    log.info("device: %s (%s)", choice.device, choice.reason)
    return filenames, manifest_checked, choice


def input_files(videos_dir: Path, filenames: list[str], sample: Path | None, manifest: Manifest) -> list[Path]:
    """Every file a run reads: the sample submission, the manifest, its stacker and weights, and the videos."""
    files = [path for path in (sample, manifest.path, manifest.stacker_file) if path is not None]
    return files + [spec.file for spec in manifest.models] + [videos_dir / name for name in filenames
                                                             if inside_folder(name)]


def open_checkpoint(out: Path, signature: str, videos_dir: Path, filenames: list[str]) -> Checkpoint:
    """The crash checkpoint beside `out`, with its resume logged."""
    checkpoint = Checkpoint(checkpoint_path(out), signature, lambda name: video_identity(videos_dir / name))
    done = sum(name in checkpoint.done for name in filenames)
    if done:
        log.info("resuming: %d of %d videos already done in %s", done, len(filenames), checkpoint.path)
    retried = sorted(set(checkpoint.retried) & set(filenames))
    if retried:
        log.info("trying again %d videos whose earlier fallback the environment can cause (%s)", len(retried),
                 ", ".join(retried[:5]))
    return checkpoint


def predict(videos_dir: str | Path | None = None, sample_submission: str | Path | None = None,
            manifest: str | Path = "weights_manifest.json", out: str | Path | None = None, device: str = "auto",
            config: dict[str, Any] | None = None, progress: bool = True, crashed: Collection[str] = ()) -> KernelRun:
    """Predict P(fake) for every target video and write the submission CSV.

    Without `videos_dir` the competition's data is found where Kaggle mounts it (`kernel.kaggle`), and `out` defaults
    to `<Kaggle root>/working/submission.csv`. Nothing is processed until every setting, path, the sample submission,
    the manifest, its stacker and every weight file are checked and the device probed (`SettingsError` or
    `ManifestError` otherwise). A video that fails in any way gets the configured prior, with the reason logged;
    finished videos are checkpointed beside `out` so a rerun after a crash resumes, and the videos in progress are
    named in `<out>.inflight.json`. `crashed` names videos that get the prior unread. When the measured rate says the
    videos left will not finish inside the time budget, models are dropped (`kernel.budget`); videos that still
    cannot finish get the prior.
    """
    started = time.monotonic()
    config = config or load_config()
    videos_dir, sample = kaggle_inputs(videos_dir, sample_submission)
    out = Path(out) if out is not None else kaggle_root() / "working" / "submission.csv"
    filenames, checked_manifest, choice = checked_inputs(videos_dir, sample, Path(manifest), out, device, config)
    scorer = load_scorer(checked_manifest, config, choice.device)
    config = scorer.config  # resolved once for the models: decoding, the signature and the summary use it too
    skipped = {name: "outside_videos" for name in outside_names(filenames, videos_dir)}
    skipped.update({name: "crashed" for name in crashed_names(filenames, crashed)})
    checkpoint = open_checkpoint(out, run_signature(checked_manifest, config), videos_dir, filenames)
    todo = [name for name in filenames if name not in checkpoint.done and name not in skipped]
    models = [spec.name for spec in checked_manifest.models]
    planner = BudgetPlanner(config["time_budget_hours"] * 3600.0, drop_order(checked_manifest), models)
    prior = float(config["prior"])
    in_flight = InFlight(out)
    scored = 0
    stop = threading.Event()
    bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress)
    loop_start = last_end = time.monotonic()
    try:
        for position, (filename, frames, decode_s, identity) in enumerate(
                prefetch_frames(videos_dir, todo, config, stop, in_flight)):
            scorer.timer.add("decode", decode_s)
            elapsed = time.monotonic() - started
            if dropping := planner.to_drop(elapsed, len(todo) - position, choice.device):
                planner.drop(dropping, elapsed, len(todo) - position)
                log.warning("from %s on, scores combine by %s", filename, scorer.drop_models(dropping))
            if not planner.fits_next(elapsed):
                break
            in_flight.mark("score", filename)
            models_before = dict(scorer.timer.seconds)
            start = time.perf_counter()
            try:
                label, reason = score_video(scorer, frames), "ok"
            except Exception as error:  # one bad video costs its prior, never the run
                label, reason = prior, fallback_reason(error)
                log.warning("%s: %s (%s): using %.2f", filename, reason, error, prior)
            scored += 1
            dropped = tuple(name for name in models if name not in planner.kept)
            checkpoint.add(filename, Record(label, reason, decode_s + time.perf_counter() - start, identity, dropped))
            in_flight.mark("score", None)
            now = time.monotonic()
            planner.record(now - last_end, decode_s, {
                name: scorer.timer.seconds[model_stage(name)] - models_before.get(model_stage(name), 0.0)
                for name in planner.kept})
            last_end = now
            bar.update(1)
    finally:
        stop.set()
        bar.close()
        checkpoint.close()
    in_flight.clear()
    late = [name for name in filenames if name not in checkpoint.done and name not in skipped]
    if late:
        log.warning("time budget of %.2f h reached: %d videos get the prior %.2f", config["time_budget_hours"],
                    len(late), prior)
    records = {name: checkpoint.done.get(name) or Record(prior, skipped.get(name, "time_budget"), 0.0, None)
               for name in filenames}
    submission = write_submission(out, filenames, {name: r.label for name, r in records.items()}, tuple(config["clip"]))
    run = KernelRun(submission, {name: r.reason for name, r in records.items()}, dict(scorer.timer.seconds), scored,
                    {name: r.seconds for name, r in records.items()}, choice,
                    {name: r.dropped for name, r in records.items() if r.reason == "ok"}, last_end - loop_start)
    log_summary(run, out)
    summary = {**run_summary(run, out, checked_manifest, scorer.base_stacker), "config": config}
    try:
        write_atomic(summary_path(out), json.dumps(summary, indent=1))
    except OSError as error:  # the submission is written: the run succeeded without its summary
        log.warning("%s: cannot write the run summary (%s); %s is written", summary_path(out),
                    error.strerror or error, out)
    return run


def model_set_rows(run: KernelRun, manifest: Manifest, stacker: Stacker | None) -> list[dict[str, Any]]:
    """One row per model set the scored videos were scored with: dropped and kept models, how scores were combined,
    and the videos, in submission order."""
    videos: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for name in run.submission["filename"]:
        if name in run.model_sets:
            videos[run.model_sets[name]].append(name)
    rows = []
    for dropped, names in sorted(videos.items(), key=lambda item: len(item[0])):
        kept = [spec for spec in manifest.models if spec.name not in dropped]
        rows.append({"dropped": list(dropped), "models": [spec.name for spec in kept],
                     "combined_by": combiner_for(stacker, {spec.group for spec in kept})[1], "videos": names})
    return rows


def run_summary(run: KernelRun, out: Path, manifest: Manifest, stacker: Stacker | None) -> dict[str, Any]:
    """What `<out>.summary.json` holds (with the resolved config): device, timings, fallbacks and which videos each
    model set scored."""
    per_video = max(1, run.videos_scored)
    return {"submission": str(out), "device": run.device.device, "device_reason": run.device.reason,
            "videos": len(run.submission), "scored_this_run": run.videos_scored,
            "seconds_per_video": {"wall": run.loop_seconds / per_video,
                                  **{stage: run.stage_seconds.get(stage, 0.0) / per_video
                                     for stage in ("decode", "detect", "classify")}},
            "fallbacks": dict(sorted(run.fallback_counts.items())),
            "model_sets": model_set_rows(run, manifest, stacker)}


def log_summary(run: KernelRun, out: Path) -> None:
    """Per-stage seconds per video and fallback counts by reason."""
    per_video = max(1, run.videos_scored)
    stages = ", ".join(f"{stage} {run.stage_seconds.get(stage, 0.0) / per_video:.2f}"
                       for stage in ("decode", "detect", "classify"))
    log.info("wrote %s: %d videos; s/video: %s", out, len(run.submission), stages)
    counts = run.fallback_counts
    log.info("fallbacks: %s", ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "none")
    sets = sorted(Counter(run.model_sets.values()).items(), key=lambda item: len(item[0]))
    if any(dropped for dropped, _ in sets):
        log.info("model sets: %s", "; ".join(f"{'without ' + ', '.join(dropped) if dropped else 'all models'}: "
                                             f"{count} videos" for dropped, count in sets))
