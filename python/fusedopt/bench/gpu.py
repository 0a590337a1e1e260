"""GPU benchmark of fusedopt._native, without TensorFlow.

    fusedopt-bench --suite gpu --json OUT.json --markdown OUT.md
    (python -m fusedopt.bench --suite gpu ...: the CLI imports TensorFlow
    only for the suites that need it, never for this one)

Device arrays come from CuPy when it is importable, else PyTorch (bfloat16
needs PyTorch: CuPy has no bfloat16). For each case (fusedopt.bench.cases.GPU;
CASES places every registry rule, timed or skipped) and dtype it
times one ``nat.apply`` step on (a) one tensor of 64M elements, (b) the 214
trainable tensors of ResNet-50 as Keras builds it (fusedopt.bench.shapes: 53
convolutions' kernels and biases, 53 batch-norm scales and offsets, the
classifier's kernel and bias; 25,583,592 elements) and (c) 1,000 tensors of
mixed sizes, with CUDA events as the clock of fusedopt.bench.timing: 3 warm-up
steps, then the median of 20 (the events enclose the host call, so Python's
and the module's per-call cost count).

GB/s is the bytes a step must move (reads + writes per element, e.g. for two
slots: var and both slots read and written, grad read = 7 x element size) over its time; the
roofline is a device-to-device copy of a 1 GiB buffer (read + write counted),
and every row shows its fraction of that. With PyTorch present,
torch.optim's fused and foreach implementations of the same rule run on the
same sizes and dtype as comparisons.

Before timing, every contender takes one step from a known state and is
compared with the float64 NumPy reference (fusedopt.reference; sampled
elements of large tensors, whole-tensor rules in full): a contender that fails is marked
WRONG in the output and not timed.

Progress goes to stderr. Exit status: 0, 1 if a contender was wrong (a
state row WRONG or ERROR included), 2 if
there is no usable GPU (or no CUDA build of fusedopt._native).

Low-precision state (issue #31): the featured rule's case
(fusedopt.bench.cases.GPU_STATE) on one tensor of the single workload's
size with its slots in float32, bfloat16 and int8 (fusedopt.state), beside
torch.optim's fused float32 and, where installed, the 8-bit optimizers of
bitsandbytes and torchao (weight decay 0; reference.LowBitOptim names
them): every contender checked first
(fusedopt's formats against the CPU's bits through fusedopt._native, the
torch-based ones loosely against the float64 reference), then all timed in
interleaved rounds (at most 10), with bytes per element (28, 20, 16.06), GB/s,
% of copy and speed relative to fusedopt's float32 state (section
"low-precision state" below; --no-state leaves it out). A third-party
optimizer that is not installed, or raises, is reported, not failed.

``--device cpu`` runs the same pipeline on tiny CPU arrays (PyTorch CPU
tensors or NumPy): a smoke test of this script, not a benchmark.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from fusedopt import reference as ref
from fusedopt.bench import cases
from fusedopt.bench import shapes as model_shapes
from fusedopt.bench import timing
from fusedopt.bench.rules import Skip, check_slots, registry, require_known

DTYPE_NAMES = ["float16", "bfloat16", "float32", "float64"]
ELEM_SIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
SINGLE_ELEMENTS = 64 * 2**20
COPY_BYTES = 2**30


def log(msg: str) -> None:
    print(f"[fusedopt.bench.gpu] {msg}", file=sys.stderr, flush=True)


# --- device arrays -------------------------------------------------------------------------


class TorchArrays:
    """PyTorch tensors on one device ('cuda' or 'cpu')."""

    name = "torch"

    def __init__(self, device: str = "cuda"):
        import torch

        self.torch = torch
        self.device = torch.device(device, torch.cuda.current_device()) if device == "cuda" \
            else torch.device("cpu")
        self.is_cuda = device == "cuda"
        self._dt = {"float16": torch.float16, "bfloat16": torch.bfloat16,
                    "float32": torch.float32, "float64": torch.float64}
        self._int = {2: torch.int16, 4: torch.int32, 8: torch.int64}
        self.version = torch.__version__

    @property
    def stream(self) -> int:
        return self.torch.cuda.current_stream().cuda_stream if self.is_cuda else 0

    def supports(self, dtype: str) -> bool:
        return dtype in self._dt

    def torch_dtype(self, dtype: str):
        return self._dt[dtype]

    def from_f64(self, x64, dtype: str):
        x = self.torch.from_numpy(np.array(x64, np.float64, copy=True))
        # torch.empty: the standard strides (from_numpy gives an empty array stride 0).
        out = self.torch.empty(tuple(x.shape), dtype=self._dt[dtype], device=self.device)
        return out.copy_(x.to(self.device))

    def to_f64(self, a) -> np.ndarray:
        # A copy: on the CPU, .numpy() would share the tensor's memory.
        return a.detach().to(self.torch.float64).cpu().numpy().copy()

    def bits(self, a) -> np.ndarray:
        size = a.element_size()
        raw = a.detach().contiguous().view(self._int[size]).cpu().numpy().copy()
        return raw.reshape(-1).view({2: np.uint16, 4: np.uint32, 8: np.uint64}[size])

    def empty(self, n: int, dtype: str):
        return self.torch.empty(n, dtype=self._dt[dtype], device=self.device)

    def zeros(self, n: int, dtype: str):
        return self.torch.zeros(n, dtype=self._dt[dtype], device=self.device)

    def full(self, n: int, value: float, dtype: str):
        return self.torch.full((n,), value, dtype=self._dt[dtype], device=self.device)

    def fill_bits(self, a, pattern: int) -> None:
        size = a.element_size()
        signed = pattern - (1 << (8 * size)) if pattern >= 1 << (8 * size - 1) else pattern
        a.view(self._int[size]).fill_(signed)

    def assign(self, dst, x64, dtype: str) -> None:
        dst.copy_(self.from_f64(x64, dtype).reshape(dst.shape))

    def randn(self, n: int, dtype: str, seed: int, away_from_zero: float = 0.0, scale=1.0):
        g = self.torch.Generator(device=self.device).manual_seed(seed)
        x = self.torch.randn(n, generator=g, device=self.device, dtype=self.torch.float32) * scale
        if away_from_zero:
            x = x + self.torch.sign(x) * away_from_zero
        return x.to(self._dt[dtype])

    def gather_f64(self, a, idx: np.ndarray) -> np.ndarray:
        flat = a.reshape(-1)
        if idx is None:
            return self.to_f64(flat)
        return self.to_f64(flat[self.torch.from_numpy(idx).to(self.device)])

    def count_not_equal(self, a, value: float) -> int:
        return int((a != value).sum().item())

    def copy(self, dst, src) -> None:
        dst.copy_(src)

    def synchronize(self) -> None:
        if self.is_cuda:
            self.torch.cuda.synchronize()

    def mem_get_info(self) -> tuple[int, int]:
        if not self.is_cuda:
            return (0, 0)
        return tuple(int(x) for x in self.torch.cuda.mem_get_info())

    def new_stream(self):
        s = self.torch.cuda.Stream()
        return s, s.cuda_stream

    def sync_stream(self, s) -> None:
        s.synchronize()

    def timer(self) -> "Timer":
        return Timer(self)

    def device_name(self) -> str:
        return self.torch.cuda.get_device_name() if self.is_cuda else platform.processor() or "cpu"

    def release(self) -> None:
        if self.is_cuda:
            self.torch.cuda.empty_cache()


class CupyArrays:
    """CuPy arrays on the current device (no bfloat16)."""

    name = "cupy"
    is_cuda = True

    def __init__(self):
        import cupy

        self.cp = cupy
        self.version = cupy.__version__
        cupy.cuda.runtime.getDeviceCount()  # raises without a device

    @property
    def stream(self) -> int:
        return self.cp.cuda.get_current_stream().ptr

    def supports(self, dtype: str) -> bool:
        return dtype != "bfloat16"

    def _np(self, dtype: str):
        if dtype == "bfloat16":
            raise ValueError("CuPy has no bfloat16")
        return np.dtype(dtype)

    def from_f64(self, x64, dtype: str):
        # (cupy.ascontiguousarray, like NumPy's, makes a 0-d array 1-d: reshape back.)
        x = np.asarray(x64, np.float64)
        return self.cp.ascontiguousarray(self.cp.asarray(x.astype(self._np(dtype)))).reshape(
            x.shape)

    def to_f64(self, a) -> np.ndarray:
        return self.cp.asnumpy(a).astype(np.float64)

    def bits(self, a) -> np.ndarray:
        u = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
        return self.cp.asnumpy(self.cp.ascontiguousarray(a).view(u)).reshape(-1)

    def empty(self, n: int, dtype: str):
        return self.cp.empty(n, self._np(dtype))

    def zeros(self, n: int, dtype: str):
        return self.cp.zeros(n, self._np(dtype))

    def full(self, n: int, value: float, dtype: str):
        return self.cp.full(n, value, self._np(dtype))

    def fill_bits(self, a, pattern: int) -> None:
        u = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
        a.view(u).fill(pattern)

    def assign(self, dst, x64, dtype: str) -> None:
        dst[...] = self.from_f64(x64, dtype).reshape(dst.shape)

    def randn(self, n: int, dtype: str, seed: int, away_from_zero: float = 0.0, scale=1.0):
        rs = self.cp.random.RandomState(seed)
        x = rs.standard_normal(n, dtype=np.float32) * np.float32(scale)
        if away_from_zero:
            x = x + self.cp.sign(x) * np.float32(away_from_zero)
        return x.astype(self._np(dtype))

    def gather_f64(self, a, idx: np.ndarray) -> np.ndarray:
        flat = a.reshape(-1)
        if idx is None:
            return self.to_f64(flat)
        return self.to_f64(flat[self.cp.asarray(idx)])

    def count_not_equal(self, a, value: float) -> int:
        return int((a != value).sum())

    def copy(self, dst, src) -> None:
        dst.data.copy_from_device_async(src.data, src.nbytes, self.cp.cuda.get_current_stream())

    def synchronize(self) -> None:
        self.cp.cuda.Device().synchronize()

    def mem_get_info(self) -> tuple[int, int]:
        return tuple(int(x) for x in self.cp.cuda.runtime.memGetInfo())

    def new_stream(self):
        s = self.cp.cuda.Stream(non_blocking=True)
        return s, s.ptr

    def sync_stream(self, s) -> None:
        s.synchronize()

    def timer(self) -> "Timer":
        return Timer(self)

    def device_name(self) -> str:
        props = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def release(self) -> None:
        self.cp.get_default_memory_pool().free_all_blocks()


class Timer:
    """Times a callable with CUDA events on the current stream (perf_counter
    on the CPU): returns milliseconds. This suite's clock for
    fusedopt.bench.timing."""

    def __init__(self, arrays):
        self.a = arrays

    def __call__(self, fn: Callable[[], Any]) -> float:
        if not self.a.is_cuda:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        if self.a.name == "torch":
            torch = self.a.torch
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            return float(e0.elapsed_time(e1))
        cp = self.a.cp
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        return float(cp.cuda.get_elapsed_time(e0, e1))


def device_arrays(prefer: str | None = None, dtype: str | None = None, device: str = "cuda"):
    """The device-array library to use: CuPy if importable (and the dtype is
    not bfloat16), else PyTorch; None if neither has a usable device."""
    order = [prefer] if prefer else ["cupy", "torch"]
    if dtype == "bfloat16":
        order = [o for o in order if o != "cupy"] or ["torch"]
    if device == "cpu":
        order = [o for o in order if o != "cupy"]
    for kind in order:
        try:
            if kind == "cupy":
                return CupyArrays()
            if kind == "torch":
                import torch

                if device == "cuda" and not torch.cuda.is_available():
                    continue
                return TorchArrays(device)
        except Exception:  # noqa: BLE001 - not importable, no device, a broken install
            continue
    return None


class NumpyArrays(TorchArrays):
    """--device cpu without PyTorch: NumPy arrays (float16/32/64)."""

    name = "numpy"
    is_cuda = False
    stream = 0

    def __init__(self):  # noqa: D401 - no torch
        self.version = np.__version__

    def supports(self, dtype: str) -> bool:
        return dtype != "bfloat16"

    def from_f64(self, x64, dtype: str):
        return np.array(x64, np.float64).astype(dtype)

    def to_f64(self, a):
        return np.array(a, np.float64)  # a copy, as from a device

    def bits(self, a):
        return np.array(a).view({2: np.uint16, 4: np.uint32, 8: np.uint64}[
            a.dtype.itemsize]).reshape(-1)

    def empty(self, n, dtype):
        return np.empty(n, dtype)

    def zeros(self, n, dtype):
        return np.zeros(n, dtype)

    def full(self, n, value, dtype):
        return np.full(n, value, dtype)

    def randn(self, n, dtype, seed, away_from_zero=0.0, scale=1.0):
        x = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * np.float32(scale)
        if away_from_zero:
            x = x + np.sign(x) * np.float32(away_from_zero)
        return x.astype(dtype)

    def gather_f64(self, a, idx):
        flat = a.reshape(-1)
        return np.asarray(flat if idx is None else flat[idx], np.float64)

    def count_not_equal(self, a, value):
        return int(np.count_nonzero(a != value))

    def fill_bits(self, a, pattern):
        a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]).fill(pattern)

    def assign(self, dst, x64, dtype):
        dst[...] = self.from_f64(x64, dtype).reshape(dst.shape)

    def copy(self, dst, src):
        np.copyto(dst, src)

    def synchronize(self):
        pass

    def device_name(self):
        return platform.processor() or "cpu"

    def release(self):
        pass


# --- workloads and rules ------------------------------------------------------------------------


@dataclass
class RuleSpec:
    name: str  # the bench's name (a row's rule)
    rule: str  # the registry's name (nat.rules())
    hparams: dict
    slots: list[str]  # the registry slots this configuration uses, in op order
    # Element accesses beyond one read and write of var and of each slot and
    # one read of grad (a whole-tensor rule's second pass).
    extra_accesses: int = 0
    options: dict = field(default_factory=dict)
    torch: cases.TorchOptim | None = None  # torch.optim's implementation, if it has one
    low_bit: tuple = ()  # third-party 8-bit-state optimizers of it (cases.LowBitOptim)

    @property
    def bytes_per_element(self) -> int:
        """Reads + writes per element, in elements."""
        return 2 * (1 + len(self.slots)) + 1 + self.extra_accesses

    @property
    def step(self) -> bool:
        """Whether the rule takes the step (from the registry)."""
        return registry()[self.rule].step


def _spec(case: cases.GpuCase) -> RuleSpec:
    whole = ref.RULES[case.rule].whole_tensor
    return RuleSpec(case.name, case.rule, dict(case.hparams), list(case.slots),
                    extra_accesses=1 + len(case.slots) if whole else 0, torch=case.torch,
                    low_bit=tuple(case.low_bit))


# Per rule of fusedopt.reference: the cases this suite times, or Skip(why).
CASES: dict[str, list[RuleSpec] | Skip] = {
    rule: [_spec(c) for c in cases.GPU if c.rule == rule] or Skip("not in the GPU suite yet")
    for rule in ref.RULES}
# The cases by the bench's name, in fusedopt.bench.cases.GPU's order.
RULES: dict[str, RuleSpec] = {c.name: _spec(c) for c in cases.GPU}
# The low-precision state rows' case (fusedopt.bench.cases.GPU_STATE).
STATE_SPEC: RuleSpec | None = _spec(cases.GPU_STATE) if cases.GPU_STATE else None


def check_rules() -> None:
    """Fails loudly (fusedopt.bench.rules.UnknownRuleError) where CASES and
    the registry disagree: a rule it does not place, slots it does not have.
    Run before the suite, not at import (importing this module needs no
    fusedopt._native)."""
    require_known(CASES, "fusedopt.bench.gpu.CASES")
    for spec in RULES.values():
        check_slots(spec.rule, spec.slots, f"fusedopt.bench.gpu.RULES[{spec.name!r}]")


TOLERANCE = {"float32": 1e-5, "float64": 1e-10, "bfloat16": 2e-2, "float16": 2e-3}


def reference_step(spec: RuleSpec, var, grad, slots: dict, t: int, torch_semantics: bool = False):
    """One float64 reference step on host arrays: (var, slots)."""
    var, new = ref.apply_rule(spec.rule, var, grad, slots, step=t, **spec.hparams)
    return var, {k: new[k] for k in slots}


def _close(got: np.ndarray, want: np.ndarray, tol: float) -> tuple[bool, float]:
    if got.size == 0:
        return True, 0.0
    scale = max(1.0, float(np.max(np.abs(want))))
    err = float(np.max(np.abs(got - want) / (np.abs(want) * tol + tol * scale)))
    return bool(err <= 1.0 and np.all(np.isfinite(got))), err


# --- contenders -------------------------------------------------------------------------------


class Contender:
    """One implementation of one rule over one list of tensors."""

    label = ""
    checks_slots = True
    a: Any = None  # the array library of its tensors

    def step(self, t: int) -> None:
        raise NotImplementedError

    def arrays(self) -> tuple[list, list, dict]:
        """(vars, grads, {slot name: list}) as device arrays."""
        raise NotImplementedError


class FusedoptContender(Contender):
    label = "fusedopt"

    def __init__(self, nat, arrays, spec: RuleSpec, dtype: str, shapes, seed: int):
        self.nat, self.a, self.spec = nat, arrays, spec
        sizes = [int(np.prod(s)) for s in shapes]
        self.vars = [arrays.randn(n, dtype, seed + i).reshape(s)
                     for i, (n, s) in enumerate(zip(sizes, shapes))]
        self.grads = [arrays.randn(n, dtype, seed + 7919 + i, away_from_zero=0.1).reshape(s)
                      for i, (n, s) in enumerate(zip(sizes, shapes))]
        self.slots = {k: [arrays.zeros(n, dtype).reshape(s) for n, s in zip(sizes, shapes)]
                      for k in spec.slots}
        self.stream = arrays.stream

    def arrays(self):
        return self.vars, self.grads, self.slots

    def step(self, t: int) -> None:
        kw = dict(self.spec.options)
        if self.spec.step:
            kw["step"] = t
        self.nat.apply(self.spec.rule, self.vars, self.grads, self.slots, self.spec.hparams,
                       stream=self.stream, **kw)


class TorchOptimContender(Contender):
    """torch.optim's implementation (fused or foreach) of the same rule, on
    PyTorch tensors of the same shapes and dtype (its own random values)."""

    checks_slots = False  # torch's slots mean other things (a momentum buffer of g, not -lr g)

    def __init__(self, arrays, spec: RuleSpec, impl: str, dtype: str, shapes, seed: int):
        torch = arrays.torch
        self.a, self.spec, self.label = arrays, spec, f"torch.optim ({impl})"
        like = FusedoptContender(None, arrays, RuleSpec(spec.name, spec.rule, spec.hparams, []),
                                 dtype, shapes, seed)
        self.init = [v.detach().clone() for v in like.vars]
        self.params = [torch.nn.Parameter(v) for v in like.vars]
        for p, g in zip(self.params, like.grads):
            p.grad = g
        if spec.torch is None:
            raise ValueError(f"torch.optim has no {spec.name}")
        hp = spec.hparams
        args = {k: tuple(hp[n] for n in v) if isinstance(v, tuple) else hp[v]
                for k, v in spec.torch.args.items()}
        self.opt = getattr(torch.optim, spec.torch.cls)(self.params, **args, **{impl: True})

    def reset(self) -> None:
        """Back to the initial values and a fresh (zero) optimizer state."""
        self.opt.state.clear()
        with self.a.torch.no_grad():
            for p, v in zip(self.params, self.init):
                p.copy_(v)

    def arrays(self):
        return [p.data for p in self.params], [p.grad for p in self.params], {}

    def step(self, t: int) -> None:
        self.opt.step()


def torch_contenders(arrays, spec: RuleSpec, dtype: str, shapes, seed: int) -> list:
    """torch.optim's fused and foreach versions of the rule, those that exist."""
    out = []
    if arrays is None or arrays.name != "torch" or spec.torch is None:
        return out
    for impl in ("fused", "foreach"):
        try:
            c = TorchOptimContender(arrays, spec, impl, dtype, shapes, seed + 1)
            c.step(1)  # some (rule, impl, dtype) raise only when they run
            c.reset()
            out.append(c)
        except (ValueError, RuntimeError, TypeError) as e:
            log(f"  torch.optim {spec.name} {impl} {dtype}: not available "
                f"({str(e).splitlines()[0][:120]})")
    return out


