"""Res2Net: the bottleneck against timm's Bottle2neck, the BasicBlock form by the paper's properties,
the CA combination, pinned sizes."""

import pytest
import torch
import torch.nn as nn
from helpers import assert_size, randomize_, stage_output_shapes
from timm.models.res2net import Bottle2neck

from cifarlab.models import count_params, create
from cifarlab.models.layers import ATTENTION_LAYERS
from cifarlab.models.res2net import Res2NetBasicBlock, Res2NetBottleneck, Res2NetConv


def _from_timm(sd: dict, width: int) -> dict:
    """timm Bottle2neck weights -> ours.

    Names: conv1/bn1 -> conv1.{conv,bn}, convs.i/bns.i -> conv2.convs.i.{conv,bn}, conv3/bn3 -> conv3.{conv,bn},
    downsample -> shortcut. Order of splits: timm (the official code) convolves splits 0..s-2 and passes the
    LAST split through; we pass the FIRST split through (the paper's y1 = x1). So our split order is timm's
    rolled by one split: roll conv1's output channels / bn1 and conv3's input channels by ``width``.
    """
    out = {}
    for k, v in sd.items():
        if k.startswith(("conv1.", "bn1.")):
            nk = "conv1." + ("conv." if k.startswith("conv1") else "bn.") + k.split(".", 1)[1]
            v = v.roll(width, dims=0) if v.dim() > 0 else v
        elif k.startswith(("conv3.", "bn3.")):
            nk = "conv3." + ("conv." if k.startswith("conv3") else "bn.") + k.split(".", 1)[1]
            if k == "conv3.weight":
                v = v.roll(width, dims=1)
        elif k.startswith(("convs.", "bns.")):
            kind, i, rest = k.split(".", 2)
            nk = f"conv2.convs.{i}.{'conv' if kind == 'convs' else 'bn'}.{rest}"
        else:
            nk = k.replace("downsample.", "shortcut.")
        out[nk] = v
    return out


@pytest.mark.parametrize("in_ch,stride,cardinality,scale", [(128, 1, 1, 4), (64, 2, 1, 4), (64, 1, 2, 3)])
def test_bottleneck_matches_timm(in_ch, stride, cardinality, scale):
    planes, base_width = 32, 26
    width = planes * base_width // 64 * cardinality
    down = None
    if stride != 1 or in_ch != 4 * planes:
        down = nn.Sequential(nn.Conv2d(in_ch, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes))
    ref = Bottle2neck(in_ch, planes, stride, down, cardinality=cardinality, base_width=base_width, scale=scale,
                      norm_layer=nn.BatchNorm2d)
    ours = Res2NetBottleneck(in_ch, 4 * planes, stride, width, scale, cardinality)
    assert ours.conv2.stage == ref.is_first
    randomize_(ref)
    ours.load_state_dict(_from_timm(ref.state_dict(), width))
    ref.eval(), ours.eval()
    x = torch.randn(2, in_ch, 8, 8)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_basic_block_convs_and_parameter_formula(scale):
    out = 32
    w = out // scale
    blk = Res2NetBasicBlock(out, out, scale=scale)
    convs3 = [m for m in blk.conv2.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs3) == scale - 1
    assert all(c.weight.shape == (w, w, 3, 3) for c in convs3)
    # Res2Net module + 1x1 fusion: 9 (s-1) w^2 + s^2 w^2 weights instead of a 3x3 conv's 9 s^2 w^2
    weights = sum(c.weight.numel() for c in convs3) + blk.fuse.conv.weight.numel()
    assert weights == 9 * (scale - 1) * w * w + scale * scale * w * w
    bn = 2 * (scale - 1) * w + 2 * out + 2 * out  # module BNs, conv1 BN, fusion BN
    assert count_params(blk) == 9 * out * out + weights + bn


def test_hierarchy_first_split_passes_and_later_splits_see_only_earlier_ones():
    torch.manual_seed(0)
    w, s = 4, 4
    mod = Res2NetConv(w, s).eval()
    x = torch.randn(1, s * w, 9, 9)
    y = mod(x)
    torch.testing.assert_close(y[:, :w], x[:, :w])  # y1 = x1
    for k in range(1, s):  # perturbing split k changes outputs k.. only
        x2 = x.clone()
        x2[:, k * w:(k + 1) * w] += 1.0
        diff = (mod(x2) - y).abs().flatten(2).amax(-1).view(s, w).amax(-1)
        assert (diff[:k] == 0).all() and (diff[k:] > 0).all()


def test_receptive_field_grows_by_split():
    # output split i (i >= 1) went through i stacked 3x3 convs: receptive field 2i + 1
    w, s, size = 2, 4, 15
    mod = Res2NetConv(w, s).eval()
    for m in mod.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 0.1)
    x = torch.zeros(1, s * w, size, size, requires_grad=True)
    y = mod(x + 1.0)
    for i in range(1, s):
        (g,) = torch.autograd.grad(y[0, i * w, size // 2, size // 2], x, retain_graph=True)
        rows = g.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
        assert rows.max() - rows.min() + 1 == 2 * i + 1


def test_stage_module_pools_first_split_and_does_not_cascade():
    w, s = 4, 4
    mod = Res2NetConv(w, s, stride=2, stage=True).eval()
    x = torch.randn(1, s * w, 8, 8)
    y = mod(x)
    assert y.shape == (1, s * w, 4, 4)
    torch.testing.assert_close(y[:, :w], nn.functional.avg_pool2d(x[:, :w], 3, 2, 1))
    x2 = x.clone()
    x2[:, w:2 * w] += 1.0  # split 2 feeds no later split in a stage module
    assert torch.equal(mod(x2)[:, 2 * w:], y[:, 2 * w:])


@pytest.mark.parametrize("name,block,n", [("res2net56", Res2NetBasicBlock, 27),
                                          ("res2net29_26w4s", Res2NetBottleneck, 9)])
def test_ca_res2net_is_res2net_with_coordinate_attention(name, block, n):
    base, ca = create(name), create("ca_" + name)
    blocks = [m for m in ca.modules() if isinstance(m, block)]
    assert len(blocks) == n and all(b.attn is not None and b.attention_position == "before" for b in blocks)
    assert {type(b.attn) for b in blocks} == {ATTENTION_LAYERS["ca"]}
    assert count_params(ca) == count_params(base) + sum(count_params(b.attn) for b in blocks)
    assert not any(m.attn is not None for m in base.modules() if isinstance(m, block))


PARAMS = {"res2net56": 554_956, "ca_res2net56": 581_812, "res2net29_26w4s": 5_016_372,
          "ca_res2net29_26w4s": 5_414_700}
MACS = {"res2net56": 80_812_288, "ca_res2net56": 81_254_656, "res2net29_26w4s": 778_780_672,
        "ca_res2net29_26w4s": 784_285_696}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_pinned_size(name):
    assert_size(create(name), PARAMS[name], MACS[name])


def test_stage_resolutions():
    model = create("res2net29_26w4s").eval()
    assert stage_output_shapes(model) == [(256, 32, 32), (512, 16, 16), (1024, 8, 8)]
