"""Omniglot's background/evaluation split (Lake et al. 2015) as the named splits ``lake`` and ``lake-norot``."""
import pytest

from benchmark.data import DATASETS, DataError, lake_split_lists, load_dataset, resolve_split
from benchmark.data.omniglot import _lake_alphabets
from benchmark.kit.episodes import EpisodeSet


def _chars(split):
    return {n.rsplit("/", 1)[0] for n in split.names}


def _alphabets(split):
    return {n.split("/")[0] for n in split.names}


def test_lake_split_is_background_evaluation():
    assert DATASETS["omniglot"].splits[0] == "vinyals" and resolve_split("omniglot", None) == "vinyals"
    ds = load_dataset("omniglot", None, "lake")
    norot = load_dataset("omniglot", None, "lake-norot")
    background, evaluation = set(_lake_alphabets("background.txt")), set(_lake_alphabets("evaluation.txt"))
    held_out = set(_lake_alphabets("val.txt"))
    assert (len(background), len(evaluation), len(held_out)) == (30, 20, 5) and held_out < background
    assert not background & evaluation
    # test: the 659 characters of the 20 evaluation alphabets, unrotated
    assert len(ds.splits["test"]) == 659 and _alphabets(ds.splits["test"]) == evaluation
    assert not ds.splits["test"].rotation.any() and not ds.splits["val"].rotation.any()
    # train + val: the 964 background characters; val on held-out alphabets
    assert len(_chars(ds.splits["train"])) + len(_chars(ds.splits["val"])) == 964
    assert _alphabets(ds.splits["val"]) == held_out and _alphabets(ds.splits["train"]) == background - held_out
    assert len(ds.splits["train"]) == 4 * len(_chars(ds.splits["train"])) == 3224
    assert sorted(set(ds.splits["train"].rotation.tolist())) == [0, 1, 2, 3]
    assert len(norot.splits["train"]) == 806 and not norot.splits["train"].rotation.any()
    assert norot.splits["test"].names == ds.splits["test"].names
    assert (ds.split_name, norot.split_name) == ("lake", "lake-norot")


def test_lake_fingerprint_differs_from_vinyals(omniglot):
    lake = load_dataset("omniglot", None, "lake")
    fps = {omniglot.fingerprint, lake.fingerprint, load_dataset("omniglot", None, "lake-norot").fingerprint}
    assert len(fps) == 3
    a = EpisodeSet(omniglot, "test", 5, 1, 15, 0, 3)
    b = EpisodeSet(lake, "test", 5, 1, 15, 0, 3)
    assert a.fingerprint != b.fingerprint


def test_lake_lists_refuse_unknown_alphabet():
    with pytest.raises(DataError, match="neither"):
        lake_split_lists(["Klingon/character01"])
    out = lake_split_lists(["Greek/character01", "Tifinagh/character02", "Tibetan/character03"], rotations=False)
    assert out == {"train": ["Greek/character01/rot000"], "val": ["Tifinagh/character02/rot000"],
                   "test": ["Tibetan/character03/rot000"]}
