"""fusedopt._native on a CUDA device: every rule and variant in every dtype
against the float64 reference and against the CPU's results (bits where the
math allows, the facts recorded in $FUSEDOPT_GPU_REPORT), writes that stay
inside each tensor, misaligned views, the gradient statistics and options,
non-default streams, and one tensor past 2**31 elements (marker `huge`).

Skips as a whole without the module, without CUDA in its build, or without a
usable device. Device arrays: CuPy if importable, else PyTorch (bfloat16 needs
PyTorch); FUSEDOPT_GPU_ARRAYS=torch|cupy picks one. FUSEDOPT_GPU_TESTS_ON_CPU=1
runs the same tests on PyTorch CPU tensors (the CPU path, through DLPack): a
check of the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

import native_harness as H
from native_harness import CASE_IDS, CASES, DTYPES

ENV = H.gpu_environment()
if isinstance(ENV, str):
    pytest.skip(ENV, allow_module_level=True)
nat, ARRAYS, BF16_ARRAYS = ENV
ON_CPU = not ARRAYS.is_cuda

BIG = 1_000_003
# NaN bit patterns with a payload, for guard elements (a kernel writing one
# would store another value; a kernel reading one would see a NaN).
GUARD = {"float16": 0x7D5A, "bfloat16": 0x7FDA, "float32": 0x7FC0BEEF,
         "float64": 0x7FF8DEADBEEFCAFE}


def arrays_for(dtype: str):
    a = ARRAYS if ARRAYS.supports(dtype) else BF16_ARRAYS
    if a is None or not a.supports(dtype):
        pytest.skip(f"{dtype} device arrays need PyTorch (CuPy has no bfloat16)")
    return a


def need_cpu(dtype: str) -> None:
    if not H.cpu_supports(dtype):
        pytest.skip("the CPU side of the comparison needs ml_dtypes for bfloat16")


def need_gpu() -> None:
    if ON_CPU:
        pytest.skip("a device-only behaviour (FUSEDOPT_GPU_TESTS_ON_CPU is set)")


class Guarded:
    """Makes each array a view into a larger buffer, starting `offset(role, i)`
    elements in (the allocators align buffers to >= 256 bytes; None: a plain
    array instead), every element outside the view (the `offset` before it,
    `pad` after it) holding a NaN pattern."""

    def __init__(self, a, p: H.Problem, pad: int = 1, offset=lambda role, i: 1):
        self.a, self.p, self.pad, self.offset = a, p, pad, offset
        self.buffers = []  # (buffer, begin, n)

    def __call__(self, x64, dtype, role, i):
        shape = self.p.shapes[i]
        n = int(np.prod(shape, dtype=np.int64))
        off = self.offset(role, i)
        if off is None:  # a plain array
            return self.a.from_f64(x64, dtype)
        lead = off
        buf = self.a.empty(lead + n + self.pad, dtype)
        self.a.fill_bits(buf, GUARD[dtype])
        view = buf[lead:lead + n]
        if n:
            self.a.assign(view, np.asarray(x64).reshape(-1), dtype)
        self.buffers.append((buf, lead, n))
        return view.reshape(shape)

    def grad(self, x64, dtype, i):
        return self(x64, dtype, "grad", i)

    def assert_guards_intact(self) -> None:
        self.a.synchronize()
        assert self.buffers
        for k, (buf, lead, n) in enumerate(self.buffers):
            b = self.a.bits(buf)
            outside = np.concatenate([b[:lead], b[lead + n:]])
            bad = np.flatnonzero(outside != GUARD[self.p.dtype])
            assert bad.size == 0, (f"buffer {k} (n={n}, view at +{lead}): guard elements "
                                   f"{bad[:8].tolist()} were written")


def mixed_offsets(role, i):
    """Every other array one element past an aligned start, the rest plain."""
    return 1 if (i + len(role)) % 2 == 0 else None


def values(state: H.NativeState, a) -> dict:
    out = {f"var[{i}]": a.to_f64(x) for i, x in enumerate(state.vars)}
    for name, xs in state.slots.items():
        out.update({f"{name}[{i}]": a.to_f64(x) for i, x in enumerate(xs)})
    return out


# --- the module on this machine -------------------------------------------------------------


def test_cuda_is_available_and_described():
    need_gpu()
    info = nat.cuda_info()
    assert nat.cuda_built() and nat.cuda_available()
    assert info["status"] == "ok"
    assert info["device_count"] >= 1
    assert info["runtime_version"] > 0 and info["driver_version"] > 0
    assert nat.build_info()["cuda"] is True
    assert nat.build_info()["cuda_archs"]


# --- every case against the float64 reference ---------------------------------------------------


@pytest.mark.parametrize("transform", [False, True], ids=["plain", "transform"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01], ids=["nodecay", "decay"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference(rng, case, dtype, weight_decay, transform):
    a = arrays_for(dtype)
    shapes = H.SHAPES + ([(BIG,)] if dtype == "float32" and transform else [])
    p = H.make_problem(case, dtype, shapes, rng, weight_decay, transform)
    state = H.run_native(nat, p, backend=a)
    H.check_against_reference(p, state, backend=a)


# --- the same inputs on the CPU and on the device -------------------------------------------

PARITY_SHAPES = [(), (0,), (1,), (7,), (4097,), (3, 5, 7), (BIG,)]
SMALL_SHAPES = PARITY_SHAPES[:-1] + [(70001,)]


def parity_shapes(dtype: str, full: bool = True) -> list:
    """All sizes up to 1_000_003 for float32 (and where `full`), else up to
    70001: the time of the reference and of the transfers is in the big one."""
    return PARITY_SHAPES if dtype == "float32" or full else SMALL_SHAPES


def _parity(p: H.Problem, a, cpu_state, dev_state, test: str, parity_report, **extra) -> dict:
    cb, gb = H.state_bits(cpu_state), H.state_bits(dev_state, a)
    differing = H.compare_bits(gb, cb)
    rec = {"test": test, "case": p.case.name, "rule": p.case.rule, "dtype": p.dtype,
           "weight_decay": p.hp.get("weight_decay", 0.0), "transform": p.transform,
           "identical": not differing, "differing_elements": differing,
           "max_ulp": {k: H.ulp_distance(gb[k], cb[k]) for k in differing},
           "expected_identical": p.case.exact_on_gpu and p.dtype in ("float32", "float64"), **extra}
    parity_report.append(rec)
    return rec


@pytest.mark.parametrize("transform", [False, True], ids=["plain", "transform"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01], ids=["nodecay", "decay"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_the_cpu(rng, case, dtype, weight_decay, transform, parity_report):
    """nat.apply on NumPy and on the device with the same inputs (on the
    device every other array a view one element past an aligned start):
    within the tolerance always; bit-identical where the per-element math is
    + - * / sqrt only (float32, float64); the facts go to the report."""
    need_cpu(dtype)
    a = arrays_for(dtype)
    shapes = parity_shapes(dtype, bool(weight_decay) and transform)
    p = H.make_problem(case, dtype, shapes, rng, weight_decay, transform, steps=3)
    _compare_with_the_cpu(p, a, mixed_offsets, "cpu_vs_gpu", parity_report)


def _compare_with_the_cpu(p: H.Problem, a, offset, test: str, parity_report) -> None:
    """Runs `p` on NumPy and on the device (arrays placed by `offset`, see
    Guarded): guards intact, values within the tolerance, the CPU's bits where
    the case expects them; the facts go to the report under `test`."""
    cpu = H.run_native(nat, p)
    g = Guarded(a, p, offset=offset)
    dev = H.run_native(nat, p, backend=a, state=H.new_state(p, a, make=g), make_grad=g.grad)
    g.assert_guards_intact()
    rec = _parity(p, a, cpu, dev, test, parity_report)
    cv, dv = values(cpu, H.NumpyBackend()), values(dev, a)
    name, dtype = p.case.name, p.dtype
    for k in cv:
        H.assert_close(dv[k], cv[k], dtype, f"{name} {k}: device vs CPU", p.case.cond)
    if rec["expected_identical"]:
        assert rec["identical"], (f"{name} {dtype}: device bits differ from the CPU's "
                                  f"in {rec['differing_elements']} (max ulp {rec['max_ulp']})")


MANY_CASES = ["sgd_momentum", "amsgrad", "nadam", "rmsprop_centered_momentum", "muon"]


@pytest.mark.parametrize("transform", [False, True], ids=["plain", "transform"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MANY_CASES)
def test_many_tensors_in_one_call_match_the_cpu(rng, name, dtype, transform, parity_report):
    """Note [multi-tensor launch]: 530 tensors in one call (more than two
    launches' worth, 224 each), sizes from 0 to 9000 with rank-0 variables
    (their own coefficients: another launch group) among them, every third
    array a view one element past an aligned start (the element path beside
    the vector path): the CPU's bits where the per-element math is exact,
    within the tolerance always, and nothing outside the views written."""
    need_cpu(dtype)
    a = arrays_for(dtype)
    case = H.CASE_BY_NAME[name]
    sizes = rng.integers(0, 9000, size=530)
    sizes[rng.choice(530, size=60, replace=False)] = rng.integers(0, 40, size=60)
    shapes = [() if k % 37 == 5 else (int(n),) for k, n in enumerate(sizes)]
    p = H.make_problem(case, dtype, shapes, rng, 0.01, transform, steps=2)
    _compare_with_the_cpu(p, a, lambda role, i: 1 if (i + len(role)) % 3 == 0 else None,
                          "many_tensors_cpu_vs_gpu", parity_report)


@pytest.mark.parametrize("clip", ["clip_norm", "global_clip_norm"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["adam", "lamb", "sgd_momentum"])
def test_norm_clipping_matches_the_cpu(rng, name, dtype, clip, parity_report):
    """The norm pass runs on the device (its sums may round differently from
    the CPU's: recorded, compared within the tolerance)."""
    need_cpu(dtype)
    a = arrays_for(dtype)
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, dtype, PARITY_SHAPES, rng, 0.01, False, steps=3)
    p.transform = {"grad_scale": 0.5}
    p.grads = [[g * 40 if i == len(p.shapes) - 1 else g for i, g in enumerate(gs)]
               for gs in p.grads]  # one large gradient: the clip bites
    p.grads = [[H.rounded(g, dtype) for g in gs] for gs in p.grads]
    cpu = H.run_native(nat, p, **{clip: 100.0})
    dev = H.run_native(nat, p, backend=a, **{clip: 100.0})
    _parity(p, a, cpu, dev, f"cpu_vs_gpu_{clip}", parity_report)
    cv, dv = values(cpu, H.NumpyBackend()), values(dev, a)
    for k in cv:
        H.assert_close(dv[k], cv[k], dtype, f"{name} {k}: device vs CPU", case.cond)
    # The clip did bite: unclipped, the CPU gives other numbers.
    plain = H.run_native(nat, p)
    assert not np.array_equal(H.state_bits(plain)["var[6]"], H.state_bits(cpu)["var[6]"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_lamb_from_zero_slots_matches_the_cpu(rng, dtype):
    """16-bit LAMB from Keras' zero start with normal gradients: in float16
    v underflows to 0 for about 1 in 200 elements, where pass 2's update is
    m / epsilon, and pass 1 must take the norm of that update (the moments as
    stored, LambRule::Moments), as the CPU does; 3 steps, within the
    tolerance of the CPU's result (the other cases start v away from 0)."""
    need_cpu(dtype)
    a = arrays_for(dtype)
    n = 4099
    hp = dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-6, weight_decay=0.0)
    dt = H.np_dtype(dtype)
    x0 = H.rounded(rng.standard_normal(n), dtype)
    host = [x0.astype(dt), np.zeros(n, dt), np.zeros(n, dt)]
    dev = [a.from_f64(x0, dtype), a.from_f64(np.zeros(n), dtype), a.from_f64(np.zeros(n), dtype)]
    for t in range(1, 4):
        g = H.rounded(rng.standard_normal(n), dtype)
        nat.apply("lamb", [host[0]], [g.astype(dt)], {"m": [host[1]], "v": [host[2]]}, hp, step=t)
        nat.apply("lamb", [dev[0]], [a.from_f64(g, dtype)], {"m": [dev[1]], "v": [dev[2]]}, hp,
                  step=t)
    a.synchronize()
    for k, what in enumerate(["var", "m", "v"]):
        H.assert_close(a.to_f64(dev[k]), host[k].astype(np.float64), dtype, f"lamb {what}")


# --- memory: what is written, and only that ---------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_writes_stay_inside_each_tensor(rng, case, dtype):
    """Every array (variables, slots, gradients) a view into a buffer whose
    8-11 elements before and 8 after hold NaN patterns (views 0-3 elements
    past a 16-byte boundary): the guards keep their bits, and no NaN is read
    (the results match the reference)."""
    a = arrays_for(dtype)
    shapes = [(1,), (7,), (33,), (4097,), (65537,)] + ([(BIG,)] if dtype == "float32" else [])
    p = H.make_problem(case, dtype, shapes, rng, 0.01, True, steps=2)
    g = Guarded(a, p, pad=8, offset=lambda role, i: 8 + (i + len(role)) % 4)
    state = H.run_native(nat, p, backend=a, state=H.new_state(p, a, make=g), make_grad=g.grad)
    g.assert_guards_intact()
    H.check_against_reference(p, state, backend=a)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_element_is_written(rng, case):
    """Gradients far from zero, slots small, no weight decay, one float32
    step: every element of the variable and of every slot changes (AMSGrad's
    vhat keeps its larger values by design and is left out), misaligned views
    included."""
    a = arrays_for("float32")
    shapes = [(1,), (7,), (4097,), (BIG,)]
    p = H.make_problem(case, "float32", shapes, rng, 0.0, False, steps=1)
    if case.decays:
        p.hp["weight_decay"] = 0.0  # (adamw's) decay and update could cancel
    if case.rule == "ftrl":
        # Its var = (clip(linear, +-l1) - linear) / quadratic can sit at a fixed
        # point within rounding; with every |linear| <= l1 the new var is 0.
        p.hp["l1"] = 1e6
    p.grads = [[np.sign(x) * (2.0 + np.abs(x)) for x in gs] for gs in p.grads]
    p.grads = [[H.rounded(x, "float32") for x in gs] for gs in p.grads]
    # Momenta and second moments far below the gradients' share, so that no
    # s * beta + g * (1 - beta) (or of g^2) stays at s.
    for name, init in case.slots.items():
        if init is not H.random_array:
            f = 1e-3 if init is H.small else 0.1
            p.slots[name] = [H.rounded(x * f, "float32") for x in p.slots[name]]
    g = Guarded(a, p, offset=lambda role, i: i % 2)
    state = H.run_native(nat, p, backend=a, state=H.new_state(p, a, make=g), make_grad=g.grad)
    before = H.state_bits(H.new_state(p))
    after = H.state_bits(state, a)
    for k in after:
        if k.startswith("vhat"):
            continue
        same = int(np.count_nonzero(after[k] == before[k]))
        assert same == 0, f"{case.name} {k}: {same} of {after[k].size} elements kept their value"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_misaligned_views_give_the_bits_of_aligned_arrays(rng, case, dtype, parity_report):
    a = arrays_for(dtype)
    p = H.make_problem(case, dtype, parity_shapes(dtype, False), rng, 0.01, True, steps=2)
    aligned = H.run_native(nat, p, backend=a)
    g = Guarded(a, p, offset=mixed_offsets)
    mixed = H.run_native(nat, p, backend=a, state=H.new_state(p, a, make=g), make_grad=g.grad)
    g.assert_guards_intact()
    differing = H.compare_bits(H.state_bits(mixed, a), H.state_bits(aligned, a))
    parity_report.append({"test": "misaligned_vs_aligned", "case": case.name, "dtype": dtype,
                          "identical": not differing, "differing_elements": differing})
    if case.rule == "lamb":  # per-tensor norms: the reduction may follow the alignment
        mv, av = values(mixed, a), values(aligned, a)
        for k in mv:
            H.assert_close(mv[k], av[k], dtype, k)
    else:
        assert differing == {}


# --- gradient statistics and options --------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_stats(rng, dtype, parity_report):
    a = arrays_for(dtype)
    shapes = H.SHAPES + [(BIG,)]
    xs = [H.random_array(rng, s, dtype, 3.0) for s in shapes]
    p = H.Problem(H.CASES[0], dtype, shapes, xs, {}, [], [], {}, {})
    g = Guarded(a, p, pad=4, offset=lambda role, i: 4 + i % 3)  # NaN guards: none may be read
    arrays = [g(x, dtype, "grad", i) for i, x in enumerate(xs)]
    sums, bad = nat.grad_stats(arrays, stream=a.stream)
    assert bad is False
    for s, x in zip(sums, xs):
        np.testing.assert_allclose(s, float(np.sum(x * x)), rtol=1e-12, atol=0)
    assert nat.grad_stats(arrays, stream=a.stream) == (sums, False)  # deterministic
    if H.cpu_supports(dtype):
        cpu_sums, _ = nat.grad_stats([H.to_storage(x, dtype) for x in xs])
        parity_report.append({"test": "grad_stats_cpu_vs_gpu", "dtype": dtype,
                              "identical": cpu_sums == sums,
                              "cpu": cpu_sums, "gpu": sums})
    for bad_value in (np.nan, np.inf, -np.inf):
        x = xs[-1].copy()
        x[-1] = bad_value
        arrays[-1] = a.from_f64(x, dtype)
        sums2, bad2 = nat.grad_stats(arrays, stream=a.stream)
        assert bad2 is True
        assert sums2[:-1] == sums[:-1] and not np.isfinite(sums2[-1])
    assert nat.grad_stats([], stream=a.stream) == ([], False)
    g.assert_guards_intact()


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["adam", "lamb", "sgd_momentum", "lion"])
def test_skip_nonfinite_writes_nothing(rng, name, dtype, bad):
    a = arrays_for(dtype)
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, dtype, [(7,), (4097,), (BIG,)], rng, 0.01, False, steps=1)
    g = Guarded(a, p, pad=2, offset=lambda role, i: 2 + i % 2)  # NaN guards must not count
    state = H.new_state(p, a, make=g)
    before = H.state_bits(state, a)
    grads = [g.grad(x, dtype, i) for i, x in enumerate(p.grads[0])]
    kw = dict(p.kwargs(0), skip_nonfinite=True)
    if a.stream:
        kw["stream"] = a.stream
    assert nat.apply(case.rule, state.vars, grads, state.slots, p.hparams(0), **kw) is False
    a.synchronize()
    moved = H.state_bits(state, a)
    assert not np.array_equal(moved["var[2]"], before["var[2]"])
    last = p.grads[0][-1].copy()
    last[-1] = bad
    grads[-1] = a.from_f64(last, dtype)
    assert nat.apply(case.rule, state.vars, grads, state.slots, p.hparams(0), **kw) is True
    a.synchronize()
    assert H.compare_bits(H.state_bits(state, a), moved) == {}
    g.assert_guards_intact()


