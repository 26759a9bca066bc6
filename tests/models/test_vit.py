"""ViT (Dosovitskiy et al. 2021): pinned sizes, parameter formula, parity with timm, DropPath."""

from functools import partial

import pytest
import torch
import torch.nn as nn
from helpers import assert_same_logits, randomize_

from cifarlab.models import count_params, create
from cifarlab.models.layers.transformer import DropPath, TransformerBlock
from cifarlab.models.vit import VisionTransformer


@pytest.mark.parametrize("name, params", [("vit_mini_p4", 1_217_508), ("vit_s_p4", 10_730_212)])
def test_pinned_param_counts(name, params):
    assert count_params(create(name)) == params


@pytest.mark.parametrize("dim, depth, pool", [(128, 6, "token"), (384, 6, "token"), (96, 2, "avg")])
def test_param_formula(dim, depth, pool):
    # patch embed 4*4*3*D + D; position embedding per token; per block 12 D^2 + 13 D
    # (2 LNs 4D, qkv 3D^2+3D, proj D^2+D, MLP 8D^2+5D); final LN 2D; head 100 D + 100
    tokens = 64 + (pool == "token")
    expected = (48 * dim + dim) + (dim if pool == "token" else 0) + tokens * dim
    expected += depth * (12 * dim * dim + 13 * dim) + 2 * dim + 100 * dim + 100
    model = VisionTransformer(dim=dim, depth=depth, num_heads=dim // 32, global_pool=pool)
    assert count_params(model) == expected


def test_block_matches_timm():
    from timm.models import vision_transformer as timm_vit

    ours = TransformerBlock(128, num_heads=4).eval()
    ref = timm_vit.Block(128, num_heads=4, mlp_ratio=4.0, qkv_bias=True,
                         norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    ours.load_state_dict(randomize_(ref).state_dict())  # same key names: norm1, attn.qkv, attn.proj, norm2, mlp.fc1/fc2
    x = torch.randn(2, 65, 128)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_network_matches_timm(pool):
    # timm's 'avg' head normalises the pooled vector (fc_norm) unless fc_norm=False; ours
    # normalises the tokens and then pools, which is timm's fc_norm=False path.
    from timm.models import vision_transformer as timm_vit

    kw = dict(dim=64, depth=2, num_heads=2, global_pool=pool)
    ours = VisionTransformer(**kw).eval()
    ref = timm_vit.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0, qkv_bias=True,
        num_classes=100, global_pool=pool, class_token=pool == "token", fc_norm=False,
    ).eval()
    ours.load_state_dict(randomize_(ref).state_dict())
    assert_same_logits(ours, ref, torch.randn(2, 3, 32, 32))


def test_tokens_and_position_embedding_shapes():
    m = create("vit_mini_p4")
    assert m.pos_embed.shape == (1, 65, 128) and m.cls_token.shape == (1, 1, 128)
    assert m.patch_embed.proj.kernel_size == (4, 4) and m.patch_embed.proj.stride == (4, 4)
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 65, 128)
    assert m.no_weight_decay() == {"pos_embed", "cls_token"}


def test_drop_path_drops_whole_samples():
    x = torch.ones(64, 5, 3)
    dp = DropPath(0.5)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)  # all-or-nothing per sample
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
