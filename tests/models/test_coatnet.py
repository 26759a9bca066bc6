"""CoAtNet (Dai et al. 2021): pinned sizes, stage resolutions, relative position bias, parity with timm.

timm's ``maxxvit`` is the reference: its ``MbConvBlock`` with the default ``MaxxVitConvCfg``
(the paper-like config: BN pre-norm without activation, expansion 4 from the output
width, stride in the depthwise conv, SE 0.25 of the output width with SiLU, GELU,
2x2 avg-pool + 1x1 conv shortcut with bias) and its ``TransformerBlock2d`` with
``RelPosBias`` and the default ``MaxxVitTransformerCfg`` (LayerNorm2d eps 1e-6,
head size 32, qkv expanding to the output width, 2x2 avg-pool, MLP ratio 4, GELU).
Differences, handled in the weight mapping:
- timm uses 1x1 convs for qkv/proj/MLP on NCHW maps, we use Linear layers on tokens
  (the conv kernels are reshaped to matrices);
- timm's ``TransformerBlock2d`` lays the qkv channels out per head, (heads, 3, head_dim)
  (it does not pass ``cfg.head_first`` on), ours as (3, heads, head_dim): the qkv rows
  are permuted;
- timm's blocks require equal widths at stride 1; ours also accept a width change at
  stride 1 (1x1 projection shortcut, used by S1 whose stride we removed for 32x32),
  which therefore has no timm counterpart and is checked by shapes only.
"""

import pytest
import torch
from helpers import randomize_

from cifarlab.models import count_params, create
from cifarlab.models.coatnet import CoAtNet, MBConvBlock, RelativeTransformerBlock
from cifarlab.models.layers.transformer import RelativePositionBias


@pytest.mark.parametrize("name, params", [("coatnet_mini", 1_250_564), ("coatnet_0", 23_718_128)])
def test_pinned_param_counts(name, params):
    assert count_params(create(name)) == params


def _map_timm(state: dict, head_dim: int = 32) -> dict:
    out = {}
    for k, v in state.items():
        k = (k.replace("shortcut.expand", "shortcut.proj").replace("norm1.norm", "norm1")
             .replace("conv1_1x1", "conv1").replace("conv2_kxk", "conv2").replace("conv3_1x1", "conv3"))
        if any(k.startswith(p) for p in ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")):
            v = v.flatten(1)  # 1x1 conv kernel -> Linear weight
        if k.startswith("attn.qkv."):  # (heads, 3, head_dim) -> (3, heads, head_dim)
            v = v.reshape(-1, 3, head_dim, *v.shape[1:]).transpose(0, 1).reshape(v.shape)
        out[k] = v
    return out


@pytest.mark.parametrize("in_ch, out_ch, stride, size", [(32, 48, 2, 16), (48, 48, 1, 8)])
def test_mbconv_matches_timm(in_ch, out_ch, stride, size):
    from timm.models import maxxvit

    ref = randomize_(maxxvit.MbConvBlock(in_ch, out_ch, stride=stride, cfg=maxxvit.MaxxVitConvCfg()))
    ours = MBConvBlock(in_ch, out_ch, stride=stride).eval()
    ours.load_state_dict(_map_timm(ref.state_dict()))
    x = torch.randn(2, in_ch, size, size)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("in_ch, out_ch, stride, size", [(64, 128, 2, 8), (64, 64, 1, 4)])
def test_relative_transformer_block_matches_timm(in_ch, out_ch, stride, size):
    from timm.layers import pos_embed_rel
    from timm.models import maxxvit

    out_size = size // stride
    cfg = maxxvit.MaxxVitTransformerCfg()
    rel_pos = lambda num_heads, **kw: pos_embed_rel.RelPosBias((out_size, out_size), num_heads, **kw)  # noqa: E731
    ref = randomize_(maxxvit.TransformerBlock2d(in_ch, out_ch, stride=stride, rel_pos_cls=rel_pos, cfg=cfg))
    ours = RelativeTransformerBlock(in_ch, out_ch, (out_size, out_size), stride=stride).eval()
    ours.load_state_dict(_map_timm(ref.state_dict()))
    x = torch.randn(2, in_ch, size, size)
    torch.testing.assert_close(ours(x), ref(x))


def test_relative_position_bias_depends_only_on_offset():
    rpb = RelativePositionBias((3, 4), num_heads=2)
    assert rpb.relative_position_bias_table.shape == ((2 * 3 - 1) * (2 * 4 - 1), 2)
    bias = rpb()
    assert bias.shape == (2, 12, 12)
    pos = [(y, x) for y in range(3) for x in range(4)]
    by_offset = {}
    for i, (yi, xi) in enumerate(pos):
        for j, (yj, xj) in enumerate(pos):
            off = (yi - yj, xi - xj)
            assert rpb.index[i, j] == (off[0] + 2) * 7 + (off[1] + 3)
            by_offset.setdefault(off, bias[:, i, j])
            torch.testing.assert_close(bias[:, i, j], by_offset[off])
    assert len(by_offset) == 5 * 7  # every offset is used


def test_stage_resolutions_and_widths():
    model = create("coatnet_0").eval()
    shapes = []
    hooks = [s.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for s in [model.stem, *model.stages]]
    model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert shapes == [(64, 32, 32), (96, 32, 32), (192, 16, 16), (384, 8, 8), (768, 4, 4)]
    kinds = [type(s[0]).__name__ for s in model.stages]
    assert kinds == ["MBConvBlock", "MBConvBlock", "RelativeTransformerBlock", "RelativeTransformerBlock"]
    assert [len(s) for s in model.stages] == [2, 3, 5, 2]
    s3, s4 = model.stages[2][0].attn, model.stages[3][0].attn
    assert (s3.num_heads, s3.head_dim, s3.rel_pos.grid_size) == (12, 32, (8, 8))
    assert (s4.num_heads, s4.head_dim, s4.rel_pos.grid_size) == (24, 32, (4, 4))
    assert model.stages[0][0].conv1.out_channels == 4 * 96  # expansion 4 of the output width
    assert model.stages[0][0].se.fc1.out_channels == 96 // 4  # SE ratio 0.25 of the output width
    assert all(n.endswith("relative_position_bias_table") for n in model.no_weight_decay())
    assert len(model.no_weight_decay()) == 7


def test_layout_switch():
    m = CoAtNet(dims=(16, 16, 32, 64, 64), depths=(2, 1, 1, 1, 1), layout="CCCT").eval()
    assert [type(s[0]).__name__ for s in m.stages] == ["MBConvBlock"] * 3 + ["RelativeTransformerBlock"]
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(ValueError):
        CoAtNet(layout="CCXT")
