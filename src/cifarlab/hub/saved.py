"""Saved models: the config that rebuilds one, writing it, and loading it from a folder, a run or the Hub.

``from_pretrained(repo_or_path)`` rebuilds the architecture from the registry and loads the weights: a local
saved-model folder, a run folder (its newest intact checkpoint) or, failing both, a Hub repo id (downloaded, or
taken from the Hub cache when ``HF_HUB_OFFLINE`` is set). The folder is read like any folder from elsewhere: no
link is followed (except the Hub cache's own links into its blobs), the config is validated, the weights are
checked against the model before a tensor is read, and a sharded checkpoint's index may name only shard files
of the folder. Every failure is one :class:`~cifarlab.CifarlabError` line.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import CifarlabError, __version__
from ..config import format_validation_error
from ..run import RunFolder, read_result
from ..run.folder import MAX_BYTES, RESULT, UnsafeRunFile
from ..run.records import one_line

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HUB_PATTERNS = [CONFIG_FILE, "*.safetensors", INDEX_FILE]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SHARD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.safetensors$")
MAX_SHARDS = 1000


class HubConfig(BaseModel):
    """``config.json`` of a saved model: everything needed to rebuild and use it."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=(), allow_inf_nan=False)

    model: str = Field(description="registry name", max_length=200)
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor options")
    num_classes: int = Field(gt=0, le=100_000)
    dataset: str = Field(max_length=200)
    mean: tuple[float, float, float] = Field(description="per-channel mean of the training inputs in [0, 1]")
    std: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]
    classes: list[Annotated[str, Field(max_length=200)]]
    cifarlab_version: str = __version__

    @model_validator(mode="after")
    def _one_name_per_class(self) -> HubConfig:
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for {self.num_classes} classes")
        return self


class ShardIndex(BaseModel):
    """``model.safetensors.index.json`` of a sharded checkpoint: which shard file holds each tensor."""

    model_config = ConfigDict(extra="ignore", strict=True)

    weight_map: dict[Annotated[str, Field(max_length=500)], Annotated[str, Field(pattern=SHARD.pattern)]] = Field(
        max_length=1_000_000)


@dataclass
class Pretrained:
    """A loaded model (eval mode), its config and where it came from."""

    model: nn.Module
    config: HubConfig
    source: str


def hub_config(name: str, model_kwargs: dict[str, Any] | None = None, dataset: str = "cifar100",
               mean=None, std=None) -> HubConfig:
    """The config of registry model ``name`` trained on ``dataset`` (mean/std default to its constants)."""
    from ..data.meta import DATASETS
    from ..model_catalog import model_info

    model_info(name)
    if dataset not in DATASETS:
        raise CifarlabError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    info = DATASETS[dataset]
    return HubConfig(model=name, model_kwargs=dict(model_kwargs or {}), num_classes=info.num_classes,
                     dataset=dataset, mean=tuple(mean or info.mean), std=tuple(std or info.std),
                     classes=list(info.classes))


def save_pretrained(model: nn.Module, folder: str | Path, name: str, model_kwargs: dict[str, Any] | None = None,
                    dataset: str = "cifar100", mean=None, std=None) -> Path:
    """Write ``model`` (registry ``name`` built with ``model_kwargs``) as a folder ``from_pretrained`` loads."""
    return save_with_config(model, folder, hub_config(name, model_kwargs, dataset, mean, std))


def save_with_config(model: nn.Module, folder: str | Path, config: HubConfig) -> Path:
    from huggingface_hub import save_torch_model

    out = RunFolder(folder)
    out.mkdir()
    save_torch_model(model, out.root, metadata={"format": "pt", "cifarlab_model": config.model})
    out.write_json(CONFIG_FILE, obj=config.model_dump(mode="json"))
    return out.root


def from_pretrained(repo_or_path: str | Path, **kwargs: Any) -> nn.Module:
    """The model saved at ``repo_or_path`` (folder, run folder or Hub repo id), in eval mode."""
    return load_pretrained(repo_or_path, **kwargs).model


def load_pretrained(repo_or_path: str | Path, *, device: str | torch.device = "cpu", revision: str | None = None,
                    token: str | None = None) -> Pretrained:
    """Load from a local saved-model folder, a run folder (newest intact checkpoint) or a Hub repo.

    A local path wins; otherwise ``repo_or_path`` is a Hub repo id, downloaded (or taken from the
    Hub cache when ``HF_HUB_OFFLINE`` is set). Failures raise one-line :class:`CifarlabError`.
    """
    path = Path(repo_or_path).expanduser()
    if path.is_dir():
        if RunFolder(path).is_dir("checkpoints"):
            return load_run(path, device)[0]
        return _load_folder(RunFolder(path), str(path), device)
    if path.exists():
        raise CifarlabError(f"{path} is a file; give a saved-model folder, a run folder or a Hub repo id")
    repo_id = str(repo_or_path)
    if not REPO_ID.match(repo_id):
        raise CifarlabError(f"{repo_id}: no such folder, and not a Hub repo id (USER/NAME)")
    return _load_folder(download(repo_id, revision, token, HUB_PATTERNS), f"hf://{repo_id}", device)


