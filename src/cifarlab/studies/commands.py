"""``cifarlab study list|plan|run|table``: the CLI of the study runner."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .. import CifarlabError
from ..config import set_overrides
from . import stats
from .ray_executor import DEFAULT_MAX_RETRIES
from .runner import Outcome, plan_lines, records_in, run_study, study_records
from .spec import DEFAULT_MAX_RUNS, Study, load_study, parse_shard, shipped_studies
from .table import format_table, summary_table

STUDY_HELP = "a shipped study by name (cifarlab study list) or a study YAML file"


def _study(args: argparse.Namespace) -> Study:
    patterns = [p.strip() for p in args.variants.split(",") if p.strip()] if args.variants else None
    return load_study(args.file, set_overrides(args.set), args.max_runs).select(patterns)


def _target(args: argparse.Namespace) -> float:
    """``--detect`` (points of top-1) as a fraction."""
    if not args.detect > 0:
        raise CifarlabError(f"--detect must be a positive difference in points of top-1, got {args.detect}")
    return args.detect / 100


def cmd_list(args: argparse.Namespace) -> int:
    """The shipped studies: name, variants x seeds, the first line of the description."""
    rows = []
    for name in shipped_studies():
        study = load_study(name)
        rows.append({"name": name, "variants": len(study.variants), "seeds": len(study.seeds),
                     "description": study.description.strip().splitlines()[0] if study.description.strip() else ""})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'study':<18} {'variants x seeds':>16}  question")
    for r in rows:
        print(f"{r['name']:<18} {r['variants']:>8} x {r['seeds']:<5}  {r['description']}")
    print("(cifarlab study plan NAME lists the runs; a study file of your own is given by its path)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    study = _study(args)
    lines, ok = plan_lines(study, args.out, parse_shard(args.shard))
    spread = stats.seed_spread([r.record["top1"] for r in recs] for recs in study_records(study, args.out).values())
    lines += ["", *stats.design_lines(len(study.seeds), spread.sd, spread.source, _target(args))]
    print("\n".join(lines))
    return 0 if ok else 1


RAY_OPTIONS = ("address", "cpus_per_run", "gpus_per_run", "max_retries", "ray_dashboard")


def execute(study: Study, out: str | Path, args: argparse.Namespace) -> list[Outcome]:
    """Run what is missing of ``study`` under ``out`` with the executor and shard of the command line
    (:func:`add_executor_options`)."""
    shard = parse_shard(args.shard)
    if args.executor == "serial":
        given = [f"--{o.replace('_', '-')}" for o in RAY_OPTIONS if getattr(args, o) not in (None, False)]
        if given:
            raise CifarlabError(f"{', '.join(given)} need --executor ray")
        return run_study(study, out, shard, progress=not args.no_progress, retry_failed=args.retry_failed)
    from .ray_executor import run_study_ray

    return run_study_ray(study, out, shard, address=args.address, cpus_per_run=args.cpus_per_run or 1,
                         gpus_per_run=args.gpus_per_run or 0, retry_failed=args.retry_failed,
                         max_retries=DEFAULT_MAX_RETRIES if args.max_retries is None else args.max_retries,
                         dashboard=args.ray_dashboard)


def cmd_run(args: argparse.Namespace) -> int:
    study = _study(args)
    outcomes = execute(study, args.out, args)
    if args.executor == "ray":
        _print_table(f"study {study.name}, runs under {Path(args.out) / study.name}",
                     study.describe()["variants"], study_records(study, args.out), as_json=False)
    return 1 if any(o.status in ("failed", "changed") for o in outcomes) else 0


def _print_table(title: str, variants: list[dict[str, Any]], records: dict, as_json: bool,
                 n_seeds: int | None = None, target: float = stats.TARGET_DIFFERENCE) -> None:
    """The study table; ``n_seeds``: the study's seeds per variant for its design lines (default: the most any
    variant has finished)."""
    rows = summary_table(variants, records)
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        n_seeds = n_seeds if n_seeds is not None else max((r["n_seeds"] for r in rows), default=0)
        print(format_table(rows, f"{title}: {sum(r['n_seeds'] for r in rows)} finished runs", n_seeds, target))


def cmd_table(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.is_dir():
        if args.variants or args.set:
            raise CifarlabError("--variants and --set need a study file, not a folder")
        variants, records = records_in(path)
        title, n_seeds = f"study folder {path}", None
    else:
        study = _study(args)
        variants, records = study.describe()["variants"], study_records(study, args.out)
        title = f"study {study.name} ({study.source}), runs under {Path(args.out) / study.name}"
        n_seeds = len(study.seeds)
    if args.baseline:
        names = [v["name"] for v in variants]
        if args.baseline not in names:
            raise CifarlabError(f"--baseline {args.baseline!r} is not a variant; variants: {', '.join(names)}")
        variants = [{**v, "baseline": args.baseline} for v in variants]
    _print_table(title, variants, records, args.json, n_seeds, _target(args))
    return 0


def add_executor_options(r: argparse.ArgumentParser) -> None:
    """The options of :func:`execute`: shard, progress, retries, and the executor with its Ray options."""
    r.add_argument("--shard", default="0/1", metavar="I/N",
                   help="run shard I of N (0-based): every N-th run starting at I; shards' folders merge by copying")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (per-epoch and per-run lines only)")
    r.add_argument("--retry-failed", action="store_true", help="run the runs that failed before again (resumed)")
    r.add_argument("--executor", choices=("serial", "ray"), default="serial",
                   help="serial: one run after another in this process; ray: one Ray task per run (docs/cluster.md)")
    g = r.add_argument_group("ray executor (pip install 'cifarlab[ray]')")
    g.add_argument("--address", metavar="auto|HOST:PORT",
                   help="the Ray cluster to use; default: a local instance on 127.0.0.1 with this machine's devices")
    g.add_argument("--cpus-per-run", type=float, metavar="N", help="CPUs each run holds (default 1)")
    g.add_argument("--gpus-per-run", type=float, metavar="F",
                   help="GPUs each run holds; a fraction packs runs onto one GPU, e.g. 0.25 (default 0: CPU runs)")
    g.add_argument("--max-retries", type=int, metavar="K",
                   help=f"retries of a run whose worker or node dies or that raises (default {DEFAULT_MAX_RETRIES}); "
                        "each resumes from the run's last complete epoch")
    g.add_argument("--ray-dashboard", action="store_true",
                   help="start the local instance with Ray's dashboard (127.0.0.1:8265; needs ray[default])")


def add_commands(sub) -> None:
    s = sub.add_parser("study", help="plan, run and tabulate studies (YAML files of variants x seeds)")
    ss = s.add_subparsers(dest="study_command", required=True)

    def common(p: argparse.ArgumentParser, file_help: str) -> None:
        p.add_argument("file", metavar="STUDY", help=file_help)
        p.add_argument("--out", default="runs", help="folder that holds the study folders (default: runs)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field in every run, e.g. --set epochs=30 (changes the runs' configs)")
        p.add_argument("--variants", metavar="PATTERNS",
                       help="comma-separated shell patterns of variant names, e.g. 'resnet20*,eca_resnet20*' "
                            "(their baselines are included)")
        p.add_argument("--max-runs", type=int, default=DEFAULT_MAX_RUNS, metavar="N",
                       help=f"refuse a study of more than N runs, counted before it is expanded "
                            f"(default {DEFAULT_MAX_RUNS:,})")

    def detect(p: argparse.ArgumentParser) -> None:
        p.add_argument("--detect", type=float, default=100 * stats.TARGET_DIFFERENCE, metavar="PP",
                       help="difference of top-1 (points) to size the design for: the seeds it needs at "
                            f"{100 * stats.POWER:.0f}%% power (default {100 * stats.TARGET_DIFFERENCE:g})")

    ls = ss.add_parser("list", help="the shipped studies: name, variants x seeds, question")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    p = ss.add_parser("plan", help="list the runs, which are done, the device time left, and what the seeds can "
                                   "detect")
    common(p, STUDY_HELP)
    p.add_argument("--shard", default="0/1", metavar="I/N", help="only shard I of N (0-based)")
    detect(p)
    p.set_defaults(func=cmd_plan)

    r = ss.add_parser("run", help="run what is missing: skip finished runs, resume interrupted ones, record failures")
    common(r, STUDY_HELP)
    add_executor_options(r)
    r.set_defaults(func=cmd_run)

    t = ss.add_parser("table", help="mean ± std per variant and Δ vs the baseline with a 95%% CI")
    common(t, STUDY_HELP + ", or a study folder <out>/<study>")
    t.add_argument("--baseline", help="compare every variant with this one instead of the file's baselines")
    t.add_argument("--json", action="store_true", help="print the rows as JSON")
    detect(t)
    t.set_defaults(func=cmd_table)
