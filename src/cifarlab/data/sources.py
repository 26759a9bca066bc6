"""Resolve a ``--data`` source: its fingerprint at once, its splits (:class:`~.splits.SplitReader`) when asked.

Sources: a Hub id (``uoft-cs/cifar100``), a local folder of parquet files in the
Hub schema (``train-*.parquet`` / ``test-*.parquet``, train may span shards), the
original ``cifar-100-python`` / ``cifar-10-batches-py`` folder or its ``.tar.gz``,
and ``synthetic[:TRAIN[:TEST[:SEED]]]``. Each source gets a fingerprint: a
sha256 over the source files' names and bytes, the Hub's dataset fingerprint,
or the synthetic parameters.

A local source is a folder or a regular file; a device, FIFO or socket is refused without being opened. Its
folders are walked without following a link (at most ``MAX_FOLDER_ENTRIES`` entries), and every file read must
be a regular file that, its links resolved, is still inside the folder given.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Callable

import datasets
import numpy as np

from .. import CifarlabError
from .archives import extract_tar
from .meta import DatasetInfo
from .parquet import ParquetSplit
from .safe_pickle import load_pickle
from .splits import DatasetSplit, Split, SplitReader, check_class_names, check_image_count, check_labels
from .synthetic import synthetic_dataset
from .untrusted import describe, summary

MAX_FOLDER_ENTRIES = 100_000
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass
class RawSource:
    """A resolved source: its fingerprint is known at once; its splits are opened only when first asked for,
    so a source already decoded into the cache is never read again."""

    kind: str  # "hub" | "parquet" | "pickle" | "synthetic"
    open: Callable[[], dict[str, SplitReader]]
    fingerprint: str
    description: str

    @cached_property
    def splits(self) -> dict[str, SplitReader]:
        return self.open()


def _sha256_files(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode())
        try:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
        except OSError as e:
            raise CifarlabError(f"{p}: cannot be read ({summary(e)})") from None
    return h.hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("CIFARLAB_CACHE", Path.home() / ".cache" / "cifarlab"))


def parse_synthetic(source: str) -> tuple[int, int, int]:
    parts = source.split(":")[1:]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise CifarlabError(f"bad synthetic source {describe(source)}; use synthetic[:TRAIN[:TEST[:SEED]]], "
                            f"e.g. synthetic:2000:500") from None
    train, test, seed = (vals + [5000, 1000, 0][len(vals):])[:3]
    if train <= 0 or test <= 0 or len(vals) > 3:
        raise CifarlabError(f"bad synthetic source {describe(source)}; sizes must be positive: "
                            f"synthetic[:TRAIN[:TEST[:SEED]]]")
    return train, test, seed


def _dataset_splits(ds: datasets.DatasetDict, info: DatasetInfo, where: str) -> dict[str, SplitReader]:
    return {split: DatasetSplit(ds[split], info, where, split) for split in ("train", "test")}


def _load_synthetic(source: str, info: DatasetInfo) -> RawSource:
    train, test, seed = parse_synthetic(source)
    for split, n in (("train", train), ("test", test)):
        check_image_count(n, f"synthetic source {describe(source)}", split)
    where = f"synthetic ({train} train / {test} test, seed {seed})"
    ds = partial(synthetic_dataset, info, train=train, test=test, seed=seed)
    return RawSource("synthetic", lambda: _dataset_splits(ds(), info, where),
                     f"synthetic-v2-{info.name}-{train}-{test}-{seed}", where)


def _special(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file"


def _local_kind(path: Path) -> str | None:
    """"folder", "file", or None when nothing is there; a device, FIFO or socket is refused, never opened."""
    try:
        mode = path.stat().st_mode  # follows a link: the user named this path
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:
        raise CifarlabError(f"data source {describe(str(path), 120)} cannot be read ({summary(e)})") from None
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    raise CifarlabError(f"{describe(str(path), 120)} is {_special(mode)}, not a dataset folder or archive")


def _regular_inside(path: Path, root: Path) -> Path:
    """``path``, once checked to be a regular file that is still inside ``root`` (resolved) with its links
    resolved: a file of a dataset folder may not lead out of it, nor be a device or a pipe that never ends."""
    try:
        real = path.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError) as e:  # RuntimeError: a loop of links
        raise CifarlabError(f"{path}: cannot be read ({summary(e)})") from None
    if not real.is_relative_to(root):
        raise CifarlabError(f"{path} is a link out of the data folder {root}; refused")
    if not stat.S_ISREG(mode):
        raise CifarlabError(f"{path} is {_special(mode)}, not a data file; refused")
    return path


def _walk(root: Path, wanted: Callable[[str], bool]) -> list[Path]:
    """The files under ``root`` whose names are ``wanted``, each checked by :func:`_regular_inside`; folders
    are walked without following links, and at most ``MAX_FOLDER_ENTRIES`` entries are looked at."""
    real_root, found, folders, seen = root.resolve(), [], [root], 0
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    seen += 1
                    if seen > MAX_FOLDER_ENTRIES:
                        raise CifarlabError(f"{root}: more than {MAX_FOLDER_ENTRIES:,} files and folders; "
                                            f"not a dataset folder (pass the folder that holds the data)")
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))
                    elif wanted(entry.name):
                        found.append(_regular_inside(Path(entry.path), real_root))
        except OSError as e:
            raise CifarlabError(f"{folder}: cannot be listed ({summary(e)})") from None
    return sorted(found)


def _load_parquet_folder(root: Path, files: list[Path], info: DatasetInfo) -> RawSource:
    where = f"parquet folder {root}"
    paths: dict[str, list[Path]] = {"train": [], "test": []}
    for f in files:
        for split in paths:
            if f.name.startswith(split) or f.parent.name == split:
                paths[split].append(f)
    missing = [s for s, fs in paths.items() if not fs]
    if missing:
        raise CifarlabError(
            f"{root}: no {' or '.join(missing)} parquet files found (expected names like train-00000-of-00002.parquet "
            f"and test-00000-of-00001.parquet, in the Hub layout)"
        )
    splits = {split: ParquetSplit(fs, info, where, split) for split, fs in paths.items()}
    fingerprint = _sha256_files([p for fs in paths.values() for p in fs], root)
    return RawSource("parquet", lambda: splits, fingerprint, where)


def _unpickle(path: Path) -> dict:
    """A CIFAR pickle's dict, read without running code (:mod:`.safe_pickle`); str keys count as bytes keys."""
    d = load_pickle(path)
    if not isinstance(d, dict):
        raise CifarlabError(f"{path}: not a CIFAR python pickle (holds a {type(d).__name__}, not a dict)")
    return {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}


