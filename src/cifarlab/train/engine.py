"""One training engine for every model: data on the device, accelerate, one loop.

``fit(cfg, run_dir)`` trains ``cfg.model`` and writes the run folder:

    config.json      the resolved TrainConfig
    metrics.jsonl    one line per epoch (train loss/acc, val/test top-1/top-5, lr, seconds)
    checkpoints/     safetensors weights + optimiser/scheduler/RNG state, every epoch
    result.json      the run record (SPEC §9 keys, per-class accuracy, per-image correctness ...)
    tensorboard/     accelerate's TensorBoard tracker, when tensorboard is installed

The step itself is ``step.TrainStep``: on a single CUDA device it is captured
once as a CUDA graph and replayed (``cuda_graph``), elsewhere it runs eagerly;
both run the same body. Metrics stay on the device; the host reads the
non-finite flag every ``nan_check_every`` steps and the epoch's loss and
accuracy after its last step.

Timing: ``epoch_seconds`` and ``images_per_second`` cover the training steps only
(device synchronised before and after the epoch's steps; augmentation, the
steps and the LR schedule inside, no evaluation, no checkpoint, no graph
capture); ``train_seconds`` is the whole wall time of the run: data decode,
model build, graph capture or compilation, evaluation and checkpoints included.
"""

from __future__ import annotations

import importlib.util
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
from ..io import atomic_open, read_json, write_json
from ..models import count_macs, count_params, create
from ..models.complexity import MAC_CONVENTION
from .checkpoint import find_latest, load_checkpoint, save_checkpoint
from .ema import WeightEma
from .metrics import (autocast_context, autocast_dtype, correctness_string, environment, evaluate,
                      measure_inference, peak_memory_bytes, per_class_accuracy, superclass_accuracy)
from .optim import build_optimizer, build_scheduler, load_optimizer_state
from .step import TrainStep, lr_on_device


