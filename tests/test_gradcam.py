"""Grad-CAM points at the evidence: a small network trained on images whose only class signal is a coloured
square (class k: colour k, anywhere on a noise background) explains held-out images by that square, and on an
image with two squares of different classes, the map of each requested class by that class's square."""

import numpy as np
import pytest
import torch

from cifarlab.config import build_config
from cifarlab.models import create
from cifarlab.report.gradcam import grad_cam
from cifarlab.train import make_train_step, train_epoch

COLOURS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))  # class k's square has colour k
SIDE, MARGIN = 8, 3  # the square's side; how far outside it a peak still counts (the map is 8x8, upsampled)


def planted(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised images, labels and each square's top-left corner (row, col)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(COLOURS)
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.6 + 0.2
    corners = torch.randint(0, 32 - SIDE + 1, (n, 2), generator=g)
    for i, (k, (r, c)) in enumerate(zip(y.tolist(), corners.tolist(), strict=True)):
        x[i, :, r:r + SIDE, c:c + SIDE] = torch.tensor(COLOURS[k]).view(3, 1, 1)
    return (x - 0.5) / 0.25, y, corners


def hit_rate(cams: np.ndarray, corners: torch.Tensor) -> float:
    """Share of maps whose peak lies on the square (or within MARGIN pixels of it)."""
    hits = 0
    for cam, (r, c) in zip(cams, corners.tolist(), strict=True):
        pr, pc = np.unravel_index(np.argmax(cam), cam.shape)
        hits += r - MARGIN <= pr < r + SIDE + MARGIN and c - MARGIN <= pc < c + SIDE + MARGIN
    return hits / len(cams)


@pytest.fixture(scope="module")
def model():
    """ResNet-8 trained to tell the three squares apart (train top-1 > 0.9)."""
    torch.manual_seed(0)
    x, y, _ = planted(192, seed=1)
    batches = [(x[i:i + 48], y[i:i + 48]) for i in range(0, len(y), 48)]
    net = create("resnet20", num_classes=len(COLOURS), depth=8)
    cfg = build_config({"model": "resnet20", "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0, "epochs": 2,
                        "warmup_epochs": 0, "schedule": "constant"})
    training = make_train_step(net, cfg, "cpu", steps_per_epoch=len(batches))
    for _ in range(cfg.epochs):
        stats = train_epoch(training, batches)
    assert stats.top1 > 0.9, f"the network did not learn the squares (train top-1 {stats.top1:.2f})"
    return net


def test_grad_cam_peaks_on_the_planted_evidence(model):
    held_x, held_y, corners = planted(24, seed=2)
    cams, preds = grad_cam(model, held_x, torch.as_tensor(held_y))
    assert (preds == held_y.numpy()).mean() > 0.8
    assert hit_rate(cams, corners) >= 0.8
    # the check can fail: a flat map (peak at the corner pixel) and random maps miss most squares
    rng = np.random.default_rng(0)
    assert hit_rate(np.ones_like(cams), corners) < 0.4
    assert hit_rate(rng.random(cams.shape), corners) < 0.4
    assert hit_rate(cams[::-1].copy(), corners) < 0.4, "another image's map does not fit this one"


def two_squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised images with two squares of different classes, one in columns 0-11 and one in 18-31 (their hit
    regions, MARGIN pixels around each, never meet): images, the two classes and the two top-left corners."""
    g = torch.Generator().manual_seed(seed)
    first = torch.arange(n) % len(COLOURS)
    second = (first + torch.randint(1, len(COLOURS), (n,), generator=g)) % len(COLOURS)
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.6 + 0.2
    rows = torch.randint(0, 32 - SIDE + 1, (n, 2), generator=g)
    left, right = torch.randint(0, 5, (n,), generator=g), torch.randint(18, 32 - SIDE + 1, (n,), generator=g)
    first_left = torch.rand(n, generator=g) < 0.5
    cols = torch.stack([torch.where(first_left, left, right), torch.where(first_left, right, left)], 1)
    corners = torch.stack([rows, cols], 2)  # (image, square, row/col)
    for i in range(n):
        for k, (r, c) in zip((first[i], second[i]), corners[i].tolist(), strict=True):
            x[i, :, r:r + SIDE, c:c + SIDE] = torch.tensor(COLOURS[k]).view(3, 1, 1)
    return (x - 0.5) / 0.25, first, second, corners[:, 0], corners[:, 1]


def test_grad_cam_follows_the_requested_class_on_an_image_of_two(model):
    x, first, second, first_at, second_at = two_squares(24, seed=3)
    first_cams, preds = grad_cam(model, x, first)
    second_cams, _ = grad_cam(model, x, second)
    assert ((preds == first.numpy()) | (preds == second.numpy())).mean() > 0.8, "it names one of the two squares"
    assert hit_rate(first_cams, first_at) >= 0.8 and hit_rate(second_cams, second_at) >= 0.8
    # a map that ignored the requested class (the same for both) would lie on the other square as often
    assert hit_rate(first_cams, second_at) < 0.2 and hit_rate(second_cams, first_at) < 0.2
