"""fusedopt.legacy (tf_keras OptimizerV2) against tf_keras' legacy built-ins:
numbers, slots, configs, checkpoints, save/load, multi-tensor calls, XLA,
sparse semantics; AdamW/Lion/Lamb against the float64 references."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import tensorflow as tf

tf_keras = pytest.importorskip("tf_keras")  # a test extra: installed by scripts/setup_env.sh

import fusedopt  # noqa: E402
import fusedopt.legacy as fl  # noqa: E402
import reference as ref  # noqa: E402
from conftest import assert_close  # noqa: E402
from tf_keras.optimizers import legacy as L  # noqa: E402

STEPS = 20
SHAPES = [(7, 5), (13,), (3, 4, 2), (1,)]

CASES = [
    ("SGD", {}), ("SGD", dict(momentum=0.9)), ("SGD", dict(momentum=0.9, nesterov=True)),
    ("SGD", dict(learning_rate=0.05, decay=0.01)),
    ("Adam", {}), ("Adam", dict(amsgrad=True, epsilon=1e-3)),
    ("Adam", dict(learning_rate=tf_keras.optimizers.schedules.ExponentialDecay(0.01, 5, 0.5))),
    ("Nadam", {}), ("Nadam", dict(beta_1=0.8)),
    ("Adamax", {}),
    ("RMSprop", {}), ("RMSprop", dict(epsilon=1e-2)), ("RMSprop", dict(momentum=0.9)), ("RMSprop", dict(centered=True)),
    ("RMSprop", dict(centered=True, momentum=0.5, epsilon=1e-3)),
    ("Adagrad", {}), ("Adagrad", dict(initial_accumulator_value=0.0, epsilon=1e-2)),
    ("Adadelta", dict(learning_rate=1.0)),
    ("Ftrl", dict(l1_regularization_strength=0.01, l2_regularization_strength=0.1, beta=0.5)),
    ("Ftrl", dict(l2_shrinkage_regularization_strength=0.05, learning_rate_power=-0.7)),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in c.items() if k != 'learning_rate') or 'default'}"
       for n, c in CASES]


def _data(rng, dtype, steps=STEPS):
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    return init, grads


def _sparse(grads_np, rows=(0, 2, 0)):
    """IndexedSlices with a duplicate row (and rows other than the listed untouched)."""
    idx = np.array([r for r in rows], np.int64)
    out = []
    for g in grads_np:
        n = g.shape[0]
        i = idx[idx < n]
        out.append(tf.IndexedSlices(tf.constant(g[i]), tf.constant(i), tf.constant(g.shape, tf.int64)))
    return out


def _train(opt, init, grads, *, sparse=False, jit=None):
    vs = [tf.Variable(v) for v in init]

    def step(gs):
        opt.apply_gradients(zip(gs, vs))

    if jit is not None:
        step = tf.function(step, jit_compile=jit)
    for gs in grads:
        step(_sparse(gs) if sparse else [tf.constant(g) for g in gs])
    return vs


def _compare(fused_opt, builtin_opt, fused_vars, builtin_vars, dtype, cond=50.0):
    for a, b in zip(fused_vars, builtin_vars):
        assert_close(a.numpy(), b.numpy(), dtype, f"variable {a.name}", cond=cond)
    fw, bw = fused_opt.variables(), builtin_opt.variables()
    assert [w.name for w in fw] == [w.name for w in bw]
    for a, b in zip(fw, bw):
        assert a.shape == b.shape
        assert_close(a.numpy(), b.numpy(), dtype, f"optimizer variable {b.name}", cond=cond)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("name,cfg", CASES, ids=IDS)
def test_matches_builtin(rng, name, cfg, sparse):
    """20 steps in a tf.function: params and every slot within float32 tolerance
    (times the step count), the same config and the same slot names."""
    init, grads = _data(rng, np.float32)
    fused, builtin = getattr(fl, name)(**cfg), getattr(L, name)(**cfg)
    a = _train(fused, init, grads, sparse=sparse, jit=False)
    b = _train(builtin, init, grads, sparse=sparse, jit=False)
    _compare(fused, builtin, a, b, "float32")
    assert fused.get_config() == builtin.get_config()
    # The updates moved the variables (a test that cannot fail is a defect).
    assert not np.allclose(a[0].numpy(), init[0])


@pytest.mark.parametrize("name,cfg", [CASES[i] for i in (1, 4, 12, 15, 18)],
                         ids=[IDS[i] for i in (1, 4, 12, 15, 18)])
def test_matches_builtin_float64_and_eager(rng, name, cfg):
    init, grads = _data(rng, np.float64, steps=8)
    fused, builtin = getattr(fl, name)(**cfg), getattr(L, name)(**cfg)
    a = _train(fused, init, grads)  # eager: the per-call path of _distributed_apply
    b = _train(builtin, init, grads)
    # The built-in rounds its hyperparameters through float32 variables, as
    # the fused path does, so float64 agrees to float64 precision.
    _compare(fused, builtin, a, b, "float64", cond=1e3)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adagrad", "Ftrl"])
def test_float16_tracks_the_builtin_in_float32(rng, name):
    """float16 variables: the fused kernels compute in float32 and round the
    stored state once per step, so they track the built-in run in float32 on
    the same inputs within float16 tolerance. (tf_keras' own float16 update
    computes in float16, where Adam's second moments underflow: no reference.)"""
    cfg = dict(momentum=0.9) if name == "SGD" else {}
    init, grads = _data(rng, np.float16, steps=5)
    grads = [[g * np.float16(0.1) for g in gs] for gs in grads]
    fused = getattr(fl, name)(**cfg)
    a = _train(fused, init, grads, jit=False)
    builtin = getattr(L, name)(**cfg)
    b = _train(builtin, [v.astype(np.float32) for v in init],
               [[g.astype(np.float32) for g in gs] for gs in grads], jit=False)
    assert a[0].dtype == tf.float16
    _compare(fused, builtin, a, b, "float16", cond=10.0)


def test_nadam_sparse_builtin_semantics_or_fused_modes(rng):
    """Nadam's built-in sparse update decays every slot row but moves only the
    listed rows; by default fusedopt keeps it, and the fused modes are opt-in."""
    init, grads = _data(rng, np.float32, steps=5)
    b = _train(L.Nadam(), init, grads, sparse=True, jit=False)
    a = _train(fl.Nadam(), init, grads, sparse=True, jit=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    lazy = _train(fl.Nadam(sparse_mode="lazy"), init, grads, sparse=True, jit=False)
    # Lazy: rows never listed are untouched.
    np.testing.assert_array_equal(lazy[0].numpy()[1], init[0][1])
    exact = _train(fl.Nadam(sparse_mode="exact"), init, grads, sparse=True, jit=False)
    dense_grads = [[np.zeros_like(g) for g in gs] for gs in grads]
    for gs, dg in zip(grads, dense_grads):
        for g, d in zip(gs, dg):
            for r in (0, 2, 0):
                if r < g.shape[0]:
                    d[r] += g[r]
    dense = _train(fl.Nadam(), init, dense_grads, jit=False)
    for x, y in zip(exact, dense):
        assert_close(x.numpy(), y.numpy(), "float32", cond=10)


@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_momentum_lazy_sparse_runs_the_training_ops_arithmetic(rng, centered):
    """With momentum the built-in's sparse update is ResourceSparseApply(Centered)RMSProp:
    the dense training op's arithmetic on the listed rows. sparse_mode="lazy" runs that
    arithmetic fused (it used to be refused as tf_keras' momentum-free sparse form); the
    bits differ only by the op's per-row packet rsqrt, so the check is a tolerance."""
    init, grads = _data(rng, np.float32, steps=5)
    hp = dict(learning_rate=0.01, momentum=0.9, centered=centered)
    fused = _train(fl.RMSprop(sparse_mode="lazy", **hp), init, grads, sparse=True, jit=False)
    builtin = _train(L.RMSprop(**hp), init, grads, sparse=True, jit=False)
    for x, y, x0 in zip(fused, builtin, init):
        assert_close(x.numpy(), y.numpy(), "float32", cond=50)
        if x0.shape[0] > 2:  # row 1 is never listed: untouched, as the built-in leaves it
            np.testing.assert_array_equal(x.numpy()[1], x0[1])
        assert not np.array_equal(x.numpy()[0], x0[0])


def _reference_run(name, init, grads, hp, lr=0.01):
    state = [dict() for _ in init]
    out = [v.astype(np.float64) for v in init]
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(gs):
            g = g.astype(np.float64)
            s = state[i]
            if name == "AdamW":
                s.setdefault("m", np.zeros_like(g)), s.setdefault("v", np.zeros_like(g))
                out[i], s["m"], s["v"], _ = ref.adam_step(out[i], g, lr, s["m"], s["v"], t, **hp)
            elif name == "Lion":
                s.setdefault("m", np.zeros_like(g))
                out[i], s["m"] = ref.lion_step(out[i], g, lr, s["m"], **hp)
            else:
                s.setdefault("m", np.zeros_like(g)), s.setdefault("v", np.zeros_like(g))
                out[i], s["m"], s["v"] = ref.lamb_step(out[i], g, lr, s["m"], s["v"], t, **hp)
    return out, state


@pytest.mark.parametrize("name,hp", [
    ("AdamW", dict(weight_decay=0.004)), ("AdamW", dict(weight_decay=0.1, beta_1=0.8)),
    ("Lion", dict(weight_decay=0.0)), ("Lion", dict(weight_decay=0.05)),
    ("Lamb", dict(weight_decay=0.0)), ("Lamb", dict(weight_decay=0.01)),
])
def test_new_optimizers_against_float64_reference(rng, name, hp):
    init, grads = _data(rng, np.float64, steps=10)
    if name == "Lion":
        # sign() is discontinuous: keep the reference away from ties at 0.
        grads = [[g + np.sign(g) * 0.5 for g in gs] for gs in grads]
    opt = getattr(fl, name)(learning_rate=0.01, **hp)
    out = _train(opt, init, grads, jit=False)
    # OptimizerV2 keeps hyperparameters in float32 variables: the reference
    # gets the same float32-rounded values (epsilon stays a Python float).
    betas = dict(beta_1=0.9, beta_2=0.99 if name == "Lion" else 0.999)
    f32 = {k: float(np.float32(v)) for k, v in {**betas, **hp}.items()}
    expected, state = _reference_run(name, init, grads, f32, lr=float(np.float32(0.01)))
    for i, (a, e) in enumerate(zip(out, expected)):
        assert_close(a.numpy(), e, "float64", f"{name} var {i}", cond=1e4)
        for slot, value in state[i].items():
            assert_close(opt.get_slot(out[i], slot).numpy(), value, "float64", slot, cond=1e4)


@pytest.mark.parametrize("name", ["AdamW", "Lion", "Lamb", "Adam", "RMSprop"])
def test_jit_compile_runs_fused_with_the_same_numbers(rng, name):
    init, grads = _data(rng, np.float32, steps=6)
    if name == "Lion":
        grads = [[g + np.sign(g) * 0.5 for g in gs] for gs in grads]
    fusedopt._tf_context._xla_warned = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xla_opt = getattr(fl, name)()
        a = _train(xla_opt, init, grads, jit=True)
    b = _train(getattr(fl, name)(), init, grads, jit=False)
    for x, y in zip(a, b):
        assert_close(x.numpy(), y.numpy(), "float32", cond=50)
    # On the CPU the fused op lowers into XLA (tests/test_xla.py): no fallback.
    assert not [w for w in caught if "XLA compilation" in str(w.message)]


def _count_ops(opt, variables, grads, op_type):
    @tf.function
    def step():
        opt.apply_gradients(zip(grads, variables))

    graph = step.get_concrete_function().graph
    count = sum(1 for op in graph.get_operations() if op.type == op_type)
    for fn in graph._functions.values():
        count += sum(1 for n in fn.definition.node_def if n.op == op_type)
    return count


@pytest.mark.parametrize("name,op", [("Adam", "Adam"), ("SGD", "SGD"), ("Lamb", "Lamb"),
                                     ("Ftrl", "Ftrl"), ("RMSprop", "Rmsprop")])
def test_one_fused_call_per_dtype_group(name, op):
    variables = [tf.Variable(tf.ones([3, 2])) for _ in range(4)] + [
        tf.Variable(tf.ones([5], tf.float64)) for _ in range(3)]
    grads = [tf.ones_like(v) for v in variables]
    assert _count_ops(getattr(fl, name)(), variables, grads, f"Fusedopt>Apply{op}") == 2
    per_var = getattr(fl, name)(multi_tensor=False)
    assert _count_ops(per_var, variables, grads, f"Fusedopt>Apply{op}") == 7
    assert per_var.get_config()["multi_tensor"] is False


def test_multi_tensor_false_gives_the_same_numbers(rng):
    init, grads = _data(rng, np.float32, steps=5)
    a = _train(fl.Adam(), init, grads, jit=False)
    b = _train(fl.Adam(multi_tensor=False), init, grads, jit=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.parametrize("direction", ["builtin_to_fused", "fused_to_builtin"])
@pytest.mark.parametrize("name,cfg", [("Adam", dict(amsgrad=True)), ("RMSprop", dict(momentum=0.9)),
                                      ("Nadam", {}), ("Ftrl", {})])
def test_checkpoint_interchange(rng, tmp_path, name, cfg, direction):
    """3 steps with one class, save, restore into the other, 3 more steps: the
    same numbers as 6 steps with the first (slots restored, nothing lost)."""
    init, grads = _data(rng, np.float32, steps=6)
    first, second = (L, fl) if direction == "builtin_to_fused" else (fl, L)
    vs = [tf.Variable(v) for v in init]
    opt = getattr(first, name)(**cfg)
    for gs in grads[:3]:
        opt.apply_gradients(zip([tf.constant(g) for g in gs], vs))
    path = tf.train.Checkpoint(optimizer=opt, vs=vs).save(str(tmp_path / "ckpt"))

    vs2 = [tf.Variable(np.zeros_like(v)) for v in init]
    opt2 = getattr(second, name)(**cfg)
    ckpt = tf.train.Checkpoint(optimizer=opt2, vs=vs2)
    ckpt.restore(path).assert_existing_objects_matched()
    for gs in grads[3:]:
        opt2.apply_gradients(zip([tf.constant(g) for g in gs], vs2))
    assert int(opt2.iterations.numpy()) == 6

    expected = _train(getattr(first, name)(**cfg), init, grads)
    for a, b in zip(vs2, expected):
        assert_close(a.numpy(), b.numpy(), "float32", cond=20)


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16).astype("float32"), y


def _fit(opt, epochs=3, jit_compile=False):
    x, y = _digits()
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.layers.Dense(32, activation="relu", input_shape=(64,)),
        tf_keras.layers.Dense(10),
    ])
    model.compile(optimizer=opt, jit_compile=jit_compile, metrics=["accuracy"],
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=False)
    return model, hist.history


