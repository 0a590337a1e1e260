"""The drop-ins run wherever the built-ins run (issue #32): TF1-style graphs and
``tf.compat.v1`` Sessions, eager and ``tf.function``; complex variables;
IndexedSlices whose dense_shape is not the variable's; NumPy gradients; and
tf_keras' documented OptimizerV2 behaviour, each compared with the built-in
(numbers with ``==``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

tf_keras = pytest.importorskip("tf_keras")

import keras  # noqa: E402

import fusedopt  # noqa: E402
import fusedopt.keras as fk  # noqa: E402
import fusedopt.legacy as fl  # noqa: E402
from fusedopt import _tf_context  # noqa: E402
from tf_keras.optimizers import legacy as L  # noqa: E402

MODES = ["eager", "function", "graph"]
LEGACY = ["SGD", "Adam", "Nadam", "Adamax", "RMSprop", "Adagrad", "Adadelta", "Ftrl"]
# Every legacy class's default sparse path, and the options that change it.
LEGACY_SPARSE = [
    ("SGD", {}), ("SGD", dict(momentum=0.9)), ("SGD", dict(momentum=0.9, nesterov=True)),
    ("Adam", {}), ("Adam", dict(amsgrad=True)), ("Nadam", {}), ("Adamax", {}),
    ("RMSprop", {}), ("RMSprop", dict(momentum=0.5)), ("RMSprop", dict(centered=True)),
    ("RMSprop", dict(centered=True, momentum=0.5)),
    ("Adagrad", {}), ("Adadelta", dict(learning_rate=1.0)),
    ("Ftrl", {}), ("Ftrl", dict(l1_regularization_strength=0.01, l2_regularization_strength=0.1,
                               beta=0.5, learning_rate_power=-0.7)),
    ("Ftrl", dict(l2_shrinkage_regularization_strength=0.05)),
]
SPARSE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in c.items()) or 'default'}"
              for n, c in LEGACY_SPARSE]
SHAPES = [(7, 5), (9,), (4, 3, 2)]
ROWS = (0, 2, 0, 3)  # a duplicate, and rows never listed


def _dense(gs):
    return [tf.constant(g) for g in gs]


def _sparse(gs, rows=ROWS):
    out = []
    for g in gs:
        idx = np.array([r for r in rows if r < g.shape[0]], np.int64)
        out.append(tf.IndexedSlices(tf.constant(g[idx]), tf.constant(idx),
                                    tf.constant(g.shape, tf.int64)))
    return out


def _data(rng, dtype, steps, shapes=SHAPES):
    def draw(s):
        x = rng.standard_normal(s)
        if np.dtype(dtype).kind == "c":
            x = x + 1j * rng.standard_normal(s)
        return x.astype(dtype)

    return [draw(s) for s in shapes], [[draw(s) for s in shapes] for _ in range(steps)]


def run_legacy(mode, make_opt, init, grads, to_grads=_dense, program=None):
    """Trains a tf_keras optimizer in one execution mode; returns the
    variables' and the optimizer variables' values.

    ``program(opt, vs, gs)`` makes one step (default: apply_gradients); in
    graph mode it builds the step's op, run by a Session.
    """
    program = program or (lambda opt, vs, gs: opt.apply_gradients(zip(gs, vs)))
    if mode == "graph":
        with tf.Graph().as_default():
            opt = make_opt()
            vs = [tf.Variable(v) for v in init]
            train = [program(opt, vs, to_grads(gs)) for gs in grads]
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                for op in train:
                    sess.run(op)
                return sess.run(vs), sess.run(opt.variables())
    opt = make_opt()
    vs = [tf.Variable(v) for v in init]
    def step(gs):
        program(opt, vs, gs)

    if mode == "function":
        step = tf.function(step)
    for gs in grads:
        step(to_grads(gs))
    return [v.numpy() for v in vs], [w.numpy() for w in opt.variables()]


def assert_same(a, b, what=""):
    (va, wa), (vb, wb) = a, b
    assert len(va) == len(vb) and len(wa) == len(wb), what
    for i, (x, y) in enumerate(list(zip(va, vb)) + list(zip(wa, wb))):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, f"{what} value {i}"
        differ = int(np.sum(x != y))
        assert differ == 0, f"{what} value {i} differs in {differ} of {x.size} elements"


# ---- 1: the first step in a TF1 graph ------------------------------------------


def test_first_fused_step_builds_in_a_tf1_graph(monkeypatch):
    """build_info() (read by the first step) evaluated ``.numpy()`` inside
    init_scope, which does not leave a tf.Graph(): AttributeError, unless an
    eager step had filled the cache before."""
    monkeypatch.setattr(_tf_context, "_cuda_reason", [])  # as in a fresh process
    with tf.Graph().as_default() as graph:
        v = tf.Variable(1.0)
        op = fl.SGD(0.1).apply_gradients([(tf.constant(1.0), v)])
        info_ops = [o for o in graph.get_operations() if "BuildInfo" in o.type]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(op)
            assert sess.run(v) == np.float32(1.0) - np.float32(0.1)
    assert not info_ops  # evaluated outside the caller's graph
    assert "tensorflow_running" in fusedopt.build_info()


def test_build_info_in_a_graph_and_in_a_function():
    with tf.Graph().as_default():
        assert fusedopt.build_info()["tensorflow_running"] == tf.__version__
    assert tf.function(lambda: tf.constant(fusedopt.build_info()["cuda"] in (True, False)))()


# ---- 2: Nadam in a Session -------------------------------------------------------


def test_nadam_in_a_session_matches_the_builtin():
    """The deferred momentum-cache assignment is part of the op apply_gradients
    returns: sess.run(train_op) runs it (m_cache 0.0912 after 3 steps)."""
    init, grads = [np.array([1.0, 2.0], np.float32)], [[np.array([1.0, 1.0], np.float32)]] * 3
    fused = run_legacy("graph", fl.Nadam, init, grads)
    builtin = run_legacy("graph", L.Nadam, init, grads)
    assert_same(fused, builtin, "Nadam in a Session")
    cache = [w for w in builtin[1] if np.ndim(w) == 0 and w != 3]
    assert np.isclose(cache[0], 0.0912, atol=1e-4)


# ---- 6 (and the TF1 sweep): sparse and dense bits in every mode ---------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,cfg", LEGACY_SPARSE, ids=SPARSE_IDS)
def test_legacy_sparse_bit_identical_in_every_mode(rng, name, cfg, mode):
    """Every legacy class's default sparse update gives tf_keras' bits
    (duplicate indices included): params and every optimizer variable ``==``."""
    init, grads = _data(rng, np.float32, steps=4)
    fused = run_legacy(mode, lambda: getattr(fl, name)(**cfg), init, grads, _sparse)
    builtin = run_legacy(mode, lambda: getattr(L, name)(**cfg), init, grads, _sparse)
    assert_same(fused, builtin, f"{name} {cfg} sparse, {mode}")
    assert not np.array_equal(fused[0][0], init[0])


@pytest.mark.parametrize("name", ["Adam", "Adamax"])
def test_legacy_sparse_bit_identical_float64_and_larger(rng, name):
    """The issue's case: an embedding, many steps (float64 too)."""
    for dtype in (np.float32, np.float64):
        init, grads = _data(rng, dtype, steps=12, shapes=[(200, 16)])
        to = _embedding_grads(rng)
        fused = run_legacy("function", getattr(fl, name), init, grads, to)
        builtin = run_legacy("function", getattr(L, name), init, grads, to)
        assert_same(fused, builtin, f"{name} {dtype.__name__}")


