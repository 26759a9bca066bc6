"""Batched, per-sample augmentation on the device (the fast path).

Random crop after zero padding and horizontal (and optionally vertical) flip are
one row gather straight from the padded split: every combination of offsets and
flips is a precomputed table of pixel offsets, so a batch costs one ``randint``
(a combination per sample, from a ``torch.Generator``: an epoch's augmentation is
a function of (seed, epoch)), one table lookup with the images' base offsets
added, and one ``index_select``. Without a policy or colour jitter the split is
normalised once when it is padded (``prepare``), so the gather already yields
normalised floats; otherwise the gather yields uint8 values, the policy
(TrivialAugment / AutoAugment / RandAugment) and jitter follow (``policies.py``), then
normalisation. Cutout follows in float, then optionally mixup / cutmix with soft
targets (``BatchAugment.mix``). Output is NCHW in channels_last memory (the
permuted NHWC buffer), ready for a channels_last model.
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


class CropFlip:
    """Random ``size`` crop of a ``size + 2 pad`` square image with random flips, as one gather per batch.

    Variant ``v`` = (row offset, column offset, horizontal flip, vertical flip); ``table[v]`` holds the
    ``size * size`` flat pixel offsets of that window inside one padded image, mirrored where flipped. Every
    variant is equally likely, so offsets and flips are independent and uniform, as with separate draws.
    """

    def __init__(self, pad: int, hflip: bool = True, vflip: bool = False, size: int = 32, device="cpu"):
        self.size, self.side = size, size + 2 * pad
        ar = torch.arange(size, device=device)
        shift = torch.arange(2 * pad + 1, device=device)
        flips = lambda on: (False, True) if on else (False,)  # noqa: E731
        rows = torch.stack([s + (ar.flip(0) if f else ar) for s in shift for f in flips(vflip)])  # (R, size)
        cols = torch.stack([s + (ar.flip(0) if f else ar) for s in shift for f in flips(hflip)])  # (C, size)
        table = rows[:, None, :, None] * self.side + cols[None, :, None, :]  # (R, C, size, size)
        self.table = table.reshape(-1, size * size)

    @property
    def variants(self) -> int:
        return self.table.shape[0]

    def __call__(self, store: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Windows of images ``indices`` of ``store`` ((N, side, side, C), contiguous) -> (n, size, size, C)."""
        n, c = indices.shape[0], store.shape[-1]
        v = torch.randint(0, self.variants, (n,), device=store.device, generator=generator)
        flat = torch.add(self.table[v], indices[:, None], alpha=self.side * self.side)
        return store.view(-1, c).index_select(0, flat.view(-1)).view(n, self.size, self.size, c)


def crop_flip(xp: torch.Tensor, pad: int, hflip: bool, generator: torch.Generator | None, size: int = 32,
              vflip: bool = False) -> torch.Tensor:
    """Per-sample random ``size`` crop from a padded NHWC batch, with random horizontal (and vertical) flip."""
    idx = torch.arange(xp.shape[0], device=xp.device)
    return CropFlip(pad, hflip, vflip, size, xp.device)(xp.contiguous(), idx, generator)


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NHWC, scaled to [0, 1] then standardised per channel."""
    return (x.float() / 255.0 - mean) / std


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW (channels_last memory), scaled to [0, 1] then standardised."""
    return standardize(x, mean, std).permute(0, 3, 1, 2)


