"""Losses: BCE on one logit (real/fake) or softmax cross-entropy over classes, label smoothing and class weights."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.engine.pretrained import class_shares


class BinaryLoss(torch.nn.Module):
    """BCE on the single logit against labels smoothed towards 0.5 (`y * (1 - s) + s / 2`), each sample weighted
    by its class's weight (of the hard label) when `class_weights` (real, fake) are given."""

    def __init__(self, smoothing: float, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.smoothing = smoothing
        self.class_weights = class_weights

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = labels * (1 - self.smoothing) + 0.5 * self.smoothing
        losses = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0].float(), targets,
                                                                      reduction="none")
        if self.class_weights is None:
            return losses.mean()
        weights = self.class_weights[labels.long()]
        return (losses * weights).sum() / weights.sum()


class MultiClassLoss(torch.nn.Module):
    """Softmax cross-entropy over class indices, with label smoothing `s` spread over the classes."""

    def __init__(self, smoothing: float, weight: torch.Tensor | None = None):
        super().__init__()
        self.cross_entropy = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.cross_entropy(logits.float(), labels.long())


def build_loss(config: dict[str, Any], train_labels: np.ndarray, device: torch.device) -> torch.nn.Module:
    """`criterion(model outputs, labels)`; `class_weights: true` weighs each sample by the inverse frequency of
    its class, so every class weighs the same in the loss."""
    smoothing, count = config["label_smoothing"], config["num_classes"]
    weights = None
    if config["class_weights"]:
        shares = class_shares(train_labels, max(2, count))
        weights = torch.tensor(1.0 / (len(shares) * np.maximum(shares, 1e-12)), dtype=torch.float32, device=device)
    return BinaryLoss(smoothing, weights) if count == 1 else MultiClassLoss(smoothing, weights)

