"""How long ``cifarlab runs`` takes on many run folders.

    python -m benchmarks.bench_runs [--runs 500] [--repeats 5] [--workdir DIR]

Fabricates ``--runs`` run folders shaped like the engine's (config.json, a 200-line metrics.jsonl, two small
checkpoints with their manifests, and a full-size result.json with 10,000 per-image test predictions), spread over
studies, variants and seeds: 70 % done, 20 % interrupted, 10 % failed. Then times the listing in this process
(median of ``--repeats``, after one warm call that fills the OS file cache) and through the ``cifarlab runs``
command in a fresh Python process, start-up included (median of ``--repeats``, with the process's peak memory).
Prints both; writes nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cifarlab.config import TrainConfig
from cifarlab.report.runs import list_runs

MODELS = ("resnet20", "eca_resnet20", "ghost_resnet20", "se_resnet20", "resnet56")
TEST_IMAGES = 10_000


def _result(cfg: dict, rng: np.random.Generator) -> dict:
    labels = rng.integers(0, 100, TEST_IMAGES)
    preds = np.where(rng.random(TEST_IMAGES) < 0.7, labels, rng.integers(0, 100, TEST_IMAGES))
    return {"model": cfg["model"], "dataset": "cifar100", "dataset_fingerprint": "f" * 64, "seed": cfg["seed"],
            "top1": float((preds == labels).mean()), "top5": 0.9, "epochs": cfg["epochs"], "params": 272_474,
            "macs": 41_000_000, "train_seconds": float(rng.uniform(300, 3000)),
            "images_per_second": float(rng.uniform(5_000, 30_000)), "epoch_seconds": [1.0] * cfg["epochs"],
            "per_class_accuracy": [0.7] * 100, "test_labels": labels.tolist(), "test_predictions": preds.tolist(),
            "test_correct": "".join("1" if c else "0" for c in preds == labels), "config": cfg}


def fabricate(root: Path, n: int, seed: int = 0) -> None:
    """``n`` run folders under ``root``/<study>/<variant>/seed<k>."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        model = MODELS[i % len(MODELS)]
        cfg = TrainConfig(model=model, seed=i % 5, epochs=200).model_dump(mode="json")
        run = root / f"study{i // 100}" / f"{model}-v{(i // 5) % 20}" / f"seed{i % 5}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps(cfg, indent=1))
        kind = rng.random()
        done = 200 if kind < 0.7 else int(rng.integers(1, 200))
        (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0, "test_top1": 0.5})
                                                   + "\n" for e in range(1, done + 1)))
        for e in (done - 1, done):
            if e > 0:
                _checkpoint(run / "checkpoints" / f"epoch-{e:04d}", e)
        if kind < 0.7:
            (run / "result.json").write_text(json.dumps(_result(cfg, rng), indent=1))
        elif kind >= 0.9:
            (run / "error.json").write_text(json.dumps({"error": f"non-finite loss at epoch {done + 1}, step 3"}))


def _checkpoint(folder: Path, epoch: int) -> None:
    """A checkpoint folder with its manifest (tiny stand-ins for the tensors: the listing hashes them)."""
    folder.mkdir()
    files = {"model.safetensors": b"w" * 4096, "state.pt": b"s" * 8192}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "manifest.json").write_text(json.dumps({"epoch": epoch, "files": {
        n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", type=Path, help="where to fabricate the runs (default: a temporary folder)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.workdir or Path(tmp)) / "runs"
        t = time.perf_counter()
        fabricate(root, args.runs)
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(f"fabricated {args.runs} run folders ({size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
        rows = list_runs([root])
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            list_runs([root])
            times.append(time.perf_counter() - t)
        counts = {s: sum(r.status == s for r in rows) for s in ("done", "interrupted", "failed")}
        print(f"list_runs: {len(rows)} rows {counts}, median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}) over {args.repeats} calls")
        walls, peaks = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "cifarlab.cli", "runs", str(root)], capture_output=True,
                                 text=True, check=True).stdout
            walls.append(time.perf_counter() - t)
            peaks.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        print(f"cifarlab runs (fresh process, start-up included): median {statistics.median(walls):.2f} s "
              f"(min {min(walls):.2f}, max {max(walls):.2f}) over {args.repeats} processes, peak memory "
              f"{max(peaks):.0f} MiB, {len(out.splitlines()) - 1} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
