"""What every fused Keras 3 optimizer shares.

Note [fused Keras step]: a fused optimizer subclasses the built-in Keras class
of the same name, so construction, config, slot variables, checkpoints, EMA,
gradient accumulation, loss scaling and clipping are Keras' own. It replaces
two hooks of the TensorFlow backend:

* ``_backend_update_step`` groups the (gradient, variable) pairs by
  (device, dtype, whether weight decay applies) and makes one fused op call per
  group, inside ``distribution.extended.update`` so that under a
  ``tf.distribute`` strategy each replica device gets one call on its own
  components;
* ``_apply_weight_decay`` does nothing, because the decay is fused into the
  same pass.

Where the fused kernels cannot run, the built-in code path runs instead, with
the same numbers: inside XLA compilation (a custom op has no XLA kernel; a
warning says so once), and for sparse (IndexedSlices) gradients until the
sparse kernels land.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import keras
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util

_xla_warned = False


def in_xla_context() -> bool:
    """True while tracing a function for XLA compilation."""
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


def _warn_xla_once() -> None:
    global _xla_warned
    if not _xla_warned:
        _xla_warned = True
        warnings.warn(
            "fusedopt: running inside XLA compilation (jit_compile=True), where custom ops "
            "cannot run; using Keras' built-in update ops instead (same results, no fused "
            "kernels). Compile with jit_compile=False to use the fused kernels.",
            RuntimeWarning,
            stacklevel=3,
        )


def keras_scalar(x: Any) -> tf.Tensor:
    """A Python hyperparameter as Keras' update_step sees it.

    Keras writes ``ops.cast(self.momentum, variable.dtype)``, which converts a
    Python float to float32 before casting, so even float64 variables see
    float32-rounded hyperparameters. The fused ops get the same value.
    """
    if isinstance(x, (int, float)):
        return tf.constant(x, tf.float32)
    return x


class FusedOptimizerMixin:
    """Mixin placed before a built-in ``keras.optimizers.*`` class."""

    def _fused_apply(
        self,
        variables: Sequence[tf.Variable],
        grads: Sequence[tf.Tensor],
        learning_rate: tf.Tensor,
        weight_decay: float,
    ) -> Any:
        """Applies the update to one group (same device and dtype) in one op."""
        raise NotImplementedError

    def _fused_prepare_step(self) -> None:
        """Per-step optimizer state updated before the variable updates (Nadam)."""

    def _fused_enabled(self) -> bool:
        if in_xla_context():
            _warn_xla_once()
            return False
        return True

    def _apply_weight_decay(self, variables):  # noqa: D401 - Keras hook
        if self._fused_enabled():
            return  # fused into the update op (Note [fused Keras step])
        super()._apply_weight_decay(variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._fused_enabled():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        self._fused_prepare_step()
        trainable_variables = [
            v.value if isinstance(v, keras.Variable) else v for v in trainable_variables
        ]
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, trainable_variables)))
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._fused_distributed_update,
            self._distribution_strategy,
            grads_and_vars,
            learning_rate,
        )

    def _fused_distributed_update(self, distribution, grads_and_vars, learning_rate):
        groups: dict[tuple[str, tf.DType, bool], list[tuple[Any, Any]]] = {}
        for grad, var in grads_and_vars:
            if isinstance(grad, tf.IndexedSlices):
                self._builtin_update_one(distribution, grad, var, learning_rate)
                continue
            decays = self.weight_decay is not None and self._use_weight_decay(var)
            key = (var.device, var.dtype.base_dtype, decays)
            groups.setdefault(key, []).append((grad, var))

        for (_, dtype, decays), items in groups.items():
            variables = [v for _, v in items]
            weight_decay = self.weight_decay if decays else 0.0

            def apply_group(_first, group_grads, variables=variables, dtype=dtype, wd=weight_decay):
                # Inside the update context, v.handle is this replica's component.
                group_grads = [tf.cast(g, dtype) for g in group_grads]
                return self._fused_apply(variables, group_grads, learning_rate, wd)

            distribution.extended.update(
                variables[0], apply_group, args=([g for g, _ in items],), group=False
            )

    def _builtin_update_one(self, distribution, grad, var, learning_rate):
        """Keras' own decay and update for one variable (sparse gradients)."""

        def update(v, g, lr):
            if self.weight_decay is not None and self._use_weight_decay(v):
                wd = tf.cast(self.weight_decay, v.dtype)
                v.assign_sub(v * wd * tf.cast(lr, v.dtype))
            return self.update_step(g, v, lr)

        distribution.extended.update(var, update, args=(grad, learning_rate), group=False)
