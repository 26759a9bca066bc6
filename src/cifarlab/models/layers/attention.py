"""Channel attention modules inserted into residual blocks: ECA, SE, Coordinate Attention, CBAM channel.

Each maps (N, C, H, W) to the same shape, rescaling the input by a learned gate,
and is registered in ``ATTENTION_LAYERS`` as ``cls(channels, **kwargs)``, so a
network takes it by name (``CifarResNet(attention="eca")``). In the CIFAR ResNets
it sits on the residual branch after the second conv unit (``attention_position=
"before"`` the addition, as in the SE/ECA/CA papers) or on the block output
(``"after"``).

Every module has a ``gate`` switch ("sigmoid" default, "hardsigmoid", "softmax")
for the gate ablation of the training-tricks study; see :func:`make_gate`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ... import CifarlabError
from .activations import make_act
from .factory import register_attention

GATES = ("sigmoid", "hardsigmoid", "softmax")
POOLINGS = ("avg+max", "avg+l1", "avg+l2")


class ChannelSoftmax(nn.Module):
    """Softmax over the channel dim (1), times C so that the mean gate is 1.

    A plain softmax gives gates that average 1/C, which would shrink the branch by
    a factor C; rescaling keeps the branch's scale comparable to a sigmoid gate
    (mean about 0.5-1) while the gates still compete across channels.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.softmax(dim=1) * x.shape[1]


