"""MLP-Mixer: Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS 2021.

Patches are linearly embedded to ``dim`` channels (a table of S tokens x C channels).
Each Mixer layer applies, with pre-LayerNorm and a residual each, a token-mixing MLP
(shared across channels, acting on the S tokens of one channel; hidden width D_S) and
a channel-mixing MLP (shared across tokens; hidden width D_C), both Linear-GELU-Linear.
A final LayerNorm, global average pooling over tokens and a linear head close it.

For 32x32 inputs the patch is 4x4 (8x8 = 64 tokens) instead of 16x16 or 32x32. The
hidden widths follow the paper's ratios D_S = C/2, D_C = 4C (Table 1: S = 512/256/2048).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .layers.norm import DropPath, drop_path_rates
from .layers.transformer import LN_EPS, Mlp, PatchEmbed, init_transformer_weights
from .registry import register_model


class MixerBlock(nn.Module):
    """``x + MLP_tokens(LN(x)^T)^T`` then ``x + MLP_channels(LN(x))`` on ``(B, S, C)`` tokens."""

    def __init__(self, dim: int, num_tokens: int, tokens_hidden: int, channels_hidden: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_tokens = Mlp(num_tokens, tokens_hidden)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_channels = Mlp(dim, channels_hidden)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class MlpMixer(nn.Module):
    def __init__(
        self,
        dim: int = 512,
        depth: int = 8,
        patch_size: int = 4,
        img_size: int = 32,
        tokens_ratio: float = 0.5,
        channels_ratio: float = 4.0,
        num_classes: int = 100,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        num_tokens = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.blocks = nn.Sequential(*[
            MixerBlock(dim, num_tokens, int(dim * tokens_ratio), int(dim * channels_ratio), dp)
            for dp in drop_path_rates(drop_path_rate, [depth])[0]
        ])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, num_classes)
        init_transformer_weights(self)
        nn.init.zeros_(self.head.weight)  # zero-initialised classifier, as in the official ViT/Mixer code

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def mlp_mixer(num_classes: int = 100, **kwargs: Any) -> MlpMixer:
    """An MLP-Mixer for 32x32 images (patch 4 by default)."""
    return MlpMixer(num_classes=num_classes, **kwargs)


_PAPER = "MLP-Mixer: An all-MLP Architecture for Vision (Tolstikhin et al., 2021)"
_ADAPT = ("Patch 16/32 -> 4 so a 32x32 image gives 8x8 = 64 tokens; the token-mixing MLP therefore acts on "
          "64 tokens; hidden widths keep the paper's ratios D_S = C/2, D_C = 4C.")
_RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 10,
           "label_smoothing": 0.1, "grad_clip": 1.0}

register_model(
    mlp_mixer, name="mixer_mini_p4", family="mlp_mixer", paper=_PAPER, tier="small",
    arch=("patch 4x4 -> 8x8 = 64 tokens; 8 Mixer layers, C = 128, D_S = 64, D_C = 512; every layer at "
          "8x8 tokens; LN, global average pool, linear head"),
    adaptation=_ADAPT, recipe=_RECIPE, dim=128, depth=8,
)
register_model(
    mlp_mixer, name="mixer_s_p4", family="mlp_mixer", paper=_PAPER, tier="standard",
    arch=("Mixer-S widths with patch 4: 8x8 = 64 tokens; 8 Mixer layers, C = 512, D_S = 256, D_C = 2048; "
          "every layer at 8x8 tokens; LN, global average pool, linear head; stochastic depth 0.1"),
    adaptation=_ADAPT, recipe=_RECIPE, dim=512, depth=8, drop_path_rate=0.1,
)
