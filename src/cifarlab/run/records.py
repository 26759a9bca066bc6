"""One validating reader per file of a run folder: types, ranges and sizes checked before anything uses a value.

Every command that reads a run folder (``runs``, ``report``, ``eval``, ``predict``, ``push``, ``train --resume``,
``study``, ``reproduce``) or a reproduction's ``reproduce.json`` reads it through these functions, so the same
damaged field is refused the same way everywhere: one :class:`~cifarlab.CifarlabError` line that names the file
and the field. Records are parsed by pydantic's JSON parser, which bounds nesting; each file kind has a size limit
(:data:`cifarlab.run.folder.MAX_BYTES`); lists of per-image values are bounded by the record's size.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import from_json

from .. import CifarlabError
from ..config import TrainConfig, format_validation_error
from .folder import ATTEMPTS, CONFIG, ERROR, EVALS, MAX_BYTES, METRICS, REPRODUCE, RESULT, STUDY, TRACKERS, RunFolder

NUM_CLASSES = {"cifar100": 100, "cifar10": 10}
MAX_METRIC = 1e12  # a metrics value beyond this is damage (and breaks the figures' axes)
MAX_INT = 2**63 - 1
MAX_IMAGES = 10_000_000
MAX_SEEDS_RECORDED = 100_000
HEX64 = r"^[0-9a-f]{64}$"

Fraction = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
Seconds = Annotated[float, Field(ge=0, le=1e12)]
Text = Annotated[str, Field(max_length=4096)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Real = Annotated[float, Field(ge=-1e6, le=1e6)]


class Record(BaseModel):
    """Strict JSON types (no "1" for 1, no float for an int), no NaN or infinity; fields not named here are
    kept as they are."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow", protected_namespaces=())


class Calibration(Record):
    bins: int = Field(ge=1, le=1000)
    count: list[Count]
    accuracy: list[Fraction | None]
    confidence: list[Fraction | None]

    @model_validator(mode="after")
    def _one_entry_per_bin(self) -> Calibration:
        if not len(self.count) == len(self.accuracy) == len(self.confidence) == self.bins:
            raise ValueError(f"{self.bins} bins but {len(self.count)} counts, {len(self.accuracy)} accuracies and "
                             f"{len(self.confidence)} confidences")
        return self


