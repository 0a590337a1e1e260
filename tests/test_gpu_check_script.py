"""scripts/gpu_check.sh on a machine without a GPU: it stops before building
anything, exit 2, naming each missing tool; and the GPU benchmark's logic
(fusedopt-bench --suite gpu): exit 2 without a GPU, a CPU smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(tmp_path, env_extra, args=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUSEDOPT_NVCC", "CUDA_HOME", "PYTHON", "BUILD")}
    env.update(env_extra)
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(SCRIPT)] + ([str(out)] if args is None else args), env=env,
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return r, out


def test_without_driver_and_compiler_it_exits_2_naming_them(tmp_path):
    r, out = _run(tmp_path, {"PATH": "/usr/bin:/bin", "CUDA_HOME": str(tmp_path / "no-cuda"),
                             "BUILD": str(tmp_path / "build")})
    assert r.returncode == 2, r.stderr
    assert "missing" in r.stderr
    on_path = {t: any(os.access(f"{d}/{t}", os.X_OK) for d in ("/usr/bin", "/bin"))
               for t in ("nvidia-smi", "nvcc")}
    assert not all(on_path.values()), "this machine has both tools in /usr/bin"
    for tool, present in on_path.items():
        if not present:
            assert tool in r.stderr, (tool, r.stderr)
    assert not (tmp_path / "build").exists()  # nothing was built
    assert not (out / "summary.md").exists()


def test_a_driver_listing_no_gpu_is_named(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    nvcc = bin_dir / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.48'\n")
    for f in (smi, nvcc):
        f.chmod(0o755)
    r, _ = _run(tmp_path, {"PATH": f"{bin_dir}:/usr/bin:/bin", "FUSEDOPT_NVCC": str(nvcc),
                           "PYTHON": sys.executable, "BUILD": str(tmp_path / "build")})
    assert r.returncode == 2, r.stderr
    assert "lists no GPU" in r.stderr
    assert "No devices were found" in r.stderr
    assert "nvcc (the CUDA compiler)" not in r.stderr  # FUSEDOPT_NVCC was found
    assert "python module" not in r.stderr  # this Python has numpy, pybind11 and pytest


def test_usage(tmp_path):
    r, _ = _run(tmp_path, {}, args=[])
    assert r.returncode == 2
    assert "usage" in r.stderr


# --- the GPU benchmark's own logic (python -m fusedopt.bench --suite gpu) -----------------


def _bench(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-m", "fusedopt.bench", "--suite", "gpu", *args],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_bench_without_a_gpu_exits_2(tmp_path):
    nat = pytest.importorskip("fusedopt._native")
    if nat.cuda_available():
        pytest.skip("this machine has a usable GPU")
    r = _bench(tmp_path, "--json", str(tmp_path / "b.json"))
    assert r.returncode == 2, r.stderr
    assert "CUDA" in r.stderr
    assert not (tmp_path / "b.json").exists()


def test_bench_smoke_run_on_the_cpu_checks_and_writes_every_row(tmp_path):
    """--device cpu: the whole pipeline (contenders checked against the
    reference, then timed) on tiny CPU arrays."""
    pytest.importorskip("fusedopt._native")
    from fusedopt.bench.shapes import mixed, resnet50

    # ResNet-50 as Keras builds it (convolutions with biases), the one table of
    # fusedopt.bench.shapes (was 161 tensors, 25,557,032: torchvision's layout).
    shapes = resnet50()
    assert len(shapes) == 214 and sum(int(np.prod(s)) for s in shapes) == 25_583_592
    mixed = mixed()
    assert len(mixed) == 1000 and min(mixed) >= (16,) and max(mixed) <= (2**18,)
    r = _bench(tmp_path, "--device", "cpu", "--scale", "1e-4", "--repeats", "2", "--warmup", "1",
               "--dtypes", "float32", "--no-torch-optim", "--json", str(tmp_path / "b.json"),
               "--markdown", str(tmp_path / "b.md"))
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "b.json").read_text())
    rows = out["rows"]
    assert {(x["rule"], x["workload"].split("-")[0]) for x in rows} == {
        (rule, w) for rule in ("adam", "adamw", "sgd_momentum", "lion", "rmsprop", "lamb")
        for w in ("single", "resnet50", "mixed")}
    assert all(x["check"] == "ok" and x["median_ms"] > 0 and x["gb_per_s"] > 0 for x in rows)
    assert out["meta"]["copy"]["gb_per_s"] > 0
    assert "| adam | float32 |" in (tmp_path / "b.md").read_text()


def test_bench_state_rows_on_the_cpu(tmp_path):
    """The low-precision state rows (--device cpu): fusedopt's float32,
    bfloat16 and int8 state checked against the CPU's bits and timed; the
    third-party 8-bit optimizers "not installed" or skipped, never a failure."""
    pytest.importorskip("fusedopt._native")
    from fusedopt import state
    from fusedopt.bench import gpu

    r = _bench(tmp_path, "--device", "cpu", "--scale", "1e-4", "--repeats", "2", "--warmup", "1",
               "--dtypes", "float32", "--algorithms", gpu.STATE_SPEC.name, "--no-torch-optim",
               "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md"))
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "b.json").read_text())
    n = out["meta"]["state"]["elements"]
    assert n == int(gpu.SINGLE_ELEMENTS * 1e-4)
    rows = {(x["contender"], x["state"]): x for x in out["state_rows"]}
    ours = {fmt: rows[("fusedopt", fmt)] for fmt in gpu.STATE_FORMATS}
    have_bf16 = gpu._ml_bfloat16() is not None
    for fmt, row in ours.items():
        slots = len(gpu.STATE_SPEC.slots)
        assert row["bytes_per_element"] == pytest.approx(
            12 + 2 * state.bytes_per_element(fmt, slots, (n,)))
        if fmt == "bfloat16" and not have_bf16:
            assert row["check"].startswith("skipped"), row
            continue
        assert row["check"] == "ok", row
        assert row["median_ms"] > 0 and row["gb_per_s"] > 0 and row["speed_vs_float32_state"] > 0
    assert ours["float32"]["speed_vs_float32_state"] == pytest.approx(1.0)
    # At 64M elements: 28, 20 and 16 + 1/16 bytes per element.
    assert [gpu.state_bytes_per_element(f, 2, gpu.SINGLE_ELEMENTS) for f in gpu.STATE_FORMATS] \
        == [28, 20, 16.0625]
    others = [x for x in out["state_rows"] if x["contender"] != "fusedopt"]
    assert {x["state"] for x in others} <= {"int8", "float32"} and len(others) >= 2
    assert all(x["check"] == "not installed" or x["check"].startswith("skipped")
               for x in others), others
    md = (tmp_path / "b.md").read_text()
    assert f"## Low-precision state ({gpu.STATE_SPEC.name}, {n:,} elements)" in md
    assert "| fusedopt | int8 | ok | 16." in md


def test_bench_state_rows_fail_when_the_device_differs(monkeypatch):
    """A "device" whose float32 inputs differ by one ulp from the CPU's: every
    fusedopt state row is WRONG (and fails the suite), none is timed."""
    nat = pytest.importorskip("fusedopt._native")
    import argparse

    from fusedopt.bench import gpu

    device = gpu.StateIO.device

    def off_by_one_ulp(self, x, kind):
        d = device(self, x, kind)
        if kind == "float32" and d.size:
            d.reshape(-1).view(np.uint32)[0] += 1
        return d

    monkeypatch.setattr(gpu.StateIO, "device", off_by_one_ulp)
    args = argparse.Namespace(seed=0, repeats=2, warmup=1, no_torch_optim=True)
    rows = gpu.state_rows(nat, gpu.NumpyArrays(), gpu.STATE_SPEC, 5000, args, 1.0)
    ours = [r for r in rows if r.contender == "fusedopt" and not r.check.startswith("skipped")]
    assert ours and all(r.failed and r.check.startswith("WRONG") and r.median_ms is None
                        for r in ours), ours
