"""Hugging Face Hub: save/load round trips, push (dry run and a stubbed upload), predict, offline errors."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cifarlab import CifarlabError
from cifarlab.cli import main
from cifarlab.data.meta import DATASETS
from cifarlab.hub import build_upload_folder, from_pretrained, load_pretrained, prepare_image, save_pretrained
from cifarlab.hub.card import model_card
from cifarlab.hub.predict import normalize_images
from cifarlab.io import read_json, write_json
from cifarlab.models import create, get_entry
from cifarlab.run import load_finished

UPLOAD_FILES = ["README.md", "config.json", "metrics.jsonl", "model.safetensors", "result.json",
                "training_config.json"]


@torch.no_grad()
def _perturb(model: torch.nn.Module) -> None:
    """Move every float parameter and buffer off its initial value (some heads start at zero; BN stats at 0/1),
    so a round trip that dropped any of them would show."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            t.add_(torch.rand_like(t) * 0.05)


@pytest.mark.parametrize("name, kwargs", [
    ("resnet20", {}),
    ("resnet20", {"depth": 8}),
    ("eca_resnet20", {"attention_position": "after"}),
    ("ghost_resnet20", {}),
    ("convnext_small_cifar", {}),
    ("vit_mini_p4", {}),
])
def test_save_load_round_trip(tmp_path, name, kwargs):
    model = create(name, num_classes=100, **kwargs)
    _perturb(model)
    model.eval()
    save_pretrained(model, tmp_path / "saved", name, kwargs)

    torch.manual_seed(123)  # the rebuilt model starts from a different random init
    loaded = from_pretrained(tmp_path / "saved")
    assert not loaded.training
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert not torch.equal(model(x), create(name, num_classes=100, **kwargs).eval()(x))

    cfg = read_json(tmp_path / "saved" / "config.json")
    assert cfg["model"] == name and cfg["model_kwargs"] == kwargs
    assert cfg["num_classes"] == 100 and cfg["dataset"] == "cifar100"
    assert cfg["classes"] == list(DATASETS["cifar100"].classes)
    assert tuple(cfg["mean"]) == DATASETS["cifar100"].mean and tuple(cfg["std"]) == DATASETS["cifar100"].std
    assert "cifarlab_version" in cfg


def test_model_kwargs_change_the_rebuilt_architecture(tmp_path):
    shallow = create("resnet20", depth=8).eval()
    save_pretrained(shallow, tmp_path / "d8", "resnet20", {"depth": 8})
    loaded = from_pretrained(tmp_path / "d8")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in shallow.parameters())
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in create("resnet20").parameters())


def test_bad_folders_give_one_line_errors(tmp_path):
    save_pretrained(create("resnet20", depth=8), tmp_path / "m", "resnet20", {"depth": 8})
    cfg = read_json(tmp_path / "m" / "config.json")
    write_json(tmp_path / "m" / "config.json", {**cfg, "model_kwargs": {}})  # depth 20 no longer fits the weights
    with pytest.raises(CifarlabError, match="do not fit resnet20"):
        from_pretrained(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CifarlabError, match="no config.json"):
        from_pretrained(tmp_path / "empty")
    with pytest.raises(CifarlabError, match="no such folder"):
        from_pretrained(tmp_path / "missing")


# ----------------------------------------------------------------------------------- a tiny finished run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from cifarlab.config import build_config
    from cifarlab.train import fit

    root = tmp_path_factory.mktemp("hubrun") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIFARLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cifarlab-cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        torch.manual_seed(0)
        fit(build_config({"model": "resnet20", "model_kwargs": {"depth": 8}, "data": "synthetic:300:100",
                          "batch_size": 50, "lr": 0.1, "warmup_epochs": 0, "epochs": 1, "ema_decay": 0.9}),
            root, progress=False)
    return root


