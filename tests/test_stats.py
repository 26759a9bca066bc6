"""Study statistics: coverage of the CIs by simulation, t quantiles, the gain rule, what a design can detect, and
the study table built on them."""

import ast
import math
import re
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from benchmarks import stats_coverage
from cifarlab import CifarlabError
from cifarlab.cli import main
from cifarlab.io import read_json, write_json
from cifarlab.run import FinishedRun, RunFolder
from cifarlab.studies import stats
from cifarlab.studies.runner import records_in
from cifarlab.studies.table import format_table, summary_table

N_IMAGES = 2000


def _seed_rows(accuracies, rng, n=N_IMAGES):
    """Per-image correctness of one run per accuracy, independent across runs."""
    return np.stack([rng.random(n) < p for p in accuracies])


def _record(variant, seed, correct, dataset="cifar100", fingerprint="fp-a", model="resnet20", root="/study"):
    s = "".join("1" if c else "0" for c in correct)
    result = {"model": model, "dataset": dataset, "dataset_fingerprint": fingerprint,
              "split_sizes": {"train": 50000, "test": len(correct)}, "top1": float(np.mean(correct)), "top5": 0.9,
              "params": 1000, "macs": 2_000_000, "epochs": 10, "train_seconds": 5.0, "images_per_second": 100.0,
              "test_correct": s, "mac_convention": "FLOPs/2"}
    return FinishedRun(RunFolder(f"{root}/{variant}/seed{seed}"), {**result, "seed": seed}, "study", variant)


