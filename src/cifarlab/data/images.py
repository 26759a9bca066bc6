"""Decode untrusted image files and bytes with bounded work: the one way cifarlab opens a user's image.

``open_image`` reads at most ``max_bytes``, identifies the format among a short list of raster formats
(never EPS and its Ghostscript call), reads the size from the header — ``PIL.Image.open`` is lazy — and refuses
more than ``max_pixels`` (or another size than ``size``) before any pixel is decoded. The work of a decode is
bounded too: a JPEG is refused when it has more than ``MAX_JPEG_SCANS`` scans (:func:`jpeg_scans`) and a TIFF
when its pixels are JPEG-compressed (its JPEG streams would escape that count). Pillow's warnings (the
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
MAX_JPEG_SCANS = 64
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")  # JPEG includes MPO (phone photos)
TIFF_JPEG_COMPRESSIONS = (6, 7)  # TIFF tag 259: old-style JPEG, JPEG
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
    _check_decode_work(im, data, what)
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - truncated or corrupt pixel data, whatever the decoder raises
        raise ImageError(what, f"damaged or truncated image data ({_first_line(e)})") from None
    return im


def jpeg_scans(data: bytes, stop: int = MAX_JPEG_SCANS + 1) -> int:
    """The number of scans (SOS markers) of the first image in a JPEG stream, counted up to ``stop``.

    Marker segments are skipped by their lengths and a scan's entropy-coded data up to the next marker that is
    neither a stuffed byte (``FF 00``) nor a restart marker (``FF D0``-``D7``), as ITU-T T.81 (B.1.1.5, F.1.2.3)
    lays them out. Each scan makes the decoder visit every block of the image again, so the work of a decode is
    scans x pixels: a 16-byte progressive scan costs about 0.1 ms per megapixel here, and a 16 MB file of them
    over a 67-megapixel image would decode for hours. Encoders write few scans (libjpeg's progressive mode 10
    for colour, baseline 1 to 3); nvImageCodec refuses more than 256 by default since Cure53's audit of
    libjpeg-turbo (2016) showed this denial of service. ``MAX_JPEG_SCANS`` (64) bounds a decode at 64 passes.
    """
    i, n, scans = 2, len(data), 0
    while i + 4 <= n and scans < stop:
        if data[i] != 0xFF:
            break  # not a marker: damaged, and the decoder stops here too
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:
            scans += 1
            i = _end_of_entropy_data(data, i)
    return scans


def _end_of_entropy_data(data: bytes, i: int) -> int:
    """The offset of the marker that ends the entropy-coded data starting at ``i`` (``len(data)`` if none)."""
    while (j := data.find(b"\xff", i)) >= 0 and j + 1 < len(data):
        follower = data[j + 1]
        if follower != 0x00 and not 0xD0 <= follower <= 0xD7:
            return j
        i = j + 2
    return len(data)


def _check_decode_work(im: Image.Image, data: bytes, what: str) -> None:
    """Refuse, before decoding, a JPEG of more than ``MAX_JPEG_SCANS`` scans and a JPEG-compressed TIFF."""
    if im.format in ("JPEG", "MPO") and jpeg_scans(data) > MAX_JPEG_SCANS:
        raise ImageError(what, f"a JPEG of more than {MAX_JPEG_SCANS} scans; each scan is another pass over "
                               f"the whole image")
    if im.format == "TIFF" and getattr(im, "tag_v2", {}).get(259) in TIFF_JPEG_COMPRESSIONS:
        raise ImageError(what, "a TIFF of JPEG-compressed pixels (its JPEG scans are not counted); "
                               "save it as PNG or JPEG")


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
