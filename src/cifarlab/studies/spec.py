"""Study files: many trainings that answer one question, declared in YAML and validated before anything runs.

A study file::

    name: eca                        # the study's folder under --out
    description: ECA vs SE ...       # free text
    base:                            # TrainConfig overrides shared by every run
      data: uoft-cs/cifar100         # or a local copy (any --data PATH of cifarlab train)
    budget:                          # the fair budget: merged into base; no variant may override these fields
      epochs: 200
    seeds: 3                         # a count (0, 1, 2) or a list [0, 1, 2]
    baseline: resnet20               # the variant others are compared with (optional)
    variants:                        # a list of named variants ...
      - name: eca_resnet20-after
        model: eca_resnet20
        overrides: {model_kwargs: {attention_position: after}}
        baseline: eca_resnet20       # a variant may name its own reference
    grid:                            # ... and/or a grid (one block or a list): models x override sets
      models: [resnet56, ghost_resnet56]
      overrides: {s3: {...}, s4: {...}}   # optional; variants are named MODEL-SET (MODEL without sets)
      baseline: resnet56

Each variant's config is ``build_config`` of base <- budget <- variant overrides
(deep-merged, ``model_kwargs`` included) with ``model`` and ``seed`` set, so the
model's registry recipe sits under all of it, as for ``cifarlab train``. Runs are
variant x seed; run ``<study>/<variant>/seed<k>`` lives in ``<out>/<study>/<variant>/seed<k>``,
a normal run folder, so shards' folders copied together form one study.

The studies that come with cifarlab are package data (``shipped/``), loaded by name (``eca``) as well as
any study file by path. A study is bounded before it is expanded: at most ``max_runs`` runs (variants x
seeds, counted from the declared lists; ``--max-runs`` raises it) and at most ``MAX_CONFIG_VALUES`` values in
any run's config, and every check over the variants is linear in their number.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import CifarlabError
from ..config import AugmentConfig, TrainConfig, build_config, format_validation_error
from ..io import count_values, load_yaml

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$"
MAX_NAME = 128  # characters of a study or variant name: each names a folder
MAX_SEEDS = 1000
DEFAULT_MAX_RUNS = 10_000  # variants x seeds of one study; --max-runs raises it
MAX_CONFIG_VALUES = 1_000  # values in one run's overrides (base + budget + variant + --set); a config has ~40 fields


class VariantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)
    model: str | None = Field(None, description="registered model name; default: base.model")
    overrides: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides for this variant")
    baseline: str | None = Field(None, description="variant this one is compared with; default: the study's")


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1)
    overrides: dict[str, dict[str, Any]] | None = Field(None, description="named override sets; variant MODEL-SET")
    baseline: str | None = None


class StudyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    budget: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(min_length=1, max_length=MAX_SEEDS)
    baseline: str | None = None
    variants: list[VariantSpec] = Field(default_factory=list)
    grid: GridSpec | list[GridSpec] | None = None

    @field_validator("seeds", mode="before")
    @classmethod
    def _count_to_list(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if not 1 <= v <= MAX_SEEDS:
                raise ValueError(f"seeds must be a count from 1 to {MAX_SEEDS} or a list of seeds")
            return list(range(v))
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or min(v) < 0:
            raise ValueError("seeds must be distinct non-negative integers")
        return v


@dataclass(frozen=True)
class Variant:
    name: str
    model: str
    overrides: dict[str, Any]  # the full TrainConfig overrides (no seed)
    baseline: str | None


@dataclass(frozen=True)
class StudyRun:
    study: str
    variant: str
    seed: int
    config: TrainConfig

    @property
    def run_id(self) -> str:
        return f"{self.study}/{self.variant}/seed{self.seed}"

    def run_dir(self, out: str | Path) -> Path:
        return Path(out) / self.study / self.variant / f"seed{self.seed}"


@dataclass
class Study:
    name: str
    description: str
    seeds: list[int]
    variants: list[Variant]
    source: str = ""
    configs: dict[tuple[str, int], TrainConfig] = field(default_factory=dict, repr=False)

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise CifarlabError(f"study {self.name} has no variant {name!r}{_did_you_mean(name, self.names)}")

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    def runs(self) -> list[StudyRun]:
        """Every run, variant-major in file order: the order shards and progress lines use."""
        return [StudyRun(self.name, v.name, s, self.configs[v.name, s]) for v in self.variants for s in self.seeds]

    def select(self, patterns: list[str] | None) -> "Study":
        """The variants matching any shell pattern (e.g. ``resnet20*``), plus the baselines they are compared with."""
        if not patterns:
            return self
        keep = {v.name for v in self.variants if any(fnmatch.fnmatchcase(v.name, p) for p in patterns)}
        if not keep:
            raise CifarlabError(f"no variant of study {self.name} matches {', '.join(patterns)}; "
                                f"variants: {', '.join(self.names)}")
        baseline = {v.name: v.baseline for v in self.variants}
        todo = list(keep)
        while todo:  # each variant is visited once: linear in the number of variants
            base = baseline[todo.pop()]
            if base is not None and base not in keep:
                keep.add(base)
                todo.append(base)
        variants = [v for v in self.variants if v.name in keep]
        return Study(self.name, self.description, self.seeds, variants, self.source,
                     {k: c for k, c in self.configs.items() if k[0] in keep})

    def describe(self) -> dict[str, Any]:
        """What ``study.json`` records next to the run folders (read back by ``study table DIR`` and
        ``cifarlab runs``)."""
        return {"name": self.name, "description": self.description, "seeds": self.seeds, "source": self.source,
                "variants": [{"name": v.name, "model": v.model, "baseline": v.baseline, "overrides": v.overrides,
                              "config": self.variant_config(v.name)} for v in self.variants]}

    def variant_config(self, name: str) -> dict[str, Any]:
        """The resolved config of a variant's runs without their seed (what ``study.json`` records, and what
        ``cifarlab runs`` compares a run folder with)."""
        return {k: v for k, v in self.configs[name, self.seeds[0]].model_dump(mode="json").items() if k != "seed"}


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, merging nested mappings (``model_kwargs`` and ``augment`` included)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _leaf_keys(d: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted names of the fields a mapping sets (``model_kwargs`` counts as one field)."""
    keys = set()
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "model_kwargs":
            keys |= _leaf_keys(v, prefix + k + ".")
        else:
            keys.add(prefix + k)
    return keys


