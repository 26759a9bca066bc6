"""Coverage of the study CIs (``cifarlab.studies.stats``) by simulation: paired studies with a known truth.

Model, on the logit scale. Test image ``j`` has difficulty ``z_j ~ N(MU_Z, SD_Z)``; run ``s`` of arm ``k``
gets it right with probability ``sigmoid(z_j + shift_k + e_kj + u_ks)``, drawn once per run and image:

- ``u_ks ~ N(0, σ_u)``: the run-level seed offset (the setting's "seed offset", in points of top-1);
- ``e_Bj ~ N(0, σ_e)``: mixed effects, the variant helps some images and hurts others (σ_e = 0: the same
  shift on every image); ``shift_B`` is solved so that the population difference is the setting's ``diff``.

Each simulated study draws its own test images and seeds, and knows both truths: ``θ_T``, the difference of
expected top-1 over seeds on its test images (Gauss-Hermite over ``u``), and ``θ``, the difference over
the population of images. The test-set CI is scored against ``θ_T``, the population CI against ``θ``.

    python -m benchmarks.stats_coverage                       # the settings of tests/test_stats.py
    python -m benchmarks.stats_coverage --reference           # their expected coverage, for the record
    python -m benchmarks.stats_coverage --long --write docs/statistics.md   # the docs' tables and record

``--long`` runs 2,000 studies on 5,000 test images for each of 22 settings and 4 power checks (about 10 CPU
minutes) and writes them to ``results/stats/coverage.json``; ``--write`` puts the tables from that record into the
Markdown file between its ``stats-coverage`` markers. ``--reference`` runs 200,000 studies of each setting of the
tests (about 3 CPU minutes; Monte-Carlo SD of a coverage 0.05 pt) with other random seeds than theirs and writes
them to the same record (``reference``): the expected coverage the tests hold their simulations to.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cifarlab.environment import git_commit
from cifarlab.io import read_json, write_json
from cifarlab.studies import stats

from .common import ROOT

MU_Z, SD_Z = 1.6, 2.2  # image difficulty: mean top-1 about 0.72; two runs disagree on about 1 image in 4
MIXED_SD = 1.0  # logit SD of the variant's per-image effect in the mixed settings
RECORD = ROOT / "results" / "stats" / "coverage.json"
BEGIN, END = "<!-- stats-coverage:begin -->", "<!-- stats-coverage:end -->"


def _gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights with E[f(N(0, 1))] ~ sum(w f(x))."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / math.sqrt(2 * math.pi)


_GH_POPULATION = _gauss_hermite(60)  # over images: SD of 2 to 3 logits
_GH_SEED = _gauss_hermite(5)  # over seed offsets: SD below 0.1 logit (exact to its 10th-order term)


@dataclass(frozen=True)
class Setting:
    seeds_base: int
    seeds_var: int
    seed_offset: float  # SD of the run-level seed offset, in top-1 (fraction); per-image noise comes on top
    mixed: bool  # the variant's effect differs between images (helps some, hurts others)
    diff: float  # true population difference of expected top-1 (fraction)
    images: int = 5000

    @property
    def label(self) -> str:
        return (f"{self.seeds_base} vs {self.seeds_var} seeds, seed offset {100 * self.seed_offset:.1f} pt, "
                f"{'mixed' if self.mixed else 'uniform'}, diff {100 * self.diff:+.2f} pt, {self.images} images")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _expected(logit: np.ndarray, sd: float, nodes: tuple[np.ndarray, np.ndarray] = _GH_POPULATION) -> np.ndarray:
    """E[sigmoid(logit + N(0, sd))], elementwise (Gauss-Hermite)."""
    x, w = nodes
    return _sigmoid(logit[..., None] + (sd * x).astype(logit.dtype)) @ w.astype(logit.dtype)


def seed_logit_sd(seed_offset: float) -> float:
    """Logit SD of the run offset that moves mean top-1 by ``seed_offset`` (1 SD): offset / E[p (1 - p)]."""
    x, w = _GH_POPULATION
    p = _sigmoid(MU_Z + SD_Z * x)
    return seed_offset / float((p * (1 - p)) @ w)


def population_difference(shift: float, mixed_sd: float, seed_sd: float) -> float:
    """θ: expected top-1 of the variant minus the baseline's over images and seeds (one normal each)."""
    base = _expected(np.array(MU_Z), math.hypot(SD_Z, seed_sd))
    return float(_expected(np.array(MU_Z + shift), math.sqrt(SD_Z ** 2 + mixed_sd ** 2 + seed_sd ** 2)) - base)


