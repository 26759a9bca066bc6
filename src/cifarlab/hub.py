"""Save, load and share trained models through the Hugging Face Hub.

A saved model is a folder, local or a Hub model repo, holding:

    model.safetensors   the weights (``huggingface_hub.save_torch_model``)
    config.json         what rebuilds the network: registry name and options, classes, normalisation

``from_pretrained(repo_id_or_path)`` rebuilds the architecture from the registry and loads the
weights (a local folder first, else a Hub download). ``cifarlab push RUN_DIR --repo-id USER/NAME``
uploads a finished run: weights, config, ``result.json``, ``metrics.jsonl`` and a generated model
card (README.md) whose every number comes from the run's ``result.json``. ``cifarlab predict``
classifies image files with a run folder, a saved folder or a Hub repo.

``huggingface_hub`` and the training code are imported inside the functions that need them, so the
CLI and ``cifarlab.models`` stay light to import.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import CifarlabError, __version__
from .config import format_validation_error
from .io import read_json, write_json

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn as nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
RUN_RECORD_FILES = ("result.json", "metrics.jsonl")
HUB_PATTERNS = [CONFIG_FILE, "*.safetensors", "model.safetensors.index.json"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
IMAGE_SIZE = 32


class HubConfig(BaseModel):
    """``config.json`` of a saved model: everything needed to rebuild and use it."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str = Field(description="registry name")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor options")
    num_classes: int = Field(gt=0)
    dataset: str
    mean: tuple[float, float, float] = Field(description="per-channel mean of the training inputs in [0, 1]")
    std: tuple[float, float, float]
    classes: list[str]
    cifarlab_version: str = __version__

    @model_validator(mode="after")
    def _one_name_per_class(self) -> "HubConfig":
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for {self.num_classes} classes")
        return self


@dataclass
class Pretrained:
    """A loaded model (eval mode), its config and where it came from."""

    model: nn.Module
    config: HubConfig
    source: str


def hub_config(name: str, model_kwargs: dict[str, Any] | None = None, dataset: str = "cifar100",
               mean=None, std=None) -> HubConfig:
    """The config of registry model ``name`` trained on ``dataset`` (mean/std default to its constants)."""
    from .data.meta import DATASETS
    from .models import get_entry

    get_entry(name)
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

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_torch_model(model, folder, metadata={"format": "pt", "cifarlab_model": config.model})
    write_json(folder / CONFIG_FILE, config.model_dump(mode="json"))
    return folder


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
        if (path / "checkpoints").is_dir():
            return _load_run(path, device)[0]
        return _load_folder(path, str(path), device)
    if path.exists():
        raise CifarlabError(f"{path} is a file; give a saved-model folder, a run folder or a Hub repo id")
    repo_id = str(repo_or_path)
    if not REPO_ID.match(repo_id):
        raise CifarlabError(f"{repo_id}: no such folder, and not a Hub repo id (USER/NAME)")
    return _load_folder(_download(repo_id, revision, token), f"hf://{repo_id}", device)


def _build(config: HubConfig) -> nn.Module:
    from .models import build_model

    try:
        return build_model(config.model, config.num_classes, config.model_kwargs)
    except (TypeError, ValueError) as e:
        raise CifarlabError(f"cannot build {config.model} with options {config.model_kwargs}: {e}") from None


def _read_config(path: Path, where: str) -> HubConfig:
    if not path.is_file():
        raise CifarlabError(f"{where} holds no {CONFIG_FILE}; it is not a saved cifarlab model")
    try:
        return HubConfig(**read_json(path))
    except ValidationError as e:
        raise CifarlabError(f"{where}/{CONFIG_FILE}: {format_validation_error(e, 'config')}") from None
    except (ValueError, TypeError) as e:
        raise CifarlabError(f"{where}/{CONFIG_FILE} is not a cifarlab model config ({e})") from None


