"""CIFAR ResNets: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (§4.2).

The CIFAR network: a 3x3 stem with 16 channels and no max-pool, three stages of
BasicBlocks at 16/32/64 channels on 32/16/8 feature maps (stride 2 at the start of
stages 2 and 3), global average pooling and a linear head; depth 6n+2 for
n = 3/5/7/9/18 (ResNet-20/32/44/56/110). Shortcuts that change shape use
option A (stride-2 subsampling + zero-padded channels, parameter-free, as in the
paper) by default, or option B (1x1 conv + BN).

The same class builds the wide CIFAR ResNet-18 (64/128/256/512 channels, two
blocks per stage, 3x3 stem, 32/16/8/4 maps, option-B shortcuts), the usual
stronger CIFAR baseline.

Switches shared by every variant (never a copied network):
``attention`` inserts a module from ``layers.ATTENTION_LAYERS`` into every
BasicBlock, ``attention_position="before"`` (on the residual branch, before the
addition, as in SE/ECA/CA) or ``"after"`` (on the block output, after addition
and activation); ``conv`` with ``replace`` swaps conv1, conv2 or both for a unit
from ``layers.CONV_LAYERS`` (e.g. Ghost modules); ``act`` and ``global_pool``
pick the activation and the final pooling.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import GlobalPool, create_attention, create_conv
from .layers.activations import make_act
from .registry import register_model


class ShortcutA(nn.Module):
    """Option A: subsample by the stride and zero-pad the new channels (no parameters)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


def _shortcut(in_ch: int, out_ch: int, stride: int, option: str) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    if option == "A":
        return ShortcutA(in_ch, out_ch, stride)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 conv units and a shortcut; optional attention before or after the addition."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        shortcut: str = "A",
        conv1: str = "conv",
        conv2: str = "conv",
        conv_kwargs: dict[str, Any] | None = None,
        attention: str | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        attention_position: str = "before",
        act: str = "relu",
    ):
        super().__init__()
        # conv_kwargs configure the replacement unit (e.g. Ghost ratio); plain convs take only the activation
        ck1 = {"act_layer": act, **({} if conv1 == "conv" else conv_kwargs or {})}
        ck2 = {"act_layer": act, **({} if conv2 == "conv" else conv_kwargs or {})}
        self.conv1 = create_conv(conv1, in_ch, out_ch, stride=stride, act=True, **ck1)
        self.conv2 = create_conv(conv2, out_ch, out_ch, stride=1, act=False, **ck2)
        self.attn = create_attention(attention, out_ch, **(attention_kwargs or {})) if attention else None
        self.attention_position = attention_position
        self.shortcut = _shortcut(in_ch, out_ch, stride, shortcut)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        if self.attn is not None and self.attention_position == "before":
            out = self.attn(out)
        out = self.act(out + self.shortcut(x))
        if self.attn is not None and self.attention_position == "after":
            out = self.attn(out)
        return out


class CifarResNet(nn.Module):
    def __init__(
        self,
        blocks_per_stage: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 100,
        shortcut: Literal["A", "B"] = "A",
        conv: str = "conv",
        replace: Literal["conv1", "conv2", "both"] = "both",
        conv_kwargs: dict[str, Any] | None = None,
        attention: str | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        attention_position: Literal["before", "after"] = "before",
        act: str = "relu",
        global_pool: str = "avg",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if len(blocks_per_stage) != len(widths):
            raise ValueError("blocks_per_stage and widths must have the same length")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if attention_position not in ("before", "after"):
            raise ValueError(f"attention_position must be 'before' or 'after', got {attention_position!r}")
        if replace not in ("conv1", "conv2", "both"):
            raise ValueError(f"replace must be 'conv1', 'conv2' or 'both', got {replace!r}")
        conv1 = conv if replace in ("conv1", "both") else "conv"
        conv2 = conv if replace in ("conv2", "both") else "conv"
        self.stem = create_conv("conv", 3, widths[0], stride=1, act=True, act_layer=act)
        stages = []
        in_ch = widths[0]
        for i, (n, w) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(
                    in_ch, w, stride, shortcut, conv1, conv2, conv_kwargs,
                    attention, attention_kwargs, attention_position, act,
                ))
                in_ch = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = GlobalPool(global_pool)
        self.fc = nn.Linear(in_ch, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock) and hasattr(m.conv2, "bn"):
                    nn.init.zeros_(m.conv2.bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


CIFAR_WIDTHS = (16, 32, 64)
WIDE_BLOCKS, WIDE_WIDTHS = (2, 2, 2, 2), (64, 128, 256, 512)


def resnet(depth: int = 20, num_classes: int = 100, **kwargs: Any) -> CifarResNet:
    """A CIFAR ResNet of depth 6n+2 at 16/32/64 channels."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110...), got {depth}")
    n = (depth - 2) // 6
    return CifarResNet((n, n, n), CIFAR_WIDTHS, num_classes=num_classes, **kwargs)


def wide_resnet18(num_classes: int = 100, **kwargs: Any) -> CifarResNet:
    """ResNet-18 for CIFAR: 3x3 stem at 64 channels, no max-pool, 64/128/256/512, option B."""
    kwargs.setdefault("shortcut", "B")
    return CifarResNet(WIDE_BLOCKS, WIDE_WIDTHS, num_classes=num_classes, **kwargs)


def describe_resnet(depth: int | None = None, unit: str = "") -> str:
    """The registry's architecture text of a CIFAR ResNet-``depth`` (option-A shortcuts) or, with None, of the wide
    ResNet-18 (option B); ``unit`` says what an entry puts into the BasicBlocks or in place of their convs."""
    if depth is None:
        title, blocks, widths, shortcut = "Wide CIFAR ResNet-18", WIDE_BLOCKS, WIDE_WIDTHS, "option-B (1x1 conv + BN)"
    else:
        n = (depth - 2) // 6
        title, blocks, widths, shortcut = f"CIFAR ResNet-{depth}", (n,) * 3, CIFAR_WIDTHS, "option-A (zero-padding)"
    maps = "/".join(str(32 >> i) for i in range(len(widths)))
    text = (f"{title}: 3x3 conv stem {widths[0]} ch, no max-pool; {len(blocks)} stages of {blocks[0]} BasicBlocks "
            f"at {'/'.join(map(str, widths))} ch on {maps} maps, stride 2 entering stages 2-{len(blocks)}; "
            f"{shortcut} shortcuts; global avg pool; linear head.")
    return f"{text} {unit}" if unit else text


_PAPER = "Deep Residual Learning for Image Recognition (He et al., 2016)"
_CIFAR_ADAPT = "The paper's own CIFAR network (§4.2); nothing changed."

for _name, _depth in (("resnet20", 20), ("resnet32", 32), ("resnet44", 44), ("resnet56", 56), ("resnet110", 110)):
    register_model(
        resnet, name=_name, family="resnet", paper=_PAPER, tier="small",
        arch=describe_resnet(_depth), adaptation=_CIFAR_ADAPT, depth=_depth,
    )

register_model(
    wide_resnet18, name="resnet18", family="resnet", paper=_PAPER, tier="standard",
    arch=describe_resnet(None),
    adaptation="ImageNet ResNet-18 with the 7x7/2 stem and max-pool replaced by a 3x3/1 stem (the common CIFAR form).",
    recipe={"lr": 0.2},
)