def solve_shift(diff: float, mixed_sd: float, seed_sd: float) -> float:
    """The variant's logit shift whose population difference is ``diff`` (bisection)."""
    lo, hi = -3.0, 3.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if population_difference(mid, mixed_sd, seed_sd) < diff else (lo, mid)
    return (lo + hi) / 2


def simulate(setting: Setting, studies: int, seed: int = 0, chunk: int = 100) -> dict:
    """Run ``studies`` simulated studies of ``setting``; coverage, widths and claim rates of both CIs."""
    rng = np.random.default_rng(seed)
    su = seed_logit_sd(setting.seed_offset)
    se = MIXED_SD if setting.mixed else 0.0
    shift = solve_shift(setting.diff, se, su)
    theta = population_difference(shift, se, su)
    m, na, nb = setting.images, setting.seeds_base, setting.seeds_var
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, studies, chunk):
        k = min(chunk, studies - start)
        z = rng.normal(MU_Z, SD_Z, (k, 1, m)).astype(np.float32)
        zb = z + shift + (se * rng.standard_normal((k, 1, m), dtype=np.float32))
        u_base, u_var = (su * rng.standard_normal((k, n, 1), dtype=np.float32) for n in (na, nb))
        base = rng.random((k, na, m), dtype=np.float32) < _sigmoid(z + u_base)
        var = rng.random((k, nb, m), dtype=np.float32) < _sigmoid(zb + u_var)
        theta_t = (_expected(zb[:, 0], su, _GH_SEED) - _expected(z[:, 0], su, _GH_SEED)).mean(-1, dtype=np.float64)
        ci = stats.difference_ci(base, var)
        sd = np.sqrt((base.mean(-1).var(-1, ddof=1) * (na - 1) + var.mean(-1).var(-1, ddof=1) * (nb - 1))
                     / (na + nb - 2))
        for key, value in (("delta", ci.delta), ("theta_t", theta_t), ("low", ci.low), ("high", ci.high),
                           ("pop_low", ci.population_low), ("pop_high", ci.population_high), ("seed_sd", sd)):
            parts.setdefault(key, []).append(np.asarray(value, dtype=np.float64))
    r = {key: np.concatenate(v) for key, v in parts.items()}
    claims = min(na, nb) >= stats.MIN_SEEDS_FOR_A_CLAIM
    return {
        **asdict(setting), "studies": studies, "theta": theta,
        "coverage": float(((r["low"] <= r["theta_t"]) & (r["theta_t"] <= r["high"])).mean()),
        "population_coverage": float(((r["pop_low"] <= theta) & (theta <= r["pop_high"])).mean()),
        "test_ci_covers_population": float(((r["low"] <= theta) & (theta <= r["high"])).mean()),
        "width": float((r["high"] - r["low"]).mean()),
        "population_width": float((r["pop_high"] - r["pop_low"]).mean()),
        "ideal_width": float(2 * 1.959964 * (r["delta"] - r["theta_t"]).std()),
        "gain_claimed": float((r["low"] > 0).mean()) if claims else 0.0,
        "seed_sd": float(np.sqrt((r["seed_sd"] ** 2).mean())),
    }