def validate(contender: Contender, arrays, spec: RuleSpec, dtype: str, rng) -> str:
    """One step from the contender's current state (slots zero) against the
    float64 reference: 'ok', or what is wrong."""
    vars_, grads, slots = contender.arrays()
    whole = ref.RULES[spec.rule].whole_tensor
    idx = []
    for v in vars_:
        n = int(np.prod(tuple(v.shape)))
        idx.append(None if whole or n <= 65_536 else np.sort(rng.choice(n, 65_536, replace=False)))
    before_v = [arrays.gather_f64(v, ix) for v, ix in zip(vars_, idx)]
    before_g = [arrays.gather_f64(g, ix) for g, ix in zip(grads, idx)]
    contender.step(1)
    arrays.synchronize()
    vars_, grads, slots = contender.arrays()
    tol = TOLERANCE[dtype]
    worst = 0.0
    for i, ix in enumerate(idx):
        zeros = np.zeros_like(before_v[i])
        want_v, want_s = reference_step(spec, before_v[i], before_g[i],
                                        {k: zeros for k in spec.slots}, 1)
        ok, err = _close(arrays.gather_f64(vars_[i], ix), want_v, tol)
        worst = max(worst, err)
        if not ok:
            return f"WRONG: var[{i}] off by {err:.3g} x tolerance {tol}"
        if contender.checks_slots:
            for k, x in want_s.items():
                ok, err = _close(arrays.gather_f64(slots[k][i], ix), x, tol)
                if not ok:
                    return f"WRONG: {k}[{i}] off by {err:.3g} x tolerance {tol}"
    return "ok"