def test_push_dry_run_writes_the_folder_and_a_card_with_the_runs_numbers(run_dir, tmp_path, capsys):
    out = tmp_path / "upload"
    assert main(["push", str(run_dir), "--repo-id", "me/tiny-resnet", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and all(name in printed for name in UPLOAD_FILES)
    assert sorted(p.name for p in out.iterdir()) == UPLOAD_FILES

    result = read_json(run_dir / "result.json")
    assert read_json(out / "result.json") == result
    assert (out / "metrics.jsonl").read_text() == (run_dir / "metrics.jsonl").read_text()
    card = (out / "README.md").read_text()
    entry = get_entry("resnet20")
    for expected in [
        f"{result['top1']:.2%}", f"{result['top5']:.2%}", f"{result['params']:,}",
        f"{result['macs'] / 1e6:,.2f} M ({result['mac_convention']})", f"{result['train_seconds']:.1f} s",
        f"{result['images_per_second']:,.1f} images/s", result["device"], result["dataset_fingerprint"],
        str(result["git_commit"]), "train 300, test 100", entry.paper, entry.arch, '`{"depth": 8}`',
        "| learning rate | 0.1 |", "| epochs | 1 |", "50 per process", "| weight EMA | decay 0.9 |",
        'from_pretrained("me/tiny-resnet")', "EMA weights of epoch 1", "Trained on synthetic data",
    ]:
        assert expected in card, expected
    meta = huggingface_hub.ModelCard(card).data
    assert meta.library_name == "cifarlab" and meta.metrics == ["accuracy"]
    assert {"cifarlab", "resnet", "resnet20", "synthetic-data"} <= set(meta.tags)
    assert meta.eval_results is None  # no leaderboard entry for synthetic data

    # the uploaded weights are the run's EMA weights, and they load into the same model
    ckpt = run_dir / "checkpoints" / "epoch-0001"
    uploaded, ema, raw = (load_file(p) for p in (out / "model.safetensors", ckpt / "ema.safetensors",
                                                  ckpt / "model.safetensors"))
    assert uploaded.keys() == ema.keys() and all(torch.equal(uploaded[k], ema[k]) for k in ema)
    assert not all(torch.equal(uploaded[k], raw[k]) for k in raw)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_pretrained(out)(x), from_pretrained(run_dir)(x))
    assert read_json(out / "config.json")["mean"] == result["mean"]


def test_card_numbers_come_from_result_json(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    result = read_json(copy / "result.json")
    result.update(top1=0.43217, top5=0.87654, params=123_456, train_seconds=98.76, images_per_second=5432.1)
    write_json(copy / "result.json", result)
    build_upload_folder(copy, tmp_path / "up", "me/x")
    card = (tmp_path / "up" / "README.md").read_text()
    for expected in ["43.22%", "87.65%", "123,456", "98.8 s", "5,432.1 images/s"]:
        assert expected in card


def test_card_for_real_data_has_model_index_and_notes_epoch_mismatch(run_dir):
    result = {**read_json(run_dir / "result.json"), "source_kind": "parquet", "selected_epoch": 7,
              "selection": "best validation top-1", "val_top1": 0.5, "val_top5": 0.75}
    pre = load_pretrained(run_dir)
    card = model_card(load_finished(run_dir, result), pre.config, "me/real", weights_epoch=9, ema=False)
    meta = huggingface_hub.ModelCard(card).data
    assert meta.datasets == ["uoft-cs/cifar100"]
    assert [(r.metric_name, r.metric_value) for r in meta.eval_results] == [
        ("top-1 accuracy", result["top1"]), ("top-5 accuracy", result["top5"])]
    assert "weights are from epoch 9" in card and "measured at epoch 7" in card
    assert "| validation top-1 | 50.00% |" in card and "raw weights of epoch 9" in card
    assert "Trained on synthetic data" not in card and "synthetic-data" not in card


@pytest.fixture
def fake_hub(monkeypatch):
    """HfApi's network methods replaced by recorders (the real client's transport is out of reach here)."""
    calls: dict = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kw):
        calls["create_repo"].append({"repo_id": repo_id, **kw})
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def repo_info(self, repo_id, **kw):
        return SimpleNamespace(private=calls.get("existing_private", True))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        folder = Path(folder_path)
        calls["upload_folder"].append({"repo_id": repo_id, "files": sorted(p.name for p in folder.iterdir()),
                                       "folder": folder, "card": (folder / "README.md").read_text(), **kw})
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abc")

    for name, fn in [("create_repo", create_repo), ("repo_info", repo_info), ("upload_folder", upload_folder)]:
        monkeypatch.setattr(huggingface_hub.HfApi, name, fn)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return calls


def test_push_uploads_the_folder_to_the_repo(run_dir, fake_hub, capsys):
    assert main(["push", str(run_dir), "--repo-id", "me/tiny-resnet", "--private"]) == 0
    assert [(c["repo_id"], c["private"], c["exist_ok"], c["repo_type"]) for c in fake_hub["create_repo"]] == [
        ("me/tiny-resnet", True, True, "model")]
    (up,) = fake_hub["upload_folder"]
    assert up["repo_id"] == "me/tiny-resnet" and up["repo_type"] == "model"
    assert up["files"] == UPLOAD_FILES
    assert 'from_pretrained("me/tiny-resnet")' in up["card"]
    assert not up["folder"].exists()  # the temporary upload folder is cleaned up
    out = capsys.readouterr().out
    assert "me/tiny-resnet (private)" in out and "commit/0123abc" in out


def test_push_private_refuses_an_existing_public_repo(run_dir, fake_hub, capsys):
    fake_hub["existing_private"] = False
    assert main(["push", str(run_dir), "--repo-id", "me/public", "--private"]) == 2
    assert fake_hub["upload_folder"] == []
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists and is public" in err


def test_push_without_token_or_network_is_one_line(run_dir, fake_hub, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["push", str(run_dir), "--repo-id", "me/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Hugging Face token" in err
    assert fake_hub["create_repo"] == []

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(run_dir), "--repo-id", "me/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "offline mode" in err

    assert main(["push", str(run_dir), "--repo-id", "not-a-repo-id", "--dry-run"]) == 2
    assert "USER/NAME" in capsys.readouterr().err


def test_push_needs_a_finished_run(run_dir, tmp_path, monkeypatch, capsys):
    unfinished = tmp_path / "run"
    shutil.copytree(run_dir, unfinished)
    (unfinished / "result.json").unlink()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    (tmp_path / "tmp").mkdir()
    assert main(["push", str(unfinished), "--repo-id", "me/x", "--dry-run"]) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert list((tmp_path / "tmp").iterdir()) == []  # no half-built temporary folder is left behind


# ------------------------------------------------------------------------------------------------ predict


def _write_images(folder: Path) -> dict[str, int]:
    """Three distinct images of different sizes and the CIFAR-100 class each is trained to be."""
    folder.mkdir()
    checker = np.indices((40, 64)).sum(0) // 4 % 2
    pictures = {
        "red.png": (Image.new("RGB", (48, 48), (220, 30, 30)), 3),
        "blue.png": (Image.new("RGB", (20, 20), (30, 40, 210)), 42),
        "checker.png": (Image.fromarray(np.where(checker[..., None], [250, 250, 250], [20, 160, 40]).astype(np.uint8)),
                        97),
    }
    for name, (im, _) in pictures.items():
        im.save(folder / name)
    return {str(folder / name): label for name, (_, label) in pictures.items()}


def test_predict_returns_the_memorised_classes(tmp_path, capsys):
    images = _write_images(tmp_path / "img")
    assert prepare_image(next(iter(images))).shape == (32, 32, 3)
    info = DATASETS["cifar100"]
    x = normalize_images(np.stack([prepare_image(p) for p in images]), info.mean, info.std)
    y = torch.tensor(list(images.values()))
    model = create("resnet20", depth=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # settle the BN running statistics on the final weights
        for _ in range(30):
            model(x)
    model.eval()
    assert (model(x).argmax(1) == y).all()
    save_pretrained(model, tmp_path / "memo", "resnet20", {"depth": 8})

    assert main(["predict", str(tmp_path / "memo"), *images, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "resnet20"
    for row, label in zip(out["predictions"], images.values(), strict=True):
        top = row["top"]
        assert len(top) == 5 and top[0]["class"] == info.classes[label] and top[0]["index"] == label
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6

    assert main(["predict", str(tmp_path / "memo"), *images]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * 6
    assert [lines[i + 1].split()[-1] for i in range(0, 18, 6)] == [info.classes[v] for v in images.values()]


def test_predict_on_a_run_folder_and_its_upload_agree(run_dir, tmp_path, capsys):
    images = list(_write_images(tmp_path / "img"))
    build_upload_folder(run_dir, tmp_path / "up", "me/x")
    outs = []
    for source in (run_dir, tmp_path / "up"):
        assert main(["predict", str(source), *images, "--json", "--top", "3"]) == 0
        outs.append(json.loads(capsys.readouterr().out)["predictions"])
    assert outs[0] == outs[1] and all(len(row["top"]) == 3 for row in outs[0])


def test_predict_bad_image_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    save_pretrained(create("resnet20", depth=8), tmp_path / "m", "resnet20", {"depth": 8})
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "notes.png")]) == 2
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "cannot read image" in err[0] and "no such image file" in err[1]


# ------------------------------------------------------------------------------------------------ the Hub


def test_offline_missing_repo_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(CifarlabError) as err:
        from_pretrained("someone/missing-repo")
    assert "someone/missing-repo" in str(err.value) and "offline" in str(err.value)
    assert "\n" not in str(err.value)

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    assert main(["predict", "someone/missing-repo", str(tmp_path / "a.png")]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: someone/missing-repo") and "offline" in err_lines[0]


def test_hub_repo_id_downloads_through_snapshot_download(tmp_path, monkeypatch):
    model = create("resnet20", depth=8).eval()
    save_pretrained(model, tmp_path / "snapshot", "resnet20", {"depth": 8})
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append({"repo_id": repo_id, **kw})
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    pre = load_pretrained("someone/resnet8", revision="v1")
    assert pre.source == "hf://someone/resnet8" and not pre.model.training
    (call,) = calls
    assert call["repo_id"] == "someone/resnet8" and call["revision"] == "v1"
    assert call["local_files_only"] is True  # HF_HUB_OFFLINE=1 in tests: only the Hub cache
    assert "config.json" in call["allow_patterns"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pre.model(x), model(x))
