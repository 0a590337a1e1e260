"""fusedopt._native on the CPU (NumPy arrays), without TensorFlow: every rule
and variant against its float64 reference in every dtype, the gradient
options, misaligned buffers, sparse updates, bad input (ValueError, nothing
written), every compiled ISA giving the same bits, and the same bits as the
TensorFlow op (those tests need TensorFlow and skip without it).

The GPU half is tests/gpu/test_gpu_kernels.py. Helpers: tests/native_harness.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import native_harness as H
from native_harness import CASE_IDS, CASES, DTYPES, SHAPES

import fusedopt._native as nat  # noqa: E402  (the wheel always ships it: CI fails without)

INF = float("inf")


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator per test (seed printed; FUSEDOPT_TEST_SEED replays)."""
    return H.seeded_rng()


def _need(dtype: str) -> None:
    if not H.cpu_supports(dtype):
        pytest.skip("bfloat16 NumPy arrays need ml_dtypes")


def _snapshot(arrays) -> list:
    return [H.bits(a).copy() for a in arrays]


def _assert_unchanged(arrays, before, what="") -> None:
    for k, (a, b) in enumerate(zip(arrays, before)):
        np.testing.assert_array_equal(H.bits(a), b, err_msg=f"{what}: array {k} was written")


# --- the module's description of itself ------------------------------------------------


def test_rules_table_is_the_documented_one():
    got = nat.rules()
    want = H.expected_rules_table()
    assert sorted(got) == sorted(want)
    for name, (scalars, slots, step) in want.items():
        assert list(got[name]["scalars"]) == scalars, name
        assert [(s, bool(o)) for s, o in got[name]["slots"]] == slots, name
        assert bool(got[name]["step"]) is step, name
    # The cases cover every rule and name every scalar but lr/weight_decay/u_product.
    assert {c.rule for c in CASES} == set(want)
    for c in CASES:
        extra = {"lr", "weight_decay", "u_product"}
        assert set(c.hp) - {"weight_decay"} == set(want[c.rule][0]) - extra, c.name


# The options apply takes of each rule (the registry's attributes); sparse_apply
# takes adam's tf_training_op_form too (tf_keras' legacy sparse Adam).
RULE_OPTIONS = {"sgd": ["nesterov"], "nadam": ["schedule_decay", "tf_training_op_form"],
                "adamax": ["tf_training_op_form"],
                "rmsprop": ["epsilon_outside_sqrt", "tf_training_op_form"],
                "adagrad": ["epsilon_outside_sqrt"], "adadelta": ["tf_training_op_form"]}
OPTION_VALUES = {"nesterov": True, "epsilon_outside_sqrt": True, "schedule_decay": 0.004,
                 "tf_training_op_form": True}


def test_rules_table_reports_the_options_apply_takes():
    """rules()'s "options" are exactly the options apply takes for a rule:
    another one raises ValueError naming it, and each is taken by some case
    of the rule."""
    table = nat.rules()
    for name, info in table.items():
        assert info["options"] == RULE_OPTIONS.get(name, []), name
        sparse = RULE_OPTIONS.get(name, []) + (["tf_training_op_form"] if name == "adam" else [])
        assert info["sparse_options"] == sparse, name
    rng = H.seeded_rng("rule options")
    for case in CASES:
        for option, value in OPTION_VALUES.items():
            if option in table[case.rule]["options"] or option in case.options:
                continue
            p = H.make_problem(case, "float32", [(3,)], rng, steps=1)
            with pytest.raises(ValueError, match=option):
                H.run_native(nat, p, **{option: value})
    for rule, info in table.items():
        for option in info["options"]:
            taken = False
            for case in (c for c in CASES if c.rule == rule):
                try:
                    H.run_native(nat, H.make_problem(case, "float32", [(3,)], rng, steps=1),
                                 **{option: OPTION_VALUES[option]})
                    taken = True
                except ValueError:
                    pass
            assert taken, (rule, option)


def test_build_and_cuda_info():
    info = nat.build_info()
    for key in ("version", "cuda", "cuda_archs", "cpu_isa", "cpu_isas"):
        assert key in info, f"build_info() lacks {key!r}: {info}"
    isas = nat.cpu_isas()
    assert isas and isas[0] == "baseline", isas
    assert set(isas) <= {"baseline", "avx2", "avx512"}
    assert info["cpu_isa"] in isas
    assert list(info["cpu_isas"]) == isas
    forced = os.environ.get("FUSEDOPT_CPU_ISA")
    assert info["cpu_isa"] == (forced or isas[-1])
    assert nat.cuda_built() is bool(info["cuda"])
    cuda = nat.cuda_info()
    for key in ("runtime_version", "driver_version", "device_count", "status"):
        assert key in cuda, f"cuda_info() lacks {key!r}: {cuda}"
    assert nat.cuda_available() == (cuda["status"] == "ok")
    if not nat.cuda_built():
        assert not nat.cuda_available()
        assert cuda["device_count"] == 0 and cuda["runtime_version"] == 0
        assert "CUDA" in cuda["status"]


# --- every case against its float64 reference --------------------------------------------


