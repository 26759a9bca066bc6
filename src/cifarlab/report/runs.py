"""``cifarlab runs``: one row per run folder, read from its records only.

A run folder is a folder with a training ``config.json``. Its status comes from the
files the engine writes: ``result.json`` (done), ``error.json`` (failed, with its
one-line error), else interrupted at its newest checkpoint. No checkpoint, model or
dataset is opened (of ``result.json`` only the head, see :func:`_read_record`), so listing hundreds of runs
takes a fraction of a second.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic_core import from_json

from .. import CifarlabError
from .records import SEED_FOLDER

STATUSES = ("done", "interrupted", "failed")
SKIP_FOLDERS = frozenset({"checkpoints", "tensorboard", "evals", "wandb", "mlruns"})
BEST_FIRST = frozenset({"top1", "top5", "images_per_second"})  # sorted descending; anything else ascending
SORT_KEYS = ("path", "status", "model", "dataset", "seed", "epochs", "top1", "top5", "train_seconds",
             "images_per_second", "study")


@dataclass
class RunRow:
    path: str
    status: str  # done | interrupted | failed
    detail: str  # "at epoch 3 of 10" (interrupted), the one-line error (failed), or "" (done)
    model: str | None
    dataset: str | None
    seed: int | None
    epochs: int | None  # planned
    epochs_done: int
    top1: float | None
    top5: float | None
    train_seconds: float | None
    images_per_second: float | None
    study: str | None
    variant: str | None


RECORD_KEYS = ("dataset", "epochs", "top1", "top5", "train_seconds", "images_per_second")
HEAD_BYTES = 16384


def _read(path: Path) -> Any:
    """A JSON file through pydantic's Rust parser (about 3x faster than ``json`` on a full result.json)."""
    with open(path, "rb") as f:
        return from_json(f.read())


