"""Small data the suite makes itself (with `dfdc_core.synthetic`: clips, tiny random models and their manifest)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from dfdc_core.synthetic import RANDOM_MODELS as TINY_MODELS  # noqa: F401  (the tests import it from here)
from dfdc_core.synthetic import frames_of, write_video
from dfdc_core.synthetic import random_manifest as tiny_manifest

DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"


def faceless_frames(n: int = 40, height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """Smooth moving colour gradients: decodable video with no face in it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, 3)
    return np.stack([np.stack([(base[c] + x * (c + 1) + y + 3 * t) % 256 for c in range(3)], -1)
                     for t in range(n)]).astype(np.uint8)
def lfw_face(index: int, size: int) -> np.ndarray:
    """Face `index` of scikit-image's LFW subset, grey, as an RGB uint8 `size` x `size` image."""
    import cv2
    import skimage.data

    grey = cv2.resize((skimage.data.lfw_subset()[index] * 255).astype(np.uint8), (size, size),
                      interpolation=cv2.INTER_CUBIC)
    return np.repeat(grey[..., None], 3, axis=-1)


def faces_clip(n: int = 8, small_face: bool = False, swap_right: bool = False, seed: int = 0) -> np.ndarray:
    """A 480x270 clip of two 180 px LFW faces side by side (a picture-sized third face with `small_face`),
    drifting a few pixels per frame; `swap_right` re-renders the right face blurred and colour-shifted (a fake
    of the same clip: the left face and the background stay identical)."""
    import cv2

    rng = np.random.default_rng(seed)
    canvas = np.full((270, 480, 3), 90, np.uint8) + rng.integers(0, 20, (270, 480, 1), dtype=np.uint8)
    canvas[45:225, 20:200] = lfw_face(0, 180)
    right = lfw_face(10, 180)
    if swap_right:
        right = np.clip(cv2.GaussianBlur(right, (0, 0), 2.5).astype(np.float32) * (1.15, 0.9, 0.85), 0, 255)
    canvas[45:225, 280:460] = right.astype(np.uint8)
    if small_face:
        canvas[10:70, 215:275] = lfw_face(20, 60)
    return np.stack([np.roll(canvas, shift=2 * t, axis=1) for t in range(n)])


def grouped_manifest(folder: Path, groups: dict[str, int], stacker: dict | None = None, **extra) -> Path:
    """A manifest of tiny random models, `groups[g]` fold models `g_0, g_1, ...` per group (listed in that order),
    with `stacker` written beside it and named, and `extra` top-level keys."""
    import json

    from dfdc_core.manifest import manifest_entry

    source = tiny_manifest(folder / "source", models=(("test_efficientnet", 64),))
    weights = source.parent / json.loads(source.read_text())["models"][0]["file"]
    entries = []
    for group, count in groups.items():
        for fold in range(count):
            copy = folder / f"{group}_{fold}.pth"
            copy.write_bytes(weights.read_bytes())
            entries.append(manifest_entry(f"{group}_{fold}", "test_efficientnet", copy, folder, 64, group=group))
    if stacker is not None:
        (folder / "stacker.json").write_text(json.dumps(stacker))
    path = folder / "weights_manifest.json"
    path.write_text(json.dumps({"models": entries, "stacker": "stacker.json" if stacker else None, **extra}))
    return path


def face_videos(folder: Path, count: int, frames: int = 4) -> Path:
    """`count` small H.264 clips of the scikit-image astronaut's face, `face_0.mp4` ..., in `folder`."""
    for number in range(count):
        write_video(folder / f"face_{number}.mp4", frames_of(frames, 180, 320, face=True))
    return folder


def registry_unreachable(folder: Path) -> str | None:
    """Why the package registry cannot be used here (None if a small wheel downloads)."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest",
               str(folder), "facenet-pytorch==2.6.0"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "package registry unreachable: pip download facenet-pytorch==2.6.0 took over 300 s"
    if result.returncode != 0:
        return f"package registry unreachable: pip download facenet-pytorch==2.6.0 failed: {result.stderr[-500:]}"
    return None


def pipe_that_unblocks(path: Path, seconds: float = 5.0) -> Path:
    """A named pipe at `path` whose writing end is opened and closed after `seconds`: code that opens it to read waits
    that long at most (then reads nothing) instead of forever, so a test of "never blocks on a pipe" fails, never
    hangs."""
    os.mkfifo(path)

    def release() -> None:
        time.sleep(seconds)
        try:
            handle = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO when no reader waits: nothing to release
        except OSError:
            return
        os.close(handle)
    threading.Thread(target=release, daemon=True).start()
    return path
