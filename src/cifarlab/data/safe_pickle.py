"""Read the CIFAR python pickles without running code: a restricted unpickler.

``pickle.load`` calls whatever global a file names, so a doctored ``cifar-100-python`` archive could run any
command. :class:`CifarUnpickler` resolves only the globals the real files need — numpy's array and scalar
reconstruction (``numpy.core`` and numpy 2's ``numpy._core`` names), ``numpy.dtype``, ``_codecs.encode`` (bytes
in protocol-2 pickles written by Python 3) and the builtin sets — and each of those is replaced by a stand-in
that checks its arguments first: a dtype must be a plain numeric one (bool, integer, float, complex), array
state must be a flat buffer whose size matches its shape. Any other global is refused with an error naming
it, before anything is called. Dicts, lists, tuples, strings, bytes and numbers need no global at all.
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .. import CifarlabError

MAX_PICKLE_BYTES = 1 << 30
NUMERIC_KINDS = "biufc"
BYTE_ORDERS = ("<", ">", "|", "=")


class PickleRefused(CifarlabError):
    """A pickle that asks for something a CIFAR file never holds."""


def _text(x: Any) -> str | None:
    if isinstance(x, bytes):
        return x.decode("latin1")
    return x if isinstance(x, str) else None


def _plain_dtype(code: Any) -> np.dtype:
    text = _text(code)
    if text is None:
        raise PickleRefused(f"numpy dtype {code!r:.60} is not a type code")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise PickleRefused(f"numpy dtype {text!r:.60} is not a type code") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise PickleRefused(f"numpy dtype {text!r:.60} is not a plain numeric type")
    return dtype


class _DType:
    """Stands for ``numpy.dtype(code)`` until its pickled state (the byte order) arrives."""

    __slots__ = ("dtype",)

    def __init__(self, code: Any, align: Any = False, copy: Any = False):
        self.dtype = _plain_dtype(code)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (8, 9) or any(s is not None for s in state[2:5]):
            raise PickleRefused("numpy dtype state with fields or sub-arrays")
        order = _text(state[1])
        if order not in BYTE_ORDERS:
            raise PickleRefused(f"numpy dtype byte order {state[1]!r:.20}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


def _dtype_of(x: Any) -> np.dtype:
    if not isinstance(x, _DType):
        raise PickleRefused(f"an array or scalar whose dtype is a {type(x).__name__}")
    return x.dtype


def _array(buf: Any, dtype: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray)):
        raise PickleRefused(f"array data held in a {type(buf).__name__}, not bytes")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise PickleRefused(f"array shape {shape!r:.60}")
    if math.prod(shape) * dtype.itemsize != len(buf):
        raise PickleRefused(f"array of shape {shape} and {dtype} with {len(buf)} bytes of data")
    return np.frombuffer(buf, dtype).reshape(shape, order="F" if fortran else "C").copy()


class _Array:
    """Stands for the empty array numpy's ``_reconstruct`` makes; its state (shape, dtype, bytes) fills it."""

    __slots__ = ("array",)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise PickleRefused("numpy array state of an unknown form")
        _, shape, dtype, fortran, raw = state
        self.array = _array(raw, _dtype_of(dtype), shape, bool(fortran))


_NDARRAY = object()  # numpy.ndarray: only an argument of _reconstruct, never called


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
    if cls is not _NDARRAY or shape != (0,) or _text(typecode) != "b":
        raise PickleRefused("numpy _reconstruct of something other than a plain ndarray")
    return _Array()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return _array(buf, _dtype_of(dtype), shape, _text(order) == "F")


def _scalar(dtype: Any, data: Any = None) -> np.generic:
    return _array(data, _dtype_of(dtype), (), False)[()]


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PickleRefused("_codecs.encode other than of text to latin-1 bytes")
    return text.encode("latin1")


def _names(modules: tuple[str, ...], name: str) -> list[tuple[str, str]]:
    return [(m, name) for m in modules]


ALLOWED: dict[tuple[str, str], Any] = {
    **dict.fromkeys(_names(("numpy.core.multiarray", "numpy._core.multiarray"), "_reconstruct"), _reconstruct),
    **dict.fromkeys(_names(("numpy.core.multiarray", "numpy._core.multiarray"), "scalar"), _scalar),
    **dict.fromkeys(_names(("numpy.core.numeric", "numpy._core.numeric"), "_frombuffer"), _frombuffer),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _encode,
    **dict.fromkeys(_names(("builtins", "__builtin__"), "set"), set),
    **dict.fromkeys(_names(("builtins", "__builtin__"), "frozenset"), frozenset),
}


class CifarUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED` globals (to their checking stand-ins)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[module, name]
        except (KeyError, TypeError):
            raise PickleRefused(f"refused to load the global {module}.{name} (a CIFAR pickle holds only "
                                f"numbers, strings, lists, dicts and numeric numpy arrays)") from None


def _resolve(obj: Any) -> Any:
    """The unpickled object with every array stand-in replaced by its array (in dicts and lists, in place)."""
    def real(x: Any) -> Any:
        if isinstance(x, _Array):
            if not hasattr(x, "array"):
                raise PickleRefused("a numpy array without its data")
            return x.array
        return x.dtype if isinstance(x, _DType) else x

    seen: set[int] = set()
    stack = [obj]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, dict):
            for k, v in x.items():
                if isinstance(k, (_Array, _DType)):
                    raise PickleRefused("a numpy array or dtype as a dict key")
                x[k] = real(v)
                stack.append(x[k])
        elif isinstance(x, list):
            x[:] = [real(v) for v in x]
            stack.extend(x)
        elif isinstance(x, (tuple, set, frozenset)):
            if any(isinstance(v, (_Array, _DType)) for v in x):
                raise PickleRefused("a numpy array inside a tuple or set")
            stack.extend(x)
    return real(obj)


def load_pickle(path: str | Path, max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """The object in the pickle file ``path``, read with :class:`CifarUnpickler` (``encoding="bytes"``, as
    the Python 2 CIFAR files need). Refused globals raise :class:`PickleRefused`; a damaged file
    raises :class:`~cifarlab.CifarlabError`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise CifarlabError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if len(data) > max_bytes:
        raise CifarlabError(f"{path}: larger than {max_bytes:,} bytes; not a CIFAR python pickle")
    try:
        return _resolve(CifarUnpickler(io.BytesIO(data), encoding="bytes").load())
    except PickleRefused as e:
        raise PickleRefused(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle raises whatever the opcode it stops at raises
        raise CifarlabError(f"{path}: not a CIFAR python pickle ({type(e).__name__})") from None
