"""Frame sampling: N evenly spaced RGB frames per video; PyAV reference frames first, then decord, then OpenCV.

PyAV skips the non-reference frames (about half of an x264 video's) and takes the nearest decoded frame to each
evenly spaced number: 1.5x faster than decord here, which is what puts the kernel's decode+detect at 3x the
1st-place pipeline on 2 cores (`bench/kernel_speed.py`). decord and OpenCV `grab`/`retrieve` decode exact frames.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
Chooser = Callable[[int], np.ndarray]  # a video's frame count → the frame numbers to decode


class VideoReadError(RuntimeError):
    """A video (or image) could not be opened or decoded by any backend."""


def evenly_spaced_indices(frame_count: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames spread evenly over `frame_count` (fewer if the video is shorter)."""
    if frame_count <= 0 or num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, frame_count - 1, num_frames).round().astype(np.int64))


def _read_decord(path: Path, choose: Chooser) -> tuple[np.ndarray, np.ndarray]:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    indices = choose(len(reader))
    if len(indices) == 0:
        raise VideoReadError(f"{path}: decord found no frames")
    frames = reader.get_batch(list(indices)).asnumpy()
    return frames, indices


def _read_opencv(path: Path, choose: Chooser) -> tuple[np.ndarray, np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoReadError(f"{path}: OpenCV cannot open it")
        frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(choose(frame_count).tolist())
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


def display_order(packets: list) -> dict[int, int]:
    """Frame number (display order) of each video packet's presentation timestamp."""
    return {pts: number for number, pts in enumerate(sorted(p.pts for p in packets if p.pts is not None))}


def decoded_frames(path: Path, packets: list) -> Iterator:
    """Frames the decoder gives for `packets`; a damaged packet ends the video there (logged), as OpenCV's
    `grab` does, so a truncated file yields the frames before the damage."""
    import av

    for packet in packets:
        try:
            yield from packet.decode()
        except av.error.InvalidDataError as error:
            log.warning("%s: decoding stopped at a damaged packet (%s); using the frames before it", path.name, error)
            return


def _read_pyav_reference(path: Path, choose: Chooser) -> tuple[np.ndarray, np.ndarray]:
    """Decode reference frames only (`skip_frame = NONREF`: the non-reference B-frames, about half of an
    x264 video, are never decoded) and take the decoded frame nearest to each evenly spaced frame number.

    Frame numbers are exact (display order of the packets' timestamps); each sampled frame is at most a
    non-reference run (1-3 frames with x264 defaults) away from its evenly spaced number.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        stream.codec_context.thread_count = 1  # one core decodes; detection has the others (as with decord)
        packets = list(container.demux(stream))
        numbers = display_order(packets)
        targets = choose(len(numbers))
        if len(targets) == 0:
            raise VideoReadError(f"{path}: PyAV found no frames")
        chosen: dict[int, np.ndarray] = {}
        pending = list(targets)
        previous: tuple[int, object] | None = None

        def keep(number: int, frame) -> None:
            if number not in chosen:
                chosen[number] = frame.to_ndarray(format="rgb24")

        for frame in decoded_frames(path, packets):
            number = numbers.get(frame.pts)
            if number is None:
                continue
            while pending and pending[0] <= number:
                wanted = pending.pop(0)
                if previous is not None and wanted - previous[0] <= number - wanted:
                    keep(*previous)
                else:
                    keep(number, frame)
            previous = (number, frame)
        if pending and previous is not None:
            keep(*previous)
    if not chosen:
        raise VideoReadError(f"{path}: PyAV decoded no frames")
    order = sorted(chosen)
    return np.stack([chosen[n] for n in order]), np.asarray(order, dtype=np.int64)


BACKENDS = {"pyav": _read_pyav_reference, "decord": _read_decord, "opencv": _read_opencv}
EXACT_BACKENDS = ("decord", "opencv")  # decode the very frames asked for (PyAV's reference frames may be near)


def read_frames(path: str | Path, num_frames: int = 32,
                backends: tuple[str, ...] = tuple(BACKENDS)) -> tuple[np.ndarray, np.ndarray]:
    """Decode `num_frames` evenly spaced frames of `path`.

    Returns `(frames, indices)`: frames as RGB uint8 `(n, H, W, 3)` and their frame numbers. Each backend
    is tried in turn; a `VideoReadError` naming the file and every backend's failure is raised if none works.
    """
    return _decode(Path(path), partial(evenly_spaced_indices, num_frames=num_frames), backends)


def read_frames_at(path: str | Path, numbers: np.ndarray, backends: tuple[str, ...] = EXACT_BACKENDS) -> np.ndarray:
    """The frames numbered `numbers` of `path`, exactly (only the exact backends among `backends` are tried);
    a `VideoReadError` if the video has fewer frames or none of them decodes it."""
    numbers = np.asarray(numbers, dtype=np.int64)
    exact = tuple(name for name in backends if name in EXACT_BACKENDS) or EXACT_BACKENDS
    frames, decoded = _decode(Path(path), lambda count: numbers[numbers < count], exact)
    if not np.array_equal(decoded, numbers):
        raise VideoReadError(f"{path}: has frames up to {decoded.max() if len(decoded) else -1}, "
                             f"frames {numbers.tolist()} were asked for")
    return frames


def _decode(path: Path, choose: Chooser, backends: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes)")
    failures = []
    for name in backends:
        try:
            frames, indices = BACKENDS[name](path, choose)
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
