"""All or nothing (Note [atomic steps] in fusedopt/_atomic.py): a step that
fails changes no variable and no optimizer variable (slots, iterations,
Nadam's u_product / momentum cache), for both families, eager and in a
tf.function, whichever group holds the bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import fusedopt.keras as fk
import fusedopt.legacy as fl

# (An IndexedSlices whose dense_shape is not the variable's is not bad input:
# the built-ins ignore dense_shape and use the indices, and so do the fused
# steps since issue #32: test_dense_shape_unlike_the_variable_is_accepted.)
BAD = ["bad index", "negative index", "bf16 group wrong shape", "row shape",
       "nan learning rate"]


def _model_vars(dtype_second=tf.float32):
    rng = np.random.default_rng(0)
    dense = tf.Variable(rng.standard_normal((4, 3)).astype(np.float32), name="dense")
    table = tf.Variable(rng.standard_normal((6, 2)).astype(np.float32), name="table")
    other = tf.Variable(tf.cast(rng.standard_normal((5,)), dtype_second), name="other")
    return [dense, table, other]


def _good_grads(vs):
    return [tf.ones_like(vs[0]) * 0.1,
            tf.IndexedSlices(tf.ones((2, 2)) * 0.2, tf.constant([1, 4]), tf.constant([6, 2])),
            tf.ones_like(vs[2]) * 0.3]


def _bad_grads(vs, bad):
    g = _good_grads(vs)
    if bad == "bad index":
        g[1] = tf.IndexedSlices(tf.ones((2, 2)), tf.constant([1, 6]), tf.constant([6, 2]))
    elif bad == "negative index":
        g[1] = tf.IndexedSlices(tf.ones((2, 2)), tf.constant([-1, 2]), tf.constant([6, 2]))
    elif bad == "bf16 group wrong shape":
        g[2] = tf.ones((4,), vs[2].dtype)
    elif bad == "dense_shape":
        g[1] = tf.IndexedSlices(tf.ones((2, 2)), tf.constant([1, 2]), tf.constant([7, 2]))
    elif bad == "row shape":
        g[1] = tf.IndexedSlices(tf.ones((2, 3)), tf.constant([1, 2]), tf.constant([6, 3]))
    return g


def _snapshot(values):
    return [np.array(v.numpy(), copy=True).tobytes() for v in values]


def _check(family, name, bad, use_function, **options):
    second = tf.bfloat16 if bad == "bf16 group wrong shape" else tf.float32
    vs = _model_vars(second)
    if name == "Muon":  # Keras' Muon sorts variables by their Keras path
        import keras

        vs = [keras.Variable(v.numpy(), dtype=v.dtype, name=v.name.split(":")[0]) for v in vs]
    if family == "keras":
        opt = getattr(fk, name)(learning_rate=0.01, **options)
        step = lambda grads: opt.apply(grads, vs)  # noqa: E731
        state = lambda: vs + list(opt.variables)  # noqa: E731
    else:
        opt = getattr(fl, name)(learning_rate=0.01)
        step = lambda grads: opt.apply_gradients(zip(grads, vs))  # noqa: E731
        state = lambda: vs + list(opt.variables())  # noqa: E731
    step(_good_grads(vs))  # builds the slots and moves every state off its initial value
    if options.get("gradient_accumulation_steps"):
        step(_good_grads(vs))  # an update step: the accumulators reset
        step(_good_grads(vs))  # accumulates: the next (failing) step would update
        accumulators = [a for a in opt._accumulated_gradients if a is not None]
        assert accumulators and all(np.any(a.numpy() != 0) for a in accumulators)
        assert {id(a) for a in accumulators} <= {id(x) for x in state()}
    lr = float(np.asarray(opt.learning_rate))
    if bad == "nan learning rate":  # a broken schedule
        if family == "keras":
            opt.learning_rate.assign(float("nan"))
        else:
            opt.learning_rate = float("nan")
    before = _snapshot(state())
    bad_grads = _bad_grads(vs, bad)
    if use_function:
        # The gradients are the function's arguments, so the checks that need
        # values (indices, dense_shape, the learning rate) run in the graph.
        @tf.function
        def compiled(grads):
            step(grads)

        run = lambda: compiled(bad_grads)  # noqa: E731
    else:
        run = lambda: step(bad_grads)  # noqa: E731
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        run()
    after = _snapshot(state())
    assert len(after) == len(before)
    for i, (a, b) in enumerate(zip(after, before)):
        assert a == b, f"{state()[i].name} changed by a failed step ({bad})"
    if bad == "nan learning rate":
        if family == "keras":
            opt.learning_rate.assign(lr)
        else:
            opt.learning_rate = lr
    step(_good_grads(vs))  # and the optimizer still works
    assert _snapshot(state())[0] != before[0]


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("name", ["Adam", "Nadam", "Muon", "Adafactor"])
def test_keras_failed_step_changes_nothing(name, bad, use_function):
    _check("keras", name, bad, use_function)


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("name", ["Adam", "Nadam"])
def test_keras_failed_accumulated_step_changes_nothing(name, bad, use_function):
    """With gradient accumulation, a failing update step leaves the
    accumulators (which Keras resets after the update) as they were."""
    _check("keras", name, bad, use_function, gradient_accumulation_steps=2)


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("bad", ["bad index", "nan learning rate"])
def test_keras_failed_step_leaves_ema_unchanged(bad, use_function):
    """EMA (and its overwrite of the model variables) follows the update: a
    failing step moves no average."""
    _check("keras", "Adam", bad, use_function, use_ema=True, ema_overwrite_frequency=1)


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("name", ["Adam", "Nadam"])
def test_legacy_failed_step_changes_nothing(name, bad, use_function):
    _check("legacy", name, bad, use_function)


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("family,name", [("keras", "Adam"), ("keras", "Nadam"),
                                         ("legacy", "Adam"), ("legacy", "Nadam")])
def test_dense_shape_unlike_the_variable_is_accepted(family, name, use_function):
    """A dense_shape of 7 rows for a 6-row table: the step runs as with the
    right dense_shape (the indices say where the rows go), as the built-in's."""
    results = []
    for dense_rows in (6, 7):
        vs = _model_vars()
        grads = _good_grads(vs)
        grads[1] = tf.IndexedSlices(grads[1].values, grads[1].indices,
                                    tf.constant([dense_rows, 2]))
        if family == "keras":
            opt = getattr(fk, name)(learning_rate=0.01)
            step = lambda g: [opt.apply(g, vs)][:0]  # noqa: E731
        else:
            opt = getattr(fl, name)(learning_rate=0.01)
            step = lambda g: [opt.apply_gradients(zip(g, vs))][:0]  # noqa: E731
        if use_function:
            step = tf.function(step)
        step(grads)
        step(grads)
        results.append(_snapshot(vs))
    assert results[0] == results[1]


