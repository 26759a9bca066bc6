"""scripts/gpu_validate.sh --dry-run: every step of the GPU validation runs on the CPU and leaves its outputs."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["tests", "bench", "resnet20", "resnet56", "study"]
RECORD_FILES = {"config.json", "metrics.jsonl", "result.json"}


def test_dry_run_leaves_every_steps_outputs(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    # a budget no step reaches on a slow machine: every step must finish, none may be cut
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_validate.sh"), "--dry-run", "--out", str(out),
                           "--budget-minutes", "30"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == STEPS
    assert all(s["status"] == "ok" and s["dry_run"] for s in steps), steps

    assert (out / "tests" / "junit.xml").is_file() and " passed" in (out / "tests" / "pytest.log").read_text()
    # the CUDA tests skip on the CPU; on a GPU machine a skip fails the step, which the rehearsal notes
    skipped = sum(1 for _ in ET.parse(out / "tests" / "junit.xml").iter("skipped"))
    if torch.cuda.is_available():
        assert skipped == 0 and "note" not in steps[0]
    else:
        assert skipped > 0 and steps[0]["note"] == (
            f"a real run records: failed ({skipped} tests skipped: no CUDA device seen)")
    train = json.loads(next((out / "bench").glob("*-train.json")).read_text())
    measured = {(r["model"], r["path"]) for r in train["results"] if r.get("images_per_second", 0) > 0}
    assert measured == {("resnet20", p) for p in ("recipe", "engine", "fast")}  # the dry run times ResNet-20 only
    assert json.loads(next((out / "bench").glob("*-augment.json")).read_text())["results"]

    for model in ("resnet20", "resnet56"):
        summary = json.loads((out / model / "summary.json").read_text())
        assert summary["finished"] == 2 and len(summary["runs"]) == 2 and summary["top1_sd"] is not None
        for seed in (0, 1):
            run = out / model / "records" / f"{model}-cifar100-seed{seed}"
            assert {p.name for p in run.iterdir()} == RECORD_FILES
            assert json.loads((run / "config.json").read_text())["data"] == "synthetic:100:100"
    study = out / "study" / "records" / "eca"
    assert (study / "study.json").is_file()
    assert sorted(p.parent.name for p in study.glob("resnet20/seed*/result.json")) == ["seed0", "seed1", "seed2"]
    assert "resnet20" in (out / "study" / "table.txt").read_text()
    assert json.loads((out / "study" / "summary.json").read_text())["finished"] == 3
    # only compact records travel: no checkpoints, no TensorBoard logs, and the work folder is gone
    assert not [p for p in out.rglob("*") if p.suffix in (".safetensors", ".pt") or "checkpoints" in p.parts]
    assert not list(tmp_path.glob("cifarlab-validate.*"))
