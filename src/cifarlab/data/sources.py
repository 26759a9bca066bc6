"""Resolve a ``--data`` source to a Hugging Face ``DatasetDict`` in the Hub schema.

Sources: a Hub id (``uoft-cs/cifar100``), a local folder of parquet files in the
Hub schema (``train-*.parquet`` / ``test-*.parquet``, train may span shards), the
original ``cifar-100-python`` / ``cifar-10-batches-py`` folder or its ``.tar.gz``,
and ``synthetic[:TRAIN[:TEST[:SEED]]]``. Each source gets a fingerprint: a
sha256 over the source files' names and bytes, the Hub's dataset fingerprint,
or the synthetic parameters.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path, PurePosixPath
from typing import Callable

import datasets
import numpy as np

from .. import CifarlabError
from ..io import sha256_file
from .meta import DatasetInfo
from .safe_pickle import load_pickle
from .synthetic import synthetic_dataset


@dataclass
class RawSource:
    """A resolved source: its fingerprint is known at once; the ``DatasetDict`` is built only when first
    asked for, so a source already decoded into the cache is never read through ``datasets`` again."""

    kind: str  # "hub" | "parquet" | "pickle" | "synthetic"
    load: Callable[[], datasets.DatasetDict]
    fingerprint: str
    description: str

    @cached_property
    def dataset(self) -> datasets.DatasetDict:
        return self.load()


def _sha256_files(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


MAX_EXTRACTED_BYTES = 4 << 30  # CIFAR-100 extracts to 0.2 GB


def cache_root() -> Path:
    return Path(os.environ.get("CIFARLAB_CACHE", Path.home() / ".cache" / "cifarlab"))


def parse_synthetic(source: str) -> tuple[int, int, int]:
    parts = source.split(":")[1:]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise CifarlabError(f"bad synthetic source {source!r}; use synthetic[:TRAIN[:TEST[:SEED]]], e.g. synthetic:2000:500") from None
    train, test, seed = (vals + [5000, 1000, 0][len(vals):])[:3]
    if train <= 0 or test <= 0 or len(vals) > 3:
        raise CifarlabError(f"bad synthetic source {source!r}; sizes must be positive: synthetic[:TRAIN[:TEST[:SEED]]]")
    return train, test, seed


def _load_synthetic(source: str, info: DatasetInfo) -> RawSource:
    train, test, seed = parse_synthetic(source)
    ds = partial(synthetic_dataset, info, train=train, test=test, seed=seed)
    return RawSource("synthetic", ds, f"synthetic-v2-{info.name}-{train}-{test}-{seed}", f"synthetic ({train} train / {test} test, seed {seed})")


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError ... for damaged files
        raise CifarlabError(f"{path}: not a readable parquet file ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _load_parquet_folder(root: Path) -> RawSource:
    files = sorted(root.rglob("*.parquet"))
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for f in files:
        for split in splits:
            if f.name.startswith(split) or f.parent.name == split:
                splits[split].append(str(f))
    missing = [s for s, fs in splits.items() if not fs]
    if missing:
        raise CifarlabError(
            f"{root}: no {' or '.join(missing)} parquet files found (expected names like train-00000-of-00002.parquet "
            f"and test-00000-of-00001.parquet, in the Hub layout)"
        )
    for split, fs in splits.items():
        if sum(_parquet_rows(Path(f)) for f in fs) == 0:
            raise CifarlabError(f"{root}: the {split} split is empty ({len(fs)} parquet file(s) without rows)")
    fingerprint = _sha256_files([Path(p) for fs in splits.values() for p in fs], root)
    # datasets' own cache is keyed by file size and mtime and would serve a replaced file's old rows: key it by content
    hf_cache = cache_root() / "datasets" / fingerprint[:16]

    def load() -> datasets.DatasetDict:
        try:
            return datasets.load_dataset("parquet", data_files=splits, cache_dir=str(hf_cache))
        except Exception as e:  # pyarrow / datasets raise many types for unreadable files
            raise CifarlabError(f"{root}: cannot read the parquet files "
                                f"({type(e).__name__}: {str(e).splitlines()[0]})") from None

    return RawSource("parquet", load, fingerprint, f"parquet folder {root}")


def _unpickle(path: Path) -> dict:
    """A CIFAR pickle's dict, read without running code (:mod:`.safe_pickle`); str keys count as bytes keys."""
    d = load_pickle(path)
    if not isinstance(d, dict):
        raise CifarlabError(f"{path}: not a CIFAR python pickle (holds a {type(d).__name__}, not a dict)")
    return {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}


