"""Studies on a real Ray cluster, started as separate processes on 127.0.0.1 as a user would with ``ray start``.

One head node with 2 CPUs per module (it takes seconds to start), stopped at the end whatever happens. Every
Ray process here listens on 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the environment of the
head, and so of its workers, and of the driver), with token authentication on; each test checks the listeners
of its cluster and driver before its first task and after its last.
"""

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from cifarlab.cli import main
from cifarlab.run.folder import ATTEMPTS as ATTEMPTS_FILE
from cifarlab.studies import load_study, run_study
from cifarlab.studies.ray_executor import listeners, outside_loopback, run_study_ray

EPOCHS = 2
TINY = {"name": "tiny",
        "base": {"data": "synthetic:128:64", "model_kwargs": {"depth": 8}, "batch_size": 32, "lr": 0.1,
                 "warmup_epochs": 0, "deterministic": True},
        "budget": {"epochs": EPOCHS}, "seeds": 2, "baseline": "resnet8",
        "variants": [{"name": "resnet8", "model": "resnet20"}, {"name": "eca-resnet8", "model": "eca_resnet20"}]}
RUNS = [f"{v['name']}/seed{s}" for v in TINY["variants"] for s in (0, 1)]
START_TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``ray start --head --block`` in its own process group; every Ray process of the cluster descends from it."""

    def __init__(self) -> None:
        # short: Ray's Unix socket paths live under it and must stay within 107 characters
        self.temp = Path(tempfile.mkdtemp(prefix="clray-", dir="/tmp"))
        self.port, self.token = _free_port(), uuid.uuid4().hex
        self.address = f"127.0.0.1:{self.port}"
        self.env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={self.port}",
               "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
               f"--ray-client-server-port={_free_port()}", f"--temp-dir={self.temp}", "--disable-usage-stats"]
        env = {**os.environ, **self.env, "CIFARLAB_CACHE": str(self.temp / "cache"), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "CIFARLAB_PLUGINS": "crash_attention",  # the workers' 'crash' attention
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
        self.log = self.temp / "head.log"
        self.proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)

    def wait_until_up(self) -> bool:
        """True once the head is up; False if ``ray start`` gave up (Ray waits a fixed 30 s for its raylet)."""
        deadline = time.monotonic() + START_TIMEOUT
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"ray start took over {START_TIMEOUT} s"
            time.sleep(0.2)
        return True

    def pids(self) -> list[int]:
        try:
            head = psutil.Process(self.proc.pid)
            return [head.pid] + [p.pid for p in head.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def titles(self) -> dict[int, str]:
        """pid -> process title of every process of the cluster now (a worker's reads ``ray::<its task>``)."""
        found = {}
        for pid in self.pids():
            try:
                found[pid] = " ".join(psutil.Process(pid).cmdline()).strip()
            except psutil.Error:
                continue
        return found

    def assert_loopback_only(self) -> None:
        found = listeners(self.pids() + [os.getpid()])
        assert found, "the cluster has no listening socket: not running?"
        assert not outside_loopback(found), f"Ray listens beyond 127.0.0.0/8: {outside_loopback(found)}"

    def stop(self) -> None:
        procs = [psutil.Process(pid) for pid in self.pids() if psutil.pid_exists(pid)]
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in procs:  # a process that left the group (none should) goes too
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    for _ in range(2):  # a second try when an overloaded machine made the head miss Ray's start-up wait
        c = Cluster()
        try:
            if c.wait_until_up():
                break
            log = c.log.read_text()[-2000:]
        except BaseException:
            c.stop()
            raise
        c.stop()
    else:
        pytest.fail(f"ray start failed twice; the last time: {log}")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def driver(cluster, monkeypatch):
    """This process as the cluster's driver: its token, and the check of every listener before the first task."""
    for k, v in cluster.env.items():
        monkeypatch.setenv(k, v)
    lines: list[str] = []

    def log(line: str) -> None:
        if line.startswith("ray: "):  # connected, nothing submitted yet
            cluster.assert_loopback_only()
        lines.append(line)
    yield log, lines
    cluster.assert_loopback_only()  # the workers that ran the tasks included


TASK_TITLE = "ray::run_task"  # a Ray worker process while it runs cifarlab's task


class TitleWatch:
    """Every title each process of the cluster showed while the block ran (checked every 0.1 s): pid -> titles."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster, self.seen, self.done = cluster, {}, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.done.wait(0.1):
            for pid, title in self.cluster.titles().items():
                self.seen.setdefault(pid, set()).add(title)

    def __enter__(self) -> "TitleWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def _write_study(folder: Path, study: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny study run by the serial runner, undisturbed."""
    out = tmp_path_factory.mktemp("serial") / "runs"
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before conftest's per-test isolation
        mp.setenv("CIFARLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cifarlab-cache"))
        run_study(load_study(_write_study(out.parent, TINY)), out, progress=False, log=lambda s: None)
    return out / "tiny"


