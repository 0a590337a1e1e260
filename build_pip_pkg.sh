#!/usr/bin/env bash
# Builds the fusedopt wheel into OUTDIR (default: dist/).
#
# Usage: ./build_pip_pkg.sh [OUTDIR]
#
# Uses the Python on PATH (or $PYTHON), which must have tensorflow 2.21
# installed: the op library is compiled against it. Set FUSEDOPT_CUDA=OFF for a
# CPU-only wheel; see setup.py for the other knobs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
outdir="${1:-$here/dist}"
python="${PYTHON:-python3}"
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
if ! "$python" -c "import tensorflow" >/dev/null 2>&1; then
  echo "build_pip_pkg.sh: '$python' cannot import tensorflow; install 'tensorflow>=2.21,<2.22' first" >&2
  exit 1
fi
cd "$here"
rm -f "$outdir"/fusedopt-*.whl
"$python" -m pip wheel --no-deps --no-build-isolation -w "$outdir" . 1>&2
ls "$outdir"/fusedopt-*.whl
