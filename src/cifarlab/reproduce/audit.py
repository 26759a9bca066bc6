"""The audit: a record checked against itself and against the data, code and environment here, before any training.

Each line is ``ok``, ``differs`` or ``refused`` (it cannot be checked, or the data cannot be used) with its reason;
a line about the code or the environment also says what the difference is expected to do to results.

- the record against itself: top-1 against the per-image correctness it summarises; the reported epoch against
  the rule that must have chosen it (the final epoch, or the best on a validation split — an epoch chosen on the
  test set is flagged); ``metrics.jsonl``'s test top-1 at that epoch; the training config beside the record;
- the data: the record's dataset fingerprint, split sizes and split-independent ``images_fingerprint`` against the
  data given here (the same data; the same images split otherwise; other data);
- the code (commit, uncommitted changes) and the environment (torch, CUDA, device, precision, training step,
  deterministic) against this machine's, and from them what a run with the same seed should give.

Without ``--data`` and with ``--audit-only`` neither torch nor ``datasets`` is imported: versions come from the
packages' metadata and the device is not probed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .. import CifarlabError
from ..config import TrainConfig, bf16_autocast, cuda_graph_step
from ..environment import software
from ..run import FinishedRun, config_differences, read_config
from ..run.folder import METRICS
from .source import Source, SourceVariant, recorded_config

if TYPE_CHECKING:
    from ..data import CifarData

OK, DIFFERS, REFUSED = "ok", "differs", "refused"
TOP1_ROUNDING = 5e-7  # result.json keeps top-1 to 6 decimals
METRICS_ROUNDING = 5e-6  # metrics.jsonl keeps test top-1 to 5 decimals
SEED_NOISE = "results differ at the level of seed noise"
ANY_CHANGE = "a change of code can change results in any way"
ENVIRONMENT = ("torch", "CUDA", "device", "precision", "train step")


@dataclass(frozen=True)
class Check:
    """One audit line: what was checked, ``ok`` / ``differs`` / ``refused``, why, what a difference is expected to
    do to results, and which runs it is about (a study's)."""

    name: str
    status: str
    reason: str
    effect: str = ""
    runs: str = ""


@dataclass(frozen=True)
class Here:
    """This machine: the software (always) and the device (only when probed, which imports torch)."""

    env: dict[str, Any]
    probed: bool = False

    @classmethod
    def probe(cls, device: bool) -> Here:
        if not device:
            return cls(software())
        import torch

        from ..environment import environment

        return cls(environment(torch.device("cuda" if torch.cuda.is_available() else "cpu")), True)

    @property
    def device_type(self) -> str | None:
        return self.env.get("device_type")


@dataclass(frozen=True)
class DataHere:
    """The data to check the record against: the source (``--data`` or the record's own) and what it holds."""

    source: str | None
    data: CifarData | None = None
    problem: str = ""  # why there is no data


def _close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance + 1e-12


def short(fingerprint: str) -> str:
    """A sha256 fingerprint's first 12 digits; any other fingerprint (a synthetic source's) as it is."""
    return fingerprint[:12] if re.fullmatch(r"[0-9a-f]{64}", fingerprint) else fingerprint


# ---- the record against itself ----

def check_top1(record: dict[str, Any]) -> Check:
    """Top-1 against the per-image correctness it summarises (``test_correct``; predictions against labels)."""
    counts: dict[str, tuple[int, int]] = {}
    if record.get("test_correct"):
        counts["test_correct"] = (record["test_correct"].count("1"), len(record["test_correct"]))
    preds, labels = record.get("test_predictions"), record.get("test_labels")
    if preds and labels:
        counts["test_predictions vs test_labels"] = (sum(p == y for p, y in zip(preds, labels, strict=True)),
                                                     len(labels))
    if not counts:
        return Check("top-1", REFUSED, "the record carries no per-image test results (test_correct, "
                                       "test_predictions): top-1 cannot be checked image by image")
    if len(set(counts.values())) > 1:
        return Check("top-1", DIFFERS, "; ".join(f"{k}: {r} of {n} right" for k, (r, n) in counts.items())
                     + " — the per-image records disagree")
    right, n = next(iter(counts.values()))
    if not _close(record["top1"], right / n, TOP1_ROUNDING):
        return Check("top-1", DIFFERS, f"top-1 {record['top1']:.6f}, but {right} of {n} test images are right "
                                       f"({right / n:.6f})")
    return Check("top-1", OK, f"top-1 {record['top1']:.6f} = {right} of {n} test images right "
                              f"({' and '.join(counts)} agree)")


def check_top5() -> Check:
    return Check("top-5", REFUSED, "no per-image top-5 is recorded: top-5 cannot be checked image by image")


def _validation_choice(record: dict[str, Any], config: TrainConfig, metrics: list[dict[str, Any]]) -> Check:
    chosen, rule, epochs = record["selected_epoch"], record.get("selection"), record.get("epochs") or config.epochs
    if rule not in (None, "best validation top-1"):
        return Check("reported epoch", DIFFERS, f"val_split {config.val_split} but the selection rule is {rule!r}, "
                                               f"not the best validation top-1")
    rows = [r for r in metrics if isinstance(r.get("val_top1"), float | int)]
    if not rows:
        return Check("reported epoch", OK, f"epoch {chosen} of {epochs}: the best validation top-1 "
                                           f"(val_split {config.val_split}); not confirmed, no validation top-1 in "
                                           f"{METRICS}")
    best = max(rows, key=lambda r: r["val_top1"])  # the first of equal maxima, as the engine keeps it
    if best["epoch"] != chosen:
        return Check("reported epoch", DIFFERS, f"epoch {chosen} is reported, but the best validation top-1 is at "
                                                f"epoch {best['epoch']} ({best['val_top1']:.5f})")
    return Check("reported epoch", OK, f"epoch {chosen} of {epochs}: the best validation top-1 "
                                       f"({best['val_top1']:.5f}, val_split {config.val_split}), chosen without "
                                       f"the test set")


def _best_on_test(record: dict[str, Any], metrics: list[dict[str, Any]], epochs: int) -> str | None:
    """Why top-1 looks chosen on the test set: it equals the best test top-1 of an earlier epoch and not the final
    epoch's; None otherwise."""
    rows = [r for r in metrics if isinstance(r.get("test_top1"), float | int)]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["test_top1"])
    final = next((r for r in rows if r["epoch"] == epochs), None)
    if best["epoch"] == epochs or not _close(best["test_top1"], record["top1"], METRICS_ROUNDING):
        return None
    if final is not None and _close(final["test_top1"], record["top1"], METRICS_ROUNDING):
        return None
    last = "" if final is None else f", not the final epoch's ({final['test_top1']:.5f})"
    return (f"top-1 {record['top1']:.6f} is the best test top-1 over the epochs (epoch {best['epoch']} of "
            f"{epochs}){last}: chosen on the test set, which overstates it")


