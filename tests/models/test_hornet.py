"""HorNet: g^n Conv's recursion widths, gating count, parameter formula, order-1 and order-n
re-derivations; the networks' layout, kernel sizing and pinned sizes; g^n Conv in a ResNet."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_no_padding_only_taps, assert_size, randomize_

from cifarlab import CifarlabError
from cifarlab.models import count_params, create, get_entry
from cifarlab.models.hornet import GnConvNorm, HorNetBlock, RecursiveGatedConv


def gnconv_params(C: int, n: int, k: int) -> int:
    """proj_in C -> 2C, depthwise kxk on sum(dims), n-1 pointwise d_i -> d_{i+1}, proj_out C -> C; all with bias."""
    dims = [C // 2 ** i for i in reversed(range(n))]
    s = sum(dims)  # = C (2 - 2^(1-n))
    return (2 * C * C + 2 * C) + (k * k * s + s) + sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(n - 1)) \
        + (C * C + C)


@pytest.mark.parametrize("C,n", [(64, 1), (64, 2), (64, 3), (128, 4), (160, 5)])
def test_recursion_widths_and_gating_convs(C, n):
    g = RecursiveGatedConv(C, order=n)
    assert g.dims == [C // 2 ** (n - 1 - i) for i in range(n)]  # C/2^(n-1), ..., C/2, C
    assert g.dims[-1] == C and g.dims[0] == C // 2 ** (n - 1)
    assert len(g.pws) == n - 1
    for i, pw in enumerate(g.pws):
        assert (pw.in_channels, pw.out_channels, pw.kernel_size) == (g.dims[i], g.dims[i + 1], (1, 1))
    assert g.proj_in.out_channels == 2 * C == g.dims[0] + sum(g.dims)
    assert g.dwconv.groups == g.dwconv.in_channels == sum(g.dims) == C * (2 - 2 ** (1 - n))
    assert count_params(g) == gnconv_params(C, n, 7)


def test_rejects_width_not_divisible():
    with pytest.raises(ValueError):
        RecursiveGatedConv(24, order=5)


def test_order_one_is_a_gated_conv():
    """n = 1: y = proj_out(p0 * alpha * dw(q)) with [p0, q] = proj_in(x)."""
    C, alpha = 16, 1.0 / 3.0
    g = randomize_(RecursiveGatedConv(C, order=1, kernel_size=5, scale=alpha))
    x = torch.randn(2, C, 9, 9)
    pq = F.conv2d(x, g.proj_in.weight, g.proj_in.bias)
    p0, q = pq[:, :C], pq[:, C:]
    dw = F.conv2d(q, g.dwconv.weight, g.dwconv.bias, padding=2, groups=C)
    y = F.conv2d(p0 * alpha * dw, g.proj_out.weight, g.proj_out.bias)
    torch.testing.assert_close(g(x), y)


def test_order_three_recursion():
    """p1 = p0 * q0, p2 = pw0(p1) * q1, p3 = pw1(p2) * q2, y = proj_out(p3), widths 4/8/16."""
    C, alpha = 16, 1.0 / 3.0
    g = randomize_(RecursiveGatedConv(C, order=3, scale=alpha))
    x = torch.randn(2, C, 8, 8)
    pq = F.conv2d(x, g.proj_in.weight, g.proj_in.bias)
    p0, q = pq[:, :4], pq[:, 4:]
    qs = F.conv2d(q, g.dwconv.weight, g.dwconv.bias, padding=3, groups=28) * alpha
    q0, q1, q2 = qs[:, :4], qs[:, 4:12], qs[:, 12:]
    p1 = p0 * q0
    p2 = F.conv2d(p1, g.pws[0].weight, g.pws[0].bias) * q1
    p3 = F.conv2d(p2, g.pws[1].weight, g.pws[1].bias) * q2
    torch.testing.assert_close(g(x), F.conv2d(p3, g.proj_out.weight, g.proj_out.bias))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_interaction_order(n):
    """Without biases g^n Conv is a homogeneous polynomial of degree n + 1 in its input."""
    g = randomize_(RecursiveGatedConv(32, order=n))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.zero_()
    x = torch.randn(1, 32, 6, 6)
    torch.testing.assert_close(g(2 * x), 2 ** (n + 1) * g(x), rtol=1e-4, atol=1e-5)


def test_block_is_identity_at_init_scale_and_residual():
    block = HorNetBlock(32, order=3).eval()
    x = torch.randn(2, 32, 8, 8)
    assert torch.allclose(block(x), x, atol=1e-4)  # layer scales start at 1e-6
    assert block.gamma1.shape == block.gamma2.shape == (32,)


NAMES = ("hornet_mini", "hornet_t")


@pytest.fixture(scope="module")
def models():
    return {name: create(name).eval() for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_stage_orders_kernels_and_resolutions(models, name):
    model = models[name]
    x = model.stem(torch.zeros(1, 3, 32, 32))
    sizes = []
    for i, stage in enumerate(model.stages):
        x = stage(x)
        sizes.append(x.shape[-1])
        blocks = list(stage)[1:]
        assert {b.gnconv.order for b in blocks} == {i + 2}
        assert {b.gnconv.scale for b in blocks} == {1.0 / 3.0}
        assert {b.gnconv.dwconv.kernel_size for b in blocks} == {(7, 7) if i < 3 else (3, 3)}
    assert sizes == [16, 8, 4, 2]


@pytest.mark.parametrize("name", NAMES)
def test_no_kernel_tap_only_sees_padding(models, name):
    assert_no_padding_only_taps(models[name])


def hornet_macs(depths, dims, kernels, orders, patch=2, num_classes=100, size=32) -> int:
    """Closed form: stem, per block (g^n Conv + 2 x 4C^2 MLP) x HW, 2x2 downsampling convs, head."""
    hw = (size // patch) ** 2
    total = 3 * dims[0] * patch * patch * hw
    for i, (d, C, k, n) in enumerate(zip(depths, dims, kernels, orders, strict=True)):
        if i > 0:
            hw //= 4
            total += dims[i - 1] * C * 4 * hw
        ds = [C // 2 ** j for j in reversed(range(n))]
        gn = 2 * C * C + k * k * sum(ds) + sum(ds[j] * ds[j + 1] for j in range(n - 1)) + C * C
        total += d * hw * (gn + 8 * C * C)
    return total + dims[-1] * num_classes


@pytest.mark.parametrize("name,tier,params,macs", [
    ("hornet_mini", "small", 1_251_360, 16_897_840),
    ("hornet_t", "standard", 21_866_148, 323_052_288),
])
def test_pinned_sizes(models, name, tier, params, macs):
    entry = get_entry(name)
    assert entry.tier == tier
    assert_size(models[name], params, macs)
    d = entry.defaults
    assert macs == hornet_macs(d.get("depths", (2, 3, 18, 2)), d.get("dims", (64, 128, 256, 512)), (7, 7, 7, 3),
                               (2, 3, 4, 5))


def test_gnconv_in_resnet_conv2():
    model = create("resnet20", conv="gnconv", replace="conv2")
    block = model.stages[0][0]
    assert isinstance(block.conv2, GnConvNorm) and block.conv2.gnconv.order == 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(CifarlabError):
        create("resnet20", conv="gnconv", replace="both")
