"""What both benchmarks share: device and environment description, data, synchronised timing, JSON records."""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cifarlab.data import Split
from cifarlab.data.meta import DATASETS
from cifarlab.environment import device_name, environment, synchronize
from cifarlab.io import write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "benchmarks"
EPOCH_IMAGES = 50_000  # s/epoch is always quoted for CIFAR's 50,000 training images


def pick_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def device_slug(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def train_split(data: str | None, images: int, seed: int = 0) -> tuple[Split, tuple, tuple, str]:
    """CIFAR-100's training split from ``data`` (any cifarlab source), or random uint8 images of its shape."""
    if data:
        from cifarlab.data import load_data  # only here: loading a real source needs `datasets`

        d = load_data("cifar100", data)
        return d.train, d.mean, d.std, f"{d.name} train split from {data} ({len(d.train)} images)"
    rng = np.random.default_rng(seed)
    split = Split(rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
                  rng.integers(0, 100, images, dtype=np.int64))
    info = DATASETS["cifar100"]
    return split, info.mean, info.std, f"random uint8 images of CIFAR's shape ({images}, seed {seed})"


class Timer:
    """Wall time of device work: synchronises before starting and before reading."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "Timer":
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def save(record: dict, bench: str, out_dir: Path, device: torch.device) -> Path:
    """Write ``record`` to ``out_dir/<device-slug>-<UTC date-time>-<bench>.json`` (never overwriting a run)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = Path(out_dir) / f"{device_slug(device)}-{stamp}-{bench}.json"
    write_json(path, record)
    return path


def header(bench: str, device: torch.device, quick: bool, data: str, args: dict) -> dict:
    return {"benchmark": bench, "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "device": device_name(device), "device_slug": device_slug(device), "quick": quick,
            "environment": environment(device), "data": data, "epoch_images": EPOCH_IMAGES, "args": args}


def csv_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def csv_strs(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def update_generated(doc: Path, begin: str, end: str, body: str, check: bool, command: str) -> int:
    """Put ``body`` between the ``begin`` / ``end`` markers of ``doc``; with ``check``, only say (exit 1) when the
    section is out of date. ``command`` is what regenerates it."""
    old = doc.read_text()
    if begin not in old or end not in old:
        print(f"{doc} lacks the markers {begin!r} ... {end!r}", file=sys.stderr)
        return 1
    head, rest = old.split(begin, 1)
    new = f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}"
    if check:
        if new != old:
            print(f"{doc} is out of date: run {command}", file=sys.stderr)
            return 1
        return 0
    doc.write_text(new)
    print(f"wrote {doc}")
    return 0
