"""The docs/custom_module.md guide, end to end: a user's module registered through CIFARLAB_PLUGINS."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

DOCS = Path(__file__).resolve().parents[1] / "docs" / "examples"


def test_my_module_on_resnet20_with_one_study_file(tmp_path):
    shutil.copy(DOCS / "my_block.py", tmp_path)
    study = yaml.safe_load((DOCS / "my_study.yaml").read_text())
    study["base"] = {"data": "synthetic:300:100", "batch_size": 50, "warmup_epochs": 0,
                     "model_kwargs": {"depth": 8}}
    study["budget"] = {"epochs": 1}
    study["seeds"] = 1
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    env = {**os.environ, "CIFARLAB_PLUGINS": "my_block", "OMP_NUM_THREADS": "1"}

    def run(*a):
        return subprocess.run([sys.executable, "-m", "cifarlab.cli", *a], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    models = run("models", "--family", "mine", "--json")
    assert models.returncode == 0, models.stderr
    (row,) = json.loads(models.stdout)
    # w and b per channel, 9 blocks
    assert row["name"] == "gapgate_resnet20" and row["params"] == 275_572 + 2 * 3 * (16 + 32 + 64)
    p = run("study", "run", "s.yaml", "--out", "runs")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "runs" / "my_gate" / "gapgate_resnet20" / "seed0" / "result.json").exists()
    t = run("study", "table", "s.yaml", "--out", "runs")
    assert t.returncode == 0 and "gapgate_resnet20" in t.stdout
    missing = subprocess.run([sys.executable, "-m", "cifarlab.cli", "models"], cwd=tmp_path,
                             env={**env, "CIFARLAB_PLUGINS": "no_such_plugin"}, capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot import 'no_such_plugin'" in missing.stderr
