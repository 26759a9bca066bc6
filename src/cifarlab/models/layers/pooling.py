"""Final global pooling: average, max, their sum, or generalised mean (GeM).

GeM: Radenovic et al., "Fine-tuning CNN Image Retrieval with No Human Annotation",
TPAMI 2018 — ``(mean(x^p))^(1/p)`` with a learnable ``p`` (init 3).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import CifarlabError

POOL_KINDS = ("avg", "max", "avgmax", "gem")


class GeneralizedMeanPool(nn.Module):
    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class GlobalPool(nn.Module):
    """Pool (N, C, H, W) to (N, C). ``avgmax`` is the sum of average and max pooling."""

    def __init__(self, kind: str = "avg"):
        super().__init__()
        if kind not in POOL_KINDS:
            raise CifarlabError(f"unknown global pool {kind!r}; choose from {list(POOL_KINDS)}")
        self.kind = kind
        self.gem = GeneralizedMeanPool() if kind == "gem" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gem is not None:
            return self.gem(x)
        if self.kind == "avg":
            return x.mean(dim=(2, 3))
        if self.kind == "max":
            return F.adaptive_max_pool2d(x, 1).flatten(1)
        return x.mean(dim=(2, 3)) + F.adaptive_max_pool2d(x, 1).flatten(1)
