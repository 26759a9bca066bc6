"""A synthetic dataset in the Hub schema, for tests and offline demos.

Each class has a fixed random low-frequency colour pattern; an image is its
class pattern, randomly shifted and mirrored, plus pixel noise. It is learnable
(a small CNN beats chance within a few hundred steps) and generated from a seed.
"""

from __future__ import annotations

import datasets
import numpy as np

from .meta import CIFAR100_FINE_TO_COARSE, DatasetInfo


def _class_patterns(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(40, 215, size=(num_classes, 4, 4, 3))
    # nearest-neighbour upsample 4x4 -> 32x32, then a 3x3 box blur for softer edges
    up = coarse.repeat(8, axis=1).repeat(8, axis=2)
    pad = np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(pad[:, i:i + 32, j:j + 32] for i in range(3) for j in range(3)) / 9.0


def synthetic_arrays(info: DatasetInfo, n: int, seed: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 NHWC) and labels, balanced over classes."""
    patterns = _class_patterns(info.num_classes, np.random.default_rng(seed))
    rng = np.random.default_rng([seed, split_seed])
    labels = np.arange(n) % info.num_classes
    rng.shuffle(labels)
    imgs = patterns[labels]
    shifts = rng.integers(-3, 4, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):
        imgs[i] = np.roll(imgs[i], (dy, dx), axis=(0, 1))
    flip = rng.random(n) < 0.5
    imgs[flip] = imgs[flip, :, ::-1]
    imgs = imgs + rng.normal(0, 24, size=imgs.shape)
    return np.clip(imgs, 0, 255).astype(np.uint8), labels.astype(np.int64)


def synthetic_dataset(info: DatasetInfo, train: int = 5000, test: int = 1000, seed: int = 0) -> datasets.DatasetDict:
    """A ``DatasetDict`` with the same columns and features as the Hub dataset."""
    features = {"img": datasets.Image(), info.label_column: datasets.ClassLabel(names=list(info.classes))}
    if info.coarse_column:
        features[info.coarse_column] = datasets.ClassLabel(names=list(info.coarse_classes))
    splits = {}
    for split_seed, (split, n) in enumerate((("train", train), ("test", test))):
        x, y = synthetic_arrays(info, n, seed, split_seed)
        cols = {"img": list(x), info.label_column: y}
        if info.coarse_column:
            cols[info.coarse_column] = np.asarray(CIFAR100_FINE_TO_COARSE)[y]
        splits[split] = datasets.Dataset.from_dict(cols, features=datasets.Features(features))
    return datasets.DatasetDict(splits)
