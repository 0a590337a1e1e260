"""What the Keras 3 and the tf_keras optimizers both ask of the TF context:
are we inside XLA compilation, and is the distribution strategy one the fused
kernels support."""

from __future__ import annotations

import functools
import warnings

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util

_xla_warned = False


def in_xla_context() -> bool:
    """True while tracing a function for XLA compilation."""
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


def grappler_rewrites() -> tuple[bool, bool]:
    """(arithmetic optimizer, constant folding): whether Grappler will apply
    each to the graph being traced (a tf.function, unless switched off).

    Keras' own update ops then compute the rewritten arithmetic (Note
    [Grappler form] in cc/rules/coefficients.h), so the fused ops are asked
    for the same form.
    """
    if tf.executing_eagerly():
        return False, False
    options = tf.config.optimizer.get_experimental_options()
    if options.get("disable_meta_optimizer", False):
        return False, False
    return (options.get("arithmetic_optimization", True) is not False,
            options.get("constant_folding", True) is not False)


def function_graph_rewrites() -> bool:
    """Whether Grappler's arithmetic optimizer will rewrite the graph being
    built: a tf.function's, unless switched off. (A TF1-style graph run by a
    ``tf.compat.v1.Session`` keeps tf_keras' written products: measured,
    ``(g * g) * s`` stays as written there and becomes ``g * (g * s)`` in a
    tf.function.)"""
    return grappler_rewrites()[0] and bool(
        getattr(tf_ops.get_default_graph(), "building_function", False))


@functools.lru_cache(maxsize=None)
def _device_is_cpu(device: str) -> bool:
    if device:
        return (tf.DeviceSpec.from_string(device).device_type or "CPU").upper() == "CPU"
    return not tf.config.list_logical_devices("GPU")


KERNEL_DTYPES = frozenset({tf.float16, tf.bfloat16, tf.float32, tf.float64})


def has_kernels_for(dtype) -> bool:
    """Whether the fused kernels exist for variables of ``dtype`` (not for
    complex64/complex128: the optimizers run the built-in's update there)."""
    return tf.as_dtype(dtype).base_dtype in KERNEL_DTYPES


def _on_cpu(var) -> bool:
    return _device_is_cpu(getattr(var, "device", "") or "")


_cuda_reason: list[str | None] = []  # [reason] once computed


def cuda_unusable_reason() -> str | None:
    """Why fusedopt's CUDA kernels cannot run in this process (None when
    they can): a build without CUDA, no device, or a driver older than the
    CUDA 13 runtime linked into the library. Read once from build_info()."""
    if not _cuda_reason:
        from fusedopt import _loader

        info = _loader.build_info()
        if not info.get("cuda"):
            reason = "this fusedopt build has no CUDA kernels (built without nvcc)"
        elif not info.get("cuda_usable", False):
            driver = info.get("cuda_driver_version") or 0
            reason = (f"fusedopt's CUDA kernels cannot run here: {info.get('cuda_status')} "
                      f"(fusedopt's CUDA runtime {info.get('cuda_runtime_version')}, the "
                      f"driver supports {driver or 'no CUDA (no driver)'})")
        else:
            reason = None
        _cuda_reason.append(reason)
    return _cuda_reason[0]


def gpu_fallback_reason(variables) -> str | None:
    """A message when some of these variables live on a GPU that fusedopt's
    CUDA kernels cannot use (the caller then runs the built-in update, which
    TensorFlow's own GPU kernels can); None otherwise."""
    reason = cuda_unusable_reason()
    if reason is None or all(_on_cpu(v) for v in variables):
        return None
    return f"{reason}; GPU variables take the built-in update (same results, no fused kernel)"


def xla_lowering_available(grads, variables, densify_sparse: bool = False) -> bool:
    """Whether a step over these (gradient, variable) pairs runs fused inside
    XLA compilation (Note [XLA lowering] in cc/tf/xla_ops.cc): gradients of
    CPU variables, dense ones, and IndexedSlices when ``densify_sparse`` (the
    "exact" sparse mode, whose result is the densified gradient's update:
    see densify_for_xla). Elsewhere (GPU variables, IndexedSlices in "lazy"
    mode) the built-in ops run with a warning (warn_xla_once)."""
    if not densify_sparse and any(isinstance(g, tf.IndexedSlices) for g in grads):
        return False
    return all(_on_cpu(v) for v in variables)


