"""Low-precision optimizer state (issue #31; Note [low-precision state]).

The kernels' quantized arithmetic against fusedopt.state (the same arithmetic
in NumPy) and the float64 references: codes, absmax, stochastic rounding,
errors and all-or-nothing.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

import fusedopt.ops as fops
from fusedopt import reference, state

NONNEG = {"v", "vhat", "u", "velocity", "accumulator"}

# (case id, rule, slots given, the ops' hyperparameters beyond the defaults, step)
CASES = [
    ("sgd_momentum", "sgd", ["momenta"], dict(momentum=0.9), False),
    ("sgd_nesterov", "sgd", ["momenta"], dict(momentum=0.9, nesterov=True), False),
    ("adam", "adam", ["m", "v"], dict(weight_decay=0.01), True),
    ("adam_amsgrad", "adam", ["m", "v", "vhat"], {}, True),
    ("nadam", "nadam", ["m", "v"], {}, True),
    ("adamax", "adamax", ["m", "u"], {}, True),
    ("rmsprop", "rmsprop", ["velocity"], {}, False),
    ("rmsprop_momentum", "rmsprop", ["velocity", "momenta"], dict(momentum=0.5), False),
    ("adagrad", "adagrad", ["accumulator"], {}, False),
    ("lion", "lion", ["m"], {}, False),
]
LR = {"sgd": 0.05, "lion": 1e-3}


def _fresh(rng, shape, names):
    var = rng.standard_normal(shape).astype(np.float32)
    grad = rng.standard_normal(shape).astype(np.float32)
    slots = {}
    for k in names:
        x = rng.standard_normal(shape).astype(np.float32)
        # (RMSprop's centered denominator v - avg^2 stays positive.)
        slots[k] = ((x * x + 0.1) * 1e-2 if k in NONNEG
                    else x * (1e-3 if k == "average_gradient" else 0.1))
        # A few exact zeros and tiny values: the codes' bottom end.
        slots[k].reshape(-1)[::97] = 0
        slots[k].reshape(-1)[5::101] *= 1e-6
    return var, grad, slots


def _call(rule, hp, variables, grads, slots, *, step, **state_kw):
    fn = getattr(fops, f"apply_{rule}")
    kwargs = dict(hp)
    if step is not None:
        kwargs["step"] = step
    if "u_product" in fn.__kwdefaults__ or "u_product" in fn.__code__.co_varnames:
        kwargs["u_product"] = reference.nadam_u_product(step)
    return fn(variables, grads, LR.get(rule, 1e-3), **slots, **kwargs, **state_kw)


def _reference(rule, hp, var, grad, slots, step):
    scalars = {k: v for k, v in hp.items() if k != "nesterov"}
    extra = {"nesterov": hp["nesterov"]} if "nesterov" in hp else {}
    new_var, new_slots = reference.apply_rule(
        rule, var.astype(np.float64), grad.astype(np.float64),
        {k: v.astype(np.float64) for k, v in slots.items()}, step=step,
        lr=LR.get(rule, 1e-3), **scalars, **extra)
    return new_var, {k: new_slots[k] for k in slots}


def _assert_codes_close(got, want, absmax, *, signed, what):
    """Codes equal, except where the float64 reference lies so near a rounding
    boundary that float32 arithmetic picks the neighbouring code."""
    got, want = np.asarray(got).reshape(-1), np.asarray(want).reshape(-1)
    diff = np.flatnonzero(got != want)
    assert diff.size <= max(2, got.size // 500), f"{what}: {diff.size} of {got.size} codes differ"
    g = state.decode(got[diff], signed=signed).astype(np.float64)
    w = state.decode(want[diff], signed=signed).astype(np.float64)
    # Neighbouring codes: 1/8 of the larger magnitude apart at most (or the
    # bottom end's spacing).
    bottom = 2.0 ** (-17 if signed else -33)
    assert np.all(np.abs(g - w) <= np.maximum(np.abs(g), np.abs(w)) / 8 + bottom), what


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_int8_state_follows_the_float64_reference_over_steps(case):
    _, rule, names, hp, stepped = case
    rng = np.random.default_rng()
    shape = (5, 613)  # rows of three blocks, the last one short
    var0, _, slots0 = _fresh(rng, shape, names)
    var = tf.Variable(var0)
    codes, absmax = {}, {}
    for k in names:
        c, a = state.quantize(slots0[k], signed=k not in NONNEG)
        codes[k], absmax[k] = tf.Variable(c), tf.Variable(a)
    for t in range(1, 4):
        grad = rng.standard_normal(shape).astype(np.float32)
        before = {k: state.dequantize(codes[k].numpy(), absmax[k].numpy(),
                                      signed=k not in NONNEG) for k in names}
        want_var, want_slots = _reference(rule, hp, var.numpy(), grad, before,
                                          t if stepped else None)
        skipped = _call(rule, hp, [var], [tf.constant(grad)],
                        {k: [codes[k]] for k in names}, step=t if stepped else None,
                        state_dtype="int8", absmax={k: [absmax[k]] for k in names},
                        rounding_seed=t)
        assert not bool(skipped)
        np.testing.assert_allclose(var.numpy(), want_var, rtol=3e-6,
                                   atol=3e-7 * np.abs(want_var).max())
        for k in names:
            signed = k not in NONNEG
            want_c, want_a = state.quantize(want_slots[k].astype(np.float32), signed=signed)
            np.testing.assert_allclose(absmax[k].numpy(), want_a, rtol=3e-6, err_msg=k)
            _assert_codes_close(codes[k].numpy(), want_c, want_a, signed=signed,
                                what=f"{rule} {k} step {t}")


def _sgd_momentum_f32(var, m, grad, lr, momentum):
    """SGD with momentum in float32, the kernels' operation order."""
    lr, momentum = np.float32(lr), np.float32(momentum)
    m = m * momentum - grad * lr
    return var + m, m


