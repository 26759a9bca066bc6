"""Batched augmentation policies on the device: colour jitter, TrivialAugment, AutoAugment, RandAugment,
mixup / cutmix.

Every op here works on a whole batch at once, with its own random draw per
sample taken from the loader's ``torch.Generator`` (so an epoch's augmentation is
a function of (seed, epoch), as on the rest of the fast path).

The image ops take and return float NCHW batches holding uint8 values (whole
numbers in 0..255) and follow the tensor semantics of ``torchvision.transforms``
(v1 functional API, uint8 inputs): the same magnitude tables, the same formulas,
and the same truncation to uint8 after every op (so results match torchvision's
per-image ops up to float rounding at integer boundaries). Differences, by choice:

- colour jitter applies brightness, contrast, saturation in that fixed order
  (torchvision shuffles the order per image) and has no hue term;
- mixup and cutmix pair each sample with the batch reversed (as timm does) and
  draw one lambda per batch; with both enabled each batch uses one of them, 50/50.

The geometric ops (shear, translate, rotate) are one ``grid_sample`` for the whole
batch with nearest interpolation and zero fill, using torchvision's coordinate
conventions (shear about the top-left corner, rotation about the centre,
translation truncated to whole pixels).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

POLICIES = ("none", "trivialaugment", "autoaugment", "randaugment")

# Every op of both policies, in one index space: (name, signed magnitude)
OPS: tuple[tuple[str, bool], ...] = (
    ("identity", False), ("shear_x", True), ("shear_y", True), ("translate_x", True), ("translate_y", True),
    ("rotate", True), ("brightness", True), ("color", True), ("contrast", True), ("sharpness", True),
    ("posterize", False), ("solarize", False), ("autocontrast", False), ("equalize", False), ("invert", False),
)
OP_INDEX = {name: i for i, (name, _) in enumerate(OPS)}
_GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")


def _magnitude_space(num_bins: int, wide: bool, size: int) -> dict[str, torch.Tensor]:
    """Magnitudes per bin, as torchvision's ``TrivialAugmentWide`` (wide) and ``AutoAugment`` (not) define them."""
    lin = lambda hi: torch.linspace(0.0, hi, num_bins)  # noqa: E731
    color = 0.99 if wide else 0.9
    return {
        "shear_x": lin(0.99 if wide else 0.3), "shear_y": lin(0.99 if wide else 0.3),
        "translate_x": lin(32.0 if wide else 150.0 / 331.0 * size),
        "translate_y": lin(32.0 if wide else 150.0 / 331.0 * size),
        "rotate": lin(135.0 if wide else 30.0),
        "brightness": lin(color), "color": lin(color), "contrast": lin(color), "sharpness": lin(color),
        "posterize": (8 - (torch.arange(num_bins) / ((num_bins - 1) / (6 if wide else 4))).round()).float(),
        "solarize": torch.linspace(255.0, 0.0, num_bins),
    }


def _magnitude_table(num_bins: int, wide: bool, size: int) -> torch.Tensor:
    """(len(OPS), num_bins) magnitudes; ops without a magnitude are 0."""
    space = _magnitude_space(num_bins, wide, size)
    return torch.stack([space.get(name, torch.zeros(num_bins)) for name, _ in OPS])


_SIGNED = torch.tensor([s for _, s in OPS])

# torchvision's AutoAugmentPolicy.CIFAR10 (Cubuk et al. 2019): 25 sub-policies of two (op, probability, bin)
_AUTOAUGMENT_CIFAR10 = (
    (("invert", 0.1, None), ("contrast", 0.2, 6)), (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)), (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.5, None), ("equalize", 0.9, None)), (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)), (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, None), ("equalize", 0.5, None)), (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)), (("equalize", 0.3, None), ("autocontrast", 0.4, None)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)), (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, None)), (("equalize", 0.2, None), ("autocontrast", 0.6, None)),
    (("equalize", 0.2, None), ("equalize", 0.6, None)), (("color", 0.9, 9), ("equalize", 0.6, None)),
    (("autocontrast", 0.8, None), ("solarize", 0.2, 8)), (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, None)), (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.9, None), ("solarize", 0.8, 3)), (("equalize", 0.8, None), ("invert", 0.1, None)),
    (("translate_y", 0.7, 9), ("autocontrast", 0.9, None)),
)


