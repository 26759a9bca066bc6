"""`cifarlab runs` (status from the records), `cifarlab eval RUN --data` on other test sets with NLL and ECE,
and the report's evaluations table and reliability diagram."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch

from cifarlab import cli
from cifarlab.config import build_config
from cifarlab.data.meta import CIFAR10_CLASSES, CIFAR100_FINE, DATASETS
from cifarlab.data.synthetic import synthetic_arrays
from cifarlab.io import read_json, write_json
from cifarlab.report.calibration import other_test_sets, reliability_diagram
from cifarlab.report.runs import list_runs
from cifarlab.report.summary import build_tables
from cifarlab.report.writeup import Writer
from cifarlab.run import RunFolder, finished_runs as load_runs, status as run_status_module
from cifarlab.run.records import RunResult
from cifarlab.train import fit
from cifarlab.train.checkpoint import save_checkpoint
from cifarlab.train.evaluate import evaluate_run, load_run_model
from cifarlab.train.metrics import expected_calibration_error

# ResNet-8 on 100 synthetic images, 2 steps of 50, one epoch: a few seconds on a CPU
TINY = {"model": "resnet20", "model_kwargs": {"depth": 8}, "data": "synthetic:100:100", "batch_size": 50,
        "lr": 0.1, "warmup_epochs": 0, "epochs": 1}
OTHER = "synthetic:100:60:7"  # other images (another seed), the same 100 classes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before conftest's per-test isolation
        mp.setenv("CIFARLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cifarlab-cache"))
        fit(build_config(TINY), run, progress=False)
    return run


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run (tests write evals/ into it)."""
    return Path(shutil.copytree(trained, tmp_path / "runs" / "tiny"))


# ---------------------------------------------------------------- calibration


def held_out_images(run: Path) -> tuple[torch.Tensor, np.ndarray]:
    """The test split of TINY's data (synthetic seed 0, split 1) scaled to [0, 1] and standardised with the record's
    mean and std, as the engine does (NCHW float32), and its labels."""
    rec = read_json(run / "result.json")
    images, labels = synthetic_arrays(DATASETS["cifar100"], 100, 0, 1)
    x = (images / 255.0 - np.array(rec["mean"])) / np.array(rec["std"])
    return torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32), labels


