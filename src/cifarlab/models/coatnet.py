"""CoAtNet: Dai et al., "CoAtNet: Marrying Convolution and Attention for All Data Sizes",
NeurIPS 2021.

Five stages S0-S4: a two-layer 3x3 conv stem (S0), then MBConv stages and relative-
attention transformer stages stacked vertically, C-C-T-T by default (S1, S2 MBConv;
S3, S4 transformer). Every block is pre-norm with a residual; the first block of a
stage that changes resolution or width uses the paper's shortcut ``Proj(Pool(x))``
(2x2 average pool, then a 1x1 conv) and pools the normalised input of its main branch:

- MBConv (BatchNorm pre-norm): ``x + Conv1x1(SE(DWConv3x3(Conv1x1(BN(x)))))`` with
  expansion 4 computed from the output width, BN + GELU after both inner convs,
  squeeze-excitation of ratio 0.25 (of the output width, SiLU inside);
- transformer (LayerNorm pre-norm): ``x + Attention(Pool(LN(x)))`` then
  ``x + MLP(LN(x))``; the attention is global over the stage's feature map with a
  learned relative-position bias per head (Eq. 3: ``softmax(x_i^T x_j + w_{i-j})``),
  head size 32, MLP ratio 4, GELU; it widens to the stage width inside ``qkv``.

Adapted for 32x32 inputs: the stem's first conv and the first MBConv stage do not
downsample (the paper strides all five stages, 224 -> 7), so the stages run at
32 (S0), 32 (S1), 16 (S2), 8 (S3: 64 tokens) and 4 (S4: 16 tokens), the resolutions
of the CIFAR ResNet-18. Where the paper strides the first 1x1 conv of a downsampling
MBConv, the depthwise conv strides here (as in the authors' MaxViT code and timm),
so no position is dropped before any spatial mixing. The classifier is global
average pooling, LayerNorm and one linear layer.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn

from .layers.norm import DropPath, drop_path_rates
from .layers.transformer import (
    LN_EPS,
    Mlp,
    MultiHeadSelfAttention,
    init_transformer_weights,
)
from .registry import register_model


class SqueezeExcite(nn.Module):
    """Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, in its EfficientNet form:
    global average pool -> 1x1 conv -> SiLU -> 1x1 conv -> sigmoid gate (biases on both convs)."""

    def __init__(self, channels: int, rd_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * s.sigmoid()


class ProjPool(nn.Module):
    """The shortcut ``Proj(Pool(x))``: 2x2 average pool if ``stride`` is 2, then a 1x1 conv if the width changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.proj = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    return nn.Identity() if stride == 1 and in_ch == out_ch else ProjPool(in_ch, out_ch, stride)


def _check_stride(stride: int) -> None:
    if stride not in (1, 2):
        raise ValueError(f"CoAtNet blocks take stride 1 or 2, got {stride}")


