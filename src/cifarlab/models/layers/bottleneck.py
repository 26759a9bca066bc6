"""Pieces shared by the bottleneck families (ResNeXt, Res2Net, ResNeSt, CSP): the residual
tail with the attention switch, the ResNeXt bottleneck, projection shortcuts, one
CIFAR trunk (3x3 stem, stages, global pool, linear head) and its stage-layout builders.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (bottleneck);
Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017
(grouped 3x3 conv, the ResNeXt form of the bottleneck).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from .activations import make_act
from .conv import ConvNormAct
from .factory import create_attention
from .pooling import GlobalPool


def projection_shortcut(in_ch: int, out_ch: int, stride: int = 1, avg_down: bool = False) -> nn.Module:
    """Identity when shapes match, else a 1x1 conv + BN (option B).

    ``avg_down`` first average-pools by the stride (2x2, ``ceil_mode``, padding not
    counted) and then applies a stride-1 1x1 conv, the "ResNet-D" shortcut used by
    ResNeSt, so no input pixel is skipped.
    """
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    if avg_down:
        pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResidualBlock(nn.Module):
    """Base of a residual block: ``out = act(branch + shortcut(x))`` with optional attention.

    ``attention`` (a name from ``ATTENTION_LAYERS``) is applied to the ``out_ch``-channel
    branch before the addition (``attention_position="before"``, where SE/ECA/CA sit)
    or to the block output after the activation (``"after"``), as in ``resnet.BasicBlock``.
    Subclasses build their branch, call :meth:`residual` in ``forward`` and define
    ``zero_init_last()``, which zeroes the scale of the branch's last BN so that the
    block starts as the identity (Goyal et al., "Accurate, Large Minibatch SGD", 2017).
    """

    def __init__(
        self,
        out_ch: int,
        shortcut: nn.Module,
        attention: str | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        attention_position: str = "before",
        act: str = "relu",
    ):
        super().__init__()
        if attention_position not in ("before", "after"):
            raise ValueError(f"attention_position must be 'before' or 'after', got {attention_position!r}")
        self.shortcut = shortcut
        self.attn = create_attention(attention, out_ch, **(attention_kwargs or {})) if attention else None
        self.attention_position = attention_position
        self.act = make_act(act)

    def residual(self, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None and self.attention_position == "before":
            branch = self.attn(branch)
        out = self.act(branch + self.shortcut(x))
        if self.attn is not None and self.attention_position == "after":
            out = self.attn(out)
        return out


class Bottleneck(ResidualBlock):
    """1x1 reduce to ``mid_ch`` -> 3x3 conv with ``groups`` (cardinality) and the stride -> 1x1 expand.

    With ``groups=1`` this is He et al.'s bottleneck; with ``groups=C`` and
    ``mid_ch = C * d`` it is the ResNeXt block (Xie et al., 2017, Fig. 3c: C paths of
    width d as one grouped conv). The stride sits on the 3x3 conv (the "ResNet v1.5"
    placement the ResNeXt paper uses). Shortcut: identity, or 1x1 conv + BN.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        mid_ch: int | None = None,
        groups: int = 1,
        avg_down: bool = False,
        attention: str | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        attention_position: str = "before",
        act: str = "relu",
    ):
        super().__init__(out_ch, projection_shortcut(in_ch, out_ch, stride, avg_down),
                         attention, attention_kwargs, attention_position, act)
        mid_ch = mid_ch or out_ch // 4
        self.conv1 = ConvNormAct(in_ch, mid_ch, kernel_size=1, act_layer=act)
        self.conv2 = ConvNormAct(mid_ch, mid_ch, stride, kernel_size=3, groups=groups, act_layer=act)
        self.conv3 = ConvNormAct(mid_ch, out_ch, act=False, kernel_size=1)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(self.conv3(self.conv2(self.conv1(x))), x)


def init_weights(model: nn.Module) -> None:
    """He (fan-out) normal init for convs, BN to identity: the CIFAR ResNet initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarStageNet(nn.Module):
    """3x3 stride-1 stem (no max-pool) -> the given stages -> global pool -> linear head.

    The trunk of every CIFAR network in these families; ``stages`` are built by the
    family (sequences of residual blocks, or CSP cross stages) and ``out_ch`` is the
    channel count of the last one. ``zero_init_last`` calls ``zero_init_last()`` on
    every submodule that has it, so every residual block starts as the identity (the
    default of timm's and torchvision's bottleneck ResNets; without it these deep
    bottleneck stacks are unstable in their first SGD steps).
    """

    def __init__(self, stem_width: int, stages: Sequence[nn.Module], out_ch: int, num_classes: int = 100,
                 act: str = "relu", global_pool: str = "avg", zero_init_last: bool = False):
        super().__init__()
        self.stem = ConvNormAct(3, stem_width, kernel_size=3, act_layer=act)
        self.stages = nn.Sequential(*stages)
        self.pool = GlobalPool(global_pool)
        self.fc = nn.Linear(out_ch, num_classes)
        init_weights(self)
        if zero_init_last:
            for m in self.stages.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def block_stages(make_block, in_ch: int, depths: Sequence[int], widths: Sequence[int],
                 strides: Sequence[int]) -> list[nn.Sequential]:
    """Stages of ``depths[i]`` blocks built by ``make_block(in_ch, out_ch, stride, stage)``.

    The stage's stride goes to its first block.
    """
    stages = []
    for i, (n, w, s) in enumerate(zip(depths, widths, strides, strict=True)):
        blocks = []
        for j in range(n):
            blocks.append(make_block(in_ch, w, s if j == 0 else 1, i))
            in_ch = w
        stages.append(nn.Sequential(*blocks))
    return stages


def resnext29_blocks(depth: int, family: str) -> int:
    """Blocks per stage ``n`` of the CIFAR ResNeXt-29 layout: depth = 9n + 2 (3 stages of n 3-conv blocks)."""
    if (depth - 2) % 9 != 0 or depth < 11:
        raise ValueError(f"CIFAR {family} depth must be 9n+2 (11, 20, 29...), got {depth}")
    return (depth - 2) // 9


def uniform_stage_net(make_block, blocks: int, widths: Sequence[int], stem_width: int, num_classes: int = 100,
                      act: str = "relu", global_pool: str = "avg", zero_init_last: bool = False) -> CifarStageNet:
    """A :class:`CifarStageNet` of ``blocks`` blocks per stage at ``widths``, stride 2 from the second stage on."""
    strides = [1] + [2] * (len(widths) - 1)
    stages = block_stages(make_block, stem_width, [blocks] * len(widths), widths, strides)
    return CifarStageNet(stem_width, stages, widths[-1], num_classes, act, global_pool, zero_init_last)