# The settings tests/test_stats.py asserts: per-image noise only and seed offsets 2.6x the per-image noise, with 3
# seeds (where the former hierarchical bootstrap over-covers and under-covers), a mixed effect with 5 seeds for the
# population CI, and 3 vs 5 seeds (unequal counts: Welch's degrees of freedom).
QUICK = [Setting(3, 3, 0.0, False, 0.0, images=1000), Setting(3, 3, 0.020, False, 0.005, images=1000),
         Setting(5, 5, 0.004, True, 0.005, images=1000), Setting(3, 5, 0.010, True, 0.005, images=1000)]
QUICK_STUDIES = 6000
QUICK_SEED = 7  # the random seed of the tests' simulations; the reference takes 1000 + the setting's index
REFERENCE_STUDIES = 200_000


def reference_rows(studies: int = REFERENCE_STUDIES, seed: int = 1000) -> list[dict]:
    """The expected coverage of each QUICK setting, from ``studies`` simulated studies of it."""
    return [{**simulate(s, studies, seed + i), "seed": seed + i} for i, s in enumerate(QUICK)]


def long_settings() -> list[Setting]:
    grid = [Setting(n, n, offset, mixed, diff) for offset in (0.0, 0.010) for mixed in (False, True)
            for n in (3, 5) for diff in (0.0, 0.005)]
    return grid + [Setting(n_base, n_var, 0.004, mixed, 0.005) for n_base, n_var in ((3, 3), (3, 5), (5, 3))
                   for mixed in (False, True)]


def power_rows(seed: int, studies: int, images: int = 5000) -> list[dict]:
    """Claim rates at a true difference equal to the MDE predicted from the seed SD of a null pilot: ~80 %."""
    rows = []
    for n in (3, 5):
        pilot = simulate(Setting(n, n, 0.004, False, 0.0, images), studies, seed)
        mde = stats.min_detectable_difference(n, n, pilot["seed_sd"])
        rows.append({**simulate(Setting(n, n, 0.004, False, mde, images), studies, seed + 1), "mde": mde})
    return rows


def mde_rows(seed_sd: float = stats.PRIOR_SEED_SD) -> list[dict]:
    return [{"seeds": n, "mde": stats.min_detectable_difference(n, n, seed_sd)} for n in (3, 4, 5, 6, 8, 10, 15, 20)]


