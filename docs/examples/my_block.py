import torch
import torch.nn as nn

from cifarlab.models import register_model
from cifarlab.models.layers.factory import register_attention
from cifarlab.models.resnet import resnet


@register_attention("gap_gate")
class GapGate(nn.Module):
    """A one-parameter-per-channel gate on the global average: x * sigmoid(w * mean(x) + b)."""

    def __init__(self, channels: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(channels))
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        g = torch.sigmoid(self.w[:, None, None] * x.mean((2, 3), keepdim=True) + self.b[:, None, None])
        return x * g


register_model(resnet, name="gapgate_resnet20", family="mine", paper="My gate (2026)", tier="small",
               arch="ResNet-20 with GapGate in every BasicBlock", depth=20, attention="gap_gate")
