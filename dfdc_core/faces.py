"""Faces: batched MTCNN detection on a downscaled copy, IoU person tracks, the one crop and the one model input.

Every path (the kernel, extraction, training, explain, the benchmarks) goes decoded frames → `person_tracks` →
`face_crops` (`crop_face` per detection) → `model_input` (`model_images`: `isotropic_resize`, training's augmentation,
`pad_square`; then `normalise`). The kernel calls the two halves itself, to resize once for all models of one input
size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch

from dfdc_core.mtcnn import detect_faces


@dataclass(frozen=True)
class Detection:
    """One face in one sampled frame; `box` is (x1, y1, x2, y2) and `landmarks` MTCNN's five points (eyes,
    nose, mouth corners) as (x, y) pairs, both in full-resolution pixels."""

    frame: int
    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def size(self) -> float:
        """Geometric mean of the box's width and height, in pixels."""
        return math.sqrt(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@dataclass
class Track:
    """A person: detections linked across frames by box IoU."""

    person: int
    detections: list[Detection] = field(default_factory=list)

    @property
    def last_box(self) -> tuple[float, float, float, float]:
        return self.detections[-1].box

    @property
    def face_size(self) -> float:
        """Median face size over the track's detections (`Detection.size`)."""
        return float(np.median([d.size for d in self.detections]))


def detection_scale(height: int, width: int, detect_long_side: int) -> float:
    """Downscale factor for detection: the long side becomes `detect_long_side` (never upscale)."""
    return min(1.0, detect_long_side / max(height, width))


def brighten_dark(frames: np.ndarray, dark_below: float = 60.0, target: float = 110.0) -> np.ndarray:
    """Gamma-lift frames whose mean intensity is under `dark_below` so their mean becomes about `target`.

    Used on the detection copy only: MTCNN misses faces in very dark DFDC clips, crops keep the original pixels.
    """
    mean = float(frames.mean())
    if mean >= dark_below:
        return frames
    gamma = np.log(target / 255.0) / np.log(max(mean, 1.0) / 255.0)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
    return lut[frames]


def resize_frames(frames: np.ndarray, scale: float) -> np.ndarray:
    """Resize a batch of frames `(n, H, W, 3)` by `scale` with area interpolation."""
    if scale >= 1.0:
        return frames
    height, width = frames.shape[1:3]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])


class FaceDetector:
    """facenet-pytorch MTCNN run in batches over the frames of one video."""

    def __init__(self, device: str = "cpu", detect_long_side: int = 480, min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.7, 0.8, 0.9), batch_size: int = 32):
        from facenet_pytorch import MTCNN

        mtcnn = MTCNN(device=device).to(memory_format=torch.channels_last).eval()
        self.nets = (mtcnn.pnet, mtcnn.rnet, mtcnn.onet)
        self.device = torch.device(device)
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.detect_long_side = detect_long_side
        self.batch_size = batch_size

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        """Faces per frame for RGB uint8 frames `(n, H, W, 3)`, boxes in full-resolution pixels."""
        height, width = frames.shape[1:3]
        scale = detection_scale(height, width, self.detect_long_side)
        small = brighten_dark(resize_frames(frames, scale))
        per_frame: list[list[Detection]] = []
        for start in range(0, len(small), self.batch_size):
            batch = small[start:start + self.batch_size]
            found = detect_faces(batch, self.nets, self.min_face_size, self.thresholds, self.device)
            for offset, faces in enumerate(found):
                per_frame.append(_to_detections(start + offset, *faces, scale, width, height))
        return per_frame


def _to_detections(frame: int, boxes: np.ndarray, probs: np.ndarray, landmarks: np.ndarray, scale: float,
                   width: int, height: int) -> list[Detection]:
    detections = []
    for box, prob, points in zip(boxes.astype(np.float64), probs.astype(np.float64), landmarks.astype(np.float64)):
        x1, y1, x2, y2 = (box / scale).tolist()
        x1, y1 = max(0.0, x1), max(0.0, y1)
        x2, y2 = min(float(width), x2), min(float(height), y2)
        if x2 > x1 and y2 > y1:
            pairs = tuple((float(x), float(y)) for x, y in points / scale)
            detections.append(Detection(frame, (x1, y1, x2, y2), float(prob), pairs))
    return detections