@pytest.mark.parametrize("how", ["overflow", "nan scale", "inf scale", "clipped inf"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_skip_judges_the_transformed_gradients(rng, dtype, how):
    """Note [skip after transform]: after grad_scale and clipping, and the scale
    itself; a skipped step writes nothing (issue #18)."""
    a = arrays_for(dtype)
    case = H.CASE_BY_NAME["adam"]
    p = H.make_problem(case, dtype, [(7,), (4097,)], rng, 0.0, False, steps=1)
    state = H.new_state(p, a)
    before = H.state_bits(state, a)
    g = p.grads[0][1].copy()
    big = {"float16": 6e4, "float32": 3e38, "float64": 1e308}[dtype]
    kw = dict(p.kwargs(0), skip_nonfinite=True)
    want = True
    if how == "overflow":  # finite gradients, inf after the scale (in opmath: float32
        # for float16, so a float16 gradient needs a larger scale to overflow)
        g[5], kw["grad_scale"] = big, 1e35 if dtype == "float16" else 10.0
    elif how == "nan scale":
        kw["grad_scale"] = float("nan")
    elif how == "inf scale":
        kw["grad_scale"] = float("inf")
    else:  # clip_value turns an inf into a finite gradient: applied
        g[5], kw["clip_value"], want = np.inf, 0.5, False
    if a.stream:
        kw["stream"] = a.stream
    grads = [a.from_f64(p.grads[0][0], dtype), a.from_f64(g, dtype)]
    assert nat.apply(case.rule, state.vars, grads, state.slots, p.hparams(0), **kw) is want
    a.synchronize()
    after = H.state_bits(state, a)
    if want:
        assert H.compare_bits(after, before) == {}
    else:
        assert not np.array_equal(after["var[1]"], before["var[1]"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_hyperparameters_write_nothing(rng, bad):
    a = arrays_for("float32")
    case = H.CASE_BY_NAME["adam"]
    p = H.make_problem(case, "float32", [(7,), (4097,)], rng, 0.0, False, steps=1)
    state = H.new_state(p, a)
    before = H.state_bits(state, a)
    grads = [a.from_f64(x, "float32") for x in p.grads[0]]
    hp = dict(p.hparams(0), lr=bad)
    kw = dict(p.kwargs(0))
    if a.stream:
        kw["stream"] = a.stream
    with pytest.raises(ValueError, match="'lr' must be finite"):
        nat.apply(case.rule, state.vars, grads, state.slots, hp, **kw)
    a.synchronize()
    assert H.compare_bits(H.state_bits(state, a), before) == {}


# --- device-only behaviour -------------------------------------------------------------------


def test_sparse_updates_on_the_device_raise_runtime_error():
    need_gpu()
    a = ARRAYS
    var, acc = a.from_f64(np.ones((10, 2)), "float32"), a.from_f64(np.ones((10, 2)), "float32")
    before = [a.bits(var), a.bits(acc)]
    with pytest.raises(RuntimeError, match="CPU"):
        nat.sparse_apply("adagrad", [var], [a.from_f64(np.ones((2, 2)), "float32")],
                         [np.array([1, 3])], {"accumulator": [acc]}, {"lr": 0.1, "epsilon": 1e-7})
    a.synchronize()
    assert np.array_equal(a.bits(var), before[0]) and np.array_equal(a.bits(acc), before[1])


def test_host_and_device_arrays_in_one_call_raise_value_error():
    need_gpu()
    a = ARRAYS
    var = np.ones(4, np.float32)
    m = a.from_f64(np.zeros(4), "float32")
    with pytest.raises(ValueError, match="device"):
        nat.apply("sgd", [var], [a.from_f64(np.ones(4), "float32")], {},
                  {"lr": 0.1, "momentum": 0.0})
    with pytest.raises(ValueError, match="device"):
        nat.apply("sgd", [var], [np.ones(4, np.float32)], {"momenta": [m]},
                  {"lr": 0.1, "momentum": 0.9})
    np.testing.assert_array_equal(var, 1.0)
    assert np.array_equal(a.to_f64(m), np.zeros(4))


@pytest.mark.parametrize("name", ["adam", "lamb"])
def test_non_default_stream(rng, name):
    """A call on another stream gives the default stream's bits once that
    stream is synchronized."""
    need_gpu()
    a = ARRAYS
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, "float32", [(7,), (BIG,)], rng, 0.01, True, steps=2)
    want = H.state_bits(H.run_native(nat, p, backend=a), a)
    state = H.new_state(p, a)
    grads = [[a.from_f64(x, "float32") for x in gs] for gs in p.grads]
    a.synchronize()
    stream, handle = a.new_stream()
    for k in range(p.steps):
        nat.apply(case.rule, state.vars, grads[k], state.slots, p.hparams(k), stream=handle,
                  **p.kwargs(k))
    a.sync_stream(stream)
    assert H.compare_bits(H.state_bits(state, a), want) == {}


@pytest.mark.huge
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_tensor_past_2_pow_31_elements(dtype):
    """SGD on 2**31 + 4099 elements (64-bit indexing): every element updated,
    nothing written past the end, grad_stats over all of it."""
    need_gpu()
    a = ARRAYS
    n = 2**31 + 4099
    es = H.elem_size(dtype)
    need = 2 * (n + 2) * es + n + 2**30  # var, grad, a bool temporary, slack
    free, total = a.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of device memory, {free / 2**30:.1f} GiB free")
    try:
        buf = a.full(n + 2, 1.0, dtype)
        a.fill_bits(buf[:1], GUARD[dtype])
        a.fill_bits(buf[n + 1:], GUARD[dtype])
        var = buf[1:n + 1]
        grad = a.full(n, 1.0, dtype)
        assert nat.apply("sgd", [var], [grad], {}, {"lr": 0.25, "momentum": 0.0},
                         stream=a.stream) is False
        a.synchronize()
        assert a.count_not_equal(var, 0.75) == 0
        guards = np.concatenate([a.bits(buf[:1]), a.bits(buf[n + 1:])])
        assert (guards == GUARD[dtype]).all()
        sums, bad = nat.grad_stats([grad], stream=a.stream)
        assert (sums, bad) == ([float(n)], False)
    finally:
        buf = var = grad = None
        a.release()
