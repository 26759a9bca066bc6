"""``cifarlab reproduce``: the audit catches what it must, a same-seed re-run on this CPU is identical, the verdicts
follow their formulas, every kind of SOURCE reproduces, and a bad SOURCE is one line."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

import cifarlab.environment
from cifarlab.cli import main
from cifarlab.config import build_config
from cifarlab.data import load_data
from cifarlab.data.meta import CIFAR100_COARSE, CIFAR100_FINE
from cifarlab.report.build import ReportOptions, build_report
from cifarlab.reproduce.audit import Here, check_code, environment_checks, expected_outcome
from cifarlab.reproduce.verdict import (
    choose_spread,
    mcnemar_exact,
    prediction_interval,
    same_seed,
    study_lines,
)
from cifarlab.run import FinishedRun, RunFolder, read_reproduction, read_result
from cifarlab.studies import stats
from cifarlab.train import fit

ROOT = Path(__file__).resolve().parents[1]
DATA = "synthetic:1000:200"
TINY = {"model": "resnet20", "model_kwargs": {"depth": 8}, "data": DATA, "epochs": 2, "batch_size": 50, "lr": 0.2,
        "warmup_epochs": 0, "report_to": "none"}
TINY_SET = ["--set", "model_kwargs={depth: 8}", "--set", "epochs=2", "--set", "batch_size=50", "--set", "lr=0.2",
            "--set", "warmup_epochs=0", "--set", "report_to=none"]
COMMIT = "c0ffee" * 6 + "c0ff"  # one commit for the records and this checkout, so "the same code" can be asserted


def _environment(mp: pytest.MonkeyPatch, base: Path) -> None:
    mp.setenv("CIFARLAB_CACHE", str(base / "cifarlab-cache"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setattr(cifarlab.environment, "git_commit", lambda: COMMIT)


@pytest.fixture(autouse=True)
def _same_commit(monkeypatch):
    monkeypatch.setattr(cifarlab.environment, "git_commit", lambda: COMMIT)


def _main(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A recorded tiny run (2 epochs of ResNet-8 on synthetic data, seed 0), and its reproduction with 2 seeds."""
    root = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as mp:
        _environment(mp, tmp_path_factory.getbasetemp())
        fit(build_config(TINY), root / "runs" / "resnet8-seed0", progress=False)
        rc, text = _main(["reproduce", str(root / "runs" / "resnet8-seed0"), "--seeds", "2", "--out",
                          str(root / "repro"), "--no-progress"])
    return {"root": root, "run": root / "runs" / "resnet8-seed0", "out": root / "repro", "rc": rc, "text": text}


def _copy_run(world: dict, dest: Path, **changes) -> Path:
    """A copy of the recorded run whose result.json has ``changes``."""
    shutil.copytree(world["run"], dest, ignore=shutil.ignore_patterns("checkpoints"))
    record = json.loads((dest / "result.json").read_text())
    (dest / "result.json").write_text(json.dumps({**record, **changes}))
    return dest