def _embedding_grads(rng):
    idx = rng.integers(0, 200, size=(64,))

    def make(gs):
        return [tf.IndexedSlices(tf.constant(g[idx]), tf.constant(idx)) for g in gs]

    return make


@pytest.mark.parametrize("mode", ["graph"])
@pytest.mark.parametrize("name", LEGACY)
def test_legacy_dense_bit_identical_in_a_session(rng, name, mode):
    """TF1 graph mode (eager and tf.function: tests/test_legacy.py)."""
    cfg = dict(learning_rate=1.0) if name == "Adadelta" else {}
    init, grads = _data(rng, np.float32, steps=3)
    fused = run_legacy(mode, lambda: getattr(fl, name)(**cfg), init, grads)
    builtin = run_legacy(mode, lambda: getattr(L, name)(**cfg), init, grads)
    assert_same(fused, builtin, f"{name} dense, {mode}")


# ---- 3: complex variables ------------------------------------------------------------


def _builtin_handles(mode, name, dtype, sparse, rng):
    init, grads = _data(rng, dtype, steps=2)
    try:
        run_legacy(mode, getattr(L, name), init, grads, _sparse if sparse else _dense)
    except (tf.errors.OpError, TypeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", LEGACY)
def test_legacy_complex_variables_as_the_builtin(rng, name, mode, sparse):
    """complex64/complex128: the built-in's update runs (after one warning);
    where tf_keras trains complex variables, the same numbers; nothing fails
    that does not fail in the built-in."""
    for dtype in (np.complex64, np.complex128):
        if not _builtin_handles(mode, name, dtype, sparse, rng):
            continue  # (tf_keras itself has no such update: Adamax's maximum, ...)
        to = _sparse if sparse else _dense
        # A float32 variable beside the complex ones: its group stays fused.
        init, grads = _data(rng, dtype, steps=3)
        f_init, f_grads = _data(rng, np.float32, steps=3, shapes=[(3,)])
        init, grads = init + f_init, [g + fg for g, fg in zip(grads, f_grads)]

        def to_mixed(gs, to=to):
            return to(gs[:-1]) + [tf.constant(gs[-1])]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fused = run_legacy(mode, getattr(fl, name), init, grads, to_mixed)
        builtin = run_legacy(mode, getattr(L, name), init, grads, to_mixed)
        assert_same(fused, builtin, f"{name} {dtype.__name__}")


def test_complex_fallback_warns_once():
    _tf_context._fallback_warned.clear()
    v = tf.Variable(tf.ones([3], tf.complex64))
    opt = fl.Adam()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.apply_gradients([(tf.ones([3], tf.complex64), v)])
        opt.apply_gradients([(tf.ones([3], tf.complex64), v)])
    assert len([w for w in caught if "complex64" in str(w.message)]) == 1


KERAS_COMPLEX = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("name", KERAS_COMPLEX)
def test_keras_complex_variables_as_the_builtin(rng, name, use_function):
    for dtype in (np.complex64, np.complex128):
        init, grads = _data(rng, dtype, steps=3)
        results = []
        for cls in (getattr(fk, name), getattr(keras.optimizers, name)):
            try:
                results.append(_run_keras(cls, init, grads, use_function))
            except (tf.errors.OpError, TypeError, ValueError) as e:
                results.append(e)
        if isinstance(results[1], Exception):
            continue  # Keras itself cannot (its own error, not fusedopt's)
        assert not isinstance(results[0], Exception), results[0]
        assert_same(results[0], results[1], f"keras {name} {dtype.__name__}")


def _run_keras(make_opt, init, grads, use_function, to_grads=_dense, **kwargs):
    opt = make_opt(**kwargs)
    vs = [tf.Variable(v) for v in init]

    def step(gs):
        opt.apply(gs, vs)

    if use_function:
        step = tf.function(step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for gs in grads:
            step(to_grads(gs))
    return [v.numpy() for v in vs], [w.numpy() for w in opt.variables]


# ---- 4: IndexedSlices whose dense_shape is not the variable's ------------------------


def _odd_dense_shape(gs, rows=ROWS):
    # dense_shape 3 rows too many (the issue: (3,) for a (1,) variable).
    out = []
    for g in gs:
        idx = np.array([r for r in rows if r < g.shape[0]], np.int64)
        shape = (g.shape[0] + 3,) + g.shape[1:]
        out.append(tf.IndexedSlices(tf.constant(g[idx]), tf.constant(idx),
                                    tf.constant(shape, tf.int64)))
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["Adam", "SGD", "Ftrl", "RMSprop"])
def test_legacy_dense_shape_unlike_the_variable_is_accepted(rng, name, mode):
    init, grads = _data(rng, np.float32, steps=3)
    # A dense variable beside: two groups, so the step's checks run too.
    fused = run_legacy(mode, getattr(fl, name), init, grads,
                       lambda gs: _odd_dense_shape(gs[:2]) + _dense(gs[2:]))
    builtin = run_legacy(mode, getattr(L, name), init, grads,
                         lambda gs: _odd_dense_shape(gs[:2]) + _dense(gs[2:]))
    assert_same(fused, builtin, f"{name} odd dense_shape, {mode}")


def test_legacy_issue_example_dense_shape():
    v = tf.Variable([1.0])
    g = tf.IndexedSlices(tf.constant([0.5]), tf.constant([0]), tf.constant([3]))
    fl.SGD(0.1).apply_gradients([(g, v)])
    w = tf.Variable([1.0])
    L.SGD(0.1).apply_gradients([(g, w)])
    assert v.numpy()[0] == w.numpy()[0] == np.float32(1.0) - np.float32(0.05)


@pytest.mark.parametrize("family", ["legacy", "keras"])
@pytest.mark.parametrize("bad", ["row shape", "index out of range", "negative index"])
def test_what_cannot_be_applied_is_still_an_error(family, bad):
    table = tf.Variable(tf.ones([6, 2]))
    dense = tf.Variable(tf.ones([3]))
    if bad == "row shape":
        g = tf.IndexedSlices(tf.ones([2, 3]), tf.constant([0, 1]), tf.constant([6, 3]))
    elif bad == "index out of range":
        g = tf.IndexedSlices(tf.ones([2, 2]), tf.constant([0, 6]), tf.constant([9, 2]))
    else:
        g = tf.IndexedSlices(tf.ones([2, 2]), tf.constant([-1, 2]), tf.constant([6, 2]))
    before = table.numpy().copy(), dense.numpy().copy()
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        if family == "legacy":
            fl.Adam().apply_gradients([(g, table), (tf.ones([3]), dense)])
        else:
            fk.Adam().apply([g, tf.ones([3])], [table, dense])
    np.testing.assert_array_equal(table.numpy(), before[0])
    np.testing.assert_array_equal(dense.numpy(), before[1])


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("name", ["Adam", "SGD", "Adagrad", "Lion"])
def test_keras_dense_shape_unlike_the_variable_is_accepted(rng, name, use_function):
    init, grads = _data(rng, np.float32, steps=3)
    # (Unique rows: Keras 3's own update of duplicate rows is not the
    # densified gradient's, e.g. Adam squares each duplicate before summing.)
    rows = (0, 2, 3)
    to = lambda gs: _odd_dense_shape(gs[:2], rows) + _dense(gs[2:])  # noqa: E731
    fused = _run_keras(getattr(fk, name), init, grads, use_function, to)
    plain = lambda gs: _sparse(gs[:2], rows) + _dense(gs[2:])  # noqa: E731
    builtin = _run_keras(getattr(keras.optimizers, name), init, grads, use_function, plain)
    fused_plain = _run_keras(getattr(fk, name), init, grads, use_function, plain)
    assert_same(fused, fused_plain, f"keras {name}: dense_shape ignored")
    for x, y in zip(fused[0], builtin[0]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# ---- 7: fusedopt.keras with NumPy gradients --------------------------------------------

KERAS_ALL = ["SGD", "Adam", "AdamW", "Nadam", "Adamax", "RMSprop", "Adagrad", "Adadelta", "Ftrl",
             "Lion", "Lamb", "ScheduleFreeAdamW", "Adafactor"]


@pytest.mark.parametrize("form", ["numpy", "list", "keras_variable"])
@pytest.mark.parametrize("name", KERAS_ALL)
def test_keras_gradients_that_are_not_tf_tensors(rng, name, form):
    """Every form of gradient Keras' optimizers take, with weight decay (two
    groups: the step's checks read the gradients' shapes)."""
    init, grads = _data(rng, np.float32, steps=2, shapes=[(4, 3), (5,)])
    convert = {"numpy": lambda gs: list(gs),
               "list": lambda gs: [g.tolist() for g in gs],
               "keras_variable": lambda gs: [keras.Variable(g) for g in gs]}[form]
    kwargs = dict(weight_decay=0.01)

    def run(cls, to):
        opt = cls(**kwargs)
        vs = [keras.Variable(v, name=f"v{i}") for i, v in enumerate(init)]
        opt.exclude_from_weight_decay(var_list=[vs[1]])
        for gs in grads:
            opt.apply(to(gs), vs)
        return [v.numpy() for v in vs], [w.numpy() for w in opt.variables]

    fused = run(getattr(fk, name), convert)
    builtin = run(getattr(keras.optimizers, name), lambda gs: [tf.constant(g) for g in gs])
    assert_same(fused, builtin, f"keras {name} {form} gradients")


# ---- the OptimizerV2 sweep ---------------------------------------------------------------


def _loss(vs):
    return sum(tf.reduce_sum(tf.square(v - 0.3)) for v in vs)


SCENARIOS = ["minimize_callables", "lr_setter", "clipnorm", "clipvalue", "global_clipnorm",
             "resource_apply_hooks"]


def _scenario(scenario, mod, name):
    """(make_opt, program) for one behaviour."""
    kw = dict(learning_rate=1.0) if name == "Adadelta" else {}
    apply = lambda opt, vs, gs: opt.apply_gradients(zip(gs, vs))  # noqa: E731
    if scenario == "minimize_callables":
        lr = kw.pop("learning_rate", 0.01)
        make = lambda: getattr(mod, name)(learning_rate=lambda: lr, **kw)  # noqa: E731
        return make, lambda opt, vs, gs: opt.minimize(lambda: _loss(vs), var_list=lambda: vs)
    if scenario == "lr_setter":
        def make():
            opt = getattr(mod, name)(**kw)
            opt.learning_rate = 0.05  # hyperparameter setters
            if "beta_1" in opt._hyper:
                opt.beta_1 = 0.8
            if "rho" in opt._hyper:
                opt.rho = 0.8
            return opt

        def program(opt, vs, gs):
            if tf.executing_eagerly() and opt._hypers_created:
                opt.learning_rate = 0.02  # once the hyperparameters are variables
            return opt.apply_gradients(zip(gs, vs))

        return make, program
    if scenario in ("clipnorm", "clipvalue", "global_clipnorm"):
        return lambda: getattr(mod, name)(**{scenario: 0.5}, **kw), apply

    def hooks(opt, vs, gs):  # resource_apply_hooks, called directly
        opt._create_all_weights(vs)
        ops = [opt._resource_apply_dense(gs[0], vs[0], None)]
        g = gs[1]
        ops.append(opt._resource_apply_sparse(g[:2], vs[1], tf.constant([1, 4], tf.int64), None))
        return tf.group([o for o in ops if o is not None]) if not tf.executing_eagerly() else None

    return lambda: getattr(mod, name)(**kw), hooks


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("name", LEGACY)
def test_optimizer_v2_behaviour_as_the_builtin(rng, name, scenario, mode):
    init, grads = _data(rng, np.float32, steps=3)
    make, program = _scenario(scenario, L, name)
    try:
        builtin = run_legacy(mode, make, init, grads, program=program)
    except (AttributeError, KeyError, tf.errors.OpError):
        # tf_keras itself cannot (its SGD without momentum has no
        # _resource_apply_sparse; its Nadam's hooks need _prepare first).
        assert scenario == "resource_apply_hooks" and name in ("SGD", "Nadam")
        return
    make, program = _scenario(scenario, fl, name)
    fused = run_legacy(mode, make, init, grads, program=program)
    assert_same(fused, builtin, f"{name} {scenario} {mode}")


@pytest.mark.parametrize("name", LEGACY)
def test_config_slots_variables_and_weights_as_the_builtin(rng, name):
    """get_config/from_config, slot names and values, variables(),
    get_weights/set_weights (then training on: the same numbers)."""
    cfg = dict(learning_rate=0.02, clipnorm=1.0)
    init, grads = _data(rng, np.float32, steps=4)
    runs = {}
    for mod in (fl, L):
        opt = getattr(mod, name).from_config(getattr(mod, name)(**cfg).get_config())
        assert type(opt) is getattr(mod, name)
        vs = [tf.Variable(v) for v in init]
        for gs in grads[:2]:
            opt.apply_gradients(zip(_dense(gs), vs))
        runs[mod] = opt, vs
    (fo, fv), (bo, bv) = runs[fl], runs[L]
    assert fo.get_config() == bo.get_config()
    assert fo.get_slot_names() == bo.get_slot_names()
    for a, b in zip(fv, bv):
        for slot in bo.get_slot_names():
            np.testing.assert_array_equal(fo.get_slot(a, slot).numpy(), bo.get_slot(b, slot).numpy())
    assert [w.name for w in fo.variables()] == [w.name for w in bo.variables()]
    weights = bo.get_weights()
    for x, y in zip(fo.get_weights(), weights):
        np.testing.assert_array_equal(x, y)
    # set_weights: the fused one takes the built-in's state and trains on.
    fo.set_weights([w * 0.5 if np.ndim(w) else w for w in weights])
    bo.set_weights([w * 0.5 if np.ndim(w) else w for w in weights])
    for gs in grads[2:]:
        fo.apply_gradients(zip(_dense(gs), fv))
        bo.apply_gradients(zip(_dense(gs), bv))
    assert_same(([v.numpy() for v in fv], fo.get_weights()),
                ([v.numpy() for v in bv], bo.get_weights()), f"{name} after set_weights")


@pytest.mark.parametrize("name", ["Adam", "RMSprop"])
def test_legacy_default_sparse_under_xla_is_the_builtins(rng, name):
    """Inside XLA compilation the default sparse update runs tf_keras' own
    sparse ops (compiled): its bits. (Dense variables run the fused lowering,
    whose bits are the uncompiled op's, not those of XLA's lowering of TF's
    training ops: tests/test_xla.py.)"""
    init, grads = _data(rng, np.float32, steps=3, shapes=SHAPES[:2])

    def run(mod):
        opt = getattr(mod, name)()
        vs = [tf.Variable(v) for v in init]

        @tf.function(jit_compile=True)
        def step(gs):
            opt.apply_gradients(zip(gs, vs))

        for gs in grads:
            step(_sparse(gs))
        return [v.numpy() for v in vs], [w.numpy() for w in opt.variables()]

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # (no fallback warning)
        fused = run(fl)
    assert_same(fused, run(L), f"{name} sparse under XLA")
