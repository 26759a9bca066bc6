"""Read the CIFAR python pickles without running code: a restricted unpickler.

``pickle.load`` calls whatever global a file names, so a doctored ``cifar-100-python`` archive could run any
command. :class:`CifarUnpickler` resolves only the globals the real files need — numpy's array and scalar
reconstruction (``numpy.core`` and numpy 2's ``numpy._core`` names), ``numpy.dtype``, ``_codecs.encode`` (bytes
in protocol-2 pickles written by Python 3) and the builtin sets — and each of those is replaced by a stand-in
that checks its arguments first: a dtype must be a plain numeric one (bool, integer, float, complex), array
state must be a flat buffer whose size matches its shape. Any other global is refused with an error naming
it, before anything is called. Dicts, lists, tuples, strings, bytes and numbers need no global at all.

Memo references (``BINGET``) let a few bytes name one large object many times. Arrays are views of their
pickled bytes (no copy per reference); the stand-ins that build something new from their argument
(``_codecs.encode``, ``set``, ``frozenset``) draw on one budget per file, and the loaded object's contents,
counting every reference, are bounded before anything walks them: both by :func:`build_limit`, about 8 times
the file's size (a small int takes one byte in the file and 8 in a list). Messages describe what the file held
with :func:`~cifarlab.data.untrusted.describe`, never its repr.
"""

from __future__ import annotations

import io
import math
import pickle
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .. import CifarlabError
from .untrusted import describe

MAX_PICKLE_BYTES = 1 << 30
BUILD_SLACK = 64 << 20
MAX_DTYPE_CODE = 16  # "<f8", "uint8", "complex128": a type code is a few characters
NUMERIC_KINDS = "biufc"
BYTE_ORDERS = ("<", ">", "|", "=")


class PickleRefused(CifarlabError):
    """A pickle that asks for something a CIFAR file never holds."""


def _text(x: Any) -> str | None:
    if isinstance(x, bytes):
        return x.decode("latin1")
    return x if isinstance(x, str) else None


def build_limit(file_bytes: int, max_bytes: int = MAX_PICKLE_BYTES) -> int:
    """What a pickle of ``file_bytes`` may build, and hold counting every reference: 8 bytes a byte of file,
    at most twice ``max_bytes``, plus ``BUILD_SLACK``."""
    return min(8 * file_bytes, 2 * max_bytes) + BUILD_SLACK


