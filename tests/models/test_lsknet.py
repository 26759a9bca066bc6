"""LSKNet: the LSK module's kernels and dilations, receptive field, spatial selection masks,
re-derivation and parameter formula; per-stage kernel sizing; pinned sizes; LSK as a ResNet attention."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_no_padding_only_taps, assert_size, randomize_

from cifarlab.models import count_params, create, get_entry
from cifarlab.models.lsknet import CIFAR_LSK_KERNELS, LargeSelectiveKernel
from cifarlab.models.segnext import SpatialGatingBlock


def lsk_params(C: int, kernels=((5, 1), (7, 3)), s: int = 7) -> int:
    """Depthwise convs + one 1x1 C -> C/2 per branch + 2 -> n selection conv + 1x1 C/2 -> C, all with bias."""
    n = len(kernels)
    return sum(k * k * C + C for k, _ in kernels) + n * (C * C // 2 + C // 2) + (2 * n * s * s + n) \
        + (C // 2 * C + C)


def test_paper_kernels_dilations_and_params():
    C = 64
    m = LargeSelectiveKernel(C)
    first, second = m.convs
    assert first.kernel_size == (5, 5) and first.dilation == (1, 1) and first.groups == C
    assert second.kernel_size == (7, 7) and second.dilation == (3, 3) and second.groups == C
    assert first.padding == (2, 2) and second.padding == (9, 9)
    assert [r.out_channels for r in m.reduce] == [C // 2, C // 2]
    assert m.select[0].in_channels == 2 and m.select[0].out_channels == 2 and m.select[0].kernel_size == (7, 7)
    assert m.proj.in_channels == C // 2 and m.proj.out_channels == C
    assert count_params(m) == lsk_params(C)


@pytest.mark.parametrize("kernels,rf", [(((5, 1), (7, 3)), 23), (((5, 1), (7, 2)), 17), (((3, 1), (3, 2)), 7),
                                        (((3, 1), (5, 2), (7, 3)), 29)])
def test_receptive_field_formula_and_measured(kernels, rf):
    """RF = 1 + sum (k_i - 1) d_i, and the depthwise chain's gradient support is exactly that wide."""
    m = LargeSelectiveKernel(4, kernels)
    assert m.receptive_field == rf
    with torch.no_grad():
        for conv in m.convs:
            conv.weight.uniform_(0.5, 1.0)  # positive taps: no cancellation in the support
    x = torch.zeros(1, 4, 41, 41, requires_grad=True)
    u = x
    for conv in m.convs:
        u = conv(u)
    u[0, 0, 20, 20].backward()
    rows = x.grad[0, 0].abs().sum(dim=1).nonzero().flatten()
    cols = x.grad[0, 0].abs().sum(dim=0).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == rf and cols.max() - cols.min() + 1 == rf


def test_spatial_selection_masks_and_output():
    """Masks (N, 2, H, W) = sigmoid(conv7x7([mean_c, max_c](cat(U1', U2')))); out = x * proj(U1' m1 + U2' m2)."""
    C = 16
    m = randomize_(LargeSelectiveKernel(C))
    captured = {}
    m.select.register_forward_hook(lambda mod, a, out: captured.setdefault("masks", out))
    x = torch.randn(3, C, 12, 12)
    out = m(x)
    masks = captured["masks"]
    assert masks.shape == (3, 2, 12, 12)
    assert (masks > 0).all() and (masks < 1).all()
    # independent sigmoids (not a softmax over branches): the two masks do not sum to one
    assert (masks.sum(dim=1) - 1).abs().max() > 0.1

    u1 = F.conv2d(x, m.convs[0].weight, m.convs[0].bias, padding=2, groups=C)
    u2 = F.conv2d(u1, m.convs[1].weight, m.convs[1].bias, padding=9, dilation=3, groups=C)
    f1 = F.conv2d(u1, m.reduce[0].weight, m.reduce[0].bias)
    f2 = F.conv2d(u2, m.reduce[1].weight, m.reduce[1].bias)
    cat = torch.cat([f1, f2], dim=1)
    agg = torch.cat([cat.mean(dim=1, keepdim=True), cat.max(dim=1, keepdim=True).values], dim=1)
    ref_masks = torch.sigmoid(F.conv2d(agg, m.select[0].weight, m.select[0].bias, padding=3))
    torch.testing.assert_close(masks, ref_masks)
    sel = f1 * ref_masks[:, :1] + f2 * ref_masks[:, 1:]
    torch.testing.assert_close(out, x * F.conv2d(sel, m.proj.weight, m.proj.bias))


NAMES = ("lsknet_mini", "lsknet_t")


@pytest.fixture(scope="module")
def models():
    return {name: create(name).eval() for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_stage_kernels_and_resolutions(models, name):
    model = models[name]
    x = model.stem(torch.zeros(1, 3, 32, 32))
    sizes, kernels = [], []
    for stage in model.stages:
        x = stage(x)
        sizes.append(x.shape[-1])
        units = [b.attn.unit for b in stage if isinstance(b, SpatialGatingBlock)]
        found = {tuple((c.kernel_size[0], c.dilation[0]) for c in u.convs) for u in units}
        assert len(found) == 1
        kernels.append(found.pop())
    assert sizes == [32, 16, 8, 4]
    assert tuple(kernels) == CIFAR_LSK_KERNELS
    assert [1 + sum((k - 1) * d for k, d in ks) for ks in kernels] == [23, 23, 17, 7]


@pytest.mark.parametrize("name", NAMES)
def test_no_kernel_tap_only_sees_padding(models, name):
    assert_no_padding_only_taps(models[name])


@pytest.mark.parametrize("name,tier,params,macs", [
    ("lsknet_mini", "small", 1_053_506, 79_459_200),
    ("lsknet_t", "standard", 3_983_378, 286_858_624),
])
def test_pinned_sizes(models, name, tier, params, macs):
    assert get_entry(name).tier == tier
    assert_size(models[name], params, macs)


def test_lsk_as_resnet_attention():
    model = create("resnet20", attention="lsk", attention_kwargs={"kernels": ((3, 1), (3, 2))})
    assert isinstance(model.stages[1][0].attn, LargeSelectiveKernel)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
