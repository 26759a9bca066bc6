"""Training a source again: a :class:`~cifarlab.studies.Study` built from its recorded configs, for the study runner.

One variant per recorded variant with its recorded config exactly (``--data`` changes only where the data is read
from); the seeds are the recorded seed first, then the smallest seeds no recorded run used. The runs are ordinary
run folders ``<out>/<study>/<variant>/seed<k>``, run (serially, by shard or on Ray), skipped when done and resumed
when interrupted by the study runner.
"""

from __future__ import annotations

from pathlib import Path

from .. import CifarlabError
from ..config import TrainConfig
from ..studies.spec import MAX_SEEDS, Study, Variant
from .source import Source


def reproduction_seeds(recorded: list[int], k: int) -> list[int]:
    """The first recorded seed, then the ``k - 1`` smallest seeds that none of ``recorded`` is."""
    if not 1 <= k <= MAX_SEEDS:
        raise CifarlabError(f"--seeds must be from 1 to {MAX_SEEDS}, got {k}")
    seeds, used, candidate = [recorded[0]], set(recorded), 0
    while len(seeds) < k:
        if candidate not in used:
            seeds.append(candidate)
        candidate += 1
    return seeds


def with_seed(config: TrainConfig, seed: int, data: str | None) -> TrainConfig:
    """``config`` with ``seed``, and with ``data`` as the place its data is read from when given."""
    update = {"seed": seed} | ({"data": data} if data is not None else {})
    return TrainConfig.model_validate({**config.model_dump(mode="json"), **update})


def study_of_configs(name: str, description: str, variants: list[tuple[str, str | None, TrainConfig]],
                     seeds: list[int], data: str | None = None) -> Study:
    """A study of ``(variant name, baseline, config)`` at ``seeds``, every run's config the given one but its seed."""
    configs = {(v, s): with_seed(cfg, s, data) for v, _, cfg in variants for s in seeds}
    members = [Variant(v, cfg.model, {k: x for k, x in configs[v, seeds[0]].model_dump(mode="json").items()
                                      if k != "seed"}, base) for v, base, cfg in variants]
    return Study(name, description, seeds, members, description, configs)


def reproduction_study(source: Source, k: int, data: str | None) -> Study:
    """The study that trains every variant of ``source`` again at its recorded config."""
    seeds = reproduction_seeds(sorted({s for v in source.variants for s in v.seeds},
                                      key=lambda s: (s != source.variants[0].seeds[0], s)), k)
    return study_of_configs(source.name, f"reproduction of {source.given}",
                            [(v.name, v.baseline, v.config) for v in source.variants], seeds, data)


def refuse_recorded_folders(study: Study, out: Path, source: Source) -> None:
    """Refuse an ``--out`` where a new run would land in a recorded run's folder (it would be taken as done, and the
    record compared with itself)."""
    recorded = {r.root.resolve() for r in source.runs}
    clash = [r.run_id for r in study.runs() if r.run_dir(out).resolve() in recorded]
    if clash:
        raise CifarlabError(f"--out {out}: the new run {clash[0]} would be the recorded run's own folder; give "
                            f"another --out")
