"""HorNet: Rao, Zhao, Tang, Zhou, Lim, Lu, "HorNet: Efficient High-Order Spatial Interactions
with Recursive Gated Convolutions", NeurIPS 2022.

The recursive gated convolution g^n Conv (:class:`RecursiveGatedConv`) mixes space with
n-th order gated interactions: a 1x1 projection to 2C is split into ``p0`` (C/2^(n-1)
channels) and the rest, which one depthwise kxk conv turns into n gates of widths
C/2^(n-1), ..., C/2, C (times alpha); then ``p_1 = p_0 * q_0`` and
``p_{k+1} = pw_k(p_k) * q_k`` climb the widths and a 1x1 projection closes. A HorNet block is a ConvNeXt block
with g^n Conv in place of the depthwise conv: LN -> g^n Conv -> layer scale (residual), LN -> MLP x4 -> layer scale
(residual). Orders 2/3/4/5 in the four stages, gate scale alpha = 1/3, as the paper.

32x32 inputs: the stem is a 2x2/2 patchify conv instead of 4x4/4, so the stages run
at 16/8/4/2 (as ``convnext_*_cifar``, for a like-for-like comparison); the depthwise
kernel is min(7, 2H-1) per stage = 7/7/7/3: on the 2x2 maps of stage 4 only the central
3x3 taps of a 7x7 kernel ever touch the map, the others would be dead weights. Only
the 7x7 depthwise form is built (not the global-filter variant).

:class:`GnConvNorm` makes g^n Conv a drop-in for the second 3x3 conv of a CIFAR ResNet
BasicBlock (``conv="gnconv", replace="conv2"``): g^n Conv followed by BatchNorm.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from .. import CifarlabError
from .layers.activations import make_act
from .layers.factory import register_conv
from .layers.norm import DropPath, LayerNorm2d, drop_path_rates
from .layers.patchify import HierarchicalTrunk, ln_downsample, patchify_stem
from .layers.transformer import Mlp
from .registry import register_model


class RecursiveGatedConv(nn.Module):
    """g^n Conv of order ``n`` on ``dim`` channels (dim must be divisible by 2^(n-1)).

    ``dims`` are the recursion widths [C/2^(n-1), ..., C/2, C]; there are n-1 pointwise
    convs ``pws`` between them. With n = 1 it is the gated conv
    ``proj_out(p0 * alpha * dw(q))``.
    """

    def __init__(self, dim: int, order: int = 3, kernel_size: int = 7, scale: float = 1.0 / 3.0):
        super().__init__()
        if order < 1 or dim % 2 ** (order - 1):
            raise ValueError(f"g^n Conv needs order >= 1 and dim divisible by 2^(order-1); "
                             f"got dim={dim}, order={order}")
        self.order = order
        self.scale = scale
        self.dims = [dim // 2 ** i for i in reversed(range(order))]
        gate_ch = sum(self.dims)
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv = nn.Conv2d(gate_ch, gate_ch, kernel_size, padding=kernel_size // 2, groups=gate_ch)
        self.pws = nn.ModuleList(nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1))
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(self.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        gates = torch.split(self.dwconv(q) * self.scale, self.dims, dim=1)
        x = p * gates[0]
        for pw, gate in zip(self.pws, gates[1:], strict=True):
            x = pw(x) * gate
        return self.proj_out(x)


@register_conv("gnconv")
class GnConvNorm(nn.Module):
    """g^n Conv + BatchNorm (+ activation) in place of a stride-1, C -> C 3x3 conv unit.

    Fits a BasicBlock's conv2 (``replace="conv2"``); it cannot change width or stride.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, act: bool = True, order: int = 3,
                 kernel_size: int = 7, scale: float = 1.0 / 3.0, act_layer: str = "relu"):
        super().__init__()
        if in_ch != out_ch or stride != 1:
            raise CifarlabError("g^n Conv keeps width and resolution; use it for conv2 only (replace='conv2')")
        self.gnconv = RecursiveGatedConv(in_ch, order, kernel_size, scale)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = make_act(act_layer) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.gnconv(x)))


