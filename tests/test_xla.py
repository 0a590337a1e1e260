"""Fused kernels inside XLA (Note [XLA lowering] in cc/tf/xla_ops.cc): the
dense ops lower to one in-place typed-FFI custom call on the CPU."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import fusedopt
import fusedopt.keras as fk
import fusedopt.ops as fops
from conftest import random_array

CLASSES = ["SGD", "Adam", "AdamW", "Nadam", "Adamax", "RMSprop", "Adagrad", "Adadelta", "Ftrl",
           "Lion", "Lamb", "ScheduleFreeAdamW", "Muon"]
SHAPES = [(), (7,), (33, 5), (4097,)]


def _hlo_lines(hlo: str, what: str) -> list[str]:
    return [line for line in hlo.splitlines() if what in line]


def test_compiled_op_is_one_in_place_custom_call(rng):
    shapes = [(5,), (3, 2), ()]
    v = [tf.Variable(random_array(rng, s, "float32").astype(np.float32)) for s in shapes]
    m = [tf.Variable(tf.zeros(s)) for s in shapes]
    vv = [tf.Variable(tf.zeros(s)) for s in shapes]

    @tf.function(jit_compile=True)
    def step(g, t):
        return fops.apply_adam(v, g, 0.1, m=m, v=vv, step=t)

    g = [tf.ones(s) for s in shapes]
    hlo = step.experimental_get_compiler_ir(g, tf.constant(1, tf.int64))(stage="optimized_hlo")
    calls = _hlo_lines(hlo, "custom_call_target=\"fusedopt_apply\"")
    assert len(calls) == 1, hlo
    assert "API_VERSION_TYPED_FFI" in calls[0]
    # Every variable and slot is aliased to its result (updated in place) ...
    header = hlo.splitlines()[0]
    assert header.count("may-alias") + header.count("must-alias") >= 9, header
    # ... and no copy of them exists.
    assert not _hlo_lines(hlo, " copy("), hlo


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_compiled_equals_uncompiled_fused_op(rng, dtype):
    npdt = {"bfloat16": tf.bfloat16.as_numpy_dtype}.get(dtype, np.dtype(dtype))
    init = [random_array(rng, s, dtype).astype(npdt) for s in SHAPES]
    grads = [[tf.constant(random_array(rng, s, dtype).astype(npdt)) for s in SHAPES]
             for _ in range(5)]
    results = []
    for jit in (True, False):
        v = [tf.Variable(x) for x in init]
        m = [tf.Variable(tf.zeros_like(x)) for x in v]
        vv = [tf.Variable(tf.zeros_like(x)) for x in v]

        @tf.function(jit_compile=jit)
        def step(g, t, lr):
            return fops.apply_adam(v, g, lr, m=m, v=vv, step=t, weight_decay=0.01,
                                   clipnorm=1.0)

        for t, g in enumerate(grads, start=1):
            step(g, tf.constant(t, tf.int64), tf.constant(0.01 / t, tf.float64))
        results.append([x.numpy() for x in v + m + vv])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_compiled_op_reports_bad_input():
    v = tf.Variable(tf.ones(3))

    @tf.function(jit_compile=True)
    def step(lr):
        return fops.apply_sgd([v], [tf.ones(3)], lr)

    with pytest.raises(tf.errors.InvalidArgumentError, match="'lr' must be finite"):
        step(tf.constant(np.nan, tf.float64))
    np.testing.assert_array_equal(v.numpy(), 1.0)


@pytest.mark.parametrize("name", CLASSES)
def test_keras_compiled_step_equals_uncompiled_and_runs_fused(rng, name):
    init = [random_array(rng, s, "float32").astype(np.float32) for s in SHAPES]
    grads = [[random_array(rng, s, "float32").astype(np.float32) for s in SHAPES]
             for _ in range(6)]
    results, hlos = [], []
    fusedopt._tf_context._xla_warned = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning
        for jit in (True, False):
            opt = getattr(fk, name)(learning_rate=0.01)
            variables = [keras.Variable(x) for x in init]
            opt.build(variables)
            step = tf.function(lambda g: opt.apply(g, variables), jit_compile=jit)
            for g in grads:
                step([tf.constant(x) for x in g])
            if jit:
                hlos.append(step.experimental_get_compiler_ir(
                    [tf.constant(x) for x in grads[0]])(stage="optimized_hlo"))
            results.append([np.array(v.numpy()) for v in variables + list(opt.variables)])
    assert _hlo_lines(hlos[0], "fusedopt_apply"), f"{name}: no fused custom call under XLA"
    for i, (a, b) in enumerate(zip(*results)):
        # Nadam's u_product is computed by Keras' ops (XLA's pow): within 1 ulp.
        if name == "Nadam":
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7, err_msg=f"{name} [{i}]")
        elif name == "Muon":
            # Its Newton-Schulz matmuls are XLA's dots under jit, TF's MatMul
            # without: float32 accumulation order.
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"{name} [{i}]")
        else:
            np.testing.assert_array_equal(a, b, err_msg=f"{name} [{i}]")


def _apply_step(opt, variables):
    return lambda grads: opt.apply(grads, variables)


ADAFACTOR_SHAPES = [(), (7,), (33, 5), (2, 3, 4), (1, 9)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adafactor_compiled_is_one_in_place_call_equal_to_uncompiled(rng, dtype):
    """fusedopt.keras.Adafactor under jit_compile: one in-place
    `fusedopt_adafactor` custom call (factored r and c of the matrices, v of
    every variable aliased; Keras' placeholders for the vectors untouched),
    the uncompiled op's bits, every variable and optimizer variable."""
    init = [random_array(rng, s, dtype) for s in ADAFACTOR_SHAPES]
    grads = [[random_array(rng, s, dtype) for s in ADAFACTOR_SHAPES] for _ in range(4)]
    results = []
    fusedopt._tf_context._fallback_warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning
        for jit in (True, False):
            opt = fk.Adafactor(learning_rate=0.05, relative_step=False, weight_decay=0.01)
            variables = [keras.Variable(x, dtype=dtype) for x in init]
            opt.build(variables)
            step = tf.function(_apply_step(opt, variables), jit_compile=jit)
            for g in grads:
                step([tf.constant(x) for x in g])
            if jit:
                hlo = step.experimental_get_compiler_ir(
                    [tf.constant(x) for x in grads[0]])(stage="optimized_hlo")
                calls = _hlo_lines(hlo, 'custom_call_target="fusedopt_adafactor"')
                assert len(calls) == 1, hlo
                assert not _hlo_lines(hlo, " copy("), hlo
                header = hlo.splitlines()[0]
                # 5 variables, 3 factored (r and c), 5 v
                assert header.count("may-alias") + header.count("must-alias") >= 16, header
            results.append([np.array(v.numpy()) for v in variables + list(opt.variables)])
    assert len(results[0]) > 3 * len(init)
    for i, (a, b) in enumerate(zip(*results)):
        np.testing.assert_array_equal(a, b, err_msg=f"[{i}]")


def test_adafactor_compiled_bad_learning_rate_writes_nothing():
    v = tf.Variable(tf.ones((4, 3)))
    r, c, vv = tf.Variable(tf.zeros((4,))), tf.Variable(tf.zeros((3,))), tf.Variable(tf.zeros((4, 3)))

    @tf.function(jit_compile=True)
    def step(lr):
        return fops.apply_adafactor([v], [tf.ones((4, 3))], lr, r=[r], c=[c], v=[vv], step=1)

    step(tf.constant(0.01, tf.float64))
    before = [x.numpy().tobytes() for x in (v, r, c, vv)]
    with pytest.raises(tf.errors.InvalidArgumentError, match="'lr' must be finite"):
        step(tf.constant(np.nan, tf.float64))
    assert [x.numpy().tobytes() for x in (v, r, c, vv)] == before

    wrong = tf.Variable(tf.zeros((3,)))  # r of a [4, 3] variable has shape [4]

    @tf.function(jit_compile=True)
    def bad_r():
        return fops.apply_adafactor([v], [tf.ones((4, 3))], 0.01, r=[wrong], c=[c], v=[vv],
                                    step=1)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"r\[0\] has shape \[3\]"):
        bad_r()
    assert [x.numpy().tobytes() for x in (v, r, c, vv)] == before