def check_reported_epoch(record: dict[str, Any], config: TrainConfig, metrics: list[dict[str, Any]]) -> Check:
    """The reported epoch and its rule: the final epoch, or the best on a validation split when ``val_split > 0``;
    an epoch chosen on the test set is flagged."""
    chosen, epochs = record.get("selected_epoch"), record.get("epochs") or config.epochs
    if chosen is None:
        return Check("reported epoch", REFUSED, "the record names no reported epoch (selected_epoch)")
    if config.val_split > 0:
        return _validation_choice(record, config, metrics)
    if chosen != epochs:
        return Check("reported epoch", DIFFERS, f"epoch {chosen} of {epochs} is reported without a validation "
                                                f"split: an epoch other than the last can only be chosen on the "
                                                f"test set")
    why = _best_on_test(record, metrics, epochs)
    if why:
        return Check("reported epoch", DIFFERS, why)
    if record.get("selection") not in (None, "final epoch"):
        return Check("reported epoch", DIFFERS, f"selection {record['selection']!r} without a validation split")
    return Check("reported epoch", OK, f"the final epoch ({epochs} of {epochs}), no validation split: chosen "
                                       f"without the test set")


def check_metrics(record: dict[str, Any], metrics: list[dict[str, Any]]) -> Check:
    """``metrics.jsonl``'s test top-1 at the reported epoch equals top-1, to its rounding."""
    chosen = record.get("selected_epoch") or record.get("epochs")
    if not metrics:
        return Check(METRICS, REFUSED, f"no {METRICS}: the figure cannot be matched with the training log")
    row = next((r for r in metrics if r["epoch"] == chosen), None)
    if row is None:
        return Check(METRICS, DIFFERS, f"no line for the reported epoch {chosen}")
    value = row.get("test_top1")
    if not isinstance(value, float | int):
        return Check(METRICS, REFUSED, f"the line of epoch {chosen} holds no test top-1")
    if not _close(value, record["top1"], METRICS_ROUNDING):
        return Check(METRICS, DIFFERS, f"test top-1 {value:.5f} at epoch {chosen}, but the record says "
                                       f"{record['top1']:.6f}")
    return Check(METRICS, OK, f"test top-1 {value:.5f} at epoch {chosen} = the record's {record['top1']:.6f} "
                              f"(to 5 decimals)")


