"""Frame sampling: N evenly spaced RGB frames per video; PyAV reference frames first, then decord, then OpenCV.

PyAV skips the non-reference frames (about half of an x264 video's) and takes the nearest decoded frame to each
evenly spaced number: 1.5x faster than decord here, which is what puts the kernel's decode+detect at 3x the
1st-place pipeline on 2 cores (`bench/kernel_speed.py`). decord and OpenCV `grab`/`retrieve` decode exact frames.

Every backend opens local files only (an absolute path, never a URL) and, given `max_side`, shrinks each frame
whose long side is larger as it is decoded, so an 8192 x 8192 clip never holds its frames at full size.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
Chooser = Callable[[int], np.ndarray]  # a video's frame count → the frame numbers to decode


class VideoReadError(RuntimeError):
    """A video (or image) could not be opened or decoded by any backend."""


class MissingVideoError(VideoReadError):
    """The video file does not exist: a fault of the environment, not of the video."""


def local_file(path: Path) -> str:
    """`path` as the absolute name of an existing regular file, for a decode backend.

    FFmpeg (under PyAV, decord and OpenCV) opens names such as `http://...` or `tcp:...` as network streams; an
    absolute path always goes through its file protocol, so no backend ever opens anything but a local file.
    """
    if not path.is_file():
        raise VideoReadError(f"{path}: not a local file; the kernel's decoders open local files only")
    return os.path.abspath(path)


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """`(width, height)` shrunk so the long side is `max_side` (aspect kept), or None when the frame fits."""
    if not max_side or max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_frame(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    """One `(H, W, 3)` frame, shrunk with area interpolation when its long side exceeds `max_side`."""
    size = fitted_size(frame.shape[1], frame.shape[0], max_side)
    return frame if size is None else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def evenly_spaced_indices(frame_count: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames spread evenly over `frame_count` (fewer if the video is shorter)."""
    if frame_count <= 0 or num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, frame_count - 1, num_frames).round().astype(np.int64))


def coded_size(path: Path) -> tuple[int, int]:
    """`(width, height)` of the first video stream, read from the container's header (nothing decoded);
    `(0, 0)` when PyAV cannot open it."""
    import av

    try:
        with av.open(local_file(path)) as container:
            context = container.streams.video[0].codec_context
            return context.width, context.height
    except (av.error.FFmpegError, IndexError) as error:
        log.debug("%s: no frame size from the header (%s); frames are shrunk after decoding", path.name, error)
        return 0, 0