def _line(text: str, check: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {check} |"))


# ---- a same-seed re-run on this CPU ----

def test_a_same_seed_rerun_here_is_per_image_identical_and_reproduced(world):
    assert world["rc"] == 0, world["text"]
    rec = read_reproduction(RunFolder(world["out"]))
    assert [(r["seed"], r["state"]) for r in rec["runs"]] == [(0, "done"), (1, "done")]
    assert [r["path"] for r in rec["runs"]] == ["resnet8-seed0/resnet20/seed0", "resnet8-seed0/resnet20/seed1"], \
        "the runs are named relative to the folder of reproduce.json"
    recorded = read_result(RunFolder(world["run"]))
    again = {s: read_result(RunFolder(world["out"] / "resnet8-seed0" / "resnet20" / f"seed{s}")) for s in (0, 1)}
    # training on the CPU is deterministic for a seed (no `deterministic` flag): the re-run equals the record, image
    # by image, over predictions of many classes ...
    assert recorded["config"]["deterministic"] is False and len(set(recorded["test_predictions"])) >= 10
    assert again[0]["test_predictions"] == recorded["test_predictions"]
    # ... and the comparison can fail: another seed predicts other classes for some images
    assert sum(a != b for a, b in zip(again[1]["test_predictions"], recorded["test_predictions"], strict=True)) > 0
    ss, = rec["same_seed"]
    assert (ss["differ"], ss["images"], ss["recorded_only"], ss["new_only"], ss["same_setup"]) == (0, 200, 0, 0, True)
    assert ss["p_value"] == 1.0
    assert _line(world["text"], "same seed").startswith("| same seed | **ok** | the same code, versions, device")
    interval, = rec["intervals"]
    assert interval["values"] == [again[0]["top1"], again[1]["top1"]]
    assert interval["low"] <= recorded["top1"] <= interval["high"] and interval["verdict"] == "reproduced"
    assert rec["verdict"].startswith("reproduced") and "same seed per-image identical" in rec["verdict"]
    assert (world["out"] / "reproduce.md").read_text() in world["text"]


def test_running_it_again_trains_nothing_and_says_the_same(world, capsys):
    before = read_reproduction(RunFolder(world["out"]))
    rc, text = _main(["reproduce", str(world["run"]), "--seeds", "2", "--out", str(world["out"]), "--no-progress"])
    assert rc == 0 and text.count(" skip ") == 2 and " start " not in text
    after = read_reproduction(RunFolder(world["out"]))
    assert after["verdict"] == before["verdict"] and after["intervals"] == before["intervals"]


def test_the_report_has_a_reproduction_section(world, tmp_path):
    report, _ = build_report(ReportOptions(paths=[world["out"]], out=tmp_path / "report"))
    text = report.read_text()
    rec = read_reproduction(RunFolder(world["out"]))
    assert "## Reproduction of" in text and f"**Verdict: {rec['verdict']}**" in text
    assert "| same seed | **ok** |" in text and "# Report" in text.splitlines()[0]
    alone = tmp_path / "alone"  # a reproduce.json without its runs: the report is that section alone
    alone.mkdir()
    shutil.copy(world["out"] / "reproduce.json", alone)
    report, _ = build_report(ReportOptions(paths=[alone], out=tmp_path / "report2"))
    assert f"**Verdict: {rec['verdict']}**" in report.read_text()


def test_the_worked_example_is_generated_from_the_record(world, tmp_path):
    spec = importlib.util.spec_from_file_location("make_reproduce_doc", ROOT / "scripts" / "make_reproduce_doc.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    real = (ROOT / "docs" / "reproduce.md").read_text()
    assert script.BEGIN in real and script.END in real
    doc = tmp_path / "reproduce.md"
    doc.write_text(real)
    assert script.main([str(world["out"]), "--doc", str(doc)]) == 0
    section = doc.read_text().split(script.BEGIN)[1].split(script.END)[0]
    rec = read_reproduction(RunFolder(world["out"]))
    assert f"**Verdict: {rec['verdict']}**" in section and "No real reproduction" not in section
    assert f"--data {DATA}" in section and f"{100 * rec['intervals'][0]['low']:.2f} %" in section
    assert str(world["root"]) not in section, "absolute paths are shown as PATH"
    assert f"cifarlab reproduce PATH --data {DATA} --out DIR" in section
    assert doc.read_text().split(script.END)[1] == real.split(script.END)[1], "only the marked section changes"
    assert script.main([str(world["out"] / "reproduce.json"), "--doc", str(doc), "--check"]) == 0
    doc.write_text(real)
    assert script.main([str(world["out"]), "--doc", str(doc), "--check"]) == 1


# ---- the audit catches an edited record ----

def test_an_edited_top1_is_caught(world, tmp_path):
    run = _copy_run(world, tmp_path / "edited", top1=0.5)
    rc, text = _main(["reproduce", str(run), "--audit-only", "--out", str(tmp_path / "out")])
    right = read_result(RunFolder(world["run"]))["test_correct"].count("1")
    assert rc == 1
    assert _line(text, "top-1") == (f"| top-1 | **differs** | top-1 0.500000, but {right} of 200 test images are "
                                    f"right ({right / 200:.6f}) |  |")
    assert _line(text, "metrics.jsonl").startswith("| metrics.jsonl | **differs** |")
    assert "the record disagrees with itself: metrics.jsonl, top-1" in text


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("how", ["selected_epoch", "best_of_the_log"])
def test_an_epoch_chosen_on_the_test_set_is_flagged(world, tmp_path, how):
    rows = _metrics(world["run"])
    if how == "selected_epoch":  # the record says epoch 1 of 2 was reported, without a validation split
        run = _copy_run(world, tmp_path / "r", selected_epoch=1, top1=rows[0]["test_top1"])
        why = "epoch 1 of 2 is reported without a validation split: an epoch other than the last can only be chosen"
    else:  # the final epoch is claimed, but top-1 is the log's best test top-1, at epoch 1
        rows[0]["test_top1"] = 0.9
        run = _copy_run(world, tmp_path / "r", top1=0.9)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        why = "top-1 0.900000 is the best test top-1 over the epochs (epoch 1 of 2), not the final epoch's"
    rc, text = _main(["reproduce", str(run), "--audit-only", "--out", str(tmp_path / "out")])
    assert rc == 1
    assert _line(text, "reported epoch").startswith(f"| reported epoch | **differs** | {why}")
    ok, _ = _main(["reproduce", str(world["run"]), "--audit-only", "--out", str(tmp_path / "ok")])
    assert ok == 0


def _environment_lines(record: dict, here: dict) -> dict:
    config = build_config({"model": "resnet20"})
    checks = [check_code(record, Here(here, probed=True)), *environment_checks(record, config, Here(here, True))]
    checks.append(expected_outcome(checks, config, Here(here, True)))
    return {c.name: c for c in checks}


HERE_CPU = {"device": "cpu (x86_64, 1 threads)", "device_type": "cpu", "torch": "2.5.1", "cuda": None,
            "git_commit": COMMIT}


def test_another_thread_count_is_named_with_the_setting_that_matches_it():
    record = {"device": "cpu (x86_64, 4 threads)", "train_step": "eager", "git_commit": COMMIT,
              "environment": {"torch": "2.5.1", "cuda": None, "device_type": "cpu"}}
    lines = _environment_lines(record, HERE_CPU)
    assert lines["device"].status == "differs" and "OMP_NUM_THREADS=4 matches the record" in lines["device"].effect
    assert [n for n, c in lines.items() if c.status != "ok"] == ["device", "same seed"]
    assert lines["same seed"].reason == "device differs: the same seed gives other per-image predictions"
    lines = _environment_lines({**record, "device": "cpu (x86_64, 1 threads)"}, HERE_CPU)
    assert lines["same seed"].status == "ok"


def test_a_gpu_record_against_a_cpu_here():
    record = {"device": "NVIDIA H100", "train_step": "cuda_graph", "git_commit": COMMIT + "+dirty",
              "environment": {"torch": "2.5.1+cu124", "cuda": "12.4", "device_type": "cuda"}}
    lines = _environment_lines(record, HERE_CPU)
    assert lines["torch"].status == "ok", "the same release; its CUDA build is the CUDA line's"
    assert (lines["CUDA"].reason, lines["precision"].reason, lines["train step"].reason) == (
        "12.4 in the record, none here", "bf16 autocast in the record, fp32 here",
        "cuda_graph in the record, eager here")
    assert lines["code"].reason.startswith("the record was made from uncommitted changes on c0ffeec0ffee")
    assert lines["same seed"].reason == "the code differs: the same seed may give other results"
    gpu = {**HERE_CPU, "device": "NVIDIA H100", "device_type": "cuda", "torch": "2.5.1+cu124", "cuda": "12.4"}
    lines = _environment_lines({**record, "git_commit": COMMIT}, gpu)
    assert lines["same seed"].reason == "the same setup, on CUDA without deterministic: the same seed may differ"


# ---- the data ----

def _parquet(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
             shards: int = 1) -> Path:
    """A Hub-schema parquet folder of these exact images and labels."""
    folder.mkdir(parents=True)
    feats = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=CIFAR100_FINE),
                               "coarse_label": datasets.ClassLabel(names=CIFAR100_COARSE)})
    for split, (x, y), k in (("train", train, shards), ("test", test, 1)):
        ds = datasets.Dataset.from_dict({"img": list(x), "fine_label": y, "coarse_label": y % 20}, features=feats)
        for i in range(k):
            ds.shard(k, i, contiguous=True).to_parquet(str(folder / f"{split}-{i:05d}-of-{k:05d}.parquet"))
    return folder