def _digits_fit(opt, jit_compile):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=opt, jit_compile=jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = model.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
    return hist.history["loss"], [w.numpy() for w in model.weights]


def test_model_fit_jit_compile_equals_uncompiled():
    fusedopt._tf_context._xla_warned = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        loss_jit, w_jit = _digits_fit(fk.Adam(learning_rate=0.01), True)
    loss, w = _digits_fit(fk.Adam(learning_rate=0.01), False)
    # XLA compiles the forward and backward pass differently; the update is
    # the same kernel: the curves agree to float32 accumulation error.
    np.testing.assert_allclose(loss_jit, loss, rtol=1e-4)
    for a, b in zip(w_jit, w):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def _embedding_fit(opt, jit_compile):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(50, 8),
                              keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer=opt, loss="mse", jit_compile=jit_compile)
    x = np.random.default_rng(0).integers(0, 50, (64, 4)).astype(np.int32)
    y = np.random.default_rng(1).standard_normal((64, 1)).astype(np.float32)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    return [w.numpy() for w in model.weights]


def test_lazy_sparse_gradients_under_xla_fall_back_with_one_warning():
    fusedopt._tf_context._xla_warned = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _embedding_fit(fk.Adam(0.01, sparse_mode="lazy"), True)
    assert sum("IndexedSlices" in str(w.message) for w in caught) == 1


