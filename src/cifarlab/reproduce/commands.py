"""``cifarlab reproduce``: audit a record, train it again and say whether its figure holds up; or check a figure
from elsewhere (``--model M --claim PCT``) against runs of cifarlab's recipe."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .. import CifarlabError
from ..config import build_config, set_overrides
from ..run import FinishedRun, load_finished
from ..run.folder import METRICS, REPRODUCE, RESULT
from ..studies import stats
from ..studies.commands import add_executor_options, execute
from ..studies.runner import RunState, records_in, run_state
from ..studies.spec import Study
from .audit import DIFFERS, OK, REFUSED, Check, Here, audit, load_data_here
from .record import SUMMARY_FILE, Reproduction, write
from .render import pct
from .retrain import refuse_recorded_folders, reproduction_seeds, reproduction_study, study_of_configs
from .source import Source, folder_name, load_source
from .verdict import SameSeed, best_test_top1, choose_spread, prediction_interval, same_seed, study_lines

DEFAULT_SEEDS = 3
INTEGRITY = ("top-1", "reported epoch", METRICS, "training config", "variant config")  # the record against itself
BEST_ON_TEST = ("Best-on-test is optimistic: each run's figure is its best test top-1 over the epochs, an epoch "
                "chosen on the test images themselves, so it overstates what the run does on images it was not "
                "selected on. A claim made that way is compared with figures made the same way here; the final "
                "epoch (or the best on a validation split) is the honest figure.")
FINAL_NOTE = ("Each run's figure is its final epoch's test top-1. A claim that reports the best epoch on the test "
              "set is optimistic and tends to read 'higher than reproducible' here; --claim-rule best compares it "
              "with figures chosen the same way.")


def _here_info(here: Here) -> dict[str, Any]:
    keys = ("device", "torch", "cuda", "python", "cifarlab", "git_commit")
    return {k: None if here.env.get(k) is None else str(here.env[k]) for k in keys}


def _failed_integrity(checks: list[Check]) -> list[str]:
    return sorted({c.name for c in checks if c.name in INTEGRITY and c.status == DIFFERS})


def _audit_verdict(checks: list[Check], stopped: bool) -> str:
    failed, data = _failed_integrity(checks), next(c for c in checks if c.name == "data")
    counts = ", ".join(f"{sum(c.status == s for c in checks)} {s}" for s in (OK, DIFFERS, REFUSED))
    parts = [f"not re-trained: the data here is not the record's ({data.reason})" if stopped
             else f"audit only ({counts})"]
    if failed:
        parts.append(f"the record disagrees with itself: {', '.join(failed)}")
    return "; ".join(parts)


def _states(study: Study, out: Path) -> tuple[list[RunState], dict[str, list[FinishedRun]]]:
    states = [run_state(r, out) for r in study.runs()]
    new: dict[str, list[FinishedRun]] = {}
    for st in states:
        if st.status == "done":
            new.setdefault(st.run.variant, []).append(load_finished(st.run_dir, st.record))
    return states, new


def _budget(study: Study, new: dict[str, list[FinishedRun]]) -> dict[str, Any]:
    records = [r.record for runs in new.values() for r in runs]
    return {"seeds": study.seeds, "runs": len(study.runs()),
            "epochs": max(c.epochs for c in study.configs.values()),
            "train_seconds": round(sum(r.get("train_seconds") or 0 for r in records), 3),
            "device": ", ".join(sorted({str(r.get("device")) for r in records})) or None}


def _run_rows(states: list[RunState], out: Path) -> list[dict[str, Any]]:
    """One row per new run; its path relative to ``out``, where reproduce.json lies (so the folder can move)."""
    return [{"run_id": st.run.run_id, "seed": st.run.seed, "state": st.status,
             "top1": st.record["top1"] if st.status == "done" and st.record else None,
             "path": st.run_dir.relative_to(out).as_posix()} for st in states]


def _study_spread(source: Source) -> stats.SeedSpread | None:
    """The pooled seed SD of the study a single recorded run belongs to (None when it belongs to none)."""
    if source.study_root is None:
        return None
    try:
        _, records = records_in(source.study_root)
    except CifarlabError:
        return None
    return stats.seed_spread([r.record["top1"] for r in runs] for runs in records.values())


def _same_seed_text(s: SameSeed) -> str:
    if s.differ is None:
        return "same seed not compared image by image"
    if s.identical:
        return "same seed per-image identical"
    return f"same seed: {s.differ} predictions differ (McNemar p = {s.p_value:.3g})"


def _verdict_text(rep: Reproduction, complete: bool, figure: str = "top-1") -> str:
    parts = []
    if rep.study:
        changed = [s for s in rep.study if s.changed]
        parts.append("the study's verdicts hold up" if not changed else
                     f"{len(changed)} verdict{'s' if len(changed) > 1 else ''} changed: "
                     + ", ".join(f"{s.variant} ({s.recorded_verdict} -> {s.new_verdict})" for s in changed))
    for i in rep.intervals:
        gap = "" if i.gap_sd is None else f", {i.gap_sd:+.1f} seed SDs"
        parts.append(f"{i.verdict} ({figure} {pct(i.figure)} against [{pct(i.low)}, {pct(i.high)}]{gap})")
    parts += [_same_seed_text(s) for s in rep.same_seed]
    failed = _failed_integrity(rep.checks)
    if failed:
        parts.append(f"the record disagrees with itself: {', '.join(failed)}")
    if not complete:
        done = sum(r["state"] == "done" for r in rep.runs)
        parts.insert(0, f"incomplete ({done} of {len(rep.runs)} runs finished)")
    return "; ".join(parts) or "no run finished"


def _verdicts(rep: Reproduction, source: Source, study: Study, new: dict[str, list[FinishedRun]]) -> None:
    first = study.seeds[0]
    for v in source.variants:
        old = next((r for r in v.runs if r.seed == first), None)
        again = next((r for r in new.get(v.name, []) if r.seed == first), None)
        if old is not None and again is not None:
            rep.same_seed.append(same_seed(v.name, old, again))
    if source.kind == "study":
        rep.study = study_lines(source.describe(), {v.name: v.runs for v in source.variants}, new)
        return
    values = [r.record["top1"] for r in new.get(source.variants[0].name, [])]
    if values:
        v = source.variants[0]
        rep.intervals.append(prediction_interval(v.name, v.runs[0].record["top1"], values,
                                                 choose_spread(values, _study_spread(source))))


def _finish(rep: Reproduction, out: Path, failed: bool) -> int:
    path, text = write(rep, out)
    print(text, end="")
    print(f"({path.name} and this summary are in {out})")
    return 1 if failed or _failed_integrity(rep.checks) else 0


def reproduce_source(args: argparse.Namespace) -> int:
    source = load_source(args.source, args.revision)
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{source.name}"
    here = Here.probe(device=not args.audit_only)
    data = load_data_here(source, args.data, args.audit_only)
    checks = audit(source, here, data)
    rep = Reproduction("audit" if args.audit_only else "reproduce",
                       {"kind": source.kind, "given": source.given, "name": source.name,
                        "runs": [r.run_id for r in source.runs], "notes": source.notes}, data.source,
                       _here_info(here), checks, data_kind=data.data.kind if data.data else None)
    stopped = not args.audit_only and next(c for c in checks if c.name == "data").status == REFUSED
    if args.audit_only or stopped:
        rep.verdict = _audit_verdict(checks, stopped)
        return _finish(rep, out, stopped)
    study = reproduction_study(source, args.seeds, args.data)
    refuse_recorded_folders(study, out, source)
    outcomes = execute(study, out, args)
    states, new = _states(study, out)
    rep.runs, rep.budget = _run_rows(states, out), _budget(study, new)
    _verdicts(rep, source, study, new)
    rep.verdict = _verdict_text(rep, all(st.status == "done" for st in states))
    return _finish(rep, out, any(o.status in ("failed", "changed") for o in outcomes))


def _claim_values(runs: list[FinishedRun], rule: str) -> list[float]:
    values = [r.record["top1"] if rule == "final" else best_test_top1(r) for r in runs]
    return [v for v in values if v is not None]


def check_claim(args: argparse.Namespace) -> int:
    """Train ``--seeds`` runs of the shipped recipe and place ``--claim`` against their prediction interval."""
    if not 0 < args.claim <= 100:
        raise CifarlabError(f"--claim is a top-1 accuracy in percent (0 < claim <= 100), got {args.claim}")
    over = set_overrides(args.set, {"model": args.model} | ({"data": args.data} if args.data else {}))
    config = build_config(over)
    name = folder_name(f"claim-{config.model}")
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{name}"
    given = " ".join([f"--model {args.model} --claim {args.claim:g} --claim-rule {args.claim_rule}",
                      *(f"--set {item}" for item in args.set or [])])
    study = study_of_configs(name, f"runs of the shipped recipe against {given}",
                             [(config.model, None, config)], reproduction_seeds([0], args.seeds))
    outcomes = execute(study, out, args)
    states, new = _states(study, out)
    rep = Reproduction("claim", {"kind": "claim", "given": given, "name": name, "runs": []}, config.data,
                       _here_info(Here.probe(device=True)), runs=_run_rows(states, out),
                       budget=_budget(study, new),
                       claim={"model": config.model, "value": args.claim / 100, "rule": args.claim_rule,
                              "note": BEST_ON_TEST if args.claim_rule == "best" else FINAL_NOTE},
                       data_kind=next((r.record.get("source_kind") for rs in new.values() for r in rs), None))
    values = _claim_values(new.get(config.model, []), args.claim_rule)
    if values:
        rep.intervals.append(prediction_interval(config.model, args.claim / 100, values, choose_spread(values)))
    complete = all(st.status == "done" for st in states)
    rep.verdict = _verdict_text(rep, complete, "the claim")
    return _finish(rep, out, any(o.status in ("failed", "changed") for o in outcomes))


def use_device(device: str) -> None:
    """``--device cpu`` hides CUDA devices from this process, and so from its runs and a local Ray instance it
    starts, before torch is imported; ``--device cuda`` is refused where there is none; ``auto`` takes a CUDA
    device when there is one."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CifarlabError("--device cuda: no CUDA device here (use --device cpu or auto)")


