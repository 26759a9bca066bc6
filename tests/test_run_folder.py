"""The run folder has one owner: one status rule that ``cifarlab runs`` and ``cifarlab study plan`` share, one
validating reader per file that every command uses, and no path inside a run folder that leads outside it."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch

from cifarlab import CifarlabError
from cifarlab.cli import main
from cifarlab.config import build_config
from cifarlab.io import sha256_file
from cifarlab.report.runs import list_runs
from cifarlab.run import RunFolder, hold_lock, newest_intact, prune, read_result, run_status
from cifarlab.studies import load_study, run_state
from cifarlab.train import fit

BASE = {"model": "resnet20", "model_kwargs": {"depth": 8}, "data": "synthetic:200:100", "epochs": 3,
        "batch_size": 50, "report_to": "none"}
STUDY = ("name: st\nseeds: 8\nbase: {model: resnet20, model_kwargs: {depth: 8}, data: 'synthetic:200:100', "
         "epochs: 3, batch_size: 50, report_to: none}\nvariants: [{name: v}]\n")


class Cut(Exception):
    pass


def _cut_after(k: int):
    def hook(epoch, model, loader):
        if epoch == k:
            raise Cut
    return hook


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study folder with a run in every state, each made the way it happens to users."""
    root = tmp_path_factory.mktemp("states")
    (root / "s.yaml").write_text(STUDY)
    spec = load_study(root / "s.yaml")
    out = root / "runs"
    from cifarlab.studies.runner import start_study

    start_study(spec, out, (0, 1), log=lambda s: None)  # writes study.json as `study run` does
    runs = {r.seed: r for r in spec.runs()}

    def train(seed, **kw):
        return fit(runs[seed].config, runs[seed].run_dir(out), progress=False, **kw)

    # seed0: nothing yet (new)
    with pytest.raises(Cut):  # seed1: cut after epoch 2 (interrupted, resumes after 2)
        train(1, on_epoch_end=_cut_after(2))
    with pytest.raises(Cut):  # seed2: cut after epoch 2, newest checkpoint torn (resumes after 1)
        train(2, on_epoch_end=_cut_after(2))
    state = runs[2].run_dir(out) / "checkpoints" / "epoch-0002" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    train(3)  # seed3: done
    with pytest.raises(Cut):  # seed4: failed (error.json, as the runner writes it), after epoch 1
        train(4, on_epoch_end=_cut_after(1))
    (runs[4].run_dir(out) / "error.json").write_text(json.dumps({"error": "RuntimeError: a lost GPU"}))
    train(5)  # seed5: done, then its config changed (a folder copied from a study of another budget)
    cfg = runs[5].run_dir(out) / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "epochs": 4}))
    with pytest.raises(Cut):  # seed6: killed while writing its first checkpoint (only the temporary folder is left)
        train(6, on_epoch_end=_cut_after(1))
    ckpts = runs[6].run_dir(out) / "checkpoints"
    (ckpts / "epoch-0001").rename(ckpts / ".epoch-0001.killed")
    # seed7: being trained now (its lock held)
    (runs[7].run_dir(out)).mkdir(parents=True)
    (runs[7].run_dir(out) / "config.json").write_text(json.dumps(runs[7].config.model_dump(mode="json")))
    return root, spec, out


EXPECTED = {0: ("new", 0), 1: ("interrupted", 2), 2: ("interrupted", 1), 3: ("done", 3), 4: ("failed", 1),
            5: ("changed", 0), 6: ("interrupted", 0), 7: ("running", 0)}


def test_runs_and_study_plan_agree_on_every_state(study, capsys):
    root, spec, out = study
    seed7 = RunFolder(out / "st" / "v" / "seed7")
    with hold_lock(seed7):
        plan = {r.seed: run_state(r, out) for r in spec.runs()}
        rows = {int(r.path.rsplit("seed", 1)[1]): r for r in list_runs([out])}
        assert main(["study", "plan", str(root / "s.yaml"), "--out", str(out)]) == 1  # a changed folder
        text = capsys.readouterr().out
    for seed, (state, epoch) in EXPECTED.items():
        assert (plan[seed].status, plan[seed].last_epoch) == (state, epoch), f"seed{seed}: {plan[seed]}"
        if state == "new":
            assert seed not in rows, "a folder that does not exist is no row"
            continue
        assert (rows[seed].status, rows[seed].epochs_done) == (state, epoch), \
            f"seed{seed}: runs says {rows[seed]}"
    assert "1 done, 1 running, 3 interrupted, 1 failed, 1 changed, 1 new" in text
    assert "a lost GPU" in rows[4].detail and "epochs" in rows[5].detail and "pid" in rows[7].detail


def test_a_second_process_cannot_train_a_run_that_is_being_trained(study):
    _, spec, out = study
    run = spec.runs()[7]
    with hold_lock(RunFolder(run.run_dir(out))):
        with pytest.raises(CifarlabError, match="is being trained by pid"):
            fit(run.config, run.run_dir(out), resume=True, progress=False)
    assert run_status(RunFolder(run.run_dir(out))).state == "interrupted", "the lock goes with its holder"


