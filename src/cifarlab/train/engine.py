"""One training engine for every model: data on the device, accelerate, one loop.

``fit(cfg, run_dir)`` trains ``cfg.model`` and writes the run folder:

    config.json      the resolved TrainConfig
    metrics.jsonl    one line per epoch (train loss/acc, val/test top-1/top-5, lr, seconds)
    checkpoints/     safetensors weights + optimiser/scheduler/RNG state, every epoch
    result.json      the run record (the README's keys, per-class accuracy, per-image correctness ...)
    tensorboard/     accelerate's TensorBoard tracker (``cfg.report_to``; MLflow and W&B: ``tracking.py``)
    trackers.json    the tracker run ids, so that ``--resume`` continues the same tracker runs

The step is built by ``loop.make_train_step`` and every epoch runs through
``loop.train_epoch`` (the one path ``cifarlab profile``, the benchmarks and the
tests take too). On a single CUDA device the step is captured once as a CUDA
graph and replayed (``cuda_graph``), elsewhere it runs eagerly; both run the
same body. Metrics stay on the device; the host reads the non-finite flag every
``nan_check_every`` steps and the epoch's loss and accuracy after its last step.

Timing: ``epoch_seconds`` and ``images_per_second`` cover the training steps only
(device synchronised before and after the epoch's steps; augmentation, the
steps and the LR schedule inside, no evaluation, no checkpoint, no graph
capture); ``train_seconds`` is the whole wall time of the run: data decode,
model build, graph capture or compilation, evaluation and checkpoints included.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from .. import CifarlabError
from ..config import TrainConfig
from ..data import BatchAugment, CifarData, DeviceLoader, describe, load_data, subsample_train
from ..io import atomic_open, read_json, read_json_lines, write_json
from ..models import build_model, count_macs, count_params
from ..models.complexity import MAC_CONVENTION
from .checkpoint import find_latest, save_checkpoint
from .loop import EpochStats, NonFiniteLossError, Training, make_train_step, train_epoch
from .metrics import (
    autocast_context,
    correctness_string,
    environment,
    evaluate,
    measure_inference,
    peak_memory_bytes,
    per_class_accuracy,
    superclass_accuracy,
)
from .tracking import finish_tracking, log_epoch, start_tracking, tracker_names


@dataclass
class RunFiles:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def error(self) -> Path:
        return self.root / "error.json"


def _prepare_run_dir(files: RunFiles, cfg: TrainConfig, resume: bool, overwrite: bool) -> bool:
    """Returns True when an existing run should be resumed."""
    root = files.root
    if root.exists() and any(root.iterdir()):
        if overwrite:
            shutil.rmtree(root)
        elif not resume:
            raise CifarlabError(f"{root} already holds a run; pass --resume to continue it or --overwrite to replace it")
        elif files.config.exists():
            _check_same_config(files, cfg)
            return True
    root.mkdir(parents=True, exist_ok=True)
    write_json(files.config, cfg.model_dump(mode="json"))
    return False


def _check_same_config(files: RunFiles, cfg: TrainConfig) -> None:
    """--resume continues only the run that was started: the same resolved config."""
    if not files.config.exists():
        return
    saved, now = read_json(files.config), cfg.model_dump(mode="json")
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise CifarlabError(f"--resume: the config differs from the saved run in {', '.join(diff)}; "
                            f"use --overwrite to start again")


def _accelerator(cfg: TrainConfig, root: Path) -> Accelerator:
    """Processes, devices and trackers; mixed precision is the step's own autocast (``autocast_dtype``)."""
    cuda = torch.cuda.is_available()
    if cfg.precision == "bf16" and not cuda:
        raise CifarlabError("precision bf16 needs a GPU here; use precision auto or fp32 on the CPU")
    return Accelerator(cpu=not cuda, log_with=tracker_names(cfg) or None,
                       project_config=ProjectConfiguration(project_dir=str(root), logging_dir=str(root / "tensorboard")))


def _use_cuda_graph(cfg: TrainConfig, device: torch.device, world: int) -> bool:
    if cfg.cuda_graph == "off":
        return False
    possible = device.type == "cuda" and world == 1
    if cfg.cuda_graph == "on" and not possible:
        raise CifarlabError(f"cuda_graph on needs a single-process run on a CUDA device (here: {device}, "
                            f"{world} process(es)); use cuda_graph auto or off")
    return possible and (cfg.cuda_graph == "on" or not cfg.compile)