def test_int8_sgd_momentum_is_bit_exact():
    rng = np.random.default_rng()
    shape = (3, 1000)
    var0, grad, slots = _fresh(rng, shape, ["momenta"])
    c0, a0 = state.quantize(slots["momenta"], signed=True)
    var, codes, absmax = tf.Variable(var0), tf.Variable(c0), tf.Variable(a0)
    fops.apply_sgd([var], [tf.constant(grad)], 0.05, momenta=[codes], momentum=0.9,
                   state_dtype="int8", absmax={"momenta": [absmax]})
    m = state.dequantize(c0, a0, signed=True)
    want_var, want_m = _sgd_momentum_f32(var0, m, grad, 0.05, 0.9)
    want_c, want_a = state.quantize(want_m, signed=True)
    np.testing.assert_array_equal(var.numpy(), want_var)
    np.testing.assert_array_equal(codes.numpy(), want_c)
    np.testing.assert_array_equal(absmax.numpy(), want_a)


@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
def test_bfloat16_state_is_bit_exact_stochastic_rounding(weights):
    rng = np.random.default_rng()
    shape = (7, 333)
    var0, grad, slots = _fresh(rng, shape, ["momenta"])
    vdt = tf.bfloat16 if weights == "bfloat16" else tf.float32
    var = tf.Variable(tf.cast(var0, vdt))
    m0 = tf.cast(slots["momenta"], tf.bfloat16)
    m = tf.Variable(m0)
    seed = int(rng.integers(0, 2**63))
    g = tf.cast(grad, vdt)
    fops.apply_sgd([var, tf.Variable(tf.zeros([5], vdt))], [g, tf.zeros([5], vdt)], 0.05,
                   momenta=[m, tf.Variable(tf.zeros([5], tf.bfloat16))], momentum=0.9,
                   state_dtype="bfloat16", rounding_seed=seed,
                   stochastic_rounding=weights == "bfloat16")
    v32 = tf.cast(tf.cast(var0, vdt), tf.float32).numpy()
    g32 = tf.cast(g, tf.float32).numpy()
    want_var, want_m = _sgd_momentum_f32(v32, tf.cast(m0, tf.float32).numpy(), g32, 0.05, 0.9)
    idx = np.arange(want_m.size).reshape(shape)
    want_m = state.stochastic_bfloat16(want_m, state.rounding_bits(seed, 0, idx, slot=0))
    np.testing.assert_array_equal(tf.cast(m, tf.float32).numpy(), want_m)
    if weights == "bfloat16":
        want_var = state.stochastic_bfloat16(want_var, state.rounding_bits(seed, 0, idx))
        np.testing.assert_array_equal(tf.cast(var, tf.float32).numpy(), want_var)
    else:
        np.testing.assert_array_equal(var.numpy(), want_var)


def test_stochastic_rounding_is_unbiased_and_reproducible():
    n = 1 << 17
    ulp = 2.0 ** -7  # bfloat16's spacing in [1, 2)
    frac = 0.3

    def run(seed):
        var = tf.Variable(tf.ones([n], tf.bfloat16))
        # 1 + frac * ulp exactly in float32: an update of -frac * ulp from 1.
        fops.apply_sgd([var], [tf.ones([n], tf.bfloat16)], -frac * ulp,
                       stochastic_rounding=True, rounding_seed=seed)
        return tf.cast(var, tf.float64).numpy()

    a, b, c = run(11), run(11), run(12)
    np.testing.assert_array_equal(a, b)  # the same seed, the same bits
    assert np.any(a != c)
    assert set(np.unique(a)) == {1.0, 1.0 + ulp}
    p = np.mean(a == 1.0 + ulp)
    sigma = np.sqrt(frac * (1 - frac) / n)
    assert abs(p - frac) < 5 * sigma, (p, frac, sigma)
    # Round to nearest (no stochastic rounding) keeps 1.0 everywhere.
    var = tf.Variable(tf.ones([n], tf.bfloat16))
    fops.apply_sgd([var], [tf.ones([n], tf.bfloat16)], -frac * ulp)
    assert np.all(tf.cast(var, tf.float64).numpy() == 1.0)


