"""The verdict: a recorded figure against the re-trained runs.

- **Same seed, image by image.** The recorded run and its re-run with the same seed are compared prediction by
  prediction. When they differ, the paired question — does one get more images right than the other? — is
  answered by the exact McNemar test (McNemar 1947) on the discordant images: under no difference, each of the
  ``b + c`` images right in exactly one of the two runs is equally likely to be right in either, so
  ``p = min(1, 2 P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``.
- **Across seeds.** Where a single run's top-1 should fall: the prediction interval
  ``mean ± q · s · sqrt(1 + 1/K)`` of K re-trained runs (a normal model of top-1 over seeds; e.g. Hahn & Meeker,
  "Statistical Intervals", 1991), with ``s`` the seed SD and ``q`` the 97.5 % quantile of Student's t on its
  degrees of freedom — or the normal quantile when ``s`` is the stated prior
  (:data:`cifarlab.studies.stats.PRIOR_SEED_SD`). ``s`` is the estimate with the most degrees of freedom: the new
  runs' own SD (K - 1), or the pooled seed SD of the study the source belongs to (:func:`stats.seed_spread`); the
  prior when neither exists (K = 1 outside a study) or the new runs agree exactly. The figure is "reproduced"
  inside the interval, else "higher than reproducible" or "lower than reproducible", with its distance from the
  mean in seed SDs. The same-seed re-run is one of the K runs.
- **A study.** Each variant's difference to its baseline and its verdict (:func:`studies.table.summary_table`:
  Welch's t over seeds) re-derived from the new runs, beside the recorded ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist, mean, stdev
from typing import Any

from ..run import FinishedRun
from ..studies import stats
from ..studies.table import summary_table

LEVEL = 0.95
SETUP_FIELDS = ("device", "torch", "cuda", "git_commit", "train_step")


@dataclass(frozen=True)
class SameSeed:
    """A recorded run against its re-run with the same seed: how many predictions differ, how many images only one
    of them gets right (``recorded_only``, ``new_only``), McNemar's exact p, and whether the setup was the same."""

    variant: str
    seed: int
    recorded_top1: float
    new_top1: float
    images: int
    differ: int | None
    recorded_only: int | None
    new_only: int | None
    p_value: float | None
    same_setup: bool
    setup_differences: list[str]
    note: str = ""

    @property
    def identical(self) -> bool:
        return self.differ == 0


@dataclass(frozen=True)
class Spread:
    """A seed SD of top-1 (a fraction), its degrees of freedom (None: a prior, normal quantile) and its source."""

    sd: float
    df: float | None
    source: str


@dataclass(frozen=True)
class Interval:
    """A figure against the prediction interval of a single run's top-1 from ``values`` (the new runs)."""

    variant: str
    figure: float
    values: list[float]
    mean: float
    sd: float
    sd_source: str
    df: float | None
    quantile: float
    low: float
    high: float
    verdict: str
    gap_sd: float | None


@dataclass(frozen=True)
class StudyLine:
    """A variant's mean top-1, difference to its baseline [95 % CI] and verdict: recorded and re-derived."""

    variant: str
    baseline: str | None
    recorded_top1: float | None
    recorded_delta: float | None
    recorded_low: float | None
    recorded_high: float | None
    recorded_verdict: str
    recorded_seeds: int
    new_top1: float | None
    new_delta: float | None
    new_low: float | None
    new_high: float | None
    new_verdict: str
    new_seeds: int
    changed: bool


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (1 when there are none)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _setup(record: dict[str, Any]) -> dict[str, Any]:
    env = record.get("environment") or {}
    return {"device": record.get("device") or env.get("device"), "torch": env.get("torch"), "cuda": env.get("cuda"),
            "git_commit": record.get("git_commit"), "train_step": record.get("train_step")}


