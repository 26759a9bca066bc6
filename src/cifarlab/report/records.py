"""Find run records (``result.json``) under paths and group them into variants.

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
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import CifarlabError
from ..config import TrainConfig
from ..io import read_json, read_json_object
from ..models import get_entry

REQUIRED_KEYS = ("model", "dataset", "dataset_fingerprint", "top1", "top5", "params", "macs", "seed")
SEED_FOLDER = re.compile(r"^seed(\d+)$")
MAX_METRIC = 1e12  # larger numbers in metrics.jsonl are damage (and break the figures' axes)
# Config fields that change how a run executes, not what it measures: runs differing only here are seeds of one variant.
# `data` says where the images were read from; which images they are is the fingerprint (runs are grouped by it first).
EXECUTION_FIELDS = frozenset({"seed", "eval_batch_size", "eval_every", "keep_checkpoints", "nan_check_every",
                              "compile", "channels_last", "deterministic", "report_to", "data"})


@dataclass
class Run:
    """One finished run: its folder, its record and where it sits in a study (if it does)."""

    root: Path
    record: dict[str, Any]
    study: str | None = None
    variant: str | None = None

    @property
    def result_path(self) -> Path:
        return self.root / "result.json"

    @property
    def model(self) -> str:
        return self.record["model"]

    @property
    def seed(self) -> int:
        return int(self.record["seed"])

    @property
    def dataset_key(self) -> tuple[str, str]:
        return self.record["dataset"], self.record["dataset_fingerprint"]

    @cached_property
    def config(self) -> dict[str, Any]:
        if isinstance(self.record.get("config"), dict):
            return self.record["config"]
        path = self.root / "config.json"
        return read_json(path) if path.is_file() else {"model": self.model}

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` (empty when the folder has none); a torn last line (a killed run) is
        ignored, any other line that is not an epoch's JSON object of finite numbers is refused."""
        path = self.root / "metrics.jsonl"
        if not path.is_file():
            return []
        lines = path.read_text(errors="replace").splitlines()
        rows = []
        for i, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                if i == len(lines):
                    break
                raise CifarlabError(f"{path}: line {i} is not JSON") from None
            if not _epoch_row(row):
                raise CifarlabError(f"{path}: line {i} is not an epoch's metrics (a JSON object with an integer "
                                    f"epoch and numbers within ±{MAX_METRIC:g})")
            rows.append(row)
        return rows


@dataclass
class Variant:
    """The runs (one per seed) of one configuration."""

    name: str
    study: str | None
    runs: list[Run] = field(default_factory=list)

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
        return _registry_field(self.model, "tier")

    @cached_property
    def family(self) -> str:
        return _registry_field(self.model, "family")

    def values(self, key: str) -> list[float]:
        """``key`` from each run's record (runs that lack it are left out)."""
        out = []
        for r in self.runs:
            v = r.record.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append(float(v))
        return out


def _registry_field(model: str, name: str) -> str:
    try:
        return getattr(get_entry(model), name)
    except CifarlabError:
        return "unregistered"


def discover(paths: list[str | Path]) -> list[Path]:
    """Every ``result.json`` under ``paths`` (a path may also be a result.json or a run folder), sorted, unique."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise CifarlabError(f"{p} does not exist")
        if p.is_file():
            if p.name != "result.json":
                raise CifarlabError(f"{p} is not a result.json or a folder of runs")
            found.add(p.resolve())
        else:
            found.update(f.resolve() for f in p.rglob("result.json") if "checkpoints" not in f.parts)
    return sorted(found)


def _epoch_row(row: Any) -> bool:
    if not isinstance(row, dict) or not isinstance(row.get("epoch"), int) or isinstance(row["epoch"], bool):
        return False
    numbers = [v for v in row.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return all(abs(v) <= MAX_METRIC for v in numbers)  # NaN fails this too


def _valid(key: str, value: Any) -> bool:
    """Whether a required record field has its type: names are strings, accuracies fractions, counts finite."""
    if key in ("model", "dataset", "dataset_fingerprint"):
        return isinstance(value, str)
    if key == "seed":
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
    number = (isinstance(value, float) and math.isfinite(value)
              or isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63)
    return number and (0 <= value <= 1 if key in ("top1", "top5") else value >= 0)


def load_run(result_path: Path) -> Run:
    record = read_json_object(result_path, "run record")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise CifarlabError(f"{result_path}: the record lacks {', '.join(missing)}")
    bad = [k for k in REQUIRED_KEYS if not _valid(k, record[k])]
    if bad:
        raise CifarlabError(f"{result_path}: not a valid run record ({', '.join(f'{k}={record[k]!r:.40}' for k in bad)})")
    root = result_path.parent
    m = SEED_FOLDER.match(root.name)
    if m:
        return Run(root, record, study=root.parent.parent.name, variant=root.parent.name)
    return Run(root, record)


def load_runs(paths: list[str | Path]) -> list[Run]:
    return [load_run(p) for p in discover(paths)]


def by_dataset(runs: list[Run], split: bool) -> dict[tuple[str, str], list[Run]]:
    """Runs per (dataset, fingerprint). Mixed datasets are refused unless ``split``."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
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


def experiment_config(run: Run) -> dict[str, Any]:
    """The run's flattened config without execution-only fields; a field the run predates counts at its default."""
    merged = {**_flatten(TrainConfig().model_dump(mode="json")), **_flatten(run.config)}
    return {k: v for k, v in merged.items() if k not in EXECUTION_FIELDS}


def _fmt_setting(key: str, value: Any) -> str:
    if isinstance(value, dict):
        value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return f"{key}={value}"


def group_variants(runs: list[Run]) -> list[Variant]:
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
    source, kind = str(record.get("source", "?")), record.get("source_kind", "?")
    if kind in ("hub", "synthetic"):
        return f"`{source}` ({kind})"
    return f"a local {kind} copy named `{Path(source).name or source}`"


def run_ids(runs: list[Run]) -> dict[Path, str]:
    """A short, unique id per run: its folder relative to the folder that holds all of them."""
    if not runs:
        return {}
    base = Path(os.path.commonpath([str(r.root.parent) for r in runs]))
    return {r.root: r.root.relative_to(base).as_posix() for r in runs}
