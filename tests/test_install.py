"""cifarlab as a user installs it: a wheel built from this checkout, installed into a fresh virtual environment
outside it (reusing the installed dependencies, nothing downloaded), runs its commands with the shipped studies
addressed by name, and never imports the checkout's own sources."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (ROOT / "src" / "cifarlab" / "studies" / "shipped").iterdir())


def _wheel(tmp: Path) -> Path:
    """The wheel of a copy of the checkout (so that the build leaves nothing in it), offline."""
    src = tmp / "source"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("cifarlab-*.whl")
    return wheel


def _environment(tmp: Path, wheel: Path) -> Path:
    """A fresh venv whose only cifarlab is the wheel; a .pth lends it this interpreter's dependencies (a path in a
    .pth is not searched for further .pth files, so an editable install of the checkout stays invisible)."""
    env_dir = tmp / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return env_dir


@pytest.mark.slow
def test_the_installed_wheel_runs_with_its_shipped_studies(tmp_path):
    wheel = _wheel(tmp_path)
    assert {f"cifarlab/studies/shipped/{name}" for name in SHIPPED} <= set(zipfile.ZipFile(wheel).namelist())
    env_dir = _environment(tmp_path, wheel)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "CIFARLAB_PLUGINS")}
    run = lambda *args: subprocess.run([str(env_dir / "bin" / args[0]), *args[1:]], cwd=work,  # noqa: E731
                                       env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                                       timeout=300)

    where = run("python", "-c", "import cifarlab; print(cifarlab.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(env_dir), f"imported {where.stdout} instead of the wheel"
    models = run("cifarlab", "models")
    assert models.returncode == 0 and "resnet20" in models.stdout and "vit_s_p4" in models.stdout, models.stderr
    listed = run("cifarlab", "study", "list")
    assert listed.returncode == 0 and "eca" in listed.stdout and "comparison" in listed.stdout, listed.stderr
    plan = run("cifarlab", "study", "plan", "eca")
    assert plan.returncode == 0, plan.stderr
    assert "study eca (shipped study eca): 15 variants x 3 seeds = 45 runs" in plan.stdout
    train = run("cifarlab", "train", "--data", "synthetic:200:100", "--set", "model_kwargs={depth: 8}", "--epochs",
                "1", "--batch-size", "50", "--no-progress", "--report-to", "none")
    assert train.returncode == 0, train.stderr[-2000:]
    assert (work / "runs" / "resnet20-cifar100-seed0" / "result.json").is_file()
