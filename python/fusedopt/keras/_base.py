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
* ``_apply_weight_decay`` and ``_clip_gradients`` do nothing, because the
  decay and the clipping are fused into the same pass. Clipping therefore
  happens after the cross-replica gradient sum (Keras clips each replica's
  partial gradient before it). Global-norm clipping is fused when one op call
  sees every gradient (a single group); otherwise Keras'
  own global clipping runs first, over all gradients.

Sparse (IndexedSlices) gradients, e.g. from Embedding layers, go to the sparse
ops (their own group and call), with ``sparse_mode`` "exact" (default: the
built-in's numbers) or "lazy" (only the rows present; LazyAdam semantics).

Where the fused kernels cannot run, the built-in code path runs instead, with
the same numbers: inside XLA compilation (a custom op has no XLA kernel; a
warning says so once).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from fusedopt import _tf_context as _ctx


def keras_scalar(x: Any) -> tf.Tensor:
    """A Python hyperparameter as Keras' update_step sees it.

    Keras writes ``ops.cast(self.momentum, variable.dtype)``, which converts a
    Python float to float32 before casting, so even float64 variables see
    float32-rounded hyperparameters. The fused ops get the same value.
    """
    if isinstance(x, (int, float)):
        return tf.constant(x, tf.float32)
    return x


def _cast_grad(g, dtype):
    if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(tf.cast(g.values, dtype), g.indices, g.dense_shape)
    return tf.cast(g, dtype)


class FusedOptimizerMixin:
    """Mixin placed before a built-in ``keras.optimizers.*`` class.

    Adds one constructor argument, ``sparse_mode`` ("exact" or "lazy"), saved in
    the config only when it is not the default, so configs equal the built-in's.
    """

    def __init__(self, *args, sparse_mode: str = "exact", **kwargs):
        if sparse_mode not in ("exact", "lazy"):
            raise ValueError(f"sparse_mode must be 'exact' or 'lazy', got {sparse_mode!r}")
        if sparse_mode == "lazy" and isinstance(self, keras.optimizers.Lamb):
            raise ValueError("Lamb has no lazy sparse mode: its trust ratio needs the whole "
                             "variable; use sparse_mode='exact'")
        super().__init__(*args, **kwargs)
        self.sparse_mode = sparse_mode

    def get_config(self):
        config = super().get_config()
        if self.sparse_mode != "exact":
            config["sparse_mode"] = self.sparse_mode
        return config

    def _fused_apply(
        self,
        variables: Sequence[tf.Variable],
        grads: Sequence[tf.Tensor],
        learning_rate: tf.Tensor,
        weight_decay: float,
        **options: Any,
    ) -> Any:
        """Applies the update to one group (same device, dtype, weight-decay use
        and sparseness) in one op.

        ``options`` are passed to the fusedopt.ops function: gradient options
        (clipping) and, for IndexedSlices gradients, ``sparse_mode``.
        """
        raise NotImplementedError

    def _fused_prepare_step(self) -> None:
        """Per-step optimizer state updated before the variable updates (Nadam)."""

    def _fused_enabled(self) -> bool:
        if _ctx.in_xla_context():
            _ctx.warn_xla_once("Keras' built-in update ops")
            return False
        return True

    def _apply_weight_decay(self, variables):  # noqa: D401 - Keras hook
        if self._fused_enabled():
            return  # fused into the update op (Note [fused Keras step])
        super()._apply_weight_decay(variables)

    def _clip_gradients(self, grads):  # noqa: D401 - Keras hook
        if self._fused_enabled():
            return grads  # fused into the update op (Note [fused Keras step])
        return super()._clip_gradients(grads)

    def _clip_options(self) -> dict[str, float]:
        """Keras' clipping setting, in its priority order, as op options.

        Python numbers: they cross merge_call unchanged, and become tensors
        (keras_scalar) in each replica's update.
        """
        if self.clipnorm and self.clipnorm > 0:
            return {"clipnorm": self.clipnorm}
        if self.global_clipnorm and self.global_clipnorm > 0:
            return {"global_clipnorm": self.global_clipnorm}
        if self.clipvalue and self.clipvalue > 0:
            return {"clipvalue": self.clipvalue}
        return {}

    def _group_key(self, var, grad) -> tuple[str, tf.DType, bool, bool]:
        decays = self.weight_decay is not None and self._use_weight_decay(var)
        return (var.device, var.dtype.base_dtype, decays, isinstance(grad, tf.IndexedSlices))

    def _fused_clip_plan(self, grads_and_vars):
        """Decides where each clipping runs; returns (grads_and_vars, op options).

        Runs in replica context, after the gradients are summed across replicas.
        """
        options = self._clip_options()
        if not options:
            return grads_and_vars, {}
        groups = {self._group_key(v, g) for g, v in grads_and_vars}
        if "global_clipnorm" in options and len(groups) > 1:
            # No single op call sees every gradient: Keras' own global clipping.
            grads = super()._clip_gradients([g for g, _ in grads_and_vars])
            return list(zip(grads, [v for _, v in grads_and_vars])), {}
        return grads_and_vars, options

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._fused_enabled():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        _ctx.check_strategy()
        self._fused_prepare_step()
        trainable_variables = [
            v.value if isinstance(v, keras.Variable) else v for v in trainable_variables
        ]
        grads_and_vars = list(zip(grads, trainable_variables))
        if tf.distribute.has_strategy():
            # (Without a strategy the sum over one replica is an Identity per
            # gradient: skipped, the same values for less work.)
            grads_and_vars = self._all_reduce_sum_gradients(grads_and_vars)
        grads_and_vars, clip = self._fused_clip_plan(grads_and_vars)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._fused_distributed_update,
            self._distribution_strategy,
            grads_and_vars,
            learning_rate,
            clip,
        )

    def _fused_distributed_update(self, distribution, grads_and_vars, learning_rate, clip):
        groups: dict[tuple[str, tf.DType, bool, bool], list[tuple[Any, Any]]] = {}
        for grad, var in grads_and_vars:
            groups.setdefault(self._group_key(var, grad), []).append((grad, var))

        for (_, dtype, decays, sparse), items in groups.items():
            variables = [v for _, v in items]
            weight_decay = self.weight_decay if decays else 0.0

            def apply_group(_first, group_grads, variables=variables, dtype=dtype, wd=weight_decay,
                            sparse=sparse):
                # Inside the update context, v.handle is this replica's component.
                group_grads = [_cast_grad(g, dtype) for g in group_grads]
                options = {k: keras_scalar(v) for k, v in clip.items()}
                if sparse:
                    options["sparse_mode"] = self.sparse_mode
                return self._fused_apply(variables, group_grads, learning_rate, wd, **options)

            group_grads = [g for g, _ in items]
            if not tf.distribute.has_strategy():
                # No strategy: call directly. (The default strategy's update
                # would add an Identity op per gradient: ~1 us each per step.)
                with tf_ops.colocate_with(variables[0]):
                    apply_group(variables[0], group_grads)
            else:
                distribution.extended.update(
                    variables[0], apply_group, args=(group_grads,), group=False
                )
