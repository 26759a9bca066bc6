"""Optimiser and learning-rate schedule from the config.

No weight decay on norms and biases (any parameter with fewer than 2 dims).
Schedules are per step: ``transformers.get_scheduler`` for cosine / linear /
constant with linear warm-up, a multi-step decay at fractions of training, and a
step decay by ``gamma`` every ``step_epochs`` epochs (e.g. halve every 5 epochs), and an
exponential decay by ``gamma`` per epoch after the warm-up, applied smoothly per step.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from ..config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weights; skip norms, biases and what the model lists in ``no_weight_decay()`` (timm's convention:
    position embeddings, class tokens, relative-position bias tables)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and name not in skip else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, capturable: bool = False) -> torch.optim.Optimizer:
    """SGD (nesterov) or AdamW over ``param_groups``; foreach kernels, or with ``capturable`` the fused CUDA
    kernels that read a tensor learning rate on the device (what a CUDA graph step needs, see ``step.py``)."""
    groups = param_groups(model, cfg.weight_decay)
    kernels = {"fused": True} if capturable else {"foreach": True}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               **kernels)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, capturable=capturable, **kernels)


_KERNEL_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state but keep this optimizer's kernel choice (foreach / fused / capturable):
    a run may resume on a different path (eager on the CPU, CUDA graph on a GPU) than the one that saved it."""
    groups = [{**saved, **{k: now[k] for k in _KERNEL_FLAGS if k in now}}
              for saved, now in zip(state["param_groups"], optimizer.param_groups, strict=True)]
    optimizer.load_state_dict({**state, "param_groups": groups})


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.warmup * steps_per_epoch)), max(total - 1, 0))
    if cfg.schedule == "multistep":
        marks = [int(m * total) for m in cfg.milestones]

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return cfg.gamma ** sum(step >= m for m in marks)

        return LambdaLR(optimizer, factor)
    if cfg.schedule == "step":
        every = max(1, int(round(cfg.step_epochs * steps_per_epoch)))

        def step_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return cfg.gamma ** (step // every)

        return LambdaLR(optimizer, step_factor)
    if cfg.schedule == "exponential":

        def exp_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return cfg.gamma ** ((step - warmup) / steps_per_epoch)

        return LambdaLR(optimizer, exp_factor)
    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def steps_per_epoch(num_train: int, batch_size: int, world_size: int = 1) -> int:
    return max(1, (num_train // world_size) // batch_size)

