"""Property-based fuzzing of the readers of untrusted bytes: CIFAR pickles, PNG and JPEG images, tar archives.

Valid files are mutated where their structure lives — pickle opcodes and their arguments, PNG chunk headers,
lengths and CRCs, JPEG segment lengths, frame sizes and scans, tar header fields and extended headers — not in
the pixel bytes. Each reader either returns a value of the right shape (checked: a loaded CIFAR pickle is N x 32
x 32 x 3 uint8 images and N labels, a decoded image has the size its header declares, an extracted archive holds
only files inside its folder) or raises :class:`cifarlab.CifarlabError` (one line), never another exception,
never runs code. Each test counts the outcomes it saw (also reported as hypothesis events) and fails unless
every branch it claims to fuzz was reached. Derandomised: the same examples on every run, a few seconds each.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import shutil
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cifar_files import images, write_cifar100_python
from hypothesis import HealthCheck, event, given, settings, strategies as st
from PIL import Image

from cifarlab import CifarlabError
from cifarlab.data import load_data
from cifarlab.data.images import jpeg_scans, open_image
from cifarlab.data.safe_pickle import PickleRefused, load_pickle
from cifarlab.data.sources import _pickle_split

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_PIXELS = 1 << 16  # the decoder's limit here: 256 x 256
INTERESTING = (0, 1, 2, 3, 4, 31, 32, 255, 256, 3072, 65535, 1 << 20, 2**31 - 1)


def reached(outcomes: Counter, claimed: set[str]) -> None:
    missing = claimed - set(outcomes)
    assert not missing, f"the fuzzing never reached {sorted(missing)} (saw {dict(outcomes)})"


def outcome(name: str, outcomes: Counter) -> None:
    event(name)
    outcomes[name] += 1


def one_line(e: CifarlabError) -> str:
    assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
    return str(e)


# -------------------------------------------------------------------------------------------------- pickles


def _cifar_pickle(protocol: int, str_keys: bool) -> bytes:
    x = images(4, size=32)
    d = {"data": x.transpose(0, 3, 1, 2).reshape(4, -1), "fine_labels": [np.int64(i) for i in range(4)],
         "coarse_labels": list(range(4)), "filenames": [b"a.png"] * 4}
    return pickle.dumps(d if str_keys else {k.encode(): v for k, v in d.items()}, protocol=protocol)


PICKLES = [_cifar_pickle(p, s) for p in (0, 2, 4, 5) for s in (False, True)]
REFUSED_GLOBALS = [b"cos\nsystem\n", b"cbuiltins\neval\n", b"\x8c\x02os\x8c\x06system\x93"]
# opcodes a mutation may insert: allowed globals, memo traffic, stack and container operations
PICKLE_OPS = [b"cnumpy\ndtype\n", b"c_codecs\nencode\n", b"h\x00", b"h\x01",
              b"q\x05", b"\x94", b"(", b"0", b"1", b"2", b"]", b"}", b")", b"e", b"s", b"u", b"t", b"\x85", b"\x86",
              b"R", b"b", b"N", b"K\x07", b"J\xff\xff\xff\xff", b"X\x02\x00\x00\x00O8", b"U\x02u1", b"."]


def _opcodes(data: bytes) -> list[bytes]:
    """The file cut at its opcode boundaries (pickletools.genops), each piece an opcode and its argument."""
    starts = [pos for _, _, pos in pickletools.genops(data)] + [len(data)]
    return [data[a:b] for a, b in zip(starts, starts[1:], strict=False)]


@st.composite
def mutated_pickles(draw) -> bytes:
    """A CIFAR pickle with its opcodes deleted, duplicated, swapped, inserted (a refused global among them),
    their arguments changed, or an entry's key renamed."""
    ops = _opcodes(draw(st.sampled_from(PICKLES)))
    for _ in range(draw(st.integers(1, 3))):
        i, j = draw(st.integers(0, len(ops) - 2)), draw(st.integers(0, len(ops) - 2))  # never the final STOP
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "argument", "global", "key"]))
        if kind == "delete":
            del ops[i]
        elif kind == "duplicate":
            ops.insert(i, ops[i])
        elif kind == "swap":
            ops[i], ops[j] = ops[j], ops[i]
        elif kind == "insert":
            ops.insert(i, draw(st.sampled_from(PICKLE_OPS)))
        elif kind == "global":
            ops.insert(i, draw(st.sampled_from(REFUSED_GLOBALS)))
        elif kind == "key":  # another name for an entry: b"data" or a label list goes missing
            keys = [k for k, op in enumerate(ops) if b"data" in op or b"labels" in op]
            k = draw(st.sampled_from(keys))
            ops[k] = ops[k].replace(b"data", b"dat_").replace(b"labels", b"label_")
        elif len(ops[i]) > 1:  # an argument: a length, a memo index, an integer, a dtype code
            at = draw(st.integers(1, min(len(ops[i]) - 1, 8)))
            ops[i] = ops[i][:at] + bytes([draw(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF]))]) + ops[i][at + 1:]
    return b"".join(ops)


