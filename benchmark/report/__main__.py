"""``python -m benchmark.report``: the command (:func:`benchmark.report.cli.main`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
