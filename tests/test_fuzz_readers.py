"""Property-based fuzzing of the readers of untrusted bytes: the CIFAR pickle reader and the image decoder.

Random bytes and valid files with bytes replaced, inserted or cut off: each reader either returns a value
of its kind or raises :class:`cifarlab.CifarlabError` (one line), never another exception, never runs code.
Derandomised (the same examples on every run) and a few hundred examples each, about half a minute in all.
"""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from cifar_files import images
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from cifarlab import CifarlabError
from cifarlab.data.images import open_image
from cifarlab.data.safe_pickle import load_pickle
from cifarlab.data.sources import _pickle_split

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _cifar_pickle(protocol: int, str_keys: bool) -> bytes:
    x = images(4, size=32)
    d = {"data": x.transpose(0, 3, 1, 2).reshape(4, -1), "fine_labels": [np.int64(i) for i in range(4)],
         "coarse_labels": list(range(4)), "filenames": [b"a.png"] * 4}
    return pickle.dumps(d if str_keys else {k.encode(): v for k, v in d.items()}, protocol=protocol)


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(images(1, size=16)[0]).save(buf, fmt)
    return buf.getvalue()


PICKLES = [_cifar_pickle(p, s) for p in (0, 2, 4, 5) for s in (False, True)]
IMAGES = [_image(f) for f in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A valid file with a few bytes replaced, a run of bytes inserted, and possibly cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=16))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def test_the_seed_files_read(tmp_path):
    """The unmutated files load: the fuzzing starts from files the readers accept."""
    for data in PICKLES:
        (tmp_path / "p").write_bytes(data)
        x, (fine, coarse) = _pickle_split(tmp_path / "p", [b"fine_labels", b"coarse_labels"])
        assert x.shape == (4, 32, 32, 3) and fine.tolist() == coarse.tolist() == [0, 1, 2, 3]
    for data in IMAGES:
        assert open_image(data).size == (16, 16)


def _read_pickle(folder, data: bytes) -> None:
    path = folder / "fuzzed"
    path.write_bytes(data)
    try:
        _pickle_split(path, [b"fine_labels", b"coarse_labels"])
    except CifarlabError as e:
        assert "\n" not in str(e)
    assert [p.name for p in folder.iterdir()] == ["fuzzed"]  # nothing else written


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_as_a_cifar_pickle(folder, data):
    _read_pickle(folder, data)


@FUZZ
@given(data=mutated(PICKLES))
def test_mutated_cifar_pickles(folder, data):
    _read_pickle(folder, data)


def test_refused_global_is_named_before_it_runs(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return print, ("ran",)

    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(CifarlabError, match="refused to load the global builtins.print"):
        load_pickle(tmp_path / "evil")
    assert "ran" not in capsys.readouterr().out


def _decode(data: bytes) -> None:
    try:
        im = open_image(data, max_pixels=1 << 16)
    except CifarlabError as e:
        assert "\n" not in str(e)
    else:
        assert im.size[0] * im.size[1] <= 1 << 16
        np.asarray(im.convert("RGB"))


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_as_an_image(data):
    _decode(data)


@FUZZ
@given(data=mutated(IMAGES))
def test_mutated_images(data):
    _decode(data)