class HorNetBlock(nn.Module):
    """x + gamma1 * gnConv(LN(x)), then x + gamma2 * MLP(LN(x)) (MLP: Linear 4C, GELU, Linear)."""

    def __init__(self, dim: int, order: int, kernel_size: int = 7, scale: float = 1.0 / 3.0,
                 mlp_ratio: float = 4.0, ls_init: float = 1e-6, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.gnconv = RecursiveGatedConv(dim, order, kernel_size, scale)
        self.gamma1 = nn.Parameter(torch.full((dim,), ls_init))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.gamma2 = nn.Parameter(torch.full((dim,), ls_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1[:, None, None] * self.gnconv(self.norm1(x)))
        y = self.gamma2 * self.mlp(self.norm2(x.permute(0, 2, 3, 1)))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class HorNet(HierarchicalTrunk):
    """Patchify stem + LN, four stages of HorNet blocks (LN + 2x2/2 conv between stages), avg pool, LN, linear."""

    def __init__(
        self,
        depths: Sequence[int] = (2, 3, 18, 2),
        dims: Sequence[int] = (64, 128, 256, 512),
        orders: Sequence[int] = (2, 3, 4, 5),
        kernel_sizes: Sequence[int] = (7, 7, 7, 3),
        num_classes: int = 100,
        patch_size: int = 2,
        scale: float = 1.0 / 3.0,
        mlp_ratio: float = 4.0,
        ls_init: float = 1e-6,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if not len(depths) == len(dims) == len(orders) == len(kernel_sizes):
            raise ValueError("depths, dims, orders and kernel_sizes need one entry per stage")
        self.stem = patchify_stem(dims[0], patch_size)
        rates = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            down = nn.Identity() if i == 0 else ln_downsample(dims[i - 1], dim)
            blocks = [HorNetBlock(dim, orders[i], kernel_sizes[i], scale, mlp_ratio, ls_init, rates[i][j])
                      for j in range(depth)]
            stages.append(nn.Sequential(down, *blocks))
        self.stages = nn.Sequential(*stages)
        self._finish(dims[-1], num_classes)


def hornet(num_classes: int = 100, **kwargs: Any) -> HorNet:
    """A HorNet for 32x32 images (defaults: HorNet-T 7x7 widths and depths, 2x2 patchify stem)."""
    return HorNet(num_classes=num_classes, **kwargs)


_PAPER = "HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions (Rao et al., 2022)"
_ADAPT = (
    "2x2/2 patchify stem instead of 4x4/4 (stages at 16/8/4/2 instead of 56/28/14/7, as convnext_*_cifar); "
    "g^n Conv depthwise kernel min(7, 2H-1) per stage = 7/7/7/3 (on 2x2 maps only 3x3 taps of a 7x7 see "
    "data); 7x7 depthwise form only (no global filter). Otherwise the paper's block: orders 2/3/4/5, "
    "alpha = 1/3, LN eps 1e-6, layer scale 1e-6, MLP ratio 4, linear drop-path schedule."
)
_RECIPE = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 10, "label_smoothing": 0.1}

register_model(
    hornet, name="hornet_mini", family="hornet", paper=_PAPER, tier="small",
    arch=("2x2/2 patchify stem + LN; depths 2/2/6/2 at dims 20/40/80/160, g^n Conv orders 2/3/4/5, "
          "MLP ratio 4; stages on 16/8/4/2 maps; dw kernels 7/7/7/3; LN + 2x2/2 conv between stages; "
          "global avg pool, LN, linear head"),
    adaptation=_ADAPT + (" Width and depth scaled down for the small tier: HorNet-T / 3.2 in width, depths "
                         "2/2/6/2 (ConvNeXt's 1:1:3:1 stage ratio)."),
    recipe=_RECIPE, depths=(2, 2, 6, 2), dims=(20, 40, 80, 160), drop_path_rate=0.05,
)

register_model(
    hornet, name="hornet_t", family="hornet", paper=_PAPER, tier="standard",
    arch=("HorNet-T (7x7): 2x2/2 patchify stem + LN; depths 2/3/18/2 at dims 64/128/256/512, g^n Conv "
          "orders 2/3/4/5, MLP ratio 4; stages on 16/8/4/2 maps; dw kernels 7/7/7/3; LN + 2x2/2 conv "
          "between stages; global avg pool, LN, linear head"),
    adaptation=_ADAPT + " HorNet-T's widths and depths unchanged.",
    recipe=_RECIPE, drop_path_rate=0.1,
)
