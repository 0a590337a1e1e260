"""Fusedopt>ApplySGD against the float64 reference, tf.raw_ops, and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

import fusedopt.ops as fops
from conftest import DTYPES, SHAPES, assert_close, np_dtype, random_array, rounded, tf_dtype
from reference import sgd_step

VARIANTS = ["plain", "momentum", "nesterov"]
STEPS = 10


def run_fused(variables, momenta, grads_per_step, lrs, variant, weight_decay, use_function):
    def step(grads, lr):
        fops.apply_sgd(
            variables,
            grads,
            lr,
            momenta=momenta,
            momentum=0.9,
            nesterov=variant == "nesterov",
            weight_decay=weight_decay,
        )

    if use_function:
        step = tf.function(step)
    for grads, lr in zip(grads_per_step, lrs):
        step(grads, tf.constant(lr, tf.float64 if variables[0].dtype == tf.float64 else tf.float32))


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(rng, dtype, variant, weight_decay, use_function):
    shapes = SHAPES
    init = [random_array(rng, s, dtype) for s in shapes]
    m_init = [random_array(rng, s, dtype, 0.1) for s in shapes]
    grads = [[random_array(rng, s, dtype) for s in shapes] for _ in range(STEPS)]
    # A schedule: a different learning rate every step, as a tensor input.
    lr_dtype = np.float64 if dtype == "float64" else np.float32
    lrs = [float(lr_dtype(0.05 / (1 + 0.1 * k))) for k in range(STEPS)]

    tdt = tf_dtype(dtype)
    variables = [tf.Variable(x.astype(np_dtype(dtype)), dtype=tdt) for x in init]
    momenta = None
    if variant != "plain":
        momenta = [tf.Variable(x.astype(np_dtype(dtype)), dtype=tdt) for x in m_init]
    tf_grads = [[tf.constant(g.astype(np_dtype(dtype)), dtype=tdt) for g in gs] for gs in grads]
    run_fused(variables, momenta, tf_grads, lrs, variant, weight_decay, use_function)

    # Hyperparameters as the kernel sees them: float32 unless the variables are float64.
    # The op rounds momentum and weight decay through float32, as Keras'
    # `ops.cast(x, dtype)` does (Note [Keras arithmetic]).
    mom = float(np.float32(0.9))
    wd = float(np.float32(weight_decay))
    for i, shape in enumerate(shapes):
        v = init[i]
        m = m_init[i] if variant != "plain" else None
        for k in range(STEPS):
            v, m = sgd_step(
                v, grads[k][i], lrs[k], m=m, momentum=mom, nesterov=variant == "nesterov",
                weight_decay=wd,
            )
            v = rounded(v, dtype)
            m = None if m is None else rounded(m, dtype)
        assert_close(variables[i].numpy().astype(np.float64), v, dtype, f"var shape={shape}")
        if m is not None:
            assert_close(momenta[i].numpy().astype(np.float64), m, dtype, f"m shape={shape}")


def test_many_variables_one_call_equal_separate_calls(rng):
    shapes = [(rng.integers(1, 3000),) for _ in range(40)] + [(3, 4, 5), ()]
    init = [random_array(rng, s, "float32") for s in shapes]
    grads = [random_array(rng, s, "float32") for s in shapes]
    together = [tf.Variable(x, dtype=tf.float32) for x in init]
    mt = [tf.Variable(tf.zeros(s)) for s in shapes]
    separate = [tf.Variable(x, dtype=tf.float32) for x in init]
    ms = [tf.Variable(tf.zeros(s)) for s in shapes]
    g32 = [tf.constant(g, tf.float32) for g in grads]
    for _ in range(3):
        fops.apply_sgd(together, g32, 0.1, momenta=mt, momentum=0.9, weight_decay=0.004)
        for v, m, g in zip(separate, ms, g32):
            fops.apply_sgd([v], [g], 0.1, momenta=[m], momentum=0.9, weight_decay=0.004)
    for a, b, ma, mb in zip(together, separate, mt, ms):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(ma.numpy(), mb.numpy())


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_raw_keras_momentum(rng, dtype, nesterov):
    """tf.raw_ops.ResourceApplyKerasMomentum implements the same rule."""
    tdt = tf_dtype(dtype)
    x = random_array(rng, (4097,), dtype)
    a, b = tf.Variable(x, dtype=tdt), tf.Variable(x, dtype=tdt)
    ma, mb = tf.Variable(tf.zeros_like(a)), tf.Variable(tf.zeros_like(b))
    for _ in range(12):
        g = tf.constant(random_array(rng, (4097,), dtype), tdt)
        fops.apply_sgd([a], [g], 0.03, momenta=[ma], momentum=0.9, nesterov=nesterov)
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=b.handle, accum=mb.handle, lr=tf.constant(0.03, tdt), grad=g,
            momentum=tf.constant(np.float32(0.9), tdt), use_nesterov=nesterov,
        )
    assert_close(a.numpy(), b.numpy(), dtype)
    assert_close(ma.numpy(), mb.numpy(), dtype)


def test_matches_raw_gradient_descent(rng):
    x = random_array(rng, (1000,), "float32")
    a, b = tf.Variable(x, dtype=tf.float32), tf.Variable(x, dtype=tf.float32)
    for _ in range(12):
        g = tf.constant(random_array(rng, (1000,), "float32"), tf.float32)
        fops.apply_sgd([a], [g], 0.05)
        tf.raw_ops.ResourceApplyGradientDescent(var=b.handle, alpha=tf.constant(0.05), delta=g)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_rounding_is_nearest_even(dtype):
    """var - 1.0 * g, both 16-bit, computed exactly in float32 then rounded.

    Every 16-bit bit pattern as var, against numpy/ml_dtypes' round-to-nearest-
    even conversion (ties, subnormals, overflow, inf, NaN). TensorFlow runs ops
    with float32 denormals flushed to zero (as its own kernels see them), so
    bfloat16 values in float32's subnormal range are checked to be that value
    or zero.
    """
    npdt = np_dtype(dtype)
    bits = np.arange(1 << 16, dtype=np.uint16)
    var16 = bits.view(npdt)
    rng = np.random.default_rng(7)
    with np.errstate(invalid="ignore", over="ignore"):
        scale = np.nan_to_num(var16.astype(np.float32), nan=1.0).clip(-4, 4)
        g16 = (rng.standard_normal(bits.size) * scale).astype(npdt)
        expected = (var16.astype(np.float32) - g16.astype(np.float32)).astype(npdt)
    v = tf.Variable(var16, dtype=tf_dtype(dtype))
    fops.apply_sgd([v], [tf.constant(g16, tf_dtype(dtype))], tf.constant(1.0))
    got = v.numpy()
    got32, exp32 = got.astype(np.float32), expected.astype(np.float32)
    nan = np.isnan(exp32)
    assert np.isnan(got32[nan]).all()
    tiny = np.finfo(np.float32).tiny
    denormal = np.zeros_like(nan)
    for x in (var16.astype(np.float32), g16.astype(np.float32), exp32):
        denormal |= (x != 0) & (np.abs(x) < tiny)
    exact = ~nan & ~denormal
    assert exact.sum() > 60000
    np.testing.assert_array_equal(got.view(np.uint16)[exact], expected.view(np.uint16)[exact])
    flushed = got32[denormal & ~nan]
    assert np.all((flushed == 0) | (flushed == exp32[denormal & ~nan]) | (np.abs(flushed) >= tiny))


def test_copy_on_write_keeps_readers_value(rng):
    x = random_array(rng, (5000,), "float32")
    v = tf.Variable(x, dtype=tf.float32)
    before = tf.raw_ops.ReadVariableOp(resource=v.handle, dtype=tf.float32)  # shares the buffer
    fops.apply_sgd([v], [tf.ones_like(before)], 0.5)
    np.testing.assert_array_equal(before.numpy(), x.astype(np.float32))
    np.testing.assert_array_equal(v.numpy(), (x - 0.5).astype(np.float32))


# --- bad input: a clear InvalidArgumentError, and nothing written --------------


def _bad_case(name):
    good = tf.Variable(np.arange(1, 6, dtype=np.float32))
    good_m = tf.Variable(np.ones(5, np.float32))
    other = tf.Variable(np.arange(1, 4, dtype=np.float32))
    other_m = tf.Variable(np.ones(3, np.float32))
    g5, g3 = tf.ones(5), tf.ones(3)
    kwargs = dict(momenta=[good_m, other_m], momentum=0.9)
    if name == "grad shape":
        args = ([good, other], [g5, tf.ones(4)], 0.1)
        match = r"vars\[1\].*shape \[3\].*grads\[1\].*\[4\]"
    elif name == "slot shape":
        bad_m = tf.Variable(np.ones(4, np.float32))
        args, kwargs["momenta"] = ([good, other], [g5, g3], 0.1), [good_m, bad_m]
        match = r"momenta\[1\].*shape \[4\]"
    elif name == "dtype":
        args = ([good, tf.Variable(np.ones(3, np.float64))], [g5, g3], 0.1)
        kwargs["momenta"] = [good_m, tf.Variable(np.ones(3, np.float64))]
        match = r"vars\[1\].*float64.*float"
    elif name == "uninitialized":
        handle = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[3], shared_name="never_set")
        args = ([good, handle], [g5, g3], 0.1)
        match = r"vars\[1\].*(not initialized|could not be found)"
    elif name == "non-scalar lr":
        args = ([good, other], [g5, g3], tf.constant([0.1, 0.2]))
        match = r"lr.*scalar"
    elif name == "list lengths":
        args = ([good, other], [g5], 0.1)
        match = r"gradients has 1 entries but there are 2 variables"
    elif name == "slot count":
        args = ([good, other], [g5, g3], 0.1)
        kwargs["momenta"] = [good_m]
        match = r"momenta has 1 entries"
    elif name == "same variable twice":
        args = ([good, good], [g5, g5], 0.1)
        kwargs["momenta"] = [good_m, other_m]
        match = r"vars\[1\].*vars\[0\].*same variable"
    elif name == "variable as its own slot":
        args = ([good, other], [g5, g3], 0.1)
        kwargs["momenta"] = [good_m, other]
        match = r"momenta\[1\].*vars\[1\].*same variable"
    else:
        raise AssertionError(name)
    return [good, good_m, other, other_m], args, kwargs, match


BAD_CASES = [
    "grad shape", "slot shape", "dtype", "uninitialized", "non-scalar lr", "list lengths",
    "slot count", "same variable twice", "variable as its own slot",
]


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_and_writes_nothing(case, use_function):
    watched, args, kwargs, match = _bad_case(case)
    before = [w.numpy().copy() for w in watched]
    def call():
        fops.apply_sgd(*args, **kwargs)

    if use_function:
        call = tf.function(call)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=match):
        call()
    for w, b in zip(watched, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_nesterov_without_momenta_is_rejected():
    v = tf.Variable([1.0, 2.0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="nesterov"):
        fops.apply_sgd([v], [tf.ones(2)], 0.1, nesterov=True)
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
