"""Small data the suite makes itself: synthetic H.264 clips, tiny random models and their manifest."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kernel.selftest import RANDOM_MODELS as TINY_MODELS
from kernel.selftest import random_manifest as tiny_manifest  # noqa: F401  (tiny random models + manifest)

DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"


def write_h264(path: Path, frames: np.ndarray, fps: int = 30, faststart: bool = False) -> Path:
    """Encode RGB uint8 frames `(n, H, W, 3)` (even H and W) to an H.264 mp4 with PyAV.

    `faststart` puts the index (moov) before the data, so a truncated file still opens.
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def faceless_frames(n: int = 40, height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """Smooth moving colour gradients: decodable video with no face in it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, 3)
    return np.stack([np.stack([(base[c] + x * (c + 1) + y + 3 * t) % 256 for c in range(3)], -1)
                     for t in range(n)]).astype(np.uint8)
