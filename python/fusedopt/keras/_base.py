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
numbers. Under a strategy that clips each replica's partial gradient before
the cross-replica sum, as the built-in does; ``clip_after_aggregation=True``
moves the clipping after the sum (Note [clip after aggregation]).

Note [clip after aggregation]: with ``clip_after_aggregation=True`` Keras'
``_clip_gradients`` does nothing during a step, and ``_backend_update_step``
clips the summed gradients (each replica its own copy of the sum, after
``_all_reduce_sum_gradients``), as tf_keras' optimizers do:

* ``global_clipnorm``: a norm pass first, Keras' ``global_norm`` and
  ``clip_by_global_norm`` scale over all of the step's summed gradients (so
  the norm stays global however the step splits into groups and op calls);
  the scale goes into every fused call as its ``grad_scale``, which multiplies
  each gradient in the update pass (``g * scale``, Keras' own product);
* ``clipnorm``, ``clipvalue``: the fused calls' own per-variable norm and
  elementwise clipping for dense gradients (``clipnorm``'s norm is the
  kernel's fixed-order double sum, so its scale may differ from
  ``tf.clip_by_norm``'s in the last bit); IndexedSlices gradients are clipped
  with Keras' ops on their values as given (a row per lookup, as Keras clips
  them; the sparse kernels would clip the rows after summing duplicates, the
  densified gradient: another number);
* ops that take no gradient options (those a class calls with a method of
  its own, e.g. the second op of a class that makes two calls around TF ops
  of its own, which takes their result) and steps that run the
  built-in's update (``_fused_supports``, XLA without a lowering) clip the
  summed gradients with Keras' own ops first (``_clip_in_tf``,
  ``_all_reduce_sum_gradients``).

Without a strategy (or with one replica) the summed gradient is the gradient,
and the numbers are the built-in's bit for bit, but for ``clipnorm`` on dense
gradients (within the last bit of its scale). Under a strategy the summed
IndexedSlices hold every replica's rows, so their norms and clipping are one
device's too.

The coefficients are computed in the op the way Keras' update_step computes
them (Note [Keras arithmetic] in cc/rules/coefficients.h), so float32 and
float64 results equal the built-in's bit for bit (tests/test_keras_parity.py).

Sparse (IndexedSlices) gradients, e.g. from Embedding layers, go to the sparse
ops (their own group and call), with ``sparse_mode`` "exact" (default: the
built-in's numbers) or "lazy" (only the rows present, as TF Addons' lazy
optimizers update them).

Note [densified int8 gradients]: int8 state's blocks run along a row of the
first dimension, so a rank-1 variable's blocks span its elements, which
are the rows of a sparse update, and the sparse kernels refuse it (Note
[quantization blocks] in cc/rules/state_format.h). Its IndexedSlices
gradients are densified as Keras' own update densifies them
(``tf.convert_to_tensor``: duplicates summed) and join the dense group: the
numbers of "exact" mode, and of the built-in. ``sparse_mode="lazy"`` has no
such update (it would requantize blocks it leaves alone): those variables
run the exact update, after a warning. Their indices are checked with the
step's (Note [atomic steps]); clipping after aggregation clips the densified
gradient, as it clips a dense one.

Inside XLA compilation (jit_compile=True) the fused ops lower to an in-place
custom call (Note [XLA lowering] in cc/tf/xla_ops.cc) for dense gradients of
CPU variables; for GPU variables and IndexedSlices gradients the built-in code
path runs instead, with the same numbers (a warning says so once).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import functools

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from keras.src.optimizers import base_optimizer as _keras_base

from tensorflow.python.trackable import base as _trackable
from tensorflow.python.trackable import data_structures as _data_structures

from fusedopt import _atomic
from fusedopt import _tf_context as _ctx
from fusedopt import ops
from fusedopt import state as _state
from fusedopt.keras import _checkpoint


@functools.lru_cache(maxsize=None)
def _low_precision_rules() -> dict[str, tuple[str, ...]]:
    """The rules with low-precision state and each one's non-negative slots
    (the op library's build info, from the rule registry)."""
    import fusedopt

    info = fusedopt.build_info().get("low_precision_state", {})
    return {rule: tuple(v["nonneg_slots"]) for rule, v in info.items()}


