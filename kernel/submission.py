"""Submission I/O: which videos to predict, clipping, atomic CSV writes and the crash checkpoint."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def target_filenames(videos_dir: Path, sample_submission: Path | None) -> list[str]:
    """Files of `sample_submission.csv` in its order, or every video in the folder sorted."""
    if sample_submission is not None and Path(sample_submission).is_file():
        frame = pd.read_csv(sample_submission)
        if "filename" not in frame.columns:
            raise ValueError(f"{sample_submission}: no 'filename' column; expected the DFDC 'filename,label' format")
        return frame["filename"].astype(str).tolist()
    if sample_submission is not None:
        log.warning("%s not found: predicting every video in %s", sample_submission, videos_dir)
    if not Path(videos_dir).is_dir():
        raise FileNotFoundError(f"videos folder {videos_dir} not found; pass --videos DIR")
    return sorted(p.name for p in Path(videos_dir).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)


def clip_probs(probs, bounds: tuple[float, float]) -> np.ndarray:
    return np.clip(np.asarray(probs, dtype=np.float64), bounds[0], bounds[1])


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write `text` (or bytes) to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_submission(path: str | Path, filenames: list[str], labels: dict[str, float],
                     bounds: tuple[float, float]) -> pd.DataFrame:
    """Write `filename,label` for `filenames` in order, clipped, atomically; return the frame."""
    frame = pd.DataFrame({"filename": filenames, "label": clip_probs([labels[f] for f in filenames], bounds)})
    write_atomic(path, frame.to_csv(index=False, float_format="%.6f"))
    return frame


class Checkpoint:
    """Append-only JSON-lines record of finished videos, so a crashed run resumes where it stopped.

    The first line holds a signature of the models and config; a checkpoint from another set-up is ignored.
    """

    def __init__(self, path: Path, signature: str):
        self.path = Path(path)
        self.signature = signature
        self.done: dict[str, tuple[float, str]] = self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.done:
            write_atomic(self.path, json.dumps({"signature": signature}) + "\n")
        self._handle = open(self.path, "a")

    def _load(self) -> dict[str, tuple[float, str]]:
        if not self.path.is_file():
            return {}
        lines = self.path.read_text().splitlines()
        try:
            if not lines or json.loads(lines[0]).get("signature") != self.signature:
                log.warning("%s is from another model/config set-up: starting afresh", self.path)
                return {}
        except json.JSONDecodeError:
            return {}
        done = {}
        for line in lines[1:]:
            try:
                row = json.loads(line)
                done[row["filename"]] = (float(row["label"]), row["reason"])
            except (json.JSONDecodeError, KeyError):  # a line cut short by a crash: that video is redone
                log.warning("%s: skipping a damaged line", self.path)
        return done

    def add(self, filename: str, label: float, reason: str) -> None:
        self.done[filename] = (label, reason)
        self._handle.write(json.dumps({"filename": filename, "label": label, "reason": reason}) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()
