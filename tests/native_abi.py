"""ctypes bindings of the C ABI (cc/native/fusedopt_native.h), for tests that
call its entry points directly. TensorFlow-free: the ABI is exported from the
fusedopt._native module, which is dlopen'ed here.

Run as a script (`python native_abi.py CASE`), it makes one call that used to
kill the process (an abort or a segfault) and prints its return code and
message: tests run those in a subprocess, so a regression is a failed test,
not a dead test run.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np

OK, INVALID_ARGUMENT, UNAVAILABLE, DEVICE_ERROR, OUT_OF_MEMORY, INTERNAL_ERROR = range(6)
DTYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}

c_i64p = ctypes.POINTER(ctypes.c_int64)


class Call(ctypes.Structure):
    _fields_ = [
        ("rule", ctypes.c_int),
        ("dtype", ctypes.c_int),
        ("device", ctypes.c_int),
        ("stream", ctypes.c_void_p),
        ("num_threads", ctypes.c_int),
        ("scalars", ctypes.POINTER(ctypes.c_double)),
        ("num_scalars", ctypes.c_int),
        ("step", ctypes.c_int64),
        ("nesterov", ctypes.c_int),
        ("epsilon_outside_sqrt", ctypes.c_int),
        ("schedule_decay", ctypes.c_double),
        ("grappler_form", ctypes.c_int),
        ("constant_folding", ctypes.c_int),
        ("grad_scale", ctypes.c_double),
        ("clip_value", ctypes.c_double),
        ("clip_norm", ctypes.c_double),
        ("global_clip_norm", ctypes.c_double),
        ("skip_nonfinite", ctypes.c_int),
        ("tf_training_op_form", ctypes.c_int),
        # ABI version 2: low-precision state.
        ("state_format", ctypes.c_int),
        ("stochastic_rounding", ctypes.c_int),
        ("rounding_seed", ctypes.c_uint64),
    ]


class Tensors(ctypes.Structure):
    _fields_ = [
        ("n", ctypes.c_int),
        ("slot_given", ctypes.c_int * 3),
        ("vars", ctypes.POINTER(ctypes.c_void_p)),
        ("slots", ctypes.POINTER(ctypes.c_void_p)),
        ("grads", ctypes.POINTER(ctypes.c_void_p)),
        ("sizes", c_i64p),
        ("rank0", ctypes.POINTER(ctypes.c_ubyte)),
        # ABI version 2: int8 state's absmax [n][3] and rows.
        ("absmax", ctypes.POINTER(ctypes.c_void_p)),
        ("row_sizes", c_i64p),
    ]

ABI_VERSION = 2  # FUSEDOPT_NATIVE_ABI_VERSION, which these structs follow


class Sparse(ctypes.Structure):
    _fields_ = [
        ("indices", ctypes.POINTER(c_i64p)),
        ("counts", c_i64p),
        ("rows", c_i64p),
        ("row_sizes", c_i64p),
        ("exact", ctypes.c_int),
    ]


def library() -> ctypes.CDLL:
    import fusedopt._native as nat

    lib = ctypes.CDLL(nat.__file__)
    errbuf = [ctypes.c_char_p, ctypes.c_size_t]
    lib.fusedopt_call_init.argtypes = [ctypes.c_void_p]
    lib.fusedopt_call_init.restype = None
    lib.fusedopt_native_abi_version.restype = ctypes.c_int
    if lib.fusedopt_native_abi_version() != ABI_VERSION:
        raise RuntimeError(f"the library's C ABI is version {lib.fusedopt_native_abi_version()}, "
                           f"these bindings follow version {ABI_VERSION}")
    lib.fusedopt_rule_index.argtypes = [ctypes.c_char_p]
    lib.fusedopt_rule_num_scalars.argtypes = [ctypes.c_int]
    lib.fusedopt_apply.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.POINTER(ctypes.c_int)] + errbuf
    lib.fusedopt_sparse_apply.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                          ctypes.POINTER(ctypes.c_int)] + errbuf
    lib.fusedopt_grad_stats.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
        ctypes.POINTER(ctypes.c_void_p), c_i64p, ctypes.POINTER(ctypes.c_double),
        ctypes.POINTER(ctypes.c_int)] + errbuf
    lib.fusedopt_adafactor_apply.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_double), ctypes.c_int64,
        ctypes.c_int, ctypes.c_int] + [ctypes.POINTER(ctypes.c_void_p)] * 5 + [
        ctypes.POINTER(c_i64p), ctypes.POINTER(ctypes.c_int)] + errbuf
    return lib


def ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def voidp_array(values) -> ctypes.Array:
    return (ctypes.c_void_p * max(1, len(values)))(*values)


def i64_array(values) -> ctypes.Array:
    return (ctypes.c_int64 * max(1, len(values)))(*values)


class DenseCall:
    """One fusedopt_apply call over NumPy arrays, every field reachable, so a
    test can make any one of them bad. `slots`: per tensor, a list in the
    rule's slot order."""

    def __init__(self, lib, rule: str, vars_, grads, slots, scalars, *, step=0, sizes=None):
        self.lib = lib
        self.arrays = [vars_, grads, slots]  # keeps the memory alive
        self.call = Call()
        lib.fusedopt_call_init(ctypes.byref(self.call))
        self.call.rule = lib.fusedopt_rule_index(rule.encode())
        self.call.dtype = DTYPE_CODES[str(vars_[0].dtype)] if vars_ else 2
        self.call.num_threads = 1
        self.scalars = (ctypes.c_double * max(1, len(scalars)))(*scalars)
        self.call.scalars = self.scalars
        self.call.num_scalars = len(scalars)
        self.call.step = step
        n = len(vars_)
        self.t = Tensors()
        self.t.n = n
        nslots = len(slots[0]) if slots else 0
        for k in range(nslots):
            self.t.slot_given[k] = 1
        self.vars = voidp_array([ptr(v) for v in vars_])
        self.grads = voidp_array([ptr(g) for g in grads])
        flat = []
        for i in range(n):
            row = [ptr(s) for s in slots[i]] if slots else []
            flat += row + [None] * (3 - len(row))
        self.slots = voidp_array(flat)
        self.sizes = i64_array(sizes if sizes is not None else [v.size for v in vars_])
        self.t.vars = self.vars
        self.t.grads = self.grads
        self.t.slots = self.slots
        self.t.sizes = self.sizes

    def set_state(self, state_format: int, absmax=None, row_sizes=None, seed: int = 0):
        """Low-precision state (ABI version 2): `absmax` per tensor a list in
        the rule's slot order (float32 arrays or None), `row_sizes` per tensor."""
        self.call.state_format = state_format
        self.call.rounding_seed = seed
        if absmax is not None:
            self.absmax_arrays = absmax  # keeps them alive
            flat = []
            for row in absmax:
                flat += [ptr(a) for a in row] + [None] * (3 - len(row))
            self.absmax = voidp_array(flat)
            self.t.absmax = self.absmax
        if row_sizes is not None:
            self.row_size_array = i64_array(row_sizes)
            self.t.row_sizes = self.row_size_array

    def run(self, call=True, tensors=True) -> tuple[int, str, int]:
        err = ctypes.create_string_buffer(512)
        skipped = ctypes.c_int(-1)
        rc = self.lib.fusedopt_apply(ctypes.byref(self.call) if call else None,
                                     ctypes.byref(self.t) if tensors else None,
                                     ctypes.byref(skipped), err, len(err))
        return rc, err.value.decode(), skipped.value


