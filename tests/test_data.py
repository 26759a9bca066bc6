import io
import json
import tarfile

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from cifar_files import (
    images,
    tar_gz,
    write_cifar10_parquet,
    write_cifar10_python,
    write_cifar100_python,
    write_parquet,
)
from PIL import Image

from cifarlab import CifarlabError
from cifarlab.data import BatchAugment, DeviceLoader, load_data, parquet, sources
from cifarlab.data.augment import CropFlip, Cutout, crop_flip, cutout, normalize, pad_images
from cifarlab.data.images import jpeg_scans
from cifarlab.data.meta import DATASETS
from cifarlab.data.synthetic import synthetic_dataset
from cifarlab.data.untrusted import describe


def test_synthetic_has_the_hub_schema():
    ds = synthetic_dataset(DATASETS["cifar100"], train=200, test=100, seed=3)
    assert set(ds) == {"train", "test"}
    f = ds["train"].features
    assert isinstance(f["img"], datasets.Image)
    assert f["fine_label"].names[:3] == ["apple", "aquarium_fish", "baby"] and f["fine_label"].num_classes == 100
    assert f["coarse_label"].num_classes == 20
    assert ds["train"][0]["img"].size == (32, 32)


def test_synthetic_is_seeded_and_stats_are_computed():
    a = load_data("cifar100", "synthetic:300:100:7")
    b = load_data("cifar100", "synthetic:300:100:7", use_cache=False)
    c = load_data("cifar100", "synthetic:300:100:8", use_cache=False)
    assert np.array_equal(a.train.images, b.train.images)
    assert not np.array_equal(a.train.images, c.train.images)
    assert a.stats_source == "computed from train split"
    assert a.mean != DATASETS["cifar100"].mean


def test_parquet_folder_with_train_shards(tmp_path):
    write_parquet(tmp_path / "pq", train=200, test=100, shards=2)
    d = load_data("cifar100", str(tmp_path / "pq"))
    assert d.split_sizes() == {"train": 200, "test": 100}
    assert d.train.images.shape == (200, 32, 32, 3) and d.train.images.dtype == np.uint8
    assert d.train.coarse is not None and d.coarse_classes[0] == "aquatic_mammals"
    assert d.mean == (0.5071, 0.4865, 0.4409) and d.std == (0.2673, 0.2564, 0.2762)
    assert d.kind == "parquet" and len(d.fingerprint) == 64


def test_parquet_row_groups_of_any_size_decode_in_order(tmp_path, monkeypatch):
    """Files written with several row groups (as large copies are: CIFAR-100's shards hold 5,000 images each) whose
    ends do not line up with the reader's batches: every image comes back, in order, with its label."""
    import pyarrow.parquet as pq
    from cifar_files import images

    from cifarlab.data import parquet

    folder = write_parquet(tmp_path / "one", train=50, test=20, shards=1)
    split = tmp_path / "groups"
    split.mkdir()
    for name in ("train-00000-of-00001.parquet", "test-00000-of-00001.parquet"):
        pq.write_table(pq.read_table(folder / name), split / name, row_group_size=7)
    assert pq.ParquetFile(split / "train-00000-of-00001.parquet").metadata.num_row_groups == 8
    monkeypatch.setattr(parquet, "BATCH_ROWS", 3)
    d = load_data("cifar100", str(split), use_cache=False)
    assert np.array_equal(d.train.images, images(50, seed=50)) and np.array_equal(d.test.images, images(20, seed=20))
    assert d.train.labels.tolist() == [i % 100 for i in range(50)]


def test_changed_source_is_detected_and_decoded_again(tmp_path):
    folder = write_parquet(tmp_path / "pq", train=100, test=100, shards=1)
    first = load_data("cifar100", str(folder))
    write_parquet(folder, train=100, test=100, shards=1, seed=1)  # same names, new pixels
    second = load_data("cifar100", str(folder))
    assert first.fingerprint != second.fingerprint
    assert not np.array_equal(first.train.images, second.train.images)


