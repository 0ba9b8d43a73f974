"""python -m benchmark.data DATASET --data-dir DIR: check a dataset directory without training.

Loads the dataset as a run would and prints the layout found, classes and images per split, the image size, the
normalisation, where the pixels are, the fingerprint (the one runs will record), the time to load and the peak
resident memory. A first load decodes images into the pixel cache (see docs/data.md), so it takes longer than later
ones. Exit 0 when the directory is usable; otherwise one line on stderr naming the file at fault and what was
expected, and exit 2.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

from ..cli.toolkit import Parser, UsageError, existing_dir, usage_errors


def main(argv: list[str] | None = None) -> int:
    from . import DATASETS

    lines = [f"  {n:16s} splits {'/'.join(d.splits):20s} files: {d.files}" for n, d in DATASETS.items()]
    p = Parser(prog="python -m benchmark.data", description=__doc__,
                                epilog="datasets (the first split listed is the default):\n" + "\n".join(lines),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset name")
    p.add_argument("--data-dir", default=None, help="the dataset folder (omniglot: optional, embedded)")
    p.add_argument("--split", default=None, help="named class split; default: the dataset's default")
    p.add_argument("--no-fingerprint", action="store_true", help="skip the fingerprint (it reads every pixel)")
    args = p.parse_args(argv)
    return usage_errors(lambda: _check(args))


def _check(args) -> int:
    from . import DATASETS, DataError, load_dataset, resolve_split

    existing_dir("--data-dir", args.data_dir)
    try:
        split = resolve_split(args.dataset, args.split)
        if args.data_dir is None and not DATASETS[args.dataset].embedded:
            raise DataError(f"{args.dataset} is not embedded; give --data-dir ({DATASETS[args.dataset].files})")
        t0 = time.perf_counter()
        ds = load_dataset(args.dataset, args.data_dir, split)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        fp = None if args.no_fingerprint else ds.fingerprint
        t_fp = time.perf_counter() - t0
    except DataError as e:
        raise UsageError(str(e)) from None
    c, h, w = ds.image_shape
    out = [f"dataset      {ds.name} (split {split}) from {ds.source}"]
    layout = ds.info.get("layout")
    if isinstance(layout, dict):
        out += [f"layout       {s}: {v}" for s, v in layout.items()]
    elif layout:
        out.append(f"layout       {layout}")
    for s, sp in ds.splits.items():
        sizes = [len(m) for m in sp.members]
        extra = f", {ds.info['super-categories'][s]} super-categories" if "super-categories" in ds.info else ""
        out.append(f"{s:12s} {len(sp)} classes{extra}, {sum(sizes)} images ({min(sizes)}-{max(sizes)} per class)")
    out.append(f"images       {len(ds.images)} in all, {h}x{w}x{c} uint8 "
               f"({ds.images.shape[0] * h * w * c / 2**30:.2f} GiB), "
               f"{'on disk: ' + ds.info['pixels'] if ds.info.get('pixels') else 'in RAM'}")
    out.append(f"normalise    mean {ds.mean} std {ds.std}")
    if fp:
        out.append(f"fingerprint  {fp} ({t_fp:.1f} s)")
    out.append(f"load time    {t_load:.1f} s")
    out.append(f"peak memory  {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB resident")
    out.append("missing      nothing: the directory is usable")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