class NonFiniteLossError(CifarlabError):
    pass


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
    trackers = ["tensorboard"] if importlib.util.find_spec("tensorboard") else None
    return Accelerator(cpu=not cuda, log_with=trackers,
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
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        try:
            if json.loads(ln)["epoch"] <= upto_epoch:
                keep.append(ln)
        except (ValueError, KeyError):
            break  # a torn last line from a kill
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
    main = accelerator.is_main_process
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    graph = _use_cuda_graph(cfg, device, world)
    with accelerator.main_process_first():
        data = data or load_data(cfg.dataset, cfg.data, val_split=cfg.val_split)
    if cfg.train_subset and cfg.train_subset < len(data.train):
        data = subsample_train(data, cfg.train_subset, seed=cfg.seed)
    if cfg.batch_size > len(data.train) // world:
        raise CifarlabError(f"batch_size {cfg.batch_size} is larger than the training split per process "
                            f"({len(data.train) // world} images)")
    _set_determinism(cfg)
    try:
        model = create(cfg.model, num_classes=data.num_classes, **cfg.model_kwargs)
    except ValueError as e:  # a constructor rejecting a model_kwargs value (e.g. depth 7) is the user's to fix
        if not cfg.model_kwargs:
            raise
        raise CifarlabError(f"model {cfg.model!r} rejects model_kwargs {cfg.model_kwargs}: "
                            f"{str(e).splitlines()[0]}") from None
    params, macs = count_params(model), count_macs(model)
    resuming = False
    if main:  # only now, with data and model known to be good, does the run folder appear
        resuming = _prepare_run_dir(files, cfg, resume, overwrite)
        files.error.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    for n in data.notes:
        accelerator.print(n)

    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt)
    ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay else None

    aug = BatchAugment.from_config(cfg.augment, data.mean, data.std, device, num_classes=data.num_classes)
    train_loader = DeviceLoader(data.train, cfg.batch_size, data.mean, data.std, device, train=True, augment=aug,
                                seed=cfg.seed, rank=rank, world_size=world, channels_last=cfg.channels_last)
    eval_loaders = {s: DeviceLoader(getattr(data, s), cfg.eval_batch_size, data.mean, data.std, device,
                                    channels_last=cfg.channels_last)
                    for s in ("val", "test") if getattr(data, s) is not None}
    spe = len(train_loader)
    optimizer = build_optimizer(model, cfg, capturable=graph)
    scheduler = build_scheduler(optimizer, cfg, spe)  # before lr_on_device: its base learning rates stay floats

    start_epoch, history = 1, {"epoch_seconds": [], "wall_before": 0.0, "selected": None}
    if resume:
        found = find_latest(files.checkpoints)
        if found:
            epoch, path, notes = found
            for n in notes:
                accelerator.print(n)
            state = load_checkpoint(path, model, ema.module if ema else None, map_location=device)
            load_optimizer_state(optimizer, state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            history = state["history"]
            start_epoch = epoch + 1
            if main:
                _rewrite_metrics(files.metrics, epoch)
            accelerator.print(f"resuming {files.root} after epoch {epoch}")
        elif resuming:
            if any(files.checkpoints.glob("epoch-*")):
                accelerator.print(f"no intact checkpoint in {files.checkpoints}; starting again from epoch 1")
            if main:
                _rewrite_metrics(files.metrics, 0)

    lr_on_device(optimizer, device if graph else None)
    forward = accelerator.prepare_model(model) if world > 1 else model  # DDP across processes
    if cfg.compile:
        forward = torch.compile(forward)
    if accelerator.log_with:
        accelerator.init_trackers("tb", config={k: str(v) for k, v in cfg.model_dump().items()})
    eval_model = ema.module if ema else model
    amp = autocast_dtype(cfg.precision, device)
    autocast = autocast_context(device, amp)

    sample = None
    if graph:
        train_loader.set_epoch(start_epoch)
        sample = next(iter(train_loader))  # fixes the shapes; a fresh iterator per epoch, so nothing is consumed
    step_fn = TrainStep(model, optimizer, forward=forward, label_smoothing=cfg.label_smoothing, autocast_dtype=amp,
                        grad_clip=cfg.grad_clip, ema=ema, graph=graph, sample=sample)
    if step_fn.capture_error:
        accelerator.print(f"CUDA graph capture failed ({step_fn.capture_error}); training eagerly")
    history.setdefault("train_step", []).append("cuda_graph" if step_fn.graphed else "eager")
    header = (f"{cfg.model}: {params:,} params, {macs / 1e6:.2f} M MACs | {data.name} ({data.kind}) "
              f"{data.split_sizes()} | {cfg.epochs} epochs x {spe} steps, batch {cfg.batch_size}x{world} on {device}"
              f"{' (CUDA graph step)' if step_fn.graphed else ''}")
    accelerator.print(header)
    for epoch in range(start_epoch, cfg.epochs + 1):
        train_loader.set_epoch(epoch)
        step_fn.reset_metrics()
        step_fn.start_at((epoch - 1) * spe)
        seen = 0
        bar = tqdm(total=spe, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not (progress and main),
                   dynamic_ncols=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(train_loader):
            step_fn.step(x, y)
            scheduler.step()
            seen += len(y)
            if (step + 1) % cfg.nan_check_every == 0 or step + 1 == spe:  # the host waits here anyway
                _check_finite(step_fn.first_nonfinite_step(), spe, files, main)
                bar.update(step + 1 - bar.n)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_seconds = time.perf_counter() - t0
        bar.close()
        history["epoch_seconds"].append(round(step_seconds, 4))

        row = {"epoch": epoch, "lr": float(optimizer.param_groups[0]["lr"]),
               "train_loss": round(step_fn.loss_sum.item() / seen, 5),
               "train_top1": round(step_fn.correct.item() / seen, 5),
               "epoch_seconds": round(step_seconds, 4),
               "images_per_second": round(seen * world / step_seconds, 1)}
        last = epoch == cfg.epochs
        evals = {}
        if last or epoch % cfg.eval_every == 0:
            for split, loader in eval_loaders.items():
                evals[split] = evaluate(eval_model, loader, autocast)
                row[f"{split}_top1"], row[f"{split}_top5"] = round(evals[split]["top1"], 5), round(evals[split]["top5"], 5)
                row[f"{split}_loss"] = round(evals[split]["loss"], 5)
            history["selected"] = _select(history["selected"], evals, epoch, cfg, last)
        if main:
            _append_metrics(files.metrics, row)
            accelerator.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            elapsed = history["wall_before"] + time.perf_counter() - wall_start
            state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": _rng_state(), "history": {**history, "wall_before": elapsed}}
            save_checkpoint(files.checkpoints, epoch, model, state, ema.module if ema else None, cfg.keep_checkpoints)
        accelerator.print(_epoch_line(row, cfg.epochs))
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, train_loader)
        accelerator.wait_for_everyone()

    result = None
    if main:
        result = _result(cfg, data, history, params, macs, eval_model, device, autocast, wall_start, world)
        write_json(files.result, result)
        accelerator.print(f"done: test top-1 {result['top1']:.2%}, top-5 {result['top5']:.2%} "
                          f"(epoch {result['selected_epoch']}) -> {files.result}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result if result is not None else {}


def _check_finite(bad: int | None, spe: int, files: RunFiles, main: bool) -> None:
    if bad is not None:
        epoch, step = bad // spe + 1, bad % spe + 1
        msg = (f"non-finite loss or gradient at epoch {epoch}, step {step} of {spe}; stopped. "
               f"The last good checkpoint "
               f"(epoch {epoch - 1}) is kept; try a lower --lr or grad_clip")
        if main:
            write_json(files.error, {"error": msg, "epoch": epoch, "step": step})
        raise NonFiniteLossError(msg)


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
