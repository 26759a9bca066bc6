"""Evaluate a run folder's latest intact checkpoint on a split of its own source or of any other."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import torch
from safetensors.torch import load_model

from .. import CifarlabError
from ..config import TrainConfig, read_run_config
from ..data import DeviceLoader, load_data
from ..data.meta import DATASETS
from ..data.testset import load_test_set
from ..io import read_json, write_json
from ..models import build_model
from .checkpoint import check_weights, find_latest
from .metrics import autocast_context, autocast_dtype, correctness_string, evaluate, per_class_accuracy


def load_run_model(run_dir: Path, use_ema: bool = True, device: str | torch.device = "cpu"):
    """(config, model with the newest intact checkpoint's weights, epoch) for a run folder."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise CifarlabError(f"{run_dir} is not a run folder (no config.json)")
    cfg = read_run_config(cfg_path)
    found = find_latest(run_dir / "checkpoints")
    if found is None:
        raise CifarlabError(f"{run_dir} has no intact checkpoint")
    epoch, path, _ = found
    try:
        model = build_model(cfg.model, DATASETS[cfg.dataset].num_classes, cfg.model_kwargs)
    except (TypeError, ValueError) as e:
        raise CifarlabError(f"{cfg_path}: cannot build {cfg.model} with options {cfg.model_kwargs}: {e}") from None
    weights = path / "ema.safetensors" if use_ema and (path / "ema.safetensors").is_file() else path / "model.safetensors"
    check_weights(model, [weights], str(run_dir))
    try:
        load_model(model, str(weights), device=str(device))
    except RuntimeError as e:  # missing or unexpected tensors
        raise CifarlabError(f"{run_dir}: {weights.name} does not fit {cfg.model}: {' '.join(str(e).split())[:300]}"
                            ) from None
    return cfg, model.to(device).eval(), epoch


def _training_normalisation(run_dir: Path, cfg: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the run trained with: from its record, else from its own training data."""
    result = run_dir / "result.json"
    if result.is_file():
        rec = read_json(result)
        if isinstance(rec, dict) and len(rec.get("mean") or ()) == 3 and len(rec.get("std") or ()) == 3:
            return tuple(rec["mean"]), tuple(rec["std"])
    data = load_data(cfg.dataset, cfg.data)
    return data.mean, data.std


def eval_path(run_dir: Path, fingerprint: str, split: str) -> Path:
    """``evals/<fingerprint>.json`` (``<fingerprint>-<split>.json`` for a split other than test)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", fingerprint) + ("" if split == "test" else f"-{split}")
    return run_dir / "evals" / f"{name}.json"


def evaluate_run(run_dir: Path, split: str = "test", use_ema: bool = True, data: str | None = None) -> dict:
    """Score a run's newest intact checkpoint on ``split`` of ``data`` (default: the source it trained on).

    Writes the evaluation to ``evals/<fingerprint>.json`` in the run folder (never touching result.json):
    top-1/top-5, NLL, expected calibration error with its bins, per-class accuracy, per-image correctness,
    the source and its fingerprint. The images are normalised with the run's own training statistics.
    Returns the evaluation plus ``path``, where it was written.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model, epoch = load_run_model(run_dir, use_ema, device)
    test = load_test_set(cfg.dataset, data if data is not None else cfg.data, split, cfg.val_split)
    mean, std = _training_normalisation(run_dir, cfg)
    loader = DeviceLoader(test.images, cfg.eval_batch_size, mean, std, device, channels_last=cfg.channels_last)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ev = evaluate(model, loader, autocast_context(device, autocast_dtype(cfg.precision, device)))
    preds, labels = ev["predictions"], ev["labels"]
    classes = DATASETS[cfg.dataset].num_classes
    out = {"model": cfg.model, "dataset": cfg.dataset, "split": split, "images": len(test.images), "epoch": epoch,
           "weights": "ema" if use_ema and cfg.ema_decay else "model",
           "source": test.source, "source_kind": test.kind, "source_description": test.description,
           "fingerprint": test.fingerprint,
           "top1": round(ev["top1"], 6), "top5": round(ev["top5"], 6), "nll": round(ev["loss"], 6),
           "ece": round(ev["ece"], 6), "calibration": ev["calibration"],
           "per_class_accuracy": [None if math.isnan(v) else v for v in per_class_accuracy(preds, labels, classes)],
           "test_labels": labels.tolist(), "test_predictions": preds.tolist(),
           "test_correct": correctness_string(preds, labels),
           "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = eval_path(run_dir, test.fingerprint, split)
    write_json(path, out)
    return {**out, "path": str(path)}
