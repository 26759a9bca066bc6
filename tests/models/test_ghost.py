"""Ghost module / bottleneck / GhostECA, Ghost-ResNets and the CIFAR GhostNet."""

import math

import pytest
import torch
import torch.nn as nn
from helpers import randomize_
from timm.models.ghostnet import GhostBottleneck as TimmGhostBottleneck, GhostModule as TimmGhostModule

from cifarlab import CifarlabError
from cifarlab.models import count_macs, count_params, create, get_entry
from cifarlab.models.layers import CONV_LAYERS
from cifarlab.models.layers.attention import ECA
from cifarlab.models.layers.conv import ConvNormAct
from cifarlab.models.layers.ghost import GhostBottleneck, GhostECAModule, GhostModule, make_divisible

# our key fragment -> timm's (GhostModule: primary_conv / cheap_operation Sequentials;
# GhostBottleneck: conv_dw + bn_dw, SqueezeExcite conv_reduce/conv_expand, 4-layer shortcut)
GHOST_KEYS = [
    ("primary.conv.", "primary_conv.0."), ("primary.bn.", "primary_conv.1."),
    ("cheap.conv.", "cheap_operation.0."), ("cheap.bn.", "cheap_operation.1."),
    ("conv_dw.conv.", "conv_dw."), ("conv_dw.bn.", "bn_dw."),
    ("se.fc1.", "se.conv_reduce."), ("se.fc2.", "se.conv_expand."),
    ("shortcut.0.conv.", "shortcut.0."), ("shortcut.0.bn.", "shortcut.1."),
    ("shortcut.1.conv.", "shortcut.2."), ("shortcut.1.bn.", "shortcut.3."),
]


def _to_timm(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for ours, theirs in GHOST_KEYS:
            k = k.replace(ours, theirs)
        out[k] = v
    return out


def _assert_parity(ours: nn.Module, ref: nn.Module, shape):
    randomize_(ours)
    ref.load_state_dict(_to_timm(ours.state_dict()), strict=True)
    ref.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x))


# --- Ghost module ----------------------------------------------------------

@pytest.mark.parametrize("in_ch,out_ch,ratio,dw,k,stride,act", [
    (16, 32, 2, 3, 3, 1, True),
    (16, 30, 4, 3, 1, 1, True),   # 30 is not a multiple of s: 8 intrinsic, 24 ghosts, sliced to 30
    (24, 33, 3, 5, 3, 2, False),
])
def test_ghost_module_matches_timm(in_ch, out_ch, ratio, dw, k, stride, act):
    ours = GhostModule(in_ch, out_ch, stride=stride, act=act, ratio=ratio, dw_size=dw, kernel_size=k)
    # timm puts BN + act after both the primary and the cheap conv, like ours; act=False <-> Identity
    ref = TimmGhostModule(in_ch, out_ch, kernel_size=k, ratio=ratio, dw_size=dw, stride=stride,
                          act_layer=nn.ReLU if act else nn.Identity)
    _assert_parity(ours, ref, (2, in_ch, 9, 8))


@pytest.mark.parametrize("in_ch,out_ch,ratio,dw,k", [(16, 16, 2, 3, 3), (32, 64, 3, 5, 3), (16, 30, 4, 3, 1)])
def test_ghost_module_param_and_mac_formulas(in_ch, out_ch, ratio, dw, k):
    m = GhostModule(in_ch, out_ch, ratio=ratio, dw_size=dw, kernel_size=k)
    m_ch = math.ceil(out_ch / ratio)
    ghosts = m_ch * (ratio - 1)
    # primary conv + BN, cheap depthwise conv (one d x d filter per ghost) + BN
    assert count_params(m) == in_ch * m_ch * k * k + 2 * m_ch + ghosts * dw * dw + 2 * ghosts
    assert count_macs(m, (1, in_ch, 8, 8)) == 64 * (in_ch * m_ch * k * k + ghosts * dw * dw)
    assert m(torch.randn(2, in_ch, 8, 8)).shape == (2, out_ch, 8, 8)


def test_ghost_module_splits_intrinsic_and_ghost_maps():
    m = randomize_(GhostModule(8, 12, ratio=3))
    x = torch.randn(2, 8, 6, 6)
    intrinsic = m.primary(x)
    y = m(x)
    assert intrinsic.shape[1] == 4
    torch.testing.assert_close(y[:, :4], intrinsic)
    torch.testing.assert_close(y[:, 4:], m.cheap(intrinsic))
    assert m.cheap.conv.groups == 4 and m.cheap.conv.weight.shape == (8, 1, 3, 3)


