"""The methods on the command line: ``--method-file`` (external methods, :mod:`methods`) and ``--help``'s lists of
methods, profiles, backbones and datasets, for the commands that look methods up (``benchmark.run``,
``benchmark.evaluate``, ``benchmark.check``).

``--help`` is built from the methods' source text (:func:`registry.catalogue`) and torch-free tables (profiles,
backbones, datasets), so it imports neither torch nor the methods.
"""
from __future__ import annotations

from pathlib import Path

from ..cli.toolkit import UsageError


def add_method_files(p) -> None:
    """The ``--method-file`` option of a command that looks methods up."""
    p.add_argument("--method-file", action="append", default=[], metavar="PATH.py",
                   help="a Python file defining external methods (Method subclasses with a name), for work in "
                   "progress; repeatable; also $BENCHMARK_METHODS=PATH[:PATH]. Installed packages declare theirs "
                   "under the entry-point group fewshot_benchmark.methods (docs/your-method.md)")


def announce_method_files(argv: list[str] | None) -> None:
    """Put the ``--method-file`` paths of ``argv`` into ``$BENCHMARK_METHODS`` before the parser is built, so that
    ``--help`` lists their methods (read from their source, not imported)."""
    import argparse
    import os

    from . import registry

    class _Quiet(argparse.ArgumentParser):
        def error(self, message):  # the command's own parser reports it, in one line
            raise ValueError(message)

    pre = _Quiet(add_help=False)
    pre.add_argument("--method-file", action="append", default=[])
    try:
        files = pre.parse_known_args(argv)[0].method_file
    except ValueError:
        return
    if files:
        known = [p for p in os.environ.get(registry.FILES_ENV, "").split(os.pathsep) if p]
        os.environ[registry.FILES_ENV] = os.pathsep.join(dict.fromkeys(known + [str(Path(f).resolve())
                                                                               for f in files]))


def load_method_files(files: list[str]) -> None:
    """Register the methods of ``--method-file`` (and ``$BENCHMARK_METHODS``); UsageError for a bad file or a
    clashing name."""
    from . import registry

    try:
        registry.load_files(files)
    except registry.PluginError as e:
        raise UsageError(str(e)) from None


def _entry(name: str, family: str, text: str, tail: str = "", width: int = 118) -> list[str]:
    """One method of the catalogue: name and family in columns, its description wrapped beneath its own column;
    ``tail`` (a file's path) is never broken, on the last line if it fits there, else on a line of its own."""
    import textwrap

    head = f"  {name:16s} {family:15s} "
    indent = " " * len(head)
    lines = textwrap.wrap(text, width, initial_indent=head, subsequent_indent=indent,
                          break_on_hyphens=False) if text else [head]
    if tail:
        sep = "" if lines[-1] == head else " "
        if len(lines[-1]) + len(sep) + len(tail) <= width:
            lines[-1] += sep + tail
        else:
            lines.append(indent + tail)
    return [line.rstrip() for line in lines]


def catalogue_lines() -> list[str]:
    """``--help``'s lists of methods (built-in, then external), profiles, backbones and datasets, from torch-free
    sources."""
    from ..data import DATASETS
    from ..kit.backbone_table import BACKBONES
    from ..kit.profiles import PROFILES
    from . import registry

    entries = registry.catalogue()
    lines = ["methods (built-in):"]
    for c in entries:
        if "file" in c:
            continue
        tag = f" (variant of {c['variant_of']})" if c["variant_of"] else ""
        lines += _entry(c["name"], c["family"], f"{c['idea']}{tag}")
    builtin = [c for c in entries if "file" not in c]
    opt_in = set(registry.GROUPS.values())
    lines.append("  all = " + ", ".join(c["name"] for c in builtin if not c["variant_of"] and c["family"] not in opt_in))
    lines += [f"  {g} = " + ", ".join(c["name"] for c in builtin if c["family"] == fam) + " (opt-in: not in all)"
              for g, fam in registry.GROUPS.items()]
    lines.append("  variants = all plus ablations and external methods; external = the external methods")
    files = [c for c in entries if "file" in c]
    try:
        plugins = registry.entry_point_names()
    except Exception:  # noqa: BLE001 - broken package metadata must not break --help
        plugins = []
    if files or plugins:
        lines.append("methods (external):")
        for c in files:
            lines += _entry(c["name"], c["family"] or "", c["idea"] or "", f"(file {c['file']})")
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
