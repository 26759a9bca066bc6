"""Training speed, three ways, in one run on one device.

- ``recipe``: the common recipe. A Dataset over uint8 arrays -> PIL -> RandomCrop(32, padding=4) +
  RandomHorizontalFlip + ToTensor + Normalize (torchvision when importable, else the same steps in PIL/numpy),
  a DataLoader with worker processes, fp32, default memory format, foreach SGD (nesterov).
- ``engine``: cifarlab's engine with ``cuda_graph: off``. The split on the device as uint8 (DeviceLoader +
  BatchAugment: per-sample crop/flip/normalise in batches), bf16 autocast on CUDA, channels_last, the engine's
  step (``make_train_step``) run eagerly (foreach SGD, nesterov) by the engine's own epoch loop
  (``train_epoch``): metrics accumulated on the device, the non-finite flag read every 50 steps, the LR
  scheduler stepped after every step, exactly as ``engine.fit`` runs its timed steps (evaluation and
  checkpoints lie outside them there too).
- ``fast``: the engine's default on a CUDA device: the same step captured once and replayed as one
  CUDA graph (fused SGD reading an LR tensor the scheduler fills in place); eager on the CPU.
- ``compiled``: ``fast`` with the model's forward from ``torch.compile`` (default mode) inside the graph
  (the engine with ``compile: true, cuda_graph: on``): fused elementwise kernels, one launch per step.

Every path uses the same model, batch size, weight-decay groups and per-step cosine LR (the engine's
``build_scheduler``). Timing covers training steps only: the device is synchronised before and after each
timed epoch; worker start-up, compilation, graph capture and warm-up steps come before. ``s/epoch`` is quoted
for 50,000 images (50,000 / images per second).

    python -m benchmarks.bench_train                  # GPU: resnet20, resnet56 x batch 128, 512 x 3 paths
    python -m benchmarks.bench_train --quick          # CPU smoke: tiny data, a few steps
"""

from __future__ import annotations

import argparse
import gc
from abc import ABC, abstractmethod
from dataclasses import dataclass
from itertools import islice
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cifarlab.config import TrainConfig
from cifarlab.data import BatchAugment, DeviceLoader, Split
from cifarlab.models import count_params, create, list_models
from cifarlab.train import make_train_step, train_epoch
from cifarlab.train.optim import build_optimizer, build_scheduler

from .common import (
    EPOCH_IMAGES,
    RESULTS,
    Timer,
    csv_ints,
    csv_strs,
    header,
    pick_device,
    save,
    synchronize,
    train_split,
)

PATHS = ("recipe", "engine", "fast", "compiled")
NAN_CHECK_EVERY = 50


# ---------------------------------------------------------------- the common recipe's data pipeline

