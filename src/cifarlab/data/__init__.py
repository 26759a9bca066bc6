"""Data: load CIFAR (Hub, parquet, python pickles, synthetic) checked against its schema, decode it once,
cache it, augment it on the device.

The names below are imported on first use (PEP 562), so that ``cifarlab.data.meta`` — the datasets' classes and
constants — can be read without importing torch or ``datasets``.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "BatchAugment": "augment", "CifarData": "dataset", "Split": "dataset", "carve_validation": "dataset",
    "describe": "dataset", "load_data": "dataset", "subsample_train": "dataset", "DeviceLoader": "loader",
    "DATASETS": "meta", "DatasetInfo": "meta", "resolve_source": "sources",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
