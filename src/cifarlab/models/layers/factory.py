"""Name tables for blocks that a network takes from its config."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ... import CifarlabError
from .conv import ConvNormAct

# name -> class(channels, **kwargs); filled by the attention modules' files below.
ATTENTION_LAYERS: dict[str, type[nn.Module]] = {}
# name -> class(in_ch, out_ch, stride=1, act=True, **kwargs)
CONV_LAYERS: dict[str, type[nn.Module]] = {"conv": ConvNormAct}


def register_attention(name: str):
    def add(cls):
        ATTENTION_LAYERS[name] = cls
        return cls
    return add


def register_conv(name: str):
    def add(cls):
        CONV_LAYERS[name] = cls
        return cls
    return add


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name]
    except KeyError:
        raise CifarlabError(f"unknown {kind} {name!r}; choose from {sorted(table)}") from None


def create_attention(name: str, channels: int, **kwargs: Any) -> nn.Module:
    return _lookup(ATTENTION_LAYERS, "attention", name)(channels, **kwargs)


def create_conv(name: str, in_ch: int, out_ch: int, stride: int = 1, act: bool = True, **kwargs: Any) -> nn.Module:
    return _lookup(CONV_LAYERS, "conv layer", name)(in_ch, out_ch, stride=stride, act=act, **kwargs)
