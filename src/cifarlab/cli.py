"""The ``cifarlab`` command line. Errors the user can fix print one line and exit 2."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from . import CifarlabError
from .config import set_dotted, set_overrides
from .io import load_yaml

TRAIN_FLAGS = {  # flag -> (config field, type, help)
    "--model": ("model", str, "registered model name (see `cifarlab models`)"),
    "--dataset": ("dataset", str, "cifar100 (default) or cifar10"),
    "--data": ("data", str, "Hub id, local parquet folder, cifar-*-python folder or .tar.gz, or "
                            "'synthetic[:TRAIN[:TEST]]'"),
    "--epochs": ("epochs", int, None),
    "--batch-size": ("batch_size", int, "per process"),
    "--lr": ("lr", float, None),
    "--seed": ("seed", int, None),
    "--val-split": ("val_split", int, "carve N stratified validation images from train; selects the reported epoch"),
    "--train-subset": ("train_subset", int, "train on a stratified subset of N images (smoke runs); 0 = all"),
    "--optimizer": ("optimizer", str, "sgd or adamw"),
    "--weight-decay": ("weight_decay", float, None),
    "--schedule": ("schedule", str, "cosine, linear, constant, multistep, step or exponential"),
    "--warmup-epochs": ("warmup_epochs", float, None),
    "--label-smoothing": ("label_smoothing", float, None),
    "--grad-clip": ("grad_clip", float, None),
    "--ema-decay": ("ema_decay", float, None),
    "--precision": ("precision", str, "auto, bf16 or fp32"),
    "--cuda-graph": ("cuda_graph", str, "auto, on or off: replay the training step as one CUDA graph"),
    "--report-to": ("report_to", str, "experiment trackers, comma-separated: tensorboard (default), mlflow, wandb; "
                                      "or none (docs/tracking.md)"),
}


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from --config FILE, then the flags, then --set key=value (last wins)."""
    over: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise CifarlabError(f"config file {path} does not exist")
        loaded = load_yaml(path.read_bytes(), f"{path}: not a valid YAML file") or {}
        if not isinstance(loaded, dict):
            raise CifarlabError(f"{path}: expected a mapping of config fields")
        over.update(loaded)
    for field, _, _ in TRAIN_FLAGS.values():
        v = getattr(args, field)
        if v is not None:
            over[field] = v
    if args.compile:
        over["compile"] = True
    if args.deterministic:
        over["deterministic"] = True
    if args.cutout is not None:
        set_dotted(over, "augment.cutout", args.cutout)
    return set_overrides(args.set, over)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config
    from .train import fit

    cfg = build_config(train_overrides(args))
    name = args.name or f"{cfg.model}-{cfg.dataset}-seed{cfg.seed}"
    run_dir = Path(args.out) / name
    result = fit(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  ({run_dir})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """ResNet-20 on real CIFAR-100 for a few epochs; synthetic only when no real source can be reached."""
    import torch

    from .config import build_config
    from .data import load_data
    from .train import fit

    source = args.data or os.environ.get("CIFARLAB_DATA") or None
    try:
        data = load_data("cifar100", source)
    except CifarlabError as e:
        if source:
            raise
        print("\n" + "!" * 78 + f"\n!! No real CIFAR-100 reachable: {e}\n!! FALLING BACK TO SYNTHETIC DATA: "
              "the accuracy below is NOT a CIFAR-100 number.\n!! Pass --data PATH (or set CIFARLAB_DATA) "
              "to use a local copy.\n" + "!" * 78 + "\n", file=sys.stderr)
        source = "synthetic"
        data = load_data("cifar100", source)
    gpu = torch.cuda.is_available()  # the default recipe is batch 512 / lr 0.4; a CPU smoke run takes smaller steps
    limit = args.limit_train if args.limit_train is not None else (0 if gpu else 10_000)
    if limit and limit < len(data.train):
        print(f"no GPU: training on a stratified subset of {limit} images (--limit-train 0 for all)")
    cfg = build_config({"model": "resnet20", "data": source, "epochs": args.epochs, "train_subset": limit,
                        "batch_size": 512 if gpu else 128, "lr": 0.4 if gpu else 0.1})
    result = fit(cfg, Path(args.out) / "demo-resnet20", overwrite=True, data=data)
    print(f"\nResNet-20, {args.epochs} epochs on {result['dataset']} ({result['source_kind']}, "
          f"{result['split_sizes']}): test top-1 {result['top1']:.2%}, top-5 {result['top5']:.2%}, "
          f"{result['train_seconds']:.0f} s on {result['device']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .train.evaluate import evaluate_run

    out = evaluate_run(Path(args.run_dir), split=args.split, use_ema=not args.no_ema, data=args.data)
    per_image = ("test_labels", "test_predictions", "test_correct", "per_class_accuracy", "calibration")
    print(json.dumps({k: v for k, v in out.items() if k not in per_image}) if args.json else
          f"{out['model']} on {out['source_description']} {out['split']} ({out['images']} images, epoch "
          f"{out['epoch']}): top-1 {out['top1']:.4f}  top-5 {out['top5']:.4f}  NLL {out['nll']:.4f}  "
          f"ECE {out['ece']:.4f}  ({out['path']})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import count_macs, count_params, create, get_entry, list_models
    from .models.complexity import MAC_CONVENTION

    rows = []
    for name in list_models(family=args.family, tier=args.tier):
        e = get_entry(name)
        m = create(name, num_classes=100)
        rows.append({"name": name, "family": e.family, "tier": e.tier, "params": count_params(m),
                     "macs": count_macs(m), "paper": e.paper})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':<28} {'family':<18} {'tier':<9} {'params':>12} {'MACs (M)':>10}")
    for r in rows:
        print(f"{r['name']:<28} {r['family']:<18} {r['tier']:<9} {r['params']:>12,} {r['macs'] / 1e6:>10.2f}")
    print(f"({len(rows)} models, 100 classes; {MAC_CONVENTION})")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .train.profile import profile_model

    out = profile_model(args.model, batch_size=args.batch_size, compile=args.compile, steps=args.steps,
                        cuda_graph=False if args.eager else None)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for k, v in out.items():
        print(f"{k:<28} {v:,}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k:<28} {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cifarlab", description="CIFAR-100 classification research workbench")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one model and write a run folder")
    for flag, (field, typ, hlp) in TRAIN_FLAGS.items():
        t.add_argument(flag, dest=field, type=typ, default=None, help=hlp)
    t.add_argument("--cutout", type=int, default=None, help="cutout square side in pixels (0 = off)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower)")
    t.add_argument("--config", help="YAML file of config fields")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config field, e.g. --set augment.hflip=false")
    t.add_argument("--out", default="runs", help="folder that holds run folders (default: runs)")
    t.add_argument("--name", help="run folder name (default: MODEL-DATASET-seedSEED)")
    t.add_argument("--resume", action="store_true", help="continue the run in the run folder from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run folder and start again")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (per-epoch lines only)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run's last checkpoint on its own or any other test set")
    e.add_argument("run_dir")
    e.add_argument("--data", help="another source to evaluate on (any --data source of train, or one .parquet file "
                                  "of test images); default: the run's own")
    e.add_argument("--split", default="test", choices=["test", "val", "train"])
    e.add_argument("--no-ema", action="store_true", help="use the raw weights even if the run kept an EMA")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="train ResNet-20 on real CIFAR-100 for a few epochs and print top-1/top-5")
    d.add_argument("--data", help="local copy (parquet folder, cifar-100-python[.tar.gz]); default $CIFARLAB_DATA, "
                                  "else the Hub")
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--limit-train", type=int, default=None,
                   help="stratified training subset (default: all on a GPU, 10,000 on a CPU; 0 = all)")
    d.add_argument("--out", default="runs")
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("models", help="list registered models with params and MACs")
    m.add_argument("--json", action="store_true")
    m.add_argument("--family")
    m.add_argument("--tier", choices=["small", "standard"])
    m.set_defaults(func=cmd_models)

    pr = sub.add_parser("profile", help="params, MACs, train/inference speed and memory of one model on this device")
    pr.add_argument("model")
    pr.add_argument("--batch-size", type=int, default=256)
    pr.add_argument("--steps", type=int, default=20)
    pr.add_argument("--compile", action="store_true")
    pr.add_argument("--eager", action="store_true", help="time the eager training step (default on CUDA: the step "
                                                        "replayed as one CUDA graph, as the engine trains)")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_profile)

    # Commands defined next to their feature: each module has add_commands(subparsers).
    from .hub.commands import add_commands as hub_commands
    from .report.commands import add_commands as report_commands
    from .report.runs import add_commands as runs_commands
    from .reproduce.commands import add_commands as reproduce_commands
    from .studies.commands import add_commands as study_commands

    for add in (study_commands, report_commands, runs_commands, hub_commands, reproduce_commands):
        add(sub)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or `kill`), handled like Ctrl-C so the run stops cleanly."""


def _raise_terminated(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        return args.func(args)
    except CifarlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}: the last completed epoch is checkpointed; continue with --resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # out of memory or disk space gets advice; anything else is a bug and keeps its traceback
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            print("error: the device ran out of memory; try a smaller --batch-size (with --overwrite to restart "
                  "the run folder)", file=sys.stderr)
            return 3
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            print(f"error: no space left on the disk ({e.filename or 'while writing'}); the last completed epoch is "
                  f"checkpointed: free some space and continue with --resume", file=sys.stderr)
            return 3
        raise
    finally:
        if on_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