def check_fields(overrides: dict[str, Any], where: str) -> None:
    """Unknown config fields, named with their place, close matches and the allowed names."""
    for key, value in overrides.items():
        if key not in TrainConfig.model_fields:
            allowed = sorted(TrainConfig.model_fields)
            raise CifarlabError(f"{where}: unknown config field {key!r}{_did_you_mean(key, allowed)} "
                                f"(allowed: {', '.join(allowed)})")
        if key == "augment" and isinstance(value, dict):
            for sub in value:
                if sub not in AugmentConfig.model_fields:
                    allowed = sorted(AugmentConfig.model_fields)
                    raise CifarlabError(f"{where}: unknown field augment.{sub}{_did_you_mean(sub, allowed)} "
                                        f"(allowed: {', '.join(allowed)})")


def _grids(spec: StudyFile) -> list[GridSpec]:
    return spec.grid if isinstance(spec.grid, list) else [spec.grid] if spec.grid else []


def _declared_variants(spec: StudyFile) -> int:
    """The number of variants, counted from the declared lists before anything is expanded."""
    return len(spec.variants) + sum(len(g.models) * (1 if g.overrides is None else len(g.overrides))
                                    for g in _grids(spec))


def _expand_variants(spec: StudyFile) -> list[VariantSpec]:
    out = list(spec.variants)
    for g in _grids(spec):
        sets = g.overrides if g.overrides is not None else {"": {}}
        for model in g.models:
            for set_name, over in sets.items():
                name = f"{model}-{set_name}" if set_name else model
                try:
                    out.append(VariantSpec(name=name, model=model, overrides=over, baseline=g.baseline))
                except ValidationError as err:
                    raise CifarlabError(format_validation_error(err, f"grid variant {name!r}")) from None
    return out


def _check_size(spec: StudyFile, source: str, extra: dict[str, Any], max_runs: int) -> None:
    """Refuse a study past ``max_runs`` runs, or with a run config of more than MAX_CONFIG_VALUES values, before
    any run is expanded (a few lines of grid can declare millions of runs)."""
    variants = _declared_variants(spec)
    runs = variants * len(spec.seeds)
    if runs > max_runs:
        raise CifarlabError(f"{source}: {variants:,} variants x {len(spec.seeds)} seeds = {runs:,} runs, more than "
                            f"the limit of {max_runs:,} runs per study; raise it with --max-runs {runs}")
    shared = sum(count_values(over, MAX_CONFIG_VALUES) for over in (spec.base, spec.budget, extra))
    own = [v.overrides for v in spec.variants] + [o for g in _grids(spec) for o in (g.overrides or {}).values()]
    if shared + max((count_values(o, MAX_CONFIG_VALUES) for o in own), default=0) > MAX_CONFIG_VALUES:
        raise CifarlabError(f"{source}: a run's config (base, budget, overrides and --set together) holds more than "
                            f"{MAX_CONFIG_VALUES:,} values; a training config has about 40 fields")


