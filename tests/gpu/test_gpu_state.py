"""Low-precision optimizer state on a CUDA device (issue #31; cc/cuda/state.cuh)
through fusedopt._native: every rule with state, int8 and bfloat16 state,
float32 and bfloat16 variables (stochastically rounded too), with and without
weight decay and the gradient options, over three steps: the device's bits
(variables, codes or bfloat16 slots, absmax) equal the CPU's on the same
inputs. The kernels run the CPU loops' host-device functions and the absmax
is an exact max (Note [GPU int8 blocks]), so nothing may differ.

Skips as tests/gpu does without a device; with FUSEDOPT_GPU_TESTS_ON_CPU=1 the
"device" arrays are CPU ones (a check of the test itself, in CI)."""

from __future__ import annotations

import numpy as np
import pytest

import native_harness as H

ENV = H.gpu_environment()
if isinstance(ENV, str):
    pytest.skip(ENV, allow_module_level=True)
nat, ARRAYS, BF16_ARRAYS = ENV

from fusedopt import state  # noqa: E402  (after the skip: the module needs _native)

STATE_CASES = ["sgd_momentum", "sgd_nesterov", "adam", "adamw", "amsgrad", "nadam", "adamax",
               "rmsprop", "rmsprop_momentum", "rmsprop_centered", "adagrad", "lion"]
CASES = {c.name: c for c in H.CASES}
# The slots holding non-negative values (the unsigned code).
NONNEG = {"v", "vhat", "u", "velocity", "accumulator"}
# Rows of several blocks with a short last one, several rows, one row of
# several blocks, a single short block, a rank-0 variable.
SHAPES = [(5, 613), (2, 3, 300), (4097,), (700,), (3,), ()]


def _backend(dtypes: set):
    """The device arrays for these NumPy dtypes (bfloat16 needs PyTorch)."""
    if "bfloat16" in dtypes:
        if BF16_ARRAYS is None or not H.cpu_supports("bfloat16"):
            pytest.skip("bfloat16 needs PyTorch device arrays and ml_dtypes")
        return BF16_ARRAYS
    return ARRAYS


def _is_bf16(x: np.ndarray) -> bool:
    return x.dtype.itemsize == 2 and x.dtype.kind == "V" or str(x.dtype) == "bfloat16"


def to_device(a, x: np.ndarray):
    """A device array holding the bits of the NumPy array x (float32, uint8 or
    bfloat16), its shape kept."""
    x = np.ascontiguousarray(x)
    if a.name == "numpy":
        return x.copy()
    if a.name == "cupy":
        return a.cp.asarray(x)
    torch = a.torch
    if _is_bf16(x):
        return torch.from_numpy(x.view(np.int16).copy()).to(a.device).view(torch.bfloat16)
    return torch.from_numpy(x.copy()).to(a.device)


def to_host_bytes(a, d) -> bytes:
    if a.name == "numpy":
        return np.asarray(d).tobytes()
    if a.name == "cupy":
        return a.cp.asnumpy(d).tobytes()
    torch = a.torch
    if d.dtype == torch.bfloat16:
        d = d.view(torch.int16)
    return d.detach().cpu().numpy().tobytes()


def _slots(p: H.Problem, state_dtype: str, var_dtype: str) -> tuple[dict, dict | None]:
    if state_dtype == "float32":  # the variables' dtype
        return {k: [H.to_storage(H.rounded(x, var_dtype), var_dtype) for x in xs]
                for k, xs in p.slots.items()}, None
    if state_dtype == "bfloat16":
        bf16 = H.np_dtype("bfloat16")
        return {k: [np.asarray(x, np.float32).astype(bf16) for x in xs]
                for k, xs in p.slots.items()}, None
    codes, absmax = {}, {}
    for k, xs in p.slots.items():
        pairs = [state.quantize(np.asarray(x, np.float32), signed=k not in NONNEG) for x in xs]
        codes[k] = [c for c, _ in pairs]
        absmax[k] = [m for _, m in pairs]
    return codes, absmax


def _seed(k: int) -> int:
    return (0x5DEECE66D * (k + 3) + 0x9E3779B97F4A7C15) % (1 << 64)


