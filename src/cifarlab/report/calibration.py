"""Calibration and evaluations on other test sets, from the records.

A run's own test figures come from ``result.json``; ``cifarlab eval RUN --data SOURCE``
adds ``evals/<fingerprint>.json`` beside it. The report lists both, each marked with
the source it came from, and draws a reliability diagram (accuracy against top-1
confidence in the 15 equal-width bins of the expected calibration error, Guo et al. 2017)
for the focus variant, its seeds pooled, one line per test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np

from ..run import FinishedRun, read_eval
from ..run.folder import EVALS
from .figures import STYLE, _figure, save
from .records import run_ids
from .summary import Row


@dataclass
class Evaluation:
    """One scoring of one run on one test set: its own (``result.json``) or another (``evals/*.json``)."""

    run: FinishedRun
    record: dict
    path: Path
    own: bool

    @property
    def source(self) -> str:
        if self.own:
            return f"own test split ({self.run.record.get('source', self.run.record['dataset'])})"
        return self.record.get("source_description") or str(self.record.get("source"))

    @property
    def fingerprint(self) -> str:
        return str(self.record.get("dataset_fingerprint" if self.own else "fingerprint", ""))

    @property
    def nll(self) -> float | None:
        return self.record.get("nll", self.record.get("test_loss") if self.own else None)


def run_evaluations(run: FinishedRun) -> list[Evaluation]:
    """The run's own test figures, then its ``evals/*.json`` of the test split, by source."""
    out = [Evaluation(run, run.record, run.result_path, own=True)]
    others = []
    for name in run.folder.listdir(EVALS):
        if name.endswith(".json") and not name.startswith("."):
            rec = read_eval(run.folder, name)
            if rec["split"] == "test":
                others.append(Evaluation(run, rec, run.folder.path(EVALS, name), own=False))
    return out + sorted(others, key=lambda e: e.source)


def _pooled(calibrations: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Counts, accuracy and confidence per bin over several evaluations' bins (images weighted)."""
    if not calibrations or len({c.get("bins") for c in calibrations}) != 1:
        return None
    count = np.sum([c["count"] for c in calibrations], axis=0).astype(float)
    def weighted(values: list, counts: list) -> list[float]:
        return [0.0 if v is None else v * n for v, n in zip(values, counts, strict=True)]

    acc = np.sum([weighted(c["accuracy"], c["count"]) for c in calibrations], 0)
    conf = np.sum([weighted(c["confidence"], c["count"]) for c in calibrations],
                  0)
    filled = count > 0
    return count, np.where(filled, acc / np.maximum(count, 1), np.nan), np.where(filled, conf / np.maximum(count, 1),
                                                                                  np.nan)


def _by_source(row: Row) -> dict[str, list[Evaluation]]:
    """The focus variant's evaluations that carry calibration bins, grouped by test set (own first)."""
    groups: dict[str, list[Evaluation]] = {}
    for run in row.variant.runs:
        for ev in run_evaluations(run):
            if isinstance(ev.record.get("calibration"), dict):
                groups.setdefault("own test split" if ev.own else f"{ev.source}", []).append(ev)
    return groups


def reliability_diagram(row: Row, stem: Path) -> list[Path] | None:
    """Accuracy against mean confidence per bin, one line per test set; None when no record has the bins."""
    groups = {name: _pooled([e.record["calibration"] for e in evs]) for name, evs in _by_source(row).items()}
    groups = {k: v for k, v in groups.items() if v is not None}
    if not groups:
        return None
    with mpl.rc_context(STYLE):
        fig = _figure(5.2, 4.6)
        ax = fig.add_subplot()
        ax.plot([0, 100], [0, 100], "--", color="black", lw=0.8, label="perfect calibration")
        for name, (count, acc, conf) in groups.items():
            ece = float(np.nansum(count / count.sum() * np.abs(acc - conf)))
            ok = count > 0
            ax.plot(100 * conf[ok], 100 * acc[ok], "o-", ms=3,
                    label=f"{name} (ECE {100 * ece:.2f} %, {int(count.sum()):,} images)")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("Mean top-1 confidence in the bin (%)")
        ax.set_ylabel("Top-1 accuracy in the bin (%)")
        ax.set_title(f"Reliability — {row.name} (seeds pooled, 15 bins)")
        fig.legend(loc="outside lower center", ncol=1)
        return save(fig, stem)


def _fmt(v, scale: float = 100.0, digits: int = 2) -> str:
    return "—" if not isinstance(v, (int, float)) else f"{scale * v:.{digits}f}"


def other_test_sets(section, w) -> list[str]:
    """The report block: a table of every run of ``section`` that was also evaluated on another test set, its own
    figures first, then each other set with a link to its record (``w.rel``); nothing when there is none."""
    rows = []
    ids = run_ids(section.runs)
    for run in section.runs:
        evs = run_evaluations(run)
        if len(evs) == 1:
            continue
        for ev in evs:
            images = ev.record.get("images") if not ev.own else (ev.record.get("split_sizes") or {}).get("test")
            rows.append(f"| {ids.get(run.root, run.root.name)} | {ev.source} | `{ev.fingerprint[:16]}` | "
                        f"{images if images is not None else '—'} | {_fmt(ev.record.get('top1'))} | "
                        f"{_fmt(ev.record.get('top5'))} | {_fmt(ev.nll, 1, 4)} | {_fmt(ev.record.get('ece'))} | "
                        f"[{ev.path.name}]({w.rel(ev.path)}) |")
    if not rows:
        return []
    return ["## Other test sets", "",
            "Runs also scored on other test sets with `cifarlab eval RUN --data SOURCE` (the same checkpoint; the "
            "first row of each run is its own test split). Top-1, top-5 and ECE in %, NLL in nats per image.", "",
            "| run | test set | fingerprint | images | top-1 | top-5 | NLL | ECE | record |",
            "|---|---|---|---:|---:|---:|---:|---:|---|", *rows, ""]
