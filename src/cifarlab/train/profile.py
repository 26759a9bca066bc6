"""``cifarlab profile``: size and speed of one model on the current device."""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..environment import device_name
from ..models import count_macs, count_params, create, get_entry
from ..models.complexity import MAC_CONVENTION
from .loop import make_train_step, train_epoch
from .metrics import autocast_context, autocast_dtype, measure_inference, peak_memory_bytes
from .step import TrainStep


def measure_training(model, forward, device, batch_size: int, steps: int, graph: bool,
                     warmup: int = 3) -> tuple[float, TrainStep]:
    """Training images/s of the engine's step and epoch loop on one random batch (``steps`` timed after
    ``warmup``), with the engine's default SGD."""
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch_size,), device=device)
    training = make_train_step(model, TrainConfig(lr=1e-3), device, steps_per_epoch=warmup + steps, graph=graph,
                               sample=(x, y), forward=forward)
    train_epoch(training, [(x, y)] * warmup)
    timed = train_epoch(training, [(x, y)] * steps)
    return timed.images / timed.seconds, training.step


def profile_model(name: str, batch_size: int = 256, compile: bool = False, steps: int = 20,
                  cuda_graph: bool | None = None) -> dict:
    """Size and speed of ``name``; training through the engine's ``TrainStep``, as one CUDA graph by default on
    CUDA (``cuda_graph=False``: eagerly)."""
    entry = get_entry(name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    graph = cuda if cuda_graph is None else cuda_graph
    model = create(name, num_classes=100)
    params, macs = count_params(model), count_macs(model)
    model = model.to(device, memory_format=torch.channels_last)
    amp = autocast_dtype("auto", device)
    run = torch.compile(model) if compile else model
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    train_ips, step = measure_training(model, run, device, batch_size, steps, graph)
    infer = measure_inference(run, device, batch_size, autocast_context(device, amp))
    return {
        "model": name, "family": entry.family, "tier": entry.tier, "params": params, "macs": macs,
        "mac_convention": MAC_CONVENTION, "device": device_name(device),
        "precision": "bf16 autocast" if cuda else "fp32", "compiled": compile, "cuda_graph": step.graphed,
        "batch_size": batch_size, "train_images_per_second": round(train_ips, 1),
        "inference_images_per_second": infer["images_per_second"],
        "inference_batch_size": infer["throughput_batch_size"],
        "latency_ms_batch1": infer["latency_ms_batch1"], "peak_memory_bytes": peak_memory_bytes(device),
    }