class MBConvBlock(nn.Module):
    """Pre-norm inverted-residual block (Sandler et al. 2018; Tan & Le 2019) as used in CoAtNet."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expand_ratio: float = 4.0,
                 se_ratio: float = 0.25, drop_path: float = 0.0):
        super().__init__()
        _check_stride(stride)
        mid = int(out_ch * expand_ratio)
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.pre_norm = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.act = nn.GELU()
        self.se = SqueezeExcite(mid, int(out_ch * se_ratio))
        self.conv3 = nn.Conv2d(mid, out_ch, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act(self.norm1(self.conv1(self.pre_norm(x))))
        x = self.se(self.act(self.norm2(self.conv2(x))))
        return shortcut + self.drop_path(self.conv3(x))


class RelativeTransformerBlock(nn.Module):
    """Pre-norm transformer block on an ``(B, C, H, W)`` map with 2D relative-position attention.

    ``grid_size`` is the block's output resolution (the attention runs after the pool).
    """

    def __init__(self, in_ch: int, out_ch: int, grid_size: tuple[int, int], stride: int = 1,
                 head_dim: int = 32, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        _check_stride(stride)
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.norm1 = nn.LayerNorm(in_ch, eps=LN_EPS)
        self.pool = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.attn = MultiHeadSelfAttention(in_ch, out_ch // head_dim, dim_out=out_ch, rel_pos_grid=grid_size)
        self.norm2 = nn.LayerNorm(out_ch, eps=LN_EPS)
        self.mlp = Mlp(out_ch, int(out_ch * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x).flatten(2).transpose(1, 2)  # (B, N, out_ch)
        y = self.pool(self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        b, _, h, w = y.shape
        x = shortcut + self.drop_path(self.attn(y.flatten(2).transpose(1, 2)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.transpose(1, 2).reshape(b, -1, h, w)


class CoAtNet(nn.Module):
    """``dims``/``depths``/``strides`` list S0 (the stem) to S4; ``layout`` gives S1-S4 as 'C' (MBConv) or 'T'."""

    def __init__(
        self,
        dims: Sequence[int] = (64, 96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 3, 5, 2),
        strides: Sequence[int] = (1, 1, 2, 2, 2),
        layout: str = "CCTT",
        num_classes: int = 100,
        img_size: int = 32,
        head_dim: int = 32,
        expand_ratio: float = 4.0,
        se_ratio: float = 0.25,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if not (len(dims) == len(depths) == len(strides) == len(layout) + 1):
            raise ValueError("dims, depths and strides need one entry per stage S0..S4, layout one per S1..S4")
        if set(layout) - {"C", "T"}:
            raise ValueError(f"layout letters must be 'C' or 'T', got {layout!r}")
        if depths[0] != 2:
            raise ValueError("the stem (S0) has two conv layers: depths[0] must be 2")
        for s in strides:
            _check_stride(s)
        self.stem = nn.Sequential(
            nn.Conv2d(3, dims[0], 3, strides[0], 1, bias=False),
            nn.BatchNorm2d(dims[0]),
            nn.GELU(),
            nn.Conv2d(dims[0], dims[0], 3, 1, 1, bias=False),
        )
        res = img_size // strides[0]
        rates = iter(drop_path_rates(drop_path_rate, [sum(depths[1:])])[0])
        stages = []
        in_ch = dims[0]
        for kind, dim, depth, stride in zip(layout, dims[1:], depths[1:], strides[1:], strict=True):
            res //= stride
            blocks = []
            for j in range(depth):
                s = stride if j == 0 else 1
                if kind == "C":
                    blocks.append(MBConvBlock(in_ch, dim, s, expand_ratio, se_ratio, next(rates)))
                else:
                    blocks.append(RelativeTransformerBlock(
                        in_ch, dim, (res, res), s, head_dim, mlp_ratio, next(rates)))
                in_ch = dim
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(in_ch, eps=LN_EPS)
        self.head = nn.Linear(in_ch, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        init_transformer_weights(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # EfficientNet-style fan-out normal
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head.weight)  # zero-initialised classifier (uniform first predictions), as for ViT

    def no_weight_decay(self) -> set[str]:
        """Parameters to exclude from weight decay besides norms and biases: the relative-position tables."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def coatnet(num_classes: int = 100, **kwargs: Any) -> CoAtNet:
    """A CoAtNet for 32x32 images; ``layout`` switches the C/T stacking (e.g. 'CCCT', 'CTTT')."""
    return CoAtNet(num_classes=num_classes, **kwargs)


_PAPER = "CoAtNet: Marrying Convolution and Attention for All Data Sizes (Dai et al., 2021)"
_ADAPT = ("Stem conv and S1 at stride 1 (the paper strides every stage: 224 -> 112/56/28/14/7) so the stages "
          "run at 32/32/16/8/4 and the attention stages see 8x8 = 64 and 4x4 = 16 tokens; the relative-position "
          "tables are sized for those grids (15x15 and 7x7 offsets). Downsampling MBConv strides its depthwise "
          "conv instead of the first 1x1 (as in the authors' MaxViT code). Pooling in Proj(Pool(x)) is 2x2 "
          "average. Head: global average pool, LayerNorm, linear.")
_RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 10,
           "label_smoothing": 0.1, "grad_clip": 1.0}

register_model(
    coatnet, name="coatnet_mini", family="coatnet", paper=_PAPER, tier="small",
    arch=("C-C-T-T; S0 stem two 3x3 convs 32 ch at 32x32; S1 2 MBConv 32 ch at 32x32; S2 2 MBConv 64 ch at "
          "16x16; S3 2 rel-attention blocks 128 ch (4 heads) at 8x8; S4 1 block 256 ch (8 heads) at 4x4; "
          "MBConv expansion 4, SE 0.25; MLP ratio 4"),
    adaptation=_ADAPT, recipe=_RECIPE, dims=(32, 32, 64, 128, 256), depths=(2, 2, 2, 2, 1),
)
register_model(
    coatnet, name="coatnet_0", family="coatnet", paper=_PAPER, tier="standard",
    arch=("CoAtNet-0 widths and depths, C-C-T-T: S0 stem two 3x3 convs 64 ch at 32x32; S1 2 MBConv 96 ch at "
          "32x32; S2 3 MBConv 192 ch at 16x16; S3 5 rel-attention blocks 384 ch (12 heads) at 8x8; S4 2 blocks "
          "768 ch (24 heads) at 4x4; MBConv expansion 4, SE 0.25; MLP ratio 4; stochastic depth 0.1"),
    adaptation=_ADAPT, recipe=_RECIPE, drop_path_rate=0.1,
)
