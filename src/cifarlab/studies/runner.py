"""Plan and run a study: what is done, what is left, what it will cost; run what is missing.

Each run is a normal engine run folder ``<out>/<study>/<variant>/seed<k>``. Its
state is read from the folder alone, so a study can be stopped at any point,
re-run, sharded over machines and merged by copying folders:

- done: ``result.json`` exists (and ``config.json`` matches the study) -> skipped;
- interrupted: checkpoints or a config but no result -> resumed from the last checkpoint;
- failed: ``error.json`` (written by the runner, or by the engine on a non-finite loss) -> left as it is unless
  asked (``retry_failed``), then resumed from its last checkpoint;
- changed: the folder holds a run of a different config (the study file was edited) -> reported, never
  overwritten; move the folder away to run it again;
- todo: nothing there yet.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median
from typing import TYPE_CHECKING, Any, Callable

from .. import CifarlabError
from ..config import TrainConfig
from ..model_catalog import model_info
from ..run import FinishedRun, RunFolder, load_finished, read_error, read_study, run_status
from ..run.folder import ERROR, RESULT, SEED_FOLDER, STUDY
from .spec import Study, StudyRun, shard_runs

if TYPE_CHECKING:
    from ..data import CifarData

# Only when no run of the study has finished yet: an assumed effective training rate, forward +
# backward counted as 3x the forward MACs, for one current data-centre GPU in bf16. A rough guess;
# small CIFAR models are overhead-bound and run slower than this. Plans say when they use it.
NOMINAL_TRAIN_MACS_PER_SECOND = 4e12
CIFAR_TRAIN_IMAGES = 50_000
STATE_ORDER = ("done", "running", "interrupted", "failed", "changed", "new")


@dataclass
class RunState:
    """A study run and what its folder says about it (the state from :func:`cifarlab.run.run_status`)."""

    run: StudyRun
    run_dir: Path
    status: str  # done | running | interrupted | failed | changed | new
    detail: str = ""
    last_epoch: int = 0  # newest intact checkpoint (the epochs trained, when done)
    record: dict[str, Any] | None = None  # result.json of a done run

    @property
    def remaining_epochs(self) -> int:
        return 0 if self.status in ("done", "changed", "running") else self.run.config.epochs - self.last_epoch


def run_state(run: StudyRun, out: str | Path) -> RunState:
    """What the run folder says about one run."""
    s = run_status(RunFolder(run.run_dir(out)), run.config)
    return RunState(run, s.folder.root, s.state, s.detail, s.epoch, s.record)


def study_records(study: Study, out: str | Path) -> dict[str, list[FinishedRun]]:
    """Finished runs of ``study`` under ``out``, by variant; folders of a different config are left out."""
    records: dict[str, list[FinishedRun]] = {}
    for run in study.runs():
        st = run_state(run, out)
        if st.status == "done":
            records.setdefault(run.variant, []).append(load_finished(st.run_dir, st.record))
    return records


def records_in(study_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, list[FinishedRun]]]:
    """Variants (from ``study.json`` when present, else the folders) and finished runs under ``<out>/<study>``."""
    study = RunFolder(study_dir)
    if not study.root.is_dir():
        raise CifarlabError(f"{study.root} is not a folder")
    records: dict[str, list[FinishedRun]] = {}
    for variant in study.listdir():
        for seed in RunFolder(study.path(variant)).listdir() if study.is_dir(variant) else []:
            run = RunFolder(study.path(variant, seed))
            if SEED_FOLDER.match(seed) and run.is_file(RESULT):
                records.setdefault(variant, []).append(load_finished(run.root))
    variants = [v.model_dump(mode="json") for v in read_study(study).variants] if study.exists(STUDY) else []
    known = {v["name"] for v in variants}
    for name, recs in records.items():
        if name not in known:
            variants.append({"name": name, "model": recs[0].model, "baseline": None})
    if not variants:
        raise CifarlabError(f"{study.root} holds no study (no {STUDY} and no <variant>/seed<k>/{RESULT})")
    return variants, records


# ---- device-time estimate ----

def train_images(run: StudyRun) -> int:
    from ..data.sources import parse_synthetic  # the data sources import `datasets`: only when a plan needs them

    cfg = run.config
    n = parse_synthetic(cfg.data)[0] if cfg.data and cfg.data.startswith("synthetic") else CIFAR_TRAIN_IMAGES
    return max(n - cfg.val_split, 0) // cfg.batch_size * cfg.batch_size


def _macs(run: StudyRun, cache: dict[str, int | str]) -> int | str:
    """Forward MACs of the run's model (100 classes), or the error building it raised (cached per model + kwargs).
    A model at its registry options needs no build: the catalogue has its MACs."""
    from ..models import build_model, count_macs

    key = f"{run.config.model}:{sorted(run.config.model_kwargs.items())!r}"
    if key not in cache and not run.config.model_kwargs:
        try:
            cache[key] = model_info(run.config.model).macs
        except CifarlabError as e:
            cache[key] = f"{type(e).__name__}: {e}"
    if cache.get(key) is None:
        try:
            cache[key] = count_macs(build_model(run.config.model, 100, run.config.model_kwargs))
        except Exception as e:  # a bad model kwarg: the plan reports it before any device time is spent
            cache[key] = f"{type(e).__name__}: {e}"
    return cache[key]


@dataclass
class Estimate:
    seconds: float | None
    basis: str  # measured | macs-calibrated | macs-nominal | none
    note: str = ""


def estimate(states: list[RunState], out: str | Path) -> dict[str, Estimate]:
    """Training-step device time of every unfinished run, by run id.

    From the epoch times of finished runs of the same model in this study when
    there are any ("measured"); else from the model's MACs, at the MAC rate the
    study's finished runs achieved ("macs-calibrated"), or at
    ``NOMINAL_TRAIN_MACS_PER_SECOND`` when nothing has finished ("macs-nominal").
    Evaluation, checkpoints and start-up are not included.
    """
    per_model: dict[str, list[float]] = {}
    rates: list[float] = []
    mac_cache: dict[str, int | str] = {}
    for st in states:
        if st.status != "done" or st.record is None:
            continue
        r = st.record
        secs = [s for s in r.get("epoch_seconds", []) if s > 0]
        if not secs:
            continue
        per_model.setdefault(r["model"], []).append(mean(secs))
        imgs = r.get("images_per_second")
        if imgs and r.get("macs"):
            rates.append(3 * r["macs"] * imgs)
    rate, basis = (median(rates), "macs-calibrated") if rates else (NOMINAL_TRAIN_MACS_PER_SECOND, "macs-nominal")
    out_est: dict[str, Estimate] = {}
    for st in states:
        if st.remaining_epochs == 0:
            continue
        if st.run.config.model in per_model:
            out_est[st.run.run_id] = Estimate(st.remaining_epochs * mean(per_model[st.run.config.model]), "measured")
            continue
        macs = _macs(st.run, mac_cache)
        if isinstance(macs, str):
            out_est[st.run.run_id] = Estimate(None, "none", f"cannot build the model: {macs}")
            continue
        out_est[st.run.run_id] = Estimate(st.remaining_epochs * 3 * macs * train_images(st.run) / rate, basis)
    return out_est


def format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# ---- running ----

@dataclass
class Outcome:
    run_id: str
    status: str  # skipped | running | finished | failed | changed
    detail: str = ""
    user_error: bool = False  # failed with a CifarlabError: the user's to fix, running it again cannot help


class DataCache:
    """The decoded splits of the last data source asked for: consecutive runs on the same data share one copy."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.data: CifarData | None = None

    def get(self, cfg: TrainConfig) -> CifarData:
        from ..data import load_data

        key = (cfg.dataset, cfg.data, cfg.val_split)
        if key != self.key:
            self.data, self.key = load_data(cfg.dataset, cfg.data, val_split=cfg.val_split), key
        return self.data


