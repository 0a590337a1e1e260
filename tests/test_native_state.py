"""Low-precision optimizer state through the native layer (issue #31; Note
[low-precision state], Note [quantization blocks]): fusedopt._native's
state_dtype / absmax / rounding_seed / stochastic_rounding and the C ABI's
fields for them.

Without TensorFlow: the bits of fusedopt.state's NumPy model (SGD momentum,
as tests/test_state.py), int8 layouts by rank, sparse int8 updates against
dense ones, errors with nothing written, and the C ABI directly (ctypes).
With TensorFlow: every rule with state, int8 and bfloat16, over three steps,
gives the TensorFlow op's bits (the same pipeline on the CPU), dense and
sparse.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import native_abi as A
import native_harness as H

import fusedopt._native as nat
from fusedopt import state

STATE_RULES = {"sgd", "adam", "nadam", "adamax", "rmsprop", "adagrad", "lion"}
# The slots holding non-negative values: the unsigned 8-bit code.
NONNEG = {"v", "vhat", "u", "velocity", "accumulator"}
# Cases of tests/native_harness.py with state, and the formats each takes
# (centered RMSprop: bfloat16 only).
STATE_CASES = ["sgd_momentum", "sgd_nesterov", "adam", "adamw", "amsgrad", "nadam", "adamax",
               "rmsprop", "rmsprop_momentum", "rmsprop_centered", "adagrad", "lion"]
INT8_CASES = [c for c in STATE_CASES if c != "rmsprop_centered"]
# Rank 2 and 3 (rows of the first dimension, the last block short), rank 1
# (one row of several blocks), rank 0, a table of one-element rows.
SHAPES = [(5, 613), (700,), (2, 3, 300), (), (4, 1)]
SGD_HP = dict(lr=0.05, momentum=0.9)


@pytest.fixture
def rng() -> np.random.Generator:
    return H.seeded_rng()


def _need_bf16():
    if not H.HAVE_ML_DTYPES:
        pytest.skip("bfloat16 NumPy arrays need ml_dtypes")


def _bf16(x) -> np.ndarray:
    return np.asarray(x, np.float32).astype(H.np_dtype("bfloat16"))


def _f32(a) -> np.ndarray:
    return np.asarray(a).astype(np.float32)


def _snapshot(arrays) -> list:
    return [np.asarray(a).copy() for a in arrays]


def _assert_unchanged(arrays, before) -> None:
    for k, (a, b) in enumerate(zip(arrays, before)):
        assert np.asarray(a).tobytes() == b.tobytes(), f"array {k} was written"


def _state_arrays(slots64: dict, state_dtype: str) -> tuple[dict, dict | None]:
    """A problem's float64 slots in `state_dtype`: (slots, absmax or None)."""
    if state_dtype == "bfloat16":
        return {k: [_bf16(x) for x in xs] for k, xs in slots64.items()}, None
    codes, absmax = {}, {}
    for k, xs in slots64.items():
        pairs = [state.quantize(np.asarray(x, np.float32), signed=k not in NONNEG) for x in xs]
        codes[k] = [c for c, _ in pairs]
        absmax[k] = [a for _, a in pairs]
    return codes, absmax


def _seed(k: int) -> int:
    """Step k's rounding seed, the step folded in; above 2^63 (its 64 bits
    as an int64 on the TensorFlow side)."""
    return (0xDEADBEEF12345678 * (k + 1) + 0x9E3779B97F4A7C15) % (1 << 64)


def _run_native(p: H.Problem, state_dtype: str, var_dtype: str, stochastic: bool) -> dict:
    variables = [H.to_storage(H.rounded(x, var_dtype), var_dtype) for x in p.init]
    slots, absmax = _state_arrays(p.slots, state_dtype)
    for k in range(p.steps):
        grads = [H.to_storage(H.rounded(g, var_dtype), var_dtype) for g in p.grads[k]]
        skipped = nat.apply(p.case.rule, variables, grads, slots, p.hparams(k), **p.kwargs(k),
                            state_dtype=state_dtype, absmax=absmax, rounding_seed=_seed(k),
                            stochastic_rounding=stochastic)
        assert skipped is False
    return _bits(variables, slots, absmax)


def _bits(variables, slots, absmax) -> dict:
    out = {f"var[{i}]": np.asarray(v).tobytes() for i, v in enumerate(variables)}
    for name, xs in slots.items():
        out.update({f"{name}[{i}]": np.asarray(x).tobytes() for i, x in enumerate(xs)})
    for name, xs in (absmax or {}).items():
        out.update({f"absmax[{name}][{i}]": np.asarray(x).tobytes() for i, x in enumerate(xs)})
    return out