def densify_for_xla(grad, var):
    """The dense gradient of an IndexedSlices ``grad`` of ``var`` inside XLA.

    Note [sparse under XLA]: the "exact" sparse ops update every row as if the
    gradient were densified (duplicate rows summed in position order), so
    under XLA that mode runs the dense lowering on this sum. XLA's scatter adds
    the rows in position order, as the sparse kernels do, so the numbers are
    the uncompiled exact op's (tests/test_xla.py). The price is one write and
    one read of a dense gradient. XLA has no run-time assertions: an index
    outside [0, rows) is dropped by the scatter, as XLA does for Keras' own
    sparse updates, instead of failing the step.
    """
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    rows = var.shape[0] if var.shape.rank and var.shape[0] is not None else tf.shape(var)[0]
    return tf.math.unsorted_segment_sum(grad.values, grad.indices, rows)


def warn_xla_once(what: str) -> None:
    """Says once per process that XLA bypasses the fused kernels here."""
    global _xla_warned
    if not _xla_warned:
        _xla_warned = True
        warnings.warn(
            "fusedopt: inside XLA compilation (jit_compile=True) the fused kernels run for "
            "CPU variables, with dense gradients or IndexedSlices in sparse_mode 'exact'; this "
            f"step (GPU variables or 'lazy' IndexedSlices gradients) uses {what} instead "
            "(same results, no fused kernels). Compile with jit_compile=False to use the fused "
            "kernels here.",
            RuntimeWarning,
            stacklevel=4,
        )


_fallback_warned: set[str] = set()


def warn_fallback_once(message: str) -> None:
    """Says once per process (per message) that a step runs the built-in
    update instead of the fused kernels."""
    if message not in _fallback_warned:
        _fallback_warned.add(message)
        warnings.warn(f"fusedopt: {message}.", RuntimeWarning, stacklevel=4)


def _supported_strategies() -> tuple[type, ...]:
    return (
        tf.distribute.MirroredStrategy,
        tf.distribute.MultiWorkerMirroredStrategy,
        tf.distribute.OneDeviceStrategy,
    )


SUPPORTED_STRATEGIES_TEXT = (
    "no strategy, OneDeviceStrategy, MirroredStrategy and MultiWorkerMirroredStrategy"
)


def is_parameter_server_strategy(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether ``strategy`` is TF2's ``tf.distribute.ParameterServerStrategy``."""
    return strategy is not None and isinstance(strategy, tf.distribute.ParameterServerStrategy)


def check_strategy(strategy: tf.distribute.Strategy | None = None, *,
                   parameter_server: bool = False) -> None:
    """Raises NotImplementedError for a strategy the fused ops do not support.

    ``parameter_server`` is True for fusedopt.legacy, which supports TF2's
    ``ParameterServerStrategy`` (tf_keras; Note [parameter servers] in
    fusedopt/legacy/_parameter_server.py). Keras 3 does not support that
    strategy at all, so fusedopt.keras refuses it and points to
    fusedopt.legacy. CentralStorageStrategy updates variables on another device
    than the fused op calls are placed for, and TPUStrategy runs on TPUs, where
    custom ops cannot run: rather than risk wrong numbers, they are refused.
    """
    if strategy is None:
        if not tf.distribute.has_strategy():
            return
        strategy = tf.distribute.get_strategy()
    if isinstance(strategy, _supported_strategies()):
        return
    if type(strategy).__name__ == "_DefaultDistributionStrategy":
        return
    if is_parameter_server_strategy(strategy):
        if parameter_server:
            return
        raise NotImplementedError(
            "fusedopt.keras does not support ParameterServerStrategy: Keras 3 does not support "
            "that strategy (its built-in optimizers included). Train with tf_keras and the "
            "fusedopt.legacy optimizers instead (fusedopt.legacy.<Name> for "
            "tf_keras.optimizers.legacy.<Name>), which run their "
            "fused updates on the parameter servers; start every server with `fusedopt-server` "
            "(see the README, 'Distributed training')."
        )
    supported = SUPPORTED_STRATEGIES_TEXT + (
        " (fusedopt.legacy also ParameterServerStrategy)" if not parameter_server
        else " and ParameterServerStrategy")
    raise NotImplementedError(
        f"fusedopt optimizers do not support {type(strategy).__name__}: they run with "
        f"{supported}. Use the built-in Keras optimizer under this strategy "
        "(see the README, 'Distributed training')."
    )
