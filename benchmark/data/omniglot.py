"""Omniglot: the copy embedded in the package, or the canonical download layout in a directory.

* No directory: ``benchmark/data/omniglot28.npz``, built by ``scripts/prepare_omniglot.py`` from the real Omniglot
  files (MIT licence in ``LICENSE.omniglot-MIT.txt``): 1,623 characters x 20 drawers at 28x28, Vinyals split.
* A directory: ``images_background/<Alphabet>/characterNN/XXXX_YY.png`` and ``images_evaluation/...``, either
  extracted or as ``images_background.zip`` / ``images_evaluation.zip``. Images are resized to 28x28 exactly as the
  embedded copy was made, so both loaders give the same pixels.

Named class splits (:data:`OMNIGLOT_SPLITS`, the first is the default):

* ``vinyals``: Vinyals et al. (2016): 1,028 / 172 / 423 characters, each in 4 rotations (4,112 / 688 / 1,692
  classes), alphabets mixed across the splits.
* ``lake``: Lake et al.'s (2015) background/evaluation split. Test: the 659 characters of the 20 evaluation alphabets
  (``splits/omniglot-lake/evaluation.txt``), unrotated. Lake et al. define no validation set; here 5 of the 30
  background alphabets (``splits/omniglot-lake/val.txt``: every sixth in alphabetical order, starting with the
  sixth: 158 characters, unrotated) are held out to validate, so validation, like test, is on unseen alphabets. Train:
  the other 25 background alphabets' 806 characters, each in 4 rotations as extra classes (3,224 classes; the Vinyals
  convention).
* ``lake-norot``: the same, with the 806 training characters unrotated (806 classes).
"""
from __future__ import annotations

import io
import re
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from .dataset import SPLITS, DataError, FewShotDataset, Split

OMNIGLOT_SIZE = 28