def _tf_and_ops():
    tf = pytest.importorskip("tensorflow", reason="the TF comparison needs TensorFlow")
    from fusedopt import _loader

    if not _loader.library_path().exists():
        pytest.skip(f"no TensorFlow op library at {_loader.library_path()}")
    import fusedopt.ops as fops

    return tf, fops


def _run_tf(tf, fops, p: H.Problem, state_dtype: str, var_dtype: str, stochastic: bool) -> dict:
    slots0, absmax0 = _state_arrays(p.slots, state_dtype)
    with tf.device("/CPU:0"):
        variables = [tf.Variable(H.to_storage(H.rounded(x, var_dtype), var_dtype))
                     for x in p.init]
        slots = {k: [tf.Variable(x) for x in xs] for k, xs in slots0.items()}
        absmax = ({k: [tf.Variable(x) for x in xs] for k, xs in absmax0.items()}
                  if absmax0 is not None else None)
        for k in range(p.steps):
            hp = p.hparams(k)
            lr = [hp.pop("lr")]
            kw = dict(hp, **slots, **p.case.options)
            if p.case.step:
                kw["step"] = k + 1
            grads = [tf.constant(H.to_storage(H.rounded(g, var_dtype), var_dtype))
                     for g in p.grads[k]]
            skipped = getattr(fops, p.case.fops_name)(
                variables, grads, *lr, **kw, state_dtype=state_dtype, absmax=absmax,
                rounding_seed=_seed(k), stochastic_rounding=stochastic)
            assert not bool(skipped)
        return _bits([v.numpy() for v in variables],
                     {k: [x.numpy() for x in xs] for k, xs in slots.items()},
                     None if absmax is None else
                     {k: [x.numpy() for x in xs] for k, xs in absmax.items()})


def _differ(a: dict, b: dict) -> list:
    assert a.keys() == b.keys()
    return sorted(k for k in a if a[k] != b[k])


# --- the module's and the ABI's description of themselves ------------------------------------


def test_rules_table_says_which_rules_take_state():
    table = nat.rules()
    assert {r for r, info in table.items() if info["state"]} == STATE_RULES
    # The options lists are unchanged: state is its own entry.
    assert all("state_format" not in info["options"] for info in table.values())
    assert nat.build_info()["abi_version"] == A.ABI_VERSION == 2


def test_abi_version_and_takes_option():
    lib = A.library()
    lib.fusedopt_rule_takes_option.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    for r in range(lib.fusedopt_rule_count()):
        lib.fusedopt_rule_name.restype = ctypes.c_char_p
        name = lib.fusedopt_rule_name(r).decode()
        for option in ("state_format", "stochastic_rounding", "rounding_seed"):
            for sparse in (0, 1):
                assert lib.fusedopt_rule_takes_option(r, option.encode(), sparse) == (
                    1 if name in STATE_RULES else 0), (name, option, sparse)
    assert lib.fusedopt_rule_takes_option(0, b"state_formatx", 0) == -1


# --- fusedopt.state's NumPy model (no TensorFlow) ----------------------------------------


def _sgd_momentum_f32(var, m, grad, lr, momentum):
    """SGD with momentum in float32, the kernels' operation order (as
    tests/test_state.py)."""
    lr, momentum = np.float32(lr), np.float32(momentum)
    m = m * momentum - grad * lr
    return var + m, m


@pytest.mark.parametrize("shape", [(3, 1000), (1500,), (2, 3, 300), (7, 1), ()],
                         ids=["rank2", "rank1", "rank3", "rows_of_one", "rank0"])
def test_int8_sgd_momentum_is_the_numpy_model_bit_for_bit(rng, shape):
    var0 = rng.standard_normal(shape).astype(np.float32)
    m0 = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    np.asarray(m0).reshape(-1)[::97] = 0
    codes, absmax = state.quantize(m0, signed=True)
    assert absmax.shape == (state.num_blocks(shape),)
    var = var0.copy()
    for step in range(3):
        grad = rng.standard_normal(shape).astype(np.float32)
        m = state.dequantize(codes, absmax, signed=True)
        want_var, want_m = _sgd_momentum_f32(var, m, grad, SGD_HP["lr"], SGD_HP["momentum"])
        want_c, want_a = state.quantize(want_m, signed=True)
        assert nat.apply("sgd", [var], [grad], {"momenta": [codes]}, SGD_HP,
                         state_dtype="int8", absmax={"momenta": [absmax]},
                         rounding_seed=step) is False
        np.testing.assert_array_equal(var, want_var)
        np.testing.assert_array_equal(codes, want_c)
        np.testing.assert_array_equal(absmax, want_a)


