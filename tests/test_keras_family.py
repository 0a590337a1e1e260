"""fusedopt.keras.* against keras.optimizers.* of the same name."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import fusedopt.keras as fk
from conftest import assert_close, random_array, train_on_sparse_and_densified

# (class name, config) pairs; every class at its defaults plus its options.
CONFIGS = [
    ("Adam", {}),
    ("Adam", dict(learning_rate=0.01, amsgrad=True, weight_decay=0.01)),
    ("Adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-5, global_clipnorm=1.0)),
    ("AdamW", {}),
    ("AdamW", dict(learning_rate=0.01, weight_decay=0.05, amsgrad=True, clipnorm=0.5)),
    ("Nadam", {}),
    ("Nadam", dict(learning_rate=0.01, weight_decay=0.01, clipvalue=0.2)),
    ("Adamax", dict(learning_rate=0.01)),
    ("RMSprop", {}),
    ("RMSprop", dict(learning_rate=0.01, momentum=0.9)),
    ("RMSprop", dict(learning_rate=0.01, centered=True, rho=0.8)),
    ("RMSprop", dict(learning_rate=0.01, centered=True, momentum=0.5, weight_decay=0.01)),
    ("Adagrad", dict(learning_rate=0.05, initial_accumulator_value=0.2)),
    ("Adadelta", dict(learning_rate=1.0)),
    ("Ftrl", dict(learning_rate=0.05)),
    ("Ftrl", dict(learning_rate=0.05, learning_rate_power=-0.7, l1_regularization_strength=0.01,
                  l2_regularization_strength=0.02, l2_shrinkage_regularization_strength=0.01,
                  beta=0.1)),
    ("Lion", dict(learning_rate=0.001)),
    ("Lion", dict(learning_rate=0.001, weight_decay=0.1)),
    ("Lamb", dict(learning_rate=0.01)),
    ("Lamb", dict(learning_rate=0.01, weight_decay=0.01)),
    ("SGD", dict(learning_rate=0.05, momentum=0.9, nesterov=True)),
    ("ScheduleFreeAdamW", {}),
    ("ScheduleFreeAdamW", dict(learning_rate=0.01, warmup_steps=5, weight_decay=0.01,
                               clipvalue=0.5)),
    ("Adafactor", {}),
    ("Adafactor", dict(learning_rate=0.01, relative_step=False, weight_decay=0.01,
                       clip_threshold=0.5)),
    ("Muon", {}),
    ("Muon", dict(learning_rate=0.01, nesterov=False, adam_lr_ratio=0.5, rms_rate=None,
                  clipnorm=1.0)),
]


def _id(c):
    name, cfg = c
    return name + ("(" + ",".join(f"{k}={v}" for k, v in cfg.items()) + ")" if cfg else "")


def _config(opt):
    cfg = opt.get_config()
    cfg.pop("name")
    return cfg


@pytest.mark.parametrize("name_cfg", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_same_config(name_cfg):
    name, cfg = name_cfg
    ours, theirs = getattr(fk, name)(**cfg), getattr(keras.optimizers, name)(**cfg)
    assert isinstance(ours, getattr(keras.optimizers, name))
    assert _config(ours) == _config(theirs)
    assert type(getattr(fk, name).from_config(ours.get_config())) is getattr(fk, name)


def _train(cls, cfg, init, grads, use_function):
    opt = cls(**cfg)
    variables = [keras.Variable(x, name=f"w{i}") for i, x in enumerate(init)]
    if "weight_decay" in cfg:
        opt.exclude_from_weight_decay(var_list=[variables[-1]])

    def step(gs):
        opt.apply(gs, variables)

    if use_function:
        step = tf.function(step)
    for gs in grads:
        step([tf.constant(g) for g in gs])
    return opt, variables


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("name_cfg", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_same_numbers_and_slots_as_keras(rng, name_cfg, use_function):
    name, cfg = name_cfg
    shapes = [(7,), (33, 5), (), (2, 3, 4)]
    init = [random_array(rng, s, "float32").astype(np.float32) for s in shapes]
    grads = [[random_array(rng, s, "float32").astype(np.float32) for s in shapes] for _ in range(20)]
    ours, ov = _train(getattr(fk, name), cfg, init, grads, use_function)
    theirs, tv = _train(getattr(keras.optimizers, name), cfg, init, grads, use_function)
    # Ftrl's new_acc^p - acc^p cancels in float32, in Keras as in the kernel.
    cond = 30.0 if name == "Ftrl" else 3.0
    for a, b in zip(ov, tv):
        assert_close(a.numpy(), b.numpy(), "float32", a.name, cond)
    # Unnamed Keras variables get process-wide unique suffixes (variable_3).
    names = lambda o: [re.sub(r"variable(_\d+)?$", "variable", v.path.split("/", 1)[1])  # noqa: E731
                       for v in o.variables]
    assert names(ours) == names(theirs)
    for a, b in zip(ours.variables, theirs.variables):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert_close(a.numpy(), b.numpy(), "float32", a.path, cond)


def _count_ops(opt, variables, grads, op_type):
    @tf.function
    def step():
        opt.apply(grads, variables)

    graph = step.get_concrete_function().graph
    count = sum(1 for op in graph.get_operations() if op.type == op_type)
    for fn in graph._functions.values():
        count += sum(1 for n in fn.definition.node_def if n.op == op_type)
    return count


@pytest.mark.parametrize(
    "name,op",
    [("Adam", "Adam"), ("AdamW", "Adam"), ("Nadam", "Nadam"), ("Adamax", "Adamax"),
     ("RMSprop", "Rmsprop"), ("Adagrad", "Adagrad"), ("Adadelta", "Adadelta"), ("Ftrl", "Ftrl"),
     ("Lion", "Lion"), ("Lamb", "Lamb"), ("ScheduleFreeAdamW", "ScheduleFreeAdamW")],
)
def test_one_fused_call_per_dtype_group(name, op):
    variables = [keras.Variable(np.ones(s, np.float32)) for s in [(3,), (4, 5), (7,), ()]]
    variables += [keras.Variable(np.ones(s, np.float64)) for s in [(2,), (6,)]]
    grads = [tf.ones(v.shape, v.dtype) for v in variables]
    assert _count_ops(getattr(fk, name)(), variables, grads, f"Fusedopt>Apply{op}") == 2


def test_muon_fused_calls_per_group():
    """Muon: one Adam call per (dtype) group of its AdamW-path variables (rank
    != 2, embeddings), and one momentum call plus one update call per group of
    Muon-path matrices of equal sqrt(max(rows, cols))."""
    shapes = [(3,), (4, 5), (5, 4), (5, 3), (7,), (), (2, 3, 4)]
    variables = [keras.Variable(np.ones(s, np.float32)) for s in shapes]
    variables += [keras.Variable(np.ones(s, np.float64)) for s in [(2,), (6, 2)]]
    grads = [tf.ones(v.shape, v.dtype) for v in variables]
    count = lambda op: _count_ops(fk.Muon(), variables, grads, f"Fusedopt>Apply{op}")  # noqa: E731
    # AdamW path: float32 {(3,), (7,), (), (2, 3, 4)} and float64 {(2,)}.
    assert count("Adam") == 2
    # Muon path: float32 max-dim 5 {(4, 5), (5, 4), (5, 3)} and float64 {(6, 2)}.
    assert count("MuonMomentum") == 2
    assert count("Muon") == 2


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(1)])


def _data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((128, 10)).astype(np.float32)
    return x, (x @ rng.standard_normal((10, 1))).astype(np.float32)


@pytest.mark.parametrize("direction", ["keras_to_fused", "fused_to_keras"])
def test_checkpoint_interchange(tmp_path, direction):
    """A tf.train.Checkpoint written by one class restores into the other and
    training continues with the same numbers as never switching."""
    x, y = _data()
    first, second = ((keras.optimizers.Adam, fk.Adam) if direction == "keras_to_fused"
                     else (fk.Adam, keras.optimizers.Adam))
    model = _model()
    model.compile(optimizer=first(0.01, amsgrad=True), loss="mse")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(tmp_path / "ck"))

    # Continue with the same class (the reference) ...
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    expected = [w.numpy() for w in model.weights]
    # ... and with the other class restored from the checkpoint.
    restored = _model(seed=99)
    restored.compile(optimizer=second(0.01, amsgrad=True), loss="mse")
    restored.optimizer.build(restored.trainable_variables)
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).read(path).assert_consumed()
    restored.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    for a, b in zip(restored.weights, expected):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-6)


def test_weights_h5_and_keras_file_round_trip(tmp_path):
    x, y = _data()
    model = _model()
    model.compile(optimizer=fk.Lamb(0.01, weight_decay=0.01), loss="mse")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is fk.Lamb
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Continue training both: same numbers.
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_loss_scale_optimizer_skips_non_finite_steps():
    variables = [keras.Variable(np.ones(5, np.float32))]
    opt = keras.optimizers.LossScaleOptimizer(fk.Adam(0.1))
    opt.apply([tf.constant([1.0, 2.0, np.inf, 4.0, 5.0])], variables)
    np.testing.assert_array_equal(variables[0].numpy(), np.ones(5))  # skipped
    opt.apply([tf.ones(5) * opt.scale_loss(1.0)], variables)
    assert np.all(variables[0].numpy() < 1.0)  # a finite step applies (unscaled)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_policy_trains_like_builtin(policy):
    """Under mixed_float16, compile wraps the optimizer in a LossScaleOptimizer;
    the fused (inner) optimizer updates float32 variables from unscaled
    gradients. Under mixed_bfloat16 no loss scaling is involved."""
    x, y = _data()
    results = []
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        for cls in (fk.Adam, keras.optimizers.Adam):
            model = _model()
            model.compile(optimizer=cls(0.01), loss="mse")
            hist = model.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False)
            if policy == "mixed_float16":
                assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
                assert type(model.optimizer.inner_optimizer) is cls
            results.append(hist.history["loss"])
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    np.testing.assert_allclose(results[0], results[1], rtol=1e-3)
    assert results[0][-1] < results[0][0]


def test_from_keras_copies_config_and_state():
    x, y = _data()
    model = _model()
    model.compile(optimizer=keras.optimizers.RMSprop(0.01, momentum=0.9, centered=True), loss="mse")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    fused = fk.from_keras(model.optimizer)
    assert type(fused) is fk.RMSprop
    assert _config(fused) == _config(model.optimizer)
    for a, b in zip(fused.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert fk.from_keras(fused) is fused
    class Custom(keras.optimizers.SGD):
        pass

    with pytest.raises(ValueError, match="supported: keras.optimizers.SGD"):
        fk.from_keras(Custom())


# One configuration per class for model.fit on digits, with and without XLA.
FIT_CONFIGS = {
    "SGD": dict(learning_rate=0.1, momentum=0.9),
    "Adam": dict(learning_rate=0.005),
    "AdamW": dict(learning_rate=0.005, weight_decay=0.01),
    "Nadam": dict(learning_rate=0.005),
    "Adamax": dict(learning_rate=0.01),
    "RMSprop": dict(learning_rate=0.002, momentum=0.5),
    "Adagrad": dict(learning_rate=0.1),
    "Adadelta": dict(learning_rate=1.0),
    "Ftrl": dict(learning_rate=0.2),
    "Lion": dict(learning_rate=0.0005),
    "Lamb": dict(learning_rate=0.01),
    "ScheduleFreeAdamW": dict(learning_rate=0.005, warmup_steps=10),
    "Muon": dict(learning_rate=0.005),
}
# (Adafactor is not fitted on digits: its always-zero pixels and dead ReLU
# units give rows and columns of zero gradient, whose factored v underflows to
# 0, and Keras' own Adafactor turns the weights into NaN at the first step;
# test_adafactor_fit follows the built-in on data without them.)


def _fit_digits(opt, jit_compile, epochs):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=opt, jit_compile=jit_compile, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False, verbose=0).history


@pytest.mark.parametrize("jit_compile", [False, True], ids=["no_xla", "xla"])
@pytest.mark.parametrize("name", sorted(FIT_CONFIGS))
def test_fit_on_digits_every_class(name, jit_compile):
    """model.fit on scikit-learn's digits: the fused class follows the
    built-in's loss curve and accuracy (with XLA: the fallback path)."""
    import warnings

    cfg = FIT_CONFIGS[name]
    epochs = 3 if not jit_compile else 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fused = _fit_digits(getattr(fk, name)(**cfg), jit_compile, epochs)
    builtin = _fit_digits(getattr(keras.optimizers, name)(**cfg), jit_compile, epochs)
    # Lion's sign() turns 1-ulp differences into +-lr steps: a looser curve match.
    rtol = 2e-2 if name == "Lion" else 1e-4
    np.testing.assert_allclose(fused["loss"], builtin["loss"], rtol=rtol)
    np.testing.assert_allclose(fused["accuracy"], builtin["accuracy"], atol=2e-2 if name == "Lion" else 2e-3)
    assert fused["loss"][-1] < fused["loss"][0]


