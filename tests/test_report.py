"""``cifarlab report`` on a small synthetic study: tables, figures and text must equal the records."""

import csv
import re
import shutil
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from cifarlab import CifarlabError
from cifarlab.cli import main
from cifarlab.config import build_config
from cifarlab.data import load_data
from cifarlab.io import read_json, write_json
from cifarlab.models import create
from cifarlab.report.build import ReportOptions, build_report, write_results_page
from cifarlab.report.gradcam import explained_map, grad_cam
from cifarlab.report.summary import assign_baselines, build_tables
from cifarlab.report.writeup import Writer, claim_sentence
from cifarlab.run import finished_runs as load_runs
from cifarlab.train import fit

DATA = "synthetic:300:100"
SMALL = {"model_kwargs": {"depth": 8}, "data": DATA, "batch_size": 50, "lr": 0.1, "warmup_epochs": 0, "epochs": 2}
VARIANTS = {"resnet8": "resnet20", "eca8": "eca_resnet20"}  # variant folder -> registry model (both at depth 8)
SEEDS = (0, 1, 2)
FIGURES = ("accuracy_bars", "delta_forest", "accuracy_vs_params", "accuracy_vs_macs", "accuracy_vs_time",
           "training_curves", "confusion", "superclass_confusion", "per_class", "per_superclass")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """<root>/demo/<variant>/seed<k>: 2 variants x 3 seeds of 2-epoch ResNet-8 runs, plus the runner's study.json,
    and the report built from it once (with Grad-CAM of one run)."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIFARLAB_CACHE", str(root / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        data = load_data("cifar100", DATA)
        for variant, model in VARIANTS.items():
            for seed in SEEDS:
                fit(build_config({**SMALL, "model": model, "seed": seed}), root / "demo" / variant / f"seed{seed}",
                    progress=False, data=data)
        write_json(root / "demo" / "study.json", {"name": "demo", "variants": [
            {"name": "resnet8", "model": "resnet20", "baseline": "resnet8"},
            {"name": "eca8", "model": "eca_resnet20", "baseline": "resnet8"}]})
        out = root / "out"
        report, _ = build_report(ReportOptions(paths=[root / "demo"], out=out,
                                               gradcam=[root / "demo" / "eca8" / "seed0"], gradcam_images=4))
    return root, out, report


def _records(root: Path, variant: str) -> list[dict]:
    return [read_json(root / "demo" / variant / f"seed{s}" / "result.json") for s in SEEDS]


def _csv_rows(out: Path) -> dict[str, dict]:
    with open(out / "tables" / "demo.csv") as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def test_table_values_equal_the_records(study):
    root, out, _ = study
    rows = _csv_rows(out)
    assert set(rows) == set(VARIANTS)
    for variant, model in VARIANTS.items():
        recs, row = _records(root, variant), rows[variant]
        assert row["model"] == model and int(row["n_seeds"]) == 3 and row["seeds"] == "0 1 2"
        assert row["dataset"] == "cifar100" and row["dataset_fingerprint"] == recs[0]["dataset_fingerprint"]
        for key in ("top1", "top5"):
            vals = [r[key] for r in recs]
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.mean(vals), abs=1e-12)
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(vals), abs=1e-12)
        assert int(row["params"]) == recs[0]["params"] and int(row["macs"]) == recs[0]["macs"]
        assert float(row["train_seconds_mean"]) == pytest.approx(statistics.mean(r["train_seconds"] for r in recs))
        assert float(row["images_per_second_mean"]) == pytest.approx(
            statistics.mean(r["images_per_second"] for r in recs))
        assert row["runs"] == ";".join(f"{variant}/seed{s}" for s in SEEDS)
    base, eca = rows["resnet8"], rows["eca8"]
    assert base["is_baseline"] == "1" and base["delta_top1"] == "" and eca["baseline"] == "resnet8"
    delta = statistics.mean(r["top1"] for r in _records(root, "eca8")) - statistics.mean(
        r["top1"] for r in _records(root, "resnet8"))
    assert float(eca["delta_top1"]) == pytest.approx(delta, abs=1e-9)
    assert float(eca["ci_low"]) <= float(eca["delta_top1"]) + 1e-9 <= float(eca["ci_high"]) + 2e-9
    demonstrated = float(eca["ci_low"]) > 0 or float(eca["ci_high"]) < 0
    assert eca["verdict"] == ("no demonstrated difference" if not demonstrated
                              else "gain" if float(eca["delta_top1"]) > 0 else "loss")
    # the Markdown and LaTeX tables show the same numbers, rounded, and link every run
    md = (out / "tables" / "demo.md").read_text()
    tex = (out / "tables" / "demo.tex").read_text()
    for variant in VARIANTS:
        m, s = float(rows[variant]["top1_mean"]), float(rows[variant]["top1_std"])
        assert f"{100 * m:.2f} ± {100 * s:.2f}" in md
        assert f"{100 * m:.2f} $\\pm$ {100 * s:.2f}" in tex
    assert f"{100 * float(eca['delta_top1']):+.2f} [{100 * float(eca['ci_low']):+.2f}, " \
           f"{100 * float(eca['ci_high']):+.2f}]" in md
    for link in re.findall(r"\]\(([^)]+result\.json)\)", md):
        assert (out / "tables" / link).resolve().is_file()
    assert md.count("result.json)") == 6
    assert tex.count(r"\\") == 3 and r"\begin{tabular}" in tex and "eca8/seed2" in tex


def test_every_figure_is_a_valid_image(study):
    _, out, report = study
    figdir = out / "figures" / "demo"
    stems = [figdir / k for k in FIGURES] + [out / "figures" / "gradcam-eca8-seed0"]
    text = report.read_text()
    for stem in stems:
        png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
        assert png.is_file() and svg.is_file(), stem
        assert png.stat().st_size > 5_000, png
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 150, (png, im.size)
        assert ET.parse(svg).getroot().tag.endswith("svg")
        assert f"({png.relative_to(out).as_posix()})" in text, f"the report does not show {png.name}"


def test_written_report_numbers_match_the_records(study):
    root, out, report = study
    text = report.read_text()
    rows = _csv_rows(out)
    assert "cifar100" in text and _records(root, "resnet8")[0]["dataset_fingerprint"] in text
    for h in ("## Setup", "## Methods compared", "## Comparison", "## Ablations", "## Efficiency", "## Findings"):
        assert h in text
    base = rows["resnet8"]
    m = re.search(r"Baseline \*\*resnet8\*\* \(`resnet20`\) reaches ([\d.]+) ± ([\d.]+) %", text)
    assert m and float(m.group(1)) == pytest.approx(100 * float(base["top1_mean"]), abs=0.005)
    assert float(m.group(2)) == pytest.approx(100 * float(base["top1_std"]), abs=0.005)
    eca = rows["eca8"]
    m = re.search(r"\*\*eca8\*\* (?:adds|changes top-1 by|differs from resnet8 by) ([+-][\d.]+) points "
                  r"\(95 % CI ([+-][\d.]+)\.\.([+-][\d.]+)\)", text)
    assert m, "no sentence on eca8 against its baseline"
    for got, key in zip(m.groups(), ("delta_top1", "ci_low", "ci_high"), strict=True):
        assert float(got) == pytest.approx(100 * float(eca[key]), abs=0.005)
    sentence = text[m.start():text.index("\n", m.start())]
    dparams = int(eca["params"]) - int(base["params"])
    assert f"{dparams:+,} parameters" in sentence
    expected = {"gain": "a demonstrated gain", "loss": "a demonstrated loss",
                "no demonstrated difference": "no demonstrated difference"}[eca["verdict"]]
    assert expected in sentence
    # every linked record exists, and each sentence's links point at the runs it is about
    links = re.findall(r"\]\(([^)]+result\.json)\)", text)
    assert links and all((out / link).resolve().is_file() for link in links)
    assert all(f"eca8/seed{s}/result.json" in sentence and f"resnet8/seed{s}/result.json" in sentence for s in SEEDS)


def test_no_gain_is_claimed_with_fewer_than_three_seeds(study):
    root, out, _ = study
    runs = [r for r in load_runs([root / "demo"]) if r.seed < 2]
    table = build_tables(runs)[0]
    row = next(r for r in table.rows if r.name == "eca8")
    assert row.comparison is not None and not row.comparison.real
    sentence = claim_sentence(row, Writer(out))
    assert "no demonstrated difference (fewer than 3 seeds per side)" in sentence
    assert "demonstrated gain" not in sentence and "demonstrated loss" not in sentence


def test_baselines_follow_the_backbone_without_a_study_file(study, tmp_path):
    root, _, _ = study
    src = root / "demo" / "resnet8" / "seed0"
    for name, model, params in (("a", "resnet20", 100), ("b", "resnet56", 300), ("c", "eca_resnet56", 310),
                                ("d", "se_resnet20", 120)):
        dst = tmp_path / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
        rec = read_json(dst / "result.json")
        rec.update(model=model, params=params, config={**rec["config"], "model": model})
        write_json(dst / "result.json", rec)
    from cifarlab.report.records import group_variants

    variants = group_variants(load_runs([tmp_path]))
    assert assign_baselines(variants, []) == {"resnet20": "resnet20", "resnet56": "resnet56",
                                              "eca_resnet56": "resnet56", "se_resnet20": "resnet20"}
    assert assign_baselines(variants, ["resnet56"])["se_resnet20"] == "resnet56"


def _copy_run(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    rec = read_json(dst / "result.json")
    rec.update(changes)
    write_json(dst / "result.json", rec)
    return dst


def test_mixed_datasets_are_refused_or_split(study, tmp_path, capsys):
    root, _, _ = study
    results = tmp_path / "results"
    _copy_run(root / "demo" / "resnet8" / "seed0", results / "a")
    _copy_run(root / "demo" / "eca8" / "seed0", results / "b", dataset_fingerprint="synthetic-v1-other")
    assert main(["report", str(results), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--split-by-dataset" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(CifarlabError, match="different data|datasets"):
        build_report(ReportOptions(paths=[results], out=tmp_path / "r"))
    # the results page always splits: one section per dataset, each saying which data it covers
    page, reports = write_results_page(results, tmp_path / "docs" / "results-report", tmp_path / "docs" / "results.md")
    assert reports == {"smoke": tmp_path / "docs" / "results-report" / "smoke" / "report.md"}, "synthetic: smoke runs"
    text = page.read_text()
    assert text.count("### cifar100 — fingerprint") == 2 and "synthetic-v1-other" in text
    assert text.count("> **Smoke budget** (") == 2 and "synthetic data" in text and "No reference records yet" in text
    for link in re.findall(r"\]\(([^)]+\.(?:json|png|md))\)", text):
        assert (page.parent / link).resolve().is_file(), link
    full = reports["smoke"].read_text()
    assert "synthetic-v1-other" in full and full.count("# Dataset cifar100") == 2


def test_an_empty_results_folder_gives_a_page_that_says_so(tmp_path):
    (tmp_path / "results").mkdir()
    page, reports = write_results_page(tmp_path / "results", tmp_path / "report", tmp_path / "results.md")
    text = page.read_text()
    assert reports == {}
    assert "No run records are committed" in text and "|" not in text
    assert not (tmp_path / "report").exists()
    with pytest.raises(CifarlabError, match="no result.json"):
        build_report(ReportOptions(paths=[tmp_path / "results"], out=tmp_path / "report"))


def test_grad_cam_finds_the_map_the_prediction_depends_on():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    # no forward_features: the last map on the image grid before pooling (16x16), not the 1x1 pooled output
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    fmap, grad, pred = explained_map(plain, x, None)
    assert fmap.shape == (2, 8, 16, 16) and grad.abs().sum() > 0 and pred.shape == (2,)
    # a class-token ViT: its final patch tokens get no gradient, so the input of its last block is explained
    vit = create("vit_mini_p4", num_classes=100)
    nn.init.normal_(vit.head.weight, std=0.1)
    cams, preds = grad_cam(vit, x)
    assert cams.shape == (2, 32, 32) and np.isfinite(cams).all() and cams.std() > 0.01
    assert "forward_features" not in vars(vit), "the model is left as it was"
    # a CIFAR ResNet: its forward_features output (64 x 8 x 8)
    res = create("resnet20", num_classes=100, depth=8).eval()
    fmap, _, _ = explained_map(res, x, None)
    assert fmap.shape == (2, 64, 8, 8)