def extreme_values(rng: np.random.Generator, shape) -> np.ndarray:
    """float32 values whose magnitudes span 2^-60..2^20 (so codes from the
    subnormal range up to 1.0, and blocks flushing small values to 0), both
    signs, with +-0, float32 subnormals, and infinities and NaN in a few
    blocks. Shared with test_native_module's ISA comparison."""
    x = rng.standard_normal(shape) * 2.0 ** rng.uniform(-60, 20, shape)
    flat = x.reshape(-1)
    flat[::37] = 0.0
    flat[5::41] = -0.0
    flat[3::53] = 1e-40
    if flat.size > 2000:
        flat[700], flat[1500], flat[1900] = np.inf, np.nan, -np.inf
    # Exact ties of the signed code (round half to even): in every third
    # block, an absmax of 2^s and values halfway between two codes, normal
    # ((1 + (2k + 1) / 16) 2^(s - e)) and subnormal ((2f + 1) 2^(s - 18)).
    rows, row_size = state.layout(x.shape)
    x2 = x.reshape(rows, row_size)
    for r in range(rows):
        for b in range(0, row_size, state.BLOCK):
            n = min(state.BLOCK, row_size - b)
            if (r + b // state.BLOCK) % 3 != 1 or n < 2:
                continue
            s = int(rng.integers(-30, 10))
            k = rng.integers(0, 8, n - 1)
            e = rng.integers(1, 14, n - 1)
            ties = (1 + (2 * k + 1) / 16) * 2.0 ** (s - e)
            sub = rng.random(n - 1) < 0.3
            ties[sub] = (2 * k[sub] + 1) * 2.0 ** (s - 18)
            x2[r, b] = 2.0 ** s
            x2[r, b + 1:b + n] = ties * rng.choice([-1.0, 1.0], n - 1)
    return x.astype(np.float32)


@pytest.mark.parametrize("shape", [(9, 700), (70001,), (40, 5)],
                         ids=["rows_of_3_blocks", "rank1_short_tail", "rows_of_5"])
def test_int8_codes_of_extreme_values_are_the_numpy_quantizer(rng, shape):
    """The kernels' encoding and decoding (Note [int8 codes in AVX-512] on
    CPUs with AVX-512) against fusedopt.state's NumPy quantizer, bit for bit,
    signed and unsigned: SGD with momentum 0 stores -lr * g, Adagrad from
    zero stores g * g; a second step that keeps the slot re-encodes what it
    decoded."""
    g = extreme_values(rng, shape)
    var = np.zeros(shape, np.float32)
    zeros = lambda: (np.zeros(shape, np.uint8), np.zeros(state.num_blocks(shape), np.float32))
    m, am = zeros()
    with np.errstate(all="ignore"):
        assert nat.apply("sgd", [var], [g], {"momenta": [m]}, {"lr": 1.0, "momentum": 0.0},
                         state_dtype="int8", absmax={"momenta": [am]}) is False
        # m * momentum - g * lr in float32: 0 - g (+0 for a zero g of either sign).
        want_m, want_am = state.quantize(np.float32(0) - g, signed=True)
        np.testing.assert_array_equal(m, want_m)
        np.testing.assert_array_equal(am.view(np.uint32), want_am.view(np.uint32))
        # momentum 1, lr 0: the slot keeps its decoded values.
        want_m, want_am = state.quantize(state.dequantize(m, am, signed=True), signed=True)
        assert nat.apply("sgd", [var], [np.ones(shape, np.float32)], {"momenta": [m]},
                         {"lr": 0.0, "momentum": 1.0}, state_dtype="int8",
                         absmax={"momenta": [am]}) is False
        np.testing.assert_array_equal(m, want_m)
        np.testing.assert_array_equal(am.view(np.uint32), want_am.view(np.uint32))

        a, aa = zeros()
        var[...] = 0
        hp = {"lr": 0.01, "epsilon": 1e-7}
        assert nat.apply("adagrad", [var], [g], {"accumulator": [a]}, hp, state_dtype="int8",
                         absmax={"accumulator": [aa]}) is False
        want_a, want_aa = state.quantize(g * g, signed=False)
        np.testing.assert_array_equal(a, want_a)
        np.testing.assert_array_equal(aa.view(np.uint32), want_aa.view(np.uint32))
        want_a, want_aa = state.quantize(state.dequantize(a, aa, signed=False), signed=False)
        assert nat.apply("adagrad", [var], [np.zeros(shape, np.float32)], {"accumulator": [a]},
                         hp, state_dtype="int8", absmax={"accumulator": [aa]}) is False
        np.testing.assert_array_equal(a, want_a)
        np.testing.assert_array_equal(aa.view(np.uint32), want_aa.view(np.uint32))


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("name", STATE_CASES)
def test_state_calls_apply_the_gradient_transform(rng, name, state_dtype):
    """Note [gradient transform] with low-precision state: a call with
    grad_scale and clip_value (the loops' transform variant) gives the bits of
    the same call given the transformed gradient (the variant without); and
    the transform changes the result."""
    if state_dtype == "int8" and name not in INT8_CASES:
        pytest.skip("centered RMSprop takes bfloat16 state only")
    if state_dtype == "bfloat16":
        _need_bf16()
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, "float32", [(5, 613), (700,)], rng, 0.01, True, steps=2)

    def run(mode: str) -> dict:
        variables = [H.to_storage(H.rounded(x, "float32"), "float32") for x in p.init]
        slots, absmax = _state_arrays(p.slots, state_dtype)
        for k in range(p.steps):
            grads = [H.to_storage(H.rounded(g, "float32"), "float32") for g in p.grads[k]]
            kw = p.kwargs(k)
            if mode != "transform":
                kw = {o: v for o, v in kw.items() if o not in H.TRANSFORM}
            if mode == "pre-transformed":
                # g * 0.5 is exact, so this is the kernels' clip(g * scale, +-clip_value).
                grads = [p.effective_grad(g).astype(np.float32) for g in grads]
            assert nat.apply(p.case.rule, variables, grads, slots, p.hparams(k), **kw,
                             state_dtype=state_dtype, absmax=absmax, rounding_seed=_seed(k),
                             stochastic_rounding=False) is False
        return _bits(variables, slots, absmax)

    with_transform = run("transform")
    assert _differ(with_transform, run("pre-transformed")) == []
    assert _differ(with_transform, run("raw")) != []


