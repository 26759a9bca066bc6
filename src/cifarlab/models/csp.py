"""CSP-ResNets for CIFAR: Wang et al., "CSPNet: A New Backbone that can Enhance Learning Capability
of CNN", CVPR Workshops 2020.

A cross stage (§3.1): the stage input (after a strided 3x3 conv where the
stage downsamples) goes through a 1x1 conv and is split by channels into two halves;
only the second half goes through the stage's residual blocks and a 1x1 partial
transition, the first half bypasses them; the halves are concatenated and fused by a
second 1x1 transition (the paper's transition -> concat -> transition form, which
its CSPResNe(X)t uses). So the blocks see half the stage's channels and their
gradient never flows through the bypass half.
As in timm's CSPResNet-50 configuration (the reference of the parity test) the 1x1
expansion before the split is linear ("cross-linear"); every other conv is conv + BN + ReLU.

Blocks: the CIFAR ResNet ``BasicBlock`` (identity shortcuts; the stage's own
transitions change the width) or the ``Bottleneck`` with ``bottle_ratio``.
``attention`` inserts a module from ``ATTENTION_LAYERS`` into every block.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
import torch.nn as nn

from .. import CifarlabError
from .layers.bottleneck import Bottleneck, CifarStageNet
from .layers.conv import ConvNormAct
from .registry import register_model
from .resnet import BasicBlock


class CrossStage(nn.Module):
    """[3x3 conv, stride] -> 1x1 to ``expand_ratio * out_ch`` -> split (bypass | blocks + 1x1) -> concat -> 1x1.

    Wang et al., "CSPNet: A New Backbone that can Enhance Learning Capability of CNN",
    2020. The ``depth`` blocks run at half the expanded width; ``block="bottleneck"``
    uses a bottleneck of width ``bottle_ratio`` times that. ``cross_linear`` leaves the
    1x1 expansion without activation.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        depth: int = 1,
        block: Literal["basic", "bottleneck"] = "basic",
        expand_ratio: float = 1.0,
        bottle_ratio: float = 0.5,
        cross_linear: bool = True,
        attention: str | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        attention_position: str = "before",
        act: str = "relu",
    ):
        super().__init__()
        exp_ch = round(out_ch * expand_ratio)
        if exp_ch % 2:
            raise CifarlabError(f"cross stage: expanded width {exp_ch} must be even to split in halves")
        if block not in ("basic", "bottleneck"):
            raise CifarlabError(f"cross stage block must be 'basic' or 'bottleneck', got {block!r}")
        self.half = half = exp_ch // 2
        attn = dict(attention=attention, attention_kwargs=attention_kwargs, attention_position=attention_position)
        self.conv_down = (ConvNormAct(in_ch, in_ch, stride, kernel_size=3, act_layer=act) if stride > 1
                          else nn.Identity())
        self.conv_exp = ConvNormAct(in_ch, exp_ch, act=not cross_linear, kernel_size=1, act_layer=act)
        if block == "basic":
            blocks = [BasicBlock(half, half, act=act, **attn) for _ in range(depth)]
        else:
            blocks = [Bottleneck(half, half, mid_ch=round(half * bottle_ratio), act=act, **attn) for _ in range(depth)]
        self.blocks = nn.Sequential(*blocks)
        self.conv_transition_b = ConvNormAct(half, half, kernel_size=1, act_layer=act)
        self.conv_transition = ConvNormAct(exp_ch, out_ch, kernel_size=1, act_layer=act)

    def zero_init_last(self) -> None:
        """Zero the last BN of every block (BasicBlocks are resnet.py's, without this method)."""
        for b in self.blocks:
            nn.init.zeros_((b.conv3 if isinstance(b, Bottleneck) else b.conv2).bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_exp(self.conv_down(x))
        bypass, part = x.split(self.half, dim=1)
        part = self.conv_transition_b(self.blocks(part))
        return self.conv_transition(torch.cat([bypass, part], dim=1))


def csp_resnet(
    depths: Sequence[int] = (9, 9, 9),
    widths: Sequence[int] = (32, 64, 128),
    block: Literal["basic", "bottleneck"] = "basic",
    stem_width: int = 32,
    expand_ratio: float = 1.0,
    bottle_ratio: float = 0.5,
    cross_linear: bool = True,
    num_classes: int = 100,
    attention: str | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    attention_position: str = "before",
    act: str = "relu",
    global_pool: str = "avg",
    zero_init_last: bool = False,
) -> CifarStageNet:
    """CSP-ResNet: 3x3 stem, one cross stage per entry of ``depths``/``widths`` (stride 2 from the second on)."""
    if len(depths) != len(widths):
        raise ValueError("depths and widths must have the same length")
    stages, in_ch = [], stem_width
    for i, (d, w) in enumerate(zip(depths, widths, strict=True)):
        stages.append(CrossStage(in_ch, w, 1 if i == 0 else 2, d, block, expand_ratio, bottle_ratio, cross_linear,
                                 attention, attention_kwargs, attention_position, act))
        in_ch = w
    return CifarStageNet(stem_width, stages, in_ch, num_classes, act, global_pool, zero_init_last)


_PAPER = "CSPNet: A New Backbone that can Enhance Learning Capability of CNN (Wang et al., 2020)"
_STAGE = ("each stage: [3x3 stride-2 conv] -> linear 1x1 -> split in halves -> {blocks} on one half + 1x1, the "
          "other half bypasses -> concat -> 1x1 transition")

register_model(
    csp_resnet, name="csp_resnet56", family="csp", paper=_PAPER, tier="small",
    arch=("CSP-ResNet-56: 3x3 stem 32 ch, no max-pool; 3 cross stages, outputs 32/64/128 ch on 32/16/8 maps, "
          "9 BasicBlocks per stage at 16/32/64 ch; " + _STAGE.format(blocks="BasicBlocks")
          + "; global avg pool; linear head"),
    adaptation=("CIFAR ResNet-56 with each stage made a cross stage: stage widths doubled to 32/64/128 so that "
                "the blocks, on half the channels, are exactly ResNet-56's 16/32/64 blocks; the strided 3x3 conv "
                "of the cross stage replaces the strided first block conv. 3x3 stride-1 stem, no max-pool."),
    depths=(9, 9, 9), widths=(32, 64, 128), block="basic", stem_width=32,
)

register_model(
    csp_resnet, name="csp_resnet18", family="csp", paper=_PAPER, tier="standard",
    arch=("CSP-ResNet-18: 3x3 stem 64 ch, no max-pool; 4 cross stages, outputs 64/128/256/512 ch on "
          "32/16/8/4 maps, 2 BasicBlocks per stage at 32/64/128/256 ch; " + _STAGE.format(blocks="BasicBlocks")
          + "; global avg pool; linear head"),
    adaptation=("The wide CIFAR ResNet-18 (64/128/256/512, 3x3 stem, no max-pool) with each stage a cross stage: "
                "the blocks see half of each stage's width, as CSPNet does to ResNet stages, which is what cuts "
                "its cost below ResNet-18's."),
    recipe={"lr": 0.2},
    depths=(2, 2, 2, 2), widths=(64, 128, 256, 512), block="basic", stem_width=64,
)

register_model(
    csp_resnet, name="csp_resnet50", family="csp", paper=_PAPER, tier="standard",
    arch=("CSPResNet-50: 3x3 stem 64 ch, no max-pool; 4 cross stages of 3/3/5/2 bottlenecks, outputs "
          "128/256/512/1024 ch on 32/16/8/4 maps, expanded to 256/512/1024/2048 before the split, bottlenecks "
          "of 128/256/512/1024 ch with 64/128/256/512 inner width; " + _STAGE.format(blocks="bottlenecks")
          + "; global avg pool; linear head"),
    adaptation=("The paper's CSPResNet-50 stages (timm's cspresnet50 configuration: expansion 2, bottleneck "
                "ratio 1/2, linear 1x1 before the split) with the ImageNet 7x7 stride-2 stem and max-pool replaced "
                "by a 3x3 stride-1 stem, so the four stages run on 32/16/8/4 maps; last BN of each bottleneck "
                "zero-initialised (unstable first SGD steps otherwise)."),
    recipe={"lr": 0.2},
    depths=(3, 3, 5, 2), widths=(128, 256, 512, 1024), block="bottleneck", stem_width=64,
    expand_ratio=2.0, bottle_ratio=0.5, zero_init_last=True,
)
