#!/usr/bin/env bash
# Set up everything the workbook needs on a fresh machine; safe to run again (idempotent).
#   .venv/       virtual environment with the pinned packages of requirements.txt, lib/ editable
#   Fashion-MNIST from Debian's dataset-fashion-mnist package, where apt-get is available
#                (the offline default dataset; elsewhere torchvision downloads it on first use)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
# A stamp of the requirements that were installed: reruns skip pip when nothing changed.
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing pinned packages into .venv (about a minute when wheels are local)"
  # pip warns once per missing local index folder; those lines are noise, real errors still show.
  .venv/bin/pip install -q -r requirements.txt 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/pip install -q --no-deps -e . 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import torch, torchvision, lib" || { echo "setup: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing Fashion-MNIST from Debian (dataset-fashion-mnist)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "setup: apt-get could not install dataset-fashion-mnist; torchvision will download it on first use"
fi
echo "setup: ready (.venv/bin/python)"