@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
def test_bfloat16_sgd_momentum_is_the_numpy_model_bit_for_bit(rng, weights):
    """Stochastic rounding with the rounding bits of (seed, tensor position,
    element): the second tensor's bits are tensor 1's."""
    _need_bf16()
    shapes = [(7, 333), (5,)]
    seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    vdt = H.np_dtype("bfloat16") if weights == "bfloat16" else np.dtype(np.float32)
    variables = [rng.standard_normal(s).astype(np.float32).astype(vdt) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32).astype(vdt) for s in shapes]
    moms = [_bf16(rng.standard_normal(s) * 0.1) for s in shapes]
    want = []
    for t, (v, g, m) in enumerate(zip(variables, grads, moms)):
        wv, wm = _sgd_momentum_f32(_f32(v), _f32(m), _f32(g), SGD_HP["lr"], SGD_HP["momentum"])
        idx = np.arange(wm.size).reshape(wm.shape)
        wm = state.stochastic_bfloat16(wm, state.rounding_bits(seed, t, idx, slot=0))
        if weights == "bfloat16":
            wv = state.stochastic_bfloat16(wv, state.rounding_bits(seed, t, idx))
        want.append((wv, wm))
    assert nat.apply("sgd", variables, grads, {"momenta": moms}, SGD_HP,
                     state_dtype="bfloat16", rounding_seed=seed,
                     stochastic_rounding=weights == "bfloat16") is False
    for (wv, wm), v, m in zip(want, variables, moms):
        np.testing.assert_array_equal(_f32(m), wm)
        np.testing.assert_array_equal(_f32(v), wv)


def test_rounding_seed_takes_any_int_as_its_64_bits(rng):
    _need_bf16()
    g = rng.standard_normal(4096).astype(np.float32)
    runs = []
    for seed in (-1, (1 << 64) - 1, np.uint64((1 << 64) - 1), 5, 5 + (1 << 64)):
        m = _bf16(np.zeros(4096))
        nat.apply("sgd", [np.zeros(4096, np.float32)], [g], {"momenta": [m]}, SGD_HP,
                  state_dtype="bfloat16", rounding_seed=seed)
        runs.append(_f32(m).tobytes())
    assert runs[0] == runs[1] == runs[2] and runs[3] == runs[4] and runs[0] != runs[3]
    with pytest.raises(ValueError, match="rounding_seed must be an integer"):
        nat.apply("sgd", [np.zeros(3, np.float32)], [np.ones(3, np.float32)],
                  {"momenta": [_bf16(np.zeros(3))]}, SGD_HP, state_dtype="bfloat16",
                  rounding_seed=1.5)


# --- sparse int8: only the rows updated change -------------------------------------------


def _adam_int8_table(rng, shape):
    var = rng.standard_normal(shape).astype(np.float32)
    m, am = state.quantize((rng.standard_normal(shape) * 0.1).astype(np.float32), signed=True)
    v, av = state.quantize((rng.standard_normal(shape) ** 2 * 0.01 + 1e-3).astype(np.float32),
                           signed=False)
    return var, {"m": m, "v": v}, {"m": am, "v": av}


ADAM_HP = dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7)


def _rows_blocks(rows, shape):
    per = state.num_blocks(shape) // shape[0]
    return np.concatenate([np.arange(r * per, (r + 1) * per) for r in rows]).astype(int)


