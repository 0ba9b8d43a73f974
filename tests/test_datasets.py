"""CIFAR-FS, FC100 and miniImageNet loaders, on tiny synthetic copies in the standard layouts."""
import csv
import json
import pickle
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from benchmark.data import DataError, load_cifar_fs, load_fc100, load_miniimagenet
from benchmark.kit.episodes import TaskSampler


def _split(*parts):
    return resources.files("benchmark.data").joinpath("splits", *parts).read_text()


def _fake_cifar100(root, per_class=(4, 2)):
    """A CIFAR-100 python download with all 100 class names and a few images per class; pixel = class id."""

    fs = [c for s in ("train", "val", "test") for c in _split("cifar-fs", f"{s}.txt").split()]
    fine_names = sorted(fs)
    assert len(fine_names) == 100
    supers = [c for s in ("train", "val", "test") for c in json.loads(_split("fc100", f"{s}.json"))]
    coarse_of = {c: i % 20 for i, c in enumerate(fine_names)}  # 5 fine classes per superclass
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    for part, n in (("train", per_class[0]), ("test", per_class[1])):
        fine = np.repeat(np.arange(100), n)
        data = np.repeat(fine.astype(np.uint8)[:, None], 3072, axis=1)
        blob = {b"data": data, b"fine_labels": fine.tolist(), b"coarse_labels": [coarse_of[fine_names[f]] for f in fine]}
        (base / part).write_bytes(pickle.dumps(blob))
    meta = {b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [s.encode() for s in supers]}
    (base / "meta").write_bytes(pickle.dumps(meta))
    return fine_names


def test_cifar_fs_and_fc100(tmp_path):
    fine_names = _fake_cifar100(tmp_path)
    ds = load_cifar_fs(tmp_path)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert ds.image_shape == (3, 32, 32) and ds.splits["train"].min_class_size() == 6
    ep = TaskSampler(ds, "test", 0).episode(0, 5, 1, 5)
    # every pixel of a synthetic image is its class id: the loader must keep images with their classes
    for i, c in enumerate(ep.classes):
        cid = fine_names.index(ds.splits["test"].names[c])
        raw = ep.support_x[i].numpy() * np.array(ds.std)[:, None, None] + np.array(ds.mean)[:, None, None]
        assert np.allclose(raw * 255, cid, atol=1e-3)
    fc = load_fc100(tmp_path)
    assert [len(fc.splits[s]) for s in ("train", "val", "test")] == [60, 20, 20]
    names = [set(fc.splits[s].names) for s in ("train", "val", "test")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError, match="not embedded"):
        load_cifar_fs(None)
    with pytest.raises(DataError, match="missing"):
        load_fc100(tmp_path)
    _fake_cifar100(tmp_path)
    (tmp_path / "cifar-100-python/test").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_cifar_fs(tmp_path)


def _fake_mini(root, layout, per_class=3):
    for s in ("train", "val", "test"):
        classes = _split("miniimagenet", f"{s}.txt").split()
        rows = []
        for ci, c in enumerate(classes):
            for j in range(per_class):
                img = Image.fromarray(np.full((90, 90, 3), ci, dtype=np.uint8))
                if layout == "csv":
                    (root / "images").mkdir(parents=True, exist_ok=True)
                    fn = f"{c}{j:08d}.jpg"
                    img.save(root / "images" / fn)
                    rows.append((fn, c))
                else:
                    (root / s / c).mkdir(parents=True, exist_ok=True)
                    img.save(root / s / c / f"{j}.png")
        if layout == "csv":
            with open(root / f"{s}.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["filename", "label"])
                w.writerows(rows)


@pytest.mark.parametrize("layout", ["csv", "folders"])
def test_miniimagenet_layouts(tmp_path, layout):
    _fake_mini(tmp_path, layout)
    ds = load_miniimagenet(tmp_path)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert ds.images.shape[1:] == (84, 84, 3) and ds.image_shape == (3, 84, 84)
    c = 7
    np.testing.assert_allclose(ds.images[ds.splits["val"].members[c]].astype(float).mean(), c, atol=1.0)


def test_miniimagenet_errors(tmp_path):
    with pytest.raises(DataError, match="neither"):
        load_miniimagenet(tmp_path)
    _fake_mini(tmp_path, "csv", per_class=1)
    next((tmp_path / "images").glob("*.jpg")).write_bytes(b"nope")
    with pytest.raises(DataError, match="corrupt"):
        load_miniimagenet(tmp_path)
    lines = (tmp_path / "test.csv").read_text().splitlines()
    (tmp_path / "test.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="differ"):
        load_miniimagenet(tmp_path)