class PilRecipe:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize on a PIL image, without torchvision."""

    def __init__(self, mean, std, pad: int = 4):
        self.pad = pad
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        padded = Image.new(img.mode, (img.width + 2 * self.pad, img.height + 2 * self.pad))
        padded.paste(img, (self.pad, self.pad))
        top = int(torch.randint(0, 2 * self.pad + 1, (1,)))  # drawn as torchvision draws them
        left = int(torch.randint(0, 2 * self.pad + 1, (1,)))
        img = padded.crop((left, top, left + 32, top + 32))
        if torch.rand(1) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std


def recipe_transform(mean, std) -> tuple[Callable, str]:
    try:
        import torchvision
        from torchvision import transforms as T
    except ImportError:
        return PilRecipe(mean, std), "PIL + numpy (torchvision not importable)"
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(mean, std)]), f"torchvision {torchvision.__version__}"


class RecipeDataset(Dataset):
    def __init__(self, split: Split, transform: Callable):
        self.images, self.labels, self.transform = split.images, split.labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


# ---------------------------------------------------------------- one training path = setup + epochs of steps

def optimisation(model_name: str) -> TrainConfig:
    """SGD nesterov, lr 0.1, weight decay 5e-4 (not on norms and biases), cosine without warm-up: for every path."""
    return TrainConfig(model=model_name, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, epochs=1,
                       warmup_epochs=0, schedule="cosine")


@dataclass
class Setup:
    model: str
    batch: int
    split: Split
    mean: tuple
    std: tuple
    device: torch.device
    workers: int
    total_steps: int  # length of the cosine LR schedule


class TrainPath(ABC):
    """A model, optimiser and loader; ``epoch(n, max_steps)`` trains and returns the number of images used."""

    name: str

    def __init__(self, s: Setup):
        self.s, self.device = s, s.device
        self.cfg = optimisation(s.model)
        self.model = create(s.model, num_classes=100)
        self.params = count_params(self.model)
        self.loss_sum = torch.zeros((), device=s.device)
        self.images = 0

    def mean_loss(self) -> float:
        return float(self.loss_sum) / max(self.images, 1)

    @abstractmethod
    def epoch(self, epoch: int, max_steps: int | None = None) -> int: ...

    @abstractmethod
    def describe(self) -> dict: ...


class RecipePath(TrainPath):
    name = "recipe"

    def __init__(self, s: Setup):
        super().__init__(s)
        self.model = self.model.to(s.device)
        self.optimizer = build_optimizer(self.model, self.cfg)  # foreach SGD, no decay on norms and biases
        # the engine's per-step cosine over the whole benchmark (warm-up steps included)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, steps_per_epoch=s.total_steps)
        transform, self.transforms = recipe_transform(s.mean, s.std)
        self.loader = DataLoader(RecipeDataset(s.split, transform), batch_size=s.batch, shuffle=True, drop_last=True,
                                 num_workers=s.workers, pin_memory=s.device.type == "cuda",
                                 persistent_workers=s.workers > 0)

    def epoch(self, epoch, max_steps=None):
        images = 0
        for x, y in islice(self.loader, max_steps):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.loss_sum += loss.detach() * len(y)
            images += len(y)
        self.images += images
        return images

    def describe(self):
        return {"precision": "fp32", "memory_format": "contiguous", "graphed": False, "optimizer": "SGD foreach",
                "loader": f"DataLoader ({self.s.workers} workers, {self.transforms})"}


class DevicePath(TrainPath):
    """The engine's data, step and epoch loop (``make_train_step``, ``train_epoch``): the split on the device,
    augmented in batches, bf16 on CUDA."""

    graph = False
    compiled = False

    def __init__(self, s: Setup):
        super().__init__(s)
        self.model = self.model.to(s.device, memory_format=torch.channels_last)
        aug = BatchAugment(s.mean, s.std, crop_padding=4, hflip=True, device=s.device)
        self.loader = DeviceLoader(s.split, s.batch, s.mean, s.std, s.device, train=True, augment=aug, seed=0)
        graph = self.graph and s.device.type == "cuda"
        forward = torch.compile(self.model) if self.compiled else self.model
        with Timer(s.device) as t:
            self.training = make_train_step(self.model, self.cfg, s.device, steps_per_epoch=s.total_steps,
                                            graph=graph, forward=forward,
                                            sample=next(self.batches(0)) if graph else None)
        self.setup_seconds = t.seconds
        self.step = self.training.step

    def batches(self, epoch):
        self.loader.set_epoch(epoch)
        return iter(self.loader)

    def epoch(self, epoch, max_steps=None):
        stats = train_epoch(self.training, islice(self.batches(epoch), max_steps), nan_check_every=NAN_CHECK_EVERY)
        self.loss_sum += stats.loss * stats.images
        self.images += stats.images
        return stats.images

    def describe(self):
        out = {"precision": "bf16 autocast" if self.step.autocast_dtype else "fp32",
               "memory_format": "channels_last",
               "loader": "DeviceLoader + BatchAugment", "graphed": self.step.graphed, "compiled": self.compiled,
               "optimizer": "SGD fused, LR tensor" if self.step.graphed else "SGD foreach"}
        if self.step.graphed:
            out["capture_seconds"] = round(self.setup_seconds, 3)  # warm-up steps + capture, before timing
        if self.step.capture_error:
            out["capture_error"] = self.step.capture_error
        return out


class EnginePath(DevicePath):
    name = "engine"


class FastPath(DevicePath):
    name, graph = "fast", True


class CompiledPath(DevicePath):
    name, graph, compiled = "compiled", True, True


PATH_CLASSES = {"recipe": RecipePath, "engine": EnginePath, "fast": FastPath, "compiled": CompiledPath}


def profile_summary(path: TrainPath, steps: int, device: torch.device, top: int = 12) -> dict:
    """torch.profiler over ``steps`` more steps: wall time, summed kernel time (far below the wall time: launch-
    or host-bound), the costliest kernels (CUDA) or ops (CPU)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with Timer(device) as t, profile(activities=acts) as prof:
        path.epoch(10_000, max_steps=steps)
        synchronize(device)
    events = prof.key_averages()
    if cuda:  # the kernels themselves (device-side events), as the profiler's own "Self CUDA" total counts them
        stat, events = "self_device_time_total", [e for e in events if e.device_type == DeviceType.CUDA]
    else:
        stat = "self_cpu_time_total"
    busy = sum(e.self_device_time_total for e in events) if cuda else None
    ranked = sorted(events, key=lambda e: getattr(e, stat), reverse=True)[:top]
    return {"steps": steps, "wall_us": round(t.seconds * 1e6), "kernel_us": busy and round(busy),
            "ranked_by": "kernel time" if cuda else "self CPU time",
            "top": [{"name": e.key, "calls": e.count, "us": round(getattr(e, stat))} for e in ranked]}