def _set_determinism(cfg: TrainConfig) -> None:
    set_seed(cfg.seed)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rewrite_metrics(path: Path, upto_epoch: int) -> None:
    """Drop metric lines after the checkpoint we resume from (they will be produced again)."""
    if not path.exists():
        return
    keep = []
    for row in read_json_lines(path):
        if not isinstance(row, dict) or "epoch" not in row:
            break
        if row["epoch"] <= upto_epoch:
            keep.append(json.dumps(row))
    with atomic_open(path, "w") as f:  # a kill while rewriting must not lose the kept lines
        f.write("".join(k + "\n" for k in keep))


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def fit(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, data: CifarData | None = None,
        on_epoch_end: Callable[[int, torch.nn.Module, DeviceLoader], None] | None = None) -> dict:
    """Train ``cfg`` into ``run_dir`` and return the run record (also written to ``result.json``).

    ``on_epoch_end(epoch, model, train_loader)`` is called on every process after each
    epoch's checkpoint (for tests, progress reporting and fault injection).
    """
    wall_start = time.perf_counter()
    files = RunFiles(Path(run_dir))
    if resume and files.result.exists() and not overwrite:
        _check_same_config(files, cfg)
        return read_json(files.result)
    accelerator = _accelerator(cfg, files.root)
    main, device, world = accelerator.is_main_process, accelerator.device, accelerator.num_processes
    graph = _use_cuda_graph(cfg, device, world)
    data = _run_data(cfg, accelerator, data)
    _set_determinism(cfg)
    model = _create_model(cfg, data.num_classes)
    params, macs = count_params(model), count_macs(model)
    resuming = False
    if main:  # only now, with data and model known to be good, does the run folder appear
        resuming = _prepare_run_dir(files, cfg, resume, overwrite)
        files.error.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    for n in data.notes:
        accelerator.print(n)

    model = model.to(device=device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    train_loader, eval_loaders = _loaders(cfg, data, device, accelerator.process_index, world)
    found = _resume_point(files, accelerator, resume, resuming)
    start_epoch = found[0] + 1 if found else 1
    forward = accelerator.prepare_model(model) if world > 1 else model  # DDP across processes
    if cfg.compile:
        forward = torch.compile(forward)
    training = make_train_step(model, cfg, device, steps_per_epoch=len(train_loader), graph=graph, forward=forward,
                               sample=_first_batch(train_loader, start_epoch) if graph else None,
                               checkpoint=found[1] if found else None)
    history = _start_history(training, accelerator)
    try:
        start_tracking(accelerator, cfg, files.root, resumed_epoch=start_epoch - 1)
    except CifarlabError:
        if main and not resuming:  # no epoch yet: remove the folder begun above, so the same command can run again
            shutil.rmtree(files.root, ignore_errors=True)
        raise
    eval_model, autocast = training.eval_model, autocast_context(device, training.step.autocast_dtype)
    accelerator.print(_header(cfg, data, params, macs, world, device, training))
    for epoch in range(start_epoch, cfg.epochs + 1):
        train_loader.set_epoch(epoch)
        stats = _train(training, train_loader, epoch, cfg, files, main, show=progress and main)
        history["epoch_seconds"].append(round(stats.seconds, 4))
        row = _epoch_row(epoch, stats, training, world)
        if epoch == cfg.epochs or epoch % cfg.eval_every == 0:
            evals = {split: evaluate(eval_model, loader, autocast) for split, loader in eval_loaders.items()}
            row.update(_eval_columns(evals))
            history["selected"] = _select(history["selected"], evals, epoch, cfg, epoch == cfg.epochs)
        if main:
            _append_metrics(files.metrics, row)
            _save(files, epoch, training, history, wall_start, cfg.keep_checkpoints)
            log_epoch(accelerator, files.root, row)  # after the checkpoint: a resumed run logs no epoch twice
        accelerator.print(_epoch_line(row, cfg.epochs))
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, train_loader)
        accelerator.wait_for_everyone()

    result = None
    if main:
        result = _result(cfg, data, history, params, macs, eval_model, device, autocast, wall_start, world)
        write_json(files.result, result)
        finish_tracking(accelerator, files.root, result)
        accelerator.print(f"done: test top-1 {result['top1']:.2%}, top-5 {result['top5']:.2%} "
                          f"(epoch {result['selected_epoch']}) -> {files.result}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result if result is not None else {}


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


def _create_model(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    return build_model(cfg.model, num_classes, cfg.model_kwargs)  # model_kwargs checked and sized first


def _loaders(cfg: TrainConfig, data: CifarData, device: torch.device, rank: int,
             world: int) -> tuple[DeviceLoader, dict[str, DeviceLoader]]:
    """This process's slice of the training split (augmented on the device) and the evaluation splits."""
    aug = BatchAugment.from_config(cfg.augment, data.mean, data.std, device, num_classes=data.num_classes)
    train = DeviceLoader(data.train, cfg.batch_size, data.mean, data.std, device, train=True, augment=aug,
                         seed=cfg.seed, rank=rank, world_size=world, channels_last=cfg.channels_last)
    evals = {s: DeviceLoader(getattr(data, s), cfg.eval_batch_size, data.mean, data.std, device,
                             channels_last=cfg.channels_last)
             for s in ("val", "test") if getattr(data, s) is not None}
    return train, evals


def _resume_point(files: RunFiles, accelerator: Accelerator, resume: bool, resuming: bool) -> tuple[int, Path] | None:
    """The newest intact checkpoint to continue from; metric lines after it are dropped (they are written again)."""
    if not resume:
        return None
    main = accelerator.is_main_process
    found = find_latest(files.checkpoints)
    if found:
        epoch, path, notes = found
        for n in notes:
            accelerator.print(n)
        if main:
            _rewrite_metrics(files.metrics, epoch)
        accelerator.print(f"resuming {files.root} after epoch {epoch}")
        return epoch, path
    if resuming:
        if any(files.checkpoints.glob("epoch-*")):
            accelerator.print(f"no intact checkpoint in {files.checkpoints}; starting again from epoch 1")
        if main:
            _rewrite_metrics(files.metrics, 0)
    return None


def _first_batch(loader: DeviceLoader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch that fixes the graph's shapes; a fresh iterator per epoch, so nothing is consumed."""
    loader.set_epoch(epoch)
    return next(iter(loader))


def _start_history(training: Training, accelerator: Accelerator) -> dict:
    """The resumed run's history, with its RNG state put back, or a fresh one; and which step runs now."""
    history = {"epoch_seconds": [], "wall_before": 0.0, "selected": None}
    if training.resumed is not None:
        _set_rng_state(training.resumed["rng"])
        history = training.resumed["history"]
    if training.step.capture_error:
        accelerator.print(f"CUDA graph capture failed ({training.step.capture_error}); training eagerly")
    history.setdefault("train_step", []).append("cuda_graph" if training.step.graphed else "eager")
    return history


def _header(cfg: TrainConfig, data: CifarData, params: int, macs: int, world: int, device: torch.device,
            training: Training) -> str:
    return (f"{cfg.model}: {params:,} params, {macs / 1e6:.2f} M MACs | {data.name} ({data.kind}) "
            f"{data.split_sizes()} | {cfg.epochs} epochs x {training.steps_per_epoch} steps, batch "
            f"{cfg.batch_size}x{world} on {device}{' (CUDA graph step)' if training.step.graphed else ''}")


def _train(training: Training, loader: DeviceLoader, epoch: int, cfg: TrainConfig, files: RunFiles, main: bool,
           show: bool) -> EpochStats:
    """``train_epoch`` under a progress bar; a non-finite loss is also recorded in ``error.json``."""
    spe = training.steps_per_epoch
    bar = tqdm(total=spe, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not show, dynamic_ncols=True)
    try:
        return train_epoch(training, loader, first_step=(epoch - 1) * spe, nan_check_every=cfg.nan_check_every,
                           progress=bar)
    except NonFiniteLossError as e:
        if main:
            write_json(files.error, {"error": str(e), "epoch": e.epoch, "step": e.step})
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


def _save(files: RunFiles, epoch: int, training: Training, history: dict, wall_start: float, keep: int) -> None:
    """This epoch's checkpoint: weights, EMA, optimizer, scheduler, RNG and the history so far."""
    elapsed = history["wall_before"] + time.perf_counter() - wall_start
    state = {"epoch": epoch, "optimizer": training.optimizer.state_dict(),
             "scheduler": training.scheduler.state_dict(), "rng": _rng_state(),
             "history": {**history, "wall_before": elapsed}}
    save_checkpoint(files.checkpoints, epoch, training.step.model, state,
                    training.ema.module if training.ema else None, keep)


def _select(selected: dict | None, evals: dict, epoch: int, cfg: TrainConfig, last: bool) -> dict | None:
    """Which epoch's test numbers the run reports: the last, or the best on the validation split."""
    if "test" not in evals:
        return selected
    by_val = "val" in evals
    if by_val and selected is not None and evals["val"]["top1"] <= selected["val_top1"]:
        return selected
    if not by_val and not last:
        return selected
    t = evals["test"]
    return {"epoch": epoch, "val_top1": evals["val"]["top1"] if by_val else None,
            "val_top5": evals["val"]["top5"] if by_val else None,
            "top1": t["top1"], "top5": t["top5"], "loss": t["loss"],
            "ece": t["ece"], "calibration": t["calibration"],
            "predictions": torch.from_numpy(t["predictions"]), "labels": torch.from_numpy(t["labels"])}


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}", f"loss {row['train_loss']:.4f}",
             f"train {row['train_top1']:6.2%}"]
    for s in ("val", "test"):
        if f"{s}_top1" in row:
            parts.append(f"{s} {row[f'{s}_top1']:6.2%} (top-5 {row[f'{s}_top5']:6.2%})")
    parts += [f"lr {row['lr']:.4g}", f"{row['epoch_seconds']:.2f}s", f"{row['images_per_second']:,.0f} img/s"]
    return "  ".join(parts)


def _result(cfg: TrainConfig, data: CifarData, history: dict, params: int, macs: int, eval_model, device,
            autocast, wall_start: float, world: int) -> dict:
    sel = history["selected"]
    preds, labels = sel["predictions"].numpy(), sel["labels"].numpy()
    infer = measure_inference(eval_model, device, cfg.eval_batch_size, autocast, channels_last=cfg.channels_last)
    epoch_seconds = history["epoch_seconds"]
    n_train = len(data.train) // world // cfg.batch_size * cfg.batch_size * world
    env = environment(device)
    result = {
        "model": cfg.model, "dataset": data.name, **describe(data),
        "top1": round(sel["top1"], 6), "top5": round(sel["top5"], 6), "test_loss": round(sel["loss"], 6),
        "nll": round(sel["loss"], 6), "ece": round(sel["ece"], 6) if "ece" in sel else None,
        "calibration": sel.get("calibration"),  # None when the selected epoch predates calibration records
        "selected_epoch": sel["epoch"], "selection": "best validation top-1" if sel["val_top1"] is not None else "final epoch",
        "params": params, "macs": macs, "mac_convention": MAC_CONVENTION,
        "epochs": cfg.epochs, "seed": cfg.seed,
        "train_seconds": round(history["wall_before"] + time.perf_counter() - wall_start, 3),
        "train_step_seconds": round(sum(epoch_seconds), 3),
        "images_per_second": round(n_train * len(epoch_seconds) / max(sum(epoch_seconds), 1e-9), 1),
        "epoch_seconds": epoch_seconds,
        "train_step": "+".join(dict.fromkeys(history.get("train_step", ["eager"]))),
        "device": env["device"], "world_size": world, "git_commit": env["git_commit"],
        "peak_memory_bytes": peak_memory_bytes(device), "inference": infer, "environment": env,
        "per_class_accuracy": per_class_accuracy(preds, labels, data.num_classes),
        "test_labels": labels.tolist(), "test_predictions": preds.tolist(),
        "test_correct": correctness_string(preds, labels),
        "config": cfg.model_dump(mode="json"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if sel["val_top1"] is not None:
        result.update(val_top1=round(sel["val_top1"], 6), val_top5=round(sel["val_top5"], 6))
    if data.test.coarse is not None and data.coarse_classes:
        result["per_superclass_accuracy"] = superclass_accuracy(preds, labels, data.test.coarse, len(data.coarse_classes))
    if any(math.isnan(v) for v in result["per_class_accuracy"]):
        result["per_class_accuracy"] = [None if math.isnan(v) else v for v in result["per_class_accuracy"]]
    return result