def _read_record(path: Path) -> Any:
    """The fields of ``result.json`` the listing shows. The engine writes them before the per-image lists, so the
    file's first 16 KiB usually hold them all (parsed as a prefix, a tenth of the time of the whole file); a field
    not complete in that prefix, or a prefix that does not parse, means reading the whole file."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        rest = f.read()
    if rest:
        try:
            partial = from_json(head, allow_partial=True)
        except ValueError:
            partial = None
        if isinstance(partial, dict) and partial:
            last = next(reversed(partial))  # the key the prefix cut through
            if all(k in partial and k != last for k in RECORD_KEYS):
                return partial
    return from_json(head + rest)


def find_run_folders(paths: list[str | Path]) -> list[Path]:
    """Every folder with a ``config.json`` at or below ``paths`` (not inside a run's own sub-folders), sorted."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.is_dir():
            raise CifarlabError(f"{p} is not a folder")
        for here, dirs, files in os.walk(p):
            if "config.json" in files:
                found.add(Path(here))
                dirs.clear()  # a run folder holds no other run
            else:
                dirs[:] = [d for d in dirs if d not in SKIP_FOLDERS and not d.startswith(".")]
    return sorted(found)


def _newest_checkpoint(run: Path) -> int:
    """The newest complete checkpoint's epoch, from the folder names alone (``epoch-0007``); 0 when none."""
    try:
        names = os.listdir(run / "checkpoints")
    except OSError:
        return 0
    return max((int(n[6:]) for n in names if n.startswith("epoch-") and n[6:].isdigit()), default=0)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def run_row(run: Path, base: Path) -> RunRow | None:
    """The listing row of one run folder, or None when its ``config.json`` is not a training config."""
    try:
        cfg = _read(run / "config.json")
    except (OSError, ValueError):
        cfg = None
    if not isinstance(cfg, dict) or "model" not in cfg or "epochs" not in cfg:
        return None
    m = SEED_FOLDER.match(run.name)
    row = RunRow(path=run.relative_to(base).as_posix() if run != base else run.name, status="interrupted", detail="",
                 model=cfg.get("model"), dataset=cfg.get("dataset"), seed=cfg.get("seed"), epochs=cfg.get("epochs"),
                 epochs_done=0, top1=None, top5=None, train_seconds=None, images_per_second=None,
                 study=run.parent.parent.name if m else None, variant=run.parent.name if m else None)
    if (run / "result.json").is_file():
        try:
            rec = _read_record(run / "result.json")
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            row.status, row.detail = "failed", f"unreadable result.json ({str(e).splitlines()[0]})"
            return row
        row.status, row.epochs_done = "done", int(rec.get("epochs") or row.epochs or 0)
        row.dataset = rec.get("dataset", row.dataset)
        for key in ("top1", "top5", "train_seconds", "images_per_second"):
            setattr(row, key, _number(rec.get(key)))
        return row
    row.epochs_done = _newest_checkpoint(run)
    if (run / "error.json").is_file():
        try:
            err = _read(run / "error.json")
            row.detail = str(err.get("error", "")).splitlines()[0] if isinstance(err, dict) else ""
        except (OSError, ValueError):
            row.detail = "unreadable error.json"
        row.status = "failed"
        return row
    row.detail = f"at epoch {row.epochs_done} of {row.epochs}"
    return row


def _sort_key(key: str):
    def k(r: RunRow):
        v = getattr(r, key)
        if v is None:
            return (1, 0, r.path)
        return (0, -v if key in BEST_FIRST else v, r.path)
    return k


def list_runs(paths: list[str | Path], model: str | None = None, status: str | None = None,
              sort: str = "path") -> list[RunRow]:
    """The rows of every run folder under ``paths``; ``model`` is a glob (``'eca*'``), ``status`` one of STATUSES."""
    if status is not None and status not in STATUSES:
        raise CifarlabError(f"--status {status}: choose from {', '.join(STATUSES)}")
    if sort not in SORT_KEYS:
        raise CifarlabError(f"--sort {sort}: choose from {', '.join(SORT_KEYS)}")
    folders = find_run_folders(paths)
    base = Path(os.path.commonpath([str(f.parent) for f in folders])) if folders else Path(".")
    rows = [r for r in (run_row(f, base) for f in folders) if r is not None]
    rows = [r for r in rows if (model is None or fnmatch.fnmatchcase(r.model or "", model))
            and (status is None or r.status == status)]
    return sorted(rows, key=_sort_key(sort))


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def runs_table(rows: list[RunRow]) -> str:
    """A plain-text table of ``rows``: one line each, status with its detail."""
    head = ("run", "status", "model", "data", "seed", "epochs", "top-1", "top-5", "time", "img/s", "study/variant")
    lines = [head]
    for r in rows:
        status = {"done": "done", "interrupted": f"interrupted {r.detail}", "failed": f"failed: {r.detail}"}[r.status]
        lines.append((r.path, status, r.model or "-", r.dataset or "-", "-" if r.seed is None else str(r.seed),
                      f"{r.epochs_done}/{r.epochs}", _fmt(r.top1, ".4f"), _fmt(r.top5, ".4f"),
                      _duration(r.train_seconds), _fmt(r.images_per_second, ",.0f"),
                      f"{r.study}/{r.variant}" if r.study else "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    right = {4, 5, 6, 7, 8, 9}
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     .rstrip() for line in lines)


def rows_json(rows: list[RunRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=1)


def cmd_runs(args) -> int:
    dirs = args.dirs or ["runs"]
    rows = list_runs(dirs, model=args.model, status=args.status, sort=args.sort)
    if args.json:
        print(rows_json(rows))
    elif rows:
        print(runs_table(rows))
    else:
        print(f"no run folders under {', '.join(dirs)}" + (" that match" if args.model or args.status else ""))
    return 0


def add_commands(sub) -> None:
    ls = sub.add_parser("runs", help="one row per run folder: status, model, data, seed, top-1/top-5, time, speed")
    ls.add_argument("dirs", nargs="*", metavar="DIR", help="folders searched for run folders (default: runs)")
    ls.add_argument("--model", metavar="GLOB", help="only models matching this pattern, e.g. 'eca*'")
    ls.add_argument("--status", choices=STATUSES)
    ls.add_argument("--sort", default="path", choices=SORT_KEYS,
                    help="order of the rows (top1, top5 and images_per_second best first; default: path)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_runs)
