#!/usr/bin/env bash
# One-command quickstart: installs mixsql into ./.venv, then runs the demo job on the embedded
# default catalog (./mixsql_catalog): writes a small .jsonl.zst corpus, registers it, runs a MIX
# query and streams packed token batches.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
make_venv -e .
step "running the demo: mixsql demo $*"
exec .venv/bin/mixsql demo "$@"