class PerImageScores(Record):
    """What a run record and an evaluation share: the scores and the per-image test values behind them."""

    model: Name
    dataset: Literal["cifar100", "cifar10"]
    top1: Fraction
    top5: Fraction
    nll: Annotated[float, Field(ge=0, le=1e6)] | None = None
    ece: Fraction | None = None
    calibration: Calibration | None = None
    per_class_accuracy: list[Fraction | None] | None = None
    test_labels: list[Count] | None = Field(None, max_length=MAX_IMAGES)
    test_predictions: list[Count] | None = Field(None, max_length=MAX_IMAGES)
    test_correct: str | None = Field(None, max_length=MAX_IMAGES, pattern=r"^[01]*$")

    @model_validator(mode="after")
    def _per_image_values_agree(self) -> PerImageScores:
        classes = NUM_CLASSES[self.dataset]
        sizes = {k: len(v) for k in ("test_labels", "test_predictions", "test_correct")
                 if (v := getattr(self, k)) is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError("per-image lists of different lengths (" + ", ".join(f"{k} {n}" for k, n in
                                                                                  sizes.items()) + ")")
        for key in ("test_labels", "test_predictions"):
            values = getattr(self, key)
            if values and max(values) >= classes:
                raise ValueError(f"{key} holds class {max(values)}; {self.dataset} has {classes} classes")
        if self.per_class_accuracy is not None and len(self.per_class_accuracy) != classes:
            raise ValueError(f"per_class_accuracy has {len(self.per_class_accuracy)} entries for {classes} classes")
        return self


class RunResult(PerImageScores):
    """``result.json``: the record of a finished run (the README's "What a run records")."""

    dataset_fingerprint: Annotated[str, Field(min_length=1, max_length=200)]
    images_fingerprint: Annotated[str, Field(pattern=HEX64)] | None = None
    params: Count
    macs: Count
    seed: Count
    source: Text | None = None
    source_kind: Annotated[str, Field(max_length=32)] | None = None
    split_sizes: dict[Annotated[str, Field(max_length=16)], Count] | None = Field(None, max_length=8)
    mean: tuple[Fraction, Fraction, Fraction] | None = None
    std: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)],
               Annotated[float, Field(gt=0, le=1)]] | None = None
    test_loss: Annotated[float, Field(ge=0, le=1e6)] | None = None
    val_top1: Fraction | None = None
    val_top5: Fraction | None = None
    selected_epoch: Annotated[int, Field(ge=1, le=10**7)] | None = None
    selection: Annotated[str, Field(max_length=100)] | None = None
    epochs: Annotated[int, Field(ge=1, le=10**7)] | None = None
    train_seconds: Seconds | None = None
    train_step_seconds: Seconds | None = None
    images_per_second: Seconds | None = None
    epoch_seconds: list[Seconds] | None = Field(None, max_length=10**7)
    world_size: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    device: Text | None = None
    git_commit: Text | None = None
    train_step: Text | None = None
    finished_at: Text | None = None
    per_superclass_accuracy: list[Fraction | None] | None = Field(None, max_length=1000)
    inference: dict[Annotated[str, Field(max_length=64)], float | int | None] | None = Field(None, max_length=32)
    environment: dict[Annotated[str, Field(max_length=64)], Text | int | float | None] | None = Field(
        None, max_length=64)
    config: dict[str, Any] | None = None

    @field_validator("config")
    @classmethod
    def _a_training_config(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            try:
                TrainConfig.model_validate(v)
            except ValidationError as err:
                raise ValueError(f"not a training config: {format_validation_error(err, 'config')}") from None
        return v

    @model_validator(mode="after")
    def _test_size_agrees(self) -> RunResult:
        test = (self.split_sizes or {}).get("test")
        if test is not None and self.test_correct is not None and len(self.test_correct) != test:
            raise ValueError(f"test_correct has {len(self.test_correct)} entries for a test split of {test}")
        return self


class EvalResult(PerImageScores):
    """``evals/<fingerprint>.json``: a run scored on another test set by ``cifarlab eval``."""

    split: Literal["test", "val", "train"]
    images: Count
    epoch: Annotated[int, Field(ge=0, le=10**7)]
    fingerprint: Annotated[str, Field(min_length=1, max_length=200)]
    weights: Annotated[str, Field(max_length=16)] | None = None
    source: Text | None = None
    source_kind: Annotated[str, Field(max_length=32)] | None = None
    source_description: Text | None = None
    evaluated_at: Text | None = None


class ErrorRecord(Record):
    """``error.json``: why a run failed (written by the engine on a non-finite loss, or by the study runner)."""

    error: Annotated[str, Field(max_length=65536)] = ""
    type: Annotated[str, Field(max_length=200)] | None = None
    epoch: Count | None = None
    step: Count | None = None
    run_id: Text | None = None

    @property
    def first_line(self) -> str:
        lines = self.error.strip().splitlines()
        return lines[0][:300] if lines else "(no message)"


class TrackerState(Record):
    """``trackers.json``: the tracker run ids a resumed run continues. The ids are handed to the trackers, which
    build paths and URLs from them, so only their own id formats pass."""

    mlflow: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    wandb: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    logged_epoch: Count = 0


class Attempt(Record):
    """One entry of ``attempts.json`` (the Ray executor's attempts at one run)."""

    submission: Annotated[str, Field(max_length=64)]
    host: Annotated[str, Field(max_length=255)] = ""
    pid: Count = 0
    started: Annotated[str, Field(max_length=64)] = ""
    ended: Annotated[str, Field(max_length=64)] | None = None
    status_before: Annotated[str, Field(max_length=32)] = ""
    after_epoch: Count = 0


class StudyVariant(Record):
    name: Name | None = None
    model: Name
    baseline: Name | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] | None = Field(None, description="the variant's resolved config (seed 0)")


class StudyDescription(Record):
    """``study.json``: what a study folder holds (written by ``cifarlab study run``)."""

    name: Name | None = None
    description: Annotated[str, Field(max_length=65536)] = ""
    seeds: list[Count] = Field(default_factory=list, max_length=100_000)
    source: Text = ""
    variants: list[StudyVariant] = Field(default_factory=list, max_length=100_000)


class ReproductionCheck(Record):
    """One line of a reproduction's audit."""

    name: Name
    status: Literal["ok", "differs", "refused"]
    reason: Text
    effect: Text = ""
    runs: Text = ""


