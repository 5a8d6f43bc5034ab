"""White-box L-infinity attacks (FGSM, PGD) on a face classifier.

One projected-gradient routine serves evaluation and adversarial training. It works in whatever space its
loss takes, given the per-channel radius and bounds there:

* evaluation (`training/tools/robustness.py`): pixel space [0, 1] through `PixelModel`, which applies the
  manifest's mean/std; radius eps/255, bounds 0 and 1;
* training (`training/tools/defences.py`): the normalised tensors of the data loader; radius (eps/255)/std and
  bounds (0 - mean)/std, (1 - mean)/std per channel, i.e. the same pixel-space ball and [0, 1] box.

Attacks ascend the loss they are given; a targeted attack passes the negated loss toward its target.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from dfdc_core.models import fake_logit

LossFn = Callable[[torch.Tensor], torch.Tensor]
ATTACKS = ("fgsm", "pgd")


class PixelModel(torch.nn.Module):
    """A classifier fed pixel-space [0, 1] images: normalises with `mean`/`std`, returns the logit of P(fake)
    `(n, 1)` (a multi-class model's is logit(1 - P(real)), `dfdc_core.models.fake_logit`)."""

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float], real_index: int = 0):
        super().__init__()
        self.model, self.real_index = model, real_index
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return fake_logit(self.model((pixels - self.mean) / self.std), self.real_index)[:, None]


def channel_view(values: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel values shaped `(1, 3, 1, 1)` on the device and dtype of `like`."""
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def input_gradient(loss_fn: LossFn, images: torch.Tensor) -> torch.Tensor:
    """d loss / d images, leaving the model's parameter gradients untouched."""
    images = images.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss_fn(images), images)
    return gradient


def pgd(loss_fn: LossFn, images: torch.Tensor, eps: torch.Tensor, steps: int, step_size: float,
        lower: torch.Tensor, upper: torch.Tensor, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on `loss_fn` within `images ± eps`, clamped to [lower, upper].

    `eps`, `lower` and `upper` broadcast against `images` (per-channel in normalised space); `step_size`
    is a share of eps per step. Returns the adversarial images, detached.
    """
    if steps < 1:
        raise ValueError(f"PGD needs at least 1 step, got {steps}")
    start = images.detach()
    adversarial = start.clone()
    if random_start:
        noise = torch.rand(start.shape, generator=generator, device="cpu").to(start.device, start.dtype)
        adversarial = torch.clamp(start + (2 * noise - 1) * eps, lower, upper)
    for _ in range(steps):
        step = step_size * eps * input_gradient(loss_fn, adversarial).sign()
        adversarial = torch.clamp(torch.clamp(adversarial + step, start - eps, start + eps), lower, upper)
    return adversarial.detach()


def fgsm(loss_fn: LossFn, images: torch.Tensor, eps: torch.Tensor, lower: torch.Tensor,
         upper: torch.Tensor) -> torch.Tensor:
    """The fast gradient sign method: one full-eps step from the clean images."""
    return pgd(loss_fn, images, eps, steps=1, step_size=1.0, lower=lower, upper=upper, random_start=False)


def attack_toward(model: PixelModel, pixels: torch.Tensor, target: float, method: str, eps: float,
                  steps: int = 10, step_size: float = 0.25, random_start: bool = True,
                  seed: int = 0) -> torch.Tensor:
    """Pixel-space images `(n, 3, H, W)` in [0, 1] pushed toward label `target` (0 = real) within L-inf `eps`.

    The attack minimises the summed BCE toward `target` (summed so that fp16 input gradients do not
    underflow; the sign step ignores scale). The model should be in eval mode.
    """
    targets = torch.full((len(pixels),), float(target), device=pixels.device)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return -torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0].float(), targets, reduction="sum")

    radius = torch.tensor(eps, dtype=pixels.dtype, device=pixels.device)
    zero, one = torch.zeros_like(radius), torch.ones_like(radius)
    if method == "fgsm":
        return fgsm(loss_fn, pixels, radius, zero, one)
    if method == "pgd":
        generator = torch.Generator().manual_seed(seed)
        return pgd(loss_fn, pixels, radius, steps, step_size, zero, one, random_start, generator)
    raise ValueError(f"unknown attack '{method}'; choose one of {list(ATTACKS)}")
