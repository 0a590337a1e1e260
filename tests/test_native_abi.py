"""The native layer's contract on odd and hostile input, without TensorFlow
(issue #34): byte order, overflowing sizes and products, NULL for every
pointer, exceptions that must not cross the C ABI, empty tables, names with
NUL bytes, malformed slot dicts and device-array interfaces, options that do
not belong to a rule, hyperparameters that make state non-finite, concurrent
calls, and the randomized C ABI test (tests/native/abi_fuzz.cc).

The C ABI is called directly through ctypes (tests/native_abi.py). Calls that
used to end the process run in a subprocess, so a regression fails its test
instead of killing the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import native_abi as A
import native_harness as H

import fusedopt._native as nat

HERE = Path(__file__).resolve().parent
ADAM_HP = dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
SGD_HP = dict(lr=0.1, momentum=0.0)


@pytest.fixture(scope="module")
def lib():
    return A.library()


def _adam_state(n=6, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    var = rng.standard_normal(n).astype(dtype)
    grad = rng.standard_normal(n).astype(dtype)
    return var, grad, {"m": [np.zeros(n, dtype)], "v": [np.zeros(n, dtype)]}


def _in_subprocess(case: str, *args, address_space: int | None = None) -> tuple[int, str]:
    """Runs native_abi.CASES[case](lib, *args) in a fresh interpreter: (rc,
    message). Fails the test if the process died."""
    cmd = [sys.executable, str(HERE / "native_abi.py"), case, *map(str, args)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    if address_space:
        env["FUSEDOPT_TEST_ADDRESS_SPACE"] = str(address_space)
    args = cmd
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert p.returncode == 0, (
        f"{case}: the process ended with {p.returncode} (a signal when negative)\n"
        f"{p.stdout}\n{p.stderr[-3000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("rc=")][-1]
    rc, _, msg = line.partition(" msg=")
    return int(rc[3:]), msg


# --- 1. byte order ------------------------------------------------------------------


@pytest.mark.parametrize("code", ["f2", "f4", "f8"])
def test_big_endian_gradients_give_the_native_numbers(code):
    var = np.array([1.0, 2.0, -3.0], "<" + code)
    grad = np.array([0.5, 0.25, 1.5], "<" + code)
    want = var.copy()
    nat.apply("sgd", [want], [grad], {}, SGD_HP)
    got = var.copy()
    assert nat.apply("sgd", [got], [grad.astype(">" + code)], {}, SGD_HP) is False
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, (var - np.array(0.1, code) * grad).astype(code))


@pytest.mark.parametrize("code", ["f2", "f4", "f8"])
def test_big_endian_variables_and_slots_are_refused_and_untouched(code):
    var = np.array([1.0, 2.0], ">" + code)
    grad = np.array([0.5, 0.5], ">" + code)
    before = var.tobytes()
    with pytest.raises(ValueError, match=r"vars\[0\] has non-native byte order"):
        nat.apply("sgd", [var], [grad], {}, SGD_HP)
    assert var.tobytes() == before
    v, g, slots = _adam_state(dtype=np.dtype("<" + code))
    slots["m"] = [slots["m"][0].astype(">" + code)]
    with pytest.raises(ValueError, match=r"m\[0\] has non-native byte order"):
        nat.apply("adam", [v], [g], slots, ADAM_HP, step=1)


def test_big_endian_grad_stats_sparse_and_adafactor():
    sums, bad = nat.grad_stats([np.arange(1, 8, dtype=">f4")])
    assert sums == [140.0] and bad is False
    # Sparse: big-endian values and indices.
    table = np.ones((5, 3), np.float32)
    acc = np.full((5, 3), 0.1, np.float32)
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    idx = np.array([4, 1])
    want_t, want_a = table.copy(), acc.copy()
    nat.sparse_apply("adagrad", [want_t], [values], [idx], {"accumulator": [want_a]},
                     dict(lr=0.1, epsilon=1e-7), mode="lazy")
    nat.sparse_apply("adagrad", [table], [values.astype(">f4")], [idx.astype(">i8")],
                     {"accumulator": [acc]}, dict(lr=0.1, epsilon=1e-7), mode="lazy")
    np.testing.assert_array_equal(table, want_t)
    np.testing.assert_array_equal(acc, want_a)
    # Adafactor: a big-endian gradient converts, a big-endian variable is refused.
    rng = np.random.default_rng(1)
    var = rng.standard_normal((3, 4)).astype(np.float32)
    g = rng.standard_normal((3, 4)).astype(np.float32)
    runs = []
    for grad in (g, g.astype(">f4")):
        v = var.copy()
        r, c, vv = np.zeros(3, np.float32), np.zeros(4, np.float32), np.zeros((3, 4), np.float32)
        nat.adafactor_apply([v], [grad], [r], [c], [vv], lr=0.01, step=1)
        runs.append((v, r, c))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="byte order"):
        nat.adafactor_apply([var.astype(">f4")], [g], [np.zeros(3, np.float32)],
                            [np.zeros(4, np.float32)], [np.zeros((3, 4), np.float32)],
                            lr=0.01, step=1)


# --- 2. and 3. sizes and products that overflow; no exception crosses the C ABI ---------


@pytest.mark.parametrize("rows,row_size,index", [(1 << 44, 1 << 20, 3), (1 << 32, 1 << 32, 0),
                                                 ((1 << 62) + 1, 4, 0), (1 << 62, 3, 1)])
def test_sparse_rows_times_row_size_that_wraps_is_refused(rows, row_size, index):
    rc, msg = _in_subprocess("sparse_wrapped_rows", rows, row_size, index)
    assert rc == A.INVALID_ARGUMENT, msg
    assert "rows" in msg and "row_size" in msg


@pytest.mark.parametrize("case", ["apply_2_62", "apply_2_62_float16", "apply_i64_max",
                                  "grad_stats_2_62", "adafactor_2_62"])
def test_impossible_sizes_are_refused_without_an_abort(case):
    rc, msg = _in_subprocess(case)
    assert rc == A.INVALID_ARGUMENT, msg
    assert "address space" in msg or "int64" in msg, msg


def test_a_failed_allocation_is_an_error_code_not_an_abort():
    rc, msg = _in_subprocess("sparse_out_of_memory", address_space=6 << 30)
    assert rc == A.OUT_OF_MEMORY, msg
    assert "out of host memory" in msg or "exceed" in msg, msg


def test_sparse_gradient_element_count_that_overflows_is_refused(lib):
    var = np.zeros((2, 4), np.float32)
    call = A.SparseCall(lib, "sgd", [var], [np.ones((1, 4), np.float32)], [[0]], None,
                        [0.1, 0.0, 0.0], counts=[1 << 62], exact=False)
    rc, msg, _ = call.run()
    assert rc == A.INVALID_ARGUMENT and "int64" in msg, msg
    assert not var.any()


# --- 4. and 9. NULL for every pointer argument --------------------------------------


def test_call_init_null_is_a_no_op():
    rc, msg = _in_subprocess("call_init_null")
    assert rc == A.OK, msg


def _dense_adam(lib):
    var, grad, slots = _adam_state()
    return A.DenseCall(lib, "adam", [var], [grad], [[slots["m"][0], slots["v"][0]]],
                       [0.01, 0.9, 0.999, 1e-7, 0.0], step=1), var


@pytest.mark.parametrize("field", ["call", "tensors", "vars", "grads", "sizes", "slots",
                                   "scalars", "var[0]", "grad[0]", "slot m[0]"])
def test_apply_with_a_null_pointer_is_refused_and_writes_nothing(lib, field):
    c, var = _dense_adam(lib)
    before = var.copy()
    kwargs = {}
    if field in ("call", "tensors"):
        kwargs[field] = False
    elif field == "scalars":
        c.call.scalars = None
    elif field in ("vars", "grads", "sizes", "slots"):
        setattr(c.t, field, None)
    elif field == "var[0]":
        c.vars[0] = None
    elif field == "grad[0]":
        c.grads[0] = None
    else:
        c.slots[0] = None
    rc, msg, _ = c.run(**kwargs)
    assert rc == A.INVALID_ARGUMENT, msg
    assert "NULL" in msg, msg
    np.testing.assert_array_equal(var, before)


def test_scalars_null_and_scalar_count_have_their_own_messages(lib):
    c, _ = _dense_adam(lib)
    c.call.scalars = None
    _, msg, _ = c.run()
    assert msg == "scalars is NULL but adam takes 5 hyperparameters"
    c, _ = _dense_adam(lib)
    c.call.num_scalars = 4
    _, msg, _ = c.run()
    assert msg == "adam takes 5 hyperparameters, got 4"


def test_null_skipped_and_err_are_allowed(lib):
    c, var = _dense_adam(lib)
    before = var.copy()
    assert lib.fusedopt_apply(A.ctypes.byref(c.call), A.ctypes.byref(c.t), None, None, 0) == A.OK
    assert not np.array_equal(var, before)
    c.call.rule = -1
    assert lib.fusedopt_apply(A.ctypes.byref(c.call), A.ctypes.byref(c.t), None, None, 0) == \
        A.INVALID_ARGUMENT


@pytest.mark.parametrize("field", ["sparse", "indices", "counts", "rows", "row_sizes",
                                   "indices[0]"])
def test_sparse_apply_with_a_null_pointer_is_refused(lib, field):
    var = np.zeros((3, 2), np.float32)
    acc = np.full((3, 2), 0.1, np.float32)
    call = A.SparseCall(lib, "adagrad", [var], [np.ones((1, 2), np.float32)], [[1]], [[acc]],
                        [0.1, 1e-7, 0.0], exact=False)
    kwargs = {}
    if field == "sparse":
        kwargs["sparse"] = False
    elif field == "indices[0]":
        call.index_ptrs[0] = A.ctypes.cast(None, A.c_i64p)
    else:
        setattr(call.sp, field, None)
    rc, msg, _ = call.run(**kwargs)
    assert rc == A.INVALID_ARGUMENT and "NULL" in msg, msg
    assert not var.any()


@pytest.mark.parametrize("null", ["grads", "sizes", "sum_sq", "nonfinite", "grads[0]"])
def test_grad_stats_with_a_null_pointer_is_refused(lib, null):
    g = np.ones(4, np.float32)
    ptrs = [None if null == "grads[0]" else A.ptr(g)]
    if null in ("grads", "sizes"):
        err = A.ctypes.create_string_buffer(256)
        out = (A.ctypes.c_double * 1)()
        nf = A.ctypes.c_int()
        rc = lib.fusedopt_grad_stats(
            2, 0, None, 1, 1, None if null == "grads" else A.voidp_array(ptrs),
            None if null == "sizes" else A.i64_array([4]), out, A.ctypes.byref(nf), err, 256)
        msg = err.value.decode()
    else:
        rc, msg, _, _ = A.grad_stats(lib, 2, ptrs, [4], sums=null != "sum_sq",
                                     nonfinite=null != "nonfinite")
    assert rc == A.INVALID_ARGUMENT and "NULL" in msg, msg


@pytest.mark.parametrize("null", ["scalars", "vars", "r", "c", "v", "grads", "shapes", "ranks"])
def test_adafactor_with_a_null_pointer_is_refused(lib, null):
    arrays = [np.ones((2, 3), np.float32) for _ in range(3)]
    r, c = np.zeros(2, np.float32), np.zeros(3, np.float32)
    before = [a.copy() for a in arrays]
    rc, msg = A.adafactor(lib, 2, None if null == "scalars" else [0.01, -0.8, 1e-30, 1e-3, 1.0, 0],
                          1, [A.ptr(arrays[0])], [A.ptr(r)], [A.ptr(c)], [A.ptr(arrays[1])],
                          [A.ptr(arrays[2])], [[2, 3]], null=(null,))
    assert rc == A.INVALID_ARGUMENT and "NULL" in msg, msg
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


# --- 5. empty tables ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["exact", "lazy"])
def test_sparse_apply_on_an_empty_table_with_huge_rows_is_a_no_op(mode):
    table = np.empty((0, 1 << 40), np.float32)
    acc = np.empty((0, 1 << 40), np.float32)
    values = np.empty((0, 1 << 40), np.float32)
    assert nat.sparse_apply("adagrad", [table], [values], [np.empty(0, np.int64)],
                            {"accumulator": [acc]}, dict(lr=0.1, epsilon=1e-7), mode=mode) is False
    assert nat.apply("adagrad", [table], [values], {"accumulator": [acc]},
                     dict(lr=0.1, epsilon=1e-7)) is False


def test_exact_sparse_zero_buffer_is_only_what_the_gaps_need(rng):
    # Rows much longer than a chunk with gaps of several rows: the exact mode's
    # zero gradient, now sized by the longest gap, still gives the dense bits.
    table = rng.standard_normal((7, 70001)).astype(np.float32)
    acc = np.full_like(table, 0.1)
    values = rng.standard_normal((2, 70001)).astype(np.float32)
    idx = np.array([5, 1])
    dense_t, dense_a = table.copy(), acc.copy()
    full = np.zeros_like(table)
    full[idx] = values
    nat.apply("adagrad", [dense_t], [full], {"accumulator": [dense_a]}, dict(lr=0.1, epsilon=1e-7))
    nat.sparse_apply("adagrad", [table], [values], [idx], {"accumulator": [acc]},
                     dict(lr=0.1, epsilon=1e-7), mode="exact")
    np.testing.assert_array_equal(table, dense_t)
    np.testing.assert_array_equal(acc, dense_a)


# --- 6., 7., 8. names, slot dicts and device-array interfaces -----------------------


def test_a_rule_name_with_an_embedded_nul_is_unknown():
    var = np.ones(2, np.float32)
    with pytest.raises(ValueError, match=r"unknown rule 'sgd\\x00junk'"):
        nat.apply("sgd\x00junk", [var], [np.ones(2, np.float32)], {}, SGD_HP)
    assert (var == 1).all()


@pytest.mark.parametrize("slots,match", [
    ([("m", [np.zeros(6, np.float32)])], r"slots must be a dict .*got a list"),
    ({"m": 5, "v": [np.zeros(6, np.float32)]}, r"slots\['m'\] must be a list of arrays.*int"),
    ({"m": np.zeros(6, np.float32), "v": [np.zeros(6, np.float32)]},
     r"slots\['m'\] must be a list of arrays.*ndarray"),
])
def test_slots_of_the_wrong_type_name_the_slots(slots, match):
    var, grad, _ = _adam_state()
    before = var.copy()
    with pytest.raises(ValueError, match=match):
        nat.apply("adam", [var], [grad], slots, ADAM_HP, step=1)
    np.testing.assert_array_equal(var, before)


class _Cai:
    def __init__(self, cai):
        self.__cuda_array_interface__ = cai


_GOOD_CAI = {"typestr": "<f4", "shape": (4,), "data": (1 << 20, False), "version": 3}


@pytest.mark.parametrize("cai,match", [
    ({k: v for k, v in _GOOD_CAI.items() if k != "shape"}, "no 'shape' entry"),
    ({k: v for k, v in _GOOD_CAI.items() if k != "data"}, "no 'data' entry"),
    ({k: v for k, v in _GOOD_CAI.items() if k != "typestr"}, "no 'typestr' entry"),
    (dict(_GOOD_CAI, shape=4), r"\['shape'\] must be a tuple of ints, got int"),
    (dict(_GOOD_CAI, shape=(4.0,)), r"\['shape'\] must be a tuple of ints, holds a float"),
    (dict(_GOOD_CAI, shape=(1 << 40, 1 << 40)), "more elements than int64"),
    (dict(_GOOD_CAI, shape=(-4,)), "negative dimension"),
    (dict(_GOOD_CAI, data=1 << 20), r"\['data'\] must be a tuple"),
    (dict(_GOOD_CAI, data=("p", False)), r"\['data'\] must be a tuple"),
    (dict(_GOOD_CAI, data=(-1, False)), "is not a pointer"),
    (dict(_GOOD_CAI, typestr=5), r"\['typestr'\] must be a str"),
    (dict(_GOOD_CAI, strides=(4, 4)), "2 strides for 1 dimensions"),
    (dict(_GOOD_CAI, strides="4"), r"\['strides'\] must be a tuple of ints"),
    ([("shape", (4,))], "not a dict"),
])
def test_malformed_cuda_array_interface_is_a_value_error_naming_the_argument(cai, match):
    with pytest.raises(ValueError, match=match) as e:
        nat.apply("sgd", [np.ones(4, np.float32)], [_Cai(cai)], {}, SGD_HP)
    assert "grads[0]" in str(e.value)


def test_well_formed_cuda_array_interface_gets_past_the_checks():
    # On a build or machine without CUDA the call fails later, for that reason.
    var = _Cai(dict(_GOOD_CAI))
    with pytest.raises((RuntimeError, ValueError)) as e:
        nat.apply("sgd", [var], [_Cai(dict(_GOOD_CAI, data=(2 << 20, True)))], {}, SGD_HP)
    assert "__cuda_array_interface__" not in str(e.value)


# --- options and hyperparameters ----------------------------------------------------------


@pytest.mark.parametrize("rule,options,match", [
    ("adam", dict(nesterov=True), "nesterov"),
    ("adam", dict(schedule_decay=float("nan")), "schedule_decay"),
    ("adam", dict(schedule_decay=0.004), "schedule_decay"),
    ("adam", dict(epsilon_outside_sqrt=True), "epsilon_outside_sqrt"),
    ("sgd", dict(step=3), "step"),
])
def test_options_of_other_rules_are_refused(rule, options, match):
    var, grad, slots = _adam_state()
    if rule == "sgd":
        args, kw = ({}, SGD_HP), {}
    else:
        args, kw = (slots, ADAM_HP), {"step": 1}
    kw.update(options)
    before = var.copy()
    with pytest.raises(ValueError, match=f"the option {match} .*is not one of {rule}'s"):
        nat.apply(rule, [var], [grad], *args, **kw)
    np.testing.assert_array_equal(var, before)


@pytest.mark.parametrize("hp,match", [
    (dict(beta_1=1.5), r"'beta_1' must be in \[0, 1\]"),
    (dict(beta_2=-0.1), r"'beta_2' must be in \[0, 1\]"),
    (dict(epsilon=-1.0), "'epsilon' must be >= 0"),
])
def test_hyperparameters_that_make_state_non_finite_are_refused(hp, match):
    var, grad, slots = _adam_state()
    before = var.copy()
    with pytest.raises(ValueError, match=match):
        nat.apply("adam", [var], [grad], slots, dict(ADAM_HP, **hp), step=1)
    np.testing.assert_array_equal(var, before)


@pytest.mark.parametrize("kw,match", [(dict(epsilon_1=-1.0), "'epsilon_1' must be >= 0"),
                                      (dict(epsilon_2=-1e-3), "'epsilon_2' must be >= 0"),
                                      (dict(beta_2_decay=0.5), "'beta_2_decay' must be <= 0")])
def test_adafactor_hyperparameters_that_make_state_non_finite_are_refused(kw, match):
    var = np.ones((3, 4), np.float32)
    r, c, v = np.zeros(3, np.float32), np.zeros(4, np.float32), np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=match):
        nat.adafactor_apply([var], [np.full((3, 4), 1e-4, np.float32)], [r], [c], [v], lr=0.01,
                            step=1, **kw)
    assert (var == 1).all() and not r.any() and not c.any()


# --- concurrency ----------------------------------------------------------------------


def test_concurrent_calls_on_the_same_arrays_serialize():
    # Two threads, each 12 SGD steps on one shared variable with the same
    # gradient: every serial order gives the same bits, those of 24 steps in a
    # row. Unlocked, the calls interleave element by element and lose updates.
    n = 1 << 21
    grad = np.full(n, 1.0, np.float32)
    shared = np.zeros(n, np.float32)
    want = np.zeros(n, np.float32)
    for _ in range(24):
        nat.apply("sgd", [want], [grad], {}, dict(lr=0.001, momentum=0.0), threads=1)
    errors = []

    def worker():
        try:
            for _ in range(12):
                nat.apply("sgd", [shared], [grad], {}, dict(lr=0.001, momentum=0.0), threads=1)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    np.testing.assert_array_equal(shared, want)


def test_concurrent_calls_on_disjoint_arrays_give_the_serial_bits(rng):
    cases = []
    for k in range(4):
        var, grad, slots = _adam_state(n=50001, seed=k)
        cases.append((var, grad, slots, var.copy(), {s: [a[0].copy()] for s, a in slots.items()}))
    for _, grad, _, var, slots in cases:
        for t in range(1, 4):
            nat.apply("adam", [var], [grad], slots, ADAM_HP, step=t, threads=1)

    def worker(var, grad, slots):
        for t in range(1, 4):
            nat.apply("adam", [var], [grad], slots, ADAM_HP, step=t, threads=1)

    threads = [threading.Thread(target=worker, args=c[:3]) for c in cases]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for var, _, slots, want_var, want_slots in cases:
        np.testing.assert_array_equal(var, want_var)
        for s in slots:
            np.testing.assert_array_equal(slots[s][0], want_slots[s][0])


# --- the randomized test of the C ABI ----------------------------------------------------


def _fuzz_binaries() -> list[str]:
    found = [os.environ.get(k) for k in ("FUSEDOPT_ABI_FUZZ", "FUSEDOPT_ABI_FUZZ_ASAN")]
    found = [f for f in found if f]
    if not found:
        if os.environ.get("CI"):
            pytest.fail("CI must build the C ABI fuzz test (scripts/test.sh sets FUSEDOPT_ABI_FUZZ)")
        pytest.skip("FUSEDOPT_ABI_FUZZ is not set (scripts/test.sh builds the fuzz test)")
    return found


def test_randomized_c_abi_calls_never_crash_write_stray_or_half():
    seconds = os.environ.get("FUSEDOPT_ABI_FUZZ_SECONDS", "8")
    for binary in _fuzz_binaries():
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
        p = subprocess.run([binary, seconds], capture_output=True, text=True, timeout=600, env=env)
        tail = (p.stdout + p.stderr)[-4000:]
        assert p.returncode == 0, f"{binary} exited {p.returncode}:\n{tail}"
        assert " 0 failed" in p.stdout, tail
        print(p.stdout)


def test_rule_table_lookups_with_null_or_out_of_range_arguments(lib):
    lib.fusedopt_rule_name.restype = A.ctypes.c_char_p
    lib.fusedopt_rule_scalar_name.restype = A.ctypes.c_char_p
    assert lib.fusedopt_rule_index(None) == -1
    assert lib.fusedopt_rule_index(b"sgd") == 0
    assert lib.fusedopt_rule_name(-1) is None and lib.fusedopt_rule_name(10**6) is None
    assert lib.fusedopt_rule_scalar_name(0, 99) is None
    assert lib.fusedopt_rule_num_scalars(-5) == -1


@pytest.mark.parametrize("null", ["shape of tensor 0", "r of tensor 0", "c of tensor 0"])
def test_adafactor_with_a_null_entry_is_refused(lib, null):
    arrays = [np.ones((2, 3), np.float32) for _ in range(3)]
    r, c = np.zeros(2, np.float32), np.zeros(3, np.float32)
    before = [a.copy() for a in arrays]
    args = dict(vars_=[A.ptr(arrays[0])], r=[A.ptr(r)], c=[A.ptr(c)], v=[A.ptr(arrays[1])],
                grads=[A.ptr(arrays[2])], shapes=[[2, 3]])
    if null.startswith("r"):
        args["r"] = [None]
    elif null.startswith("c"):
        args["c"] = [None]
    if null.startswith("shape"):
        rc, msg = A.adafactor(lib, 2, [0.01, -0.8, 1e-30, 1e-3, 1.0, 0], 1, args["vars_"],
                              args["r"], args["c"], args["v"], args["grads"], [[2, 3]],
                              null_shape0=True)
    else:
        rc, msg = A.adafactor(lib, 2, [0.01, -0.8, 1e-30, 1e-3, 1.0, 0], 1, **args)
    assert rc == A.INVALID_ARGUMENT and ("NULL" in msg or "no shape" in msg), msg
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)
    assert not r.any() and not c.any()