def _read_decord(path: Path, choose: Chooser, max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    import decord

    size = fitted_size(*coded_size(path), max_side) if max_side else None
    scaled = {} if size is None else {"width": size[0], "height": size[1]}  # decord scales before its RGB copy
    reader = decord.VideoReader(local_file(path), ctx=decord.cpu(0), num_threads=1, **scaled)
    indices = choose(len(reader))
    if len(indices) == 0:
        raise VideoReadError(f"{path}: decord found no frames")
    # one frame at a time (the reader keeps its place, so this decodes what one batch would); `fit_frame` shrinks
    # any frame the decoder did not (its size unknown before opening)
    frames = [fit_frame(reader.get_batch([index]).asnumpy()[0], max_side) for index in indices.tolist()]
    return np.stack(frames), indices


def _read_opencv(path: Path, choose: Chooser, max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    capture = cv2.VideoCapture(local_file(path), cv2.CAP_FFMPEG)  # FFmpeg: '%d' in a name is no image sequence
    try:
        if not capture.isOpened():
            raise VideoReadError(f"{path}: OpenCV cannot open it")
        frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(choose(frame_count).tolist())
        frames, indices = [], []
        for index in range(frame_count):
            if not capture.grab():
                break
            if index in wanted and (frame := _retrieve_rgb(capture, max_side)) is not None:
                frames.append(frame)
                indices.append(index)
    finally:
        capture.release()
    if not frames:
        raise VideoReadError(f"{path}: OpenCV decoded no frames")
    return np.stack(frames), np.asarray(indices, dtype=np.int64)


def _retrieve_rgb(capture: cv2.VideoCapture, max_side: int | None) -> np.ndarray | None:
    """The grabbed frame as RGB, shrunk to `max_side`; the full-size frame is freed on return."""
    ok, frame = capture.retrieve()
    return cv2.cvtColor(fit_frame(frame, max_side), cv2.COLOR_BGR2RGB) if ok and frame is not None else None


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


def _read_pyav_reference(path: Path, choose: Chooser, max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode reference frames only (`skip_frame = NONREF`: the non-reference B-frames, about half of an
    x264 video, are never decoded) and take the decoded frame nearest to each evenly spaced frame number.

    Frame numbers are exact (display order of the packets' timestamps); each sampled frame is at most a
    non-reference run (1-3 frames with x264 defaults) away from its evenly spaced number.
    """
    import av

    with av.open(local_file(path)) as container:
        if not container.streams.video:
            raise VideoReadError(f"{path}: no video stream (streams: {[s.type for s in container.streams]})")
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
                fitted = fitted_size(frame.width, frame.height, max_side)
                resize = {} if fitted is None else {"width": fitted[0], "height": fitted[1], "interpolation": "AREA"}
                chosen[number] = frame.to_ndarray(format="rgb24", **resize)  # shrunk by swscale: no full-size RGB

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


def read_frames(path: str | Path, num_frames: int = 32, backends: tuple[str, ...] = tuple(BACKENDS),
                max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode `num_frames` evenly spaced frames of `path`, each shrunk to a long side of at most `max_side`.

    Returns `(frames, indices)`: frames as RGB uint8 `(n, H, W, 3)` and their frame numbers. Each backend
    is tried in turn; a `VideoReadError` naming the file and every backend's failure is raised if none works
    (`MissingVideoError` if there is no such file).
    """
    return _decode(Path(path), partial(evenly_spaced_indices, num_frames=num_frames), backends, max_side)


def read_frames_at(path: str | Path, numbers: np.ndarray, backends: tuple[str, ...] = EXACT_BACKENDS,
                   max_side: int | None = None) -> np.ndarray:
    """The frames numbered `numbers` of `path`, exactly (only the exact backends among `backends` are tried);
    a `VideoReadError` if the video has fewer frames or none of them decodes it."""
    numbers = np.asarray(numbers, dtype=np.int64)
    exact = tuple(name for name in backends if name in EXACT_BACKENDS) or EXACT_BACKENDS
    frames, decoded = _decode(Path(path), lambda count: numbers[numbers < count], exact, max_side)
    if not np.array_equal(decoded, numbers):
        raise VideoReadError(f"{path}: has frames up to {decoded.max() if len(decoded) else -1}, "
                             f"frames {numbers.tolist()} were asked for")
    return frames


def _decode(path: Path, choose: Chooser, backends: tuple[str, ...],
            max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The frames `choose` picks, by the first of `backends` that decodes them."""
    if not path.exists():
        raise MissingVideoError(f"{path}: no such file")
    if not path.is_file():
        raise VideoReadError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes)")
    failures = []
    for name in backends:
        try:
            frames, indices = BACKENDS[name](path, choose, max_side)
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
    path = Path(path)
    if not path.exists():
        raise MissingVideoError(f"{path}: no such file")
    image = cv2.imread(local_file(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoReadError(f"{path}: OpenCV cannot read this image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)[None]


def pad_still(frames: np.ndarray, share: float) -> np.ndarray:
    """A still `(1, H, W, 3)` with `share` of its long side added on every side by repeating its edge pixels.

    A tight face photo (the face fills the image) has no room for the crop's margin: without this the margin is
    black padding, which no face in a video frame shows. Detected on the padded copy, its crop's margin holds
    the photo's own edge colours instead. A face away from the edges is cut exactly as without it.
    """
    pad = round(share * max(frames.shape[1:3]))
    if pad == 0:
        return frames
    return cv2.copyMakeBorder(frames[0], pad, pad, pad, pad, cv2.BORDER_REPLICATE)[None]


def read_still(path: str | Path, pad_share: float, max_side: int | None = None) -> np.ndarray:
    """An image as the one frame the kernel and training cut faces from: shrunk to `max_side`, then
    `pad_still`."""
    image = read_image(path)
    return pad_still(fit_frame(image[0], max_side)[None], pad_share)


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def decode_video(path: Path, config: dict[str, Any], frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's frame sample of one video, `(frames, frame numbers)`: the config's count (or `frames`), decode
    backends and largest frame side. An image (`IMAGE_SUFFIXES`) is a one-frame video: `read_still`."""
    if is_image(path):
        return read_still(path, config["still_pad"], config["max_frame_side"]), np.zeros(1, dtype=np.int64)
    return read_frames(path, frames or config["frames"], tuple(config["decode_backends"]), config["max_frame_side"])
