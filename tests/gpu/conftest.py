"""Setup of the GPU tests of fusedopt._native; independent of tests/conftest.py
(which imports TensorFlow), so on a GPU machine without TensorFlow run

    python -m pytest tests/gpu --confcutdir=tests/gpu -p no:cacheprovider

- puts tests/ on sys.path (tests/native_harness.py);
- registers the marker `huge` (a tensor past 2**31 elements: deselect with
  -m "not huge");
- collects the CPU-vs-GPU parity facts the tests record and writes them as
  JSON to $FUSEDOPT_GPU_REPORT at the end of the session (if set).
"""

from __future__ import annotations

import json
import os
import platform
import sys

import pytest

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import native_harness as H  # noqa: E402

_RECORDS: list[dict] = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "huge: a tensor past 2**31 elements (GPU memory permitting); "
        "deselect with -m 'not huge'")


@pytest.fixture
def rng():
    """A freshly seeded generator per test (seed printed; FUSEDOPT_TEST_SEED replays)."""
    return H.seeded_rng()


@pytest.fixture(scope="session")
def parity_report():
    """A list the tests append their facts to (see pytest_sessionfinish)."""
    return _RECORDS


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("FUSEDOPT_GPU_REPORT")
    if not path or not _RECORDS:
        return
    env = H.gpu_environment()
    device = {}
    if not isinstance(env, str):
        nat, arrays, _ = env
        device = {"name": arrays.device_name(), "array_library": f"{arrays.name} {arrays.version}",
                  "cuda": nat.cuda_info(), "build": nat.build_info()}
    by_kind: dict[str, dict[str, int]] = {}
    for r in _RECORDS:
        k = by_kind.setdefault(f"{r['test']}/{r['dtype']}", {"identical": 0, "different": 0})
        k["identical" if r["identical"] else "different"] += 1
    out = {
        "device": device,
        "host": platform.node(),
        "summary": by_kind,
        "not_identical": [r for r in _RECORDS if not r["identical"]],
        "records": _RECORDS,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
