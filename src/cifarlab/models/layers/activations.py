"""Activation layers by name (the activation switch of the shipped training-tricks study, tricks)."""

import torch.nn as nn

from ... import CifarlabError

_ACTS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU, "hardswish": nn.Hardswish}


def get_act_layer(name: str) -> type[nn.Module]:
    try:
        return _ACTS[name]
    except KeyError:
        raise CifarlabError(f"unknown activation {name!r}; choose from {sorted(_ACTS)}") from None


def make_act(name: str) -> nn.Module:
    cls = get_act_layer(name)
    return cls(inplace=True) if cls in (nn.ReLU, nn.ELU, nn.SiLU, nn.Hardswish) else cls()