@pytest.fixture(scope="module")
def data_folders(tmp_path_factory):
    """The same 500 images as three parquet folders: A, B (other shards: other files) and C (split otherwise)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 256, (500, 32, 32, 3), dtype=np.uint8), np.arange(500) % 100
    return {"A": _parquet(root / "A", (x[:300], y[:300]), (x[300:], y[300:])),
            "B": _parquet(root / "B", (x[:300], y[:300]), (x[300:], y[300:]), shards=2),
            "C": _parquet(root / "C", (x[:250], y[:250]), (x[250:], y[250:]))}


def _record_on(world: dict, dest: Path, data_dir: Path, images_fingerprint: bool = True) -> Path:
    """The recorded run rewritten as if it had been trained on ``data_dir`` (its fingerprints, splits, labels)."""
    data = load_data("cifar100", str(data_dir))
    labels = data.test.labels.tolist()
    changes = {"source": str(data_dir), "dataset_fingerprint": data.fingerprint, "split_sizes": data.split_sizes(),
               "images_fingerprint": data.images_fingerprint, "test_labels": labels, "test_predictions": labels,
               "test_correct": "1" * len(labels), "top1": 1.0}
    run = _copy_run(world, dest, **changes)
    if not images_fingerprint:  # a record made before images_fingerprint existed
        record = json.loads((run / "result.json").read_text())
        del record["images_fingerprint"]
        (run / "result.json").write_text(json.dumps(record))
    return run


@pytest.mark.parametrize("data, fingerprinted, status, reason", [
    ("A", True, "ok", "the same data: fingerprint "),
    ("B", True, "ok", "the same images and test labels (images_fingerprint "),
    ("C", True, "differs", "the same images (images_fingerprint "),
    ("synthetic:300:200", True, "refused", "other images: images_fingerprint "),
    ("B", False, "differs", "other files (fingerprint "),
    ("synthetic:400:200", False, "refused", "other data: fingerprint "),
])
def test_the_data_is_compared_by_its_fingerprints(world, data_folders, tmp_path, data, fingerprinted, status,
                                                 reason):
    run = _record_on(world, tmp_path / "run", data_folders["A"], fingerprinted)
    given = str(data_folders.get(data, data))
    rc, text = _main(["reproduce", str(run), "--audit-only", "--data", given, "--out", str(tmp_path / "out")])
    assert _line(text, "data").startswith(f"| data | **{status}** | {reason}")
    if data == "C":
        assert "split otherwise: splits {'train': 300, 'test': 200} in the record, {'train': 250, 'test': 250}" in text
    if not fingerprinted and status == "differs":
        assert "the record predates images_fingerprint" in text and "(a weaker check)" in text
    rec = read_reproduction(RunFolder(tmp_path / "out"))
    assert rec["data"] == given and rec["runs"] == []


def test_refused_data_is_not_trained_on(world, tmp_path):
    rc, text = _main(["reproduce", str(world["run"]), "--data", "synthetic:300:200", "--out", str(tmp_path / "out")])
    assert rc == 1 and "not re-trained: the data here is not the record's (other images" in text
    assert not (tmp_path / "out" / "resnet8-seed0").exists()


def test_images_fingerprint_ignores_the_split_and_the_files(data_folders):
    a, b, c = (load_data("cifar100", str(data_folders[k])) for k in "ABC")
    assert a.fingerprint != b.fingerprint != c.fingerprint
    assert a.images_fingerprint == b.images_fingerprint == c.images_fingerprint
    assert load_data("cifar100", DATA).images_fingerprint != a.images_fingerprint
    assert load_data("cifar100", str(data_folders["A"]), val_split=100).images_fingerprint == a.images_fingerprint


# ---- the verdicts, on fabricated figures ----

def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 5) == 2 / 32  # both-sided: 2 x (1/2)^5
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9) == 2 * (1 + 10) / 1024


T9 = 2.262157162740992  # Student's t, 9 degrees of freedom, 97.5 % (tables)
Z = 1.959963984540054


@pytest.mark.parametrize("sds, verdict", [(1, "reproduced"), (3, "higher than reproducible"),
                                          (-3, "lower than reproducible")])
def test_prediction_interval_and_verdict_by_hand(sds, verdict):
    values = [0.60 + 0.001 * d for d in (-4, -3, -2, -1, 0, 0, 1, 2, 3, 4)]
    m, s = sum(values) / 10, math.sqrt(sum((v - 0.6) ** 2 for v in values) / 9)
    spread = choose_spread(values)
    assert spread.df == 9 and spread.sd == pytest.approx(s)
    i = prediction_interval("v", m + sds * s, values, spread)
    half = T9 * s * math.sqrt(1 + 1 / 10)
    assert (i.low, i.high) == (pytest.approx(m - half), pytest.approx(m + half))
    assert i.verdict == verdict and i.gap_sd == pytest.approx(sds)


def test_the_seed_sd_with_the_most_degrees_of_freedom_is_used():
    one = choose_spread([0.61])
    assert (one.sd, one.df) == (stats.PRIOR_SEED_SD, None) and "one new run and no study" in one.source
    i = prediction_interval("v", 0.61, [0.61], one)
    assert i.quantile == pytest.approx(Z) and i.high - 0.61 == pytest.approx(Z * stats.PRIOR_SEED_SD * math.sqrt(2))
    study = stats.SeedSpread(0.004, runs=9, groups=3)
    assert (choose_spread([0.61], study).sd, choose_spread([0.61], study).df) == (0.004, 6)
    assert choose_spread([0.60, 0.62, 0.61], study).df == 6, "the study's 6 df beat the new runs' 2"
    assert choose_spread([0.60, 0.62, 0.61]).df == 2
    same = choose_spread([0.61, 0.61, 0.61])
    assert same.df is None and "agree exactly" in same.source


def _fake_run(tmp: Path, variant: str, seed: int, correct: np.ndarray, preds: list[int] | None = None) -> FinishedRun:
    labels = [i % 100 for i in range(len(correct))]
    preds = preds if preds is not None else [y if c else (y + 1) % 100 for y, c in zip(labels, correct, strict=True)]
    record = {"model": "resnet20", "dataset": "cifar100", "dataset_fingerprint": "f", "seed": seed,
              "top1": float(np.mean(correct)), "top5": 0.9, "params": 1, "macs": 1, "epochs": 1, "train_seconds": 1.0,
              "images_per_second": 1.0, "split_sizes": {"train": 1, "test": len(correct)},
              "test_correct": "".join("1" if c else "0" for c in correct), "test_labels": labels,
              "test_predictions": preds, "device": "cpu", "git_commit": "x", "train_step": "eager"}
    return FinishedRun(RunFolder(tmp / variant / f"seed{seed}"), record, "s", variant)


def test_a_study_whose_gain_disappears(tmp_path):
    rng = np.random.default_rng(0)

    def runs(variant: str, rates: list[float], first_seed: int = 0) -> list[FinishedRun]:
        return [_fake_run(tmp_path, variant, first_seed + i, rng.random(2000) < r) for i, r in enumerate(rates)]

    variants = [{"name": "base", "model": "resnet20", "baseline": "base"},
                {"name": "new", "model": "resnet20", "baseline": "base"}]
    recorded = {"base": runs("base", [0.50, 0.51, 0.49]), "new": runs("new", [0.60, 0.61, 0.59])}
    again = {"base": runs("base", [0.50, 0.49, 0.51], 3), "new": runs("new", [0.50, 0.51, 0.49], 3)}
    base, new = study_lines(variants, recorded, again)
    assert (new.recorded_verdict, new.new_verdict, new.changed) == ("gain", "no clear difference", True)
    assert new.recorded_low > 0 and new.new_low < 0 < new.new_high
    assert (base.recorded_verdict, base.changed) == ("baseline", False)
    held = study_lines(variants, recorded, {"base": again["base"], "new": runs("new", [0.60, 0.61, 0.59], 3)})
    assert held[1].new_verdict == "gain" and not held[1].changed


def test_same_seed_counts_the_discordant_images(tmp_path):
    correct = np.array([1, 1, 1, 0, 0, 1, 0, 1], dtype=bool)
    old = _fake_run(tmp_path, "v", 0, correct)
    preds = list(old.record["test_predictions"])
    preds[0] = preds[1] = 99  # right in the record only (labels 0 and 1)
    preds[3] = 3  # right now only
    new = _fake_run(tmp_path, "v", 0, correct, preds)
    s = same_seed("v", old, new)
    assert (s.differ, s.recorded_only, s.new_only) == (3, 2, 1)
    assert s.p_value == mcnemar_exact(2, 1) == 1.0 and s.same_setup
    new.record["device"] = "cuda"
    assert same_seed("v", old, new).setup_differences == ["device: cpu / cuda"]


# ---- every kind of SOURCE ----

def test_a_hub_layout_folder_made_by_push_reproduces(world, tmp_path):
    hub = tmp_path / "hub"
    assert main(["push", str(world["run"]), "--repo-id", "me/resnet8", "--dry-run", "--out", str(hub)]) == 0
    rc, text = _main(["reproduce", str(hub), "--seeds", "1", "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0, text
    rec = read_reproduction(RunFolder(tmp_path / "out"))
    assert rec["source"]["kind"] == "hub-folder" and rec["same_seed"][0]["differ"] == 0
    assert rec["intervals"][0]["verdict"] == "reproduced" and rec["intervals"][0]["df"] is None
    assert _line(text, "training config") == ("| training config | **ok** | training_config.json = the record's "
                                              "config |  |")


def _hub_snapshot(world: dict, cache: Path) -> Path:
    """A push of the recorded run laid out as the Hub cache keeps a download: snapshot files link into blobs."""
    upload = cache / "upload"
    assert main(["push", str(world["run"]), "--repo-id", "me/resnet8", "--dry-run", "--out", str(upload)]) == 0
    repo = cache / "models--me--resnet8"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in upload.iterdir():
        shutil.copy(f, repo / "blobs" / f.name)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", f.name))
    return snapshot


def test_a_hub_repo_id_is_downloaded_and_audited(world, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    snapshot, calls = _hub_snapshot(world, tmp_path / "cache"), []

    def fake_snapshot_download(repo_id, **kw):
        calls.append({"repo_id": repo_id, **kw})
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    rc, text = _main(["reproduce", "me/resnet8", "--revision", "v1", "--audit-only", "--out", str(tmp_path / "o")])
    assert rc == 0, text
    (call,) = calls
    assert call["revision"] == "v1" and sorted(call["allow_patterns"]) == ["metrics.jsonl", "result.json",
                                                                          "training_config.json"]
    rec = read_reproduction(RunFolder(tmp_path / "o"))
    assert (rec["source"]["kind"], rec["source"]["name"]) == ("hub", "resnet8")
    assert _line(text, "metrics.jsonl").startswith("| metrics.jsonl | **ok** |"), "read through the cache's links"
    (snapshot / "result.json").unlink()
    (snapshot / "result.json").symlink_to(world["run"] / "result.json")  # a link out of the repo's blobs
    capsys.readouterr()
    assert main(["reproduce", "me/resnet8", "--audit-only", "--out", str(tmp_path / "o2")]) == 2
    assert "result.json: a symbolic link inside a run folder" in capsys.readouterr().err


def test_shards_reproduce_in_parts_and_the_verdict_waits_for_them(world, tmp_path):
    out, run = tmp_path / "out", world["out"] / "resnet8-seed0" / "resnet20" / "seed1"
    shutil.copytree(run, out / "resnet8-seed0" / "resnet20" / "seed1")  # shard 1/2 finished elsewhere, copied here
    argv = ["reproduce", str(world["run"]), "--seeds", "2", "--out", str(out), "--no-progress"]
    rc, text = _main([*argv, "--shard", "1/2"])
    rec = read_reproduction(RunFolder(out))
    assert rc == 0 and " start " not in text and [r["state"] for r in rec["runs"]] == ["new", "done"]
    assert rec["verdict"].startswith("incomplete (1 of 2 runs finished)") and rec["same_seed"] == []
    rc, text = _main([*argv, "--shard", "0/2"])
    rec = read_reproduction(RunFolder(out))
    assert " start " in text and [r["state"] for r in rec["runs"]] == ["done", "done"]
    assert rec["same_seed"][0]["differ"] == 0
    assert rec["verdict"] == read_reproduction(RunFolder(world["out"]))["verdict"]


def test_a_study_folder_reproduces_variant_by_variant(world, tmp_path):
    study, trained = tmp_path / "s", world["out"] / "resnet8-seed0" / "resnet20"  # the recorded config trained again
    for variant in ("base", "other"):
        shutil.copytree(world["run"], study / variant / "seed0", ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(trained / "seed1", study / "base" / "seed1", ignore=shutil.ignore_patterns("checkpoints"))
    (study / "study.json").write_text(json.dumps({"name": "s", "variants": [
        {"name": "base", "model": "resnet20", "baseline": "base"},
        {"name": "other", "model": "resnet20", "baseline": "base"}, {"name": "empty", "model": "resnet20"}]}))
    rc, text = _main(["reproduce", str(study), "--audit-only", "--out", str(tmp_path / "audit")])
    assert rc == 0 and _line(text, "top-1").startswith("| top-1 | all 3 runs | **ok** | ok in every run (e.g. ")
    assert _line(text, "top-5") == ("| top-5 | all 3 runs | **refused** | no per-image top-5 is recorded: top-5 "
                                    "cannot be checked image by image |  |")
    assert _line(text, "training config") == ("| training config | all 3 runs | **ok** | config.json = the "
                                              "record's config |  |")
    assert _line(text, "variant config") == ("| variant config | base | **ok** | the 2 runs differ only in their seed "
                                             "|  |")
    assert "- variant empty has no finished run: nothing to reproduce" in text
    for variant in ("base", "other"):  # both runs are done before the command: nothing is trained here
        shutil.copytree(trained / "seed0", tmp_path / "out" / "s" / variant / "seed0")
    rc, text = _main(["reproduce", str(study), "--seeds", "1", "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0 and text.count(" skip ") == 2, text
    rec = read_reproduction(RunFolder(tmp_path / "out"))
    assert [s["variant"] for s in rec["same_seed"]] == ["base", "other"]
    assert all(s["differ"] == 0 for s in rec["same_seed"])
    assert [(s["variant"], s["recorded_verdict"], s["new_verdict"], s["changed"]) for s in rec["study"]] == [
        ("base", "baseline", "baseline", False), ("other", "n < 3 seeds: no claim", "n < 3 seeds: no claim", False)]
    assert rec["study"][1]["new_delta"] == 0.0 and "the study's verdicts hold up" in rec["verdict"]
    # one run of the study: its study and variant names are kept, and the study's pooled seed SD sizes the interval
    shutil.copytree(trained / "seed0", tmp_path / "one" / "s" / "base" / "seed0")
    rc, text = _main(["reproduce", str(study / "base" / "seed0"), "--seeds", "1", "--out", str(tmp_path / "one")])
    interval = read_reproduction(RunFolder(tmp_path / "one"))["intervals"][0]
    top1 = [read_result(RunFolder(study / "base" / f"seed{s}"))["top1"] for s in (0, 1)]
    assert rc == 0 and " skip " in text and interval["df"] == 1
    assert interval["sd"] == pytest.approx(abs(top1[0] - top1[1]) / math.sqrt(2))
    assert interval["sd_source"].startswith("the study's pooled seed SD")


def test_a_claim_is_placed_against_runs_of_the_recipe(world, tmp_path):
    out = tmp_path / "claim"
    argv = ["reproduce", "--model", "resnet20", *TINY_SET, "--data", DATA, "--seeds", "1", "--out", str(out),
            "--no-progress"]
    rc, text = _main([*argv, "--claim", "90"])
    assert rc == 0, text
    rec = read_reproduction(RunFolder(out))
    run = RunFolder(out / "claim-resnet20" / "resnet20" / "seed0")
    final = read_result(run)["top1"]
    assert final == read_result(RunFolder(world["run"]))["top1"], "the recipe with TINY_SET is the recorded config"
    assert rec["intervals"][0]["values"] == [final] and rec["intervals"][0]["verdict"] == "higher than reproducible"
    assert rec["verdict"].startswith("higher than reproducible (the claim 90.00 %")
    rc, text = _main([*argv, "--claim", f"{100 * final}"])
    assert " start " not in text and read_reproduction(RunFolder(out))["intervals"][0]["verdict"] == "reproduced"
    _main([*argv, "--claim", "90", "--claim-rule", "best"])
    rec = read_reproduction(RunFolder(out))
    best = max(r["test_top1"] for r in _metrics(run.root))
    assert rec["intervals"][0]["values"] == [best] and "Best-on-test is optimistic" in rec["claim"]["note"]


# ---- bad SOURCEs ----

def _break(world: dict, tmp: Path, how: str) -> str:
    run = _copy_run(world, tmp / "bad")
    if how == "top1 high":
        text = (run / "result.json").read_text()
        (run / "result.json").write_text(text.replace('"top1": ', '"top1": "high", "x": ', 1))
    elif how == "symlinked result.json":
        (run / "result.json").unlink()
        (run / "result.json").symlink_to(world["run"] / "result.json")
    elif how == "result.json given as a link":
        (tmp / "result.json").symlink_to(world["run"] / "result.json")
        return str(tmp / "result.json")
    elif how == "metrics line":
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"epoch": "three"}\n{"epoch": 3}\n')
    elif how == "damaged study.json":
        (tmp / "study" / "v").mkdir(parents=True)
        shutil.move(run, tmp / "study" / "v" / "seed0")
        (tmp / "study" / "study.json").write_text("{not json")
        return str(tmp / "study")
    elif how == "an empty folder":
        shutil.rmtree(run)
        run.mkdir()
    return str(run)


@pytest.mark.parametrize("how, message", [
    ("missing", "does not exist (nor is it a Hub model repo id USER/NAME)"),
    ("hub id offline", "me/not-here: no such local folder, not in the Hub cache, and offline mode"),
    ("top1 high", "result.json: damaged (field.top1: Input should be a valid number"),
    ("symlinked result.json", "result.json: a symbolic link inside a run folder (cifarlab follows none)"),
    ("result.json given as a link", "result.json: not a result.json (a regular file) nor a folder of runs"),
    ("metrics line", "metrics.jsonl: line 3 is not an epoch's metrics"),
    ("damaged study.json", "study.json: not valid JSON"),
    ("an empty folder", "holds no result.json, no study.json and no <variant>/seed<k>/ runs"),
])
def test_a_bad_source_is_one_line_and_exit_2(world, tmp_path, capsys, how, message):
    given = {"missing": str(tmp_path / "nothing"), "hub id offline": "me/not-here"}.get(how) or _break(world, tmp_path,
                                                                                                      how)
    assert main(["reproduce", given, "--audit-only", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    ([], "give a SOURCE to reproduce, or --model M --claim PCT"),
    (["x", "--model", "resnet20", "--claim", "50"], "give a SOURCE to reproduce, or --model M --claim PCT"),
    (["--model", "resnet20"], "a claim needs both --model and --claim"),
    (["--model", "resnet20", "--claim", "150"], "--claim is a top-1 accuracy in percent"),
    (["x", "--set", "lr=1"], "--set goes with --claim"),
])
def test_wrong_arguments_are_one_line(capsys, argv, message):
    assert main(["reproduce", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_the_worked_example_in_the_docs_is_generated_from_the_committed_reproduction():
    root = Path(__file__).resolve().parents[1]
    record = root / "results" / "reproduce" / "resnet20-cifar100-seed0"
    assert read_reproduction(RunFolder(record))["same_seed"][0]["differ"] == 0
    summary = (record / "reproduce.md").read_text()  # the data shown by kind and name, not by a path on a machine
    assert "Data: a local parquet copy named `cifar100`." in summary and "../" not in summary
    proc = subprocess.run([sys.executable, str(root / "scripts" / "make_reproduce_doc.py"), str(record), "--check"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])})
    assert proc.returncode == 0, proc.stderr


def test_device_cpu_hides_cuda_from_the_runs_and_cuda_is_refused_without_one(tmp_path, monkeypatch, capsys):
    from cifarlab.reproduce.commands import use_device

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # restored after the test
    use_device("cpu")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["reproduce", str(tmp_path / "anything"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: no CUDA device here" in err[0]
