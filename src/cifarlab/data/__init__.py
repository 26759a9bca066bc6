"""Data: load CIFAR through Hugging Face ``datasets``, decode once, cache, augment on the device."""

from .augment import BatchAugment
from .dataset import CifarData, Split, carve_validation, describe, load_data, subsample_train
from .loader import DeviceLoader
from .meta import DATASETS, DatasetInfo
from .sources import resolve_source

__all__ = [
    "BatchAugment", "CifarData", "DATASETS", "DatasetInfo", "DeviceLoader",
    "Split", "carve_validation", "describe", "load_data", "resolve_source", "subsample_train",
]