def check_config(run: FinishedRun, config_file: str, config: TrainConfig) -> Check:
    """The training config beside the record (``config.json``, ``training_config.json``) equals the record's."""
    if not isinstance(run.record.get("config"), dict):
        return Check("training config", OK, f"{config_file} (the record holds no copy)")
    if not run.folder.exists(config_file):
        return Check("training config", OK, f"the record's copy (no {config_file} beside it)")
    differ = config_differences(read_config(run.folder, config_file), config)
    if differ:
        return Check("training config", DIFFERS, f"{config_file} and the record's config differ in "
                                                 f"{', '.join(differ)}; the record's is the one trained again")
    return Check("training config", OK, f"{config_file} = the record's config")


def check_variant(variant: SourceVariant, config_file: str) -> Check:
    """The runs of a study variant share one config but for the seed."""
    differ = sorted({f for r in variant.runs[1:] for f in config_differences(recorded_config(r, config_file),
                                                                            variant.config) if f != "seed"})
    if differ:
        return Check("variant config", DIFFERS, f"the runs of {variant.name} differ in {', '.join(differ)}; the "
                                                f"config of seed {variant.seeds[0]} is trained again",
                     runs=variant.name)
    return Check("variant config", OK, f"the {len(variant.runs)} runs differ only in their seed", runs=variant.name)


# ---- the data ----

def split_sizes_here(data: CifarData, config: TrainConfig) -> dict[str, int]:
    """The split sizes a run of ``config`` records on ``data`` (loaded with its validation split)."""
    sizes = data.split_sizes()
    if config.train_subset and config.train_subset < sizes["train"]:
        sizes["train"] = config.train_subset
    return sizes


def _same_images(record: dict[str, Any], data: CifarData, sizes: dict[str, int], where: str) -> Check:
    labels = record.get("test_labels")
    same_split = record.get("split_sizes") == sizes and labels is not None and labels == data.test.labels.tolist()
    if same_split:
        return Check("data", OK, f"the same images and test labels (images_fingerprint {data.images_fingerprint[:12]}) "
                                 f"in other files: {where} is another copy of the record's data")
    return Check("data", DIFFERS, f"the same images (images_fingerprint {data.images_fingerprint[:12]}), split "
                                  f"otherwise: splits {record.get('split_sizes')} in the record, {sizes} in {where}"
                                  + ("" if labels is None or labels == data.test.labels.tolist()
                                     else "; the test labels differ image by image"),
                 "another test set: the figures are not comparable image by image")


def check_data(record: dict[str, Any], config: TrainConfig, here: DataHere) -> Check:
    """The record's data against the data here: the same data (fingerprint and split sizes); the same images split
    otherwise (``images_fingerprint``); or other data, refused. A record without ``images_fingerprint`` falls back on
    the dataset and its number of images, a weaker check."""
    fp, sizes_rec = record["dataset_fingerprint"], record.get("split_sizes")
    if here.data is None:
        return Check("data", REFUSED, f"{here.problem}; the record's data: {record['dataset']} (fingerprint "
                                      f"{short(fp)}, splits {sizes_rec}) from {record.get('source')}")
    data = here.data
    where = here.source or data.source
    if data.name != record["dataset"]:
        return Check("data", REFUSED, f"another dataset: the record is on {record['dataset']}, {where} holds "
                                      f"{data.name}")
    sizes = split_sizes_here(data, config)
    if data.fingerprint == fp and (sizes_rec is None or sizes_rec == sizes):
        return Check("data", OK, f"the same data: fingerprint {short(fp)}, splits {sizes}")
    images = record.get("images_fingerprint")
    if images == data.images_fingerprint:
        return _same_images(record, data, sizes, where)
    if images:
        return Check("data", REFUSED, f"other images: images_fingerprint {images[:12]} in the record, "
                                      f"{data.images_fingerprint[:12]} in {where} (dataset fingerprint {short(fp)} / "
                                      f"{short(data.fingerprint)}, splits {sizes_rec} / {sizes})")
    if sizes_rec is not None and sum(sizes_rec.values()) == sum(sizes.values()):
        return Check("data", DIFFERS, f"other files (fingerprint {short(fp)} in the record, {short(data.fingerprint)} "
                                      f"here) of {data.name} with as many images ({sum(sizes.values()):,}); the "
                                      f"record predates images_fingerprint, so whether they are the same images "
                                      f"cannot be told (a weaker check)")
    return Check("data", REFUSED, f"other data: fingerprint {short(fp)}, splits {sizes_rec} in the record; "
                                  f"{short(data.fingerprint)}, {sizes} in {where} (the record predates "
                                  f"images_fingerprint)")


