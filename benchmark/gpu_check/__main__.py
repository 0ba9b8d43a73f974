"""python -m benchmark.gpu_check: the command (:func:`benchmark.gpu_check.main`)."""
import sys

from . import main

sys.exit(main())