def test_codes_round_trip_and_round_to_nearest():
    for signed in (True, False):
        codes = np.arange(256, dtype=np.uint8)
        values = state.decode(codes, signed=signed)
        finite = np.isfinite(values) & (np.abs(values) <= 1)
        # Every code a value in [-1, 1] can have decodes and re-encodes to itself
        # (but -0, which is +0's value).
        back = state.encode(values[finite], signed=signed)
        same = back == codes[finite]
        assert np.all(same | (values[finite] == 0))
        mags = np.unique(np.abs(values[finite]))
        assert mags[0] == 0 and mags[-1] == 1.0
        # Random values land on a nearest code.
        rng = np.random.default_rng()
        y = rng.uniform(-1 if signed else 0, 1, 100_000).astype(np.float32)
        y *= np.float32(10.0) ** rng.uniform(-8, 0, y.size).astype(np.float32)
        q = state.decode(state.encode(y, signed=signed), signed=signed)
        grid = np.sort(np.unique(values[finite]))
        pos = np.clip(np.searchsorted(grid, y), 1, grid.size - 1)
        nearest = np.minimum(np.abs(grid[pos] - y), np.abs(grid[pos - 1] - y))
        np.testing.assert_array_equal(np.abs(q - y), nearest)
        assert state.decode(state.encode(np.float32(np.nan), signed=signed),
                            signed=signed) != state.decode(np.uint8(0), signed=signed)


def test_quantization_error_bounds():
    rng = np.random.default_rng()
    x = (rng.standard_normal((64, 1024)) * 1e-3).astype(np.float32)
    c, a = state.quantize(x, signed=True)
    back = state.dequantize(c, a, signed=True)
    # Per element at most half a code step: 1/16 of the value above the
    # bottom end, 2^-18 of the block's absmax below it.
    blockmax = np.repeat(a, 256).reshape(x.shape)
    bound = np.maximum(np.abs(x) / 16, blockmax * 2.0 ** -18) * (1 + 1e-6)
    assert np.all(np.abs(back - x) <= bound)
    # Each block's largest magnitude is exact.
    flat, bf = x.reshape(-1, 256), back.reshape(-1, 256)
    rows = np.arange(flat.shape[0])
    i = np.argmax(np.abs(flat), axis=1)
    np.testing.assert_array_equal(bf[rows, i], flat[rows, i])
    v = x * x
    cv, av = state.quantize(v, signed=False)
    backv = state.dequantize(cv, av, signed=False)
    assert np.all(np.abs(backv - v) <= np.maximum(v / 16, np.repeat(av, 256).reshape(
        v.shape) * 2.0 ** -34) * (1 + 1e-6))


def _int8_adam_vars(shape, rng):
    var = tf.Variable(rng.standard_normal(shape).astype(np.float32))
    c, a = state.quantize((rng.standard_normal(shape) * 0.1).astype(np.float32), signed=True)
    cv, av = state.quantize((rng.random(shape) * 1e-2).astype(np.float32), signed=False)
    return var, tf.Variable(c), tf.Variable(cv), tf.Variable(a), tf.Variable(av)


def _snapshot(*variables):
    return [v.numpy().copy() for v in variables]


def test_bad_state_inputs_change_nothing():
    rng = np.random.default_rng()
    shape = (4, 300)
    var, m, v, am, av = _int8_adam_vars(shape, rng)
    g = tf.constant(rng.standard_normal(shape).astype(np.float32))
    before = _snapshot(var, m, v, am, av)
    short = tf.Variable(tf.zeros([3]))
    cases = [
        (dict(absmax={"m": [am], "v": [short]}), "the int8 blocks of"),
        (dict(absmax={"m": [am]}), "absmax list per slot"),
        (dict(), "absmax list per slot"),
    ]
    for kw, msg in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=msg):
            fops.apply_adam([var], [g], 1e-3, m=[m], v=[v], step=1, state_dtype="int8", **kw)
    # Float32 slots given for int8 state: a dtype error.
    with pytest.raises(tf.errors.InvalidArgumentError):
        fops.apply_adam([var], [g], 1e-3, m=[tf.Variable(tf.zeros(shape))], v=[v], step=1,
                        state_dtype="int8", absmax={"m": [am], "v": [av]})
    # A non-finite gradient with skip_nonfinite: skipped, nothing written.
    bad = g.numpy().copy()
    bad[2, 7] = np.nan
    skipped = fops.apply_adam([var], [tf.constant(bad)], 1e-3, m=[m], v=[v], step=1,
                              state_dtype="int8", absmax={"m": [am], "v": [av]},
                              skip_nonfinite=True)
    assert bool(skipped)
    for b, a in zip(before, _snapshot(var, m, v, am, av)):
        np.testing.assert_array_equal(a, b)


