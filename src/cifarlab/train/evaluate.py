"""Evaluate a run folder's newest intact checkpoint on a split of its own source or of any other."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import torch

from .. import CifarlabError
from ..config import TrainConfig
from ..data import DeviceLoader, load_data
from ..data.meta import DATASETS
from ..data.testset import load_test_set
from ..models import build_model
from ..run import RunFolder, newest_intact, read_config, read_result
from ..run.checkpoints import EMA_WEIGHTS, WEIGHTS
from ..run.folder import EVALS, RESULT
from .checkpoint import load_weights
from .metrics import autocast_context, autocast_dtype, correctness_string, evaluate, per_class_accuracy


def load_run_model(run_dir: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
                   ) -> tuple[TrainConfig, torch.nn.Module, int, bool]:
    """(config, model with the newest intact checkpoint's weights in eval mode, its epoch, whether those are the
    EMA weights) of a run folder."""
    folder = RunFolder(run_dir)
    cfg = read_config(folder)
    found = newest_intact(folder)
    if found is None:
        raise CifarlabError(f"{folder} has no intact checkpoint")
    model = build_model(cfg.model, DATASETS[cfg.dataset].num_classes, cfg.model_kwargs)
    ema = use_ema and found.has_ema
    load_weights(model, found.path / (EMA_WEIGHTS if ema else WEIGHTS), str(folder), device)
    return cfg, model.to(device).eval(), found.epoch, ema


def training_normalisation(folder: RunFolder, cfg: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the run trained with: from its record, else from its own training data."""
    if folder.exists(RESULT):
        rec = read_result(folder)
        if rec.get("mean") is not None and rec.get("std") is not None:
            return tuple(rec["mean"]), tuple(rec["std"])
    data = load_data(cfg.dataset, cfg.data)
    return data.mean, data.std


def eval_name(fingerprint: str, split: str) -> str:
    """``<fingerprint>.json`` (``<fingerprint>-<split>.json`` for a split other than test) under ``evals/``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", fingerprint)[:120].lstrip(".") + ("" if split == "test" else f"-{split}") \
        + ".json"


def evaluate_run(run_dir: Path, split: str = "test", use_ema: bool = True, data: str | None = None) -> dict:
    """Score a run's newest intact checkpoint on ``split`` of ``data`` (default: the source it trained on).

    Writes the evaluation to ``evals/<fingerprint>.json`` in the run folder (never touching result.json):
    top-1/top-5, NLL, expected calibration error with its bins, per-class accuracy, per-image correctness,
    the source and its fingerprint. The images are normalised with the run's own training statistics.
    Returns the evaluation plus ``path``, where it was written.
    """
    folder = RunFolder(run_dir)
    folder.check_layout()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model, epoch, ema = load_run_model(folder.root, use_ema, device)
    test = load_test_set(cfg.dataset, data if data is not None else cfg.data, split, cfg.val_split)
    mean, std = training_normalisation(folder, cfg)
    loader = DeviceLoader(test.images, cfg.eval_batch_size, mean, std, device, channels_last=cfg.channels_last)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ev = evaluate(model, loader, autocast_context(device, autocast_dtype(cfg.precision, device)))
    preds, labels = ev["predictions"], ev["labels"]
    classes = DATASETS[cfg.dataset].num_classes
    out = {"model": cfg.model, "dataset": cfg.dataset, "split": split, "images": len(test.images), "epoch": epoch,
           "weights": "ema" if ema else "model",
           "source": test.source, "source_kind": test.kind, "source_description": test.description,
           "fingerprint": test.fingerprint,
           "top1": round(ev["top1"], 6), "top5": round(ev["top5"], 6), "nll": round(ev["loss"], 6),
           "ece": round(ev["ece"], 6), "calibration": ev["calibration"],
           "per_class_accuracy": [None if math.isnan(v) else v for v in per_class_accuracy(preds, labels, classes)],
           "test_labels": labels.tolist(), "test_predictions": preds.tolist(),
           "test_correct": correctness_string(preds, labels),
           "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = folder.write_json(EVALS, eval_name(test.fingerprint, split), obj=out)
    return {**out, "path": str(path)}