def _label_names(meta: dict, key: bytes, path: Path) -> list[str]:
    if key not in meta:
        raise CifarlabError(f"{path}: CIFAR meta pickle without a {key!r} entry")
    names = meta[key]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise CifarlabError(f"{path}: CIFAR meta pickle entry {key!r} is not a list of class names")
    return [n.decode(errors="replace") if isinstance(n, bytes) else n for n in names]


def _pickle_split(path: Path, label_keys: list[bytes]) -> tuple[np.ndarray, list[np.ndarray]]:
    d = _unpickle(path)
    if b"data" not in d:
        raise CifarlabError(f"{path}: CIFAR pickle without a b'data' entry")
    if not isinstance(d[b"data"], np.ndarray) or d[b"data"].dtype.kind not in "iu":
        raise CifarlabError(f"{path}: CIFAR pickle entry b'data' holds a {type(d[b'data']).__name__}, "
                            f"not an integer array")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise CifarlabError(f"{path}: CIFAR pickle data has shape {data.shape}; "
                            f"expected (N, 3072) for 32x32 RGB images")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = []
    for k in label_keys:
        if k not in d:
            raise CifarlabError(f"{path}: CIFAR pickle without a {k!r} entry")
        v = d[k]
        ints = v.dtype.kind in "iu" if isinstance(v, np.ndarray) else (
            isinstance(v, (list, tuple)) and all(isinstance(i, (int, np.integer)) for i in v))
        bad = CifarlabError(f"{path}: CIFAR pickle entry {k!r} does not hold integer labels")
        if not ints:
            raise bad
        try:
            labels.append(np.asarray(v, dtype=np.int64).reshape(-1))
        except OverflowError:
            raise bad from None
        if len(labels[-1]) != len(x):
            raise CifarlabError(f"{path}: CIFAR pickle has {len(x)} images but {len(labels[-1])} {k!r}")
    return x, labels


def _find_pickle_root(root: Path) -> Path | None:
    for cand in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (cand / "meta").is_file() and (cand / "train").is_file() or (cand / "data_batch_1").is_file():
            return cand
    return None


def _load_pickle_folder(root: Path, info: DatasetInfo) -> RawSource:
    base = _find_pickle_root(root)
    if base is None:
        raise CifarlabError(f"{root}: neither parquet files nor a cifar-100-python / cifar-10-batches-py folder")
    if (base / "meta").is_file():  # CIFAR-100
        if info.name != "cifar100":
            raise CifarlabError(f"{base} holds CIFAR-100 pickles but --dataset is {info.name}")
        meta = _unpickle(base / "meta")
        fine = _label_names(meta, b"fine_label_names", base / "meta")
        coarse = _label_names(meta, b"coarse_label_names", base / "meta")
        keys = [b"fine_labels", b"coarse_labels"]
        files = {"train": [base / "train"], "test": [base / "test"]}
        names = {"fine_label": fine, "coarse_label": coarse}
    else:  # CIFAR-10
        if info.name != "cifar10":
            raise CifarlabError(f"{base} holds CIFAR-10 pickles but --dataset is {info.name}")
        meta = _unpickle(base / "batches.meta")
        keys = [b"labels"]
        files = {"train": sorted(base.glob("data_batch_*")), "test": [base / "test_batch"]}
        names = {"label": _label_names(meta, b"label_names", base / "batches.meta")}
    features = datasets.Features({"img": datasets.Array3D((32, 32, 3), "uint8"),
                                  **{c: datasets.ClassLabel(names=n) for c, n in names.items()}})
    for split, paths in files.items():
        if not all(p.is_file() for p in paths):
            raise CifarlabError(f"{base}: missing {split} pickle file(s)")

    def load() -> datasets.DatasetDict:
        splits = {}
        for split, paths in files.items():
            parts = [_pickle_split(p, keys) for p in paths]
            cols = {"img": np.concatenate([p[0] for p in parts])}
            for i, col in enumerate(names):
                cols[col] = np.concatenate([p[1][i] for p in parts])
            splits[split] = datasets.Dataset.from_dict(cols, features=features)
        return datasets.DatasetDict(splits)

    used = [p for ps in files.values() for p in ps]
    return RawSource("pickle", load, _sha256_files(used, base), f"python pickles {base}")