@pytest.mark.parametrize("mode", ["lazy", "exact"])
def test_sparse_int8_is_the_dense_update_of_its_rows(rng, mode):
    """lazy: the touched rows get the dense update of those rows alone (their
    codes and absmax), every other row's bytes stay; exact: the dense update
    of the densified gradient."""
    shape = (6, 300)  # two blocks per row, the second short
    var0, slots0, absmax0 = _adam_int8_table(rng, shape)
    idx = np.array([4, 1, 4])
    values = rng.standard_normal((3, 300)).astype(np.float32)
    var, slots, absmax = var0.copy(), {k: x.copy() for k, x in slots0.items()}, \
        {k: x.copy() for k, x in absmax0.items()}
    nat.sparse_apply("adam", [var], [values], [idx], {k: [x] for k, x in slots.items()},
                     ADAM_HP, mode=mode, step=2, state_dtype="int8",
                     absmax={k: [x] for k, x in absmax.items()})
    dense_g = np.zeros(shape, np.float32)
    for r, g in zip(idx, values):
        dense_g[r] += g
    if mode == "lazy":
        rows = np.array([1, 4])
        untouched = np.array([0, 2, 3, 5])
        wv = var0[rows].copy()
        ws = {k: x[rows].copy() for k, x in slots0.items()}
        wa = {k: x[_rows_blocks(rows, shape)].copy() for k, x in absmax0.items()}
        nat.apply("adam", [wv], [dense_g[rows]], {k: [x] for k, x in ws.items()}, ADAM_HP,
                  step=2, state_dtype="int8", absmax={k: [x] for k, x in wa.items()})
        np.testing.assert_array_equal(var[rows], wv)
        np.testing.assert_array_equal(var[untouched], var0[untouched])
        blocks = _rows_blocks(untouched, shape)
        for k in slots:
            np.testing.assert_array_equal(slots[k][rows], ws[k], err_msg=k)
            np.testing.assert_array_equal(absmax[k][_rows_blocks(rows, shape)], wa[k],
                                          err_msg=k)
            np.testing.assert_array_equal(slots[k][untouched], slots0[k][untouched], err_msg=k)
            np.testing.assert_array_equal(absmax[k][blocks], absmax0[k][blocks], err_msg=k)
        assert not np.array_equal(slots["m"][rows], slots0["m"][rows])
    else:
        wv, ws, wa = var0.copy(), {k: x.copy() for k, x in slots0.items()}, \
            {k: x.copy() for k, x in absmax0.items()}
        nat.apply("adam", [wv], [dense_g], {k: [x] for k, x in ws.items()}, ADAM_HP, step=2,
                  state_dtype="int8", absmax={k: [x] for k, x in wa.items()})
        np.testing.assert_array_equal(var, wv)
        for k in slots:
            np.testing.assert_array_equal(slots[k], ws[k], err_msg=k)
            np.testing.assert_array_equal(absmax[k], wa[k], err_msg=k)
        # Rows without a gradient decay too (their blocks' absmax with them).
        row0 = _rows_blocks([0], shape)
        assert not np.array_equal(absmax["m"][row0], absmax0["m"][row0])


# --- errors: ValueError, nothing written ---------------------------------------------------


def _int8_sgd(rng, shape=(3, 300)):
    var = rng.standard_normal(shape).astype(np.float32)
    grad = rng.standard_normal(shape).astype(np.float32)
    codes, absmax = state.quantize((rng.standard_normal(shape) * 0.1).astype(np.float32),
                                   signed=True)
    return var, grad, codes, absmax