@pytest.mark.parametrize("transform", [False, True], ids=["plain", "transform"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01], ids=["nodecay", "decay"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference(rng, case, dtype, weight_decay, transform):
    _need(dtype)
    p = H.make_problem(case, dtype, SHAPES, rng, weight_decay, transform)
    state = H.run_native(nat, p)
    H.check_against_reference(p, state)
    # The update did happen (the test could fail): the largest tensor moved.
    assert not np.array_equal(H.bits(state.vars[-1]), H.bits(H.to_storage(p.init[-1], dtype)))


def test_transform_really_clips(rng):
    """The transform runs must differ from plain ones (else they test nothing)."""
    case = H.CASE_BY_NAME["sgd"]
    a = H.make_problem(case, "float64", [(4097,)], rng, 0.0, False, steps=1)
    b = H.Problem(**{**a.__dict__, "transform": dict(H.TRANSFORM)})
    sa, sb = H.run_native(nat, a), H.run_native(nat, b)
    g = a.grads[0][0]
    clipped = np.abs(g * 0.5) > 0.75
    assert clipped.sum() > 100
    np.testing.assert_allclose(sb.vars[0], a.init[0] - a.lrs[0] * np.clip(g * 0.5, -0.75, 0.75),
                               rtol=1e-15, atol=1e-16)
    assert not np.array_equal(sa.vars[0], sb.vars[0])


def test_zero_tensors_is_a_no_op():
    assert nat.apply("sgd", [], [], {}, {"lr": 0.1, "momentum": 0.0}) is False


# --- the gradient statistics and norm options ---------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_stats_matches_numpy(rng, dtype):
    _need(dtype)
    xs = [H.random_array(rng, s, dtype, 3.0) for s in SHAPES]
    arrays = [H.to_storage(x, dtype) for x in xs]
    sums, bad = nat.grad_stats(arrays)
    assert bad is False
    assert len(sums) == len(xs)
    for s, x in zip(sums, xs):
        assert isinstance(s, float)
        np.testing.assert_allclose(s, float(np.sum(x * x)), rtol=1e-12, atol=0)
    # Deterministic: any thread count, same bits.
    for threads in (1, 2, 3):
        assert nat.grad_stats(arrays, threads=threads) == (sums, False)
    # A non-finite element anywhere (here: the last element of the largest
    # tensor, in its last chunk) is found; the other tensors' sums stay right.
    for bad_value in (np.nan, np.inf, -np.inf):
        poisoned = [a.copy() for a in arrays]
        poisoned[-1].reshape(-1)[-1] = bad_value
        sums2, bad2 = nat.grad_stats(poisoned)
        assert bad2 is True
        assert sums2[:-1] == sums[:-1]
        assert not np.isfinite(sums2[-1])
    assert nat.grad_stats([]) == ([], False)


def test_grad_stats_rejects_mixed_dtypes():
    with pytest.raises(ValueError):
        nat.grad_stats([np.ones(3, np.float32), np.ones(3, np.float64)])


def _sgd_call(vars_, grads, lr=0.5, **kw):
    return nat.apply("sgd", vars_, grads, {}, {"lr": lr, "momentum": 0.0}, **kw)


@pytest.mark.parametrize("grad_scale", [1.0, 0.25])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clip_norm_per_tensor(rng, dtype, grad_scale):
    shapes = [(5,), (4097,), (0,), (70001,), ()]
    init = [H.random_array(rng, s, dtype) for s in shapes]
    grads = [H.random_array(rng, s, dtype, 3.0) for s in shapes]
    grads[0] = grads[0] * 1e-3  # norm below the clip: that gradient is kept as is
    grads[0] = H.rounded(grads[0], dtype)
    vars_ = [H.to_storage(x, dtype) for x in init]
    c = 2.0
    assert _sgd_call(vars_, [H.to_storage(g, dtype) for g in grads], clip_norm=c,
                     grad_scale=grad_scale) is False
    for v, x, g in zip(vars_, init, grads):
        gs = g * grad_scale
        norm = float(np.sqrt(np.sum(gs * gs)))
        want = x - 0.5 * gs * (c / max(norm, c))
        H.assert_close(v, H.rounded(want, dtype), dtype, "clip_norm")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_global_clip_norm_uses_all_tensors(rng, dtype):
    shapes = [(5,), (4097,), (0,), (70001,)]
    init = [H.random_array(rng, s, dtype) for s in shapes]
    grads = [H.random_array(rng, s, dtype, 3.0) for s in shapes]
    vars_ = [H.to_storage(x, dtype) for x in init]
    c = 2.0
    _sgd_call(vars_, [H.to_storage(g, dtype) for g in grads], global_clip_norm=c)
    G = float(np.sqrt(sum(np.sum(g * g) for g in grads)))
    assert G > c
    for v, x, g in zip(vars_, init, grads):
        H.assert_close(v, H.rounded(x - 0.5 * g * (c / G), dtype), dtype, "global_clip_norm")


def test_clip_norm_above_the_norm_changes_no_bit(rng):
    """A clip that does not bite scales by exactly 1: the plain update's bits."""
    init = H.random_array(rng, (4097,), "float32")
    g = H.to_storage(H.random_array(rng, (4097,), "float32"), "float32")
    a, b, c = (H.to_storage(init, "float32") for _ in range(3))
    _sgd_call([a], [g])
    _sgd_call([b], [g], clip_norm=1e6)
    _sgd_call([c], [g], global_clip_norm=1e6)
    np.testing.assert_array_equal(H.bits(a), H.bits(b))
    np.testing.assert_array_equal(H.bits(a), H.bits(c))


def test_global_clip_norm_with_a_nonfinite_gradient_gives_nan_like_keras():
    vars_ = [np.ones(3, np.float32), np.ones(2, np.float32)]
    grads = [np.array([1.0, np.inf, 1.0], np.float32), np.ones(2, np.float32)]
    assert _sgd_call(vars_, grads, global_clip_norm=1.0) is False
    assert np.isnan(vars_[0]).all() and np.isnan(vars_[1]).all()


SKIP_CASES = ["sgd_momentum", "adam", "lamb", "rmsprop_centered", "ftrl"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SKIP_CASES)
def test_skip_nonfinite_writes_nothing(rng, name, dtype, bad):
    _need(dtype)
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, dtype, [(7,), (4097,), (70001,)], rng, 0.01, False, steps=1)
    state = H.new_state(p)
    watched = state.vars + [x for xs in state.slots.values() for x in xs]
    before = _snapshot(watched)
    grads = [H.to_storage(g, dtype) for g in p.grads[0]]
    grads[-1][-1] = bad  # the very last element of the call
    skipped = nat.apply(case.rule, state.vars, grads, state.slots, p.hparams(0),
                        skip_nonfinite=True, **p.kwargs(0))
    assert skipped is True
    _assert_unchanged(watched, before, "skipped step")
    # The same call with finite gradients runs and reports it.
    grads[-1][-1] = 0.5
    assert nat.apply(case.rule, state.vars, grads, state.slots, p.hparams(0),
                     skip_nonfinite=True, **p.kwargs(0)) is False
    assert not np.array_equal(H.bits(state.vars[-1]), before[len(state.vars) - 1])


@pytest.mark.parametrize("name", ["adam", "lamb"])
def test_thread_count_does_not_change_bits(rng, name):
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, "float32", SHAPES + [(200003,)], rng, 0.01, True, steps=2)
    hashes = set()
    for threads in (1, 2, 3, 0):
        hashes.add(H.hash_state(H.run_native(nat, p, threads=threads, )))
    for threads in (1, 2, 3, 0):  # with the norm pass
        q = H.Problem(**{**p.__dict__, "transform": {"grad_scale": 0.5}})
        hashes.add(("norm", H.hash_state(H.run_native(nat, q, threads=threads, clip_norm=1.0))))
    assert len(hashes) == 2, hashes


