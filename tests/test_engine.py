import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from accelerate.state import AcceleratorState, PartialState
from safetensors.torch import load_file

from cifarlab import CifarlabError
from cifarlab.config import build_config
from cifarlab.models import register_model
from cifarlab.models.registry import _REGISTRY
from cifarlab.train import NonFiniteLossError, fit

RECORD_KEYS = {"model", "dataset", "dataset_fingerprint", "split_sizes", "top1", "top5", "params", "macs", "epochs",
             "train_seconds", "images_per_second", "device", "seed", "git_commit"}
# ResNet-8 (the resnet20 entry at depth 8) on 300 synthetic images keeps each CPU run to seconds
SMALL = {"model": "resnet20", "model_kwargs": {"depth": 8}, "data": "synthetic:300:100", "batch_size": 50,
         "lr": 0.1, "warmup_epochs": 0}


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cifarlab.cli", *args], capture_output=True, text=True, **kw)


def test_cli_train_writes_a_complete_record(tmp_path):
    p = _cli("train", "--model", "resnet20", "--data", "synthetic:1000:200", "--epochs", "3", "--batch-size", "50",
             "--lr", "0.1", "--warmup-epochs", "0", "--out", str(tmp_path), "--no-progress", timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "resnet20-cifar100-seed0"
    r = json.loads((run / "result.json").read_text())
    assert RECORD_KEYS <= set(r)
    assert r["split_sizes"] == {"train": 1000, "test": 200} and r["epochs"] == 3
    assert 0 <= r["top5"] <= 1 and r["top1"] <= r["top5"]
    assert r["top1"] > 0.05, "synthetic data is learnable: 3 epochs must beat 1 % chance clearly"
    assert r["params"] == 275_572 and r["macs"] == 40_556_800
    assert r["train_step"] == ("cuda_graph" if torch.cuda.is_available() else "eager")
    assert len(r["test_correct"]) == 200 and r["test_correct"].count("1") == round(r["top1"] * 200)
    assert len(r["per_class_accuracy"]) == 100 and len(r["per_superclass_accuracy"]) == 20
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["test_top1"] == pytest.approx(r["top1"], abs=1e-5), "reported = final epoch, never the best"
    assert json.loads((run / "config.json").read_text())["lr"] == 0.1
    assert "epoch 3/3" in p.stdout and "top-1" in p.stdout
    # an existing run is never overwritten silently
    again = _cli("train", "--model", "resnet20", "--data", "synthetic:1000:200", "--epochs", "3",
                 "--out", str(tmp_path), timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    ev = _cli("eval", str(run), "--json", timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["top1"] == pytest.approx(r["top1"])


def test_killed_run_resumes_to_the_planned_epochs(tmp_path):
    args = ["train", "--model", "resnet20", "--set", "model_kwargs={depth: 8}", "--data", "synthetic:300:100",
            "--epochs", "3", "--batch-size", "50", "--lr", "0.1", "--out", str(tmp_path), "--name", "r",
            "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = tmp_path / "r" / "checkpoints" / "epoch-0001" / "manifest.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.exists(), "no first checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "r" / "result.json").exists()
    p = _cli(*args, "--resume", timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming" in p.stdout
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in rows] == [1, 2, 3]
    assert json.loads((tmp_path / "r" / "result.json").read_text())["epochs"] == 3


def test_resume_is_bit_exact_on_cpu(tmp_path):
    """Weights and their EMA: the average is reloaded from the checkpoint and continues where it stopped."""
    cfg = build_config({**SMALL, "epochs": 3, "deterministic": True, "ema_decay": 0.9})
    fit(cfg, tmp_path / "full", progress=False)

    class Stop(Exception):
        pass

    def stop_after_2(epoch, model, loader):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(cfg, tmp_path / "cut", progress=False, on_epoch_end=stop_after_2)
    fit(cfg, tmp_path / "cut", progress=False, resume=True)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "full" / "checkpoints" / "epoch-0003" / name)
        b = load_file(tmp_path / "cut" / "checkpoints" / "epoch-0003" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_nonfinite_loss_stops_naming_epoch_and_step(tmp_path):
    class Explode(torch.nn.Module):
        def __init__(self, num_classes=100):
            super().__init__()
            self.fc = torch.nn.Linear(3, num_classes)
            self.calls = 0

        def forward(self, x):
            self.calls += self.training
            out = self.fc(x.mean((2, 3)))
            return out * float("nan") if self.calls > 13 else out

    register_model(Explode, name="test_explode", family="test", paper="-", tier="small")
    try:
        cfg = build_config({**SMALL, "model": "test_explode", "model_kwargs": {}, "epochs": 3, "nan_check_every": 4})
        with pytest.raises(NonFiniteLossError, match="epoch 3, step 2 of 6"):
            fit(cfg, tmp_path / "nan", progress=False)
    finally:
        _REGISTRY.pop("test_explode")
    assert (tmp_path / "nan" / "checkpoints" / "epoch-0002").is_dir()
    assert not (tmp_path / "nan" / "checkpoints" / "epoch-0003").exists()
    assert "epoch 3" in json.loads((tmp_path / "nan" / "error.json").read_text())["error"]


def emulate_cuda_graph(monkeypatch):
    """CUDA-graph semantics on the CPU, to check the engine's wiring of the graph path: capture = the warm-up and
    restore ``TrainStep._capture`` does, replay = the captured body on the static buffers. Capture safety itself
    is for the CUDA tests (tests/test_train_step.py)."""
    from types import SimpleNamespace

    from cifarlab.train import engine
    from cifarlab.train.step import TrainStep

    def capture(self, warmup_steps):
        saved = self._snapshot()
        for _ in range(warmup_steps):
            self.optimizer.zero_grad(set_to_none=True)
            self._body(self.static_x, self.static_y)
        self._restore(saved)

        def replay():
            self.optimizer.zero_grad(set_to_none=True)
            self._body(self.static_x, self.static_y)

        self.graph = SimpleNamespace(replay=replay)

    monkeypatch.setattr(TrainStep, "_capture", capture)
    monkeypatch.setattr(engine, "_use_cuda_graph", lambda cfg, device, world: cfg.cuda_graph != "off")


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run, epoch, name="model.safetensors"):
    return load_file(run / "checkpoints" / f"epoch-{epoch:04d}" / name)


def test_graph_path_follows_the_schedule_and_matches_eager(tmp_path, monkeypatch):
    """The graph path's fused optimizer reads LR tensors the scheduler fills: the same LR every epoch and the same
    training as the eager path (up to fused vs foreach rounding)."""
    emulate_cuda_graph(monkeypatch)
    base = {**SMALL, "epochs": 3, "deterministic": True, "warmup_epochs": 1, "ema_decay": 0.9,
            "label_smoothing": 0.1, "grad_clip": 2.0}
    eager = fit(build_config({**base, "cuda_graph": "off"}), tmp_path / "eager", progress=False)
    graph = fit(build_config({**base, "cuda_graph": "on"}), tmp_path / "graph", progress=False)
    assert (eager["train_step"], graph["train_step"]) == ("eager", "cuda_graph")
    for a, b in zip(_rows(tmp_path / "eager"), _rows(tmp_path / "graph"), strict=True):
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-6)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = _weights(tmp_path / "eager", 3, name), _weights(tmp_path / "graph", 3, name)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=2e-4, msg=k)  # fused vs foreach rounding


def test_graph_path_resumes_bit_exact_and_takes_over_an_eager_run(tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    def stop_after_2(epoch, model, loader):
        if epoch == 2:
            raise Stop

    cfg = build_config({**SMALL, "epochs": 3, "deterministic": True, "ema_decay": 0.9})
    with pytest.raises(Stop):  # started eagerly (auto on the CPU) ...
        fit(cfg, tmp_path / "mixed", progress=False, on_epoch_end=stop_after_2)
    emulate_cuda_graph(monkeypatch)
    fit(cfg, tmp_path / "full", progress=False)
    with pytest.raises(Stop):
        fit(cfg, tmp_path / "cut", progress=False, on_epoch_end=stop_after_2)
    fit(cfg, tmp_path / "cut", progress=False, resume=True)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = _weights(tmp_path / "full", 3, name), _weights(tmp_path / "cut", 3, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["lr"] for r in _rows(tmp_path / "cut")] == [r["lr"] for r in _rows(tmp_path / "full")]
    mixed = fit(cfg, tmp_path / "mixed", progress=False, resume=True)  # ... resumed on the graph path
    assert mixed["train_step"] == "eager+cuda_graph" and len(_rows(tmp_path / "mixed")) == 3


def test_cuda_graph_on_without_a_gpu_is_refused_before_the_run_folder(tmp_path, monkeypatch):
    # a machine without a CUDA device: CUDA hidden, accelerate's process-wide device state started afresh
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for state in (PartialState, AcceleratorState):
        monkeypatch.setattr(state, "_shared_state", {})
    with pytest.raises(CifarlabError, match="cuda_graph on needs .*CUDA"):
        fit(build_config({**SMALL, "cuda_graph": "on"}), tmp_path / "g", progress=False)
    assert not (tmp_path / "g").exists()


def test_validation_split_selects_the_epoch(tmp_path):
    cfg = build_config({**SMALL, "epochs": 2, "val_split": 100, "ema_decay": 0.9, "schedule": "multistep",
                        "label_smoothing": 0.1, "grad_clip": 5.0})
    r = fit(cfg, tmp_path / "v", progress=False)
    assert r["split_sizes"] == {"train": 200, "test": 100, "val": 100}
    assert r["selection"] == "best validation top-1" and "val_top1" in r
    rows = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda x: x["val_top1"])  # first best on ties
    assert r["selected_epoch"] == best["epoch"] and r["top1"] == pytest.approx(best["test_top1"], abs=1e-5)
    assert (tmp_path / "v" / "checkpoints" / "epoch-0002" / "ema.safetensors").exists()


def test_optimizer_skips_decay_on_norms_and_biases():
    from cifarlab.models import create
    from cifarlab.train.optim import build_optimizer

    m = create("resnet20")
    opt = build_optimizer(m, build_config({"weight_decay": 5e-4}))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert opt.defaults["nesterov"] is True
    vit = create("vit_mini_p4")
    no_decay_ids = {id(p) for p in build_optimizer(vit, build_config({})).param_groups[1]["params"]}
    assert id(vit.pos_embed) in no_decay_ids and id(vit.cls_token) in no_decay_ids


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "multistep", "exponential"])
def test_schedules_warm_up_then_follow_their_shape(schedule):
    from cifarlab.models import create
    from cifarlab.train.optim import build_optimizer, build_scheduler

    extra = {"gamma": 0.8} if schedule == "exponential" else {}
    cfg = build_config({"schedule": schedule, "epochs": 10, "warmup_epochs": 2, "lr": 1.0, **extra})
    opt = build_optimizer(create("resnet20"), cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.2 and max(lrs[:21]) == pytest.approx(1.0, abs=0.06)
    if schedule == "constant":
        assert lrs[-1] == pytest.approx(1.0)
    elif schedule == "multistep":
        assert lrs[60] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.01)
    elif schedule == "exponential":
        assert [lrs[20 + 10 * k] for k in range(8)] == pytest.approx([0.8 ** k for k in range(8)])
        assert lrs[25] == pytest.approx(0.8 ** 0.5), "smooth within an epoch"
        with pytest.raises(CifarlabError, match="set gamma"):
            build_config({"schedule": "exponential"})
    else:
        assert lrs[-1] < 0.05


def test_bad_config_is_rejected_before_work(tmp_path):
    with pytest.raises(CifarlabError, match="epochs"):
        build_config({"epochs": 0})
    with pytest.raises(CifarlabError, match="unknown field"):
        build_config({"learning_rate": 0.1})
    with pytest.raises(CifarlabError, match="batch_size 5000 is larger"):
        fit(build_config({**SMALL, "batch_size": 5000, "epochs": 1}), tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


def test_recipe_sits_between_defaults_and_overrides():
    from cifarlab.config import TrainConfig

    assert build_config({"model": "resnet18"}).lr == 0.2
    assert build_config({"model": "resnet18", "lr": 0.05}).lr == 0.05
    assert build_config({"model": "resnet20"}).lr == TrainConfig().lr
