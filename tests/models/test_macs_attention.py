"""count_macs of the attention / MLP networks against closed-form counts.

Convention (cifarlab.models.complexity): MACs = FLOPs / 2 from FlopCounterMode,
convolutions and matmuls only (softmax, norms, activations, the relative-position bias
add, pooling and the SE gate product are not counted). Attention runs through
F.scaled_dot_product_attention, whose CPU kernel is counted by the registration in
complexity.py as ``q @ k^T`` plus ``attn @ v``; the last tests check that this equals
what the same network counts with attention written as explicit matmuls.
"""

import pytest
import torch
import torch.nn.functional as F

from cifarlab.models import count_macs, create

PATCH_IN = 4 * 4 * 3  # one 4x4 RGB patch


def vit_macs(dim: int, depth: int, tokens: int, classes: int = 100) -> int:
    per_block = (
        tokens * dim * 3 * dim          # qkv
        + 2 * tokens * tokens * dim     # q @ k^T and attn @ v over all heads (heads * head_dim = dim)
        + tokens * dim * dim            # output projection
        + 2 * tokens * dim * 4 * dim    # MLP, ratio 4
    )
    return 64 * PATCH_IN * dim + depth * per_block + dim * classes


def mixer_macs(dim: int, depth: int, classes: int = 100) -> int:
    s, ds, dc = 64, dim // 2, 4 * dim
    per_block = dim * 2 * s * ds + s * 2 * dim * dc  # token MLP on each channel, channel MLP on each token
    return 64 * PATCH_IN * dim + depth * per_block + dim * classes


def coatnet_macs(dims, depths, strides=(1, 1, 2, 2, 2), classes=100, expand=4, se_ratio=0.25, mlp=4) -> int:
    r = 32 // strides[0]
    macs = r * r * 9 * (3 * dims[0] + dims[0] * dims[0])  # stem: two 3x3 convs
    cin = dims[0]
    for kind, d, n, s in zip("CCTT", dims[1:], depths[1:], strides[1:], strict=True):
        for j in range(n):
            r_in, r = r, (r // s if j == 0 else r)
            if kind == "C":
                mid, rd = expand * d, int(d * se_ratio)
                macs += r_in * r_in * cin * mid + r * r * 9 * mid + 2 * mid * rd + r * r * mid * d
            else:
                t = r * r  # tokens after the pool
                macs += t * cin * 3 * d + 2 * t * t * d + t * d * d + 2 * t * d * mlp * d
            if cin != d:
                macs += r * r * cin * d  # Proj(Pool(x)) shortcut
            cin = d
    return macs + cin * classes


def test_vit_mini_closed_form():
    # dim 128, 6 blocks, 64 patch tokens + 1 class token
    assert count_macs(create("vit_mini_p4")) == vit_macs(128, 6, 65) == 83_572_736


def test_vit_standard_closed_form():
    assert count_macs(create("vit_s_p4")) == vit_macs(384, 6, 65)


def test_vit_avg_pool_closed_form():
    assert count_macs(create("vit_mini_p4", global_pool="avg")) == vit_macs(128, 6, 64)


@pytest.mark.parametrize("name, dim", [("mixer_mini_p4", 128), ("mixer_s_p4", 512)])
def test_mixer_closed_form(name, dim):
    assert count_macs(create(name)) == mixer_macs(dim, 8)


@pytest.mark.parametrize("name, dims, depths", [
    ("coatnet_mini", (32, 32, 64, 128, 256), (2, 2, 2, 2, 1)),
    ("coatnet_0", (64, 96, 192, 384, 768), (2, 2, 3, 5, 2)),
])
def test_coatnet_closed_form(name, dims, depths):
    assert count_macs(create(name)) == coatnet_macs(dims, depths)


def _explicit_attention(q, k, v, attn_mask=None):
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        logits = logits + attn_mask
    return logits.softmax(dim=-1) @ v


@pytest.mark.parametrize("name", ["vit_mini_p4", "coatnet_mini"])
def test_sdpa_count_equals_explicit_matmuls(name, monkeypatch):
    model = create(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused_out = model(x)
    fused = count_macs(model)
    monkeypatch.setattr(F, "scaled_dot_product_attention", _explicit_attention)
    with torch.no_grad():
        explicit_out = model(x)
    assert count_macs(model) == fused
    torch.testing.assert_close(explicit_out, fused_out, rtol=1e-4, atol=1e-5)
