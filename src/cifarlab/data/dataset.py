"""Decode a source once into uint8 arrays, validate it, and cache it by fingerprint."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import CifarlabError
from ..io import atomic_open
from .meta import DATASETS, DatasetInfo
from .sources import RawSource, cache_root, resolve_source
from .splits import Split, check_class_counts

CACHE_VERSION = 2  # 2: every split checked against the CIFAR schema before decoding


@dataclass
class CifarData:
    name: str
    source: str
    kind: str
    fingerprint: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    coarse_classes: tuple[str, ...] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stats_source: str  # "dataset constants" or "computed from train split"
    val: Split | None = None
    images_fingerprint: str = ""  # of the source's images, however split (:func:`images_fingerprint`)
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_sizes(self) -> dict[str, int]:
        sizes = {"train": len(self.train), "test": len(self.test)}
        if self.val is not None:
            sizes["val"] = len(self.val)
        return sizes


def _decode_split(raw: RawSource, info: DatasetInfo, split: str) -> Split:
    """One split of ``raw``, its declared classes counted against ``info`` before anything is decoded."""
    reader = raw.splits[split]
    check_class_counts(reader.classes, info, raw.description)
    return reader.decode()


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def images_fingerprint(*splits: Split) -> str:
    """sha256 over the sorted sha256 digests of every image with its label (pixels, then the label as 8 bytes):
    the same images with the same labels give the same fingerprint however they are split, ordered or stored."""
    digests = sorted(hashlib.sha256(image.tobytes() + int(label).to_bytes(8, "little")).digest()
                     for split in splits for image, label in zip(split.images, split.labels, strict=True))
    return hashlib.sha256(b"".join(digests)).hexdigest()


def _splits_to_arrays(train: Split, test: Split) -> dict[str, np.ndarray]:
    out = {"train_x": train.images, "train_y": train.labels, "test_x": test.images, "test_y": test.labels}
    if train.coarse is not None and test.coarse is not None:
        out.update(train_c=train.coarse, test_c=test.coarse)
    return out


def _arrays_to_splits(z) -> tuple[Split, Split]:
    c = "train_c" in z.files
    return (Split(z["train_x"], z["train_y"], z["train_c"] if c else None),
            Split(z["test_x"], z["test_y"], z["test_c"] if c else None))


def _read_cache(path: Path) -> tuple[Split, Split, str | None] | None:
    """The cached decoded splits and their images fingerprint (None from a cache written before it was kept), or
    None when there is no cache or it cannot be read (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            images_fp = str(z["images_fingerprint"]) if "images_fingerprint" in z.files else None
            return *_arrays_to_splits(z), images_fp
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


def load_data(dataset: str = "cifar100", source: str | None = None, val_split: int = 0, val_seed: int = 0,
              use_cache: bool = True) -> CifarData:
    """Load, validate and decode ``source`` (see :func:`resolve_source`) for ``dataset``.

    Decoded arrays are cached under ``$CIFARLAB_CACHE`` (default ``~/.cache/cifarlab``)
    keyed by the source's fingerprint, so a source that changed on disk is decoded again.
    """
    if dataset not in DATASETS:
        raise CifarlabError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    info = DATASETS[dataset]
    raw = resolve_source(source, info)
    key = hashlib.sha256(raw.fingerprint.encode()).hexdigest()[:24]
    cache = cache_root() / f"{info.name}-{key}-v{CACHE_VERSION}.npz"
    cached = _read_cache(cache) if use_cache else None
    if cached is not None:
        train, test, images_fp = cached
    else:
        train = _decode_split(raw, info, "train")
        test = _decode_split(raw, info, "test")
        images_fp = images_fingerprint(train, test)
        if use_cache:
            _atomic_savez(cache, **_splits_to_arrays(train, test), images_fingerprint=np.array(images_fp))
    if raw.kind == "synthetic":
        x = train.images.reshape(-1, 3).astype(np.float64) / 255.0
        mean, std = tuple(x.mean(0).round(4).tolist()), tuple(x.std(0).round(4).tolist())
        stats_source = "computed from train split"
    else:
        mean, std, stats_source = info.mean, info.std, "dataset constants"
    data = CifarData(
        name=info.name, source=source or info.hub_id, kind=raw.kind, fingerprint=raw.fingerprint,
        train=train, test=test, classes=info.classes,
        coarse_classes=info.coarse_classes if train.coarse is not None else None,
        mean=mean, std=std, stats_source=stats_source,
        images_fingerprint=images_fp or images_fingerprint(train, test),
    )
    return carve_validation(data, val_split, val_seed) if val_split else data


def _stratified_indices(labels: np.ndarray, num_classes: int, n: int, seed: int, what: str) -> np.ndarray:
    if n % num_classes:
        raise CifarlabError(f"{what} {n} must be a multiple of the number of classes ({num_classes}) "
                            f"to stay stratified")
    per_class = n // num_classes
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise CifarlabError(f"{what} {n} needs {per_class} images of class {c}; the split has {len(idx)}")
        picked.append(rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def carve_validation(data: CifarData, n: int, seed: int = 0) -> CifarData:
    """Move ``n`` training images (the same number per class, chosen with ``seed``) to a validation split."""
    val_idx = _stratified_indices(data.train.labels, data.num_classes, n, seed, "--val-split")
    keep = np.setdiff1d(np.arange(len(data.train)), val_idx)
    if len(keep) == 0:
        raise CifarlabError(f"--val-split {n} leaves no training images")
    return replace(data, train=data.train.take(keep), val=data.train.take(val_idx))


def subsample_train(data: CifarData, n: int, seed: int = 0) -> CifarData:
    """Keep a stratified subset of ``n`` training images (for smoke runs on a CPU)."""
    idx = _stratified_indices(data.train.labels, data.num_classes, n, seed, "the training subset")
    return replace(data, train=data.train.take(idx),
                   notes=[*data.notes, f"training on a stratified subset of {n} images"])


def describe(data: CifarData) -> dict:
    """The record of which data a run used."""
    return {
        "dataset": data.name, "source": data.source, "source_kind": data.kind,
        "dataset_fingerprint": data.fingerprint, "images_fingerprint": data.images_fingerprint,
        "split_sizes": data.split_sizes(),
        "mean": list(data.mean), "std": list(data.std), "stats_source": data.stats_source,
    }

