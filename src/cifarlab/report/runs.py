"""``cifarlab runs``: one row per run folder, its state by the one status rule (``cifarlab.run.status``).

A run folder is a folder with a training ``config.json``. A run inside a study folder is compared with the
config its ``study.json`` records, so a folder that holds a run of another config shows as ``changed``, as
``cifarlab study plan`` shows it. No model or dataset is opened and of a large ``result.json`` only the head is
parsed, so listing hundreds of runs takes a fraction of a second — and imports neither torch nor ``datasets``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import ValidationError

from .. import CifarlabError
from ..config import TrainConfig, format_validation_error
from ..run import STATES, RunFolder, RunStatus, find_run_folders, read_study, run_status, study_of
from ..run.folder import STUDY

BEST_FIRST = frozenset({"top1", "top5", "images_per_second"})  # sorted descending; anything else ascending
SORT_KEYS = ("path", "status", "model", "dataset", "seed", "epochs", "top1", "top5", "train_seconds",
             "images_per_second", "study")


@dataclass
class RunRow:
    """How ``cifarlab runs`` shows a run folder's :class:`~cifarlab.run.RunStatus`."""

    path: str
    status: str  # one of cifarlab.run.STATES
    detail: str  # "after epoch 3 of 10" (interrupted), the one-line error (failed), "top-1 0.6512" (done) ...
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


class StudyConfigs:
    """The variant configs each study folder's ``study.json`` records (read once per study folder)."""

    def __init__(self) -> None:
        self.cache: dict[Path, dict[str, TrainConfig]] = {}

    def wanted(self, run: Path) -> TrainConfig | None:
        where = study_of(run)
        if where is None:
            return None
        study = RunFolder(run.parent.parent)
        if study.root not in self.cache:
            found = {}
            if study.is_file(STUDY):
                for v in read_study(study).variants:
                    if v.config is not None:
                        found[v.name] = _variant_config(study, v.name, v.config)
            self.cache[study.root] = found
        cfg = self.cache[study.root].get(where[1])
        seed = int(run.name.removeprefix("seed"))
        return cfg.model_copy(update={"seed": seed}) if cfg is not None else None


def _variant_config(study: RunFolder, name: str, config: dict) -> TrainConfig:
    try:
        return TrainConfig.model_validate(config)
    except ValidationError as err:
        raise CifarlabError(f"{study.path(STUDY)}: damaged (variant {name!r}: "
                            f"{format_validation_error(err, 'config')})") from None


def _row(status: RunStatus, base: Path) -> RunRow:
    run, cfg, rec = status.folder.root, status.config, status.record or {}
    where = study_of(run)
    return RunRow(path=run.relative_to(base).as_posix() if run != base else run.name, status=status.state,
                  detail=status.detail, model=rec.get("model", cfg.model if cfg else None),
                  dataset=rec.get("dataset", cfg.dataset if cfg else None),
                  seed=rec.get("seed", cfg.seed if cfg else None), epochs=cfg.epochs if cfg else None,
                  epochs_done=status.epoch, top1=rec.get("top1"), top5=rec.get("top5"),
                  train_seconds=rec.get("train_seconds"), images_per_second=rec.get("images_per_second"),
                  study=where[0] if where else None, variant=where[1] if where else None)


def list_runs(paths: list[str | Path], model: str | None = None, status: str | None = None,
              sort: str = "path") -> list[RunRow]:
    """The rows of every run folder under ``paths``; ``model`` is a glob (``'eca*'``), ``status`` one of STATES."""
    if status is not None and status not in STATES:
        raise CifarlabError(f"--status {status}: choose from {', '.join(STATES)}")
    if sort not in SORT_KEYS:
        raise CifarlabError(f"--sort {sort}: choose from {', '.join(SORT_KEYS)}")
    folders = find_run_folders(paths)
    base = Path(os.path.commonpath([str(f.parent) for f in folders])) if folders else Path(".")
    studies = StudyConfigs()
    rows = [_row(run_status(RunFolder(f), studies.wanted(f), head=True), base) for f in folders]
    rows = [r for r in rows if (model is None or fnmatch.fnmatchcase(r.model or "", model))
            and (status is None or r.status == status)]
    return sorted(rows, key=_sort_key(sort))


def _sort_key(key: str):
    def k(r: RunRow):
        v = getattr(r, key)
        if v is None:
            return (1, 0, r.path)
        return (0, -v if key in BEST_FIRST else v, r.path)
    return k


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
        status = {"done": "done", "failed": f"failed: {r.detail}", "changed": f"changed: {r.detail}"}.get(
            r.status, f"{r.status} {r.detail}".strip())
        lines.append((r.path, status, r.model or "-", r.dataset or "-", "-" if r.seed is None else str(r.seed),
                      f"{r.epochs_done}/{r.epochs}", _fmt(r.top1, ".4f"), _fmt(r.top5, ".4f"),
                      _duration(r.train_seconds), _fmt(r.images_per_second, ",.0f"),
                      f"{r.study}/{r.variant}" if r.study else "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    right = {4, 5, 6, 7, 8, 9}
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
                     for line in lines)


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
    ls.add_argument("--status", choices=STATES)
    ls.add_argument("--sort", default="path", choices=SORT_KEYS,
                    help="order of the rows (top1, top5 and images_per_second best first; default: path)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_runs)
