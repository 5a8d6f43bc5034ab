"""Synthetic media for the self-test, the test suite and the demo: frames with a face or none, video files of any
codec written with PyAV, and tiny random models with their manifest. Test support, not kernel code: the Kaggle
bundle's wheel leaves it out (with `kernel.selftest`)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

RANDOM_MODELS = (("test_efficientnet", 64), ("test_resnet", 96))  # tiny timm models and their input sizes


def picture(height: int, width: int, step: int, face: bool, seed: int = 0) -> np.ndarray:
    """One RGB frame: a moving colour gradient, with the scikit-image astronaut's face if `face`.

    Drawn at most 640 px on its long side, then resized: an 8192 x 8192 frame costs no more to draw.
    """
    scale = min(1.0, 640 / max(height, width))
    small_h, small_w = max(2, round(height * scale)), max(2, round(width * scale))
    base = np.random.default_rng(seed).uniform(0, 255, 3)
    y, x = np.mgrid[0:small_h, 0:small_w]
    image = np.stack([(base[c] + x * (c + 1) + y + 3 * step) % 256 for c in range(3)], -1).astype(np.uint8)
    if face:
        from skimage.data import astronaut

        side = int(0.9 * min(small_h, small_w))
        portrait = cv2.resize(astronaut(), (side, side), interpolation=cv2.INTER_AREA)
        top, left = (small_h - side) // 2, (small_w - side) // 2 + step % 5
        left = min(left, small_w - side)
        image[top:top + side, left:left + side] = portrait
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) if scale < 1 else image


def frames_of(count: int, height: int, width: int, face: bool, seed: int = 0) -> Iterator[np.ndarray]:
    """`count` frames of `picture`, made one at a time."""
    return (picture(height, width, step, face, seed) for step in range(count))


def write_video(path: Path, frames: Iterable[np.ndarray], fps: int = 30, codec: str = "libx264",
                pix_fmt: str = "yuv420p", pts_ms: list[int] | None = None, faststart: bool = False) -> Path:
    """Encode RGB uint8 frames (even height and width for yuv420p) with PyAV; OpenCV cannot write H.264 here.

    `pts_ms`: presentation times in ms, for a variable frame rate; `faststart` puts the index (moov) before the data,
    so a truncated file still opens.
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.pix_fmt = pix_fmt
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for number, frame in enumerate(frames):
            if number == 0:
                stream.height, stream.width = frame.shape[:2]
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts_ms is not None:
                video_frame.pts, video_frame.time_base = pts_ms[number], Fraction(1, 1000)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def write_audio_only(path: Path) -> Path:
    """An MP4 with one AAC stream of silence and no video."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "stereo"
        for number in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 44100, number * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def random_manifest(folder: Path, models: tuple[tuple[str, int], ...] = RANDOM_MODELS, seed: int = 0) -> Path:
    """Randomly initialised tiny timm models saved fp16 with a `weights_manifest.json` beside them."""
    import torch

    from dfdc_core.manifest import manifest_entry, write_manifest
    from dfdc_core.models import create_classifier, save_fp16_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for arch, size in models:
        torch.manual_seed(seed)
        weights = folder / f"{arch}.pth"
        save_fp16_state_dict(create_classifier(arch), weights)
        entries.append(manifest_entry(arch, arch, weights, folder, size))
    path = folder / "weights_manifest.json"
    write_manifest(path, entries)
    return path
