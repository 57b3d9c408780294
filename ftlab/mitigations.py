"""Cures for catastrophic forgetting that `fit` can switch on, written to be read.

- L2-SP (Li et al., 2018): penalise the distance from the pretrained weights, not from zero, so
  the body can adapt but is pulled back toward what it knew:
      penalty = strength / 2 * sum_i ||w_i - w0_i||^2      (over the trainable body, not the new head)
- Rehearsal: mix a fraction of source-task examples into every batch, scored through the source
  head, so the backbone keeps serving the old task while it learns the new one.

Freezing more blocks, a lower learning rate and early stopping need no code of their own: they are
`frozen_depth`, `lr` and `patience` in `fit`.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["anchor_weights", "l2sp_penalty", "RehearsalSampler"]


def anchor_weights(model: nn.Module, exclude: set[int] = frozenset()) -> dict[str, torch.Tensor]:
    """A frozen copy of the trainable parameters (the starting point L2-SP pulls toward)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()
            if p.requires_grad and id(p) not in exclude}


def l2sp_penalty(model: nn.Module, anchors: dict[str, torch.Tensor], strength: float) -> torch.Tensor:
    """strength / 2 * squared distance of the anchored parameters from their starting values."""
    params = dict(model.named_parameters())
    distance = sum(((params[name] - start) ** 2).sum() for name, start in anchors.items())
    return 0.5 * strength * distance


class RehearsalSampler:
    """Hands out source-example indices, `fraction` of each target batch, cycling through a
    shuffled order of the source training set so every example is replayed in turn."""

    def __init__(self, size: int, fraction: float, generator: torch.Generator):
        if not 0 <= fraction <= 1:
            raise ValueError(f"rehearsal must be a fraction of each batch in [0, 1], got {fraction!r}")
        self.size, self.fraction, self.generator = size, fraction, generator
        self.order, self.position = torch.randperm(size, generator=generator), 0

    def take(self, batch_size: int) -> torch.Tensor:
        count = min(round(self.fraction * batch_size), self.size)
        if self.position + count > self.size:  # a new pass over the source examples
            self.order, self.position = torch.randperm(self.size, generator=self.generator), 0
        chosen = self.order[self.position:self.position + count]
        self.position += count
        return chosen
