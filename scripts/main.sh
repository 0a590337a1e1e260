#!/usr/bin/env bash
# Quick start (1): set up .venv, build and install the wheel, run the main job:
# a short training run on scikit-learn's digits with fusedopt.keras.SGD beside
# keras.optimizers.SGD.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
printf '\n==> training on digits\n' >&2
cd "$ROOT"
# TensorFlow prints start-up notices (oneDNN, missing CUDA driver) before its
# log level applies; they are noise here, errors still come through.
TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" "$ROOT/.venv/bin/python" examples/train_digits.py "$@" \
  2> >(grep -v -E "^(WARNING: All log messages|[IWE][0-9]{4} |To enable the following instructions)" >&2)