class _Budget:
    """Bytes the stand-ins may build from their arguments in one file: without it, memo references let a small
    file call ``_codecs.encode`` on one large string a million times."""

    def __init__(self, limit: int):
        self.limit = self.left = limit

    def charge(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise PickleRefused(f"builds more than {self.limit:,} bytes from its objects (one large object "
                                f"referenced many times?)")


def _plain_dtype(code: Any) -> np.dtype:
    text = _text(code)
    if text is None or len(text) > MAX_DTYPE_CODE:
        raise PickleRefused(f"numpy dtype {describe(code)} is not a type code")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise PickleRefused(f"numpy dtype {describe(text)} is not a type code") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise PickleRefused(f"numpy dtype {describe(text)} is not a plain numeric type")
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
            raise PickleRefused(f"numpy dtype byte order {describe(state[1])}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


def _dtype_of(x: Any) -> np.dtype:
    if not isinstance(x, _DType):
        raise PickleRefused(f"an array or scalar whose dtype is a {type(x).__name__}")
    return x.dtype


def _array(buf: Any, dtype: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    """A view of ``buf`` (never a copy: an array state referenced many times costs nothing more)."""
    if not isinstance(buf, (bytes, bytearray)):
        raise PickleRefused(f"array data held in {describe(buf)}, not bytes")
    if (not isinstance(shape, tuple) or len(shape) > 32
            or not all(type(n) is int and 0 <= n < 1 << 62 for n in shape)):
        raise PickleRefused(f"array shape {describe(shape)}")
    if math.prod(shape) * dtype.itemsize != len(buf):
        raise PickleRefused(f"array of shape {shape} and {dtype} with {len(buf):,} bytes of data")
    return np.frombuffer(buf, dtype).reshape(shape, order="F" if fortran else "C")


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


def _encode(budget: _Budget, text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PickleRefused("_codecs.encode other than of text to latin-1 bytes")
    budget.charge(len(text))
    return text.encode("latin1")


def _collection(kind: type, budget: _Budget, items: Any = ()) -> set | frozenset:
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise PickleRefused(f"a {kind.__name__} of {describe(items)}")
    budget.charge(8 * len(items))
    return kind(items)


def _names(modules: tuple[str, ...], name: str) -> list[tuple[str, str]]:
    return [(m, name) for m in modules]


def _stand_ins(budget: _Budget) -> dict[tuple[str, str], Any]:
    """The globals a CIFAR pickle may name, each mapped to its checking stand-in."""
    return {
        **dict.fromkeys(_names(("numpy.core.multiarray", "numpy._core.multiarray"), "_reconstruct"), _reconstruct),
        **dict.fromkeys(_names(("numpy.core.multiarray", "numpy._core.multiarray"), "scalar"), _scalar),
        **dict.fromkeys(_names(("numpy.core.numeric", "numpy._core.numeric"), "_frombuffer"), _frombuffer),
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _DType,
        ("_codecs", "encode"): partial(_encode, budget),
        **dict.fromkeys(_names(("builtins", "__builtin__"), "set"), partial(_collection, set, budget)),
        **dict.fromkeys(_names(("builtins", "__builtin__"), "frozenset"), partial(_collection, frozenset, budget)),
    }


def _global_name(module: Any, name: Any) -> str:
    text = f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else ""
    return text if 0 < len(text) <= 100 and text.isprintable() else describe(f"{module}.{name}")


class CifarUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals of :func:`_stand_ins`, which build at most
    ``limit`` bytes in all."""

    def __init__(self, file: io.BytesIO, limit: int):
        super().__init__(file, encoding="bytes")
        self.allowed = _stand_ins(_Budget(limit))

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[module, name]
        except (KeyError, TypeError):
            raise PickleRefused(f"refused to load the global {_global_name(module, name)} (a CIFAR pickle holds "
                                f"only numbers, strings, lists, dicts and numeric numpy arrays)") from None


def _children(x: Any) -> tuple | list:
    if isinstance(x, dict):
        return [*x.keys(), *x.values()]
    return x if isinstance(x, (list, tuple)) else list(x) if isinstance(x, (set, frozenset)) else ()


def _leaf_bytes(x: Any) -> int:
    if isinstance(x, (bytes, bytearray, str)):
        return len(x)
    if isinstance(x, _Array):
        return x.array.nbytes if hasattr(x, "array") else 0
    return x.nbytes if isinstance(x, np.ndarray) else 8


def _check_size(obj: Any, limit: int) -> None:
    """Refuse ``obj`` when its contents, counting each reference to a shared object again, exceed ``limit``
    bytes, or when it contains itself: what a reader that walks it would build (a list of one 1 MB string
    referenced a million times is 1 TB to decode). Depth-first, iterative, each object sized once."""
    size: dict[int, int] = {}
    open_: set[int] = set()  # objects whose contents are being sized: meeting one again is a cycle
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        x, closing = stack.pop()
        key = id(x)
        if closing:
            open_.discard(key)
            size[key] = 8 + sum(size[id(c)] for c in _children(x))
            if size[key] > limit:
                raise PickleRefused(f"holds more than {limit:,} bytes once its shared objects are counted at "
                                    f"each reference")
        elif key in open_:
            raise PickleRefused("an object that contains itself")
        elif key not in size:
            children = _children(x)
            if not children:
                size[key] = _leaf_bytes(x)
                continue
            open_.add(key)
            stack.append((x, True))
            stack.extend((c, False) for c in children if id(c) not in size)


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
    the Python 2 CIFAR files need): at most ``max_bytes`` of file, and :func:`build_limit` of bytes built by
    the stand-ins and of contents counted at every reference. Refused globals raise :class:`PickleRefused`; a
    damaged file raises :class:`~cifarlab.CifarlabError`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise CifarlabError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if len(data) > max_bytes:
        raise CifarlabError(f"{path}: larger than {max_bytes:,} bytes; not a CIFAR python pickle")
    try:
        limit = build_limit(len(data), max_bytes)
        obj = CifarUnpickler(io.BytesIO(data), limit).load()
        _check_size(obj, limit)
        return _resolve(obj)
    except PickleRefused as e:
        raise PickleRefused(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle raises whatever the opcode it stops at raises
        raise CifarlabError(f"{path}: not a CIFAR python pickle ({type(e).__name__})") from None
