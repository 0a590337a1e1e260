#!/usr/bin/env bash
# The GPU check of fusedopt._native, from a source checkout on a machine with
# an NVIDIA GPU, without TensorFlow and without network:
#
#   bash scripts/gpu_check.sh OUT_DIR
#
# 1. checks the tools (nvidia-smi listing a GPU; nvcc from $FUSEDOPT_NVCC, PATH
#    or $CUDA_HOME/bin (default /usr/local/cuda); cmake, ninja; python3 with
#    numpy, pybind11, pytest): anything missing is named and the exit is 2;
# 2. builds the module alone (FUSEDOPT_TF=OFF, CUDA for this GPU's
#    architecture) into a staged copy of the package, $BUILD/pkg/fusedopt
#    (BUILD defaults to build/gpu-check);
# 3. runs tests/gpu (pytest.log, pytest.xml, gpu_parity.json: where the
#    device's bits differ from the CPU's), then the CPU half
#    tests/test_native_module.py (pytest_cpu.log/.xml; its TensorFlow
#    comparisons skip), then fusedopt.jax through JAX on the CPU platform
#    (JAX_PLATFORMS=cpu: tests/test_jax.py, pytest_jax.log/.xml; jax_info.json
#    has the JAX and jaxlib versions, JAX's devices and the FFI handlers'
#    headers and API version; skipped when JAX is not importable), then the
#    host cost per tensor of a call over many
#    small tensors (scripts/gpu_host_overhead.py: host_overhead.log/.json),
#    then the benchmark (bench.json, bench.md, bench.log);
# 4. writes device.txt (nvidia-smi -q), summary.md and summary.json.
#
# Every step has a time limit and the whole stays under $FUSEDOPT_GPU_CHECK_BUDGET
# seconds (default 540). Exit: 0 all passed; 1 a build, test or benchmark check
# failed or ran out of time; 2 a tool is missing.
# Extra pytest arguments for tests/gpu: $FUSEDOPT_GPU_PYTEST_ARGS, as shell words
# (e.g. FUSEDOPT_GPU_PYTEST_ARGS='-m "not huge"');
# CUDA architectures: $FUSEDOPT_GPU_CHECK_ARCHS (default: native, this machine's GPU).
# FUSEDOPT_GPU_CHECK_SKIP_CPU=1 leaves out the CPU half (CI runs it) when device time is short;
# FUSEDOPT_GPU_CHECK_SKIP_JAX=1 leaves out the JAX tests.
set -uo pipefail

OUT="${1:-}"
if [[ -z "$OUT" ]]; then
  echo "usage: bash scripts/gpu_check.sh OUT_DIR" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
START=$(date +%s)
BUDGET="${FUSEDOPT_GPU_CHECK_BUDGET:-540}"

