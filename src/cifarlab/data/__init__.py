"""Data: load CIFAR (Hub, parquet, python pickles, synthetic) checked against its schema, decode it once,
cache it, augment it on the device."""

from .augment import BatchAugment
from .dataset import CifarData, Split, carve_validation, describe, load_data, subsample_train
from .loader import DeviceLoader
from .meta import DATASETS, DatasetInfo
from .sources import resolve_source

__all__ = [
    "BatchAugment", "CifarData", "DATASETS", "DatasetInfo", "DeviceLoader",
    "Split", "carve_validation", "describe", "load_data", "resolve_source", "subsample_train",
]
