"""Multi-tensor apply: many variables in one call, fused unscale/clipping,
non-finite skip, and determinism across thread counts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import fusedopt.ops as fops
import reference as ref
from conftest import assert_close, random_array, rounded


def _adam_state(rng, shapes):
    init = [random_array(rng, s, "float32") for s in shapes]
    m0 = [random_array(rng, s, "float32", 0.1) for s in shapes]
    v0 = [rounded(0.1 + np.abs(rng.standard_normal(s)), "float32") for s in shapes]
    return init, m0, v0


def _tf_vars(arrays):
    return [tf.Variable(x.astype(np.float32)) for x in arrays]


def test_200_mixed_shapes_in_one_call_equal_separate_reference_updates(rng):
    shapes = [tuple(rng.integers(1, 40, size=rng.integers(0, 4))) for _ in range(200)]
    init, m0, v0 = _adam_state(rng, shapes)
    var, m, v = _tf_vars(init), _tf_vars(m0), _tf_vars(v0)
    for t in range(1, 6):
        grads = [random_array(rng, s, "float32") for s in shapes]
        fops.apply_adam(var, [tf.constant(g, tf.float32) for g in grads], 1e-2, m=m, v=v, step=t,
                        weight_decay=0.01)
        for i in range(len(shapes)):
            init[i], m0[i], v0[i], _ = ref.adam_step(init[i], grads[i], float(np.float32(1e-2)), m0[i],
                                                     v0[i], t, beta_1=float(np.float32(0.9)),
                                                     beta_2=float(np.float32(0.999)),
                                                     epsilon=float(np.float32(1e-7)),
                                                     weight_decay=float(np.float32(0.01)))
            init[i], m0[i], v0[i] = (rounded(x, "float32") for x in (init[i], m0[i], v0[i]))
    for i in range(len(shapes)):
        assert_close(var[i].numpy(), init[i], "float32", f"var {i}")
        assert_close(m[i].numpy(), m0[i], "float32", f"m {i}")
        assert_close(v[i].numpy(), v0[i], "float32", f"v {i}")


CLIPS = [dict(clipvalue=0.3), dict(clipnorm=1.5), dict(global_clipnorm=2.0)]


@pytest.mark.parametrize("grad_scale", [1.0, 1 / 256])
@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: next(iter(c)))
def test_fused_clipping_equals_keras_clipping_then_update(rng, clip, grad_scale):
    shapes = [(1000,), (7, 13), (), (4097,)]
    init, m0, v0 = _adam_state(rng, shapes)
    a_var, a_m, a_v = _tf_vars(init), _tf_vars(m0), _tf_vars(v0)
    b_var, b_m, b_v = _tf_vars(init), _tf_vars(m0), _tf_vars(v0)
    keras_opt = keras.optimizers.Adam(**clip)  # the built-in, for its _clip_gradients
    for t in range(1, 4):
        raw = [tf.constant(random_array(rng, s, "float32", 3.0 / grad_scale), tf.float32) for s in shapes]
        fops.apply_adam(a_var, raw, 1e-2, m=a_m, v=a_v, step=t, grad_scale=grad_scale, **clip)
        unscaled = [g / (1 / grad_scale) for g in raw]  # Keras divides by its loss scale
        clipped = keras_opt._clip_gradients(unscaled)
        fops.apply_adam(b_var, clipped, 1e-2, m=b_m, v=b_v, step=t)
    for x, y in zip(a_var + a_m + a_v, b_var + b_m + b_v):
        assert_close(x.numpy(), y.numpy(), "float32", cond=3.0)
    # The clipping really changed something (the test could fail).
    c_var = _tf_vars(init)
    fops.apply_adam(c_var, raw, 1e-2, m=_tf_vars(m0), v=_tf_vars(v0), step=1)
    assert not np.allclose(c_var[0].numpy(), a_var[0].numpy())


def test_global_clipnorm_uses_the_norm_over_all_variables():
    g = [tf.constant([3.0, 0.0]), tf.constant([0.0, 4.0])]  # global norm 5
    v = _tf_vars([np.zeros(2), np.zeros(2)])
    fops.apply_sgd(v, g, 1.0, global_clipnorm=1.0)
    np.testing.assert_allclose(np.concatenate([x.numpy() for x in v]), [-0.6, 0, 0, -0.8], rtol=1e-6)
    v = _tf_vars([np.zeros(2), np.zeros(2)])
    fops.apply_sgd(v, g, 1.0, clipnorm=1.0)  # per variable: each becomes a unit vector
    np.testing.assert_allclose(np.concatenate([x.numpy() for x in v]), [-1, 0, 0, -1], rtol=1e-6)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("op", ["adam", "lamb", "sgd"])
def test_nonfinite_skip_writes_nothing(rng, op, bad):
    shapes = [(100,), (5, 5), (70001,)]
    init, m0, v0 = _adam_state(rng, shapes)
    var, m, v = _tf_vars(init), _tf_vars(m0), _tf_vars(v0)
    grads = [random_array(rng, s, "float32") for s in shapes]
    grads[2][12345] = bad
    call = {
        "adam": lambda gs: fops.apply_adam(var, gs, 0.1, m=m, v=v, step=1, skip_nonfinite=True,
                                           global_clipnorm=1.0),
        "lamb": lambda gs: fops.apply_lamb(var, gs, 0.1, m=m, v=v, step=1, skip_nonfinite=True),
        "sgd": lambda gs: fops.apply_sgd(var, gs, 0.1, momenta=m, momentum=0.9, skip_nonfinite=True),
    }[op]
    before = [x.numpy().copy() for x in var + m + v]
    skipped = call([tf.constant(g, tf.float32) for g in grads])
    assert bool(skipped.numpy()) is True
    for x, b in zip(var + m + v, before):
        np.testing.assert_array_equal(x.numpy().view(np.uint32), b.view(np.uint32))
    grads[2][12345] = 0.5
    skipped = call([tf.constant(g, tf.float32) for g in grads])
    assert bool(skipped.numpy()) is False
    assert not np.array_equal(var[0].numpy(), before[0])


@pytest.mark.parametrize("case", ["overflow", "inf scale", "nan scale", "clipped inf",
                                  "nan and clip_value", "near overflow"])
def test_nonfinite_skip_judges_the_transformed_gradients(case):
    """Note [skip after transform]: the gradients the update uses, after
    grad_scale and clipping, and the scale itself."""
    var = [tf.Variable([1.0, 2.0, 3.0]), tf.Variable([4.0])]
    m = [tf.Variable([0.1, 0.2, 0.3]), tf.Variable([0.4])]
    g0 = np.array([1.0, 2.0, 3.0], np.float32)
    grad_scale, clipvalue, want = 1.0, None, True
    if case == "overflow":  # finite gradients, inf after the scale: 3e38 * 10
        g0[1], grad_scale = 3e38, 10.0
    elif case == "inf scale":
        grad_scale = np.inf
    elif case == "nan scale":  # an unscale by a zero loss scale
        grad_scale = np.nan
    elif case == "clipped inf":  # clip_value turns the inf into a finite gradient
        g0[1], clipvalue, want = np.inf, 0.5, False
    elif case == "nan and clip_value":  # clipping keeps a NaN
        g0[1], clipvalue = np.nan, 0.5
    elif case == "near overflow":  # the norm bound trips, no element overflows
        g0[:], grad_scale, want = 3e38, 1.0, False
    before = [x.numpy().copy() for x in var + m]
    kwargs = dict(momenta=m, momentum=0.9, skip_nonfinite=True, grad_scale=grad_scale)
    if clipvalue is not None:
        kwargs["clipvalue"] = clipvalue
    skipped = fops.apply_sgd(var, [tf.constant(g0), tf.constant([1.0])], 1e-40, **kwargs)
    assert bool(skipped.numpy()) is want
    after = [x.numpy() for x in var + m]
    if want:
        for a, b in zip(after, before):
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    else:
        assert all(np.isfinite(a).all() for a in after)
        assert not np.array_equal(after[2], before[2])


def test_nonfinite_skip_in_tf_function_returns_the_flag():
    v = tf.Variable([1.0, 2.0])

    @tf.function
    def step(g):
        return fops.apply_sgd([v], [g], 0.1, skip_nonfinite=True)

    assert bool(step(tf.constant([np.nan, 1.0])).numpy())
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
    assert not bool(step(tf.constant([1.0, 1.0])).numpy())
    np.testing.assert_allclose(v.numpy(), [0.9, 1.9])


def test_global_clipnorm_with_nonfinite_gradient_gives_nan_like_keras():
    v = _tf_vars([np.ones(3), np.ones(2)])
    fops.apply_sgd(v, [tf.constant([1.0, np.inf, 1.0]), tf.ones(2)], 0.1, global_clipnorm=1.0)
    assert np.isnan(v[1].numpy()).all()


def test_bad_options_raise_and_write_nothing():
    v = tf.Variable([1.0, 2.0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most one of"):
        fops.apply_sgd([v], [tf.ones(2)], 0.1, clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="clipnorm must be > 0"):
        fops.apply_sgd([v], [tf.ones(2)], 0.1, clipnorm=0.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="'clip_norm' must be > 0"):
        fops.apply_sgd([v], [tf.ones(2)], 0.1, clipnorm=tf.constant(-1.0))
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])


THREADS_PROBE = """
import hashlib, numpy as np, tensorflow as tf, sys
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
import fusedopt.ops as fops
rng = np.random.default_rng(3)
shapes = [(int(rng.integers(1, 200000)),) for _ in range(60)]
mk = lambda pos=False: [tf.Variable((np.abs(rng.standard_normal(s)) + 0.1 if pos else rng.standard_normal(s)).astype(np.float32)) for s in shapes]
var, m, v = mk(), mk(), mk(True)
lv, lm, lvv = mk(), mk(), mk(True)
for t in range(1, 4):
    g = [tf.constant(rng.standard_normal(s).astype(np.float32) * 10) for s in shapes]
    fops.apply_adam(var, g, 1e-2, m=m, v=v, step=t, global_clipnorm=1.0)
    fops.apply_lamb(lv, g, 1e-2, m=lm, v=lvv, step=t, clipnorm=0.5, weight_decay=0.01)
h = hashlib.sha256()
for x in var + m + v + lv + lm + lvv:
    h.update(x.numpy().tobytes())
print(h.hexdigest())
"""


def test_results_identical_with_1_and_2_intra_op_threads():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = []
    for threads in ("1", "2"):
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(THREADS_PROBE), threads],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        out.append(r.stdout.strip())
    assert out[0] == out[1]
