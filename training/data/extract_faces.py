"""Face-crop extraction for training: the kernel's decoder, detector, tracker and crop on every labelled video (or
image) of every source (training/data/sources.py), one record per item, merged into one `index.csv`. The command line is
`training/extract_faces.py`."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from dfdc_core.faces import (
    Track,
    crop_window,
    detector_from_config,
    face_crops,
    isotropic_resize,
    person_tracks,
)
from dfdc_core.io import write_atomic
from dfdc_core.preprocessing import Preprocessing
from dfdc_core.video import VideoReadError, decode_video, read_frames_at
from kernel.config import load_config
from training.data.index import INDEX_COLUMNS
from training.data.sources import Item, Problem, collect_sources

log = logging.getLogger("extract_faces")


PROBLEM_COLUMNS = ["source", "video", "part", "status", "message"]
RECORD_VERSION = 3          # records of another version (or other settings) are extracted again
SCORING_KEYS = {"prefetch_videos", "detect_batch_size", "detect_threads", "classify_batch_size", "aggregation",
                "tta_hflip", "prior", "clip", "time_budget_hours"}  # kernel settings that do not change a crop


MANIPULATED_SHARE = 0.5     # a fake's track is manipulated if it differs from the original this much of the most


def shard_of(items: list[Item], shard: int, num_shards: int) -> list[Item]:
    """Every `num_shards`-th item (sorted by part and name), starting at `shard`."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {shard} must be in 0..{num_shards - 1} for --num-shards {num_shards}")
    return sorted(items, key=lambda item: item.key)[shard::num_shards]


def cap_long_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """`image` shrunk by the kernel's `isotropic_resize` so its long side is at most `max_side` (None: as is).

    A crop stored at a model's input size gives that model exactly the kernel's tensor; other sizes resize twice.
    """
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    return isotropic_resize(image, max_side)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB crop as a lossless PNG through a temporary file and a rename."""
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"cannot write {tmp}; check free space and permissions of {path.parent}")
    tmp.replace(path)


def crop_landmarks(landmarks: tuple[tuple[float, float], ...] | None, box: tuple[float, float, float, float],
                   margin: float, crop_shape: tuple[int, int], stored_shape: tuple[int, int]) -> str:
    """The five landmarks in the stored crop's pixels, as "x1 y1 ... x5 y5" ("" when the detector gave none)."""
    if not landmarks:
        return ""
    left, top, _, _ = crop_window(box, margin)
    scale_y, scale_x = stored_shape[0] / crop_shape[0], stored_shape[1] / crop_shape[1]
    return " ".join(f"{(x - left) * scale_x:.1f} {(y - top) * scale_y:.1f}" for x, y in landmarks)


def track_change(frames: np.ndarray, originals: np.ndarray, track: Track) -> float:
    """Mean absolute pixel difference between a fake's face boxes and the same boxes of its original."""
    changes = []
    for detection in track.detections:
        x1, y1, x2, y2 = (int(round(v)) for v in detection.box)
        fake = frames[detection.frame, y1:y2, x1:x2].astype(np.float32)
        real = originals[detection.frame, y1:y2, x1:x2].astype(np.float32)
        if fake.size and fake.shape == real.shape:
            changes.append(float(np.abs(fake - real).mean()))
    return float(np.mean(changes)) if changes else 0.0


def manipulated_tracks(item: Item, tracks: list[Track], frames: np.ndarray, frame_numbers: np.ndarray,
                       backends: tuple[str, ...], max_side: int | None) -> list[Track]:
    """The tracks of a FAKE video that carry the manipulation (see the module docstring); all of a REAL one's."""
    if item.label == 0 or len(tracks) < 2:
        return tracks
    originals = None
    if item.original_path is not None:
        try:
            originals = read_frames_at(item.original_path, frame_numbers, backends, max_side)
        except VideoReadError as error:
            log.warning("%s: original unreadable (%s); keeping only the longest track", item.key, error)
    if originals is None or originals.shape != frames.shape:
        return tracks[:1]
    changes = [track_change(frames, originals, track) for track in tracks]
    return [track for track, change in zip(tracks, changes) if change >= MANIPULATED_SHARE * max(changes)]


