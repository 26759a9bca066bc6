"""Decode untrusted image files and bytes with bounded work: the one way cifarlab opens a user's image.

``open_image`` reads at most ``max_bytes``, identifies the format among a short list of raster formats
(never EPS and its Ghostscript call), reads the size from the header — ``PIL.Image.open`` is lazy — and refuses
more than ``max_pixels`` (or another size than ``size``) before any pixel is decoded. Pillow's warnings (the
decompression-bomb warning, corrupt metadata, a truncated read) are errors here, and every way a damaged file
fails (truncated, empty, not an image, a broken header) becomes one :class:`ImageError`, a
:class:`~cifarlab.CifarlabError`.
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path

from PIL import Image

from .. import CifarlabError

MAX_PIXELS = 8192 * 8192
MAX_BYTES = 64 * 2**20
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")  # JPEG includes MPO (phone photos)
# warnings.catch_warnings swaps process-wide state: threads that decode at once take turns
_WARNINGS_LOCK = threading.Lock()


class ImageError(CifarlabError):
    """An image that cannot be decoded within the limits; ``reason`` is the message without the file's name."""

    def __init__(self, what: str, reason: str):
        super().__init__(f"{what}: {reason}")
        self.reason = reason


def _read_bounded(source: str | Path | bytes, max_bytes: int, what: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            with open(source, "rb") as f:
                data = f.read(max_bytes + 1)
        except OSError as e:
            raise ImageError(what, f"cannot read the file ({e.strerror or type(e).__name__})") from None
    if len(data) > max_bytes:
        raise ImageError(what, f"larger than {max_bytes:,} bytes")
    if not data:
        raise ImageError(what, "empty file")
    return data


def _decode(data: bytes, what: str, size: tuple[int, int] | None, max_pixels: int) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(what, "decompression bomb (its header declares more pixels than Pillow allows)") from None
    except Image.UnidentifiedImageError:
        raise ImageError(what, f"not an image in a supported format ({', '.join(FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - a broken header raises whatever its parser trips on
        raise ImageError(what, f"damaged image header ({_first_line(e)})") from None
    w, h = im.size
    if size is not None and (w, h) != tuple(size):
        raise ImageError(what, f"size {w}x{h}; expected {size[0]}x{size[1]}")
    if w < 1 or h < 1 or w * h > max_pixels:
        raise ImageError(what, f"{w}x{h} pixels; at most {max_pixels:,} are decoded")
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - truncated or corrupt pixel data, whatever the decoder raises
        raise ImageError(what, f"damaged or truncated image data ({_first_line(e)})") from None
    return im


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e).strip() else type(e).__name__


def open_image(source: str | Path | bytes, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
               size: tuple[int, int] | None = None, what: str | None = None) -> Image.Image:
    """The decoded image in ``source`` (a path or the file's bytes), checked before decoding.

    ``size`` (width, height) demands that exact size; ``what`` names the image in messages (default: the path).
    Pillow's warnings (a decompression bomb, corrupt metadata, a truncated read) are errors here.
    """
    what = what or (str(source) if isinstance(source, (str, Path)) else "image")
    data = _read_bounded(source, max_bytes, what)
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error")
        return _decode(data, what, size, max_pixels)
