"""ECA, SE, Coordinate Attention and CBAM channel attention; the attention ResNets."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import randomize_
from timm.layers import EcaModule, SEModule
from timm.layers.cbam import ChannelAttn
from timm.layers.coord_attn import CoordAttn

from cifarlab import CifarlabError
from cifarlab.models import count_params, create, get_entry
from cifarlab.models.layers import ATTENTION_LAYERS, create_attention
from cifarlab.models.layers.attention import (
    ECA,
    CBAMChannelAttention,
    CoordinateAttention,
    SqueezeExcite,
    eca_kernel_size,
    make_gate,
)
from cifarlab.models.resnet import BasicBlock

TIMM_GATE = {"sigmoid": "sigmoid", "hardsigmoid": "hard_sigmoid"}


def _assert_parity(ours: nn.Module, ref: nn.Module, key_map: dict[str, str], shape: tuple[int, ...]):
    randomize_(ours)
    state = {}
    for k, v in ours.state_dict().items():
        for old, new in key_map.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        state[k] = v
    ref.load_state_dict(state, strict=True)
    ref.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x))


# --- ECA -------------------------------------------------------------------

@pytest.mark.parametrize("channels,k", [(16, 3), (32, 3), (64, 3), (128, 5), (256, 5), (512, 5)])
def test_eca_adaptive_kernel_size(channels, k):
    assert eca_kernel_size(channels) == k
    eca = ECA(channels)
    assert eca.kernel_size == k
    assert count_params(eca) == k  # one conv1d, no bias
    assert eca.conv.weight.shape == (1, 1, k)


def test_eca_kernel_formula_follows_official_code():
    # t = int(|(log2 C + b) / gamma|), even t -> t + 1; no clamp at 3 (timm clamps; same for C >= 8)
    assert [eca_kernel_size(c) for c in (2, 4, 8, 1024, 2048)] == [1, 1, 3, 5, 7]
    assert eca_kernel_size(64, gamma=1, b=1) == 7


def test_eca_fixed_kernel_and_validation():
    assert count_params(ECA(16, kernel_size=7)) == 7
    with pytest.raises(CifarlabError):
        ECA(16, kernel_size=4)


@pytest.mark.parametrize("channels,kernel_size", [(64, None), (128, None), (48, 7)])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_eca_matches_timm(channels, kernel_size, gate):
    ours = ECA(channels, kernel_size=kernel_size, gate=gate)
    ref = EcaModule(channels=None if kernel_size else channels, kernel_size=kernel_size or 3,
                    gate_layer=TIMM_GATE[gate])
    assert ref.conv.weight.shape == ours.conv.weight.shape
    _assert_parity(ours, ref, {}, (2, channels, 5, 7))


# --- SE --------------------------------------------------------------------

@pytest.mark.parametrize("channels,hidden", [(16, 4), (64, 4), (256, 16)])
def test_se_hidden_width_and_params(channels, hidden):
    se = SqueezeExcite(channels)
    assert se.fc1.out_channels == hidden
    assert count_params(se) == 2 * channels * hidden + hidden + channels


@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_se_matches_timm(gate):
    ours = SqueezeExcite(64, reduction=8, gate=gate)
    ref = SEModule(64, rd_channels=8, bias=True, act_layer=nn.ReLU, gate_layer=TIMM_GATE[gate])
    _assert_parity(ours, ref, {}, (2, 64, 6, 6))


# --- Coordinate Attention ---------------------------------------------------

@pytest.mark.parametrize("channels,mip", [(16, 8), (64, 8), (512, 16)])
def test_ca_reduction_width(channels, mip):
    ca = CoordinateAttention(channels)
    assert ca.reduce.out_channels == mip
    assert ca.conv_h.weight.shape == ca.conv_w.weight.shape == (channels, mip, 1, 1)


@pytest.mark.parametrize("channels", [32, 512])
def test_ca_matches_timm(channels):
    # timm's defaults differ (rd 1/16 * 2/3 rounded to 8, no bias); configured to the paper's code
    ours = CoordinateAttention(channels)
    mip = max(8, channels // 32)
    ref = CoordAttn(channels, rd_channels=mip, bias=True, act_layer=nn.Hardswish,
                    norm_layer=nn.BatchNorm2d, gate_layer="sigmoid")
    # non-square input so that mixing up the H and W strips would show
    _assert_parity(ours, ref, {"reduce.": "conv1.", "bn.": "bn1."}, (2, channels, 8, 5))


def test_ca_gates_are_direction_aware():
    ca = randomize_(CoordinateAttention(16))
    x = torch.ones(1, 16, 6, 4)
    x[..., 2, :] = 3.0  # one bright row: the H-gate differs per row, the W-gate is the same for every column
    gate = ca(x) / x
    assert not torch.allclose(gate[..., 0, 0], gate[..., 2, 0])
    torch.testing.assert_close(gate[..., 0, 0], gate[..., 0, 3])


# --- CBAM channel attention ------------------------------------------------

def test_cbam_avg_max_matches_timm():
    ours = CBAMChannelAttention(64, pooling="avg+max")
    ref = ChannelAttn(64, rd_channels=4, mlp_bias=True)
    _assert_parity(ours, ref, {}, (2, 64, 6, 6))


@pytest.mark.parametrize("pooling", ["avg+l1", "avg+l2"])
def test_cbam_lp_descriptors(pooling):
    m = randomize_(CBAMChannelAttention(32, pooling=pooling))
    x = torch.randn(2, 32, 8, 8)
    if pooling == "avg+l1":
        second = x.abs().mean(dim=(2, 3), keepdim=True)
    else:  # CBAM's own "lp" pool is the unnormalised L2 norm; ours is that / sqrt(HW)
        second = F.lp_pool2d(x, 2, (8, 8)) / 8.0
        torch.testing.assert_close(second, x.pow(2).mean(dim=(2, 3), keepdim=True).sqrt())
    def mlp(d):
        return m.fc2(F.relu(m.fc1(d)))

    expected = x * torch.sigmoid(mlp(x.mean(dim=(2, 3), keepdim=True)) + mlp(second))
    torch.testing.assert_close(m(x), expected)


def test_cbam_l2_pool_has_finite_grad_on_zero_maps():
    m = CBAMChannelAttention(16, pooling="avg+l2")
    x = torch.zeros(2, 16, 4, 4, requires_grad=True)
    m(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cbam_rejects_unknown_pooling():
    with pytest.raises(CifarlabError):
        CBAMChannelAttention(16, pooling="avg+lse")


# --- gates -----------------------------------------------------------------

def test_softmax_gate_is_over_channels_with_mean_one():
    y = torch.randn(3, 10, 4, 5)
    g = make_gate("softmax")(y)
    torch.testing.assert_close(g.mean(dim=1), torch.ones(3, 4, 5))
    torch.testing.assert_close(g / 10, y.softmax(dim=1))
    torch.testing.assert_close(make_gate("hardsigmoid")(y), F.relu6(y + 3) / 6)
    with pytest.raises(CifarlabError):
        make_gate("tanh")


@pytest.mark.parametrize("name", ["eca", "se", "ca", "cbam_channel"])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid", "softmax"])
def test_every_attention_takes_every_gate(name, gate):
    m = create_attention(name, 32, gate=gate).eval()
    x = torch.randn(2, 32, 6, 6)
    out = m(x)
    assert out.shape == x.shape
    if gate == "softmax" and name != "ca":
        # channel gates: the mean over channels of out/x is 1 at every sample
        torch.testing.assert_close((out / x).mean(dim=1), torch.ones(2, 6, 6))


def test_registered_names():
    assert {"eca", "se", "ca", "cbam_channel"} <= set(ATTENTION_LAYERS)


# --- attention ResNets -----------------------------------------------------

PINNED = {
    "eca_resnet20": 275_599, "eca_resnet56": 858_949, "eca_resnet18": 11_220_168,
    "se_resnet20": 278_632, "se_resnet56": 868_048, "se_resnet18": 11_309_212,
    "ca_resnet20": 284_524, "ca_resnet56": 885_724, "ca_resnet18": 11_294_868,
}
FAMILY = {"eca": "eca", "se": "se", "ca": "coordatt"}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_attention_resnet_params_and_entry(name):
    entry = get_entry(name)
    attn = name.split("_")[0]
    assert entry.family == FAMILY[attn]
    assert entry.tier == ("standard" if name.endswith("18") else "small")
    assert entry.defaults["attention"] == attn
    model = create(name)
    assert count_params(model) == PINNED[name]
    assert sum(isinstance(m, ATTENTION_LAYERS[attn]) for m in model.modules()) == (8 if name.endswith("18") else
                                                                                   3 * (int(name[-2:]) - 2) // 6)


def test_eca_adds_k_params_per_block():
    assert count_params(create("eca_resnet20")) - count_params(create("resnet20")) == 9 * 3
    assert count_params(create("eca_resnet56")) - count_params(create("resnet56")) == 27 * 3


def test_eca_kernels_on_wide_resnet18():
    model = create("eca_resnet18")
    assert [m.kernel_size for m in model.modules() if isinstance(m, ECA)] == [3, 3, 5, 5, 5, 5, 5, 5]
    fixed = create("eca_resnet18", attention_kwargs={"kernel_size": 7})
    assert {m.kernel_size for m in fixed.modules() if isinstance(m, ECA)} == {7}


@pytest.mark.parametrize("position", ["before", "after"])
def test_attention_position(position):
    model = create("eca_resnet20", attention_position=position).eval()
    block = model.stages[1][1]
    assert isinstance(block, BasicBlock)
    calls, seen = [], {}

    def record(name):
        def hook(module, inputs, output):
            calls.append(name)
            seen[name] = (inputs[0].clone(), output.clone())
        return hook

    block.attn.register_forward_hook(record("attn"))
    block.act.register_forward_hook(record("act"))
    block.register_forward_hook(record("block"))
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    if position == "before":
        assert calls == ["attn", "act", "block"]
        assert (seen["attn"][0] < 0).any()  # residual branch, before the addition and ReLU
    else:
        assert calls == ["act", "attn", "block"]
        assert (seen["attn"][0] >= 0).all()  # the block output after ReLU
        torch.testing.assert_close(seen["attn"][1], seen["block"][1])
