"""Read Hub-schema parquet files with pyarrow, bounded by their metadata before any data page is read.

A parquet file's footer says how many rows it holds, which columns, of which types, and how large each column
chunk is uncompressed; the ``huggingface`` schema metadata says which features ``datasets`` would decode them
as. All of it is checked first (:func:`~cifarlab.data.splits.check_schema`, the image count, the chunk sizes):
a 20 kB file can declare two million rows that each repeat one 100 kB value through its dictionary. Then only
the image bytes and the labels are read, in batches, the image bytes kept dictionary-encoded (a value shared by
many rows is held and decoded once), every image through :func:`~cifarlab.data.images.open_image`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import CifarlabError
from .meta import DatasetInfo
from .splits import Columns, Split, check_image_count, check_schema, decode_image_column, labels_of
from .untrusted import summary

MAX_METADATA_BYTES = 1 << 20  # the Hugging Face features of CIFAR-100: 4 kB
MAX_CHUNK_BYTES = 1 << 30  # one column of one row group, uncompressed; CIFAR's are a few MB
BATCH_ROWS = 4096


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError ... for damaged files
        raise CifarlabError(f"{path}: not a readable parquet file ({summary(e)})") from None


def _declared_features(schema: pa.Schema, path: Path) -> dict | None:
    """The ``datasets`` features in the file's metadata (JSON), or None when it declares none."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    if len(raw) > MAX_METADATA_BYTES:
        raise CifarlabError(f"{path}: Hugging Face metadata of {len(raw):,} bytes; at most {MAX_METADATA_BYTES:,} "
                            f"are read")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise CifarlabError(f"{path}: damaged Hugging Face metadata (not JSON)") from None
    info = meta.get("info") if isinstance(meta, dict) else None
    features = info.get("features") if isinstance(info, dict) else None
    if features is not None and not isinstance(features, dict):
        raise CifarlabError(f"{path}: damaged Hugging Face metadata (features are not a mapping)")
    return features


def _check_chunks(meta: pq.FileMetaData, columns: Columns, path: Path) -> int:
    """The file's row count, after checking that its row groups add up to it and that no chunk of a column
    that is read is larger than ``MAX_CHUNK_BYTES`` uncompressed."""
    read = {columns.image, *columns.classes}
    rows = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        rows += group.num_rows
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.path_in_schema.split(".")[0] in read and chunk.total_uncompressed_size > MAX_CHUNK_BYTES:
                raise CifarlabError(f"{path}: column {chunk.path_in_schema!r} of row group {g} is "
                                    f"{chunk.total_uncompressed_size:,} bytes uncompressed; at most "
                                    f"{MAX_CHUNK_BYTES:,} are read")
    if rows != meta.num_rows:
        raise CifarlabError(f"{path}: damaged metadata (its row groups hold {rows:,} rows, its footer says "
                            f"{meta.num_rows:,})")
    return rows


class ParquetSplit:
    """One split in parquet files (the shards of a folder, or ``eval --data``'s single file), checked from their
    metadata when it is made."""

    def __init__(self, paths: list[Path], info: DatasetInfo, where: str, split: str):
        self.paths, self.info, self.where, self.split = paths, info, where, split
        layouts, self.file_rows = [], []
        for path in paths:
            pf = _open(path)
            layouts.append(check_schema(pf.schema_arrow, _declared_features(pf.schema_arrow, path), info, where,
                                        split))
            self.file_rows.append(_check_chunks(pf.metadata, layouts[-1], path))
        if any(layout != layouts[0] for layout in layouts):
            raise CifarlabError(f"{where}: the {split} split's parquet files declare different columns or classes")
        check_image_count(sum(self.file_rows), where, split)
        self.columns = layouts[0]
        self.classes = self.columns.classes

    def decode(self) -> Split:
        """The labels, checked first (they are cheap to read), then the images, a batch at a time."""
        try:
            table = pa.concat_tables(pq.read_table(p, columns=list(self.columns.classes), use_threads=False)
                                     for p in self.paths)
            labels, coarse = labels_of(table, self.columns, self.info, self.where, self.split)
            offsets = np.cumsum([0, *self.file_rows])
            images = [x for path, first in zip(self.paths, offsets, strict=False) for x in self._images(path, first)]
        except (pa.ArrowException, OSError, ValueError) as e:
            raise CifarlabError(f"{self.where}: cannot read the {self.split} split ({summary(e)})") from None
        return Split(np.concatenate(images), labels, coarse)

    def _images(self, path: Path, first: int) -> Iterator[np.ndarray]:
        """The file's images, decoded ``BATCH_ROWS`` at a time (``first``: the split's row index of its first image).

        Read a row group at a time: pyarrow keeps a nested column dictionary-encoded only when its output is one
        array, which a batch that crosses a row group's end is not."""
        image_bytes = f"{self.columns.image}.bytes"
        pf = pq.ParquetFile(path, read_dictionary=[image_bytes])
        for group in range(pf.metadata.num_row_groups):
            column = pf.read_row_group(group, columns=[image_bytes], use_threads=False).column(self.columns.image)
            for chunk in column.chunks:
                for start in range(0, len(chunk), BATCH_ROWS):
                    part = chunk.slice(start, BATCH_ROWS)
                    yield decode_image_column(part, self.where, self.split, int(first))
                    first += len(part)
