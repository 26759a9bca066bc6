"""What budget a run record was trained at: a reference, a reference at a reduced budget, or a smoke run.

The rule (the results page prints :data:`RULE`):

- **smoke run**: synthetic data, or a training set smaller than the full 50,000-image split (``train_subset``
  or ``split_sizes``), or fewer epochs than the model's recipe (``TrainConfig`` defaults <- the registry recipe)
  while the run is not filed as a reference;
- **reference (reduced budget)**: real data and the full training split, fewer epochs than the recipe, filed
  as a reference: a folder on its path below the results folder has ``reference`` in its name
  (``results/cpu-reference/...``); labelled "CPU reference" when it trained on the CPU;
- **reference**: real data, the full training split and at least the recipe's epochs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .. import CifarlabError
from ..config import build_config
from ..run import FinishedRun
from ..studies.runner import CIFAR_TRAIN_IMAGES

REFERENCE, REDUCED, SMOKE = "reference", "reduced", "smoke"
KINDS = (REFERENCE, REDUCED, SMOKE)  # the page's order
RULE = ("A record is a **smoke run** when it trained on synthetic data, on fewer than the full "
        f"{CIFAR_TRAIN_IMAGES:,} training images (`train_subset` or `split_sizes`), or for fewer epochs than its "
        "model's recipe (the `TrainConfig` defaults under the registry recipe) without being filed as a "
        "reference. A record with real data, the full training split and fewer epochs than the recipe is a "
        "**reference at a reduced budget** when it is filed as one: a folder on its path below the results "
        "folder has `reference` in its name (e.g. `results/cpu-reference/`). A record with real data, the full "
        "training split and at least the recipe's epochs is a **reference**. Smoke runs check that the pipeline "
        "runs end to end; their accuracies, and the verdicts of any comparison between them, say nothing about "
        "the methods.")


@dataclass(frozen=True)
class Budget:
    """A run's budget class and the facts behind it."""

    kind: str  # REFERENCE | REDUCED | SMOKE
    epochs: int
    recipe_epochs: int
    reasons: tuple[str, ...]  # why a run is a smoke run (empty otherwise)


def recipe_epochs(model: str) -> int:
    """The model's full budget in epochs: the ``TrainConfig`` default under the model's registry recipe."""
    try:
        return build_config({"model": model}).epochs
    except CifarlabError:  # a model not in the registry: the defaults alone
        return build_config({"model": model}, apply_recipe=False).epochs


def train_images(run: FinishedRun) -> int | None:
    """Training images the run used (a carved validation split counts as training data); None when unknown."""
    sizes = run.record.get("split_sizes") or {}
    if "train" not in sizes:
        return None
    return int(sizes["train"]) + int(sizes.get("val", 0))


def filed_as_reference(run: FinishedRun, results: Path) -> bool:
    try:
        parts = run.root.resolve().relative_to(results.resolve()).parts
    except ValueError:
        return False
    return any("reference" in p for p in parts)


def classify(run: FinishedRun, results: Path) -> Budget:
    """The run's :class:`Budget` under :data:`RULE`; ``results`` is the folder the records are filed in."""
    epochs = int(run.record.get("epochs") or run.config.get("epochs") or 0)
    full = recipe_epochs(run.model)
    reasons = []
    if run.record.get("source_kind") == "synthetic":
        reasons.append("synthetic data")
    subset = int(run.config.get("train_subset") or 0)
    n_train = train_images(run)
    if subset or (n_train is not None and n_train < CIFAR_TRAIN_IMAGES):
        reasons.append(f"{subset or n_train:,} of {CIFAR_TRAIN_IMAGES:,} training images")
    if reasons:
        return Budget(SMOKE, epochs, full, tuple(reasons + ([f"{epochs} of {full} epochs"] if epochs < full else [])))
    if epochs >= full:
        return Budget(REFERENCE, epochs, full, ())
    if filed_as_reference(run, results):
        return Budget(REDUCED, epochs, full, ())
    return Budget(SMOKE, epochs, full, (f"{epochs} of {full} epochs",))


def on_cpu(runs: list[FinishedRun]) -> bool:
    return all(str(r.record.get("device", "")).startswith("cpu") for r in runs)


def device_short(device: str) -> str:
    """'cpu (x86_64, 2 threads)' -> '2-thread CPU'; a GPU name stays as recorded."""
    m = re.match(r"cpu \((?:.*, )?(\d+) threads?\)", device)
    if m:
        return f"{m.group(1)}-thread CPU"
    return "CPU" if device.startswith("cpu") else device


def kind_title(kind: str, runs: list[FinishedRun]) -> str:
    """The heading of a class of runs: 'Reference results', 'CPU reference (reduced budget)', 'Smoke runs'."""
    if kind == REFERENCE:
        return "Reference results (full budget)"
    if kind == REDUCED:
        return ("CPU reference" if on_cpu(runs) else "Reference") + " (reduced budget)"
    return "Smoke runs"
