#!/usr/bin/env bash
# One-command quickstart: installs mixsql into ./.venv, then runs the demo job on the embedded
# default catalog (./mixsql_catalog): writes a small .jsonl.zst corpus, registers it, runs a MIX
# query and streams packed token batches.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/mixsql demo "$@"
