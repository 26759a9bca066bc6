"""The one rule for what state a run folder is in, used by ``cifarlab runs``, the study runner and ``reproduce``.

- **new**: no ``config.json`` yet (nothing has started, or the folder does not exist) and no ``error.json``;
- **changed**: the folder holds a run of another config than the one asked for (a study file edited since, or a
  folder copied from elsewhere); never overwritten;
- **running**: a process holds the run's lock (``run.lock``, an advisory lock the operating system releases when
  the process ends, however it ends);
- **done**: ``result.json`` is there and valid;
- **failed**: ``error.json`` says why, or a file that must be valid is damaged;
- **interrupted**: anything else, to be resumed after the newest intact checkpoint (``epoch``; 0 = from the start).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from pydantic_core import from_json

from .. import CifarlabError
from ..config import TrainConfig
from .checkpoints import Checkpoint, newest_intact
from .folder import CONFIG, ERROR, LOCK, MAX_BYTES, RESULT, RunFolder, UnsafeRunFile
from .records import RunResult, _damaged, read_config, read_error, read_result

STATES = ("new", "running", "interrupted", "done", "failed", "changed")
HEAD_BYTES = 16384
# The record fields ``cifarlab runs`` shows; the engine writes them before the per-image lists.
HEAD_FIELDS = ("model", "dataset", "dataset_fingerprint", "top1", "top5", "params", "macs", "seed", "epochs",
               "train_seconds", "images_per_second")


@dataclass(frozen=True)
class RunStatus:
    folder: RunFolder
    state: str  # one of STATES
    epoch: int = 0  # done: the epochs trained; otherwise the newest intact checkpoint's epoch (0: none)
    detail: str = ""
    config: TrainConfig | None = None
    record: dict[str, Any] | None = None  # done: result.json (only its head with ``head=True``)
    damaged: bool = False  # failed because a file of the folder is damaged (``detail`` says which and how)
    differences: tuple[str, ...] = ()  # changed: the config fields that differ
    checkpoint: Checkpoint | None = None  # unfinished: the newest intact checkpoint, the one a resume continues


def config_differences(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """The top-level config fields in which two runs differ (a field a record predates counts at its default)."""
    a, b = saved.model_dump(mode="json"), wanted.model_dump(mode="json")
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def lock_holder(folder: RunFolder) -> str | None:
    """Who holds the run's lock ("pid 123 on host h since ..."), or None when no process does."""
    f = folder.open_lock()
    if f is None:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read(200).decode("utf-8", errors="replace").strip() or "another process"
        except OSError:  # a filesystem without locks: no process can be seen to hold one
            return None
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


@contextmanager
def hold_lock(folder: RunFolder) -> Iterator[None]:
    """Hold the run's lock while training it: a second process that tries is refused with who holds it."""
    path = folder.path(LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UnsafeRunFile(f"{path}: cannot open the run's lock ({e.strerror or type(e).__name__})") from None
    with os.fdopen(fd, "r+b") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeRunFile(f"{path}: not a regular file")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = f.read(200).decode("utf-8", errors="replace").strip() or "another process"
            raise CifarlabError(f"{folder} is being trained by {who}; wait for it or stop it first") from None
        except OSError:
            pass  # no locks on this filesystem: train unguarded, as before locks existed
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode())
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_result_head(folder: RunFolder) -> dict[str, Any]:
    """The fields of ``result.json`` that :data:`HEAD_FIELDS` name, validated. When the file's first
    :data:`HEAD_BYTES` hold them all (the engine writes them first) only that prefix is parsed, a tenth of the
    time of a full record; otherwise the whole record is read."""
    data = folder.read_bytes(RESULT, limit=MAX_BYTES[RESULT])
    if len(data) > HEAD_BYTES:
        try:
            partial = from_json(data[:HEAD_BYTES], allow_partial=True)
        except ValueError:
            partial = None
        if isinstance(partial, dict) and partial:
            last = next(reversed(partial))  # the key the prefix cut through
            head = {k: v for k, v in partial.items() if k != last}
            if all(k in head for k in HEAD_FIELDS):
                try:
                    return RunResult.model_validate_json(json.dumps(head)).model_dump(mode="json", exclude_unset=True)
                except ValueError as err:
                    raise _damaged(str(folder.path(RESULT)), err) from None
    return read_result(folder)


def _failed(folder: RunFolder, epoch: int, config: TrainConfig | None) -> RunStatus:
    try:
        return RunStatus(folder, "failed", epoch, read_error(folder).first_line, config)
    except CifarlabError as e:
        return RunStatus(folder, "failed", epoch, str(e), config, damaged=True)


def run_status(folder: RunFolder, wanted: TrainConfig | None = None, *, head: bool = False) -> RunStatus:
    """The state of ``folder`` (see the module docstring); ``wanted``: the config it should hold;
    ``head``: read only the head of a large ``result.json``."""
    if not folder.exists(CONFIG):  # nothing started, or a run that failed before its folder was made (error.json)
        return _failed(folder, 0, None) if folder.exists(ERROR) else RunStatus(folder, "new")
    try:
        config = read_config(folder)
    except CifarlabError as e:
        return RunStatus(folder, "failed", 0, str(e), damaged=True)
    if wanted is not None:
        diff = config_differences(config, wanted)
        if diff:
            return RunStatus(folder, "changed", 0, f"the folder holds a run with different {', '.join(diff)}", config,
                             differences=tuple(diff))
    holder = lock_holder(folder)
    if folder.exists(RESULT) and holder is None:
        try:
            record = read_result_head(folder) if head else read_result(folder)
        except CifarlabError as e:
            return RunStatus(folder, "failed", 0, str(e), config, damaged=True)
        return RunStatus(folder, "done", int(record.get("epochs") or config.epochs), f"top-1 {record['top1']:.4f}",
                         config, record)
    checkpoint = newest_intact(folder)
    epoch = checkpoint.epoch if checkpoint else 0
    if holder is not None:
        return RunStatus(folder, "running", epoch, f"by {holder}", config, checkpoint=checkpoint)
    if folder.exists(ERROR):
        return replace(_failed(folder, epoch, config), checkpoint=checkpoint)
    detail = f"after epoch {epoch} of {config.epochs}" if epoch else "before its first checkpoint"
    return RunStatus(folder, "interrupted", epoch, detail, config, checkpoint=checkpoint)