@pytest.mark.parametrize("archive", [False, True])
def test_cifar100_python_folder_and_tarball(tmp_path, archive):
    base = write_cifar100_python(tmp_path)
    src = tar_gz(base, tmp_path / "cifar-100-python.tar.gz") if archive else base
    d = load_data("cifar100", str(src))
    assert d.split_sizes() == {"train": 200, "test": 100}
    assert d.kind == "pickle"
    # the pickle stores CHW rows; the first image must come back as the HWC array written
    from cifar_files import images
    assert np.array_equal(d.train.images[0], images(200, seed=200)[0])
    assert d.test.coarse is not None


def test_cifar10_python_folder(tmp_path):
    d = load_data("cifar10", str(write_cifar10_python(tmp_path)))
    assert d.split_sizes() == {"train": 250, "test": 50}
    assert d.num_classes == 10 and d.classes[0] == "airplane"
    assert d.mean == (0.4914, 0.4822, 0.4465)


def test_cifar10_parquet_with_jpeg_images(tmp_path):
    folder = write_cifar10_parquet(tmp_path / "pq", train=60, test=20)
    d = load_data("cifar10", str(folder))
    assert d.split_sizes() == {"train": 60, "test": 20} and d.kind == "parquet"
    assert d.num_classes == 10 and d.classes[0] == "airplane"
    assert np.array_equal(d.train.labels, np.arange(60) % 10)
    stored = datasets.Dataset.from_parquet(str(folder / "test-00000-of-00001.parquet"))[3]["img"]
    assert stored.format == "JPEG" and np.array_equal(d.test.images[3], np.asarray(stored.convert("RGB")))


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("columns", "expected 'img' and 'fine_label'"),
    ("size", "32x32"),
    ("labels", "labels span 0..149"),
    ("empty_folder", "neither parquet files nor"),
    ("wrong_dataset", "CIFAR-100 pickles but --dataset is cifar10"),
])
def test_bad_input_gives_one_clear_error(tmp_path, case, match):
    src = {
        "missing": lambda: tmp_path / "nope",
        "columns": lambda: write_parquet(tmp_path / "c", train=20, test=20, shards=1, drop_label=True),
        "size": lambda: write_parquet(tmp_path / "s", train=20, test=20, shards=1, size=28),
        "labels": lambda: write_parquet(tmp_path / "l", train=150, test=20, shards=1, bad_labels=True),
        "empty_folder": lambda: (tmp_path / "e").mkdir() or tmp_path / "e",
        "wrong_dataset": lambda: write_cifar100_python(tmp_path),
    }[case]()
    with pytest.raises(CifarlabError, match=match) as e:
        load_data("cifar10" if case == "wrong_dataset" else "cifar100", str(src))
    assert "\n" not in str(e.value)


def test_unreachable_hub_says_how_to_pass_a_local_path():
    with pytest.raises(CifarlabError, match="--data /path/to/parquet-folder"):
        load_data("cifar100", "nobody-here/no-such-dataset")


def test_validation_split_is_stratified_disjoint_and_fixed():
    d = load_data("cifar100", "synthetic:1000:100", val_split=200)
    assert d.split_sizes() == {"train": 800, "test": 100, "val": 200}
    assert np.bincount(d.val.labels, minlength=100).tolist() == [2] * 100
    again = load_data("cifar100", "synthetic:1000:100", val_split=200)
    assert np.array_equal(d.val.images, again.val.images)
    full = load_data("cifar100", "synthetic:1000:100")
    rows = {r.tobytes() for r in full.train.images}
    assert {r.tobytes() for r in d.val.images} <= rows
    assert not {r.tobytes() for r in d.val.images} & {r.tobytes() for r in d.train.images}
    with pytest.raises(CifarlabError, match="multiple of the number of classes"):
        load_data("cifar100", "synthetic:1000:100", val_split=150)


def test_crop_flip_is_a_window_of_the_padded_image():
    x = torch.arange(2 * 32 * 32 * 3, dtype=torch.int64).reshape(2, 32, 32, 3) % 251
    xp = pad_images(x.to(torch.uint8), 4)
    g = torch.Generator().manual_seed(0)
    out = crop_flip(xp.repeat(50, 1, 1, 1), 4, True, g)
    windows = set()
    for i in range(out.shape[0]):
        src = xp[i % 2]
        hits = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                if torch.equal(out[i], src[dy:dy + 32, dx:dx + 32].flip(1) if f else src[dy:dy + 32, dx:dx + 32])]
        assert hits, "every output must be a (possibly mirrored) 32x32 window of the padded image"
        windows.add(hits[0])
    assert len(windows) > 20 and {w[2] for w in windows} == {0, 1}


