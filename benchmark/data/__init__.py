"""Few-shot datasets, the package face: :func:`load_dataset` loads a dataset by name and split (:data:`DATASETS`),
cached per process, and every name other code uses is importable from here.

One module per job: :mod:`.dataset` the model (:class:`FewShotDataset`, an array of images plus named class splits,
its fingerprint, :class:`DataError`, normalisation and split-list helpers), and one module per dataset family:

* :mod:`.omniglot`: ``omniglot`` with no directory is the copy embedded in the package
  (``benchmark/data/omniglot28.npz``, built by ``scripts/prepare_omniglot.py`` from the real Omniglot files; MIT
  licence in ``LICENSE.omniglot-MIT.txt``); with a directory, the canonical layout people download,
  ``images_background/<Alphabet>/characterNN/XXXX_YY.png`` and ``images_evaluation/...``, either extracted or as
  ``images_background.zip`` / ``images_evaluation.zip`` in that directory. Images are resized to 28x28 exactly as
  the embedded copy was made, so both loaders give the same pixels.
* :mod:`.cifar`: ``cifar-fs`` and ``fc100``, the CIFAR-100 python download (``cifar-100-python/{train,test,meta}``)
  split as Bertinetto et al. (2019) and Oreshkin et al. (2018); 32x32 RGB.
  Also MetaOptNet's ``CIFAR_FS_{split}.pickle`` / ``FC100_{split}.pickle``.
* :mod:`.miniimagenet`: ``miniimagenet``, Ren et al.'s ``mini-imagenet-cache-{split}.pkl``, Ravi & Larochelle's csv
  layout or one folder per class; 84x84 RGB.
* :mod:`.tiered`: ``tieredimagenet``, Ren et al.'s ``{split}_images_png.pkl`` or the ``{split}_images.npz`` layout,
  each with ``{split}_labels.pkl``; 84x84 RGB.
* :mod:`.cub`: ``cub``, CUB-200-2011's official archive layout, resized to 84x84, splits ``100-50-50`` (Chen et al.
  2019, the default) and ``140-30-30`` (Meta-Dataset).

Large datasets keep their pixels on disk (:class:`~.dataset.DiskImages`): read in place from a stored ``.npz``, or
decoded once into a raw uint8 cache next to the data (:func:`~.dataset.cached_images`). :mod:`.formats` reads the
pickles and archives other libraries ship. ``python -m benchmark.data DATASET --data-dir DIR`` checks a directory.

Their split lists ship in ``benchmark/data/splits/`` (sources in docs/data.md). Colour datasets are normalised per
channel with the training split's mean and std.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cifar import load_cifar_fs, load_fc100
from .cub import CUB_SIZE, CUB_SPLITS, load_cub
from .dataset import SPLITS, ConcatImages, DataError, DeviceImages, DiskImages, FewShotDataset, Split, pixel_cache_dir
from .miniimagenet import MINI_SIZE, load_miniimagenet
from .omniglot import (
    OMNIGLOT_SIZE,
    OMNIGLOT_SPLITS,
    lake_split_lists,
    load_omniglot,
    load_omniglot_dir,
    load_omniglot_embedded,
    omniglot_resize,
)
from .tiered import TIERED_SIZE, load_tieredimagenet


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset: ``load(data_dir, split)`` and the class splits it knows by name.

    ``splits[0]`` is the default. ``embedded``: loads with no ``--data-dir``. ``summary``: one line for ``--help``.
    ``defaults``: image size, normalisation, the backbones and published figures that apply (``--help``, docs/data.md).
    ``files``: the layouts read, for ``--help`` and ``python -m benchmark.data``.
    """

    load: Callable[[str | Path | None, str], FewShotDataset]
    splits: tuple[str, ...]
    embedded: bool = False
    summary: str = ""
    defaults: str = ""
    files: str = ""

    @property
    def default_split(self) -> str:
        return self.splits[0]


def _one_split(loader: Callable[[str | Path | None], FewShotDataset]) -> Callable[[str | Path | None, str], FewShotDataset]:
    return lambda data_dir, split: loader(data_dir)