def same_seed(variant: str, recorded: FinishedRun, new: FinishedRun) -> SameSeed:
    """The recorded run against its same-seed re-run, image by image."""
    r, n = recorded.record, new.record
    a, b = _setup(r), _setup(n)
    differences = [f"{k}: {a[k]} / {b[k]}" for k in SETUP_FIELDS if a[k] != b[k]]
    head = dict(variant=variant, seed=recorded.seed, recorded_top1=r["top1"], new_top1=n["top1"],
                same_setup=not differences, setup_differences=differences)
    labels, preds, new_preds = r.get("test_labels"), r.get("test_predictions"), n.get("test_predictions")
    if not (labels and preds and new_preds):
        return SameSeed(**head, images=0, differ=None, recorded_only=None, new_only=None, p_value=None,
                        note="a record carries no per-image predictions")
    if labels != n.get("test_labels"):
        return SameSeed(**head, images=len(labels), differ=None, recorded_only=None, new_only=None, p_value=None,
                        note="the test labels differ image by image: not the same test set")
    pairs = list(zip(preds, new_preds, labels, strict=True))
    only_rec = sum(p == y != q for p, q, y in pairs)
    only_new = sum(q == y != p for p, q, y in pairs)
    return SameSeed(**head, images=len(labels), differ=sum(p != q for p, q, _ in pairs), recorded_only=only_rec,
                    new_only=only_new, p_value=mcnemar_exact(only_rec, only_new))


def choose_spread(values: list[float], study: stats.SeedSpread | None = None) -> Spread:
    """The seed SD with the most degrees of freedom: the new runs' (K - 1) or the study's pooled one; the prior when
    there is neither, or when the new runs agree exactly and no study gives one."""
    own = (stdev(values), len(values) - 1) if len(values) >= 2 else (0.0, 0)
    pooled = (study.sd, study.runs - study.groups) if study is not None and study.runs else (0.0, 0)
    if own[0] > 0 and own[1] >= pooled[1]:
        return Spread(own[0], own[1], f"the {len(values)} new runs' SD ({100 * own[0]:.2f} pt, {own[1]} df)")
    if pooled[1] and pooled[0] > 0:
        return Spread(pooled[0], pooled[1], f"the study's pooled seed SD ({study.source}, {pooled[1]} df)")
    why = ("the new runs agree exactly" if own[1] else
           "one new run and no study to pool over" if len(values) == 1 else "no new run")
    return Spread(stats.PRIOR_SEED_SD, None, f"the prior seed SD {100 * stats.PRIOR_SEED_SD:.2f} pt "
                                             f"(a CIFAR ResNet on CIFAR-100; {why})")


def prediction_interval(variant: str, figure: float, values: list[float], spread: Spread) -> Interval:
    """``figure`` against ``mean ± q s sqrt(1 + 1/K)`` of the K ``values`` (see the module docstring)."""
    k, m = len(values), mean(values)
    q = (stats.t_quantile((1 + LEVEL) / 2, spread.df) if spread.df is not None
         else NormalDist().inv_cdf((1 + LEVEL) / 2))
    half = q * spread.sd * math.sqrt(1 + 1 / k)
    low, high = m - half, m + half
    verdict = ("reproduced" if low <= figure <= high else
               "higher than reproducible" if figure > high else "lower than reproducible")
    gap = (figure - m) / spread.sd if spread.sd > 0 else None
    return Interval(variant, figure, values, m, spread.sd, spread.source, spread.df, q, low, high, verdict, gap)


def study_lines(variants: list[dict[str, Any]], recorded: dict[str, list[FinishedRun]],
                new: dict[str, list[FinishedRun]]) -> list[StudyLine]:
    """Each variant's Δ to its baseline and verdict, recorded and re-derived from the new runs."""
    old_rows = {r["variant"]: r for r in summary_table(variants, recorded)}
    new_rows = {r["variant"]: r for r in summary_table(variants, new)} if any(new.values()) else {}
    lines = []
    for v in variants:
        o, n = old_rows[v["name"]], new_rows.get(v["name"], {})
        verdicts = (o["verdict"], n.get("verdict", "no finished runs"))
        comparable = v.get("baseline") not in (None, v["name"]) and n.get("n_seeds", 0) > 0
        lines.append(StudyLine(v["name"], v.get("baseline"), o["top1_mean"], o["delta_top1"], o["ci_low"],
                               o["ci_high"], verdicts[0], o["n_seeds"], n.get("top1_mean"), n.get("delta_top1"),
                               n.get("ci_low"), n.get("ci_high"), verdicts[1], n.get("n_seeds", 0),
                               comparable and verdicts[0] != verdicts[1]))
    return lines


def best_test_top1(run: FinishedRun) -> float | None:
    """A run's best test top-1 over its epochs (``metrics.jsonl``): the figure a best-on-test rule reports."""
    values = [r["test_top1"] for r in run.metrics if isinstance(r.get("test_top1"), float | int)]
    return max(values) if values else None
