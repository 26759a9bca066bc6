"""An attention module whose forward pass raises: loaded by the Ray workers of tests/test_ray_executor.py through
CIFARLAB_PLUGINS, so that a run using it (``model_kwargs: {attention: crash}``) fails with an error that is not the
user's to fix, as a lost device or a bug would; the driver never imports it."""

import torch
import torch.nn as nn

from cifarlab.models.layers.factory import register_attention


@register_attention("crash")
class Crash(nn.Module):
    def __init__(self, channels: int):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("simulated crash in the forward pass")