def _run(p: H.Problem, state_dtype: str, var_dtype: str, stochastic: bool, a=None) -> dict:
    """Three steps on the CPU (a None) or on a's device; every array's bytes."""
    def put(x):
        return x if a is None else to_device(a, x)

    variables = [put(H.to_storage(H.rounded(x, var_dtype), var_dtype)) for x in p.init]
    slots0, absmax0 = _slots(p, state_dtype, var_dtype)
    slots = {k: [put(x) for x in xs] for k, xs in slots0.items()}
    absmax = None if absmax0 is None else {k: [put(x) for x in xs] for k, xs in absmax0.items()}
    for k in range(p.steps):
        grads = [put(H.to_storage(H.rounded(g, var_dtype), var_dtype)) for g in p.grads[k]]
        extra = {} if a is None else {"stream": a.stream}
        skipped = nat.apply(p.case.rule, variables, grads, slots, p.hparams(k), **p.kwargs(k),
                            state_dtype=state_dtype, absmax=absmax, rounding_seed=_seed(k),
                            stochastic_rounding=stochastic, **extra)
        assert skipped is False
    if a is not None:
        a.synchronize()

    def get(x):
        return np.asarray(x).tobytes() if a is None else to_host_bytes(a, x)

    out = {f"var[{i}]": get(v) for i, v in enumerate(variables)}
    for name, xs in slots.items():
        out.update({f"{name}[{i}]": get(x) for i, x in enumerate(xs)})
    for name, xs in (absmax or {}).items():
        out.update({f"absmax[{name}][{i}]": get(x) for i, x in enumerate(xs)})
    return out


def _compare(cpu: dict, dev: dict, parity_report, what: dict) -> None:
    differing = sorted(k for k in cpu if cpu[k] != dev[k])
    parity_report.append({"test": "state", **what, "expected_identical": True,
                          "differing_elements": len(differing), "max_ulp": None})
    assert not differing, f"the device's bits differ from the CPU's in {differing[:8]}"


@pytest.mark.parametrize("transform", [False, True], ids=["plain", "transform"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01], ids=["nodecay", "decay"])
@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("case", STATE_CASES)
def test_float32_variables_match_the_cpu(rng, parity_report, case, state_dtype, weight_decay,
                                         transform):
    if state_dtype == "int8" and case == "rmsprop_centered":
        pytest.skip("centered RMSprop has no int8 state")
    a = _backend({"bfloat16"} if state_dtype == "bfloat16" else set())
    p = H.make_problem(CASES[case], "float32", SHAPES, rng, weight_decay, transform)
    cpu = _run(p, state_dtype, "float32", False)
    dev = _run(p, state_dtype, "float32", False, a)
    _compare(cpu, dev, parity_report, {"case": case, "dtype": f"float32/{state_dtype}",
                                       "weight_decay": weight_decay, "transform": transform})


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16", "float32"])
@pytest.mark.parametrize("case", ["adam", "sgd_momentum", "adagrad", "lion"])
def test_stochastic_bfloat16_variables_match_the_cpu(rng, parity_report, case, state_dtype):
    a = _backend({"bfloat16"})
    p = H.make_problem(CASES[case], "bfloat16", SHAPES, rng, 0.01, False)
    # "float32": the slots in the variables' dtype (bfloat16), rounded to
    # nearest; the variables stochastically in every format.
    cpu = _run(p, state_dtype, "bfloat16", True)
    dev = _run(p, state_dtype, "bfloat16", True, a)
    _compare(cpu, dev, parity_report, {"case": case, "dtype": f"bfloat16/{state_dtype}/sr",
                                       "weight_decay": 0.01, "transform": False})


def test_int8_state_many_tensors_in_one_call(rng, parity_report):
    """More tensors than one launch holds (128), of mixed sizes."""
    a = _backend(set())
    shapes = [(int(rng.integers(1, 3)), int(rng.integers(1, 700))) for _ in range(150)]
    p = H.make_problem(CASES["adam"], "float32", shapes, rng, 0.0, False)
    cpu = _run(p, "int8", "float32", False)
    dev = _run(p, "int8", "float32", False, a)
    _compare(cpu, dev, parity_report, {"case": "adam x150", "dtype": "float32/int8",
                                       "weight_decay": 0.0, "transform": False})
