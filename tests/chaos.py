"""Chaos check: kill a small workload with SIGKILL at random moments, restart it, compare with an undisturbed run.

    python tests/chaos.py --kills 10 [--seed 0] [--workdir DIR]

The workload is two deterministic trainings (ResNet-8 on synthetic data, seeds 0 and 1, 3 epochs each), each
started with ``--resume`` so that a restart continues where the killed attempt stopped. It runs once undisturbed
to measure its duration T and its start-up time S (until the first model header line), then again while being
killed N times: each attempt is SIGKILLed after a random delay in (0, S + (T - S)/N], so kills land anywhere
(start-up, data loading, a training step, evaluation, a checkpoint write) and the attempts cannot finish the work
between them. A last attempt runs to the end. Every run must then match the undisturbed
one: top-1, top-5, per-image correctness and final weights bit-for-bit, each epoch recorded exactly once.

Each attempt is a forked child of this process that runs ``cifarlab.cli.main`` (the imports are loaded once, so
the random moments fall on the work rather than on Python start-up). Exit code 0 when everything is equal.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

SEEDS = (0, 1)
EPOCHS = 3


def workload(out: Path) -> list[list[str]]:
    return [["train", "--model", "resnet20", "--set", "model_kwargs={depth: 8}", "--data", "synthetic:300:100",
             "--epochs", str(EPOCHS), "--batch-size", "50", "--lr", "0.1", "--warmup-epochs", "0", "--seed", str(s),
             "--deterministic", "--no-progress", "--out", str(out), "--name", f"seed{s}", "--resume"] for s in SEEDS]


def start(argvs: list[list[str]], log: Path) -> int:
    """Fork a child that runs each command line in turn through ``cli.main``; returns its pid."""
    from cifarlab import cli

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sys.stdout = sys.stderr = open(log, "a", buffering=1)
            code = 0
            for argv in argvs:
                code = cli.main(argv)
                if code:
                    break
        finally:
            os._exit(code)
    return pid


def finish(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def progress(out: Path) -> str:
    """Where the work stood: per run, the epochs in metrics.jsonl and the intact checkpoints."""
    from cifarlab.train.checkpoint import find_latest

    parts = []
    for s in SEEDS:
        run = out / f"seed{s}"
        rows = len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
        found = find_latest(run / "checkpoints")
        done = " done" if (run / "result.json").exists() else ""
        parts.append(f"seed{s}: {rows} rows, checkpoint {found[0] if found else '-'}{done}")
    return "; ".join(parts)


def compare(ref: Path, got: Path) -> list[str]:
    """Differences between two finished workloads (empty when they are equal)."""
    import torch
    from safetensors.torch import load_file

    problems = []
    for s in SEEDS:
        a, b = ref / f"seed{s}", got / f"seed{s}"
        if not (b / "result.json").exists():
            problems.append(f"seed{s}: no result.json")
            continue
        ra, rb = (json.loads((r / "result.json").read_text()) for r in (a, b))
        for key in ("top1", "top5", "test_loss", "test_correct", "selected_epoch"):
            if ra[key] != rb[key]:
                problems.append(f"seed{s}: {key} {ra[key]!r} != {rb[key]!r}")
        epochs = [json.loads(x)["epoch"] for x in (b / "metrics.jsonl").read_text().splitlines() if x.strip()]
        if epochs != list(range(1, EPOCHS + 1)):
            problems.append(f"seed{s}: metrics.jsonl holds epochs {epochs}")
        last = f"checkpoints/epoch-{EPOCHS:04d}/model.safetensors"
        wa, wb = load_file(a / last), load_file(b / last)
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            problems.append(f"seed{s}: final weights differ")
        if list((b / "checkpoints").glob(".epoch-*")):
            problems.append(f"seed{s}: a temporary checkpoint folder was left behind")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10, help="how many times to SIGKILL the workload (N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    p.add_argument("--workdir", help="folder for the runs (default: a new temporary folder)")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cifarlab-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["CIFARLAB_CACHE"] = str(work / "cache")
    import torch

    from cifarlab.data import load_data
    from cifarlab.models import count_macs, create

    torch.set_num_threads(1)  # the same arithmetic in every attempt
    count_macs(create("resnet20", depth=8))  # load the lazy imports and decode the data once, here, so that
    load_data("cifar100", "synthetic:300:100")  # the attempts' random moments fall on the work itself

    ref, got = work / "undisturbed", work / "killed"
    t0 = time.perf_counter()
    log, startup = work / "undisturbed.log", None
    pid = start(workload(ref), log)
    while not (status := os.waitpid(pid, os.WNOHANG))[0]:
        if startup is None and log.exists() and " params, " in log.read_text():
            startup = time.perf_counter() - t0
        time.sleep(0.01)
    duration = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status[1])
    if rc:
        print(f"the undisturbed workload failed (exit {rc}); see {log}")
        return 2
    print(f"undisturbed workload: {duration:.1f} s, start-up {startup:.1f} s ({len(SEEDS)} runs x {EPOCHS} epochs)")

    rng = random.Random(args.seed)
    kills = 0
    for attempt in range(1, args.kills + 1):
        delay = rng.uniform(0.0, startup + (duration - startup) / args.kills)
        pid = start(workload(got), work / "killed.log")
        time.sleep(delay)
        os.kill(pid, 9)
        rc = finish(pid)
        if rc == -9:
            kills += 1
            print(f"kill {attempt}: after {delay:.2f} s -> {progress(got)}")
        else:
            print(f"attempt {attempt}: ended by itself (exit {rc}) before the kill at {delay:.2f} s")
    rc = finish(start(workload(got), work / "killed.log"))
    print(f"final attempt: exit {rc} -> {progress(got)}")
    problems = [f"final attempt exit {rc}"] if rc else compare(ref, got)
    print(f"kills: {kills}")
    print("outcome: EQUAL (top-1, top-5, per-image correctness, every epoch once, final weights bit-for-bit)"
          if not problems else "outcome: DIFFERENT\n  " + "\n  ".join(problems))
    return 0 if not problems and kills == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
