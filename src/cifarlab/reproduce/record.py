"""What a reproduction writes into ``--out``: ``reproduce.json`` (every check and figure; read back, validated, by
:func:`cifarlab.run.read_reproduction`) and ``reproduce.md`` (the summary the command prints)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..run import RunFolder
from ..run.folder import REPRODUCE
from ..run.records import Reproduction as ReproductionSchema
from .audit import Check
from .render import summary_markdown
from .verdict import Interval, SameSeed, StudyLine

SUMMARY_FILE = "reproduce.md"


@dataclass
class Reproduction:
    """A reproduction: its source, the audit, the new runs and the verdicts (``reproduce.json``)."""

    mode: str  # audit | reproduce | claim
    source: dict[str, Any]  # kind, given, name, runs (the recorded run ids)
    data: str | None  # the data source as given (or the record's own)
    here: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    same_seed: list[SameSeed] = field(default_factory=list)
    intervals: list[Interval] = field(default_factory=list)
    study: list[StudyLine] = field(default_factory=list)
    claim: dict[str, Any] | None = None
    verdict: str = ""
    data_kind: str | None = None  # hub, parquet, pickle or synthetic, when the data was read
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``reproduce.json``, checked against the schema its readers validate with."""
        obj = asdict(self)
        return ReproductionSchema.model_validate(obj).model_dump(mode="json")


def write(rep: Reproduction, out: Path) -> tuple[Path, str]:
    """Write ``reproduce.json`` and ``reproduce.md`` into ``out``; returns the JSON's path and the summary."""
    obj = rep.to_json()
    folder = RunFolder(out)
    path = folder.write_json(REPRODUCE, obj=obj)
    text = summary_markdown(obj)
    with folder.open_write(SUMMARY_FILE) as f:
        f.write(text)
    return path, text