def _bad_calls(rng):
    """(label, callable, the arrays it could write, message pattern)."""
    var, grad, codes, absmax = _int8_sgd(rng)
    arrays = [var, codes, absmax]
    hp = SGD_HP
    m = {"momenta": [codes]}

    def call(**kw):
        return lambda: nat.apply("sgd", [var], [grad], kw.pop("slots", m), hp, **kw)

    short = np.zeros(absmax.size - 1, np.float32)
    rms_v, rms_a = np.ones((3, 300), np.uint8), np.ones(6, np.float32)
    ftrl = [np.zeros((3, 300), np.uint8), np.zeros((3, 300), np.uint8)]
    ftrl_hp = dict(lr=0.1, learning_rate_power=-0.5, l1=0.0, l2=0.0, l2_shrinkage=0.0, beta=0.0)
    cases = [
        ("short absmax", call(state_dtype="int8", absmax={"momenta": [short]}),
         r"absmax\['momenta'\]\[0\] has shape \(5,\) but vars\[0\] of shape \(3, 300\) has 6 "
         r"int8 blocks"),
        ("2-D absmax", call(state_dtype="int8", absmax={"momenta": [absmax.reshape(3, 2)]}),
         r"absmax\['momenta'\]\[0\] has shape \(3, 2\)"),
        ("float64 absmax", call(state_dtype="int8",
                                absmax={"momenta": [absmax.astype(np.float64)]}),
         r"absmax\['momenta'\]\[0\] is float64; absmax arrays are float32"),
        ("float32 slots with int8", call(state_dtype="int8", slots={"momenta": [var * 0]},
                                         absmax={"momenta": [absmax]}),
         r"momenta\[0\] is float32 but state_dtype='int8' stores slots as uint8"),
        ("uint8 slots with bfloat16", call(state_dtype="bfloat16"),
         r"momenta\[0\] is uint8 but state_dtype='bfloat16' stores slots as bfloat16"),
        ("uint8 slots without state", call(), r"momenta\[0\] has dtype uint8"),
        ("missing absmax", call(state_dtype="int8"),
         r"int8 state takes one absmax list per slot list given \(\['momenta'\]\): missing "
         r"\['momenta'\]"),
        ("extra absmax", call(state_dtype="int8", absmax={"momenta": [absmax], "m": [absmax]}),
         r"unexpected \['m'\]"),
        ("absmax list length", call(state_dtype="int8", absmax={"momenta": []}),
         r"absmax\['momenta'\] has 0 entries but there are 1 variables"),
        ("absmax with bfloat16", call(state_dtype="bfloat16", absmax={"momenta": [absmax]}),
         r"absmax is for state_dtype='int8', got state_dtype='bfloat16'"),
        ("unknown state_dtype", call(state_dtype="int4"),
         r"state_dtype must be one of 'bfloat16', 'float32', 'int8', got 'int4'"),
        ("stochastic float32 variables", call(state_dtype="int8", absmax={"momenta": [absmax]},
                                              stochastic_rounding=True),
         r"stochastic_rounding is for bfloat16 variables"),
        ("int8 for ftrl", lambda: nat.apply(
            "ftrl", [var], [grad], {"accumulator": [ftrl[0]], "linear": [ftrl[1]]}, ftrl_hp,
            state_dtype="int8", absmax={"accumulator": [absmax], "linear": [absmax.copy()]}),
         r"state_dtype='int8' is for the rules sgd, adam, nadam, adamax, rmsprop, adagrad and "
         r"lion; ftrl has none"),
        ("rounding_seed for ftrl", lambda: nat.apply(
            "ftrl", [var], [grad], {"accumulator": [var * 0 + 1], "linear": [var * 0]}, ftrl_hp,
            rounding_seed=3),
         r"the option rounding_seed \(3\) is not one of ftrl's"),
        ("int8 for centered rmsprop", lambda: nat.apply(
            "rmsprop", [var], [grad],
            {"velocity": [rms_v], "average_gradient": [codes]},
            dict(lr=0.01, rho=0.9, momentum=0.0, epsilon=1e-7), state_dtype="int8",
            absmax={"velocity": [rms_a], "average_gradient": [absmax]}),
         r"centered: the difference of two quantized moments"),
        ("absmax shared by two slots", lambda: nat.apply(
            "adam", [var], [grad], {"m": [codes], "v": [rms_v]}, ADAM_HP, step=1,
            state_dtype="int8", absmax={"m": [absmax], "v": [absmax]}),
         r"the absmax of slot 'v' of tensor 0 overlaps the absmax of slot 'm' of tensor 0|"
         r"the absmax of slot 'm' of tensor 0 overlaps the absmax of slot 'v' of tensor 0"),
        ("sparse int8 of a rank-1 variable", lambda: nat.sparse_apply(
            "sgd", [var.reshape(-1)], [grad[0, :2]], [np.array([3, 1])],
            {"momenta": [codes.reshape(-1)]}, hp, state_dtype="int8",
            absmax={"momenta": [np.zeros(4, np.float32)]}),
         r"vars\[0\] has rank 1: int8 state's blocks span a rank-1 variable's elements"),
        ("a bad index with int8", lambda: nat.sparse_apply(
            "sgd", [var], [grad[:2]], [np.array([1, 3])], m, hp, state_dtype="int8",
            absmax={"momenta": [absmax]}, mode="lazy"),
         r"index"),
    ]
    return cases, arrays + [rms_v, rms_a] + ftrl


def test_bad_state_input_is_refused_and_nothing_is_written(rng):
    cases, arrays = _bad_calls(rng)
    before = _snapshot(arrays)
    for label, fn, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            fn()
        _assert_unchanged(arrays, before)


def test_bfloat16_state_needs_float32_or_bfloat16_variables(rng):
    _need_bf16()
    for dt in (np.float16, np.float64):
        var = np.ones(5, dt)
        m = _bf16(np.ones(5))
        before = _snapshot([var, m])
        with pytest.raises(ValueError, match="state_format='bfloat16' needs float32 or bfloat16"):
            nat.apply("sgd", [var], [np.ones(5, dt)], {"momenta": [m]}, SGD_HP,
                      state_dtype="bfloat16")
        _assert_unchanged([var, m], before)