def _differences(ref: Path, got: Path) -> list[str]:
    problems = []
    for name in RUNS:
        a, b = ref / name, got / name
        ra, rb = (json.loads((r / "result.json").read_text()) for r in (a, b))
        problems += [f"{name}: {k} differs" for k in ("top1", "top5", "test_loss", "test_correct", "selected_epoch")
                     if ra[k] != rb[k]]
        last = f"checkpoints/epoch-{EPOCHS:04d}/model.safetensors"
        wa, wb = load_file(a / last), load_file(b / last)
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            problems.append(f"{name}: final weights differ")
        epochs = [json.loads(x)["epoch"] for x in (b / "metrics.jsonl").read_text().splitlines()]
        if epochs != list(range(1, EPOCHS + 1)):
            problems.append(f"{name}: metrics.jsonl holds epochs {epochs}")
    return problems


def test_study_on_a_ray_cluster_equals_the_serial_runner(cluster, driver, reference, tmp_path):
    log, lines = driver
    out = tmp_path / "runs"
    study = load_study(_write_study(tmp_path, TINY))
    with TitleWatch(cluster) as cluster_titles:
        outcomes = run_study_ray(study, out, address=cluster.address, cpus_per_run=1, log=log)
    assert [o.status for o in outcomes] == ["finished"] * 4, lines
    assert _differences(reference, out / "tiny") == []
    assert any(line.startswith("progress: 4 done, 0 running, 0 failed, 0 pending") for line in lines), lines
    attempts = [json.loads((out / "tiny" / n / ATTEMPTS_FILE).read_text()) for n in RUNS]
    assert [len(a) for a in attempts] == [1] * 4, attempts
    tries = [a[0] for a in attempts]
    assert all(TASK_TITLE in cluster_titles.seen.get(t["pid"], ()) for t in tries), \
        f"each run in a worker process of this cluster: {tries} {cluster_titles.seen}"
    spans = [(datetime.fromisoformat(t["started"]), datetime.fromisoformat(t["ended"]), t["pid"]) for t in tries]
    overlapping = [(a, b) for a, b in itertools.combinations(spans, 2) if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, f"two runs at a time: {spans}"
    assert all(a[2] != b[2] for a, b in overlapping), "runs at the same time are in different worker processes"


def test_killed_worker_is_retried_and_its_run_resumes_to_the_same_record(cluster, driver, reference, tmp_path):
    log, lines = driver
    out = tmp_path / "runs"
    study = load_study(_write_study(tmp_path, TINY))
    target = out / "tiny" / RUNS[0]
    killed: dict = {}
    study_over = threading.Event()

    def kill_mid_second_epoch() -> None:
        """SIGKILL the worker of the first run once its epoch-1 checkpoint is in place and epoch 2 is running."""
        while not study_over.is_set():
            if (target / "checkpoints/epoch-0001/manifest.json").is_file() and (target / ATTEMPTS_FILE).is_file():
                pid = json.loads((target / ATTEMPTS_FILE).read_text())[-1]["pid"]
                killed.update(pid=pid, of_this_cluster=cluster.titles().get(pid) == TASK_TITLE,
                              too_late=(target / f"checkpoints/epoch-{EPOCHS:04d}").exists())
                if killed["of_this_cluster"]:
                    os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_mid_second_epoch, daemon=True)
    killer.start()
    try:
        outcomes = run_study_ray(study, out, address=cluster.address, cpus_per_run=1, max_retries=2, log=log)
    finally:
        study_over.set()
        killer.join(timeout=5)
    assert killed.get("of_this_cluster"), f"the run's worker is a worker process of this cluster: {killed}"
    assert not killed["too_late"], "the kill landed in the second epoch"
    assert [o.status for o in outcomes] == ["finished"] * 4, lines
    tries = json.loads((target / ATTEMPTS_FILE).read_text())
    assert [t["pid"] == killed["pid"] for t in tries] == [True, False]
    assert tries[1]["status_before"] == "interrupted" and tries[1]["after_epoch"] == 1, "resumed after epoch 1"
    assert _differences(reference, out / "tiny") == [], "every record equals the undisturbed study's"


