"""Image perturbations that real uploads bring, shared by training augmentation and robustness evaluation.

Each perturbation is one albumentations transform with one strength parameter, in the units of the
training config's `augment` block (`gauss_noise.std`, `salt_pepper.amount`, …), so a strength in the
robustness report reads the same as an augmentation range. `STRENGTHS` is the one table of the weak /
medium / strong settings; `fixed(name, strength)` is that transform with its parameter pinned, and a seed
set before each image (`apply`) makes the random ones (noise) deterministic.
"""
from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

import albumentations as A

# perturbation → (its parameter, as the `augment` key in training/configs/default.yaml; what it means)
PARAMETERS = {
    "gauss_noise": ("std", "noise standard deviation as a share of 255"),
    "salt_pepper": ("amount", "share of pixels set to 0 or 255"),
    "sharpen": ("alpha", "blend of the sharpened image (0 none, 1 fully sharpened)"),
    "blur": ("sigma", "Gaussian blur sigma in pixels (kernel size follows)"),
    "jpeg": ("quality", "JPEG quality (lower is stronger)"),
}
LEVELS = ("weak", "medium", "strong")
STRENGTHS: dict[str, dict[str, float]] = {
    "gauss_noise": {"weak": 0.02, "medium": 0.05, "strong": 0.10},
    "salt_pepper": {"weak": 0.005, "medium": 0.02, "strong": 0.05},
    "sharpen": {"weak": 0.2, "medium": 0.5, "strong": 1.0},
    "blur": {"weak": 0.8, "medium": 1.5, "strong": 3.0},
    "jpeg": {"weak": 70, "medium": 40, "strong": 15},
}


def transform(name: str, value_range: tuple[float, float], p: float = 1.0) -> A.ImageOnlyTransform:
    """The albumentations transform of perturbation `name`, its parameter drawn from `value_range`."""
    low, high = value_range
    if name == "gauss_noise":
        return A.GaussNoise(std_range=(low, high), p=p)
    if name == "salt_pepper":
        return A.SaltAndPepper(amount=(low, high), p=p)
    if name == "sharpen":
        return A.Sharpen(alpha=(low, high), lightness=(1.0, 1.0), p=p)
    if name == "blur":
        return A.GaussianBlur(sigma_limit=(low, high), blur_limit=0, p=p)
    if name == "jpeg":
        return A.ImageCompression(quality_range=(int(low), int(high)), p=p)
    raise KeyError(f"unknown perturbation '{name}'; known: {list(PARAMETERS)}")


def fixed(name: str, strength: str) -> A.ImageOnlyTransform:
    """Perturbation `name` at `strength` (weak / medium / strong of `STRENGTHS`), always applied."""
    if name not in STRENGTHS:
        raise KeyError(f"unknown perturbation '{name}'; known: {list(STRENGTHS)}")
    if strength not in LEVELS:
        raise KeyError(f"unknown strength '{strength}'; choose one of {list(LEVELS)}")
    value = STRENGTHS[name][strength]
    return transform(name, (value, value))


def image_seed(*keys: int) -> int:
    """One 32-bit seed from integer keys (run seed, image number, …): different keys, independent draws."""
    return int(np.random.SeedSequence([int(key) for key in keys]).generate_state(1)[0])


def apply(perturbation: A.BasicTransform, image: np.ndarray, seed: int) -> np.ndarray:
    """`perturbation` applied to a uint8 RGB image with its random draws fixed by `seed`."""
    perturbation.set_random_seed(seed)
    return perturbation(image=image)["image"]


def strengths_table() -> str:
    """`STRENGTHS` as aligned text, with each parameter's meaning: printed in the robustness report."""
    lines = [f"{'perturbation':<13}{'parameter':<10}" + "".join(f"{level:>9}" for level in LEVELS) + "  meaning"]
    for name, (parameter, meaning) in PARAMETERS.items():
        values = "".join(f"{STRENGTHS[name][level]:>9g}" for level in LEVELS)
        lines.append(f"{name:<13}{parameter:<10}{values}  {meaning}")
    return "\n".join(lines)
