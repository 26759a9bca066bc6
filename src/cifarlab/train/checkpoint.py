"""Per-epoch checkpoints, written atomically and verified by checksum on load.

Layout: ``checkpoints/epoch-0007/{model.safetensors, ema.safetensors, state.pt,
manifest.json}``. A checkpoint folder is built under a temporary name, every file
fsynced, then renamed into place; ``manifest.json`` (written last) lists each
file's sha256. Loading walks the checkpoints newest first and takes the first
whose files match their checksums, saying in one line which ones it skipped.
Temporary folders left by a write that was killed are ignored, and removed by
the next save.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from .. import CifarlabError
from ..io import atomic_open, fsync_dir, fsync_file, read_json, sha256_file, write_json

_NAME = re.compile(r"^epoch-(\d{4,})$")
_REQUIRED = ("model.safetensors", "state.pt")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _epoch_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def save_checkpoint(ckpt_dir: Path, epoch: int, model: nn.Module, state: dict[str, Any],
                    ema: nn.Module | None = None, keep: int = 2) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".epoch-*"):  # left by a write that was killed; never renamed into place
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=f".epoch-{epoch:04d}."))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        if ema is not None:
            save_model(ema, str(tmp / "ema.safetensors"))
        with atomic_open(tmp / "state.pt") as f:
            torch.save(state, f)
        for p in tmp.iterdir():
            fsync_file(p)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        write_json(tmp / "manifest.json", {"epoch": epoch, "files": files})
        final = ckpt_dir / f"epoch-{epoch:04d}"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in _epoch_dirs(ckpt_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path) -> str | None:
    """None if the checkpoint folder is complete and intact, else the reason it is not."""
    man = path / "manifest.json"
    if not man.is_file():
        return "no manifest (interrupted while writing)"
    try:
        files = read_json(man)["files"]
    except (ValueError, KeyError, TypeError):
        return "unreadable manifest"
    if not isinstance(files, dict) or not set(_REQUIRED) <= set(files):
        return "manifest does not list the weights and the training state"
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if sha256_file(f) != digest:
            return f"{name} fails its checksum"
    return None


def find_latest(ckpt_dir: Path) -> tuple[int, Path, list[str]] | None:
    """The newest intact checkpoint as (epoch, path, notes about skipped ones), or None."""
    notes = []
    for epoch, path in _epoch_dirs(ckpt_dir):
        problem = verify(path)
        if problem is None:
            return epoch, path, notes
        notes.append(f"checkpoint {path.name} is corrupt ({problem}); using an older one")
    return None


def check_weights(model: nn.Module, files: list[Path], where: str) -> None:
    """Refuse safetensors files that do not fit ``model`` — an unreadable header, or a tensor of another shape or
    dtype than the model's (``load_state_dict`` would silently cast it) — before their data are read."""
    expected = model.state_dict()
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                found = {k: f.get_slice(k) for k in f.keys()}
                for key, s in found.items():
                    want = expected.get(key)
                    if want is not None and (tuple(s.get_shape()) != tuple(want.shape)
                                             or _DTYPES.get(s.get_dtype()) != want.dtype):
                        raise CifarlabError(f"{where}: {path.name} holds {key} as {s.get_dtype()} "
                                            f"{list(s.get_shape())}; the model has {want.dtype} {list(want.shape)}")
        except (SafetensorError, OSError, ValueError) as e:
            raise CifarlabError(f"{where}: {path.name} is not a readable safetensors file "
                                f"({' '.join(str(e).split())[:200]})") from None


def load_checkpoint(path: Path, model: nn.Module, ema: nn.Module | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    load_model(model, str(path / "model.safetensors"), device=str(map_location))
    if ema is not None and (path / "ema.safetensors").is_file():
        load_model(ema, str(path / "ema.safetensors"), device=str(map_location))
    return torch.load(path / "state.pt", map_location=map_location, weights_only=True)
