"""A finished run — its folder, its validated record and its place in a study — and finding them under paths.

The one type of a finished run that the study runner and tables, the report, ``cifarlab runs``, evaluation,
Grad-CAM, the Hub and ``reproduce`` share.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import CifarlabError
from .folder import CONFIG, RESULT, RunFolder, find_run_folders, study_of
from .records import read_config, read_metrics, read_result


@dataclass
class FinishedRun:
    """A finished run: its folder, its ``result.json`` (validated) and where it sits in a study, if it does."""

    folder: RunFolder
    record: dict[str, Any]
    study: str | None = None
    variant: str | None = None

    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def result_path(self) -> Path:
        return self.folder.path(RESULT)

    @property
    def model(self) -> str:
        return self.record["model"]

    @property
    def seed(self) -> int:
        return int(self.record["seed"])

    @property
    def dataset_key(self) -> tuple[str, str]:
        return self.record["dataset"], self.record["dataset_fingerprint"]

    @property
    def run_id(self) -> str:
        return f"{self.study}/{self.variant}/seed{self.seed}" if self.study else self.root.name

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's training config: the copy in its record, else its ``config.json``."""
        if isinstance(self.record.get("config"), dict):
            return self.record["config"]
        if self.folder.exists(CONFIG):
            return read_config(self.folder).model_dump(mode="json")
        return {"model": self.model}

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """The epoch rows of ``metrics.jsonl`` (none when the folder has none)."""
        return read_metrics(self.folder)


def load_finished(root: str | Path, record: dict[str, Any] | None = None) -> FinishedRun:
    """The finished run in ``root`` (its ``result.json`` read and validated unless ``record`` is given)."""
    folder = RunFolder(root)
    where = study_of(folder.root)
    return FinishedRun(folder, record if record is not None else read_result(folder), *(where or (None, None)))


def discover(paths: list[str | Path]) -> list[Path]:
    """The run folders of every ``result.json`` at or below ``paths`` (a path may also be a ``result.json`` or a
    run folder), sorted and unique; links are not followed."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise CifarlabError(f"{p} does not exist")
        if p.is_file() or p.is_symlink():
            if p.name != RESULT or p.is_symlink():
                raise CifarlabError(f"{p} is not a result.json or a folder of runs")
            found.add(p.parent.resolve())
        else:
            found.update(f.resolve() for f in find_run_folders([p], marker=RESULT))
    return sorted(found)


def finished_runs(paths: list[str | Path]) -> list[FinishedRun]:
    """Every finished run at or below ``paths``."""
    return [load_finished(p) for p in discover(paths)]
