"""Batched, per-sample augmentation on the device (the fast path).

Random crop after zero padding and horizontal flip are one gather from a
pre-padded uint8 batch: every sample gets its own offsets and flip, drawn from a
``torch.Generator`` so an epoch's augmentation is a function of (seed, epoch).
Normalisation and cutout follow in float. Output is NCHW in channels_last memory
(the permuted NHWC buffer), ready for a channels_last model.
"""

from __future__ import annotations

import torch


def pad_images(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad a uint8 NHWC batch by ``pad`` pixels on each side (done once per split)."""
    if pad == 0:
        return x
    n, h, w, c = x.shape
    out = torch.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=x.dtype, device=x.device)
    out[:, pad:pad + h, pad:pad + w] = x
    return out


def crop_flip(xp: torch.Tensor, pad: int, hflip: bool, generator: torch.Generator | None, size: int = 32) -> torch.Tensor:
    """Per-sample random ``size`` crop from a padded uint8 NHWC batch, with random horizontal flip."""
    n, dev = xp.shape[0], xp.device
    ar = torch.arange(size, device=dev)
    if pad:
        off = torch.randint(0, 2 * pad + 1, (2, n, 1), device=dev, generator=generator)
        rows, cols = off[0] + ar, off[1] + ar
    else:
        rows = cols = ar.expand(n, size)
    if hflip:
        flip = torch.rand((n, 1), device=dev, generator=generator) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    b = torch.arange(n, device=dev)[:, None, None]
    return xp[b, rows[:, :, None], cols[:, None, :]]


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW (channels_last memory), scaled to [0, 1] then standardised."""
    return ((x.float() / 255.0 - mean) / std).permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """DeVries & Taylor 2017: zero a ``size`` square at a random centre (may overlap the border)."""
    n, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (n, 1, 1), device=dev, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=dev, generator=generator)
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    inside = ((ys - cy).abs() * 2 < size) & ((xs - cx).abs() * 2 < size) if size % 2 else \
        (ys >= cy - size // 2) & (ys < cy + size // 2) & (xs >= cx - size // 2) & (xs < cx + size // 2)
    return x * (~inside).unsqueeze(1).to(x.dtype)


class BatchAugment:
    """The train-time pipeline for one batch: crop+flip (uint8 gather), normalise, cutout."""

    def __init__(self, mean, std, crop_padding: int = 4, hflip: bool = True, cutout_size: int = 0, device="cpu"):
        self.pad, self.hflip, self.cutout = crop_padding, hflip, cutout_size
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Pad a whole split once, so every batch is a single gather."""
        return pad_images(images, self.pad)

    def __call__(self, xp: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = normalize(crop_flip(xp, self.pad, self.hflip, generator), self.mean, self.std)
        if self.cutout:
            x = cutout(x, self.cutout, generator)
        return x
