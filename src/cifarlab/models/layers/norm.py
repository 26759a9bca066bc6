"""Channels-first LayerNorm, stochastic depth and its per-block rates.

Used by the HorNet, SegNeXt-MSCAN, LSKNet and EdgeNeXt networks.

- :class:`LayerNorm2d`: LayerNorm (Ba, Kiros, Hinton, "Layer Normalization", 2016)
  over the channels of an (N, C, H, W) tensor, each position normalised on its own,
  as ConvNeXt's ``channels_first`` LayerNorm.
- :class:`DropPath`: stochastic depth (Huang, Sun, Liu, Sedra, Weinberger, "Deep
  Networks with Stochastic Depth", ECCV 2016) on a residual branch.
- :func:`drop_path_rates`: the linear rule of those papers' code, 0 for the first
  block up to ``rate`` for the last, split per stage.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.LayerNorm):
    """``nn.LayerNorm(C)`` applied to channels-first data: normalise each pixel's C-vector."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Drop a residual branch per sample with probability ``p`` in training; identity in eval.

    Kept samples are scaled by ``1 / (1 - p)`` so the expected output is unchanged.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Per-stage lists of drop-path probabilities rising linearly from 0 to ``rate`` over all blocks."""
    total = sum(depths)
    flat = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(flat[start:start + d])
        start += d
    return out
