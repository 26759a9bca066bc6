"""ConvNeXt, its block, large-kernel split attention, and the ResNet -> ConvNeXt modernisation steps."""

import pytest
import torch
import torch.nn as nn
from helpers import assert_same_logits, randomize_

from cifarlab.models import count_macs, count_params, create, get_entry, list_models
from cifarlab.models.convnext import ConvNeXt, ModernBlock, ModernResNet, modernization_steps, stage_kernel_sizes
from cifarlab.models.layers.convnext_block import ConvNeXtBlock, LargeKernelSplitAttention
from cifarlab.models.layers.norm import LayerNorm2d


def _copy_in_order(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters pairwise in registration order; shapes must agree up to 1x1-conv <-> linear."""
    src_p, dst_p = list(src.parameters()), list(dst.parameters())
    assert len(src_p) == len(dst_p)
    with torch.no_grad():
        for a, b in zip(src_p, dst_p, strict=True):
            assert a.numel() == b.numel() and a.squeeze().shape == b.squeeze().shape, (a.shape, b.shape)
            b.copy_(a.reshape(b.shape))


# ---------------------------------------------------------------- the block

@pytest.mark.parametrize("kernel_size", [7, 3])
def test_block_matches_timm(kernel_size):
    from timm.models import convnext as timm_convnext

    dim = 16
    ours = randomize_(ConvNeXtBlock(dim, kernel_size, ls_init_value=1e-6))
    ref = timm_convnext.ConvNeXtBlock(dim, kernel_size=kernel_size, ls_init_value=1e-6, conv_mlp=False,
                                      mlp_ratio=4, drop_path=0.0).eval()
    key = {"dwconv": "conv_dw", "norm": "norm", "pwconv1": "mlp.fc1", "pwconv2": "mlp.fc2", "gamma": "gamma"}
    state = {}
    for name, value in ours.state_dict().items():
        head, _, tail = name.partition(".")
        state[key[head] + ("." + tail if tail else "")] = value
    ref.load_state_dict(state)
    x = torch.randn(2, dim, 8, 8)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("dim,k", [(24, 7), (96, 7), (192, 3)])
def test_block_param_formula(dim, k):
    # dw (k*k*C + C) + LN (2C) + 1x1 up (C*4C + 4C) + 1x1 down (4C*C + C) + layer scale (C)
    expected = (k * k * dim + dim) + 2 * dim + (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim) + dim
    assert count_params(ConvNeXtBlock(dim, k)) == expected


def test_block_layer_scale_init_and_residual():
    block = ConvNeXtBlock(8, 7).eval()
    assert torch.equal(block.gamma, torch.full((8,), 1e-6))
    x = torch.randn(1, 8, 6, 6)
    # with gamma 1e-6 the block starts as (nearly) the identity
    torch.testing.assert_close(block(x), x, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- networks

def test_network_matches_timm_convnext():
    # timm's ConvNeXt adds a stride-2 downsampling layer to stage 1 when the stem stride is 2 (it
    # keeps output stride 32), so compare at its native 4x4 patch on a 64x64 input: the same
    # 16/8/4/2 stages, kernels 7/7/7/3, downsampling layers and head as ours at 2x2 on 32x32.
    from timm.models import convnext as timm_convnext

    ours = randomize_(create("convnext_small_cifar", patch_size=4, img_size=64))
    assert ours.kernel_sizes == (7, 7, 7, 3)
    ref = timm_convnext.ConvNeXt(num_classes=100, depths=(2, 2, 6, 2), dims=(24, 48, 96, 192), patch_size=4,
                                 kernel_sizes=(7, 7, 7, 3), ls_init_value=1e-6).eval()
    _copy_in_order(ours, ref)
    assert_same_logits(ours, ref, torch.randn(2, 3, 64, 64), rtol=1e-4, atol=1e-5)


def test_kernel_capped_by_map_size():
    assert stage_kernel_sizes(7, (16, 8, 4, 2)) == (7, 7, 7, 3)
    assert stage_kernel_sizes(7, (32, 16, 8, 4)) == (7, 7, 7, 7)
    model = create("convnext_tiny_cifar")
    assert model.resolutions == (16, 8, 4, 2)
    dw = [b.dwconv.kernel_size[0] for stage in model.stages for b in stage.blocks]
    assert dw == [7] * 15 + [3] * 3
    with pytest.raises(ValueError):
        stage_kernel_sizes(4, (16,))


def test_stage_resolutions_and_drop_path_schedule():
    model = ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), drop_path_rate=0.2).eval()
    x = torch.randn(1, 3, 32, 32)
    x = model.stem(x)
    sizes = []
    for stage in model.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(8, 16, 16), (16, 8, 8), (24, 4, 4), (32, 2, 2)]
    rates = [b.drop_path.p for stage in model.stages for b in stage.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)


def _convnext_macs(depths, dims, num_classes=100, patch=2, img=32, kernel=7, radix=1):
    """Closed form: stem conv + per block (dw conv, two 1x1s[, split-attention fcs]) + downsampling + head."""
    res = [img // patch // 2**i for i in range(len(dims))]
    ks = [min(kernel, 2 * h - 1) for h in res]
    macs = 3 * patch * patch * dims[0] * res[0] ** 2
    for i, (d, c, h, k) in enumerate(zip(depths, dims, res, ks, strict=True)):
        if i > 0:
            macs += 2 * 2 * dims[i - 1] * c * h * h
        per_block = radix * c * k * k * h * h + 2 * (c * 4 * c) * h * h
        if radix > 1:
            hidden = max(c * radix // 4, 32)
            per_block += c * hidden + hidden * radix * c
        macs += d * per_block
    return macs + dims[-1] * num_classes


@pytest.mark.parametrize("name,depths,dims,radix", [
    ("convnext_small_cifar", (2, 2, 6, 2), (24, 48, 96, 192), 1),
    ("convnext_splitattn", (2, 2, 6, 2), (24, 48, 96, 192), 2),
])
def test_macs_closed_form(name, depths, dims, radix):
    assert count_macs(create(name)) == _convnext_macs(depths, dims, radix=radix)


def test_macs_closed_form_small_custom():
    model = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=10, patch_size=1, kernel_size=5)
    assert count_macs(model) == _convnext_macs((1, 1, 1, 1), (8, 16, 32, 64), num_classes=10, patch=1, kernel=5)


# ---------------------------------------------------------------- split attention

def test_split_attention_shapes_and_params():
    sa = LargeKernelSplitAttention(48, kernel_size=7, radix=2)
    assert sa.conv.groups == 48 and sa.conv.out_channels == 96 and sa.conv.kernel_size == (7, 7)
    assert sa.fc1.out_channels == 32  # max(48 * 2 // 4, 32)
    expected = (48 * 2 * 49 + 96) + (48 * 32 + 32) + (32 * 96 + 96)
    assert count_params(sa) == expected
    assert sa(torch.randn(2, 48, 8, 8)).shape == (2, 48, 8, 8)


def test_split_attention_weights_sum_to_one():
    # If every split of a channel has the same filter, the r-softmax weights (summing to 1)
    # must give back exactly that depthwise conv, whatever the attention MLP says.
    sa = randomize_(LargeKernelSplitAttention(16, kernel_size=5, radix=3))
    dw = nn.Conv2d(16, 16, 5, padding=2, groups=16)
    with torch.no_grad():
        sa.conv.weight.copy_(dw.weight.repeat_interleave(3, dim=0))
        sa.conv.bias.copy_(dw.bias.repeat_interleave(3))
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(sa(x), dw(x))


def test_splitattn_network_uses_split_attention():
    model = create("convnext_splitattn")
    blocks = [b for stage in model.stages for b in stage.blocks]
    assert all(isinstance(b.dwconv, LargeKernelSplitAttention) and b.dwconv.radix == 2 for b in blocks)


# ---------------------------------------------------------------- modernisation steps

STEPS = modernization_steps()


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, ModernBlock)]


def _convs(block):
    return [m for m in block.branch if isinstance(m, nn.Conv2d)]


def _types(model):
    return {type(m) for m in model.modules()}


def test_steps_listed_in_order_and_registered():
    assert len(STEPS) == 12
    assert [s.split("_")[1] for s in STEPS] == [f"step{i}" for i in range(12)]
    assert sorted(STEPS) == list_models(family="convnext_ablation")


def test_each_step_adds_exactly_its_switches():
    expected = [
        None, {"depths"}, {"stem"}, {"depthwise", "width"}, {"inverted_bottleneck"}, {"spatial_first"},
        {"kernel_size"}, {"act"}, {"fewer_acts"}, {"fewer_norms"}, {"norm"}, {"separate_downsample"},
    ]
    defaults = [get_entry(s).defaults for s in STEPS]
    for k in range(1, len(STEPS)):
        prev, cur = defaults[k - 1], defaults[k]
        changed = {key for key in cur if prev.get(key, "unset") != cur[key]}
        assert changed == expected[k], STEPS[k]


@pytest.mark.parametrize("name", STEPS)
def test_every_step_builds_and_runs(name):
    model = create(name).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 32, 32))
        logits = model.head(model.norm(features.mean(dim=(2, 3))))
    assert features.shape[-2:] == (2, 2) and logits.shape == (2, 100)  # every step runs its stages at 16/8/4/2


def test_step0_is_a_bottleneck_resnet():
    model = create("convnext_step0_resnet")
    assert any(isinstance(m, nn.MaxPool2d) for m in model.stem)
    assert [len(s) for s in model.stages] == [3, 4, 6, 3]
    for block in _blocks(model):
        c1, c2, c3 = _convs(block)
        assert c1.kernel_size == (1, 1) and c2.kernel_size == (3, 3) and c3.kernel_size == (1, 1)
        assert c2.groups == 1 and c3.out_channels == 4 * c1.out_channels
        assert sum(isinstance(m, nn.BatchNorm2d) for m in block.branch) == 3
        assert sum(isinstance(m, nn.ReLU) for m in block.branch) == 2 and isinstance(block.act, nn.ReLU)
    assert nn.GELU not in _types(model) and LayerNorm2d not in _types(model)
    assert [_convs(b)[0].out_channels for b in _blocks(model)[:1]] == [24]  # ResNet-50's 64 at 3/8


def test_step1_stage_ratio():
    assert [len(s) for s in create("convnext_step1_stage_ratio").stages] == [3, 3, 9, 3]


def test_step2_patchify_stem():
    model = create("convnext_step2_patchify")
    conv = model.stem[0]
    assert conv.kernel_size == (2, 2) and conv.stride == (2, 2)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.ReLU)) for m in model.stem)


def test_step3_depthwise_and_wider():
    before, model = create("convnext_step2_patchify"), create("convnext_step3_resnextify")
    for block in _blocks(model):
        spatial = _convs(block)[1]
        assert spatial.kernel_size == (3, 3) and spatial.groups == spatial.in_channels == spatial.out_channels
    assert _convs(_blocks(model)[0])[0].out_channels == 36 == _convs(_blocks(before)[0])[0].out_channels * 3 // 2


def test_step4_inverted_bottleneck():
    for block in _blocks(create("convnext_step4_inverted")):
        c1, _, c3 = _convs(block)
        assert c1.out_channels == 4 * c3.out_channels


def test_step5_depthwise_moved_up():
    for block in _blocks(create("convnext_step5_dw_up")):
        c1, c2, c3 = _convs(block)
        assert c1.groups == c1.in_channels and c1.kernel_size == (3, 3)
        assert c2.kernel_size == c3.kernel_size == (1, 1) and c2.out_channels == 4 * c3.out_channels


def test_step6_larger_kernel():
    model = create("convnext_step6_kernel")
    assert model.kernel_sizes == (7, 7, 7, 3)
    per_stage = [{_convs(b)[0].kernel_size[0] for b in _blocks(stage)} for stage in model.stages]
    assert per_stage == [{7}, {7}, {7}, {3}]


def test_step7_gelu():
    types = _types(create("convnext_step7_gelu"))
    assert nn.GELU in types and nn.ReLU not in types


def test_step8_fewer_activations():
    for block in _blocks(create("convnext_step8_fewer_act")):
        layers = list(block.branch)
        acts = [i for i, m in enumerate(layers) if isinstance(m, nn.GELU)]
        assert len(acts) == 1 and isinstance(block.act, nn.Identity)
        before = [m for m in layers[:acts[0]] if isinstance(m, nn.Conv2d)][-1]
        after = [m for m in layers[acts[0]:] if isinstance(m, nn.Conv2d)][0]
        assert before.kernel_size == after.kernel_size == (1, 1)


def test_step9_fewer_norms():
    for block in _blocks(create("convnext_step9_fewer_norm")):
        norms = [i for i, m in enumerate(block.branch) if isinstance(m, nn.BatchNorm2d)]
        assert norms == [1] and block.branch[0].groups == block.branch[0].in_channels


def test_step10_layer_norm():
    model = create("convnext_step10_ln")
    types = _types(model)
    assert nn.BatchNorm2d not in types and LayerNorm2d in types
    assert all(isinstance(b.branch[1], LayerNorm2d) for b in _blocks(model))


def test_step11_separate_downsampling():
    model = create("convnext_step11_downsample")
    for block in _blocks(model):
        assert isinstance(block.shortcut, nn.Identity) and all(c.stride == (1, 1) for c in _convs(block))
    for stage in list(model.stages)[1:]:
        norm, conv = stage[0]
        assert isinstance(norm, LayerNorm2d) and conv.kernel_size == conv.stride == (2, 2)
    assert isinstance(model.norm, nn.LayerNorm)
    before = create("convnext_step10_ln")
    assert all(isinstance(s[0], ModernBlock) for s in before.stages)
    assert any(b.branch[0].stride == (2, 2) for b in _blocks(before))


def test_step11_with_layer_scale_is_convnext():
    cfg = {k: v for k, v in get_entry("convnext_step11_downsample").defaults.items() if k != "drop_path_rate"}
    steps = randomize_(ModernResNet(ls_init_value=1e-6, **cfg))
    ref = ConvNeXt(depths=(3, 3, 9, 3), dims=(36, 72, 144, 288))
    _copy_in_order(steps, ref)
    assert_same_logits(steps, ref, torch.randn(2, 3, 32, 32), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- registry

PINNED = {
    "convnext_small_cifar": 1_244_428,
    "convnext_tiny_cifar": 27_801_412,
    "convnext_splitattn": 1_494_444,
    "convnext_step0_resnet": 3_394_492,
    "convnext_step1_stage_ratio": 3_828_220,
    "convnext_step2_patchify": 3_827_884,
    "convnext_step3_resnextify": 4_465_972,
    "convnext_step4_inverted": 3_640_456,
    "convnext_step5_dw_up": 3_555_712,
    "convnext_step6_kernel": 3_616_192,
    "convnext_step7_gelu": 3_616_192,
    "convnext_step8_fewer_act": 3_616_192,
    "convnext_step9_fewer_norm": 3_603_772,
    "convnext_step10_ln": 3_606_508,
    "convnext_step11_downsample": 3_994_948,
}


def test_pinned_counts_cover_every_registered_name():
    names = set(list_models(family="convnext")) | set(list_models(family="convnext_ablation"))
    assert names == set(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_params_and_tier(name):
    params = count_params(create(name))
    assert params == PINNED[name]
    tier = get_entry(name).tier
    assert (0.2e6 <= params <= 1.5e6) if tier == "small" else (2e6 <= params <= 30e6)


def test_tiny_is_convnext_t_at_100_classes():
    # ConvNeXt-T's 28,589,128 params at 1000 classes, minus the head difference (768 * 900 + 900),
    # the 7x7 -> 3x3 taps of stage 4 (3 blocks * 768 * 40) and the 4x4 -> 2x2 stem taps (3 * 12 * 96).
    assert PINNED["convnext_tiny_cifar"] == 28_589_128 - (768 * 900 + 900) - 3 * 768 * 40 - 3 * 12 * 96
