"""The model registry: one entry per named network, with the facts a reader needs.

Every network is registered with :func:`register_model`. An entry records the
family, the paper, the size tier, an architecture description (depths, widths,
stem or patch size, feature resolution of each stage at 32x32 input), what was
adapted for 32x32 inputs, and a default training recipe: a dict of training-config
field overrides. Models know nothing of training; the recipe is plain data that
the trainer applies under the user's own overrides.

Users register their own networks the same way, from their own module::

    from cifarlab.models import register_model

    @register_model(family="mine", paper="My block (2026)", tier="small")
    def my_resnet20(num_classes=100, **kw):
        ...
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from .. import CifarlabError

TIERS = ("small", "standard")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    constructor: Callable[..., nn.Module]
    family: str
    paper: str
    tier: str
    arch: str = ""
    adaptation: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    def build(self, num_classes: int = 100, **kwargs: Any) -> nn.Module:
        return self.constructor(num_classes=num_classes, **{**self.defaults, **kwargs})


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}
_ENTRY_POINTS_LOADED = False


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    name: str | None = None,
    family: str,
    paper: str,
    tier: str,
    arch: str = "",
    adaptation: str = "",
    recipe: dict[str, Any] | None = None,
    **defaults: Any,
):
    """Register a constructor ``fn(num_classes=..., **kwargs) -> nn.Module``.

    Used as a decorator (``@register_model(family=..., ...)``) or called directly
    to register a configured variant of an existing constructor:
    ``register_model(resnet, name="eca_resnet20", depth=20, attention="eca", ...)``;
    extra keyword arguments become the entry's constructor defaults.
    """
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")

    def add(f: Callable[..., nn.Module]):
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = ModelEntry(
            name=key, constructor=f, family=family, paper=paper, tier=tier,
            arch=arch, adaptation=adaptation, recipe=dict(recipe or {}), defaults=defaults,
        )
        return f

    return add(fn) if fn is not None else add


def register_alias(alias: str, target: str) -> None:
    """A short name (e.g. a family name, ``vit``) that resolves to a registered model."""
    if alias in _REGISTRY or alias in _ALIASES:
        raise ValueError(f"name {alias!r} is already taken")
    _ALIASES[alias] = target


def aliases() -> dict[str, str]:
    return dict(_ALIASES)


def _load_entry_points() -> None:
    """Import plugins: packages declaring the ``cifarlab.models`` entry-point group, and the modules named in
    ``$CIFARLAB_PLUGINS`` (comma-separated, importable from the current folder or ``PYTHONPATH``)."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in importlib.metadata.entry_points(group="cifarlab.models"):
        ep.load()
    names = [n.strip() for n in os.environ.get("CIFARLAB_PLUGINS", "").split(",") if n.strip()]
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for n in names:
        try:
            importlib.import_module(n)
        except ImportError as e:
            raise CifarlabError(f"CIFARLAB_PLUGINS: cannot import {n!r} ({e})") from None


def get_entry(name: str) -> ModelEntry:
    _load_entry_points()
    try:
        return _REGISTRY[_ALIASES.get(name, name)]
    except KeyError:
        close = difflib.get_close_matches(name, [*_REGISTRY, *_ALIASES], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `cifarlab models` lists them"
        raise CifarlabError(f"unknown model {name!r}{hint}") from None


def list_models(family: str | None = None, tier: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by family or tier."""
    _load_entry_points()
    return sorted(
        n for n, e in _REGISTRY.items()
        if (family is None or e.family == family) and (tier is None or e.tier == tier)
    )


def create(name: str, num_classes: int = 100, **kwargs: Any) -> nn.Module:
    """Build a registered model from scratch (random initialisation; there are no pretrained weights)."""
    entry = get_entry(name)
    try:
        return entry.build(num_classes=num_classes, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise CifarlabError(f"model {name!r} does not take {str(e).split('argument')[-1].strip()} "
                            f"(check model_kwargs: {kwargs})") from None