def test_ghost_module_rejects_ratio_one():
    with pytest.raises(CifarlabError):
        GhostModule(8, 8, ratio=1)


# --- Ghost bottleneck ------------------------------------------------------

@pytest.mark.parametrize("in_ch,mid,out,k,stride,se", [
    (16, 48, 16, 3, 1, 0.0),    # identity shortcut
    (16, 72, 40, 5, 2, 0.25),   # dw stride 2, SE, conv shortcut
    (40, 120, 40, 5, 1, 0.25),
])
def test_ghost_bottleneck_matches_timm(in_ch, mid, out, k, stride, se):
    ours = GhostBottleneck(in_ch, mid, out, dw_kernel_size=k, stride=stride, se_ratio=se)
    ref = TimmGhostBottleneck(in_ch, mid, out, dw_kernel_size=k, stride=stride, se_ratio=se)
    _assert_parity(ours, ref, (2, in_ch, 8, 8))


def test_make_divisible():
    assert [make_divisible(v) for v in (18.0, 30.0, 12.0, 2.0, 7.0)] == [20, 32, 12, 4, 8]
    assert make_divisible(10.0, 8) == 16  # 8 would lose more than 10 %


# --- GhostECA --------------------------------------------------------------

@pytest.mark.parametrize("position", ["intrinsic", "output"])
@pytest.mark.parametrize("out_ch,ratio,stride", [(32, 2, 1), (30, 4, 2), (64, 3, 1)])
def test_ghost_eca_placement(position, out_ch, ratio, stride):
    m = GhostECAModule(16, out_ch, stride=stride, ratio=ratio, eca_position=position).eval()
    calls, eca_channels = [], []

    def eca_hook(mod, inputs, output):
        calls.append("eca")
        eca_channels.append(inputs[0].shape[1])

    m.eca.register_forward_hook(eca_hook)
    m.cheap.register_forward_hook(lambda mod, i, o: calls.append("cheap"))
    y = m(torch.randn(2, 16, 8, 8))
    assert y.shape == (2, out_ch, 8 // stride, 8 // stride)
    assert eca_channels == [math.ceil(out_ch / ratio) if position == "intrinsic" else out_ch]
    assert m.eca.kernel_size == 3
    assert calls == (["eca", "cheap"] if position == "intrinsic" else ["cheap", "eca"])
    base = GhostModule(16, out_ch, stride=stride, ratio=ratio)
    assert count_params(m) == count_params(base) + 3


def test_ghost_eca_intrinsic_reweights_before_cheap_op():
    m = randomize_(GhostECAModule(8, 16, eca_position="intrinsic"))
    x = torch.randn(2, 8, 6, 6)
    reweighted = m.eca(m.primary(x))
    torch.testing.assert_close(m(x), torch.cat([reweighted, m.cheap(reweighted)], dim=1))


def test_ghost_eca_options():
    m = GhostECAModule(16, 32, eca_kwargs={"kernel_size": 5, "gate": "hardsigmoid"})
    assert m.eca.kernel_size == 5 and isinstance(m.eca, ECA)
    with pytest.raises(CifarlabError):
        GhostECAModule(16, 32, eca_position="input")
    assert CONV_LAYERS["ghost"] is GhostModule and CONV_LAYERS["ghost_eca"] is GhostECAModule


# --- Ghost-ResNets ---------------------------------------------------------

def _ghost_resnet_macs(n: int, ratio: int, dw: int) -> int:
    """Closed form: 3x3 stem, then per block two Ghost modules (3x3 primary conv + dw cheap op), linear head."""
    macs = 32 * 32 * 3 * 16 * 9
    in_ch = 16
    for width, hw in [(16, 32), (32, 16), (64, 8)]:
        m_ch = math.ceil(width / ratio)
        cheap = m_ch * (ratio - 1) * dw * dw
        for _ in range(n):
            macs += hw * hw * (in_ch * m_ch * 9 + cheap)   # conv1 (stride 2 in the first block of stages 2-3)
            macs += hw * hw * (width * m_ch * 9 + cheap)   # conv2
            in_ch = width
    return macs + 64 * 100


def test_ghost_resnet56_matches_paper_size():
    model = create("ghost_resnet56")
    params, macs = count_params(model), count_macs(model)
    assert params == 444_004
    assert macs == 65_292_544
    assert macs == _ghost_resnet_macs(9, ratio=2, dw=3)
    # Han et al. §4.1, CIFAR-10: 0.43 M params, 63 M FLOPs (multiply-adds); 100 classes add 5,850 params
    assert abs(params / 0.43e6 - 1) < 0.05
    assert abs(macs / 63e6 - 1) < 0.05
    # about half of ResNet-56 (858,868 params / 125.49 M MACs)
    assert 0.50 < params / 858_868 < 0.53 and 0.50 < macs / 125.49e6 < 0.53


def test_ghost_ratio_reduces_params():
    params = [count_params(create("ghost_resnet56", conv_kwargs={"ratio": s})) for s in (2, 3, 4)]
    assert params[0] > params[1] > params[2]
    macs = [count_macs(create("ghost_resnet20", conv_kwargs={"ratio": s})) for s in (2, 3, 4)]
    assert macs == [_ghost_resnet_macs(3, s, 3) for s in (2, 3, 4)]
    assert macs[0] > macs[1] > macs[2]
    d3 = count_params(create("ghost_resnet20"))
    d5 = count_params(create("ghost_resnet20", conv_kwargs={"dw_size": 5}))
    assert d5 > d3


def test_ghost_replace_conv1_conv2_both():
    base = count_params(create("resnet20"))
    p = {r: count_params(create("ghost_resnet20", replace=r)) for r in ("conv1", "conv2", "both")}
    assert p["both"] < min(p["conv1"], p["conv2"]) and max(p["conv1"], p["conv2"]) < base
    # each replaced unit changes its own parameters only, so the savings add up
    assert base - p["both"] == (base - p["conv1"]) + (base - p["conv2"])
    block = create("ghost_resnet20", replace="conv1").stages[1][0]
    assert isinstance(block.conv1, GhostModule) and isinstance(block.conv2, ConvNormAct)
    block = create("ghost_resnet20", replace="conv2").stages[1][0]
    assert isinstance(block.conv1, ConvNormAct) and isinstance(block.conv2, GhostModule)


def test_ghost_eca_resnet_placements():
    for position in ("intrinsic", "output"):
        model = create("ghost_eca_resnet20", conv_kwargs={"eca_position": position}).eval()
        units = [m for m in model.modules() if isinstance(m, GhostECAModule)]
        assert len(units) == 18 and {m.eca_position for m in units} == {position}
        seen = set()
        for m in units:
            m.eca.register_forward_hook(lambda mod, i, o, seen=seen: seen.add(i[0].shape[1]))
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        assert seen == ({8, 16, 32} if position == "intrinsic" else {16, 32, 64})
    # ECA (k = 3) in each of the 2 x 27 Ghost modules of ResNet-56
    assert count_params(create("ghost_eca_resnet56")) - count_params(create("ghost_resnet56")) == 54 * 3


# --- GhostNet --------------------------------------------------------------

def test_ghostnet_stage_resolutions():
    model = create("ghostnet").eval()
    sizes = []
    for stage in model.stages:
        stage.register_forward_hook(lambda mod, i, o: sizes.append((o.shape[1], o.shape[2])))
    model(torch.randn(1, 3, 32, 32))
    assert sizes == [(16, 32), (24, 32), (40, 16), (112, 8), (160, 4)]
    n_se = sum(1 for b in model.modules() if isinstance(b, GhostBottleneck) and not isinstance(b.se, nn.Identity))
    assert n_se == 7  # as in the paper's Table 7


PINNED = {
    "ghost_resnet20": 144_964, "ghost_resnet56": 444_004,
    "ghost_eca_resnet20": 145_018, "ghost_eca_resnet56": 444_166, "ghost_eca_resnet18": 5_744_740,
    "ghostnet": 4_029_080, "ghostnet_050": 1_434_128,
}
TIER_RANGE = {"small": (0.2e6, 1.5e6), "standard": (2e6, 30e6)}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_ghost_family_params(name):
    entry = get_entry(name)
    params = count_params(create(name))
    assert params == PINNED[name]
    lo, hi = TIER_RANGE[entry.tier]
    if name.endswith("resnet20"):
        lo = 0.1e6  # half of ResNet-20's 0.28 M: listed beside ResNet-20, below the tier's nominal 0.2 M
    assert lo <= params <= hi
    assert entry.family == ("ghost_eca" if "eca" in name else "ghost")