def test_errors_name_what_cannot_have_low_precision_state():
    shape = (8, 8)
    var = tf.Variable(tf.zeros(shape))
    g = tf.zeros(shape)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not available for lamb"):
        fops.apply_lamb([var], [g], 1e-3, m=[var], v=[var], step=1, state_dtype="int8")
    with pytest.raises(tf.errors.InvalidArgumentError, match="state_dtype must be one of"):
        fops.apply_adam([var], [g], 1e-3, m=[var], v=[var], step=1, state_dtype="int4")
    v16 = tf.Variable(tf.zeros(shape, tf.float16))
    with pytest.raises(tf.errors.InvalidArgumentError, match="float32 or bfloat16"):
        fops.apply_sgd([v16], [tf.zeros(shape, tf.float16)], 0.1,
                       momenta=[tf.Variable(tf.zeros(shape, tf.bfloat16))], momentum=0.9,
                       state_dtype="bfloat16")
    with pytest.raises(tf.errors.InvalidArgumentError, match="stochastic_rounding is for bfloat16"):
        fops.apply_sgd([var], [g], 0.1, stochastic_rounding=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="centered"):
        fops.apply_rmsprop([var], [g], 1e-3, velocity=[tf.Variable(tf.zeros(shape, tf.uint8))],
                           average_gradient=[tf.Variable(tf.zeros(shape, tf.uint8))],
                           state_dtype="int8", absmax={
                               "velocity": [tf.Variable(tf.zeros([8]))],
                               "average_gradient": [tf.Variable(tf.zeros([8]))]})
    with pytest.raises(tf.errors.InvalidArgumentError, match="Keras' form"):
        fops.apply_adamax([var], [g], 1e-3, m=[tf.Variable(tf.zeros(shape, tf.bfloat16))],
                          u=[tf.Variable(tf.zeros(shape, tf.bfloat16))], step=1,
                          tf_training_op_form=True, state_dtype="bfloat16")


@pytest.mark.parametrize("mode", ["lazy", "exact"])
def test_int8_sparse_updates_touch_only_their_blocks(mode):
    rng = np.random.default_rng()
    shape = (40, 300)  # two blocks per row
    var, m, v, am, av = _int8_adam_vars(shape, rng)
    dense_twin = [tf.Variable(x.numpy()) for x in (var, m, v, am, av)]
    before = _snapshot(var, m, v, am, av)
    rows = np.array([3, 17, 3, 39])
    values = rng.standard_normal((rows.size, 300)).astype(np.float32)
    sparse = tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant(shape))
    fops.apply_adam([var], [sparse], 1e-3, m=[m], v=[v], step=2, state_dtype="int8",
                    absmax={"m": [am], "v": [av]}, sparse_mode=mode)
    dense = np.zeros(shape, np.float32)
    np.add.at(dense, rows, values)
    tv, tm, tvv, tam, tav = dense_twin
    fops.apply_adam([tv], [tf.constant(dense)], 1e-3, m=[tm], v=[tvv], step=2,
                    state_dtype="int8", absmax={"m": [tam], "v": [tav]})
    after = _snapshot(var, m, v, am, av)
    touched = np.zeros(shape[0], bool)
    touched[rows] = True
    if mode == "exact":
        for a, t in zip(after, _snapshot(*dense_twin)):
            np.testing.assert_array_equal(a, t)
        return
    for a, b, t, blocks in zip(after, before, _snapshot(*dense_twin),
                               [False, False, False, True, True]):
        sel = np.repeat(touched, 2) if blocks else touched
        np.testing.assert_array_equal(a[~sel], b[~sel])
        np.testing.assert_array_equal(a[sel], t[sel])