# ---- single ops, each on a whole float NCHW batch of uint8 values, per-sample magnitude m of shape (N,) ----

def _to_uint8_values(x: torch.Tensor) -> torch.Tensor:
    """What torchvision's ``.to(torch.uint8)`` does to a float result: clamp to 0..255, truncate."""
    return x.clamp(0, 255).floor()


def _blend(img: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = ratio.view(-1, 1, 1, 1)
    return _to_uint8_values(ratio * img + (1.0 - ratio) * other)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).floor().unsqueeze(1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x), factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a 3x3 smoothed copy (centre weight 5, border pixels kept), as PIL / torchvision."""
    c = x.shape[1]
    kernel = torch.ones((3, 3), dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c).round()
    return _blend(x, degenerate, factor)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` bits of every value."""
    q = torch.exp2(8 - bits.clamp(0, 8).view(-1, 1, 1, 1))
    return torch.floor(x / q) * q


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= threshold.view(-1, 1, 1, 1), 255.0 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch every channel to the full 0..255 range (unchanged where a channel is flat)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi == lo
    scale = torch.where(flat, torch.ones_like(hi), 255.0 / (hi - lo).clamp_min(1))
    return _to_uint8_values((x - torch.where(flat, torch.zeros_like(lo), lo)) * scale)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel, with PIL's lookup-table rule (batched)."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros((n * c, 256), dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    top_count = hist.gather(1, flat.amax(dim=1, keepdim=True))  # count of the highest value present
    step = torch.div(h * w - top_count, 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1),
                    rounding_mode="floor")
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = torch.where(step > 0, lut.gather(1, flat), flat)
    return out.reshape(n, c, h, w).to(x.dtype)


def invert(x: torch.Tensor) -> torch.Tensor:
    return 255.0 - x


