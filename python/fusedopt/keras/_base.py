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
* ``_apply_weight_decay`` does nothing while a step is being applied (the
  decay is fused into the same pass, with Keras' arithmetic); called directly
  it decays, as the built-in's does.

Gradient clipping (clipnorm, global_clipnorm, clipvalue) is Keras' own
``_clip_gradients``, unchanged: its norms are TensorFlow reductions, whose
summation order decides the last bits, so only Keras' own ops give Keras'
numbers. The ops' fused clipping is for ``fusedopt.ops`` callers.

The coefficients are computed in the op the way Keras' update_step computes
them (Note [Keras arithmetic] in cc/rules/coefficients.h), so float32 and
float64 results equal the built-in's bit for bit (tests/test_keras_parity.py).

Sparse (IndexedSlices) gradients, e.g. from Embedding layers, go to the sparse
ops (their own group and call), with ``sparse_mode`` "exact" (default: the
built-in's numbers) or "lazy" (only the rows present; LazyAdam semantics).

Inside XLA compilation (jit_compile=True) the fused ops lower to an in-place
custom call (Note [XLA lowering] in cc/tf/xla_ops.cc) for dense gradients of
CPU variables; for GPU variables and IndexedSlices gradients the built-in code
path runs instead, with the same numbers (a warning says so once).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from fusedopt import _atomic
from fusedopt import _tf_context as _ctx


def _cast_grad(g, var, dtype):
    # (An IndexedSlices gets its variable's shape as dense_shape: Keras' own
    # update ignores the gradient's and uses the indices; Note [atomic steps].)
    if isinstance(g, tf.IndexedSlices):
        g = _atomic.with_dense_shape_of(g, var)
        return tf.IndexedSlices(tf.cast(g.values, dtype), g.indices, g.dense_shape)
    return tf.cast(g, dtype)


def _refuse_parameter_server() -> None:
    """Keras 3 does not support ParameterServerStrategy: refused when the
    optimizer is made or built in its scope (fusedopt.legacy supports it)."""
    if tf.distribute.has_strategy() and _ctx.is_parameter_server_strategy(
            tf.distribute.get_strategy()):
        _ctx.check_strategy()


def _as_tf_gradient(g):
    """A gradient as the fused step takes it: tf.Tensor or tf.IndexedSlices.

    Keras' optimizers accept what its ops accept: NumPy arrays, Python
    numbers and lists, Keras and TF variables, tensors of other backends'
    array types that TensorFlow converts (Note [gradient forms])."""
    if g is None or isinstance(g, (tf.Tensor, tf.IndexedSlices)):
        return g
    if isinstance(g, keras.Variable):
        return tf.convert_to_tensor(g.value)
    return tf.convert_to_tensor(g)


class FusedOptimizerMixin:
    """Mixin placed before a built-in ``keras.optimizers.*`` class.

    Adds one constructor argument, ``sparse_mode`` ("exact" or "lazy"), saved in
    the config only when it is not the default, so configs equal the built-in's.
    """

    def __init__(self, *args, sparse_mode: str = "exact", **kwargs):
        _refuse_parameter_server()
        if sparse_mode not in ("exact", "lazy"):
            raise ValueError(f"sparse_mode must be 'exact' or 'lazy', got {sparse_mode!r}")
        if sparse_mode == "lazy" and isinstance(self, keras.optimizers.Lamb):
            raise ValueError("Lamb has no lazy sparse mode: its trust ratio needs the whole "
                             "variable; use sparse_mode='exact'")
        super().__init__(*args, **kwargs)
        self.sparse_mode = sparse_mode

    def build(self, variables):
        _refuse_parameter_server()
        super().build(variables)

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
        """Computes per-step optimizer state the update needs (Nadam's next
        u_product), without assigning it: see _fused_finish_step."""

    def _fused_finish_step(self, updates: Sequence[Any]) -> None:
        """Assigns the state _fused_prepare_step computed, after ``updates``
        (every group's op) so a failed step leaves it unchanged (Note
        [atomic steps] in fusedopt/_atomic.py)."""

    def _fused_supports(self, variables) -> bool:
        """Whether the fused op can run this step at all (not for variables
        of a dtype the kernels lack, complex64/complex128; not for GPU
        variables when fusedopt's CUDA kernels cannot run in this process;
        Adafactor: CPU variables outside XLA); otherwise the built-in's update
        runs, after a warning, with the same numbers."""
        other = sorted({v.dtype.base_dtype.name for v in variables
                        if not _ctx.has_kernels_for(v.dtype)})
        if other:
            _ctx.warn_fallback_once(
                f"fusedopt has no kernels for {', '.join(other)} variables: a step with "
                "them runs Keras' built-in update (same results, no fused kernel)")
            return False
        reason = _ctx.gpu_fallback_reason(variables)
        if reason is not None:
            _ctx.warn_fallback_once(reason)
            return False
        return True

    def _fused_enabled(self) -> bool:
        """Whether this step runs the fused ops (decided once per step in
        _backend_apply_gradients, so the weight decay and the update agree)."""
        return self._fused_step_enabled

    _fused_step_active = False
    _fused_step_enabled = True

    def _backend_apply_gradients(self, grads, trainable_variables):
        # Note [gradient forms]: Keras takes NumPy arrays (and anything its
        # ops convert) as gradients; the fused step and its checks need
        # TensorFlow values, and the built-in's ops convert them the same way.
        grads = [_as_tf_gradient(g) for g in grads]
        with _atomic.step_scope():  # Note [one check per kind] (fusedopt/_atomic.py)
            return self._fused_backend_apply_gradients(grads, trainable_variables)

    def _fused_backend_apply_gradients(self, grads, trainable_variables):
        # Marks the extent of one step (Keras calls _clip_gradients,
        # _apply_weight_decay and _backend_update_step from here), so that the
        # weight decay is deferred to the fused update only inside it; a direct
        # call of _apply_weight_decay still decays, as the built-in's does.
        # Inside XLA the fused ops run where they have a lowering (Note [XLA
        # lowering] in cc/tf/xla_ops.cc), else Keras' own ops, for the whole step.
        enabled = True
        if _ctx.in_xla_context() and not _ctx.xla_lowering_available(
                grads, trainable_variables, densify_sparse=self.sparse_mode == "exact"):
            _ctx.warn_xla_once("Keras' built-in update ops")
            enabled = False
        elif not self._fused_supports(trainable_variables):
            enabled = False
        checks = []
        if enabled and self.gradient_accumulation_steps:
            # Keras densifies the gradients (`g + accumulator`) before the
            # update, which drops negative indices silently: IndexedSlices are
            # checked here, as an unaccumulated step checks them (Note [atomic
            # steps]).
            sparse = [(g, v) for g, v in zip(grads, trainable_variables)
                      if isinstance(g, tf.IndexedSlices)]
            checks = _atomic.step_checks(sparse) if sparse else []
        outer = (self._fused_step_active, self._fused_step_enabled)
        self._fused_step_active, self._fused_step_enabled = True, enabled
        try:
            with tf.control_dependencies(checks):
                return super()._backend_apply_gradients(grads, trainable_variables)
        finally:
            self._fused_step_active, self._fused_step_enabled = outer

    def _apply_weight_decay(self, variables):  # noqa: D401 - Keras hook
        if self._fused_step_active and self._fused_enabled():
            return  # fused into this step's update op (Note [fused Keras step])
        super()._apply_weight_decay(variables)

    def _group_key(self, var, grad) -> tuple[Any, ...]:
        """(device, dtype, whether weight decay applies, sparse), and for
        classes that need it more (Muon: its path and update scale); one fused
        call per distinct key."""
        decays = self.weight_decay is not None and self._use_weight_decay(var)
        return (var.device, var.dtype.base_dtype, decays, isinstance(grad, tf.IndexedSlices))

    def _group_weight_decay(self, key: tuple[Any, ...], variables) -> Any:
        """The weight decay of a decaying group (Muon: per path)."""
        del key, variables
        return self.weight_decay

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._fused_step_active and _ctx.in_xla_context():
            # Called outside a step (not by Keras): decide here.
            if not _ctx.xla_lowering_available(grads, trainable_variables,
                                               densify_sparse=self.sparse_mode == "exact"):
                _ctx.warn_xla_once("Keras' built-in update ops")
                return super()._backend_update_step(grads, trainable_variables, learning_rate)
        if not self._fused_enabled() or (
                # (Inside a step _backend_apply_gradients has decided this.)
                not self._fused_step_active and not self._fused_supports(trainable_variables)):
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        _ctx.check_strategy()
        self._fused_prepare_step()
        trainable_variables = [
            v.value if isinstance(v, keras.Variable) else v for v in trainable_variables
        ]
        if _ctx.in_xla_context():
            # Note [sparse under XLA] (_tf_context.densify_for_xla): "exact"
            # IndexedSlices run the dense lowering on their sum.
            grads = [_ctx.densify_for_xla(g, v) for g, v in zip(grads, trainable_variables)]
        grads_and_vars = list(zip(grads, trainable_variables))
        if tf.distribute.has_strategy():
            # (Without a strategy the sum over one replica is an Identity per
            # gradient: skipped, the same values for less work.)
            grads_and_vars = self._all_reduce_sum_gradients(grads_and_vars)
        updates = tf.__internal__.distribute.interim.maybe_merge_call(
            self._fused_distributed_update,
            self._distribution_strategy,
            grads_and_vars,
            learning_rate,
        )
        done = [u for u in tf.nest.flatten(updates) if isinstance(u, (tf.Tensor, tf.Operation))]
        self._fused_finish_step(done)
        if done and not tf.executing_eagerly():
            # Note [atomic steps]: in a graph, Keras' `iterations.assign_add(1)`
            # (after this method) is not ordered after the fused ops, which
            # touch other resources, so a failing op could leave the counter
            # advanced. A zero increment that waits for them puts the counter
            # in their chain: automatic control dependencies order Keras'
            # increment, on the same resource, after it.
            with tf.control_dependencies(done):
                self._iterations.assign_add(0)
            if self.gradient_accumulation_steps:
                # Keras resets the gradient accumulators right after this
                # method, in the same graph; that reset (other resources
                # again) waits for the same ops.
                self._fused_pending_updates = done

    _fused_pending_updates = None

    def _backend_reset_gradient_accumulators(self):
        done, self._fused_pending_updates = self._fused_pending_updates, None
        graph = tf_ops.get_default_graph()
        if (done and not tf.executing_eagerly()
                and all(getattr(d, "graph", None) is graph for d in done)):
            with tf.control_dependencies(done):
                return super()._backend_reset_gradient_accumulators()
        return super()._backend_reset_gradient_accumulators()

    def _fused_distributed_update(self, distribution, grads_and_vars, learning_rate):
        groups: dict[tuple[Any, ...], list[tuple[Any, Any]]] = {}
        for grad, var in grads_and_vars:
            # Under a strategy a gradient is a distributed value: its kind
            # (dense or IndexedSlices) is its components'.
            kind = (distribution.experimental_local_results(grad)[0]
                    if tf.distribute.has_strategy() else grad)
            groups.setdefault(self._group_key(var, kind), []).append((grad, var))
        # Note [atomic steps]: with several groups every pair is checked before
        # any group writes (one op checks all of its own inputs first).
        checks = []
        if len(groups) > 1:
            local = (distribution.experimental_local_results if tf.distribute.has_strategy()
                     else None)
            checks = _atomic.step_checks(grads_and_vars, local)
        with tf.control_dependencies(checks):
            return self._fused_group_updates(distribution, groups, learning_rate)

    def _fused_group_updates(self, distribution, groups, learning_rate):
        updates = []
        for key, items in groups.items():
            _, dtype, decays, sparse = key[:4]
            variables = [v for _, v in items]
            weight_decay = self._group_weight_decay(key, variables) if decays else 0.0

            def apply_group(_first, group_grads, variables=variables, dtype=dtype, wd=weight_decay,
                            sparse=sparse):
                # Inside the update context, v.handle is this replica's component.
                group_grads = [_cast_grad(g, v, dtype) for g, v in zip(group_grads, variables)]
                arithmetic, folding = _ctx.grappler_rewrites()
                options = {"grappler_form": arithmetic, "grappler_constant_folding": folding}
                if sparse:
                    options["sparse_mode"] = self.sparse_mode
                return self._fused_apply(variables, group_grads, learning_rate, wd, **options)

            group_grads = [g for g, _ in items]
            if not tf.distribute.has_strategy():
                # No strategy: call directly. (The default strategy's update
                # would add an Identity op per gradient: ~1 us each per step.)
                with tf_ops.colocate_with(variables[0]):
                    updates.append(apply_group(variables[0], group_grads))
            else:
                updates.append(distribution.extended.update(
                    variables[0], apply_group, args=(group_grads,), group=False
                ))
        return updates
