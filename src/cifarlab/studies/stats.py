"""Study statistics: mean +- std over seeds, and a hierarchical bootstrap CI on the difference to the baseline.

Two sources of noise separate a variant's test accuracy from its "true" value:
the training seed (initialisation, data order, augmentation) and the finite test
set. :func:`bootstrap_differences` resamples both: in each replicate it draws
seeds with replacement, separately for the variant and its baseline, and one
resample of the test images shared by both sides (the comparison is paired on
images, through the per-image correctness each run records in ``test_correct``).
The replicate's difference is mean accuracy (variant) - mean accuracy (baseline)
over the drawn seeds, on the drawn images. The 95 % interval is the 2.5 and 97.5
percentiles of the replicates.

A gain is claimed only when both sides have >= 3 seeds and the interval excludes
zero: with fewer seeds the seed resampling cannot see the seed-to-seed spread,
and a difference that is only seed noise would look real.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import numpy as np

from .. import CifarlabError
from ..io import read_json

MIN_SEEDS_FOR_A_CLAIM = 3
N_BOOT = 2000
CI_LEVEL = 0.95


@dataclass(frozen=True)
class RunRecord:
    variant: str
    seed: int
    run_dir: Path
    result: dict[str, Any]

    @property
    def run_id(self) -> str:
        return f"{self.run_dir.parent.parent.name}/{self.variant}/seed{self.seed}"


def correctness(records: list[RunRecord]) -> np.ndarray:
    """(seeds, test images) bool matrix from the runs' ``test_correct`` strings."""
    rows = []
    for r in records:
        s = r.result.get("test_correct")
        if not isinstance(s, str) or not s:
            raise CifarlabError(f"{r.run_dir}/result.json has no per-image test correctness (test_correct)")
        rows.append(np.frombuffer(s.encode(), dtype=np.uint8) == ord("1"))
    if len({len(x) for x in rows}) > 1:
        raise CifarlabError("runs were evaluated on test sets of different sizes: "
                            + ", ".join(f"{r.run_id} ({len(x)})" for r, x in zip(records, rows)))
    return np.stack(rows)


def bootstrap_differences(baseline: np.ndarray, variant: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                          resample_seeds: bool = True, chunk: int = 250) -> np.ndarray:
    """Replicates of mean accuracy (variant) - mean accuracy (baseline), hierarchical over seeds and images.

    ``baseline`` and ``variant`` are (seeds, images) correctness matrices on the same
    test images. ``resample_seeds=False`` resamples the images only (shown for
    contrast: it treats the seeds at hand as all there is).
    """
    if baseline.shape[1] != variant.shape[1]:
        raise CifarlabError("baseline and variant were evaluated on different test sets")
    rng = np.random.default_rng(seed)
    n = baseline.shape[1]
    a, b = baseline.astype(np.float32), variant.astype(np.float32)
    out = []
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        picks = rng.integers(0, n, (m, n))
        counts = np.bincount((picks + np.arange(m)[:, None] * n).ravel(), minlength=m * n).reshape(m, n)
        w = counts.astype(np.float32).T / n                      # (images, m): one image resample per replicate
        acc_a, acc_b = a @ w, b @ w                               # (seeds, m): each seed's accuracy on it
        cols = np.arange(m)
        if resample_seeds:
            sa = rng.integers(0, len(a), (len(a), m))
            sb = rng.integers(0, len(b), (len(b), m))
            out.append(acc_b[sb, cols].mean(0) - acc_a[sa, cols].mean(0))
        else:
            out.append(acc_b.mean(0) - acc_a.mean(0))
    return np.concatenate(out)


def difference_ci(baseline: np.ndarray, variant: np.ndarray, level: float = CI_LEVEL, n_boot: int = N_BOOT,
                  seed: int = 0, resample_seeds: bool = True) -> tuple[float, float, float]:
    """(observed difference of mean accuracies, CI low, CI high), as fractions."""
    diffs = bootstrap_differences(baseline, variant, n_boot, seed, resample_seeds)
    lo, hi = np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    return float(variant.mean(1).mean() - baseline.mean(1).mean()), float(lo), float(hi)


