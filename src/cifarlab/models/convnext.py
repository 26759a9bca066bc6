"""ConvNeXt for CIFAR and the step-by-step "modernisation" of a bottleneck ResNet into it.

Liu, Mao, Wu, Feichtenhofer, Darrell, Xie, "A ConvNet for the 2020s", CVPR 2022.

:class:`ConvNeXt` is the paper's network: a patchify stem (p x p conv, stride p,
then LayerNorm), four stages of :class:`~.layers.convnext_block.ConvNeXtBlock`
separated by downsampling layers (LayerNorm + 2x2 conv, stride 2), global average
pooling, LayerNorm and a linear head.

What changes for 32x32 inputs: the ImageNet stem is a 4x4 patchify (224 -> 56,
stages at 56/28/14/7). Here the patch is 2x2, so the stages see 16/8/4/2 maps
(the last stage, like ImageNet's 7x7, is a few positions wide). A kxk depthwise
kernel on an HxH map only ever has 2H-1 useful taps per axis (the rest read zero
padding), so each stage's kernel is ``min(k, 2H - 1)``: the 7x7 is kept on the
16x16, 8x8 and 4x4 maps (on 4x4 it is exactly global) and becomes 3x3 on 2x2.

:class:`ModernResNet` is ONE configurable network that walks the paper's §2 route
from a bottleneck ResNet to ConvNeXt, each step a switch; the twelve cumulative
settings are registered as ``convnext_step0_resnet`` ... ``convnext_step11_downsample``
(:func:`modernization_steps` lists them in order).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
import torch.nn as nn

from .layers.activations import make_act
from .layers.convnext_block import ConvNeXtBlock
from .layers.norm import DropPath, LayerNorm2d, drop_path_rates
from .layers.patchify import HierarchicalTrunk, init_trunc_normal, ln_downsample, patchify_stem
from .registry import register_model

_PAPER = "A ConvNet for the 2020s (Liu et al., 2022)"
# AdamW, wd 0.05, warm-up and label smoothing 0.1 as in the paper. The paper's lr is 4e-3 at batch
# 4096 (ImageNet); for CIFAR the per-sample rate is taken higher, 4e-3 * bs / 1024 = 2e-3 at batch 512.
# Every modernisation step trains with this same recipe, as in the paper's §2.
_RECIPE = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 10, "label_smoothing": 0.1}


def stage_kernel_sizes(kernel_size: int, resolutions: Sequence[int]) -> tuple[int, ...]:
    """Per-stage depthwise kernel: ``min(k, 2H - 1)`` on an HxH map (larger taps only see padding)."""
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    return tuple(min(kernel_size, 2 * h - 1) for h in resolutions)


def _stage_resolutions(img_size: int, stem_stride: int, num_stages: int) -> tuple[int, ...]:
    res = tuple(img_size // stem_stride // 2**i for i in range(num_stages))
    if res[-1] < 1:
        raise ValueError(f"{num_stages} stages after a stride-{stem_stride} stem "
                         f"do not fit a {img_size}x{img_size} input")
    return res


class ConvNeXtStage(nn.Module):
    """An optional downsampling layer (LayerNorm + 2x2 conv, stride 2) followed by ConvNeXt blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, kernel_size: int, downsample: bool,
                 drop_paths: Sequence[float], ls_init_value: float | None, radix: int):
        super().__init__()
        self.downsample = ln_downsample(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(dim, kernel_size, ls_init_value=ls_init_value, drop_path=drop_paths[j], radix=radix)
            for j in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(HierarchicalTrunk):
    """ConvNeXt (Liu et al., 2022) for 32x32 inputs; see the module docstring for what differs.

    ``radix > 1`` swaps every block's depthwise conv for split attention over
    ``radix`` depthwise large-kernel convs (the "ConvNeXt large kernel + split
    attention" combination). Drop-path rates rise linearly from 0 to
    ``drop_path_rate`` over the blocks, as in the paper.
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        num_classes: int = 100,
        patch_size: int = 2,
        kernel_size: int = 7,
        img_size: int = 32,
        drop_path_rate: float = 0.0,
        ls_init_value: float | None = 1e-6,
        radix: int = 1,
    ):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError("depths and dims must have the same length")
        self.resolutions = _stage_resolutions(img_size, patch_size, len(dims))
        self.kernel_sizes = stage_kernel_sizes(kernel_size, self.resolutions)
        self.stem = patchify_stem(dims[0], patch_size)
        rates = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            stages.append(ConvNeXtStage(
                dims[max(i - 1, 0)], dim, depth, self.kernel_sizes[i], downsample=i > 0,
                drop_paths=rates[i], ls_init_value=ls_init_value, radix=radix,
            ))
        self.stages = nn.Sequential(*stages)
        self._finish(dims[-1], num_classes)


def convnext(num_classes: int = 100, **kwargs: Any) -> ConvNeXt:
    """A CIFAR ConvNeXt; ``depths``, ``dims``, ``patch_size``, ``kernel_size``, ``radix``... as in :class:`ConvNeXt`."""
    return ConvNeXt(num_classes=num_classes, **kwargs)


# --------------------------------------------------------------------------------------------
# The modernisation route (paper §2): one configurable network, one switch per step.
# --------------------------------------------------------------------------------------------

def _make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":
        return LayerNorm2d(channels)
    raise ValueError(f"norm must be 'bn' or 'ln', got {kind!r}")


class ModernBlock(nn.Module):
    """A residual block that is a ResNet bottleneck, a ConvNeXt block, or any step between.

    Three convs on the branch: by default 1x1 (in -> hidden), kxk (hidden, stride),
    1x1 (hidden -> out); ``spatial_first`` moves the kxk conv to the front
    (kxk on ``in`` channels, then 1x1 in -> hidden, 1x1 hidden -> out).
    ``depthwise`` makes the kxk conv depthwise (groups = its channels).
    Norms: after every conv, or after the first only (``fewer_norms``). Activations:
    after the first two convs and after the addition, or only after the second conv
    (``fewer_acts``: the single GELU between the two 1x1s of a ConvNeXt block).
    A conv followed by BatchNorm has no bias. ``ls_init_value`` adds layer scale.
    A projection shortcut (1x1 conv, stride, norm) is used when the shape changes.
    """

    def __init__(self, in_ch: int, out_ch: int, hidden: int, stride: int = 1, kernel_size: int = 3,
                 depthwise: bool = False, spatial_first: bool = False, act: str = "relu",
                 fewer_acts: bool = False, norm: str = "bn", fewer_norms: bool = False,
                 ls_init_value: float | None = None, drop_path: float = 0.0):
        super().__init__()
        k = kernel_size
        if spatial_first:
            specs = [(in_ch, in_ch, k, stride), (in_ch, hidden, 1, 1), (hidden, out_ch, 1, 1)]
        else:
            specs = [(in_ch, hidden, 1, 1), (hidden, hidden, k, stride), (hidden, out_ch, 1, 1)]
        norm_at = {0} if fewer_norms else {0, 1, 2}
        act_at = {1} if fewer_acts else {0, 1}
        layers: list[nn.Module] = []
        for i, (ci, co, ks, s) in enumerate(specs):
            groups = ci if (ks > 1 and depthwise) else 1
            layers.append(nn.Conv2d(ci, co, ks, s, ks // 2, groups=groups, bias=not (i in norm_at and norm == "bn")))
            if i in norm_at:
                layers.append(_make_norm(norm, co))
            if i in act_at:
                layers.append(make_act(act))
        self.branch = nn.Sequential(*layers)
        self.gamma = nn.Parameter(torch.full((out_ch,), ls_init_value)) if ls_init_value is not None else None
        self.drop_path = DropPath(drop_path)
        if stride == 1 and in_ch == out_ch:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=norm != "bn"), _make_norm(norm, out_ch)
            )
        self.act = nn.Identity() if fewer_acts else make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return self.act(self.drop_path(y) + self.shortcut(x))


class ModernResNet(nn.Module):
    """The paper's §2 route from a bottleneck ResNet to ConvNeXt as switches of one network.

    Channel plan: stage i has width ``w_i = width * 2**i`` and the stem outputs ``w_0``
    channels. A bottleneck block maps to ``4 w_i`` channels through a ``w_i`` hidden
    width (ResNet-50: w = 64/128/256/512, outputs 256..2048); ``inverted_bottleneck``
    makes the block ``w_i`` wide with a ``4 w_i`` hidden width (ConvNeXt: 96..768, hidden x4).

    Switches, in the paper's order (defaults = the ResNet):
    ``depths`` (3,4,6,3) -> (3,3,9,3) [stage ratio]; ``stem`` "resnet" (3x3 conv, norm,
    act, 3x3/2 max-pool) -> "patchify" (2x2/2 conv, norm); ``depthwise`` (kxk conv
    groups = channels; the paper widens 64 -> 96 in the same step, here ``width``
    x1.5); ``inverted_bottleneck``; ``spatial_first`` (depthwise conv moved up);
    ``kernel_size`` 3 -> 7; ``act`` "relu" -> "gelu"; ``fewer_acts``; ``fewer_norms``;
    ``norm`` "bn" -> "ln"; ``separate_downsample`` (stride-2 convs leave the blocks for
    LayerNorm + 2x2/2 conv layers between stages, plus a LayerNorm after global pooling).

    32x32 adaptation: the ImageNet ResNet stem (7x7/2 conv + 3x3/2 max-pool) reduces by 4
    like the 4x4 patchify stem that replaces it; here both reduce by 2 (3x3/1 conv + 3x3/2
    max-pool, or a 2x2/2 patchify), so every step runs its stages at 16/8/4/2 and the
    patchify step changes only the stem. Kernels are capped at 2H-1 per stage
    (7 -> 7/7/7/3). With all switches on and ``ls_init_value=1e-6`` the network
    computes exactly :class:`ConvNeXt`'s function (blocks use 1x1 convs and a
    channels-first LayerNorm instead of linears on channels-last data).
    """

    def __init__(
        self,
        num_classes: int = 100,
        depths: Sequence[int] = (3, 4, 6, 3),
        width: int = 24,
        stem: Literal["resnet", "patchify"] = "resnet",
        depthwise: bool = False,
        inverted_bottleneck: bool = False,
        spatial_first: bool = False,
        kernel_size: int = 3,
        act: str = "relu",
        fewer_acts: bool = False,
        fewer_norms: bool = False,
        norm: Literal["bn", "ln"] = "bn",
        separate_downsample: bool = False,
        img_size: int = 32,
        drop_path_rate: float = 0.0,
        ls_init_value: float | None = None,
    ):
        super().__init__()
        widths = [width * 2**i for i in range(len(depths))]
        dims = widths if inverted_bottleneck else [4 * w for w in widths]
        hiddens = [4 * w for w in widths] if inverted_bottleneck else widths
        self.resolutions = _stage_resolutions(img_size, 2, len(depths))
        self.kernel_sizes = stage_kernel_sizes(kernel_size, self.resolutions)
        if stem == "resnet":
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 3, 1, 1, bias=norm != "bn"), _make_norm(norm, widths[0]),
                make_act(act), nn.MaxPool2d(3, 2, 1),
            )
        elif stem == "patchify":
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 2, 2), _make_norm(norm, widths[0]))
        else:
            raise ValueError(f"stem must be 'resnet' or 'patchify', got {stem!r}")
        block_kw = dict(depthwise=depthwise, spatial_first=spatial_first, act=act, fewer_acts=fewer_acts,
                        norm=norm, fewer_norms=fewer_norms, ls_init_value=ls_init_value)
        rates = drop_path_rates(drop_path_rate, depths)
        stages, in_ch = [], widths[0]
        for i, depth in enumerate(depths):
            layers: list[nn.Module] = []
            stride = 2 if i > 0 else 1
            if separate_downsample and i > 0:
                layers.append(nn.Sequential(_make_norm(norm, in_ch), nn.Conv2d(in_ch, dims[i], 2, 2)))
                in_ch, stride = dims[i], 1
            for j in range(depth):
                layers.append(ModernBlock(in_ch, dims[i], hiddens[i], stride if j == 0 else 1,
                                          self.kernel_sizes[i], drop_path=rates[i][j], **block_kw))
                in_ch = dims[i]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(in_ch, eps=1e-6) if separate_downsample else nn.Identity()
        self.head = nn.Linear(in_ch, num_classes)
        init_trunc_normal(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def modern_resnet(num_classes: int = 100, **kwargs: Any) -> ModernResNet:
    """A network on the ResNet -> ConvNeXt route; switches as in :class:`ModernResNet`."""
    return ModernResNet(num_classes=num_classes, **kwargs)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_CONVNEXT_ADAPT = (
    "2x2 patchify stem instead of 4x4 (stages at 16/8/4/2 instead of 56/28/14/7); depthwise kernel "
    "min(7, 2H-1) per stage = 7/7/7/3 (on 4x4 a 7x7 is exactly global, on 2x2 only 3x3 taps "
    "see data); otherwise the paper's block, LN eps 1e-6, layer scale 1e-6, linear drop-path schedule."
)

register_model(
    convnext, name="convnext_small_cifar", family="convnext", paper=_PAPER, tier="small",
    arch=("2x2/2 patchify stem + LN; depths 2/2/6/2 (1:1:3:1) at dims 24/48/96/192, mlp ratio 4; "
          "stages on 16/8/4/2 maps; dw kernels 7/7/7/3; LN + 2x2/2 conv between stages; "
          "global avg pool, LN, linear head"),
    adaptation=_CONVNEXT_ADAPT + " Width 1/4 and depth 2/3 of ConvNeXt-T, for the small tier.",
    recipe=_RECIPE, depths=(2, 2, 6, 2), dims=(24, 48, 96, 192), drop_path_rate=0.05,
)

register_model(
    convnext, name="convnext_tiny_cifar", family="convnext", paper=_PAPER, tier="standard",
    arch=("ConvNeXt-T: 2x2/2 patchify stem + LN; depths 3/3/9/3 at dims 96/192/384/768, mlp ratio 4; "
          "stages on 16/8/4/2 maps; dw kernels 7/7/7/3; LN + 2x2/2 conv between stages; "
          "global avg pool, LN, linear head"),
    adaptation=_CONVNEXT_ADAPT + " ConvNeXt-T's widths and depths unchanged.",
    recipe=_RECIPE, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), drop_path_rate=0.1,
)

register_model(
    convnext, name="convnext_splitattn", family="convnext", tier="small",
    paper=_PAPER + " + ResNeSt: Split-Attention Networks (Zhang et al., 2022)",
    arch=("convnext_small_cifar with each block's 7x7 depthwise conv replaced by split attention over "
          "radix 2 depthwise kxk convs (one depthwise conv with channel multiplier 2, global pool, "
          "fc -> ReLU -> fc to 2C logits, softmax over the 2 splits per channel); depths 2/2/6/2 at "
          "24/48/96/192, stages on 16/8/4/2 maps, kernels 7/7/7/3"),
    adaptation=_CONVNEXT_ADAPT + " Split attention is ResNeSt's with cardinality = channels (depthwise).",
    recipe=_RECIPE, depths=(2, 2, 6, 2), dims=(24, 48, 96, 192), drop_path_rate=0.05, radix=2,
)

# Each step: (registry name, what it changes, switch values it sets). Cumulative: step k
# applies the switches of steps 1..k on top of the ResNet defaults of ModernResNet.
_BASE_WIDTH = 24
_STEPS: list[tuple[str, str, dict[str, Any]]] = [
    ("convnext_step0_resnet", "bottleneck ResNet, BN/ReLU, stage depths 3/4/6/3 (ResNet-50)", {}),
    ("convnext_step1_stage_ratio", "stage compute ratio 1:1:3:1 (depths 3/3/9/3)", {"depths": (3, 3, 9, 3)}),
    ("convnext_step2_patchify", "patchify stem: 2x2/2 conv + norm replaces 3x3 conv + max-pool",
     {"stem": "patchify"}),
    ("convnext_step3_resnextify", "depthwise kxk conv (groups = channels), width x1.5",
     {"depthwise": True, "width": _BASE_WIDTH * 3 // 2}),
    ("convnext_step4_inverted", "inverted bottleneck (block w wide, hidden 4w)", {"inverted_bottleneck": True}),
    ("convnext_step5_dw_up", "depthwise conv moved up, before the 1x1 convs", {"spatial_first": True}),
    ("convnext_step6_kernel", "depthwise kernel 3 -> 7 (capped at 2H-1: 7/7/7/3)", {"kernel_size": 7}),
    ("convnext_step7_gelu", "ReLU -> GELU", {"act": "gelu"}),
    ("convnext_step8_fewer_act", "one activation per block, between the two 1x1 convs", {"fewer_acts": True}),
    ("convnext_step9_fewer_norm", "one norm per block, after the depthwise conv", {"fewer_norms": True}),
    ("convnext_step10_ln", "BatchNorm -> LayerNorm", {"norm": "ln"}),
    ("convnext_step11_downsample", "separate downsampling layers (LN + 2x2/2 conv), LN after pooling = ConvNeXt",
     {"separate_downsample": True}),
]


def modernization_steps() -> list[str]:
    """Registry names of the modernisation steps, in the paper's order (step 0 = ResNet, 11 = ConvNeXt)."""
    return [name for name, _, _ in _STEPS]