def load_data_here(source: Source, given: str | None, audit_only: bool) -> DataHere:
    """The data to check against: ``--data``, else the record's own source when it can be read here. With
    ``--audit-only`` and no ``--data`` nothing is read (no ``datasets`` import)."""
    config = source.variants[0].config
    if given is None and audit_only:
        return DataHere(None, None, "not fingerprinted (--audit-only without --data)")
    where = given if given is not None else config.data
    from ..data import load_data

    try:
        return DataHere(where, load_data(config.dataset, where, val_split=config.val_split))
    except CifarlabError as e:
        own = "" if given is not None else "the record's own data source cannot be read here (give --data PATH): "
        return DataHere(where, None, f"{own}{e}")


# ---- code and environment ----

def check_code(record: dict[str, Any], here: Here) -> Check:
    """The record's commit against this checkout's (``+dirty``: uncommitted changes)."""
    recorded, mine = record.get("git_commit"), here.env.get("git_commit")
    if recorded is None:
        return Check("code", REFUSED, "the record names no commit", ANY_CHANGE)
    if mine is None:
        return Check("code", REFUSED, f"this cifarlab ({here.env.get('cifarlab')}) is not a git checkout: its "
                                      f"commit is unknown (the record's: {recorded[:12]})", ANY_CHANGE)
    rec, mine_sha = recorded.removesuffix("+dirty"), mine.removesuffix("+dirty")
    if recorded.endswith("+dirty"):
        return Check("code", DIFFERS, f"the record was made from uncommitted changes on {rec[:12]}: its code is "
                                      f"not known exactly (here: {mine[:18]})", ANY_CHANGE)
    if rec != mine_sha:
        return Check("code", DIFFERS, f"commit {rec[:12]} in the record, {mine_sha[:12]} here (git diff "
                                      f"{rec[:12]} {mine_sha[:12]} -- src shows what changed)", ANY_CHANGE)
    if mine.endswith("+dirty"):
        return Check("code", DIFFERS, f"the same commit {rec[:12]}, with uncommitted changes here", ANY_CHANGE)
    return Check("code", OK, f"the same commit {rec[:12]}, no uncommitted changes")


def _compare(name: str, recorded: Any, mine: Any, known: bool, effect: str) -> Check:
    if recorded is None:
        return Check(name, REFUSED, "the record does not say")
    if not known:
        return Check(name, REFUSED, f"{recorded} in the record; not probed here (--audit-only imports no torch; "
                                    f"the re-trained runs record it)")
    if name == "torch" and str(recorded).split("+")[0] == str(mine).split("+")[0]:
        return Check(name, OK, f"{recorded} in the record, {mine} here (the same release; the build's CUDA is its "
                               f"own line)")
    if recorded == mine:
        return Check(name, OK, f"{recorded} in both")
    return Check(name, DIFFERS, f"{recorded} in the record, {mine} here", effect)


def recorded_device_type(record: dict[str, Any]) -> str | None:
    env = record.get("environment") or {}
    device = record.get("device") or env.get("device")
    return env.get("device_type") or (None if device is None else "cpu" if device.startswith("cpu") else "cuda")


def precision_name(config: TrainConfig, device_type: str | None) -> str | None:
    if device_type is None:
        return None
    return "bf16 autocast" if bf16_autocast(config.precision, device_type) else "fp32"


def _device_effect(recorded: str | None, mine: str | None) -> str:
    threads = [re.search(r"(\d+) threads?\)", d or "") for d in (recorded, mine)]
    if all(threads) and recorded and mine and recorded.split(",")[0] == mine.split(",")[0]:
        n = threads[0].group(1)
        return (f"the number of CPU threads changes the order of floating-point sums: {SEED_NOISE}, not per-image "
                f"identical (OMP_NUM_THREADS={n} matches the record)")
    return SEED_NOISE


