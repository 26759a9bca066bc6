"""Writing and loading the tensors of per-epoch checkpoints (layout, manifest and pruning: ``run/checkpoints.py``).

A checkpoint folder is built under a temporary name, every file fsynced, ``manifest.json`` (each file's sha256)
written last, then renamed into place; loading takes the newest intact one. Weights are checked against the model
(names, shapes and dtypes from the safetensors header) before any tensor is read, and the training state is read
with torch's weights-only unpickler from a file no larger than the model's tensors allow, so a checkpoint from
elsewhere can neither run code nor make cifarlab allocate more than its own model and optimiser would.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from .. import CifarlabError
from ..io import atomic_open, fsync_dir, fsync_file, sha256_file
from ..run import Checkpoint, RunFolder, prune
from ..run.checkpoints import EMA_WEIGHTS, MANIFEST, STATE, WEIGHTS, folder_name
from ..run.folder import CHECKPOINTS

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
STATE_SLACK_BYTES = 64 << 20  # besides optimiser moments: RNG states, history, the reported epoch's predictions


def save_checkpoint(run: RunFolder, epoch: int, model: nn.Module, state: dict[str, Any],
                    ema: nn.Module | None = None, keep: int = 2) -> Path:
    """Write epoch ``epoch``'s checkpoint atomically, then prune all but the ``keep`` newest (and the temporary
    folders of writes that were killed)."""
    ckpt_dir = run.mkdir(CHECKPOINTS)
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=f".{folder_name(epoch)}."))
    try:
        save_model(model, str(tmp / WEIGHTS))
        if ema is not None:
            save_model(ema, str(tmp / EMA_WEIGHTS))
        with atomic_open(tmp / STATE) as f:
            torch.save(state, f)
        for p in tmp.iterdir():
            fsync_file(p)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        with atomic_open(tmp / MANIFEST, "w") as f:
            json.dump({"epoch": epoch, "files": files}, f, indent=1)
        final = run.path(CHECKPOINTS, folder_name(epoch))
        if os.path.lexists(final) and not run.remove_known((*files, MANIFEST), CHECKPOINTS, folder_name(epoch)):
            raise CifarlabError(f"{final} holds files cifarlab did not write; move it away to continue the run")
        tmp.rename(final)
        fsync_dir(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(run, keep)
    return final


def check_weights(model: nn.Module, files: list[Path], where: str) -> None:
    """Refuse safetensors files that do not fit ``model`` — an unreadable header, or a tensor of another shape or
    dtype than the model's (``load_state_dict`` would silently cast it) — before their data are read."""
    expected = model.state_dict()
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    s, want = f.get_slice(key), expected.get(key)
                    if want is not None and (tuple(s.get_shape()) != tuple(want.shape)
                                             or _DTYPES.get(s.get_dtype()) != want.dtype):
                        raise CifarlabError(f"{where}: {path.name} holds {key} as {s.get_dtype()} "
                                            f"{list(s.get_shape())}; the model has {want.dtype} {list(want.shape)}")
        except (SafetensorError, OSError, ValueError) as e:
            raise CifarlabError(f"{where}: {path.name} is not a readable safetensors file "
                                f"({' '.join(str(e).split())[:200]})") from None


def load_weights(model: nn.Module, path: Path, where: str, device: str | torch.device = "cpu") -> None:
    """Load one safetensors file into ``model`` after :func:`check_weights`; missing or unexpected tensors are one
    line."""
    check_weights(model, [path], where)
    try:
        load_model(model, str(path), device=str(device))
    except (RuntimeError, SafetensorError, OSError, ValueError) as e:
        raise CifarlabError(f"{where}: {path.name} does not fit the model: {' '.join(str(e).split())[:300]}") from None


def _state_limit(model: nn.Module) -> int:
    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 4 * tensors + STATE_SLACK_BYTES  # momentum / Adam moments and their copies, with room to spare


def load_checkpoint(checkpoint: Checkpoint, model: nn.Module, ema: nn.Module | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint's weights (and EMA) into the models and return its training state."""
    where = str(checkpoint.path)
    load_weights(model, checkpoint.path / WEIGHTS, where, map_location)
    if ema is not None and checkpoint.has_ema:
        load_weights(ema, checkpoint.path / EMA_WEIGHTS, where, map_location)
    state_path = checkpoint.path / STATE
    limit = _state_limit(model)
    if state_path.stat().st_size > limit:
        raise CifarlabError(f"{state_path}: {state_path.stat().st_size:,} bytes, more than a training state of this "
                            f"model holds ({limit:,})")
    try:
        state = torch.load(state_path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler and the zip reader raise many types
        raise CifarlabError(f"{state_path}: not a readable training state ({' '.join(str(e).split())[:200]})"
                            ) from None
    if not isinstance(state, dict):
        raise CifarlabError(f"{state_path}: not a training state (holds a {type(state).__name__})")
    return state
