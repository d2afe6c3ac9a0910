#!/usr/bin/env bash
# sslbench in one script:
#   ./run.sh            install (first time), then run the default suite and print the leaderboard
#   ./run.sh test       install (first time), then run the test suite
#   ./run.sh <args>     install (first time), then `sslbench <args>` (e.g. ./run.sh run cifar10_cpu data.data_dir=...)
# Installs into ./.venv (override with SSLBENCH_VENV). Offline except the package registries.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${SSLBENCH_VENV:-.venv}"
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1

if [ ! -x "$VENV/bin/sslbench" ] || [ pyproject.toml -nt "$VENV/.sslbench-installed" ]; then
  echo "sslbench: installing into $VENV (torch, timm, faiss-cpu, mlflow, ...; a few minutes the first time)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$VENV/.sslbench-installed"
fi

# The default dataset: Debian's dataset-fashion-mnist (official IDX files).
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${SSLBENCH_DATA_DIR:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "sslbench: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)" >&2
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }) \
      || echo "sslbench: could not install dataset-fashion-mnist; see README (Data) for the manual download" >&2
  else
    echo "sslbench: Fashion-MNIST not found; 'sudo apt-get install dataset-fashion-mnist', or put the 4 IDX files in a folder and set SSLBENCH_DATA_DIR (see README)" >&2
  fi
fi

case "${1:-run}" in
  test) shift; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  run) shift || true; exec "$VENV/bin/sslbench" run "$@" ;;
  *) exec "$VENV/bin/sslbench" "$@" ;;
esac