say() { printf '[gpu_check %3ds] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

# --- 1. tools -------------------------------------------------------------------------
missing=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
  missing+=("nvidia-smi (the NVIDIA driver's tool) is not on PATH")
elif ! timeout 30 nvidia-smi -L 2>/dev/null | grep -q '^GPU [0-9]'; then
  missing+=("nvidia-smi lists no GPU ($(timeout 30 nvidia-smi -L 2>&1 | head -1))")
fi
NVCC=""
for c in "${FUSEDOPT_NVCC:-}" "$(command -v nvcc 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"; do
  if [[ -n "$c" && -x "$c" ]]; then NVCC="$c"; break; fi
done
[[ -n "$NVCC" ]] || missing+=("nvcc (the CUDA compiler): not in \$FUSEDOPT_NVCC, on PATH, or in ${CUDA_HOME:-/usr/local/cuda}/bin")
for tool in cmake ninja; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool is not on PATH")
done
PY="${PYTHON:-$(command -v python3 2>/dev/null || true)}"
if [[ -z "$PY" ]]; then
  missing+=("python3 is not on PATH")
else
  for mod in numpy pybind11 pytest; do
    "$PY" -c "import $mod" >/dev/null 2>&1 || missing+=("python module $mod (for $PY)")
  done
fi
if (( ${#missing[@]} )); then
  echo "gpu_check: cannot run; missing:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 2
fi
BUILD="${BUILD:-build/gpu-check}"
mkdir -p "$BUILD"
BUILD="$(cd "$BUILD" && pwd)"
say "GPU: $(timeout 30 nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)"
say "nvcc: $NVCC ($("$NVCC" --version | grep -o 'release [0-9.]*' | head -1)); python: $PY"

# Seconds a step may take: its own limit, within what the budget leaves after
# reserving `later` seconds for the steps after it.
limit() {
  local own=$1 later=$2 left
  left=$(( START + BUDGET - $(date +%s) - later ))
  (( left < own )) && own=$left
  echo "$own"
}

declare -A STATUS
run_step() {  # name own_limit reserve_for_later log command...
  local name=$1 own=$2 later=$3 log=$4; shift 4
  local t
  t=$(limit "$own" "$later")
  if (( t < 10 )); then
    say "$name: skipped (out of time)"
    STATUS[$name]="skipped: out of time"
    return 124
  fi
  say "$name (limit ${t}s, log $log)"
  timeout --kill-after=10 "$t" "$@" >"$log" 2>&1
  local rc=$?
  if (( rc == 124 || rc == 137 )); then
    STATUS[$name]="timed out after ${t}s"
  else
    STATUS[$name]="exit $rc"
  fi
  say "$name: ${STATUS[$name]}"
  return $rc
}

FAILED=0

# --- 2. build ---------------------------------------------------------------------------
rm -rf "$BUILD/pkg"
mkdir -p "$BUILD/pkg"
cp -r python/fusedopt "$BUILD/pkg/fusedopt"
find "$BUILD/pkg" -name __pycache__ -prune -exec rm -rf {} +
run_step configure 120 330 "$OUT/configure.log" \
  cmake -S . -B "$BUILD" -G Ninja -DFUSEDOPT_TF=OFF -DFUSEDOPT_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${FUSEDOPT_GPU_CHECK_ARCHS:-native}" -DCMAKE_CUDA_COMPILER="$NVCC" \
    -DPython3_EXECUTABLE="$PY" -DFUSEDOPT_OUTPUT_DIR="$BUILD/pkg/fusedopt"
CONF_RC=$?
BUILD_RC=1
if (( CONF_RC == 0 )); then
  run_step build 300 270 "$OUT/build.log" cmake --build "$BUILD" -j
  BUILD_RC=$?
fi
if (( BUILD_RC != 0 )); then
  FAILED=1
  say "the build failed; the end of its log:"
  tail -n 30 "$OUT/configure.log" "$OUT/build.log" 2>/dev/null >&2
fi

export PYTHONPATH="$BUILD/pkg:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2

# --- 3. tests and benchmark ---------------------------------------------------------------
if (( BUILD_RC == 0 )); then
  "$PY" -c "import fusedopt._native as n, json; print(json.dumps({'build': n.build_info(), 'cuda': n.cuda_info()}))" \
    >"$OUT/native_info.json" 2>"$OUT/native_info.log" || say "fusedopt._native does not import: see native_info.log"
  export FUSEDOPT_GPU_REPORT="$OUT/gpu_parity.json"
  eval "extra_args=(${FUSEDOPT_GPU_PYTEST_ARGS:-})"  # shell words: -m "not huge" stays 2 args
  run_step pytest_gpu 300 150 "$OUT/pytest.log" \
    "$PY" -m pytest tests/gpu --confcutdir=tests/gpu -p no:cacheprovider -q -rfEs \
      --junitxml="$OUT/pytest.xml" "${extra_args[@]}" || FAILED=1
  # The CPU half, without TensorFlow: --noconftest (tests/conftest.py imports it).
  if [[ "${FUSEDOPT_GPU_CHECK_SKIP_CPU:-0}" == 1 ]]; then
    say "pytest_cpu: skipped (FUSEDOPT_GPU_CHECK_SKIP_CPU=1)"
    STATUS[pytest_cpu]="skipped: FUSEDOPT_GPU_CHECK_SKIP_CPU=1"
  else
    run_step pytest_cpu 120 100 "$OUT/pytest_cpu.log" \
      "$PY" -m pytest tests/test_native_module.py --noconftest -p no:cacheprovider -q -rfEs \
        --junitxml="$OUT/pytest_cpu.xml" || FAILED=1
  fi
  # fusedopt.jax: the Host handler through JAX on the CPU platform (the CUDA
  # handler does not exist yet); without TensorFlow its TF comparisons skip.
  "$PY" - >"$OUT/jax_info.json" 2>"$OUT/jax_info.log" <<'PYEOF' || say "JAX is not importable here: see jax_info.log"
import importlib.metadata as md, json
import jax
import fusedopt._native as n
print(json.dumps({"jax": jax.__version__, "jaxlib": md.version("jaxlib"),
                  "devices": [str(d) for d in jax.devices()],
                  "xla_ffi": n.build_info()["xla_ffi"]}))
PYEOF
  if [[ "${FUSEDOPT_GPU_CHECK_SKIP_JAX:-0}" == 1 ]]; then
    say "pytest_jax: skipped (FUSEDOPT_GPU_CHECK_SKIP_JAX=1)"
    STATUS[pytest_jax]="skipped: FUSEDOPT_GPU_CHECK_SKIP_JAX=1"
  elif [[ ! -s "$OUT/jax_info.json" ]]; then
    STATUS[pytest_jax]="skipped: JAX is not importable"
  else
    say "JAX: $(cat "$OUT/jax_info.json")"
    run_step pytest_jax 90 100 "$OUT/pytest_jax.log" \
      env JAX_PLATFORMS=cpu "$PY" -m pytest tests/test_jax.py --noconftest -p no:cacheprovider \
        -q -rfEs --junitxml="$OUT/pytest_jax.xml" || FAILED=1
  fi
  run_step host_overhead 40 190 "$OUT/host_overhead.log" \
    "$PY" scripts/gpu_host_overhead.py --json "$OUT/host_overhead.json"  # a measurement: not a check
  run_step bench 180 15 "$OUT/bench.log" \
    "$PY" -m fusedopt.bench --suite gpu --json "$OUT/bench.json" --markdown "$OUT/bench.md" || FAILED=1
fi

# --- 4. device facts and summary --------------------------------------------------------------
timeout 30 nvidia-smi -q >"$OUT/device.txt" 2>&1
{
  for k in "${!STATUS[@]}"; do echo "$k=${STATUS[$k]}"; done
} >"$OUT/steps.txt"
GPU_LINE="$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
NVCC_VERSION="$("$NVCC" --version | grep -o 'release [0-9.]*, V[0-9.]*' | head -1)"
"$PY" - "$OUT" "$GPU_LINE" "$NVCC_VERSION" "$FAILED" "$(( $(date +%s) - START ))" <<'EOF'
import datetime, json, os, sys
import xml.etree.ElementTree as ET

out, gpu_line, nvcc_version, failed, seconds = sys.argv[1:6]

def read(name, default=None):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f) if name.endswith(".json") else f.read()
    except (OSError, ValueError):
        return default

def counts(xml):
    try:
        root = ET.parse(os.path.join(out, xml)).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root)
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    return c

steps = dict(l.split("=", 1) for l in (read("steps.txt", "") or "").splitlines() if "=" in l)
native = read("native_info.json", {}) or {}
jax_info = read("jax_info.json", {}) or {}
parity = read("gpu_parity.json", {}) or {}
bench = read("bench.json", {}) or {}
summary = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "gpu": gpu_line,
    "nvcc": nvcc_version,
    "native": native,
    "steps": steps,
    "pytest_gpu": counts("pytest.xml"),
    "pytest_cpu": counts("pytest_cpu.xml"),
    "pytest_jax": counts("pytest_jax.xml"),
    "jax": jax_info,
    "parity_summary": parity.get("summary"),
    "parity_not_identical": [
        {k: r.get(k) for k in ("test", "case", "dtype", "weight_decay", "transform",
                               "expected_identical", "differing_elements", "max_ulp")}
        for r in parity.get("not_identical", [])],
    "bench_rows": bench.get("rows"),
    "bench_state_rows": bench.get("state_rows"),
    "copy_bandwidth_gb_per_s": (bench.get("meta") or {}).get("copy", {}).get("gb_per_s"),
    "failed": failed == "1",
    "seconds": int(seconds),
}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)

