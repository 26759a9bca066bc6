"""Reliability: interruptions, damaged checkpoints, bad data, non-finite numerics, resources.

Interruption tests run ``cifarlab.cli.main`` in a forked child of the test process (the imports are
already loaded, so a child starts in milliseconds) and deliver real signals to it at exact points:
right after a checkpoint (between epochs), at a step inside an epoch, and while a checkpoint is
being written. One test sends the signal from outside to a ``python -m cifarlab.cli`` process, and
``tests/chaos.py`` kills runs at random moments.
"""

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from cifar_files import images, tar_gz, write_cifar100_python, write_parquet
from PIL import Image
from safetensors.torch import load_file

from cifarlab import CifarlabError, cli
from cifarlab.config import build_config
from cifarlab.data import DeviceLoader, load_data
from cifarlab.data.meta import CIFAR100_COARSE, CIFAR100_FINE
from cifarlab.io import read_json
from cifarlab.models import register_model
from cifarlab.models.registry import _REGISTRY
from cifarlab.run import RunFolder, newest_intact
from cifarlab.run.checkpoints import problem
from cifarlab.train import NonFiniteLossError, checkpoint as ckpt, fit

HERE = Path(__file__).resolve().parent
# ResNet-8 (the resnet20 entry at depth 8), 300 synthetic images, 6 steps an epoch: seconds per run on a CPU
SMALL = {"model": "resnet20", "model_kwargs": {"depth": 8}, "data": "synthetic:300:100", "batch_size": 50,
         "lr": 0.1, "warmup_epochs": 0}
DET4 = {**SMALL, "epochs": 4, "deterministic": True}
TRAIN_ARGV = ["train", "--model", "resnet20", "--set", "model_kwargs={depth: 8}", "--data", "synthetic:300:100",
              "--epochs", "4", "--batch-size", "50", "--lr", "0.1", "--warmup-epochs", "0", "--deterministic",
              "--no-progress"]


# ---------------------------------------------------------------- helpers


def _epochs_in_metrics(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _latest_intact(run: Path) -> int | None:
    found = newest_intact(RunFolder(run))
    return None if found is None else found.epoch


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / "epoch-0004" / "model.safetensors")


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An undisturbed deterministic 4-epoch run: its final weights and record."""
    run = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before conftest's per-test isolation
        mp.setenv("CIFARLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cifarlab-cache"))
        fit(build_config(DET4), run, progress=False)
    return {"weights": _final_weights(run), "result": read_json(run / "result.json"), "run": run}


def _fork_cli(argv: list[str], log: Path, inject=None) -> int:
    """``cli.main(argv)`` in a forked child whose output goes to ``log``; ``inject()`` arms a fault first.

    Returns the exit code, negative when a signal killed the child (as subprocess does)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            sys.stdout = sys.stderr = open(log, "w", buffering=1)
            if inject is not None:
                inject()
            code = cli.main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _signal_after_checkpoint(epoch: int, sig: int):
    """Between epochs: the signal arrives as soon as checkpoint ``epoch`` is in place."""
    def arm():
        from cifarlab.train import engine
        save = engine.save_checkpoint

        def save_then_signal(ckpt_dir, e, *a, **kw):
            out = save(ckpt_dir, e, *a, **kw)
            if e == epoch:
                os.kill(os.getpid(), sig)
            return out
        engine.save_checkpoint = save_then_signal
    return arm


def _signal_mid_epoch(epoch: int, step: int, sig: int):
    """Inside an epoch: the signal arrives while the training loader hands out batch ``step``."""
    def arm():
        iterate = DeviceLoader.__iter__

        def iterate_then_signal(self):
            for i, batch in enumerate(iterate(self)):
                if self.train and self.epoch == epoch and i == step:
                    os.kill(os.getpid(), sig)
                yield batch
        DeviceLoader.__iter__ = iterate_then_signal
    return arm


