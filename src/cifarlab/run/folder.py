"""The run folder's file names and the one way cifarlab touches a file inside a run folder.

A run folder is as often someone else's (a copied study, a download, a published record) as the user's own, so
every path inside it is checked before use: each part is a plain name, no part that exists is a symbolic link
(so nothing read, written or deleted lies outside the folder), what is read is a regular file no larger than
its kind allows (opened without following a link and without blocking on a pipe), and what is written is
written atomically. Checkpoint folders are pruned file by file, by the names cifarlab writes: anything else
found there is left alone. Every refusal is one :class:`UnsafeRunFile` line.

Layout::

    config.json     the resolved training config           metrics.jsonl   one JSON line per epoch
    result.json     the run record of a finished run       error.json      why the run failed
    trackers.json   experiment-tracker run ids             attempts.json   attempts of the Ray executor
    run.lock        held while a process trains the run    evals/          other evaluations (evals/<fp>.json)
    checkpoints/epoch-NNNN/{model.safetensors, ema.safetensors, state.pt, manifest.json}
    tensorboard/    TensorBoard events

A study folder holds ``study.json`` and its runs as ``<variant>/seed<k>``. A reproduction folder (``cifarlab
reproduce --out``) holds ``reproduce.json`` and the study folder of its runs.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic_core import from_json

from .. import CifarlabError
from ..io import atomic_open

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"
ERROR = "error.json"
TRACKERS = "trackers.json"
ATTEMPTS = "attempts.json"
LOCK = "run.lock"
EVALS = "evals"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
STUDY = "study.json"
REPRODUCE = "reproduce.json"
# Sub-folders of a run that never hold another run (searches for run folders do not descend into them).
RUN_SUBFOLDERS = frozenset({CHECKPOINTS, TENSORBOARD, EVALS, "wandb", "mlruns"})
SEED_FOLDER = re.compile(r"^seed(\d{1,18})$")

KiB, MiB = 1 << 10, 1 << 20
# The largest file of each kind that is read. A record of the full CIFAR test split (10,000 per-image entries) is
# about 200 KB; a metrics line per epoch for thousands of epochs a few MB.
MAX_BYTES = {CONFIG: MiB, RESULT: 64 * MiB, METRICS: 64 * MiB, ERROR: MiB, TRACKERS: 64 * KiB,
             ATTEMPTS: 4 * MiB, STUDY: 16 * MiB, REPRODUCE: 16 * MiB, "eval": 64 * MiB, "manifest": 64 * KiB}


class UnsafeRunFile(CifarlabError):
    """A path in a run folder that cifarlab will not use: a link, a special file, a name that leaves the folder,
    or a file larger than its kind allows."""


def _plain_name(part: str) -> bool:
    return bool(part) and part not in (".", "..") and "/" not in part and "\\" not in part and "\0" not in part


@dataclass(frozen=True)
class RunFolder:
    """A run folder — or a study folder, or a saved-model folder: any folder of files from a user — every file
    inside which goes through these methods. ``links_into``: a folder that symbolic links may point into (the Hub
    cache's blobs, which its snapshot folders link to); any other link is refused."""

    root: Path
    links_into: Path | None = None

    def __init__(self, root: str | Path, links_into: str | Path | None = None):
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(self, "links_into", Path(links_into).resolve() if links_into is not None else None)

    def __str__(self) -> str:
        return str(self.root)

    @property
    def name(self) -> str:
        return self.root.name

    def path(self, *parts: str) -> Path:
        """``root/parts``: each part a plain name, and no part that exists a symbolic link."""
        path = self.root
        for part in parts:
            if not _plain_name(part):
                raise UnsafeRunFile(f"{self.root}: {part!r:.80} is not a file name inside the run folder")
            path = path / part
            if path.is_symlink():
                target = path.resolve()
                if self.links_into is None or not target.is_relative_to(self.links_into):
                    raise UnsafeRunFile(f"{path}: a symbolic link inside a run folder (cifarlab follows none)")
                path = target
        return path

    def is_file(self, *parts: str) -> bool:
        """Whether ``parts`` names a regular file (a link or anything else counts as not there)."""
        try:
            return stat.S_ISREG(os.lstat(self.path(*parts)).st_mode)
        except (OSError, UnsafeRunFile):
            return False

    def is_dir(self, *parts: str) -> bool:
        try:
            return stat.S_ISDIR(os.lstat(self.path(*parts)).st_mode)
        except (OSError, UnsafeRunFile):
            return False

    def exists(self, *parts: str) -> bool:
        """Whether anything (a link included) stands at ``parts``; the folders on the way must not be links."""
        parent = self.path(*parts[:-1])
        if not _plain_name(parts[-1]):
            raise UnsafeRunFile(f"{self.root}: {parts[-1]!r:.80} is not a file name inside the run folder")
        return os.path.lexists(parent / parts[-1])

    def listdir(self, *parts: str) -> list[str]:
        """The names in a sub-folder (empty when it is missing or not a folder)."""
        if not self.is_dir(*parts):
            return []
        try:
            return sorted(os.listdir(self.path(*parts)))
        except OSError:
            return []

    def read_bytes(self, *parts: str, limit: int) -> bytes:
        """The bytes of a regular file, refused when it is larger than ``limit``; a missing file raises
        ``FileNotFoundError``."""
        path = self.path(*parts)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeRunFile(f"{path}: not a regular file")
            if info.st_size > limit:
                raise UnsafeRunFile(f"{path}: {info.st_size:,} bytes; cifarlab reads at most {limit:,} of it")
            chunks, size = [], 0
            while size <= limit:
                chunk = os.read(fd, min(1 << 22, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > limit:
                raise UnsafeRunFile(f"{path}: more than {limit:,} bytes")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def check_layout(self) -> None:
        """Refuse a run folder in which one of the names cifarlab reads or writes is a symbolic link, before any work
        is done in it."""
        for name in (CONFIG, METRICS, RESULT, ERROR, TRACKERS, ATTEMPTS, LOCK, EVALS, CHECKPOINTS, TENSORBOARD):
            self.path(name)

    def mkdir(self, *parts: str) -> Path:
        """Create the sub-folder ``parts`` (and the run folder) as real folders; a link on the way is refused."""
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(1, len(parts) + 1):
            path = self.path(*parts[:i])
            try:
                path.mkdir()
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise UnsafeRunFile(f"{path}: not a folder") from None
        return self.path(*parts)

    def open_write(self, *parts: str, mode: str = "w") -> Any:
        """An atomic writer of ``parts`` (temporary file in the same folder, renamed into place)."""
        self.mkdir(*parts[:-1])
        return atomic_open(self.path(*parts), mode)

    def write_json(self, *parts: str, obj: Any) -> Path:
        with self.open_write(*parts) as f:
            json.dump(obj, f, indent=1)
        return self.path(*parts)

    def append_line(self, name: str, line: str) -> None:
        """Append one line to a file of the folder (flushed, so a killed run keeps every finished line)."""
        self.mkdir()
        fd = os.open(self.path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(line.rstrip("\n") + "\n")
            f.flush()

    def remove(self, *parts: str) -> None:
        """Remove one file of the folder; a link is removed itself, never what it points to."""
        parent = self.path(*parts[:-1]) if len(parts) > 1 else self.root
        if not _plain_name(parts[-1]):
            raise UnsafeRunFile(f"{self.root}: {parts[-1]!r:.80} is not a file name inside the run folder")
        try:
            if stat.S_ISDIR(os.lstat(parent / parts[-1]).st_mode):
                raise UnsafeRunFile(f"{parent / parts[-1]}: a folder where a file belongs")
            os.unlink(parent / parts[-1])
        except FileNotFoundError:
            pass

    def remove_known(self, names: tuple[str, ...], *parts: str) -> bool:
        """Delete the sub-folder ``parts`` if it is a real folder holding nothing but files named in ``names`` and
        the temporary files of their atomic writes (deleted one by one; a link among them is removed itself);
        returns whether it is gone. Anything else, a link in its place included, is left as it is."""
        def ours(entry: str) -> bool:
            return entry in names or any(entry.startswith(f".{n}.") and entry.endswith(".tmp") for n in names)

        try:
            folder = self.path(*parts)
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                return False
            entries = os.listdir(folder)
            if any(not ours(e) or stat.S_ISDIR(os.lstat(folder / e).st_mode) for e in entries):
                return False
            for e in entries:
                os.unlink(folder / e)
            os.rmdir(folder)
        except (OSError, UnsafeRunFile):
            return False
        return True

    def open_lock(self) -> IO | None:
        """The lock file opened for reading (None when there is none or it is not a regular file)."""
        try:
            fd = os.open(self.path(LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, UnsafeRunFile):
            return None
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            return None
        return f


def study_of(root: Path) -> tuple[str, str] | None:
    """(study, variant) of a run folder ``<study>/<variant>/seed<k>``, else None."""
    if SEED_FOLDER.match(root.name) and root.parent != root and root.parent.parent != root.parent:
        return root.parent.parent.name, root.parent.name
    return None


def is_run_folder(folder: RunFolder) -> bool:
    """Whether ``folder`` holds a run: a ``config.json`` beside a file only a run writes (its lock, metrics, record,
    error or checkpoints), or, before any of those exists, a config that names its epochs. A saved model's
    ``config.json`` (the Hub layout) has neither."""
    if not folder.exists(CONFIG):
        return False
    if any(folder.exists(n) for n in (LOCK, METRICS, RESULT, ERROR, CHECKPOINTS)):
        return True
    try:
        config = from_json(folder.read_bytes(CONFIG, limit=MAX_BYTES[CONFIG]))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "epochs" in config


def find_run_folders(paths: list[str | Path], marker: str = CONFIG) -> list[Path]:
    """Every folder at or below ``paths`` holding a run (``marker`` ``config.json``, see :func:`is_run_folder`) or
    a run record (``marker`` ``result.json``), sorted.

    Symbolic links are not followed and a run folder's own sub-folders are not searched; a marker that is a link
    or a special file counts (so that its reader refuses it, saying why)."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.is_dir():
            raise CifarlabError(f"{p} is not a folder")
        for here, dirs, _files in os.walk(p):
            if is_run_folder(RunFolder(here)) if marker == CONFIG else RunFolder(here).exists(marker):
                found.add(Path(here))
                dirs.clear()  # a run folder holds no other run
            else:
                dirs[:] = [d for d in dirs if d not in RUN_SUBFOLDERS and not d.startswith(".")]
    return sorted(found)
