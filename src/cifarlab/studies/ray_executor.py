"""Run a study on Ray: one Ray Core task per run, several small runs per GPU, lost workers retried and resumed.

Every pending run becomes one task (``@ray.remote`` with ``num_cpus`` / fractional
``num_gpus``) that calls the serial runner's ``run_one``, so a task skips a run that is
done and resumes an interrupted one from its last complete epoch, exactly as
``cifarlab study run`` does in one process. Ray retries a task whose worker process or
node dies, and one that raised anything but a ``CifarlabError``, up to ``max_retries``
times; each retry reads the run folder again and resumes. A run that still fails is
recorded in its ``error.json`` and the others go on.

The run folders are the only shared state: ``--out`` must be one filesystem that the
driver and every node see at the same path. Each attempt appends to the run's
``attempts.json`` (the ``study run`` that submitted it, host, process id, the epoch it resumed after, when it
started and ended, UTC to the millisecond), which the driver reads for its progress line and the tests read to
find a worker and to see runs overlap.

Without an address a local Ray instance is started that listens on 127.0.0.1 only
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported: Ray would otherwise
replace 127.0.0.1 by the machine's outward address), without the dashboard unless
asked; its listening sockets are checked before any task is submitted.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

from .. import CifarlabError
from ..run import RunFolder, read_attempts, read_error
from ..run.folder import ATTEMPTS, ERROR, STUDY
from .runner import (
    DataCache,
    Outcome,
    RunState,
    estimate,
    format_seconds,
    log_summary,
    record_failure,
    run_one,
    run_state,
    settled_outcome,
    start_study,
)
from .spec import Study, StudyRun

DEFAULT_MAX_RETRIES = 2
POLL_SECONDS = 1.0  # the longest the driver waits for a task to end before it updates its progress line
CANCEL_WAIT_SECONDS = 30.0  # after Ctrl-C, how long the driver waits for cancelled tasks to stop
INSTALL_HINT = "--executor ray needs Ray: pip install 'cifarlab[ray]'"


class RunAttemptFailed(RuntimeError):
    """A run raised something other than a CifarlabError; Ray retries the task (it may be a lost GPU, a full disk)."""


def import_ray(loopback: bool):
    """Import Ray; with ``loopback`` its node address stays 127.0.0.1 (must be decided before the first import)."""
    if loopback:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise CifarlabError(INSTALL_HINT) from None
    return ray


def is_loopback_address(address: str | None) -> bool:
    """No address (a local instance) or a HOST:PORT whose host is a loopback address."""
    if address is None:
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listeners(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket of these processes."""
    import psutil

    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found += [(pid, proc.name(), c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def outside_loopback(found: list[tuple[int, str, str, int]]) -> list[tuple[int, str, str, int]]:
    """The listeners bound to an address outside 127.0.0.0/8 (and ::1), IPv4-mapped IPv6 included."""
    bad = []
    for entry in found:
        ip = ipaddress.ip_address(entry[2].split("%")[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_loopback:
            bad.append(entry)
    return bad


def _process_tree() -> list[int]:
    """This process and every process it started (a local Ray instance's GCS, raylet, agents and workers)."""
    import psutil

    me = psutil.Process()
    return [me.pid] + [p.pid for p in me.children(recursive=True)]


def start_ray(ray, address: str | None, dashboard: bool) -> str:
    """Connect to the cluster at ``address``, or start a local instance on 127.0.0.1; returns what it is."""
    import logging

    if address is not None:
        if dashboard:
            raise CifarlabError("--ray-dashboard applies to the local Ray instance; a cluster at --address has its own")
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise CifarlabError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
        return f"the Ray cluster at {address}"
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=dashboard, logging_level=logging.WARNING,
             log_to_driver=True)
    bad = outside_loopback(listeners(_process_tree()))
    if bad:
        ray.shutdown()
        raise CifarlabError("the local Ray instance listens beyond 127.0.0.1 (" + ", ".join(
            f"{name} on {ip}:{port}" for _, name, ip, port in bad) + "); set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
            "before Ray is imported")
    return "a local Ray instance on 127.0.0.1" + (" (dashboard on 127.0.0.1:8265)" if dashboard else "")


def _check_resources(ray, cpus: float, gpus: float, local: bool, log: Callable[[str], Any]) -> str:
    """The cluster's CPUs and GPUs; a run that no node can take is an error locally, a warning on a cluster."""
    have = ray.cluster_resources()
    cpu, gpu = have.get("CPU", 0.0), have.get("GPU", 0.0)
    short = [f"{want:g} {name} per run but the cluster has {n:g}" for want, n, name in
             ((cpus, cpu, "CPUs"), (gpus, gpu, "GPUs")) if want > n]
    if short and local:
        raise CifarlabError(f"{'; '.join(short)} (--cpus-per-run / --gpus-per-run)")
    for s in short:
        log(f"warning: {s}; the tasks wait until a node that has them joins (an autoscaler)")
    return f"{cpu:g} CPUs, {gpu:g} GPUs"


# ---- the task: runs on a worker ----

_WORKER_DATA = DataCache()  # a Ray worker process runs many tasks: consecutive runs on the same data share a copy


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _log_attempt(st: RunState, submission: str) -> int:
    """Append this attempt to the run's ``attempts.json``; returns its index."""
    folder = RunFolder(st.run_dir)
    entries = read_attempts(folder)
    entries.append({"submission": submission, "host": socket.gethostname(), "pid": os.getpid(), "started": _now(),
                    "status_before": st.status, "after_epoch": st.last_epoch})
    folder.write_json(ATTEMPTS, obj=entries)
    return len(entries) - 1


def _end_attempt(run_dir: Path, index: int) -> None:
    """Note when attempt ``index`` ended (a killed worker's attempt has no end)."""
    folder = RunFolder(run_dir)
    entries = read_attempts(folder)
    if index < len(entries):
        entries[index]["ended"] = _now()
        folder.write_json(ATTEMPTS, obj=entries)


def run_task(run: StudyRun, out: str, cwd: str, submission: str, threads: int) -> Outcome:
    """One attempt at one run, in a Ray worker: the driver's working directory, then ``run_one``."""
    import torch

    host = socket.gethostname()
    if not os.path.isdir(cwd):
        raise CifarlabError(f"node {host} has no folder {cwd} (the driver's working directory): --out and the study's "
                            f"data paths must be on a filesystem every node mounts at the same path")
    os.chdir(cwd)  # relative --out and data paths mean what they mean on the driver
    if not RunFolder(Path(out) / run.study).is_file(STUDY):
        raise CifarlabError(f"--out {out} is not visible on node {host}: it must be a shared filesystem")
    torch.set_num_threads(threads)
    st = run_state(run, out)
    attempt = _log_attempt(st, submission)
    try:
        outcome = run_one(st, data=_WORKER_DATA, progress=False, log=print, tag=f"[{host}]")
    finally:
        _end_attempt(st.run_dir, attempt)
    if outcome.status == "failed" and not outcome.user_error:
        raise RunAttemptFailed(outcome.detail)
    return outcome


# ---- the driver ----

def attempts(run_dir: Path, submission: str) -> list[dict]:
    """This submission's attempts at the run (from its ``attempts.json``)."""
    return [a for a in read_attempts(RunFolder(run_dir)) if a["submission"] == submission]


def _failed_outcome(ray, st: RunState, err: Exception, submission: str) -> Outcome:
    """Record a task that Ray gave up on in the run's ``error.json`` (the task's own record kept, if it wrote one)."""
    folder = RunFolder(st.run_dir)
    cause = err.cause if isinstance(err, ray.exceptions.RayTaskError) else None
    tried = len(attempts(st.run_dir, submission))
    if isinstance(cause, RunAttemptFailed) and folder.is_file(ERROR):
        msg = str(cause)
    else:
        msg = record_failure(folder, st.run, cause or err)
    previous = read_error(folder).model_dump(mode="json", exclude_none=True)
    folder.write_json(ERROR, obj={**previous, "attempts": tried, "executor": "ray"})
    return Outcome(st.run.run_id, "failed", msg, user_error=isinstance(cause, CifarlabError))


def _progress_line(total: int, done: int, failed: int, running: int, pending: int, seconds_left: float) -> str:
    eta = f"; est. device time left {format_seconds(seconds_left)} (training steps only)" if seconds_left >= 1 else ""
    return f"progress: {done} done, {running} running, {failed} failed, {pending} pending of {total} tasks{eta}"


def run_study_ray(study: Study, out: str | Path, shard: tuple[int, int] = (0, 1), *, address: str | None = None,
                  cpus_per_run: float = 1, gpus_per_run: float = 0, max_retries: int = DEFAULT_MAX_RETRIES,
                  retry_failed: bool = False, dashboard: bool = False,
                  log: Callable[[str], Any] = partial(print, flush=True)) -> list[Outcome]:
    """Run every missing run of ``study`` in shard ``shard`` as Ray tasks; one outcome per run, in study order.

    ``address`` is a Ray cluster (``auto`` or HOST:PORT); without it a local
    instance on 127.0.0.1 uses this machine's CPUs and GPUs and stops at the end.
    Ctrl-C cancels the tasks; running the same study again continues. ``log`` gets the progress lines
    (flushed at once by default, so that a log file shows them live).
    """
    if cpus_per_run <= 0 or gpus_per_run < 0 or max_retries < 0:
        raise CifarlabError("--cpus-per-run must be > 0, --gpus-per-run and --max-retries >= 0")
    out = Path(out).absolute()
    states = start_study(study, out, shard, log)
    width = len(str(len(states)))
    tags = {st.run.run_id: f"[{i:>{width}}/{len(states)}]" for i, st in enumerate(states, 1)}
    outcomes = {st.run.run_id: o for st in states if (o := settled_outcome(st, retry_failed, log, tags[st.run.run_id]))}
    todo = [st for st in states if st.run.run_id not in outcomes]
    if todo:
        outcomes.update(_run_tasks(todo, out, tags, estimate(states, out), address=address, cpus=cpus_per_run,
                                   gpus=gpus_per_run, max_retries=max_retries, dashboard=dashboard, log=log))
    ordered = [outcomes[st.run.run_id] for st in states]
    log_summary(study, ordered, log)
    return ordered


def _run_tasks(todo: list[RunState], out: Path, tags: dict[str, str], est: dict, *, address: str | None,
               cpus: float, gpus: float, max_retries: int, dashboard: bool,
               log: Callable[[str], Any]) -> dict[str, Outcome]:
    ray = import_ray(is_loopback_address(address))
    where = start_ray(ray, address, dashboard)
    try:
        has = _check_resources(ray, cpus, gpus, address is None, log)
        log(f"ray: {len(todo)} runs as tasks on {where} ({has}); each {cpus:g} CPU, {gpus:g} GPU, "
            f"up to {max_retries} retries")
        submission = uuid.uuid4().hex
        task = ray.remote(run_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries,
                                            retry_exceptions=[RunAttemptFailed])
        refs = {task.remote(st.run, str(out), os.getcwd(), submission, max(1, int(cpus))): st for st in todo}
        return _follow(ray, refs, tags, submission, est, log)
    finally:
        ray.shutdown()


def _follow(ray, refs: dict, tags: dict[str, str], submission: str, est: dict, log: Callable[[str], Any]
            ) -> dict[str, Outcome]:
    """Collect the tasks' outcomes as they end, with a progress line whenever the counts change."""
    outcomes: dict[str, Outcome] = {}
    pending, shown = list(refs), None
    seconds_left = sum(e.seconds for e in est.values() if e.seconds)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                st = refs[ref]
                try:
                    o = ray.get(ref)
                    line = f"{o.status:<7} {o.run_id}: {o.detail.splitlines()[0] if o.detail else ''}"
                except ray.exceptions.RayError as err:
                    o = _failed_outcome(ray, st, err, submission)
                    line = f"FAILED  {o.run_id} after {len(attempts(st.run_dir, submission))} attempts: " \
                           f"{o.detail.splitlines()[0] if o.detail else ''}"
                outcomes[o.run_id] = o
                seconds_left -= (est.get(o.run_id) and est[o.run_id].seconds) or 0
                log(f"{tags[o.run_id]} {line}")
            running = sum(bool(attempts(refs[r].run_dir, submission)) for r in pending)
            counts = (sum(o.status != "failed" for o in outcomes.values()),
                      sum(o.status == "failed" for o in outcomes.values()), running, len(pending) - running)
            if counts != shown:
                log(_progress_line(len(refs), *counts, max(seconds_left, 0.0)))
                shown = counts
    except KeyboardInterrupt:
        log(f"interrupted: cancelling {len(pending)} tasks; every run keeps its last complete epoch, "
            f"run the same command again to continue")
        for ref in pending:
            ray.cancel(ref)
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_SECONDS)
        raise
    return outcomes
