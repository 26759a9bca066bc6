"""Batched, per-sample augmentation on the device (the fast path).

Random crop after zero padding and horizontal (and optionally vertical) flip are
one gather from a pre-padded uint8 batch: every sample gets its own offsets and
flips, drawn from a ``torch.Generator`` so an epoch's augmentation is a function of
(seed, epoch). An optional policy (TrivialAugment / AutoAugment) and colour jitter
follow on the uint8 values (``policies.py``), then normalisation and cutout in
float, then optionally mixup / cutmix with soft targets (``BatchAugment.mix``).
Output is NCHW in channels_last memory (the permuted NHWC buffer), ready for a
channels_last model.
"""

from __future__ import annotations

import torch

from .policies import MixCut, color_jitter as jitter_colors, make_policy


def pad_images(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad a uint8 NHWC batch by ``pad`` pixels on each side (done once per split)."""
    if pad == 0:
        return x
    n, h, w, c = x.shape
    out = torch.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=x.dtype, device=x.device)
    out[:, pad:pad + h, pad:pad + w] = x
    return out


def crop_flip(xp: torch.Tensor, pad: int, hflip: bool, generator: torch.Generator | None, size: int = 32,
              vflip: bool = False) -> torch.Tensor:
    """Per-sample random ``size`` crop from a padded uint8 NHWC batch, with random horizontal (and vertical) flip."""
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
    if vflip:
        flip = torch.rand((n, 1), device=dev, generator=generator) < 0.5
        rows = torch.where(flip, rows.flip(1), rows)
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
    """The train-time pipeline for one batch: crop+flip (uint8 gather), [policy], [colour jitter], normalise,
    cutout; then, in the loader, [mixup / cutmix] (which turns the labels into soft targets)."""

    def __init__(self, mean, std, crop_padding: int = 4, hflip: bool = True, cutout_size: int = 0, device="cpu",
                 *, vflip: bool = False, color_jitter: float = 0.0, policy: str = "none",
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, num_classes: int | None = None):
        self.pad, self.hflip, self.cutout = crop_padding, hflip, cutout_size
        self.vflip, self.color_jitter = vflip, color_jitter
        self.policy = make_policy(policy)
        if (mixup_alpha > 0 or cutmix_alpha > 0) and not num_classes:
            raise ValueError("mixup / cutmix need num_classes")
        self.mixer = MixCut(mixup_alpha, cutmix_alpha, num_classes) if mixup_alpha > 0 or cutmix_alpha > 0 else None
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)

    @classmethod
    def from_config(cls, cfg, mean, std, device="cpu", num_classes: int | None = None) -> "BatchAugment":
        """From an ``AugmentConfig``."""
        return cls(mean, std, cfg.crop_padding, cfg.hflip, cfg.cutout, device, vflip=cfg.vflip,
                   color_jitter=cfg.color_jitter, policy=cfg.policy, mixup_alpha=cfg.mixup_alpha,
                   cutmix_alpha=cfg.cutmix_alpha, num_classes=num_classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Pad a whole split once, so every batch is a single gather."""
        return pad_images(images, self.pad)

    def __call__(self, xp: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = crop_flip(xp, self.pad, self.hflip, generator, vflip=self.vflip)
        if self.policy is not None or self.color_jitter:
            v = x.permute(0, 3, 1, 2).float()  # NCHW view of uint8 values for the image ops
            if self.policy is not None:
                v = self.policy(v, generator)
            if self.color_jitter:
                v = jitter_colors(v, self.color_jitter, generator)
            x = v.permute(0, 2, 3, 1).contiguous()
        x = normalize(x, self.mean, self.std)
        if self.cutout:
            x = cutout(x, self.cutout, generator)
        return x

    def mix_plan(self, epoch_seed: int, steps: int) -> list[tuple[bool, float]] | None:
        """Per-step mixup / cutmix parameters of one epoch, or None when mixing is off."""
        return self.mixer.epoch_plan(epoch_seed, steps) if self.mixer is not None else None

    def mix(self, x: torch.Tensor, y: torch.Tensor, params: tuple[bool, float],
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a normalised batch; returns the images and (N, classes) soft targets."""
        return self.mixer(x, y, params, generator)
