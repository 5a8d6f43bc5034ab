"""Training-time defences for train_fold.py: adversarial batch mixing and a Lipschitz (input-gradient) penalty.

Both work on the loader's normalised tensors but are stated in pixel units: `adversarial.eps` is in 8-bit
levels (2 → an L-inf ball of 2/255 around each [0, 1] image, clamped to [0, 1]), and the penalty is
`lipschitz · mean_i ||d loss_i / d x_i||₂` with x in [0, 1] pixels (double back-prop): the
local Lipschitz constant of the loss in L2, not squared, so its pull stays steady while the norm falls
from thousands (fresh head) to hundreds (trained).

    adversarial: {method: pgd, eps: 2, steps: 3, step_size: 0.5, ratio: 0.5, random_start: true}
    lipschitz: 0.0002
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from training.tools.attacks import ATTACKS, channel_view, fgsm, pgd

# (model, normalised images, targets) → mean loss over the batch, under the run's autocast
BatchLoss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Adversarial:
    """Settings of `adversarial:`; eps in 8-bit levels, step_size a share of eps, ratio a share of each batch."""

    method: str
    eps: float
    steps: int = 3
    step_size: float = 0.5
    ratio: float = 0.5
    random_start: bool = True


@dataclass(frozen=True)
class Defence:
    """What train_one_epoch does to each batch; with neither setting it is plain training."""

    adversarial: Adversarial | None
    lipschitz: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def mix_adversarial(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                        batch_loss: BatchLoss) -> torch.Tensor:
        """The batch with its first `ratio` share replaced by adversarial versions (batches come shuffled).

        They are made on this process's model (not the DDP wrapper) in eval mode, so batch-norm
        statistics are not touched, and ascend the training loss on their own targets.
        """
        count = round(self.adversarial.ratio * len(images)) if self.adversarial else 0
        if count == 0:
            return images
        net = getattr(model, "module", model)
        settings = self.adversarial
        eps = channel_view([settings.eps / 255.0 / s for s in self.std], images)
        lower = channel_view([-m / s for m, s in zip(self.mean, self.std)], images)
        upper = channel_view([(1 - m) / s for m, s in zip(self.mean, self.std)], images)

        def loss_fn(x: torch.Tensor) -> torch.Tensor:  # summed: fp16 input gradients do not underflow
            return batch_loss(net, x, targets[:count]) * count

        net.eval()
        try:
            if settings.method == "fgsm":
                attacked = fgsm(loss_fn, images[:count], eps, lower, upper)
            else:
                attacked = pgd(loss_fn, images[:count], eps, settings.steps, settings.step_size, lower, upper,
                               settings.random_start)
        finally:
            net.train()
        return torch.cat([attacked, images[count:]])

    def objective(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                  batch_loss: BatchLoss) -> tuple[torch.Tensor, torch.Tensor]:
        """(what to minimise, the classification loss): the loss plus the Lipschitz penalty when it is on.

        The penalty differentiates the unscaled loss with `create_graph=True`, so GradScaler only ever
        scales the sum and unscales the parameter gradients as usual.
        """
        if not self.lipschitz:
            loss = batch_loss(model, images, targets)
            return loss, loss
        images = images.detach().requires_grad_(True)
        loss = batch_loss(model, images, targets)
        (gradient,) = torch.autograd.grad(loss * len(images), images, create_graph=True)
        pixel_gradient = gradient.float() / channel_view(self.std, gradient.float())  # d/dpixel = d/dnorm / std
        penalty = pixel_gradient.flatten(1).pow(2).sum(1).add(1e-12).sqrt().mean()  # 1e-12: finite at 0
        return loss + self.lipschitz * penalty, loss


def adversarial_settings(value: Any) -> Adversarial | None:
    """`adversarial:` from the config, checked; None when it is null."""
    if value is None:
        return None
    known = [f.name for f in fields(Adversarial)]
    if not isinstance(value, dict) or set(value) - set(known) or "method" not in value or "eps" not in value:
        raise ValueError(f"adversarial: expected null or a mapping with method and eps (optional: steps, "
                         f"step_size, ratio, random_start), e.g. {{method: pgd, eps: 2, steps: 3, ratio: 0.5}}; "
                         f"got {value!r}")
    settings = Adversarial(**value)
    if settings.method not in ATTACKS:
        raise ValueError(f"adversarial.method is {settings.method!r}; choose one of {list(ATTACKS)}")
    if not (0 < settings.eps <= 255 and 0 <= settings.ratio <= 1 and settings.steps >= 1 and settings.step_size > 0):
        raise ValueError(f"adversarial: need 0 < eps <= 255 (8-bit levels), 0 <= ratio <= 1, steps >= 1 and "
                         f"step_size > 0; got {value!r}")
    return settings


def defence_from_config(config: dict[str, Any]) -> Defence:
    """The run's defences from `adversarial` and `lipschitz` (resolved mean/std give the pixel units)."""
    lipschitz = float(config["lipschitz"] or 0.0)
    if lipschitz < 0:
        raise ValueError(f"lipschitz is {lipschitz}; use 0 (off) or a positive penalty weight")
    return Defence(adversarial_settings(config["adversarial"]), lipschitz, tuple(config["mean"]), tuple(config["std"]))