# ------------------------------------------------------------------------------------------------ hostile folders


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    fit(build_config({**BASE, "epochs": 2, "ema_decay": 0.9}), run, progress=False)
    return run


def _copy(finished: Path, where: Path) -> Path:
    import shutil

    return Path(shutil.copytree(finished, where / "run", symlinks=True))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_evals_folder_linked_outside_is_refused_and_nothing_is_written_there(finished, tmp_path, capsys):
    run, outside = _copy(finished, tmp_path), tmp_path / "outside"
    outside.mkdir()
    (run / "evals").symlink_to(outside)
    err = _one_line(capsys, main(["eval", str(run)]))
    assert "symbolic link" in err and not any(outside.iterdir())


def test_checkpoints_linked_outside_are_neither_resumed_nor_pruned(finished, tmp_path, capsys):
    run, outside = _copy(finished, tmp_path), tmp_path / "outside"
    (run / "checkpoints").rename(outside)
    (run / "checkpoints").symlink_to(outside)
    (run / "result.json").unlink()
    before = _tree(outside)
    err = _one_line(capsys, main(["train", "--model", "resnet20", "--set", "model_kwargs={depth: 8}", "--data",
                                  "synthetic:200:100", "--epochs", "2", "--batch-size", "50", "--set", "ema_decay=0.9",
                                  "--set", "report_to=none", "--out", str(tmp_path), "--name", "run", "--resume",
                                  "--no-progress"]))
    assert "symbolic link" in err
    assert _tree(outside) == before, "files outside the run folder changed"


def test_pruning_deletes_only_what_cifarlab_wrote(finished, tmp_path):
    run, outside = _copy(finished, tmp_path), tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    ckpts = run / "checkpoints"
    (ckpts / "epoch-0000").symlink_to(outside)  # an old-looking checkpoint that is a link
    mine = ckpts / "epoch-0001"
    (mine / "notes.txt").write_text("a user's file in an old checkpoint folder")
    prune(RunFolder(run), keep=1)
    assert (outside / "precious.txt").read_text() == "keep me" and (ckpts / "epoch-0000").is_symlink()
    assert (mine / "notes.txt").exists(), "a folder holding a file cifarlab never writes is left alone"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("epoch-") and not p.is_symlink()) \
        == ["epoch-0001", "epoch-0002"]


@pytest.mark.parametrize("name", ["/proc/self/mem", "../../../../etc/passwd", "model.bin"])
def test_a_manifest_naming_other_files_makes_its_checkpoint_unusable(finished, tmp_path, capsys, name):
    run = _copy(finished, tmp_path)
    for d in (run / "checkpoints").iterdir():
        man = json.loads((d / "manifest.json").read_text())
        man["files"][name] = "0" * 64
        (d / "manifest.json").write_text(json.dumps(man))
    assert newest_intact(RunFolder(run)) is None
    err = _one_line(capsys, main(["eval", str(run)]))
    assert "no intact checkpoint" in err


def test_a_record_linked_to_a_private_file_is_not_uploaded(finished, tmp_path, capsys):
    run, secret = _copy(finished, tmp_path), tmp_path / "secret.json"
    secret.write_text((run / "result.json").read_text())  # even a valid record is not read through a link
    (run / "result.json").unlink()
    (run / "result.json").symlink_to(secret)
    err = _one_line(capsys, main(["push", str(run), "--repo-id", "me/x", "--dry-run", "--out", str(tmp_path / "up")]))
    assert "symbolic link" in err
    assert not (tmp_path / "up" / "result.json").exists()
    (row,) = list_runs([tmp_path])  # the listing shows the folder as failed, and lists the others
    assert row.status == "failed" and "symbolic link" in row.detail


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl", "result.json"])
def test_a_pipe_in_place_of_a_record_is_refused_without_waiting(finished, tmp_path, capsys, name):
    run = _copy(finished, tmp_path)
    (run / name).unlink()
    os.mkfifo(run / name)
    done = threading.Event()
    threading.Timer(60, lambda: done.is_set() or os._exit(3)).start()  # a hang fails loudly instead of forever
    try:
        rc = main(["report", str(run), "--out", str(tmp_path / "rep")])
    finally:
        done.set()
    if name == "config.json":  # the report reads the record's own copy of the config
        assert rc == 0
        capsys.readouterr()
        assert main(["runs", str(tmp_path)]) == 0 and "not a regular file" in capsys.readouterr().out
    else:
        assert "not a regular file" in _one_line(capsys, rc)


DAMAGED_TOP1 = "field.top1: Input should be a valid number"


def _damage_top1(run: Path) -> None:
    rec = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**rec, "top1": "high"}))


