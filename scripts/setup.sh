#!/usr/bin/env bash
# Create .venv with the working torch/torchvision pair and the package (editable, with the test, docs,
# export, mlflow, sweep and postgres extras), then make Fashion-MNIST available.
# Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

case "$(uname -m)" in
  aarch64|arm64) TORCH_PIN="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH_PIN="torch==2.14.1 torchvision==0.29.1" ;;
esac

stamp="$VENV/.fmnist-installed"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet $TORCH_PIN
  "$VENV/bin/python" -m pip install --quiet -e '.[test,docs,export,mlflow,sweep,postgres]'
  touch "$stamp"
fi

bash scripts/install-data.sh
