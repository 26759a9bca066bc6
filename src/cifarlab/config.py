"""Typed training configuration: the one source of defaults.

Precedence, lowest first: the field defaults below, the model's registry recipe
(``ModelEntry.recipe``), then the user's overrides (CLI flags or a study file).
Unknown keys, wrong types and out-of-range values are rejected before any work
starts, with a message naming the field.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import CifarlabError
from .io import load_yaml


class AugmentConfig(BaseModel):
    """Training-time augmentation, all batched on the device (``data/augment.py``, ``data/policies.py``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    crop_padding: int = Field(4, ge=0, le=16, description="random crop after zero padding by this many pixels; 0 = off")
    hflip: bool = True
    vflip: bool = Field(False, description="random vertical flip (p = 0.5)")
    color_jitter: float = Field(0.0, ge=0, le=1, description="brightness/contrast/saturation factors drawn per image "
                                                            "from [1 - s, 1 + s]; 0 = off")
    policy: Literal["none", "trivialaugment", "autoaugment", "randaugment"] = Field(
        "none", description="TrivialAugment Wide, AutoAugment (CIFAR-10 policy) or RandAugment, after crop/flip")
    randaugment_ops: int = Field(2, ge=1, le=6, description="RandAugment: ops per image (N)")
    randaugment_magnitude: int = Field(9, ge=0, le=30, description="RandAugment: magnitude bin of 31 (M)")
    cutout: int = Field(0, ge=0, le=32, description="side of the cutout square in pixels; 0 = off")
    mixup_alpha: float = Field(0.0, ge=0, description="mixup Beta(alpha, alpha); 0 = off")
    cutmix_alpha: float = Field(0.0, ge=0, description="cutmix Beta(alpha, alpha); 0 = off; "
                                                        "with mixup on too, each batch uses one of them (50/50)")


DEFAULT_TRACKERS = ("tensorboard",)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    # what
    model: str = "resnet20"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    dataset: Literal["cifar100", "cifar10"] = "cifar100"
    data: str | None = Field(None, description="Hub id, local folder/tar.gz, or 'synthetic'; "
                                               "None = the dataset's Hub id")
    val_split: int = Field(0, ge=0, description="images carved (stratified) from train for validation; 0 = none")
    train_subset: int = Field(0, ge=0, description="train on a stratified subset of this many images (smoke runs); "
                                                   "0 = all")
    # budget
    epochs: int = Field(200, gt=0)
    batch_size: int = Field(512, gt=0, description="per process")
    eval_batch_size: int = Field(1024, gt=0)
    # optimisation
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.4, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0, description="not applied to norms and biases")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant", "multistep", "step", "exponential"] = "cosine"
    warmup_epochs: float | None = Field(None, ge=0, description="linear warm-up; None = min(2, 10% of epochs)")
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75], description="multistep: fractions of training")
    gamma: float = Field(0.1, gt=0, le=1, description="multistep / step decay factor; exponential: the factor per "
                                                       "epoch (set it, e.g. 0.97)")
    step_epochs: float = Field(30, gt=0, description="step: multiply the lr by gamma every this many epochs")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="max global grad norm; None = off")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="weight EMA decay per step; None = off")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    # execution
    seed: int = Field(0, ge=0)
    deterministic: bool = False
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 autocast on GPU, fp32 on CPU")
    channels_last: bool = True
    compile: bool = False
    cuda_graph: Literal["auto", "on", "off"] = Field(
        "auto", description="replay the whole training step as one CUDA graph; auto = on for single-process CUDA "
                            "runs without compile, on = also with compile (an error where there is no CUDA device)")
    eval_every: int = Field(1, ge=1, description="evaluate the test (and val) split every N epochs; "
                                                 "the last epoch always")
    keep_checkpoints: int = Field(2, ge=1)
    nan_check_every: int = Field(50, ge=1, description="steps between host checks of the device-side non-finite flag")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: list(DEFAULT_TRACKERS), exclude_if=lambda v: v == list(DEFAULT_TRACKERS),
        description="experiment trackers, through accelerate (docs/tracking.md); a comma-separated string is "
                    "accepted, 'none' = no tracker. Left out of the run's saved config while it is the default, so "
                    "runs "
                    "recorded before this field existed keep their config")

    @field_validator("report_to", mode="before")
    @classmethod
    def _comma_separated(cls, v: Any) -> Any:
        """``tensorboard,mlflow`` (the command line) or ``none``; each tracker once, in the given order."""
        if isinstance(v, str):
            v = [] if v.strip().lower() == "none" else [p.strip() for p in v.split(",") if p.strip()]
        return list(dict.fromkeys(v)) if isinstance(v, list) and all(isinstance(p, str) for p in v) else v

    @field_validator("cuda_graph", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        """YAML reads a bare on / off as a boolean."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("model_kwargs")
    @classmethod
    def _model_options_are_names_and_finite_values(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Constructor options: keyword names, and no NaN or infinity anywhere in their values."""
        bad = [k for k in v if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise ValueError(f"model_kwargs keys must be option names, got {bad[0]!r:.40}")
        stack = list(v.values())
        while stack:
            x = stack.pop()
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError("model_kwargs values must be finite (no NaN or infinity)")
            stack.extend(x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else ())
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones_in_range(cls, v: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in v) or v != sorted(v):
            raise ValueError("milestones must be increasing fractions of training in (0, 1)")
        return v

    @property
    def warmup(self) -> float:
        """Warm-up epochs in effect."""
        return min(2.0, 0.1 * self.epochs) if self.warmup_epochs is None else self.warmup_epochs

    @model_validator(mode="after")
    def _exponential_names_its_rate(self) -> "TrainConfig":
        if self.schedule == "exponential" and "gamma" not in self.model_fields_set:
            raise ValueError("schedule exponential multiplies the lr by gamma every epoch: set gamma (e.g. 0.97); "
                             "the default 0.1 is for multistep / step")
        return self

    @model_validator(mode="after")
    def _warmup_shorter_than_training(self) -> "TrainConfig":
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs:g}) must be shorter than epochs ({self.epochs}); "
                             f"set --warmup-epochs")
        return self


