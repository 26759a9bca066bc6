"""A split of a source: the CIFAR schema checked before anything is decoded, its size bounded, every image decoded
by :func:`~cifarlab.data.images.open_image`.

A split holds an image column (``img``, or ``image``) of encoded images — the Hub's ``Image`` feature, stored as a
struct of ``bytes`` and ``path`` — and integer label columns (``fine_label`` and ``coarse_label`` for CIFAR-100,
``label`` for CIFAR-10), plain integers or a ``ClassLabel`` with one name per class. Both what a file declares
(the ``huggingface`` features ``datasets`` writes into its metadata) and the Arrow types it stores are checked: a
column declared as a list of images, as audio, a label declared as an image, unsigned 64-bit or nested labels,
class names given twice are refused with one line before a byte is decoded. ``datasets`` never decodes a column
itself here — it would use every format Pillow has (EPS through Ghostscript included) under Pillow's own limits.

A split is at most :func:`max_images` images (``CIFARLAB_MAX_IMAGES``, default 500,000: CIFAR has 60,000 in all),
judged before decoding, so the decoded arrays and the decode cache stay under 1.5 GB a split.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import CifarlabError
from .images import ImageError, open_image
from .meta import IMAGE_COLUMNS, DatasetInfo
from .untrusted import describe

MAX_IMAGES = 500_000
MAX_IMAGES_VARIABLE = "CIFARLAB_MAX_IMAGES"
MAX_IMAGE_BYTES = 1 << 20  # one encoded 32x32 image: a PNG is 3 kB, metadata and all far below this
IMAGE_SIZE = (32, 32)
VALUE_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")  # integer labels; uint64 overflows


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, 32, 32, 3)
    labels: np.ndarray  # int64 (N,)
    coarse: np.ndarray | None = None  # int64 (N,), CIFAR-100 superclasses

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> "Split":
        return Split(self.images[idx], self.labels[idx], None if self.coarse is None else self.coarse[idx])


class SplitReader(Protocol):
    """One split of a source, its schema checked: ``classes`` (each label column's declared class names, None
    for plain integers) is known before ``decode`` reads and checks the images and labels."""

    classes: dict[str, tuple[str, ...] | None]

    def decode(self) -> Split: ...


@dataclass(frozen=True)
class Columns:
    image: str
    classes: dict[str, tuple[str, ...] | None]  # label column -> declared class names, None for plain integers


def max_images() -> int:
    text = os.environ.get(MAX_IMAGES_VARIABLE, "")
    try:
        limit = int(text) if text else MAX_IMAGES
    except ValueError:
        limit = 0
    if limit < 1:
        raise CifarlabError(f"{MAX_IMAGES_VARIABLE}={describe(text)} is not a positive number of images")
    return limit


def check_image_count(n: int, where: str, split: str) -> None:
    """Refuse an empty split, and one of more images than :func:`max_images` (judged before decoding)."""
    if n <= 0:
        raise CifarlabError(f"{where}: the {split} split is empty (it holds no images)")
    limit = max_images()
    if n > limit:
        raise CifarlabError(f"{where}: the {split} split declares {n:,} images; cifarlab reads at most {limit:,} "
                            f"a split (CIFAR has 60,000 in all); set {MAX_IMAGES_VARIABLE} to raise the limit")


def _type_name(t: pa.DataType) -> str:
    return describe(str(t), 60)


def _feature_name(feature: Any) -> str:
    if isinstance(feature, dict) and isinstance(feature.get("_type"), str):
        inner = feature.get("feature")
        return describe(feature["_type"]) + (f" of {_feature_name(inner)}" if isinstance(inner, dict) else "")
    return "a list" if isinstance(feature, list) else describe(feature)


def _is_binary(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_encoded_images(t: pa.DataType) -> bool:
    """The Hub's ``Image`` storage: a struct whose ``bytes`` field is binary."""
    if not pa.types.is_struct(t):
        return False
    i = t.get_field_index("bytes")
    return i >= 0 and _is_binary(t.field(i).type)


def _is_label_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) and str(t) in VALUE_TYPES


