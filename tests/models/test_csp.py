"""CSP: the cross stage against timm's CrossStage, the bypass property, parameter formula, pinned sizes."""

import pytest
import torch
import torch.nn as nn
from helpers import assert_size, randomize_, stage_output_shapes
from timm.models.cspnet import BottleneckBlock, CrossStage as TimmCrossStage

from cifarlab.models import count_params, create
from cifarlab.models.csp import CrossStage


@pytest.mark.parametrize("in_ch,out_ch,stride,depth", [(64, 128, 1, 2), (128, 256, 2, 1)])
def test_cross_stage_matches_timm(in_ch, out_ch, stride, depth):
    # timm's cspresnet50 stage settings: expansion 2, bottleneck ratio 1/2, linear 1x1 before the split.
    ref = TimmCrossStage(in_ch, out_ch, stride, 1, depth, expand_ratio=2.0, bottle_ratio=0.5, cross_linear=True,
                         block_fn=BottleneckBlock, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d)
    ours = CrossStage(in_ch, out_ch, stride, depth, "bottleneck", expand_ratio=2.0, bottle_ratio=0.5)
    randomize_(ref)
    ours.load_state_dict(ref.state_dict())  # same names: conv_down, conv_exp, blocks.i.conv{1,2,3}, transitions
    ref.eval(), ours.eval()
    x = torch.randn(2, in_ch, 8, 8)
    torch.testing.assert_close(ours(x), ref(x))


def _transition_input(stage: CrossStage, x: torch.Tensor) -> torch.Tensor:
    """The concat [bypass | processed] that enters the final 1x1 transition."""
    seen = []
    handle = stage.conv_transition.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    stage(x)
    handle.remove()
    return seen[0]


def test_bypass_half_does_not_go_through_the_blocks():
    stage = CrossStage(16, 32, stride=2, depth=2, block="basic")
    x = torch.randn(2, 16, 8, 8)
    cat = _transition_input(stage, x)
    half = stage.half
    assert cat.shape[1] == 2 * half == 32
    block_params = list(stage.blocks.parameters())
    grads = torch.autograd.grad(cat[:, :half].sum(), block_params, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads)
    grads = torch.autograd.grad(cat[:, half:].sum(), block_params, allow_unused=True)
    assert all(g is not None for g in grads) and any(g.any() for g in grads)
    # and the blocks work on half the channels
    assert all(b.conv1.conv.in_channels == half for b in stage.blocks)


def test_cross_stage_parameter_formula():
    in_ch, out, depth = 32, 64, 3
    h = out // 2
    stage = CrossStage(in_ch, out, stride=2, depth=depth, block="basic")
    conv_down = 9 * in_ch * in_ch + 2 * in_ch
    conv_exp = in_ch * out + 2 * out
    blocks = depth * (2 * 9 * h * h + 4 * h)
    transitions = (h * h + 2 * h) + (out * out + 2 * out)
    assert count_params(stage) == conv_down + conv_exp + blocks + transitions


PARAMS = {"csp_resnet56": 974_308, "csp_resnet18": 4_581_604, "csp_resnet50": 20_685_988}
MACS = {"csp_resnet56": 139_047_424, "csp_resnet18": 212_584_448, "csp_resnet50": 1_092_390_912}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_pinned_size(name):
    assert_size(create(name), PARAMS[name], MACS[name])


def test_stage_resolutions():
    model = create("csp_resnet18").eval()
    assert stage_output_shapes(model) == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
