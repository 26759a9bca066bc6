"""The study table: one row per variant from its finished runs, with the difference to its baseline, the CI
and verdict of :mod:`cifarlab.studies.stats`, and what the design can detect."""

from __future__ import annotations

from pathlib import Path
from statistics import mean, stdev
from typing import Any

import numpy as np

from .. import CifarlabError
from ..run import FinishedRun
from . import stats
from .runner import records_in, study_records


def correctness(records: list[FinishedRun]) -> np.ndarray:
    """(seeds, test images) bool matrix from the runs' ``test_correct`` strings."""
    rows = []
    for r in records:
        s = r.record.get("test_correct")
        if not isinstance(s, str) or not s:
            raise CifarlabError(f"{r.result_path} has no per-image test correctness (test_correct)")
        if s.strip("01"):
            raise CifarlabError(f"{r.result_path}: test_correct must hold only 0 and 1 (one per test image), "
                                f"found {next(c for c in s if c not in '01')!r}")
        rows.append(np.frombuffer(s.encode(), dtype=np.uint8) == ord("1"))
    if len({len(x) for x in rows}) > 1:
        raise CifarlabError("runs were evaluated on test sets of different sizes: "
                            + ", ".join(f"{r.run_id} ({len(x)})" for r, x in zip(records, rows, strict=True)))
    return np.stack(rows)


def check_same_data(records: list[FinishedRun]) -> dict[str, Any]:
    """The one (dataset, fingerprint, test size) every record shares; mixing them in one table is refused."""
    groups: dict[tuple, list[FinishedRun]] = {}
    for r in records:
        key = (r.record.get("dataset"), r.record.get("dataset_fingerprint"),
               (r.record.get("split_sizes") or {}).get("test"))
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
    from ..model_catalog import model_info

    try:
        return model_info(model).tier
    except CifarlabError:
        return None


def _compare(row: dict[str, Any], base: np.ndarray, var: np.ndarray, spread: stats.SeedSpread) -> None:
    """Fill ``row``'s difference, CIs, verdict and detectable difference (variant ``var`` vs baseline ``base``)."""
    if base.shape[1] != var.shape[1]:
        raise CifarlabError(f"{row['variant']} and its baseline {row['baseline']} were evaluated on test sets of "
                            f"different sizes ({var.shape[1]} and {base.shape[1]} images)")
    n_base, n_var = len(base), len(var)
    row.update(delta_top1=float(var.mean(1).mean() - base.mean(1).mean()), n_baseline=n_base,
               detectable=stats.detectable_text(n_base, n_var, spread),
               mde=stats.min_detectable_difference(n_base, n_var, spread.sd)
               if min(n_base, n_var) >= stats.MIN_SEEDS_FOR_A_CLAIM else None)
    if min(n_base, n_var) >= 2:
        ci = stats.difference_ci(base, var)
        row.update(ci_low=ci.low, ci_high=ci.high, ci_df=ci.df, population_ci_low=ci.population_low,
                   population_ci_high=ci.population_high)
    row["verdict"], row["gain"] = stats.verdict(n_base, n_var, row["ci_low"], row["ci_high"])
    row["loss"] = row["verdict"] == "worse"


def summary_table(variants: list[dict[str, Any]], records: dict[str, list[FinishedRun]]) -> list[dict[str, Any]]:
    """One row per variant (dicts, in study order): seeds, top-1/top-5 mean and std, params, MACs, time, and the
    difference to its baseline with its 95 % CIs (Welch t over seeds: about this test set; ``population_*``:
    about the population of images), a verdict and the minimum detectable difference. Accuracies are fractions.

    ``variants``: ``[{"name", "model", "baseline"}, ...]`` (``Study.describe()["variants"]``);
    ``records``: finished runs by variant name. Refuses runs on different data.
    """
    data = check_same_data([r for recs in records.values() for r in recs])
    matrices = {name: correctness(sorted(recs, key=lambda r: r.seed)) for name, recs in records.items() if recs}
    spread = stats.seed_spread([r.record["top1"] for r in recs] for recs in records.values())
    rows = []
    for v in variants:
        recs = sorted(records.get(v["name"], []), key=lambda r: r.seed)
        res = [r.record for r in recs]
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
            "delta_top1": None, "ci_low": None, "ci_high": None, "ci_level": stats.CI_LEVEL, "ci_df": None,
            "population_ci_low": None, "population_ci_high": None, "verdict": "", "gain": False,
            "mde": None, "detectable": "", "seed_sd": spread.sd, "seed_sd_source": spread.source,
            **data, "runs": [str(r.root) for r in recs],
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
            _compare(row, matrices[base], matrices[v["name"]], spread)
        rows.append(row)
    return rows


