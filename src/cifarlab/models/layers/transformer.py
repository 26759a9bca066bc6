"""Transformer building blocks shared by ViT, MLP-Mixer and CoAtNet.

- :class:`PatchEmbed`: non-overlapping ``p x p`` patches -> tokens (a stride-``p`` conv).
- :class:`Mlp`: Linear -> GELU -> Linear (the transformer feed-forward; the Mixer MLPs).
- :class:`MultiHeadSelfAttention`: multi-head scaled dot-product self-attention on
  ``(B, N, C)`` tokens (Vaswani et al., "Attention Is All You Need", NeurIPS 2017),
  optionally with a learned 2D relative-position bias added to the logits.
- :class:`RelativePositionBias`: one learned scalar per head for every 2D offset
  between two positions of an ``H x W`` grid, a ``(2H-1)(2W-1) x heads`` table
  (the "relative attention" of CoAtNet, Dai et al. 2021, Eq. 3; the same table as Swin).
- :class:`TransformerBlock`: the pre-norm ViT encoder block (Dosovitskiy et al.,
  "An Image is Worth 16x16 Words", ICLR 2021, Eq. 2-3).
- :class:`DropPath`: stochastic depth on residual branches (Huang et al., "Deep
  Networks with Stochastic Depth", ECCV 2016).

Attention is computed with ``F.scaled_dot_product_attention`` (the relative bias goes
in as an additive float ``attn_mask``). ``cifarlab.models.complexity`` registers its
MAC count on the CPU, so ``count_macs`` reports ``2 * heads * N * N * head_dim`` per
attention (``q @ k^T`` and ``attn @ v``), the same as explicit matmuls would.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .norm import DropPath

LN_EPS = 1e-6  # the LayerNorm epsilon of the official ViT / Mixer code


class PatchEmbed(nn.Module):
    """Split the image into ``patch x patch`` patches and project each to ``dim`` -> ``(B, N, dim)``."""

    def __init__(self, patch_size: int, dim: int, in_ch: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Linear(in -> hidden) -> GELU -> Linear(hidden -> out) on the last dimension."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RelativePositionBias(nn.Module):
    """Learned bias ``w[h, i - j]`` for every head ``h`` and query/key positions ``i, j`` of a 2D grid.

    Offsets ``(dy, dx)`` range over ``(2H-1) x (2W-1)`` values; ``index[i, j]`` maps a
    query/key pair to its row ``(dy + H - 1) * (2W - 1) + (dx + W - 1)`` of the table.
    """

    def __init__(self, grid_size: tuple[int, int], num_heads: int):
        super().__init__()
        h, w = grid_size
        self.grid_size = (h, w)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coords = torch.stack((ys.flatten(), xs.flatten()))  # (2, N)
        rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
        index = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)
        self.register_buffer("index", index, persistent=False)

    def forward(self) -> torch.Tensor:
        """The bias as ``(heads, N, N)``."""
        return self.relative_position_bias_table[self.index].permute(2, 0, 1)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on ``(B, N, dim)`` tokens, output ``(B, N, dim_out)``.

    ``qkv`` is one Linear to ``3 * dim_out`` laid out as ``(3, heads, head_dim)``;
    ``dim_out`` (default ``dim``) may differ from ``dim`` (CoAtNet expands channels
    in the first block of a stage inside the attention). With ``rel_pos_grid=(H, W)``
    a :class:`RelativePositionBias` is added to the scaled logits; N must be ``H * W``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dim_out: int | None = None,
        qkv_bias: bool = True,
        rel_pos_grid: tuple[int, int] | None = None,
    ):
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % num_heads:
            raise ValueError(f"attention width {dim_out} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.rel_pos = RelativePositionBias(rel_pos_grid, num_heads) if rel_pos_grid else None
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.rel_pos().to(q.dtype) if self.rel_pos is not None else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: ``x + MSA(LN(x))`` then ``x + MLP(LN(x))`` (MLP ratio 4, GELU)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_transformer_weights(module: nn.Module) -> None:
    """ViT-style init: truncated normal (std 0.02) for Linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