def _describe(cfg: dict[str, Any]) -> str:
    widths = [cfg["width"] * 2**i for i in range(4)]
    inverted = cfg.get("inverted_bottleneck", False)
    dims = widths if inverted else [4 * w for w in widths]
    hidden = [4 * w for w in widths] if inverted else widths
    kernels = stage_kernel_sizes(cfg.get("kernel_size", 3), (16, 8, 4, 2))
    stem = "2x2/2 patchify conv + norm" if cfg.get("stem") == "patchify" else "3x3/1 conv, norm, act, 3x3/2 max-pool"
    order = "dw kxk -> 1x1 -> 1x1" if cfg.get("spatial_first") else "1x1 -> kxk -> 1x1"
    down = ("LN + 2x2/2 conv between stages, LN after pooling" if cfg.get("separate_downsample")
            else "stride 2 in the first block of stages 2-4 with 1x1/2 projection shortcuts")
    return (
        f"stem {stem}; depths {'/'.join(map(str, cfg.get('depths', (3, 4, 6, 3))))}; block dims "
        f"{'/'.join(map(str, dims))}, hidden {'/'.join(map(str, hidden))}; branch {order}"
        f"{' (kxk depthwise)' if cfg.get('depthwise') else ''}; kernels {'/'.join(map(str, kernels))}; "
        f"{cfg.get('norm', 'bn').upper()}/{cfg.get('act', 'relu').upper()}"
        f"{', one act' if cfg.get('fewer_acts') else ''}{', one norm' if cfg.get('fewer_norms') else ''}; "
        f"stages on 16/8/4/2 maps; {down}; global avg pool, linear head"
    )


_ABLATION_ADAPT = (
    "CIFAR scale: widths 3/8 of ResNet-50 / ConvNeXt-T (24 -> 36 at the ResNeXt-ify step, as 64 -> 96; "
    "3.4-4.5 M params in every step); "
    "the ResNet stem and the patchify stem both reduce by 2 (the ImageNet ones by 4), so stages run at "
    "16/8/4/2 in every step; kernels capped at 2H-1 (7 -> 7/7/7/3). Every step trains with the same "
    "AdamW recipe, as in the paper's §2; no layer scale in any step (with ls_init_value=1e-6 step 11 is "
    "exactly ConvNeXt)."
)

_cfg: dict[str, Any] = {"width": _BASE_WIDTH}
for _i, (_name, _what, _switches) in enumerate(_STEPS):
    _cfg = {**_cfg, **_switches}
    register_model(
        modern_resnet, name=_name, family="convnext_ablation", paper=_PAPER, tier="standard",
        arch=f"step {_i}: {_what}. " + _describe(_cfg), adaptation=_ABLATION_ADAPT, recipe=_RECIPE,
        drop_path_rate=0.1, **_cfg,
    )
