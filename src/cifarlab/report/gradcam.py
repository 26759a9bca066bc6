"""Grad-CAM (Selvaraju et al., 2017) heat-maps for a few test images of a trained run.

Every registered model splits as ``forward(x) = forward_head(forward_features(x))``
(timm's convention), so the logits are computed through those two calls and the map
explained is what ``forward_features`` hands the head (a 4D map, or a square grid of
tokens for Mixer/ViT-style models) when the predicted logit depends on it. Otherwise —
a ViT whose head reads only the class token, so the final patch tokens get no
gradient, or a plug-in model without the split — it is the output of the last module
that lies on the image grid (side 2..32 dividing 32) and does get a gradient (forward
hooks): the map before global pooling, or the input of a ViT's last block. Channel
weights are the spatial mean of the gradient of the predicted class's logit; the map
is ReLU(sum of weighted channels), upsampled to 32x32 and scaled to 0..1 per image.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib as mpl
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from .. import CifarlabError
from ..data import load_data
from ..run import RunFolder, read_result, run_status
from ..train.evaluate import load_run_model
from .figures import STYLE, _figure, save


def _as_map(t: torch.Tensor, image: torch.Tensor) -> torch.Tensor | None:
    """(N, C, H, W) view of a feature tensor on the image's grid: a 4D map whose side divides the image's, or
    (N, L, C) tokens whose L (or L-1, with a class token first) is such a grid; None for anything else."""
    if not isinstance(t, torch.Tensor) or t.shape[0] != image.shape[0] or not t.is_floating_point():
        return None
    size = image.shape[-1]

    def on_grid(side: int) -> bool:
        return 1 < side <= size and size % side == 0

    if t.dim() == 4 and t.shape[-1] == t.shape[-2] and on_grid(t.shape[-1]):
        return t
    if t.dim() == 3:
        for skip in (0, 1):
            side = math.isqrt(t.shape[1] - skip)
            if side * side == t.shape[1] - skip and on_grid(side):
                return t[:, skip:].transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
    return None


def explained_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(feature map, its gradient, predicted classes): the ``forward_features`` output when the target logit
    depends on it, else the last module output on the image grid whose gradient is not zero."""
    captured: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> None:
        if _as_map(t, x) is not None and t.requires_grad:
            t.retain_grad()
            captured.append(t)

    handles = [m.register_forward_hook(lambda _m, _i, out: keep(out)) for m in model.modules() if m is not model]
    features = None
    try:
        with torch.enable_grad():
            if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
                features = model.forward_features(x)
                keep(features)
                logits = model.forward_head(features)
            else:
                logits = model(x)
            pred = logits.argmax(1)
            cls = pred if target is None else target
            logits.gather(1, cls[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
    live = [t for t in captured if t.grad is not None and _as_map(t.grad, x).abs().sum() > 0]
    if features is not None and any(features is t for t in live):
        chosen = features
    elif live:
        chosen = live[-1]
    else:
        raise CifarlabError("Grad-CAM: the predicted class's logit does not depend on any feature map of the model")
    return _as_map(chosen.detach(), x), _as_map(chosen.grad, x), pred


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(heat-maps (N, H, W) in 0..1 at the input resolution, predicted classes (N,)) for a batch ``x``."""
    model.eval()
    model.zero_grad(set_to_none=True)
    fmap, grad, pred = explained_map(model, x, target)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * fmap).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return ((cam - lo) / (hi - lo).clamp_min(1e-12)).cpu().numpy(), pred.cpu().numpy()


def pick_images(record: dict, n: int, seed: int = 0) -> np.ndarray:
    """Test indices: half the run classified correctly, half it got wrong (when its record says which)."""
    correct = record.get("test_correct")
    rng = np.random.default_rng(seed)
    if not correct:
        total = int(record["split_sizes"]["test"])
        return np.sort(rng.choice(total, size=min(n, total), replace=False))
    flags = np.frombuffer(correct.encode(), dtype=np.uint8) == ord("1")
    right, wrong = np.flatnonzero(flags), np.flatnonzero(~flags)
    k_right = min(len(right), max(n - len(wrong), n // 2))
    chosen = np.concatenate([rng.choice(right, k_right, replace=False),
                             rng.choice(wrong, min(len(wrong), n - k_right), replace=False)])
    return np.sort(chosen)


def gradcam_figure(run_dir: Path, stem: Path, n_images: int = 8) -> list[Path]:
    """Grad-CAM overlays of ``n_images`` test images for the run in ``run_dir`` (PNG and SVG)."""
    folder = RunFolder(run_dir)
    if run_status(folder).state != "done":
        raise CifarlabError(f"--gradcam {run_dir}: not a finished run")
    record = read_result(folder)
    cfg, model, epoch, _ = load_run_model(run_dir)
    data = load_data(cfg.dataset, cfg.data)
    if data.fingerprint != record["dataset_fingerprint"]:
        raise CifarlabError(f"--gradcam {run_dir}: its data ({cfg.data}) now has fingerprint {data.fingerprint}, "
                            f"the run was recorded on {record['dataset_fingerprint']}")
    idx = pick_images(record, n_images)
    images = data.test.images[idx]
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    cams, preds = grad_cam(model.float(), x)
    labels = data.test.labels[idx]
    names = [c.replace("_", " ") for c in data.classes]
    with mpl.rc_context({**STYLE, "axes.grid": False}):
        fig = _figure(1.6 * len(idx) + 1.0, 4.0)
        axes = fig.subplots(2, len(idx), squeeze=False)
        for j in range(len(idx)):
            ok = preds[j] == labels[j]
            axes[0, j].imshow(images[j], interpolation="nearest")
            axes[0, j].set_title(f"true: {names[labels[j]]}\npred: {names[preds[j]]} {'✓' if ok else '✗'}",
                                 fontsize=7, color="black" if ok else "#d62728")
            axes[1, j].imshow(images[j], interpolation="nearest")
            axes[1, j].imshow(cams[j], cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
            for ax in axes[:, j]:
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0, 0].set_ylabel("test image", fontsize=8)
        axes[1, 0].set_ylabel("Grad-CAM of the\npredicted class", fontsize=8)
        fig.colorbar(ScalarMappable(Normalize(0, 1), "jet"), ax=axes.ravel().tolist(), shrink=0.8, pad=0.01,
                     label="Grad-CAM relevance (scaled to 0..1 per image)")
        fig.suptitle(f"Grad-CAM — {record['model']} ({run_dir.parent.name}/{run_dir.name}, checkpoint of epoch "
                     f"{epoch}, test top-1 {100 * record['top1']:.2f} %)")
        return save(fig, stem)
