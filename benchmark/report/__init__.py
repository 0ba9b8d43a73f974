"""The report: built from the run records in one or several results directories alone (nothing is re-run, and
neither the method registry nor the backbone table is imported: methods and backbones are described by the facts
each run recorded, so a report of old runs does not change when today's code does).

``python -m benchmark.report`` is the command (:mod:`benchmark.report.cli`); :func:`build_report` the call used by
``python -m benchmark.run``. One job per module:

* :mod:`.records`: run folders read into records, and each method's and backbone's facts as the runs recorded them;
* :mod:`.reference`: the published figures and the known differences between their protocol and a run's;
* :mod:`.entries`: runs aggregated over seeds into the rows of the settings leaderboard (the report's
  ``leaderboard.csv``, :data:`REPORT_LEADERBOARD_COLUMNS`; not the per-run ``results/leaderboard.csv``);
* :mod:`.stats`: paired tests, Holm's correction, ranks, seed-averaged curves (pure functions);
* :mod:`.tables`: paired statistics per setting, episode counts to thresholds, shared artefacts;
* :mod:`.sections`: the eight sections of the document; :mod:`.render`: Markdown, HTML and figures;
* :mod:`.latex`: the Table 1 mirror and the leaderboard as LaTeX tables (``tables.tex``, ``report.tex``);
* :mod:`.build`: the whole report written to a folder; :mod:`.common`: shared keys, labels and the error type.
"""
from .build import ALPHA, BuildResult, build, build_report
from .cli import main
from .common import ReportError
from .entries import REPORT_LEADERBOARD_COLUMNS

__all__ = ["build_report", "build", "main", "ReportError", "REPORT_LEADERBOARD_COLUMNS", "BuildResult", "ALPHA"]
