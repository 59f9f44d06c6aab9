#!/usr/bin/env bash
# The workbook end to end: set up (venv, data) and run a profile (default: quick).
#   bash scripts/run.sh                 # quick: Figures 1-3 + claims on Fashion-MNIST
#   bash scripts/run.sh smoke           # a few minutes, every code path
#   bash scripts/run.sh paper           # CIFAR-10, 3 seeds, 250 epochs: a GPU machine
# Extra arguments go to `python -m lib run`, e.g. --set seeds=[1,2] or --executor slurm.
# Without --executor, a machine with no NVIDIA GPU runs two jobs at a time (submitit's local
# executor, the cores split between them): small CPU models use two cores poorly, so two
# one-thread processes get more done than one two-thread process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
profile=${1:-quick}
shift || true
executor=()
if [[ " $* " != *" --executor"* ]] && ! command -v nvidia-smi >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  executor=(--executor local --parallel 2)
fi
exec .venv/bin/python -m lib run --profile "$profile" "${executor[@]}" "$@"
