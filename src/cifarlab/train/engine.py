"""One training engine for every model: data on the device, accelerate, one loop.

``fit(cfg, run_dir)`` trains ``cfg.model`` and writes the run folder (its layout and readers: ``cifarlab.run``):
``config.json``, one ``metrics.jsonl`` line per epoch, a checkpoint per epoch, ``result.json`` at the end, and
the experiment trackers' files (``tracking.py``). The run's lock is held while it trains.

The step is built by ``loop.make_train_step`` and every epoch runs through ``loop.train_epoch`` (the one path
``cifarlab profile``, the benchmarks and the tests take too). On a single CUDA device the step is captured once
as a CUDA graph and replayed (``cuda_graph``), elsewhere it runs eagerly; both run the same body. Metrics stay
on the device; the host reads the non-finite flag every ``nan_check_every`` steps and the epoch's loss and
accuracy after its last step.

Timing: ``epoch_seconds`` and ``images_per_second`` cover the training steps only (device synchronised before
and after the epoch's steps; augmentation, the steps and the LR schedule inside, no evaluation, no checkpoint,
no graph capture); ``train_seconds`` is the whole wall time of the run: data decode, model build, graph capture
or compilation, evaluation and checkpoints included.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from .. import CifarlabError
from ..config import TrainConfig, cuda_graph_step
from ..data import BatchAugment, CifarData, DeviceLoader, describe, load_data, subsample_train
from ..environment import environment
from ..models import build_model, count_macs, count_params
from ..models.complexity import MAC_CONVENTION
from ..run import Checkpoint, RunFolder, RunStatus, hold_lock, read_metrics, run_status
from ..run.folder import CONFIG, ERROR, METRICS, RESULT, TENSORBOARD
from ..run.records import metrics_line
from .checkpoint import save_checkpoint
from .loop import EpochStats, NonFiniteLossError, Training, make_train_step, train_epoch
from .metrics import (
    autocast_context,
    correctness_string,
    evaluate,
    measure_inference,
    peak_memory_bytes,
    per_class_accuracy,
    superclass_accuracy,
)
from .tracking import finish_tracking, log_epoch, start_tracking, tracker_names


@dataclass
class Selected:
    """The epoch whose test figures the run reports: the last, or the best on the validation split."""

    epoch: int
    top1: float
    top5: float
    loss: float
    predictions: torch.Tensor
    labels: torch.Tensor
    ece: float | None = None
    calibration: dict | None = None  # None when the epoch predates calibration records
    val_top1: float | None = None
    val_top5: float | None = None

    @classmethod
    def of(cls, epoch: int, evals: dict[str, dict]) -> Selected:
        t, v = evals["test"], evals.get("val")
        return cls(epoch, t["top1"], t["top5"], t["loss"], torch.from_numpy(t["predictions"]),
                   torch.from_numpy(t["labels"]), t["ece"], t["calibration"],
                   v["top1"] if v else None, v["top5"] if v else None)

    def to_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "val_top1": self.val_top1, "val_top5": self.val_top5, "top1": self.top1,
                "top5": self.top5, "loss": self.loss, "ece": self.ece, "calibration": self.calibration,
                "predictions": self.predictions, "labels": self.labels}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> Selected:
        return cls(int(s["epoch"]), float(s["top1"]), float(s["top5"]), float(s["loss"]), s["predictions"],
                   s["labels"], s.get("ece"), s.get("calibration"), s.get("val_top1"), s.get("val_top5"))


@dataclass
class History:
    """What a run carries from epoch to epoch, saved in each checkpoint and restored on ``--resume``."""

    epoch_seconds: list[float] = field(default_factory=list)
    wall_before: float = 0.0  # wall time of the earlier sessions of a resumed run
    selected: Selected | None = None
    train_step: list[str] = field(default_factory=list)  # cuda_graph or eager, per session

    def to_state(self, wall_now: float) -> dict[str, Any]:
        return {"epoch_seconds": list(self.epoch_seconds), "wall_before": self.wall_before + wall_now,
                "selected": self.selected.to_state() if self.selected else None, "train_step": list(self.train_step)}

    @classmethod
    def from_state(cls, s: Any, where: str) -> History:
        try:
            sel = s["selected"]
            return cls([float(x) for x in s["epoch_seconds"]], float(s["wall_before"]),
                       Selected.from_state(sel) if sel is not None else None,
                       [str(x) for x in s.get("train_step", [])])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CifarlabError(f"{where}: the training state's history is damaged") from None


@dataclass
class Session:
    """One call of ``fit``: the config, the run folder, the processes and the data."""

    cfg: TrainConfig
    folder: RunFolder
    accelerator: Accelerator
    data: CifarData
    wall_start: float
    graph: bool = False  # the step runs as one CUDA graph
    fresh: bool = False  # this call made the run folder (nothing of an earlier session is in it)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def wall(self) -> float:
        return time.perf_counter() - self.wall_start


def fit(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, data: CifarData | None = None,
        on_epoch_end: Callable[[int, torch.nn.Module, DeviceLoader], None] | None = None) -> dict:
    """Train ``cfg`` into ``run_dir`` and return the run record (also written to ``result.json``).

    ``on_epoch_end(epoch, model, train_loader)`` is called on every process after each
    epoch's checkpoint (for tests, progress reporting and fault injection).
    """
    wall_start = time.perf_counter()
    folder = RunFolder(run_dir)
    status = _resumable_status(folder, cfg) if resume and not overwrite else None
    if status is not None and status.state == "done":
        return status.record
    accelerator = _accelerator(cfg, folder)
    graph = _use_cuda_graph(cfg, accelerator.device, accelerator.num_processes)
    session = Session(cfg, folder, accelerator, _run_data(cfg, accelerator, data), wall_start, graph)
    _set_determinism(cfg)
    model = build_model(cfg.model, session.data.num_classes, cfg.model_kwargs)  # options checked and sized first
    if session.main:  # only now, with data and model known to be good, does the run folder appear
        session.fresh = _prepare_run_dir(folder, cfg, resume, overwrite)
    accelerator.wait_for_everyone()
    with hold_lock(folder) if session.main else contextlib.nullcontext():
        if session.main:
            folder.remove(ERROR)
        for n in session.data.notes:
            accelerator.print(n)
        result = _train(session, model, status if resume else None, progress, on_epoch_end)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _train(session: Session, model: torch.nn.Module, resumed: RunStatus | None, progress: bool,
           on_epoch_end: Callable | None) -> dict:
    """Build (or, with the ``resumed`` folder's status, restore) the step, run the remaining epochs, and write the
    record."""
    cfg, folder, device = session.cfg, session.folder, session.device
    params, macs = count_params(model), count_macs(model)
    model = model.to(device=device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    train_loader, eval_loaders = _loaders(session)
    checkpoint = _resume_point(session, resumed) if resumed is not None else None
    start_epoch = checkpoint.epoch + 1 if checkpoint else 1
    forward = session.accelerator.prepare_model(model) if session.world > 1 else model  # DDP across processes
    if cfg.compile:
        forward = torch.compile(forward)
    training = make_train_step(model, cfg, device, steps_per_epoch=len(train_loader), graph=session.graph,
                               forward=forward,
                               sample=_first_batch(train_loader, start_epoch) if session.graph else None,
                               checkpoint=checkpoint)
    history = _start_history(training, session, checkpoint)
    try:
        start_tracking(session.accelerator, cfg, folder, resumed_epoch=start_epoch - 1)
    except CifarlabError:
        if session.fresh:  # no epoch yet: remove the folder begun above, so that the same command can run again
            shutil.rmtree(folder.root, ignore_errors=True)
        raise
    autocast = autocast_context(device, training.step.autocast_dtype)
    session.accelerator.print(_header(session, params, macs, training))
    for epoch in range(start_epoch, cfg.epochs + 1):
        train_loader.set_epoch(epoch)
        stats = _train_epoch(session, training, train_loader, epoch, progress)
        history.epoch_seconds.append(round(stats.seconds, 4))
        row = _epoch_row(epoch, stats, training, session.world)
        if epoch == cfg.epochs or epoch % cfg.eval_every == 0:
            evals = {split: evaluate(training.eval_model, loader, autocast) for split, loader in eval_loaders.items()}
            row.update(_eval_columns(evals))
            history.selected = _select(history.selected, evals, epoch, epoch == cfg.epochs)
        if session.main:
            folder.append_line(METRICS, metrics_line(row))
            _save(session, epoch, training, history)
            log_epoch(session.accelerator, folder, row)  # after the checkpoint: a resumed run logs no epoch twice
        session.accelerator.print(_epoch_line(row, cfg.epochs))
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, train_loader)
        session.accelerator.wait_for_everyone()
    if not session.main:
        return {}
    result = _result(session, history, _measurements(session, training, params, macs))
    folder.write_json(RESULT, obj=result)
    finish_tracking(session.accelerator, folder, result)
    session.accelerator.print(f"done: test top-1 {result['top1']:.2%}, top-5 {result['top5']:.2%} "
                              f"(epoch {result['selected_epoch']}) -> {folder.path(RESULT)}")
    return result


def _resumable_status(folder: RunFolder, cfg: TrainConfig) -> RunStatus:
    """The status of the folder ``--resume`` continues (a finished run's record is returned as it is); one of
    another config, one being trained, or one with a damaged file is refused."""
    status = run_status(folder, cfg)
    if status.damaged:
        raise CifarlabError(status.detail)
    if status.state == "changed":
        raise CifarlabError(f"--resume: the config differs from the saved run in {', '.join(status.differences)}; "
                            f"use --overwrite to start again")
    if status.state == "running":
        raise CifarlabError(f"{folder} is being trained {status.detail}; wait for it or stop it first")
    return status


def _prepare_run_dir(folder: RunFolder, cfg: TrainConfig, resume: bool, overwrite: bool) -> bool:
    """Create the run folder, replace it (``overwrite``) or keep it to resume (the same config only); returns
    whether it was made afresh."""
    root = folder.root
    if root.exists() and any(root.iterdir()):
        folder.check_layout()
        if overwrite:
            if not folder.is_file(CONFIG):
                raise CifarlabError(f"{root} holds files but no run; --overwrite replaces only a run folder")
            shutil.rmtree(root)  # removes links themselves, never what they point to
        elif not resume:
            raise CifarlabError(f"{root} already holds a run; pass --resume to continue it or --overwrite to "
                                f"replace it")
        elif folder.exists(CONFIG):  # the same config: checked with the folder's status before anything was loaded
            return False
    folder.write_json(CONFIG, obj=cfg.model_dump(mode="json"))
    return True


def _accelerator(cfg: TrainConfig, folder: RunFolder) -> Accelerator:
    """Processes, devices and trackers; mixed precision is the step's own autocast (``autocast_dtype``)."""
    cuda = torch.cuda.is_available()
    if cfg.precision == "bf16" and not cuda:
        raise CifarlabError("precision bf16 needs a GPU here; use precision auto or fp32 on the CPU")
    root = folder.root
    return Accelerator(cpu=not cuda, log_with=tracker_names(cfg) or None,
                       project_config=ProjectConfiguration(project_dir=str(root), logging_dir=str(root / TENSORBOARD)))


def _use_cuda_graph(cfg: TrainConfig, device: torch.device, world: int) -> bool:
    if cfg.cuda_graph == "off":
        return False
    if cfg.cuda_graph == "on" and not (device.type == "cuda" and world == 1):
        raise CifarlabError(f"cuda_graph on needs a single-process run on a CUDA device (here: {device}, "
                            f"{world} process(es)); use cuda_graph auto or off")
    return cuda_graph_step(cfg, device.type, world)


def _set_determinism(cfg: TrainConfig) -> None:
    set_seed(cfg.seed)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Any, where: str) -> None:
    try:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, RuntimeError, ValueError):
        raise CifarlabError(f"{where}: the training state's random-number state is damaged") from None