class Cutout:
    """DeVries & Taylor 2017: zero a ``size`` square at a random centre (it may overlap the border).

    The centre is uniform over the ``h * w`` pixels; ``keep[c]`` is the precomputed 0/1 mask for centre ``c``, so
    a batch costs one ``randint``, one table lookup and one multiply.
    """

    def __init__(self, size: int, h: int = 32, w: int = 32, device="cpu"):
        ys = torch.arange(h, device=device)
        xs = torch.arange(w, device=device)
        cy, cx = ys.repeat_interleave(w)[:, None, None], xs.repeat(h)[:, None, None]  # every centre, row-major
        ys, xs = ys[None, :, None], xs[None, None, :]
        if size % 2:
            inside = ((ys - cy).abs() * 2 < size) & ((xs - cx).abs() * 2 < size)
        else:
            inside = (ys >= cy - size // 2) & (ys < cy + size // 2) & (xs >= cx - size // 2) & (xs < cx + size // 2)
        self.keep = (~inside).float()  # (h * w, h, w)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        c = torch.randint(0, self.keep.shape[0], (x.shape[0],), device=x.device, generator=generator)
        return x * self.keep[c].unsqueeze(1).to(x.dtype)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """``Cutout(size)`` applied once to an NCHW batch."""
    return Cutout(size, x.shape[2], x.shape[3], x.device)(x, generator)


class BatchAugment:
    """The train-time pipeline for one batch: crop+flip (one gather), [policy], [colour jitter], normalise
    (done once for the whole split when there is no policy or jitter), cutout; then, in the loader,
    [mixup / cutmix] (which turns the labels into soft targets)."""

    def __init__(self, mean, std, crop_padding: int = 4, hflip: bool = True, cutout_size: int = 0, device="cpu",
                 *, vflip: bool = False, color_jitter: float = 0.0, policy: str = "none",
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, num_classes: int | None = None,
                 randaugment_ops: int = 2, randaugment_magnitude: int = 9):
        self.pad, self.hflip, self.cutout = crop_padding, hflip, cutout_size
        self.vflip, self.color_jitter = vflip, color_jitter
        self.policy = make_policy(policy, randaugment_ops=randaugment_ops,
                                  randaugment_magnitude=randaugment_magnitude)
        if (mixup_alpha > 0 or cutmix_alpha > 0) and not num_classes:
            raise ValueError("mixup / cutmix need num_classes")
        self.mixer = MixCut(mixup_alpha, cutmix_alpha, num_classes) if mixup_alpha > 0 or cutmix_alpha > 0 else None
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        self.crop = CropFlip(crop_padding, hflip, vflip, device=device)
        self.cut = Cutout(cutout_size, device=device) if cutout_size else None
        self.prenormalized = self.policy is None and not color_jitter

    @classmethod
    def from_config(cls, cfg, mean, std, device="cpu", num_classes: int | None = None) -> "BatchAugment":
        """From an ``AugmentConfig``."""
        return cls(mean, std, cfg.crop_padding, cfg.hflip, cfg.cutout, device, vflip=cfg.vflip,
                   color_jitter=cfg.color_jitter, policy=cfg.policy, mixup_alpha=cfg.mixup_alpha,
                   cutmix_alpha=cfg.cutmix_alpha, num_classes=num_classes, randaugment_ops=cfg.randaugment_ops,
                   randaugment_magnitude=cfg.randaugment_magnitude)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Pad a uint8 NHWC split once (and normalise it, when no uint8 image op follows the crop)."""
        padded = pad_images(images, self.pad)
        return standardize(padded, self.mean, self.std) if self.prenormalized else padded.contiguous()

    def __call__(self, store: torch.Tensor, generator: torch.Generator | None,
                 indices: torch.Tensor | None = None) -> torch.Tensor:
        """Augment images ``indices`` (default: all) of a ``prepare``d split."""
        if indices is None:
            indices = torch.arange(store.shape[0], device=store.device)
        x = self.crop(store, indices, generator)
        if not self.prenormalized:  # uint8 values through the image ops, then normalisation
            v = x.permute(0, 3, 1, 2).float()  # NCHW view for the image ops
            if self.policy is not None:
                v = self.policy(v, generator)
            if self.color_jitter:
                v = jitter_colors(v, self.color_jitter, generator)
            x = standardize(v.permute(0, 2, 3, 1).contiguous(), self.mean, self.std)
        x = x.permute(0, 3, 1, 2)
        if self.cut is not None:
            x = self.cut(x, generator)
        return x

    def mix_plan(self, epoch_seed: int, steps: int) -> list[tuple[bool, float]] | None:
        """Per-step mixup / cutmix parameters of one epoch, or None when mixing is off."""
        return self.mixer.epoch_plan(epoch_seed, steps) if self.mixer is not None else None

    def mix(self, x: torch.Tensor, y: torch.Tensor, params: tuple[bool, float],
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a normalised batch; returns the images and (N, classes) soft targets."""
        return self.mixer(x, y, params, generator)
