"""fusedopt.keras.SGD is keras.optimizers.SGD, with the same numbers, on fused kernels."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import fusedopt.keras
from conftest import assert_close, random_array

CONFIGS = [
    dict(),
    dict(learning_rate=0.05, momentum=0.9),
    dict(learning_rate=0.05, momentum=0.9, nesterov=True),
    dict(learning_rate=0.02, momentum=0.5, weight_decay=0.01),
    dict(learning_rate=0.02, weight_decay=0.05, nesterov=True),
    dict(learning_rate=0.03, momentum=0.9, clipnorm=0.5),
    dict(learning_rate=0.03, global_clipnorm=1.0, momentum=0.8),
    dict(learning_rate=0.03, clipvalue=0.1),
    dict(learning_rate=0.03, momentum=0.9, use_ema=True, ema_momentum=0.9),
    dict(learning_rate=0.03, momentum=0.9, gradient_accumulation_steps=3),
    dict(learning_rate=0.03, momentum=0.9, loss_scale_factor=128.0),
]


def _ids(c):
    return ",".join(f"{k}={v}" for k, v in c.items()) or "defaults"


def _config(opt):
    """get_config() less the auto-generated unique name (sgd, sgd_1, ...)."""
    cfg = opt.get_config()
    assert cfg.pop("name").startswith("sgd")
    return cfg


def test_same_constructor_defaults_and_config():
    assert _config(fusedopt.keras.SGD()) == _config(keras.optimizers.SGD())
    for cfg in CONFIGS:
        ours, theirs = fusedopt.keras.SGD(**cfg), keras.optimizers.SGD(**cfg)
        assert _config(ours) == _config(theirs)
        again = fusedopt.keras.SGD.from_config(ours.get_config())
        assert type(again) is fusedopt.keras.SGD
        assert again.get_config() == ours.get_config()
    assert issubclass(fusedopt.keras.SGD, keras.optimizers.SGD)


def test_bad_arguments_rejected_like_keras():
    with pytest.raises(ValueError, match="momentum"):
        fusedopt.keras.SGD(momentum=1.5)


def _train_pair(rng, cfg, shapes, dtype, steps, use_function, schedule=False):
    results = []
    init = [random_array(rng, s, dtype) for s in shapes]
    grads = [[random_array(rng, s, dtype) for s in shapes] for _ in range(steps)]
    for cls in (fusedopt.keras.SGD, keras.optimizers.SGD):
        kwargs = dict(cfg)
        if schedule:
            kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(0.05, 3, 0.7)
        opt = cls(**kwargs)
        variables = [keras.Variable(x, dtype=dtype, name=f"v{i}") for i, x in enumerate(init)]
        if "weight_decay" in cfg:
            opt.exclude_from_weight_decay(var_list=[variables[0]])

        def step(gs):
            opt.apply(gs, variables)

        if use_function:
            step = tf.function(step)
        for gs in grads:
            step([tf.constant(g, dtype) for g in gs])
        results.append((opt, variables))
    return results


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_same_numbers_as_keras(rng, cfg, use_function):
    shapes = [(3,), (17, 5), (), (4097,), (2, 3, 4)]
    (ours, ov), (theirs, tv) = _train_pair(rng, cfg, shapes, "float32", 12, use_function)
    for a, b in zip(ov, tv):
        assert_close(a.numpy(), b.numpy(), "float32", a.name)
    assert [v.path.split("/", 1)[1] for v in ours.variables] == [
        v.path.split("/", 1)[1] for v in theirs.variables
    ]
    for a, b in zip(ours.variables, theirs.variables):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert_close(a.numpy(), b.numpy(), "float32", a.path)


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_same_numbers_as_keras_other_dtypes(rng, dtype):
    cfg = dict(learning_rate=0.05, momentum=0.9, weight_decay=0.01)
    (ours, ov), (theirs, tv) = _train_pair(rng, cfg, [(33,), (5, 7)], dtype, 12, True)
    for a, b in zip(ov + ours.variables, tv + theirs.variables):
        # Keras computes 16-bit updates in 16 bits; fusedopt in float32 (closer to exact).
        tol = {"float64": "float64", "float16": "bfloat16", "bfloat16": "bfloat16"}[dtype]
        tol_scale = 10 if dtype == "bfloat16" else 1
        np.testing.assert_allclose(
            np.asarray(a.numpy(), np.float64), np.asarray(b.numpy(), np.float64),
            rtol=1e-12 if dtype == "float64" else 1e-2 * tol_scale,
            atol=1e-12 if dtype == "float64" else 1e-2 * tol_scale,
        )


def test_learning_rate_schedule(rng):
    cfg = dict(momentum=0.9)
    (_, ov), (_, tv) = _train_pair(rng, cfg, [(100,)], "float32", 10, True, schedule=True)
    assert_close(ov[0].numpy(), tv[0].numpy(), "float32")


def _count_fused_calls(opt, variables, grads) -> int:
    @tf.function
    def step():
        opt.apply(grads, variables)

    graph = step.get_concrete_function().graph
    count = 0
    for op in graph.get_operations():
        if op.type == "Fusedopt>ApplySGD":
            count += 1
    # Ops nested in cond/while branches live in the graph's function library.
    for fn in graph._functions.values():
        count += sum(1 for n in fn.definition.node_def if n.op == "Fusedopt>ApplySGD")
    return count


def test_one_fused_call_per_dtype_and_decay_group():
    f32 = [keras.Variable(np.ones(s, np.float32)) for s in [(3,), (4, 5), (7,), ()]]
    f64 = [keras.Variable(np.ones(s, np.float64)) for s in [(2,), (6,)]]
    variables = f32 + f64
    grads = [tf.ones(v.shape, v.dtype) for v in variables]
    assert _count_fused_calls(fusedopt.keras.SGD(momentum=0.9), variables, grads) == 2
    opt = fusedopt.keras.SGD(momentum=0.9, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_list=[f32[0]])
    assert _count_fused_calls(opt, variables, grads) == 3


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def _mlp(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def _fit(opt, jit_compile=False, epochs=4):
    x, y = _digits()
    model = _mlp(1234)
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    hist = model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False, verbose=0)
    return model, hist.history


def test_fit_on_digits_matches_builtin():
    cfg = dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    fused_model, fused_hist = _fit(fusedopt.keras.SGD(**cfg))
    ref_model, ref_hist = _fit(keras.optimizers.SGD(**cfg))
    np.testing.assert_allclose(fused_hist["loss"], ref_hist["loss"], rtol=1e-4)
    assert fused_hist["accuracy"][-1] > 0.9  # it really learns digits
    np.testing.assert_allclose(fused_hist["accuracy"], ref_hist["accuracy"], atol=2e-3)
    for a, b in zip(fused_model.weights, ref_model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_jit_compile_runs_fused_with_keras_xla_numbers():
    """On the CPU the fused op lowers into XLA (tests/test_xla.py): no fallback
    warning, and the loss curve of Keras + XLA."""
    cfg = dict(learning_rate=0.1, momentum=0.9)
    fusedopt._tf_context._xla_warned = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, fused_hist = _fit(fusedopt.keras.SGD(**cfg), jit_compile=True, epochs=2)
    _, ref_hist = _fit(keras.optimizers.SGD(**cfg), jit_compile=True, epochs=2)
    np.testing.assert_allclose(fused_hist["loss"], ref_hist["loss"], rtol=1e-5)
    assert not [w for w in caught if "XLA compilation" in str(w.message)]


def test_save_and_load_model_without_custom_objects(tmp_path):
    model, _ = _fit(fusedopt.keras.SGD(learning_rate=0.05, momentum=0.9), epochs=1)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is fusedopt.keras.SGD
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_sparse_gradients_match_builtin():
    """Embedding gradients (IndexedSlices) take Keras' own path for now."""
    results = []
    for cls in (fusedopt.keras.SGD, keras.optimizers.SGD):
        keras.utils.set_random_seed(3)
        model = keras.Sequential(
            [keras.Input((4,), dtype="int32"), keras.layers.Embedding(50, 8),
             keras.layers.Flatten(), keras.layers.Dense(1)]
        )
        model.compile(optimizer=cls(0.1, momentum=0.9, weight_decay=0.01), loss="mse")
        rng = np.random.default_rng(0)
        x = rng.integers(0, 50, (64, 4)).astype(np.int32)
        y = rng.standard_normal((64, 1)).astype(np.float32)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        results.append([w.numpy() for w in model.weights])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