def _label_names(meta: dict, key: bytes, path: Path) -> tuple[str, ...]:
    if key not in meta:
        raise CifarlabError(f"{path}: CIFAR meta pickle without a {key!r} entry")
    names = meta[key]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise CifarlabError(f"{path}: CIFAR meta pickle entry {key!r} is not a list of class names")
    return check_class_names([n.decode(errors="replace") if isinstance(n, bytes) else n for n in names],
                             f"entry {key!r}", str(path))


def _pickle_split(path: Path, label_keys: list[bytes]) -> tuple[np.ndarray, list[np.ndarray]]:
    d = _unpickle(path)
    if b"data" not in d:
        raise CifarlabError(f"{path}: CIFAR pickle without a b'data' entry")
    data = d[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "iu":
        raise CifarlabError(f"{path}: CIFAR pickle entry b'data' holds {describe(data)}, not an integer array")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise CifarlabError(f"{path}: CIFAR pickle data has shape {data.shape}; "
                            f"expected (N, 3072) for 32x32 RGB images")
    if data.dtype != np.uint8 and len(data) and (data.min() < 0 or data.max() > 255):
        raise CifarlabError(f"{path}: CIFAR pickle data holds values outside 0..255")
    x = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = []
    for k in label_keys:
        if k not in d:
            raise CifarlabError(f"{path}: CIFAR pickle without a {k!r} entry")
        v = d[k]
        ints = v.dtype.kind in "iu" and v.ndim == 1 if isinstance(v, np.ndarray) else (
            isinstance(v, (list, tuple)) and all(isinstance(i, (int, np.integer)) for i in v))
        bad = CifarlabError(f"{path}: CIFAR pickle entry {k!r} does not hold integer labels")
        if not ints:
            raise bad
        try:
            labels.append(np.asarray(v, dtype=np.int64))
        except OverflowError:
            raise bad from None
        if len(labels[-1]) != len(x):
            raise CifarlabError(f"{path}: CIFAR pickle has {len(x)} images but {len(labels[-1])} {k!r}")
    return x, labels


class PickleSplit:
    """One split in CIFAR python pickles (several ``data_batch_*`` files for CIFAR-10's train)."""

    def __init__(self, paths: list[Path], keys: list[bytes], classes: dict[str, tuple[str, ...]], info: DatasetInfo,
                 where: str, split: str):
        self.paths, self.keys, self.classes = paths, keys, classes
        self.info, self.where, self.split = info, where, split

    def decode(self) -> Split:
        images, labels = [], []
        for path in self.paths:
            x, y = _pickle_split(path, self.keys)
            images.append(x)
            labels.append(y)
            check_image_count(sum(len(x) for x in images), self.where, self.split)
        kinds = (("labels", self.info.num_classes), ("coarse labels", len(self.info.coarse_classes or ())))
        checked = [check_labels(np.concatenate([part[i] for part in labels]), n, f"{self.split} {what}", self.where,
                                self.info.name) for i, (what, n) in enumerate(kinds[:len(self.keys)])]
        return Split(np.concatenate(images), *checked)


def _find_pickle_root(root: Path) -> Path | None:
    try:
        folders = sorted(Path(e.path) for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
    except OSError as e:
        raise CifarlabError(f"{root}: cannot be listed ({summary(e)})") from None
    for cand in [root, *folders]:
        if (cand / "meta").is_file() and (cand / "train").is_file() or (cand / "data_batch_1").is_file():
            return cand
    return None


def _load_pickle_folder(root: Path, info: DatasetInfo) -> RawSource:
    base = _find_pickle_root(root)
    if base is None:
        raise CifarlabError(f"{root}: neither parquet files nor a cifar-100-python / cifar-10-batches-py folder")
    inside = partial(_regular_inside, root=root.resolve())
    if (base / "meta").is_file():  # CIFAR-100
        if info.name != "cifar100":
            raise CifarlabError(f"{base} holds CIFAR-100 pickles but --dataset is {info.name}")
        meta = _unpickle(inside(base / "meta"))
        classes = {"fine_label": _label_names(meta, b"fine_label_names", base / "meta"),
                   "coarse_label": _label_names(meta, b"coarse_label_names", base / "meta")}
        keys = [b"fine_labels", b"coarse_labels"]
        files = {"train": [base / "train"], "test": [base / "test"]}
    else:  # CIFAR-10
        if info.name != "cifar10":
            raise CifarlabError(f"{base} holds CIFAR-10 pickles but --dataset is {info.name}")
        meta = _unpickle(inside(base / "batches.meta"))
        classes = {"label": _label_names(meta, b"label_names", base / "batches.meta")}
        keys = [b"labels"]
        files = {"train": sorted(base.glob("data_batch_*")), "test": [base / "test_batch"]}
    for split, paths in files.items():
        if not all(p.exists() or p.is_symlink() for p in paths):
            raise CifarlabError(f"{base}: missing {split} pickle file(s)")
        for p in paths:
            inside(p)
    where = f"python pickles {base}"
    splits = {split: PickleSplit(paths, keys, classes, info, where, split) for split, paths in files.items()}
    used = [p for ps in files.values() for p in ps]
    return RawSource("pickle", lambda: splits, _sha256_files(used, base), where)


def _load_hub(repo_id: str, info: DatasetInfo) -> RawSource:
    try:
        ds = datasets.load_dataset(repo_id)
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, damaged files: whatever datasets raises
        raise CifarlabError(
            f"cannot load {describe(repo_id, 120)} from the Hugging Face Hub ({summary(e)}). Offline? Pass a local "
            f"copy instead: --data /path/to/parquet-folder (Hub layout) or /path/to/cifar-100-python[.tar.gz], "
            f"or --data synthetic"
        ) from None
    if not isinstance(ds, datasets.DatasetDict) or not {"train", "test"} <= set(ds):
        raise CifarlabError(f"{describe(repo_id, 120)} has no train and test splits")
    fp = hashlib.sha256(f"{repo_id}:{ds['train']._fingerprint}:{ds['test']._fingerprint}".encode()).hexdigest()
    where = f"Hub dataset {repo_id}"
    return RawSource("hub", lambda: _dataset_splits(ds, info, where), fp, where)


def local_kind(source: str) -> tuple[Path, str | None]:
    """``source`` as a path, and what is there: "folder", "file" or None (a device, FIFO or socket is refused)."""
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # ~user of an unknown user: taken literally
        path = Path(source)
    return path, _local_kind(path)


def resolve_source(source: str | None, info: DatasetInfo) -> RawSource:
    source = source or info.hub_id
    if source == "synthetic" or source.startswith("synthetic:"):
        return _load_synthetic(source, info)
    path, kind = local_kind(source)
    if kind == "file":
        if path.name.endswith(ARCHIVE_SUFFIXES):
            return _load_pickle_folder(extract_tar(path, cache_root() / "extracted"), info)
        raise CifarlabError(f"{path}: expected a folder or a .tar.gz archive")
    if kind == "folder":
        parquet = _walk(path, lambda name: name.endswith(".parquet"))
        return _load_parquet_folder(path, parquet, info) if parquet else _load_pickle_folder(path, info)
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return _load_hub(source, info)
    raise CifarlabError(f"data source {describe(source, 120)} does not exist (expected a local path, a Hub id like "
                        f"uoft-cs/cifar100, or 'synthetic')")
