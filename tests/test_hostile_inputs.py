"""Files built to exploit or crash every reader of user files, driven through the ``cifarlab`` command.

Each case writes hostile inputs into ``in/`` and runs the command in-process from ``cwd/``. Every case must
end with a non-zero status and exactly one line on stderr, no traceback, no side-effect file (the payload of
the code-executing pickles and YAML tags), and nothing new outside ``out/`` and the decode cache, where a
refused archive leaves nothing either. One case also runs as a real ``python -m cifarlab.cli`` process.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zlib
from functools import cache
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import pytest
import torch
from cifar_files import images, write_cifar10_python, write_cifar100_python, write_parquet
from PIL import Image
from safetensors.torch import save_file

from cifarlab.cli import main
from cifarlab.config import build_config
from cifarlab.data.meta import CIFAR100_COARSE, CIFAR100_FINE
from cifarlab.hub import save_pretrained
from cifarlab.io import write_json
from cifarlab.models import create
from cifarlab.run import RunFolder
from cifarlab.train.checkpoint import save_checkpoint

SIDE = "PWNED"  # the file a payload would create, in the test's own folder
SMALL = {"model": "resnet20", "model_kwargs": {"depth": 8}, "data": "synthetic:300:100"}
CASES: dict[str, Callable[[Path, Path], list[str]]] = {}


def case(name: str):
    def register(build: Callable[[Path, Path], list[str]]):
        CASES[name] = build
        return build
    return register


class Call:
    """Pickles as the call ``fn(*args)``: what a doctored pickle can hold."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def side(d: Path) -> Path:
    return d.parent / SIDE


def payloads(d: Path) -> dict[str, Call]:
    s = str(side(d))
    return {
        "os_system": Call(os.system, f"touch {s}"),
        "open_write": Call(open, s, "w"),
        "exec": Call(exec, f"open({s!r}, 'w').close()"),
        "subprocess": Call(subprocess.check_call, ["touch", s]),
    }


def train_argv(data: Path | str, out: Path) -> list[str]:
    return ["train", "--model", "resnet20", "--set", "model_kwargs={depth: 8}", "--data", str(data),
            "--epochs", "1", "--out", str(out), "--no-progress"]


# ------------------------------------------------------------------------------------ pickle folders / archives


def _pickle_case(name: str, where: str, dataset: str = "cifar100"):
    """A CIFAR folder whose ``where`` file holds the payload ``name`` (inside the dict, as a value)."""
    def build(d: Path, out: Path) -> list[str]:
        base = (write_cifar100_python if dataset == "cifar100" else write_cifar10_python)(d)
        (base / where).write_bytes(pickle.dumps({b"data": payloads(d)[name], b"labels": [0]}))
        return train_argv(base, out) + ["--dataset", dataset]
    case(f"pickle-{where}-{name}")(build)


for _name, _where, _ds in [("os_system", "meta", "cifar100"), ("open_write", "train", "cifar100"),
                           ("exec", "test", "cifar100"), ("subprocess", "data_batch_1", "cifar10"),
                           ("os_system", "batches.meta", "cifar10")]:
    _pickle_case(_name, _where, _ds)


def _replace_pickle(where: str, content: Callable[[Path], bytes]):
    def build(d: Path, out: Path) -> list[str]:
        base = write_cifar100_python(d)
        (base / where).write_bytes(content(d))
        return train_argv(base, out)
    return build


@case("pickle-top-level-payload")
def _(d, out):
    return _replace_pickle("meta", lambda d: pickle.dumps(payloads(d)["os_system"]))(d, out)


@case("pickle-object-array")
def _(d, out):
    arr = np.array([payloads(d)["open_write"], 1], dtype=object)
    return _replace_pickle("train", lambda d: pickle.dumps({b"data": arr, b"fine_labels": [0, 1]}))(d, out)


class _FieldsDType:
    """A float64 dtype whose pickled state adds named fields (numpy would build a structured dtype)."""

    def __reduce__(self):
        f8 = np.dtype("f8")
        return np.dtype, ("f8", False, True), (3, "<", None, ("a", "b"), {"a": (f8, 0), "b": (f8, 8)}, 16, 1, 16)


