#!/bin/bash
# The test suite against other versions of the package's dependencies than CI's, in a fresh virtual environment:
# pyproject.toml promises PyTorch 2.1+, numpy 1.26+ and pandas 2.0+ with no upper bounds, and a GPU machine may bring
# its own PyTorch. Ray is left out (its tests skip), so the run needs only PyPI.
#
#   scripts/test_versions.sh VENV PIP-REQUIREMENT...
#   scripts/test_versions.sh /tmp/v21 torch==2.1.2 torchvision==0.16.2 'numpy<2' pandas==2.2.3
#   scripts/test_versions.sh /tmp/v211 torch==2.11.0 torchvision==0.26.0
#   PYTHON=python3.10 scripts/test_versions.sh /tmp/v310 torch==2.1.2 torchvision==0.16.2 'numpy<2' pandas==2.0.3
#
# PYTHON: the interpreter the environment is made from (default python3).
# The requirements given are installed first, then the rest of what the package and its tests need (without
# upgrading what was pinned); the suite's last lines go to standard output. A few GB of wheels per PyTorch version.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 VENV PIP-REQUIREMENT... (e.g. $0 /tmp/v21 torch==2.1.2 torchvision==0.16.2 'numpy<2')" >&2
  exit 2
fi
venv=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install -q "$@"
"$venv/bin/pip" install -q pandas scipy seaborn matplotlib tqdm pillow pytest pytest-xdist "$@"
"$venv/bin/python" -c "import sys, torch, numpy, pandas; print('python', sys.version.split()[0], 'torch',
  torch.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__)"
cd "$root"
"$venv/bin/python" -m pytest -q -p no:cacheprovider 2>&1 | tail -8