def test_unsupported_strategy_is_refused():
    strategy = tf.distribute.experimental.CentralStorageStrategy()
    with strategy.scope():
        v = keras.Variable(np.ones(4, np.float32))
        opt = fk.Adam()
        opt.build([v])

    @tf.function
    def step():
        strategy.run(lambda: opt.apply([tf.ones(4)], [v]))

    with pytest.raises(NotImplementedError, match="fusedopt optimizers do not support CentralStorageStrategy"):
        step()
    np.testing.assert_array_equal(v.numpy(), np.ones(4))


def test_adafactor_one_fused_call_per_dtype_group():
    variables = [keras.Variable(np.ones(s, np.float32)) for s in [(3,), (4, 5), (2, 3, 4), ()]]
    variables += [keras.Variable(np.ones(s, np.float64)) for s in [(2,), (6, 2)]]
    grads = [tf.ones(v.shape, v.dtype) for v in variables]
    assert _count_ops(fk.Adafactor(), variables, grads, "Fusedopt>ApplyAdafactor") == 2


@pytest.mark.parametrize("jit_compile", [False, True], ids=["no_xla", "xla"])
def test_adafactor_fit(jit_compile):
    """model.fit with Adafactor follows the built-in's loss curve (the update's
    reductions differ in rounding only; under XLA the fused op's lowering runs:
    tests/test_xla.py)."""
    import warnings

    x, y = _data()
    losses = []
    for cls in (fk.Adafactor, keras.optimizers.Adafactor):
        model = _model()
        model.compile(optimizer=cls(learning_rate=0.01, relative_step=False), loss="mse",
                      jit_compile=jit_compile)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            losses.append(model.fit(x, y, epochs=4, batch_size=32, verbose=0,
                                    shuffle=False).history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    assert losses[0][-1] < losses[0][0]


# --- the classes added for Keras 3.15 (Muon, Adafactor): sparse, mixed precision, save/load,
# checkpoints both ways, against the built-ins ----------------------------------------------

NEW_CLASSES = {
    "Muon": dict(learning_rate=0.01),
    "Adafactor": dict(learning_rate=0.01, relative_step=False),
}


def _embedding_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(50, 8),
                             keras.layers.Flatten(), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(1)])