def fmt(c):
    if not c:
        return "no result (see the log)"
    return (f"{c['passed']} passed, {c['failures']} failed, {c['errors']} errors, "
            f"{c['skipped']} skipped")

cuda = native.get("cuda", {})
lines = [
    "# fusedopt GPU check",
    "",
    f"- date: {summary['date']} ({summary['seconds']} s)",
    f"- GPU: {gpu_line}",
    f"- nvcc: {nvcc_version}; fusedopt CUDA runtime {cuda.get('runtime_version')}, "
    f"driver supports {cuda.get('driver_version')}, status: {cuda.get('status')}",
    f"- build: {json.dumps(native.get('build'))}",
    f"- steps: " + ", ".join(f"{k}: {v}" for k, v in sorted(steps.items())),
    f"- tests/gpu: {fmt(summary['pytest_gpu'])}",
    f"- tests/test_native_module.py (CPU): {fmt(summary['pytest_cpu'])}",
    f"- tests/test_jax.py (JAX on the CPU platform): {fmt(summary['pytest_jax'])}; jax "
    f"{jax_info.get('jax')}, jaxlib {jax_info.get('jaxlib')}, devices {jax_info.get('devices')}, "
    f"FFI handlers {json.dumps(jax_info.get('xla_ffi'))}",
    "",
    "## CPU vs GPU bits",
    "",
]
for k, v in sorted((summary["parity_summary"] or {}).items()):
    lines.append(f"- {k}: {v['identical']} identical, {v['different']} different")