class SparseCall(DenseCall):
    """One fusedopt_sparse_apply call: per tensor its rows, row size, indices."""

    def __init__(self, lib, rule, vars_, values, indices, slots, scalars, *, exact=True, step=0,
                 rows=None, row_sizes=None, counts=None, sizes=None):
        super().__init__(lib, rule, vars_, values, slots, scalars, step=step, sizes=sizes)
        self.index_arrays = [np.ascontiguousarray(i, np.int64) for i in indices]
        self.index_ptrs = (c_i64p * max(1, len(indices)))(
            *[i.ctypes.data_as(c_i64p) for i in self.index_arrays])
        self.counts = i64_array(counts if counts is not None else [len(i) for i in indices])
        self.rows = i64_array(rows if rows is not None else [v.shape[0] for v in vars_])
        self.row_sizes = i64_array(row_sizes if row_sizes is not None else
                                   [int(np.prod(v.shape[1:])) for v in vars_])
        self.sp = Sparse(self.index_ptrs, self.counts, self.rows, self.row_sizes, int(exact))

    def run(self, call=True, tensors=True, sparse=True) -> tuple[int, str, int]:
        err = ctypes.create_string_buffer(512)
        skipped = ctypes.c_int(-1)
        rc = self.lib.fusedopt_sparse_apply(ctypes.byref(self.call) if call else None,
                                            ctypes.byref(self.t) if tensors else None,
                                            ctypes.byref(self.sp) if sparse else None,
                                            ctypes.byref(skipped), err, len(err))
        return rc, err.value.decode(), skipped.value


def grad_stats(lib, dtype: int, ptrs, sizes, *, sums=True, nonfinite=True, n=None):
    """fusedopt_grad_stats on raw pointers: (rc, message, sums, nonfinite)."""
    n = len(ptrs) if n is None else n
    out = (ctypes.c_double * max(1, len(ptrs)))()
    nf = ctypes.c_int(-1)
    err = ctypes.create_string_buffer(512)
    rc = lib.fusedopt_grad_stats(dtype, 0, None, 1, n, voidp_array(ptrs), i64_array(sizes),
                                 out if sums else None, ctypes.byref(nf) if nonfinite else None,
                                 err, len(err))
    return rc, err.value.decode(), list(out)[: len(ptrs)], nf.value


