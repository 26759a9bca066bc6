"""The whole training step as one CUDA graph (the fast path), with an eager fallback.

``GraphedTrainStep`` captures forward, loss, backward, optimizer step and the
metric accumulation once, then replays them: one launch per step instead of
hundreds, and no host synchronisation inside the step.

- Static buffers: every batch is copied into ``static_x`` / ``static_y``; the
  batch shape is fixed (drop the last partial batch). Augmentation stays outside
  the graph: the ``DeviceLoader`` draws its randomness from its own generator and
  produces the batch, the step copies it in.
- Learning rate: a graph replays the kernels it captured with the scalars they
  had, so a float LR would be frozen. Every param group's ``lr`` must be a 0-dim
  device tensor, written in place by ``step(x, y, lr)`` (or by a torch LR
  scheduler, which fills tensor LRs in place). ``make_optimizer`` builds such an
  optimizer: SGD ``fused=True`` (its fused kernel reads the LR tensor; the
  foreach SGD path turns a tensor LR into a Python number, a host sync that
  capture forbids) and AdamW ``fused=True, capturable=True`` (Adam/AdamW refuse
  capture unless ``capturable``).
- Metrics stay on the device: ``loss_sum`` (sum of per-batch mean loss x batch
  size), ``correct`` (top-1 hits) and ``nonfinite_step`` (index of the first
  step whose loss was NaN/inf, -1 while none); read them every N steps, outside
  the timed region.
- BatchNorm running statistics update inside the graph like in eager mode (its
  default momentum; ``momentum=None`` needs a host sync and cannot be captured).
  Dropout and drop-path draw from the default CUDA generator, which graphs
  advance on every replay.
- Capture needs a few warm-up steps on a side stream (lazy optimizer state,
  cuDNN autotuning). They run on the sample batch and then the model weights,
  buffers and optimizer state are put back, so the first real step starts from
  exactly the state the caller handed in (new optimizer state is zeroed, which
  is a fresh state for SGD without dampening and for Adam/AdamW).

- The graph holds the addresses of the parameters, buffers and optimizer state:
  load a checkpoint before building the step (``load_state_dict`` of a module
  copies in place and is fine later; an optimizer's ``load_state_dict`` replaces
  its state tensors and is not). Switching the model to ``eval()`` for
  evaluation in between is fine: replays run the captured training-mode step.

On the CPU, or with ``graph=False``, the same step body runs eagerly, so results
can be compared and tested anywhere.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterable

import torch
import torch.nn as nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_optimizer(params: Iterable, kind: str = "sgd", lr: float = 0.1, device: torch.device | str = "cpu", *,
                   momentum: float = 0.9, nesterov: bool = True, betas: tuple[float, float] = (0.9, 0.999),
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD or AdamW whose learning rate is one 0-dim tensor on ``device``, shared by every group, safe to capture."""
    lr_t = torch.tensor(float(lr), device=device)
    cuda = torch.device(device).type == "cuda"
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr_t, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay, fused=cuda, foreach=False)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr_t, betas=betas, weight_decay=weight_decay, fused=cuda, capturable=cuda,
                                 foreach=False)
    raise ValueError(f"unknown optimizer {kind!r}; choose sgd or adamw")


class GraphedTrainStep:
    """One training step, captured as a CUDA graph on CUDA, eager elsewhere (or with ``graph=False``).

    ``model`` must already be on the device (in its memory format); ``sample_x``/``sample_y``
    fix the batch shape and are used for the warm-up. ``autocast_dtype`` (e.g. ``torch.bfloat16``)
    runs the forward under autocast; the loss is computed in float32 as in the engine.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 sample_x: torch.Tensor, sample_y: torch.Tensor, *, autocast_dtype: torch.dtype | None = None,
                 grad_clip: float = 0.0, graph: bool | None = None, warmup_steps: int = 3):
        self.model, self.optimizer, self.loss_fn = model.train(), optimizer, loss_fn
        self.autocast_dtype, self.grad_clip = autocast_dtype, grad_clip
        dev = sample_x.device
        self.static_x, self.static_y = sample_x.clone(), sample_y.clone()  # clone keeps channels_last
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), dtype=torch.long, device=dev)
        self.nonfinite_step = torch.full((), -1, dtype=torch.long, device=dev)
        self.step_index = torch.zeros((), dtype=torch.long, device=dev)
        self.images = 0  # host-side count since reset_metrics (the batch size is fixed)
        use_graph = dev.type == "cuda" if graph is None else graph
        if use_graph and not all(isinstance(g["lr"], torch.Tensor) and g["lr"].device == dev
                                 for g in optimizer.param_groups):
            raise ValueError("a graphed step needs lr=torch.tensor(..., device=the model's device) in every "
                             "param group (see make_optimizer); a float LR would be frozen into the graph")
        self.graph = self._capture(warmup_steps) if use_graph else None

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    @property
    def nonfinite(self) -> torch.Tensor:
        """Device bool: some step since construction had a non-finite loss."""
        return self.nonfinite_step >= 0

    def first_nonfinite_step(self) -> int | None:
        """0-based index of the first step with a non-finite loss, or None. Syncs the host: call every N steps."""
        bad = int(self.nonfinite_step.item())
        return bad if bad >= 0 else None

    def reset_metrics(self) -> None:
        """Zero the loss and accuracy accumulators (in place: the graph keeps writing to the same tensors)."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self.images = 0

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float | torch.Tensor | None = None) -> None:
        """Train on one batch; ``lr`` (float or 0-dim device tensor) is written into every group first."""
        if lr is not None:
            self._set_lr(lr)
        if self.graph is None:
            self.optimizer.zero_grad(set_to_none=True)
            self._body(x, y)
        else:
            if x.shape != self.static_x.shape or y.shape != self.static_y.shape:
                raise ValueError(f"a graphed step takes batches of shape {tuple(self.static_x.shape)}, "
                                 f"got {tuple(x.shape)}; drop the last partial batch")
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
        self.images += y.shape[0]

    def _set_lr(self, lr: float | torch.Tensor) -> None:
        for group in self.optimizer.param_groups:
            cur = group["lr"]
            if not isinstance(cur, torch.Tensor):
                group["lr"] = float(lr)
            elif isinstance(lr, torch.Tensor):
                cur.copy_(lr)
            else:
                cur.fill_(lr)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # The autocast weight cache would hold tensors made during capture; graphs need it off.
        return torch.autocast(self.static_x.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def _body(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self._autocast():
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), y)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            self.loss_sum.add_(loss.detach() * y.shape[0])
            self.correct.add_((logits.argmax(1) == y).sum())
            first_bad = ~torch.isfinite(loss) & (self.nonfinite_step < 0)
            self.nonfinite_step.copy_(torch.where(first_bad, self.step_index, self.nonfinite_step))
            self.step_index.add_(1)

    def _capture(self, warmup_steps: int) -> torch.cuda.CUDAGraph:
        saved = self._snapshot()
        side = torch.cuda.Stream(self.static_x.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # warm-up runs uncaptured, on purpose
            for _ in range(max(warmup_steps, 1)):
                self.optimizer.zero_grad(set_to_none=True)
                self._body(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the grads from the graph's pool
        with torch.cuda.graph(graph):
            self._body(self.static_x, self.static_y)
        self._restore(saved)
        return graph

    def _state_tensors(self) -> list[torch.Tensor]:
        model = list(self.model.state_dict(keep_vars=True).values())  # parameters and buffers (BN statistics)
        opt = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return model + opt

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