# --- measurement ----------------------------------------------------------------------------


@dataclass
class Row:
    rule: str
    dtype: str
    workload: str
    contender: str
    tensors: int
    elements: int
    bytes_per_step: int
    check: str
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    gb_per_s: float | None = None
    fraction_of_copy: float | None = None
    # Kernel time per step (CUPTI through torch.profiler): the step without
    # the host's share, which a call over many small tensors is bound by.
    kernel_ms: float | None = None
    kernel_gb_per_s: float | None = None


def time_steps(arrays, fn: Callable[[int], None], warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` steps after `warmup` steps
    (fusedopt.bench.timing, CUDA events as the clock, a device sync after the
    warm-up); the steps are numbered from 2 on."""
    steps = itertools.count(2)
    return timing.rounds({"step": lambda: fn(next(steps))}, repeats, warmup,
                         clock=arrays.timer(), settle=arrays.synchronize)["step"]


def kernel_ms_per_step(arrays, fn: Callable[[int], None], steps: int) -> float | None:
    """The summed duration of the device's kernels (and copies) over `steps`
    steps, per step, from PyTorch's profiler (CUPTI records every kernel of
    the process, fusedopt's included); None without PyTorch with CUDA or when
    the profiler records nothing."""
    if not arrays.is_cuda:
        return None
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        if not torch.cuda.is_available():
            return None
        arrays.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for t in range(steps):
                fn(t + 100)
            arrays.synchronize()
        total_us = 0.0
        for e in prof.key_averages():
            total_us += float(getattr(e, "self_device_time_total",
                                      getattr(e, "self_cuda_time_total", 0.0)) or 0.0)
    except Exception as e:  # noqa: BLE001 - a profiler that does not run here: no column
        log(f"kernel time: the profiler did not run ({type(e).__name__}: {e})")
        return None
    return total_us / steps / 1e3 if total_us > 0 else None


def copy_bandwidth(arrays, nbytes: int, warmup: int, repeats: int) -> dict:
    n = nbytes // 4
    src, dst = arrays.zeros(n, "float32"), arrays.zeros(n, "float32")
    ms = time_steps(arrays, lambda t: arrays.copy(dst, src), warmup, repeats)
    med = timing.median(ms)
    src = dst = None  # noqa: F841 - frees the buffers before the release
    arrays.release()
    return {"bytes": 4 * n, "median_ms": med, "gb_per_s": 2 * 4 * n / (med * 1e-3) / 1e9,
            "note": "device-to-device copy; read + write counted"}


# --- low-precision state (issue #31) ---------------------------------------------------------
#
# One tensor of the single workload's size, the featured rule's gpu case
# (cases.GPU_STATE) with its slots in each state format of fusedopt.state
# (float32, bfloat16, int8) beside torch.optim's fused float32 and the
# third-party optimizers with 8-bit state of the case (bitsandbytes, torchao),
# where installed. The contenders share the variable and gradient buffers and
# are timed in interleaved rounds (fusedopt.bench.timing), so their ratios come
# from one run. Checks before timing: fusedopt's formats give the CPU's bits
# (fusedopt._native on host copies of the same inputs: three steps over small
# tensors of several blocks and rows, then one step of the timed tensor); the
# torch-based optimizers' first step is within LOW_BIT_TOLERANCE x lr of the
# float64 reference on sampled elements (from zero state, the step uses the
# moments before they are quantized: a loose check that they compute the rule).

STATE_FORMATS = ("float32", "bfloat16", "int8")
# Small tensors of the bit check: rows of several blocks with a short last
# one, one row of several blocks, a single short block.
STATE_CHECK_SHAPES = [(3, 700), (4097,), (300,)]
STATE_CHECK_STEPS = 3
LOW_BIT_TOLERANCE = 0.02  # of lr, per element: the update of one step


def state_bytes_per_element(fmt: str, num_slots: int, elements: int) -> float:
    """Bytes a step moves per element of a float32 variable with ``num_slots``
    slots in ``fmt``: the variable read and written, the gradient read, each
    slot (int8: with its share of the absmax) read and written."""
    from fusedopt import state

    return 2 * 4 + 4 + 2 * state.bytes_per_element(fmt, num_slots, (elements,), 4)


@dataclass
class StateRow:
    contender: str  # "fusedopt", "torch.optim (fused)", a bitsandbytes or torchao class, ...
    state: str  # the slots' format: float32, bfloat16, int8
    elements: int
    bytes_per_element: float
    check: str  # ok, WRONG: ..., ERROR: ... (both fail the suite), skipped: ..., not installed
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    gb_per_s: float | None = None
    fraction_of_copy: float | None = None
    # fusedopt's float32-state median over this one (> 1: faster).
    speed_vs_float32_state: float | None = None
    kernel_ms: float | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.check.startswith(("WRONG", "ERROR"))


def _ml_bfloat16():
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        return None


class StateIO:
    """Arrays of the state rows from NumPy bits and back, on the device of
    ``arrays`` (the suite's PyTorch, CuPy or NumPy arrays) and on the host
    (NumPy; bfloat16 as ml_dtypes, else PyTorch CPU tensors). bfloat16
    values travel as their uint16 bits."""

    def __init__(self, arrays):
        self.a = arrays
        self.host_bf16 = _ml_bfloat16()
        self.torch = None
        try:
            import torch

            self.torch = torch
        except ImportError:
            pass

    def bfloat16_on_device(self) -> str | None:
        """Why bfloat16 state cannot run here, or None."""
        if self.a.name == "cupy":
            return "CuPy has no bfloat16 (PyTorch is not installed)"
        if self.a.name == "numpy" and self.host_bf16 is None:
            return "NumPy arrays need ml_dtypes for bfloat16"
        if self.host_bf16 is None and self.torch is None:
            return "the CPU check needs ml_dtypes or PyTorch for bfloat16"
        return None

    def _torch_dtype(self, kind: str):
        t = self.torch
        return {"float32": t.float32, "uint8": t.uint8, "bfloat16": t.bfloat16}[kind]

    def device(self, x: np.ndarray, kind: str):
        """A device array with the bits of x (kind: float32, uint8 or bfloat16)."""
        x = np.ascontiguousarray(x)
        if self.a.name == "torch":
            t = self.torch
            if kind == "bfloat16":
                return t.from_numpy(x.view(np.int16).copy()).to(self.a.device).view(t.bfloat16)
            return t.from_numpy(x.copy()).to(self.a.device)
        if self.a.name == "cupy":
            return self.a.cp.asarray(x)
        return self.host(x, kind)

    def set(self, dst, x: np.ndarray) -> None:
        """Copies the float32 host array x into the device array dst."""
        if self.a.name == "numpy":
            np.copyto(dst, x)
        else:
            self.a.copy(dst, self.device(x, "float32"))

    def device_zeros(self, n: int, kind: str):
        if self.a.name == "torch":
            return self.torch.zeros(n, dtype=self._torch_dtype(kind), device=self.a.device)
        if self.a.name == "cupy":
            return self.a.cp.zeros(n, {"float32": np.float32, "uint8": np.uint8}[kind])
        return self.host(np.zeros(n, np.uint16 if kind == "bfloat16" else kind), kind)

    def host(self, x: np.ndarray, kind: str):
        """A CPU array for fusedopt._native with the bits of x."""
        x = np.ascontiguousarray(x).copy()
        if kind != "bfloat16":
            return x
        if self.host_bf16 is not None:
            return x.view(self.host_bf16)
        t = self.torch
        return t.from_numpy(x.view(np.int16)).view(t.bfloat16)

    def bits(self, d) -> np.ndarray:
        """The bytes of a device or host array, as uint8."""
        t = self.torch
        if t is not None and isinstance(d, t.Tensor):
            if d.dtype == t.bfloat16:
                d = d.view(t.int16)
            return d.detach().cpu().contiguous().numpy().reshape(-1).view(np.uint8)
        if self.a.name == "cupy" and not isinstance(d, np.ndarray):
            d = self.a.cp.asnumpy(d)
        return np.ascontiguousarray(d).reshape(-1).view(np.uint8)


class StateSet:
    """The slots (and int8 absmax) of one format for variables of ``shapes``,
    zero, made by ``zeros(n, kind)``."""

    def __init__(self, fmt: str, slot_names, shapes, zeros):
        from fusedopt import state

        self.fmt = fmt
        kind = {"float32": "float32", "bfloat16": "bfloat16", "int8": "uint8"}[fmt]
        sizes = [int(np.prod(s)) for s in shapes]
        self.slots = {k: [zeros(n, kind).reshape(s) for n, s in zip(sizes, shapes)]
                      for k in slot_names}
        self.absmax = None if fmt != "int8" else {
            k: [zeros(state.num_blocks(s), "float32") for s in shapes] for k in slot_names}

    def arrays(self) -> list:
        out = [x for xs in self.slots.values() for x in xs]
        return out + [x for xs in (self.absmax or {}).values() for x in xs]


def state_apply(nat, spec: RuleSpec, fmt: str, vars_, grads, st: StateSet, t: int, seed: int,
                stream: int) -> None:
    """One fusedopt step with ``st``'s slots (the rounding seed folds in the step)."""
    kw = dict(spec.options)
    if spec.step:
        kw["step"] = t
    if fmt != "float32":
        kw.update(state_dtype=fmt, absmax=st.absmax,
                  rounding_seed=(seed * 0x9E3779B97F4A7C15 + t) % (1 << 64))
    nat.apply(spec.rule, vars_, grads, st.slots, spec.hparams, stream=stream, **kw)


def check_state_bits(nat, io: StateIO, spec: RuleSpec, fmt: str, var0: np.ndarray,
                     grad: np.ndarray, dev_var, dev_grad, seed: int) -> str:
    """fusedopt with ``fmt`` state on the device against the CPU: 'ok' or
    what differs. First STATE_CHECK_STEPS steps over STATE_CHECK_SHAPES, then
    one step of the timed tensor (dev_var is set to var0 first; its slots are
    made and freed here)."""
    rng = np.random.default_rng(seed + 17)
    shapes = STATE_CHECK_SHAPES
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]

    def away_from_zero(g):
        return g + np.sign(g) * np.float32(0.1)

    grads = [[away_from_zero(rng.standard_normal(s).astype(np.float32)) for s in shapes]
             for _ in range(STATE_CHECK_STEPS)]

    def run(put, zeros, stream):
        vs = [put(x, "float32") for x in init]
        st = StateSet(fmt, spec.slots, shapes, zeros)
        for k in range(STATE_CHECK_STEPS):
            state_apply(nat, spec, fmt, vs, [put(g, "float32") for g in grads[k]], st, k + 1,
                        seed, stream)
        io.a.synchronize()
        return [io.bits(x) for x in vs + st.arrays()]

    def host_zeros(n, kind):
        return io.host(np.zeros(n, np.uint16 if kind == "bfloat16" else kind), kind)

    dev = run(io.device, io.device_zeros, io.a.stream)
    cpu = run(io.host, host_zeros, 0)
    bad = [i for i, (x, y) in enumerate(zip(dev, cpu)) if not np.array_equal(x, y)]
    if bad:
        return (f"WRONG: {len(bad)} of {len(dev)} arrays differ from the CPU's bits after "
                f"{STATE_CHECK_STEPS} steps over {shapes}")
    n = var0.size
    io.set(dev_var, var0)
    st = StateSet(fmt, spec.slots, [(n,)], io.device_zeros)
    state_apply(nat, spec, fmt, [dev_var], [dev_grad], st, 1, seed, io.a.stream)
    io.a.synchronize()
    dev = [io.bits(x) for x in [dev_var] + st.arrays()]
    st = None  # noqa: F841 - frees the device's slots before the CPU's are made
    io.a.release()
    hv = var0.copy()
    hst = StateSet(fmt, spec.slots, [(n,)], host_zeros)
    state_apply(nat, spec, fmt, [hv], [grad], hst, 1, seed, 0)
    cpu = [io.bits(x) for x in [hv] + hst.arrays()]
    names = ["var"] + [f"{k}" for k in spec.slots] + (
        [f"absmax[{k}]" for k in spec.slots] if fmt == "int8" else [])
    bad = [nm for nm, x, y in zip(names, dev, cpu) if not np.array_equal(x, y)]
    if bad:
        return f"WRONG: one step of {n:,} elements: {', '.join(bad)} differ from the CPU's bits"
    return "ok"


def _import_low_bit(opt) -> tuple[Any, str] | None:
    """(class, 'module.cls') of a cases.LowBitOptim, or None if not importable."""
    import importlib

    for mod in opt.modules:
        try:
            m = importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - not installed, or an install that does not import
            continue
        if hasattr(m, opt.cls):
            return getattr(m, opt.cls), f"{mod}.{opt.cls}"
    return None


def check_update(spec: RuleSpec, before_v, before_g, after_v) -> str:
    """The loose check of a torch-based contender's first step (slots zero):
    every sampled element's update within LOW_BIT_TOLERANCE x lr (plus the
    variable's float32 rounding) of the float64 reference's."""
    zeros = np.zeros_like(before_v)
    want, _ = reference_step(spec, before_v, before_g, {k: zeros for k in spec.slots}, 1)
    lr = float(spec.hparams["lr"])
    tol = LOW_BIT_TOLERANCE * lr + 2.0 ** -22 * float(np.max(np.abs(before_v)))
    err = np.abs((after_v - before_v) - (want - before_v))
    worst = float(np.max(err)) if err.size else 0.0
    if not np.all(np.isfinite(after_v)) or worst > tol:
        return (f"WRONG: the first step's update is off by {worst:.3g} "
                f"(tolerance {tol:.3g}: {LOW_BIT_TOLERANCE} x lr)")
    return "ok"


def state_rows(nat, arrays, spec: RuleSpec, elements: int, args, copy_gbs: float
               ) -> list[StateRow]:
    """The low-precision state rows (see above), on ``arrays`` (PyTorch
    where it is installed: the bfloat16 state and the torch-based contenders
    need it)."""
    io = StateIO(arrays)
    n = elements
    seed = args.seed + 31
    rng = np.random.default_rng(seed)
    var0 = rng.standard_normal(n, dtype=np.float32)
    grad_h = rng.standard_normal(n, dtype=np.float32)
    grad_h += np.sign(grad_h) * np.float32(0.1)
    dev_var, dev_grad = io.device(var0, "float32"), io.device(grad_h, "float32")
    sample = None if n <= 65_536 else np.sort(rng.choice(n, 65_536, replace=False))
    before_v, before_g = (var0, grad_h) if sample is None else (var0[sample], grad_h[sample])
    before_v, before_g = before_v.astype(np.float64), before_g.astype(np.float64)
    rows: list[StateRow] = []
    timed: dict[str, Callable[[], None]] = {}  # row label -> one step
    keep: list = []  # the contenders' state, alive until the timing ends
    st = param = opt_ = fn = None

    def label(row):
        return f"{row.contender} / {row.state}"

    for fmt in STATE_FORMATS:
        row = StateRow("fusedopt", fmt, n, state_bytes_per_element(fmt, len(spec.slots), n),
                       "ok")
        rows.append(row)
        why = io.bfloat16_on_device() if fmt == "bfloat16" else None
        if why:
            row.check = f"skipped: {why}"
            continue
        try:
            row.check = check_state_bits(nat, io, spec, fmt, var0, grad_h, dev_var, dev_grad,
                                         seed)
        except Exception as e:  # noqa: BLE001 - a call that raises: the row fails
            row.check = f"ERROR: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if row.check != "ok":
            continue
        st = StateSet(fmt, spec.slots, [(n,)], io.device_zeros)
        keep.append(st)
        steps = itertools.count(2)
        timed[label(row)] = (lambda st=st, fmt=fmt, steps=steps: state_apply(
            nat, spec, fmt, [dev_var], [dev_grad], st, next(steps), seed, io.a.stream))

    # torch-based contenders: torch.optim's fused float32 rule, the 8-bit optimizers.
    torch_like = []
    if spec.torch is not None and not args.no_torch_optim:
        torch_like.append(("torch.optim (fused)", "float32", ("torch.optim",), spec.torch.cls,
                           spec.torch.args, {"fused": True}, "torch"))
    for opt in spec.low_bit:
        torch_like.append((opt.library, "int8", opt.modules, opt.cls, opt.args,
                           dict(opt.fixed), opt.library))
    for name, fmt, modules, cls, arg_map, fixed, library in torch_like:
        row = StateRow(name, fmt, n, state_bytes_per_element(fmt, len(spec.slots), n),
                       "not installed")
        rows.append(row)
        found = _import_low_bit(cases.LowBitOptim(library, modules, cls, arg_map))
        if found is None:
            row.note = f"{library} is not importable"
            continue
        klass, where = found
        row.contender = where if library != "torch" else name
        if not io.a.is_cuda or io.a.name != "torch":
            row.check = "skipped: needs PyTorch CUDA tensors"
            continue
        if fmt == "int8":
            row.note = "bytes per element as fusedopt's int8 (blocks of 256)"
        try:
            torch = io.torch
            io.set(dev_var, var0)
            param = torch.nn.Parameter(dev_var)  # shares the buffer
            param.grad = dev_grad
            hp = spec.hparams
            kw = {k: tuple(hp[x] for x in v) if isinstance(v, tuple) else hp[v]
                  for k, v in arg_map.items()}
            opt_ = klass([param], **kw, **fixed)
            opt_.step()
            io.a.synchronize()
            after = io.a.gather_f64(dev_var, sample)
            row.check = check_update(spec, before_v, before_g, after)
        except Exception as e:  # noqa: BLE001 - a third-party optimizer that does not run here
            row.check = f"skipped: it raised {type(e).__name__}: {str(e).splitlines()[0][:160]}" \
                if library != "torch" else f"ERROR: {type(e).__name__}: {e}"
            continue
        if row.check == "ok":
            keep.append((param, opt_))
            timed[label(row)] = opt_.step

    if timed:
        reps = max(1, min(args.repeats, 10))
        times = timing.rounds(timed, reps, args.warmup, clock=io.a.timer(),
                              settle=io.a.synchronize)
        for row in rows:
            ms = times.get(label(row))
            if not ms:
                continue
            row.median_ms, row.min_ms, row.max_ms = timing.median(ms), min(ms), max(ms)
            row.gb_per_s = row.bytes_per_element * n / (row.median_ms * 1e-3) / 1e9
            row.fraction_of_copy = row.gb_per_s / copy_gbs
            fn = timed[label(row)]
            row.kernel_ms = kernel_ms_per_step(io.a, lambda t, fn=fn: fn(), 3)
        base = next((r.median_ms for r in rows if r.contender == "fusedopt"
                     and r.state == "float32" and r.median_ms), None)
        for row in rows:
            if base and row.median_ms:
                row.speed_vs_float32_state = base / row.median_ms
    for row in rows:
        log(f"state {row.contender:34s} {row.state:8s} {row.check[:60]:12s} "
            + (f"{row.median_ms:8.3f} ms {row.gb_per_s:7.1f} GB/s "
               f"({100 * row.fraction_of_copy:.0f}% of copy)" if row.median_ms else ""))
    # Frees the device memory (the loops' last contender included).
    timed = keep = dev_var = dev_grad = st = param = opt_ = fn = None  # noqa: F841
    io.a.release()
    return rows


def state_markdown(meta: dict, rows: list[StateRow]) -> list[str]:
    s = meta.get("state") or {}
    lines = [
        "",
        f"## Low-precision state ({s.get('rule')}, {s.get('elements', 0):,} elements)",
        "",
        "One float32 variable; the slots in each format (fusedopt.state), checked against the "
        "CPU's bits before timing; torch-based contenders checked loosely (the first step's "
        f"update within {LOW_BIT_TOLERANCE} x lr of the float64 reference). Interleaved rounds; "
        "GB/s = bytes per element x elements / median; speed = fusedopt float32 state's "
        "median / this one's.",
        "",
        "| contender | state | check | bytes/el. | median ms | GB/s | % of copy "
        "| speed vs float32 state | kernel ms |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        timed = r.median_ms is not None
        lines.append(
            f"| {r.contender} | {r.state} | {r.check} | {r.bytes_per_element:.2f} | "
            f"{f'{r.median_ms:.3f}' if timed else '-'} | "
            f"{f'{r.gb_per_s:.1f}' if timed else '-'} | "
            f"{f'{100 * r.fraction_of_copy:.0f}%' if timed else '-'} | "
            f"{f'{r.speed_vs_float32_state:.2f}x' if r.speed_vs_float32_state else '-'} | "
            f"{f'{r.kernel_ms:.3f}' if r.kernel_ms else '-'} |")
    return lines


def run(args) -> tuple[dict, list[Row], list[StateRow]]:
    import fusedopt._native as nat

    check_rules()
    main_arrays = device_arrays(args.backend, device=args.device)
    if args.device == "cpu" and main_arrays is None:
        main_arrays = NumpyArrays()
    torch_arrays = main_arrays if main_arrays.name == "torch" else device_arrays(
        "torch", device=args.device)
    if torch_arrays is not None and torch_arrays.name != "torch":
        torch_arrays = None
    scale = args.scale
    single = [(max(1, int(SINGLE_ELEMENTS * scale)),)]
    resnet = model_shapes.scaled(model_shapes.resnet50(), scale)
    workloads = {"single-64M" if scale == 1 else f"single-{single[0][0]}": single,
                 f"resnet50-{len(resnet)}": resnet, "mixed-1000": model_shapes.mixed(scale)}
    copy = copy_bandwidth(main_arrays, max(4096, int(COPY_BYTES * scale)), args.warmup,
                          args.repeats)
    log(f"copy bandwidth {copy['gb_per_s']:.1f} GB/s ({copy['bytes'] / 2**30:.3g} GiB buffer)")
    rows: list[Row] = []
    rng = np.random.default_rng(args.seed)
    for rule_name in args.rules:
        spec = RULES[rule_name]
        for dtype in args.dtypes:
            arrays = main_arrays if main_arrays.supports(dtype) else torch_arrays
            if arrays is None or not arrays.supports(dtype):
                log(f"{rule_name} {dtype}: skipped (no array library with {dtype}: CuPy has no "
                    "bfloat16, PyTorch is not installed)")
                continue
            for wname, shapes in workloads.items():
                elements = sum(int(np.prod(s)) for s in shapes)
                nbytes = spec.bytes_per_element * ELEM_SIZE[dtype] * elements
                fused = FusedoptContender(nat, arrays, spec, dtype, shapes, args.seed)
                contenders: list[Contender] = [fused]
                if not args.no_torch_optim and torch_arrays is not None:
                    contenders += torch_contenders(torch_arrays, spec, dtype, shapes, args.seed)
                for c in contenders:
                    check = validate(c, c.a, spec, dtype, rng)
                    row = Row(rule_name, dtype, wname, c.label, len(shapes), elements, nbytes,
                              check)
                    if check == "ok":
                        ms = time_steps(c.a, c.step, args.warmup, args.repeats)
                        row.median_ms = timing.median(ms)
                        row.min_ms, row.max_ms = min(ms), max(ms)
                        row.gb_per_s = nbytes / (row.median_ms * 1e-3) / 1e9
                        row.fraction_of_copy = row.gb_per_s / copy["gb_per_s"]
                        row.kernel_ms = kernel_ms_per_step(c.a, c.step, 5)
                        if row.kernel_ms:
                            row.kernel_gb_per_s = nbytes / (row.kernel_ms * 1e-3) / 1e9
                    rows.append(row)
                    log(f"{rule_name:12s} {dtype:8s} {wname:14s} {c.label:22s} {check:4s} "
                        + (f"{row.median_ms:8.3f} ms {row.gb_per_s:7.1f} GB/s "
                           f"({100 * row.fraction_of_copy:.0f}% of copy)"
                           if row.median_ms is not None else "")
                        + (f"; kernels {row.kernel_ms:.3f} ms" if row.kernel_ms else ""))
                c = row = contenders = fused = None  # free the device memory before the next
                arrays.release()
                if torch_arrays is not None:
                    torch_arrays.release()
    srows: list[StateRow] = []
    if (STATE_SPEC is not None and STATE_SPEC.name in args.rules
            and not getattr(args, "no_state", False)):
        log(f"low-precision state: {STATE_SPEC.name}, one tensor of {single[0][0]:,} elements")
        srows = state_rows(nat, torch_arrays or main_arrays, STATE_SPEC, single[0][0], args,
                           copy["gb_per_s"])
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": main_arrays.device_name(),
        "device_kind": args.device,
        "array_library": f"{main_arrays.name} {main_arrays.version}",
        "torch": getattr(torch_arrays, "version", None) if torch_arrays else None,
        "fusedopt": nat.build_info(),
        "cuda": nat.cuda_info(),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "scale": scale,
        "copy": copy,
        "method": "CUDA events around each host call (nat.apply / optimizer.step); median of "
                  "repeats after warm-up; GB/s = rule bytes/element x elements / median time",
        "state": None if not srows else {
            "rule": STATE_SPEC.name, "elements": single[0][0],
            "repeats": max(1, min(args.repeats, 10)),
            "method": "one float32 variable, the slots in each format; contenders share the "
                      "variable and gradient and run in interleaved rounds; fusedopt checked "
                      "against the CPU's bits, torch-based contenders' first step within "
                      f"{LOW_BIT_TOLERANCE} x lr of the float64 reference"},
    }
    return meta, rows, srows


def markdown(meta: dict, rows: list[Row], srows: list[StateRow] = ()) -> str:
    lines = [
        f"# fusedopt._native GPU benchmark ({meta['date']})",
        "",
        f"Device: {meta['device']}; CUDA runtime {meta['cuda'].get('runtime_version')}, driver "
        f"{meta['cuda'].get('driver_version')}; arrays: {meta['array_library']}"
        + (f"; torch {meta['torch']}" if meta.get("torch") else ""),
        "",
        f"Roofline: device-to-device copy {meta['copy']['gb_per_s']:.1f} GB/s "
        f"({meta['copy']['bytes'] / 2**30:.3g} GiB buffer, read + write counted). "
        f"Median of {meta['repeats']} steps after {meta['warmup']} warm-up steps.",
        "",
        "Kernel ms: the device's kernels alone per step (PyTorch's profiler), without the "
        "host's share that the median (CUDA events around the host call) includes.",
        "",
        "| rule | dtype | workload | contender | check | median ms | GB/s | % of copy "
        "| kernel ms | kernel % of copy |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    copy_gbs = meta["copy"]["gb_per_s"]
    for r in rows:
        timed = r.median_ms is not None
        k = r.kernel_ms is not None
        lines.append(
            f"| {r.rule} | {r.dtype} | {r.workload} ({r.tensors} tensors, {r.elements:,} el.) | "
            f"{r.contender} | {r.check} | {f'{r.median_ms:.3f}' if timed else '-'} | "
            f"{f'{r.gb_per_s:.1f}' if timed else '-'} | "
            f"{f'{100 * r.fraction_of_copy:.0f}%' if timed else '-'} | "
            f"{f'{r.kernel_ms:.3f}' if k else '-'} | "
            f"{f'{100 * r.kernel_gb_per_s / copy_gbs:.0f}%' if k else '-'} |")
    if srows:
        lines += state_markdown(meta, list(srows))
    return "\n".join(lines) + "\n"


# The CLI's defaults for this suite (fusedopt.bench.cli).
DEFAULTS = dict(dtypes=["float32", "bfloat16"], warmup=3, repeats=20)


def gpu_unavailable(args) -> str | None:
    """Why this benchmark cannot run here, or None."""
    try:
        import fusedopt._native as nat
    except ImportError as e:
        return f"fusedopt._native is not importable: {e}"
    if args.device == "cpu":
        return None
    if not nat.cuda_built():
        return "fusedopt._native was built without CUDA (configure with -DFUSEDOPT_CUDA=ON)"
    if not nat.cuda_available():
        return f"CUDA is not usable: {nat.cuda_info().get('status')}"
    if device_arrays(args.backend) is None:
        return ("neither CuPy nor PyTorch with CUDA is importable: the benchmark needs one of them "
                "for device arrays")
    return None


def run_suite(args) -> int:
    """``fusedopt-bench --suite gpu`` (args from fusedopt.bench.cli: rules,
    dtypes, warmup, repeats, backend, no_torch_optim, seed, device, scale,
    json, markdown)."""
    why = gpu_unavailable(args)
    if why:
        log(why)
        return 2
    t0 = time.time()
    meta, rows, srows = run(args)
    meta["seconds"] = round(time.time() - t0, 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": [asdict(r) for r in rows],
                       "state_rows": [asdict(r) for r in srows]}, f, indent=1,
                      default=lambda o: o if not isinstance(o, float) or math.isfinite(o) else None)
        log(f"wrote {args.json}")
    md = markdown(meta, rows, srows)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
        log(f"wrote {args.markdown}")
    else:
        print(md)
    wrong = [r for r in rows if r.check != "ok"]
    for r in wrong:
        log(f"{r.rule} {r.dtype} {r.workload} {r.contender}: {r.check}")
    failed = [r for r in srows if r.failed]
    for r in failed:
        log(f"low-precision state: {r.contender} {r.state}: {r.check}")
    return 1 if wrong or failed else 0

