"""ResNeXt: the grouped bottleneck against timm's, parameter formula, pinned sizes, closed-form MACs."""

import pytest
import torch
import torch.nn as nn
from helpers import assert_size, randomize_, stage_output_shapes
from timm.models.resnet import Bottleneck as TimmBottleneck

from cifarlab.models import count_macs, count_params, create
from cifarlab.models.layers.bottleneck import Bottleneck


def _timm_key(k: str) -> str:
    """timm's Bottleneck names -> ours (conv/bn pairs are ConvNormAct units, downsample is the shortcut)."""
    for i in (1, 2, 3):
        k = k.replace(f"conv{i}.", f"conv{i}.conv.").replace(f"bn{i}.", f"conv{i}.bn.")
    return k.replace("downsample.", "shortcut.")


@pytest.mark.parametrize("in_ch,stride,cardinality", [(128, 1, 4), (64, 2, 4), (64, 2, 8)])
def test_block_matches_timm_bottleneck(in_ch, stride, cardinality):
    # timm: width = floor(planes * base_width / 64) * cardinality, out = 4 * planes
    planes, base_width = 32, 16
    width = planes * base_width // 64 * cardinality
    down = None
    if stride != 1 or in_ch != 4 * planes:
        down = nn.Sequential(nn.Conv2d(in_ch, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes))
    ref = TimmBottleneck(in_ch, planes, stride, down, cardinality=cardinality, base_width=base_width)
    ours = Bottleneck(in_ch, 4 * planes, stride, mid_ch=width, groups=cardinality)
    randomize_(ref)
    ours.load_state_dict({_timm_key(k): v for k, v in ref.state_dict().items()})
    ref.eval(), ours.eval()
    x = torch.randn(2, in_ch, 8, 8)
    torch.testing.assert_close(ours(x), ref(x))


def test_block_parameter_formula():
    # in*D + 9*D*D/C + D*out weights, BN 2*(D + D + out), 1x1 projection in*out + 2*out
    in_ch, out, d, c = 64, 256, 128, 8
    blk = Bottleneck(in_ch, out, 2, mid_ch=d, groups=c)
    assert blk.conv2.conv.weight.shape == (d, d // c, 3, 3)
    assert count_params(blk) == in_ch * d + 9 * d * d // c + d * out + 2 * (2 * d + out) + in_ch * out + 2 * out


PARAMS = {"resnext29_4x8d": 457_604, "resnext29_2x64d": 9_222_564}
MACS = {"resnext29_4x8d": 69_329_920, "resnext29_2x64d": 1_411_158_016}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_pinned_size(name):
    assert_size(create(name), PARAMS[name], MACS[name])


def _resnext29_macs(stem, outs, cardinality, d, classes=100):
    """Closed form: convs + fc of a CIFAR ResNeXt-29, stride on the 3x3 conv, 1x1 projection shortcuts."""
    macs, in_ch, res = 9 * 3 * stem * 32 * 32, stem, 32
    for i, out in enumerate(outs):
        mid = cardinality * d * 2 ** i
        for j in range(3):
            in_res = res
            if i > 0 and j == 0:
                res //= 2
            macs += in_ch * mid * in_res ** 2 + 9 * mid * mid // cardinality * res ** 2 + mid * out * res ** 2
            if in_ch != out:
                macs += in_ch * out * res ** 2
            in_ch = out
    return macs + outs[-1] * classes


def test_macs_closed_form():
    assert count_macs(create("resnext29_4x8d")) == _resnext29_macs(32, (64, 128, 256), 4, 8)
    assert count_macs(create("resnext29_2x64d")) == _resnext29_macs(64, (256, 512, 1024), 2, 64)


def test_blocks_start_as_identity():
    # zero_init_last: every block's last BN scale is 0, so an identity-shortcut block returns relu(x)
    model = create("resnext29_4x8d").eval()
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 9 and all(not b.conv3.bn.weight.any() for b in blocks)
    x = torch.randn(2, 64, 8, 8).relu()
    torch.testing.assert_close(model.stages[0][1](x), x)
    assert all(b.conv3.bn.weight.all() for b in create("resnext29_4x8d", zero_init_last=False).modules()
               if isinstance(b, Bottleneck))


def test_stage_resolutions():
    model = create("resnext29_4x8d").eval()
    assert stage_output_shapes(model) == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
