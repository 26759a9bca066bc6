"""Checks and the weight randomiser shared by the model tests (imported as ``helpers``: tests/models is on sys.path)."""

import torch
import torch.nn as nn

from cifarlab.models import count_macs, count_params

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # timm's and our LayerNorm2d included


def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Every parameter and norm statistic random, then eval mode, so that a parity check exercises all of them
    (reference libraries zero-initialise heads, biases and layer scales and set norm scales to one).

    Conv and linear kernels N(0, 1/fan_in) (activations stay of order one through deep networks), norm scales
    1 + N(0, scale^2), everything else (biases, shifts, layer scales, embeddings, bias tables) N(0, scale^2);
    BatchNorm running means N(0, scale^2) and variances U(0.5, 1.5).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                z = torch.randn(p.shape, generator=g)
                if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and name == "weight":
                    p.copy_(z / p[0].numel() ** 0.5)
                elif isinstance(m, NORMS) and name == "weight":
                    p.copy_(1 + scale * z)
                else:
                    p.copy_(scale * z)
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(scale * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return module.eval()


def assert_same_logits(ours: nn.Module, ref: nn.Module, x: torch.Tensor, **tolerance) -> None:
    """Whole-network parity on logits that vary across classes and across inputs, so that a zeroed head or a
    dead trunk cannot pass by comparing constants."""
    with torch.no_grad():
        out, expected = ours.eval()(x), ref.eval()(x)
    across_classes, across_inputs = out.std(dim=1).min().item(), out.std(dim=0).mean().item()
    assert out.shape[0] >= 2 and across_classes > 0.1 and across_inputs > 0.01, (across_classes, across_inputs)
    torch.testing.assert_close(out, expected, **tolerance)


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
