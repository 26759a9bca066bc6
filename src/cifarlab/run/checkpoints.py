"""Checkpoint folders of a run: which ones exist, which are intact, and pruning the old ones.

Layout: ``checkpoints/epoch-0007/{model.safetensors, ema.safetensors, state.pt, manifest.json}``. The engine
builds a checkpoint under a temporary name (``.epoch-0007.<random>``), fsyncs every file, writes
``manifest.json`` (each file's sha256) last and renames the folder into place. A checkpoint is intact when its
manifest names the weights and the training state and every file it names is a regular file of the folder
whose checksum matches; only cifarlab's own file names may appear in a manifest. This module reads and deletes
files only; writing the tensors is ``cifarlab.train.checkpoint``'s job.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError

from .folder import CHECKPOINTS, MAX_BYTES, RunFolder, UnsafeRunFile
from .records import HEX64, Record

MANIFEST = "manifest.json"
WEIGHTS, EMA_WEIGHTS, STATE = "model.safetensors", "ema.safetensors", "state.pt"
FILES = (WEIGHTS, EMA_WEIGHTS, STATE)  # what a manifest may name
REQUIRED = (WEIGHTS, STATE)
EPOCH_FOLDER = re.compile(r"^epoch-(\d{4,9})$")
TEMP_FOLDER = re.compile(r"^\.epoch-\d{4,9}\.[A-Za-z0-9_]+$")
MAX_FILE_BYTES = 16 << 30  # a checkpoint file larger than this is not one of cifarlab's


def folder_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


class Manifest(Record):
    epoch: Annotated[int, Field(ge=1, le=10**7)]
    files: dict[str, Annotated[str, Field(pattern=HEX64)]] = Field(max_length=len(FILES))


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    path: Path
    files: tuple[str, ...]
    notes: list[str] = field(default_factory=list)  # the newer checkpoints passed over, and why

    @property
    def has_ema(self) -> bool:
        return EMA_WEIGHTS in self.files


def epoch_folders(run: RunFolder) -> list[tuple[int, str]]:
    """(epoch, folder name) of every checkpoint folder, newest first (a link in place of one is not one)."""
    found = [(int(m.group(1)), n) for n in run.listdir(CHECKPOINTS)
             if (m := EPOCH_FOLDER.match(n)) and run.is_dir(CHECKPOINTS, n)]
    return sorted(found, reverse=True)


def _sha256(run: RunFolder, *parts: str) -> str:
    path = run.path(*parts)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
            raise UnsafeRunFile(f"{path}: not a regular file of at most {MAX_FILE_BYTES:,} bytes")
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 22):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def problem(run: RunFolder, name: str) -> tuple[str | None, tuple[str, ...]]:
    """(None, the files) if checkpoint folder ``name`` is complete and intact, else (the reason it is not, ())."""
    if not run.is_file(CHECKPOINTS, name, MANIFEST):
        return "no manifest (interrupted while writing)", ()
    try:
        manifest = Manifest.model_validate_json(run.read_bytes(CHECKPOINTS, name, MANIFEST,
                                                               limit=MAX_BYTES["manifest"]))
    except (ValidationError, OSError, UnsafeRunFile):
        return "unreadable manifest", ()
    unknown = sorted(set(manifest.files) - set(FILES))
    if unknown:
        return f"its manifest names files cifarlab never writes ({', '.join(map(repr, unknown))[:100]})", ()
    if not set(REQUIRED) <= set(manifest.files):
        return "manifest does not list the weights and the training state", ()
    for f, digest in manifest.files.items():
        if not run.is_file(CHECKPOINTS, name, f):
            return f"{f} is missing", ()
        try:
            if _sha256(run, CHECKPOINTS, name, f) != digest:
                return f"{f} fails its checksum", ()
        except (OSError, UnsafeRunFile):
            return f"{f} is not a readable regular file", ()
    return None, tuple(sorted(manifest.files))


def newest_intact(run: RunFolder) -> Checkpoint | None:
    """The newest intact checkpoint, with a note for each newer one passed over; None when there is none."""
    notes = []
    for epoch, name in epoch_folders(run):
        why, files = problem(run, name)
        if why is None:
            return Checkpoint(epoch, run.path(CHECKPOINTS, name), files, notes)
        notes.append(f"checkpoint {name} is corrupt ({why}); using an older one")
    return None


def prune(run: RunFolder, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints, and the temporary folders of writes that were killed —
    file by file, and only folders holding nothing but cifarlab's own checkpoint files."""
    own = (*FILES, MANIFEST)
    for name in run.listdir(CHECKPOINTS):
        if TEMP_FOLDER.match(name):
            run.remove_known(own, CHECKPOINTS, name)
    for _, name in epoch_folders(run)[keep:]:
        run.remove_known(own, CHECKPOINTS, name)