def measure(path_name: str, model_name: str, batch: int, split: Split, mean, std, device, args) -> dict:
    steps_per_epoch = len(split) // batch
    setup = Setup(model_name, batch, split, mean, std, device, args.workers,
                  total_steps=args.warmup_steps + args.epochs * steps_per_epoch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    path = PATH_CLASSES[path_name](setup)
    with Timer(device) as warm:
        path.epoch(0, max_steps=args.warmup_steps)
    epoch_seconds, images = [], 0
    for e in range(1, args.epochs + 1):
        with Timer(device) as t:
            images += path.epoch(e)
        epoch_seconds.append(t.seconds)
    profile = None
    if args.profile_steps:
        try:
            profile = profile_summary(path, args.profile_steps, device)
        except Exception as e:  # the timing above stands without it
            profile = {"error": f"{type(e).__name__}: {e}"[:500]}
    ips = images / sum(epoch_seconds)
    record = {"path": path_name, "model": model_name, "params": path.params, "batch_size": batch,
              "images_per_second": round(ips, 1), "seconds_per_epoch": round(EPOCH_IMAGES / ips, 4),
              "epoch_seconds": [round(s, 4) for s in epoch_seconds], "timed_epochs": args.epochs,
              "timed_steps": images // batch, "timed_images": images,
              "warmup_steps": args.warmup_steps, "warmup_seconds": round(warm.seconds, 3),
              "train_loss": round(path.mean_loss(), 4),
              "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
              **path.describe()}
    if profile:
        record["profile"] = profile
    del path
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def print_profile(prof: dict) -> None:
    if "error" in prof:
        print(f"    profile failed: {prof['error']}")
        return
    busy = prof["kernel_us"]
    share = f", kernels {busy / prof['wall_us']:.0%} of it" if busy else ""
    print(f"    profile of {prof['steps']} steps: {prof['wall_us'] / 1e3:.1f} ms wall{share}; top ops by "
          f"{prof['ranked_by']}:")
    for e in prof["top"]:
        print(f"      {e['us'] / 1e3:9.2f} ms {e['calls']:>7} calls  {e['name'][:90]}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="resnet20,resnet56", help="registry names, comma-separated, or 'all'")
    p.add_argument("--batches", default=None, help="batch sizes, comma-separated (default 128,512; --quick 16,32)")
    p.add_argument("--paths", default=None, help=f"subset of {','.join(PATHS)} (default all; --quick: all but "
                                                   f"compiled, whose CPU compilation takes minutes)")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per configuration (default 2; --quick 1)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default 30; --quick 1)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers of the recipe (default 4 on CUDA, "
                                                                  "0 on the CPU)")
    p.add_argument("--images", type=int, default=None, help="random training images (default 50000; --quick 64)")
    p.add_argument("--data", default=None, help="a real CIFAR-100 source instead of random images (needs `datasets`)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--profile-steps", type=int, default=0, help="after timing, run this many steps under "
                                                                  "torch.profiler and record the costliest ops")
    p.add_argument("--quick", action="store_true", help="a CPU smoke run: tiny data, a few steps")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON record")
    p.add_argument("--no-save", action="store_true", help="print only")
    args = p.parse_args(argv)
    q = args.quick
    args.batches = csv_ints(args.batches or ("16,32" if q else "128,512"))
    args.paths = args.paths or ",".join(p for p in PATHS if not (q and p == "compiled"))
    unknown = set(csv_strs(args.paths)) - set(PATHS)
    if unknown:
        p.error(f"unknown paths {sorted(unknown)}; choose from {','.join(PATHS)}")
    args.models = list_models() if args.models == "all" else csv_strs(args.models)
    args.paths = [name for name in PATHS if name in csv_strs(args.paths)]  # the recipe first: speed-ups divide by it
    args.epochs = args.epochs or (1 if q else 2)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if q else 30)
    args.images = args.images or (64 if q else EPOCH_IMAGES)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.workers is None:
        args.workers = 4 if device.type == "cuda" else 0
    torch.backends.cudnn.benchmark = True
    split, mean, std, data_desc = train_split(args.data, args.images)
    too_big = [b for b in args.batches if b > len(split)]
    if too_big:
        raise SystemExit(f"batch sizes {too_big} exceed the {len(split)} training images")
    record = header("train", device, args.quick, data_desc, {k: v for k, v in vars(args).items() if k != "out"})
    print(f"{record['device']} | torch {torch.__version__} (CUDA {torch.version.cuda}) | {data_desc}"
          f"{' | QUICK smoke run' if args.quick else ''}")
    results = []
    for model_name in args.models:
        for batch in args.batches:
            base = None
            for path_name in args.paths:
                try:
                    r = measure(path_name, model_name, batch, split, mean, std, device, args)
                except Exception as e:  # one model that cannot be captured (or OOMs) must not end the whole run
                    results.append({"path": path_name, "model": model_name, "batch_size": batch,
                                    "error": f"{type(e).__name__}: {e}"[:500]})
                    print(f"{model_name:>10} batch {batch:>4} {path_name:>6}: FAILED {results[-1]['error']}")
                    gc.collect()
                    continue
                base = r["images_per_second"] if path_name == "recipe" else base
                r["speedup_vs_recipe"] = round(r["images_per_second"] / base, 2) if base else None
                results.append(r)
                speed = f"{r['speedup_vs_recipe']:.2f}x recipe" if base else ""
                print(f"{model_name:>10} batch {batch:>4} {path_name:>6}: {r['images_per_second']:>10,.0f} img/s "
                      f"{r['seconds_per_epoch']:>8.3f} s/epoch  {speed}  ({r['timed_steps']} steps timed; "
                      f"{r['precision']}, {r['loader']}, graphed={r['graphed']})", flush=True)
                if "profile" in r:
                    print_profile(r["profile"])
    record["results"] = results
    if not args.no_save:
        print(f"wrote {save(record, 'train', args.out, device)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
