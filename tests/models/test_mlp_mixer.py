"""MLP-Mixer (Tolstikhin et al. 2021): pinned sizes, parameter formula, parity with timm."""

import pytest
import torch
from helpers import assert_same_logits, randomize_

from cifarlab.models import count_params, create
from cifarlab.models.mlp_mixer import MixerBlock, MlpMixer


@pytest.mark.parametrize("name, params", [("mixer_mini_p4", 1_143_780), ("mixer_s_p4", 17_156_196)])
def test_pinned_param_counts(name, params):
    assert count_params(create(name)) == params


@pytest.mark.parametrize("dim, depth", [(128, 8), (512, 8), (64, 3)])
def test_param_formula(dim, depth):
    # S = 64 tokens, D_S = C/2, D_C = 4C. Per layer: 2 LNs (4C), token MLP (2 S D_S + D_S + S),
    # channel MLP (2 C D_C + D_C + C). Patch embed 48C + C, final LN 2C, head 100C + 100.
    s, ds, dc = 64, dim // 2, 4 * dim
    block = 4 * dim + (2 * s * ds + ds + s) + (2 * dim * dc + dc + dim)
    expected = 49 * dim + depth * block + 2 * dim + 100 * dim + 100
    assert count_params(MlpMixer(dim=dim, depth=depth)) == expected


def test_block_matches_timm():
    from timm.models import mlp_mixer as timm_mixer

    ours = MixerBlock(128, num_tokens=64, tokens_hidden=64, channels_hidden=512).eval()
    ref = timm_mixer.MixerBlock(128, seq_len=64, mlp_ratio=(0.5, 4.0)).eval()  # LN eps 1e-6, GELU
    ours.load_state_dict(randomize_(ref).state_dict())  # norm1, mlp_tokens.fc1/fc2, norm2, mlp_channels.fc1/fc2
    x = torch.randn(2, 64, 128)
    torch.testing.assert_close(ours(x), ref(x))


def test_network_matches_timm():
    from timm.models import mlp_mixer as timm_mixer

    ours = MlpMixer(dim=96, depth=2).eval()
    ref = timm_mixer.MlpMixer(num_classes=100, img_size=32, patch_size=4, num_blocks=2, embed_dim=96,
                              mlp_ratio=(0.5, 4.0)).eval()
    state = {k.replace("stem.", "patch_embed.", 1): v for k, v in randomize_(ref).state_dict().items()}
    ours.load_state_dict(state)
    assert_same_logits(ours, ref, torch.randn(2, 3, 32, 32))


def test_token_mlp_mixes_tokens_and_channel_mlp_does_not():
    block = MixerBlock(8, num_tokens=16, tokens_hidden=8, channels_hidden=32).eval()
    assert block.mlp_tokens.fc1.weight.shape == (8, 16)  # acts along the 16 tokens
    assert block.mlp_channels.fc1.weight.shape == (32, 8)  # acts along the 8 channels
    x = torch.randn(1, 16, 8)
    x2 = x.clone()
    x2[0, 3] += torch.randn(8)  # perturb one token (not by a constant: LayerNorm would remove it)
    changed = (block(x2) - block(x)).abs().sum(-1)[0] > 1e-4
    assert changed.all()  # token mixing spreads it to every token
    block.mlp_tokens.fc2.weight.data.zero_()
    block.mlp_tokens.fc2.bias.data.zero_()
    changed = (block(x2) - block(x)).abs().sum(-1)[0] > 1e-4
    assert changed.tolist() == [i == 3 for i in range(16)]  # channel MLP alone stays per token