@pytest.mark.parametrize("argv", [
    ["report", "{run}", "--out", "{tmp}/rep"],
    ["eval", "{run}"],
    ["predict", "{run}", "{tmp}/x.png"],
    ["push", "{run}", "--repo-id", "me/x", "--dry-run", "--out", "{tmp}/up"],
    ["train", "--model", "resnet20", "--set", "model_kwargs={depth: 8}", "--data", "synthetic:200:100", "--epochs",
     "2", "--batch-size", "50", "--set", "ema_decay=0.9", "--set", "report_to=none", "--out", "{tmp}", "--name",
     "run", "--resume", "--no-progress"],
], ids=lambda a: a[0])
def test_every_reader_refuses_the_same_damaged_field_the_same_way(finished, tmp_path, capsys, argv):
    from PIL import Image

    run = _copy(finished, tmp_path)
    _damage_top1(run)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    err = _one_line(capsys, main([a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path)) for a in argv]))
    assert "result.json: damaged" in err and DAMAGED_TOP1 in err
    assert main(["runs", str(tmp_path)]) == 0
    assert DAMAGED_TOP1 in capsys.readouterr().out


def test_resume_checks_weights_and_state_as_eval_does(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    (run / "result.json").unlink()
    ckpt = run / "checkpoints" / "epoch-0002"
    argv = ["train", "--model", "resnet20", "--set", "model_kwargs={depth: 8}", "--data", "synthetic:200:100",
            "--epochs", "2", "--batch-size", "50", "--set", "ema_decay=0.9", "--set", "report_to=none",
            "--out", str(tmp_path), "--name", "run", "--resume", "--no-progress"]

    def rewrite(name: str, data: bytes) -> None:  # the checksum rewritten too: only the readers can refuse it
        (ckpt / name).write_bytes(data)
        man = json.loads((ckpt / "manifest.json").read_text())
        man["files"][name] = sha256_file(ckpt / name)
        (ckpt / "manifest.json").write_text(json.dumps(man))

    original = {n: (ckpt / n).read_bytes() for n in ("model.safetensors", "state.pt")}
    from safetensors.torch import save_file

    from cifarlab.models import create

    wrong = {k: torch.zeros(v.numel() + 1) for k, v in create("resnet20", depth=8).state_dict().items()}
    save_file(wrong, str(ckpt / "model.safetensors"))
    rewrite("model.safetensors", (ckpt / "model.safetensors").read_bytes())
    assert "holds" in _one_line(capsys, main(argv))
    rewrite("model.safetensors", original["model.safetensors"])
    rewrite("state.pt", b"PK\x03\x04 not a torch file")
    assert "not a readable training state" in _one_line(capsys, main(argv))
    rewrite("state.pt", original["state.pt"] + b"\0" * (200 << 20))
    assert "more than a training state of this model holds" in _one_line(capsys, main(argv))


def test_tracker_ids_from_elsewhere_are_validated_before_a_tracker_sees_them(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    (run / "trackers.json").write_text(json.dumps({"mlflow": "../../../../tmp/x", "logged_epoch": 1}))
    from cifarlab.run import read_trackers

    with pytest.raises(CifarlabError, match="trackers.json: damaged"):
        read_trackers(RunFolder(run))


def test_a_sharded_index_may_name_only_shards_of_its_folder(tmp_path, capsys):
    from PIL import Image

    from cifarlab.hub import save_pretrained
    from cifarlab.models import create

    folder = save_pretrained(create("resnet20", depth=8), tmp_path / "m", "resnet20", {"depth": 8})
    (tmp_path / "outside.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"fc.weight": "../outside.safetensors"}}))
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    err = _one_line(capsys, main(["predict", str(folder), str(tmp_path / "x.png")]))
    assert "not a valid shard index" in err


def test_markup_in_names_is_drawn_as_text(finished, tmp_path, capsys):
    """matplotlib would parse $...$ as mathematics (a nested one can take minutes or raise); names are text."""
    import shutil

    study = tmp_path / "s"
    for seed in (0, 1):
        dst = study / ("a$" + "\\sqrt{" * 12 + "$") / f"seed{seed}"  # a variant (folder) name, math to matplotlib
        shutil.copytree(finished, dst)
        rec = json.loads((dst / "result.json").read_text())
        (dst / "result.json").write_text(json.dumps({**rec, "seed": seed}))
    assert main(["report", str(study), "--out", str(tmp_path / "rep")]) == 0, capsys.readouterr().err


def test_the_record_reader_and_the_committed_records_agree():
    results = Path(__file__).resolve().parents[1] / "results"
    records = [p.parent for p in results.rglob("result.json")]
    assert records, "no committed records found"
    for run in records:
        rec = read_result(RunFolder(run))
        assert rec == json.loads((run / "result.json").read_text()), f"{run}: the reader changed the record"


def test_headers_of_huge_json_are_refused_by_size_before_parsing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(build_config(BASE).model_dump(mode="json")))
    with open(run / "result.json", "wb") as f:
        f.write(b'{"model": "' + b"x" * (70 << 20) + b'"}')
    status = run_status(RunFolder(run))
    assert status.state == "failed" and status.damaged and "cifarlab reads at most" in status.detail