def _embedding_data():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 50, (96, 4)).astype(np.int32)
    return x, rng.standard_normal((96, 1)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(NEW_CLASSES))
def test_new_class_sparse_embedding_matches_builtin_on_densified_gradients(name):
    """An Embedding's IndexedSlices gradients: the fused classes give the
    built-in's update of the densified gradient (Muon sends embeddings to its
    AdamW path, the fused Adam's exact sparse mode; Adafactor densifies).
    Given the IndexedSlices themselves, Keras' own ops square duplicate rows
    one by one (tests/test_sparse.py), which is not the densified update."""
    x, y = _embedding_data()
    models = []
    for cls in (getattr(fk, name), getattr(keras.optimizers, name)):
        model = _embedding_model()
        model.compile(optimizer=cls(**NEW_CLASSES[name]), loss="mse")
        models.append(model)
    train_on_sparse_and_densified(
        *models, [(x[k * 16:(k + 1) * 16], y[k * 16:(k + 1) * 16]) for k in range(6)])
    for a, b in zip(models[0].weights, models[1].weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    first = _embedding_model()
    assert not np.allclose(models[0].weights[0].numpy(), first.weights[0].numpy())


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(NEW_CLASSES))
def test_new_class_mixed_precision_matches_builtin(name, policy):
    x, y = _data()
    results = []
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        for cls in (getattr(fk, name), getattr(keras.optimizers, name)):
            model = _model()
            model.compile(optimizer=cls(**NEW_CLASSES[name]), loss="mse")
            results.append(model.fit(x, y, epochs=3, batch_size=32, verbose=0,
                                     shuffle=False).history["loss"])
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    np.testing.assert_allclose(results[0], results[1], rtol=1e-3)
    assert results[0][-1] < results[0][0]


