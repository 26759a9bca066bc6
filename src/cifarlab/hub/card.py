"""The model card (README.md) of a pushed run: every number is read from the run's validated record."""

from __future__ import annotations

import json
from typing import Any

from ..run import FinishedRun
from ..run.folder import METRICS, RESULT
from .saved import CONFIG_FILE, WEIGHTS_FILE, HubConfig


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


def model_card(run: FinishedRun, config: HubConfig, repo_id: str, weights_epoch: int, ema: bool) -> str:
    """README.md for a pushed run; every number is taken from the run's record (its result.json)."""
    from huggingface_hub import EvalResult, ModelCardData

    from ..data.meta import DATASETS
    from ..models import get_entry

    result = run.record
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
        "```python\nfrom cifarlab.hub import from_pretrained\n\n"
        f'model = from_pretrained("{repo_id}")  # rebuilds {result["model"]} from the registry, in eval mode\n'
        f"# inputs: N x 3 x 32 x 32 RGB scaled to [0, 1], then normalised with {CONFIG_FILE}'s mean and std\n\n"
        "from cifarlab.hub import load_pretrained, predict\n\n"
        f'pre = load_pretrained("{repo_id}")  # model + config (classes, mean, std)\n'
        'print(predict(pre, ["photo.jpg"]))  # top-5 classes with probabilities\n'
        "```",
        f"```bash\ncifarlab predict {repo_id} photo.jpg   # top-5 classes for any image file\n```",
        "## Files",
        f"- `{WEIGHTS_FILE}`: weights; `{CONFIG_FILE}`: registry name, options, classes, normalisation\n"
        f"- `{RESULT}`: the full run record (per-class accuracy, per-image test correctness, environment)\n"
        f"- `{METRICS}`: one line per epoch (loss, accuracy, learning rate, epoch time)\n"
        f"- `training_config.json`: the run's training config (what `cifarlab reproduce` re-trains)",
    ]
    return f"---\n{ModelCardData(**meta).to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
