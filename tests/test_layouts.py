"""Every data layout read from disk, on tiny fixtures in the exact formats (tests/fixtures/make_fixtures.py), and the
on-disk pixel store: same pixels, episodes and fingerprint whether images are in RAM or read from disk."""
import io
import json
import pickle
import shutil
import zipfile
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from conftest import FIXTURES
from fixtures import make_fixtures as mk

from benchmark.data import (
    DataError,
    DiskImages,
    FewShotDataset,
    load_cifar_fs,
    load_cub,
    load_fc100,
    load_miniimagenet,
    load_tieredimagenet,
)
from benchmark.data.__main__ import main as check_main
from benchmark.data.dataset import SPLITS, split_file, train_normalisation
from benchmark.kit.episodes import TaskSampler

TIERED = FIXTURES / "tieredimagenet"
CUB = FIXTURES / "cub"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """The pixel cache goes to a temporary folder: tests never write into tests/fixtures."""
    monkeypatch.setenv("BENCHMARK_DATA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def check(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = check_main(list(map(str, args)))
    return rc, out.getvalue(), err.getvalue()


def _assert_pixels(ds, split, si):
    """Image k of class c in split si is mk.pixels(si, c, k) (RGB, marker top-left) up to JPEG/resize error."""
    sp = ds.splits[split]
    for c in (0, len(sp) - 1):
        x = ds.images[sp.members[c][:1]][0].astype(int)
        assert x.shape == (84, 84, 3)
        np.testing.assert_allclose(x[40:, 40:].mean(axis=(0, 1)), mk.pixels(si, c, 0)[50, 50], atol=3)
        assert x[0, 0, 0] > 200 and x[0, 0, 1] < 60  # the marker, in RGB order, top-left


@pytest.mark.parametrize("layout", ["png", "npz"])
def test_tiered_layouts(layout, cache):
    ds = load_tieredimagenet(TIERED / layout)
    assert [len(ds.splits[s]) for s in SPLITS] == [351, 97, 160]
    assert ds.info["super-categories"] == {"train": 20, "val": 6, "test": 8}
    assert ds.images.shape == (1216, 84, 84, 3) and ds.image_shape == (3, 84, 84)
    for si, s in enumerate(SPLITS):
        _assert_pixels(ds, s, si)
        assert ds.splits[s].names == split_file("tieredimagenet", f"{s}.txt").split()
    ep = TaskSampler(ds, "train", 0).episode(3, 5, 1, 1)
    assert ep.support_x.shape == (5, 3, 84, 84)


def test_tiered_png_and_npz_give_the_same_dataset():
    a, b = load_tieredimagenet(TIERED / "png"), load_tieredimagenet(TIERED / "npz")
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))  # npz is BGR, given back as RGB
    assert a.fingerprint == b.fingerprint and a.mean == b.mean and a.std == b.std


def test_stored_npz_is_read_in_place(tmp_path, cache):
    root = tmp_path / "stored"
    shutil.copytree(TIERED / "npz", root)
    for s in SPLITS:
        with np.load(root / f"{s}_images.npz") as z:
            arr = z["images"]
        np.savez(root / f"{s}_images.npz", images=arr)  # np.savez stores the member uncompressed
    ds = load_tieredimagenet(root)
    assert all(p.path.endswith("_images.npz") for p in ds.images.parts)
    assert not cache.exists() or not list(cache.glob("*.u8"))
    assert ds.fingerprint == load_tieredimagenet(TIERED / "png").fingerprint


def test_fingerprint_and_episodes_same_in_ram_and_on_disk():
    disk = load_tieredimagenet(TIERED / "png")
    ram = FewShotDataset(disk.name, np.asarray(disk.images), disk.splits, disk.mean, disk.std)
    assert isinstance(ram.images, np.ndarray)
    assert ram.fingerprint == disk.fingerprint
    a = TaskSampler(disk, "val", 1).episode(7, 5, 1, 1)
    b = TaskSampler(ram, "val", 1).episode(7, 5, 1, 1)
    assert (a.support_x == b.support_x).all() and (a.query_x == b.query_x).all()
    assert train_normalisation(ram.images, ram.splits["train"].members) == (disk.mean, disk.std)