def test_dense_steps_add_no_check_ops():
    """Known shapes are checked while tracing: a dense step's graph holds no
    assertion (the check costs nothing at run time)."""
    vs = [tf.Variable(tf.ones((100,))), tf.Variable(tf.ones((3, 4)))]
    opt = fk.Adam(learning_rate=0.01)
    opt.build(vs)
    fn = tf.function(lambda: opt.apply([tf.ones((100,)), tf.ones((3, 4))], vs))
    graph = fn.get_concrete_function().graph
    assert not [op for op in graph.get_operations() if op.type == "Assert"]


@pytest.mark.parametrize("bad", ["rms_rate", "weight_decay"])
def test_muon_update_hyperparameters_checked_before_its_momentum(bad):
    """Muon's Newton-Schulz path makes two op calls per group (momentum, then
    update): the update's hyperparameters are checked before the momentum is
    written."""
    import keras

    v = keras.Variable(np.ones((4, 3), np.float32), name="kernel")
    opt = fk.Muon(**{bad: float("nan")})
    opt.build([v])
    before = _snapshot([v] + list(opt.variables))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"'{bad}' must be finite"):
        opt.apply([tf.ones((4, 3))], [v])
    assert _snapshot([v] + list(opt.variables)) == before


def _adafactor_call(**over):
    v = tf.Variable(np.ones((4, 3), np.float32))
    slots = dict(r=[tf.Variable(np.zeros(4, np.float32))], c=[tf.Variable(np.zeros(3, np.float32))],
                 v=[tf.Variable(np.zeros((4, 3), np.float32))])
    kwargs = dict(slots, step=1)
    kwargs.update(over)
    watched = [v] + [x for xs in slots.values() for x in xs]
    return v, watched, kwargs


@pytest.mark.parametrize("bad,match", [
    (dict(learning_rate=float("nan")), "'lr' must be finite"),
    (dict(clip_threshold=0.0), "'clip_threshold' must be > 0"),
    (dict(epsilon_2=float("inf")), "'epsilon_2' must be finite"),
    (dict(step=0), "'step' must be >= 1"),
    (dict(r=[tf.Variable(np.zeros(3, np.float32))]), r"r\[0\].*shape \[3\]"),
    (dict(c=[tf.Variable(np.zeros((4, 3), np.float32))]), r"c\[0\].*shape \[4,3\]"),
    (dict(v=[tf.Variable(np.zeros(12, np.float32))]), r"v\[0\].*shape \[12\]"),
    (dict(grad=tf.ones((3, 4))), r"vars\[0\].*shape \[4,3\]"),
])
def test_adafactor_op_bad_input_writes_nothing(bad, match):
    import fusedopt.ops as fops

    v, watched, kwargs = _adafactor_call()
    lr = bad.pop("learning_rate", 0.01)
    grad = bad.pop("grad", tf.ones((4, 3)))
    kwargs.update(bad)
    watched += [x for k in ("r", "c", "v") if k in bad for x in bad[k]]
    before = _snapshot(watched)
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        fops.apply_adafactor([v], [grad], lr, **kwargs)
    assert _snapshot(watched) == before
