import shutil
import zipfile

import numpy as np
import pytest
from conftest import FIXTURES

from benchmark.data import DataError, load_dataset, load_omniglot_dir

FIX = FIXTURES / "omniglot"
FIX_SPLITS = {
    "train": [f"Balinese/character0{i}/rot{r:03d}" for i in (1, 2, 3) for r in (0, 90, 180, 270)],
    "val": ["Greek/character01/rot000", "Greek/character02/rot000"],
    "test": ["Greek/character03/rot000", "Greek/character03/rot090"],
}


def test_embedded_omniglot_has_vinyals_split(omniglot):
    assert omniglot.images.shape == (1623 * 20, 28, 28)
    assert omniglot.images.dtype == np.uint8
    assert {s: len(omniglot.splits[s]) for s in ("train", "val", "test")} == {"train": 4112, "val": 688, "test": 1692}
    chars = {s: {n.rsplit("/", 1)[0] for n in omniglot.splits[s].names} for s in ("train", "val", "test")}
    assert (len(chars["train"]), len(chars["val"]), len(chars["test"])) == (1028, 172, 423)
    assert not (chars["train"] & chars["val"]) and not (chars["train"] & chars["test"]) and not (chars["val"] & chars["test"])
    members = {s: {int(m[0]) for m in omniglot.splits[s].members} for s in ("train", "val", "test")}
    assert not (members["train"] & members["test"]) and not (members["val"] & members["test"])
    # ink is bright on a dark background, and antialiased (intermediate grey levels exist)
    assert omniglot.images.mean() < 60 and len(np.unique(omniglot.images[:200])) > 50


def test_directory_loader_matches_embedded_pixels(omniglot):
    ds = load_omniglot_dir(FIX, FIX_SPLITS)
    assert len(ds.splits["train"]) == 12 and ds.splits["train"].min_class_size() == 20
    for name in ("Balinese/character02/rot000", "Greek/character03/rot000"):
        c_dir = ds.splits["train" if name.startswith("Bal") else "test"].names.index(name)
        sp_dir = ds.splits["train" if name.startswith("Bal") else "test"]
        sp_emb = next(omniglot.splits[s] for s in ("train", "val", "test") if name in omniglot.splits[s].names)
        c_emb = sp_emb.names.index(name)
        a = ds.images[sp_dir.members[c_dir]]
        b = omniglot.images[sp_emb.members[c_emb]]
        np.testing.assert_array_equal(a, b)


def test_rotation_classes_are_rotated(omniglot):
    ds = load_omniglot_dir(FIX, FIX_SPLITS)
    t0 = ds.tensor("train", np.array([0]), np.array([3]))  # Balinese/character01/rot000, drawer 4
    t1 = ds.tensor("train", np.array([1]), np.array([3]))  # same character, rot090
    np.testing.assert_array_equal(np.rot90(t0[0, 0].numpy(), 1), t1[0, 0].numpy())


def test_directory_loader_reads_zip(tmp_path, omniglot):
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as z:
        for p in (FIX / "images_background").rglob("*.png"):
            z.write(p, p.relative_to(FIX).as_posix())
    a = load_omniglot_dir(tmp_path, FIX_SPLITS)
    b = load_omniglot_dir(FIX, FIX_SPLITS)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.fingerprint == b.fingerprint


def test_missing_and_corrupt_data_raise_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_omniglot_dir(tmp_path / "nope")
    with pytest.raises(DataError, match="no Omniglot images"):
        load_omniglot_dir(tmp_path)
    with pytest.raises(DataError, match="lacks"):  # the default Vinyals split needs all 1,623 characters
        load_omniglot_dir(FIX)
    bad = tmp_path / "bad"
    shutil.copytree(FIX, bad)
    png = next((bad / "images_background/Greek/character01").glob("*.png"))
    png.write_bytes(b"not a png")
    with pytest.raises(DataError, match="corrupt"):
        load_omniglot_dir(bad, FIX_SPLITS)
    (tmp_path / "z").mkdir()
    (tmp_path / "z/images_background.zip").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable zip"):
        load_omniglot_dir(tmp_path / "z")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet-21k")


def test_named_splits_default_and_run_id():
    from benchmark.data import DATASETS, resolve_split
    from benchmark.pipeline import RunConfig, prepare

    assert resolve_split("omniglot", None) == DATASETS["omniglot"].splits[0] == "vinyals"
    assert load_dataset("omniglot").split_name == "vinyals"
    with pytest.raises(DataError, match="no split"):
        resolve_split("omniglot", "bogus")
    # the default split spelled out would give a second run id for the same run: refused
    with pytest.raises(ValueError, match="default"):
        prepare(RunConfig(method="protonet", split="vinyals"))
    assert RunConfig(method="protonet", split="other").run_id.startswith("protonet-omniglot-other-5w1s")
    assert RunConfig(method="protonet").run_id.startswith("protonet-omniglot-5w1s")