def cmd_reproduce(args: argparse.Namespace) -> int:
    use_device(args.device)
    claim = args.model is not None or args.claim is not None
    if claim == (args.source is not None):
        raise CifarlabError("give a SOURCE to reproduce, or --model M --claim PCT to check a claim (not both)")
    if claim:
        if args.model is None or args.claim is None:
            raise CifarlabError("a claim needs both --model and --claim")
        if args.audit_only or args.revision:
            raise CifarlabError("--audit-only and --revision go with a SOURCE, not with --claim")
        return check_claim(args)
    if args.set:
        raise CifarlabError("--set goes with --claim: a SOURCE is trained again at its recorded config")
    return reproduce_source(args)


def add_commands(sub) -> None:
    p = sub.add_parser("reproduce", help="audit a published record, train it again and say whether its figure holds "
                                         "up (docs/reproduce.md)")
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help=f"a run folder, a {RESULT}, a study folder, a Hub model repo id pushed by `cifarlab push`, "
                        "or a local folder in that layout")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, metavar="K",
                   help=f"runs to train: the recorded seed first, then K-1 new ones (default {DEFAULT_SEEDS})")
    p.add_argument("--data", metavar="PATH", help="where the data is read from (default: the record's own source); "
                                                  "the audit checks that it is the record's data")
    p.add_argument("--out", metavar="DIR", help=f"folder for {REPRODUCE}, {SUMMARY_FILE} and the new runs "
                                                "(default: runs/reproduce-NAME)")
    p.add_argument("--audit-only", action="store_true",
                   help="only the audit: no training (and, without --data, no data read and no torch imported)")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) of a Hub SOURCE")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the runs train: auto (a CUDA device when there is one, default), cpu (CUDA hidden from "
                        "this process and a local Ray instance), cuda (refused without one)")
    c = p.add_argument_group("a claim from elsewhere (instead of a SOURCE)")
    c.add_argument("--model", help="registered model to train at its shipped recipe")
    c.add_argument("--claim", type=float, metavar="PCT", help="the claimed top-1 in percent, e.g. 72.3")
    c.add_argument("--claim-rule", choices=("final", "best"), default="final",
                   help="compare with each run's final-epoch top-1 (default) or its best test top-1 over epochs")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change the recipe (e.g. --set epochs=30); said in the output")
    add_executor_options(p)
    p.set_defaults(func=cmd_reproduce)
