"""``cifarlab predict``: an image file of any size -> the model's 32x32 input -> top-k classes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .saved import Pretrained

if TYPE_CHECKING:
    import numpy as np
    import torch

IMAGE_SIZE = 32


def prepare_image(path: str | Path) -> np.ndarray:
    """An image file of any size as uint8 (32, 32, 3) RGB: centre square crop, then bicubic (antialiased) resize."""
    import numpy as np
    from PIL import Image

    from ..data.images import open_image

    im = open_image(path, what=f"cannot read image {path}").convert("RGB")
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(im, dtype=np.uint8)


def normalize_images(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 NHWC -> float NCHW scaled to [0, 1] and standardised (the training transform)."""
    import numpy as np
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0
    return ((x - torch.tensor(mean)) / torch.tensor(std)).permute(0, 3, 1, 2).contiguous()


def predict(pre: Pretrained, paths: list[str | Path], top: int = 5) -> list[dict[str, Any]]:
    """Top-``top`` classes with probabilities for each image file."""
    import numpy as np
    import torch

    images = np.stack([prepare_image(p) for p in paths])
    device = next(pre.model.parameters()).device
    with torch.no_grad():
        logits = pre.model(normalize_images(images, pre.config.mean, pre.config.std).to(device))
    probs = torch.softmax(logits.float(), 1)
    p, idx = probs.topk(min(top, pre.config.num_classes), dim=1)
    return [{"image": str(path), "top": [{"class": pre.config.classes[i], "index": i, "probability": round(q, 6)}
                                         for q, i in zip(pr.tolist(), ix.tolist(), strict=True)]}
            for path, pr, ix in zip(paths, p.cpu(), idx.cpu(), strict=True)]
