"""Name an untrusted value or an error in a message of bounded length, without building its full text.

``repr`` of a value a file built can cost any time and memory: a list that holds itself twice per level
("billion laughs") has an exponential repr, a nested one recurses, an int of a million digits is quadratic to
print. :func:`describe` looks at the value's type and size only (and the first characters of a string),
so a refusal's message stays one short line whatever the file held.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SHOWN_CHARS = 40
DETAIL_CHARS = 200


def describe(x: Any, chars: int = SHOWN_CHARS) -> str:
    """A one-line description of ``x``: a short string or number as itself (cut after ``chars``), anything
    else as its type and size, never the repr of what it contains."""
    if x is None or isinstance(x, (bool, float)):
        return repr(x)
    if isinstance(x, int):
        return repr(x) if abs(x) < 10**18 else f"an integer of {x.bit_length()} bits"
    if isinstance(x, (str, bytes, bytearray)):
        shown, unit = repr(x[:chars]), "characters" if isinstance(x, str) else "bytes"
        return shown if len(x) <= chars else f"{shown}... ({len(x):,} {unit})"
    if isinstance(x, np.ndarray):
        return f"a numpy array of shape {x.shape[:8]} and {x.dtype}"
    if isinstance(x, (list, tuple, dict, set, frozenset)):
        return f"a {type(x).__name__} of {len(x):,} item{'' if len(x) == 1 else 's'}"
    return f"a {type(x).__name__}"


def summary(e: BaseException, chars: int = DETAIL_CHARS) -> str:
    """``Type: first line of the message``, cut after ``chars``: what a library's error says, kept short."""
    text = " ".join(str(e).split(maxsplit=64)[:64])[:chars]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