class GroupKey(NamedTuple):
    """The variables of one fused call share a key (``_group_key``)."""

    device: str
    dtype: tf.DType
    decays: bool  # whether weight decay applies
    sparse: bool  # IndexedSlices gradients
    state: str = "float32"  # the slots' state_dtype (fusedopt.state)


class FusedCall(NamedTuple):
    """How a class's step maps onto its ``fusedopt.ops`` function, which the
    generic ``_fused_apply`` calls once per group (Note [fused call tables])::

        ops.<op>(variables, grads, learning_rate, <slots>, step=<iterations + 1>,
                 <hypers>, weight_decay=..., <flags>, **options)

    Note [fused call tables]: a class declares its op call instead of writing
    it. ``op`` names the ``fusedopt.ops`` function, looked up at each call (so
    that a replacement of it is called, as a written call's would be);
    ``slots`` maps an op keyword to the optimizer's slot list attribute (the
    group's variables' entries are passed), or to (attribute, condition) for
    an optional slot list, None when ``condition(optimizer)`` is false;
    ``hypers`` maps an op keyword to an optimizer attribute or to a function
    of the optimizer; ``flags`` are constant op arguments. A step that needs
    more than one call, or an op outside the rule registry, keeps a method of
    its own (``_fused_apply``).
    """

    op: str
    slots: Mapping[str, str | tuple[str, Callable[[Any], bool]]]
    hypers: Mapping[str, str | Callable[[Any], Any]] = {}
    step: bool = False
    flags: Mapping[str, Any] = {}

    @property
    def rule(self) -> str:
        """The registry's name of the rule the call runs (``apply_<rule>``)."""
        return self.op[len("apply_"):]


def _slots(opt, slot_list, variables):
    return [slot_list[opt._get_variable_index(v)] for v in variables]


def _step(opt):
    # (Once per step: Note [one check per kind] in fusedopt/_atomic.py.)
    return _atomic.memo(("step", id(opt)), lambda: opt.iterations + 1)


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


def _global_clip_scale(grads: Sequence[Any], clip_norm: float) -> tf.Tensor:
    """Keras' ``clip_by_global_norm`` factor for ``grads`` (its ``global_norm``
    and its expression, so the same bits): ``clip / max(norm, clip)``, NaN
    when the norm is not finite."""
    use_norm = _keras_base.global_norm([g for g in grads if g is not None])
    scale_for_finite = clip_norm * keras.ops.minimum(1.0 / use_norm, 1.0 / clip_norm)
    return scale_for_finite + (use_norm - use_norm)


def _scale_gradient(g, scale):
    if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(g.values * tf.cast(scale, g.values.dtype), g.indices, g.dense_shape)
    return g * tf.cast(scale, g.dtype)


# The names of the variables BaseOptimizer.build makes per model variable,
# which are not the rule's slots: use_ema's averages, gradient_accumulation_steps'
# accumulators.
_KERAS_NON_SLOT_NAMES = ("average", "gradient_accumulator")