def test_failing_run_is_recorded_after_its_retries_and_not_retried_unless_asked(cluster, driver, tmp_path, capsys):
    log, lines = driver
    # a RuntimeError in the forward pass (tests/crash_attention.py, on the workers only); a CifarlabError
    bad_overrides = {"bad": {"attention": "crash"}, "refused": {"no_such_kwarg": 1}}
    study = {**TINY, "name": "broken", "seeds": 1, "budget": {"epochs": 1}, "baseline": "ok",
             "variants": [{"name": name, "model": "resnet20", "overrides": {"model_kwargs": kw}}
                          for name, kw in bad_overrides.items()] + [{"name": "ok", "model": "resnet20"}]}
    file, out = _write_study(tmp_path, study), tmp_path / "runs"
    outcomes = run_study_ray(load_study(file), out, address=cluster.address, max_retries=1, log=log)
    assert [o.status for o in outcomes] == ["failed", "failed", "finished"], lines
    bad, refused = out / "broken/bad/seed0", out / "broken/refused/seed0"
    err = json.loads((bad / "error.json").read_text())
    assert "simulated crash" in err["error"] and err["attempts"] == 2 and err["executor"] == "ray"
    assert len(json.loads((bad / ATTEMPTS_FILE).read_text())) == 2, "the first try and K = 1 retry, resumed"
    assert any("FAILED  broken/bad/seed0 after 2 attempts" in line for line in lines), lines
    err = json.loads((refused / "error.json").read_text())
    assert "no_such_kwarg" in err["error"] and len(json.loads((refused / ATTEMPTS_FILE).read_text())) == 1, \
        "an error the user must fix is not tried again"

    capsys.readouterr()
    argv = ["study", "run", str(file), "--out", str(out), "--executor", "ray", "--address", cluster.address]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert text.count("--retry-failed runs it again") == 2 and "ray: " not in text
    assert len(json.loads((bad / ATTEMPTS_FILE).read_text())) == 2, "a failed run is left as it is"

    assert main(argv + ["--retry-failed", "--max-retries", "0"]) == 1
    text = capsys.readouterr().out
    assert "ray: 2 runs as tasks" in text and "FAILED  broken/bad/seed0 after 1 attempts" in text
    assert len(json.loads((bad / ATTEMPTS_FILE).read_text())) == 3
    assert "1 finished runs" in text, "the study table of what finished"


# ---- without a cluster ----

def test_ray_missing_serial_with_ray_options_and_unwritable_out_are_one_line_errors(tmp_path, monkeypatch, capsys):
    file = _write_study(tmp_path, {**TINY, "seeds": 1})
    run = ["study", "run", str(file), "--out", str(tmp_path / "runs")]
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(run + ["--executor", "ray"]) == 2
    assert capsys.readouterr().err.strip() == "error: --executor ray needs Ray: pip install 'cifarlab[ray]'"
    assert main(run + ["--address", "auto", "--gpus-per-run", "0.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --address, --gpus-per-run need --executor ray"
    (tmp_path / "file").write_text("")
    assert main(["study", "run", str(file), "--out", str(tmp_path / "file"), "--executor", "ray"]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write --out {tmp_path / 'file'}")


@pytest.mark.parametrize("ip, outside", [("127.0.0.1", False), ("127.3.2.1", False), ("::ffff:127.0.0.1", False),
                                         ("::1", False), ("0.0.0.0", True), ("10.1.2.3", True), ("::", True),
                                         ("::ffff:192.168.1.5", True), ("fe80::1%eth0", True)])
def test_listeners_outside_loopback(ip, outside):
    assert bool(outside_loopback([(1, "raylet", ip, 6379)])) == outside


def test_measured_table_in_the_docs_is_generated_from_the_records():
    from benchmarks.bench_ray import write_table

    assert write_table(check=True) == 0, "run python -m benchmarks.bench_ray --table"
