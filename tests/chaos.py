"""Chaos check: kill a small study with SIGKILL at random moments, restart it, compare with an undisturbed run.

    python tests/chaos.py --kills 10 [--seed 0] [--workdir DIR]

The study has two variants (ResNet-8 and ECA-ResNet-8, deterministic, on synthetic data, 3 epochs) and one seed;
``cifarlab study run`` skips finished runs and resumes interrupted ones. It runs once undisturbed to record when
each of its safe points is reached (an epoch line follows its checkpoint, a 'done:' line follows result.json) and
its start-up time S (until the first model header line). Then it runs again and is SIGKILLed N times: with
R the undisturbed time from the last safe point the killed study has reached to its end, an attempt is killed in
its start-up (after U(0, S), with probability S / (S + 0.75 R)), or else 0 to 0.75 R after its first model header
line. The kills so land anywhere - start-up, data loading, a training step, evaluation, a checkpoint or record
write - across the whole study, and an attempt cannot finish the work by itself unless it runs a quarter faster
than the undisturbed study did (if one does, fewer kills are reported). A last attempt runs to the end. Every
run must then equal the undisturbed one: top-1, top-5, per-image correctness, final weights bit-for-bit, each
epoch recorded exactly once, no temporary folder left.

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

EPOCHS = 3
STUDY = {
    "name": "chaos",
    "base": {"data": "synthetic:300:100", "model_kwargs": {"depth": 8}, "batch_size": 50, "lr": 0.1,
             "warmup_epochs": 0, "deterministic": True},
    "budget": {"epochs": EPOCHS},
    "seeds": [0],
    "variants": [{"name": "resnet8", "model": "resnet20"}, {"name": "eca-resnet8", "model": "eca_resnet20"}],
}
RUNS = [f"{v['name']}/seed0" for v in STUDY["variants"]]


def study_command(out: Path) -> list[str]:
    """``cifarlab study run`` of the study into ``out`` (its file written beside ``out``)."""
    import yaml

    study_file = out.parent / f"{out.name}.yaml"
    study_file.write_text(yaml.safe_dump(STUDY))
    return ["study", "run", str(study_file), "--out", str(out), "--no-progress"]


def start(argv: list[str], log: Path) -> int:
    """Fork a child that runs ``cli.main(argv)`` with its output appended to ``log``; returns its pid."""
    from cifarlab import cli

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sys.stdout = sys.stderr = open(log, "a", buffering=1)
            code = cli.main(argv)
        finally:
            os._exit(code)
    return pid


def wait_for_header(pid: int, log: Path, offset: int) -> int | None:
    """Wait until the attempt logs its first model header (past byte ``offset``); its exit code if it ends first."""
    while True:
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            return os.waitstatus_to_exitcode(status)
        if log.exists() and b" params, " in log.read_bytes()[offset:]:
            return None
        time.sleep(0.01)


def finish(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def progress(out: Path) -> str:
    """Where the work stood: per run, the epochs in metrics.jsonl and the intact checkpoints."""
    from cifarlab.run import RunFolder, newest_intact

    parts = []
    for name in RUNS:
        run = out / "chaos" / name
        rows = len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
        found = newest_intact(RunFolder(run))
        done = " done" if (run / "result.json").exists() else ""
        parts.append(f"{name}: {rows} rows, checkpoint {found.epoch if found else '-'}{done}")
    return "; ".join(parts)


def safe_points(out: Path) -> int:
    """How many safe points the study has passed: checkpointed epochs, plus 1 per run with result.json."""
    from cifarlab.run import RunFolder, newest_intact

    done = 0
    for name in RUNS:
        found = newest_intact(RunFolder(out / "chaos" / name))
        done += (found.epoch if found else 0) + (out / "chaos" / name / "result.json").exists()
    return done


def compare(ref: Path, got: Path) -> list[str]:
    """Differences between two finished studies (empty when they are equal)."""
    import torch
    from safetensors.torch import load_file

    problems = []
    for name in RUNS:
        a, b = ref / "chaos" / name, got / "chaos" / name
        if not (b / "result.json").exists():
            problems.append(f"{name}: no result.json")
            continue
        ra, rb = (json.loads((r / "result.json").read_text()) for r in (a, b))
        for key in ("top1", "top5", "test_loss", "test_correct", "selected_epoch"):
            if ra[key] != rb[key]:
                problems.append(f"{name}: {key} {ra[key]!r} != {rb[key]!r}")
        epochs = [json.loads(x)["epoch"] for x in (b / "metrics.jsonl").read_text().splitlines() if x.strip()]
        if epochs != list(range(1, EPOCHS + 1)):
            problems.append(f"{name}: metrics.jsonl holds epochs {epochs}")
        last = f"checkpoints/epoch-{EPOCHS:04d}/model.safetensors"
        wa, wb = load_file(a / last), load_file(b / last)
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            problems.append(f"{name}: final weights differ")
        if list((b / "checkpoints").glob(".epoch-*")):
            problems.append(f"{name}: a temporary checkpoint folder was left behind")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10, help="how many times to SIGKILL the study (N)")
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
    log, startup, reached = work / "undisturbed.log", None, [0.0]  # reached[k]: time of the k-th safe point
    pid = start(study_command(ref), log)
    while not (status := os.waitpid(pid, os.WNOHANG))[0]:
        lines = log.read_text().splitlines() if log.exists() else []
        if startup is None and any(" params, " in line for line in lines):
            startup = time.perf_counter() - t0
        passed = sum(line.startswith(("epoch ", "done: ")) for line in lines)
        reached += [time.perf_counter() - t0] * (passed - len(reached) + 1)
        time.sleep(0.01)
    duration = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status[1])
    if rc:
        print(f"the undisturbed study failed (exit {rc}); see {log}")
        return 2
    print(f"undisturbed study: {duration:.1f} s, start-up {startup:.1f} s ({len(RUNS)} runs x {EPOCHS} epochs)")

    rng = random.Random(args.seed)
    kills, log = 0, work / "killed.log"
    for attempt in range(1, args.kills + 1):
        done = safe_points(got)
        if done == len(reached) - 1:
            print(f"the study finished after {kills} kills")
            break
        left = 0.75 * (duration - reached[done])
        offset = log.stat().st_size if log.exists() else 0
        pid = start(study_command(got), log)
        if rng.random() < startup / (startup + left):  # in the start-up, before the first model is built
            delay, phase = rng.uniform(0.0, startup), "start-up"
        else:  # in the work left, timed from this attempt's first model header so that it cannot finish
            rc = wait_for_header(pid, log, offset)
            if rc is not None:
                print(f"attempt {attempt}: ended by itself (exit {rc}) before its first model header")
                continue
            delay, phase = rng.uniform(0.0, left), "work"
        time.sleep(delay)
        os.kill(pid, 9)
        rc = finish(pid)
        if rc == -9:
            kills += 1
            print(f"kill {attempt}: {phase} + {delay:.2f} s -> {progress(got)}")
        else:
            print(f"attempt {attempt}: ended by itself (exit {rc}) before the kill")
    rc = finish(start(study_command(got), work / "killed.log"))
    print(f"final attempt: exit {rc} -> {progress(got)}")
    problems = [f"final attempt exit {rc}"] if rc else compare(ref, got)
    print(f"kills: {kills}")
    print("outcome: EQUAL (top-1, top-5, per-image correctness, every epoch once, final weights bit-for-bit)"
          if not problems else "outcome: DIFFERENT\n  " + "\n  ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