_FIGS = "published figures: benchmark/reference/paper_results.csv"
DATASETS: dict[str, DatasetSpec] = {
    "omniglot": DatasetSpec(load_omniglot, OMNIGLOT_SPLITS, embedded=True,
                            summary="28x28 grey; vinyals: Vinyals et al. 1028+172 / 423 characters x 4 rotations; "
                                    "lake: Lake et al. background (25+5 held-out alphabets, x 4 rotations) / "
                                    "evaluation (20 alphabets, 659 characters); lake-norot: without rotations",
                            defaults=f"no normalisation (ink = 1); backbones conv4, conv4-strided (MAML); {_FIGS} "
                                     "(all eight methods, vinyals split)",
                            files="embedded, or images_background/ + images_evaluation/ (or their .zip)"),
    "cifar-fs": DatasetSpec(_one_split(load_cifar_fs), ("bertinetto",),
                            summary="32x32 RGB; CIFAR-100, 64 / 16 / 20 classes",
                            defaults=f"train-split mean/std per channel; backbones conv4, resnet12; {_FIGS} (as cifarfs)",
                            files="cifar-100-python/{train,test,meta} or CIFAR_FS_{train,val,test}.pickle"),
    "fc100": DatasetSpec(_one_split(load_fc100), ("oreshkin",),
                         summary="32x32 RGB; CIFAR-100, 12 / 4 / 4 superclasses (60 / 20 / 20 classes)",
                         defaults=f"train-split mean/std per channel; backbones resnet12 (TADAM, MTL), conv4; {_FIGS}",
                         files="cifar-100-python/{train,test,meta} or FC100_{train,val,test}.pickle"),
    "miniimagenet": DatasetSpec(_one_split(load_miniimagenet), ("ravi",),
                                summary="84x84 RGB; Ravi & Larochelle split, 64 / 16 / 20 classes",
                                defaults=f"train-split mean/std per channel; backbones conv4 (32 filters in MAML, "
                                         f"Reptile, Meta-LSTM), resnet12 (TADAM, MTL); {_FIGS}",
                                files="mini-imagenet-cache-{train,val,test}.pkl, {train,val,test}.csv + images/, or "
                                      "{train,val,test}/<wnid>/*.jpg"),
    "tieredimagenet": DatasetSpec(lambda d, s: load_tieredimagenet(d, s), ("ren",),
                                  summary="84x84 RGB; Ren et al. split, 351 / 97 / 160 classes in 20 / 6 / 8 "
                                          "super-categories, 779,165 images (pixels stay on disk)",
                                  defaults=f"train-split mean/std per channel; backbones conv4, resnet12; {_FIGS}",
                                  files="{train,val,test}_images_png.pkl or {train,val,test}_images.npz, each with "
                                        "{train,val,test}_labels.pkl"),
    "cub": DatasetSpec(lambda d, s: load_cub(d, s), CUB_SPLITS,
                       summary="84x84 RGB (whole image resized); 100-50-50: Chen et al. 2019 (default), 140-30-30: "
                               "Meta-Dataset; 11,788 images (pixels stay on disk)",
                       defaults=f"train-split mean/std per channel; backbones conv4, resnet12; {_FIGS} (Chen et al. "
                                "2019 figures use the 100-50-50 split)",
                       files="CUB_200_2011/{images.txt,classes.txt,images/<NNN.Name>/*.jpg}"),
}
"""Dataset name -> :class:`DatasetSpec`. A new dataset is one module in this package plus one entry here."""

LOADERS = DATASETS  # the name earlier code imported

_CACHE: dict[tuple[str, str, str], FewShotDataset] = {}


def resolve_split(name: str, split: str | None) -> str:
    """The split name to load: ``split``, or the dataset's default when None or empty; DataError when unknown."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    if not split:
        return spec.default_split
    if split not in spec.splits:
        raise DataError(f"dataset {name} has no split {split!r}; choose from {', '.join(spec.splits)} "
                        f"(default {spec.default_split})")
    return split


def load_dataset(name: str, data_dir: str | Path | None = None, split: str | None = None) -> FewShotDataset:
    """Load (and cache per process) a dataset by name and split (None: its default); raises :class:`DataError` with a
    fix-it message."""
    split = resolve_split(name, split)
    key = (name, str(Path(data_dir).resolve()) if data_dir is not None else "", split)
    if key not in _CACHE:
        ds = DATASETS[name].load(data_dir, split)
        ds.split_name = split
        _CACHE[key] = ds
    return _CACHE[key]


__all__ = ["DATASETS", "DatasetSpec", "LOADERS", "load_dataset", "resolve_split", "DataError", "FewShotDataset", "DeviceImages", "Split", "SPLITS", "load_omniglot",
           "load_omniglot_dir", "load_omniglot_embedded", "OMNIGLOT_SPLITS", "lake_split_lists",
           "omniglot_resize", "OMNIGLOT_SIZE", "load_cifar_fs",
           "load_fc100", "load_miniimagenet", "MINI_SIZE", "load_tieredimagenet", "TIERED_SIZE", "load_cub", "CUB_SIZE",
           "CUB_SPLITS", "DiskImages", "ConcatImages", "pixel_cache_dir"]
