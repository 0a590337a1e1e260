#!/usr/bin/env bash
# Quick start (2): set up .venv, build and install the wheel, run the whole
# test suite against the installed wheel. Extra arguments go to pytest.
#
# When the installed build has CUDA kernels, a CPU-only build of the library is
# made too (build/cpu-only), so the tests can check the CUDA variant gives the
# same CPU results.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
VPY="$ROOT/.venv/bin/python"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

if "$VPY" -c "import fusedopt, sys; sys.exit(0 if fusedopt.build_info()['cuda'] else 1)" 2>/dev/null; then
  printf '\n==> building a CPU-only library to compare with the CUDA build\n' >&2
  PATH="$ROOT/.venv/bin:$PATH" cmake -S . -B build/cpu-only -G Ninja -DFUSEDOPT_CUDA=OFF \
    -DPython3_EXECUTABLE="$VPY" -DFUSEDOPT_OUTPUT_DIR="$ROOT/build/cpu-only/fusedopt" >/dev/null
  PATH="$ROOT/.venv/bin:$PATH" cmake --build build/cpu-only >/dev/null
  export FUSEDOPT_CPU_ONLY_LIBRARY="$ROOT/build/cpu-only/fusedopt/_fusedopt_ops.so"
fi

printf '\n==> running the tests against the installed wheel\n' >&2
exec "$VPY" -m pytest -p no:cacheprovider "$@"
