"""Host-side cost per tensor of a fusedopt._native call on a CUDA device, and
of its parts, for calls over many small tensors (where the step is bound by
the host, not by memory):

    python scripts/gpu_host_overhead.py [--json FILE]

Rows (microseconds per tensor, median of repeated calls over 1000 one-element
float32 tensors, a device synchronisation after each call): nat.apply through
CuPy arrays and through PyTorch tensors (Adam: 4 arrays a tensor), the parts
(reading CuPy's __cuda_array_interface__, cudaPointerGetAttributes through
CuPy, PyTorch's data_ptr) and torch.optim.Adam(fused=True).step() on the same
count of one-element parameters. Needs CuPy and/or PyTorch with CUDA."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

N = 1000


def per_tensor_us(fn, sync, reps: int = 15, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / N * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json")
    args = p.parse_args()
    import fusedopt._native as nat

    hp = dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    rows: dict[str, float] = {}
    try:
        import cupy as cp

        sync = cp.cuda.Device().synchronize
        mk = [cp.full(1, 0.5, np.float32) for _ in range(4 * N)]
        vs, gs, ms, vv = mk[:N], mk[N:2 * N], mk[2 * N:3 * N], mk[3 * N:]
        rows["nat.apply adam, CuPy arrays"] = per_tensor_us(
            lambda: nat.apply("adam", vs, gs, {"m": ms, "v": vv}, hp, step=1), sync)
        rows["  CuPy __cuda_array_interface__ (x4)"] = 4 * per_tensor_us(
            lambda: [x.__cuda_array_interface__ for x in vs], sync)
        rows["  cudaPointerGetAttributes via CuPy (x4)"] = 4 * per_tensor_us(
            lambda: [cp.cuda.runtime.pointerGetAttributes(x.data.ptr) for x in vs], sync)
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            sync = torch.cuda.synchronize
            mk = [torch.full((1,), 0.5, device="cuda") for _ in range(4 * N)]
            vs, gs, ms, vv = mk[:N], mk[N:2 * N], mk[2 * N:3 * N], mk[3 * N:]
            rows["nat.apply adam, PyTorch tensors"] = per_tensor_us(
                lambda: nat.apply("adam", vs, gs, {"m": ms, "v": vv}, hp, step=1), sync)
            rows["  PyTorch data_ptr() (x4)"] = 4 * per_tensor_us(
                lambda: [x.data_ptr() for x in vs], sync)
            params = [torch.nn.Parameter(torch.zeros(1, device="cuda")) for _ in range(N)]
            for q in params:
                q.grad = torch.full((1,), 0.5, device="cuda")
            opt = torch.optim.Adam(params, lr=1e-3, fused=True)
            rows["torch.optim.Adam(fused=True).step()"] = per_tensor_us(opt.step, sync)
    except ImportError:
        pass
    width = max(len(k) for k in rows) if rows else 10
    print(f"{'host cost per tensor (1000 one-element tensors)':{width}s}  us")
    for k, v in rows.items():
        print(f"{k:{width}s}  {v:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tensors": N, "us_per_tensor": rows}, f, indent=1)
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