@case("pickle-dtype-with-fields")
def _(d, out):
    return _replace_pickle("train", lambda d: pickle.dumps({b"data": _FieldsDType()}))(d, out)


class _HugeArray:
    """numpy's own array pickle, whose state claims 10**12 elements for 4 bytes of data."""

    def __reduce__(self):
        fn, args, state = np.zeros(4, np.uint8).__reduce__()
        return fn, args, (state[0], (10**12,), *state[2:])


@case("pickle-array-shape-lies")
def _(d, out):
    return _replace_pickle("train", lambda d: pickle.dumps({b"data": _HugeArray()}, protocol=2))(d, out)


def _nested_lists(depth: int) -> bytes:
    """A protocol-2 pickle of a list nested ``depth`` deep (pickle.dumps itself would recurse too deep)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def _list_laughs(levels: int) -> bytes:
    """'Billion laughs': l[i] = [l[i-1], l[i-1]], 2**levels leaves from a few hundred bytes."""
    out = [b"\x80\x02]r\x00\x00\x00\x00"]  # l0 = [] memoised as 0
    for i in range(1, levels + 1):
        out.append(b"](j" + struct.pack("<I", i - 1) + b"j" + struct.pack("<I", i - 1) + b"er" + struct.pack("<I", i))
    key = b"U\x10fine_label_names"
    return b"".join(out[:1]) + b"}" + key + b"".join(out[1:]) + b"s."


@case("pickle-deeply-nested")
def _(d, out):
    return _replace_pickle("meta", lambda d: _nested_lists(20_000))(d, out)


@case("pickle-billion-laughs")
def _(d, out):
    return _replace_pickle("meta", lambda d: _list_laughs(100))(d, out)


@case("pickle-garbage")
def _(d, out):
    return _replace_pickle("train", lambda d: os.urandom(4096))(d, out)


@case("pickle-truncated")
def _(d, out):
    return _replace_pickle("train", lambda d: (write_cifar100_python(d / "ok") / "train").read_bytes()[:5000])(d, out)


@case("pickle-empty")
def _(d, out):
    return _replace_pickle("meta", lambda d: b"")(d, out)


@case("pickle-data-is-a-dict")
def _(d, out):
    return _replace_pickle("test", lambda d: pickle.dumps({b"data": {b"x": 1}, b"fine_labels": [0],
                                                          b"coarse_labels": [0]}))(d, out)


@case("pickle-labels-are-strings")
def _(d, out):
    return _replace_pickle("test", lambda d: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                                          b"fine_labels": ["a", "b"], b"coarse_labels": [0, 0]}))(d, out)


def _tar(d: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], prefix_valid: bool = True) -> Path:
    """A .tar.gz of a valid cifar-100-python folder followed by ``members``."""
    path = d / "cifar-100-python.tar.gz"
    base = write_cifar100_python(d / "src")
    with tarfile.open(path, "w:gz") as tar:
        if prefix_valid:
            tar.add(base, arcname=base.name)
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = b"x", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def _tar_case(name: str, members: Callable[[Path], list[tuple]]):
    case(f"tar-{name}")(lambda d, out: train_argv(_tar(d, members(d)), out))


_tar_case("dotdot-member", lambda d: [_member(f"../../../../{SIDE}")])
_tar_case("absolute-member", lambda d: [_member(str(side(d)))])
_tar_case("symlink-out", lambda d: [_member("cifar-100-python/up", tarfile.SYMTYPE, link="../../../.."),
                                    _member(f"cifar-100-python/up/{SIDE}")])
_tar_case("hardlink", lambda d: [_member("cifar-100-python/meta2", tarfile.LNKTYPE, link="/etc/passwd")])
_tar_case("char-device", lambda d: [_member("cifar-100-python/null", tarfile.CHRTYPE)])
_tar_case("fifo", lambda d: [_member("cifar-100-python/pipe", tarfile.FIFOTYPE)])


@case("tar-code-executing-pickle")
def _(d, out):
    base = write_cifar100_python(d / "src")
    (base / "meta").write_bytes(pickle.dumps({b"fine_label_names": payloads(d)["os_system"]}))
    path = d / "c.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(base, arcname=base.name)
    return train_argv(path, out)


@case("tar-size-bomb-header")
def _(d, out):
    """A member whose header declares 8 GiB: refused from the header, before anything is inflated."""
    info = tarfile.TarInfo("cifar-100-python/train")
    info.size = 8 << 30
    path = d / "bomb.tar.gz"
    path.write_bytes(gzip.compress(info.tobuf() + b"\0" * 4096))
    return train_argv(path, out)


@case("tar-truncated")
def _(d, out):
    path = _tar(d, [])
    path.write_bytes(path.read_bytes()[:3000])
    return train_argv(path, out)


@case("tar-garbage")
def _(d, out):
    path = d / "x.tar.gz"
    path.write_bytes(os.urandom(2048))
    return train_argv(path, out)


@case("tar-empty-file")
def _(d, out):
    path = d / "x.tgz"
    path.write_bytes(b"")
    return train_argv(path, out)


# ------------------------------------------------------------------------------------------- images and parquet


@cache
def png(width: int, height: int, truncate: int = 0) -> bytes:
    """A valid 1-bit PNG of zeros (a few hundred kB even at 20000 x 20000), optionally cut after ``truncate``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return data[:truncate] if truncate else data


