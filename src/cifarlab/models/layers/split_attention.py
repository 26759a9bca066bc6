"""Split attention: Zhang et al., "ResNeSt: Split-Attention Networks", CVPR Workshops 2022 (§3.1-3.2).

A drop-in replacement for a kxk convolution (it is the conv + BN + act of
ResNeSt's bottleneck). One grouped conv with ``groups * radix`` groups makes
``radix`` feature-map splits of ``out_channels`` each (every cardinal group has
``radix`` splits). The splits are summed, globally average-pooled, passed through
fc1 (1x1 conv, grouped by cardinality) + BN + ReLU and fc2 to ``radix *
out_channels`` logits; an r-softmax across the radix splits of each cardinal group
(a sigmoid when ``radix == 1``) gives the weights of the splits' sum.

Hidden width of fc1: ``max(min_rd_channels, in_channels * radix * rd_ratio rounded
to the nearest multiple of rd_divisor)``, then rounded up to a multiple of
``groups``. With the defaults (ratio 1/4, divisor 8, floor 32) this equals the
official ``max(in_channels * radix // 4, 32)`` whenever ``in_channels * radix / 4``
is a multiple of 8 (e.g. radix 2 and channels a multiple of 16) or below 32.
Channels are laid out radix-major (split r holds channels ``[r*C, (r+1)*C)``) in the
conv output and cardinal-major in the fc2 logits, as in the official code.

Signature: ``SplitAttention(in_channels, out_channels=None, kernel_size=3, stride=1,
dilation=1, groups=1, radix=2, rd_ratio=0.25, rd_divisor=8, min_rd_channels=32,
act="relu")``; ``groups`` is the cardinality K. Constraint: ``in_channels`` must be
divisible by ``groups * radix`` (a depthwise-like use needs ``groups = C // radix``),
``out_channels`` by ``groups``. Nothing is specific to 32x32 inputs; for large
kernels on small maps use ``dilation`` (padding is ``dilation * (kernel_size // 2)``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ... import CifarlabError
from .activations import make_act


class SplitAttention(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        radix: int = 2,
        rd_ratio: float = 0.25,
        rd_divisor: int = 8,
        min_rd_channels: int = 32,
        act: str = "relu",
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        if radix < 1 or groups < 1:
            raise CifarlabError(f"radix and groups must be >= 1, got radix={radix}, groups={groups}")
        if in_channels % (groups * radix) or out_channels % groups:
            raise CifarlabError(f"split attention: in_channels ({in_channels}) must be divisible by groups * radix "
                                f"= {groups * radix} and out_channels ({out_channels}) by groups = {groups}")
        rd = int(in_channels * radix * rd_ratio + rd_divisor / 2) // rd_divisor * rd_divisor
        rd = max(min_rd_channels, rd)
        rd += -rd % groups
        self.radix = radix
        self.groups = groups
        self.out_channels = out_channels
        self.rd_channels = rd
        self.conv = nn.Conv2d(in_channels, out_channels * radix, kernel_size, stride,
                              padding=dilation * (kernel_size // 2), dilation=dilation,
                              groups=groups * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(out_channels * radix)
        self.act0 = make_act(act)
        self.fc1 = nn.Conv2d(out_channels, rd, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(rd)
        self.act1 = make_act(act)
        self.fc2 = nn.Conv2d(rd, out_channels * radix, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        b, _, h, w = x.shape
        r, c = self.radix, self.out_channels
        splits = x.view(b, r, c, h, w)
        gap = splits.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        logits = self.fc2(self.act1(self.bn1(self.fc1(gap))))
        if r == 1:
            return x * torch.sigmoid(logits)
        # logits are (cardinal group, radix, channel of group): softmax over the radix of each group
        weights = logits.view(b, self.groups, r, c // self.groups).softmax(dim=2)
        weights = weights.transpose(1, 2).reshape(b, r, c, 1, 1)
        return (splits * weights).sum(dim=1)
