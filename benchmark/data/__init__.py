"""Few-shot datasets, the package face: :func:`load_dataset` loads a dataset by name (:data:`LOADERS`), cached per
process, and every name other code uses is importable from here.

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
* :mod:`.miniimagenet`: ``miniimagenet``, Ravi & Larochelle's csv layout or one folder per class; 84x84 RGB.

Their split lists ship in ``benchmark/data/splits/`` (sources in README, "Data"). Colour datasets are normalised per
channel with the training split's mean and std.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .cifar import load_cifar_fs, load_fc100
from .dataset import SPLITS, DataError, FewShotDataset, Split
from .miniimagenet import MINI_SIZE, load_miniimagenet
from .omniglot import OMNIGLOT_SIZE, load_omniglot, load_omniglot_dir, load_omniglot_embedded, omniglot_resize

LOADERS: dict[str, Callable[[str | Path | None], FewShotDataset]] = {
    "omniglot": load_omniglot, "cifar-fs": load_cifar_fs, "fc100": load_fc100, "miniimagenet": load_miniimagenet}
"""Dataset name -> loader taking the user's data directory (None: the embedded copy, where there is one)."""

_CACHE: dict[tuple[str, str], FewShotDataset] = {}


def load_dataset(name: str, data_dir: str | Path | None = None) -> FewShotDataset:
    """Load (and cache per process) a dataset by name; raises :class:`DataError` with a fix-it message."""
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(sorted(LOADERS))}")
    key = (name, str(Path(data_dir).resolve()) if data_dir is not None else "")
    if key not in _CACHE:
        _CACHE[key] = LOADERS[name](data_dir)
    return _CACHE[key]


__all__ = ["LOADERS", "load_dataset", "DataError", "FewShotDataset", "Split", "SPLITS", "load_omniglot",
           "load_omniglot_dir", "load_omniglot_embedded", "omniglot_resize", "OMNIGLOT_SIZE", "load_cifar_fs",
           "load_fc100", "load_miniimagenet", "MINI_SIZE"]
