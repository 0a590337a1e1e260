"""tests/gpu checked on the CPU in every CI run (issue #30, "without a GPU"):
the GPU tests of fusedopt._native run with FUSEDOPT_GPU_TESTS_ON_CPU=1 on NumPy
arrays (PyTorch CPU tensors where installed), so a broken GPU test is found
here and not in the few minutes a lent GPU machine gives (scripts/gpu_check.sh).
Device-only behaviours skip in that mode; everything else must pass."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_the_gpu_tests_pass_on_cpu_arrays():
    env = dict(os.environ, FUSEDOPT_GPU_TESTS_ON_CPU="1")
    p = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "gpu"), f"--confcutdir={HERE / 'gpu'}",
         "-p", "no:cacheprovider", "-q", "-m", "not huge"],
        capture_output=True, text=True, timeout=900, env=env, cwd=str(HERE.parent))
    tail = (p.stdout + p.stderr)[-3000:]
    assert p.returncode == 0, tail
    passed = re.search(r"(\d+) passed", p.stdout)
    assert passed and int(passed.group(1)) >= 500, tail
    assert " failed" not in p.stdout.splitlines()[-1], tail
