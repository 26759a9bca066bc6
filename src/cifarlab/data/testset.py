"""One split of any source, checked against the classes a model was trained on (``cifarlab eval RUN --data``).

Any ``--data`` source works (Hub id, parquet folder, pickles, synthetic), plus a single ``.parquet`` file of
test images in the Hub schema. A source whose class count or class names differ from the dataset the run was
trained on is refused with one line; its labels would mean other classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from .. import CifarlabError
from ..io import sha256_file
from .dataset import Split, _decode_split, load_data
from .meta import DATASETS, DatasetInfo
from .sources import _parquet_rows, cache_root, resolve_source


@dataclass
class TestSet:
    images: Split
    source: str
    kind: str
    fingerprint: str
    description: str


def check_classes(features: datasets.Features, info: DatasetInfo, where: str) -> None:
    """Refuse a source whose label column names other classes than ``info`` (a plain integer column passes here;
    its range is checked when it is decoded)."""
    feat = features.get(info.label_column)
    if not isinstance(feat, datasets.ClassLabel):
        return
    if feat.num_classes != info.num_classes:
        raise CifarlabError(f"{where} has {feat.num_classes} classes; the run was trained on the "
                            f"{info.num_classes} classes of {info.name}")
    bad = next((i for i, (a, b) in enumerate(zip(feat.names, info.classes)) if a != b), None)
    if bad is not None:
        raise CifarlabError(f"{where}: class {bad} is {feat.names[bad]!r} where the run's {info.name} has "
                            f"{info.classes[bad]!r}; the labels would mean other classes")


def _parquet_file(path: Path, info: DatasetInfo) -> TestSet:
    where = f"parquet file {path}"
    if _parquet_rows(path) == 0:
        raise CifarlabError(f"{where} holds no images")
    check_classes(datasets.Features.from_arrow_schema(pq.read_schema(path)), info, where)
    fingerprint = sha256_file(path)
    try:
        ds = datasets.load_dataset("parquet", data_files={"test": str(path)},
                                   cache_dir=str(cache_root() / "datasets" / fingerprint[:16]))["test"]
    except Exception as e:  # pyarrow / datasets raise many types for unreadable files
        raise CifarlabError(f"{where}: cannot read it ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return TestSet(_decode_split(ds, info, "test", where), str(path), "parquet-file", fingerprint, where)


def load_test_set(dataset: str, source: str | None, split: str = "test", val_split: int = 0) -> TestSet:
    """``split`` of ``source`` for a model trained on ``dataset`` (``val`` is carved as the run carved it)."""
    info = DATASETS[dataset]
    path = Path(source).expanduser() if source else None
    if path is not None and path.is_file() and path.suffix == ".parquet":
        if split != "test":
            raise CifarlabError(f"{path} is one parquet file of test images; it has no {split} split")
        return _parquet_file(path, info)
    raw = resolve_source(source, info)
    if raw.kind != "synthetic":  # synthetic data is generated with the dataset's own class names
        check_classes(raw.dataset["train" if split == "val" else split].features, info, raw.description)
    data = load_data(dataset, source, val_split=val_split if split == "val" else 0)
    part = getattr(data, split)
    if part is None:
        raise CifarlabError(f"the run has no {split} split (trained with val_split={val_split})")
    return TestSet(part, data.source, data.kind, data.fingerprint, raw.description)
