"""Extract a CIFAR archive (``.tar.gz``, ``.tgz``, ``.tar``) into the cache without trusting its headers.

``tarfile`` reads a member's extended header (a PAX record, a GNU long name or long link name) into memory whole
before its caller sees the member, and keeps every header it has read: a small gzip of zeros can declare an
extended header of gigabytes, or a million members. So the archive's raw 512-byte header blocks are scanned first,
through the decompressor in bounded reads (:func:`scan_headers`), and it is refused when an extended header is
larger than ``MAX_EXTENDED_HEADER``, a member is sparse, the members are more than ``MAX_MEMBERS`` or their data
more than ``MAX_EXTRACTED_BYTES``. Only then does ``tarfile`` extract it, member by member: each member must be
the one the scan saw at the same place and of the same size (so ``tarfile`` never reads a header the scan did not
bound), only plain files and folders inside the extraction folder (``tarfile``'s ``data`` filter applies as well),
into a temporary folder renamed into place when complete; a refused archive leaves nothing.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .. import CifarlabError
from ..io import sha256_file
from .untrusted import describe, summary

MAX_EXTRACTED_BYTES = 4 << 30  # CIFAR-100 extracts to 0.2 GB
MAX_EXTENDED_HEADER = 8192  # a PAX record or GNU long name of a path up to PATH_MAX (4096) and a few fields
MAX_MEMBERS = 1000  # cifar-100-python has 5, cifar-10-batches-py 9
BLOCK = 512
EXTENDED = {b"x": "PAX header", b"X": "PAX header", b"g": "PAX global header", b"L": "GNU long name",
            b"K": "GNU long link name"}
DATA_TYPES = (b"0", b"\0", b"7", *EXTENDED)  # types whose data follows the header (tarfile skips unknown types' too)
KNOWN_TYPES = (b"1", b"2", b"3", b"4", b"5", b"6", b"S", *DATA_TYPES)
PAX_KINDS = (b"x", b"X", b"g")
PAX_RECORD = re.compile(rb"(\d{1,20}) ([^=]+)=")  # as tarfile parses PAX records, lengths of 20 digits at most
COMPRESSIONS = ((b"\x1f\x8b", "gz", gzip.open), (b"BZh", "bz2", bz2.open), (b"\xfd7zXZ\x00", "xz", lzma.open))


def _number(field: bytes) -> int | None:
    """A header's numeric field: octal digits, or base-256 when its first byte has the high bit (GNU, star)."""
    if field[:1] and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) * (field[0] == 0xFF) if field[0] in (0x80, 0xFF) else None
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        return None


def _valid(header: bytes) -> bool:
    """The header's checksum matches (unsigned or signed bytes, as tarfile accepts)."""
    stored = _number(header[148:156])
    blanked = header[:148] + b" " * 8 + header[156:]
    return stored in (sum(blanked), sum(b - 256 if b > 127 else b for b in blanked))


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """The keyword-value records of a PAX header, parsed as ``tarfile`` parses them."""
    records, pos = {}, 0
    while (match := PAX_RECORD.match(data, pos)) and int(match[1]) > 0:
        records[match[2]] = data[match.end(2) + 1:match.start(1) + int(match[1]) - 1]
        pos += int(match[1])
    return records


def _pax_size(records: dict[bytes, bytes]) -> int | None:
    if b"size" not in records:
        return None
    try:
        return int(records[b"size"])
    except ValueError:
        return 0  # as tarfile reads a number it cannot parse


def _skip(stream: BinaryIO, size: int) -> bool:
    """Read past ``size`` bytes in steps of at most 1 MiB; False when the stream ends first."""
    while size > 0:
        got = len(stream.read(min(size, 1 << 20)))
        if not got:
            return False
        size -= got
    return True


