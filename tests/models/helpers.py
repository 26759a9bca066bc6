"""Checks and weight randomisers shared by the model tests (imported as ``helpers``: tests/models is on sys.path)."""

import torch
import torch.nn as nn

from cifarlab.models import count_macs, count_params


def randomise(module: nn.Module, scale: float = 0.3, norm_stats: bool = False) -> nn.Module:
    """Seeded N(0, scale^2) parameters (and, with ``norm_stats``, BN running statistics), then eval mode."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        if norm_stats:
            for name, b in module.named_buffers():
                if name.endswith("running_mean"):
                    b.copy_(torch.randn(b.shape, generator=g) * 0.1)
                elif name.endswith("running_var"):
                    b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return module.eval()


def randomize_bn(module: nn.Module, conv_bias: bool = False) -> None:
    """Random BN statistics/affines (and conv biases with ``conv_bias``), so that eval-mode parity checks every term."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
        elif conv_bias and isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.data.uniform_(-0.5, 0.5)


def randomize_layer_norms(model: nn.Module) -> None:
    """LayerNorm scales N(1, 0.2^2) and shifts N(0, 0.2^2)."""
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight, 1.0, 0.2)
            nn.init.normal_(m.bias, 0.0, 0.2)


def assert_size(model: nn.Module, params: int, macs: int) -> None:
    assert count_params(model) == params
    assert count_macs(model) == macs


def stage_output_shapes(model: nn.Module, batch: int = 1) -> list[tuple[int, ...]]:
    """(C, H, W) after each of ``model.stages`` on a 32x32 input."""
    shapes = []
    for stage in model.stages:
        stage.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    model(torch.randn(batch, 3, 32, 32))
    return shapes


def assert_no_padding_only_taps(model: nn.Module) -> None:
    """Every padded conv's span (k-1)d+1 fits in 2H-1 of the map it runs on."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: seen.append((mod, a[0].shape[-2:])))
             for m in model.modules() if isinstance(m, nn.Conv2d) and m.padding != (0, 0)]
    model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert seen
    for conv, (h, w) in seen:
        assert (conv.kernel_size[0] - 1) * conv.dilation[0] + 1 <= 2 * h - 1
        assert (conv.kernel_size[1] - 1) * conv.dilation[1] + 1 <= 2 * w - 1