def _run_data(cfg: TrainConfig, accelerator: Accelerator, data: CifarData | None) -> CifarData:
    """The run's splits (``train_subset`` applied), refused when one batch per process does not fit."""
    with accelerator.main_process_first():
        data = data or load_data(cfg.dataset, cfg.data, val_split=cfg.val_split)
    if cfg.train_subset and cfg.train_subset < len(data.train):
        data = subsample_train(data, cfg.train_subset, seed=cfg.seed)
    per_process = len(data.train) // accelerator.num_processes
    if cfg.batch_size > per_process:
        raise CifarlabError(f"batch_size {cfg.batch_size} is larger than the training split per process "
                            f"({per_process} images)")
    return data


def _loaders(session: Session) -> tuple[DeviceLoader, dict[str, DeviceLoader]]:
    """This process's slice of the training split (augmented on the device) and the evaluation splits."""
    cfg, data, device = session.cfg, session.data, session.device
    aug = BatchAugment.from_config(cfg.augment, data.mean, data.std, device, num_classes=data.num_classes)
    train = DeviceLoader(data.train, cfg.batch_size, data.mean, data.std, device, train=True, augment=aug,
                         seed=cfg.seed, rank=session.accelerator.process_index, world_size=session.world,
                         channels_last=cfg.channels_last)
    evals = {s: DeviceLoader(getattr(data, s), cfg.eval_batch_size, data.mean, data.std, device,
                             channels_last=cfg.channels_last)
             for s in ("val", "test") if getattr(data, s) is not None}
    return train, evals