def _read_pickle(folder: Path, data: bytes) -> str:
    path = folder / "fuzzed"
    path.write_bytes(data)
    try:
        x, labels = _pickle_split(path, [b"fine_labels", b"coarse_labels"])
    except PickleRefused as e:
        return "refused global" if "refused to load the global" in one_line(e) else "refused numpy object"
    except CifarlabError as e:
        return "damaged" if "not a CIFAR python pickle" in one_line(e) else "not CIFAR"
    finally:
        assert [p.name for p in folder.iterdir()] == ["fuzzed"], "nothing else may be written"
    n = len(x)
    assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
    assert len(labels) == 2 and all(y.shape == (n,) and y.dtype == np.int64 for y in labels)
    return "loaded"


def test_the_seed_files_read(tmp_path):
    """The unmutated files load: the fuzzing starts from files the readers accept."""
    for data in PICKLES:
        (tmp_path / "p").write_bytes(data)
        x, (fine, coarse) = _pickle_split(tmp_path / "p", [b"fine_labels", b"coarse_labels"])
        assert x.shape == (4, 32, 32, 3) and fine.tolist() == coarse.tolist() == [0, 1, 2, 3]
    for data in PNGS + JPEGS:
        assert open_image(data).size == (16, 16)


def test_mutated_cifar_pickles(tmp_path):
    outcomes: Counter = Counter()

    @FUZZ
    @given(data=mutated_pickles())
    def run(data):
        outcome(_read_pickle(tmp_path, data), outcomes)

    run()
    reached(outcomes, {"loaded", "refused global", "refused numpy object", "damaged", "not CIFAR"})


