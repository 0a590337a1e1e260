#!/usr/bin/env bash
# Quick start (1): set up .venv, build and install the wheel, run the main job:
# `fusedopt-bench --quick` (under 2 minutes on 2 cores): the fused kernels side
# by side with tf.raw_ops, Keras' optimizers (with and without XLA) and the
# memory-bandwidth roofline, each contender checked against the float64
# reference before it is timed. Results: bench-results/quick.{json,png}.
# Extra arguments go to fusedopt-bench (e.g. --suite models --algorithms all).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
mkdir -p "$ROOT/bench-results"
printf '\n==> fusedopt-bench --quick\n' >&2
cd "$ROOT"
# TensorFlow prints start-up notices (oneDNN, missing CUDA driver) before its
# log level applies; they are noise here, errors still come through.
TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" "$ROOT/.venv/bin/fusedopt-bench" --quick \
  --json bench-results/quick.json --plot bench-results/quick.png "$@" \
  2> >(grep -v -E "^(WARNING: All log messages|[IWE][0-9]{4} |To enable the following instructions)" >&2)
