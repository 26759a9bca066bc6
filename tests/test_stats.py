"""Study statistics on constructed records: the hierarchical bootstrap, the gain rule, data mixing."""

from pathlib import Path

import numpy as np
import pytest

from cifarlab import CifarlabError
from cifarlab.studies.stats import (RunRecord, bootstrap_differences, difference_ci, format_table, records_in,
                                    summary_table)
from cifarlab.io import write_json

N_IMAGES = 2000


def _seed_rows(accuracies, rng, n=N_IMAGES):
    """Per-image correctness of one run per accuracy, independent across runs."""
    return np.stack([rng.random(n) < p for p in accuracies])


def _record(variant, seed, correct, dataset="cifar100", fingerprint="fp-a", model="resnet20"):
    s = "".join("1" if c else "0" for c in correct)
    result = {"model": model, "dataset": dataset, "dataset_fingerprint": fingerprint,
              "split_sizes": {"train": 50000, "test": len(correct)}, "top1": float(np.mean(correct)), "top5": 0.9,
              "params": 1000, "macs": 2_000_000, "epochs": 10, "train_seconds": 5.0, "images_per_second": 100.0,
              "test_correct": s, "mac_convention": "FLOPs/2"}
    return RunRecord(variant, seed, Path(f"/study/{variant}/seed{seed}"), result)


def test_seed_noise_alone_is_not_a_gain():
    rng = np.random.default_rng(0)
    # large seed-to-seed spread, same underlying mean; the variant happens to draw the luckier seeds
    base = _seed_rows([0.60, 0.66, 0.72], rng)
    var = _seed_rows([0.63, 0.69, 0.75], rng)
    delta, lo, hi = difference_ci(base, var)
    assert 0.02 < delta < 0.04
    assert lo < 0 < hi, "a difference within the seed spread must not exclude zero"
    # resampling the test images alone treats these seeds as all there is, and would call it a gain
    _, lo_img, _ = difference_ci(base, var, resample_seeds=False)
    assert lo_img > 0


def test_consistent_difference_excludes_zero():
    rng = np.random.default_rng(1)
    base = _seed_rows([0.600, 0.605, 0.598], rng)
    var = _seed_rows([0.650, 0.655, 0.648], rng)
    delta, lo, hi = difference_ci(base, var)
    assert 0 < lo < delta < hi
    assert delta == pytest.approx(var.mean() - base.mean())


def test_bootstrap_is_paired_on_images_and_reproducible():
    rng = np.random.default_rng(2)
    base = np.repeat(_seed_rows([0.7], rng), 3, axis=0)  # three identical seeds
    var = base.copy()
    flip = rng.choice(N_IMAGES, 40, replace=False)  # the variant fixes 40 images the baseline gets wrong
    var[:, flip] = True
    d1 = bootstrap_differences(base, var, n_boot=500, seed=3)
    d2 = bootstrap_differences(base, var, n_boot=500, seed=3)
    np.testing.assert_array_equal(d1, d2)
    # identical seeds on both sides: only the image resample varies, shared by both, so every replicate's
    # difference is the fraction of fixed images in the resample - never negative
    assert (d1 >= 0).all() and d1.mean() == pytest.approx((~base[0, flip]).sum() / N_IMAGES, abs=2e-3)


def test_table_claims_a_gain_only_with_three_seeds_per_side():
    rng = np.random.default_rng(4)
    recs = {"base": [_record("base", s, c) for s, c in enumerate(_seed_rows([0.60, 0.601, 0.599], rng))],
            "better": [_record("better", s, c) for s, c in enumerate(_seed_rows([0.66, 0.661, 0.659], rng))],
            "better2": [_record("better2", s, c) for s, c in enumerate(_seed_rows([0.66, 0.661], rng))],
            "worse": [_record("worse", s, c) for s, c in enumerate(_seed_rows([0.54, 0.541, 0.539], rng))]}
    variants = [{"name": n, "model": "resnet20", "baseline": "base"} for n in recs]
    rows = {r["variant"]: r for r in summary_table(variants, recs, n_boot=500)}
    assert rows["base"]["verdict"] == "baseline" and rows["base"]["delta_top1"] is None
    assert rows["better"]["gain"] and rows["better"]["verdict"] == "gain" and rows["better"]["ci_low"] > 0
    # two seeds: the CI may exclude zero, but no gain is claimed
    assert rows["better2"]["ci_low"] > 0 and not rows["better2"]["gain"]
    assert rows["better2"]["verdict"].startswith("n < 3")
    assert rows["worse"]["verdict"] == "worse" and not rows["worse"]["gain"]
    assert rows["better"]["n_seeds"] == 3 and rows["better"]["seeds"] == [0, 1, 2]
    assert rows["better"]["top1_std"] > 0 and rows["better2"]["top1_mean"] == pytest.approx(
        np.mean([r.result["top1"] for r in recs["better2"]]))
    text = format_table(list(rows.values()))
    assert "gain" in text and "vs base" in text and "cifar100" in text


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
            write_json(tmp_path / "st" / v / f"seed{s}" / "result.json", _record(v, s, c).result)
    (tmp_path / "st" / "b" / "seed9").mkdir()  # an unfinished run: no result, not counted
    write_json(tmp_path / "st" / "study.json", {"variants": [{"name": "b", "model": "resnet20", "baseline": "a"},
                                                            {"name": "a", "model": "resnet20", "baseline": "a"}]})
    variants, records = records_in(tmp_path / "st")
    assert [v["name"] for v in variants] == ["b", "a"]
    assert sorted(r.seed for r in records["b"]) == [0, 1]
    with pytest.raises(CifarlabError, match="holds no study"):
        records_in(tmp_path / "st" / "a")
