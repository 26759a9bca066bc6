"""EdgeNeXt: Maaz, Shaker, Cholakkal, Khan, Zamir, Anwer, Khan, "EdgeNeXt: Efficiently Amalgamated
CNN-Transformer Architecture for Mobile Vision Applications", ECCV Workshops 2022.

Two encoders:

- :class:`ConvEncoder`: a ConvNeXt-like block, kxk depthwise conv -> LN -> Linear 4C ->
  GELU -> Linear -> layer scale, residual; the kernel grows per stage (3/5/7/9 in the paper).
- :class:`SplitDepthwiseTransposeAttention` (SDTA): the channels are split into s groups;
  all but the last go through 3x3 depthwise convs hierarchically (Res2Net-like: each
  group's input adds the previous group's output), the last passes unchanged; then
  transposed attention (:class:`CrossCovarianceAttention`, XCA: a C/h x C/h attention map
  per head from L2-normalised q and k along the tokens, times a learned temperature) with
  LN and layer scale, residual; then LN -> MLP x4 -> layer scale, and the block's residual.

The last block of stages 2-4 is an SDTA encoder, the rest are conv encoders.

32x32 inputs: the stem is a 1x1 "patchify" conv + LN (stride 1) instead of 4x4/4, so the
stages run at 32/16/8/4 instead of 64/32/16/8 (at 256 px), and the SDTA of the last stage
still sees 16 tokens (a 2x2 stem would leave 4, too few for a channel covariance). Conv
encoder kernels are 3/5/7/7: a 9x9 kernel on the 4x4 maps of stage 4 only ever has its
central 7x7 taps on the map (2H-1 = 7). The Fourier positional encoding the paper adds
in the first SDTA (stage 2) is omitted: the depthwise convs of every block already give
position information.

XCA is written with explicit matmuls so ``count_macs`` counts both ``q k^T`` and
``attn v`` (C/h x C/h x N each per head).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers.norm import DropPath, drop_path_rates
from .layers.patchify import HierarchicalTrunk, ln_downsample, patchify_stem
from .layers.transformer import Mlp
from .registry import register_model


class ConvEncoder(nn.Module):
    """``x + gamma * MLP(LN(dw_kxk(x)))`` (MLP: Linear ratio*C, GELU, Linear)."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0, ls_init: float = 1e-6,
                 drop_path: float = 0.0):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.gamma = nn.Parameter(torch.full((dim,), ls_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gamma * self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1)))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class CrossCovarianceAttention(nn.Module):
    """XCA on (B, N, C) tokens: per head, ``softmax(norm(q) norm(k)^T * t) v`` with q, k, v of shape (C/h, N).

    From El-Nouby et al., "XCiT: Cross-Covariance Image Transformers", NeurIPS 2021, as
    used by EdgeNeXt; ``temperature`` is one learned scalar per head (init 1).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 4, 1)
        attn = torch.matmul(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        x = torch.matmul(attn.softmax(dim=-1), v)  # (B, heads, C/h, N)
        return self.proj(x.permute(0, 3, 1, 2).reshape(B, N, C))


class SplitDepthwiseTransposeAttention(nn.Module):
    """SDTA encoder on (N, C, H, W): hierarchical split depthwise convs, XCA, MLP.

    The channels split into ``num_scales`` groups of ceil(C/s) (the last takes the rest);
    groups 1..s-1 go through 3x3 depthwise convs, each adding the previous output first.
    """

    def __init__(self, dim: int, num_scales: int = 2, num_heads: int = 8, mlp_ratio: float = 4.0,
                 ls_init: float = 1e-6, drop_path: float = 0.0):
        super().__init__()
        width = math.ceil(dim / num_scales)
        self.splits = [width] * (num_scales - 1) + [dim - width * (num_scales - 1)]
        if self.splits[-1] <= 0:
            raise ValueError(f"cannot split {dim} channels into {num_scales} groups of {width}")
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(num_scales - 1))
        self.norm_xca = nn.LayerNorm(dim, eps=1e-6)
        self.xca = CrossCovarianceAttention(dim, num_heads)
        self.gamma_xca = nn.Parameter(torch.full((dim,), ls_init))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.gamma = nn.Parameter(torch.full((dim,), ls_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        groups = torch.split(x, self.splits, dim=1)
        outs, y = [], None
        for i, conv in enumerate(self.convs):
            y = conv(groups[i] if y is None else y + groups[i])
            outs.append(y)
        outs.append(groups[-1])
        t = torch.cat(outs, dim=1).flatten(2).transpose(1, 2)  # (B, HW, C)
        t = t + self.drop_path(self.gamma_xca * self.xca(self.norm_xca(t)))
        t = self.gamma * self.mlp(self.norm(t))
        return x + self.drop_path(t.transpose(1, 2).reshape(B, C, H, W))


class EdgeNeXt(HierarchicalTrunk):
    """Patchify stem + LN; four stages (LN + 2x2/2 conv between them) of conv encoders ending in
    ``global_blocks[i]`` SDTA encoders; global average pool, LN, linear head."""

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (48, 96, 160, 304),
        kernel_sizes: Sequence[int] = (3, 5, 7, 7),
        global_blocks: Sequence[int] = (0, 1, 1, 1),
        heads: Sequence[int] = (8, 8, 8, 8),
        scales: Sequence[int] = (2, 2, 3, 4),
        num_classes: int = 100,
        patch_size: int = 1,
        mlp_ratio: float = 4.0,
        ls_init: float = 1e-6,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        n = len(depths)
        if not all(len(s) == n for s in (dims, kernel_sizes, global_blocks, heads, scales)):
            raise ValueError("depths, dims, kernel_sizes, global_blocks, heads and scales need one entry per stage")
        self.stem = patchify_stem(dims[0], patch_size)
        rates = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i in range(n):
            down = nn.Identity() if i == 0 else ln_downsample(dims[i - 1], dims[i])
            blocks = [
                ConvEncoder(dims[i], kernel_sizes[i], mlp_ratio, ls_init, rates[i][j])
                if j < depths[i] - global_blocks[i] else
                SplitDepthwiseTransposeAttention(dims[i], scales[i], heads[i], mlp_ratio, ls_init, rates[i][j])
                for j in range(depths[i])
            ]
            stages.append(nn.Sequential(down, *blocks))
        self.stages = nn.Sequential(*stages)
        self._finish(dims[-1], num_classes)


def edgenext(num_classes: int = 100, **kwargs: Any) -> EdgeNeXt:
    """An EdgeNeXt for 32x32 images (defaults: EdgeNeXt-S widths and depths, 1x1 stem, kernels 3/5/7/7)."""
    return EdgeNeXt(num_classes=num_classes, **kwargs)


_PAPER = ("EdgeNeXt: Efficiently Amalgamated CNN-Transformer Architecture for Mobile Vision Applications "
          "(Maaz et al., 2022)")
_ADAPT = (
    "1x1 patchify stem + LN at stride 1 instead of 4x4/4, so stages run at 32/16/8/4 (the last SDTA sees 16 "
    "tokens); conv-encoder kernels 3/5/7/7 instead of 3/5/7/9 (on 4x4 maps only the central 7x7 taps of a 9x9 "
    "touch the map, 2H-1 = 7); the Fourier positional encoding of the stage-2 SDTA is omitted. Otherwise the "
    "paper's blocks: SDTA as the last block of stages 2-4 with 2/2/3/4 splits, XCA with learned temperature, "
    "LN eps 1e-6, layer scale 1e-6, MLP ratio 4; avg pool, LN, linear head."
)
_RECIPE = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 10, "label_smoothing": 0.1}

register_model(
    edgenext, name="edgenext_xxs", family="edgenext", paper=_PAPER, tier="small",
    arch=("EdgeNeXt-XXS: 1x1 stem + LN (stride 1); depths 2/2/6/2 at dims 24/48/88/168; stages on 32/16/8/4 "
          "maps; conv-encoder kernels 3/5/7/7; last block of stages 2-4 is SDTA (splits 2/2/3/4, 4 heads); "
          "LN + 2x2/2 conv between stages; global avg pool, LN, linear head"),
    adaptation=_ADAPT,
    recipe=_RECIPE, depths=(2, 2, 6, 2), dims=(24, 48, 88, 168), heads=(4, 4, 4, 4),
)

register_model(
    edgenext, name="edgenext_s", family="edgenext", paper=_PAPER, tier="standard",
    arch=("EdgeNeXt-S: 1x1 stem + LN (stride 1); depths 3/3/9/3 at dims 48/96/160/304; stages on 32/16/8/4 "
          "maps; conv-encoder kernels 3/5/7/7; last block of stages 2-4 is SDTA (splits 2/2/3/4, 8 heads); "
          "LN + 2x2/2 conv between stages; global avg pool, LN, linear head"),
    adaptation=_ADAPT,
    recipe=_RECIPE, drop_path_rate=0.1,
)
