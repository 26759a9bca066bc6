"""The one path every caller trains through: ``make_train_step`` builds, ``train_epoch`` runs an epoch.

``fit`` (engine.py), ``cifarlab profile`` (profile.py), the benchmarks and the tests all build their step here,
so the order the CUDA-graph step needs is written once: optimizer, LR schedule (its base learning rates stay
floats), weight EMA, checkpoint state, LR tensors on the device, then ``TrainStep`` (captured last: the graph
holds the addresses of everything loaded before it; see ``step.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from .. import CifarlabError
from ..config import TrainConfig
from ..environment import synchronize
from ..run import Checkpoint
from .checkpoint import load_checkpoint
from .ema import WeightEma
from .metrics import autocast_dtype
from .optim import build_optimizer, build_scheduler, load_optimizer_state
from .step import TrainStep, lr_on_device


class NonFiniteLossError(CifarlabError):
    """A step's loss or gradient norm was NaN/inf; ``epoch`` and ``step`` (1-based) name the first such step."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step


@dataclass
class Training:
    """What ``make_train_step`` builds: the step and the state a checkpoint saves."""

    step: TrainStep
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: WeightEma | None
    steps_per_epoch: int
    resumed: dict[str, Any] | None = None  # the rest of the checkpoint it started from (epoch, RNG, history)

    @property
    def eval_model(self) -> nn.Module:
        """The weights to evaluate: the EMA's where there is one."""
        return self.ema.module if self.ema is not None else self.step.model


@dataclass
class EpochStats:
    images: int
    seconds: float  # the training steps only, device synchronised before and after
    loss: float  # mean training loss
    top1: float  # training accuracy against the hard (or arg-max soft) label


def make_train_step(model: nn.Module, cfg: TrainConfig, device: torch.device | str, *, steps_per_epoch: int,
                    graph: bool = False, sample: tuple[torch.Tensor, torch.Tensor] | None = None,
                    forward: Callable[[torch.Tensor], torch.Tensor] | None = None, capturable: bool | None = None,
                    checkpoint: Checkpoint | None = None) -> Training:
    """The training step of ``model`` under ``cfg`` (optimizer, schedule, EMA, label smoothing, clipping, autocast).

    ``graph``: capture it as one CUDA graph on ``sample``'s shapes. ``capturable`` (default: ``graph``) gives the
    graph path's optimizer (fused kernels reading LR tensors on the device) also to an eager step. ``forward`` may
    wrap the model (DDP, ``torch.compile``). ``checkpoint``: a checkpoint whose weights, EMA, optimizer and
    scheduler state are loaded before the capture; the rest of it is returned as ``Training.resumed``.
    """
    device = torch.device(device)
    capturable = graph if capturable is None else capturable
    optimizer = build_optimizer(model, cfg, capturable=capturable)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)  # before lr_on_device: base LRs stay floats
    ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay else None
    resumed = None
    if checkpoint is not None:
        resumed = load_checkpoint(checkpoint, model, ema.module if ema else None, map_location=device)
        _restore(optimizer, scheduler, resumed, str(checkpoint.path))
    lr_on_device(optimizer, device if capturable else None)
    step = TrainStep(model, optimizer, forward=forward, label_smoothing=cfg.label_smoothing,
                     autocast_dtype=autocast_dtype(cfg.precision, device), grad_clip=cfg.grad_clip, ema=ema,
                     graph=graph, sample=sample)
    return Training(step, optimizer, scheduler, ema, steps_per_epoch, resumed)


def _restore(optimizer: torch.optim.Optimizer, scheduler, state: dict[str, Any], where: str) -> None:
    """Load a checkpoint's optimiser and schedule state; a state that does not fit them is one line."""
    try:
        load_optimizer_state(optimizer, state.pop("optimizer"))
        scheduler.load_state_dict(state.pop("scheduler"))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        raise CifarlabError(f"{where}: the optimiser or schedule state does not fit this run "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None


def train_epoch(training: Training, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                first_step: int | None = None, nan_check_every: int = 50, progress=None) -> EpochStats:
    """One epoch of steps, the LR schedule stepped after each; the host reads the device's non-finite flag every
    ``nan_check_every`` steps and after the last (raising ``NonFiniteLossError``), then the loss and accuracy.

    ``first_step``: the global index of the epoch's first step (a resumed run starts mid-way; None: go on
    counting). ``progress``: a tqdm bar moved at the checks, where the host waits anyway.
    """
    step, device = training.step, training.step.device
    step.reset_metrics()
    if first_step is not None:
        step.start_at(first_step)
    images = done = 0
    synchronize(device)
    t0 = time.perf_counter()
    for done, (x, y) in enumerate(batches, 1):
        step.step(x, y)
        training.scheduler.step()
        images += len(y)
        if done % nan_check_every == 0:
            _check_finite(training, progress, done)
    if done % nan_check_every:
        _check_finite(training, progress, done)
    synchronize(device)
    seconds = time.perf_counter() - t0
    n = max(images, 1)
    return EpochStats(images, seconds, step.loss_sum.item() / n, step.correct.item() / n)


def _check_finite(training: Training, progress, done: int) -> None:
    bad = training.step.first_nonfinite_step()
    if bad is not None:
        spe = training.steps_per_epoch
        epoch, step = bad // spe + 1, bad % spe + 1
        raise NonFiniteLossError(f"non-finite loss or gradient at epoch {epoch}, step {step} of {spe}; stopped. "
                                 f"The last good checkpoint (epoch {epoch - 1}) is kept; try a lower --lr or "
                                 f"grad_clip", epoch, step)
    if progress is not None:
        progress.update(done - progress.n)