def encoded(fmt: str, size: int = 32) -> bytes:
    """A random RGB image of ``size`` x ``size`` pixels, encoded as ``fmt``."""
    buf = io.BytesIO()
    Image.fromarray(images(1, size=size)[0]).save(buf, fmt)
    return buf.getvalue()


IMAGES: dict[str, Callable[[], bytes]] = {
    "bomb-20000x20000": lambda: png(20000, 20000),  # above Pillow's error limit
    "bomb-10000x10000": lambda: png(10000, 10000),  # between Pillow's warning and error limits
    "over-pixel-limit": lambda: png(8500, 8500),  # below Pillow's limits, above cifarlab's
    "truncated-png": lambda: png(20000, 20000, truncate=200),
    "truncated-jpeg": lambda: encoded("JPEG", 64)[:400],
    "empty": lambda: b"",
    "text": lambda: b"just some notes, not an image\n",
    "eps": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n(x) print\nshowpage\n",
    "gif-huge-screen": lambda: b"GIF89a\xff\xff\xff\xff\x00\x00\x00;",
    "tiff-huge": lambda: (b"II*\x00\x08\x00\x00\x00\x03\x00" + struct.pack("<HHII", 256, 4, 1, 1 << 20)
                          + struct.pack("<HHII", 257, 4, 1, 1 << 20) + struct.pack("<HHII", 258, 3, 1, 8) + b"\0" * 4),
    "pickle-as-png": lambda: pickle.dumps(Call(os.system, "true")),
}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    return save_pretrained(create("resnet20", depth=8), tmp_path_factory.mktemp("hostile") / "m", "resnet20",
                           {"depth": 8})


def _predict_case(name: str):
    @case(f"predict-{name}")
    def build(d: Path, out: Path, model: Path | None = None) -> list[str]:
        path = d / f"{name}.png"
        path.write_bytes(IMAGES[name]())
        return ["predict", str(model), str(path)]


for _name in IMAGES:
    _predict_case(_name)


def _parquet_image_case(name: str, image: Callable[[], bytes]):
    @case(f"parquet-{name}")
    def build(d: Path, out: Path) -> list[str]:
        folder = d / "pq"
        folder.mkdir()
        feats = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=CIFAR100_FINE),
                                   "coarse_label": datasets.ClassLabel(names=CIFAR100_COARSE)})
        for split in ("train", "test"):
            rows = {"img": [{"bytes": image(), "path": None}] * 2, "fine_label": [0, 1], "coarse_label": [0, 1]}
            datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
        return train_argv(folder, out)


for _name in ("bomb-20000x20000", "bomb-10000x10000", "truncated-png", "eps", "text"):
    _parquet_image_case(_name, IMAGES[_name])
_parquet_image_case("64x64-png", lambda: png(64, 64))


@case("parquet-garbage-file")
def _(d, out):
    folder = write_parquet(d / "pq", train=20, test=20, shards=1)
    (folder / "train-00000-of-00001.parquet").write_bytes(os.urandom(3000))
    return train_argv(folder, out)


@case("parquet-single-file")
def _(d, out):
    folder = write_parquet(d / "pq", train=20, test=20, shards=1)
    return train_argv(folder / "test-00000-of-00001.parquet", out)