# --- the C ABI's fields (ctypes) -----------------------------------------------------------


def _abi_sgd_int8(lib, rng, shape=(4, 300)):
    var, grad, codes, absmax = _int8_sgd(rng, shape)
    call = A.DenseCall(lib, "sgd", [var], [grad], [[codes]], [0.05, 0.9, 0.0])
    call.set_state(2, absmax=[[absmax]], row_sizes=[int(np.prod(shape[1:]))])
    return call, [var, codes, absmax]


def test_c_abi_int8_call_gives_the_modules_bits(rng):
    lib = A.library()
    call, (var, codes, absmax) = _abi_sgd_int8(lib, rng)
    v2, c2, a2 = var.copy(), codes.copy(), absmax.copy()
    rc, msg, skipped = call.run()
    assert (rc, skipped) == (A.OK, 0), msg
    nat.apply("sgd", [v2], [call.arrays[1][0]], {"momenta": [c2]}, SGD_HP, state_dtype="int8",
              absmax={"momenta": [a2]})
    np.testing.assert_array_equal(var, v2)
    np.testing.assert_array_equal(codes, c2)
    np.testing.assert_array_equal(absmax, a2)


def test_c_abi_row_sizes_null_is_one_row(rng):
    """row_sizes NULL: every tensor one row (a rank-1 layout), whose absmax
    has ceil(size / 256) blocks."""
    lib = A.library()
    var, grad, _, _ = _int8_sgd(rng, (4, 300))
    codes, absmax = state.quantize(np.full(1200, 0.01, np.float32), signed=True)
    call = A.DenseCall(lib, "sgd", [var], [grad], [[codes]], [0.05, 0.9, 0.0])
    call.set_state(2, absmax=[[absmax]])
    assert absmax.size == 5
    want_v = var.reshape(-1).copy()
    rc, msg, _ = call.run()
    assert rc == A.OK, msg
    want_c, want_a = state.quantize(np.full(1200, 0.01, np.float32), signed=True)
    nat.apply("sgd", [want_v], [grad.reshape(-1)], {"momenta": [want_c]}, SGD_HP,
              state_dtype="int8", absmax={"momenta": [want_a]})
    np.testing.assert_array_equal(var.reshape(-1), want_v)
    np.testing.assert_array_equal(absmax, want_a)


def test_c_abi_bad_state_fields_write_nothing(rng):
    lib = A.library()

    def check(mutate, rc_want, pattern):
        call, arrays = _abi_sgd_int8(lib, rng)
        before = _snapshot(arrays)
        mutate(call)
        rc, msg, _ = call.run()
        assert rc == rc_want, msg
        assert pattern in msg, msg
        _assert_unchanged(arrays, before)

    check(lambda c: setattr(c.t, "absmax", None), A.INVALID_ARGUMENT, "int8 state needs absmax")
    check(lambda c: c.absmax.__setitem__(0, None), A.INVALID_ARGUMENT,
          "the absmax of slot 'momenta' of tensor 0 is NULL")
    check(lambda c: c.absmax.__setitem__(0, c.absmax[0] + 2), A.INVALID_ARGUMENT,
          "is not aligned to its 4-byte elements")
    check(lambda c: c.absmax.__setitem__(0, c.slots[0]), A.INVALID_ARGUMENT, "overlaps")
    check(lambda c: c.set_state(2, row_sizes=[7]), A.INVALID_ARGUMENT,
          "row_sizes[0] (7) does not divide tensor 0's 1200 elements")
    check(lambda c: c.set_state(3), A.INVALID_ARGUMENT, "unknown state_format code 3")
    check(lambda c: c.set_state(1), A.INVALID_ARGUMENT, "absmax is for state_format int8")
    check(lambda c: setattr(c.call, "dtype", 3), A.INVALID_ARGUMENT,
          "needs float32 or bfloat16 variables, got float64")
    # A CUDA call with state on host arrays: refused, nothing written (no
    # CUDA build or device here: unavailable; on a GPU machine: not device
    # memory). Dense state runs on CUDA (tests/gpu checks its bits).
    call, arrays = _abi_sgd_int8(lib, rng)
    before = _snapshot(arrays)
    call.call.device = 1
    rc, msg, _ = call.run()
    assert (rc == A.UNAVAILABLE and ("CUDA" in msg or "cuda" in msg)) or \
        (rc == A.INVALID_ARGUMENT and "is not CUDA device memory" in msg), (rc, msg)
    _assert_unchanged(arrays, before)