def make_gate(name: str) -> nn.Module:
    """The gating non-linearity: sigmoid, hard-sigmoid (relu6(x + 3) / 6) or channel softmax.

    Gates are applied to (N, C, ...) tensors, so "softmax" always normalises over channels.
    """
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "hardsigmoid":
        return nn.Hardsigmoid()
    if name == "softmax":
        return ChannelSoftmax()
    raise CifarlabError(f"unknown gate {name!r}; choose from {list(GATES)}")


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive kernel size k = |log2(C)/gamma + b/gamma|_odd, as the official code computes it.

    ``t = int(abs((log2(C) + b) / gamma))``, then an even ``t`` is bumped up to ``t + 1``.
    With gamma = 2, b = 1 this is 3 for every C in 8..64 (all of ResNet-20/56) and
    3/5/5/5 for the 64/128/256/512 channels of the wide ResNet-18.
    """
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@register_attention("eca")
class ECA(nn.Module):
    """Efficient Channel Attention: global average pool, 1-D conv of size k across channels, gate.

    Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
    Networks", CVPR 2020. ``kernel_size=None`` picks k from the channel count with
    :func:`eca_kernel_size` (k = 3 for every C from 8 to 64, so for all of ResNet-20/56;
    k = 3/5/5/5 for 64/128/256/512 channels on the wide ResNet-18); an int fixes it.
    The conv has no bias, so the module has exactly k parameters. Unlike timm's
    ``EcaModule`` there is no lower clamp at k = 3 (the official code has none);
    the two agree for every C >= 8. Nothing changes for 32x32 inputs.
    """

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2, b: float = 1,
                 gate: str = "sigmoid"):
        super().__init__()
        k = eca_kernel_size(channels, gamma, b) if kernel_size is None else kernel_size
        if k < 1 or k % 2 == 0:
            raise CifarlabError(f"ECA kernel_size must be a positive odd int, got {k}")
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.gate = make_gate(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        y = self.conv(x.mean(dim=(2, 3)).view(n, 1, c))
        return x * self.gate(y.view(n, c, 1, 1))


@register_attention("se")
class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation: global average pool, FC -> ReLU -> FC (both with bias), gate.

    Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. The FCs are 1x1 convs
    on the pooled (N, C, 1, 1) tensor. Hidden width ``max(C // reduction,
    min_channels)`` with r = 16 and a floor of 4, because C // 16 would leave 1-4
    hidden units on the 16/32/64-channel CIFAR stages (the paper's r = 16 targets
    ImageNet widths); ``hidden_channels`` sets it directly (GhostNet's SE does).
    This is the FC counterpart in the "ECA vs FC" comparison.
    """

    def __init__(self, channels: int, reduction: int = 16, min_channels: int = 4,
                 hidden_channels: int | None = None, act_layer: str = "relu", gate: str = "sigmoid"):
        super().__init__()
        hidden = hidden_channels or max(channels // reduction, min_channels)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = make_act(act_layer)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = make_gate(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * self.gate(y)


@register_attention("ca")
class CoordinateAttention(nn.Module):
    """Coordinate Attention: direction-aware gates from pooling along H and along W.

    Hou, Zhou and Feng, "Coordinate Attention for Efficient Mobile Network Design",
    CVPR 2021. Average-pool over W (-> N, C, H, 1) and over H (-> N, C, W, 1),
    concatenate along the spatial axis, shared 1x1 conv to ``mip = max(min_channels,
    C // reduction)`` (r = 32, floor 8, as in the paper's code), BN, h-swish, split
    back, a 1x1 conv per direction to C channels, gate each; output = x * a_h * a_w.
    All convs have bias (as in the official code). With the "softmax" gate each of
    a_h and a_w is normalised over channels at each row / column. Nothing changes for
    32x32 inputs (the strips are 32/16/8 long).
    """

    def __init__(self, channels: int, reduction: int = 32, min_channels: int = 8,
                 act_layer: str = "hardswish", gate: str = "sigmoid"):
        super().__init__()
        mip = max(min_channels, channels // reduction)
        self.reduce = nn.Conv2d(channels, mip, 1)
        self.bn = nn.BatchNorm2d(mip)
        self.act = make_act(act_layer)
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)
        self.gate = make_gate(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        pooled_h = x.mean(dim=3, keepdim=True)                      # N, C, H, 1
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)      # N, C, W, 1
        y = self.act(self.bn(self.reduce(torch.cat([pooled_h, pooled_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.gate(self.conv_h(y_h))                            # N, C, H, 1
        a_w = self.gate(self.conv_w(y_w.transpose(2, 3)))            # N, C, 1, W
        return x * a_h * a_w


@register_attention("cbam_channel")
class CBAMChannelAttention(nn.Module):
    """CBAM's channel attention with a configurable second descriptor and gate.

    Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018 (channel
    branch only). Two pooled descriptors go through one shared MLP (1x1 conv ->
    ReLU -> 1x1 conv, with bias as in the official code, hidden ``max(C //
    reduction, min_channels)``, r = 16, floor 4) and are summed before the gate.

    ``pooling``: "avg+max" (the paper), "avg+l1" or "avg+l2" (the training-tricks ablation).
    The Lp descriptors are power means ``(mean_HW |x|^p)^(1/p)`` — mean |x| and the
    root mean square — so they have the scale of the average whatever the feature
    map size; CBAM's own code's "lp" pool is the unnormalised L2 norm, which is
    ours times sqrt(H*W). ``gate``: see :func:`make_gate`.
    """

    def __init__(self, channels: int, reduction: int = 16, min_channels: int = 4,
                 pooling: str = "avg+max", gate: str = "sigmoid"):
        super().__init__()
        if pooling not in POOLINGS:
            raise CifarlabError(f"unknown pooling {pooling!r}; choose from {list(POOLINGS)}")
        self.pooling = pooling
        hidden = max(channels // reduction, min_channels)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = make_gate(gate)

    def _second_descriptor(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "avg+max":
            return x.amax(dim=(2, 3), keepdim=True)
        if self.pooling == "avg+l1":
            return x.abs().mean(dim=(2, 3), keepdim=True)
        hw = x.shape[2] * x.shape[3]
        return torch.linalg.vector_norm(x, ord=2, dim=(2, 3), keepdim=True) / math.sqrt(hw)

    def _mlp(self, d: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(d)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._mlp(x.mean(dim=(2, 3), keepdim=True)) + self._mlp(self._second_descriptor(x))
        return x * self.gate(y)
