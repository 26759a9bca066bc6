"""Vision Transformer: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers
for Image Recognition at Scale", ICLR 2021.

The image is cut into non-overlapping patches, each linearly projected to ``dim``; a
learned class token is prepended and a learned 1D position embedding added; a stack
of pre-norm encoder blocks (LN -> multi-head self-attention, LN -> MLP with ratio 4 and
GELU, each residual) follows; a final LayerNorm and a linear head read the class token.

For 32x32 inputs the patch is 4x4 (8x8 = 64 patch tokens, 65 with the class token)
instead of 16x16 (which would leave 4 tokens). ``global_pool="avg"`` drops the class
token and averages the patch tokens instead (the paper's appendix D.3 variant).
Networks are shallower than the paper's (6 blocks instead of 12), since 50k training
images cannot feed a deep ViT trained from scratch.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn

from .layers.norm import drop_path_rates
from .layers.transformer import LN_EPS, PatchEmbed, TransformerBlock, init_transformer_weights
from .registry import register_model


class VisionTransformer(nn.Module):
    def __init__(
        self,
        dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        patch_size: int = 4,
        img_size: int = 32,
        mlp_ratio: float = 4.0,
        num_classes: int = 100,
        global_pool: Literal["token", "avg"] = "token",
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.global_pool = global_pool
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if global_pool == "token" else None
        num_tokens = num_patches + (1 if self.cls_token is not None else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.blocks = nn.Sequential(*[
            TransformerBlock(dim, num_heads, mlp_ratio, qkv_bias, dp)
            for dp in drop_path_rates(drop_path_rate, [depth])[0]
        ])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, num_classes)
        init_transformer_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.head.weight)  # zero-initialised classifier, as in the official ViT/Mixer code
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameters to exclude from weight decay besides norms and biases."""
        return {"pos_embed", "cls_token"} if self.cls_token is not None else {"pos_embed"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.norm(self.blocks(x + self.pos_embed))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def vit(num_classes: int = 100, **kwargs: Any) -> VisionTransformer:
    """A ViT for 32x32 images (patch 4 by default); see VisionTransformer for the options."""
    return VisionTransformer(num_classes=num_classes, **kwargs)


_PAPER = "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale (Dosovitskiy et al., 2021)"
_ADAPT = ("Patch 16 -> 4 so a 32x32 image gives 8x8 = 64 tokens (+1 class token); depth 12 -> 6 for "
          "50k training images from scratch; no pre-logits layer (as in the paper's fine-tuning head). "
          "global_pool='avg' switches to mean-pooled patch tokens without a class token.")
_RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 10,
           "label_smoothing": 0.1, "grad_clip": 1.0}

register_model(
    vit, name="vit_mini_p4", family="vit", paper=_PAPER, tier="small",
    arch=("patch 4x4 -> 8x8 = 64 tokens + class token, learned position embedding; 6 pre-norm blocks, "
          "dim 128, 4 heads of 32, MLP 512 (ratio 4, GELU); every block at 8x8 tokens; LN + linear head "
          "on the class token"),
    adaptation=_ADAPT, recipe=_RECIPE, dim=128, depth=6, num_heads=4,
)
register_model(
    vit, name="vit_s_p4", family="vit", paper=_PAPER, tier="standard",
    arch=("patch 4x4 -> 8x8 = 64 tokens + class token, learned position embedding; 6 pre-norm blocks, "
          "dim 384, 6 heads of 64, MLP 1536 (ratio 4, GELU) (ViT-S width at half its depth); every block "
          "at 8x8 tokens; LN + linear head on the class token; stochastic depth 0.1"),
    adaptation=_ADAPT, recipe=_RECIPE, dim=384, depth=6, num_heads=6, drop_path_rate=0.1,
)
