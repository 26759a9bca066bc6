"""ConvNeXt building blocks: the ConvNeXt block and large-kernel split attention.

ConvNeXt: Liu, Mao, Wu, Feichtenhofer, Darrell, Xie, "A ConvNet for the 2020s", CVPR 2022.
Layer scale: Touvron et al., "Going deeper with Image Transformers" (CaiT), ICCV 2021.
Split attention: Zhang et al., "ResNeSt: Split-Attention Networks", CVPRW 2022.
LayerNorm2d and DropPath (stochastic depth) come from ``layers/norm.py``.

Nothing here depends on the input size; how kernels are sized for 32x32 inputs is
decided by the networks in ``models/convnext.py``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .norm import DropPath


class LargeKernelSplitAttention(nn.Module):
    """Split attention (ResNeSt) over ``radix`` depthwise large-kernel convolutions.

    ResNeSt's split-attention unit computes R "splits" with one grouped conv
    (groups = cardinality K x radix R), sums them, pools globally, and lets a
    two-layer MLP produce R logits per channel that an r-softmax (softmax over
    the R splits, per cardinal group) turns into weights for a weighted sum of
    the splits. Here the cardinality is the channel count (K = C, each channel a
    group, as in a depthwise conv), so the R splits come from one depthwise conv
    with channel multiplier R: every channel gets R different ``k x k`` filters
    and the attention picks, per image and per channel, how to mix them.

    Why not ``layers.split_attention.SplitAttention`` (ResNeSt's unit as written):
    its conv has ``groups * radix`` groups over C inputs, so it can be at most
    "depthwise-like" (``groups = C / R``), where split r of output channel c reads
    input channel (r C + c) / R, i.e. different input channels, not R kernels of
    the same channel; and it carries BatchNorm + ReLU after the conv and in the
    attention MLP, which the ConvNeXt block (one LayerNorm after its spatial conv,
    one GELU) leaves out. Here: no norm or activation on the splits, the MLP is
    fc -> ReLU -> fc without BatchNorm, and the hidden width keeps ResNeSt's rule
    max(C * R / 4, 32). With R = 1 the softmax is a sigmoid, as in ResNeSt.
    """

    def __init__(self, channels: int, kernel_size: int = 7, radix: int = 2, reduction: int = 4,
                 min_hidden: int = 32, stride: int = 1):
        super().__init__()
        if radix < 1:
            raise ValueError(f"radix must be >= 1, got {radix}")
        self.radix = radix
        self.channels = channels
        hidden = max(channels * radix // reduction, min_hidden)
        self.conv = nn.Conv2d(channels, channels * radix, kernel_size, stride, kernel_size // 2, groups=channels)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels * radix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        # Depthwise with multiplier R: output channel c * R + r is split r of channel c.
        splits = self.conv(x)
        h, w = splits.shape[-2:]
        splits = splits.view(n, self.channels, self.radix, h, w)
        gap = splits.sum(dim=2).mean(dim=(2, 3), keepdim=True)
        logits = self.fc2(self.act(self.fc1(gap))).view(n, self.channels, self.radix, 1, 1)
        attn = logits.softmax(dim=2) if self.radix > 1 else logits.sigmoid()
        return (splits * attn).sum(dim=2)


class ConvNeXtBlock(nn.Module):
    """The ConvNeXt block (Liu et al., 2022, Fig. 4): dw kxk -> LN -> 1x1 (x4) -> GELU -> 1x1 -> layer scale.

    ``x + drop_path(gamma * pwconv2(gelu(pwconv1(norm(dwconv(x))))))``. The two
    1x1 convs are ``nn.Linear`` layers on channels-last data, as in the official code;
    the LayerNorm has eps 1e-6. ``radix > 1`` replaces the depthwise conv with
    :class:`LargeKernelSplitAttention` over ``radix`` depthwise kxk convs (an
    addition of this project, not in the paper).
    """

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0,
                 ls_init_value: float | None = 1e-6, drop_path: float = 0.0, radix: int = 1):
        super().__init__()
        if radix > 1:
            self.dwconv = LargeKernelSplitAttention(dim, kernel_size, radix)
        else:
            self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(mlp_ratio * dim)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init_value)) if ls_init_value is not None else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))