def _check_names(variants: list[VariantSpec], source: str) -> set[str]:
    """The variant names, which must be unique (counted in one pass)."""
    dupes = sorted(n for n, k in Counter(v.name for v in variants).items() if k > 1)
    if dupes:
        raise CifarlabError(f"{source}: variant names must be unique; repeated: {', '.join(dupes)}")
    return {v.name for v in variants}


def parse_study(raw: Any, source: str = "<study>", extra: dict[str, Any] | None = None,
                max_runs: int = DEFAULT_MAX_RUNS) -> Study:
    """Validate a study mapping and build every run's config; ``extra`` overrides apply to every run last.

    At most ``max_runs`` runs, counted before the variants are expanded."""
    if not isinstance(raw, dict):
        raise CifarlabError(f"{source}: a study file is a mapping with name, seeds, variants ...")
    try:
        spec = StudyFile.model_validate(raw)
    except ValidationError as err:
        msg = format_validation_error(err, source)
        if "unknown field" in msg:
            msg += f" (allowed: {', '.join(StudyFile.model_fields)})"
        raise CifarlabError(msg) from None
    extra = extra or {}
    for where, over in (("base", spec.base), ("budget", spec.budget), ("--set", extra)):
        check_fields(over, f"{source} {where}")
        if "seed" in over:
            raise CifarlabError(f"{source} {where}: seeds come from the study's 'seeds' list, not a 'seed' field")
    _check_size(spec, source, extra, max_runs)
    variants = _expand_variants(spec)
    if not variants:
        raise CifarlabError(f"{source}: no variants (give 'variants' and/or 'grid')")
    names = _check_names(variants, source)
    budget_keys = _leaf_keys(spec.budget)
    shared = deep_merge(spec.base, spec.budget)
    study = Study(spec.name, spec.description, spec.seeds, [], source)
    for vs in variants:
        where = f"{source} variant {vs.name!r}"
        check_fields(vs.overrides, where)
        if "seed" in vs.overrides:
            raise CifarlabError(f"{where}: seeds come from the study's 'seeds' list, not a 'seed' override")
        if "model" in vs.overrides:
            raise CifarlabError(f"{where}: give the model as 'model:' beside 'overrides', not inside them")
        clash = sorted(budget_keys & _leaf_keys(vs.overrides))
        if clash:
            raise CifarlabError(f"{where}: overrides the study budget ({', '.join(clash)}); every variant must share "
                                f"the budget, so change it under 'budget' or move the field to 'base'")
        model = vs.model or shared.get("model")
        if not model:
            raise CifarlabError(f"{where}: no model (give 'model:' or set base.model)")
        baseline = vs.baseline or spec.baseline
        if baseline is not None and baseline not in names:
            raise CifarlabError(f"{where}: baseline {baseline!r} is not a variant"
                                f"{_did_you_mean(baseline, sorted(names))}")
        overrides = deep_merge(deep_merge(deep_merge(shared, vs.overrides), {"model": model}), extra)
        study.variants.append(Variant(vs.name, model, overrides, baseline))
        for seed in spec.seeds:
            try:
                study.configs[vs.name, seed] = build_config({**overrides, "seed": seed})
            except CifarlabError as e:
                raise CifarlabError(f"{where}: {e}") from None
    return study


def shipped_studies() -> dict[str, Traversable]:
    """The study files that come with cifarlab, by name (the file name without ``.yaml``), sorted."""
    folder = resources.files(__package__) / "shipped"
    return {f.name.removesuffix(".yaml"): f for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".yaml")}


def load_study(file: str | Path, extra: dict[str, Any] | None = None, max_runs: int = DEFAULT_MAX_RUNS) -> Study:
    """Read and validate a study file, or a shipped study by name (``eca``); see the module docstring."""
    path = Path(file)
    if path.is_file():
        raw, source = load_yaml(path.read_bytes(), f"{path}: not valid YAML"), str(path)
    else:
        shipped = shipped_studies()
        if str(file) not in shipped:
            raise CifarlabError(f"{file} is neither a study file nor a shipped study ({', '.join(shipped)})"
                                f"{_did_you_mean(path.stem, list(shipped))}")
        source = f"shipped study {file}"
        raw = load_yaml(shipped[str(file)].read_bytes(), f"{source}: not valid YAML")
    return parse_study(raw, source, extra, max_runs)


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N), 0 <= I < N."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise CifarlabError(f"--shard expects I/N, e.g. 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise CifarlabError(f"--shard {text}: need 0 <= I < N")
    return i, n


def shard_runs(runs: list[StudyRun], index: int, count: int) -> list[StudyRun]:
    """Shard ``index`` of ``count``: every count-th run of the expanded list, starting at ``index``.

    The shards of one study file partition its runs exactly; each run's folder
    depends only on its id, so the shards' output folders merge by copying.
    """
    return runs[index::count]
