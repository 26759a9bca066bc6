"""Pieces of the ConvNeXt-style hierarchical trunks (ConvNeXt, HorNet, EdgeNeXt).

Liu et al., "A ConvNet for the 2020s", CVPR 2022: a non-overlapping ``p x p`` conv
("patchify") + LayerNorm as the stem, LayerNorm + 2x2 stride-2 conv between stages,
and truncated-normal (std 0.02) initialisation of conv and linear weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .norm import LayerNorm2d


def patchify_stem(dim: int, patch_size: int, in_ch: int = 3) -> nn.Sequential:
    """``p x p`` conv with stride ``p`` to ``dim`` channels, then a channels-first LayerNorm."""
    return nn.Sequential(nn.Conv2d(in_ch, dim, patch_size, patch_size), LayerNorm2d(dim))


def ln_downsample(in_dim: int, dim: int) -> nn.Sequential:
    """The between-stages downsampling: channels-first LayerNorm, then a 2x2 stride-2 conv."""
    return nn.Sequential(LayerNorm2d(in_dim), nn.Conv2d(in_dim, dim, 2, 2))


def init_trunc_normal(model: nn.Module) -> None:
    """ConvNeXt's initialisation: truncated normal (std 0.02) for conv and linear weights, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class HierarchicalTrunk(nn.Module):
    """Base of the ConvNeXt-style networks: ``stem`` -> ``stages`` -> global average -> LayerNorm -> linear.

    Subclasses build ``self.stem`` and ``self.stages``, then call :meth:`_finish`.
    """

    def _finish(self, dim: int, num_classes: int) -> None:
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        init_trunc_normal(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
