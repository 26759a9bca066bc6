"""The engine's training step: one body, run eagerly or replayed as one CUDA graph.

``TrainStep.step(x, y)`` does forward (under autocast), cross-entropy (hard or
soft targets, label smoothing), backward, gradient norm (clipped if asked),
optimizer step, weight EMA, and accumulates on the device: ``loss_sum``,
``correct`` (top-1 hits against the hard or arg-max soft label) and
``nonfinite_step``, the global index of the first step whose loss or gradient
norm was NaN/inf (-1 while none). Nothing in the step reads a value back to the
host; the caller reads the flag every N steps (``first_nonfinite_step``).

With ``graph=True`` (CUDA only) the same body is captured once as a CUDA graph
and every step is one replay: one launch instead of hundreds. What capture needs:

- Fixed shapes: every batch is copied into ``static_x`` / ``static_y``; the loader
  drops the last partial batch. Augmentation runs outside the graph, from the
  loader's own (seed, epoch) generator, so it is the same on both paths.
- A learning rate the graph can see change: every param group's ``lr`` is a 0-dim
  device tensor (``lr_on_device``), which a torch LR scheduler fills in place; the
  optimizer reads it on the device (SGD ``fused=True``; AdamW ``fused=True,
  capturable=True``: ``optim.build_optimizer(..., capturable=True)``).
- Warm-up before capture (lazy optimizer state, cuDNN autotuning, compilation),
  on a side stream and on the sample batch; the weights, buffers, optimizer state
  and EMA are then put back, so the first real step starts from exactly the state
  handed in (optimizer state the warm-up created is zeroed: a fresh state for SGD
  without dampening and for Adam/AdamW), and the CUDA generator is put back too.
- The graph holds the addresses of parameters, buffers, optimizer state and the
  accumulators: load checkpoints before building the step. ``load_state_dict``
  of a module copies in place and is fine later; an optimizer's is not.
- BatchNorm statistics update inside the graph as in eager mode (default
  momentum); dropout and drop-path draw from the CUDA generator, which graphs
  advance on every replay. Autocast runs with its weight cache off (a cache
  filled during capture would be stale); the eager path does the same, so both
  paths compute the same thing.

If capture fails (a model with data-dependent control flow, say), the step puts
the state back, keeps ``capture_error`` and runs eagerly.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ema import WeightEma


def lr_on_device(optimizer: torch.optim.Optimizer, device: torch.device | str | None) -> None:
    """Every group's ``lr`` as a 0-dim tensor on ``device`` (the CUDA graph path; a torch LR scheduler then fills
    it in place) or, with None, as a Python float. Build schedulers first: their base learning rates stay floats."""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["lr"] = lr if device is None else torch.tensor(lr, device=device)


class TrainStep:
    """One training step of ``model`` (``forward`` may wrap it: DDP or ``torch.compile``)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None, label_smoothing: float = 0.0,
                 autocast_dtype: torch.dtype | None = None, grad_clip: float | None = None,
                 ema: WeightEma | None = None, graph: bool = False,
                 sample: tuple[torch.Tensor, torch.Tensor] | None = None, warmup_steps: int = 3):
        self.model, self.optimizer = model.train(), optimizer
        self.forward = model if forward is None else forward
        self.label_smoothing, self.autocast_dtype, self.grad_clip, self.ema = (label_smoothing, autocast_dtype,
                                                                               grad_clip, ema)
        self.params = [p for p in model.parameters() if p.requires_grad]
        dev = next(model.parameters()).device
        self.device = dev
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), dtype=torch.long, device=dev)
        self.nonfinite_step = torch.full((), -1, dtype=torch.long, device=dev)
        self.step_index = torch.zeros((), dtype=torch.long, device=dev)
        lrs = [g["lr"] for g in optimizer.param_groups]
        self._lrs = lrs if all(isinstance(lr, torch.Tensor) for lr in lrs) else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_error: str | None = None
        if graph:
            if sample is None:
                raise ValueError("a CUDA graph step needs a sample batch to fix the shapes")
            if not all(isinstance(g["lr"], torch.Tensor) and g["lr"].device == dev for g in optimizer.param_groups):
                raise ValueError("a CUDA graph step needs every param group's lr as a tensor on the model's device "
                                 "(lr_on_device); a float lr would be frozen into the graph")
            self.static_x, self.static_y = sample[0].clone(), sample[1].clone()  # clone keeps channels_last
            self._capture(warmup_steps)

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    def start_at(self, global_step: int) -> None:
        """Set the global index of the next step (for the non-finite report; a resumed run starts mid-way)."""
        self.step_index.fill_(global_step)

    def reset_metrics(self) -> None:
        """Zero the loss and accuracy accumulators in place (the graph keeps writing to the same tensors)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def first_nonfinite_step(self) -> int | None:
        """Global index of the first step with a non-finite loss or gradient, or None. Syncs: call every N steps."""
        bad = int(self.nonfinite_step.item())
        return bad if bad >= 0 else None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._lrs is not None:
            self._keep_lr_tensors()
        if self.graph is None:
            self.optimizer.zero_grad(set_to_none=True)
            self._body(x, y)
            return
        if x.shape != self.static_x.shape or y.shape != self.static_y.shape:
            raise ValueError(f"a CUDA graph step takes batches of shape {tuple(self.static_x.shape)} and "
                             f"{tuple(self.static_y.shape)}, got {tuple(x.shape)} and {tuple(y.shape)}")
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()

    def _keep_lr_tensors(self) -> None:
        """A scheduler that assigns a float (torch's did before 2.2; newer ones fill the tensor) must still reach
        the tensor the optimizer (and the graph) reads."""
        for group, lr in zip(self.optimizer.param_groups, self._lrs, strict=True):
            if group["lr"] is not lr:
                lr.fill_(float(group["lr"]))
                group["lr"] = lr

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def _body(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self._autocast():
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        loss.backward()
        if self.grad_clip:
            norm = nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        with torch.no_grad():
            loss = loss.detach()
            self.loss_sum.add_(loss * y.shape[0])
            target = y if y.ndim == 1 else y.argmax(1)  # mixup / cutmix: the dominant label
            self.correct.add_((logits.detach().argmax(1) == target).sum())
            first_bad = ~(torch.isfinite(loss) & torch.isfinite(norm)) & (self.nonfinite_step < 0)
            self.nonfinite_step.copy_(torch.where(first_bad, self.step_index, self.nonfinite_step))
            self.step_index.add_(1)

    def _capture(self, warmup_steps: int) -> None:
        if self.device.type != "cuda":
            raise ValueError("a CUDA graph step needs the model on a CUDA device")
        saved = self._snapshot()
        rng = torch.cuda.get_rng_state(self.device)  # dropout draws of the warm-up must not shift a resumed run's
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capturable=True.*")  # warm-up is uncaptured on purpose
                for _ in range(max(warmup_steps, 1)):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._body(self.static_x, self.static_y)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)  # backward allocates the grads from the graph's pool
            with torch.cuda.graph(graph):
                self._body(self.static_x, self.static_y)
            torch.cuda.set_rng_state(rng, self.device)
            self.graph = graph
        except RuntimeError as e:
            self.capture_error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            self.optimizer.zero_grad(set_to_none=True)
        self._restore(saved)

    def _state_tensors(self) -> list[torch.Tensor]:
        tensors = list(self.model.state_dict(keep_vars=True).values())  # parameters and buffers (BN statistics)
        tensors += [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return tensors + (self.ema.tensors() if self.ema is not None else [])

    def _snapshot(self) -> dict[int, torch.Tensor]:
        return {id(t): t.detach().clone() for t in self._state_tensors()}

    @torch.no_grad()
    def _restore(self, saved: dict[int, torch.Tensor]) -> None:
        """Undo the warm-up in place (the graph holds these tensors' addresses)."""
        for t in self._state_tensors():
            if id(t) in saved:
                t.copy_(saved[id(t)])
            else:
                t.zero_()  # optimizer state the warm-up created
        for t in (self.loss_sum, self.correct, self.step_index):
            t.zero_()
        self.nonfinite_step.fill_(-1)