@case("parquet-string-labels")
def _(d, out):
    folder = d / "pq"
    folder.mkdir()
    feats = datasets.Features({"img": datasets.Image(), "fine_label": datasets.Value("string")})
    for split in ("train", "test"):
        datasets.Dataset.from_dict({"img": [{"bytes": encoded("PNG"), "path": None}], "fine_label": ["cat"]},
                                   features=feats).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return train_argv(folder, out)


# ------------------------------------------------------------------------------------------------ YAML files


def _yaml_case(name: str, text: Callable[[Path], str | bytes]):
    def write(path: Path, d: Path) -> Path:
        t = text(d)
        path.write_bytes(t if isinstance(t, bytes) else t.encode())
        return path

    @case(f"study-yaml-{name}")
    def study(d: Path, out: Path) -> list[str]:
        return ["study", "plan", str(write(d / "study.yaml", d)), "--out", str(out)]

    @case(f"config-yaml-{name}")
    def config(d: Path, out: Path) -> list[str]:
        path = write(d / "config.yaml", d)
        return train_argv("synthetic:300:100", out) + ["--config", str(path)]


def _laughs_yaml(d: Path) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\nname: s\nseeds: 1\ndescription: *a9\nvariants: [{name: v, model: resnet20}]\n"


_yaml_case("python-object-apply", lambda d: f'name: !!python/object/apply:os.system ["touch {side(d)}"]\nseeds: 1\n')
_yaml_case("python-object-new", lambda d: "name: !!python/object/new:builtins.open ['" + str(side(d)) + "', 'w']\n")
_yaml_case("python-name", lambda d: "name: !!python/name:os.system\n")
_yaml_case("deeply-nested", lambda d: "name: " + "[" * 3000 + "]" * 3000 + "\n")
_yaml_case("deeply-nested-block", lambda d: "name: " + "- " * 3000 + "x\n")
_yaml_case("billion-laughs", _laughs_yaml)
_yaml_case("not-utf8", lambda d: b"name: \xff\xfe\n")
_yaml_case("huge-numbers", lambda d: "name: s\nseeds: 1000000000000\nbase: {epochs: 1e400, lr: .nan}\n"
                                     "variants: [{name: v, model: resnet20}]\n")


@case("set-deeply-nested")
def _(d, out):
    return train_argv("synthetic:300:100", out) + ["--set", "model_kwargs=" + "[" * 3000]


# ------------------------------------------------------------------------------- run and saved-model folders


def _run_folder(d: Path) -> Path:
    """A finished run of ResNet-8 as the engine records it (config, one checkpoint, result.json, metrics.jsonl),
    written without training; ``test_clean_run_folder_reports`` checks that the commands accept it."""
    run = d / "run"
    cfg = build_config({**SMALL, "epochs": 2})
    write_json(run / "config.json", cfg.model_dump(mode="json"))
    save_checkpoint(RunFolder(run), 2, create("resnet20", depth=8), {"epoch": 2})
    labels = np.arange(100) % 100
    preds = np.where(labels % 2 == 0, labels, (labels + 1) % 100)
    write_json(run / "result.json", {
        "model": "resnet20", "dataset": "cifar100", "source": SMALL["data"], "source_kind": "synthetic",
        "dataset_fingerprint": "synthetic-v2-cifar100-300-100-0", "split_sizes": {"train": 300, "test": 100},
        "mean": [0.5, 0.49, 0.5], "std": [0.21, 0.2, 0.2], "stats_source": "computed from train split",
        "top1": 0.5, "top5": 0.8, "test_loss": 3.2, "selected_epoch": 2, "selection": "final epoch",
        "params": 81140, "macs": 12245248, "mac_convention": "FLOPs/2", "epochs": 2, "seed": 0,
        "train_seconds": 10.0, "train_step_seconds": 8.0, "images_per_second": 75.0, "epoch_seconds": [4.0, 4.0],
        "train_step": "eager", "device": "cpu", "world_size": 1, "git_commit": "0" * 40, "peak_memory_bytes": None,
        "inference": {}, "environment": {"torch": torch.__version__},
        "per_class_accuracy": [float(c % 2 == 0) for c in range(100)], "per_superclass_accuracy": [0.5] * 20,
        "test_labels": labels.tolist(), "test_predictions": preds.tolist(),
        "test_correct": "".join("1" if p == y else "0" for p, y in zip(preds, labels)),
        "config": cfg.model_dump(mode="json"), "finished_at": "2026-01-01T00:00:00Z"})
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "lr": 0.1, "train_loss": 4.0 / e, "train_top1": 0.2 * e, "epoch_seconds": 4.0,
                    "images_per_second": 75.0, "test_top1": 0.25 * e, "test_top5": 0.4 * e, "test_loss": 3.2})
        + "\n" for e in (1, 2)))
    return run


