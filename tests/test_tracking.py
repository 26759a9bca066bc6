"""Experiment trackers through accelerate, with the real libraries and no network: TensorBoard, MLflow on a local
file store, W&B offline. A run is SIGKILLed right after its first checkpoint (before that epoch reached the trackers)
and resumed; each tracker must then hold one run with every epoch exactly once, the config as params, the record's
figures as summary and the run's files as artifacts, all read back through the trackers' own files and APIs."""

import json
import signal
import struct
from collections import Counter
from pathlib import Path

import pytest
from test_reliability import _fork_cli, _signal_after_checkpoint

from cifarlab import cli
from cifarlab.io import read_json
from cifarlab.train import tracking

ARTIFACTS = {"result.json", "config.json", "metrics.jsonl"}  # the run's files every tracker that keeps files gets
SUMMARY = ("top1", "top5", "nll", "ece", "selected_epoch", "params", "macs", "train_seconds", "train_step_seconds",
           "images_per_second")  # the record's figures of a run without a validation split, as summary metrics
ARGV = ["train", "--model", "resnet20", "--set", "model_kwargs={depth: 8}", "--data", "synthetic:100:100",
        "--epochs", "2", "--batch-size", "50", "--lr", "0.1", "--warmup-epochs", "0", "--no-progress",
        "--report-to", "tensorboard,mlflow,wandb", "--name", "tiny"]


@pytest.fixture
def offline_trackers(tmp_path, monkeypatch):
    """MLflow on a file store and W&B offline, both under ``tmp_path``; no key, no server, no network."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store in maintenance mode
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "WANDB_API_KEY", "CIFARLAB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def wandb_records(path: Path):
    """The protobuf records of a W&B ``.wandb`` transaction log (LevelDB log format: 32 KiB blocks, 7-byte record
    headers crc32/length/type, FULL=1 FIRST=2 MIDDLE=3 LAST=4, after a 7-byte ':W&B' file header)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):
            return  # zero padding, or a record cut short by the kill
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def tensorboard_scalars(folder: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in every TensorBoard event file under ``folder``, in file order, read with
    tensorboard's own event-file reader (no TensorFlow)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    out = []
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            out += [(v.tag, event.step, float(make_ndarray(v.tensor))) for v in event.summary.value
                    if v.metadata.plugin_data.plugin_name == "scalars"]
    return out


def _items(update) -> dict:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in update}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "model_kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _hide_package(monkeypatch, package: str) -> None:
    """As if ``package`` were not installed (``importlib.util.find_spec`` is what the check asks)."""
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == package else real(name, *a))


def test_a_missing_tracker_is_refused_with_its_install_line_before_training(tmp_path, monkeypatch, capsys):
    _hide_package(monkeypatch, "wandb")
    assert cli.main(ARGV + ["--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: report_to wandb: the wandb package is not installed; pip install 'cifarlab[wandb]'"
    assert not (tmp_path / "runs").exists()


def test_mlflow_default_store_without_sqlalchemy_is_refused_before_training(tmp_path, monkeypatch, capsys):
    _hide_package(monkeypatch, "sqlalchemy")  # as with mlflow-skinny, which cannot open MLflow's default sqlite store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(ARGV + ["--report-to", "mlflow", "--out", str(tmp_path / "runs")]) == 2
    assert "set MLFLOW_TRACKING_URI" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_killed_and_resumed_run_is_one_tracker_run_with_each_epoch_once(offline_trackers, tmp_path):
    argv = ARGV + ["--out", str(tmp_path / "runs")]
    run = tmp_path / "runs" / "tiny"
    assert _fork_cli(argv, tmp_path / "killed.log", _signal_after_checkpoint(1, signal.SIGKILL)) == -9
    ids = read_json(run / "trackers.json")
    assert ids["logged_epoch"] == 0, "killed after checkpoint 1, before its metrics reached the trackers"
    assert cli.main(argv + ["--resume"]) == 0

    result, config = read_json(run / "result.json"), read_json(run / "config.json")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert read_json(run / "trackers.json") == {**ids, "logged_epoch": 2}

    # MLflow, through its own client
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(tracking.PROJECT)
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == ids["mlflow"] and found.info.status == "FINISHED"
    params = found.data.params
    assert set(params) == set(_flat(config)) and params["lr"] == "0.1" and params["epochs"] == "2"
    assert params["augment.cutout"] == "0" and json.loads(params["model_kwargs"]) == {"depth": 8}
    for key in ("train_loss", "train_top1", "test_top1", "test_loss", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
        assert history == [(r["epoch"], pytest.approx(r[key])) for r in rows], key
    for key in ("top1", "top5", "nll", "ece", "train_seconds"):
        assert found.data.metrics[key] == pytest.approx(result[key]), key
    assert {a.path for a in client.list_artifacts(found.info.run_id)} >= ARTIFACTS
    copy = client.download_artifacts(found.info.run_id, "result.json", str(tmp_path))
    assert read_json(copy) == result

    # W&B, from its offline transaction logs: one file per session, all of the one run id
    logs = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and all(p.name == f"run-{ids['wandb']}.wandb" for p in logs)
    steps, summary, cfg, files = [], {}, {}, set()
    for log in logs:
        for rec in wandb_records(log):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                values = _items(rec.history.item)
                steps.append(values["_step"])
                row = rows[values["_step"] - 1]
                assert values["test_top1"] == pytest.approx(row["test_top1"])
                assert values["lr"] == pytest.approx(row["lr"])
            elif kind == "summary":
                summary.update(_items(rec.summary.update))
            elif kind == "config":
                cfg.update(_items(rec.config.update))
            elif kind == "files":
                files |= {f.path for f in rec.files.files}
    assert sorted(steps) == [1, 2], "every epoch once, none repeated"
    assert summary["top1"] == pytest.approx(result["top1"]) and summary["ece"] == pytest.approx(result["ece"])
    assert cfg["lr"] == 0.1 and cfg["augment.hflip"] is True and cfg["epochs"] == 2
    assert files >= ARTIFACTS
    saved = next(p for p in logs[-1].parent.glob("files/result.json"))
    assert read_json(saved) == result

    # TensorBoard: accelerate's event files in the run folder, one per session; every epoch's row once, at its step
    scalars = tensorboard_scalars(run / "tensorboard")
    epochs = [(tag, step) for tag, step, _ in scalars if not tag.startswith("result/")]
    want = [(key, r["epoch"]) for r in rows for key in r if key != "epoch"]
    assert Counter(epochs) == Counter(want), "every metric of every epoch exactly once"
    values = {(tag, step): v for tag, step, v in scalars}
    assert all(values[key, r["epoch"]] == pytest.approx(r[key]) for r in rows for key in r if key != "epoch")
    summary = [(tag, step, v) for tag, step, v in scalars if tag.startswith("result/")]
    assert sorted(tag for tag, _, _ in summary) == sorted(f"result/{k}" for k in SUMMARY)
    assert all(step == 2 and v == pytest.approx(result[tag[7:]]) for tag, step, v in summary)