class SameSeedComparison(Record):
    """A recorded run against its re-run with the same seed, image by image."""

    variant: Name
    seed: Count
    recorded_top1: Fraction
    new_top1: Fraction
    images: Count
    differ: Count | None = None
    recorded_only: Count | None = None
    new_only: Count | None = None
    p_value: Fraction | None = None
    same_setup: bool
    setup_differences: list[Text] = Field(default_factory=list, max_length=64)
    note: Text = ""


class PredictionIntervalRecord(Record):
    """A recorded figure against the prediction interval of a single run's top-1."""

    variant: Name
    figure: Fraction
    values: list[Fraction] = Field(max_length=MAX_SEEDS_RECORDED)
    mean: Fraction
    sd: Annotated[float, Field(ge=0, le=1)]
    sd_source: Text
    df: Annotated[float, Field(ge=1, le=1e12)] | None = None
    quantile: Annotated[float, Field(gt=0, le=1e3)]
    low: Real
    high: Real
    verdict: Literal["reproduced", "higher than reproducible", "lower than reproducible"]
    gap_sd: Real | None = None


class StudyLineRecord(Record):
    """A variant's difference to its baseline and verdict, recorded and re-derived from the new seeds."""

    variant: Name
    baseline: Name | None = None
    recorded_delta: Real | None = None
    recorded_low: Real | None = None
    recorded_high: Real | None = None
    recorded_verdict: Text = ""
    recorded_seeds: Count = 0
    new_delta: Real | None = None
    new_low: Real | None = None
    new_high: Real | None = None
    new_verdict: Text = ""
    new_seeds: Count = 0
    changed: bool = False


class NewRun(Record):
    run_id: Text
    seed: Count
    state: Annotated[str, Field(max_length=32)]
    top1: Fraction | None = None
    path: Text = ""  # relative to the folder of reproduce.json


class ReproductionSource(Record):
    kind: Literal["run", "study", "hub", "hub-folder", "claim"]
    given: Text
    name: Name
    runs: list[Text] = Field(default_factory=list, max_length=100_000)
    notes: list[Text] = Field(default_factory=list, max_length=100_000)


class ClaimRecord(Record):
    model: Name
    value: Fraction
    rule: Literal["final", "best"]
    note: Text = ""


class Reproduction(Record):
    """``reproduce.json``: what ``cifarlab reproduce`` checked, re-trained and concluded."""

    mode: Literal["audit", "reproduce", "claim"]
    created_at: Text = ""
    source: ReproductionSource
    data: Text | None = None
    data_kind: Annotated[str, Field(max_length=32)] | None = None
    here: dict[Annotated[str, Field(max_length=64)], Text | None] = Field(default_factory=dict, max_length=64)
    budget: dict[Annotated[str, Field(max_length=64)], Text | Count | Real | list[Count] | None] = Field(
        default_factory=dict, max_length=64)
    checks: list[ReproductionCheck] = Field(default_factory=list, max_length=100_000)
    runs: list[NewRun] = Field(default_factory=list, max_length=100_000)
    same_seed: list[SameSeedComparison] = Field(default_factory=list, max_length=100_000)
    intervals: list[PredictionIntervalRecord] = Field(default_factory=list, max_length=100_000)
    study: list[StudyLineRecord] = Field(default_factory=list, max_length=100_000)
    claim: ClaimRecord | None = None
    verdict: Text = ""


def _damaged(where: str, err: ValidationError) -> CifarlabError:
    first = err.errors()[0]
    if first["type"] == "json_invalid":
        return CifarlabError(f"{where}: not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})")
    if not first["loc"]:
        return CifarlabError(f"{where}: damaged (expected a JSON object, found {type(first['input']).__name__})")
    return CifarlabError(one_line(f"{where}: damaged ({format_validation_error(err, 'field')})"))


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space), cut at ``limit``."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read(folder: RunFolder, parts: tuple[str, ...], model: type[Record], limit: int) -> Record:
    where = str(folder.path(*parts))
    try:
        data = folder.read_bytes(*parts, limit=limit)
    except FileNotFoundError:
        raise CifarlabError(f"{where} does not exist") from None
    except OSError as e:
        raise CifarlabError(f"{where}: cannot read ({e.strerror or type(e).__name__})") from None
    try:
        return model.model_validate_json(data)
    except ValidationError as err:
        raise _damaged(where, err) from None