CONFIG_DAMAGE: dict[str, Callable[[dict], str]] = {
    "not-json": lambda c: "{model: resnet20",
    "a-list": lambda c: "[1, 2, 3]",
    "wrong-types": lambda c: json.dumps({**c, "model": 12, "num_classes": "many", "epochs": "x"}),
    "nan-and-huge": lambda c: json.dumps({**c, "num_classes": 1e400, "lr": float("nan"), "epochs": 10**30,
                                          "mean": [float("nan")] * 3}),
    "unknown-model": lambda c: json.dumps({**c, "model": "../../../../etc/passwd"}),
    "bad-model-kwargs": lambda c: json.dumps({**c, "model_kwargs": {"depth": -7, "__class__": "x"}}),
    "deeply-nested": lambda c: "[" * 20_000 + "]" * 20_000,
    "binary": lambda c: "\x00\xff\xfe" * 100,
}


def _config_case(name: str):
    @case(f"run-config-{name}-eval")
    def run_eval(d: Path, out: Path) -> list[str]:
        run = _run_folder(d)
        (run / "config.json").write_text(CONFIG_DAMAGE[name](json.loads((run / "config.json").read_text())))
        return ["eval", str(run)]

    @case(f"saved-config-{name}-predict")
    def saved(d: Path, out: Path) -> list[str]:
        folder = save_pretrained(create("resnet20", depth=8), d / "m", "resnet20", {"depth": 8})
        (folder / "config.json").write_text(CONFIG_DAMAGE[name](json.loads((folder / "config.json").read_text())),
                                            errors="surrogateescape")
        image = d / "x.png"
        image.write_bytes(encoded("PNG"))
        return ["predict", str(folder), str(image)]


for _name in CONFIG_DAMAGE:
    _config_case(_name)


def _weights(kind: str, path: Path) -> None:
    state = create("resnet20", depth=8).state_dict()
    if kind == "wrong-shapes":
        save_file({k: torch.zeros(v.numel() + 1) for k, v in state.items()}, str(path))
    elif kind == "wrong-dtypes":
        save_file({k: v.to(torch.int8) if v.is_floating_point() else v.float() for k, v in state.items()}, str(path))
    elif kind == "truncated-header":
        save_file(state, str(path))
        path.write_bytes(path.read_bytes()[:20])
    elif kind == "header-length-huge":
        path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    elif kind == "header-not-json":
        path.write_bytes(struct.pack("<Q", 8) + b"\xff\xfe{{{{{{")
    elif kind == "offsets-out-of-range":
        save_file(state, str(path))
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        for v in header.values():
            if isinstance(v, dict) and "data_offsets" in v:
                v["data_offsets"] = [0, 1 << 40]
        body = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])


WEIGHT_DAMAGE = ("wrong-shapes", "wrong-dtypes", "truncated-header", "header-length-huge", "header-not-json",
                 "offsets-out-of-range")


def _weights_case(name: str):
    @case(f"saved-weights-{name}-predict")
    def saved(d: Path, out: Path) -> list[str]:
        folder = save_pretrained(create("resnet20", depth=8), d / "m", "resnet20", {"depth": 8})
        _weights(name, folder / "model.safetensors")
        image = d / "x.png"
        image.write_bytes(encoded("PNG"))
        return ["predict", str(folder), str(image)]

    @case(f"run-weights-{name}-eval")
    def run_eval(d: Path, out: Path) -> list[str]:
        """Checkpoint weights replaced and the manifest's checksum rewritten to match: the checksum alone
        cannot stop a hostile folder, so loading must refuse it."""
        run = _run_folder(d)
        ckpt = run / "checkpoints" / "epoch-0002"
        _weights(name, ckpt / "model.safetensors")
        manifest = json.loads((ckpt / "manifest.json").read_text())
        from cifarlab.io import sha256_file

        manifest["files"]["model.safetensors"] = sha256_file(ckpt / "model.safetensors")
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
        return ["eval", str(run)]


