"""Submission I/O: which videos to predict, clipping, atomic CSV writes and the crash checkpoint."""
from __future__ import annotations

import io
import json
import logging
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from dfdc_core.config import SettingsError, read_regular_file
from dfdc_core.io import write_atomic
from dfdc_core.values import is_number
from dfdc_core.video import IMAGE_SUFFIXES
from kernel.kaggle import (  # noqa: F401  (re-exported)
    VIDEO_SUFFIXES,
    checkpoint_path,
    in_flight_path,
    summary_path,
    video_files,
)

log = logging.getLogger(__name__)


def target_filenames(videos_dir: Path, sample_submission: Path | None) -> list[str]:
    """Files of `sample_submission.csv` in its order, or every video and image (a one-frame video) in the folder,
    sorted."""
    if sample_submission is not None:
        return sample_filenames(Path(sample_submission))
    if not Path(videos_dir).is_dir():
        raise FileNotFoundError(f"videos folder {videos_dir} not found; pass --videos DIR")
    return media_files(Path(videos_dir))


def media_files(folder: Path) -> list[str]:
    """The videos of `folder` (`video_files`) and its images (each a one-frame video), sorted."""
    images = [path.name for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(video_files(folder) + images)


def sample_filenames(path: Path) -> list[str]:
    """The `filename` column of a sample submission, every cell kept as written (no NaN for 'nan' or 'NA').

    `SettingsError` if the file cannot be read, is not CSV, has no `filename` column, lists no video or has an empty
    name.
    """
    try:
        frame = pd.read_csv(io.BytesIO(read_regular_file(path)), dtype=str, keep_default_na=False)
    except OSError as error:
        raise SettingsError(f"--sample-submission {path}: cannot read it ({error.strerror or error}); pass the "
                            "competition's sample_submission.csv, or leave the flag out to predict every video of "
                            "--videos") from error
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise SettingsError(f"{path}: cannot read it as CSV ({error}); expected the DFDC 'filename,label' format") \
            from error
    if "filename" not in frame.columns:
        raise SettingsError(f"{path}: no 'filename' column (columns: {list(frame.columns)}); expected the DFDC "
                            "'filename,label' format")
    names = frame["filename"].tolist()
    if not names:
        raise SettingsError(f"{path}: lists no videos; expected one 'filename' row per test video")
    empty = [row + 2 for row, name in enumerate(names) if not name.strip()]  # +2: 1-based, after the header
    if empty:
        raise SettingsError(f"{path}: empty filename on line(s) {empty[:10]}; every row must name a video")
    return names


def check_videos_found(videos_dir: Path, filenames: list[str], sample_submission: Path | None) -> None:
    """`SettingsError` unless some target video is a file in `videos_dir` (else every video would get the prior): a
    folder with no video, or without any video the sample submission lists."""
    if any(inside_folder(name) and os.path.isfile(videos_dir / name) for name in filenames):
        return
    if sample_submission is None:
        raise SettingsError(f"--videos {videos_dir}: no videos in it (files named "
                            f"*{', *'.join(VIDEO_SUFFIXES + IMAGE_SUFFIXES)}); pass the folder of the test videos")
    raise SettingsError(f"--videos {videos_dir}: none of the {len(filenames)} videos {sample_submission} lists is "
                        f"there (e.g. {filenames[:3]}); pass the folder that holds them")


def inside_folder(filename: str) -> bool:
    """Whether `filename` names something inside the videos folder: relative, no '..' part, no NUL byte."""
    parts = PurePosixPath(filename).parts
    return bool(parts) and "\0" not in filename and not PurePosixPath(filename).is_absolute() and ".." not in parts


def clip_probs(probs, bounds: tuple[float, float]) -> np.ndarray:
    return np.clip(np.asarray(probs, dtype=np.float64), bounds[0], bounds[1])


def write_submission(path: str | Path, filenames: list[str], labels: dict[str, float],
                     bounds: tuple[float, float]) -> pd.DataFrame:
    """Write `filename,label` for `filenames` in order, clipped, atomically; return the frame.

    Refuses a non-finite label (which would leave a blank cell) with a `ValueError` naming the videos.
    """
    bad = [name for name in filenames if not math.isfinite(labels[name])]
    if bad:
        raise ValueError(f"non-finite labels for {len(bad)} videos ({bad[:5]}); nothing written to {path}")
    frame = pd.DataFrame({"filename": filenames, "label": clip_probs([labels[f] for f in filenames], bounds)})
    with writing(Path(path)):
        write_atomic(path, frame.to_csv(index=False, float_format="%.6f"))
    return frame


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An `OSError` while writing `path` (disk full, the file size limit, a folder in the way) becomes a
    `SettingsError` naming the file and the cause: `python -m kernel` exits 2 with it."""
    try:
        yield
    except OSError as error:
        raise SettingsError(f"{path}: cannot write it ({error.strerror or error}); free space there, lift the file "
                            "size limit (ulimit -f) or pass another --out") from error


CHECKPOINT_FORMAT = 2
RETRIED_ON_RESUME = ("missing_file", "decode_error", "error:")  # fallbacks the environment can cause


def video_identity(path: Path) -> dict | None:
    """What makes a video the same file on resume: its absolute path, size and mtime; None if it is absent."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass(frozen=True)
class Record:
    """One finished video of the checkpoint."""

    label: float
    reason: str
    seconds: float
    identity: dict | None
    dropped: tuple[str, ...] = ()  # models the time budget had dropped when this video was scored


class Checkpoint:
    """Append-only JSON-lines record of finished videos, so a crashed run resumes where it stopped.

    The first line holds the signature of the models and config; each record holds its video's identity
    (`video_identity`: path, size, mtime). On resume a record is reused only if its video is unchanged and its
    fallback was not caused by the environment (`RETRIED_ON_RESUME`: those videos are tried again). A file from
    another set-up, or one with records of videos that changed since, is set aside (renamed, logged) and a new
    one holds the records still valid. A torn last line (a kill mid-write) is cut off before appending.
    """

    def __init__(self, path: Path, signature: str, identity: Callable[[str], dict | None]):
        self.path = Path(path)
        self.signature = signature
        self.done: dict[str, Record] = {}
        self.retried: list[str] = []
        with writing(self.path):
            records = self._load()
            changed = []
            for filename, record in (records or {}).items():
                if record.reason.startswith(RETRIED_ON_RESUME):
                    self.retried.append(filename)
                elif record.identity is not None and record.identity == identity(filename):
                    self.done[filename] = record
                else:
                    changed.append(filename)
            if changed:
                self._set_aside("stale", f"{len(changed)} of its videos changed since they were scored "
                                         f"({changed[:5]}); they are scored again")
            if records is None or changed:
                lines = [self._header()] + [self._line(name, record) for name, record in self.done.items()]
                write_atomic(self.path, "".join(lines))
            self._handle = open(self.path, "a")

    def _header(self) -> str:
        return json.dumps({"signature": self.signature, "format": CHECKPOINT_FORMAT}) + "\n"

    @staticmethod
    def _line(filename: str, record: Record) -> str:
        return json.dumps({"filename": filename, **asdict(record)}) + "\n"

    def _load(self) -> dict[str, Record] | None:
        """Records of an existing file of this set-up (a later line wins); None if there is none to resume."""
        if not self.path.is_file():
            return None
        self._cut_torn_line()
        lines = self.path.read_text(errors="replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("signature") != self.signature:
            self._set_aside("foreign", "it is from another model/config set-up or not a checkpoint")
            return None
        records = {}
        for number, line in enumerate(lines[1:], start=2):
            try:
                filename, record = record_of(json.loads(line))
            except (KeyError, TypeError, ValueError):  # json.JSONDecodeError is a ValueError
                log.warning("%s: line %d is damaged; that video is scored again", self.path, number)
                continue
            records[filename] = record
        return records

    def _cut_torn_line(self) -> None:
        """Cut a last line without its newline (written when the run was killed) off the file."""
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            log.warning("%s: cutting off a torn last line (%d bytes; the run was killed mid-write)", self.path,
                        len(data) - keep)
            os.truncate(self.path, keep)

    def _set_aside(self, kind: str, why: str) -> None:
        """Rename the checkpoint to `<name>.<kind>-N` (the first N free) and log why."""
        number = 1
        while (aside := self.path.with_name(f"{self.path.name}.{kind}-{number}")).exists():
            number += 1
        os.replace(self.path, aside)
        log.warning("%s set aside as %s: %s", self.path, aside.name, why)

    def add(self, filename: str, record: Record) -> None:
        self.done[filename] = record
        with writing(self.path):
            self._handle.write(self._line(filename, record))
            self._handle.flush()

    def close(self) -> None:
        with writing(self.path):
            self._handle.close()


def record_of(row: Any) -> tuple[str, Record]:
    """The video name and record of one checkpoint line's JSON; `ValueError` (or `KeyError`, `TypeError`) if a field
    is missing or has the wrong type or range: the line is damaged, and its video is scored again."""
    filename, label, reason, seconds, identity = (row[key] for key in ("filename", "label", "reason", "seconds",
                                                                       "identity"))
    dropped = row.get("dropped", [])
    if not (isinstance(filename, str) and filename and is_number(label) and 0 <= label <= 1 and isinstance(reason, str)
            and reason and is_number(seconds) and seconds >= 0 and (identity is None or isinstance(identity, dict))
            and isinstance(dropped, list) and all(isinstance(name, str) for name in dropped)):
        raise ValueError(f"a checkpoint record with a field of the wrong type or range: {row}")
    return filename, Record(float(label), reason, float(seconds), identity, tuple(dropped))


class InFlight:
    """`<out>.inflight.json`: the video being decoded and the one being scored, each with the thread working on it,
    rewritten as each starts and ends, so that after a crash the notebook knows which videos were in progress
    (`kernel.kaggle.crash_suspects`)."""

    def __init__(self, out: Path):
        self.path = in_flight_path(out)
        self.marks: dict[str, dict | None] = {"decode": None, "score": None}
        self.lock = threading.Lock()

    def mark(self, stage: str, filename: str | None) -> None:
        """The calling thread now works on `filename` in `stage` ('decode' or 'score'); None: that stage is idle."""
        with self.lock, writing(self.path):
            self.marks[stage] = None if filename is None else {"video": filename, "thread": threading.get_ident()}
            write_atomic(self.path, json.dumps(self.marks), durable=False)

    def clear(self) -> None:
        """The run finished: nothing is in progress."""
        with self.lock, writing(self.path):
            self.path.unlink(missing_ok=True)