def test_refused_global_is_named_before_it_runs(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return print, ("ran",)

    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(CifarlabError, match="refused to load the global builtins.print"):
        load_pickle(tmp_path / "evil")
    assert "ran" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------- images


def _encoded(fmt: str, mode: str = "RGB", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(images(1, size=16)[0]).convert(mode).save(buf, fmt, **options)
    return buf.getvalue()


PNGS = [_encoded("PNG"), _encoded("PNG", "L"), _encoded("PNG", "P")]
JPEGS = [_encoded("JPEG"), _encoded("JPEG", progressive=True), _encoded("JPEG", "L", progressive=True)]
SIZES = st.one_of(st.integers(0, 600), st.sampled_from([20000, 65535, 1 << 20, 2**31 - 1]))


def _chunks(png: bytes) -> list[list[bytes]]:
    """[length, type, data, crc] of each chunk after the signature."""
    out, i = [], 8
    while i < len(png):
        n = struct.unpack(">I", png[i:i + 4])[0]
        out.append([png[i:i + 4], png[i + 4:i + 8], png[i + 8:i + 8 + n], png[i + 8 + n:i + 12 + n]])
        i += 12 + n
    return out


@st.composite
def mutated_pngs(draw) -> bytes:
    """A PNG whose chunks are dropped, duplicated or swapped, whose IHDR declares another size, whose length
    fields or CRCs are wrong, whose image data is cut."""
    chunks = _chunks(draw(st.sampled_from(PNGS)))
    for _ in range(draw(st.integers(1, 2))):
        i, j = draw(st.integers(0, len(chunks) - 1)), draw(st.integers(0, len(chunks) - 1))
        kind = draw(st.sampled_from(["size", "size", "drop", "duplicate", "swap", "length", "cut data"]))
        if kind == "size":
            ihdr = chunks[0]
            ihdr[2] = struct.pack(">II", draw(SIZES), draw(SIZES)) + ihdr[2][8:]
        elif kind == "drop" and len(chunks) > 1:
            del chunks[i]
        elif kind == "duplicate":
            chunks.insert(i, list(chunks[i]))
        elif kind == "swap":
            chunks[i], chunks[j] = chunks[j], chunks[i]
        elif kind == "length":
            chunks[i][0] = struct.pack(">I", draw(st.sampled_from(INTERESTING)))
        else:
            chunks[i][2] = chunks[i][2][:draw(st.integers(0, len(chunks[i][2])))]
    fix_crc = draw(st.booleans())
    for c in chunks:
        if fix_crc:
            c[0], c[3] = struct.pack(">I", len(c[2])), struct.pack(">I", zlib.crc32(c[1] + c[2]))
    return b"\x89PNG\r\n\x1a\n" + b"".join(b"".join(c) for c in chunks)


def _segments(jpeg: bytes) -> list[bytes]:
    """The JPEG cut into marker segments (a scan's segment running to the end of its entropy-coded data),
    the start-of-image marker first and everything from the end-of-image marker last."""
    out, i = [jpeg[:2]], 2
    while i + 4 <= len(jpeg) and jpeg[i + 1] != 0xD9:
        j = i + 2 + int.from_bytes(jpeg[i + 2:i + 4], "big")
        while jpeg[i + 1] == 0xDA and j + 1 < len(jpeg) and not (
                jpeg[j] == 0xFF and jpeg[j + 1] not in (0, *range(0xD0, 0xD8))):
            j += 1
        out.append(jpeg[i:j])
        i = j
    return out + [jpeg[i:]]


@st.composite
def mutated_jpegs(draw) -> bytes:
    """A JPEG whose segments are dropped or repeated (a scan up to 100 times), whose frame header declares
    another size, whose segment lengths are wrong, whose scans are cut."""
    segs = _segments(draw(st.sampled_from(JPEGS)))
    for _ in range(draw(st.integers(1, 2))):
        i = draw(st.integers(1, len(segs) - 2))
        kind = draw(st.sampled_from(["size", "repeat scan", "repeat scan", "drop", "length", "cut"]))
        if kind == "size":
            sof = next(k for k, s in enumerate(segs) if s[1:2] in (b"\xc0", b"\xc2"))
            segs[sof] = segs[sof][:5] + struct.pack(">HH", draw(SIZES) % 65536, draw(SIZES) % 65536) + segs[sof][9:]
        elif kind == "repeat scan":
            scan = next(k for k, s in reversed(list(enumerate(segs))) if s[1:2] == b"\xda")
            segs[scan:scan + 1] = [segs[scan]] * draw(st.integers(2, 100))
        elif kind == "drop":
            del segs[i]
        elif kind == "length":
            segs[i] = segs[i][:2] + struct.pack(">H", draw(st.sampled_from(INTERESTING)) % 65536) + segs[i][4:]
        else:
            segs[i] = segs[i][:draw(st.integers(0, len(segs[i])))]
    return b"".join(segs)


def _decode(data: bytes) -> str:
    try:
        im = open_image(data, max_pixels=MAX_PIXELS)
    except CifarlabError as e:
        message = one_line(e)
        return next((name for fragment, name in (
            ("pixels; at most", "pixel limit"), ("decompression bomb", "Pillow's pixel limit"),
            ("scans", "scan limit"), ("damaged image header", "damaged header"),
            ("truncated image data", "damaged data"), ("not an image", "not an image")) if fragment in message),
            "other refusal")
    w, h = im.size
    assert w * h <= MAX_PIXELS
    assert np.asarray(im.convert("RGB")).shape == (h, w, 3), "decoded to the size its header declares"
    return "decoded"


def test_mutated_pngs(tmp_path):
    outcomes: Counter = Counter()

    @FUZZ
    @given(data=mutated_pngs())
    def run(data):
        outcome(_decode(data), outcomes)

    run()
    reached(outcomes, {"decoded", "pixel limit", "Pillow's pixel limit", "damaged header", "damaged data",
                       "not an image"})


def test_mutated_jpegs(tmp_path):
    outcomes: Counter = Counter()

    @FUZZ
    @given(data=mutated_jpegs())
    def run(data):
        result = _decode(data)
        assert result != "decoded" or jpeg_scans(data) <= 64, "a JPEG of too many scans was decoded"
        outcome(result, outcomes)

    run()
    reached(outcomes, {"decoded", "pixel limit", "scan limit", "damaged header", "damaged data"})


# ------------------------------------------------------------------------------------------------- archives


def _seed_tar(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(write_cifar100_python(root, train=20, test=10), arcname="cifar-100-python")
    return buf.getvalue()


def _headers(tar: bytes) -> list[int]:
    """The offsets of the member header blocks of a valid archive."""
    offsets, i = [], 0
    while i + 512 <= len(tar) and tar[i:i + 512].count(0) != 512:
        offsets.append(i)
        size = int(tar[i + 124:i + 136].split(b"\0")[0] or b"0", 8)
        i += 512 + (-(-size // 512) * 512 if tar[i + 156:i + 157] in (b"0", b"\0") else 0)
    return offsets


def _checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


@st.composite
def mutated_tars(draw, seed: bytes) -> bytes:
    """A tar of a cifar-100-python folder whose member headers get another size, type, name or link (with the
    checksum fixed or not), an extended header (PAX, GNU long name) inserted before one, or the archive cut."""
    tar = bytearray(seed)
    at = draw(st.sampled_from(_headers(seed)))
    kind = draw(st.sampled_from(["size", "type", "type", "name", "extended header", "cut", "none"]))
    header = tar[at:at + 512]
    if kind == "size":
        size = draw(st.sampled_from([0, 1, 511, 513, 1 << 20, 5 << 30, 1 << 40]))
        header[124:136] = b"%011o\0" % size if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    elif kind == "type":
        header[156:157] = draw(st.sampled_from([b"1", b"2", b"1", b"2", b"S", b"S", b"3", b"4", b"5", b"6", b"7",
                                                b"V"]))
        link = draw(st.sampled_from([b"/etc/passwd", b"../../x", b"cifar-100-python/meta"]))
        header[157:257] = link.ljust(100, b"\0")
    elif kind == "name":
        name = draw(st.sampled_from([b"../x", b"/abs/x", b"cifar-100-python/../../x", b"cifar-100-python/x" * 6]))
        header[0:100] = name[:100].ljust(100, b"\0")
    if draw(st.integers(0, 4)):  # mostly a valid checksum, so the header is read
        _checksum(header)
    tar[at:at + 512] = header
    if kind == "extended header":
        ext = bytearray(tarfile.TarInfo("ext").tobuf(format=tarfile.GNU_FORMAT))
        ext[156:157] = draw(st.sampled_from([b"x", b"g", b"L", b"K"]))
        size = draw(st.sampled_from([16, 600, 9000, 1 << 24]))
        ext[124:136] = b"%011o\0" % size
        _checksum(ext)
        body = b"1 a=\n".ljust(min(size, 1 << 14), b"\0")
        tar[at:at] = ext + body.ljust(-(-len(body) // 512) * 512, b"\0")
    if kind == "cut":
        tar = tar[:draw(st.integers(0, len(tar)))]
    return bytes(tar)


TAR_OUTCOMES = (("it is a link", "link"), ("device, pipe", "device"), ("leaves the extraction folder", "path out"),
                ("more than 4,294,967,296 bytes", "size limit"), ("larger than 8,192", "extended header limit"),
                ("sparse file", "sparse"), ("disagree", "headers disagree"), ("cannot extract", "unreadable"))


def _load_tar(path: Path, cache: Path) -> str:
    try:
        data = load_data("cifar100", str(path), use_cache=False)
    except CifarlabError as e:
        message = one_line(e)
        return next((name for fragment, name in TAR_OUTCOMES if fragment in message), "not a CIFAR folder")
    finally:
        for p in cache.rglob("*"):
            assert not p.is_symlink() and (p.is_file() or p.is_dir()), f"extracted {p}"
            assert p.resolve().is_relative_to(cache.resolve())
    for split in (data.train, data.test):
        assert split.images.shape == (len(split), 32, 32, 3) and split.images.dtype == np.uint8
        assert split.labels.shape == split.coarse.shape == (len(split),)
    return "loaded"


def test_mutated_tar_archives(tmp_path, monkeypatch):
    seed = _seed_tar(tmp_path / "seed")
    cache, work = tmp_path / "cache", tmp_path / "work"
    monkeypatch.setenv("CIFARLAB_CACHE", str(cache))
    outcomes: Counter = Counter()

    @FUZZ
    @given(data=mutated_tars(seed))
    def run(data):
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        (work / "c.tar").write_bytes(data)
        outcome(_load_tar(work / "c.tar", cache), outcomes)
        assert sorted(os.listdir(work)) == ["c.tar"], "nothing may be written beside the archive"

    run()
    reached(outcomes, {"loaded", "link", "device", "path out", "size limit", "extended header limit", "sparse",
                       "unreadable", "not a CIFAR folder"})