@pytest.mark.parametrize("direction", ["keras_to_fused", "fused_to_keras"])
@pytest.mark.parametrize("name", sorted(NEW_CLASSES))
def test_new_class_checkpoint_interchange(tmp_path, name, direction):
    x, y = _data()
    fused, builtin = getattr(fk, name), getattr(keras.optimizers, name)
    first, second = (builtin, fused) if direction == "keras_to_fused" else (fused, builtin)
    cfg = NEW_CLASSES[name]
    model = _model()
    model.compile(optimizer=first(**cfg), loss="mse")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(tmp_path / "ck"))
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    expected = [w.numpy() for w in model.weights]
    restored = _model(seed=99)
    restored.compile(optimizer=second(**cfg), loss="mse")
    restored.optimizer.build(restored.trainable_variables)
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).read(path).assert_consumed()
    restored.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    for a, b in zip(restored.weights, expected):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(NEW_CLASSES))
def test_new_class_keras_file_round_trip(tmp_path, name):
    x, y = _data()
    model = _model()
    model.compile(optimizer=getattr(fk, name)(**NEW_CLASSES[name]), loss="mse")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is getattr(fk, name)
    assert _config(loaded.optimizer) == _config(model.optimizer)
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# clip_after_aggregation (Note [clip after aggregation]); under strategies in
# tests/test_distribute.py and tests/test_multiworker.py.