def _omniglot_from_arrays(images: np.ndarray, names: list[str], split_lists: dict[str, list[str]], source: str,
                          ) -> FewShotDataset:
    """``images`` uint8 [characters, drawers, 28, 28]; ``names`` '<Alphabet>/characterNN' per row."""
    n_char, n_draw = images.shape[:2]
    row = {n: i for i, n in enumerate(names)}
    splits = {}
    for s, lst in split_lists.items():
        cls_names, members, rots = [], [], []
        for entry in lst:
            m = re.fullmatch(r"(.+/character\d+)/rot(\d{3})", entry)
            if m is None:
                raise DataError(f"omniglot split '{s}': malformed class name {entry!r} (want Alphabet/characterNN/rotDDD)")
            if m.group(1) not in row:
                raise DataError(f"omniglot split '{s}' needs {m.group(1)}, which is not in {source}; "
                                "point --data-dir at a complete copy of images_background and images_evaluation")
            r = row[m.group(1)]
            cls_names.append(entry)
            members.append(np.arange(r * n_draw, (r + 1) * n_draw))
            rots.append(int(m.group(2)) // 90)
        splits[s] = Split(cls_names, members, np.array(rots, dtype=np.int64))
    return FewShotDataset("omniglot", images.reshape(n_char * n_draw, *images.shape[2:]), splits, source=source)


OMNIGLOT_SPLITS = ("vinyals", "lake", "lake-norot")
ROTATIONS = (0, 90, 180, 270)


def _lake_alphabets(name: str) -> list[str]:
    text = resources.files("benchmark.data").joinpath("splits", "omniglot-lake", name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def lake_split_lists(characters: list[str], rotations: bool = True) -> dict[str, list[str]]:
    """Lake et al.'s background/evaluation split of ``characters`` ('Alphabet/characterNN'), as class names
    'Alphabet/characterNN/rotDDD' per split: train = background alphabets except the held-out ones (in 4 rotations
    with ``rotations``), val = the held-out background alphabets, test = the evaluation alphabets (both unrotated)."""
    background, evaluation = set(_lake_alphabets("background.txt")), set(_lake_alphabets("evaluation.txt"))
    held_out = set(_lake_alphabets("val.txt"))
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c in characters:
        alphabet = c.split("/")[0]
        if alphabet in held_out:
            out["val"].append(f"{c}/rot000")
        elif alphabet in background:
            out["train"] += [f"{c}/rot{r:03d}" for r in (ROTATIONS if rotations else (0,))]
        elif alphabet in evaluation:
            out["test"].append(f"{c}/rot000")
        else:
            raise DataError(f"omniglot alphabet {alphabet!r} is in neither the background nor the evaluation list")
    return out


def omniglot_split_lists(split: str) -> dict[str, list[str]]:
    """The class lists of the named split (:data:`OMNIGLOT_SPLITS`) over all 1,623 characters."""
    if split == "vinyals":
        return _vinyals_splits()
    if split not in OMNIGLOT_SPLITS:
        raise DataError(f"omniglot has no split {split!r}; choose from {', '.join(OMNIGLOT_SPLITS)}")
    with _embedded_npz() as d:
        characters = [f"{a}/{c}" for a, c in zip(d["alphabet"], d["character"])]
    return lake_split_lists(characters, rotations=split == "lake")


def _vinyals_splits() -> dict[str, list[str]]:
    with _embedded_npz() as d:
        return {s: [str(x) for x in d[f"split_{s}"]] for s in SPLITS}


def _embedded_npz():
    path = resources.files("benchmark.data").joinpath("omniglot28.npz")
    return np.load(io.BytesIO(path.read_bytes()))


def load_omniglot_embedded(split: str = "vinyals") -> FewShotDataset:
    """The Omniglot copy shipped in the package: 1,623 characters x 20 drawers, 28x28, with the named split
    (:data:`OMNIGLOT_SPLITS`; default Vinyals)."""
    with _embedded_npz() as d:
        images = d["images"]
        names = [f"{a}/{c}" for a, c in zip(d["alphabet"], d["character"])]
        splits = ({s: [str(x) for x in d[f"split_{s}"]] for s in SPLITS} if split == "vinyals"
                  else omniglot_split_lists(split))
    return _omniglot_from_arrays(images, names, splits, source="embedded:omniglot28.npz")


def omniglot_resize(img) -> np.ndarray:
    """A canonical Omniglot PNG (PIL image, white background) -> uint8 [28, 28] ink intensity, antialiased.

    Identical to ``scripts/prepare_omniglot.py``, so directory and embedded loaders agree pixel for pixel.
    """
    from PIL import Image

    ink = ~np.asarray(img.convert("1"), dtype=bool)
    small = Image.fromarray(ink.astype(np.uint8) * 255, mode="L")
    return np.asarray(small.resize((OMNIGLOT_SIZE, OMNIGLOT_SIZE), Image.Resampling.LANCZOS), dtype=np.uint8)


def _omniglot_files(root: Path) -> dict[str, dict[int, bytes | Path]]:
    """Map 'Alphabet/characterNN' -> {drawer: png} from extracted folders and/or the two zips in ``root``."""
    found: dict[str, dict[int, bytes | Path]] = {}
    pat = re.compile(r"(?:^|/)images_(?:background|evaluation)(?:_small\d)?/([^/]+)/(character\d+)/\d+_(\d+)\.png$")
    for sub in ("images_background", "images_evaluation"):
        folder = root / sub
        if folder.is_dir():
            for p in folder.glob("*/character*/*.png"):
                m = pat.search(p.relative_to(root).as_posix())
                if m:
                    found.setdefault(f"{m.group(1)}/{m.group(2)}", {})[int(m.group(3))] = p
        zpath = root / f"{sub}.zip"
        if zpath.is_file() and not folder.is_dir():
            try:
                with zipfile.ZipFile(zpath) as z:
                    for info in z.infolist():
                        m = pat.search(info.filename)
                        if m:
                            found.setdefault(f"{m.group(1)}/{m.group(2)}", {})[int(m.group(3))] = z.read(info)
            except zipfile.BadZipFile as e:
                raise DataError(f"{zpath} is not a readable zip ({e}); download it again") from None
    return found


def load_omniglot_dir(root: str | Path, splits: dict[str, list[str]] | None = None) -> FewShotDataset:
    """Omniglot from the canonical layout in ``root`` (see module docstring), resized to 28x28.

    ``splits`` maps split name -> class names 'Alphabet/characterNN/rotDDD'; the default is the Vinyals split, which
    needs all 1,623 characters.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"omniglot data directory {root} does not exist; give the folder that holds "
                        "images_background/ and images_evaluation/ (or their .zip files)")
    files = _omniglot_files(root)
    if not files:
        raise DataError(f"no Omniglot images found in {root}: expected images_background/<Alphabet>/characterNN/"
                        "XXXX_YY.png (or images_background.zip)")
    splits = splits if splits is not None else _vinyals_splits()
    needed = sorted({"/".join(c.split("/")[:2]) for lst in splits.values() for c in lst})
    missing = [n for n in needed if n not in files]
    if missing:
        raise DataError(f"omniglot data in {root} lacks {len(missing)} characters the split needs (e.g. {missing[0]}); "
                        "it must hold both images_background and images_evaluation")
    drawers = sorted(files[needed[0]])
    images = np.empty((len(needed), len(drawers), OMNIGLOT_SIZE, OMNIGLOT_SIZE), dtype=np.uint8)
    for i, name in enumerate(needed):
        if sorted(files[name]) != drawers:
            raise DataError(f"omniglot character {name} in {root} has drawers {sorted(files[name])}, "
                            f"expected {drawers}; the copy is incomplete")
        for j, d in enumerate(drawers):
            src = files[name][d]
            try:
                with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
                    images[i, j] = omniglot_resize(img)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"corrupt Omniglot image for {name} drawer {d:02d} in {root}: {e}") from None
    return _omniglot_from_arrays(images, needed, splits, source=f"dir:{root}")


def load_omniglot(data_dir: str | Path | None = None, split: str = "vinyals") -> FewShotDataset:
    """Omniglot with the named split (:data:`OMNIGLOT_SPLITS`): embedded without ``data_dir``, else from it."""
    if data_dir is None:
        return load_omniglot_embedded(split)
    return load_omniglot_dir(data_dir, None if split == "vinyals" else omniglot_split_lists(split))