def test_int8_rank1_sparse_is_refused():
    var = tf.Variable(tf.zeros([5000]))
    m = tf.Variable(tf.zeros([5000], tf.uint8))
    am = tf.Variable(tf.zeros([state.num_blocks((5000,))]))
    g = tf.IndexedSlices(tf.ones([2]), tf.constant([1, 2]), tf.constant([5000]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank 1"):
        fops.apply_sgd([var], [g], 0.1, momenta=[m], momentum=0.9, state_dtype="int8",
                       absmax={"momenta": [am]}, sparse_mode="lazy")


def test_state_bytes_per_parameter():
    # Adam's two slots on a 16M-element variable: 8 bytes of float32 state.
    assert state.bytes_per_element("float32", 2) == 8
    assert state.bytes_per_element("bfloat16", 2) == 4
    assert state.bytes_per_element("int8", 2) == pytest.approx(2 + 8 / 256)


# ---- fusedopt.keras: state_dtype ------------------------------------------------

import keras  # noqa: E402

import fusedopt.keras as fk  # noqa: E402

KERAS_CLASSES = [
    ("Adam", dict(learning_rate=1e-3)),
    ("AdamW", dict(learning_rate=1e-3, weight_decay=0.01)),
    ("Nadam", dict(learning_rate=1e-3)),
    ("Adamax", dict(learning_rate=1e-3)),
    ("Lion", dict(learning_rate=1e-4)),
    ("SGD", dict(learning_rate=0.05, momentum=0.9)),
    ("Adagrad", dict(learning_rate=0.05)),
    ("RMSprop", dict(learning_rate=1e-3, momentum=0.5)),
]


def _digits_like(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 64)).astype("float32")
    w = rng.standard_normal((64, 4)).astype("float32")
    y = np.argmax(x @ w, axis=1)
    return x, y


def _fit(opt, epochs=4):
    keras.utils.set_random_seed(1)
    x, y = _digits_like()
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(96, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, shuffle=False)
    return model, history.history["loss"][-1]


@pytest.mark.parametrize("name,kwargs", KERAS_CLASSES, ids=[c[0] for c in KERAS_CLASSES])
def test_keras_state_dtype_slots_and_training(name, kwargs):
    cls = getattr(fk, name)
    _, base = _fit(cls(**kwargs))
    for state_dtype, slot_dtype in (("bfloat16", "bfloat16"), ("int8", "uint8")):
        opt = cls(**kwargs, state_dtype=state_dtype)
        model, loss = _fit(opt)
        # The 64x96 kernel (6144 elements) has low-precision slots; the biases
        # (under 4096 elements) keep float32 ones under int8.
        kernel = model.layers[0].kernel
        slots = [v for v in opt.variables if kernel.path.replace("/", "_") in v.path]
        assert slots and all(s.dtype == slot_dtype for s in slots
                             if not s.path.endswith("_absmax")), [s.dtype for s in slots]
        bias_slots = [v for v in opt.variables
                      if model.layers[1].bias.path.replace("/", "_") in v.path]
        want_bias = "float32" if state_dtype == "int8" else "bfloat16"
        assert all(s.dtype == want_bias for s in bias_slots)
        if state_dtype == "int8":
            assert any(v.path.endswith("_absmax") for v in opt.variables)
        # Training quality (the bench's state suite measures it properly):
        # bfloat16 within 1%; int8 within 3% (Adagrad's accumulators, which
        # only grow, lose increments below half a code step).
        tol = 0.01 if state_dtype == "bfloat16" else 0.03
        assert abs(loss - base) <= tol * abs(base) + 1e-3, (state_dtype, loss, base)
        config = opt.get_config()
        assert config["state_dtype"] == state_dtype
        assert cls.from_config(config).state_dtype == state_dtype


def test_keras_int8_state_round_trips_through_checkpoints(tmp_path):
    opt = fk.Adagrad(0.05, state_dtype="int8")
    model, _ = _fit(opt, epochs=1)
    ckpt = tf.train.Checkpoint(optimizer=opt, model=model)
    path = ckpt.save(str(tmp_path / "ckpt"))
    saved = [v.numpy().copy() for v in opt.variables]
    x, y = _digits_like(1)
    model.fit(x, y, epochs=1, verbose=0)
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(saved, opt.variables))
    ckpt.restore(path)
    for a, v in zip(saved, opt.variables):
        np.testing.assert_array_equal(a, v.numpy())
    # .keras: the optimizer's variables (codes and absmax) come back.
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.state_dtype == "int8"
    assert len(loaded.optimizer.variables) == len(opt.variables)
    for a, v in zip(loaded.optimizer.variables, opt.variables):
        assert a.dtype == v.dtype
        np.testing.assert_array_equal(a.numpy(), v.numpy())


def test_keras_adagrad_int8_accumulators_start_at_the_initial_value():
    opt = fk.Adagrad(0.05, initial_accumulator_value=0.1, state_dtype="int8")
    var = keras.Variable(np.zeros((80, 80), np.float32))
    opt.build([var])
    (codes,) = [v for v in opt.variables if v.dtype == "uint8"]
    (absmax,) = [v for v in opt.variables if v.path.endswith("_absmax")]
    values = state.dequantize(codes.numpy(), absmax.numpy(), signed=False)
    np.testing.assert_array_equal(values, np.full((80, 80), 0.1, np.float32))