def record_failure(folder: RunFolder, run: StudyRun, err: BaseException) -> str:
    """Write why ``run`` failed to its ``error.json`` (keeping the fields the engine wrote there, such as the epoch
    of a non-finite loss); returns the message."""
    msg = f"{type(err).__name__}: {err}".strip()
    previous = {}
    if folder.exists(ERROR):
        try:
            previous = read_error(folder).model_dump(mode="json", exclude_none=True)
        except CifarlabError:
            previous = {}
    folder.write_json(ERROR, obj={**previous, "error": str(previous.get("error") or msg), "type": type(err).__name__,
                                  "run_id": run.run_id, "traceback": traceback.format_exc()[-4000:],
                                  "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return msg


def settled_outcome(st: RunState, retry_failed: bool, log: Callable[[str], Any] = print,
                    tag: str = "") -> Outcome | None:
    """The outcome of a run that is not to run now (done, running elsewhere, changed, or failed and not retried),
    else None."""
    run = st.run
    if st.status == "done":
        log(f"{tag} skip    {run.run_id} (done: {st.detail})")
        return Outcome(run.run_id, "skipped", st.detail)
    if st.status == "running":
        log(f"{tag} running {run.run_id} (trained {st.detail}; left to it)")
        return Outcome(run.run_id, "running", st.detail)
    if st.status == "changed":
        log(f"{tag} CHANGED {run.run_id}: {st.detail}; move {st.run_dir} away to run it again")
        return Outcome(run.run_id, "changed", st.detail)
    if st.status == "failed" and not retry_failed:
        log(f"{tag} failed  {run.run_id}: {st.detail} (left as it is; --retry-failed runs it again)")
        return Outcome(run.run_id, "failed", st.detail)
    return None


def run_one(st: RunState, *, data: DataCache, retry_failed: bool = True, progress: bool = True,
            log: Callable[[str], Any] = print, tag: str = "") -> Outcome:
    """Run one run as its folder says: skip it when done, start it, or resume it from its last checkpoint.

    The one way every executor runs a run (the serial loop and each Ray task). A run
    that raises is recorded in its ``error.json`` and comes back as a failed outcome.
    """
    settled = settled_outcome(st, retry_failed, log, tag)
    if settled is not None:
        return settled
    from ..train import fit

    run, folder = st.run, RunFolder(st.run_dir)
    how = f"resume  {run.run_id} after epoch {st.last_epoch}" if st.last_epoch else f"start   {run.run_id}"
    if st.status == "failed":
        how += f" (failed before: {st.detail})"
    log(f"{tag} {how}")
    t0 = time.perf_counter()
    try:
        result = fit(run.config, st.run_dir, resume=True, progress=progress, data=data.get(run.config))
    except Exception as err:  # noqa: BLE001 - any failure is recorded and the study goes on
        msg = record_failure(folder, run, err)
        log(f"{tag} FAILED  {run.run_id}: {msg.splitlines()[0] if msg else ''} ({folder.path(ERROR)})")
        return Outcome(run.run_id, "failed", msg, user_error=isinstance(err, CifarlabError))
    secs = time.perf_counter() - t0
    log(f"{tag} finish  {run.run_id}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} "
        f"in {format_seconds(secs)}")
    return Outcome(run.run_id, "finished", f"top-1 {result['top1']:.4f}")


def start_study(study: Study, out: Path, shard: tuple[int, int], log: Callable[[str], Any]) -> list[RunState]:
    """Write ``study.json``, read every run's state from its folder and log the counts."""
    try:
        RunFolder(out / study.name).write_json(STUDY, obj=study.describe())
    except OSError as e:
        raise CifarlabError(f"cannot write --out {out}: {e.strerror or e}") from None
    runs = shard_runs(study.runs(), *shard)
    states = [run_state(r, out) for r in runs]
    counts = {s: sum(st.status == s for st in states) for s in STATE_ORDER}
    shard_txt = f" (shard {shard[0]}/{shard[1]} of {len(study.runs())})" if shard[1] > 1 else ""
    log(f"study {study.name}: {len(runs)} runs{shard_txt} -> {out / study.name}; "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return states


def log_summary(study: Study, outcomes: list[Outcome], log: Callable[[str], Any]) -> None:
    bad = [o for o in outcomes if o.status in ("failed", "changed")]
    running = sum(o.status == "running" for o in outcomes)
    log(f"study {study.name}: {sum(o.status == 'finished' for o in outcomes)} finished, "
        f"{sum(o.status == 'skipped' for o in outcomes)} skipped, {len(bad)} failed or changed"
        + (f", {running} being trained by another process" if running else ""))


def run_study(study: Study, out: str | Path, shard: tuple[int, int] = (0, 1), progress: bool = True,
              log: Callable[[str], Any] = print, retry_failed: bool = False) -> list[Outcome]:
    """Run every missing run of ``study`` in shard ``shard``, one after another, and return one outcome per run.

    Finished runs are skipped, interrupted ones resumed from their last checkpoint,
    failed ones left as they are unless ``retry_failed``; a run that raises is
    recorded in its ``error.json`` and the others go on. One line per run goes to
    ``log``; the engine prints its per-epoch lines.
    """
    out = Path(out)
    states = start_study(study, out, shard, log)
    data, width = DataCache(), len(str(len(states)))
    outcomes = [run_one(st, data=data, retry_failed=retry_failed, progress=progress, log=log,
                        tag=f"[{i:>{width}}/{len(states)}]") for i, st in enumerate(states, 1)]
    log_summary(study, outcomes, log)
    return outcomes


def plan_lines(study: Study, out: str | Path, shard: tuple[int, int] = (0, 1)) -> tuple[list[str], bool]:
    """The ``study plan`` report, and whether every run can go ahead (no changed folder, every model builds)."""
    runs = shard_runs(study.runs(), *shard)
    states = [run_state(r, out) for r in runs]
    est = estimate(states, out)
    width = max(len(r.run_id) for r in runs)
    lines = [f"study {study.name} ({study.source}): {len(study.variants)} variants x {len(study.seeds)} seeds = "
             f"{len(study.runs())} runs" + (f"; shard {shard[0]}/{shard[1]}: {len(runs)} runs" if shard[1] > 1 else ""),
             f"run folders: {Path(out) / study.name}/<variant>/seed<k>", "",
             f"{'run':<{width}}  {'status':<11}  {'epochs':>9}  {'est. time':>9}  note"]
    ok = True
    for st in states:
        e = est.get(st.run.run_id)
        epochs = f"{st.remaining_epochs}/{st.run.config.epochs}" if st.remaining_epochs else "-"
        when = format_seconds(e.seconds) if e and e.seconds is not None else "-"
        note = (e.note if e and e.note else st.detail) if st.status != "new" or (e and e.note) else ""
        ok &= st.status != "changed" and not (e and e.seconds is None)
        lines.append(f"{st.run.run_id:<{width}}  {st.status:<11}  {epochs:>9}  {when:>9}  {note}".rstrip())
    counts = {s: sum(st.status == s for st in states) for s in STATE_ORDER}
    lines += ["", ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    left = [e for e in est.values() if e.seconds is not None]
    if left:
        total = sum(e.seconds for e in left)
        bases = {b: sum(e.basis == b for e in left) for b in ("measured", "macs-calibrated", "macs-nominal")}
        why = {"measured": "epoch times of finished runs of the same model",
               "macs-calibrated": "MACs at the MAC rate this study's finished runs reached",
               "macs-nominal": f"MACs at a nominal {NOMINAL_TRAIN_MACS_PER_SECOND / 1e12:g} TMAC/s (3x forward "
                               f"MACs per image; nothing has finished yet, so this is a rough guess)"}
        lines.append(f"estimated device time left (training steps only): {format_seconds(total)}")
        lines += [f"  {n} runs from {why[b]}" for b, n in bases.items() if n]
    return lines, ok