def test_disk_images_index_like_an_array(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (50, 5, 4, 3), dtype=np.uint8)
    (tmp_path / "x.u8").write_bytes(b"hdr" + x.tobytes())
    d = DiskImages(tmp_path / "x.u8", x.shape, offset=3)
    idx = np.array([7, 3, 49, 3])
    np.testing.assert_array_equal(d[idx], x[idx])
    np.testing.assert_array_equal(d[5:9], x[5:9])
    np.testing.assert_array_equal(d[-1], x[-1])
    np.testing.assert_array_equal(DiskImages(tmp_path / "x.u8", x.shape, 3, bgr=True)[idx], x[idx][..., ::-1])
    with pytest.raises(DataError, match="truncated"):
        DiskImages(tmp_path / "x.u8", (51, 5, 4, 3), offset=3)


def test_cache_is_written_once(cache):
    load_tieredimagenet(TIERED / "png")
    files = sorted(cache.glob("*.u8"))
    stamps = [f.stat().st_mtime_ns for f in files]
    load_tieredimagenet(TIERED / "png")
    assert len(files) == 3 and [f.stat().st_mtime_ns for f in files] == stamps
    assert not list(cache.glob(".*tmp"))


def test_png_pickle_of_plain_bytes(tmp_path):
    """A Python 3 re-pickle holding bytes rather than arrays loads to the same pixels."""
    root = tmp_path / "t"
    shutil.copytree(TIERED / "png", root)
    with open(root / "val_images_png.pkl", "rb") as fh:
        items = pickle.load(fh, encoding="bytes")
    (root / "val_images_png.pkl").write_bytes(pickle.dumps([bytes(i) for i in items], protocol=4))
    assert load_tieredimagenet(root).fingerprint == load_tieredimagenet(TIERED / "png").fingerprint


@pytest.mark.parametrize("split,sizes", [("100-50-50", [100, 50, 50]), ("140-30-30", [140, 30, 30])])
def test_cub_splits(split, sizes):
    ds = load_cub(CUB, split)
    assert [len(ds.splits[s]) for s in SPLITS] == sizes and ds.images.shape == (400, 84, 84, 3)
    names = [set(ds.splits[s].names) for s in SPLITS]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert len(set().union(*names)) == 200
    everything = mk.cub_classes()
    sp = ds.splits["train"]
    c = everything.index(sp.names[0])
    x = ds.images[sp.members[0][:1]][0].astype(int)
    np.testing.assert_allclose(x[40:, 40:].mean(axis=(0, 1)), mk.pixels(0, c, 0)[30, 30], atol=4)


def test_cub_default_split_is_chen_et_al():
    """Chen et al. 2019 (write_CUB_filelist.py): sorted class folders, base i%2==0, val i%4==1, novel i%4==3."""
    from benchmark.data import DATASETS

    assert DATASETS["cub"].default_split == "100-50-50"
    allc = mk.cub_classes()
    rule = {"train": allc[0::2], "val": allc[1::4], "test": allc[3::4]}
    assert {s: split_file("cub", "100-50-50", f"{s}.txt").split() for s in SPLITS} == rule


def test_mini_pickles(tmp_path):
    mk.write_mini_pickles(tmp_path / "mini", per_class=2)
    ds = load_miniimagenet(tmp_path / "mini")
    assert [len(ds.splits[s]) for s in SPLITS] == [64, 16, 20] and ds.images.shape == (200, 84, 84, 3)
    for si, s in enumerate(SPLITS):
        _assert_pixels(ds, s, si)
    assert ds.info["layout"]["train"].startswith("pickle")


def test_cifar_pickles(tmp_path):
    fs = {s: split_file("cifar-fs", f"{s}.txt").split() for s in SPLITS}
    mk.write_cifar_pickles(tmp_path / "fs", "CIFAR_FS", fs, per_class=2)
    ds = load_cifar_fs(tmp_path / "fs")
    assert [len(ds.splits[s]) for s in SPLITS] == [64, 16, 20] and ds.image_shape == (3, 32, 32)
    fine = mk.cifar_fine_names()
    c = fine.index(ds.splits["test"].names[3])
    assert ds.images[ds.splits["test"].members[3][0]][10, 10, 0] == c % 251
    coarse = json.loads(split_file("fc100", "fine_to_coarse.json"))
    fc = {s: sorted(f for f, g in coarse.items() if g in json.loads(split_file("fc100", f"{s}.json"))) for s in SPLITS}
    mk.write_cifar_pickles(tmp_path / "fc", "FC100", fc)
    ds = load_fc100(tmp_path / "fc")
    assert [len(ds.splits[s]) for s in SPLITS] == [60, 20, 20]
    mk.write_cifar_pickles(tmp_path / "bad", "CIFAR_FS", {**fs, "val": fs["test"]})
    with pytest.raises(DataError, match="CIFAR_FS_val.pickle: its 20 classes differ"):
        load_cifar_fs(tmp_path / "bad")