def read_hub_config(folder: RunFolder, where: str) -> HubConfig:
    """A saved model's ``config.json``, validated."""
    if not folder.is_file(CONFIG_FILE):
        raise CifarlabError(f"{where} holds no {CONFIG_FILE}; it is not a saved cifarlab model")
    try:
        return HubConfig.model_validate_json(folder.read_bytes(CONFIG_FILE, limit=MAX_BYTES[CONFIG_FILE]))
    except ValidationError as e:
        if e.errors()[0]["type"] == "json_invalid":
            raise CifarlabError(f"{where}/{CONFIG_FILE} is not a cifarlab model config (not valid JSON)") from None
        if not e.errors()[0]["loc"]:
            raise CifarlabError(f"{where}/{CONFIG_FILE} is not a cifarlab model config (expected a JSON object)"
                                ) from None
        raise CifarlabError(one_line(f"{where}/{CONFIG_FILE}: {format_validation_error(e, 'config')}")) from None


def weight_files(folder: RunFolder, where: str) -> list[Path]:
    """The safetensors files to load: ``model.safetensors``, or the shards a validated index names."""
    if folder.is_file(INDEX_FILE):
        try:
            index = ShardIndex.model_validate_json(folder.read_bytes(INDEX_FILE, limit=MAX_BYTES["manifest"] * 64))
        except ValidationError as e:
            raise CifarlabError(one_line(f"{where}/{INDEX_FILE}: not a valid shard index "
                                         f"({format_validation_error(e, 'index')})")) from None
        shards = sorted(set(index.weight_map.values()))
        if len(shards) > MAX_SHARDS:
            raise CifarlabError(f"{where}/{INDEX_FILE} names {len(shards)} shards; at most {MAX_SHARDS} are read")
        missing = [s for s in shards if not folder.is_file(s)]
        if missing:
            raise CifarlabError(f"{where}: the shard index names missing files ({', '.join(missing[:3])})")
        return [folder.path(s) for s in shards]
    if not folder.is_file(WEIGHTS_FILE):
        raise CifarlabError(f"{where} holds no {WEIGHTS_FILE}")
    return [folder.path(WEIGHTS_FILE)]


def _load_folder(folder: RunFolder, where: str, device: str | torch.device) -> Pretrained:
    from huggingface_hub import load_torch_model

    from ..train.checkpoint import check_weights

    try:
        config = read_hub_config(folder, where)
        files = weight_files(folder, where)
    except UnsafeRunFile as e:
        raise CifarlabError(str(e)) from None
    from ..models import build_model

    model = build_model(config.model, config.num_classes, config.model_kwargs)
    check_weights(model, files, where)
    try:
        load_torch_model(model, folder.root, strict=True, map_location=str(device))
    except (RuntimeError, ValueError, OSError) as e:
        detail = " ".join(str(e).split())[:300]
        raise CifarlabError(f"{where}: the weights do not fit {config.model} {config.model_kwargs}: {detail}") from None
    return Pretrained(model.to(device).eval(), config, where)


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[Pretrained, int, bool]:
    """(model of the newest intact checkpoint, its epoch, whether those are EMA weights) of a finished run."""
    from ..run import run_status
    from ..train.evaluate import load_run_model

    folder = RunFolder(run_dir)
    status = run_status(folder)
    if status.damaged:
        raise CifarlabError(status.detail)
    if status.state != "done":
        raise CifarlabError(f"{run_dir} is not a finished run (no valid {RESULT}): its normalisation statistics "
                            f"are unknown; finish it with `cifarlab train ... --resume`")
    result = read_result(folder)
    cfg, model, epoch, ema = load_run_model(run_dir, use_ema=True, device=device)
    config = hub_config(cfg.model, cfg.model_kwargs, cfg.dataset, result["mean"], result["std"])
    return Pretrained(model, config, f"{run_dir} (epoch {epoch})"), epoch, ema


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, read the way huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def network_errors() -> tuple[type[BaseException], ...]:
    """The Hub client's HTTP errors plus those of the HTTP library it loaded (httpx2, httpx or requests)."""
    from huggingface_hub.errors import HfHubHTTPError

    found: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def download(repo_id: str, revision: str | None, token: str | None, patterns: list[str]) -> RunFolder:
    """The files of Hub model repo ``repo_id`` matching ``patterns``, as a folder whose only links are the Hub
    cache's own (into the repo's blobs)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, token=token, allow_patterns=patterns,
                                          local_files_only=offline, library_name="cifarlab",
                                          library_version=__version__))
    except GatedRepoError:
        raise CifarlabError(f"Hub repo {repo_id} is gated: accept its terms on the Hub and log in "
                            f"(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise CifarlabError(f"{repo_id}: no such local folder, and no such Hub repo (if it is private, log in "
                            f"with `hf auth login` or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise CifarlabError(f"Hub repo {repo_id} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        why = ("offline mode (HF_HUB_OFFLINE=1) forbids downloading it" if offline
               else "the Hub cannot be reached (no network?)")
        raise CifarlabError(f"{repo_id}: no such local folder, not in the Hub cache, and {why}") from None
    except HFValidationError:
        raise CifarlabError(f"{repo_id}: no such folder, and not a valid Hub repo id") from None
    except network_errors() as e:
        raise CifarlabError(f"could not download {repo_id} from the Hub ({type(e).__name__}): "
                            f"{first_line(e)}") from None
    return RunFolder(snapshot, links_into=snapshot.parent.parent / "blobs")  # <repo>/snapshots/<rev> -> <repo>/blobs