def scan_headers(stream: BinaryIO, archive: Path) -> list[tuple[int, int]]:
    """(data offset, size) of each member, as ``tarfile`` will see them (a PAX ``size`` record included), read
    from the raw header blocks of the decompressed ``stream``; it stops where ``tarfile`` stops (an empty or
    invalid block). Refused when an extended header, the members or their data are larger than the bounds, or
    a member is sparse."""
    members: list[tuple[int, int]] = []
    offset = total = 0
    pax: dict[bytes, bytes] = {}  # the records that apply to the next member (after a PAX header)
    global_pax: dict[bytes, bytes] = {}  # the records of PAX global headers (a PAX header starts from them)
    while len(header := stream.read(BLOCK)) == BLOCK and header.count(0) != BLOCK and _valid(header):
        kind, size = header[156:157], _number(header[124:136])
        if size is None or size < 0:
            break
        offset += BLOCK
        if kind in EXTENDED and size > MAX_EXTENDED_HEADER:
            raise CifarlabError(f"{archive}: refused to extract a {EXTENDED[kind]} of {size:,} bytes (larger than "
                                f"{MAX_EXTENDED_HEADER:,}); not a CIFAR archive")
        if kind not in EXTENDED:
            size = size if _pax_size(pax) is None else _pax_size(pax)
            members.append((offset, size))
            pax = {}
        if kind == b"S" or len(members) > MAX_MEMBERS:
            raise CifarlabError(f"{archive}: refused to extract " + ("a sparse file" if kind == b"S" else
                                f"more than {MAX_MEMBERS:,} members") + "; not a CIFAR archive")
        directory = kind == b"\0" and header[:100].split(b"\0", 1)[0].endswith(b"/")
        if directory or kind in KNOWN_TYPES and kind not in DATA_TYPES:
            continue  # tarfile reads no data after a folder, link or device header
        total += size
        if total > MAX_EXTRACTED_BYTES:
            raise CifarlabError(f"{archive}: refused to extract more than {MAX_EXTRACTED_BYTES:,} bytes; "
                                f"not a CIFAR archive")
        padded = -(-size // BLOCK) * BLOCK
        if kind in EXTENDED:  # at most MAX_EXTENDED_HEADER: read, for its PAX records
            records = _pax_records(stream.read(padded)) if kind in PAX_KINDS else {}
            if any(key.startswith(b"GNU.sparse.") for key in records):
                raise CifarlabError(f"{archive}: refused to extract a sparse file; not a CIFAR archive")
            if kind == b"g":
                global_pax.update(records)
            elif records:
                pax = {**global_pax, **records}
        elif not _skip(stream, padded):
            break
        offset += padded
    return members


def _check_member(member: tarfile.TarInfo, root: Path, archive: Path) -> None:
    """Only plain files and folders, inside ``root``: no absolute paths, no ``..``, no links, no devices."""
    name = PurePosixPath(member.name)
    if not (member.isfile() or member.isdir()) or member.issparse():
        kind = ("a link" if member.issym() or member.islnk() else "a sparse file" if member.issparse()
                else "a device, pipe or other special file")
        raise CifarlabError(f"{archive}: refused to extract {describe(member.name, 100)}: it is {kind}")
    if name.is_absolute() or ".." in name.parts or not (root / name).resolve().is_relative_to(root.resolve()):
        raise CifarlabError(f"{archive}: refused to extract {describe(member.name, 100)}: its path leaves the "
                            f"extraction folder")


def _decompressed(f: BinaryIO) -> tuple[str, BinaryIO]:
    """``tarfile``'s name of the archive's compression (by its magic bytes) and a stream of its tar bytes."""
    magic = f.read(6)
    f.seek(0)
    return next(((name, opener(f)) for prefix, name, opener in COMPRESSIONS if magic.startswith(prefix)), ("", f))


def _extract_into(f: BinaryIO, tmp: Path, archive: Path) -> None:
    name, stream = _decompressed(f)
    members = scan_headers(stream, archive)
    f.seek(0)
    total = 0
    with tarfile.open(fileobj=f, mode=f"r:{name}") as tar:
        for k, member in enumerate(tar):
            if k >= len(members) or members[k] != (member.offset_data, member.size):
                raise CifarlabError(f"{archive}: refused to extract {describe(member.name, 100)}: its headers "
                                    f"disagree on where it is or how large; not a CIFAR archive")
            _check_member(member, tmp, archive)
            total += member.size
            if total > MAX_EXTRACTED_BYTES:
                raise CifarlabError(f"{archive}: refused to extract more than {MAX_EXTRACTED_BYTES:,} bytes; "
                                    f"not a CIFAR archive")
            tar.extract(member, tmp, filter="data")


def extract_tar(path: Path, cache: Path) -> Path:
    """The archive's contents, extracted once into ``cache / sha256-prefix`` (a replaced archive is extracted
    again); refused with one line, leaving nothing, when it is not a plain CIFAR archive within the bounds."""
    dest = cache / sha256_file(path)[:16]
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with open(path, "rb") as f:
            _extract_into(f, tmp, path)
        (tmp / ".complete").touch()
        shutil.rmtree(dest, ignore_errors=True)  # left by an older, interrupted extraction
        tmp.rename(dest)
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as e:
        raise CifarlabError(f"{path}: cannot extract ({summary(e)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