def test_keras_state_dtype_errors():
    with pytest.raises(ValueError, match="Lamb has no low-precision state"):
        fk.Lamb(state_dtype="int8")
    with pytest.raises(ValueError, match="state_dtype must be one of"):
        fk.Adam(state_dtype="float16")
    opt = fk.Adam(state_dtype="int8")
    var = keras.Variable(np.zeros((80, 80), np.float32))
    opt.build([var])

    @tf.function(jit_compile=True)
    def step(g):
        opt.apply_gradients([(g, var)])

    with pytest.raises(Exception, match="no XLA lowering yet|runs only the fused kernels"):
        step(tf.ones((80, 80)))
    with pytest.raises(ValueError, match="centered"):
        fk.RMSprop(centered=True, state_dtype="int8")


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_from_keras_converts_float32_state(state_dtype):
    builtin = keras.optimizers.Adam(1e-3)
    model, _ = _fit(builtin, epochs=1)
    fused = fk.from_keras(builtin, state_dtype=state_dtype)
    assert isinstance(fused, fk.Adam) and fused.state_dtype == state_dtype
    assert int(fused.iterations.numpy()) == int(builtin.iterations.numpy())
    kernel = model.layers[0].kernel
    name = kernel.path.replace("/", "_")
    for slot, signed in (("momentum", True), ("velocity", False)):
        src = [v for v in builtin.variables if v.path.endswith(f"{name}_{slot}")][0].numpy()
        dst = [v for v in fused.variables if v.path.endswith(f"{name}_{slot}")][0]
        if state_dtype == "bfloat16":
            np.testing.assert_array_equal(
                tf.cast(dst, tf.float32).numpy(),
                tf.cast(tf.cast(src, tf.bfloat16), tf.float32).numpy())
        else:
            absmax = [v for v in fused.variables
                      if v.path.endswith(f"{name}_{slot}_absmax")][0].numpy()
            codes, want_absmax = state.quantize(src, signed=signed)
            np.testing.assert_array_equal(dst.numpy(), codes)
            np.testing.assert_array_equal(absmax, want_absmax)
    # Training goes on with the converted state.
    x, y = _digits_like(2)
    model.compile(fused, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, verbose=0)


def test_a_float32_state_save_loads_into_int8_state():
    """Keras' .keras loading hands each optimizer its saved variables
    (load_own_variables); a float32-state save loads into int8 state,
    quantized."""
    model, _ = _fit(fk.Adam(1e-3), epochs=1)
    f32 = model.optimizer
    store = {str(i): v.numpy() for i, v in enumerate(f32.variables)}
    opt = fk.Adam(1e-3, state_dtype="int8")
    opt.build(model.trainable_variables)
    opt.load_own_variables(store)
    assert int(opt.iterations.numpy()) == int(f32.iterations.numpy())
    kernel = model.layers[0].kernel.path.replace("/", "_")
    for slot, signed in (("momentum", True), ("velocity", False)):
        (src,) = [v for v in f32.variables if v.path.endswith(f"{kernel}_{slot}")]
        (codes,) = [v for v in opt.variables if v.path.endswith(f"{kernel}_{slot}")]
        (absmax,) = [v for v in opt.variables if v.path.endswith(f"{kernel}_{slot}_absmax")]
        want_c, want_a = state.quantize(src.numpy(), signed=signed)
        np.testing.assert_array_equal(codes.numpy(), want_c)
        np.testing.assert_array_equal(absmax.numpy(), want_a)
    # An int8-state save loads as saved.
    again = fk.Adam(1e-3, state_dtype="int8")
    again.build(model.trainable_variables)
    again.load_own_variables({str(i): v.numpy() for i, v in enumerate(opt.variables)})
    for a, b in zip(again.variables, opt.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("option", [dict(use_ema=True), dict(gradient_accumulation_steps=2)])
def test_keras_own_per_variable_state_keeps_the_variables_dtype(option):
    """use_ema's averages and the gradient accumulators are Keras' own
    arithmetic, not the rule's slots: float32 under state_dtype="int8" too."""
    opt = fk.Adam(1e-2, state_dtype="int8", **option)
    rng = np.random.default_rng()
    var = keras.Variable(rng.standard_normal((80, 80)).astype(np.float32))
    opt.build([var])
    name = "average" if "use_ema" in option else "gradient_accumulator"
    (extra,) = [v for v in opt.variables if v.path.endswith(name)]
    assert extra.dtype == "float32"
    assert any(v.dtype == "uint8" for v in opt.variables)  # the slots are int8
    g = rng.standard_normal((80, 80)).astype(np.float32)
    for _ in range(2):
        opt.apply_gradients([(tf.constant(g), var)])
    if "use_ema" in option:
        # Keras' EMA of the weights: near them, not codes.
        np.testing.assert_allclose(extra.numpy(), var.numpy(), atol=0.1)
    else:
        np.testing.assert_array_equal(extra.numpy(), 0)  # reset after the second step
        assert int(opt.iterations.numpy()) == 1


# ---- tf.train.Checkpoint across state formats (Note [state checkpoints]) -------


def _slot_values(opt, model):
    """{(layer, slot name): float32 values} of an optimizer's slots, whatever
    their format (int8 dequantized with its absmax)."""
    out = {}
    for i, layer in enumerate(model.layers):
        for w in layer.trainable_weights:
            prefix = w.path.replace("/", "_")
            for v in opt.variables:
                if not v.path.startswith(opt.name + "/" + prefix + "_") or \
                        v.path.endswith("_absmax"):
                    continue
                slot = v.path[len(opt.name + "/" + prefix + "_"):]
                key = (i, w.name, slot)
                if v.dtype == "uint8":
                    (a,) = [x for x in opt.variables if x.path == v.path + "_absmax"]
                    out[key] = (v.numpy(), a.numpy())
                else:
                    out[key] = tf.cast(v, tf.float32).numpy()
    return out


def _model_like(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(96, activation="relu"),
                             keras.layers.Dense(4)])


