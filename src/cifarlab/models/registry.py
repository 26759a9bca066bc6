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

import contextlib
import difflib
import importlib
import importlib.metadata
import inspect
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.nn.modules import module as nn_module

from .. import CifarlabError

TIERS = ("small", "standard")
SIZE_LIMITS = {  # environment variable -> default: the most a model built from model_kwargs may hold
    "CIFARLAB_MAX_PARAMS": 1_000_000_000,  # parameter and buffer elements (4 GB in fp32)
    "CIFARLAB_MAX_MODULES": 20_000,  # submodules (ResNet-1202, the deepest CIFAR ResNet, has 6,610)
}


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


def _limit(var: str) -> int:
    text = os.environ.get(var, "").replace("_", "").replace(",", "")
    if not text:
        return SIZE_LIMITS[var]
    if not text.isdigit() or int(text) < 1:
        raise CifarlabError(f"{var} must be a positive whole number, got {os.environ[var]!r}")
    return int(text)


class _SizeGuard:
    """Counts what a constructor registers on this thread (parameter and buffer elements, submodules) through
    PyTorch's global registration hooks, and stops the build as soon as a count passes its limit."""

    def __init__(self, what: str):
        self.what, self.thread = what, threading.get_ident()
        self.limits = {var: _limit(var) for var in SIZE_LIMITS}
        self.elements = self.modules = 0

    def _tensor(self, module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None and threading.get_ident() == self.thread:
            self.elements += tensor.numel()
            self._check(self.elements, "CIFARLAB_MAX_PARAMS", "parameters and buffers")

    def _module(self, module: nn.Module, name: str, submodule: nn.Module | None) -> None:
        if submodule is not None and threading.get_ident() == self.thread:
            self.modules += 1
            self._check(self.modules, "CIFARLAB_MAX_MODULES", "modules")

    def _check(self, count: int, var: str, unit: str) -> None:
        if count > self.limits[var]:
            raise CifarlabError(f"{self.what} has at least {count:,} {unit}, more than the limit of "
                                f"{self.limits[var]:,}; set {var} to allow more")

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        handles = [nn_module.register_module_parameter_registration_hook(self._tensor),
                   nn_module.register_module_buffer_registration_hook(self._tensor),
                   nn_module.register_module_module_registration_hook(self._module)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _shown(value: Any, limit: int = 200) -> str:
    """``value`` as it reads in a one-line message, cut at ``limit`` characters (model_kwargs can be large)."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _check_names(entry: ModelEntry, kwargs: dict[str, Any]) -> None:
    """``model_kwargs`` names against the constructor's signature (where it lists them all)."""
    if "num_classes" in kwargs:
        raise CifarlabError(f"model {entry.name!r}: num_classes is set by the dataset, not by model_kwargs")
    params = inspect.signature(entry.constructor).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # passed on to the network's class: a name it does not take fails the meta build below
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise CifarlabError(f"model {entry.name!r} does not take {_shown(', '.join(map(repr, unknown)))} "
                            f"(model_kwargs it takes: {', '.join(n for n in params if n != 'num_classes')})")


def _build(entry: ModelEntry, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """The constructor's call; with ``model_kwargs``, whatever it raises is their fault: one line."""
    try:
        return entry.build(num_classes=num_classes, **kwargs)
    except CifarlabError:
        raise
    except Exception as e:  # the registered defaults build (tests/models); a wrong type or value is the user's
        if not kwargs:
            raise
        text = _shown(str(e).splitlines()[0] if str(e).strip() else type(e).__name__)
        if isinstance(e, TypeError) and "unexpected keyword argument" in text:
            raise CifarlabError(f"model {entry.name!r} does not take {text.split('argument')[-1].strip()} "
                                f"(check model_kwargs: {_shown(kwargs)})") from None
        raise CifarlabError(f"model {entry.name!r} rejects model_kwargs {_shown(kwargs)}: {text}") from None


def create(name: str, num_classes: int = 100, **kwargs: Any) -> nn.Module:
    """Build a registered model from scratch (random initialisation; there are no pretrained weights).

    ``kwargs`` are checked as :func:`build_model` checks a config's ``model_kwargs``."""
    return build_model(name, num_classes, kwargs)


def build_model(name: str, num_classes: int, model_kwargs: dict[str, Any]) -> nn.Module:
    """``name`` built for ``num_classes`` with a config's ``model_kwargs``, checked first: their names, then
    the model they ask for, built on the ``meta`` device and bounded in size (see the module docstring)."""
    entry = get_entry(name)
    if model_kwargs:
        _check_names(entry, model_kwargs)
        guard = _SizeGuard(f"model {entry.name!r} with model_kwargs {_shown(model_kwargs)}")
        with guard.watching(), torch.device("meta"):
            _build(entry, num_classes, model_kwargs)
    return _build(entry, num_classes, model_kwargs)
