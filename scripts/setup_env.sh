#!/usr/bin/env bash
# Sets up .venv (TensorFlow 2.21 and the build/test tools), builds the fusedopt
# wheel into dist/ and installs it there. Sourced by scripts/main.sh and
# scripts/test.sh; safe to run again (reuses .venv and the CMake build tree).
#
# PYTHON selects the interpreter that creates .venv (default: python3; 3.10-3.12).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

say() { printf '\n==> %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  if ! command -v "$PY" >/dev/null 2>&1; then
    echo "setup: '$PY' not found; install Python 3.10-3.12 or set PYTHON=/path/to/python3" >&2
    exit 1
  fi
  if ! "$PY" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
    echo "setup: TensorFlow 2.21 needs Python 3.10-3.12, but $PY is $("$PY" -V 2>&1)." \
         "Set PYTHON=/path/to/python3.X" >&2
    exit 1
  fi
  say "creating $VENV with $("$PY" -V 2>&1)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# JAX (CPU) runs fusedopt.jax's tests (tests/test_jax.py): 0.10.x on Python 3.11.
say "installing TensorFlow 2.21, JAX and the build and test tools into .venv (first run: ~2 GB)"
"$VPY" -m pip install -q \
  "tensorflow>=2.21,<2.22" "tf-keras>=2.21,<2.22" numpy \
  "setuptools>=64" wheel "cmake>=3.24" ninja "pybind11>=2.12" \
  pytest scikit-learn rich matplotlib "jax>=0.10.2,<0.12" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

say "building the fusedopt wheel (CMake; CUDA kernels too when nvcc is found)"
PATH="$VENV/bin:$PATH" PYTHON="$VPY" ./build_pip_pkg.sh "$ROOT/dist" >/dev/null \
  2> >(grep -E "^(--|\[|CMake|ninja|FAILED|.*error|Successfully)" >&2 || true)
WHEEL="$(ls "$ROOT"/dist/fusedopt-*.whl)"

say "installing $(basename "$WHEEL")"
"$VPY" -m pip install -q --force-reinstall --no-deps "$WHEEL"
(cd / && "$VPY" -c "import fusedopt, json; print(json.dumps(fusedopt.build_info(), indent=1))" \
  2> >(grep -v -E "^(WARNING: All log|[IWE][0-9]{4} |To enable the following)" >&2))