def markdown(record: dict) -> str:
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    pt = lambda x: f"{100 * x:.2f}"  # noqa: E731
    rows = ["| seeds | seed offset (pt) | effect | true diff (pt) | seed SD of top-1 (pt) | test-set CI covers θ_T "
            "| width (pt) | 3.92 x SD of Δ − θ_T (pt) | population CI covers θ | width (pt) "
            "| test-set CI covers θ "
            "| gain claimed |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["coverage"]:
        rows.append(f"| {r['seeds_base']} vs {r['seeds_var']} | {pt(r['seed_offset'])} | "
                    f"{'mixed' if r['mixed'] else 'uniform'} | {100 * r['diff']:+.2f} | {pt(r['seed_sd'])} | "
                    f"{pct(r['coverage'])} | {pt(r['width'])} | {pt(r['ideal_width'])} | "
                    f"{pct(r['population_coverage'])} | {pt(r['population_width'])} | "
                    f"{pct(r['test_ci_covers_population'])} | {pct(r['gain_claimed'])} |")
    power = ["| seeds | seed SD (pt) | true diff = predicted MDE (pt) | gain claimed |", "|---|---:|---:|---:|"]
    power += [f"| {r['seeds_base']} vs {r['seeds_var']} | {pt(r['seed_sd'])} | {pt(r['mde'])} | "
              f"{pct(r['gain_claimed'])} |" for r in record["power"]]
    mde = ["| seeds per side | " + " | ".join(str(r["seeds"]) for r in record["mde_prior"]) + " |",
           "|---" * (len(record["mde_prior"]) + 1) + "|",
           "| MDE (pt of top-1) | " + " | ".join(pt(r["mde"]) for r in record["mde_prior"]) + " |"]
    env = record["environment"]
    head = (f"Generated by `python -m benchmarks.stats_coverage {' '.join(record['args'])}` from "
            f"`results/stats/coverage.json`: {record['coverage'][0]['studies']:,} simulated studies per setting, "
            f"random seed {record['seed']}, {env['machine']} (1 core), {record['seconds']:.0f} s, git commit "
            f"{str(env['git_commit'])[:12]}. Nominal level {pct(stats.CI_LEVEL)}; binomial SD of a coverage at "
            f"this count {pct(math.sqrt(0.95 * 0.05 / record['coverage'][0]['studies']))}.")
    return "\n".join([BEGIN, head, "", *rows, "", "Power at the predicted minimum detectable difference "
                      f"(the seed offset {pt(0.004)} pt, uniform effect):", "", *power, "",
                      f"Minimum detectable difference at {pct(stats.POWER)} power for the prior seed SD "
                      f"{pt(stats.PRIOR_SEED_SD)} pt:", "", *mde, END])


def write_markdown(path: Path, record: dict) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers")
    path.write_text(text[:text.index(BEGIN)] + markdown(record) + text[text.index(END) + len(END):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", action="store_true",
                    help="22 settings x 2,000 studies on 5,000 images, and the power checks (docs)")
    ap.add_argument("--reference", action="store_true",
                    help=f"the tests' settings x {REFERENCE_STUDIES:,} studies: their expected coverage (record)")
    ap.add_argument("--studies", type=int,
                    help=f"studies per setting (default {QUICK_STUDIES:,}, or 2,000 with --long)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", type=Path, metavar="MD", help="put the tables into this Markdown file (--long)")
    args = ap.parse_args(argv)
    if args.reference:
        t0 = time.perf_counter()
        rows = reference_rows(args.studies or REFERENCE_STUDIES)
        for s, r in zip(QUICK, rows, strict=True):
            print(f"{s.label}: test-set CI {100 * r['coverage']:.2f} %, population CI "
                  f"{100 * r['population_coverage']:.2f} %")
        _update_record(reference={"rows": rows, "seconds": time.perf_counter() - t0, "git_commit": git_commit()})
        return 0
    studies = args.studies or (2000 if args.long else QUICK_STUDIES)
    t0 = time.perf_counter()
    rows = []
    for i, s in enumerate(long_settings() if args.long else QUICK):
        rows.append(simulate(s, studies, args.seed + 100 * i))
        r = rows[-1]
        print(f"{s.label}: test-set CI {100 * r['coverage']:.1f} % (width {100 * r['width']:.2f} pt), "
              f"population CI {100 * r['population_coverage']:.1f} %, gain claimed {100 * r['gain_claimed']:.1f} %",
              flush=True)
    record = {"args": sys.argv[1:] if argv is None else argv, "seed": args.seed, "coverage": rows,
              "power": power_rows(args.seed + 10_000, studies) if args.long else [], "mde_prior": mde_rows(),
              "seconds": time.perf_counter() - t0,
              "environment": {"machine": f"{platform.processor() or platform.machine()}, numpy {np.__version__}",
                              "python": platform.python_version(), "git_commit": git_commit()}}
    for r in record["power"]:
        print(f"power: {r['seeds_base']} seeds, diff = MDE {100 * r['mde']:.2f} pt: gain claimed "
              f"{100 * r['gain_claimed']:.1f} %")
    if args.long:
        _update_record(**record)
    if args.write:
        write_markdown(args.write, record)
        print(f"wrote {args.write}")
    return 0


def _update_record(**parts) -> None:
    """Write ``parts`` into ``results/stats/coverage.json``, keeping what the other mode wrote there."""
    write_json(RECORD, {**(read_json(RECORD) if RECORD.is_file() else {}), **parts})
    print(f"wrote {RECORD.relative_to(ROOT)}")


if __name__ == "__main__":
    raise SystemExit(main())
