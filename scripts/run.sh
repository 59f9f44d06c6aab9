#!/usr/bin/env bash
# The workbook end to end: set up (venv, data) and run a profile (default: quick).
#   bash scripts/run.sh                 # quick: Figures 1-3 + claims on Fashion-MNIST
#   bash scripts/run.sh smoke           # a minute or two, every code path
#   bash scripts/run.sh paper           # CIFAR-10, 3 seeds, 250 epochs: a GPU machine
# Extra arguments go to `python -m lib.workbook run`, e.g. --set seeds=[1,2]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
profile=${1:-quick}
shift || true
exec .venv/bin/python -m lib.workbook run --profile "$profile" "$@"