def filter_detections(per_frame: list[list[Detection]], min_score: float,
                      min_size: float) -> list[list[Detection]]:
    """Drop low-confidence detections and faces whose shorter side is under `min_size` pixels."""
    def keep(d: Detection) -> bool:
        return d.score >= min_score and min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= min_size

    return [[d for d in detections if keep(d)] for detections in per_frame]


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def center_shift(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Distance between box centres in units of the boxes' mean side length."""
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    side = (a[2] - a[0] + a[3] - a[1] + b[2] - b[0] + b[3] - b[1]) / 4
    return float(np.hypot(dx, dy) / max(side, 1e-6))


def link_tracks(per_frame: list[list[Detection]], iou_threshold: float = 0.2, max_shift: float = 1.0,
                min_track_share: float = 0.3, min_size_ratio: float = 0.0) -> list[Track]:
    """Link detections into person tracks, greedily matching each track's latest box, nearest first.

    A detection joins a track if their boxes overlap by `iou_threshold` or their centres are within
    `max_shift` face sizes (sampled frames are ~0.3 s apart, a walking face moves). Tracks seen in fewer
    than `min_track_share` of the frames of the longest are dropped, then tracks whose faces are smaller than
    `min_size_ratio` of the largest kept track's (a face in a picture on the wall, a passer-by far behind);
    persons are numbered 0.. by length.
    """
    tracks: list[Track] = []
    for detections in per_frame:
        pairs = sorted((center_shift(t.last_box, d.box), ti, di) for ti, t in enumerate(tracks)
                       for di, d in enumerate(detections))
        used_tracks, used_detections = set(), set()
        for shift, ti, di in pairs:
            if ti in used_tracks or di in used_detections:
                continue
            if shift > max_shift and box_iou(tracks[ti].last_box, detections[di].box) < iou_threshold:
                continue
            tracks[ti].detections.append(detections[di])
            used_tracks.add(ti)
            used_detections.add(di)
        for di, detection in enumerate(detections):
            if di not in used_detections:
                tracks.append(Track(person=-1, detections=[detection]))
    if not tracks:
        return []
    longest = max(len(t.detections) for t in tracks)
    kept = [t for t in tracks if len(t.detections) >= min_track_share * longest]
    largest = max(t.face_size for t in kept)
    kept = sorted((t for t in kept if t.face_size >= min_size_ratio * largest), key=lambda t: -len(t.detections))
    for person, track in enumerate(kept):
        track.person = person
    return kept


def detector_from_config(config: dict, device: str = "cpu") -> FaceDetector:
    """The face detector with the kernel config's settings (`kernel/default_config.json`)."""
    return FaceDetector(device=device, detect_long_side=config["detect_long_side"],
                        min_face_size=config["mtcnn_min_face_size"], thresholds=tuple(config["mtcnn_thresholds"]),
                        batch_size=config["detect_batch_size"])


def person_tracks(detector: FaceDetector, frames: np.ndarray, config: dict) -> list[Track]:
    """Kept person tracks of decoded frames, largest first, at most `max_persons`: the kernel's and training's."""
    per_frame = filter_detections(detector.detect(frames), config["min_face_score"], config["min_face_px"])
    tracks = link_tracks(per_frame, config["track_iou"], config["track_max_shift"], config["min_track_share"],
                         config["min_track_size_ratio"])
    return tracks[:config["max_persons"]]


def crop_window(box: tuple[float, float, float, float], margin: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel bounds of `box` widened by `margin` of its size on each side; they may
    lie outside the frame."""
    x1, y1, x2, y2 = box
    pad_x, pad_y = (x2 - x1) * margin, (y2 - y1) * margin
    return math.floor(x1 - pad_x), math.floor(y1 - pad_y), round(x2 + pad_x), round(y2 + pad_y)


def crop_face(frame: np.ndarray, box: tuple[float, float, float, float], margin: float = 0.3) -> np.ndarray:
    """Crop `box` from `frame` widened by `margin` of the box size on each side.

    Where the widened box runs past the frame edge, the crop is zero-padded, so every crop frames its face the
    same way (a face at the border is not zoomed in on).
    """
    left, top, right, bottom = crop_window(box, margin)
    height, width = frame.shape[:2]
    inside = frame[max(0, top):max(0, min(height, bottom)), max(0, left):max(0, min(width, right))]  # no wrap-around
    if (left, top, right, bottom) == (max(0, left), max(0, top), min(width, right), min(height, bottom)):
        return inside
    crop = np.zeros((max(1, bottom - top), max(1, right - left)) + frame.shape[2:], dtype=frame.dtype)
    y0, x0 = max(0, -top), max(0, -left)
    crop[y0:y0 + inside.shape[0], x0:x0 + inside.shape[1]] = inside
    return crop


def isotropic_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the long side is `size`, aspect kept (area filter down, cubic up)."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_w, new_h) == (width, height):
        return image
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def pad_square(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad an image whose long side is `size` to `size` x `size`, centred."""
    height, width = image.shape[:2]
    out = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    top, left = (size - height) // 2, (size - width) // 2
    out[top:top + height, left:left + width] = image
    return out


def face_crops(frames: np.ndarray, tracks: list[Track], margin: float) -> list[np.ndarray]:
    """One crop per detection of `tracks`, in track order: the kernel's crops, which extraction stores."""
    return [crop_face(frames[detection.frame], detection.box, margin) for track in tracks
            for detection in track.detections]


def model_images(crops: list[np.ndarray], size: int,
                 augment: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Crops as the model sees them, uint8 `(n, size, size, 3)`: `isotropic_resize`, then `augment` (training
    only), then `pad_square`."""
    resized = (isotropic_resize(crop, size) for crop in crops)
    return np.stack([pad_square(augment(image) if augment else image, size) for image in resized])


def model_input(crops: list[np.ndarray], size: int, mean: tuple[float, float, float],
                std: tuple[float, float, float],
                augment: Callable[[np.ndarray], np.ndarray] | None = None) -> torch.Tensor:
    """Crops → the model's float tensor `(n, 3, size, size)`: `model_images`, then `normalise`."""
    return normalise(model_images(crops, size, augment), mean, std)


def normalise(crops: np.ndarray, mean: tuple[float, float, float],
              std: tuple[float, float, float]) -> torch.Tensor:
    """uint8 RGB crops `(n, H, W, 3)` → float tensor `(n, 3, H, W)` scaled to [0, 1] and standardised."""
    tensor = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)
