"""Frame sampling: N evenly spaced RGB frames per video, decord first, OpenCV as fallback."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoReadError(RuntimeError):
    """A video (or image) could not be opened or decoded by any backend."""


def evenly_spaced_indices(frame_count: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames spread evenly over `frame_count` (fewer if the video is shorter)."""
    if frame_count <= 0 or num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, frame_count - 1, num_frames).round().astype(np.int64))


def _read_decord(path: Path, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    indices = evenly_spaced_indices(len(reader), num_frames)
    if len(indices) == 0:
        raise VideoReadError(f"{path}: decord found no frames")
    frames = reader.get_batch(list(indices)).asnumpy()
    return frames, indices


def _read_opencv(path: Path, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoReadError(f"{path}: OpenCV cannot open it")
        frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(evenly_spaced_indices(frame_count, num_frames).tolist())
        frames, indices = [], []
        for index in range(frame_count):
            if not capture.grab():
                break
            if index in wanted:
                ok, frame = capture.retrieve()
                if ok and frame is not None:
                    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                    indices.append(index)
    finally:
        capture.release()
    if not frames:
        raise VideoReadError(f"{path}: OpenCV decoded no frames")
    return np.stack(frames), np.asarray(indices, dtype=np.int64)


BACKENDS = {"decord": _read_decord, "opencv": _read_opencv}


def read_frames(path: str | Path, num_frames: int = 32,
                backends: tuple[str, ...] = ("decord", "opencv")) -> tuple[np.ndarray, np.ndarray]:
    """Decode `num_frames` evenly spaced frames of `path`.

    Returns `(frames, indices)`: frames as RGB uint8 `(n, H, W, 3)` and their frame numbers. Each backend
    is tried in turn; a `VideoReadError` naming the file and every backend's failure is raised if none works.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes)")
    failures = []
    for name in backends:
        try:
            frames, indices = BACKENDS[name](path, num_frames)
        except Exception as error:  # every backend failure is recorded and the next one is tried
            failures.append(f"{name}: {error}")
            log.debug("%s: %s failed: %s", path.name, name, error)
            continue
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            failures.append(f"{name}: unexpected frame shape {frames.shape}")
            continue
        return np.ascontiguousarray(frames), indices
    raise VideoReadError(f"{path}: cannot decode ({'; '.join(failures)})")


def read_image(path: str | Path) -> np.ndarray:
    """An image file as a one-frame RGB uint8 batch `(1, H, W, 3)`."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoReadError(f"{path}: OpenCV cannot read this image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)[None]