def check_same_data(records: list[RunRecord]) -> dict[str, Any]:
    """The one (dataset, fingerprint, test size) every record shares; mixing them in one table is refused."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        key = (r.result.get("dataset"), r.result.get("dataset_fingerprint"),
               (r.result.get("split_sizes") or {}).get("test"))
        groups.setdefault(key, []).append(r)
    if len(groups) > 1:
        parts = [f"{k[0]} (fingerprint {str(k[1])[:12]}, test {k[2]}): {len(v)} runs, e.g. {v[0].run_id}"
                 for k, v in groups.items()]
        raise CifarlabError("runs on different data cannot share one table: " + " | ".join(parts)
                            + "; keep each dataset's runs in their own --out folder")
    if not groups:
        return {}
    (dataset, fingerprint, test), = groups
    return {"dataset": dataset, "dataset_fingerprint": fingerprint, "test_images": test}


def _tier(model: str) -> str | None:
    from ..models import get_entry

    try:
        return get_entry(model).tier
    except CifarlabError:
        return None


def verdict(n_base: int, n_var: int, lo: float, hi: float) -> tuple[str, bool]:
    """(verdict text, whether a gain is demonstrated); a demonstrated loss reads "worse"."""
    if min(n_base, n_var) < MIN_SEEDS_FOR_A_CLAIM:
        return f"n < {MIN_SEEDS_FOR_A_CLAIM} seeds: no claim", False
    if lo > 0:
        return "gain", True
    if hi < 0:
        return "worse", False
    return "no clear difference", False


def summary_table(variants: list[dict[str, Any]], records: dict[str, list[RunRecord]], n_boot: int = N_BOOT,
                  seed: int = 0) -> list[dict[str, Any]]:
    """One row per variant (dicts, in study order): seeds, top-1/top-5 mean and std, params, MACs, time, and the
    difference to its baseline with a hierarchical-bootstrap CI and a verdict. Accuracies are fractions.

    ``variants``: ``[{"name", "model", "baseline"}, ...]`` (``Study.describe()["variants"]``);
    ``records``: finished runs by variant name. Refuses runs on different data.
    """
    data = check_same_data([r for recs in records.values() for r in recs])
    matrices = {name: correctness(sorted(recs, key=lambda r: r.seed)) for name, recs in records.items() if recs}
    rows = []
    for v in variants:
        recs = sorted(records.get(v["name"], []), key=lambda r: r.seed)
        res = [r.result for r in recs]
        top1, top5 = [x["top1"] for x in res], [x["top5"] for x in res]
        row: dict[str, Any] = {
            "variant": v["name"], "model": v["model"], "tier": _tier(v["model"]), "baseline": v.get("baseline"),
            "n_seeds": len(recs), "seeds": [r.seed for r in recs],
            "top1_mean": mean(top1) if top1 else None, "top1_std": stdev(top1) if len(top1) > 1 else None,
            "top5_mean": mean(top5) if top5 else None, "top5_std": stdev(top5) if len(top5) > 1 else None,
            "params": res[0]["params"] if res else None, "macs": res[0]["macs"] if res else None,
            "mac_convention": res[0].get("mac_convention") if res else None,
            "epochs": res[0]["epochs"] if res else None,
            "train_seconds_mean": mean(x["train_seconds"] for x in res) if res else None,
            "train_step_seconds_mean": mean(x.get("train_step_seconds", sum(x.get("epoch_seconds", [0.0])))
                                            for x in res) if res else None,
            "images_per_second_mean": mean(x["images_per_second"] for x in res) if res else None,
            "delta_top1": None, "ci_low": None, "ci_high": None, "ci_level": CI_LEVEL, "bootstrap_replicates": n_boot,
            "verdict": "", "gain": False, **data, "runs": [str(r.run_dir) for r in recs],
        }
        base = v.get("baseline")
        if base == v["name"]:
            row["verdict"] = "baseline"
        elif not recs:
            row["verdict"] = "no finished runs"
        elif base is None:
            row["verdict"] = "no baseline"
        elif base not in matrices:
            row["verdict"] = f"baseline {base} has no finished runs"
        else:
            delta, lo, hi = difference_ci(matrices[base], matrices[v["name"]], n_boot=n_boot, seed=seed)
            row.update(delta_top1=delta, ci_low=lo, ci_high=hi)
            row["verdict"], row["gain"] = verdict(len(matrices[base]), len(recs), lo, hi)
            row["loss"] = row["verdict"] == "worse"
        rows.append(row)
    return rows


# ---- reading records ----

_SEED_DIR = re.compile(r"^seed(\d+)$")


def records_in(study_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, list[RunRecord]]]:
    """Variants (from ``study.json`` when present, else the folders) and finished runs under ``<out>/<study>``."""
    root = Path(study_dir)
    if not root.is_dir():
        raise CifarlabError(f"{root} is not a folder")
    records: dict[str, list[RunRecord]] = {}
    for res in sorted(root.glob("*/seed*/result.json")):
        m = _SEED_DIR.match(res.parent.name)
        if m:
            variant = res.parent.parent.name
            records.setdefault(variant, []).append(RunRecord(variant, int(m.group(1)), res.parent, read_json(res)))
    meta = root / "study.json"
    variants = [dict(v) for v in read_json(meta)["variants"]] if meta.is_file() else []
    known = {v["name"] for v in variants}
    for name, recs in records.items():
        if name not in known:
            variants.append({"name": name, "model": recs[0].result["model"], "baseline": None})
    if not variants:
        raise CifarlabError(f"{root} holds no study (no study.json and no <variant>/seed<k>/result.json)")
    return variants, records


def study_summary(target: str | Path, out: str | Path = "runs", n_boot: int = N_BOOT) -> list[dict[str, Any]]:
    """The summary rows of a study, from its YAML file (runs under ``out``) or its folder ``<out>/<study>``."""
    target = Path(target)
    if target.is_dir():
        variants, records = records_in(target)
    else:
        from .runner import study_records
        from .spec import load_study

        study = load_study(target)
        variants, records = study.describe()["variants"], study_records(study, out)
    return summary_table(variants, records, n_boot=n_boot)


def format_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """The plain-text study table (accuracies in %, differences in percentage points)."""
    pct = lambda x: "-" if x is None else f"{100 * x:.2f}"  # noqa: E731
    pm = lambda m, s: "-" if m is None else pct(m) + ("" if s is None else f" ± {100 * s:.2f}")  # noqa: E731
    header = ["variant", "model", "n", "top-1 % (mean ± std)", "top-5 %", "params", "MACs (M)", "img/s",
              "train s (steps / all)", "Δ top-1 pp [95% CI] vs baseline", "verdict"]
    body = []
    for r in rows:
        delta = "-" if r["delta_top1"] is None else (
            f"{100 * r['delta_top1']:+.2f} [{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}] vs {r['baseline']}")
        body.append([r["variant"], r["model"], str(r["n_seeds"]), pm(r["top1_mean"], r["top1_std"]),
                     pm(r["top5_mean"], r["top5_std"]), "-" if r["params"] is None else f"{r['params']:,}",
                     "-" if r["macs"] is None else f"{r['macs'] / 1e6:.2f}",
                     "-" if r["images_per_second_mean"] is None else f"{r['images_per_second_mean']:,.0f}",
                     "-" if r["train_seconds_mean"] is None else
                     f"{r['train_step_seconds_mean']:,.1f} / {r['train_seconds_mean']:,.1f}", delta, r["verdict"]])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i in (0, 1, 9, 10) else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    lines = [title] if title else []
    first = next((r for r in rows if r.get("dataset")), None)
    if first:
        lines.append(f"data: {first['dataset']} (fingerprint {str(first['dataset_fingerprint'])[:12]}, "
                     f"{first['test_images']} test images)")
    lines += [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)]
    conv = next((r["mac_convention"] for r in rows if r.get("mac_convention")), None)
    n_boot = rows[0]["bootstrap_replicates"] if rows else N_BOOT
    lines.append(f"Δ: difference of mean top-1 to the baseline; 95% CI from a hierarchical bootstrap over seeds and "
                 f"test images ({n_boot} replicates, paired on images); a gain needs >= {MIN_SEEDS_FOR_A_CLAIM} seeds "
                 f"per side and a CI above 0.")
    if conv:
        lines.append(f"MACs: {conv}")
    lines.append("img/s and train s: means over seeds; img/s and 'steps' cover the training steps only, 'all' the "
                 "whole run (data, build, capture, evaluation, checkpoints)")
    return "\n".join(lines)
