"""Experiment trackers through accelerate's tracker integration: TensorBoard, MLflow, Weights & Biases.

``cfg.report_to`` names them. ``fit`` calls four functions of this module:

- :func:`tracker_names` before anything else: the trackers to hand to ``Accelerator(log_with=...)``; a
  requested tracker whose package is missing is refused with the line that installs it.
- :func:`start_tracking` once the run folder exists: ``init_trackers`` with the flattened config as params
  (a tracker that cannot start is one :class:`CifarlabError`, and ``fit`` removes the run folder it began);
  the tracker run ids go to ``trackers.json`` in the run folder, and ``--resume`` passes them back
  (MLflow ``run_id``, W&B ``id`` with ``resume="allow"``), so a resumed run continues the same tracker run.
  Epochs that were checkpointed but not yet logged when the run was stopped are logged then, from
  ``metrics.jsonl``.
- :func:`log_epoch` after each epoch's checkpoint: the metrics row with ``step=epoch``; ``trackers.json``
  remembers the last logged epoch, so a resumed run repeats no step.
- :func:`finish_tracking` at the end: result.json's scalar fields as summary metrics, and result.json,
  config.json and metrics.jsonl as artifacts (MLflow artifacts, W&B run files; TensorBoard keeps scalars only).
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from accelerate import Accelerator

from .. import CifarlabError
from ..config import TrainConfig
from ..run import RunFolder, read_metrics, read_trackers
from ..run.folder import CONFIG, METRICS, RESULT, TRACKERS

PROJECT = "cifarlab"  # the MLflow experiment and W&B project, unless $CIFARLAB_PROJECT names another
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
SUMMARY_KEYS = ("top1", "top5", "nll", "ece", "val_top1", "val_top5", "selected_epoch", "params", "macs",
                "train_seconds", "train_step_seconds", "images_per_second")
ARTIFACTS = (RESULT, CONFIG, METRICS)
MLFLOW_FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"  # MLflow 3 refuses a local file store without it


def _check_mlflow_store() -> None:
    """The MLflow store, settled before training starts: its default is sqlite, which mlflow-skinny cannot
    open; a local file store (``MLFLOW_TRACKING_URI`` a folder or ``file:`` URI, which only the user sets in
    MLflow 3) opens only with MLflow's opt-in, given here for the store the user named unless they refused it."""
    import mlflow
    from mlflow.utils.uri import get_uri_scheme

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:") and importlib.util.find_spec("sqlalchemy") is None:
        raise CifarlabError(f"MLflow's tracking store {uri} needs the full mlflow package (pip install mlflow); "
                            f"or set MLFLOW_TRACKING_URI to a tracking server (see docs/tracking.md)")
    if get_uri_scheme(uri) in ("", "file"):
        opt_in = os.environ.setdefault(MLFLOW_FILE_STORE_OPT_IN, "true")
        if opt_in.strip().lower() not in ("true", "1"):
            raise CifarlabError(f"MLflow's tracking store {uri} is a local file store, which MLflow 3 opens only "
                                f"with {MLFLOW_FILE_STORE_OPT_IN}=true (it is {opt_in!r}); unset it, or set "
                                f"MLFLOW_TRACKING_URI to a tracking server (see docs/tracking.md)")


def tracker_names(cfg: TrainConfig) -> list[str]:
    """``cfg.report_to`` as accelerate's ``log_with``: a missing package is an error naming its install line,
    except for TensorBoard left at the default, which is skipped (it is an optional extra)."""
    names = []
    for name in cfg.report_to:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            if name == "tensorboard" and "report_to" not in cfg.model_fields_set:
                continue
            raise CifarlabError(f"report_to {name}: the {PACKAGES[name]} package is not installed; "
                                f"pip install 'cifarlab[{name}]'")
        names.append(name)
    if "mlflow" in names:
        _check_mlflow_store()
    return names


def flat_params(cfg: TrainConfig) -> dict[str, Any]:
    """The config as tracker params: nested groups as ``augment.cutout``; lists, dicts and None as text."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v and k != "model_kwargs":
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)

    walk(cfg.model_dump(mode="json"), "")
    return out


def _log(accelerator: Accelerator, row: dict) -> None:
    accelerator.log({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def start_tracking(accelerator: Accelerator, cfg: TrainConfig, folder: RunFolder, resumed_epoch: int = 0) -> None:
    """Start (or, after ``resumed_epoch`` > 0, continue) the tracker runs of the run in ``folder``."""
    if not accelerator.log_with:
        return
    state = read_trackers(folder).model_dump(exclude_none=True) if resumed_epoch else {}
    names = [str(t) for t in accelerator.log_with]
    init: dict[str, dict] = {}
    if "mlflow" in names:
        init["mlflow"] = {"run_name": folder.name, **({"run_id": state["mlflow"]} if state.get("mlflow") else {})}
    if "wandb" in names:
        init["wandb"] = {"name": folder.name,
                         **({"id": state["wandb"], "resume": "allow"} if state.get("wandb") else {})}
    try:
        accelerator.init_trackers(os.environ.get("CIFARLAB_PROJECT", PROJECT), config=flat_params(cfg),
                                  init_kwargs=init)
    except Exception as e:  # a server out of reach, a store or credentials refused: the user's to fix
        raise CifarlabError(f"report_to {','.join(names)}: a tracker could not start ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'})") from None
    if not accelerator.is_main_process:
        return
    if "mlflow" in names:
        state["mlflow"] = accelerator.get_tracker("mlflow", unwrap=True).info.run_id
    if "wandb" in names:
        state["wandb"] = accelerator.get_tracker("wandb", unwrap=True).id
    logged = int(state.get("logged_epoch", 0)) if resumed_epoch else 0
    for row in read_metrics(folder):
        if logged < row["epoch"] <= resumed_epoch:
            _log(accelerator, row)
            logged = row["epoch"]
    folder.write_json(TRACKERS, obj={**state, "logged_epoch": logged})


def log_epoch(accelerator: Accelerator, folder: RunFolder, row: dict) -> None:
    """Log one epoch's metrics row (after its checkpoint) and remember that it was logged."""
    if not accelerator.log_with or not accelerator.is_main_process:
        return
    _log(accelerator, row)
    state = read_trackers(folder).model_dump(exclude_none=True)
    folder.write_json(TRACKERS, obj={**state, "logged_epoch": int(row["epoch"])})


def summary_metrics(result: dict) -> dict[str, float]:
    return {k: result[k] for k in SUMMARY_KEYS
            if isinstance(result.get(k), (int, float)) and not isinstance(result.get(k), bool)}


def finish_tracking(accelerator: Accelerator, folder: RunFolder, result: dict) -> None:
    """The run record's scalar fields as summary metrics, its files as artifacts where the tracker keeps files."""
    if not accelerator.log_with or not accelerator.is_main_process:
        return
    summary = summary_metrics(result)
    files = [folder.path(name) for name in ARTIFACTS if folder.is_file(name)]
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log({f"result/{k}": v for k, v in summary.items()}, step=int(result["epochs"]))
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_metrics(summary)
            for f in files:
                mlflow.log_artifact(str(f))
        elif tracker.name == "wandb":
            tracker.tracker.summary.update(summary)
            for f in files:
                tracker.tracker.save(str(f), base_path=str(folder.root), policy="now")
