"""Face-crop datasets for training: the kernel's isotropic resize + pad and normalisation, albumentations on top.

Training crops are resized and padded to the model input exactly as the kernel does, then augmented;
validation crops get the kernel's preprocessing only.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

import albumentations as A  # noqa: E402

from kernel.faces import isotropic_resize_pad, normalise  # noqa: E402
from training.perturb import PARAMETERS, image_seed  # noqa: E402
from training.perturb import transform as perturbation  # noqa: E402

# each transform's settings besides `p`; the five perturbations take their one parameter from training/perturb.py
AUGMENTATIONS = {"hflip": (), "shift_scale_rotate": ("shift", "scale", "rotate"),
                 "color_jitter": ("brightness", "contrast", "saturation", "hue"),
                 **{name: (parameter,) for name, (parameter, _) in PARAMETERS.items()}, "cutout": ("holes", "size")}
# the perturbations shared with robustness evaluation (training/perturb.py), in pipeline order, default ranges
PERTURBATION_DEFAULTS = {"jpeg": (40, 95), "blur": (0.5, 1.5), "gauss_noise": (0.01, 0.05),
                         "salt_pepper": (0.005, 0.02), "sharpen": (0.1, 0.3)}


def build_augmentation(settings: dict[str, Any]) -> A.Compose:
    """An albumentations pipeline from the config's `augment` block: each transform's `p` and ranges."""
    unknown = sorted(set(settings) - set(AUGMENTATIONS))
    if unknown:
        raise KeyError(f"augment: unknown transforms {unknown}; known: {list(AUGMENTATIONS)}")
    for name, options in settings.items():
        extra = sorted(set(options or {}) - {"p", *AUGMENTATIONS[name]})
        if extra:
            raise KeyError(f"augment.{name}: unknown settings {extra}; it takes p and {list(AUGMENTATIONS[name])}")

    def p(name: str) -> float:
        return float(settings.get(name, {}).get("p", 0.0))

    def get(name: str, key: str, default: Any) -> Any:
        return settings.get(name, {}).get(key, default)

    shift, rotate = get("shift_scale_rotate", "shift", 0.05), get("shift_scale_rotate", "rotate", 10)
    return A.Compose([
        A.HorizontalFlip(p=p("hflip")),
        A.Affine(translate_percent=(-shift, shift), scale=tuple(get("shift_scale_rotate", "scale", (0.9, 1.1))),
                 rotate=(-rotate, rotate),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=p("shift_scale_rotate")),
        A.ColorJitter(brightness=get("color_jitter", "brightness", 0.2), contrast=get("color_jitter", "contrast", 0.2),
                      saturation=get("color_jitter", "saturation", 0.2), hue=get("color_jitter", "hue", 0.02),
                      p=p("color_jitter")),
        *(perturbation(name, tuple(get(name, PARAMETERS[name][0], default)), p(name))
          for name, default in PERTURBATION_DEFAULTS.items()),
        A.CoarseDropout(num_holes_range=tuple(get("cutout", "holes", (1, 2))),
                        hole_height_range=tuple(get("cutout", "size", (0.1, 0.3))),
                        hole_width_range=tuple(get("cutout", "size", (0.1, 0.3))), fill=0, p=p("cutout")),
    ])


def read_crop(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"face crop {path} is missing or unreadable; rerun extract_faces.py for its video")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class CropDataset(Dataset):
    """Rows of the face index → (normalised tensor, label from `label_column`); augmentation only when given.

    With `seed` set, crop i is augmented with draws fixed by (seed, i): the same crops every time.
    """

    def __init__(self, rows: pd.DataFrame, root: Path, input_size: int, mean: tuple[float, float, float],
                 std: tuple[float, float, float], augmentation: A.BasicTransform | None = None,
                 label_column: str = "label", seed: int | None = None):
        self.paths = [root / path for path in rows["path"]]
        self.labels = rows[label_column].to_numpy(dtype=np.float32)
        self.input_size, self.mean, self.std = input_size, tuple(mean), tuple(std)
        self.augmentation, self.seed = augmentation, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = isotropic_resize_pad(read_crop(self.paths[index]), self.input_size)
        if self.augmentation is not None:
            if self.seed is not None:
                self.augmentation.set_random_seed(image_seed(self.seed, index))
            image = self.augmentation(image=image)["image"]
        return normalise(image[None], self.mean, self.std)[0], torch.tensor(self.labels[index])


class BalancedSampler(Sampler[int]):
    """Draws classes (0/1 or class indices) equally often (with replacement); each process takes its share of one shared draw.

    Works single-process (`world_size=1`) and under torch.distributed; call `set_epoch` every epoch.
    """

    def __init__(self, labels: np.ndarray, rank: int = 0, world_size: int = 1, seed: int = 0):
        counts = np.bincount(labels.astype(np.int64), minlength=2).astype(np.float64)
        if (counts == 0).any():
            raise ValueError("balance: sampler needs every class in the training fold; use balance: none")
        self.weights = torch.as_tensor(1.0 / counts[labels.astype(np.int64)], dtype=torch.float64)
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self.per_rank = math.ceil(len(labels) / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.per_rank * self.world_size, replacement=True, generator=generator)
        return iter(draw[self.rank::self.world_size].tolist())
