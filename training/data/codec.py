"""H.264 compression as a training augmentation: a face crop coded as one intra frame by libx264 (PyAV) and decoded.

Videos reach the kernel H.264-coded (FaceForensics++ c23 / c40, DFDC), whose artefacts differ from JPEG's: 4x4 and
8x8 integer transforms after intra prediction, smoothed by the deblocking filter. `H264Compression` draws a constant
quantiser (x264's `qp`, 0 to 51: higher is stronger) per image. One encoder and decoder pair is kept per (size, qp)
and process, every frame an IDR frame with no look-ahead, so an image's output depends on it and its qp alone.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import av
import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

from albumentations import ImageOnlyTransform

MACROBLOCK = 16
CODEC_CACHE_SIZE = 32  # encoder / decoder pairs kept per process (each a few MB at face-crop sizes)
_codecs: OrderedDict[tuple[int, int], tuple[av.CodecContext, av.CodecContext]] = OrderedDict()


def _codec_pair(side: int, qp: int) -> tuple[av.CodecContext, av.CodecContext]:
    """The cached intra-only libx264 encoder at (`side` x `side`, `qp`) and an H.264 decoder beside it."""
    key = (side, qp)
    if key in _codecs:
        _codecs.move_to_end(key)
        return _codecs[key]
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width = encoder.height = side
    encoder.pix_fmt = "yuv420p"
    encoder.thread_count = 1
    # veryfast keeps the deblocking filter (ultrafast drops it); keyint 1: every frame coded on its own
    encoder.options = {"qp": str(qp), "preset": "veryfast", "tune": "zerolatency", "x264-params": "keyint=1:threads=1"}
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1
    _codecs[key] = (encoder, decoder)
    if len(_codecs) > CODEC_CACHE_SIZE:
        _codecs.popitem(last=False)
    return encoder, decoder


def h264_roundtrip(image: np.ndarray, qp: int) -> np.ndarray:
    """A uint8 RGB image coded as one H.264 intra frame at quantiser `qp` and decoded, at its own size.

    The image is padded by edge replication (bottom and right) to a square of whole macroblocks, so one encoder
    serves every crop of a model's input size.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"h264 compression takes uint8 RGB images, got {image.dtype} of shape {image.shape}")
    if not 0 <= qp <= 51:
        raise ValueError(f"h264 qp {qp} is outside x264's 0 to 51")
    height, width = image.shape[:2]
    side = -(-max(height, width) // MACROBLOCK) * MACROBLOCK
    square = np.pad(image, ((0, side - height), (0, side - width), (0, 0)), mode="edge")
    encoder, decoder = _codec_pair(side, qp)
    frame = av.VideoFrame.from_ndarray(cv2.cvtColor(square, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    decoded = [out for packet in encoder.encode(frame) for out in decoder.decode(packet)]
    if len(decoded) != 1:
        raise RuntimeError(f"h264 round trip gave {len(decoded)} frames for one; libx264 options changed?")
    rgb = cv2.cvtColor(decoded[0].to_ndarray(format="yuv420p"), cv2.COLOR_YUV2RGB_I420)
    return np.ascontiguousarray(rgb[:height, :width])


class H264Compression(ImageOnlyTransform):
    """Albumentations transform: `h264_roundtrip` at a quantiser drawn uniformly from `qp_range` (integers)."""

    def __init__(self, qp_range: tuple[int, int] = (24, 40), p: float = 0.5):
        super().__init__(p=p)
        low, high = (int(value) for value in qp_range)
        if not 0 <= low <= high <= 51:
            raise ValueError(f"augment.h264.qp {list(qp_range)}: want 0 <= low <= high <= 51")
        self.qp_range = (low, high)

    def get_params(self) -> dict[str, Any]:
        return {"qp": self.py_random.randint(*self.qp_range)}

    def apply(self, img: np.ndarray, qp: int, **params: Any) -> np.ndarray:
        return h264_roundtrip(img, qp)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("qp_range",)