@pytest.mark.parametrize("name,cfg", [("Adam", dict(learning_rate=0.01)),
                                      ("SGD", dict(learning_rate=0.1, momentum=0.9)),
                                      ("RMSprop", dict(learning_rate=0.005, clipnorm=1.0)),
                                      ("Adagrad", dict(learning_rate=0.1))])
def test_fit_on_digits_matches_builtin(name, cfg):
    model, fused = _fit(getattr(fl, name)(**cfg))
    _, builtin = _fit(getattr(L, name)(**cfg))
    np.testing.assert_allclose(fused["loss"], builtin["loss"], rtol=1e-4)
    assert fused["accuracy"][-1] > 0.85
    assert type(model.optimizer) is getattr(fl, name)


def test_fit_with_jit_compile():
    fusedopt._tf_context._xla_warned = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, fused = _fit(fl.Adam(learning_rate=0.01), epochs=2, jit_compile=True)
    _, builtin = _fit(L.Adam(learning_rate=0.01), epochs=2, jit_compile=True)
    np.testing.assert_allclose(fused["loss"], builtin["loss"], rtol=1e-4)


def test_save_and_load_model_without_custom_objects(tmp_path):
    model, _ = _fit(fl.Adam(learning_rate=0.01, sparse_mode="lazy"), epochs=1)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    assert type(loaded.optimizer) is fl.Adam
    assert loaded.optimizer.sparse_mode == "lazy"
    for a, b in zip(model.optimizer.variables(), loaded.optimizer.variables()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_constraint_is_applied_after_the_fused_update():
    v = tf.Variable(tf.ones([4]), constraint=lambda x: tf.clip_by_value(x, 0.0, 0.5))
    w = tf.Variable(tf.ones([4]))
    opt = fl.SGD(learning_rate=0.1)
    tf.function(lambda: [opt.apply_gradients([(tf.ones([4]), v), (tf.ones([4]), w)])][:0])()
    np.testing.assert_allclose(v.numpy(), 0.5)
    np.testing.assert_allclose(w.numpy(), 0.9)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="sparse_mode"):
        fl.Adam(sparse_mode="sometimes")
    with pytest.raises(ValueError, match="no lazy sparse mode"):
        fl.Lamb(sparse_mode="lazy")
    with pytest.raises(TypeError):
        fl.Adam(not_an_argument=1)


