"""Evaluation and the measurements every run records."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import bf16_autocast
from ..environment import synchronize

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a GPU unless ``precision`` is fp32; none on the CPU (:func:`cifarlab.config.bf16_autocast`)."""
    return torch.bfloat16 if bf16_autocast(precision, device.type) else None


def autocast_context(device: torch.device,
                     dtype: torch.dtype | None) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context for evaluation and inference (a no-op without ``dtype``)."""
    return (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict:
    """Top-1/top-5, loss (the mean negative log-likelihood, nats) and expected calibration error over all batches,
    plus the per-image predictions and top-1 confidences (kept on the device until the end)."""
    was_training = model.training
    model.eval()
    preds, labels, top5_hits, losses, confidences = [], [], [], [], []
    for x, y in batches:
        with autocast():
            logits = model(x)
        logits = logits.float()
        losses.append(F.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        preds.append(top[:, 0])
        top5_hits.append((top == y[:, None]).any(1))
        labels.append(y)
        confidences.append(logits.softmax(1).amax(1))
    model.train(was_training)
    p, y, h5 = torch.cat(preds).cpu().numpy(), torch.cat(labels).cpu().numpy(), torch.cat(top5_hits).cpu().numpy()
    conf = torch.cat(confidences).cpu().numpy()
    n = len(y)
    loss = float(torch.stack(losses).sum().item() / n)
    ece, calibration = expected_calibration_error(conf, p == y)
    return {
        "top1": float((p == y).mean()), "top5": float(h5.mean()), "loss": loss, "ece": ece,
        "calibration": calibration, "predictions": p, "labels": y, "confidences": conf,
    }


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> tuple[float, dict]:
    """Expected calibration error (Naeini et al. 2015; Guo et al., "On Calibration of Modern Neural Networks", 2017).

    The images are put into ``bins`` equal-width bins of their top-1 softmax confidence over [0, 1]
    (bin b holds (b/bins, (b+1)/bins], the first also 0); ECE = sum over bins of
    (images in the bin / all images) * |accuracy in the bin - mean confidence in the bin|.
    Returns the ECE and the per-bin counts, accuracies and mean confidences (None for empty bins),
    from which a reliability diagram is drawn.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    filled = count > 0
    acc = np.divide(acc_sum, count, out=np.zeros(bins), where=filled)
    conf = np.divide(conf_sum, count, out=np.zeros(bins), where=filled)
    ece = float(np.sum(count / max(len(confidence), 1) * np.abs(acc - conf)))
    return ece, {"bins": bins, "count": count.tolist(),
                 "accuracy": [round(float(a), 6) if f else None for a, f in zip(acc, filled, strict=True)],
                 "confidence": [round(float(c), 6) if f else None for c, f in zip(conf, filled, strict=True)]}


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
    correct = np.bincount(labels, weights=(preds == labels), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    return [round(float(c / t), 4) if t else float("nan") for c, t in zip(correct, total, strict=True)]


def superclass_accuracy(preds: np.ndarray, labels: np.ndarray, coarse: np.ndarray, num_coarse: int) -> list[float]:
    """Fine-label accuracy grouped by each image's superclass."""
    return per_class_accuracy(np.where(preds == labels, coarse, -1), coarse, num_coarse)


def correctness_string(preds: np.ndarray, labels: np.ndarray) -> str:
    """Per-image correctness on the test split as a '0'/'1' string (for paired statistics)."""
    return "".join("1" if c else "0" for c in preds == labels)


@torch.no_grad()
def measure_inference(model: nn.Module, device: torch.device, batch_size: int = 1024,
                      autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                      max_iters: int = 50, budget_s: float = 1.0, channels_last: bool = True) -> dict:
    """Latency at batch 1 and throughput at ``batch_size`` (medians; random inputs, 3 warm-up calls,
    then up to ``max_iters`` timed calls or ``budget_s`` seconds, at least 3)."""
    if device.type == "cpu":
        batch_size = min(batch_size, 256)
    was_training = model.training
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {}
    for bs, key in ((1, "latency_ms_batch1"), (batch_size, "images_per_second")):
        x = torch.randn(bs, 3, 32, 32, device=device).contiguous(memory_format=fmt)
        times: list[float] = []
        for i in range(max_iters + 3):
            synchronize(device)
            t = time.perf_counter()
            with autocast():
                model(x)
            synchronize(device)
            if i >= 3:
                times.append(time.perf_counter() - t)
                if len(times) >= 3 and sum(times) > budget_s:
                    break
        med = float(np.median(times))
        out[key] = round(med * 1000, 4) if bs == 1 else round(bs / med, 1)
    out["throughput_batch_size"] = batch_size
    model.train(was_training)
    return out


def peak_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None