def check_class_names(names: Any, what: str, where: str) -> tuple[str, ...]:
    """Declared class names (``what``: e.g. "column 'fine_label'"): a list of distinct strings."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CifarlabError(f"{where}: {what} declares class names that are not a list of strings")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CifarlabError(f"{where}: {what} declares the class name {describe(name)} twice")
        seen.add(name)
    return tuple(names)


def _label_classes(feature: Any, column: str, where: str, split: str) -> tuple[str, ...] | None:
    if feature is None:
        return None
    kind = feature.get("_type") if isinstance(feature, dict) else None
    if kind == "ClassLabel":
        return check_class_names(feature.get("names"), f"column {column!r}", where)
    if kind == "Value" and feature.get("dtype") in VALUE_TYPES:
        return None
    raise CifarlabError(f"{where}: the {split} split's {column!r} column is declared as {_feature_name(feature)}; "
                        f"expected integer class labels (ClassLabel or an integer Value)")


def label_columns(info: DatasetInfo, names: list[str]) -> list[str]:
    return [info.label_column] + ([info.coarse_column] if info.coarse_column and info.coarse_column in names else [])


def check_schema(schema: pa.Schema, features: dict | None, info: DatasetInfo, where: str, split: str) -> Columns:
    """The split's image and label columns, refused unless both the Arrow types and the declared ``features``
    (the ``datasets`` JSON form, None when the file declares none) are those of the CIFAR schema."""
    names = schema.names
    image = next((c for c in IMAGE_COLUMNS if c in names), None)
    if image is None or info.label_column not in names:
        shown = [describe(n) for n in names[:8]] + ([f"... {len(names):,} in all"] if len(names) > 8 else [])
        raise CifarlabError(f"{where}: the {split} split has columns [{', '.join(sorted(shown))}]; expected 'img' "
                            f"and {info.label_column!r} (the {info.hub_id} schema). Wrong --dataset?")
    features = features or {}
    declared = features.get(image)
    if declared is not None and not (isinstance(declared, dict) and declared.get("_type") == "Image"):
        raise CifarlabError(f"{where}: the {split} split's {image!r} column is declared as "
                            f"{_feature_name(declared)}; expected Image (one encoded image a row)")
    if not _is_encoded_images(schema.field(image).type):
        raise CifarlabError(f"{where}: the {split} split's {image!r} column holds "
                            f"{_type_name(schema.field(image).type)}; expected encoded images (a struct of bytes "
                            f"and path, the Image feature)")
    classes = {}
    for column in label_columns(info, names):
        t = schema.field(column).type
        if not _is_label_type(t):
            raise CifarlabError(f"{where}: the {split} split's {column!r} column does not hold integer class labels "
                                f"(it holds {_type_name(t)})")
        classes[column] = _label_classes(features.get(column), column, where, split)
    return Columns(image, classes)


def check_class_counts(classes: dict[str, tuple[str, ...] | None], info: DatasetInfo, where: str) -> None:
    """Refuse a label column that declares another number of classes than ``info`` has: another dataset."""
    for column, names in classes.items():
        want = info.num_classes if column == info.label_column else len(info.coarse_classes or ())
        if names is not None and len(names) != want:
            raise CifarlabError(f"{where}: column {column!r} declares {len(names):,} classes; {info.name} has "
                                f"{want}. Wrong --dataset?")


def check_classes(classes: dict[str, tuple[str, ...] | None], info: DatasetInfo, where: str) -> None:
    """Refuse a test set whose label column names other classes than the run's ``info`` (a plain integer column
    passes here; its range is checked when it is decoded)."""
    names = classes.get(info.label_column)
    if names is None:
        return
    if len(names) != info.num_classes:
        raise CifarlabError(f"{where} has {len(names):,} classes; the run was trained on the "
                            f"{info.num_classes} classes of {info.name}")
    bad = next((i for i, (a, b) in enumerate(zip(names, info.classes, strict=True)) if a != b), None)
    if bad is not None:
        raise CifarlabError(f"{where}: class {bad} is {describe(names[bad])} where the run's {info.name} has "
                            f"{info.classes[bad]!r}; the labels would mean other classes")


def check_labels(labels: np.ndarray, num_classes: int, what: str, where: str, name: str) -> np.ndarray:
    """``labels`` as an int64 array of its own, refused outside ``0..num_classes - 1`` (``what``: e.g. "train
    labels")."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise CifarlabError(f"{where}: {what} span {labels.min()}..{labels.max()}; {name} needs "
                            f"0..{num_classes - 1}")
    return np.array(labels, dtype=np.int64)


def label_array(values: pa.ChunkedArray, num_classes: int, what: str, where: str, name: str) -> np.ndarray:
    """An integer label column (its type checked by :func:`check_schema`) as int64, without missing values."""
    if values.null_count:
        raise CifarlabError(f"{where}: {what} are missing ({values.null_count:,} of {len(values):,})")
    return check_labels(values.cast(pa.int64()).to_numpy(), num_classes, what, where, name)


def _decode_one(blob: bytes) -> np.ndarray | str:
    """An image's RGB pixels, or a short reason why it is not a usable CIFAR image."""
    try:
        im = open_image(blob, size=IMAGE_SIZE, max_bytes=MAX_IMAGE_BYTES)
    except ImageError as e:
        return f"an unusable image ({e.reason})"
    return np.asarray(im, dtype=np.uint8) if im.mode == "RGB" else f"mode {im.mode}"  # one of Pillow's modes


def _image_bytes(column: pa.Array) -> pa.DictionaryArray:
    """The ``bytes`` field of a struct image column (null where the row is null), dictionary-encoded: a value
    that many rows share — as a small file can declare a million times — is held and decoded once."""
    blobs = column.flatten()[column.type.get_field_index("bytes")]
    return blobs if pa.types.is_dictionary(blobs.type) else blobs.dictionary_encode()


def _refuse(row: int, why: str, where: str, split: str) -> CifarlabError:
    return CifarlabError(f"{where}: image {row} of the {split} split has {why}; CIFAR images are 32x32 RGB")


def decode_image_column(column: pa.Array, where: str, split: str, first: int = 0) -> np.ndarray:
    """(N, 32, 32, 3) uint8 pixels of an image column (rows ``first``.. of the split). A row without bytes or
    with more than ``MAX_IMAGE_BYTES`` is refused before any image is decoded (or copied out of Arrow); then
    each distinct image is decoded once by :func:`open_image`."""
    blobs = _image_bytes(column)
    rows = pc.fill_null(blobs.indices, -1).to_numpy(zero_copy_only=False)
    sizes = pc.fill_null(pc.binary_length(blobs.dictionary), -1).to_numpy(zero_copy_only=False)
    row_sizes = np.where(rows >= 0, sizes[np.maximum(rows, 0)] if len(sizes) else -1, -1)
    if len(bad := np.flatnonzero((row_sizes < 0) | (row_sizes > MAX_IMAGE_BYTES))):
        size = int(row_sizes[bad[0]])
        raise _refuse(first + int(bad[0]), "no image bytes" if size < 0 else
                      f"an encoded size of {size:,} bytes (at most {MAX_IMAGE_BYTES:,})", where, split)
    used = [int(v) for v in np.unique(rows)]
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        decoded = dict(zip(used, pool.map(_decode_one, (blobs.dictionary[v].as_py() for v in used), chunksize=256),
                           strict=True))
    if (bad_row := next((r for r, v in enumerate(rows) if isinstance(decoded[v], str)), None)) is not None:
        raise _refuse(first + bad_row, decoded[rows[bad_row]], where, split)
    return np.stack([decoded[v] for v in rows]) if len(rows) else np.zeros((0, *IMAGE_SIZE, 3), np.uint8)


class DatasetSplit:
    """A split held by a ``datasets.Dataset`` (the Hub, synthetic data): its declared features and Arrow types
    checked at once, its columns read as Arrow data (``datasets`` never decodes them)."""

    def __init__(self, ds: datasets.Dataset, info: DatasetInfo, where: str, split: str):
        self.ds, self.info, self.where, self.split = ds, info, where, split
        self.columns = check_schema(ds.data.schema, ds.features.to_dict(), info, where, split)
        self.classes = self.columns.classes
        check_image_count(len(ds), where, split)

    def decode(self) -> Split:
        """The labels, checked first, then the images."""
        table = self.ds.with_format("arrow")[:]
        labels, coarse = labels_of(table, self.columns, self.info, self.where, self.split)
        images, first = [], 0
        for chunk in table.column(self.columns.image).chunks:
            images.append(decode_image_column(chunk, self.where, self.split, first))
            first += len(chunk)
        return Split(np.concatenate(images), labels, coarse)


def labels_of(table: pa.Table, columns: Columns, info: DatasetInfo, where: str,
              split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The label and (CIFAR-100) coarse label arrays of a table of the split's columns."""
    labels = label_array(table.column(info.label_column), info.num_classes, f"{split} labels", where, info.name)
    if info.coarse_column not in columns.classes:
        return labels, None
    coarse = label_array(table.column(info.coarse_column), len(info.coarse_classes or ()), f"{split} coarse labels",
                         where, info.name)
    return labels, coarse