@torch.no_grad()
def logits_by_hand(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's newest checkpoint model on its test images: float64 logits, labels."""
    _, model, _, _ = load_run_model(run)
    x, labels = held_out_images(run)
    return model(x).double().numpy(), labels


def nll_and_ece_by_hand(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Mean negative log-likelihood (log-softmax), ECE over 15 equal-width bins of the max softmax, (b/15, (b+1)/15]
    with 0 in the first: sum over bins of n_b/N |acc_b - conf_b|; and the per-image correctness and confidence."""
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    nll = -log_p[np.arange(len(labels)), labels].mean()
    conf, correct = np.exp(log_p.max(1)), log_p.argmax(1) == labels
    ece = 0.0
    for b in range(15):
        in_bin = ((conf > b / 15) | (b == 0)) & (conf <= (b + 1) / 15)
        if in_bin.any():
            ece += in_bin.sum() / len(conf) * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(nll), float(ece), correct, conf


def test_expected_calibration_error_by_hand():
    # 15 bins of width 1/15: 0.05 -> bin 0, 0.5 -> bin 7, 0.99 and 1.0 -> bin 14
    conf = np.array([0.05, 0.5, 0.5, 0.99, 1.0])
    correct = np.array([0, 1, 0, 1, 1])
    ece, bins = expected_calibration_error(conf, correct)
    assert bins["count"][0] == 1 and bins["count"][7] == 2 and bins["count"][14] == 2 and sum(bins["count"]) == 5
    want = (1 * abs(0 - 0.05) + 2 * abs(0.5 - 0.5) + 2 * abs(1 - 0.995)) / 5
    assert ece == pytest.approx(want)
    assert bins["accuracy"][7] == 0.5 and bins["confidence"][14] == pytest.approx(0.995) and bins["accuracy"][3] is None
    # a confidence on a bin edge belongs to the lower bin: (b/15, (b+1)/15]
    assert expected_calibration_error(np.array([1 / 15]), np.array([1]))[1]["count"][0] == 1


def test_result_records_nll_and_ece_of_its_own_test_split(trained):
    rec = read_json(trained / "result.json")
    assert rec["nll"] == rec["test_loss"] and 0 <= rec["ece"] <= 1
    cal = rec["calibration"]
    assert cal["bins"] == 15 and sum(cal["count"]) == rec["split_sizes"]["test"]
    # the bins give back the record's accuracy and its ECE
    n = np.array(cal["count"], dtype=float)
    acc = np.array([a or 0.0 for a in cal["accuracy"]])
    conf = np.array([c or 0.0 for c in cal["confidence"]])
    assert (n * acc).sum() / n.sum() == pytest.approx(rec["top1"], abs=1e-6)
    assert (n / n.sum() * np.abs(acc - conf)).sum() == pytest.approx(rec["ece"], abs=1e-5)
    # and all of them from the model's own logits, computed here
    nll, ece, correct, _ = nll_and_ece_by_hand(*logits_by_hand(trained))
    assert rec["test_correct"] == "".join("1" if c else "0" for c in correct)
    assert rec["nll"] == pytest.approx(nll, abs=2e-5) and rec["ece"] == pytest.approx(ece, abs=2e-5)


@torch.no_grad()
def test_eval_nll_and_ece_match_a_hand_computation_over_many_bins(run):
    """A head fitted by least squares to noisy one-hot targets of the test images is right on some and spreads its
    confidences over most bins, with accuracies that differ between bins: the binning itself is checked."""
    _, model, epoch, _ = load_run_model(run)
    x, labels = held_out_images(run)
    features = torch.cat([model.forward_head(model.forward_features(x), pre_logits=True), torch.ones(100, 1)], 1)
    noisy = 6 * torch.eye(100)[labels] + 3 * torch.randn(100, 100, generator=torch.Generator().manual_seed(3))
    head = torch.linalg.lstsq(features, noisy).solution
    model.fc.weight.copy_(head[:-1].T)
    model.fc.bias.copy_(head[-1])
    save_checkpoint(RunFolder(run), epoch + 1, model, {})
    out = evaluate_run(run)
    nll, ece, correct, conf = nll_and_ece_by_hand(*logits_by_hand(run))
    counts = [int((((conf > b / 15) | (b == 0)) & (conf <= (b + 1) / 15)).sum()) for b in range(15)]
    assert sum(c > 0 for c in counts) >= 8 and 0.05 < correct.mean() < 0.5, (counts, correct.mean())
    assert out["epoch"] == epoch + 1 and out["test_correct"] == "".join("1" if c else "0" for c in correct)
    assert out["nll"] == pytest.approx(nll, abs=2e-5) and out["ece"] == pytest.approx(ece, abs=2e-5)
    assert out["calibration"]["count"] == counts


# ---------------------------------------------------------------- evaluation on other test sets


def _parquet(path: Path, images: np.ndarray, labels: np.ndarray, names=CIFAR100_FINE) -> Path:
    feats = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=list(names))})
    datasets.Dataset.from_dict({"img": list(images), "fine_label": labels}, features=feats).to_parquet(str(path))
    return path


def test_eval_on_its_own_source_reproduces_the_record(run):
    before = (run / "result.json").read_bytes()
    out = evaluate_run(run)
    rec = read_json(run / "result.json")
    assert (run / "result.json").read_bytes() == before, "eval never touches result.json"
    assert out["fingerprint"] == rec["dataset_fingerprint"]
    assert out["test_correct"] == rec["test_correct"]
    assert out["top1"] == pytest.approx(rec["top1"]) and out["nll"] == pytest.approx(rec["nll"], abs=1e-5)
    assert out["ece"] == pytest.approx(rec["ece"], abs=1e-5)


def test_eval_on_another_synthetic_source_and_on_a_parquet_file_of_the_same_images(run, tmp_path, capsys):
    assert cli.main(["eval", str(run), "--data", OTHER]) == 0
    line = capsys.readouterr().out
    assert "seed 7" in line and "ECE" in line and "NLL" in line
    other = read_json(run / "evals" / "synthetic-v2-cifar100-100-60-7.json")
    assert other["images"] == 60 and other["source"] == OTHER and other["split"] == "test"
    assert len(other["test_correct"]) == 60
    assert other["top1"] == pytest.approx(other["test_correct"].count("1") / 60, abs=1e-6)
    assert sum(other["calibration"]["count"]) == 60 and len(other["per_class_accuracy"]) == 100

    x, y = synthetic_arrays(DATASETS["cifar100"], 60, 7, 1)  # the test split of OTHER, written as one parquet file
    path = _parquet(tmp_path / "other-test.parquet", x, y)
    assert cli.main(["eval", str(run), "--data", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source_kind"] == "parquet-file" and out["images"] == 60
    from_file = read_json(Path(out["path"]))
    assert from_file["test_correct"] == other["test_correct"], "the same images give the same per-image answers"
    assert from_file["nll"] == pytest.approx(other["nll"], abs=1e-5)
    assert from_file["fingerprint"] != other["fingerprint"]
    assert sorted(p.name for p in (run / "evals").iterdir()) == sorted(
        [f"{from_file['fingerprint']}.json", "synthetic-v2-cifar100-100-60-7.json"])


@pytest.mark.parametrize("case, message", [
    ("ten_classes", "has 10 classes; the run was trained on the 100 classes of cifar100"),
    ("other_names", "class 3 is 'bee' where the run's cifar100 has 'bear'"),
    ("empty", "holds no images"),
    ("damaged", "not a readable parquet file"),
])
def test_eval_refuses_a_test_set_of_other_classes_or_an_unusable_file(run, tmp_path, capsys, case, message):
    x, y = synthetic_arrays(DATASETS["cifar100"], 20, 1, 1)
    path = tmp_path / f"{case}.parquet"
    if case == "ten_classes":
        _parquet(path, x, y % 10, CIFAR10_CLASSES)
    elif case == "other_names":
        names = list(CIFAR100_FINE)
        names[3], names[6] = names[6], names[3]
        _parquet(path, x, y, names)
    elif case == "empty":
        _parquet(path, x[:0], y[:0])
    else:
        path.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("error:")
    assert not (run / "evals").exists()


# ---------------------------------------------------------------- report


def test_report_lists_other_test_sets_beside_the_own_and_draws_a_reliability_diagram(run, tmp_path):
    assert other_test_sets(SimpleNamespace(runs=load_runs([run])), Writer(tmp_path)) == [], "nothing to list yet"
    evaluate_run(run, data=OTHER)
    runs = load_runs([run])
    lines = other_test_sets(SimpleNamespace(runs=runs), Writer(tmp_path))
    own, other = [ln for ln in lines if ln.startswith("| tiny")]
    rec, ev = read_json(run / "result.json"), read_json(run / "evals" / "synthetic-v2-cifar100-100-60-7.json")
    assert "own test split (synthetic:100:100)" in own and f"| {100 * rec['top1']:.2f} |" in own
    assert "seed 7" in other and f"| {100 * ev['top1']:.2f} |" in other and f"| {ev['nll']:.4f} |" in other
    assert f"| {100 * ev['ece']:.2f} |" in other and "evals/synthetic-v2-cifar100-100-60-7.json" in other
    (row,) = build_tables(runs)[0].rows
    png, svg = reliability_diagram(row, tmp_path / "reliability")
    assert png.stat().st_size > 1000 and "own test split" in svg.read_text() and "seed 7" in svg.read_text()


# ---------------------------------------------------------------- runs listing


def _interrupted(src: Path, dst: Path, epochs_done: int, error: str | None = None) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("result.json", "checkpoints", "evals"))
    cfg = read_json(dst / "config.json")
    write_json(dst / "config.json", {**cfg, "epochs": 10, "model": "eca_resnet20"})
    for e in range(1, epochs_done + 1):
        save_checkpoint(RunFolder(dst), e, torch.nn.Linear(2, 2), {"epoch": e}, keep=100)
    (dst / "checkpoints" / ".epoch-0009.tmp").mkdir()  # a torn write is no checkpoint
    (dst / "checkpoints" / "epoch-0010").mkdir()  # nor is a folder without its manifest
    if error:
        write_json(dst / "error.json", {"error": error, "epoch": epochs_done + 1, "step": 2})
    return dst


def test_runs_lists_status_from_the_records_and_filters_and_sorts(trained, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(trained, root / "loose")
    study = root / "eca" / "resnet8" / "seed0"
    shutil.copytree(trained, study)
    rec = read_json(study / "result.json")
    write_json(study / "result.json", {**rec, "top1": rec["top1"] + 0.5})
    _interrupted(trained, root / "eca" / "eca8" / "seed1", 3)
    _interrupted(trained, root / "eca" / "eca8" / "seed2", 4, "non-finite loss or gradient at epoch 5, step 2 of 2")
    (root / "hub-save").mkdir()
    write_json(root / "hub-save" / "config.json", {"model": "resnet20", "num_classes": 100})  # not a training run
    (root / "broken").mkdir()
    write_json(root / "broken" / "config.json", {**read_json(trained / "config.json")})
    (root / "broken" / "result.json").write_text("{not json")

    rows = {r.path: r for r in list_runs([root])}
    assert set(rows) == {"loose", "eca/resnet8/seed0", "eca/eca8/seed1", "eca/eca8/seed2", "broken"}
    assert rows["loose"].status == "done" and rows["loose"].top1 == rec["top1"] and rows["loose"].study is None
    assert (rows["eca/resnet8/seed0"].study, rows["eca/resnet8/seed0"].variant) == ("eca", "resnet8")
    assert rows["eca/eca8/seed1"].status == "interrupted" and rows["eca/eca8/seed1"].detail == "after epoch 3 of 10"
    assert rows["eca/eca8/seed2"].status == "failed" and rows["eca/eca8/seed2"].detail.startswith("non-finite loss")
    assert rows["broken"].status == "failed" and "result.json: not valid JSON" in rows["broken"].detail
    assert rows["loose"].train_seconds == rec["train_seconds"] and rows["loose"].images_per_second > 0

    assert [r.path for r in list_runs([root], sort="top1")][:2] == ["eca/resnet8/seed0", "loose"]
    assert [r.path for r in list_runs([root], model="eca*")] == ["eca/eca8/seed1", "eca/eca8/seed2"]
    assert [r.path for r in list_runs([root], status="interrupted")] == ["eca/eca8/seed1"]

    assert cli.main(["runs", str(root), "--model", "eca*", "--status", "failed"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "failed: non-finite loss" in out[1] and "eca/eca8" in out[1] and "4/10" in out[1]
    assert cli.main(["runs", str(root / "eca"), "--json", "--sort", "top1"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in listed] == ["done", "interrupted", "failed"]
    assert cli.main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("lists_first", [False, True])
def test_runs_reads_a_large_record_whatever_the_order_of_its_fields(trained, tmp_path, monkeypatch, lists_first):
    """The listing parses only the first 16 KiB of a large result.json when they hold its fields, and falls back to
    the whole file when the head lacks one (here: when the per-image lists come first). A spy on the JSON parser
    the listing uses sees the sizes it is handed."""
    run = Path(shutil.copytree(trained, tmp_path / "runs" / "big"))
    rec = read_json(run / "result.json")
    n = 20_000  # per-image lists of a test split this large put the record well past the head the listing parses
    lists = {"test_predictions": [i % 100 for i in range(n)], "test_labels": [i % 100 for i in range(n)],
             "test_correct": "1" * n, "split_sizes": {**rec["split_sizes"], "test": n}}
    scalars = {k: v for k, v in rec.items() if k not in lists}
    fields = {**lists, **scalars} if lists_first else {**scalars, **lists}
    (run / "result.json").write_text(json.dumps(fields, indent=1))
    size = (run / "result.json").stat().st_size
    assert size > 100_000
    parsed: list[int] = []  # the sizes handed to the head's parser and to the whole record's validating parser
    parse, validate = run_status_module.from_json, RunResult.model_validate_json

    def spy(real):
        return lambda data, **kw: parsed.append(len(data)) or real(data, **kw)

    monkeypatch.setattr(run_status_module, "from_json", spy(parse))
    monkeypatch.setattr(RunResult, "model_validate_json", spy(validate))
    (row,) = list_runs([tmp_path / "runs"])
    assert (row.status, row.top1, row.top5, row.train_seconds) == ("done", rec["top1"], rec["top5"],
                                                                   rec["train_seconds"])
    assert 16 * 1024 in parsed, f"the head is parsed first: {parsed}"
    assert (size in parsed) == lists_first, f"the whole file is parsed only when the head lacks a field: {parsed}"
    assert max(parsed) == (size if lists_first else 16 * 1024), parsed
