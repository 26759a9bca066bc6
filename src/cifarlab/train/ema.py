"""Exponential moving average of the weights, updated on the device without host synchronisation.

The average starts as a copy of the model (so a resumed run, which reloads the
averaged weights from its checkpoint, continues it exactly) and after every step
moves floating-point parameters and buffers towards the model's:
``ema = decay * ema + (1 - decay) * model`` (one ``_foreach_lerp_``). Integer
buffers such as BatchNorm's ``num_batches_tracked`` are copied. The update has no
data-dependent branch, so it can be captured in the training step's CUDA graph.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class WeightEma:
    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False)
        pairs = list(zip(self.module.state_dict(keep_vars=True).values(), model.state_dict(keep_vars=True).values(),
                         strict=True))
        floating = [(e, m) for e, m in pairs if e.is_floating_point()]
        self._ema = [e for e, _ in floating]
        self._src = [m.detach() for _, m in floating]  # views sharing the model's storage
        self._copied = [(e, m) for e, m in pairs if not e.is_floating_point()]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the average (for snapshots around a graph capture)."""
        return self._ema + [e for e, _ in self._copied]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._ema, self._src, 1.0 - self.decay)
        for e, m in self._copied:
            e.copy_(m)
