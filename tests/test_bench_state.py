"""fusedopt-bench --suite state (issue #31) in its quickest setting: the
speed contenders checked and timed, the memory rows, and one quality row per
task and state_dtype with the comparison to float32 state."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fusedopt import state

pytest.importorskip("sklearn")


def _bench(tmp_path, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "fusedopt.bench", "--suite", "state", *args],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def test_state_suite_quick(tmp_path):
    out = tmp_path / "state.json"
    r = _bench(tmp_path, "--quick", "--sizes", "65536", "--repeats", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Quality:" in r.stdout and "Speed:" in r.stdout and "100M parameters" in r.stdout
    data = json.loads(out.read_text())
    assert data["schema"] == "fusedopt-bench-state/1" and data["tolerance"] == 0.01
    speed = {row["state_dtype"]: row for row in data["speed"]}
    assert list(speed) == list(state.STATE_DTYPES)
    assert all(row["check"] == "ok" and row["ms"] > 0 for row in speed.values())
    assert [round(speed[k]["bytes_moved_per_element"], 2) for k in speed] == [28, 20, 16.06]
    assert speed["float32"]["speedup_vs_float32"] == 1
    mem = {row["state_dtype"]: row["model_state_mb"] for row in data["memory"]}
    assert mem == pytest.approx({"float32": 800, "bfloat16": 400, "int8": 203.125})
    rows = data["quality"]
    assert [(x["task"], x["state_dtype"]) for x in rows] == [
        (t, s) for t in ("digits-mlp", "digits-convnet", "transformer")
        for s in state.STATE_DTYPES]
    for x in rows:
        assert x["seeds"] == [0] and len(x["runs"]) == 1
        assert 0 < x["loss"] and 0 < x["accuracy"] <= 1
        assert x["within_1pct"] == (abs(x["rel_loss"]) <= 0.01 and abs(x["rel_accuracy"]) <= 0.01)
        assert x["rel_loss_se"] == 0 and x["rel_accuracy_se"] == 0  # one seed: no estimate
        if x["state_dtype"] == "float32":
            assert x["rel_loss"] == 0 and x["low_precision_fraction"] == 0
        else:  # the large variables' slots are low-precision
            assert x["low_precision_fraction"] > 0.9
            assert x["state_bytes_per_parameter"] < 8 * 0.6


def test_standard_error_of_a_difference_of_means():
    from fusedopt.bench import state as bench_state

    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    # stdev 1 over 3 runs, stdev sqrt(2) over 2 runs: sqrt(1/3 + 2/2).
    assert bench_state._se_of_difference(a, b) == pytest.approx((1 / 3 + 1) ** 0.5)
    assert bench_state._se_of_difference([1.0], [2.0]) == 0


def test_state_suite_bad_input_exits_2(tmp_path):
    r = _bench(tmp_path, "--state-tasks", "nope")
    assert r.returncode == 2 and "unknown --state-tasks" in r.stderr
    r = _bench(tmp_path, "--state-optimizer", "NoSuchOptimizer")
    assert r.returncode == 2 and "no optimizer class" in r.stderr