def test_clip_after_aggregation_config_round_trip():
    """Saved only when True (configs equal the built-in's otherwise); from_config
    and Keras' serialization bring it back."""
    builtin = _config(keras.optimizers.Adam(global_clipnorm=1.0))
    assert _config(fk.Adam(global_clipnorm=1.0)) == builtin
    assert _config(fk.Adam(global_clipnorm=1.0, clip_after_aggregation=False)) == builtin
    opt = fk.Adam(global_clipnorm=1.0, clip_after_aggregation=True)
    assert _config(opt) == dict(builtin, clip_after_aggregation=True)
    again = fk.Adam.from_config(opt.get_config())
    assert again.clip_after_aggregation is True and _config(again) == _config(opt)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is fk.Adam and restored.clip_after_aggregation is True
    assert fk.from_keras(keras.optimizers.Adam(clipnorm=1.0)).clip_after_aggregation is False


def test_clip_after_aggregation_needs_a_clipping():
    with pytest.raises(ValueError,
                       match="no clipping is set.*clipnorm, global_clipnorm or clipvalue"):
        fk.Adam(clip_after_aggregation=True)
    with pytest.raises(TypeError, match="True or False"):
        fk.Adam(clipnorm=1.0, clip_after_aggregation="yes")


class BuiltinUpdateAdam(fk.Adam):
    """Runs the built-in's update (as for a dtype without kernels)."""

    def _fused_supports(self, variables):
        return False


CLIP_ONE_DEVICE = [
    # (fused class, built-in, config, bit for bit); weight decay with one
    # variable excluded: two fused calls, one global norm.
    (fk.Adam, keras.optimizers.Adam, dict(weight_decay=0.05, global_clipnorm=1.0), True),
    (fk.AdamW, keras.optimizers.AdamW, dict(clipvalue=0.1), True),
    (fk.Adam, keras.optimizers.Adam, dict(clipnorm=0.5), False),  # the kernel's norm
    (fk.Muon, keras.optimizers.Muon, dict(clipnorm=0.5), False),  # AdamW path: the kernel's
    (fk.Muon, keras.optimizers.Muon, dict(global_clipnorm=1.0), True),
    (fk.Adafactor, keras.optimizers.Adafactor, dict(clipnorm=0.5), True),  # Keras' ops
    (BuiltinUpdateAdam, keras.optimizers.Adam, dict(global_clipnorm=1.0), True),
]


@pytest.mark.parametrize("fused,builtin,cfg,exact", CLIP_ONE_DEVICE,
                         ids=[f"{f.__name__}-{'+'.join(c)}"
                              for f, _, c, _ in CLIP_ONE_DEVICE])
def test_clip_after_aggregation_on_one_device_is_keras_clipping(rng, fused, builtin, cfg, exact):
    """With one replica the summed gradient is the gradient: the option gives
    the built-in's numbers, bit for bit but for the kernel's clipnorm (its
    norm is a double sum: the last bit of the scale), also where the step
    splits into several op calls (global norm) or runs Keras' own ops."""
    shapes = [(7,), (33, 5), (), (2, 3, 4), (6, 4)]
    init = [random_array(rng, s, "float32").astype(np.float32) for s in shapes]
    grads = [[3 * random_array(rng, s, "float32").astype(np.float32) for s in shapes]
             for _ in range(8)]
    cfg = dict(cfg, learning_rate=0.01)
    ours, ov = _train(fused, dict(cfg, clip_after_aggregation=True), init, grads, True)
    _, tv = _train(builtin, cfg, init, grads, True)
    _, unclipped = _train(builtin, {k: v for k, v in cfg.items() if "clip" not in k}, init,
                          grads, True)
    theirs = [v.numpy() for v in tv]
    if exact:
        for a, b in zip(ov, theirs):
            np.testing.assert_array_equal(a.numpy(), b, err_msg=a.name)
    else:
        for a, b in zip(ov, theirs):
            assert_close(a.numpy(), b, "float32", a.name, 3.0)
    # The clipping acted.
    assert max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(ov, unclipped)) > 1e-4
