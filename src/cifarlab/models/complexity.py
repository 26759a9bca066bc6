"""Parameter and multiply-add counts.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one
1x3x32x32 image in eval mode, and reported as MACs = FLOPs / 2. The counter
covers matmuls and convolutions only: element-wise gates, softmax, norms,
activations and pooling are not counted (the usual convention of the papers).
On the CPU, ``scaled_dot_product_attention`` dispatches to an op the counter does
not know (it counts 0 there in torch 2.13/2.14); the count for it is registered
here with the counter's own SDPA formula, so attention models are counted the
same on every device.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

MAC_CONVENTION = "MACs = FLOPs/2 from torch.utils.flop_counter on one 1x3x32x32 image; convs and matmuls only"


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _custom_mapping() -> dict:
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_cpu_flops
    return mapping


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Forward multiply-adds for one input of ``input_size`` (see MAC_CONVENTION)."""
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    x = torch.zeros(input_size, device=p.device, dtype=p.dtype)
    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    try:
        with counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
