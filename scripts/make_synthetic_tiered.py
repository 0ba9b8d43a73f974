"""Write a synthetic tieredImageNet of the real size (or a fraction) in one of the real layouts, to measure load time
and memory: ``python scripts/make_synthetic_tiered.py OUT --layout npz|png [--fraction 1.0]``.

Split sizes are Ren et al.'s (448,695 / 124,261 / 206,209 images; 351 / 97 / 160 classes), scaled by ``--fraction``.
Pixels are smooth random images (21x21 noise upsampled to 84x84, plus mild noise), so PNGs have a realistic size.
npz: written member by member as a stored (uncompressed) zip with zip64, like ``np.savez``; png: Ren et al.'s
``{split}_images_png.pkl`` as the Python 2 pickler wrote it. Memory stays at one chunk of images.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fixtures.make_fixtures import TIERED_SUPERS, png_bytes, py2_pickle  # noqa: E402

from benchmark.data.dataset import SPLITS, split_file  # noqa: E402

SIZES = {"train": 448_695, "val": 124_261, "test": 206_209}


def chunk(rng, n):
    base = rng.integers(0, 256, (n, 21, 21, 3), dtype=np.uint8)
    x = base.repeat(4, axis=1).repeat(4, axis=2)
    return x + rng.integers(0, 4, x.shape, dtype=np.uint8)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--layout", choices=("npz", "png"), required=True)
    p.add_argument("--fraction", type=float, default=1.0)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for si, s in enumerate(SPLITS):
        wnids = split_file("tieredimagenet", f"{s}.txt").split()
        n = max(len(wnids) * 2, int(SIZES[s] * a.fraction))
        spec = np.sort(np.arange(n) % len(wnids))
        py2_pickle({"label_specific": spec, "label_general": spec % TIERED_SUPERS[s], "label_specific_str": wnids,
                    "label_general_str": [f"n09{si}{g:05d}" for g in range(TIERED_SUPERS[s])]}, out / f"{s}_labels.pkl")
        step = 8192
        if a.layout == "npz":
            with zipfile.ZipFile(out / f"{s}_images.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                with z.open("images.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array_header_2_0(fh, {"descr": "|u1", "fortran_order": False,
                                                              "shape": (n, 84, 84, 3)})
                    for i in range(0, n, step):
                        fh.write(chunk(rng, min(step, n - i)).tobytes())
        else:
            items = []
            for i in range(0, n, step):
                items += [np.frombuffer(png_bytes(x), dtype=np.uint8) for x in chunk(rng, min(step, n - i))]
            py2_pickle(items, out / f"{s}_images_png.pkl")
        print(s, n, flush=True)


if __name__ == "__main__":
    main()