def test_crop_flip_variants_are_uniform_and_cover_every_window():
    cf = CropFlip(4, hflip=True, vflip=True)
    assert cf.variants == 9 * 9 * 2 * 2
    windows = {tuple(t.tolist()) for t in cf.table}
    assert len(windows) == cf.variants, "every (offset, flip) combination is a distinct window"
    counts = torch.bincount(torch.randint(0, cf.variants, (200_000,), generator=torch.Generator().manual_seed(0)),
                            minlength=cf.variants).float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_crop_gathers_the_images_it_is_given_by_index():
    x = torch.arange(6 * 32 * 32 * 3, dtype=torch.int64).reshape(6, 32, 32, 3) % 251
    xp = pad_images(x.to(torch.uint8), 4).contiguous()
    idx = torch.tensor([5, 0, 5, 2])
    out = CropFlip(4, hflip=True)(xp, idx, torch.Generator().manual_seed(1))
    for o, i in zip(out, idx.tolist(), strict=True):  # the centre pixel of a 32x32 window of padded image i
        src = xp[i]
        assert any(torch.equal(o, src[dy:dy + 32, dx:dx + 32].flip(1) if f else src[dy:dy + 32, dx:dx + 32])
                   for dy in range(9) for dx in range(9) for f in (0, 1))


