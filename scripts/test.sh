#!/usr/bin/env bash
# Quick start (2): set up .venv, build and install the wheel, run the whole
# test suite against the installed wheel. Extra arguments go to pytest.
#
# It also builds the TensorFlow-free native tests and a CPU-only library
# (build/native), so the tests can check a CUDA build gives the same CPU results.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
VPY="$ROOT/.venv/bin/python"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

printf '\n==> building the native tests and a CPU-only library (build/native)\n' >&2
PATH="$ROOT/.venv/bin:$PATH" cmake -S . -B build/native -G Ninja -DFUSEDOPT_CUDA=OFF \
  -DFUSEDOPT_BUILD_TESTS=ON -DPython3_EXECUTABLE="$VPY" \
  -DFUSEDOPT_OUTPUT_DIR="$ROOT/build/native/fusedopt" >/dev/null
PATH="$ROOT/.venv/bin:$PATH" cmake --build build/native >/dev/null
export FUSEDOPT_NATIVE_TESTS="$ROOT/build/native/fusedopt_native_tests"
export FUSEDOPT_ABI_FUZZ="$ROOT/build/native/fusedopt_abi_fuzz"

# The randomized C ABI test again, built alone under AddressSanitizer and
# UndefinedBehaviorSanitizer (tests/test_native_abi.py runs both builds).
# FUSEDOPT_SKIP_ASAN=1 leaves it out (a compiler without the sanitizers).
if [ "${FUSEDOPT_SKIP_ASAN:-0}" != "1" ]; then
  printf '\n==> building the C ABI fuzz test with AddressSanitizer and UBSan (build/asan)\n' >&2
  PATH="$ROOT/.venv/bin:$PATH" cmake -S . -B build/asan -G Ninja -DFUSEDOPT_TF=OFF \
    -DFUSEDOPT_NATIVE_MODULE=OFF -DFUSEDOPT_CUDA=OFF -DFUSEDOPT_BUILD_TESTS=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython3_EXECUTABLE="$VPY" \
    "-DCMAKE_CXX_FLAGS=-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
    "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined" >/dev/null
  PATH="$ROOT/.venv/bin:$PATH" cmake --build build/asan --target fusedopt_abi_fuzz >/dev/null
  export FUSEDOPT_ABI_FUZZ_ASAN="$ROOT/build/asan/fusedopt_abi_fuzz"
fi
# When the installed build has CUDA kernels, the tests compare its CPU results
# with this CPU-only library's.
export FUSEDOPT_CPU_ONLY_LIBRARY="$ROOT/build/native/fusedopt/_fusedopt_ops.so"

printf '\n==> running the tests against the installed wheel\n' >&2
exec "$VPY" -m pytest -p no:cacheprovider "$@"