@pytest.mark.parametrize("deferred", [False, True], ids=["built", "deferred"])
@pytest.mark.parametrize("source", ["keras", "fused"])
@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_a_float32_checkpoint_restores_into_low_precision_state(tmp_path, state_dtype, source,
                                                                deferred):
    """tf.train.Checkpoint: float32 state (the built-in's or a fused float32
    optimizer's) restores into bfloat16 or int8 state converted as from_keras
    converts it (rounded; quantized with its absmax), before or after the
    optimizer is built, and assert_consumed holds."""
    first = (keras.optimizers.Adam if source == "keras" else fk.Adam)(1e-3)
    model, _ = _fit(first, epochs=1)
    path = tf.train.Checkpoint(optimizer=first, model=model).write(str(tmp_path / "ck"))
    want = fk.from_keras(first, state_dtype=state_dtype) if source == "keras" else None
    restored = _model_like(7)
    opt = fk.Adam(1e-3, state_dtype=state_dtype)
    if not deferred:
        opt.build(restored.trainable_variables)
    status = tf.train.Checkpoint(optimizer=opt, model=restored).read(path)
    if deferred:
        opt.build(restored.trainable_variables)
    status.assert_consumed()
    assert int(opt.iterations.numpy()) == int(first.iterations.numpy()) > 0
    for w, r in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(w.numpy(), r.numpy())
    source_slots = _slot_values(first, model)
    got = _slot_values(opt, restored)
    assert got.keys() == source_slots.keys() and len(got) == 8
    quantized = 0
    for key, f32 in source_slots.items():
        if isinstance(got[key], tuple):  # int8: the codes and absmax of quantize()
            quantized += 1
            codes, absmax = state.quantize(f32, signed=key[2] == "momentum")
            np.testing.assert_array_equal(got[key][0], codes, err_msg=str(key))
            np.testing.assert_array_equal(got[key][1], absmax, err_msg=str(key))
        elif state_dtype == "bfloat16":  # rounded to nearest
            np.testing.assert_array_equal(
                got[key], tf.cast(tf.cast(f32, tf.bfloat16), tf.float32).numpy())
        else:  # (variables under MIN_QUANTIZED_ELEMENTS keep float32 state)
            np.testing.assert_array_equal(got[key], f32)
    assert quantized == (2 if state_dtype == "int8" else 0)
    if want is not None:
        # The same state as from_keras' conversion.
        converted = _slot_values(want, model)
        assert converted.keys() == got.keys()
        for key, value in converted.items():
            pairs = zip(value, got[key]) if isinstance(value, tuple) else [(value, got[key])]
            for a, b in pairs:
                np.testing.assert_array_equal(a, b, err_msg=str(key))
    # Training goes on from the restored state.
    x, y = _digits_like(2)
    restored.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    restored.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_low_precision_checkpoints_round_trip_bit_exact(tmp_path, state_dtype):
    opt = fk.Adam(1e-3, state_dtype=state_dtype)
    model, _ = _fit(opt, epochs=1)
    path = tf.train.Checkpoint(optimizer=opt, model=model).write(str(tmp_path / "ck"))
    keys = [k for k, _ in tf.train.list_variables(path) if k.startswith("optimizer/_variables")]
    suffix = "_int8/.ATTRIBUTES/codes" if state_dtype == "int8" else "_bfloat16/.ATTRIBUTES"
    assert any(suffix in k for k in keys), keys
    saved = [v.numpy().copy() for v in opt.variables]
    x, y = _digits_like(1)
    model.fit(x, y, epochs=1, verbose=0)
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(saved, opt.variables))
    # Into the same optimizer, and into a new one restored before its build.
    tf.train.Checkpoint(optimizer=opt, model=model).read(path).assert_consumed()
    for a, v in zip(saved, opt.variables):
        np.testing.assert_array_equal(a, v.numpy())
    fresh_model = _model_like(5)
    fresh = fk.Adam(1e-3, state_dtype=state_dtype)
    status = tf.train.Checkpoint(optimizer=fresh, model=fresh_model).read(path)
    fresh.build(fresh_model.trainable_variables)
    status.assert_consumed()
    assert [v.dtype for v in fresh.variables] == [v.dtype for v in opt.variables]
    for a, v in zip(saved, fresh.variables):
        np.testing.assert_array_equal(a, v.numpy())


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_a_low_precision_checkpoint_restores_into_float32_state_widened(tmp_path, state_dtype):
    """The reverse: a fused optimizer with float32 state reads bfloat16 state
    widened and int8 state dequantized; a built-in optimizer cannot read the
    low-precision slots, which assert_consumed says."""
    opt = fk.Adam(1e-3, state_dtype=state_dtype)
    model, _ = _fit(opt, epochs=1)
    path = tf.train.Checkpoint(optimizer=opt, model=model).write(str(tmp_path / "ck"))
    restored = _model_like(3)
    f32 = fk.Adam(1e-3)
    f32.build(restored.trainable_variables)
    tf.train.Checkpoint(optimizer=f32, model=restored).read(path).assert_consumed()
    got = _slot_values(f32, restored)
    for key, saved in _slot_values(opt, model).items():
        if isinstance(saved, tuple):
            saved = state.dequantize(*saved, signed=key[2] == "momentum")
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], saved, err_msg=str(key))
    builtin = keras.optimizers.Adam(1e-3)
    builtin.build(restored.trainable_variables)
    with pytest.raises(AssertionError):
        tf.train.Checkpoint(optimizer=builtin, model=restored).read(path).assert_consumed()