def bf16_autocast(precision: str, device_type: str) -> bool:
    """Whether the step runs under bf16 autocast: on a GPU unless ``precision`` is fp32; never on the CPU."""
    return device_type == "cuda" and precision in ("auto", "bf16")


def cuda_graph_step(cfg: TrainConfig, device_type: str, world: int = 1) -> bool:
    """Whether the engine replays the training step as one CUDA graph: on one CUDA device, unless ``cuda_graph`` is
    off, or auto with ``compile``."""
    possible = device_type == "cuda" and world == 1
    return cfg.cuda_graph != "off" and possible and (cfg.cuda_graph == "on" or not cfg.compile)


def _loc_text(part: str | int) -> str:
    """A field name as it is; any other key quoted, so that the message stays on one line."""
    return str(part) if isinstance(part, int) or re.fullmatch(r"[A-Za-z0-9_-]+", part) else repr(part)


def format_validation_error(err: ValidationError, prefix: str = "config") -> str:
    """One line per bad field: ``config.lr: Input should be greater than 0 (got -1)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(_loc_text(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) or e["type"] == "extra_forbidden" else f" (got {got!r})"
        lines.append(f"{prefix}.{loc}: {msg}{got_s}" if loc else f"{prefix}: {msg}")
    return "; ".join(lines)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict) and k != "model_kwargs"
        out[k] = _deep_merge(out[k], v) if nested else v
    return out


def build_config(overrides: dict[str, Any], apply_recipe: bool = True) -> TrainConfig:
    """Defaults <- the model's registry recipe <- ``overrides``; validated, with one clear error."""
    from .model_catalog import model_info

    model = overrides.get("model", TrainConfig.model_fields["model"].default)
    merged: dict[str, Any] = {}
    if apply_recipe:
        merged = _deep_merge(merged, model_info(str(model)).recipe)
    merged = _deep_merge(merged, overrides)
    if "warmup_epochs" in merged and "warmup_epochs" not in overrides and merged["warmup_epochs"] is not None:
        # a recipe's warm-up is for its full budget; a shorter run warms up for at most 10 % of its epochs
        epochs = merged.get("epochs", TrainConfig.model_fields["epochs"].default)
        if isinstance(epochs, (int, float)) and epochs > 0:
            merged["warmup_epochs"] = min(merged["warmup_epochs"], 0.1 * epochs)
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        raise CifarlabError(format_validation_error(err)) from None


def set_dotted(overrides: dict[str, Any], key: str, value: Any) -> None:
    """Put ``value`` at the dotted field name ``key`` (``augment.cutout``) of a nested overrides mapping."""
    parts = key.split(".")
    if not all(p.strip() for p in parts):
        raise CifarlabError(f"--set: {key!r} is not a field name (use e.g. lr or augment.cutout)")
    d = overrides
    for i, p in enumerate(parts[:-1]):
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise CifarlabError(f"--set {key}: {'.'.join(parts[:i + 1])} is a value, not a group of fields")
    d[parts[-1]] = value


def set_overrides(items: list[str] | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--set key.sub=value`` items (each value read as YAML) put onto ``overrides`` (a new mapping by default)."""
    over = overrides if overrides is not None else {}
    for item in items or []:
        if "=" not in item:
            raise CifarlabError(f"--set expects key=value, got {item!r}")
        key, text = (part.strip() for part in item.split("=", 1))
        set_dotted(over, key, load_yaml(text, f"--set {key}: cannot read {text[:60]!r} as a YAML value"))
    return over
