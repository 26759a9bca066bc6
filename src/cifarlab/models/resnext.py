"""ResNeXt for CIFAR: Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017.

The paper's own CIFAR network: ResNeXt-29, a 3x3 stem with 64 channels and
no max-pool, three stages of three bottleneck blocks with 256/512/1024 output
channels on 32/16/8 maps (stride 2 on the 3x3 conv of the first block of stages 2
and 3), global average pooling and a linear head; depth = 9n + 2. Each block is
1x1 -> grouped 3x3 (cardinality C, width d per group in the first stage, doubling
per stage) -> 1x1 (``layers.bottleneck.Bottleneck``); shortcuts that change shape
are 1x1 conv + BN (option B, as in the paper).

Each block's last BN scale starts at zero (``zero_init_last``, as in timm's and
torchvision's bottleneck ResNets, after Goyal et al. 2017): the blocks start as the
identity, without which these deep bottleneck stacks diverge in the first SGD steps.
``attention`` / ``attention_position`` insert a module from ``ATTENTION_LAYERS`` in
every block (before the addition by default), as in ``resnet.BasicBlock``.
"""

from __future__ import annotations

from typing import Any, Sequence

from .layers.bottleneck import Bottleneck, CifarStageNet, resnext29_blocks, uniform_stage_net
from .registry import register_model


def resnext(
    depth: int = 29,
    cardinality: int = 8,
    group_width: int = 64,
    widths: Sequence[int] = (256, 512, 1024),
    stem_width: int = 64,
    num_classes: int = 100,
    attention: str | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    attention_position: str = "before",
    act: str = "relu",
    global_pool: str = "avg",
    zero_init_last: bool = True,
) -> CifarStageNet:
    """CIFAR ResNeXt-``depth`` (C x d): bottleneck width ``C * d * 2**stage`` inside ``widths[stage]`` outputs."""
    n = resnext29_blocks(depth, "ResNeXt")

    def make_block(in_ch: int, out_ch: int, stride: int, stage: int) -> Bottleneck:
        return Bottleneck(in_ch, out_ch, stride, mid_ch=cardinality * group_width * 2 ** stage, groups=cardinality,
                          attention=attention, attention_kwargs=attention_kwargs,
                          attention_position=attention_position, act=act)

    return uniform_stage_net(make_block, n, widths, stem_width, num_classes, act, global_pool, zero_init_last)


_PAPER = "Aggregated Residual Transformations for Deep Neural Networks (Xie et al., 2017)"
_ADAPT = ("The paper's own CIFAR layout (3x3 stem, 3 stages of 3 bottlenecks at 32/16/8, widths doubling); "
          "last BN of each block zero-initialised; {why}")

register_model(
    resnext, name="resnext29_2x64d", family="resnext", paper=_PAPER, tier="standard",
    arch=("ResNeXt-29 (2x64d): 3x3 stem 64 ch, no max-pool; 3 stages of 3 bottlenecks, outputs 256/512/1024 ch "
          "on 32/16/8 maps, grouped 3x3 with cardinality 2 at widths 128/256/512; stride 2 on the 3x3 conv of "
          "stages 2-3; 1x1-conv shortcuts; global avg pool; linear head"),
    adaptation=_ADAPT.format(why=(
        "cardinality 2 instead of the headline 8x64d (34.4 M params, above the 30 M standard tier): 2x64d is "
        "in the paper's CIFAR family at its fixed d = 64 (its Fig. 7 sweeps cardinality at d = 64) and lands "
        "at 9.2 M.")),
    recipe={"lr": 0.2},
    depth=29, cardinality=2, group_width=64,
)

register_model(
    resnext, name="resnext29_4x8d", family="resnext", paper=_PAPER, tier="small",
    arch=("ResNeXt-29 (4x8d), quarter width: 3x3 stem 32 ch, no max-pool; 3 stages of 3 bottlenecks, outputs "
          "64/128/256 ch on 32/16/8 maps, grouped 3x3 with cardinality 4 at widths 32/64/128; stride 2 on the "
          "3x3 conv of stages 2-3; 1x1-conv shortcuts; global avg pool; linear head"),
    adaptation=_ADAPT.format(why=(
        "all widths divided by 4 (stem 32, outputs 64/128/256) and d = 8, to land in the small tier beside "
        "ResNet-56 while keeping the paper's bottleneck-to-output ratio (C*d = out/2).")),
    depth=29, cardinality=4, group_width=8, widths=(64, 128, 256), stem_width=32,
)
