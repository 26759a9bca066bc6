"""What ``cifarlab reproduce`` starts from, read through the validating readers of :mod:`cifarlab.run`.

A SOURCE is a run folder, its ``result.json``, a study folder (``<out>/<study>`` with ``study.json`` and
``<variant>/seed<k>/``), a Hub model repo pushed by ``cifarlab push`` (its ``result.json``, ``metrics.jsonl`` and
``training_config.json`` are downloaded), or a local folder in that Hub layout (``cifarlab push --dry-run --out``).
Each becomes variants (one for a run) holding their recorded runs and the config to train again.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import CifarlabError
from ..config import TrainConfig
from ..hub.push import TRAINING_CONFIG_FILE
from ..hub.saved import REPO_ID
from ..run import FinishedRun, RunFolder, read_config, read_result
from ..run.folder import CONFIG, METRICS, RESULT, SEED_FOLDER, STUDY, study_of
from ..studies.runner import records_in

HUB_FILES = [RESULT, METRICS, TRAINING_CONFIG_FILE]  # what a Hub source is downloaded for


@dataclass
class SourceVariant:
    """A variant of the source: its recorded runs (by seed) and the config they were trained with."""

    name: str
    model: str
    baseline: str | None
    config: TrainConfig
    runs: list[FinishedRun]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


@dataclass
class Source:
    """A record set to reproduce. ``config_file``: the file beside each ``result.json`` that holds its training
    config (``config.json`` in a run folder, ``training_config.json`` in the Hub layout); ``study_root``: the study
    folder a single run belongs to (its other runs give a pooled seed SD)."""

    kind: str  # run | study | hub | hub-folder
    given: str
    name: str
    variants: list[SourceVariant]
    config_file: str = CONFIG
    study_root: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[FinishedRun]:
        return [r for v in self.variants for r in v.runs]

    def describe(self) -> list[dict[str, str | None]]:
        """The variants as the study table takes them (name, model, baseline)."""
        return [{"name": v.name, "model": v.model, "baseline": v.baseline} for v in self.variants]


def folder_name(text: str) -> str:
    """``text`` as one plain folder name (a repo id's name part, a folder's name)."""
    name = re.sub(r"[^A-Za-z0-9_.+=-]+", "-", text).strip("-.")
    return name[:128] or "source"


def recorded_config(run: FinishedRun, config_file: str) -> TrainConfig:
    """The config a run was trained with: the copy in its record, else the file beside it."""
    if isinstance(run.record.get("config"), dict):
        return TrainConfig.model_validate(run.record["config"])  # validated when the record was read
    if run.folder.exists(config_file):
        return read_config(run.folder, config_file)
    raise CifarlabError(f"{run.result_path}: the record holds no training config and there is no {config_file} "
                        f"beside it: nothing says how to train it again")


def _single(folder: RunFolder, given: str, kind: str, config_file: str) -> Source:
    """A run folder or a Hub-layout folder: one variant of one run. A run folder ``<study>/<variant>/seed<k>`` keeps
    its study's and variant's names; otherwise the folder (or the repo) names the study and the model the variant."""
    where = study_of(folder.root.resolve()) if kind == "run" else None
    run = FinishedRun(folder, read_result(folder), *(where or (None, None)))
    study, variant = where or (given.rsplit("/", 1)[-1] if kind == "hub" else folder.root.resolve().name, run.model)
    variants = [SourceVariant(folder_name(variant), run.model, None, recorded_config(run, config_file), [run])]
    return Source(kind, given, folder_name(study), variants, config_file,
                  folder.root.resolve().parent.parent if where else None)


def _study(root: Path, given: str) -> Source:
    """A study folder: its variants (from ``study.json``, else the folders) with their finished runs."""
    variants, records = records_in(root)
    source = Source("study", given, folder_name(root.resolve().name), [])
    for v in variants:
        runs = sorted(records.get(v["name"], []), key=lambda r: r.seed)
        if not runs:
            source.notes.append(f"variant {v['name']} has no finished run: nothing to reproduce")
            continue
        source.variants.append(SourceVariant(v["name"], v["model"], v.get("baseline"),
                                             recorded_config(runs[0], CONFIG), runs))
    if not source.variants:
        raise CifarlabError(f"{root}: no variant of the study has a finished run")
    return source


def _is_study(folder: RunFolder) -> bool:
    return folder.exists(STUDY) or any(SEED_FOLDER.match(s) for v in folder.listdir() for s in
                                       RunFolder(folder.path(v)).listdir() if folder.is_dir(v))


def _local(path: Path, given: str) -> Source:
    folder = RunFolder(path)
    if folder.exists(TRAINING_CONFIG_FILE):
        return _single(folder, given, "hub-folder", TRAINING_CONFIG_FILE)
    if folder.exists(RESULT):
        return _single(folder, given, "run", CONFIG)
    if _is_study(folder):
        return _study(path, given)
    raise CifarlabError(f"{given} holds no {RESULT}, no {STUDY} and no <variant>/seed<k>/ runs: not a run, study "
                        f"or Hub-layout folder")


def load_source(given: str, revision: str | None = None, token: str | None = None) -> Source:
    """The source named on the command line: a local path when one exists, else a Hub model repo id."""
    path = Path(given).expanduser()
    if os.path.lexists(path):
        if not path.is_dir():
            if path.name != RESULT or path.is_symlink() or not path.is_file():
                raise CifarlabError(f"{given}: not a {RESULT} (a regular file) nor a folder of runs")
            path = path.parent
        return _local(path, given)
    if REPO_ID.match(given):
        from ..hub.saved import download

        return _single(download(given, revision, token, HUB_FILES), given, "hub", TRAINING_CONFIG_FILE)
    raise CifarlabError(f"{given} does not exist (nor is it a Hub model repo id USER/NAME)")
