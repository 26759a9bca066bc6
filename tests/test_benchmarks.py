"""The benchmark scripts: they run end to end (CPU smoke), and the generated tables read their records right."""

import json

import pytest

from benchmarks import bench_augment, bench_train, make_table


def test_bench_train_runs_every_engine_path_and_records_it(tmp_path, capsys):
    assert bench_train.main(["--quick", "--models", "resnet20", "--batches", "16", "--images", "48",
                             "--paths", "recipe,engine,fast", "--out", str(tmp_path)]) == 0
    rec = json.loads(next(tmp_path.glob("*-train.json")).read_text())
    assert rec["quick"] and rec["environment"]["torch"] and rec["device"]
    rows = {r["path"]: r for r in rec["results"]}
    assert set(rows) == {"recipe", "engine", "fast"}
    for r in rows.values():
        assert r["timed_steps"] == 3 and r["images_per_second"] > 0
        assert r["seconds_per_epoch"] == pytest.approx(50_000 / r["images_per_second"], rel=1e-3)
    assert rows["recipe"]["speedup_vs_recipe"] == 1.0 and rows["engine"]["optimizer"] == "SGD foreach"
    assert "engine" in capsys.readouterr().out


def test_bench_augment_counts_whole_batches(tmp_path):
    assert bench_augment.main(["--quick", "--batches", "32", "--cutouts", "0,8", "--images", "100", "--epochs", "2",
                               "--out", str(tmp_path)]) == 0
    rec = json.loads(next(tmp_path.glob("*-augment.json")).read_text())
    assert [(r["batch_size"], r["cutout"], r["timed_batches"]) for r in rec["results"]] == [(32, 0, 6), (32, 8, 6)]


def _record(device_type, quick, results, benchmark="train"):
    return {"benchmark": benchmark, "quick": quick, "device": "GPU X" if device_type == "cuda" else "CPU",
            "created_at": "2026-12-01T00:00:00Z", "data": "random", "epoch_images": 50_000,
            "environment": {"device_type": device_type, "torch": "2.x",
                            "cuda": "13" if device_type == "cuda" else None},
            "results": results}


def test_targets_are_checked_against_full_cuda_records_only():
    targets = {"source": "test", "targets": [
        {"what": "r20 b512", "benchmark": "train", "model": "resnet20", "batch_size": 512,
         "metric": "seconds_per_epoch", "at_most": 0.30},
        {"what": "aug b512", "benchmark": "augment", "batch_size": 512, "cutout": 0,
         "metric": "images_per_second", "at_least": 3.5e6}]}
    row = lambda path, spe: {"path": path, "model": "resnet20", "batch_size": 512, "seconds_per_epoch": spe}  # noqa
    records = [
        ("cpu.json", _record("cpu", False, [row("fast", 0.01)])),              # a CPU record never counts
        ("quick.json", _record("cuda", True, [row("fast", 0.02)])),            # nor a smoke run
        ("gpu.json", _record("cuda", False, [row("recipe", 0.05), row("engine", 1.1), row("fast", 0.41),
                                             row("compiled", 0.29)])),
        ("aug.json", _record("cuda", False, [{"batch_size": 512, "cutout": 0, "images_per_second": 2.0e6},
                                             {"batch_size": 512, "cutout": 16, "images_per_second": 9e6}],
                             "augment")),
    ]
    table = make_table.targets_table(records, targets)
    r20 = next(line for line in table.splitlines() if line.startswith("| r20"))
    aug = next(line for line in table.splitlines() if line.startswith("| aug"))
    assert "0.290 (compiled)" in r20 and "| yes |" in r20 and "`gpu.json`" in r20, "the recipe's time is not ours"
    assert "2,000,000.000" in aug and "| no |" in aug, "cutout 16 is another configuration"
    assert "not measured yet" in make_table.targets_table(records[:2], targets)
