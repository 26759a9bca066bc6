"""Per-variant summaries (mean ± std over seeds, costs) and each variant's comparison with its baseline.

The statistics themselves — mean ± std over seeds, the CI on the top-1 difference against a
baseline with the rule for when a gain is real, and the smallest difference the seeds can
detect — come from :mod:`cifarlab.studies.stats` (through :mod:`cifarlab.studies.table`); this
module only decides who is compared with whom and collects the numbers a table, a figure or
a sentence needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from statistics import mean, stdev

from ..run import FinishedRun, RunFolder, read_study
from ..run.folder import STUDY
from ..studies import stats
from ..studies.table import summary_table
from .records import Variant, group_variants

TIER_ORDER = {"small": 0, "standard": 1}


@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float | None  # None with a single seed
    n: int


@dataclass(frozen=True)
class Comparison:
    """Top-1 of a variant minus its baseline's, as fractions, with the stats module's 95 % CI and verdict."""

    baseline: str
    delta: float
    low: float
    high: float
    real: bool  # the stats module's verdict: >= 3 seeds per side and a CI that excludes zero
    n_baseline: int
    n_variant: int
    detectable: str = ""  # what this many seeds can detect (the stats module's phrase)

    @property
    def verdict(self) -> str:
        if not self.real:
            return "no demonstrated difference"
        return "gain" if self.delta > 0 else "loss"

    @property
    def reason(self) -> str:
        if self.real:
            return "the 95 % CI excludes zero"
        if min(self.n_baseline, self.n_variant) < stats.MIN_SEEDS_FOR_A_CLAIM:
            return f"fewer than {stats.MIN_SEEDS_FOR_A_CLAIM} seeds per side"
        return "the 95 % CI includes zero"


@dataclass
class Row:
    variant: Variant
    top1: MeanStd
    top5: MeanStd
    params: int
    macs: int
    train_seconds: MeanStd | None
    images_per_second: MeanStd | None
    baseline: Variant | None = None
    comparison: Comparison | None = None
    is_baseline: bool = False

    @property
    def name(self) -> str:
        return self.variant.name


@dataclass
class Table:
    """The variants of one study (or the loose runs) on one dataset, grouped by size tier."""

    dataset: str
    fingerprint: str
    study: str | None
    rows: list[Row]

    @property
    def title(self) -> str:
        return f"study {self.study}" if self.study else "runs"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.study or "runs").strip("-")

    @property
    def tiers(self) -> list[str]:
        return sorted({r.variant.tier for r in self.rows}, key=lambda t: (TIER_ORDER.get(t, 9), t))

    @property
    def runs(self) -> list[FinishedRun]:
        return [run for r in self.rows for run in r.variant.runs]


def _mean_std(values: list[float]) -> MeanStd | None:
    if not values:
        return None
    return MeanStd(mean(values), stdev(values) if len(values) > 1 else None, len(values))


def _single(variant: Variant, key: str) -> int:
    """A per-model constant (params, MACs), taken from the first seed's record."""
    return int(variant.runs[0].record[key])


def _matches(v: Variant, name: str) -> bool:
    return name in (v.name, v.model, v.key)


def _baseline_candidates(variants: list[Variant], requested: list[str]) -> list[Variant]:
    """The explicit ``--baseline`` names; else a variant called 'baseline'; else the plain ResNets."""
    for pick in ([v for v in variants if any(_matches(v, n) for n in requested)],
                 [v for v in variants if v.name == "baseline"],
                 [v for v in variants if v.family == "resnet"]):
        if pick:
            return pick
    return []


def _baseline_for(v: Variant, candidates: list[Variant]) -> Variant | None:
    """The candidate ``v`` is compared with: same tier, preferring the backbone its model name ends with
    (eca_resnet56 -> resnet56), then the smallest; a candidate is its own tier's reference."""
    if v in candidates:
        return v
    same_tier = [c for c in candidates if c.tier == v.tier] or candidates
    pool = [c for c in same_tier if v.model.endswith(c.model)] or same_tier
    return min(pool, key=lambda c: (_single(c, "params"), c.name)) if pool else None


def _declared_baselines(variants: list[Variant]) -> dict[str, str | None] | None:
    """Each variant's baseline as the study declared it in ``study.json``; None when there is no such file."""
    study_dirs = {r.root.parent.parent for v in variants for r in v.runs}
    study = RunFolder(next(iter(study_dirs)))
    if len(study_dirs) != 1 or not study.is_file(STUDY):
        return None
    declared = {d.name: d.baseline for d in read_study(study).variants}
    names = {v.name for v in variants}
    return {v.name: declared.get(v.name) if declared.get(v.name) in names else None for v in variants}


def assign_baselines(variants: list[Variant], requested: list[str]) -> dict[str, str | None]:
    """Variant name -> the name of the variant it is compared with (itself for a baseline, None for none):
    ``--baseline`` names first, else the study's ``study.json``, else a variant called 'baseline' or the
    plain ResNets (per tier, matching the backbone by name)."""
    declared = None if requested or variants[0].study is None else _declared_baselines(variants)
    if declared is not None:
        return declared
    candidates = _baseline_candidates(variants, requested)
    return {v.name: (b.name if (b := _baseline_for(v, candidates)) else None) for v in variants}


def _comparison(row: dict, n_baseline: int) -> Comparison | None:
    if row["ci_low"] is None:  # no comparison, or a side with a single seed: no interval
        return None
    real = bool(row["gain"]) or bool(row.get("loss"))
    return Comparison(row["baseline"], row["delta_top1"], row["ci_low"], row["ci_high"], real, n_baseline,
                      row["n_seeds"], row["detectable"])


def build_tables(runs: list[FinishedRun], requested_baselines: list[str] | None = None) -> list[Table]:
    """One table per study (loose runs together) for runs on a single dataset; the statistics of each table
    (mean ± std, Δ with its CI and the verdict) come from :func:`cifarlab.studies.table.summary_table`."""
    variants = group_variants(runs)
    tables = []
    for study in sorted({v.study for v in variants}, key=lambda s: (s is None, s or "")):
        members = [v for v in variants if v.study == study]
        baselines = assign_baselines(members, requested_baselines or [])
        records = {v.name: v.runs for v in members}
        stat_rows = summary_table([{"name": v.name, "model": v.model, "baseline": baselines[v.name]}
                                         for v in members], records)
        by_name = {v.name: v for v in members}
        rows = []
        for v, st in zip(members, stat_rows, strict=True):
            base = baselines[v.name]
            rows.append(Row(
                v, top1=MeanStd(st["top1_mean"], st["top1_std"], st["n_seeds"]),
                top5=MeanStd(st["top5_mean"], st["top5_std"], st["n_seeds"]),
                params=_single(v, "params"), macs=_single(v, "macs"),
                train_seconds=_mean_std(v.values("train_seconds")),
                images_per_second=_mean_std(v.values("images_per_second")),
                baseline=by_name[base] if base not in (None, v.name) else None,
                comparison=_comparison(st, len(by_name[base].runs) if base else 0), is_baseline=base == v.name))
        rows.sort(key=lambda r: (TIER_ORDER.get(r.variant.tier, 9), r.variant.tier, not r.is_baseline, r.name))
        first = members[0].runs[0]
        tables.append(Table(first.record["dataset"], first.record["dataset_fingerprint"], study, rows))
    return tables