for _name in WEIGHT_DAMAGE:
    _weights_case(_name)


RECORD_DAMAGE: dict[str, Callable[[Path], None]] = {
    "metrics-garbage-lines": lambda run: (run / "metrics.jsonl").write_text(
        "{\"epoch\": 1}\nnot json at all\n\x00\x00\n[1, 2]\n{\"epoch\": \"two\", \"train_loss\": 1e999}\n"),
    "metrics-nan-and-huge": lambda run: (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "train_loss": v, "test_top1": v}) + "\n"
                for e, v in enumerate([float("nan"), 1e308, -1e308, float("inf")], 1))),
    "metrics-huge-finite": lambda run: (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "train_loss": v, "test_top1": -v}) + "\n" for e, v in ((1, 1e308), (2, -1e308)))),
    "result-nan-top1": lambda run: _edit_json(run / "result.json", top1=float("nan"), top5=float("inf")),
    "result-huge-numbers": lambda run: _edit_json(run / "result.json", top1=1e308, params=10**400, seed=10**30),
    "result-wrong-types": lambda run: _edit_json(run / "result.json", top1="high", seed="zero", model=["x"]),
    "result-a-list": lambda run: (run / "result.json").write_text("[1, 2]"),
    "result-deeply-nested": lambda run: (run / "result.json").write_text("[" * 20_000 + "]" * 20_000),
}


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _record_case(name: str):
    @case(f"report-{name}")
    def build(d: Path, out: Path) -> list[str]:
        run = _run_folder(d)
        RECORD_DAMAGE[name](run)
        return ["report", str(run), "--out", str(out)]


for _name in RECORD_DAMAGE:
    _record_case(_name)


# ------------------------------------------------------------------------------------------------ the checks


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.fixture(autouse=True)
def _no_progress_bars():
    """datasets' progress bars go to stderr too; the one line checked is the error."""
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    yield
    if was:
        datasets.enable_progress_bars()


def _run_case(name: str, tmp_path: Path, monkeypatch, saved: Path) -> tuple[list[str], Path]:
    d, out, cwd = tmp_path / "in", tmp_path / "out", tmp_path / "cwd"
    for p in (d, cwd):
        p.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache"))
    build = CASES[name]
    argv = build(d, out, saved) if name.startswith("predict-") else build(d, out)
    return argv, out


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file_fails_safely(name, tmp_path, monkeypatch, capsys, saved_model):
    argv, out = _run_case(name, tmp_path, monkeypatch, saved_model)
    before = _tree(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, f"{name}: status {rc} ({err!r})"
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {err!r}"
    assert not (tmp_path / SIDE).exists() and not (tmp_path / "in" / "src" / SIDE).exists(), f"{name} ran code"
    new = _tree(tmp_path) - before
    cache = tmp_path / "cache"
    outside = sorted(p for p in new if not (p.is_relative_to(out) or p.is_relative_to(cache)))
    assert not outside, f"{name} wrote outside its output folder: {outside}"
    if "extract " in err and (cache / "extracted").is_dir():  # a refused archive leaves no extraction behind
        assert not any((cache / "extracted").iterdir()), f"{name} left {list((cache / 'extracted').iterdir())}"


def test_the_undamaged_run_folder_reports(tmp_path, monkeypatch, capsys):
    """The control for the record cases: the run folder they damage is one ``cifarlab report`` accepts."""
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache"))
    assert main(["report", str(_run_folder(tmp_path / "in")), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.md").is_file()


def test_hostile_file_in_a_real_process(tmp_path, monkeypatch):
    """The same, as a user sees it: a ``cifarlab`` process, its exit status 2 and its one-line stderr."""
    argv, _ = _run_case("pickle-meta-os_system", tmp_path, monkeypatch, None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "cifarlab.cli", *argv], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / SIDE).exists()