def _sparse_step(opt, variables, densify):
    def step(g, d):
        grad = tf.IndexedSlices(g, d, tf.constant([11, 3]))
        opt.apply([tf.convert_to_tensor(grad) if densify else grad, tf.ones((3,))], variables)
    return step


@pytest.mark.parametrize("name", ["Adam", "Adagrad", "SGD", "RMSprop"])
def test_exact_sparse_gradients_run_fused_under_xla(rng, name):
    """Note [sparse under XLA]: "exact" IndexedSlices (the default) run the
    dense lowering on their position-order sum: the bits of the uncompiled
    step on the densified gradient, duplicate rows included, and of the
    uncompiled exact sparse op, but for the Grappler forms the dense op takes
    in a tf.function (Adagrad, RMSprop: an ulp)."""
    init = random_array(rng, (11, 3), "float32").astype(np.float32)
    indices = [np.array(ix, np.int32) for ix in ([3, 0, 3, 10, 3], [7, 7], [1, 2, 4, 10, 0, 4])]
    values = [random_array(rng, (len(ix), 3), "float32").astype(np.float32) for ix in indices]
    results = {}
    fusedopt._tf_context._xla_warned = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning
        for run in ("xla", "sparse", "densified"):
            opt = getattr(fk, name)(learning_rate=0.1)
            variables = [keras.Variable(init), keras.Variable(init[0])]
            opt.build(variables)

            step = tf.function(_sparse_step(opt, variables, run == "densified"),
                               jit_compile=run == "xla")
            for ix, val in zip(indices, values):
                step(tf.constant(val), tf.constant(ix))
            if run == "xla":
                hlo = step.experimental_get_compiler_ir(
                    tf.constant(values[0]), tf.constant(indices[0]))(stage="optimized_hlo")
                assert len(_hlo_lines(hlo, "custom_call_target=\"fusedopt_apply\"")) == 1, hlo
            results[run] = [np.array(v.numpy()) for v in variables + list(opt.variables)]
    for i, (a, b, c) in enumerate(zip(results["xla"], results["densified"], results["sparse"])):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} [{i}]")
        if name in ("Adagrad", "RMSprop"):  # (sqrt(x + eps) forms)
            # (an ulp of the update: absolute, as the variables cross zero)
            np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6, err_msg=f"{name} [{i}]")
        else:
            np.testing.assert_array_equal(a, c, err_msg=f"{name} [{i}]")