def _resume_point(session: Session, status: RunStatus) -> Checkpoint | None:
    """The newest intact checkpoint to continue from (found by the folder's status, not searched again); metric
    lines after it are dropped (they are written again)."""
    folder, print_ = session.folder, session.accelerator.print
    found = status.checkpoint
    if found is None and folder.listdir("checkpoints"):
        print_(f"no intact checkpoint in {folder.path('checkpoints')}; starting again from epoch 1")
    for note in found.notes if found else []:
        print_(note)
    if session.main:
        _keep_metrics(folder, found.epoch if found else 0)
    if found:
        print_(f"resuming {folder} after epoch {found.epoch}")
    return found


def _keep_metrics(folder: RunFolder, upto_epoch: int) -> None:
    """Drop the metric lines after the checkpoint a run resumes from (they will be produced again); the file is
    replaced atomically, so a kill while rewriting loses none of the kept lines."""
    if not folder.exists(METRICS):
        return
    keep = [r for r in read_metrics(folder) if r["epoch"] <= upto_epoch]
    with folder.open_write(METRICS) as f:
        f.write("".join(metrics_line(r) + "\n" for r in keep))


def _first_batch(loader: DeviceLoader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch that fixes the graph's shapes; a fresh iterator per epoch, so nothing is consumed."""
    loader.set_epoch(epoch)
    return next(iter(loader))


def _start_history(training: Training, session: Session, checkpoint: Checkpoint | None) -> History:
    """The resumed run's history, with its RNG state put back, or a fresh one; and which step runs now."""
    history = History()
    if training.resumed is not None:
        where = str(checkpoint.path if checkpoint else session.folder)
        _set_rng_state(training.resumed.get("rng"), where)
        history = History.from_state(training.resumed.get("history"), where)
    if training.step.capture_error:
        session.accelerator.print(f"CUDA graph capture failed ({training.step.capture_error}); training eagerly")
    history.train_step.append("cuda_graph" if training.step.graphed else "eager")
    return history


def _header(session: Session, params: int, macs: int, training: Training) -> str:
    cfg, data = session.cfg, session.data
    return (f"{cfg.model}: {params:,} params, {macs / 1e6:.2f} M MACs | {data.name} ({data.kind}) "
            f"{data.split_sizes()} | {cfg.epochs} epochs x {training.steps_per_epoch} steps, batch "
            f"{cfg.batch_size}x{session.world} on {session.device}"
            f"{' (CUDA graph step)' if training.step.graphed else ''}")


def _train_epoch(session: Session, training: Training, loader: DeviceLoader, epoch: int,
                 progress: bool) -> EpochStats:
    """``train_epoch`` under a progress bar; a non-finite loss is also recorded in ``error.json``."""
    cfg, spe = session.cfg, training.steps_per_epoch
    bar = tqdm(total=spe, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not (progress and session.main),
               dynamic_ncols=True)
    try:
        return train_epoch(training, loader, first_step=(epoch - 1) * spe, nan_check_every=cfg.nan_check_every,
                           progress=bar)
    except NonFiniteLossError as e:
        if session.main:
            session.folder.write_json(ERROR, obj={"error": str(e), "epoch": e.epoch, "step": e.step})
        raise
    finally:
        bar.close()


def _epoch_row(epoch: int, stats: EpochStats, training: Training, world: int) -> dict:
    return {"epoch": epoch, "lr": float(training.optimizer.param_groups[0]["lr"]),
            "train_loss": round(stats.loss, 5), "train_top1": round(stats.top1, 5),
            "epoch_seconds": round(stats.seconds, 4),
            "images_per_second": round(stats.images * world / stats.seconds, 1)}


def _eval_columns(evals: dict[str, dict]) -> dict:
    cols = {}
    for split, ev in evals.items():
        cols.update({f"{split}_top1": round(ev["top1"], 5), f"{split}_top5": round(ev["top5"], 5),
                     f"{split}_loss": round(ev["loss"], 5)})
    return cols


def _save(session: Session, epoch: int, training: Training, history: History) -> None:
    """This epoch's checkpoint: weights, EMA, optimizer, scheduler, RNG and the history so far."""
    state = {"epoch": epoch, "optimizer": training.optimizer.state_dict(),
             "scheduler": training.scheduler.state_dict(), "rng": _rng_state(),
             "history": history.to_state(session.wall())}
    save_checkpoint(session.folder, epoch, training.step.model, state,
                    training.ema.module if training.ema else None, session.cfg.keep_checkpoints)


def _select(selected: Selected | None, evals: dict, epoch: int, last: bool) -> Selected | None:
    """Which epoch's test numbers the run reports: the last, or the best on the validation split."""
    if "test" not in evals:
        return selected
    if "val" in evals:
        return Selected.of(epoch, evals) if selected is None or evals["val"]["top1"] > selected.val_top1 else selected
    return Selected.of(epoch, evals) if last else selected


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}", f"loss {row['train_loss']:.4f}",
             f"train {row['train_top1']:6.2%}"]
    for s in ("val", "test"):
        if f"{s}_top1" in row:
            parts.append(f"{s} {row[f'{s}_top1']:6.2%} (top-5 {row[f'{s}_top5']:6.2%})")
    parts += [f"lr {row['lr']:.4g}", f"{row['epoch_seconds']:.2f}s", f"{row['images_per_second']:,.0f} img/s"]
    return "  ".join(parts)