class Extractor:
    """Detector loaded once; `extract(item)` writes one item's crops and returns its index rows."""

    def __init__(self, out: Path, config: dict[str, Any], frames: int, max_side: int | None, device: str = "cpu"):
        self.out, self.config, self.frames, self.max_side = out, config, frames, max_side
        self.detector = detector_from_config(config, device)

    def decode(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """The kernel's frames of the item (an image: its one padded frame, `dfdc_core.video.read_still`)."""
        return decode_video(item.path, self.config, self.frames)

    def extract(self, item: Item) -> tuple[list[dict[str, Any]], int]:
        """Crops of every kept person in every sampled frame, exactly as the kernel cuts them; returns the index
        rows and how many persons of a fake were left out as not manipulated."""
        cfg = self.config
        frames, frame_numbers = self.decode(item)
        tracks = person_tracks(self.detector, frames, cfg)
        kept = manipulated_tracks(item, tracks, frames, frame_numbers, tuple(cfg["decode_backends"]),
                                  cfg["max_frame_side"])
        folder = self.out / "crops" / item.key
        if kept:
            folder.mkdir(parents=True, exist_ok=True)
        rows = []
        crops = iter(face_crops(frames, kept, cfg["crop_margin"]))
        for track in kept:
            for detection, raw in zip(track.detections, crops):
                frame = int(frame_numbers[detection.frame])
                crop = cap_long_side(raw, self.max_side)
                path = folder / f"{frame:04d}_{track.person}.png"
                write_png(path, crop)
                rows.append({"video": item.video, "frame": frame, "person": track.person, "label": item.label,
                             "original": item.original or "", "part": item.part,
                             "path": path.relative_to(self.out).as_posix(),
                             "box": " ".join(f"{v:.1f}" for v in detection.box),
                             "score": round(detection.score, 5),
                             "landmarks": crop_landmarks(detection.landmarks, detection.box, cfg["crop_margin"],
                                                         raw.shape[:2], crop.shape[:2]),
                             "source": item.source, "group": item.group, "method": item.method, **item.extra})
        return rows, len(tracks) - len(kept)


def settings_key(config: dict[str, Any], frames: int, max_side: int | None) -> str:
    """Identifies what a record was extracted with (the kernel settings that shape crops, not those that only
    score them); a record with another key is extracted again."""
    shaping = {key: value for key, value in config.items() if key not in SCORING_KEYS}
    text = json.dumps({"version": RECORD_VERSION, "frames": frames, "max_side": max_side, "config": shaping},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(out: Path, item: Item) -> Path:
    return out / "records" / f"{item.key}.json"


def process(extractor: Extractor, item: Item) -> dict[str, Any]:
    """Extract one item and its record (status ok / no_face / decode_error)."""
    try:
        rows, left_out = extractor.extract(item)
    except VideoReadError as error:
        return {"status": "decode_error", "message": str(error), "rows": [], "left_out_persons": 0}
    if not rows:
        sampled = "the image" if item.is_image else f"{extractor.frames} sampled frames"
        return {"status": "no_face", "message": f"{item.path}: no face kept in {sampled}", "rows": [],
                "left_out_persons": 0}
    return {"status": "ok", "message": "", "rows": rows, "left_out_persons": left_out}


def write_record(out: Path, item: Item, record: dict[str, Any], key: str) -> None:
    write_atomic(record_path(out, item), json.dumps({"source": item.source, "video": item.video, "part": item.part,
                                                     "key": key, **record}))


def record_is_current(out: Path, path: Path, key: str) -> bool:
    """A finished record made with the same settings (`settings_key`) whose crops are all on disk, not empty
    (a crop lost or truncated since makes the item extract again)."""
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and record.get("key") == key and all(
        (out / row["path"]).is_file() and (out / row["path"]).stat().st_size > 0 for row in record.get("rows", []))


def merge_records(out: Path, metadata_problems: Iterable[Problem], key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All finished records made with settings `key` (from every shard) → `index.csv` and `problems.csv`,
    written atomically."""
    rows, problems = [], [vars(p) for p in metadata_problems]
    for path in sorted((out / "records").rglob("*.json")):
        record = json.loads(path.read_text())
        if record.get("key") != key:
            continue
        rows += record["rows"]
        if record["status"] != "ok":
            problems.append({"source": record["source"], "video": record["video"], "part": record["part"],
                             "status": record["status"], "message": record["message"]})
    extra = sorted({column for row in rows for column in row} - set(INDEX_COLUMNS))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS + extra).fillna({column: "" for column in extra})
    problem_frame = pd.DataFrame(problems, columns=PROBLEM_COLUMNS).drop_duplicates()
    write_atomic(out / "index.csv", index.to_csv(index=False))
    write_atomic(out / "problems.csv", problem_frame.to_csv(index=False))
    return index, problem_frame


def run_extraction(data: Path | list[Path], out: Path, frames: int | None = None, shard: int = 0,
                   num_shards: int = 1, max_side: int | None = None, config_path: Path | None = None,
                   device: str = "cpu", progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Extract this shard's unfinished items of every source in `data`, then merge every finished record of the
    cache; returns (index, problems).

    `frames` defaults to the kernel's (`frames` of its config), so training sees what the kernel samples.
    """
    config = load_config(config_path)
    frames = config["frames"] if frames is None else frames
    if not (isinstance(frames, int) and not isinstance(frames, bool) and frames > 0):
        raise ValueError(f"frames {frames!r}: the frames sampled per video must be a whole number above 0")
    key = settings_key(config, frames, max_side)
    items, metadata_problems = collect_sources([Path(path) for path in ([data] if isinstance(data, (str, Path))
                                                                        else data)])
    for problem in metadata_problems:
        log.warning("%s", problem.message)
    mine = shard_of(items, shard, num_shards)
    todo = [item for item in mine if not record_is_current(out, record_path(out, item), key)]
    log.info("shard %d/%d: %d items, %d already done, %d to extract (%d frames each)", shard, num_shards,
             len(mine), len(mine) - len(todo), len(todo), frames)
    if todo:
        extractor = Extractor(out, config, frames, max_side, device)
        for item in tqdm(todo, desc=f"extract shard {shard}", unit="video", disable=not progress):
            record = process(extractor, item)
            if record["status"] != "ok":
                log.warning("%s", record["message"])
            elif record["left_out_persons"]:
                log.info("%s: %d person(s) of this fake left out as not manipulated", item.key,
                         record["left_out_persons"])
            write_record(out, item, record, key)
    write_atomic(out / "settings.json", json.dumps({"frames": frames, "max_side": max_side, "key": key,
                                                    "preprocessing": Preprocessing.of_config(config, frames).as_dict(),
                                                    "config": config}, indent=1))
    index, problems = merge_records(out, metadata_problems, key)
    no_face = problems[problems["status"] == "no_face"]
    log.info("index: %d crops of %d videos -> %s; %d videos without faces, %d problems in %s", len(index),
             index["video"].nunique(), out / "index.csv", len(no_face), len(problems), out / "problems.csv")
    for source, rows in index.groupby("source"):
        log.info("source %s: %d crops of %d items (%d real, %d fake)", source, len(rows), rows["video"].nunique(),
                 int((rows.drop_duplicates("video")["label"] == 0).sum()),
                 int((rows.drop_duplicates("video")["label"] == 1).sum()))
    return index, problems
