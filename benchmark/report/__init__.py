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
* :mod:`.tables`: paired statistics per setting (with each entry's rank), episode counts to thresholds, accuracy at
  equal compute, shared artefacts, cross-evaluation;
* :mod:`.table1`: the survey's Table 1 mirrored, as one model (blocks, rows, typed cells, in percent) that the
  Markdown/HTML section and the LaTeX tables only format;
* the sections of the document: :mod:`.survey_sections` (1 the Table 1 mirror, 2 the metric methods),
  :mod:`.convergence` (4), :mod:`.sections` (3 paired statistics, 5 episode counts, 6 cost, 7 cross-evaluation,
  8 provenance); :mod:`.render`: the document as Markdown and HTML, and the figures;
* :mod:`.latex`: the Table 1 mirror, the leaderboard, the survey and the accuracy at equal compute as LaTeX tables
  (``tables.tex``, ``report.tex``), made of :mod:`.latex_text`'s pieces;
* :mod:`.build`: the whole report written to a folder; :mod:`.common`: shared keys, labels and the error type;
  :mod:`.text`: what the renderers share (number formats, titles, footnotes, common prose).
"""
from .build import ALPHA, BuildResult, build, build_report
from .cli import main
from .common import ReportError
from .entries import REPORT_LEADERBOARD_COLUMNS

__all__ = ["build_report", "build", "main", "ReportError", "REPORT_LEADERBOARD_COLUMNS", "BuildResult", "ALPHA"]