def _load_folder(folder: Path, where: str, device: str | torch.device) -> Pretrained:
    from huggingface_hub import load_torch_model

    from .train.checkpoint import check_weights

    config = _read_config(folder / CONFIG_FILE, where)
    model = _build(config)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CifarlabError(f"{where} holds no safetensors weights")
    check_weights(model, files, where)
    try:
        load_torch_model(model, folder, strict=True, map_location=str(device))
    except (RuntimeError, ValueError, OSError) as e:
        detail = " ".join(str(e).split())[:300]
        raise CifarlabError(f"{where}: the weights do not fit {config.model} {config.model_kwargs}: {detail}") from None
    return Pretrained(model.to(device).eval(), config, where)


def _load_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[Pretrained, int, bool]:
    """(model of the newest intact checkpoint, its epoch, whether those are EMA weights) of a finished run."""
    from .train.checkpoint import find_latest
    from .train.evaluate import load_run_model

    result_path = run_dir / "result.json"
    if not result_path.is_file():
        raise CifarlabError(f"{run_dir} has no result.json (unfinished run): its normalisation statistics are "
                            f"unknown; finish it with `cifarlab train ... --resume`")
    cfg, model, epoch = load_run_model(run_dir, use_ema=True, device=device)
    _, ckpt, _ = find_latest(run_dir / "checkpoints")
    result = read_json(result_path)
    config = hub_config(cfg.model, cfg.model_kwargs, cfg.dataset, result["mean"], result["std"])
    return Pretrained(model, config, f"{run_dir} (epoch {epoch})"), epoch, (ckpt / "ema.safetensors").is_file()


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, read the way huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _network_errors() -> tuple[type[BaseException], ...]:
    """The Hub client's HTTP errors plus those of the HTTP library it loaded (httpx2, httpx or requests)."""
    from huggingface_hub.errors import HfHubHTTPError

    found: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def _download(repo_id: str, revision: str | None, token: str | None) -> Path:
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
        return Path(snapshot_download(repo_id, revision=revision, token=token, allow_patterns=HUB_PATTERNS,
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
    except _network_errors() as e:
        raise CifarlabError(f"could not download {repo_id} from the Hub ({type(e).__name__}): "
                            f"{_first_line(e)}") from None


# ---------------------------------------------------------------------------------------------- push


def _pct(x: float) -> str:
    return f"{x:.2%}"


def _table(rows: list[tuple[str, Any]]) -> str:
    """A two-column Markdown table; rows whose value is None are left out."""
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    return "\n".join(lines)


def _recipe_rows(c: dict[str, Any], world_size: int) -> list[tuple[str, Any]]:
    aug = c.get("augment", {})
    sgd = c["optimizer"] == "sgd"
    warmup = c["warmup_epochs"] if c.get("warmup_epochs") is not None else "default (min(2, 10% of epochs))"
    return [
        ("optimizer", f"{c['optimizer']}" + (f", momentum {c['momentum']}, nesterov {c['nesterov']}" if sgd
                                              else f", betas {tuple(c['betas'])}")),
        ("learning rate", c["lr"]),
        ("weight decay", f"{c['weight_decay']} (not on norms and biases)"),
        ("epochs", c["epochs"]),
        ("batch size", f"{c['batch_size']} per process x {world_size} process(es)"),
        ("schedule", c["schedule"] + (f" (milestones {c['milestones']}, gamma {c['gamma']})"
                                      if c["schedule"] == "multistep" else "")),
        ("warm-up epochs", warmup),
        ("label smoothing", c["label_smoothing"]),
        ("gradient clipping", c["grad_clip"] if c.get("grad_clip") else "off"),
        ("weight EMA", f"decay {c['ema_decay']}" if c.get("ema_decay") else "off"),
        ("augmentation", f"random crop (pad {aug.get('crop_padding')}), horizontal flip {aug.get('hflip')}, "
                         f"cutout {aug.get('cutout') or 'off'}"),
        ("precision", c["precision"]),
        ("seed", c["seed"]),
    ]


def model_card(result: dict[str, Any], config: HubConfig, repo_id: str, weights_epoch: int, ema: bool) -> str:
    """README.md for a pushed run; every number is taken from ``result`` (the run's result.json)."""
    from huggingface_hub import EvalResult, ModelCardData

    from .data.meta import DATASETS
    from .models import get_entry

    entry = get_entry(result["model"])
    info = DATASETS[result["dataset"]]
    synthetic = result.get("source_kind") == "synthetic"
    sizes = result["split_sizes"]
    meta: dict[str, Any] = dict(
        library_name="cifarlab", pipeline_tag="image-classification", metrics=["accuracy"],
        tags=["cifarlab", "image-classification", "pytorch", entry.family, result["model"], result["dataset"]]
        + (["synthetic-data"] if synthetic else []),
    )
    if not synthetic:  # a leaderboard entry only for real data
        common = dict(task_type="image-classification", dataset_type=info.hub_id, dataset_name=info.name,
                      dataset_split="test")
        meta.update(datasets=[info.hub_id], model_name=repo_id.split("/")[-1], eval_results=[
            EvalResult(**common, metric_type="accuracy", metric_name="top-1 accuracy", metric_value=result["top1"]),
            EvalResult(**common, metric_type="top5_accuracy", metric_name="top-5 accuracy",
                       metric_value=result["top5"]),
        ])
    run_cfg = result["config"]
    epoch_note = None
    if weights_epoch != result["selected_epoch"]:
        epoch_note = (f"The weights are from epoch {weights_epoch} (the newest intact checkpoint); the accuracy "
                      f"below was measured at epoch {result['selected_epoch']} ({result['selection']}).")
    results_rows = [
        ("test top-1", _pct(result["top1"])), ("test top-5", _pct(result["top5"])),
        ("test loss", result.get("test_loss")),
        ("validation top-1", _pct(result["val_top1"]) if "val_top1" in result else None),
        ("validation top-5", _pct(result["val_top5"]) if "val_top5" in result else None),
        ("reported epoch", f"{result['selected_epoch']} ({result['selection']})"),
    ]
    inf = result.get("inference") or {}
    env = result.get("environment") or {}
    peak = result.get("peak_memory_bytes")
    time_rows = [
        ("total wall time (decode, build, train, eval, checkpoints)", f"{result['train_seconds']:.1f} s"),
        ("training steps only", f"{result['train_step_seconds']:.1f} s" if "train_step_seconds" in result else None),
        ("training throughput (steps only)", f"{result['images_per_second']:,.1f} images/s"),
        ("device", f"{result['device']} x {result.get('world_size', 1)}"),
        ("peak accelerator memory", f"{peak / 2**20:,.1f} MiB" if peak else None),
        ("inference latency, batch 1", f"{inf['latency_ms_batch1']:.2f} ms" if "latency_ms_batch1" in inf else None),
        ("inference throughput", f"{inf['images_per_second']:,.1f} images/s at batch {inf['throughput_batch_size']}"
         if "images_per_second" in inf else None),
        ("software", ", ".join(f"{k} {env[k]}" for k in ("torch", "accelerate", "cifarlab") if env.get(k)) or None),
        ("git commit", f"`{result.get('git_commit')}`"),
        ("finished", result.get("finished_at")),
    ]
    kwargs = json.dumps(config.model_kwargs) if config.model_kwargs else "registry defaults"
    sections = [
        f"# {result['model']} on {result['dataset']}",
        f"`{result['model']}` ({entry.family} family, {entry.tier} tier) trained from scratch with cifarlab: "
        f"test top-1 **{_pct(result['top1'])}**, top-5 **{_pct(result['top5'])}** on {sizes['test']:,} test images.",
    ]
    if synthetic:
        sections.append("> **Trained on synthetic data** (cifarlab's offline stand-in in the CIFAR schema): these "
                        "numbers say nothing about accuracy on real CIFAR images.")
    sections += [
        "## Model",
        _table([("architecture", entry.arch), ("adapted for 32x32", entry.adaptation or None),
                ("paper", entry.paper), ("options (model_kwargs)", f"`{kwargs}`"),
                ("parameters", f"{result['params']:,}"),
                ("MACs", f"{result['macs'] / 1e6:,.2f} M ({result['mac_convention']})"),
                ("weights", f"{'EMA' if ema else 'raw'} weights of epoch {weights_epoch}")]),
        "## Data",
        _table([("dataset", result["dataset"]), ("source", f"`{result['source']}` ({result['source_kind']})"),
                ("fingerprint", f"`{result['dataset_fingerprint']}`"),
                ("split sizes", ", ".join(f"{k} {v:,}" for k, v in sizes.items())),
                ("normalisation", f"mean {tuple(result['mean'])}, std {tuple(result['std'])} "
                                  f"({result.get('stats_source', 'recorded')})")]),
        "## Training recipe",
        _table(_recipe_rows(run_cfg, result.get("world_size", 1))),
        "## Results",
        *([epoch_note] if epoch_note else []),
        _table(results_rows),
        "## Training time and hardware",
        _table(time_rows),
        "## How to load",
        "```python\nfrom cifarlab.models import from_pretrained\n\n"
        f'model = from_pretrained("{repo_id}")  # rebuilds {result["model"]} from the registry, in eval mode\n'
        "# inputs: N x 3 x 32 x 32 RGB scaled to [0, 1], then normalised with config.json's mean and std\n\n"
        "from cifarlab.hub import load_pretrained, predict\n\n"
        f'pre = load_pretrained("{repo_id}")  # model + config (classes, mean, std)\n'
        'print(predict(pre, ["photo.jpg"]))  # top-5 classes with probabilities\n'
        "```",
        f"```bash\ncifarlab predict {repo_id} photo.jpg   # top-5 classes for any image file\n```",
        "## Files",
        f"- `{WEIGHTS_FILE}`: weights; `{CONFIG_FILE}`: registry name, options, classes, normalisation\n"
        "- `result.json`: the full run record (per-class accuracy, per-image test correctness, environment)\n"
        "- `metrics.jsonl`: one line per epoch (loss, accuracy, learning rate, epoch time)",
    ]
    return f"---\n{ModelCardData(**meta).to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def build_upload_folder(run_dir: str | Path, folder: str | Path, repo_id: str) -> list[str]:
    """Write what ``push`` uploads for a finished run into ``folder``; returns the file names."""
    run_dir, folder = Path(run_dir), Path(folder)
    if not (run_dir / "result.json").is_file():
        raise CifarlabError(f"{run_dir} is not a finished run (no result.json); push needs a finished run")
    if folder.exists() and any(folder.iterdir()):
        raise CifarlabError(f"{folder} is not empty; give a new or empty folder to write the upload into")
    result = read_json(run_dir / "result.json")
    pre, epoch, ema = _load_run(run_dir)
    save_with_config(pre.model, folder, pre.config)
    for name in RUN_RECORD_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, folder / name)
    (folder / CARD_FILE).write_text(model_card(result, pre.config, repo_id, epoch, ema))
    return sorted(p.name for p in folder.iterdir())


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.match(repo_id) or len(repo_id.split("/")[1]) > 96:
        raise CifarlabError(f"--repo-id {repo_id!r}: expected USER/NAME (letters, digits, '-', '_', '.')")


def _check_can_upload() -> None:
    from huggingface_hub import get_token

    if hub_offline():
        raise CifarlabError("offline mode (HF_HUB_OFFLINE=1): nothing uploaded; unset it, or use --dry-run to only "
                            "write the folder")
    if get_token() is None:
        raise CifarlabError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (or use --dry-run)")


def upload_folder(folder: Path, repo_id: str, private: bool, message: str) -> str:
    """Create (or reuse) the model repo and upload ``folder`` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(library_name="cifarlab", library_version=__version__)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if private and not api.repo_info(repo_id, repo_type="model").private:
            raise CifarlabError(f"{repo_id} already exists and is public; --private cannot make it private "
                                f"(change it in the repo settings, or push to a new name)")
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                   commit_message=message)
    except _network_errors() as e:
        raise CifarlabError(f"upload to {repo_id} failed ({type(e).__name__}): {_first_line(e)}") from None
    return str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}")


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, dry_run: bool = False,
             out: str | Path | None = None, message: str | None = None) -> tuple[Path, list[str], str | None]:
    """Build the upload folder of a finished run and upload it (unless ``dry_run``).

    Returns (folder, file names, commit URL or None). Without ``out`` the folder is temporary: a dry
    run keeps it, an upload (or a failure) removes it.
    """
    check_repo_id(repo_id)
    if not dry_run:
        _check_can_upload()
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="cifarlab-push-"))
    keep = False
    try:
        files = build_upload_folder(run_dir, folder, repo_id)
        keep = dry_run
        url = None if dry_run else upload_folder(folder, repo_id, private,
                                                 message or f"cifarlab push of {Path(run_dir).name}")
    finally:
        if out is None and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return folder, files, url


# ------------------------------------------------------------------------------------------- predict


def prepare_image(path: str | Path) -> np.ndarray:
    """An image file of any size as uint8 (32, 32, 3) RGB: centre square crop, then bicubic (antialiased) resize."""
    import numpy as np
    from PIL import Image

    from .data.images import open_image

    im = open_image(path, what=f"cannot read image {path}").convert("RGB")
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(im, dtype=np.uint8)


def normalize_images(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 NHWC -> float NCHW scaled to [0, 1] and standardised (the training transform)."""
    import numpy as np
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0
    return ((x - torch.tensor(mean)) / torch.tensor(std)).permute(0, 3, 1, 2).contiguous()


def predict(pre: Pretrained, paths: list[str | Path], top: int = 5) -> list[dict[str, Any]]:
    """Top-``top`` classes with probabilities for each image file."""
    import numpy as np
    import torch

    images = np.stack([prepare_image(p) for p in paths])
    device = next(pre.model.parameters()).device
    with torch.no_grad():
        logits = pre.model(normalize_images(images, pre.config.mean, pre.config.std).to(device))
    probs = torch.softmax(logits.float(), 1)
    p, idx = probs.topk(min(top, pre.config.num_classes), dim=1)
    return [{"image": str(path), "top": [{"class": pre.config.classes[i], "index": i, "probability": round(q, 6)}
                                         for q, i in zip(pr.tolist(), ix.tolist())]}
            for path, pr, ix in zip(paths, p.cpu(), idx.cpu())]


# ----------------------------------------------------------------------------------------------- CLI


def cmd_push(args: argparse.Namespace) -> int:
    folder, files, url = push_run(args.run_dir, args.repo_id, private=args.private, dry_run=args.dry_run,
                                  out=args.out, message=args.message)
    if args.dry_run:
        print(f"dry run: nothing uploaded; the folder for {args.repo_id} is {folder}")
        for name in files:
            print(f"  {name:<22} {(folder / name).stat().st_size:>12,} bytes")
    else:
        print(f"uploaded {len(files)} files ({', '.join(files)}) to {args.repo_id}"
              f"{' (private)' if args.private else ''}: {url}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise CifarlabError(f"no such image file: {', '.join(missing)}")
    if args.top < 1:
        raise CifarlabError("--top must be at least 1")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pre = load_pretrained(args.source, device=device, revision=args.revision)
    out = predict(pre, args.images, args.top)
    if args.json:
        print(json.dumps({"model": pre.config.model, "source": pre.source, "predictions": out}, indent=1))
        return 0
    for row in out:
        print(row["image"])
        for t in row["top"]:
            print(f"  {t['probability']:8.2%}  {t['class']}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("push", help="upload a finished run to the Hugging Face Hub with a generated model card")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--repo-id", required=True, help="USER/NAME (or ORG/NAME) of the model repo")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="write the folder that would be uploaded, print its path")
    p.add_argument("--out", help="folder to write the upload into (default: a new temporary folder)")
    p.add_argument("--message", help="commit message")
    p.set_defaults(func=cmd_push)

    q = sub.add_parser("predict", help="top-5 classes for image files, with a run folder, a saved folder or a Hub repo")
    q.add_argument("source", metavar="RUN_DIR_OR_REPO")
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.add_argument("--top", type=int, default=5, help="how many classes to print per image (default 5)")
    q.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_predict)