class FusedOptimizerMixin:
    """Mixin placed before a built-in ``keras.optimizers.*`` class.

    Adds constructor arguments, each saved in the config only when it is
    not the default, so configs equal the built-in's:

    * ``sparse_mode`` ("exact" or "lazy"): how IndexedSlices gradients update;
    * ``clip_after_aggregation`` (bool, default False): with True, ``clipnorm``,
      ``global_clipnorm`` or ``clipvalue`` clip the gradient summed over the
      replicas of a ``tf.distribute`` strategy, inside the fused update, as
      tf_keras does, so N replicas train like one device; with False (the
      built-in's behaviour and numbers) each replica's partial gradient is
      clipped before the sum. It needs one of the three clipping options
      (Note [clip after aggregation]);
    * ``state_dtype`` ("float32", "bfloat16" or "int8"; the classes whose
      rule has low-precision state, Note [low-precision state] and
      ``fusedopt.state``): the slots' format. "bfloat16" keeps them in
      bfloat16; "int8" as uint8 codes plus a float32 ``<slot>_absmax``
      variable of one scale per block of 256 along a row (variables under
      ``fusedopt.state.MIN_QUANTIZED_ELEMENTS`` elements keep float32
      state). Keras' own per-variable state (EMA averages, gradient
      accumulators) keeps the variable's dtype. IndexedSlices gradients of
      rank-1 variables with int8 state run the dense update on the
      densified gradient (Note [densified int8 gradients]);
    * ``stochastic_rounding`` (bool): bfloat16 variables are stored with
      stochastic rounding too (bfloat16 state always is); ``rounding_seed``
      (int) seeds the rounding bits.

    Saved state converts between formats: ``from_keras`` and ``.keras``
    files (``load_own_variables``) convert float32 state, and a
    ``tf.train.Checkpoint`` restores any format into any other, also before
    the optimizer is built (Note [state checkpoints] in _checkpoint.py):
    float32 values are rounded to bfloat16 or quantized, bfloat16 and int8
    ones widened or dequantized, the same format is restored bit for bit.
    A built-in optimizer cannot read bfloat16 or int8 slots from a
    checkpoint (``assert_consumed`` says so); restore such a checkpoint into
    the fused class with ``state_dtype="float32"`` first.
    """

    def __init__(self, *args, sparse_mode: str = "exact", clip_after_aggregation: bool = False,
                 state_dtype: str = "float32", stochastic_rounding: bool = False,
                 rounding_seed: int = 0, **kwargs):
        _refuse_parameter_server()
        if sparse_mode not in ("exact", "lazy"):
            raise ValueError(f"sparse_mode must be 'exact' or 'lazy', got {sparse_mode!r}")
        if sparse_mode == "lazy" and self._no_lazy_sparse_mode is not None:
            raise ValueError(f"{self._no_lazy_sparse_mode}; use sparse_mode='exact'")
        if not isinstance(clip_after_aggregation, bool):
            raise TypeError("clip_after_aggregation must be True or False, got "
                            f"{clip_after_aggregation!r}")
        super().__init__(*args, **kwargs)
        self._fused_check_state_options(state_dtype, stochastic_rounding)
        self.state_dtype = state_dtype
        self.stochastic_rounding = bool(stochastic_rounding)
        self.rounding_seed = int(rounding_seed)
        self._fused_absmax: dict[int, Any] = {}  # id(slot variable) -> its absmax variable
        self._fused_initial_values: dict[int, np.ndarray] = {}
        with _trackable.no_automatic_dependency_tracking_scope(self):
            # (Not a dependency of its own: it stands in for _variables.)
            self._fused_checkpoint = _checkpoint.StateCheckpoint(self)
        self.sparse_mode = sparse_mode
        self.clip_after_aggregation = clip_after_aggregation
        if clip_after_aggregation and not self._clip_setting():
            raise ValueError(
                "clip_after_aggregation=True moves gradient clipping after the cross-replica "
                "sum, but no clipping is set: also pass one of clipnorm, global_clipnorm or "
                "clipvalue (> 0)")

    def _clip_setting(self) -> dict[str, float]:
        """The one clipping option in effect, as Keras' _clip_gradients picks
        it ({} for none)."""
        for name in ("clipnorm", "global_clipnorm", "clipvalue"):
            value = getattr(self, name, None)
            if value and value > 0:
                return {name: value}
        return {}

    def _clip_deferred(self) -> bool:
        """Whether this step clips after the cross-replica sum (Note [clip
        after aggregation]): Keras' _clip_gradients then does nothing."""
        return bool(self.clip_after_aggregation and self._fused_step_active)

    def _clip_gradients(self, grads):
        if self._clip_deferred():
            return grads  # clipped after the sum (Note [clip after aggregation])
        return super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Called by Keras' own _backend_update_step, i.e. when this step runs
        # the built-in's update: Keras' clipping, on the sums.
        summed = list(super()._all_reduce_sum_gradients(grads_and_vars))
        if not self._clip_deferred() or not summed:
            return summed
        clipped = super()._clip_gradients([g for g, _ in summed])
        return [(g, v) for g, (_, v) in zip(clipped, summed)]

    def _fused_clip_options(self, summed_grads: Sequence[Any]) -> dict[str, Any]:
        """Gradient options that clip the summed gradients in the fused calls
        ({} unless clipping is deferred; Note [clip after aggregation])."""
        if not self._clip_deferred():
            return {}
        setting = self._clip_setting()
        if "global_clipnorm" in setting:
            return {"grad_scale": _global_clip_scale(summed_grads, setting["global_clipnorm"])}
        return setting

    def _clip_in_tf(self, grads: Sequence[Any], options: dict[str, Any]) -> list[Any]:
        """For ops that take no gradient options: removes the clipping from
        ``options`` and applies it to ``grads`` with Keras' own ops."""
        scale = options.pop("grad_scale", None)
        clipnorm = options.pop("clipnorm", None)
        clipvalue = options.pop("clipvalue", None)
        grads = list(grads)
        if scale is not None:
            grads = [_scale_gradient(g, scale) for g in grads]
        if clipnorm is not None:
            grads = [self._clip_by_norm(g) for g in grads]
        if clipvalue is not None:
            grads = [keras.ops.clip(g, -clipvalue, clipvalue) for g in grads]
        return grads

    def build(self, variables):
        _refuse_parameter_server()
        super().build(variables)
        if self._fused_low_precision():
            self._fused_encode_initial_slots()
        if self._fused_has_state_formats():
            # A checkpoint restored before the build (Note [state checkpoints]).
            self._fused_checkpoint.restore_deferred()

    def get_config(self):
        config = super().get_config()
        if self.state_dtype != "float32":
            config["state_dtype"] = self.state_dtype
        if self.stochastic_rounding:
            config["stochastic_rounding"] = True
        if self.rounding_seed:
            config["rounding_seed"] = self.rounding_seed
        if self.sparse_mode != "exact":
            config["sparse_mode"] = self.sparse_mode
        if self.clip_after_aggregation:
            config["clip_after_aggregation"] = True
        return config

    # ---- Low-precision state (Note [low-precision state]; fusedopt.state) ----

    def _fused_check_state_options(self, state_dtype: str, stochastic_rounding: bool) -> None:
        if state_dtype not in _state.STATE_DTYPES:
            raise ValueError(f"state_dtype must be one of {list(_state.STATE_DTYPES)}, got "
                             f"{state_dtype!r}")
        if state_dtype == "float32" and not stochastic_rounding:
            return
        rules = _low_precision_rules()
        call = self._fused_call
        if call is None or call.rule not in rules:
            what = (f"state_dtype={state_dtype!r}" if state_dtype != "float32"
                    else "stochastic_rounding=True")
            raise ValueError(f"{what}: {type(self).__name__} has no low-precision state; "
                             f"the classes of the rules {sorted(rules)} have it")
        flags = call.flags
        if flags.get("tf_training_op_form"):
            raise ValueError(f"state_dtype={state_dtype!r} takes Keras' form of the rule")
        if state_dtype == "int8" and self._fused_int8_refusal() is not None:
            raise ValueError(f"state_dtype='int8': {self._fused_int8_refusal()}; use "
                             "state_dtype='bfloat16'")

    def _fused_int8_refusal(self) -> str | None:
        """Why this configuration of the class cannot have int8 state (None:
        it can)."""
        return None

    def _fused_low_precision(self) -> bool:
        return self.state_dtype != "float32" or self.stochastic_rounding

    def _fused_refuse_builtin_with_low_precision(self, variables) -> None:
        """Keras' built-in update cannot run on bfloat16 or int8 slots (nor
        round stochastically): a step that would fall back to it raises."""
        if not self._fused_low_precision():
            return
        if any(self._fused_state_of(v) != "float32" for v in variables) or (
                self.stochastic_rounding and any(
                    tf.as_dtype(v.dtype).base_dtype == tf.bfloat16 for v in variables)):
            raise NotImplementedError(
                f"{type(self).__name__}(state_dtype={self.state_dtype!r}, stochastic_rounding="
                f"{self.stochastic_rounding}) runs only the fused kernels, and this step cannot "
                "(see the warning above: XLA, GPU variables or a dtype without kernels); use "
                "state_dtype='float32' there")

    def _fused_state_of(self, var) -> str:
        """The state_dtype of ``var``'s slots: this optimizer's, except float32
        for variables of other dtypes than float32/bfloat16, and (int8) for
        variables under MIN_QUANTIZED_ELEMENTS elements."""
        if self.state_dtype == "float32":
            return "float32"
        dtype = tf.as_dtype(var.dtype).base_dtype
        if dtype not in (tf.float32, tf.bfloat16):
            return "float32"
        if self.state_dtype == "int8":
            elements = int(np.prod(var.shape)) if len(var.shape) else 1
            if elements < _state.MIN_QUANTIZED_ELEMENTS:
                return "float32"
        return self.state_dtype

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        """Keras' slot creation; with ``state_dtype`` "bfloat16" a bfloat16
        slot, with "int8" a uint8 slot of codes plus a float32 ``<name>_absmax``
        variable of one value per block (fusedopt.state), holding the
        initializer's values quantized. Keras' own per-variable state (the
        EMA's averages, gradient accumulators) keeps the variable's dtype."""
        fmt = self._fused_state_of(reference_variable)
        if fmt == "float32" or name in _KERAS_NON_SLOT_NAMES:
            return super().add_variable_from_reference(reference_variable, name, initializer)
        shape = tuple(reference_variable.shape)
        init = keras.initializers.get(initializer)
        with tf.init_scope():  # (Keras may build in a tf.function: slots are made eagerly)
            values = np.asarray(init(shape, dtype="float32"), dtype=np.float32)
        path = reference_variable.path.replace("/", "_")
        slot_name = f"{path}_{name}"
        if fmt == "bfloat16":
            slot = self.add_variable(shape=shape, dtype="bfloat16", name=slot_name,
                                     initializer=lambda s, dtype=None: tf.cast(values, tf.bfloat16))
            self._fused_checkpoint.register(slot, reference_variable.dtype)
            return slot
        # Which code a slot takes (signed, or unsigned for non-negative
        # values) is the op's, known once build() has filled the slot lists:
        # zeros are code 0 in both; other initial values (an
        # accumulators of a constant) are encoded again in build().
        codes, absmax = _state.quantize(values, signed=True)
        slot = self.add_variable(shape=shape, dtype="uint8", name=slot_name,
                                 initializer=lambda s, dtype=None: tf.constant(codes))
        scale = self.add_variable(shape=absmax.shape, dtype="float32",
                                  name=f"{slot_name}_absmax",
                                  initializer=lambda s, dtype=None: tf.constant(absmax))
        self._fused_absmax[id(slot)] = scale
        self._fused_checkpoint.register(slot, reference_variable.dtype)
        if np.any(values != 0):
            self._fused_initial_values[id(slot)] = values
        return slot

    def _fused_take_state(self, source_variables) -> None:
        """Takes over a built-in optimizer's variables (from_keras): in
        order, each into the variable this optimizer made in its place;
        bfloat16 slots take the values rounded, int8 slots quantized (their
        absmax variables are filled with them)."""
        absmax_ids = {id(a) for a in self._fused_absmax.values()}
        mine = [v for v in self.variables if id(v) not in absmax_ids]
        if len(mine) != len(source_variables):
            raise ValueError(
                f"cannot transfer the state of a {self._fused_builtin().__name__}: it has "
                f"{len(source_variables)} variables, the fused one {len(mine)}")
        for dst, src in zip(mine, source_variables):
            value = src.numpy() if hasattr(src, "numpy") else np.asarray(src)
            if dst.dtype == "uint8":
                self._fused_initial_values[id(dst)] = np.asarray(value, np.float32)
            else:
                dst.assign(tf.cast(value, dst.dtype))
        self._fused_encode_initial_slots()

    def load_own_variables(self, store):
        """Keras' loading of saved optimizer variables (.keras files). With
        low-precision state it also loads a float32-state save (one without
        the absmax variables, whose slots are float32): the slots are
        converted as from_keras converts them (rounded to bfloat16, or
        quantized)."""
        absmax_ids = {id(a) for a in self._fused_absmax.values()}
        mine = [v for v in self.variables if id(v) not in absmax_ids]
        if (not absmax_ids and self.state_dtype != "bfloat16") or \
                len(store.keys()) != len(mine) or len(mine) == len(self.variables) and all(
                    np.dtype(store[str(i)].dtype) == np.dtype(v.dtype)
                    for i, v in enumerate(mine)):
            return super().load_own_variables(store)
        self._fused_take_state([np.asarray(store[str(i)]) for i in range(len(mine))])

    def _fused_encode_initial_slots(self) -> None:
        """int8 slots with pending float32 values (initial values that are not
        zero, after build(); a built-in's state, from_keras) get them in the
        code of their op slot (the unsigned one for non-negative slots)."""
        pending, self._fused_initial_values = self._fused_initial_values, {}
        if not pending:
            return
        for slot in self._fused_op_slots().values():
            values = pending.get(id(slot))
            if values is not None:
                self._fused_write_slot(slot, values)

    def _fused_has_state_formats(self) -> bool:
        """Whether the class has low-precision state (its rule's op takes it):
        then its checkpoints go through StateCheckpoint (Note [state
        checkpoints]), whatever this instance's state_dtype."""
        call = self._fused_call
        return call is not None and call.rule in _low_precision_rules()

    def _fused_op_slots(self) -> dict[int, Any]:
        """id -> slot variable of every slot the op takes (once build() has
        filled the slot lists)."""
        call = self._fused_call
        slots: dict[int, Any] = {}
        if call is None:
            return slots
        for source in call.slots.values():
            attribute = source[0] if isinstance(source, tuple) else source
            for slot in getattr(self, attribute, None) or []:
                if slot is not None:
                    slots[id(slot)] = slot
        return slots

    def _fused_slot_signed(self, slot) -> bool:
        """Whether an int8 ``slot`` takes the signed code (not one of its
        rule's non-negative slots)."""
        call = self._fused_call
        nonneg = set(_low_precision_rules()[call.rule])
        for keyword, source in call.slots.items():
            attribute = source[0] if isinstance(source, tuple) else source
            if any(s is slot for s in getattr(self, attribute, None) or []):
                return keyword not in nonneg
        raise ValueError(f"{slot.path} is not a slot of {type(self).__name__}'s op")

    def _fused_write_slot(self, slot, values: np.ndarray) -> None:
        """Stores float32 ``values`` into ``slot`` in its format: quantized
        (int8, with its absmax), rounded to nearest (bfloat16) or cast."""
        with tf.init_scope():
            if id(slot) in self._fused_absmax and slot.dtype == "uint8":
                codes, absmax = _state.quantize(values, signed=self._fused_slot_signed(slot))
                slot.assign(codes)
                self._fused_absmax[id(slot)].assign(absmax)
            else:
                slot.assign(tf.cast(np.asarray(values, np.float32), slot.dtype))

    # ---- tf.train.Checkpoint (Note [state checkpoints] in _checkpoint.py) ----

    def _fused_is_state_list(self, child) -> bool:
        """Whether a tracked data structure holds this optimizer's variables
        (a slot list such as ``_momentums``): those are checkpointed by
        position, through StateCheckpoint, only."""
        if not isinstance(child, _data_structures.TrackableDataStructure):
            return False
        mine = {id(v) for v in getattr(self, "_variables", ())}
        return bool(mine) and any(id(c) in mine for c in child._trackable_children(
            save_type=_trackable.SaveType.CHECKPOINT).values())

    def _trackable_children(self, save_type=_trackable.SaveType.CHECKPOINT, **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type != _trackable.SaveType.CHECKPOINT or not self._fused_has_state_formats():
            return children
        out = {}
        for name, child in children.items():
            if name == "_variables":
                out[name] = self._fused_checkpoint
            elif not name.startswith("_fused_") and not self._fused_is_state_list(child):
                out[name] = child
        return out

    def _lookup_dependency(self, name, cached_dependencies=None):
        # (Called without cached_dependencies when an attribute is tracked:
        # Keras' own dependencies then.)
        if cached_dependencies is None or not self._fused_has_state_formats():
            return super()._lookup_dependency(name, cached_dependencies)
        return cached_dependencies.get(name)

    def _handle_deferred_dependencies(self, name, trackable):
        if self._fused_is_state_list(trackable) and self._fused_has_state_formats():
            # A checkpoint's slot list (Keras' _momentums, ...): its variables
            # are restored by position, converted (Note [state checkpoints]).
            self._deferred_dependencies.pop(name, None)
            return
        super()._handle_deferred_dependencies(name, trackable)

    def _fused_state_options(self, key, call: FusedCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The fusedopt.ops state arguments of one group's call."""
        state_dtype = getattr(key, "state", "float32")
        if state_dtype == "float32" and not self.stochastic_rounding:
            return {}
        options: dict[str, Any] = {"state_dtype": state_dtype,
                                   # The step folded into the seed: new bits each step.
                                   "rounding_seed": tf.cast(self.iterations, tf.int64) +
                                   tf.constant(self.rounding_seed * 0x9E3779B97F4A7C15 % (1 << 63),
                                               tf.int64)}
        if self.stochastic_rounding and key.dtype == tf.bfloat16:
            options["stochastic_rounding"] = True
        if state_dtype == "int8":
            options["absmax"] = {kw: [self._fused_absmax[id(s)] for s in kwargs[kw]]
                                 for kw in call.slots if kwargs.get(kw)}
        return options

    # The class's op call (Note [fused call tables]); None: _fused_apply is its own.
    _fused_call: FusedCall | None = None

    # Why the class has no sparse_mode="lazy" (None: it has one).
    _no_lazy_sparse_mode: str | None = None

    @classmethod
    def _fused_builtin(cls) -> type:
        """The built-in Keras optimizer this class is a drop-in for (the first
        Keras class it subclasses)."""
        return next(b for b in cls.__mro__[1:] if b.__module__.startswith("keras"))

    def _fused_apply(
        self,
        variables: Sequence[tf.Variable],
        grads: Sequence[tf.Tensor],
        learning_rate: tf.Tensor,
        weight_decay: float,
        **options: Any,
    ) -> Any:
        """Applies the update to one group (same device, dtype, weight-decay use
        and sparseness) in one op: the class's ``_fused_call``.

        ``options`` are passed to the fusedopt.ops function: gradient options
        (``grad_scale``, ``clipnorm``, ``clipvalue`` with
        ``clip_after_aggregation``; Grappler's forms) and, for IndexedSlices
        gradients, ``sparse_mode``. An op without gradient options takes the
        clipping from ``_clip_in_tf`` instead.
        """
        if self._fused_call is None:
            raise NotImplementedError
        return self._fused_run(self._fused_call, variables, grads, learning_rate, weight_decay,
                               **options)

    def _fused_run(self, call: FusedCall, variables, grads, learning_rate, weight_decay,
                   **options: Any) -> Any:
        """Makes the op call ``call`` declares for one group."""
        kwargs: dict[str, Any] = {}
        for keyword, source in call.slots.items():
            attribute, condition = source if isinstance(source, tuple) else (source, None)
            kwargs[keyword] = (None if condition is not None and not condition(self)
                               else _slots(self, getattr(self, attribute), variables))
        if call.step:
            kwargs["step"] = _step(self)
        for keyword, source in call.hypers.items():
            kwargs[keyword] = getattr(self, source) if isinstance(source, str) else source(self)
        key = options.pop("group_key", None)
        if key is not None:
            options.update(self._fused_state_options(key, call, kwargs))
        return getattr(ops, call.op)(variables, grads, learning_rate, **kwargs,
                                     weight_decay=weight_decay, **call.flags, **options)

    def _fused_prepare_step(self) -> None:
        """Computes per-step optimizer state the update needs (a running
        product of the rule's, say), without assigning it: see
        _fused_finish_step."""

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
    clip_after_aggregation = False

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
        if not enabled:
            self._fused_refuse_builtin_with_low_precision(trainable_variables)
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

    def _fused_densifies(self, var, grad) -> bool:
        """Whether an IndexedSlices ``grad`` of ``var`` runs the dense update
        on its densified sum instead of the sparse kernels: for a rank-1
        variable with int8 state (Note [densified int8 gradients])."""
        if not isinstance(grad, tf.IndexedSlices) or len(var.shape) > 1 or \
                self._fused_state_of(var) != "int8":
            return False
        if self.sparse_mode == "lazy":
            _ctx.warn_fallback_once(
                "a rank-1 variable with int8 state has no lazy sparse update (its "
                "quantization blocks span the elements a lazy update would leave alone): its "
                "IndexedSlices gradients run the exact update, densified")
        return True

    def _group_key(self, var, grad) -> GroupKey:
        """A GroupKey, or for classes that need more a named tuple with its
        fields and others (e.g. a class with two update paths: its path); one
        fused call per distinct key."""
        decays = self.weight_decay is not None and self._use_weight_decay(var)
        return GroupKey(device=var.device, dtype=var.dtype.base_dtype, decays=decays,
                        sparse=isinstance(grad, tf.IndexedSlices),
                        state=self._fused_state_of(var))

    def _group_weight_decay(self, key: GroupKey, variables) -> Any:
        """The weight decay of a decaying group (a class may decay per path)."""
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
        summed = grads
        if _ctx.in_xla_context():
            # Note [sparse under XLA] (_tf_context.densify_for_xla): "exact"
            # IndexedSlices run the dense lowering on their sum.
            grads = [_ctx.densify_for_xla(g, v) for g, v in zip(grads, trainable_variables)]
        grads_and_vars = list(zip(grads, trainable_variables))
        if tf.distribute.has_strategy():
            # (Without a strategy the sum over one replica is an Identity per
            # gradient: skipped, the same values for less work.) The plain
            # sum: the fused calls clip it (Note [clip after aggregation]).
            grads_and_vars = super()._all_reduce_sum_gradients(grads_and_vars)
            summed = [g for g, _ in grads_and_vars]
        clip_options = self._fused_clip_options(summed)
        updates = tf.__internal__.distribute.interim.maybe_merge_call(
            self._fused_distributed_update,
            self._distribution_strategy,
            grads_and_vars,
            learning_rate,
            clip_options,
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

    def _fused_distributed_update(self, distribution, grads_and_vars, learning_rate,
                                  clip_options=None):
        groups: dict[GroupKey, list[tuple[Any, Any]]] = {}
        densified = False
        for grad, var in grads_and_vars:
            # Under a strategy a gradient is a distributed value: its kind
            # (dense or IndexedSlices) is its components'.
            kind = (distribution.experimental_local_results(grad)[0]
                    if tf.distribute.has_strategy() else grad)
            if self._fused_densifies(var, kind):
                densified = True
                kind = None  # a dense group's (Note [densified int8 gradients])
            groups.setdefault(self._group_key(var, kind), []).append((grad, var))
        # Note [atomic steps]: with several groups every pair is checked before
        # any group writes (one op checks all of its own inputs first); so are
        # densified IndexedSlices, whose indices no op sees.
        checks = []
        if len(groups) > 1 or densified:
            local = (distribution.experimental_local_results if tf.distribute.has_strategy()
                     else None)
            checks = _atomic.step_checks(grads_and_vars, local)
        with tf.control_dependencies(checks):
            return self._fused_group_updates(distribution, groups, learning_rate,
                                             clip_options or {})

    def _fused_group_updates(self, distribution, groups, learning_rate, clip_options):
        # clip_options (Note [clip after aggregation]) may hold a per-replica
        # grad_scale: extended.update gives each device's call its own.
        updates = []
        for key, items in groups.items():
            dtype, sparse = key.dtype, key.sparse
            variables = [v for _, v in items]
            weight_decay = self._group_weight_decay(key, variables) if key.decays else 0.0

            def apply_group(_first, group_grads, clip, variables=variables, dtype=dtype,
                            wd=weight_decay, sparse=sparse, key=key):
                # Inside the update context, v.handle is this replica's component.
                group_grads = [_cast_grad(g, v, dtype) for g, v in zip(group_grads, variables)]
                if not sparse:
                    # (Note [densified int8 gradients]: Keras' own densification.)
                    group_grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices)
                                   else g for g in group_grads]
                arithmetic, folding = _ctx.grappler_rewrites()
                options = {"grappler_form": arithmetic, "grappler_constant_folding": folding,
                           **clip}
                if self._fused_low_precision():
                    options["group_key"] = key
                if sparse:
                    options["sparse_mode"] = self.sparse_mode
                    if "clipnorm" in clip or "clipvalue" in clip:
                        # Keras clips an IndexedSlices' values as given (a row
                        # per lookup), the kernels the rows after summing
                        # duplicates: Keras' ops (Note [clip after aggregation]).
                        group_grads = self._clip_in_tf(group_grads, options)
                return self._fused_apply(variables, group_grads, learning_rate, wd, **options)

            group_grads = [g for g, _ in items]
            if not tf.distribute.has_strategy():
                # No strategy: call directly. (The default strategy's update
                # would add an Identity op per gradient: ~1 us each per step.)
                with tf_ops.colocate_with(variables[0]):
                    updates.append(apply_group(variables[0], group_grads, clip_options))
            else:
                updates.append(distribution.extended.update(
                    variables[0], apply_group, args=(group_grads, clip_options), group=False
                ))
        return updates
