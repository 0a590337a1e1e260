"""GPU variables when fusedopt's CUDA kernels cannot run in the process (a
driver older than the CUDA 13 runtime, no device, or a build without CUDA):
fusedopt.keras and fusedopt.legacy run the built-in update with one warning
naming why, instead of failing at the first step.

CI has no GPU, so the decision is driven through _tf_context's seams: the
reason read from build_info(), and which devices count as GPUs."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import fusedopt
import fusedopt.keras as fk
import fusedopt.legacy as fl
from fusedopt import _tf_context as ctx

REASON = ("fusedopt's CUDA kernels cannot run here: CUDA driver version is insufficient for "
          "CUDA runtime version (fusedopt's CUDA runtime 13000, the driver supports 12040)")


def test_build_info_says_whether_cuda_can_run():
    info = fusedopt.build_info()
    assert isinstance(info["cuda_usable"], bool) and info["cuda_status"]
    if not info["cuda"]:
        assert info["cuda_usable"] is False and info["cuda_status"] == "built without CUDA"
    elif not tf.config.list_physical_devices("GPU"):
        # A CUDA build on a machine without a GPU (CI): not usable, and why.
        assert info["cuda_usable"] is False and info["cuda_status"] != "ok"
    reason = ctx.cuda_unusable_reason()
    assert (reason is None) == info["cuda_usable"]
    if reason is not None:
        assert ("built without nvcc" in reason if not info["cuda"]
                else info["cuda_status"] in reason and "runtime" in reason)


@pytest.fixture
def cpu_counts_as_gpu(monkeypatch):
    """CPU variables treated as GPU ones that the CUDA kernels cannot serve;
    the warnings of this process forgotten; the fused ops made to fail."""
    monkeypatch.setattr(ctx, "_cuda_reason", [REASON])
    monkeypatch.setattr(ctx, "_on_cpu", lambda var: False)
    ctx._fallback_warned.clear()
    yield
    ctx._fallback_warned.clear()


def test_no_fallback_for_cpu_variables_or_a_usable_device(monkeypatch):
    v = tf.Variable(1.0)
    monkeypatch.setattr(ctx, "_cuda_reason", [REASON])
    assert ctx.gpu_fallback_reason([v]) is None  # a CPU variable
    monkeypatch.setattr(ctx, "_on_cpu", lambda var: False)
    assert REASON in ctx.gpu_fallback_reason([v])
    monkeypatch.setattr(ctx, "_cuda_reason", [None])  # the kernels can run
    assert ctx.gpu_fallback_reason([v]) is None


def _fused_op_names(fn) -> list[str]:
    graph = fn.get_concrete_function().graph
    names = [op.type for op in graph.get_operations()]
    for f in graph._functions.values():
        names += [n.op for n in f.definition.node_def]
    return [n for n in names if n.startswith("Fusedopt>")]


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop"])
def test_keras_runs_the_builtin_update_with_one_warning(cpu_counts_as_gpu, name):
    rng = np.random.default_rng(7)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(5, 3), (3,)]]
    grads = [[rng.standard_normal(x.shape).astype(np.float32) for x in init] for _ in range(3)]
    cfg = {"learning_rate": 0.01} if name != "SGD" else {"learning_rate": 0.1, "momentum": 0.9}
    results = []
    for cls in (getattr(fk, name), getattr(keras.optimizers, name)):
        opt = cls(**cfg)
        variables = [keras.Variable(x) for x in init]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for gs in grads:
                opt.apply([tf.constant(g) for g in gs], variables)
        results.append([v.numpy() for v in variables])
        if cls is getattr(fk, name):
            fallback = [w for w in caught if "cannot run here" in str(w.message)]
            assert len(fallback) == 1, [str(w.message) for w in caught]
            assert REASON in str(fallback[0].message)
            assert "built-in update" in str(fallback[0].message)

            @tf.function
            def step():
                opt.apply([tf.ones_like(v) for v in variables], variables)  # noqa: B023

            assert _fused_op_names(step) == []
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_legacy_runs_the_builtin_update_with_one_warning(cpu_counts_as_gpu, name):
    rng = np.random.default_rng(8)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(4, 2), (2,)]]
    grads = [[rng.standard_normal(x.shape).astype(np.float32) for x in init] for _ in range(3)]
    cfg = {"learning_rate": 0.01} if name != "SGD" else {"learning_rate": 0.1, "momentum": 0.9}
    results = []
    for cls in (getattr(fl, name), getattr(tf_keras.optimizers.legacy, name)):
        opt = cls(**cfg)
        variables = [tf.Variable(x) for x in init]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for gs in grads:
                opt.apply_gradients(zip([tf.constant(g) for g in gs], variables))
        results.append([v.numpy() for v in variables])
        if cls is getattr(fl, name):
            fallback = [w for w in caught if "cannot run here" in str(w.message)]
            assert len(fallback) == 1, [str(w.message) for w in caught]

            @tf.function
            def step():
                opt.apply_gradients(  # noqa: B023 - traced right here
                    zip([tf.ones_like(v) for v in variables], variables))  # noqa: B023

            assert _fused_op_names(step) == []
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
