"""Runs the TensorFlow-free native tests (tests/native), built by scripts/test.sh."""

from __future__ import annotations

import os
import subprocess

import pytest


def test_native_index_arithmetic():
    exe = os.environ.get("FUSEDOPT_NATIVE_TESTS")
    if not exe:
        pytest.skip("FUSEDOPT_NATIVE_TESTS not set (scripts/test.sh builds and sets it)")
    r = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"native tests failed (rc={r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip().endswith("0 failed"), r.stdout
