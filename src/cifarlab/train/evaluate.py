"""Evaluate a run folder's latest intact checkpoint on a split."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_model

from .. import CifarlabError
from ..config import TrainConfig
from ..data import DeviceLoader, load_data
from ..io import read_json
from ..models import create
from .checkpoint import find_latest
from .metrics import autocast_context, autocast_dtype, evaluate


def load_run_model(run_dir: Path, use_ema: bool = True, device: str | torch.device = "cpu"):
    """(config, model with the newest intact checkpoint's weights, epoch) for a run folder."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise CifarlabError(f"{run_dir} is not a run folder (no config.json)")
    cfg = TrainConfig(**read_json(cfg_path))
    found = find_latest(run_dir / "checkpoints")
    if found is None:
        raise CifarlabError(f"{run_dir} has no intact checkpoint")
    epoch, path, _ = found
    model = create(cfg.model, num_classes=100 if cfg.dataset == "cifar100" else 10, **cfg.model_kwargs)
    weights = path / "ema.safetensors" if use_ema and (path / "ema.safetensors").is_file() else path / "model.safetensors"
    load_model(model, str(weights), device=str(device))
    return cfg, model.to(device).eval(), epoch


def evaluate_run(run_dir: Path, split: str = "test", use_ema: bool = True) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model, epoch = load_run_model(run_dir, use_ema, device)
    data = load_data(cfg.dataset, cfg.data, val_split=cfg.val_split)
    part = getattr(data, split)
    if part is None:
        raise CifarlabError(f"the run has no {split} split (trained with val_split={cfg.val_split})")
    loader = DeviceLoader(part, cfg.eval_batch_size, data.mean, data.std, device, channels_last=cfg.channels_last)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ev = evaluate(model, loader, autocast_context(device, autocast_dtype(cfg.precision, device)))
    return {"model": cfg.model, "dataset": data.name, "split": split, "images": len(part), "epoch": epoch,
            "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"]}