def affine(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Shear / translate / rotate each sample by its own op and magnitude (identity for other ops).

    Matrices map output pixel centres to input positions in pixel units with the
    origin at the image centre (torchvision's inverse affine matrices); one
    ``grid_sample`` (nearest, zero fill) warps the whole batch.
    """
    n, _, h, w = x.shape
    dev, dt = x.device, x.dtype
    zero = torch.zeros(n, device=dev, dtype=dt)
    is_ = lambda name: op == OP_INDEX[name]  # noqa: E731
    rot = torch.where(is_("rotate"), -torch.deg2rad(m), zero)
    a11, a12, a21, a22 = torch.cos(rot), torch.sin(rot), -torch.sin(rot), torch.cos(rot)
    a12 = torch.where(is_("shear_x"), m, a12)          # x_in = x + m * (y + H/2): shear about the top-left corner
    a21 = torch.where(is_("shear_y"), m, a21)
    t1 = torch.where(is_("shear_x"), m * h / 2, zero) - torch.where(is_("translate_x"), torch.trunc(m), zero)
    t2 = torch.where(is_("shear_y"), m * w / 2, zero) - torch.where(is_("translate_y"), torch.trunc(m), zero)
    theta = torch.stack([torch.stack([a11, a12, t1], 1), torch.stack([a21, a22, t2], 1)], 1)  # N, 2, 3
    xs = torch.arange(w, device=dev, dtype=dt) - (w - 1) / 2
    ys = torch.arange(h, device=dev, dtype=dt) - (h - 1) / 2
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones((h, w), device=dev, dtype=dt)], -1)
    src = torch.einsum("hwk,nik->nhwi", base, theta)  # input positions, pixel units
    grid = torch.stack([src[..., 0] / (w / 2), src[..., 1] / (h / 2)], -1)
    warped = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    geometric = torch.zeros_like(op, dtype=torch.bool)
    for name in _GEOMETRIC:
        geometric |= is_(name)
    return torch.where(geometric.view(-1, 1, 1, 1), warped, x)


def apply_ops(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Apply ``OPS[op[i]]`` with magnitude ``m[i]`` to sample i of a float NCHW batch of uint8 values.

    Every op is computed for the whole batch and selected per sample (no host
    synchronisation; at 32x32 the extra work is small next to a training step).
    """
    out = affine(x, op, m)
    photometric = {
        "brightness": lambda: brightness(x, 1.0 + m), "color": lambda: saturation(x, 1.0 + m),
        "contrast": lambda: contrast(x, 1.0 + m), "sharpness": lambda: sharpness(x, 1.0 + m),
        "posterize": lambda: posterize(x, m), "solarize": lambda: solarize(x, m),
        "autocontrast": lambda: autocontrast(x), "equalize": lambda: equalize(x), "invert": lambda: invert(x),
    }
    for name, fn in photometric.items():
        out = torch.where((op == OP_INDEX[name]).view(-1, 1, 1, 1), fn(), out)
    return out


# ---- policies ----

def _tables_on(policy, dev: torch.device, *names: str) -> None:
    """Move a policy's lookup tables (built on the CPU) to the batch's device, once."""
    for name in names:
        table = getattr(policy, name)
        if table.device != dev:
            setattr(policy, name, table.to(dev))


class TrivialAugment:
    """TrivialAugment Wide (Müller & Hutter 2021): one op per image, uniformly chosen, uniform magnitude bin.

    The 14 ops and 31 magnitude bins of torchvision's ``TrivialAugmentWide``
    (identity included; no invert); a signed magnitude flips sign with p = 0.5.
    """

    ops = tuple(name for name, _ in OPS if name != "invert")

    def __init__(self, image_size: int = 32, num_bins: int = 31):
        self.table = _magnitude_table(num_bins, wide=True, size=image_size)
        self.op_ids = torch.tensor([OP_INDEX[name] for name in self.ops])
        self.signed = _SIGNED

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        _tables_on(self, dev, "table", "op_ids", "signed")
        op = self.op_ids[torch.randint(0, len(self.ops), (n,), device=dev, generator=generator)]
        bins = torch.randint(0, self.table.shape[1], (n,), device=dev, generator=generator)
        sign = torch.where(torch.rand(n, device=dev, generator=generator) < 0.5, -1.0, 1.0)
        m = self.table[op, bins] * torch.where(self.signed[op], sign, 1.0)
        return apply_ops(x, op, m)


class RandAugment:
    """RandAugment (Cubuk et al. 2020), as torchvision's ``RandAugment``: ``num_ops`` ops per image, each drawn
    uniformly (with replacement) from the 14 ops (identity included, no invert), all at magnitude bin
    ``magnitude`` of 31 (AutoAugment's ranges); a signed magnitude flips sign with p = 0.5."""

    ops = TrivialAugment.ops

    def __init__(self, num_ops: int = 2, magnitude: int = 9, image_size: int = 32, num_bins: int = 31):
        if not 0 <= magnitude < num_bins:
            raise ValueError(f"RandAugment magnitude must be a bin in 0..{num_bins - 1}, got {magnitude}")
        self.num_ops = num_ops
        self.mag = _magnitude_table(num_bins, wide=False, size=image_size)[:, magnitude]  # one magnitude per op
        self.op_ids = torch.tensor([OP_INDEX[name] for name in self.ops])
        self.signed = _SIGNED

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        _tables_on(self, dev, "mag", "op_ids", "signed")
        for _ in range(self.num_ops):
            op = self.op_ids[torch.randint(0, len(self.ops), (n,), device=dev, generator=generator)]
            sign = torch.where(torch.rand(n, device=dev, generator=generator) < 0.5, -1.0, 1.0)
            x = apply_ops(x, op, self.mag[op] * torch.where(self.signed[op], sign, 1.0))
        return x


class AutoAugment:
    """AutoAugment's CIFAR-10 policy (Cubuk et al. 2019), as in torchvision: per image one of 25 sub-policies,
    whose two ops each apply with their own probability and fixed magnitude bin (10 bins); signed
    magnitudes flip sign with p = 0.5."""

    def __init__(self, image_size: int = 32):
        table = _magnitude_table(10, wide=False, size=image_size)
        pol = _AUTOAUGMENT_CIFAR10
        self.op = torch.tensor([[OP_INDEX[o] for o, _, _ in sp] for sp in pol])
        self.prob = torch.tensor([[p for _, p, _ in sp] for sp in pol])
        self.mag = torch.tensor([[0.0 if b is None else float(table[OP_INDEX[o], b]) for o, _, b in sp] for sp in pol])
        self.signed = _SIGNED

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        _tables_on(self, dev, "op", "prob", "mag", "signed")
        sub = torch.randint(0, len(self.op), (n,), device=dev, generator=generator)
        for step in range(2):
            op = self.op[sub, step]
            apply = torch.rand(n, device=dev, generator=generator) <= self.prob[sub, step]
            sign = torch.where(torch.rand(n, device=dev, generator=generator) < 0.5, -1.0, 1.0)
            m = self.mag[sub, step] * torch.where(self.signed[op], sign, 1.0)
            x = apply_ops(x, torch.where(apply, op, OP_INDEX["identity"]), m)
        return x


def make_policy(name: str, image_size: int = 32, randaugment_ops: int = 2, randaugment_magnitude: int = 9):
    """The policy object for an ``AugmentConfig.policy`` value, or None for "none"."""
    if name == "none":
        return None
    if name == "trivialaugment":
        return TrivialAugment(image_size)
    if name == "autoaugment":
        return AutoAugment(image_size)
    if name == "randaugment":
        return RandAugment(randaugment_ops, randaugment_magnitude, image_size)
    raise ValueError(f"unknown policy {name!r}; choose from {list(POLICIES)}")


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast and saturation, each by its own factor drawn per sample from
    [max(0, 1 - strength), 1 + strength] (torchvision's ColorJitter(strength, strength, strength), fixed order)."""
    n, dev = x.shape[0], x.device
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    f = lo + (hi - lo) * torch.rand((3, n), device=dev, generator=generator)
    return saturation(contrast(brightness(x, f[0]), f[1]), f[2])


# ---- mixing: soft targets ----

class MixCut:
    """Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a normalised batch, with soft targets.

    Each batch is mixed with itself reversed. Lambda ~ Beta(alpha, alpha) once per
    batch; the epoch's lambdas (and, with both methods on, which one each batch
    uses) come from a NumPy generator seeded with the loader's epoch seed, drawn
    up front so the training loop never waits on the host. CutMix pastes a box of
    area ~(1 - lambda) at a centre drawn on the device and sets lambda to the area
    actually kept.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int):
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("MixCut needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.mixup_alpha, self.cutmix_alpha, self.num_classes = mixup_alpha, cutmix_alpha, num_classes

    def epoch_plan(self, epoch_seed: int, steps: int) -> list[tuple[bool, float]]:
        """(use cutmix?, lambda) for every step of an epoch."""
        rng = np.random.default_rng(epoch_seed)
        both = self.mixup_alpha > 0 and self.cutmix_alpha > 0
        cut = rng.random(steps) < 0.5 if both else np.full(steps, self.cutmix_alpha > 0)
        beta = lambda a: rng.beta(a, a, steps) if a > 0 else np.zeros(steps)  # noqa: E731
        mix_lam, cut_lam = beta(self.mixup_alpha), beta(self.cutmix_alpha)
        return [(bool(c), float(cut_lam[i] if c else mix_lam[i])) for i, c in enumerate(cut)]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, params: tuple[bool, float],
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        use_cutmix, lam = params
        target = F.one_hot(y, self.num_classes).float()
        other_x, other_t = x.flip(0), target.flip(0)
        if not use_cutmix:
            return lam * x + (1.0 - lam) * other_x, lam * target + (1.0 - lam) * other_t
        _, _, h, w = x.shape
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        centre = torch.stack([torch.randint(0, h, (), device=x.device, generator=generator),
                              torch.randint(0, w, (), device=x.device, generator=generator)])
        y0, y1 = (centre[0] - ch // 2).clamp(0, h), (centre[0] + ch // 2).clamp(0, h)
        x0, x1 = (centre[1] - cw // 2).clamp(0, w), (centre[1] + cw // 2).clamp(0, w)
        rows = torch.arange(h, device=x.device)[:, None]
        cols = torch.arange(w, device=x.device)[None, :]
        box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        kept = 1.0 - ((y1 - y0) * (x1 - x0)).float() / (h * w)
        return torch.where(box, other_x, x), kept * target + (1.0 - kept) * other_t
