"""What each registered model is — family, size tier, training recipe, parameters and MACs — without building one.

Commands that only plan runs or read records (``study plan``/``table``, ``report`` tables, ``runs``,
``reproduce --audit-only``) need these facts but not the networks, so they read them from
``model_catalog.json`` beside this file instead of importing the model zoo (and torch). The registry in
:mod:`cifarlab.models` is the source: the file is generated from it (``python -m cifarlab.model_catalog``, also run
by ``scripts/make_model_docs.py``) and a test keeps the two equal. A name the catalogue lacks — a plug-in's model
— is looked up in the registry itself.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

CATALOG = Path(__file__).with_name("model_catalog.json")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    tier: str
    paper: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    params: int | None = None  # for 100 classes and the entry's own options
    macs: int | None = None


@cache
def _catalog() -> tuple[dict[str, ModelInfo], dict[str, str]]:
    raw = json.loads(CATALOG.read_text())
    return {n: ModelInfo(n, **v) for n, v in raw["models"].items()}, dict(raw["aliases"])


def model_info(name: str) -> ModelInfo:
    """The facts of registered model (or alias) ``name``; an unknown name raises the registry's one-line error."""
    models, aliases = _catalog()
    found = models.get(aliases.get(name, name))
    if found is not None:
        return found
    from .models import get_entry  # a plug-in's model, or an unknown name (the registry suggests close ones)

    e = get_entry(name)
    return ModelInfo(e.name, e.family, e.tier, e.paper, dict(e.recipe))


def from_registry() -> dict[str, Any]:
    """The catalogue as the registry gives it now (builds every model once, on the CPU)."""
    from .models import aliases, count_macs, count_params, create, get_entry, list_models

    models = {}
    for name in list_models():
        e, m = get_entry(name), create(name, num_classes=100)
        info = ModelInfo(name, e.family, e.tier, e.paper, dict(e.recipe), count_params(m), count_macs(m))
        models[name] = {k: v for k, v in asdict(info).items() if k != "name"}
    return {"models": models, "aliases": dict(sorted(aliases().items()))}


def write_catalog(path: Path = CATALOG) -> Path:
    path.write_text(json.dumps(from_registry(), indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_catalog(Path(sys.argv[1]) if len(sys.argv) > 1 else CATALOG)}")
