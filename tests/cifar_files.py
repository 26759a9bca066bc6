"""Write small CIFAR files in the exact on-disk formats users have (Hub parquet, python pickles)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from cifarlab.data.meta import CIFAR10_CLASSES, CIFAR100_COARSE, CIFAR100_FINE


def images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_parquet(folder: Path, train: int = 200, test: int = 100, shards: int = 2, size: int = 32,
                  bad_labels: bool = False, drop_label: bool = False, seed: int = 0) -> Path:
    """Hub-schema parquet shards; ``bad_labels`` writes raw ints up to 149 instead of a 100-name ClassLabel."""
    folder.mkdir(parents=True, exist_ok=True)
    fine = datasets.Value("int64") if bad_labels else datasets.ClassLabel(names=CIFAR100_FINE)
    feats = datasets.Features({"img": datasets.Image(), "fine_label": fine,
                               "coarse_label": datasets.ClassLabel(names=CIFAR100_COARSE)})
    for split, n, k in (("train", train, shards), ("test", test, 1)):
        y = np.arange(n) % (150 if bad_labels else 100)
        cols = {"img": list(images(n, seed=n + seed, size=size)), "fine_label": y, "coarse_label": y % 20}
        ds = datasets.Dataset.from_dict(cols, features=feats)
        if drop_label:
            ds = ds.remove_columns("fine_label")
        for i in range(k):
            ds.shard(k, i, contiguous=True).to_parquet(str(folder / f"{split}-{i:05d}-of-{k:05d}.parquet"))
    return folder


def write_cifar10_parquet(folder: Path, train: int = 60, test: int = 20) -> Path:
    """CIFAR-10 in the Hub schema (``img``, ``label``), the images stored as JPEG bytes as re-encoded copies have."""
    folder.mkdir(parents=True, exist_ok=True)
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_CLASSES)})
    for split, n in (("train", train), ("test", test)):
        jpegs = []
        for x in images(n, seed=n):
            buf = io.BytesIO()
            Image.fromarray(x).save(buf, format="JPEG", quality=90)
            jpegs.append({"bytes": buf.getvalue(), "path": None})
        ds = datasets.Dataset.from_dict({"img": jpegs, "label": np.arange(n) % 10}, features=feats)
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return folder


def write_cifar100_python(root: Path, train: int = 200, test: int = 100) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        x = images(n, seed=n)
        d = {b"data": x.transpose(0, 3, 1, 2).reshape(n, -1), b"fine_labels": list(np.arange(n) % 100),
             b"coarse_labels": list(np.arange(n) % 20), b"filenames": [b"x.png"] * n}
        (base / split).write_bytes(pickle.dumps(d))
    meta = {b"fine_label_names": [c.encode() for c in CIFAR100_FINE],
            b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE]}
    (base / "meta").write_bytes(pickle.dumps(meta))
    return base


def write_cifar10_python(root: Path, per_batch: int = 50, test: int = 50) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    batches = [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", test)]
    for i, (name, n) in enumerate(batches):
        x = images(n, seed=i)
        (base / name).write_bytes(pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(n, -1),
                                                b"labels": list(np.arange(n) % 10)}))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}))
    return base


def tar_gz(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return dest
