"""Group finished runs into variants.

A run inside a study folder (``<study>/<variant>/seed<k>/result.json``) belongs to the
variant named by the folder above ``seed<k>``. Any other run is grouped with the runs
whose configuration is the same apart from the seed and execution-only settings, and
is named after its model plus the settings that tell it apart from other runs of
that model.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import CifarlabError
from ..config import TrainConfig
from ..model_catalog import model_info
from ..run import FinishedRun

# Config fields that change how a run executes, not what it measures: runs differing only here are seeds of one variant.
# `data` says where the images were read from; which images they are is the fingerprint (runs are grouped by it first).
EXECUTION_FIELDS = frozenset({"seed", "eval_batch_size", "eval_every", "keep_checkpoints", "nan_check_every",
                              "compile", "channels_last", "deterministic", "report_to", "data"})


@dataclass
class Variant:
    """The runs (one per seed) of one configuration."""

    name: str
    study: str | None
    runs: list[FinishedRun] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.runs[0].model

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def key(self) -> str:
        return f"{self.study}/{self.name}" if self.study else self.name

    @cached_property
    def tier(self) -> str:
        return _catalog_field(self.model, "tier")

    @cached_property
    def family(self) -> str:
        return _catalog_field(self.model, "family")

    def values(self, key: str) -> list[float]:
        """``key`` from each run's record (runs that lack it are left out)."""
        out = []
        for r in self.runs:
            v = r.record.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append(float(v))
        return out


def _catalog_field(model: str, name: str) -> str:
    try:
        return getattr(model_info(model), name)
    except CifarlabError:
        return "unregistered"


def by_dataset(runs: list[FinishedRun], split: bool) -> dict[tuple[str, str], list[FinishedRun]]:
    """Runs per (dataset, fingerprint). Mixed datasets are refused unless ``split``."""
    groups: dict[tuple[str, str], list[FinishedRun]] = defaultdict(list)
    for r in runs:
        groups[r.dataset_key].append(r)
    if len(groups) > 1 and not split:
        names = ", ".join(f"{d} ({fp})" for d, fp in sorted(groups))
        raise CifarlabError(f"the runs cover {len(groups)} datasets ({names}); runs on different data never share "
                            f"a table: pass --split-by-dataset for one section each, or fewer paths")
    return dict(sorted(groups.items()))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "model_kwargs":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def experiment_config(run: FinishedRun) -> dict[str, Any]:
    """The run's flattened config without execution-only fields; a field the run predates counts at its default."""
    merged = {**_flatten(TrainConfig().model_dump(mode="json")), **_flatten(run.config)}
    return {k: v for k, v in merged.items() if k not in EXECUTION_FIELDS}


def _fmt_setting(key: str, value: Any) -> str:
    if isinstance(value, dict):
        value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return f"{key}={value}"


def group_variants(runs: list[FinishedRun]) -> list[Variant]:
    """Variants in a stable order: study runs by (study, folder name), loose runs by model and settings."""
    variants: dict[tuple, Variant] = {}
    loose: dict[str, tuple[dict[str, Any], Variant]] = {}
    for r in runs:
        if r.variant is not None:
            key = ("study", r.study, r.variant)
            variants.setdefault(key, Variant(r.variant, r.study)).runs.append(r)
            continue
        cfg = experiment_config(r)
        ident = json.dumps(cfg, sort_keys=True, default=str)
        if ident not in loose:
            loose[ident] = (cfg, Variant(r.model, None))
        loose[ident][1].runs.append(r)
    # name loose variants: the model, plus the settings that differ between variants of that model
    per_model: dict[str, list[tuple[dict[str, Any], Variant]]] = defaultdict(list)
    for cfg, v in loose.values():
        per_model[v.model].append((cfg, v))
    for model, items in per_model.items():
        if len(items) > 1:
            keys = sorted({k for cfg, _ in items for k in cfg if len({json.dumps(c.get(k), sort_keys=True)
                                                                      for c, _ in items}) > 1})
            for cfg, v in items:
                v.name = f"{model} ({', '.join(_fmt_setting(k, cfg.get(k)) for k in keys)})"
        for _, v in items:
            variants[("runs", v.name)] = v
    for v in variants.values():
        v.runs.sort(key=lambda r: (r.seed, str(r.root)))
    return [variants[k] for k in sorted(variants, key=lambda k: tuple(map(str, k)))]


def source_text(record: dict[str, Any]) -> str:
    """Where a run's data came from, fit for a page: a Hub id or a synthetic source as recorded, a local copy by its
    folder or file name only (the record keeps the path as the user gave it; the fingerprint identifies the data)."""
    return data_source_text(str(record.get("source", "?")), record.get("source_kind", "?"))


def data_source_text(source: str, kind: str | None) -> str:
    """A data source fit for a page: a Hub id or a synthetic source as given, a local copy (``kind``: parquet,
    pickle, or None when unknown) by its folder or file name only — a path on someone's machine means nothing to a
    reader, and the fingerprint identifies the data."""
    if kind in ("hub", "synthetic"):
        return f"`{source}` ({kind})"
    return f"a local {f'{kind} ' if kind else ''}copy named `{Path(source).name or source}`"


def run_ids(runs: list[FinishedRun]) -> dict[Path, str]:
    """A short, unique id per run: its folder relative to the folder that holds all of them."""
    if not runs:
        return {}
    base = Path(os.path.commonpath([str(r.root.parent) for r in runs]))
    return {r.root: r.root.relative_to(base).as_posix() for r in runs}
