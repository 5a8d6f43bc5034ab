"""A small DFDC-format dataset made from face photos that ship with scikit-image, for the offline demo.

Identities are scikit-image's `astronaut` and `camera` photos and faces of its LFW subset, each composed on
a background. A REAL video is a short clip of the photo with smooth camera motion (zoom, pan, roll) and
sensor noise; each FAKE re-renders the face region at low resolution, shifts its colour and blends it back
with a feathered elliptical mask (a simulated face swap), then films it with the same kind of motion.
Fakes link to their real clip through `original`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from dfdc_core.faces import detector_from_config, filter_detections
from dfdc_core.io import write_atomic
from dfdc_core.synthetic import write_video
from kernel.config import load_config

FRAME_SIZE = (320, 240)  # width, height


@dataclass(frozen=True)
class DemoSpec:
    identities: int = 20
    fakes_per_real: int = 2
    frames: int = 24
    fps: int = 12
    seed: int = 0


def background(rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour gradient with mild texture, `FRAME_SIZE`."""
    width, height = FRAME_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    corners = rng.uniform(40, 200, (2, 3))
    ramp = (x / width)[..., None]
    image = corners[0] * (1 - ramp) + corners[1] * ramp + rng.normal(0, 6, (height, width, 1))
    return np.clip(image, 0, 255).astype(np.uint8)


def portraits(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` RGB frames, each one identity on its own background."""
    import skimage.data

    photos = [skimage.data.astronaut(), np.repeat(skimage.data.camera()[..., None], 3, axis=-1)]
    lfw = skimage.data.lfw_subset()[:100]  # the first 100 images of the subset are faces
    width, height = FRAME_SIZE
    frames = []
    for index in range(count):
        canvas = background(rng)
        if index < len(photos):
            photo = cv2.resize(photos[index], (height, height), interpolation=cv2.INTER_AREA)
            left = int(rng.integers(0, width - height + 1))
            canvas[:, left:left + height] = photo
        else:
            face = cv2.resize((lfw[(index - len(photos)) * 5 % 100] * 255).astype(np.uint8), (140, 140),
                              interpolation=cv2.INTER_CUBIC)
            tint = rng.uniform(0.75, 1.15, 3)
            left, top = int(rng.integers(40, width - 180)), int(rng.integers(20, height - 160))
            canvas[top:top + 140, left:left + 140] = np.clip(face[..., None] * tint, 0, 255).astype(np.uint8)
        frames.append(canvas)
    return frames


def simulate_swap(image: np.ndarray, box: tuple[float, float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Re-render the face in `box` at low resolution, colour-shift it and blend it back with a soft ellipse."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    face = image[y1:y2, x1:x2].astype(np.float32)
    factor = rng.uniform(3.0, 5.0)
    small = cv2.resize(face, (max(2, int((x2 - x1) / factor)), max(2, int((y2 - y1) / factor))),
                       interpolation=cv2.INTER_AREA)
    rendered = cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    rendered = rendered * rng.uniform(0.9, 1.1, 3) + rng.uniform(-10, 10)
    mask = np.zeros(image.shape[:2], np.float32)
    center = ((x1 + x2) // 2, (y1 + y2) // 2)
    cv2.ellipse(mask, center, (int((x2 - x1) * 0.42), int((y2 - y1) * 0.48)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=max(2.0, (x2 - x1) * 0.06))[..., None]
    swapped = image.astype(np.float32)
    swapped[y1:y2, x1:x2] = rendered
    return np.clip(mask * swapped + (1 - mask) * image, 0, 255).astype(np.uint8)


def film(image: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A clip of `image` under smooth camera motion (zoom, pan, roll) with sensor noise."""
    width, height = FRAME_SIZE
    phase = rng.uniform(0, 2 * np.pi, 4)
    amplitude = rng.uniform([0.03, 6, 4, 1.0], [0.1, 16, 10, 4.0])
    clip = []
    for t in np.linspace(0, 1, frames):
        wave = np.sin(2 * np.pi * t + phase)
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), amplitude[3] * wave[3], 1.05 + amplitude[0] * wave[0])
        matrix[:, 2] += (amplitude[1] * wave[1], amplitude[2] * wave[2])
        frame = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
        clip.append(np.clip(frame + rng.normal(0, 2.0, frame.shape), 0, 255).astype(np.uint8))
    return np.stack(clip)


def make_dataset(root: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write `spec.identities` REAL clips and their FAKEs as mp4s plus a DFDC `metadata.json` in `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    config = load_config()
    detector = detector_from_config(config)
    metadata: dict[str, dict] = {}
    for index, image in enumerate(tqdm(portraits(spec.identities, rng), desc="demo videos", unit="identity")):
        faces = filter_detections(detector.detect(image[None]), config["min_face_score"], config["min_face_px"])[0]
        if not faces:
            raise RuntimeError(f"demo identity {index}: the detector finds no face in its portrait")
        real = f"real_{index:03d}.mp4"
        write_video(root / real, film(image, spec.frames, rng), spec.fps)
        metadata[real] = {"label": "REAL", "original": None, "split": "train"}
        for fake_index in range(spec.fakes_per_real):
            fake = f"fake_{index:03d}_{fake_index}.mp4"
            write_video(root / fake, film(simulate_swap(image, faces[0].box, rng), spec.frames, rng), spec.fps)
            metadata[fake] = {"label": "FAKE", "original": real, "split": "train"}
    write_atomic(root / "metadata.json", json.dumps(metadata, indent=1))
    return root