for r in summary["parity_not_identical"][:60]:
    lines.append(f"  - {r['test']} {r['case']} {r['dtype']} wd={r['weight_decay']} "
                 f"transform={r['transform']}: {r['differing_elements']} max ulp {r['max_ulp']}"
                 + (" (expected identical)" if r.get("expected_identical") else ""))
skips = []
for log in ("pytest.log", "pytest_cpu.log", "pytest_jax.log"):
    skips += [f"{log}: {l}" for l in (read(log, "") or "").splitlines()
              if l.startswith(("SKIPPED", "FAILED", "ERROR"))]
if skips:
    lines += ["", "## Failed and skipped tests", ""] + [f"- {l}" for l in skips[:40]]
lines += ["", "## Benchmark", ""]
md = read("bench.md")
if md and md.count("\n") > 2:
    lines.append(md.split("\n", 2)[2])
else:
    tail = (read("bench.log", "") or "").strip().splitlines()[-3:]
    lines.append("no benchmark result; the end of bench.log:")
    lines += [f"    {l}" for l in tail]
overhead = (read("host_overhead.log", "") or "").strip()
if overhead:
    lines += ["", "## Host cost per tensor", "", "```"] + overhead.splitlines()[-8:] + ["```"]
lines += ["", "Result: " + ("FAILED" if failed == "1" else "passed")]
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines[:12]))
EOF
say "wrote $OUT/summary.md and summary.json"
if (( FAILED )); then
  say "FAILED (steps: $(tr '\n' ' ' <"$OUT/steps.txt"))"
  exit 1
fi
say "passed"
exit 0