def test_checker_reports_a_good_directory():
    rc, out, err = check("tieredimagenet", "--data-dir", TIERED / "png")
    assert rc == 0 and err == ""
    for fragment in ("png-pkl", "351 classes, 20 super-categories", "84x84x3", "fingerprint", "load time",
                     "peak memory", "missing      nothing"):
        assert fragment in out
    rc, out, _ = check("cub", "--data-dir", CUB, "--split", "140-30-30")
    assert rc == 0 and "140 classes" in out


def _broken(tmp_path, src, name):
    root = tmp_path / name
    shutil.copytree(src, root)
    return root


@pytest.mark.parametrize("case,fragment", [
    ("tiered-no-labels", "val_labels.pkl is missing; expected Ren et al.'s labels dict"),
    ("tiered-garbage-labels", "train_labels.pkl is corrupt or not a pickle"),
    ("tiered-truncated-png", "test_images_png.pkl is corrupt or not a pickle"),
    ("tiered-no-images", "neither"),
    ("tiered-npz-key", "train_images.npz has no array 'images'"),
    ("tiered-bad-png", "val_images_png.pkl: image 5 is not a decodable image"),
    ("cub-missing-image", "is missing (1 of 400 listed in images.txt)"),
    ("cub-corrupt-image", "or corrupt (UnidentifiedImageError); expected a readable JPEG"),
    ("cub-no-classes", "classes.txt is missing"),
])
def test_checker_names_the_file_at_fault(tmp_path, case, fragment):
    if case.startswith("tiered"):
        root = _broken(tmp_path, TIERED / ("npz" if "npz" in case else "png"), case)
        if case == "tiered-no-labels":
            (root / "val_labels.pkl").unlink()
        elif case == "tiered-garbage-labels":
            (root / "train_labels.pkl").write_bytes(b"\x80\x02garbage")
        elif case == "tiered-truncated-png":
            data = (root / "test_images_png.pkl").read_bytes()
            (root / "test_images_png.pkl").write_bytes(data[: len(data) // 2])
        elif case == "tiered-no-images":
            (root / "test_images_png.pkl").unlink()
        elif case == "tiered-npz-key":
            with zipfile.ZipFile(root / "train_images.npz", "w") as z:
                z.writestr("x.npy", b"")
        elif case == "tiered-bad-png":
            with open(root / "val_images_png.pkl", "rb") as fh:
                items = pickle.load(fh, encoding="bytes")
            items[5] = np.frombuffer(b"not a png at all", dtype=np.uint8)
            mk.py2_pickle(items, root / "val_images_png.pkl")
        args = ("tieredimagenet", "--data-dir", root)
    else:
        root = _broken(tmp_path, CUB, case)
        jpg = sorted((root / "CUB_200_2011/images/017.Cardinal").glob("*.jpg"))[0]
        if case == "cub-missing-image":
            jpg.unlink()
        elif case == "cub-corrupt-image":
            jpg.write_bytes(b"not a jpeg")
        else:
            (root / "CUB_200_2011/classes.txt").unlink()
        args = ("cub", "--data-dir", root)
    rc, out, err = check(*args)
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert fragment in err, err
    assert str(root) in err  # names the file


def test_run_cli_refuses_a_broken_directory(tmp_path):
    from benchmark.run import main

    root = _broken(tmp_path, TIERED / "png", "broken")
    (root / "train_labels.pkl").unlink()
    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(["--methods", "protonet", "--dataset", "tieredimagenet", "--data-dir", str(root), "--profile",
                   "smoke", "--results-dir", str(tmp_path / "res"), "--no-report", "--no-progress"])
    assert rc == 2 and "train_labels.pkl is missing" in err.getvalue() and err.getvalue().count("\n") == 1
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())