# --- misaligned buffers -----------------------------------------------------------------


MISALIGNED_SHAPES = [(7,), (4097,), (1,), (70001,), (33,), (3, 5, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_misaligned_views_give_the_bits_of_aligned_copies(rng, case, dtype):
    """Views one element past a 64-byte boundary (`big[1:n+1]`) next to aligned
    arrays, for variables, slots and gradients: the bits of an all-aligned
    run, and the guard elements around each view keep their NaN payload."""
    _need(dtype)
    p = H.make_problem(case, dtype, MISALIGNED_SHAPES, rng, 0.01, True, steps=2)
    npdt = H.np_dtype(dtype)
    guard = np.array([0x7D, 0x7E], np.uint64)  # NaN payloads, per element size below
    bigs = []

    def nan_bits(k):
        size = npdt.itemsize
        top = {2: 0x7C00, 4: 0x7F800000, 8: 0x7FF0000000000000}[size]
        if dtype == "bfloat16":
            top = 0x7F80
        return np.array([top | int(guard[k])], H.UINT[size]).view(npdt)[0]

    def make(x64, dt, role, i):
        n = int(np.prod(p.shapes[i], dtype=np.int64))
        if (i + len(role)) % 2 == 0:  # aligned, and every other one misaligned
            a = H.aligned_empty(n, npdt)
            a[...] = H.to_storage(x64, dt).reshape(-1)
            return a.reshape(p.shapes[i])
        big = H.aligned_empty(n + 2, npdt)
        big[0], big[-1] = nan_bits(0), nan_bits(1)
        view = big[1:n + 1]
        view[...] = H.to_storage(x64, dt).reshape(-1)
        bigs.append(big)
        return view.reshape(p.shapes[i])

    mixed = H.run_native(nat, p, state=H.new_state(p, make=make),
                         make_grad=lambda x, dt, i: make(x, dt, "grad", i))
    plain = H.run_native(nat, p)
    assert H.compare_bits(H.state_bits(mixed), H.state_bits(plain)) == {}
    assert bigs
    for big in bigs:
        assert H.bits(big[:1])[0] == H.bits(np.array([nan_bits(0)]))[0]
        assert H.bits(big[-1:])[0] == H.bits(np.array([nan_bits(1)]))[0]


# --- sparse updates ---------------------------------------------------------------------

SPARSE_SHAPE = (37, 3, 5)  # 37 rows of 15 elements


def _slices(rng, shape, dtype, k, index_dtype=np.int64, rows=None):
    """k gradient rows with duplicates (and rows left out), drawn from the
    first `rows` rows (default all)."""
    idx = rng.integers(0, shape[0] if rows is None else rows, size=k).astype(index_dtype)
    idx[: k // 4] = idx[k // 4]
    vals = H.random_array(rng, (k,) + shape[1:], dtype)
    return idx, vals


def _densify(idx, vals, shape):
    dense = np.zeros(shape)
    np.add.at(dense, idx, vals)
    return dense


def _sparse_problem(case, dtype, rng, transform=False):
    p = H.make_problem(case, dtype, [SPARSE_SHAPE, (11, 4)], rng, 0.01, transform, steps=4)
    return p


@pytest.mark.parametrize("transform", [False, True], ids=["plain", "transform"])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_sparse_exact_equals_the_reference_on_the_densified_gradient(rng, case, index_dtype,
                                                                    transform):
    dtype = "float32"
    p = _sparse_problem(case, dtype, rng, transform)
    state = H.new_state(p)
    ref_state = [(p.init[i].copy(), {k: xs[i].copy() for k, xs in p.slots.items()})
                 for i in range(len(p.shapes))]
    hp = p.ref_hp()
    for k in range(p.steps):
        idxs, vals = zip(*[_slices(rng, s, dtype, 20, index_dtype) for s in p.shapes])
        skipped = nat.sparse_apply(case.rule, state.vars, [H.to_storage(v, dtype) for v in vals],
                                   list(idxs), state.slots, p.hparams(k), mode="exact",
                                   **p.kwargs(k))
        assert skipped is False
        for i, s in enumerate(p.shapes):
            dense = H.rounded(_densify(idxs[i], vals[i], s), dtype)
            v, sl = case.ref(ref_state[i][0], p.effective_grad(dense), p.lrs[k], ref_state[i][1],
                             k + 1, hp, dtype)
            ref_state[i] = (H.rounded(v, dtype), {n: H.rounded(x, dtype) for n, x in sl.items()})
    for i, s in enumerate(p.shapes):
        H.assert_close(state.vars[i], ref_state[i][0], dtype, f"var {s}", case.cond)
        for n, x in ref_state[i][1].items():
            H.assert_close(state.slots[n][i], x, dtype, f"{n} {s}", case.cond)


@pytest.mark.parametrize("case", [c for c in CASES if c.rule != "lamb"],
                         ids=[c.name for c in CASES if c.rule != "lamb"])
def test_sparse_exact_with_unique_rows_gives_the_dense_bits(rng, case):
    """Unique indices (nothing to sum): the sparse run is the dense update on
    the densified gradient, element by element, so the very same bits."""
    dtype = "float32"
    p = _sparse_problem(case, dtype, rng)
    a, b = H.new_state(p), H.new_state(p)
    for k in range(p.steps):
        idxs = [rng.permutation(s[0])[: s[0] // 2] for s in p.shapes]
        vals = [H.random_array(rng, (len(ix),) + s[1:], dtype) for ix, s in zip(idxs, p.shapes)]
        nat.sparse_apply(case.rule, a.vars, [H.to_storage(v, dtype) for v in vals], idxs, a.slots,
                         p.hparams(k), mode="exact", **p.kwargs(k))
        dense = [H.to_storage(_densify(ix, v, s), dtype) for ix, v, s in zip(idxs, vals, p.shapes)]
        nat.apply(case.rule, b.vars, dense, b.slots, p.hparams(k), **p.kwargs(k))
    assert H.compare_bits(H.state_bits(a), H.state_bits(b)) == {}


LAZY_CASES = [c for c in CASES if c.rule != "lamb"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("case", LAZY_CASES, ids=[c.name for c in LAZY_CASES])
def test_sparse_lazy_touches_only_listed_rows(rng, case, dtype):
    _need(dtype)
    p = _sparse_problem(case, dtype, rng)
    state = H.new_state(p)
    hp = p.ref_hp()
    refs = [(p.init[i].copy(), {k: xs[i].copy() for k, xs in p.slots.items()})
            for i in range(len(p.shapes))]
    touched = [set() for _ in p.shapes]
    for k in range(p.steps):
        # The last row is never drawn: some row stays untouched whatever the draws.
        idxs, vals = zip(*[_slices(rng, s, dtype, max(2, s[0] // 3), rows=s[0] - 1)
                           for s in p.shapes])
        nat.sparse_apply(case.rule, state.vars, [H.to_storage(v, dtype) for v in vals], list(idxs),
                         state.slots, p.hparams(k), mode="lazy", **p.kwargs(k))
        for i, s in enumerate(p.shapes):
            rows = np.unique(idxs[i])
            touched[i] |= set(rows.tolist())
            summed = H.rounded(_densify(idxs[i], vals[i], s)[rows], dtype)
            var, sl = refs[i]
            nv, ns = case.ref(var[rows], summed, p.lrs[k], {n: x[rows] for n, x in sl.items()},
                              k + 1, hp, dtype)
            var[rows] = H.rounded(nv, dtype)
            for n in sl:
                sl[n][rows] = H.rounded(ns[n], dtype)
    for i, s in enumerate(p.shapes):
        untouched = np.array(sorted(set(range(s[0])) - touched[i]), np.int64)
        assert untouched.size > 0
        got = state.vars[i].astype(np.float64)
        np.testing.assert_array_equal(got[untouched], p.init[i][untouched])
        H.assert_close(got, refs[i][0], dtype, f"var {s}", case.cond)
        for n, x in refs[i][1].items():
            sl = state.slots[n][i].astype(np.float64)
            np.testing.assert_array_equal(sl[untouched], p.slots[n][i][untouched])
            H.assert_close(sl, x, dtype, f"{n} {s}", case.cond)


BAD_INDICES = [
    ("negative index", [1, 2, -3, 4], r"-3.*position 2|position 2.*-3"),
    ("index == rows", [9, 10, 0, 1], r"10.*position 1|position 1.*10"),
    ("huge index", [0, 1, 2, 2**40], r"1099511627776"),
]


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("mode", ["exact", "lazy"])
@pytest.mark.parametrize("label,idx,match", BAD_INDICES, ids=[b[0] for b in BAD_INDICES])
def test_sparse_bad_index_raises_and_writes_nothing(label, idx, match, mode, index_dtype):
    if index_dtype == np.int32 and max(abs(i) for i in idx) >= 2**31:
        pytest.skip("not an int32")
    good = np.arange(20, dtype=np.float32).reshape(10, 2)
    table = np.arange(20, dtype=np.float32).reshape(10, 2) + 0.5
    m = [np.ones((10, 2), np.float32) for _ in range(2)]
    v = [np.ones((10, 2), np.float32) for _ in range(2)]
    watched = [good, table] + m + v
    before = _snapshot(watched)
    values = [np.ones((2, 2), np.float32), np.ones((4, 2), np.float32)]
    indices = [np.array([0, 3], index_dtype), np.array(idx, index_dtype)]
    with pytest.raises(ValueError, match=match):
        nat.sparse_apply("adam", [good, table], values, indices, {"m": m, "v": v},
                         {"lr": 0.1, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}, step=1,
                         mode=mode)
    _assert_unchanged(watched, before, label)


def _adagrad_sparse(var, acc, values, indices, **kw):
    return nat.sparse_apply("adagrad", [var], [values], [indices], {"accumulator": [acc]},
                            {"lr": 0.1, "epsilon": 1e-7}, **kw)


@pytest.mark.parametrize("bad", ["values shape", "2-D indices", "float indices", "mode",
                                 "scalar variable", "index count"])
def test_sparse_bad_input_raises_and_writes_nothing(bad):
    var = np.zeros((10, 2), np.float32)
    acc = np.ones((10, 2), np.float32)
    values, indices, kw = np.ones((3, 2), np.float32), np.array([0, 1, 2]), {}
    if bad == "values shape":
        values = np.ones((3, 3), np.float32)
    elif bad == "2-D indices":
        indices = np.array([[0, 1, 2]])
    elif bad == "float indices":
        indices = np.array([0.0, 1.0, 2.0])
    elif bad == "mode":
        kw["mode"] = "eager"
    elif bad == "scalar variable":
        var, acc, values, indices = np.array(1.0, np.float32), np.array(1.0, np.float32), \
            np.ones(1, np.float32), np.array([0])
    elif bad == "index count":
        indices = np.array([0, 1])
    before = _snapshot([var, acc])
    with pytest.raises(ValueError):
        _adagrad_sparse(var, acc, values, indices, **kw)
    _assert_unchanged([var, acc], before, bad)


def test_sparse_lamb_has_no_lazy_mode():
    var = np.ones((10, 2), np.float32)
    m, v = np.zeros_like(var), np.ones_like(var)
    before = _snapshot([var, m, v])
    with pytest.raises(ValueError, match="lazy"):
        nat.sparse_apply("lamb", [var], [np.ones((1, 2), np.float32)], [np.array([3])],
                         {"m": [m], "v": [v]},
                         {"lr": 0.1, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-6}, step=1,
                         mode="lazy")
    _assert_unchanged([var, m, v], before, "lamb lazy")


def test_sparse_skip_nonfinite_writes_nothing():
    var = np.ones((10, 2), np.float32)
    acc = np.ones((10, 2), np.float32)
    before = _snapshot([var, acc])
    values = np.array([[1.0, np.nan], [1.0, 1.0]], np.float32)
    assert _adagrad_sparse(var, acc, values, np.array([1, 4]), skip_nonfinite=True) is True
    _assert_unchanged([var, acc], before, "skipped sparse step")
    values[0, 1] = 2.0
    assert _adagrad_sparse(var, acc, values, np.array([1, 4]), skip_nonfinite=True) is False
    assert not np.array_equal(var, np.ones((10, 2), np.float32))


# --- bad input ------------------------------------------------------------------------------

BAD = ["grad shape", "slot shape", "var dtype", "grad dtype", "slot dtype", "int dtype",
       "missing hparam", "unknown hparam", "non-number hparam", "unknown rule",
       "non-contiguous var", "non-contiguous grad", "fortran var", "read-only var",
       "read-only slot", "slot list length", "grad list length", "missing slot",
       "unknown slot", "step 0", "two clips", "clip <= 0", "var as its own slot",
       "slot shared by two lists", "python list", "mode keyword"]


def _good_call(name: str):
    """Two variables of two shapes with slots; index 1 is the one made bad."""
    case = H.CASE_BY_NAME[name]
    rng = np.random.default_rng(0)
    shapes = [(5,), (3, 2)]
    vars_ = [H.to_storage(H.pos(rng, s, "float32"), "float32") for s in shapes]
    slots = {k: [H.to_storage(H.pos(rng, s, "float32"), "float32") for s in shapes]
             for k in case.slots}
    grads = [H.to_storage(H.random_array(rng, s, "float32"), "float32") for s in shapes]
    hparams = dict(case.hp, lr=0.1)
    kwargs = {"step": 1} if case.step else {}
    return case, vars_, slots, grads, hparams, kwargs


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("name", ["adam", "lamb"])
def test_bad_input_raises_value_error_and_writes_nothing(name, bad):
    case, vars_, slots, grads, hparams, kwargs = _good_call(name)
    rule = case.rule
    first = next(iter(slots))
    watched = vars_ + grads + [x for xs in slots.values() for x in xs]
    extra = []  # arrays a bad variant adds (their bases are watched too)

    def add(a):
        extra.append(a if a.base is None else a.base)
        return a

    if bad == "grad shape":
        grads = [grads[0], add(np.ones(6, np.float32))]
    elif bad == "slot shape":
        slots[first] = [slots[first][0], add(np.ones(6, np.float32))]
    elif bad == "var dtype":
        vars_ = [vars_[0], add(vars_[1].astype(np.float64))]
    elif bad == "grad dtype":
        grads = [grads[0], add(grads[1].astype(np.float16))]
    elif bad == "slot dtype":
        slots[first] = [slots[first][0], add(slots[first][1].astype(np.float64))]
    elif bad == "int dtype":
        grads = [grads[0], add(np.ones((3, 2), np.int32))]
    elif bad == "missing hparam":
        del hparams["beta_1"]
    elif bad == "unknown hparam":
        hparams["betta_1"] = 0.9
    elif bad == "non-number hparam":
        hparams["beta_1"] = "0.9"
    elif bad == "unknown rule":
        rule = rule + "x"
    elif bad == "non-contiguous var":
        vars_ = [vars_[0], add(np.ones((3, 4), np.float32))[:, ::2]]
    elif bad == "non-contiguous grad":
        grads = [grads[0], add(np.ones((3, 4), np.float32))[:, ::2]]
    elif bad == "fortran var":
        vars_ = [vars_[0], add(np.asfortranarray(np.ones((3, 2), np.float32)))]
    elif bad == "read-only var":
        vars_[1].flags.writeable = False
    elif bad == "read-only slot":
        slots[first][1].flags.writeable = False
    elif bad == "slot list length":
        slots[first] = slots[first][:1]
    elif bad == "grad list length":
        grads = grads[:1]
    elif bad == "missing slot":
        del slots["v"]
    elif bad == "unknown slot":
        slots["w"] = [np.ones(5, np.float32), add(np.ones((3, 2), np.float32))]
    elif bad == "step 0":
        kwargs["step"] = 0
    elif bad == "two clips":
        kwargs.update(clip_value=1.0, clip_norm=1.0)
    elif bad == "clip <= 0":
        kwargs.update(clip_norm=0.0)
    elif bad == "var as its own slot":
        slots[first] = [slots[first][0], vars_[1]]
    elif bad == "slot shared by two lists":
        slots["v"] = [slots["v"][0], slots["m"][1]]
    elif bad == "python list":
        grads = [grads[0], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]
    elif bad == "mode keyword":  # sparse-only keyword on a dense call
        kwargs["mode"] = "lazy"
    watched += extra
    before = _snapshot(watched)
    with pytest.raises((ValueError, TypeError) if bad == "mode keyword" else ValueError):
        nat.apply(rule, vars_, grads, slots, hparams, **kwargs)
    _assert_unchanged(watched, before, bad)


@pytest.mark.parametrize("name", ["adam", "lamb"])
def test_good_call_of_the_bad_input_test_does_write(name):
    case, vars_, slots, grads, hparams, kwargs = _good_call(name)
    before = _snapshot(vars_)
    assert nat.apply(case.rule, vars_, grads, slots, hparams, **kwargs) is False
    for a, b in zip(vars_, before):
        assert not np.array_equal(H.bits(a), b)


def test_ftrl_rejects_a_positive_learning_rate_power():
    case, vars_, slots, grads, hparams, kwargs = _good_call("ftrl")
    hparams["learning_rate_power"] = 0.5
    before = _snapshot(vars_)
    with pytest.raises(ValueError, match="learning_rate_power"):
        nat.apply("ftrl", vars_, grads, slots, hparams)
    _assert_unchanged(vars_, before, "ftrl")


def test_cuda_arrays_without_a_usable_device_raise_runtime_error():
    """Without CUDA in the build, or without a usable device and driver,
    nat.apply refuses device arrays with a RuntimeError saying why (a fake
    __cuda_array_interface__ object stands in for one)."""
    if nat.cuda_available():
        pytest.skip("CUDA is usable here (tests/gpu covers device arrays)")

    class FakeDevice:
        def __init__(self, address):
            self.address = address

        @property
        def __cuda_array_interface__(self):
            return {"shape": (4,), "typestr": "<f4", "data": (self.address, False), "version": 3,
                    "strides": None}

    with pytest.raises(RuntimeError, match="CUDA"):
        nat.apply("sgd", [FakeDevice(1 << 20)], [FakeDevice(2 << 20)], {},
                  {"lr": 0.1, "momentum": 0.0})


def test_mixed_devices_raise_value_error():
    class FakeDevice:
        __cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "data": (4096, False),
                                    "version": 3, "strides": None}

    var = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="device"):
        nat.apply("sgd", [var], [FakeDevice()], {}, {"lr": 0.1, "momentum": 0.0})
    np.testing.assert_array_equal(var, 1.0)


class DLPackOnly:
    """A NumPy array seen only through DLPack (as PyTorch CPU tensors are)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, *args, **kwargs):
        return self.array.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_dlpack_cpu_arrays_are_updated_in_place(rng, dtype):
    case = H.CASE_BY_NAME["adam"]
    p = H.make_problem(case, dtype, [(7,), (4097,), (3, 5, 7), ()], rng, 0.01, True, steps=2)
    want = H.run_native(nat, p)
    got = H.new_state(p)
    wrapped = H.NativeState([DLPackOnly(v) for v in got.vars],
                            {k: [DLPackOnly(x) for x in xs] for k, xs in got.slots.items()})
    H.run_native(nat, p, state=wrapped, make_grad=lambda x, dt, i: DLPackOnly(H.to_storage(x, dt)))
    assert H.compare_bits(H.state_bits(got), H.state_bits(want)) == {}


def test_empty_arrays_with_any_strides_are_accepted():
    """An array without elements is contiguous whatever its strides (NumPy and
    PyTorch say so; torch.from_numpy(np.zeros(0)) has stride 0), as are
    dimensions of size 1."""
    empty = np.lib.stride_tricks.as_strided(np.zeros(0, np.float32), shape=(0,), strides=(0,))
    empty_g = np.lib.stride_tricks.as_strided(np.zeros(0, np.float32), shape=(0,), strides=(0,))
    assert nat.apply("sgd", [DLPackOnly(empty)], [DLPackOnly(empty_g)], {},
                     {"lr": 0.1, "momentum": 0.0}) is False
    base = np.ones(3, np.float32)
    row = np.lib.stride_tricks.as_strided(base, shape=(1, 3), strides=(0, 4))
    assert nat.apply("sgd", [DLPackOnly(row)], [np.ones((1, 3), np.float32)], {},
                     {"lr": 0.5, "momentum": 0.0}) is False
    np.testing.assert_array_equal(base, 0.5)


# --- every compiled ISA gives the same bits ------------------------------------------------

_ISA_SCRIPT = r"""
import hashlib, json, sys
sys.path[:0] = json.loads(sys.argv[1])
import numpy as np
import native_harness as H
from fusedopt import reference as ref
import fusedopt._native as nat
rng = np.random.default_rng(int(sys.argv[2]))
out = {"isa": nat.build_info()["cpu_isa"], "hashes": {}}
shapes = [(), (7,), (4097,), (3, 5, 7), (70001,)]
for case in H.CASES:
    for dtype in H.DTYPES:
        if not H.cpu_supports(dtype):
            continue
        p = H.make_problem(case, dtype, shapes, rng, 0.01, True, steps=2)
        out["hashes"][f"{case.name}/{dtype}"] = H.hash_state(H.run_native(nat, p))
        # Grappler's forms (the packet rsqrt of Note [TF rsqrt] included) and the norm pass.
        q = H.Problem(**{**p.__dict__, "transform": {"grad_scale": 0.5}})
        out["hashes"][f"{case.name}/{dtype}/grappler+clip_norm"] = H.hash_state(
            H.run_native(nat, q, grappler_form=True, constant_folding=True, clip_norm=3.0))
    if case.rule != "lamb":
        p = H.make_problem(case, "float32", [(37, 15)], rng, 0.01, False, steps=2)
        for mode in ("exact", "lazy"):
            st = H.new_state(p)
            for k in range(p.steps):
                idx = rng.integers(0, 37, 20)
                vals = H.to_storage(H.random_array(rng, (20, 15), "float32"), "float32")
                nat.sparse_apply(case.rule, st.vars, [vals], [idx], st.slots, p.hparams(k),
                                 mode=mode, **p.kwargs(k))
            out["hashes"][f"{case.name}/sparse/{mode}"] = H.hash_state(st)
# Low-precision state (Note [low-precision state]): every rule with state, both formats
# (int8: the SIMD codes of Note [int8 codes in AVX-512]), dense and sparse, and int8 codes
# of extreme values (SGD with momentum 0, Adagrad from zero).
import test_native_state as NS
for name in NS.STATE_CASES:
    case = H.CASE_BY_NAME[name]
    for sd in ("int8", "bfloat16"):
        if (sd == "bfloat16" and not H.HAVE_ML_DTYPES) or (
                sd == "int8" and name not in NS.INT8_CASES):
            continue
        p = H.make_problem(case, "float32", NS.SHAPES + [(70001,)], rng, 0.01, False, steps=2)
        bits = NS._run_native(p, sd, "float32", False)
        out["hashes"][f"state/{name}/{sd}"] = hashlib.sha256(
            b"".join(bits[k] for k in sorted(bits))).hexdigest()
        q = H.make_problem(case, "float32", [(37, 300)], rng, 0.01, False, steps=1)
        slots, absmax = NS._state_arrays(q.slots, sd)
        var = H.to_storage(q.init[0], "float32")
        for mode in ("exact", "lazy"):
            nat.sparse_apply(case.rule, [var], [H.to_storage(H.random_array(rng, (20, 300),
                             "float32"), "float32")], [rng.integers(0, 37, 20)], slots,
                             q.hparams(0), mode=mode, **q.kwargs(0), state_dtype=sd,
                             absmax=absmax, rounding_seed=7)
        bits = NS._bits([var], slots, absmax)
        out["hashes"][f"state/{name}/{sd}/sparse"] = hashlib.sha256(
            b"".join(bits[k] for k in sorted(bits))).hexdigest()
for shape in [(9, 700), (70001,), (40, 5)]:
    g = NS.extreme_values(rng, shape)
    for rule, slot, hp in [("sgd", "momenta", {"lr": 1.0, "momentum": 0.0}),
                           ("adagrad", "accumulator", {"lr": 0.01, "epsilon": 1e-7})]:
        var = np.zeros(shape, np.float32)
        codes = np.zeros(shape, np.uint8)
        amax = np.zeros(NS.state.num_blocks(shape), np.float32)
        with np.errstate(all="ignore"):
            for grad in (g, np.zeros(shape, np.float32)):
                nat.apply(rule, [var], [grad], {slot: [codes]}, hp, state_dtype="int8",
                          absmax={slot: [amax]})
        out["hashes"][f"state/extreme/{rule}/{shape}"] = hashlib.sha256(
            codes.tobytes() + amax.tobytes() + var.tobytes()).hexdigest()
sums = nat.grad_stats([H.to_storage(H.random_array(rng, (300001,), "float32"), "float32")])
out["hashes"]["grad_stats"] = repr(sums)
print(json.dumps(out))
"""


def test_every_compiled_isa_gives_the_same_bits():
    isas = nat.cpu_isas()
    here = os.path.dirname(os.path.abspath(__file__))
    path = json.dumps([here] + [p for p in sys.path if p])
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print(f"seed {seed}, ISAs {isas}")
    results = {}
    # avx512 twice: with and without the VBMI code lookups (Note [int8 codes in
    # AVX-512]; FUSEDOPT_CPU_VBMI=0 turns them off, a CPU without VBMI never
    # takes them).
    runs = [(isa, {}) for isa in isas]
    if "avx512" in isas:
        runs.append(("avx512", {"FUSEDOPT_CPU_VBMI": "0"}))
    for isa, extra in runs:
        env = dict(os.environ, FUSEDOPT_CPU_ISA=isa, **extra)
        r = subprocess.run([sys.executable, "-c", _ISA_SCRIPT, path, str(seed)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{isa}: {r.stderr[-3000:]}"
        got = json.loads(r.stdout.strip().splitlines()[-1])
        assert got["isa"] == isa, f"FUSEDOPT_CPU_ISA={isa} ran {got['isa']}"
        results[isa + ("/no-vbmi" if extra else "")] = got["hashes"]
    base = results[isas[0]]
    assert len(base) > 100
    assert sum(k.startswith("state/") for k in base) >= 25
    for isa in list(results)[1:]:
        differ = sorted(k for k in base if results[isa][k] != base[k])
        assert not differ, f"{isa} differs from {isas[0]} in {differ}"


# --- the same bits as the TensorFlow op ---------------------------------------------------


def _tf_and_ops():
    tf = pytest.importorskip("tensorflow", reason="the TF comparison needs TensorFlow")
    from fusedopt import _loader

    if not _loader.library_path().exists():
        pytest.skip(f"no TensorFlow op library at {_loader.library_path()}")
    import fusedopt.ops as fops

    return tf, fops


def _run_tf(tf, fops, p: H.Problem, **extra):
    return H.run_tf(tf, fops, p, **extra)


TF_SHAPES = [(), (7,), (4097,), (3, 5, 7), (70001,)]
TF_PARAMS = ([(c, "float32") for c in CASES] + [(c, "bfloat16") for c in CASES]
             + [(H.CASE_BY_NAME[n], dt) for n in ("adam", "sgd_nesterov", "rmsprop_centered",
                                                  "lamb", "ftrl", "lion", "nadam")
                for dt in ("float16", "float64")])


@pytest.mark.parametrize("case,dtype", TF_PARAMS, ids=[f"{c.name}-{d}" for c, d in TF_PARAMS])
def test_same_bits_as_the_tensorflow_op(rng, case, dtype):
    tf, fops = _tf_and_ops()
    _need(dtype)
    p = H.make_problem(case, dtype, TF_SHAPES, rng, 0.01, dtype != "float64", steps=3)
    want = _run_tf(tf, fops, p)
    got = H.state_bits(H.run_native(nat, p))
    assert H.compare_bits(got, want) == {}


GRAPPLER = ["rmsprop", "rmsprop_centered_momentum", "adagrad", "adadelta", "adam",
            "schedule_free_adamw", "sgd_momentum", "lamb", "muon"]


@pytest.mark.parametrize("name", GRAPPLER)
def test_same_bits_as_the_tensorflow_op_in_grappler_form(rng, name):
    tf, fops = _tf_and_ops()
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, "float32", TF_SHAPES + [(13,), (8,)], rng, 0.01, False, steps=3)
    want = _run_tf(tf, fops, p, grappler_form=True, grappler_constant_folding=True)
    got = H.state_bits(H.run_native(nat, p, grappler_form=True, constant_folding=True))
    assert H.compare_bits(got, want) == {}


TF_OP_FORM = ["rmsprop", "rmsprop_momentum", "rmsprop_centered", "rmsprop_centered_momentum",
              "adadelta", "adamax", "nadam_schedule_decay"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", TF_OP_FORM)
def test_same_bits_as_the_tensorflow_op_in_its_training_op_form(rng, name, dtype):
    """tf_training_op_form=True (TF's ResourceApply* arithmetic, what
    fusedopt.legacy asks for): the module gives the op's bits, and those
    differ from the default (Keras 3) form somewhere."""
    tf, fops = _tf_and_ops()
    case = H.CASE_BY_NAME[name]
    decay = 0.0 if case.rule == "nadam" else 0.01  # (tf_keras' Nadam has no weight decay)
    p = H.make_problem(case, dtype, TF_SHAPES, rng, decay, False, steps=3)
    want = _run_tf(tf, fops, p, tf_training_op_form=True)
    got = H.state_bits(H.run_native(nat, p, tf_training_op_form=True))
    assert H.compare_bits(got, want) == {}
    assert H.compare_bits(H.state_bits(H.run_native(nat, p)), want) != {}


def test_tf_training_op_form_is_refused_where_no_op_form_exists():
    p = H.make_problem(H.CASE_BY_NAME["adam"], "float32", [(3,)], H.seeded_rng("op form"))
    with pytest.raises(ValueError, match="tf_training_op_form is for adamax, rmsprop"):
        H.run_native(nat, p, tf_training_op_form=True)


@pytest.mark.parametrize("name", ["adam", "lamb", "sgd_momentum"])
@pytest.mark.parametrize("clip", ["clip_norm", "global_clip_norm"])
def test_same_bits_as_the_tensorflow_op_with_norm_clipping(rng, name, clip):
    tf, fops = _tf_and_ops()
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, "float32", TF_SHAPES, rng, 0.01, False, steps=3)
    p.transform = {"grad_scale": 0.5}
    tf_clip = {"clip_norm": "clipnorm", "global_clip_norm": "global_clipnorm"}[clip]
    want = _run_tf(tf, fops, p, **{tf_clip: 5.0}, skip_nonfinite=True)
    got = H.state_bits(H.run_native(nat, p, **{clip: 5.0}, skip_nonfinite=True))
    assert H.compare_bits(got, want) == {}


# --- Adafactor (fusedopt_adafactor_apply: its own entry, three passes) -------------------

ADAFACTOR_SHAPES = [(), (0,), (7,), (4097,), (3, 5, 7), (2, 0, 3), (300, 257), (1, 40000)]
ADAFACTOR_HP = H.ADAFACTOR_HP


def _adafactor_arrays(init, dtype):
    """vars, r, c, v as NumPy arrays of `dtype` (r and c None below rank 2)."""
    npdt = H.np_dtype(dtype)
    vars_ = [H.to_storage(x, dtype) for x in init]
    r = [np.zeros(x.shape[:-1], npdt) if x.ndim >= 2 else None for x in init]
    c = [np.zeros(x.shape[:-2] + x.shape[-1:], npdt) if x.ndim >= 2 else None for x in init]
    v = [np.zeros(x.shape, npdt) for x in init]
    return vars_, r, c, v


def _adafactor_native(init, grads, dtype, lr, weight_decay=0.0, threads=0):
    vars_, r, c, v = _adafactor_arrays(init, dtype)
    for k, gs in enumerate(grads):
        nat.adafactor_apply(vars_, [H.to_storage(g, dtype) for g in gs], r, c, v, lr=lr,
                            step=k + 1, weight_decay=weight_decay, threads=threads,
                            **ADAFACTOR_HP)
    return vars_, r, c, v


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's mean of the empty shapes: NaN
@pytest.mark.parametrize("weight_decay", [0.0, 0.01], ids=["nodecay", "decay"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adafactor_matches_reference(rng, dtype, weight_decay):
    """fusedopt._native.adafactor_apply against the float64 reference over
    several steps: every shape class (scalar, empty, vectors, rank 3, a matrix
    of several row blocks, a one-row matrix longer than a block), variables
    and r, c, v; 16-bit state rounded every step, as stored."""
    _need(dtype)
    # (Keras' float32 hyperparameters: the kernel takes them as float32 values)
    lr, steps, weight_decay = float(np.float32(0.02)), 4, float(np.float32(weight_decay))
    init = [H.random_array(rng, s, dtype) for s in ADAFACTOR_SHAPES]
    grads = [[H.random_array(rng, s, dtype) for s in ADAFACTOR_SHAPES] for _ in range(steps)]
    vars_, rs, cs, vs = _adafactor_native(init, grads, dtype, lr, weight_decay)
    H.assert_adafactor_close(init, grads, dtype, lr, weight_decay, vars_, rs, cs, vs)
    assert not np.array_equal(vars_[3], H.to_storage(init[3], dtype))


def test_adafactor_thread_count_does_not_change_bits(rng):
    init = [H.random_array(rng, s, "float32") for s in ADAFACTOR_SHAPES]
    grads = [[H.random_array(rng, s, "float32") for s in ADAFACTOR_SHAPES] for _ in range(2)]
    one = _adafactor_native(init, grads, "float32", 0.02, threads=1)
    four = _adafactor_native(init, grads, "float32", 0.02, threads=4)
    for a, b in zip(one, four):
        for x, y in zip(a, b):
            if x is not None:
                np.testing.assert_array_equal(H.bits(x), H.bits(y))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_adafactor_same_bits_as_the_tensorflow_op(rng, dtype):
    tf, fops = _tf_and_ops()
    _need(dtype)
    steps, lr = 3, float(np.float32(0.02))
    init = [H.random_array(rng, s, dtype) for s in ADAFACTOR_SHAPES]
    grads = [[H.random_array(rng, s, dtype) for s in ADAFACTOR_SHAPES] for _ in range(steps)]
    got = _adafactor_native(init, grads, dtype, lr, weight_decay=0.01)
    tdt = tf.as_dtype(dtype)
    with tf.device("/CPU:0"):
        want = [[tf.Variable(x) if x is not None else tf.Variable(np.zeros((), H.np_dtype(dtype)))
                 for x in xs] for xs in _adafactor_arrays(init, dtype)]
        for k in range(steps):
            fops.apply_adafactor(want[0], [tf.constant(H.to_storage(g, dtype), tdt)
                                           for g in grads[k]], lr,
                                 r=want[1], c=want[2], v=want[3], step=k + 1, weight_decay=0.01,
                                 **ADAFACTOR_HP)
    for name, a, b in zip(["var", "r", "c", "v"], got, want):
        for i, (x, y) in enumerate(zip(a, b)):
            if x is not None:
                np.testing.assert_array_equal(H.bits(x), H.bits(y.numpy()),
                                              err_msg=f"{name}[{i}] {dtype}")


def _adafactor_bad(bad):
    vars_, r, c, v = _adafactor_arrays([np.ones((4, 3)), np.ones(5)], "float32")
    grads = [np.ones((4, 3), np.float32), np.ones(5, np.float32)]
    kw = dict(lr=0.01, step=1)
    if bad == "nan lr":
        kw["lr"] = float("nan")
    elif bad == "step 0":
        kw["step"] = 0
    elif bad == "clip_threshold 0":
        kw["clip_threshold"] = 0.0
    elif bad == "r shape":
        r[0] = np.zeros(3, np.float32)
    elif bad == "r missing":
        r[0] = None
    elif bad == "grad dtype":
        grads[1] = np.ones(5, np.float64)
    elif bad == "v is the variable":
        v[1] = vars_[1]
    elif bad == "list lengths":
        c = c[:1]
    elif bad == "read-only variable":
        vars_[1].setflags(write=False)
    return vars_, grads, r, c, v, kw


ADAFACTOR_BAD = [("nan lr", "'lr' must be finite"), ("step 0", "'step' must be >= 1"),
                 ("clip_threshold 0", "'clip_threshold' must be > 0"),
                 ("r shape", r"r\[0\] has shape \(3,\) but needs \(4,\)"),
                 ("r missing", r"r\[0\]"), ("grad dtype", r"grads\[1\] is float64"),
                 ("v is the variable", "overlaps"), ("list lengths", "c has 1 entries"),
                 ("read-only variable", r"vars\[1\]")]


@pytest.mark.parametrize("bad,match", ADAFACTOR_BAD, ids=[b for b, _ in ADAFACTOR_BAD])
def test_adafactor_bad_input_raises_and_writes_nothing(bad, match):
    vars_, grads, r, c, v, kw = _adafactor_bad(bad)
    watched = [a for a in vars_ + r + c + v if a is not None]
    before = _snapshot(watched)
    with pytest.raises(ValueError, match=match):
        nat.adafactor_apply(vars_, grads, r, c, v, **kw)
    _assert_unchanged(watched, before, bad)


def test_adafactor_good_call_of_the_bad_input_test_does_write():
    vars_, grads, r, c, v, kw = _adafactor_bad("none")
    before = _snapshot(vars_)
    nat.adafactor_apply(vars_, grads, r, c, v, **kw)
    assert all(not np.array_equal(H.bits(a), b) for a, b in zip(vars_, before))