def adafactor(lib, dtype, scalars, step, vars_, r, c, v, grads, shapes, *, ranks=None,
              null=(), null_shape0=False):
    """fusedopt_adafactor_apply on raw pointers; `null` names the arguments
    ('vars', 'r', 'c', 'v', 'grads', 'shapes', 'ranks') passed as NULL,
    null_shape0 passes shapes[0] as NULL. Returns (rc, message)."""
    n = len(vars_)
    shape_arrays = [i64_array(s) for s in shapes]
    shape_ptrs = (c_i64p * max(1, n))(*[ctypes.cast(s, c_i64p) for s in shape_arrays])
    if null_shape0:  # shapes[0] NULL with its rank > 0
        shape_ptrs[0] = ctypes.cast(None, c_i64p)
    rank_arr = (ctypes.c_int * max(1, n))(*(ranks if ranks is not None else
                                            [len(s) for s in shapes]))
    lists = {"vars": vars_, "r": r, "c": c, "v": v, "grads": grads}
    arrs = {k: voidp_array(vals) for k, vals in lists.items()}
    sc = None if scalars is None else (ctypes.c_double * 6)(*scalars)
    err = ctypes.create_string_buffer(512)
    rc = lib.fusedopt_adafactor_apply(
        dtype, 0, 1, sc, step, 0, n, *[None if k in null else arrs[k]
                                       for k in ("vars", "r", "c", "v", "grads")],
        None if "shapes" in null else shape_ptrs, None if "ranks" in null else rank_arr,
        err, len(err))
    return rc, err.value.decode()


# --- calls that used to end the process (run in a subprocess by the tests) ----------

def _case_call_init_null(lib) -> tuple[int, str]:
    lib.fusedopt_call_init(None)
    return OK, "fusedopt_call_init(NULL) returned"


def _sgd(lib, sizes, dtype=np.float32):
    var = np.ones(8, dtype)
    grad = np.ones(8, dtype)
    return DenseCall(lib, "sgd", [var], [grad], None, [0.1, 0.0, 0.0], sizes=sizes)


def _case_apply_2_62(lib):
    rc, msg, _ = _sgd(lib, [1 << 62]).run()
    return rc, msg


def _case_apply_2_62_float16(lib):
    rc, msg, _ = _sgd(lib, [1 << 62], np.float16).run()
    return rc, msg


def _case_apply_i64_max(lib):
    rc, msg, _ = _sgd(lib, [(1 << 63) - 1]).run()
    return rc, msg


def _case_grad_stats_2_62(lib):
    g = np.ones(8, np.float32)
    rc, msg, _, _ = grad_stats(lib, 2, [ptr(g)], [1 << 62])
    return rc, msg


def _case_adafactor_2_62(lib):
    a = [np.ones(8, np.float32) for _ in range(5)]
    rc, msg = adafactor(lib, 2, [0.01, -0.8, 1e-30, 1e-3, 1.0, 0.0], 1, [ptr(a[0])], [ptr(a[1])],
                        [ptr(a[2])], [ptr(a[3])], [ptr(a[4])], [[1 << 62, 4]])
    return rc, msg


def _case_sparse_wrapped_rows(lib, rows="17592186044416", row_size="1048576", index="3"):
    # rows x row_size (default 2^44 * 2^20) wraps in int64 to the declared
    # size (0): before the fix, row `index` (elements [3 * 2^20, 4 * 2^20))
    # past the variable was written and the call succeeded.
    rows, row_size = int(rows), int(row_size)
    wrapped = (rows * row_size) % (1 << 64)
    wrapped -= (1 << 64) if wrapped >= 1 << 63 else 0
    var = np.zeros(4, np.float32)
    accum = np.full(4, 0.1, np.float32)
    values = np.ones((1, 4), np.float32)
    call = SparseCall(lib, "adagrad", [var], [values], [[int(index)]], [[accum]],
                      [0.1, 1e-7, 0.0], rows=[rows], row_sizes=[row_size], sizes=[wrapped],
                      exact=False)
    rc, msg, _ = call.run()
    if var.any() or (accum != np.float32(0.1)).any():
        return -1, "the variable or its slot was written"
    return rc, msg


def _case_sparse_out_of_memory(lib):
    # A declared table of one row of 2^40 float32 elements at addresses never
    # read: the compact gradient (2^42 bytes) cannot be allocated, and that
    # allocation comes before any read or write of the buffers.
    base = 1 << 46
    call = SparseCall(lib, "sgd", [np.zeros(1, np.float32)], [np.zeros((1, 1), np.float32)],
                      [[0]], None, [0.1, 0.0, 0.0], rows=[1], row_sizes=[1 << 40],
                      sizes=[1 << 40], exact=False)
    call.vars[0] = base
    call.grads[0] = base + (1 << 43)
    rc, msg, _ = call.run()
    return rc, msg


CASES = {name[len("_case_"):]: fn for name, fn in globals().items() if name.startswith("_case_")}

if __name__ == "__main__":
    import os

    limit = int(os.environ.get("FUSEDOPT_TEST_ADDRESS_SPACE", "0"))
    if limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    code, message = CASES[sys.argv[1]](library(), *sys.argv[2:])
    print(f"rc={code} msg={message}")
