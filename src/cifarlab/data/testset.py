"""One split of any source, checked against the classes a model was trained on (``cifarlab eval RUN --data``).

Any ``--data`` source works (Hub id, parquet folder, pickles, synthetic), plus a single ``.parquet`` file of
test images in the Hub schema. A source whose class count or class names differ from the dataset the run was
trained on is refused with one line; its labels would mean other classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import CifarlabError
from ..io import sha256_file
from .dataset import load_data
from .meta import DATASETS
from .parquet import ParquetSplit
from .sources import local_kind, resolve_source
from .splits import Split, check_classes


@dataclass
class TestSet:
    images: Split
    source: str
    kind: str
    fingerprint: str
    description: str


def load_test_set(dataset: str, source: str | None, split: str = "test", val_split: int = 0) -> TestSet:
    """``split`` of ``source`` for a model trained on ``dataset`` (``val`` is carved as the run carved it)."""
    info = DATASETS[dataset]
    path, kind = local_kind(source) if source else (None, None)
    if kind == "file" and path.suffix == ".parquet":
        if split != "test":
            raise CifarlabError(f"{path} is one parquet file of test images; it has no {split} split")
        where = f"parquet file {path}"
        reader = ParquetSplit([path], info, where, "test")
        check_classes(reader.classes, info, where)
        return TestSet(reader.decode(), str(path), "parquet-file", sha256_file(path), where)
    raw = resolve_source(source, info)
    if raw.kind != "synthetic":  # synthetic data is generated with the dataset's own class names
        check_classes(raw.splits["train" if split == "val" else split].classes, info, raw.description)
    data = load_data(dataset, source, val_split=val_split if split == "val" else 0)
    part = getattr(data, split)
    if part is None:
        raise CifarlabError(f"the run has no {split} split (trained with val_split={val_split})")
    return TestSet(part, data.source, data.kind, data.fingerprint, raw.description)