@pytest.mark.parametrize("size", [5, 8])
def test_cutout_zeroes_a_size_square_around_each_centre(size):
    keep = Cutout(size).keep
    assert keep.shape == (32 * 32, 32, 32)
    for c in range(32 * 32):
        cy, cx = divmod(c, 32)
        rows = (keep[c] == 0).any(1).nonzero().flatten()
        cols = (keep[c] == 0).any(0).nonzero().flatten()
        top, bottom, left, right = rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()
        box = keep[c][top:bottom + 1, left:right + 1]
        assert (box == 0).all() and (keep[c] == 0).sum() == box.numel(), "one axis-aligned rectangle"
        lo = cy - size // 2
        assert (top, bottom) == (max(lo, 0), min(lo + size, 32) - 1), (cy, cx)
        lo = cx - size // 2
        assert (left, right) == (max(lo, 0), min(lo + size, 32) - 1), (cy, cx)
    x = torch.ones(4, 3, 32, 32)
    out = cutout(x, size, torch.Generator().manual_seed(0))
    assert all(size * size // 4 <= (o[0] == 0).sum() <= size * size for o in out)
    assert torch.equal(out[:, 0], out[:, 2]), "the same square in every channel"


@pytest.mark.parametrize("size", [0, 8])
def test_normalising_the_split_once_equals_normalising_every_crop(size):
    d = load_data("cifar100", "synthetic:200:100")
    aug = BatchAugment(d.mean, d.std, 4, True, size)
    assert aug.prenormalized
    images = torch.from_numpy(d.train.images)
    idx = torch.randperm(200, generator=torch.Generator().manual_seed(3))[:64]
    fast = aug(aug.prepare(images), torch.Generator().manual_seed(7), idx)
    g = torch.Generator().manual_seed(7)
    slow = normalize(aug.crop(pad_images(images, 4).contiguous(), idx, g), aug.mean, aug.std)
    if size:
        slow = cutout(slow, size, g)
    assert torch.equal(fast, slow) and fast.is_contiguous(memory_format=torch.channels_last)


def test_device_loader_is_a_function_of_seed_and_epoch():
    d = load_data("cifar100", "synthetic:400:100")
    aug = BatchAugment(d.mean, d.std, 4, True, 8)
    a, b = (DeviceLoader(d.train, 64, d.mean, d.std, train=True, augment=aug, seed=5) for _ in range(2))
    a.set_epoch(3), b.set_epoch(3)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(4)
    assert not torch.equal(next(iter(b))[1], ya)
    assert len(a) == 400 // 64 and xa.shape == (64, 3, 32, 32)
    assert xa.is_contiguous(memory_format=torch.channels_last)


def test_shards_partition_each_epoch():
    d = load_data("cifar100", "synthetic:400:100")
    seen = []
    for rank in range(3):
        ld = DeviceLoader(d.train, 10, d.mean, d.std, train=True, seed=1, rank=rank, world_size=3)
        ld.set_epoch(2)
        list(ld)
        seen.append(set(ld.last_indices.tolist()))
    assert all(len(s) == 133 for s in seen)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_eval_loader_normalises_with_dataset_stats():
    d = load_data("cifar100", "synthetic:200:100")
    x, _ = next(iter(DeviceLoader(d.test, 100, d.mean, d.std)))
    manual = (torch.from_numpy(d.test.images[:100]).float() / 255 - torch.tensor(d.mean)) / torch.tensor(d.std)
    torch.testing.assert_close(x, manual.permute(0, 3, 1, 2))


# ------------------------------------------------------------------------- untrusted sources: bounds and schema


def _hub_dataset(monkeypatch, features: dict, columns: dict) -> str:
    """A Hub id whose ``datasets.load_dataset`` returns splits of ``columns`` declared as ``features`` (JSON)."""
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    ds = datasets.Dataset(pa.table(columns).replace_schema_metadata(meta))
    monkeypatch.setattr(datasets, "load_dataset", lambda repo_id: datasets.DatasetDict(train=ds, test=ds))
    return "someone/cifar100-copy"


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n"
IMAGES = pa.array([{"bytes": EPS, "path": None}], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
INT = {"_type": "Value", "dtype": "int64"}


@pytest.mark.parametrize("features, columns, match", [
    ({"img": {"_type": "List", "feature": {"_type": "Image"}}, "fine_label": INT},
     {"img": pa.array([IMAGES.to_pylist()], pa.list_(IMAGES.type)), "fine_label": [0]},
     "'img' column is declared as 'List' of 'Image'"),
    ({"img": {"_type": "Audio"}, "fine_label": INT}, {"img": IMAGES, "fine_label": [0]},
     "'img' column is declared as 'Audio'"),
    ({"img": {"_type": "Image"}, "fine_label": {"_type": "Image"}}, {"img": IMAGES, "fine_label": IMAGES},
     "'fine_label' column does not hold integer class labels"),
    ({"img": {"_type": "Image"}, "fine_label": {"_type": "Value", "dtype": "uint64"}},
     {"img": IMAGES, "fine_label": pa.array([2**64 - 1], pa.uint64())}, "it holds 'uint64'"),
], ids=["list of images", "audio", "label of images", "uint64 labels"])
def test_a_hub_dataset_is_checked_against_the_schema_before_anything_is_decoded(monkeypatch, features, columns,
                                                                                 match):
    """The ``datasets`` path too: a column declared as anything but the CIFAR schema never reaches a decoder."""
    repo = _hub_dataset(monkeypatch, features, columns)
    with pytest.raises(CifarlabError, match=match):
        load_data("cifar100", repo, use_cache=False)


def test_shared_images_are_decoded_once_per_value_and_land_on_their_rows(tmp_path):
    """Rows that share an image through the parquet dictionary get that image; error rows count across shards."""
    x = images(3, seed=5)
    blobs = [_png(im) for im in x]
    which = np.arange(300) % 3
    img = pa.StructArray.from_arrays([pa.DictionaryArray.from_arrays(pa.array(which, pa.int32()), pa.array(blobs)),
                                      pa.nulls(300, pa.string())], ["bytes", "path"])
    folder = tmp_path / "pq"
    folder.mkdir()
    table = pa.table({"img": img, "fine_label": pa.array(np.arange(300) % 100), "coarse_label": pa.array([0] * 300)})
    pq.write_table(table.slice(0, 200), folder / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(200), folder / "train-00001-of-00002.parquet")
    pq.write_table(table.slice(0, 100), folder / "test-00000-of-00001.parquet")
    d = load_data("cifar100", str(folder), use_cache=False)
    assert np.array_equal(d.train.images, x[which]) and np.array_equal(d.train.labels, np.arange(300) % 100)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    broken = pa.table({"img": pa.array([{"bytes": blobs[0], "path": None}] * 3 + [{"bytes": b"text", "path": None}],
                                       struct), "fine_label": pa.array([0] * 4), "coarse_label": pa.array([0] * 4)})
    pq.write_table(broken, folder / "train-00001-of-00002.parquet")
    with pytest.raises(CifarlabError, match="image 203 of the train split has an unusable image"):
        load_data("cifar100", str(folder), use_cache=False)


def _png(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "PNG")
    return buf.getvalue()


def test_the_image_limit_names_its_knob_and_can_be_raised(tmp_path, monkeypatch):
    folder = write_parquet(tmp_path / "pq", train=200, test=100, shards=1)
    monkeypatch.setenv("CIFARLAB_MAX_IMAGES", "150")
    with pytest.raises(CifarlabError, match="declares 200 images; cifarlab reads at most 150 a split .* "
                                            "set CIFARLAB_MAX_IMAGES to raise the limit"):
        load_data("cifar100", str(folder), use_cache=False)
    monkeypatch.setenv("CIFARLAB_MAX_IMAGES", "200")
    assert load_data("cifar100", str(folder), use_cache=False).split_sizes() == {"train": 200, "test": 100}
    monkeypatch.setenv("CIFARLAB_MAX_IMAGES", "lots")
    with pytest.raises(CifarlabError, match="CIFARLAB_MAX_IMAGES='lots' is not a positive number"):
        load_data("cifar100", str(folder), use_cache=False)


def test_a_data_folder_is_walked_within_a_bound_without_following_links(tmp_path, monkeypatch):
    folder = write_parquet(tmp_path / "pq", train=100, test=100, shards=1)
    (folder / "loop").symlink_to(folder)  # a link back up: followed, the walk would never end
    assert load_data("cifar100", str(folder), use_cache=False).split_sizes() == {"train": 100, "test": 100}
    for i in range(5):
        (folder / f"notes-{i}.txt").write_text("x")
    monkeypatch.setattr(sources, "MAX_FOLDER_ENTRIES", 6)
    with pytest.raises(CifarlabError, match="more than 6 files and folders; not a dataset folder"):
        load_data("cifar100", str(folder), use_cache=False)


def test_jpeg_scans_are_counted_as_encoders_write_them():
    """Baseline JPEG: one scan; libjpeg's progressive mode: 10 for colour, 6 for grey (the limit's reference)."""
    x = images(1, size=32)[0]
    counts = []
    for mode, progressive in (("RGB", False), ("RGB", True), ("L", True)):
        buf = io.BytesIO()
        Image.fromarray(x).convert(mode).save(buf, "JPEG", progressive=progressive)
        counts.append(jpeg_scans(buf.getvalue(), stop=10**6))
    assert counts == [1, 10, 6]


@pytest.mark.parametrize("value, shown", [
    ("x" * 10**6, "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (1,000,000 characters)"),
    (10**5000, "an integer of 16610 bits"),
    ([[]] * 3, "a list of 3 items"),
], ids=["long text", "huge integer", "list"])
def test_an_untrusted_value_is_described_without_its_repr(value, shown):
    assert describe(value) == shown


def test_a_self_doubling_list_is_described_in_constant_time():
    laughs: list = []
    for _ in range(200):
        laughs = [laughs, laughs]  # repr would print 2**200 lists
    assert describe(laughs) == "a list of 2 items"


def test_an_archive_with_a_long_member_name_extracts(tmp_path):
    """A PAX header of a legitimate size (a long path) passes the header scan."""
    base = write_cifar100_python(tmp_path / "src")
    (base / ("n" * 200)).write_bytes(b"x")
    path = tmp_path / "c.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.add(base, arcname=base.name)
    assert load_data("cifar100", str(path), use_cache=False).split_sizes() == {"train": 200, "test": 100}


@pytest.mark.parametrize("limit, match", [("MAX_CHUNK_BYTES", "bytes uncompressed; at most 1,000 are read"),
                                          ("MAX_METADATA_BYTES", "Hugging Face metadata of .* at most 1,000")])
def test_parquet_metadata_bounds_are_checked_before_the_data_is_read(tmp_path, monkeypatch, limit, match):
    folder = write_parquet(tmp_path / "pq", train=20, test=20, shards=1)
    monkeypatch.setattr(parquet, limit, 1000)
    with pytest.raises(CifarlabError, match=match):
        load_data("cifar100", str(folder), use_cache=False)