def _check_member(member: tarfile.TarInfo, root: Path, archive: Path) -> None:
    """Only plain files and folders, inside ``root``: no absolute paths, no ``..``, no links, no devices."""
    name = PurePosixPath(member.name)
    if not (member.isfile() or member.isdir()):
        kind = "a link" if member.issym() or member.islnk() else "a device, pipe or other special file"
        raise CifarlabError(f"{archive}: refused to extract {member.name!r}: it is {kind}")
    if name.is_absolute() or ".." in name.parts or not (root / name).resolve().is_relative_to(root.resolve()):
        raise CifarlabError(f"{archive}: refused to extract {member.name!r}: its path leaves the extraction folder")


def _extract_tar(path: Path) -> Path:
    """Extract once into the cache, keyed by the archive's bytes (a replaced archive is extracted again).

    Members are checked one by one as the archive streams (and extracted with tarfile's ``data`` filter
    too) into a temporary folder renamed into place when complete; a refused archive leaves nothing.
    """
    dest = cache_root() / "extracted" / sha256_file(path)[:16]
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        total = 0
        with tarfile.open(path) as tar:
            for member in tar:
                _check_member(member, tmp, path)
                total += member.size
                if total > MAX_EXTRACTED_BYTES:
                    raise CifarlabError(f"{path}: refused to extract more than {MAX_EXTRACTED_BYTES:,} bytes; "
                                        f"not a CIFAR archive")
                tar.extract(member, tmp, filter="data")
        (tmp / ".complete").touch()
        shutil.rmtree(dest, ignore_errors=True)  # left by an older, interrupted extraction
        tmp.rename(dest)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise CifarlabError(f"{path}: cannot extract ({detail})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _load_hub(repo_id: str, info: DatasetInfo) -> RawSource:
    try:
        ds = datasets.load_dataset(repo_id)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CifarlabError(
            f"cannot load {repo_id!r} from the Hugging Face Hub ({first}). Offline? Pass a local copy instead: "
            f"--data /path/to/parquet-folder (Hub layout) or /path/to/cifar-100-python[.tar.gz], or --data synthetic"
        ) from None
    if not isinstance(ds, datasets.DatasetDict) or not {"train", "test"} <= set(ds):
        raise CifarlabError(f"{repo_id!r} has no train and test splits")
    fp = hashlib.sha256(f"{repo_id}:{ds['train']._fingerprint}:{ds['test']._fingerprint}".encode()).hexdigest()
    return RawSource("hub", lambda: ds, fp, f"Hub dataset {repo_id}")


def resolve_source(source: str | None, info: DatasetInfo) -> RawSource:
    source = source or info.hub_id
    if source == "synthetic" or source.startswith("synthetic:"):
        return _load_synthetic(source, info)
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file():
            if path.name.endswith((".tar.gz", ".tgz", ".tar")):
                return _load_pickle_folder(_extract_tar(path), info)
            raise CifarlabError(f"{path}: expected a folder or a .tar.gz archive")
        if any(path.rglob("*.parquet")):
            return _load_parquet_folder(path)
        return _load_pickle_folder(path, info)
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return _load_hub(source, info)
    raise CifarlabError(f"data source {source!r} does not exist (expected a local path, a Hub id like uoft-cs/cifar100, or 'synthetic')")