def study_summary(target: str | Path, out: str | Path = "runs") -> list[dict[str, Any]]:
    """The summary rows of a study, from its YAML file (runs under ``out``) or its folder ``<out>/<study>``."""
    target = Path(target)
    if target.is_dir():
        variants, records = records_in(target)
    else:
        from .spec import load_study

        study = load_study(target)
        variants, records = study.describe()["variants"], study_records(study, out)
    return summary_table(variants, records)


def format_table(rows: list[dict[str, Any]], title: str = "", n_seeds: int | None = None,
                 target: float = stats.TARGET_DIFFERENCE) -> str:
    """The plain-text study table (accuracies in %, differences in percentage points); with ``n_seeds``, the
    study's seeds per variant, it ends with what that design can detect and what ``target`` would need."""
    pct = lambda x: "-" if x is None else f"{100 * x:.2f}"  # noqa: E731
    pm = lambda m, s: "-" if m is None else pct(m) + ("" if s is None else f" ± {100 * s:.2f}")  # noqa: E731
    header = ["variant", "model", "n", "top-1 % (mean ± std)", "top-5 %", "params", "MACs (M)", "img/s",
              "train s (steps / all)", "Δ top-1 pp [95% CI] vs baseline", "verdict", "MDE pp"]
    body = []
    for r in rows:
        delta = "-" if r["delta_top1"] is None else f"{100 * r['delta_top1']:+.2f} " + (
            "[no CI: 1 seed]" if r["ci_low"] is None else
            f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]") + f" vs {r['baseline']}"
        body.append([r["variant"], r["model"], str(r["n_seeds"]), pm(r["top1_mean"], r["top1_std"]),
                     pm(r["top5_mean"], r["top5_std"]), "-" if r["params"] is None else f"{r['params']:,}",
                     "-" if r["macs"] is None else f"{r['macs'] / 1e6:.2f}",
                     "-" if r["images_per_second_mean"] is None else f"{r['images_per_second_mean']:,.0f}",
                     "-" if r["train_seconds_mean"] is None else
                     f"{r['train_step_seconds_mean']:,.1f} / {r['train_seconds_mean']:,.1f}", delta, r["verdict"],
                     pct(r["mde"])])
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i in (0, 1, 9, 10) else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    lines = [title] if title else []
    first = next((r for r in rows if r.get("dataset")), None)
    if first:
        lines.append(f"data: {first['dataset']} (fingerprint {str(first['dataset_fingerprint'])[:12]}, "
                     f"{first['test_images']} test images)")
    lines += [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)]
    conv = next((r["mac_convention"] for r in rows if r.get("mac_convention")), None)
    lines.append(f"Δ: difference of mean top-1 to the baseline; 95% CI: Welch t over the seeds' top-1, about this "
                 f"test set (--json adds the CI over the population of images); a gain needs >= "
                 f"{stats.MIN_SEEDS_FOR_A_CLAIM} seeds per side and a CI above 0. MDE: the smallest difference "
                 f"found with {100 * stats.POWER:.0f} % power at the row's seeds (docs/statistics.md).")
    if conv:
        lines.append(f"MACs: {conv}")
    lines.append("img/s and train s: means over seeds; img/s and 'steps' cover the training steps only, 'all' the "
                 "whole run (data, build, capture, evaluation, checkpoints)")
    if n_seeds is not None and rows:
        lines += stats.design_lines(n_seeds, rows[0]["seed_sd"], rows[0]["seed_sd_source"], target)
    return "\n".join(lines)
