"""SegNeXt MSCAN: MSCA's kernel shapes, re-derivation (attention times input), parameter formula;
the shared VAN-style block; strip sizing per stage; pinned sizes; MSCA as a ResNet attention."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_no_padding_only_taps, assert_size, randomize_

from cifarlab.models import count_params, create, get_entry
from cifarlab.models.segnext import MultiScaleConvAttention, SpatialGatingBlock


def msca_params(C: int, strips=(7, 11, 21), k0: int = 5) -> int:
    """5x5 depthwise + per strip (1xk and kx1 depthwise) + 1x1 conv, all with bias."""
    return (k0 * k0 * C + C) + sum(2 * (k * C + C) for k in strips) + (C * C + C)


@pytest.mark.parametrize("C,strips", [(32, (7, 11, 21)), (160, (5, 9, 15)), (256, (3, 5, 7))])
def test_msca_kernel_shapes_and_params(C, strips):
    m = MultiScaleConvAttention(C, strips)
    assert m.conv0.weight.shape == (C, 1, 5, 5) and m.conv0.groups == C
    for k, strip in zip(strips, m.strips, strict=True):
        horizontal, vertical = strip
        assert horizontal.weight.shape == (C, 1, 1, k) and horizontal.groups == C
        assert vertical.weight.shape == (C, 1, k, 1) and vertical.groups == C
        assert horizontal.padding == (0, k // 2) and vertical.padding == (k // 2, 0)
    assert m.proj.weight.shape == (C, C, 1, 1)
    assert count_params(m) == msca_params(C, strips)


def test_msca_is_attention_times_input():
    """Att = Conv1x1(DW5(x) + sum_k DWkx1(DW1xk(DW5(x)))), Out = Att * x (strips applied to the 5x5 output)."""
    C, strips = 8, (3, 5, 7)
    m = randomize_(MultiScaleConvAttention(C, strips))
    x = torch.randn(2, C, 10, 10)
    a0 = F.conv2d(x, m.conv0.weight, m.conv0.bias, padding=2, groups=C)
    att = a0
    for k, (h, v) in zip(strips, m.strips, strict=True):
        s = F.conv2d(a0, h.weight, h.bias, padding=(0, k // 2), groups=C)
        att = att + F.conv2d(s, v.weight, v.bias, padding=(k // 2, 0), groups=C)
    att = F.conv2d(att, m.proj.weight, m.proj.bias)
    torch.testing.assert_close(m(x), att * x)
    # and the module's own attention map, taken from its 1x1 conv, times the input
    captured = {}
    m.proj.register_forward_hook(lambda mod, a, out: captured.setdefault("att", out))
    out = m(x)
    torch.testing.assert_close(out, captured["att"] * x)


def test_block_structure_and_residuals():
    """x + ls1 * (u + proj2(MSCA(GELU(proj1(u))))) with u = BN(x), then x + ls2 * MLP(BN(x))."""
    C = 16
    block = randomize_(SpatialGatingBlock(C, MultiScaleConvAttention(C, (3, 5, 7)), mlp_ratio=4))
    x = torch.randn(2, C, 8, 8)
    u = block.norm1(x)
    a = block.attn
    y = x + block.ls1[:, None, None] * (u + a.proj2(a.unit(F.gelu(a.proj1(u)))))
    v = block.norm2(y)
    mlp = block.mlp
    y = y + block.ls2[:, None, None] * mlp.fc2(F.gelu(mlp.dwconv(mlp.fc1(v))))
    torch.testing.assert_close(block(x), y)
    assert mlp.dwconv.kernel_size == (3, 3) and mlp.dwconv.groups == 4 * C
    assert torch.allclose(SpatialGatingBlock(C, nn.Identity()).ls1, torch.full((C,), 1e-2))


NAMES = ("segnext_mscan_mini", "segnext_mscan_t")


@pytest.fixture(scope="module")
def models():
    return {name: create(name).eval() for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_stage_resolutions_and_strip_sizes(models, name):
    model = models[name]
    x = model.stem(torch.zeros(1, 3, 32, 32))
    sizes, strips = [], []
    for stage in model.stages:
        x = stage(x)
        sizes.append(x.shape[-1])
        units = [b.attn.unit for b in stage if isinstance(b, SpatialGatingBlock)]
        kinds = {tuple(s[0].kernel_size[1] for s in u.strips) for u in units}
        assert len(kinds) == 1
        strips.append(kinds.pop())
    assert sizes == [32, 16, 8, 4]
    assert strips == [(7, 11, 21), (7, 11, 21), (5, 9, 15), (3, 5, 7)]


@pytest.mark.parametrize("name", NAMES)
def test_no_kernel_tap_only_sees_padding(models, name):
    assert_no_padding_only_taps(models[name])


@pytest.mark.parametrize("name,tier,params,macs", [
    ("segnext_mscan_mini", "small", 1_038_036, 80_043_520),
    ("segnext_mscan_t", "standard", 3_888_708, 287_063_040),
])
def test_pinned_sizes(models, name, tier, params, macs):
    assert get_entry(name).tier == tier
    assert_size(models[name], params, macs)


def test_msca_as_resnet_attention():
    model = create("resnet20", attention="msca", attention_kwargs={"strip_sizes": (3, 5, 7)})
    assert isinstance(model.stages[2][0].attn, MultiScaleConvAttention)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