def test_bad_input_changes_nothing():
    v = tf.Variable(tf.ones([4]))
    opt = fl.Adam()
    opt.apply_gradients([(tf.ones([4]), v)])
    before = [w.numpy().copy() for w in opt.variables()] + [v.numpy().copy()]
    bad = tf.IndexedSlices(tf.ones([1]), tf.constant([7], tf.int64), tf.constant([4], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="7"):
        tf.function(lambda: [opt.apply_gradients([(bad, v)])][:0])()
    after = [w.numpy() for w in opt.variables()][1:] + [v.numpy()]
    for a, b in zip(before[1:], after):
        np.testing.assert_array_equal(a, b)


def test_unsupported_strategy_is_refused():
    strategy = tf.distribute.experimental.CentralStorageStrategy()
    with strategy.scope():
        v = tf.Variable(tf.ones([4]))
        opt = fl.Adam()

    @tf.function
    def step():
        strategy.run(lambda: opt.apply_gradients([(tf.ones([4]), v)]))

    with pytest.raises(NotImplementedError, match="fusedopt optimizers do not support CentralStorageStrategy"):
        step()


def _run_python(code: str, **env):
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=300)


def test_import_error_without_tf_keras_names_the_fix():
    r = _run_python("""
        import sys
        sys.modules["tf_keras"] = None  # as if tf-keras were not installed
        try:
            import fusedopt.legacy
        except ImportError as e:
            print("IMPORTERROR", e)
        import fusedopt.keras, fusedopt.ops  # the rest of fusedopt still works
        print("REST OK", fusedopt.keras.Adam.__name__)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "IMPORTERROR" in r.stdout and 'pip install "fusedopt[legacy]"' in r.stdout
    assert "REST OK Adam" in r.stdout


def test_tf_keras_through_tf_use_legacy_keras():
    r = _run_python("""
        import numpy as np, tensorflow as tf
        import fusedopt.legacy as fl
        assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
        tf.keras.utils.set_random_seed(0)
        x = np.random.rand(256, 8).astype("float32"); y = x.sum(1, keepdims=True)
        m = tf.keras.Sequential([tf.keras.layers.Dense(16, activation="relu", input_shape=(8,)),
                                 tf.keras.layers.Dense(1)])
        m.compile(optimizer=fl.Adam(0.01), loss="mse")
        h = m.fit(x, y, epochs=20, verbose=0).history["loss"]
        print("LOSS", h[0], h[-1])
    """, TF_USE_LEGACY_KERAS="1")
    assert r.returncode == 0, r.stderr[-2000:]
    first, last = map(float, r.stdout.split("LOSS")[1].split())
    assert last < first / 10


def test_resource_apply_hooks_call_the_fused_ops():
    v = tf.Variable(tf.ones([6, 2]))
    opt = fl.Adam()
    opt._create_all_weights([v])

    @tf.function
    def hooks():
        opt._resource_apply_dense(tf.ones([6, 2]), v, None)
        opt._resource_apply_sparse(tf.ones([2, 2]), v, tf.constant([1, 3]), None)

    types = {op.type for op in hooks.get_concrete_function().graph.get_operations()}
    assert {"Fusedopt>ApplyAdam", "Fusedopt>SparseApplyAdam"} <= types


# Bit identity with tf_keras' built-ins (float32 and float64, eager and
# tf.function, params and every optimizer variable ``==``; RMSprop with
# momentum, Adadelta, Adamax, Nadam and Ftrl through the ops'
# tf_training_op_form), every case above and Ftrl's other powers: integer
# ones, where TF's training ops square repeatedly (Note [TF pow]), and one
# above 7, where they do not.
LEGACY_EXACT = [c for c in CASES
                if c[0] in ("SGD", "Adam", "Adagrad", "RMSprop", "Adadelta", "Adamax", "Nadam",
                            "Ftrl")]
LEGACY_EXACT += [
    ("Ftrl", dict(learning_rate_power=-2.0, l2_regularization_strength=0.1)),
    ("Ftrl", dict(learning_rate_power=-3.0, l1_regularization_strength=0.01, beta=0.2)),
    ("Ftrl", dict(learning_rate_power=-8.0, l2_shrinkage_regularization_strength=0.05)),
    ("Ftrl", dict(learning_rate_power=0.0)),
]


@pytest.mark.parametrize("jit", [False, None], ids=["function", "eager"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name,cfg", LEGACY_EXACT,
                         ids=[IDS[CASES.index(c)] if c in CASES else f"{c[0]}-{c[1]}"
                              for c in LEGACY_EXACT])
def test_bit_identical_to_builtin(rng, name, cfg, dtype, jit):
    init, grads = _data(rng, dtype)
    fused, builtin = getattr(fl, name)(**cfg), getattr(L, name)(**cfg)
    a = _train(fused, init, grads, jit=jit)
    b = _train(builtin, init, grads, jit=jit)
    values = list(zip(a, b)) + list(zip(fused.variables(), builtin.variables()))
    for x, y in values:
        differ = int(np.sum(x.numpy() != y.numpy()))
        assert differ == 0, f"{name} {cfg}: {y.name} differs in {differ} of {x.numpy().size}"
    assert not np.array_equal(a[0].numpy(), init[0])