def _signal_while_writing_checkpoint(epoch: int, sig: int):
    """During a checkpoint write: the signal arrives while its files are being fsynced in the temp folder."""
    def arm():
        fsync = ckpt.fsync_file

        def fsync_then_signal(path):
            fsync(path)
            if Path(path).parent.name.startswith(f".epoch-{epoch:04d}."):
                os.kill(os.getpid(), sig)
        ckpt.fsync_file = fsync_then_signal
    return arm


# ---------------------------------------------------------------- interruptions

EXIT = {signal.SIGINT: (130, "interrupted:"), signal.SIGTERM: (143, "terminated:"), signal.SIGKILL: (-9, None)}


def test_cli_argv_matches_the_reference_config():
    from cifarlab.cli import build_parser, train_overrides

    assert build_config(train_overrides(build_parser().parse_args(TRAIN_ARGV))) == build_config(DET4)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"])
def test_signals_between_mid_epoch_and_during_checkpoint_lose_at_most_one_epoch(tmp_path, reference, sig):
    argv = [*TRAIN_ARGV, "--out", str(tmp_path), "--name", "r"]
    run, code, message = tmp_path / "r", *EXIT[sig]

    def check_exit(rc, log):
        assert rc == code, log.read_text()[-2000:]
        text = log.read_text()
        assert "Traceback" not in text
        if message:
            assert message in text and "--resume" in text

    # 1. between epochs: right after checkpoint 1
    rc = _fork_cli(argv, tmp_path / "1.log", _signal_after_checkpoint(1, sig))
    check_exit(rc, tmp_path / "1.log")
    assert _latest_intact(run) == 1 and _epochs_in_metrics(run) == [1]
    assert not (run / "result.json").exists()

    # 2. mid-epoch: after 2 of the 6 steps of epoch 3; epoch 3 is lost, epoch 2 is kept
    rc = _fork_cli([*argv, "--resume"], tmp_path / "2.log", _signal_mid_epoch(3, 2, sig))
    check_exit(rc, tmp_path / "2.log")
    assert "after epoch 1" in (tmp_path / "2.log").read_text()
    assert _latest_intact(run) == 2 and _epochs_in_metrics(run) == [1, 2]

    # 3. while checkpoint 3 is being written: the half-written one never counts
    rc = _fork_cli([*argv, "--resume"], tmp_path / "3.log", _signal_while_writing_checkpoint(3, sig))
    check_exit(rc, tmp_path / "3.log")
    assert _latest_intact(run) == 2 and not (run / "checkpoints" / "epoch-0003").exists()
    leftovers = list((run / "checkpoints").glob(".epoch-*"))
    assert bool(leftovers) == (sig == signal.SIGKILL), "a catchable signal cleans up its temp folder"

    # 4. resume to the end: every epoch recorded once, the temp folder gone, the weights of an undisturbed run
    rc = _fork_cli([*argv, "--resume"], tmp_path / "4.log")
    assert rc == 0, (tmp_path / "4.log").read_text()[-2000:]
    assert "after epoch 2" in (tmp_path / "4.log").read_text()
    assert _epochs_in_metrics(run) == [1, 2, 3, 4]
    assert not list((run / "checkpoints").glob(".epoch-*"))
    result = read_json(run / "result.json")
    assert result["top1"] == reference["result"]["top1"] and result["epochs"] == 4
    assert _same_weights(_final_weights(run), reference["weights"]), "deterministic resume must be bit-exact"