# ---- IndexedSlices gradients of rank-1 int8 variables (Note [densified int8 gradients])


@pytest.mark.parametrize("mode", ["exact", "lazy"])
@pytest.mark.parametrize("name,kwargs", [("Adam", dict(learning_rate=1e-2)),
                                         ("SGD", dict(learning_rate=0.05, momentum=0.9)),
                                         ("Adagrad", dict(learning_rate=0.05)),
                                         ("RMSprop", dict(learning_rate=1e-2, momentum=0.5))],
                         ids=["Adam", "SGD", "Adagrad", "RMSprop"])
def test_rank1_int8_variables_train_from_indexed_slices(name, kwargs, mode):
    """A rank-1 variable over MIN_QUANTIZED_ELEMENTS with an IndexedSlices
    gradient (a tf.gather of a bias vector) trains with int8 state: the
    numbers of the dense int8 update on the densified gradient, bit for bit,
    beside a rank-2 variable whose IndexedSlices stay sparse."""
    rng = np.random.default_rng()
    n = 5000
    init = {"bias": rng.standard_normal(n).astype(np.float32),
            "table": rng.standard_normal((40, 300)).astype(np.float32),
            "w": rng.standard_normal((80, 80)).astype(np.float32)}
    cls = getattr(fk, name)

    def setup():
        variables = {k: keras.Variable(v, name=k) for k, v in init.items()}
        opt = cls(**kwargs, state_dtype="int8", sparse_mode=mode)
        opt.build(list(variables.values()))
        bias_slots = [v for v in opt.variables
                      if v.path.startswith(f"{opt.name}/bias_") and not v.path.endswith("absmax")]
        assert bias_slots and all(v.dtype == "uint8" for v in bias_slots)
        return variables, opt

    sparse_vars, sparse_opt = setup()
    dense_vars, dense_opt = setup()

    def grads(variables, step):
        idx = tf.constant(np.concatenate([rng.integers(0, n, 300), [7, 7, 7]]))
        rows = tf.constant([3, 17, 3, 39, step % 40])
        with tf.GradientTape() as tape:
            loss = (tf.reduce_sum(tf.sin(tf.gather(variables["bias"].value, idx)))
                    + tf.reduce_sum(tf.gather(variables["table"].value, rows) ** 2)
                    + tf.reduce_sum(variables["w"].value ** 3))
        return tape.gradient(loss, [v.value for v in variables.values()])

    def trainer(opt, variables):
        return tf.function(lambda g: opt.apply_gradients(zip(g, variables.values())))

    train_sparse, train_dense = trainer(sparse_opt, sparse_vars), trainer(dense_opt, dense_vars)
    for step in range(4):
        g = grads(sparse_vars, step)
        assert isinstance(g[0], tf.IndexedSlices) and isinstance(g[1], tf.IndexedSlices)
        with warnings.catch_warnings():
            # (lazy: "no lazy sparse update", once per process)
            warnings.simplefilter("ignore", RuntimeWarning)
            train_sparse(g)
        train_dense([tf.convert_to_tensor(g[0])] + g[1:])
    for k in init:
        np.testing.assert_array_equal(sparse_vars[k].numpy(), dense_vars[k].numpy(), err_msg=k)
        assert not np.array_equal(sparse_vars[k].numpy(), init[k])
    for a, b in zip(sparse_opt.variables, dense_opt.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_rank1_int8_indexed_slices_indices_are_checked():
    """A densified IndexedSlices' indices are checked as the sparse ops check
    them: a bad index raises and nothing changes."""
    var = keras.Variable(np.ones(5000, np.float32))
    other = keras.Variable(np.ones((80, 80), np.float32))
    opt = fk.Adam(1e-2, state_dtype="int8")
    opt.build([var, other])
    before = [v.numpy().copy() for v in opt.variables]
    # (A negative index: densifying alone would drop it silently.)
    bad = tf.IndexedSlices(tf.ones([2]), tf.constant([1, -1]), tf.constant([5000]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        opt.apply_gradients([(bad, var), (tf.ones((80, 80)), other)])
    np.testing.assert_array_equal(var.numpy(), 1)
    np.testing.assert_array_equal(other.numpy(), 1)
    for a, v in zip(before, opt.variables):
        np.testing.assert_array_equal(a, v.numpy())
