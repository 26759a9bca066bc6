"""Conv -> BatchNorm -> activation, the unit every CIFAR ResNet is made of."""

import torch.nn as nn

from .activations import make_act


class ConvNormAct(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, act: bool = True,
                 kernel_size: int = 3, groups: int = 1, act_layer: str = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = make_act(act_layer) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))