def _chi_square_rule(df: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights with E[g(V)] ~ sum(w g(v)) for V ~ chi-square(df), df even: Gauss-Laguerre in v/2 with the
    density's polynomial factor (v/2)^(df/2 - 1) / Γ(df/2) in the weights."""
    x, w = np.polynomial.laguerre.laggauss(n)
    return 2 * x, w * x ** (df / 2 - 1) / math.gamma(df / 2)


def welch_df(var_a, n_a, var_b, n_b):
    """Welch-Satterthwaite: (s_a²/n_a + s_b²/n_b)² / ((s_a²/n_a)²/(n_a - 1) + (s_b²/n_b)²/(n_b - 1))."""
    a, b = var_a / n_a, var_b / n_b
    return (a + b) ** 2 / (a ** 2 / (n_a - 1) + b ** 2 / (n_b - 1))


def welch_coverage(n_a: int, n_b: int, level: float = 0.95) -> float:
    """Coverage of Welch's t interval for normal data with equal SDs (Welch 1947): Δ - θ ~ N(0, σ²(1/n_a + 1/n_b))
    is independent of the sample variances σ² V/(n - 1), V ~ chi-square(n - 1), so the coverage is
    E[2 Φ(t(ν̂) SE/σ_Δ) - 1] over V_a and V_b (quadrature)."""
    (va, wa), (vb, wb) = _chi_square_rule(n_a - 1), _chi_square_rule(n_b - 1)
    sa, sb = (va / (n_a - 1))[:, None], (vb / (n_b - 1))[None, :]
    q = stats.t_quantile((1 + level) / 2, welch_df(sa, n_a, sb, n_b).ravel()).reshape(len(va), len(vb))
    z = q * np.sqrt((sa / n_a + sb / n_b) / (1 / n_a + 1 / n_b))
    return float(wa @ np.vectorize(math.erf)(z / math.sqrt(2)) @ wb)


def _reference(setting) -> dict:
    rows = read_json(stats_coverage.RECORD)["reference"]["rows"]
    found = [r for r in rows if all(r[k] == v for k, v in asdict(setting).items())]
    assert found, f"no reference for {setting.label}: run python -m benchmarks.stats_coverage --reference"
    return found[0]


# Each setting is simulated QUICK_STUDIES (6,000) times with a fixed seed and held to its expected coverage, from
# 200,000 other simulated studies of it (results/stats/coverage.json, "reference"), within 3 Monte-Carlo SDs of
# both: about ±0.72 pt at 96.5 % and ±0.84 pt at 94.6 %. An interval 18 % too wide covers 97.1-98.0 % here and
# fails on every setting; one 18 % too narrow (92.2-94.7 %) too. The test-set CI's expected coverage is Welch's
# theoretical one for equal seed spreads (96.5 % with 3 seeds per side, 95.6 % with 5, 95.4 % with 3 vs 5) within
# 0.3 pt (the variant's spread is a little smaller where its effect differs between images).
@pytest.mark.parametrize("setting", stats_coverage.QUICK, ids=lambda s: s.label)
def test_both_intervals_cover_the_truth_at_their_expected_level(setting):
    ref = _reference(setting)
    assert ref["coverage"] == pytest.approx(welch_coverage(setting.seeds_base, setting.seeds_var), abs=0.003)
    assert 0.94 <= ref["population_coverage"] <= 0.97, "the population CI is near its nominal 95 %"
    r = stats_coverage.simulate(setting, stats_coverage.QUICK_STUDIES, seed=stats_coverage.QUICK_SEED)
    for key, what in (("coverage", "test-set CI covers the test-set difference"),
                      ("population_coverage", "population CI covers θ")):
        p = ref[key]
        band = 3 * math.sqrt(p * (1 - p) * (1 / stats_coverage.QUICK_STUDIES + 1 / ref["studies"]))
        assert abs(r[key] - p) <= band, f"{what} {100 * r[key]:.2f} %, expected {100 * p:.2f} ± {100 * band:.2f} %"


def test_t_quantiles_match_the_tables():
    # Student's t table (two-sided 95 % unless noted) and the normal limit
    for p, df, q in ((0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 10, 2.2281),
                     (0.975, 30, 2.0423), (0.8, 4, 0.9410), (0.995, 3, 5.8409), (0.975, 1e9, 1.9600)):
        assert stats.t_quantile(p, df) == pytest.approx(q, abs=2e-4)
    dfs = np.array([1.5, 3.7, 8.2])
    assert np.all(np.diff(stats.t_quantile(0.975, dfs)) < 0), "fewer degrees of freedom, wider interval"
    with pytest.raises(ValueError):
        stats.t_quantile(0.975, 0.5)


def test_seed_noise_alone_is_not_a_gain():
    rng = np.random.default_rng(0)
    # large seed-to-seed spread, same underlying mean; the variant happens to draw the luckier seeds
    base = _seed_rows([0.60, 0.66, 0.72], rng)
    var = _seed_rows([0.63, 0.69, 0.75], rng)
    ci = stats.difference_ci(base, var)
    assert 0.02 < ci.delta < 0.04
    assert ci.low < 0 < ci.high, "a difference within the seed spread must not exclude zero"
    assert stats.verdict(3, 3, ci.low, ci.high) == ("no clear difference", False)


def test_consistent_difference_excludes_zero_and_the_population_interval_adds_the_images():
    rng = np.random.default_rng(1)
    base = _seed_rows([0.600, 0.605, 0.598], rng)
    var = _seed_rows([0.650, 0.655, 0.648], rng)
    ci = stats.difference_ci(base, var)
    assert 0 < ci.low < ci.delta < ci.high and ci.delta == pytest.approx(var.mean() - base.mean())
    assert ci.population_se >= ci.se
    # seeds that differ on a few images only, and a variant that gets the same 100 extra images right in every
    # run: the difference varies a lot over images and little over seeds; only the population interval widens
    common = rng.random(N_IMAGES) < 0.6
    fixed = np.zeros(N_IMAGES, bool)
    fixed[rng.choice(N_IMAGES, 100, replace=False)] = True
    runs = lambda extra: np.stack([(common | extra) ^ (rng.random(N_IMAGES) < 0.005) for _ in range(3)])  # noqa: E731
    ci2 = stats.difference_ci(runs(np.zeros(N_IMAGES, bool)), runs(fixed))
    f = (fixed & ~common).mean()
    assert ci2.se < 0.002 and ci2.population_se > 2 * ci2.se
    assert ci2.population_se == pytest.approx(math.sqrt(ci2.se ** 2 + f * (1 - f) / N_IMAGES), rel=0.15)


def test_batches_of_studies_give_the_same_intervals_as_one_at_a_time():
    rng = np.random.default_rng(2)
    base = rng.random((4, 3, 500)) < 0.6
    var = rng.random((4, 5, 500)) < 0.62
    batch = stats.difference_ci(base, var)
    for i in range(4):
        one = stats.difference_ci(base[i], var[i])
        assert one.low == pytest.approx(batch.low[i]) and one.population_high == pytest.approx(
            batch.population_high[i])
    with pytest.raises(ValueError, match="2 seeds"):
        stats.difference_ci(base[0, :1], var[0])


def test_seeds_that_agree_exactly_claim_neither_a_gain_nor_a_loss():
    rng = np.random.default_rng(9)
    low, high = _seed_rows([0.6, 0.7], rng)
    tenth = np.arange(3 * 10).reshape(3, 10) % 10 == 0  # top-1 0.1 in every run: its variance in floats is not 0
    for base, var in ((low, high), (high, low), (tenth, tenth[:, ::-1] | (np.arange(10) < 3))):
        ci = stats.difference_ci(np.stack([base] * 3) if base.ndim == 1 else base,
                                 np.stack([var] * 3) if var.ndim == 1 else var)
        assert ci.se == 0 and ci.low == ci.high == pytest.approx(np.mean(var) - np.mean(base))
        assert stats.verdict(3, 3, ci.low, ci.high) == (
            "no claim: the seeds of each side agree exactly (zero spread; duplicated runs?)", False)
    # duplicated records through the study table: neither a gain nor a loss
    worse = low & (rng.random(N_IMAGES) < 0.5)
    recs = {"base": [_record("base", s, low) for s in range(3)], "dup": [_record("dup", s, high) for s in range(3)],
            "dup-worse": [_record("dup-worse", s, worse) for s in range(3)]}
    rows = summary_table([{"name": n, "model": "resnet20", "baseline": "base"} for n in recs], recs)
    for row in rows[1:]:
        assert not row["gain"] and not row["loss"] and row["verdict"].startswith("no claim"), row["verdict"]


@pytest.mark.parametrize("bad, message", [
    (np.full((3, 10), np.nan), "per-image correctness must be 0 or 1, found nan"),
    (np.full((3, 10), 0.5), "per-image correctness must be 0 or 1, found 0.5"),
    (np.tile([0, 1, 2, 1, 0], (3, 2)), "per-image correctness must be 0 or 1, found 2"),
    (np.ones(10), "per-image correctness must be (runs, images), got shape (10,)"),
])
def test_correctness_that_is_not_0_or_1_by_runs_and_images_is_refused(bad, message):
    good = np.ones((3, 10), bool)
    with pytest.raises(ValueError, match=re.escape(f"the variant's {message}")):
        stats.difference_ci(good, bad)
    with pytest.raises(ValueError, match=re.escape(f"the baseline's {message}")):
        stats.difference_ci(bad, good)


def test_study_table_refuses_a_record_whose_correctness_is_not_0_or_1(tmp_path, capsys):
    rng = np.random.default_rng(10)
    for v, accs in (("a", [0.60, 0.61, 0.62]), ("b", [0.63, 0.64, 0.65])):
        for s, c in enumerate(_seed_rows(accs, rng, n=50)):
            write_json(tmp_path / "s" / v / f"seed{s}" / "result.json", _record(v, s, c).record)
    rec = _record("b", 2, np.ones(50, bool)).record
    write_json(tmp_path / "s" / "b" / "seed2" / "result.json", {**rec, "test_correct": "1" * 49 + "?"})
    write_json(tmp_path / "s" / "study.json", {"variants": [{"name": "a", "model": "resnet20", "baseline": "a"},
                                                           {"name": "b", "model": "resnet20", "baseline": "a"}]})
    assert main(["study", "table", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and \
        "b/seed2/result.json: damaged (field.test_correct: String should match pattern '^[01]*$'" in err


def test_minimum_detectable_difference_has_its_power_and_sizes_the_seeds():
    sd = stats.PRIOR_SEED_SD
    rng = np.random.default_rng(3)
    for n_base, n_var in ((3, 3), (3, 5)):
        mde = stats.min_detectable_difference(n_base, n_var, sd)
        # Welch's test on normal top-1 at a true difference of the MDE: 80 % of 20,000 studies find it
        a, b = rng.normal(0, sd, (20_000, n_base)), rng.normal(mde, sd, (20_000, n_var))
        va, vb = a.var(1, ddof=1), b.var(1, ddof=1)
        half = stats.t_quantile(0.975, welch_df(va, n_base, vb, n_var)) * np.sqrt(va / n_base + vb / n_var)
        found = np.abs(b.mean(1) - a.mean(1)) > half
        assert found.mean() == pytest.approx(stats.POWER, abs=0.01)  # binomial SD 0.3 pt
    mde3 = stats.min_detectable_difference(3, 3, sd)
    assert stats.min_detectable_difference(3, 3, 2 * sd) == pytest.approx(2 * mde3)
    assert stats.min_detectable_difference(5, 5, sd) < stats.min_detectable_difference(3, 5, sd) < mde3
    need = stats.seeds_needed(0.005, sd)
    assert stats.min_detectable_difference(need, need, sd) <= 0.005 < stats.min_detectable_difference(
        need - 1, need - 1, sd)
    assert stats.seeds_needed(1.0, sd) == stats.MIN_SEEDS_FOR_A_CLAIM and stats.seeds_needed(1e-6, sd) is None
    with pytest.raises(ValueError, match="3 seeds"):
        stats.min_detectable_difference(2, 3, sd)


def test_seed_spread_is_pooled_over_variants_or_the_prior():
    spread = stats.seed_spread([[0.50, 0.52], [0.60, 0.61, 0.62], [0.7]])
    assert spread.sd == pytest.approx(math.sqrt((2 * 0.01 ** 2 + 2 * 0.01 ** 2) / 3))
    assert (spread.runs, spread.groups) == (5, 2) and "pooled over 5 runs of 2 variants" in spread.source
    assert stats.seed_spread([[0.5]]).sd == stats.PRIOR_SEED_SD and "prior" in stats.seed_spread([]).source


def test_stats_depends_on_numpy_and_the_standard_library_only():
    tree = ast.parse(Path(stats.__file__).read_text())
    imported = {(n.module or "." * n.level) if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [n])}
    assert {m.split(".")[0] for m in imported} <= set(sys.stdlib_module_names) | {"numpy"}, imported


def test_table_claims_a_gain_only_with_three_seeds_per_side():
    rng = np.random.default_rng(4)
    recs = {"base": [_record("base", s, c) for s, c in enumerate(_seed_rows([0.60, 0.601, 0.599], rng))],
            "better": [_record("better", s, c) for s, c in enumerate(_seed_rows([0.66, 0.661, 0.659], rng))],
            "better2": [_record("better2", s, c) for s, c in enumerate(_seed_rows([0.66, 0.661], rng))],
            "worse": [_record("worse", s, c) for s, c in enumerate(_seed_rows([0.54, 0.541, 0.539], rng))],
            "single": [_record("single", 0, _seed_rows([0.7], rng)[0])]}
    variants = [{"name": n, "model": "resnet20", "baseline": "base"} for n in recs]
    rows = {r["variant"]: r for r in summary_table(variants, recs)}
    assert rows["base"]["verdict"] == "baseline" and rows["base"]["delta_top1"] is None
    assert rows["better"]["gain"] and rows["better"]["verdict"] == "gain" and rows["better"]["ci_low"] > 0
    # two seeds: the CI may exclude zero, but no gain is claimed
    assert rows["better2"]["ci_low"] > 0 and not rows["better2"]["gain"]
    assert rows["better2"]["verdict"].startswith("n < 3") and rows["better2"]["mde"] is None
    assert "no claim with fewer than 3 seeds per side" in rows["better2"]["detectable"]
    assert rows["worse"]["verdict"] == "worse" and not rows["worse"]["gain"] and rows["worse"]["loss"]
    # one seed: a difference but no interval
    assert rows["single"]["delta_top1"] is not None and rows["single"]["ci_low"] is None
    assert rows["better"]["n_seeds"] == 3 and rows["better"]["seeds"] == [0, 1, 2]
    assert rows["better"]["top1_std"] > 0 and rows["better2"]["top1_mean"] == pytest.approx(
        np.mean([r.record["top1"] for r in recs["better2"]]))
    # the design: the seed SD pooled over the variants with >= 2 seeds, and the MDE of 3 vs 3 seeds from it
    pooled = stats.seed_spread([r.record["top1"] for r in v] for v in recs.values())
    assert rows["better"]["seed_sd"] == pytest.approx(pooled.sd) and pooled.runs == 11
    assert rows["better"]["mde"] == pytest.approx(stats.min_detectable_difference(3, 3, pooled.sd))
    text = format_table(list(rows.values()), n_seeds=3, target=0.01)
    assert "gain" in text and "vs base" in text and "cifar100" in text and "[no CI: 1 seed]" in text
    assert f"3 seeds per side: minimum detectable difference {100 * rows['better']['mde']:.2f} pt" in text
    assert f"a difference of 1.00 pt needs {stats.seeds_needed(0.01, pooled.sd)} seeds per side" in text


def test_mixed_datasets_are_refused():
    rng = np.random.default_rng(5)
    c = _seed_rows([0.5], rng)[0]
    recs = {"a": [_record("a", 0, c)], "b": [_record("b", 0, c, dataset="cifar10", fingerprint="fp-b")]}
    with pytest.raises(CifarlabError, match="different data"):
        summary_table([{"name": "a", "model": "m", "baseline": "a"}, {"name": "b", "model": "m", "baseline": "a"}],
                      recs)
    # same dataset name, other copy (fingerprint): refused as well
    recs["b"] = [_record("b", 0, c, fingerprint="fp-other")]
    with pytest.raises(CifarlabError, match="fp-other"):
        summary_table([{"name": "a", "model": "m", "baseline": None}], recs)


def test_records_are_read_from_a_study_folder(tmp_path):
    rng = np.random.default_rng(6)
    for v in ("a", "b"):
        for s, c in enumerate(_seed_rows([0.5, 0.5], rng)):
            write_json(tmp_path / "st" / v / f"seed{s}" / "result.json", _record(v, s, c).record)
    (tmp_path / "st" / "b" / "seed9").mkdir()  # an unfinished run: no result, not counted
    write_json(tmp_path / "st" / "study.json", {"variants": [{"name": "b", "model": "resnet20", "baseline": "a"},
                                                            {"name": "a", "model": "resnet20", "baseline": "a"}]})
    variants, records = records_in(tmp_path / "st")
    assert [v["name"] for v in variants] == ["b", "a"]
    assert sorted(r.seed for r in records["b"]) == [0, 1]
    with pytest.raises(CifarlabError, match="holds no study"):
        records_in(tmp_path / "st" / "a")


def test_table_says_what_the_seeds_can_detect(tmp_path, capsys):
    rng = np.random.default_rng(7)
    for v, accs in (("a", [0.60, 0.61, 0.62]), ("b", [0.63, 0.64, 0.65])):
        for s, c in enumerate(_seed_rows(accs, rng)):
            write_json(tmp_path / "s" / v / f"seed{s}" / "result.json", _record(v, s, c).record)
    write_json(tmp_path / "s" / "study.json", {"variants": [{"name": "a", "model": "resnet20", "baseline": "a"},
                                                           {"name": "b", "model": "eca_resnet20", "baseline": "a"}]})
    assert main(["study", "table", str(tmp_path / "s"), "--detect", "1"]) == 0
    table = capsys.readouterr().out
    assert "pooled over 6 runs of 2 variants" in table and "3 seeds per side: minimum detectable" in table
    assert "a difference of 1.00 pt needs" in table and "MDE pp" in table
    assert main(["study", "table", str(tmp_path / "s"), "--detect", "0"]) == 2
    assert "--detect must be a positive difference" in capsys.readouterr().err


def test_report_findings_say_what_the_seeds_could_detect(tmp_path):
    from cifarlab.report.summary import build_tables
    from cifarlab.report.writeup import Section, Writer, findings
    from cifarlab.run import finished_runs as load_runs

    rng = np.random.default_rng(8)
    top1 = {}
    for v, model, accs in (("a", "resnet20", [0.60, 0.61, 0.62]), ("b", "eca_resnet20", [0.61, 0.62, 0.60])):
        for s, c in enumerate(_seed_rows(accs, rng)):
            rec = _record(v, s, c, model=model).record
            top1.setdefault(v, []).append(rec["top1"])
            write_json(tmp_path / "s" / v / f"seed{s}" / "result.json", {**rec, "seed": s})
    write_json(tmp_path / "s" / "study.json", {"variants": [{"name": "a", "model": "resnet20", "baseline": "a"},
                                                           {"name": "b", "model": "eca_resnet20", "baseline": "a"}]})
    runs = load_runs([tmp_path / "s"])
    section = Section("cifar100", "fp-a", runs, build_tables(runs), {}, {}, {})
    text = "\n".join(findings(section, Writer(tmp_path)))
    line = next(x for x in text.splitlines() if x.startswith("- **b** vs a"))
    sd = stats.seed_spread(top1.values()).sd
    assert "the 95 % CI includes zero" in line
    assert (f"with 3 vs 3 seeds the smallest difference detectable at 80 % power is "
            f"{100 * stats.min_detectable_difference(3, 3, sd):.2f} pt (seed SD {100 * sd:.2f} pt, pooled over 6 runs "
            f"of 2 variants)") in line
