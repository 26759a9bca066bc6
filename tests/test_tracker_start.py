"""A tracker that cannot start stops the run with one line and leaves no run folder, so the same command runs
again; MLflow 3's local file store gets its opt-in for a store the user named, and a refused opt-in stops the run
before any run folder appears."""

import accelerate
import pytest

from cifarlab import cli
from cifarlab.train.tracking import MLFLOW_FILE_STORE_OPT_IN

ARGV = ["train", "--model", "resnet20", "--set", "model_kwargs={depth: 8}", "--data", "synthetic:100:100",
        "--epochs", "1", "--batch-size", "50", "--lr", "0.1", "--warmup-epochs", "0", "--no-progress", "--name", "tiny"]


def _fail_to_start(self, *args, **kwargs):
    raise ConnectionError("tracking server at http://127.0.0.1:9 refused the connection\nsecond line")


def test_a_tracker_that_cannot_start_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    argv = [*ARGV, "--report-to", "tensorboard", "--out", str(out)]
    with monkeypatch.context() as m:
        m.setattr(accelerate.Accelerator, "init_trackers", _fail_to_start)
        assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == ("error: report_to tensorboard: a tracker could not start (ConnectionError: tracking server at "
                   "http://127.0.0.1:9 refused the connection)\n")
    assert not (out / "tiny").exists(), "the run folder begun before the trackers start is removed"
    assert cli.main(argv) == 0, "the same command runs once the tracker starts"
    assert (out / "tiny" / "result.json").is_file() and any((out / "tiny" / "tensorboard").iterdir())


def test_a_failed_start_keeps_a_run_being_resumed(tmp_path, monkeypatch, capsys):
    """--resume of a run with a checkpoint: the folder holds its epochs, so a failed start must not remove it."""
    out = tmp_path / "runs"
    argv = [*ARGV, "--report-to", "tensorboard", "--out", str(out)]
    assert cli.main(argv) == 0
    (out / "tiny" / "result.json").unlink()  # an interrupted run: checkpoint, no record
    with monkeypatch.context() as m:
        m.setattr(accelerate.Accelerator, "init_trackers", _fail_to_start)
        assert cli.main([*argv, "--resume"]) == 2
    assert "a tracker could not start" in capsys.readouterr().err
    assert (out / "tiny" / "checkpoints").is_dir() and (out / "tiny" / "config.json").is_file()


@pytest.fixture
def mlflow_file_store(tmp_path, monkeypatch):
    """MLflow on a local file store under ``tmp_path``, the opt-in unset (and restored after the test: setenv
    before delenv records it, so a value cifarlab sets does not leak into other tests)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "mlruns"))
    monkeypatch.setenv(MLFLOW_FILE_STORE_OPT_IN, "unset")
    monkeypatch.delenv(MLFLOW_FILE_STORE_OPT_IN)
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "CIFARLAB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_mlflow_file_store_named_by_the_user_gets_its_opt_in(mlflow_file_store, capsys):
    out = mlflow_file_store / "runs"
    assert cli.main([*ARGV, "--report-to", "mlflow", "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "tiny" / "result.json").is_file()
    assert any(p.name == "meta.yaml" for p in (mlflow_file_store / "mlruns").rglob("*")), "MLflow wrote its store"


def test_mlflow_file_store_opt_in_refused_stops_before_a_run_folder(mlflow_file_store, monkeypatch, capsys):
    monkeypatch.setenv(MLFLOW_FILE_STORE_OPT_IN, "false")
    out = mlflow_file_store / "runs"
    assert cli.main([*ARGV, "--report-to", "mlflow", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is a local file store, which MLflow 3 opens only with MLFLOW_ALLOW_FILE_STORE=true (it is 'false')" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
