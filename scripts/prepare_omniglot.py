"""Build the embedded Omniglot file shipped in ``benchmark/data/omniglot28.npz``.

Reproducible: the output is a pure function of the source files, whose sha256 sums it records.

Sources (see ``../shared/data/SOURCES.md``):
  images_background.npz, images_evaluation.npz  bool [characters, 20, 105, 105], True = white background
  characters.csv                                character id -> set, alphabet, characterNN, npz row
  splits/vinyals/{train,val,test}.txt           Vinyals et al. (2016) split, '<Alphabet>/characterNN/rotDDD'

Output arrays:
  images      uint8 [1623, 20, 28, 28]: ink intensity (255 = stroke, 0 = paper), character id k+1 at row k,
              drawer j+1 at column j; resized from 105x105 with Pillow's antialiasing LANCZOS filter
  alphabet, character   str [1623]: the canonical folder names
  split_<name>          str [n]: the Vinyals class names, in the order of the split file
  sources               str [k]: '<file> sha256=<hex>' for each source
Usage: python scripts/prepare_omniglot.py [--source ../shared/data/omniglot] [--out benchmark/data/omniglot28.npz]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 28


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resize(ink: np.ndarray) -> np.ndarray:
    """bool [105, 105] ink mask -> uint8 [28, 28] antialiased ink intensity."""
    img = Image.fromarray(ink.astype(np.uint8) * 255, mode="L")
    return np.asarray(img.resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/omniglot")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "benchmark/data/omniglot28.npz")
    args = ap.parse_args()
    src: Path = args.source
    rows = list(csv.DictReader(open(src / "characters.csv")))
    rows.sort(key=lambda r: int(r["character_id"]))
    assert len(rows) == 1623
    arrays = {s: np.load(src / f"images_{s}.npz")["images"] for s in ("background", "evaluation")}
    images = np.empty((len(rows), 20, SIZE, SIZE), dtype=np.uint8)
    for k, r in enumerate(rows):
        block = arrays[r["set"]][int(r["npz_row"])]
        for j in range(20):
            images[k, j] = resize(~block[j])  # True = background, so ink = not background
    files = ["images_background.npz", "images_evaluation.npz", "characters.csv"]
    splits = {}
    for name in ("train", "val", "test"):
        path = src / "splits/vinyals" / f"{name}.txt"
        splits[name] = np.array([ln.strip() for ln in open(path) if ln.strip()])
        files.append(f"splits/vinyals/{name}.txt")
    sources = np.array([f"{f} sha256={sha256(src / f)}" for f in files])
    buf = io.BytesIO()
    np.savez_compressed(
        buf, images=images,
        alphabet=np.array([r["alphabet"] for r in rows]), character=np.array([r["character"] for r in rows]),
        sources=sources, **{f"split_{k}": v for k, v in splits.items()},
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB), images {images.shape}, "
          + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))


if __name__ == "__main__":
    main()
