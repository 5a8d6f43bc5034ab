"""Face-crop extraction for training: the kernel's decoder, detector, tracker and crop on every labelled video (or
image), one record per item, merged into `index.csv`. The command line is `training/extract_faces.py`."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from dfdc_core.faces import Track, crop_window, detector_from_config, face_crops, isotropic_resize, person_tracks
from dfdc_core.io import write_atomic
from dfdc_core.video import IMAGE_SUFFIXES, VideoReadError, decode_video, read_frames_at, read_image
from kernel.config import load_config
from training.index import INDEX_COLUMNS, LABELS

log = logging.getLogger("extract_faces")


PROBLEM_COLUMNS = ["video", "part", "status", "message"]
RECORD_VERSION = 2          # records of another version (or other settings) are extracted again
SCORING_KEYS = {"prefetch_videos", "detect_batch_size", "detect_threads", "classify_batch_size", "aggregation",
                "tta_hflip", "prior", "clip", "time_budget_hours"}  # kernel settings that do not change a crop


MANIPULATED_SHARE = 0.5     # a fake's track is manipulated if it differs from the original this much of the most


@dataclass(frozen=True)
class Item:
    """One video (or face image) to extract: where it is and what metadata says about it."""

    part: str
    name: str
    path: Path
    label: int
    original: str | None
    is_image: bool = False

    @property
    def original_path(self) -> Path | None:
        """The original video's file, when it lies beside this fake."""
        if not self.original:
            return None
        path = self.path.parent / self.original
        return path if path.is_file() else None

    @property
    def key(self) -> str:
        return f"{self.part}/{self.name}"


@dataclass(frozen=True)
class Problem:
    """A metadata entry or video that yields no crops (or a warning), with the reason."""

    video: str
    part: str
    status: str
    message: str


def find_parts(root: Path) -> list[Path]:
    """DFDC part folders under `root`: `root` itself if it holds `metadata.json`, else its sub-folders that do."""
    if (root / "metadata.json").is_file():
        return [root]
    parts = sorted(p for p in root.iterdir() if p.is_dir() and (p / "metadata.json").is_file())
    if not parts:
        raise FileNotFoundError(f"{root}: no metadata.json in it or in its sub-folders; pass --data a DFDC "
                                "train part, a folder of dfdc_train_part_*/ folders, or a folder with real/ and fake/")
    return parts


def read_metadata(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); re-download the part's metadata.json") from error
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: expected a JSON object {{'name.mp4': {{'label': ...}}}}, "
                         f"got {type(metadata).__name__}")
    return metadata


def dfdc_items(part: Path) -> tuple[list[Item], list[Problem]]:
    """Checked entries of one part's `metadata.json`; bad entries become problems, never exceptions."""
    metadata = read_metadata(part / "metadata.json")
    items, problems = [], []
    for name, entry in sorted(metadata.items()):
        entry = entry if isinstance(entry, dict) else {}
        label, original = entry.get("label"), entry.get("original")
        where = f"{part / 'metadata.json'}: '{name}'"
        if label is None:
            problems.append(Problem(name, part.name, "unlabelled", f"{where} has no label; skipped"))
        elif label not in LABELS:
            problems.append(Problem(name, part.name, "bad_label", f"{where} has label {label!r}; expected "
                                    "'REAL' or 'FAKE'; fix the entry or remove it"))
        elif not (part / name).is_file():
            problems.append(Problem(name, part.name, "missing_file", f"{where} names a file that is not in "
                                    f"{part}; copy it there or remove the entry"))
        else:
            if label == "FAKE" and not original:
                problems.append(Problem(name, part.name, "no_original", f"{where} is FAKE without an 'original'; "
                                        "extracted, and it forms a fold group of its own"))
            elif label == "FAKE" and original not in metadata:
                problems.append(Problem(name, part.name, "original_absent", f"{where} is FAKE but its original "
                                        f"{original!r} is not in this metadata.json; extracted, and grouped "
                                        "with other fakes of the same original when folds are made"))
            items.append(Item(part.name, name, part / name, LABELS[label], original or None))
    return items, problems


def image_folder_items(root: Path) -> list[Item]:
    """Face images of `root/real` and `root/fake`; each image is treated as a one-frame video."""
    items = []
    for folder, label in (("real", 0), ("fake", 1)):
        images = sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        items += [Item(folder, p.name, p, label, None, is_image=True) for p in images]
    if not items:
        raise FileNotFoundError(f"{root}: real/ and fake/ hold no images ({', '.join(IMAGE_SUFFIXES)})")
    return items