def test_embedding_fit_jit_compile_runs_fused():
    fusedopt._tf_context._xla_warned = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        w_jit = _embedding_fit(fk.Adam(0.01), True)
    w = _embedding_fit(fk.Adam(0.01), False)
    for a, b in zip(w_jit, w):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_legacy_exact_sparse_runs_fused_under_xla(rng):
    import fusedopt.legacy as fl

    init = random_array(rng, (9, 2), "float32").astype(np.float32)
    ix = np.array([4, 1, 4, 8], np.int32)
    val = random_array(rng, (4, 2), "float32").astype(np.float32)
    results = []
    fusedopt._tf_context._xla_warned = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for jit in (True, False):
            v = [tf.Variable(init), tf.Variable(tf.ones((5,)))]
            opt = fl.Adam(learning_rate=0.01, sparse_mode="exact")

            @tf.function(jit_compile=jit)
            def step(g, d):
                opt.apply_gradients(zip([tf.IndexedSlices(g, d, tf.constant([9, 2])),
                                         tf.ones((5,))], v))

            for _ in range(3):
                step(tf.constant(val), tf.constant(ix))
            if jit:
                hlo = step.experimental_get_compiler_ir(tf.constant(val), tf.constant(ix))(
                    stage="optimized_hlo")
                assert len(_hlo_lines(hlo, "custom_call_target=\"fusedopt_apply\"")) == 1, hlo
            results.append([x.numpy() for x in v + opt.variables()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_legacy_compiled_step_runs_fused():
    import fusedopt.legacy as fl

    v = [tf.Variable(tf.ones((5,))), tf.Variable(tf.ones((2, 3)))]
    opt = fl.Adam(learning_rate=0.01)
    @tf.function(jit_compile=True)
    def step(g):
        opt.apply_gradients(zip(g, v))

    g = [tf.ones((5,)), tf.ones((2, 3))]
    step(g)
    hlo = step.experimental_get_compiler_ir(g)(stage="optimized_hlo")
    assert len(_hlo_lines(hlo, "custom_call_target=\"fusedopt_apply\"")) == 1, hlo
    assert not _hlo_lines(hlo, " copy(")


def test_accumulated_sparse_gradients_under_xla():
    """Gradient accumulation with IndexedSlices under XLA: the step's index
    checks (assertions XLA compiles away) do not stop the compilation, and the
    compiled steps give the uncompiled ones' bits."""
    results = []
    fusedopt._tf_context._xla_warned = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for jit in (True, False):
            variables = [keras.Variable(np.ones((6, 2), np.float32)),
                         keras.Variable(np.ones(3, np.float32))]
            opt = fk.Adam(0.1, gradient_accumulation_steps=2)
            opt.build(variables)
            step = tf.function(_indexed_step(opt, variables), jit_compile=jit)
            for rows in ([1, 4], [4, 4], [0, 5], [2, 1]):
                step(tf.constant(rows))
            results.append([np.array(v.numpy()) for v in variables + list(opt.variables)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(results[0][0], np.ones((6, 2), np.float32))


def _indexed_step(opt, variables):
    def step(rows):
        grads = [tf.IndexedSlices(tf.ones((2, 2)), rows, tf.constant([6, 2])), tf.ones(3)]
        opt.apply(grads, variables)
    return step


_TF_FORMS_XLA_PROBE = r"""
import sys, numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
import keras, fusedopt.keras as fk
rng = np.random.default_rng(int(sys.argv[2]))
cls = getattr(fk, sys.argv[3])
shapes = [(1000003,), (513, 1025), (700001,), (1200, 1001), (3, 257, 129)]
init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(10)]
out = []
for jit in (True, False):
    vs = [keras.Variable(x) for x in init]
    opt = cls(learning_rate=0.01, weight_decay=0.01)
    opt.build(vs)
    def make(opt, vs):
        return lambda g: opt.apply(g, vs)
    step = tf.function(make(opt, vs), jit_compile=jit)
    for g in grads:
        step([tf.constant(x) for x in g])
    out.append(np.concatenate([v.numpy().ravel() for v in vs + list(opt.variables)]))
print("DIFFER", int(np.sum(out[0] != out[1])), out[0].size)
"""


@pytest.mark.parametrize("name", ["Lamb", "Adafactor"])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_tf_forms_follow_the_pool_size(rng, threads, name):
    """Lamb's TF norms (Note [TF norms]) and Adafactor's TF reductions (Note
    [TF reductions]) inside XLA: the handler evaluates TF's expressions on a
    device the size of XLA's intra-op pool, so a compiled step equals the
    uncompiled one on tensors large enough for TF's Sum and Mean to split by
    thread count."""
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", _TF_FORMS_XLA_PROBE, str(threads),
                          str(int(rng.integers(2**31))), name],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [x for x in res.stdout.splitlines() if x.startswith("DIFFER")][-1]
    assert line.split()[1] == "0", f"{threads} threads: {line}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("power", [-0.7, -2.0])
def test_ftrl_tf_pow_compiled_equals_uncompiled(rng, dtype, power):
    """Ftrl's TF Pow (Note [TF pow]) inside XLA: the handler runs TF's Pow
    kernel as the uncompiled op does, so the compiled step gives its bits
    (odd sizes: TF's packets and its scalar tail)."""
    shapes = [(1001,), (33, 5), (), (100003,)]
    init = [random_array(rng, s, dtype) for s in shapes]
    grads = [[random_array(rng, s, dtype) for s in shapes] for _ in range(5)]
    results, hlos = [], []
    for jit in (True, False):
        opt = fk.Ftrl(learning_rate=0.05, learning_rate_power=power, beta=0.1,
                      l1_regularization_strength=0.01, weight_decay=0.01)
        variables = [keras.Variable(x, dtype=dtype) for x in init]
        opt.build(variables)
        step = tf.function(_apply_step(opt, variables), jit_compile=jit)
        for g in grads:
            step([tf.constant(x, dtype) for x in g])
        if jit:
            hlos.append(step.experimental_get_compiler_ir(
                [tf.constant(x, dtype) for x in grads[0]])(stage="optimized_hlo"))
        results.append([np.array(v.numpy()) for v in variables + list(opt.variables)])
    assert _hlo_lines(hlos[0], "fusedopt_apply"), "no fused custom call under XLA"
    for i, (a, b) in enumerate(zip(*results)):
        np.testing.assert_array_equal(a, b, err_msg=f"Ftrl {power} {dtype} [{i}]")
