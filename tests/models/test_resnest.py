"""ResNeSt: SplitAttention and the ResNeSt bottleneck against timm's, the attention weights, pinned sizes."""

import pytest
import torch
import torch.nn as nn
from helpers import assert_size, randomize_, stage_output_shapes
from timm.layers import SplitAttn
from timm.models.resnest import ResNestBottleneck
from timm.models.resnet import downsample_avg

from cifarlab import CifarlabError
from cifarlab.models import create
from cifarlab.models.layers.split_attention import SplitAttention
from cifarlab.models.resnest import ResNeStBottleneck


@pytest.mark.parametrize("in_ch,out_ch,stride,groups,radix", [
    (64, 64, 1, 1, 2),   # ResNeSt default (2s1x)
    (64, 32, 2, 2, 2),   # cardinality 2, strided, channel change
    (48, 48, 1, 3, 4),   # radix 4 with 3 cardinal groups
    (64, 64, 1, 2, 1),   # radix 1: sigmoid gate
])
def test_split_attention_matches_timm(in_ch, out_ch, stride, groups, radix):
    ref = SplitAttn(in_ch, out_ch, 3, stride, groups=groups, radix=radix, rd_ratio=0.25, rd_divisor=8,
                    norm_layer=nn.BatchNorm2d)
    ours = SplitAttention(in_ch, out_ch, 3, stride, groups=groups, radix=radix)
    assert ours.rd_channels == ref.fc1.out_channels
    randomize_(ref)
    ours.load_state_dict(ref.state_dict())
    ref.eval(), ours.eval()
    x = torch.randn(2, in_ch, 8, 8)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("channels,radix,expected", [(16, 2, 32), (64, 2, 32), (256, 2, 128), (128, 4, 128)])
def test_attention_width_is_paper_formula(channels, radix, expected):
    # official: max(in_channels * radix // 4, 32)
    assert SplitAttention(channels, radix=radix).rd_channels == expected == max(channels * radix // 4, 32)


def test_radix_weights_sum_to_one():
    # Make both radix splits identical: the conv has groups * radix = 2 groups, group r maps input
    # channels [r*c/2, (r+1)*c/2) to split r. Equal weights, BN and input halves give equal splits,
    # and an r-softmax (weights summing to 1 over the radix) must then return that split unchanged.
    c, r = 16, 2
    mod = SplitAttention(c, radix=r).eval()
    randomize_(mod)
    for t in (mod.conv.weight, mod.bn0.weight, mod.bn0.bias, mod.bn0.running_mean, mod.bn0.running_var):
        t.data[c:] = t.data[:c]
    x = torch.randn(2, c // r, 6, 6).repeat(1, r, 1, 1)
    split0 = mod.act0(mod.bn0(mod.conv(x)))[:, :c]
    torch.testing.assert_close(mod(x), split0)


def test_invalid_grouping_is_rejected():
    with pytest.raises(CifarlabError):
        SplitAttention(30, radix=4)


@pytest.mark.parametrize("in_ch,stride", [(128, 1), (64, 2)])
def test_bottleneck_matches_timm(in_ch, stride):
    planes = 32
    down = None
    if stride != 1 or in_ch != 4 * planes:
        down = downsample_avg(in_ch, 4 * planes, 1, stride)
    ref = ResNestBottleneck(in_ch, planes, stride, down, radix=2, cardinality=1, base_width=64, avd=True,
                            avd_first=False, is_first=stride > 1)
    ours = ResNeStBottleneck(in_ch, 4 * planes, stride, mid_ch=planes, radix=2, groups=1)
    randomize_(ref)
    # timm conv1/bn1, conv3/bn3 -> our ConvNormAct units; conv2 (SplitAttn) keeps its names; downsample -> shortcut
    prefixes = {"conv1.": "conv1.conv.", "bn1.": "conv1.bn.", "conv3.": "conv3.conv.", "bn3.": "conv3.bn.",
                "downsample.": "shortcut."}
    sd = {}
    for k, v in ref.state_dict().items():
        head = next((p for p in prefixes if k.startswith(p)), None)
        sd[prefixes[head] + k[len(head):] if head else k] = v
    ours.load_state_dict(sd)
    ref.eval(), ours.eval()
    x = torch.randn(2, in_ch, 8, 8)
    torch.testing.assert_close(ours(x), ref(x))


PARAMS = {"resnest29_2s1x16d": 372_452, "resnest29_2s1x64d": 5_400_964}
MACS = {"resnest29_2s1x16d": 63_070_720, "resnest29_2s1x64d": 975_337_472}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_pinned_size(name):
    assert_size(create(name), PARAMS[name], MACS[name])


def test_stage_resolutions():
    model = create("resnest29_2s1x16d").eval()
    assert stage_output_shapes(model, batch=2) == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