def collect_items(root: Path) -> tuple[list[Item], list[Problem]]:
    """Every extractable item under `root` (DFDC layout or image folders) and the metadata problems."""
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: no such folder")
    if (root / "real").is_dir() and (root / "fake").is_dir():
        return image_folder_items(root), []
    items, problems = [], []
    for part in find_parts(root):
        part_items, part_problems = dfdc_items(part)
        items += part_items
        problems += part_problems
    return items, problems


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
        if item.is_image:
            return read_image(item.path), np.zeros(1, dtype=np.int64)
        return decode_video(item.path, self.config, self.frames)

    def extract(self, item: Item) -> tuple[list[dict[str, Any]], int]:
        """Crops of every kept person in every sampled frame, exactly as the kernel cuts them; returns the index
        rows and how many persons of a fake were left out as not manipulated."""
        cfg = self.config
        frames, frame_numbers = self.decode(item)
        tracks = person_tracks(self.detector, frames, cfg)
        kept = manipulated_tracks(item, tracks, frames, frame_numbers, tuple(cfg["decode_backends"]),
                                  cfg["max_frame_side"])
        folder = self.out / "crops" / item.part / Path(item.name).stem
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
                rows.append({"video": item.name, "frame": frame, "person": track.person, "label": item.label,
                             "original": item.original or "", "part": item.part,
                             "path": str(path.relative_to(self.out)),
                             "box": " ".join(f"{v:.1f}" for v in detection.box),
                             "score": round(detection.score, 5),
                             "landmarks": crop_landmarks(detection.landmarks, detection.box, cfg["crop_margin"],
                                                         raw.shape[:2], crop.shape[:2])})
        return rows, len(tracks) - len(kept)


def settings_key(config: dict[str, Any], frames: int, max_side: int | None) -> str:
    """Identifies what a record was extracted with (the kernel settings that shape crops, not those that only
    score them); a record with another key is extracted again."""
    shaping = {key: value for key, value in config.items() if key not in SCORING_KEYS}
    text = json.dumps({"version": RECORD_VERSION, "frames": frames, "max_side": max_side, "config": shaping},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(out: Path, item: Item) -> Path:
    return out / "records" / item.part / f"{item.name}.json"


def process(extractor: Extractor, item: Item) -> dict[str, Any]:
    """Extract one item and its record (status ok / no_face / decode_error)."""
    try:
        rows, left_out = extractor.extract(item)
    except VideoReadError as error:
        return {"status": "decode_error", "message": str(error), "rows": [], "left_out_persons": 0}
    if not rows:
        return {"status": "no_face", "message": f"{item.path}: no face kept in {extractor.frames} sampled frames",
                "rows": [], "left_out_persons": 0}
    return {"status": "ok", "message": "", "rows": rows, "left_out_persons": left_out}


def write_record(out: Path, item: Item, record: dict[str, Any], key: str) -> None:
    write_atomic(record_path(out, item), json.dumps({"video": item.name, "part": item.part, "key": key, **record}))


def record_is_current(path: Path, key: str) -> bool:
    """A finished record made with the same settings (`settings_key`)."""
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("key") == key
    except json.JSONDecodeError:
        return False


def merge_records(out: Path, metadata_problems: Iterable[Problem], key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All finished records made with settings `key` (from every shard) → `index.csv` and `problems.csv`,
    written atomically."""
    rows, problems = [], [vars(p) for p in metadata_problems]
    for path in sorted((out / "records").glob("*/*.json")):
        record = json.loads(path.read_text())
        if record.get("key") != key:
            continue
        rows += record["rows"]
        if record["status"] != "ok":
            problems.append({"video": record["video"], "part": record["part"], "status": record["status"],
                             "message": record["message"]})
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    problem_frame = pd.DataFrame(problems, columns=PROBLEM_COLUMNS).drop_duplicates()
    write_atomic(out / "index.csv", index.to_csv(index=False))
    write_atomic(out / "problems.csv", problem_frame.to_csv(index=False))
    return index, problem_frame


def run_extraction(data: Path, out: Path, frames: int | None = None, shard: int = 0, num_shards: int = 1,
                   max_side: int | None = None, config_path: Path | None = None, device: str = "cpu",
                   progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Extract this shard's unfinished items, then merge every finished record; returns (index, problems).

    `frames` defaults to the kernel's (`frames` of its config), so training sees what the kernel samples.
    """
    config = load_config(config_path)
    frames = frames or config["frames"]
    key = settings_key(config, frames, max_side)
    items, metadata_problems = collect_items(Path(data))
    for problem in metadata_problems:
        log.warning("%s", problem.message)
    mine = shard_of(items, shard, num_shards)
    todo = [item for item in mine if not record_is_current(record_path(out, item), key)]
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
                                                    "config": config}, indent=1))
    index, problems = merge_records(out, metadata_problems, key)
    no_face = problems[problems["status"] == "no_face"]
    log.info("index: %d crops of %d videos -> %s; %d videos without faces, %d problems in %s", len(index),
             index["video"].nunique(), out / "index.csv", len(no_face), len(problems), out / "problems.csv")
    return index, problems
