"""Ghost networks: Ghost-ResNets, GhostECA-ResNets and a CIFAR GhostNet.

Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020.

- ``ghost_resnet20/56``: the CIFAR ResNet with its 3x3 convs replaced by Ghost
  modules (``conv="ghost"``, 3x3 primary conv, s = 2, d = 3, ``replace="both"``),
  the paper's Ghost-ResNet-56 (§4.1). ``replace="conv1"|"conv2"`` and
  ``conv_kwargs={"ratio": 3, "dw_size": 5}`` configure the Ghost ablations.
- ``ghost_eca_resnet20/56/18``: the same with ``conv="ghost_eca"`` (ECA on the
  intrinsic maps by default; ``conv_kwargs={"eca_position": "output"}``).
- ``ghostnet`` / ``ghostnet_050``: GhostNet 1.0x / 0.5x built from Ghost
  bottlenecks, scaled for 32x32 (see :class:`GhostNet`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from .layers import GlobalPool
from .layers.conv import ConvNormAct
from .layers.ghost import GhostBottleneck, make_divisible
from .registry import register_model
from .resnet import describe_resnet, resnet, wide_resnet18

# GhostNet 1.0x (paper Table 7): per stage, rows of
# (dw kernel, expansion width, output width, SE ratio, stride).
# The ImageNet net has stride 2 in the stem and in the first row of stages 2-5
# (total 32); here the stem and stage 2 keep stride 1, so 32x32 ends at 4x4.
GHOSTNET_CFG: tuple[tuple[tuple[int, int, int, float, int], ...], ...] = (
    ((3, 16, 16, 0.0, 1),),
    ((3, 48, 24, 0.0, 1), (3, 72, 24, 0.0, 1)),
    ((5, 72, 40, 0.25, 2), (5, 120, 40, 0.25, 1)),
    ((3, 240, 80, 0.0, 2), (3, 200, 80, 0.0, 1), (3, 184, 80, 0.0, 1), (3, 184, 80, 0.0, 1),
     (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2), (5, 960, 160, 0.0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0.0, 1),
     (5, 960, 160, 0.25, 1)),
)


class GhostNet(nn.Module):
    """GhostNet for 32x32 inputs: 3x3 stem, five stages of Ghost bottlenecks, 1x1 conv, pooled MLP head.

    Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020 (§3.3,
    Table 7), with every channel count scaled by ``width`` (rounded to multiples
    of 4) as in the paper. Differences for 32x32: the 3x3 stem and the first block
    of stage 2 have stride 1 instead of 2, so the stages see 32/32/16/8/4 maps
    instead of 112/56/28/14/7; the 5x5 depthwise kernels are kept (with padding 2
    they cover a whole 4x4 map in stage 5). Head as in the paper: global pool,
    FC to 1280 (the paper's 1x1 conv on the pooled vector), ReLU, dropout, linear.
    """

    def __init__(
        self,
        cfg: Sequence[Sequence[tuple[int, int, int, float, int]]] = GHOSTNET_CFG,
        num_classes: int = 100,
        width: float = 1.0,
        head_dim: int = 1280,
        drop_rate: float = 0.2,
        ratio: int = 2,
        dw_size: int = 3,
        global_pool: str = "avg",
    ):
        super().__init__()
        stem_ch = make_divisible(16 * width, 4)
        self.stem = ConvNormAct(3, stem_ch, stride=1, kernel_size=3)
        stages, in_ch = [], stem_ch
        for rows in cfg:
            blocks = []
            for k, exp, c, se_ratio, s in rows:
                out_ch, mid_ch = make_divisible(c * width, 4), make_divisible(exp * width, 4)
                blocks.append(GhostBottleneck(in_ch, mid_ch, out_ch, k, s, se_ratio, ratio, dw_size))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = make_divisible(cfg[-1][-1][1] * width, 4)
        self.final_conv = ConvNormAct(in_ch, self.num_features, kernel_size=1)
        self.pool = GlobalPool(global_pool)
        self.head = nn.Sequential(nn.Linear(self.num_features, head_dim), nn.ReLU(inplace=True), nn.Dropout(drop_rate))
        self.fc = nn.Linear(head_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head(self.pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def ghostnet(num_classes: int = 100, **kwargs: Any) -> GhostNet:
    """GhostNet at the given ``width`` (1.0 by default) for 32x32 inputs."""
    return GhostNet(num_classes=num_classes, **kwargs)


_PAPER = "GhostNet: More Features from Cheap Operations (Han et al., 2020)"
_ECA_PAPER = ("GhostNet: More Features from Cheap Operations (Han et al., 2020) + ECA-Net: Efficient Channel "
              "Attention for Deep Convolutional Neural Networks (Wang et al., 2020)")
_GHOST_UNIT = ("Both 3x3 convs of every block are Ghost modules (3x3 primary conv to ceil(C/2) maps + 3x3 "
               "depthwise cheap op, s = 2, d = 3); the stem stays a plain conv.")
_GHOST_ECA_UNIT = ("Both 3x3 convs of every block are GhostECA modules: Ghost modules (s = 2, d = 3) with ECA "
                   "(adaptive k) on the intrinsic maps, before the cheap op.")
_GHOST_ADAPT = "The paper's own CIFAR Ghost-ResNet (§4.1); nothing changed."
_GHOST_ECA_ADAPT = ("A combination studied by this project; ECA's k is 3 on every stage (ECA sees 8/16/32 "
                    "intrinsic channels, or 16/32/64 with eca_position='output').")

register_model(
    resnet, name="ghost_resnet20", family="ghost", paper=_PAPER, tier="small",
    arch=describe_resnet(20, _GHOST_UNIT), adaptation=_GHOST_ADAPT, depth=20, conv="ghost",
)
register_model(
    resnet, name="ghost_resnet56", family="ghost", paper=_PAPER, tier="small",
    arch=describe_resnet(56, _GHOST_UNIT), adaptation=_GHOST_ADAPT, depth=56, conv="ghost",
)
register_model(
    resnet, name="ghost_eca_resnet20", family="ghost_eca", paper=_ECA_PAPER, tier="small",
    arch=describe_resnet(20, _GHOST_ECA_UNIT), adaptation=_GHOST_ECA_ADAPT, depth=20, conv="ghost_eca",
)
register_model(
    resnet, name="ghost_eca_resnet56", family="ghost_eca", paper=_ECA_PAPER, tier="small",
    arch=describe_resnet(56, _GHOST_ECA_UNIT), adaptation=_GHOST_ECA_ADAPT, depth=56, conv="ghost_eca",
)
register_model(
    wide_resnet18, name="ghost_eca_resnet18", family="ghost_eca", paper=_ECA_PAPER, tier="standard",
    arch=describe_resnet(None, _GHOST_ECA_UNIT),
    adaptation="A combination studied by this project; ECA's k is 3/3/5/5 on the 32/64/128/256 intrinsic "
               "channels of the four stages (3/5/5/5 with eca_position='output').",
    recipe={"lr": 0.2}, conv="ghost_eca",
)

_GHOSTNET_ARCH = ("3x3 stride-1 conv stem {stem} ch; 16 Ghost bottlenecks in 5 stages of [1,2,2,6,5] blocks at "
                  "{widths} ch on 32/32/16/8/4 maps (expansions {exps}; SE in stages 3-5 where the paper has it); "
                  "1x1 conv to {final} ch; global avg pool; FC 1280 + ReLU + dropout 0.2; linear head.")
_GHOSTNET_ADAPT = ("ImageNet GhostNet with the stem and the first block of stage 2 at stride 1 instead of 2 "
                   "(total stride 8, so 32x32 ends at 4x4 rather than 1x1); 5x5 depthwise kernels kept, as "
                   "with padding 2 they still fit the 8x8 and 4x4 maps.")

register_model(
    ghostnet, name="ghostnet", family="ghost", paper=_PAPER, tier="standard",
    arch=_GHOSTNET_ARCH.format(stem=16, widths="16/24/40/112/160", exps="16 to 960", final=960),
    adaptation="GhostNet 1.0x. " + _GHOSTNET_ADAPT,
    recipe={"lr": 0.2}, width=1.0,
)
register_model(
    ghostnet, name="ghostnet_050", family="ghost", paper=_PAPER, tier="small",
    arch=_GHOSTNET_ARCH.format(stem=8, widths="8/12/20/56/80", exps="8 to 480", final=480),
    adaptation="GhostNet 0.5x (all widths halved, rounded to multiples of 4). " + _GHOSTNET_ADAPT,
    recipe={"lr": 0.2}, width=0.5,
)
