#!/usr/bin/env bash
# Create .venv and install tpmetrics with its test tools. Safe to run again.
#
# torch is pinned to the 2.13.0 CPU build here: a bare `torch` requirement
# makes pip pull a multi-GB CUDA build. On a GPU machine, install the torch
# build you want into .venv first; this script keeps an installed torch.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet torch==2.13.0
fi
.venv/bin/python -m pip install --quiet -e '.[test]'
echo "tpmetrics installed in .venv: run .venv/bin/tpmetrics --help"