def test_c_abi_sparse_row_sizes_must_agree(rng):
    lib = A.library()
    var, grad, codes, absmax = _int8_sgd(rng, (4, 300))
    call = A.SparseCall(lib, "sgd", [var], [grad[:1]], [np.array([2])], [[codes]],
                        [0.05, 0.9, 0.0], exact=False)
    call.set_state(2, absmax=[[absmax]], row_sizes=[600])
    before = _snapshot([var, codes, absmax])
    rc, msg, _ = call.run()
    assert rc == A.INVALID_ARGUMENT and "differs from the sparse row_size (300)" in msg, msg
    _assert_unchanged([var, codes, absmax], before)
    call.set_state(2, row_sizes=[300])
    rc, msg, _ = call.run()
    assert rc == A.OK, msg
    assert not np.array_equal(codes[2], before[1][2])
    np.testing.assert_array_equal(codes[[0, 1, 3]], before[1][[0, 1, 3]])


# --- the TensorFlow op's bits ----------------------------------------------------------------

TF_PARAMS = ([(c, "int8", "float32", False) for c in INT8_CASES]
             + [(c, "bfloat16", "float32", False) for c in STATE_CASES]
             + [(c, "bfloat16", "bfloat16", True) for c in ("adam", "sgd_momentum", "lion",
                                                             "rmsprop_centered")]
             + [(c, "int8", "bfloat16", True) for c in ("adam", "adagrad")])


@pytest.mark.parametrize("name,state_dtype,var_dtype,stochastic", TF_PARAMS,
                         ids=[f"{c}-{s}-{v}" for c, s, v, _ in TF_PARAMS])
def test_same_bits_as_the_tensorflow_op(rng, name, state_dtype, var_dtype, stochastic):
    tf, fops = _tf_and_ops()
    if "bfloat16" in (state_dtype, var_dtype):
        _need_bf16()
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, "float32", SHAPES, rng, 0.01, False, steps=3)
    want = _run_tf(tf, fops, p, state_dtype, var_dtype, stochastic)
    got = _run_native(p, state_dtype, var_dtype, stochastic)
    assert _differ(got, want) == []
    # The state changed (the comparison is of something).
    slots0, _ = _state_arrays(p.slots, state_dtype)
    assert got["var[0]"] != H.to_storage(H.rounded(p.init[0], var_dtype), var_dtype).tobytes()
    for k, xs in slots0.items():
        assert got[f"{k}[0]"] != np.asarray(xs[0]).tobytes(), k


@pytest.mark.parametrize("mode", ["lazy", "exact"])
@pytest.mark.parametrize("rule", ["adam", "sgd_momentum", "adagrad"])
def test_sparse_int8_same_bits_as_the_tensorflow_op(rng, rule, mode):
    tf, fops = _tf_and_ops()
    case = H.CASE_BY_NAME[rule]
    shape = (7, 2, 150)  # rows of 300: two blocks
    p = H.make_problem(case, "float32", [shape], rng, 0.01, False, steps=3)
    idx = [np.array([5, 0, 5, 2]), np.array([6]), np.array([1, 1, 3])]
    values = [rng.standard_normal((len(i),) + shape[1:]).astype(np.float32) for i in idx]
    slots0, absmax0 = _state_arrays(p.slots, "int8")
    var = H.to_storage(p.init[0], "float32")
    slots = {k: [x.copy() for x in xs] for k, xs in slots0.items()}
    absmax = {k: [x.copy() for x in xs] for k, xs in absmax0.items()}
    with tf.device("/CPU:0"):
        tv = tf.Variable(var)
        ts = {k: [tf.Variable(x) for x in xs] for k, xs in slots0.items()}
        ta = {k: [tf.Variable(x) for x in xs] for k, xs in absmax0.items()}
        for k in range(3):
            hp = p.hparams(k)
            lr = hp.pop("lr")
            kw = dict(hp, **case.options, step=k + 1) if case.step else dict(hp, **case.options)
            g = tf.IndexedSlices(tf.constant(values[k]), tf.constant(idx[k]),
                                 tf.constant(shape, tf.int64))
            fops_fn = getattr(fops, case.fops_name)
            assert not bool(fops_fn([tv], [g], lr, **ts, **kw, sparse_mode=mode,
                                    state_dtype="int8", absmax=ta, rounding_seed=k))
            nat.sparse_apply(case.rule, [var], [values[k]], [idx[k]], slots, p.hparams(k),
                             mode=mode, **p.kwargs(k), state_dtype="int8", absmax=absmax,
                             rounding_seed=k)
        np.testing.assert_array_equal(var, tv.numpy())
        for k in slots:
            np.testing.assert_array_equal(slots[k][0], ts[k][0].numpy(), err_msg=k)
            np.testing.assert_array_equal(absmax[k][0], ta[k][0].numpy(), err_msg=k)
    if mode == "lazy":  # row 4 never had a gradient
        for k in slots:
            np.testing.assert_array_equal(slots[k][0][4], slots0[k][0][4], err_msg=k)
