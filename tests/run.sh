#!/usr/bin/env bash
# Installs mixsql with its test extras (CPU torch pinned) into ./.venv and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev,torch,tokenizers]"
exec .venv/bin/python -m pytest -q -n 2 "$@"