def environment_checks(record: dict[str, Any], config: TrainConfig, here: Here) -> list[Check]:
    """torch, CUDA, device, precision and the training step of the record against this machine's; deterministic."""
    env = record.get("environment") or {}
    rec_type, my_type = recorded_device_type(record), here.device_type
    rec_device, my_device = record.get("device") or env.get("device"), here.env.get("device")
    cuda = (_compare("CUDA", env.get("cuda") or "none", here.env.get("cuda") or "none", here.probed, SEED_NOISE)
            if "cuda" in (rec_type, my_type) or not here.probed else
            Check("CUDA", OK, "both on the CPU: the CUDA build is not used"))
    my_step = None if my_type is None else "cuda_graph" if cuda_graph_step(config, my_type) else "eager"
    graph = "the same arithmetic replayed as one graph or step by step: small numerical differences possible"
    determinism = ("on a GPU without it, cuDNN picks kernels by benchmark and some kernels add in any order: the "
                   "same seed differs at the level of seed noise" if not config.deterministic
                   else "deterministic kernels where torch has them")
    return [
        _compare("torch", env.get("torch"), here.env.get("torch"), True, f"other kernels: {SEED_NOISE}"),
        cuda,
        _compare("device", rec_device, my_device, here.probed, _device_effect(rec_device, my_device)),
        _compare("precision", precision_name(config, rec_type), precision_name(config, my_type), here.probed,
                 f"bf16 against fp32 arithmetic: {SEED_NOISE}"),
        _compare("train step", record.get("train_step"), my_step, here.probed, graph),
        Check("deterministic", OK, f"{str(config.deterministic).lower()} in the recorded config, which is kept",
              determinism),
    ]


def expected_outcome(checks: list[Check], config: TrainConfig, here: Here) -> Check:
    """What the same seed should give here, from the code and environment lines."""
    by = {c.name: c for c in checks}
    differ = [n for n in ENVIRONMENT if by[n].status == DIFFERS]
    unknown = [n for n in ("code", *ENVIRONMENT) if by[n].status == REFUSED]
    if by["code"].status == DIFFERS:
        return Check("same seed", DIFFERS, "the code differs: the same seed may give other results", ANY_CHANGE)
    if differ:
        return Check("same seed", DIFFERS, f"{', '.join(differ)} differ{'s' * (len(differ) == 1)}: the same seed "
                                           f"gives other per-image predictions", SEED_NOISE)
    if unknown:
        return Check("same seed", REFUSED, f"{', '.join(unknown)} not known: whether the same seed gives identical "
                                           f"predictions cannot be told")
    if here.device_type == "cuda" and not config.deterministic:
        return Check("same seed", DIFFERS, "the same setup, on CUDA without deterministic: the same seed may differ",
                     SEED_NOISE)
    return Check("same seed", OK, "the same code, versions, device and precision: identical per-image predictions "
                                  "expected")


def audit_run(run: FinishedRun, config: TrainConfig, config_file: str, here: Here) -> list[Check]:
    """Every check of one recorded run (``config``: its own) but the data's."""
    record, metrics = run.record, run.metrics
    checks = [check_top1(record), check_top5(), check_reported_epoch(record, config, metrics),
              check_metrics(record, metrics), check_config(run, config_file, config), check_code(record, here),
              *environment_checks(record, config, here)]
    return checks + [expected_outcome(checks, config, here)]


def merge(per_run: dict[str, list[Check]]) -> list[Check]:
    """One line per check and outcome: a check that is ``ok`` in every run is one line; otherwise each outcome is a
    line naming its runs."""
    if len(per_run) == 1:
        return next(iter(per_run.values()))
    out: list[Check] = []
    ids = list(per_run)
    for i, name in enumerate(c.name for c in per_run[ids[0]]):
        lines = [(run_id, checks[i]) for run_id, checks in per_run.items()]
        if all(c.status == OK for _, c in lines) and len({c.reason for _, c in lines}) > 1:
            first_id, first = lines[0]
            out.append(replace(first, reason=f"ok in every run (e.g. {first_id}: {first.reason})",
                               runs=f"all {len(lines)} runs"))
            continue
        groups: dict[tuple[str, str, str], list[str]] = {}
        for run_id, c in lines:
            groups.setdefault((c.status, c.reason, c.effect), []).append(run_id)
        for (status, reason, effect), members in groups.items():
            runs = f"all {len(lines)} runs" if len(members) == len(lines) else ", ".join(members)
            out.append(Check(name, status, reason, effect, runs))
    return out


def audit(source: Source, here: Here, data: DataHere) -> list[Check]:
    """The audit table: every run's checks (merged over a study's runs), each study variant's config, the data."""
    per_run = {r.run_id: audit_run(r, recorded_config(r, source.config_file), source.config_file, here)
               for r in source.runs}
    checks = merge(per_run)
    first = source.variants[0]
    data_line = check_data(first.runs[0].record, first.config, data)
    variants = [check_variant(v, source.config_file) for v in source.variants if len(v.runs) > 1]
    at = next(i for i, c in enumerate(checks) if c.name == "code")
    return checks[:at] + variants + [data_line] + checks[at:]