def test_sigterm_from_outside_stops_the_cli_cleanly(tmp_path, reference):
    """A real ``python -m cifarlab.cli`` process, sent SIGTERM (as a scheduler does) a random short time after its
    first checkpoint, most likely inside epoch 2, and at the latest when the second checkpoint appears (two epochs
    still to go, so the signal always arrives during the run)."""
    sig = signal.SIGTERM
    argv = [*TRAIN_ARGV, "--out", str(tmp_path), "--name", "r"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    first = tmp_path / "r" / "checkpoints" / "epoch-0001" / "manifest.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), proc.communicate()[1][-2000:]
    second = first.parents[1] / "epoch-0002" / "manifest.json"
    until = time.time() + np.random.default_rng().uniform(0, 0.5)
    while time.time() < until and not second.exists():
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    code, message = EXIT[sig]
    assert proc.returncode == code, err[-2000:]
    assert message in err and "Traceback" not in err
    done = _latest_intact(tmp_path / "r")
    assert done >= 1 and _epochs_in_metrics(tmp_path / "r")[-1] >= done
    rc = _fork_cli([*argv, "--resume"], tmp_path / "resume.log")
    assert rc == 0 and _epochs_in_metrics(tmp_path / "r") == [1, 2, 3, 4]
    assert _same_weights(_final_weights(tmp_path / "r"), reference["weights"])


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def stopped_after_3(tmp_path_factory, reference):
    """The reference config, stopped after its third epoch (checkpoints 2 and 3 kept)."""
    run = tmp_path_factory.mktemp("stopped") / "run"

    class Stop(Exception):
        pass

    def stop(epoch, model, loader):
        if epoch == 3:
            raise Stop

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIFARLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cifarlab-cache"))
        with pytest.raises(Stop):
            fit(build_config(DET4), run, progress=False, on_epoch_end=stop)
    return run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0xFF
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("damage,reason", [
    (lambda d: _truncate(d / "model.safetensors"), "model.safetensors fails its checksum"),
    (lambda d: _flip_a_byte(d / "state.pt"), "state.pt fails its checksum"),
    (lambda d: (d / "manifest.json").unlink(), "no manifest (interrupted while writing)"),
], ids=["truncated-weights", "flipped-state", "no-manifest"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, stopped_after_3, reference, capsys,
                                                                    damage, reason):
    run = tmp_path / "run"
    shutil.copytree(stopped_after_3, run)
    damage(run / "checkpoints" / "epoch-0003")
    capsys.readouterr()
    fit(build_config(DET4), run, progress=False, resume=True)
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "corrupt" in line]
    assert notes == [f"checkpoint epoch-0003 is corrupt ({reason}); using an older one"]
    assert "resuming" in out and "after epoch 2" in out
    assert _epochs_in_metrics(run) == [1, 2, 3, 4]
    assert _same_weights(_final_weights(run), reference["weights"])


def test_no_intact_checkpoint_starts_again_and_says_so(tmp_path, stopped_after_3, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped_after_3, run)
    for d in (run / "checkpoints").iterdir():
        _truncate(d / "model.safetensors")
    capsys.readouterr()
    fit(build_config(DET4), run, progress=False, resume=True)
    out = capsys.readouterr().out
    assert "no intact checkpoint" in out and "epoch 1" in out
    assert _epochs_in_metrics(run) == [1, 2, 3, 4]
    assert _same_weights(_final_weights(run), reference["weights"])


def test_checkpoint_verification(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = {"step": torch.tensor(1)}
    run = RunFolder(tmp_path)
    for epoch in (1, 2, 3):
        ckpt.save_checkpoint(run, epoch, model, state, keep=2)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0002", "epoch-0003"]
    d = folder / "epoch-0003"
    assert problem(run, d.name)[0] is None
    assert set(read_json(d / "manifest.json")["files"]) == {"model.safetensors", "state.pt"}
    manifest = (d / "manifest.json").read_text()
    (d / "state.pt").rename(d / "state.bak")
    assert problem(run, d.name)[0] == "state.pt is missing"
    (d / "state.bak").rename(d / "state.pt")
    (d / "manifest.json").write_text(manifest[: len(manifest) // 2])
    assert problem(run, d.name)[0] == "unreadable manifest"
    (d / "manifest.json").write_text("[1, 2]")
    assert problem(run, d.name)[0] == "unreadable manifest"
    (d / "manifest.json").write_text(json.dumps({"epoch": 3, "files": {}}))
    assert problem(run, d.name)[0] == "manifest does not list the weights and the training state"
    found = newest_intact(run)
    assert (found.epoch, found.path) == (2, folder / "epoch-0002")
    # a temp folder left by a killed write is never taken and goes with the next save
    stale = folder / ".epoch-0004.abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert newest_intact(run).epoch == 2
    ckpt.save_checkpoint(run, 4, model, state, keep=2)
    assert not stale.exists() and newest_intact(run).epoch == 4


# ---------------------------------------------------------------- numerics


class _InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward: the loss stays finite, the gradients do not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


class _InfGradAt(torch.nn.Module):
    def __init__(self, num_classes=100, at_call=9):
        super().__init__()
        self.fc = torch.nn.Linear(3, num_classes)
        self.at_call, self.calls = at_call, 0

    def forward(self, x):
        self.calls += self.training
        w = _InfGrad.apply(self.fc.weight) if self.training and self.calls == self.at_call else self.fc.weight
        return torch.nn.functional.linear(x.mean((2, 3)), w, self.fc.bias)


@pytest.mark.parametrize("grad_clip", [1.0, None], ids=["clipped", "unclipped"])
def test_infinite_gradients_stop_the_run_naming_epoch_and_step(tmp_path, grad_clip):
    register_model(_InfGradAt, name="test_inf_grad", family="test", paper="-", tier="small")
    try:
        cfg = build_config({**SMALL, "model": "test_inf_grad", "model_kwargs": {}, "epochs": 3,
                            "grad_clip": grad_clip, "nan_check_every": 4})
        with pytest.raises(NonFiniteLossError, match="epoch 2, step 3 of 6") as e:  # training call 9 = 6 + 3
            fit(cfg, tmp_path / "run", progress=False)
    finally:
        _REGISTRY.pop("test_inf_grad")
    assert "\n" not in str(e.value)
    run = tmp_path / "run"
    assert _latest_intact(run) == 1 and not (run / "checkpoints" / "epoch-0002").exists()
    err = read_json(run / "error.json")
    assert (err["epoch"], err["step"]) == (2, 3)


# ---------------------------------------------------------------- resources


class _OutOfMemory(torch.nn.Module):
    def __init__(self, num_classes=100):
        super().__init__()
        self.fc = torch.nn.Linear(3, num_classes)

    def forward(self, x):
        if self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.fc(x.mean((2, 3)))


def test_out_of_memory_suggests_a_smaller_batch(tmp_path, capsys):
    register_model(_OutOfMemory, name="test_oom", family="test", paper="-", tier="small")
    try:
        rc = cli.main(["train", "--model", "test_oom", "--data", "synthetic:300:100", "--epochs", "1",
                       "--batch-size", "50", "--out", str(tmp_path), "--no-progress"])
    finally:
        _REGISTRY.pop("test_oom")
    err = capsys.readouterr().err
    assert rc == 3
    assert "out of memory" in err and "smaller --batch-size" in err and "Traceback" not in err


def test_full_disk_says_so_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    from cifarlab.train import engine

    save = engine.save_checkpoint

    def save_until_full(run, epoch, *a, **kw):
        if epoch == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(run.root / "checkpoints" / ".epoch-0002.x"))
        return save(run, epoch, *a, **kw)

    monkeypatch.setattr(engine, "save_checkpoint", save_until_full)
    rc = cli.main(["train", "--model", "resnet20", "--set", "model_kwargs={depth: 8}", "--data", "synthetic:300:100",
                   "--epochs", "3", "--batch-size", "50", "--out", str(tmp_path), "--name", "r", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 3 and "no space left on the disk" in err and "--resume" in err and "Traceback" not in err
    assert _latest_intact(tmp_path / "r") == 1


def test_fit_never_overwrites_a_run_without_overwrite(tmp_path):
    cfg = build_config({**SMALL, "epochs": 1})
    run = tmp_path / "run"
    fit(cfg, run, progress=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CifarlabError, match="already holds a run"):
        fit(cfg, run, progress=False)
    with pytest.raises(CifarlabError, match="config differs .* in lr"):  # a finished run resumed with another config
        fit(build_config({**SMALL, "epochs": 1, "lr": 0.05}), run, progress=False, resume=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert fit(cfg, run, progress=False, resume=True) == read_json(run / "result.json")  # finished: nothing to do
    again = fit(build_config({**SMALL, "epochs": 1, "lr": 0.05}), run, progress=False, overwrite=True)
    assert again["config"]["lr"] == 0.05 and read_json(run / "config.json")["lr"] == 0.05


def test_batch_larger_than_the_split_is_rejected_before_the_run_folder(tmp_path, capsys):
    with pytest.raises(CifarlabError, match="batch_size 250 is larger than the training split per process \\(200"):
        fit(build_config({**SMALL, "epochs": 1, "batch_size": 250, "val_split": 100}), tmp_path / "a", progress=False)
    rc = cli.main(["train", "--model", "resnet20", "--data", "synthetic:300:100", "--batch-size", "301",
                   "--out", str(tmp_path), "--name", "b", "--no-progress"])
    assert rc == 2 and "larger than the training split" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("kwargs,message", [("{depth: 7}", "depth must be 6n+2"),
                                            ("{dept: 8}", "does not take 'dept'")])
def test_model_that_cannot_be_built_is_rejected_before_the_run_folder(tmp_path, capsys, kwargs, message):
    rc = cli.main(["train", "--model", "resnet20", "--set", f"model_kwargs={kwargs}", "--data", "synthetic:300:100",
                   "--batch-size", "50", "--out", str(tmp_path), "--name", "d", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- data


def _parquet_with_images(folder: Path, train_imgs: list, test_n: int = 10) -> Path:
    """Hub-schema parquet whose train images are the given PIL images."""
    folder.mkdir(parents=True, exist_ok=True)
    feats = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=CIFAR100_FINE),
                               "coarse_label": datasets.ClassLabel(names=CIFAR100_COARSE)})
    for split, imgs in (("train", train_imgs), ("test", [Image.fromarray(a) for a in images(test_n)])):
        n = len(imgs)
        ds = datasets.Dataset.from_dict({"img": imgs, "fine_label": [i % 100 for i in range(n)],
                                         "coarse_label": [i % 20 for i in range(n)]}, features=feats)
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return folder


def _pickle_dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj))


@pytest.mark.parametrize("case,match", [
    ("grayscale", "image 3 of the train split has mode L"),
    ("rgba", "image 0 of the train split has mode RGBA"),
    ("empty_train", "the train split is empty"),
    ("no_test_parquet", "no test parquet files found"),
    ("truncated_parquet", "train-00000-of-00001.parquet: not a readable parquet file"),
    ("missing_test_pickle", "missing test pickle file"),
    ("garbage_pickle", "not a CIFAR python pickle"),
    ("pickle_wrong_size", r"shape \(100, 1024\); expected \(N, 3072\)"),
    ("pickle_negative_label", "labels span -1..99"),
    ("pickle_label_count", "200 images but 199"),
])
def test_bad_data_gives_one_clear_error(tmp_path, case, match):
    rgb = [Image.fromarray(a) for a in images(10)]

    def pickles(mutate):
        base = write_cifar100_python(tmp_path)
        mutate(base)
        return base

    def parquet(mutate, pattern):
        folder = write_parquet(tmp_path / "pq", train=20, test=20, shards=1)
        for f in folder.glob(pattern):
            mutate(f)
        return folder

    def relabel(base, labels):
        d = pickle.loads((base / "train").read_bytes())
        d[b"fine_labels"] = labels
        _pickle_dump(base / "train", d)

    src = {
        "grayscale": lambda: _parquet_with_images(tmp_path / "g", rgb[:3] + [rgb[3].convert("L")] + rgb[4:]),
        "rgba": lambda: _parquet_with_images(tmp_path / "a", [im.convert("RGBA") for im in rgb]),
        "empty_train": lambda: _parquet_with_images(tmp_path / "e", []),
        "no_test_parquet": lambda: parquet(Path.unlink, "test-*"),
        "truncated_parquet": lambda: parquet(_truncate, "train-*"),
        "missing_test_pickle": lambda: pickles(lambda b: (b / "test").unlink()),
        "garbage_pickle": lambda: pickles(lambda b: (b / "test").write_bytes(b"\x80\x04not a pickle")),
        "pickle_wrong_size": lambda: pickles(lambda b: _pickle_dump(b / "test", {
            b"data": np.zeros((100, 1024), np.uint8), b"fine_labels": [0] * 100, b"coarse_labels": [0] * 100})),
        "pickle_negative_label": lambda: pickles(lambda b: relabel(b, [-1] + list(np.arange(1, 200) % 100))),
        "pickle_label_count": lambda: pickles(lambda b: relabel(b, list(np.arange(199) % 100))),
    }[case]()
    with pytest.raises(CifarlabError, match=match) as e:
        load_data("cifar100", str(src))
    assert "\n" not in str(e.value)


def test_replaced_archive_is_extracted_and_decoded_again(tmp_path):
    """Same path, same size, same mtime, other pixels: the archive's bytes decide, not its stat."""
    base = write_cifar100_python(tmp_path / "a")
    archive = tmp_path / "cifar-100-python.tar"
    shutil.make_archive(str(archive.with_suffix("")), "tar", base.parent, base.name)
    first = load_data("cifar100", str(archive))
    stat = archive.stat()
    d = pickle.loads((base / "train").read_bytes())
    d[b"data"] = 255 - d[b"data"]
    _pickle_dump(base / "train", d)
    shutil.make_archive(str(archive.with_suffix("")), "tar", base.parent, base.name)
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert archive.stat().st_size == stat.st_size and archive.stat().st_mtime_ns == stat.st_mtime_ns
    second = load_data("cifar100", str(archive))
    assert first.fingerprint != second.fingerprint
    assert np.array_equal(second.train.images, 255 - first.train.images)


def test_replaced_parquet_with_the_same_size_and_mtime_is_decoded_again(tmp_path):
    folder = write_parquet(tmp_path / "pq", train=100, test=100, shards=1)
    first = load_data("cifar100", str(folder))
    stats = {p: p.stat() for p in folder.iterdir()}
    write_parquet(folder, train=100, test=100, shards=1, seed=1)  # other pixels, same layout
    for p, st in stats.items():
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert all(p.stat().st_size == st.st_size for p, st in stats.items())
    second = load_data("cifar100", str(folder))
    assert first.fingerprint != second.fingerprint
    assert np.array_equal(second.train.images, images(100, seed=101))


def test_changed_tar_gz_is_detected(tmp_path):
    archive = tar_gz(write_cifar100_python(tmp_path / "a", train=200), tmp_path / "c.tar.gz")
    first = load_data("cifar100", str(archive))
    tar_gz(write_cifar100_python(tmp_path / "b", train=300), archive)
    second = load_data("cifar100", str(archive))
    assert first.fingerprint != second.fingerprint and len(second.train) == 300


def test_unreadable_decode_cache_is_rebuilt(tmp_path):
    from cifarlab.data.dataset import CACHE_VERSION
    from cifarlab.data.sources import cache_root

    first = load_data("cifar100", str(write_parquet(tmp_path / "pq", 100, 100, 1)))
    key = hashlib.sha256(first.fingerprint.encode()).hexdigest()[:24]
    cache = cache_root() / f"cifar100-{key}-v{CACHE_VERSION}.npz"
    _truncate(cache)
    again = load_data("cifar100", str(tmp_path / "pq"))
    assert np.array_equal(first.train.images, again.train.images)
    with np.load(cache) as z:
        assert np.array_equal(z["train_x"], first.train.images)


# ---------------------------------------------------------------- chaos


def test_chaos_kills_end_with_the_undisturbed_results(tmp_path):
    p = subprocess.run([sys.executable, str(HERE / "chaos.py"), "--kills", "3", "--seed", "1", "--workdir",
                        str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "outcome: EQUAL" in p.stdout
    assert int(re.search(r"^kills: (\d+)$", p.stdout, re.M).group(1)) >= 2, p.stdout  # 3 unless an attempt outran
