#!/usr/bin/env bash
# Installs mixsql with its test extras (CPU torch pinned) into ./.venv and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
make_venv "torch==2.13.0" -e ".[dev,torch,tokenizers]"
step "running the test suite: pytest -n 2 $*"
exec .venv/bin/python -m pytest -q -n 2 "$@"