def read_config(folder: RunFolder, name: str = CONFIG) -> TrainConfig:
    """``config.json`` (or the training config of another layout, by ``name``) as a :class:`TrainConfig`."""
    where = folder.path(name)
    try:
        data = folder.read_bytes(name, limit=MAX_BYTES[CONFIG])
    except FileNotFoundError:
        raise CifarlabError(f"{folder} is not a run folder (no {name})") from None
    except OSError as e:
        raise CifarlabError(f"{where}: cannot read ({e.strerror or type(e).__name__})") from None
    try:
        raw = from_json(data)
    except ValueError as e:
        raise CifarlabError(f"{where}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(raw, dict):
        raise CifarlabError(f"{where}: not a training config (expected a JSON object)")
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise CifarlabError(one_line(format_validation_error(err, str(where)))) from None


def read_result(folder: RunFolder) -> dict[str, Any]:
    """``result.json``, validated, as the JSON object it holds."""
    return _read(folder, (RESULT,), RunResult, MAX_BYTES[RESULT]).model_dump(mode="json", exclude_unset=True)


def read_eval(folder: RunFolder, name: str) -> dict[str, Any]:
    """``evals/<name>``, validated."""
    return _read(folder, (EVALS, name), EvalResult, MAX_BYTES["eval"]).model_dump(mode="json", exclude_unset=True)


def read_error(folder: RunFolder) -> ErrorRecord:
    return _read(folder, (ERROR,), ErrorRecord, MAX_BYTES[ERROR])


def read_trackers(folder: RunFolder) -> TrackerState:
    """``trackers.json``; none yet is a fresh state."""
    if not folder.exists(TRACKERS):
        return TrackerState()
    return _read(folder, (TRACKERS,), TrackerState, MAX_BYTES[TRACKERS])


class _Attempts(Record):
    attempts: list[Attempt] = Field(max_length=10_000)


def read_attempts(folder: RunFolder) -> list[dict[str, Any]]:
    """``attempts.json`` (a JSON list of attempts); none yet is an empty list."""
    if not folder.exists(ATTEMPTS):
        return []
    where = folder.path(ATTEMPTS)
    data = folder.read_bytes(ATTEMPTS, limit=MAX_BYTES[ATTEMPTS])
    try:
        return _Attempts.model_validate_json(b'{"attempts": ' + data + b"}").model_dump(mode="json")["attempts"]
    except ValidationError as err:
        raise _damaged(str(where), err) from None


def read_study(folder: RunFolder) -> StudyDescription:
    return _read(folder, (STUDY,), StudyDescription, MAX_BYTES[STUDY])


def read_reproduction(folder: RunFolder) -> dict[str, Any]:
    """``reproduce.json``, validated, as the JSON object it holds."""
    return _read(folder, (REPRODUCE,), Reproduction, MAX_BYTES[REPRODUCE]).model_dump(mode="json")


def _epoch_row(row: Any) -> bool:
    if not isinstance(row, dict) or not isinstance(row.get("epoch"), int) or isinstance(row["epoch"], bool):
        return False
    if not 1 <= row["epoch"] <= 10**7 or any(len(k) > 64 for k in row):
        return False
    for v in row.values():
        if isinstance(v, bool) or v is None or isinstance(v, str) and len(v) <= 200:
            continue
        if not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > MAX_METRIC:
            return False
    return True


def read_metrics(folder: RunFolder, torn_ok: bool = True) -> list[dict[str, Any]]:
    """The epoch rows of ``metrics.jsonl`` (none when the folder has none). A torn last line (a killed run) is
    dropped; any other line that is not an epoch's JSON object of finite numbers is refused."""
    if not folder.exists(METRICS):
        return []
    where = folder.path(METRICS)
    lines = folder.read_bytes(METRICS, limit=MAX_BYTES[METRICS]).decode("utf-8", errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = from_json(line)
        except ValueError:
            if torn_ok and i == len(lines):
                break
            raise CifarlabError(f"{where}: line {i} is not JSON") from None
        if not _epoch_row(row):
            raise CifarlabError(f"{where}: line {i} is not an epoch's metrics (a JSON object with an integer epoch "
                                f"and numbers within ±{MAX_METRIC:g})")
        rows.append(row)
    return rows


def metrics_line(row: dict[str, Any]) -> str:
    return json.dumps(row)
