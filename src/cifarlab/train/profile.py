"""``cifarlab profile``: size and speed of one model on the current device."""

from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F

from ..models import count_macs, count_params, create, get_entry
from ..models.complexity import MAC_CONVENTION
from .metrics import device_name, measure_inference, peak_memory_bytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(model, device, batch_size: int, steps: int, autocast, warmup: int = 3) -> float:
    """Training images/s: forward, backward and SGD step on random data (median-free: total over ``steps``)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, foreach=True)
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch_size,), device=device)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t = time.perf_counter()
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return batch_size * steps / (time.perf_counter() - t)


def profile_model(name: str, batch_size: int = 256, compile: bool = False, steps: int = 20) -> dict:
    entry = get_entry(name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create(name, num_classes=100)
    params, macs = count_params(model), count_macs(model)
    model = model.to(device, memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    run = torch.compile(model) if compile else model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_ips = measure_training(run, device, batch_size, steps, autocast)
    infer = measure_inference(run, device, batch_size, autocast)
    return {
        "model": name, "family": entry.family, "tier": entry.tier, "params": params, "macs": macs,
        "mac_convention": MAC_CONVENTION, "device": device_name(device),
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32", "compiled": compile,
        "batch_size": batch_size, "train_images_per_second": round(train_ips, 1),
        "inference_images_per_second": infer["images_per_second"],
        "inference_batch_size": infer["throughput_batch_size"],
        "latency_ms_batch1": infer["latency_ms_batch1"], "peak_memory_bytes": peak_memory_bytes(device),
    }
