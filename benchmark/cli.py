"""The command-line toolkit the commands share (``benchmark.run``, ``benchmark.evaluate``, ``benchmark.speed``):
exit codes, the one-line usage error, count and folder checks, torch and device set-up, progress bars and notes,
and the catalogue lines of ``--help``.

Importing this module imports neither torch nor the methods: ``--help`` is built from the methods' source text
(:func:`methods.catalogue`) and torch-free tables (profiles, backbones, datasets), and torch is imported by
:func:`setup_torch` only once the arguments have been parsed.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class UsageError(Exception):
    """Bad input: the command prints ``error: <message>`` (one line) on stderr and exits with :data:`EXIT_USAGE`."""


def usage_errors(body: Callable[[], int]) -> int:
    """``body()``'s exit code; a :class:`UsageError` it raises becomes one line on stderr and :data:`EXIT_USAGE`."""
    try:
        return body()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


def at_least(label: str, values: int | Iterable[int] | None, low: int = 1) -> None:
    """UsageError naming ``label`` (e.g. ``--ways``) when a value (an int, a list of them, or None: unset) is below
    ``low``."""
    if values is None:
        return
    for v in [values] if isinstance(values, int) else values:
        if v < low:
            raise UsageError(f"{label} must be {'at least 1' if low == 1 else f'{low} or more'} (got {v})")


def existing_dir(label: str, path: str | Path | None) -> None:
    """UsageError when a folder given as ``label`` (e.g. ``--data-dir``) is not one."""
    if path is not None and not Path(path).is_dir():
        raise UsageError(f"{label} {path} does not exist or is not a folder")


def setup_torch(device: str, threads: int | None = None):
    """Prepare this process for PyTorch work: the allocator settings (:func:`benchmark.perf.tune_cpu`), PyTorch's CPU
    threads (``threads``; None: PyTorch's default) and the device (``auto | cpu | cuda[:N]``); returns the
    ``torch.device``. UsageError for a device that is not there."""
    import torch

    from .machine import resolve_device
    from .perf import tune_cpu

    tune_cpu()
    if threads:
        torch.set_num_threads(threads)
    try:
        return resolve_device(device)
    except ValueError as e:
        raise UsageError(str(e)) from None


def progress_factory(disabled: bool = False) -> Callable:
    """The progress bars of a command: ``progress(iterable=None, total=None, desc="", initial=0)`` -> a tqdm bar on
    stderr that disappears when done (``disabled``: none shown)."""
    from tqdm import tqdm

    def progress(iterable=None, total=None, desc="", initial=0):
        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True,
                    disable=disabled, file=sys.stderr, mininterval=0.5)

    return progress


def note(text: str) -> None:
    """A message on stderr that does not break the progress bars."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def add_method_files(p) -> None:
    """The ``--method-file`` option of a command that looks methods up."""
    p.add_argument("--method-file", action="append", default=[], metavar="PATH.py",
                   help="a Python file defining external methods (Method subclasses with a name), for work in "
                   "progress; repeatable; also $BENCHMARK_METHODS=PATH[:PATH]. Installed packages declare theirs "
                   "under the entry-point group fewshot_benchmark.methods (README: your method)")


def announce_method_files(argv: list[str] | None) -> None:
    """Put the ``--method-file`` paths of ``argv`` into ``$BENCHMARK_METHODS`` before the parser is built, so that
    ``--help`` lists their methods (read from their source, not imported)."""
    import argparse
    import os

    import methods

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method-file", action="append", default=[])
    files = pre.parse_known_args(argv)[0].method_file
    if files:
        known = [p for p in os.environ.get(methods.FILES_ENV, "").split(os.pathsep) if p]
        os.environ[methods.FILES_ENV] = os.pathsep.join(dict.fromkeys(known + [str(Path(f).resolve())
                                                                               for f in files]))


def load_method_files(files: list[str]) -> None:
    """Register the methods of ``--method-file`` (and ``$BENCHMARK_METHODS``); UsageError for a bad file or a
    clashing name."""
    import methods

    try:
        methods.load_files(files)
    except methods.PluginError as e:
        raise UsageError(str(e)) from None


def catalogue_lines() -> list[str]:
    """``--help``'s lists of methods (built-in, then external), profiles, backbones and datasets, from torch-free
    sources."""
    import methods

    from .backbone_table import BACKBONES
    from .data import DATASETS
    from .profiles import PROFILES

    entries = methods.catalogue()
    lines = ["methods (built-in):"]
    for c in entries:
        if "file" in c:
            continue
        tag = f" (variant of {c['variant_of']})" if c["variant_of"] else ""
        lines.append(f"  {c['name']:16s} {c['family']:15s} {c['idea']}{tag}")
    builtin = [c for c in entries if "file" not in c]
    opt_in = set(methods.GROUPS.values())
    lines.append("  all = " + ", ".join(c["name"] for c in builtin if not c["variant_of"] and c["family"] not in opt_in))
    lines += [f"  {g} = " + ", ".join(c["name"] for c in builtin if c["family"] == fam) + " (opt-in: not in all)"
              for g, fam in methods.GROUPS.items()]
    lines.append("  variants = all plus ablations and external methods; external = the external methods")
    files = [c for c in entries if "file" in c]
    try:
        plugins = methods.entry_point_names()
    except Exception:  # noqa: BLE001 - broken package metadata must not break --help
        plugins = []
    if files or plugins:
        lines.append("methods (external):")
        lines += [f"  {c['name']:16s} {c['family'] or '':15s} {c['idea'] or ''} (file {c['file']})" for c in files]
        lines += [f"  {n:16s} {'':15s} installed plugin {v} (entry point; facts shown once it is run)"
                  for n, v in plugins]
    lines.append("profiles:")
    lines += [f"  {p.name:8s} {p.doc} (val {p.val_episodes} / test {p.test_episodes} episodes)"
              for p in PROFILES.values()]
    lines.append("backbones:")
    lines += [f"  {n:16s} {c.doc}" for n, c in BACKBONES.items()]
    lines.append("datasets (--split: the first listed is the default; only omniglot is embedded, the others need "
                 "--data-dir):")
    for n, d in DATASETS.items():
        lines += [f"  {n:16s} splits {'/'.join(d.splits):20s} {d.summary}",
                  *(f"  {'':16s} {t}" for t in (f"files: {d.files}", f"defaults: {d.defaults}") if d.files or d.defaults)]
    return lines
