"""EdgeNeXt: conv encoder, SDTA and XCA against timm's reference blocks; the whole network; sizes."""

import re

import pytest
import torch
import torch.nn as nn
from helpers import assert_no_padding_only_taps, assert_same_logits, assert_size, randomize_
from timm.layers import LayerNorm2d as TimmLayerNorm2d
from timm.models.edgenext import ConvBlock, CrossCovarianceAttn, EdgeNeXt as TimmEdgeNeXt, SplitTransposeBlock

from cifarlab.models import count_macs, create, get_entry
from cifarlab.models.edgenext import ConvEncoder, CrossCovarianceAttention, SplitDepthwiseTransposeAttention


def _copy_into(ref: nn.Module, ours: nn.Module, rename=lambda k: k) -> nn.Module:
    ref.load_state_dict({rename(k): v for k, v in ours.state_dict().items()}, strict=True)
    return ref.eval()


@pytest.mark.parametrize("dim,heads", [(48, 4), (96, 8)])
def test_xca_matches_timm(dim, heads):
    ours = randomize_(CrossCovarianceAttention(dim, heads))
    ref = _copy_into(CrossCovarianceAttn(dim, num_heads=heads, qkv_bias=True), ours)
    x = torch.randn(2, 25, dim)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("dim,scales,heads", [(48, 2, 4), (88, 3, 4), (160, 3, 8), (304, 4, 8)])
def test_sdta_matches_timm_split_transpose_block(dim, scales, heads):
    ours = randomize_(SplitDepthwiseTransposeAttention(dim, num_scales=scales, num_heads=heads))
    # timm's defaults match the paper and ours except the positional encoding, which we omit.
    ref = SplitTransposeBlock(dim, num_scales=scales, num_heads=heads, expand_ratio=4, use_pos_emb=False,
                              conv_bias=True, qkv_bias=True, ls_init_value=1e-6)
    _copy_into(ref, ours)
    x = torch.randn(2, dim, 6, 5)
    torch.testing.assert_close(ours(x), ref(x))


def test_sdta_split_widths_and_hierarchy():
    sdta = SplitDepthwiseTransposeAttention(88, num_scales=3, num_heads=4)
    assert sdta.splits == [30, 30, 28]
    assert len(sdta.convs) == 2 and all(c.groups == 30 and c.kernel_size == (3, 3) for c in sdta.convs)
    # The last group passes the split stage unchanged; the second conv sees conv1(g1) + g2.
    captured = {}
    sdta.norm_xca.register_forward_pre_hook(lambda m, a: captured.setdefault("t", a[0]))
    x = torch.randn(1, 88, 4, 4)
    sdta.eval()(x)
    y = captured["t"].transpose(1, 2).reshape(1, 88, 4, 4)
    g1, g2, g3 = torch.split(x, [30, 30, 28], dim=1)
    y1 = sdta.convs[0](g1)
    torch.testing.assert_close(y, torch.cat([y1, sdta.convs[1](y1 + g2), g3], dim=1))


@pytest.mark.parametrize("dim,kernel", [(24, 3), (96, 5), (160, 7)])
def test_conv_encoder_matches_timm(dim, kernel):
    ours = randomize_(ConvEncoder(dim, kernel))
    ref = _copy_into(ConvBlock(dim, kernel_size=kernel, conv_bias=True, expand_ratio=4, ls_init_value=1e-6), ours)
    x = torch.randn(2, dim, 7, 7)
    torch.testing.assert_close(ours(x), ref(x))


def _timm_key(k: str) -> str:
    k = re.sub(r"^stages\.(\d+)\.0\.", r"stages.\1.downsample.", k)
    k = re.sub(r"^stages\.(\d+)\.(\d+)\.", lambda m: f"stages.{m[1]}.blocks.{int(m[2]) - 1}.", k)
    return {"norm.weight": "head.norm.weight", "norm.bias": "head.norm.bias",
            "head.weight": "head.fc.weight", "head.bias": "head.fc.bias"}.get(k, k)


def test_edgenext_xxs_matches_timm_network_with_our_stem():
    """timm's EdgeNeXt configured as edgenext_xxs (kernels 3/5/7/7, no positional encoding), its 4x4 stem
    swapped for our 1x1 stem: the same function."""
    ours = randomize_(create("edgenext_xxs"))
    ref = TimmEdgeNeXt(num_classes=100, depths=(2, 2, 6, 2), dims=(24, 48, 88, 168), heads=(4, 4, 4, 4),
                       kernel_sizes=(3, 5, 7, 7), d2_scales=(2, 2, 3, 4), global_block_counts=(0, 1, 1, 1),
                       use_pos_emb=(False,) * 4)
    ref.stem = nn.Sequential(nn.Conv2d(3, 24, 1, 1), TimmLayerNorm2d(24, eps=1e-6))
    _copy_into(ref, ours, _timm_key)
    assert_same_logits(ours, ref, torch.randn(2, 3, 32, 32), rtol=1e-4, atol=1e-4)


def test_xca_macs_include_both_matmuls():
    B, N, C, h = 1, 16, 96, 8
    xca = CrossCovarianceAttention(C, h)
    linear = 3 * C * C * N + C * C * N
    attention = 2 * h * (C // h) * (C // h) * N  # q k^T and attn v, per head (C/h x C/h x N)
    assert count_macs(xca, (B, N, C)) == linear + attention


NAMES = ("edgenext_xxs", "edgenext_s")


@pytest.fixture(scope="module")
def models():
    """Each registered network built once for the read-only checks below."""
    return {name: create(name).eval() for name in NAMES}


def test_stages_layout(models):
    model = models["edgenext_s"]
    sizes = []
    x = model.stem(torch.zeros(1, 3, 32, 32))
    for stage in model.stages:
        x = stage(x)
        sizes.append(x.shape[-1])
        kinds = [type(b).__name__ for b in stage[1:]]
        assert kinds[:-1] == ["ConvEncoder"] * (len(kinds) - 1)
    assert sizes == [32, 16, 8, 4]
    assert [type(s[-1]).__name__ for s in model.stages] == ["ConvEncoder"] + ["SplitDepthwiseTransposeAttention"] * 3
    assert [s[1].conv_dw.kernel_size[0] for s in model.stages] == [3, 5, 7, 7]


@pytest.mark.parametrize("name", NAMES)
def test_no_kernel_tap_only_sees_padding(models, name):
    assert_no_padding_only_taps(models[name])


@pytest.mark.parametrize("name,tier,params,macs", [
    ("edgenext_xxs", "small", 1_165_540, 62_472_704),
    ("edgenext_s", "standard", 5_284_476, 309_167_104),
])
def test_pinned_sizes(models, name, tier, params, macs):
    assert get_entry(name).tier == tier
    assert_size(models[name], params, macs)