@dataclass
class Measurements:
    """What the record says about the model and the machine, measured once training is over."""

    params: int
    macs: int
    inference: dict
    peak_memory_bytes: int | None
    environment: dict


def _measurements(session: Session, training: Training, params: int, macs: int) -> Measurements:
    cfg, device = session.cfg, session.device
    autocast = autocast_context(device, training.step.autocast_dtype)
    infer = measure_inference(training.eval_model, device, cfg.eval_batch_size, autocast,
                              channels_last=cfg.channels_last)
    return Measurements(params, macs, infer, peak_memory_bytes(device), environment(device))


def _result(session: Session, history: History, m: Measurements) -> dict:
    cfg, data, world, sel = session.cfg, session.data, session.world, history.selected
    preds, labels = sel.predictions.numpy(), sel.labels.numpy()
    epoch_seconds = history.epoch_seconds
    n_train = len(data.train) // world // cfg.batch_size * cfg.batch_size * world
    result = {
        "model": cfg.model, "dataset": data.name, **describe(data),
        "top1": round(sel.top1, 6), "top5": round(sel.top5, 6), "test_loss": round(sel.loss, 6),
        "nll": round(sel.loss, 6), "ece": round(sel.ece, 6) if sel.ece is not None else None,
        "calibration": sel.calibration,
        "selected_epoch": sel.epoch,
        "selection": "best validation top-1" if sel.val_top1 is not None else "final epoch",
        "params": m.params, "macs": m.macs, "mac_convention": MAC_CONVENTION,
        "epochs": cfg.epochs, "seed": cfg.seed,
        "train_seconds": round(history.wall_before + session.wall(), 3),
        "train_step_seconds": round(sum(epoch_seconds), 3),
        "images_per_second": round(n_train * len(epoch_seconds) / max(sum(epoch_seconds), 1e-9), 1),
        "epoch_seconds": epoch_seconds,
        "train_step": "+".join(dict.fromkeys(history.train_step or ["eager"])),
        "device": m.environment["device"], "world_size": world, "git_commit": m.environment["git_commit"],
        "peak_memory_bytes": m.peak_memory_bytes, "inference": m.inference, "environment": m.environment,
        "per_class_accuracy": per_class_accuracy(preds, labels, data.num_classes),
        "test_labels": labels.tolist(), "test_predictions": preds.tolist(),
        "test_correct": correctness_string(preds, labels),
        "config": cfg.model_dump(mode="json"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if sel.val_top1 is not None:
        result.update(val_top1=round(sel.val_top1, 6), val_top5=round(sel.val_top5, 6))
    if data.test.coarse is not None and data.coarse_classes:
        result["per_superclass_accuracy"] = superclass_accuracy(preds, labels, data.test.coarse,
                                                                len(data.coarse_classes))
    if any(math.isnan(v) for v in result["per_class_accuracy"]):
        result["per_class_accuracy"] = [None if math.isnan(v) else v for v in result["per_class_accuracy"]]
    return result

