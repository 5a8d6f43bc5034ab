"""Self-blended images (Shiohara & Yamasaki, CVPR 2022): a FAKE made from one REAL face crop.

A transformed copy of the face (colour, sharpness or resolution, a small shift and scale) is blended back into
the untouched crop through a mask built from the face's five MTCNN landmarks, deformed and blurred. The result
carries the artefacts every face swap leaves (a blending boundary, colour and sharpness mismatch) without any
identity change, so a detector trained on it cannot lean on who is in the video; a folder of real faces alone
becomes a training set. Only pixels under the mask change (the mask is zero outside the face box).
"""
from __future__ import annotations

import cv2
import numpy as np

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # the paper's: mostly full blends, some partial


def parse_landmarks(text: str) -> np.ndarray | None:
    """'x1 y1 ... x5 y5' (an index.csv `landmarks` cell) → `(5, 2)` float array; None for an empty cell."""
    values = [float(v) for v in str(text).split()]
    if len(values) != 10:
        return None
    return np.asarray(values, dtype=np.float32).reshape(5, 2)


def face_box(shape: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the detector's face box inside a crop cut with `margin` (`dfdc_core.faces.crop_face`)."""
    height, width = shape
    inner_w, inner_h = width / (1 + 2 * margin), height / (1 + 2 * margin)
    x1, y1 = round((width - inner_w) / 2), round((height - inner_h) / 2)
    return x1, y1, round(x1 + inner_w), round(y1 + inner_h)


def box_region(shape: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    """The (rows, columns) slices of `box` (x1, y1, x2, y2) inside an image of `shape` (H, W)."""
    height, width = shape
    return slice(max(0, box[1]), min(height, box[3])), slice(max(0, box[0]), min(width, box[2]))


def face_polygon(landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A face-region polygon from the eyes, nose and mouth corners: brows above the eyes, chin below the mouth,
    cheeks beside them; each point jittered so no two masks are alike."""
    left_eye, right_eye, nose, mouth_left, mouth_right = landmarks
    across = right_eye - left_eye
    eye_distance = max(float(np.linalg.norm(across)), 1.0)
    side = across / eye_distance
    down = np.array([-side[1], side[0]], dtype=np.float32)
    up_scale, out_scale, chin_scale = rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.45), rng.uniform(0.4, 0.7)
    points = [left_eye - down * eye_distance * up_scale - side * eye_distance * out_scale,
              right_eye - down * eye_distance * up_scale + side * eye_distance * out_scale,
              right_eye + side * eye_distance * out_scale * 1.1,
              mouth_right + side * eye_distance * out_scale * 0.6,
              mouth_right + down * eye_distance * chin_scale,
              mouth_left + down * eye_distance * chin_scale,
              mouth_left - side * eye_distance * out_scale * 0.6,
              left_eye - side * eye_distance * out_scale * 1.1, nose]
    jitter = rng.normal(0.0, 0.06 * eye_distance, (len(points), 2))
    return cv2.convexHull((np.asarray(points) + jitter).astype(np.float32)).reshape(-1, 2)


def blend_mask(shape: tuple[int, int], landmarks: np.ndarray, box: tuple[int, int, int, int],
               rng: np.random.Generator) -> np.ndarray:
    """A soft `(H, W)` mask in [0, 1]: the face polygon, eroded or dilated, blurred twice, scaled by a blend
    ratio, and zero outside the face `box`."""
    hard = np.zeros(shape, dtype=np.float32)
    cv2.fillConvexPoly(hard, np.round(face_polygon(landmarks, rng)).astype(np.int32), 1.0)
    face = max(box[2] - box[0], box[3] - box[1], 8)
    kernel = max(3, int(face * rng.uniform(0.02, 0.08)) | 1)
    morph = cv2.erode if rng.random() < 0.5 else cv2.dilate
    hard = morph(hard, np.ones((kernel, kernel), np.uint8))
    soft = hard
    for share in (rng.uniform(0.02, 0.1), rng.uniform(0.02, 0.15)):
        sigma = max(0.5, face * share)
        soft = cv2.GaussianBlur(soft, (0, 0), sigma)
        soft = soft / max(float(soft.max()), 1e-6)
    inside = np.zeros(shape, dtype=np.float32)
    inside[box_region(shape, box)] = 1.0
    return soft * inside * float(rng.choice(BLEND_RATIOS))


def colour_shift(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-channel shift, hue/saturation/value change and a small contrast change of a uint8 RGB crop; float32
    RGB in 0..255 out. The per-pixel steps on 8-bit values run as 256-entry lookup tables (the same float32
    arithmetic on each level, so the same result as on every pixel, several times faster)."""
    levels = np.arange(256, dtype=np.float32)[:, None]
    shift = rng.uniform(-20, 20, 3).astype(np.float32) * (rng.random() < 0.3)
    hsv = cv2.cvtColor(cv2.LUT(crop, channel_table(levels + shift)), cv2.COLOR_RGB2HSV)
    hue = (levels + rng.uniform(-8, 8)) % 180
    saturation_value = levels * rng.uniform(0.85, 1.15, 2).astype(np.float32)
    changed = cv2.LUT(hsv, channel_table(np.concatenate([hue, saturation_value], axis=1)))
    out = cv2.cvtColor(changed, cv2.COLOR_HSV2RGB).astype(np.float32)
    mean = out.mean()
    return (out - mean) * rng.uniform(0.9, 1.1) + mean * rng.uniform(0.9, 1.1)


def channel_table(values: np.ndarray) -> np.ndarray:
    """`(256, 3)` float levels → the `cv2.LUT` table of one uint8 entry per level and channel (clipped, truncated)."""
    return np.clip(values, 0, 255).astype(np.uint8)[None]


def sharpness_change(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Either a lower resolution (down and up again) or a sharpened copy."""
    if rng.random() < 0.5:
        height, width = image.shape[:2]
        factor = rng.uniform(0.35, 0.8)
        small = cv2.resize(image, (max(2, int(width * factor)), max(2, int(height * factor))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    blurred = cv2.GaussianBlur(image, (0, 0), 1.0)
    return image + rng.uniform(0.2, 0.6) * (image - blurred)


def shift_and_scale(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small affine move of the source face (±3 % across, ±1.5 % down, scale 0.95–1.05), edges replicated."""
    height, width = image.shape[:2]
    scale = rng.uniform(0.95, 1 / 0.95)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), 0.0, scale)
    matrix[:, 2] += (rng.uniform(-0.03, 0.03) * width, rng.uniform(-0.015, 0.015) * height)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def self_blend(crop: np.ndarray, landmarks: np.ndarray, margin: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A self-blended fake of an RGB uint8 face crop (cut with `margin`) and the mask it was blended through.

    `landmarks` are the five MTCNN points in the crop's pixels.
    """
    box = face_box(crop.shape[:2], margin)
    source = shift_and_scale(sharpness_change(colour_shift(crop, rng), rng), rng)
    mask = blend_mask(crop.shape[:2], landmarks, box, rng)
    region = box_region(crop.shape[:2], box)  # the mask is zero outside it: those pixels stay the crop's
    weight = mask[region][..., None]
    blended = weight * np.clip(source[region], 0, 255) + (1.0 - weight) * crop[region].astype(np.float32)
    fake = crop.copy()
    fake[region] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return fake, mask
