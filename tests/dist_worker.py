"""Run under ``torchrun --nproc_per_node 2``: trains on synthetic data; each rank records its data and weights."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from cifarlab.config import build_config
from cifarlab.train import fit

out = Path(sys.argv[1])
per_epoch: dict[int, list[int]] = {}


def record(epoch, model, loader):
    per_epoch[epoch] = loader.last_indices.tolist()
    if epoch == cfg.epochs:
        h = hashlib.sha256()
        for k, v in sorted(model.named_parameters()):  # buffers (BN stats) are rank 0's, broadcast each forward
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        (out / f"rank{loader.rank}.json").write_text(json.dumps(
            {"rank": loader.rank, "world": loader.world_size, "indices": per_epoch, "weights": h.hexdigest()}))


torch.set_num_threads(1)
cfg = build_config({"model": "resnet20", "data": "synthetic:400:100", "epochs": 2, "batch_size": 20,
                    "lr": 0.05, "warmup_epochs": 0})
fit(cfg, out / "run", progress=False, on_epoch_end=record)
