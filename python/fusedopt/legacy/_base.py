"""What every fused tf_keras (OptimizerV2) optimizer shares.

Note [fused legacy step]: a fused legacy optimizer subclasses the tf_keras
built-in of the same name (where one exists), so construction, hyperparameters,
``get_config()``, slot names, ``_prepare_local``'s coefficients and checkpoints
are tf_keras' own. It changes three hooks:

* ``_prepare_local`` adds what the fused op needs beyond the built-in's
  coefficients (the step), once per (device, dtype), as tf_keras intends;
* ``_resource_apply_dense`` and ``_resource_apply_sparse_duplicate_indices``
  call the fused op for one variable (the per-variable path, used with
  ``multi_tensor=False`` and by code that calls these hooks directly);
* ``_distributed_apply`` (called by ``apply_gradients`` after tf_keras has
  aggregated the gradients across replicas and clipped them) groups the
  variables by (device, dtype, dense or sparse) and makes one fused op call
  per group inside ``distribution.extended.update``: under a
  ``tf.distribute`` strategy, one call per group on each replica device.

tf_keras clips gradients after the cross-replica sum already, so clipping
stays tf_keras' own. Sparse gradients go to the sparse ops in the mode that
gives the built-in's numbers (``lazy`` where the built-in touches only the
listed rows, ``exact`` where it decays every row); a built-in whose sparse
update is neither (one that decays every slot row but moves only the listed
variable rows) keeps tf_keras' own ops unless ``sparse_mode`` is given
(``_builtin_sparse_mode`` None).
Inside XLA compilation the fused ops lower to an in-place custom call for dense
gradients of CPU variables (Note [XLA lowering] in cc/tf/xla_ops.cc); elsewhere
under XLA the built-in ops run (a warning says so once).

Note [legacy low-precision state] (issue #31; Note [low-precision state] in
docs/ARCHITECTURE.md, ``fusedopt.state``): the classes whose rule has
low-precision state take ``state_dtype`` ("float32", "bfloat16", "int8"),
``stochastic_rounding`` and ``rounding_seed``, as ``fusedopt.keras`` does:

* ``add_slot`` makes their moment and accumulator slots bfloat16, or uint8
  codes plus a float32 ``<slot>_absmax`` slot of one value per block
  (``fusedopt.state.num_blocks``), ordinary slot variables, so checkpoints,
  ``get_weights`` and strategies handle them as any slot; an initial value
  other than zero (a constant initial accumulator) is quantized with the op slot's
  code. Variables of other dtypes than float32 and bfloat16 keep slots of
  their own dtype, and (int8) variables under MIN_QUANTIZED_ELEMENTS
  elements float32 ones, as in fusedopt.keras. A checkpoint saved in one
  format restores into any other (float32 quantized or rounded to nearest,
  int8 dequantized, bfloat16 widened: Note [legacy state checkpoints] in
  _checkpoint.py), the same format bit for bit;
* a group with low-precision slots (or bfloat16 variables with
  ``stochastic_rounding``) runs the Keras form of the class's rule
  (``_fused_state_call``: the same formula without the built-in's operation
  order, which only float32 slots can reproduce bit for bit; float32 groups
  keep the built-in's numbers) and passes the state inputs;
* IndexedSlices of such variables take the built-in's sparse semantics where
  a fused mode has them (``_fused_state_sparse_mode``), else the step raises
  and asks for a ``sparse_mode``. int8 slots of a rank-1 variable cannot take
  a sparse update (their blocks span the whole vector): with the "exact"
  mode, or a rule for which a zero gradient changes nothing (so "lazy" is
  "exact"), the gradient is densified first; otherwise the step raises;
* tf_keras' own update cannot run on such slots: where the class would fall
  back to it (XLA, GPU variables fusedopt's kernels cannot serve), the step
  raises instead.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf
from tf_keras.src import backend
from tf_keras.src import initializers as tf_keras_initializers
from tf_keras.src.optimizers.legacy import optimizer_v2
from tf_keras.src.utils import tf_utils

from fusedopt import _atomic
from fusedopt import _tf_context as _ctx
from fusedopt import ops
from fusedopt import state as _state
from fusedopt.legacy import _checkpoint
from fusedopt.legacy import _parameter_server

_SPARSE_MODES = (None, "exact", "lazy")


@functools.lru_cache(maxsize=None)
def _low_precision_rules() -> dict[str, tuple[str, ...]]:
    """The rules with low-precision state and each one's non-negative slots
    (the op library's build info, from the rule registry)."""
    import fusedopt

    info = fusedopt.build_info().get("low_precision_state", {})
    return {rule: tuple(v["nonneg_slots"]) for rule, v in info.items()}


def _true_dtype(var: Any) -> tf.DType:
    """A variable's own dtype (an AutoCastVariable's, not the cast one)."""
    return tf.as_dtype(getattr(var, "true_dtype", var.dtype)).base_dtype


class GroupKey(NamedTuple):
    """The variables of one fused call share a key (``_distributed_apply``)."""

    device: str
    dtype: tf.DType
    sparse: bool  # IndexedSlices gradients
    state: str = "float32"  # the slots' state_dtype (Note [legacy low-precision state])
    sparse_mode: str | None = None  # of IndexedSlices gradients ("exact", "lazy")


class FusedCall(NamedTuple):
    """How a class's update maps onto its ``fusedopt.ops`` function, which the
    generic ``_fused_update`` calls (Note [fused call tables] in keras/_base)::

        ops.<op>(variables, grads, c["lr_t"], <slots>, step=c["fused_step"], <hypers>,
                 **options, <flags>)

    ``op`` names the ``fusedopt.ops`` function, looked up at each call (so that
    a replacement of it is called, as a written call's would be); ``slots``
    maps an op keyword to a slot name (each variable's slot of that name is
    passed), or to (name, condition) for an optional slot list, None when
    ``condition(optimizer)`` is false; ``hypers`` maps an op keyword to a
    key of the (device, dtype)'s coefficients ``c`` or to a function of the
    optimizer and ``c``; ``flags`` are constant op arguments, which take
    precedence over ``options``. ``sparse_form``: in the default sparse mode
    IndexedSlices take tf_keras' own sparse order (``_sparse_options``).
    """

    op: str
    slots: Mapping[str, str | tuple[str, Callable[[Any], bool]]]
    hypers: Mapping[str, str | Callable[[Any, dict[str, Any]], Any]] = {}
    step: bool = False
    flags: Mapping[str, Any] = {}
    sparse_form: bool = False

    @property
    def rule(self) -> str:
        """The registry's name of the rule the call runs (``apply_<rule>``)."""
        return self.op[len("apply_"):]


class FusedLegacyMixin:
    """Mixin placed before an OptimizerV2 class.

    Adds constructor arguments, saved in the config only when not default
    (so configs equal the built-in's):

    * ``sparse_mode``: None (default) updates IndexedSlices gradients with the
      built-in's semantics; "exact" gives the densified-gradient result,
      "lazy" touches only the listed rows.
    * ``multi_tensor``: True (default) makes one fused call per (device,
      dtype) group; False one per variable, through the standard hooks.
    * ``state_dtype`` ("float32" default, "bfloat16", "int8"),
      ``stochastic_rounding`` (bool) and ``rounding_seed`` (int): optimizer
      state in fewer bytes, for the classes whose rule has it (Note [legacy
      low-precision state]; ``fusedopt.state``). ``stochastic_rounding``
      rounds the updated values of bfloat16 variables stochastically;
      bfloat16 state always is. ``rounding_seed`` (with the step) seeds the
      rounding bits.
    """

    # What sparse_mode=None means for this class: "exact", "lazy", or None for
    # "the built-in's own ops".
    _builtin_sparse_mode: str | None = "exact"

    def __init__(self, *args: Any, sparse_mode: str | None = None, multi_tensor: bool = True,
                 state_dtype: str = "float32", stochastic_rounding: bool = False,
                 rounding_seed: int = 0, **kwargs: Any):
        if sparse_mode not in _SPARSE_MODES:
            raise ValueError(f"sparse_mode must be None, 'exact' or 'lazy', got {sparse_mode!r}")
        if not isinstance(stochastic_rounding, (bool, np.bool_)):
            raise TypeError("stochastic_rounding must be True or False, got "
                            f"{stochastic_rounding!r}")
        if isinstance(rounding_seed, bool) or not isinstance(rounding_seed, (int, np.integer)):
            raise TypeError(f"rounding_seed must be an int, got {rounding_seed!r}")
        super().__init__(*args, **kwargs)
        self.sparse_mode = sparse_mode
        self.multi_tensor = bool(multi_tensor)
        self._fused_check_state_options(state_dtype, bool(stochastic_rounding))
        self.state_dtype = state_dtype
        self.stochastic_rounding = bool(stochastic_rounding)
        self.rounding_seed = int(rounding_seed)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.sparse_mode is not None:
            config["sparse_mode"] = self.sparse_mode
        if not self.multi_tensor:
            config["multi_tensor"] = False
        if self.state_dtype != "float32":
            config["state_dtype"] = self.state_dtype
        if self.stochastic_rounding:
            config["stochastic_rounding"] = True
        if self.rounding_seed:
            config["rounding_seed"] = self.rounding_seed
        return config

    # ---- Low-precision state (Note [legacy low-precision state]) -------------

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
        refusal = self._fused_int8_refusal() if state_dtype == "int8" else None
        if refusal is not None:
            raise ValueError(f"state_dtype='int8': {refusal}; use state_dtype='bfloat16'")

    def _fused_int8_refusal(self) -> str | None:
        """Why this configuration of the class cannot have int8 state (None:
        it can)."""
        return None

    # Whether a zero gradient leaves a variable and its slots unchanged (so
    # that the lazy sparse update is the exact one: Note [legacy low-precision
    # state], rank-1 int8 variables).
    _zero_gradient_is_identity = False

    def _fused_state_sparse_mode(self) -> str | None:
        """The fused sparse mode with the built-in's sparse semantics, for a
        class whose default sparse update is the built-in's own ops
        (``_effective_sparse_mode`` None), which low-precision slots cannot
        run; None: neither fused mode has them."""
        return None

    def _fused_state_slots(self) -> dict[str, str]:
        """{slot name: op keyword} of the slots this optimizer's
        configuration has (those its FusedCall passes)."""
        call = self._fused_call
        if call is None:
            return {}
        out = {}
        for keyword, source in call.slots.items():
            name, condition = source if isinstance(source, tuple) else (source, None)
            if condition is None or condition(self):
                out[name] = keyword
        return out

    def _fused_state_of(self, var: Any) -> str:
        """The state_dtype of ``var``'s slots: this optimizer's, except
        float32 (slots of the variable's dtype, as the built-in's) for
        variables of other dtypes than float32/bfloat16, for a configuration
        without slots, and (int8) for variables under MIN_QUANTIZED_ELEMENTS
        elements."""
        if getattr(self, "state_dtype", "float32") == "float32":
            return "float32"
        if _true_dtype(var) not in (tf.float32, tf.bfloat16) or not self._fused_state_slots():
            return "float32"
        if self.state_dtype == "int8":
            elements = int(np.prod(var.shape.as_list(), dtype=np.int64)) if var.shape.rank else 1
            if elements < _state.MIN_QUANTIZED_ELEMENTS:
                return "float32"
        return self.state_dtype

    def _fused_needs_state(self, var: Any) -> bool:
        """Whether ``var``'s update needs the fused kernels' state inputs:
        low-precision slots, or a bfloat16 variable rounded stochastically."""
        if self._fused_state_of(var) != "float32":
            return True
        return bool(getattr(self, "stochastic_rounding", False)) and _true_dtype(
            var) == tf.bfloat16

    def _fused_refuse_unfused(self, variables: Sequence[Any], why: str) -> None:
        """tf_keras' own update cannot run on low-precision slots (nor round
        stochastically): where this class would fall back to it, it raises."""
        if any(self._fused_needs_state(v) for v in variables):
            raise NotImplementedError(
                f"{type(self).__name__}(state_dtype={self.state_dtype!r}, stochastic_rounding="
                f"{self.stochastic_rounding}) runs only the fused kernels, and {why}; use "
                "state_dtype='float32' there")

    def _fused_sparse_route(self, var: Any) -> tuple[str | None, bool]:
        """(sparse mode, densify) of an IndexedSlices gradient of ``var``:
        the class's mode (None: the built-in's own ops), and whether the
        gradient is densified first (int8 slots of a rank-1 variable)."""
        mode = self._effective_sparse_mode()
        if not self._fused_needs_state(var):
            return mode, False
        if mode is None:
            mode = self._fused_state_sparse_mode()
            if mode is None:
                raise NotImplementedError(
                    f"{type(self).__name__}'s built-in sparse update (tf_keras' own ops) cannot "
                    f"run on state_dtype={self.state_dtype!r} slots and no fused sparse mode has "
                    f"its semantics: pass sparse_mode='exact' (the densified gradient's update) "
                    f"or 'lazy' (only the listed rows) for the IndexedSlices gradient of "
                    f"{var.name}")
        if self._fused_state_of(var) == "int8" and var.shape.rank < 2:
            if mode == "exact" or self._zero_gradient_is_identity:
                return mode, True
            raise NotImplementedError(
                f"{var.name} has rank 1: the int8 state's blocks span the whole vector, so it "
                f"takes no sparse update, and {type(self).__name__}'s sparse_mode={mode!r} "
                "updates only the listed elements (a densified gradient would decay the "
                "others): use sparse_mode='exact' or state_dtype='bfloat16'")
        return mode, False

    def add_slot(self, var: Any, slot_name: str, initializer: Any = "zeros",
                 shape: Any = None) -> tf.Variable:
        """OptimizerV2's slot creation; with low-precision state a slot the
        rule keeps in it is made bfloat16, or (int8) uint8 codes plus a float32
        ``<slot_name>_absmax`` slot of one value per block (fusedopt.state),
        holding the initializer's values rounded or quantized."""
        fmt = self._fused_state_of(var)
        slots = self._fused_state_slots()
        base = slot_name[:-len("_absmax")] if slot_name.endswith("_absmax") else None
        if fmt == "float32" or (slot_name not in slots and (base not in slots or fmt != "int8")):
            return super().add_slot(var, slot_name, initializer, shape)
        existing = self._slots.get(optimizer_v2._var_key(var), {}).get(slot_name)
        if existing is not None:
            return existing
        restoring = isinstance(initializer, tf.__internal__.tracking.CheckpointInitialValueCallable)
        if base is not None:  # (restored before its codes: made with them otherwise)
            dtype = tf.float32
            blocks = (_state.num_blocks(tuple(var.shape.as_list())),)
            initial = (functools.partial(initializer, shape=shape or blocks, dtype=dtype)
                       if restoring else lambda: tf.zeros(blocks, dtype))
            return self._fused_new_slot(var, slot_name, dtype, initial)
        dtype = tf.bfloat16 if fmt == "bfloat16" else tf.uint8
        if restoring:
            return self._fused_new_slot(var, slot_name, dtype, functools.partial(
                initializer, shape=shape if shape is not None else var.shape, dtype=dtype))
        init = tf_keras_initializers.get(initializer) if isinstance(initializer, str) or callable(
            initializer) else (lambda shape, dtype: tf.cast(initializer, dtype))
        slot_shape = tuple(var.shape.as_list()) if shape is None else tuple(shape)
        values = init(shape=slot_shape, dtype=tf.float32)
        if fmt == "bfloat16":
            return self._fused_new_slot(var, slot_name, dtype,
                                        lambda: tf.cast(values, tf.bfloat16))
        signed = self._fused_slot_signed(slot_name)
        if tf.executing_eagerly():  # (slots are made in an init_scope)
            codes, absmax = _state.quantize(np.asarray(values), signed=signed)
            codes, absmax = tf.constant(codes), tf.constant(absmax)
        else:  # a TF1 graph
            codes, absmax = tf.numpy_function(
                lambda x: _state.quantize(x, signed=signed), [values], [tf.uint8, tf.float32])
            codes.set_shape(slot_shape)
            absmax.set_shape([_state.num_blocks(slot_shape)])
        weight = self._fused_new_slot(var, slot_name, dtype, lambda: codes, restore=False)
        # (An absmax slot made by a restore before its codes is kept.)
        self._fused_new_slot(var, f"{slot_name}_absmax", tf.float32, lambda: absmax,
                             restore=False)
        # Restored once both exist: a restore from another format writes both
        # (Note [legacy state checkpoints]).
        for name in (slot_name, f"{slot_name}_absmax"):
            self._restore_slot_variable(slot_name=name, variable=var,
                                        slot_variable=self._slots[optimizer_v2._var_key(var)][name])
        return weight

    def _fused_slot_signed(self, slot_name: str) -> bool:
        """Whether the int8 code of the slot ``slot_name`` is the signed one
        (not one of its rule's non-negative slots)."""
        return self._fused_state_slots()[slot_name] not in _low_precision_rules()[
            self._fused_call.rule]

    def _fused_new_slot(self, var: Any, slot_name: str, dtype: tf.DType,
                        initial_value: Any, restore: bool = True) -> tf.Variable:
        """A slot variable as OptimizerV2.add_slot makes one (colocated with
        ``var``, tracked, restored when a checkpoint has it pending, unless
        ``restore`` is False), of ``dtype``; an existing one is returned as it
        is."""
        if slot_name not in self._slot_names:
            self._slot_names.append(slot_name)
        slot_dict = self._slots.setdefault(optimizer_v2._var_key(var), {})
        weight = slot_dict.get(slot_name)
        if weight is not None:
            return weight
        with self._distribution_strategy_scope():
            strategy = tf.distribute.get_strategy()
            if not strategy.extended.variable_created_in_scope(var):
                raise ValueError(
                    "Trying to create optimizer slot variable under the scope for "
                    f"tf.distribute.Strategy ({strategy}), which is different from the scope "
                    f"used for the original variable ({var}). Make sure the slot variables are "
                    "created under the same strategy scope. This may happen if you're "
                    "restoring from a checkpoint outside the scope.")
            with strategy.extended.colocate_vars_with(var):
                weight = tf.Variable(name=f"{var._shared_name}/{slot_name}", dtype=dtype,
                                     trainable=False, initial_value=initial_value)
        backend.track_variable(weight)
        slot_dict[slot_name] = weight
        if restore:
            self._restore_slot_variable(slot_name=slot_name, variable=var, slot_variable=weight)
        self._weights.append(weight)
        return weight

    # ---- Checkpoints of other state formats (Note [legacy state checkpoints]) --

    def _fused_checkpoint_source(self, position: Any, slot_name: str,
                                 variable: Any) -> "_checkpoint.Source | None":
        """What a checkpoint's slot ``slot_name`` of ``variable`` holds, when
        that is not the slot's own format (None: TensorFlow's own restore)."""
        call = self._fused_call
        if call is None or call.rule not in _low_precision_rules():
            return None
        if not position.is_simple_variable():
            return None
        saved = _checkpoint.saved_dtype(position)
        if saved is None:
            return None
        state_slots = self._fused_state_slots()
        fmt = self._fused_state_of(variable)
        if slot_name.endswith(_checkpoint.ABSMAX):
            base = slot_name[:-len(_checkpoint.ABSMAX)]
            if base not in state_slots or fmt == "int8":
                return None
            # (An int8 checkpoint's absmax, which its codes' restore reads.)
            return _checkpoint.Source(position, saved, companion=True)
        if slot_name not in state_slots:
            return None
        existing = self._slots.get(optimizer_v2._var_key(variable), {}).get(slot_name)
        own = (existing.dtype.base_dtype if existing is not None else
               {"int8": tf.uint8, "bfloat16": tf.bfloat16}.get(fmt, _true_dtype(variable)))
        if saved == own:
            return None
        shape = tuple(variable.shape.as_list())
        saved_shape = position.value_shape()
        what = f"optimizer slot {slot_name!r} of {variable.name}"
        if saved_shape is not None and tuple(saved_shape) != shape:
            raise ValueError(
                f"the checkpoint's {what} has shape {tuple(saved_shape)}, the variable has "
                f"shape {shape}: the checkpoint was written for another model")
        if saved != tf.uint8:
            return _checkpoint.Source(position, saved)
        absmax = _checkpoint.sibling(position, slot_name + _checkpoint.ABSMAX)
        blocks = absmax.value_shape() if absmax is not None else None
        if blocks is None or tuple(blocks) != (_state.num_blocks(shape),):
            raise ValueError(
                f"the checkpoint's {what} holds uint8 codes without a "
                f"'{slot_name}{_checkpoint.ABSMAX}' slot of {_state.num_blocks(shape)} values "
                "(int8 state): it cannot be read as optimizer state")
        return _checkpoint.Source(position, saved, absmax=absmax,
                                  signed=self._fused_slot_signed(slot_name))

    def _create_or_restore_slot_variable(self, slot_variable_position, slot_name, variable,
                                         **kwargs):
        source = self._fused_checkpoint_source(slot_variable_position, slot_name, variable)
        if source is None:
            return super()._create_or_restore_slot_variable(
                slot_variable_position=slot_variable_position, slot_name=slot_name,
                variable=variable, **kwargs)
        var_key = optimizer_v2._var_key(variable)
        base = slot_name[:-len(_checkpoint.ABSMAX)] if source.companion else slot_name
        if base not in self._slots.get(var_key, {}):
            # Made now where OptimizerV2 makes a slot with the checkpoint's
            # value (restore-on-create); else restored when add_slot makes it.
            if not (tf.executing_eagerly() and (
                    not tf.compat.v1.get_default_graph()._variable_creator_stack
                    or self._distribution_strategy)):
                self._deferred_slot_restorations.setdefault(slot_name, {}).setdefault(
                    var_key, []).append(slot_variable_position)
                return None
            self.add_slot(variable, base)
        return _checkpoint.SlotRestore(self, var_key, slot_name, source)

    def _restore_slot_variable(self, slot_name, variable, slot_variable):
        var_key = optimizer_v2._var_key(variable)
        deferred = self._deferred_slot_restorations
        pending = [(p, slot_name, self._fused_checkpoint_source(p, slot_name, variable))
                   for p in deferred.get(slot_name, {}).get(var_key, [])]
        # (An int8 checkpoint's absmax positions wait for their codes' slot.)
        absmax_name = slot_name + _checkpoint.ABSMAX
        companions = [(p, absmax_name, self._fused_checkpoint_source(p, absmax_name, variable))
                      for p in deferred.get(absmax_name, {}).get(var_key, [])]
        companions = [c for c in companions if c[2] is not None]
        if not companions and all(source is None for _, _, source in pending):
            return super()._restore_slot_variable(slot_name, variable, slot_variable)
        deferred.get(slot_name, {}).pop(var_key, None)
        if companions:
            deferred[absmax_name].pop(var_key)
        # Each one, the newest last (OptimizerV2 restores the newest only: a
        # slot skips restores older than its last; a SlotRestore is new each time).
        for position, name, source in sorted(pending + companions,
                                             key=lambda p: p[0].restore_uid):
            position.restore(slot_variable if source is None else
                             _checkpoint.SlotRestore(self, var_key, name, source))

    def _fused_state_call(self, call: FusedCall) -> FusedCall:
        """The Keras form of ``call``, which low-precision state takes (the
        same formula; the built-in's operation order, ``tf_training_op_form``
        and tf_keras' sparse order, is for float32 slots only)."""
        drop = "tf_training_op_form"
        return call._replace(flags={k: v for k, v in call.flags.items() if k != drop},
                             hypers={k: v for k, v in call.hypers.items() if k != drop},
                             sparse_form=False)

    def _fused_state_options(self, variables: Sequence[Any], call: FusedCall,
                             kwargs: dict[str, Any]) -> dict[str, Any]:
        """The fusedopt.ops state arguments of one call over ``variables``
        (which share a state format and dtype)."""
        formats = {self._fused_state_of(v) for v in variables}
        if len(formats) != 1:
            raise ValueError(f"one fused call takes one state format, got {sorted(formats)}")
        state_dtype = formats.pop()
        options: dict[str, Any] = {
            "state_dtype": state_dtype,
            # The step folded into the seed: new bits each step (as fusedopt.keras).
            "rounding_seed": tf.cast(self.iterations, tf.int64) + _atomic.constant(
                self.rounding_seed * 0x9E3779B97F4A7C15 % (1 << 63), tf.int64)}
        if self.stochastic_rounding and _true_dtype(variables[0]) == tf.bfloat16:
            options["stochastic_rounding"] = True
        if state_dtype == "int8":
            slot_of = {kw: name for name, kw in self._fused_state_slots().items()}
            options["absmax"] = {kw: slots(self, variables, f"{slot_of[kw]}_absmax")
                                 for kw in call.slots if kwargs.get(kw)}
        return options

    # ---- what each class provides ------------------------------------------

    # The class's op call (FusedCall); None: _fused_update is its own.
    _fused_call: FusedCall | None = None

    @classmethod
    def _fused_builtin(cls) -> type | None:
        """The tf_keras legacy built-in this class is a drop-in for; None for a
        class without one (a new OptimizerV2 class)."""
        builtin = next(b for b in cls.__mro__[1:] if b.__module__.startswith("tf_keras"))
        return None if builtin is optimizer_v2.OptimizerV2 else builtin

    def _fused_call_for(self, options: dict[str, Any]) -> FusedCall:
        """The op call for a group with these options (a class whose sparse form
        is another call chooses here)."""
        del options
        if self._fused_call is None:
            raise NotImplementedError
        return self._fused_call

    def _fused_update(self, variables: Sequence[tf.Variable], grads: Sequence[Any],
                      coefficients: dict[str, Any], **options: Any) -> Any:
        """One fused op call for variables of one device and dtype.

        ``coefficients`` is this (device, dtype)'s apply_state entry; ``options``
        holds ``sparse_mode`` for IndexedSlices gradients.
        """
        call = self._fused_call_for(options)
        low_precision = any(self._fused_needs_state(v) for v in variables)
        if low_precision:
            call = self._fused_state_call(call)
        c = coefficients
        kwargs: dict[str, Any] = {}
        for keyword, source in call.slots.items():
            name, condition = source if isinstance(source, tuple) else (source, None)
            kwargs[keyword] = (None if condition is not None and not condition(self)
                               else slots(self, variables, name))
        if call.step:
            kwargs["step"] = c["fused_step"]
        for keyword, source in call.hypers.items():
            kwargs[keyword] = c[source] if isinstance(source, str) else source(self, c)
        if call.sparse_form:
            options = self._sparse_options(options)
        if low_precision:
            options = dict(options, **self._fused_state_options(variables, call, kwargs))
        op = getattr(ops, call.op)
        return op(variables, grads, c["lr_t"], **kwargs, **{**options, **call.flags})

    def _effective_sparse_mode(self) -> str | None:
        return self.sparse_mode if self.sparse_mode is not None else self._builtin_sparse_mode

    def _sparse_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The op options of a call: for IndexedSlices (``options`` has a
        sparse_mode) in the default sparse mode, tf_keras' own sparse order
        (the ops' tf_training_op_form, Note [tf_keras sparse forms] in
        cc/core/plan.cc), with Grappler's rewrite of it in a tf.function. An
        explicit sparse_mode keeps the kernels' form: "exact" is the dense
        update of the densified gradient (as under XLA), "lazy" its rows."""
        if "sparse_mode" not in options or self.sparse_mode is not None:
            return options
        return dict(options, tf_training_op_form=True,
                    grappler_form=_ctx.function_graph_rewrites())

    def _unfused_dense(self, grad, var, apply_state):
        """The update without fused kernels (inside XLA): the built-in's."""
        return super()._resource_apply_dense(grad, var, apply_state=apply_state)

    def _unfused_sparse(self, grad, var, indices, apply_state):
        summed, unique = optimizer_v2._deduplicate_indexed_slices(values=grad, indices=indices)
        return super()._resource_apply_sparse(summed, var, unique, apply_state=apply_state)

    def _fused_defers_state(self) -> bool:
        """Whether per-step state this class advances (a running cache of the
        rule's, say) is assigned after the groups' ops (Note [atomic steps]): on the fused
        multi-tensor path, with or without a strategy (outside XLA, where
        the built-in's order is kept)."""
        return self.multi_tensor and not _ctx.in_xla_context()

    def _fused_finish_step(self, update_ops: Sequence[Any]) -> list[Any]:
        """Assigns deferred per-step state after ``update_ops``; returns the
        assignments (graph ops, which the op ``apply_gradients`` returns must
        wait for: in a TF1 graph run by a Session nothing else runs them)."""
        return []

    # ---- OptimizerV2 hooks ---------------------------------------------------

    def apply_gradients(self, grads_and_vars, name=None, experimental_aggregate_gradients=True):
        with _atomic.step_scope():  # Note [one check per kind] (fusedopt/_atomic.py)
            return super().apply_gradients(grads_and_vars, name=name,
                                           experimental_aggregate_gradients=(
                                               experimental_aggregate_gradients))

    apply_gradients.__doc__ = optimizer_v2.OptimizerV2.apply_gradients.__doc__

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        # (Once per step, not per (device, dtype): Note [one check per kind].)
        apply_state[(var_device, var_dtype)]["fused_step"] = _atomic.memo(
            ("fused_step", id(self)), lambda: self.iterations + 1)

    def _coefficients(self, var_device, var_dtype, apply_state) -> dict[str, Any]:
        return (apply_state or {}).get((var_device, var_dtype)) or self._fallback_apply_state(
            var_device, var_dtype
        )

    def _resource_apply_dense(self, grad, var, apply_state=None):
        if not _fused_dtype(var):
            return self._unfused_dense(grad, var, apply_state)
        if _ctx.in_xla_context():
            self._fused_refuse_unfused([var], _NO_XLA_STATE)
            if not _ctx.xla_lowering_available([grad], [var]):
                _ctx.warn_xla_once("tf_keras' built-in update ops")
                return self._unfused_dense(grad, var, apply_state)
        if _gpu_fallback([var]):
            self._fused_refuse_unfused([var], _NO_GPU_STATE)
            return self._unfused_dense(grad, var, apply_state)
        c = self._coefficients(var.device, var.dtype.base_dtype, apply_state)
        return self._fused_update([var], [grad], c)

    def _resource_apply_sparse_duplicate_indices(self, grad, var, indices, **kwargs):
        apply_state = kwargs.get("apply_state")
        if not _fused_dtype(var):
            return self._unfused_sparse(grad, var, indices, apply_state)
        if _ctx.in_xla_context():
            self._fused_refuse_unfused([var], _NO_XLA_STATE)
        # (Low-precision state: the fused mode with the built-in's semantics;
        # rank-1 int8 variables densified. Note [legacy low-precision state].)
        mode, dense_first = self._fused_sparse_route(var)
        # Under XLA an explicit "exact" runs fused on the densified gradient;
        # the default mode runs the built-in's sparse ops (its bits, compiled).
        if _ctx.in_xla_context() and self.sparse_mode == "exact" and _ctx.xla_lowering_available(
                [], [var], densify_sparse=True):
            # Note [sparse under XLA] (_tf_context.densify_for_xla).
            c = self._coefficients(var.device, var.dtype.base_dtype, apply_state)
            dense = _ctx.densify_for_xla(tf.IndexedSlices(grad, indices), var)
            return self._fused_update([var], [dense], c)
        if mode is None or _ctx.in_xla_context():
            if self.sparse_mode is not None:
                _ctx.warn_xla_once("tf_keras' built-in update ops")
            return self._unfused_sparse(grad, var, indices, apply_state)
        if _gpu_fallback([var]):
            self._fused_refuse_unfused([var], _NO_GPU_STATE)
            return self._unfused_sparse(grad, var, indices, apply_state)
        c = self._coefficients(var.device, var.dtype.base_dtype, apply_state)
        if dense_first:
            return self._fused_update([var], [densify(grad, var, indices)], c)
        # The fused sparse ops sum duplicate indices themselves (deterministically).
        return self._fused_update([var], [tf.IndexedSlices(grad, indices)], c, sparse_mode=mode)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        # Unique indices; the duplicate-summing path handles them as well.
        return self._resource_apply_sparse_duplicate_indices(
            grad, var, indices, apply_state=apply_state
        )

    def _distributed_apply(self, distribution, grads_and_vars, apply_state, name):
        _ctx.check_strategy(distribution, parameter_server=True)
        if _ctx.is_parameter_server_strategy(distribution):
            # Note [parameter servers] (_parameter_server.py)
            _parameter_server.check_servers(distribution)
        grads_and_vars = list(grads_and_vars)
        if _ctx.in_xla_context():
            self._fused_refuse_unfused([v for _, v in grads_and_vars], _NO_XLA_STATE)
        # Note [sparse under XLA] (_tf_context.densify_for_xla): an explicit
        # "exact" runs the dense lowering on the IndexedSlices' sum (without a
        # strategy); the default mode the built-in's sparse ops (its bits).
        densify = self.sparse_mode == "exact" and not tf.distribute.has_strategy()
        xla_fallback = _ctx.in_xla_context() and not _ctx.xla_lowering_available(
            [g for g, _ in grads_and_vars], [v for _, v in grads_and_vars],
            densify_sparse=densify)
        # (GPU variables that fusedopt's CUDA kernels cannot serve: the
        # per-variable hooks run the built-in's update for them.)
        if not self.multi_tensor or xla_fallback or _gpu_fallback([v for _, v in grads_and_vars]):
            result = super()._distributed_apply(distribution, grads_and_vars, apply_state, name)
            finish = self._fused_finish_step(_flat_ops([result]))  # (deferred state, if any)
            if finish and not tf.executing_eagerly():
                with backend._current_graph([result]).as_default():
                    return tf.group([result] + finish)
            return result

        groups: dict[GroupKey, list[tuple[Any, Any]]] = {}
        per_variable: list[tuple[Any, Any]] = []
        for grad, var in grads_and_vars:
            if isinstance(var, tf.Tensor):
                raise NotImplementedError(
                    f"Updating a `Tensor` is not implemented. Received: var={var}."
                )
            # (Under a strategy a gradient is a distributed value: its kind is
            # its components'.)
            sparse = isinstance(distribution.experimental_local_results(grad)[0],
                                tf.IndexedSlices)
            if sparse and var.constraint is not None:
                raise RuntimeError(
                    "Cannot use a constraint function on a sparse variable. Received: "
                    f"grad={grad}, var.constraint={var.constraint}."
                )
            if sparse and _ctx.in_xla_context():  # (densify: no fallback here)
                grad, sparse = _ctx.densify_for_xla(grad, var), False
            mode = None
            if sparse and _fused_dtype(var):
                # (Low-precision state: Note [legacy low-precision state]; a
                # group densifies rank-1 int8 variables' IndexedSlices.)
                mode, dense_first = self._fused_sparse_route(var)
                sparse = not dense_first
            if (sparse and mode is None) or not _fused_dtype(var):
                # (Dtypes without kernels, complex ones: the built-in's update.)
                per_variable.append((grad, var))
            else:
                key = GroupKey(device=var.device, dtype=var.dtype.base_dtype, sparse=sparse,
                               state=self._fused_state_of(var),
                               sparse_mode=mode if sparse else None)
                groups.setdefault(key, []).append((grad, var))

        with _atomic.step_scope():  # Note [one check per kind] (fusedopt/_atomic.py)
            return self._fused_distributed_apply(distribution, groups, per_variable,
                                                 grads_and_vars, apply_state, name)

    def _fused_distributed_apply(self, distribution, groups, per_variable, grads_and_vars,
                                 apply_state, name):
        # Note [atomic steps] (fusedopt/_atomic.py): with several update calls
        # every pair is checked before any of them writes; they wait for the
        # checks (a single fused op checks all of its own inputs first).
        checks = []
        if len(groups) + len(per_variable) > 1:
            local = (distribution.experimental_local_results if tf.distribute.has_strategy()
                     else None)
            checks = _atomic.step_checks(grads_and_vars, local)

        update_ops: list[Any] = []

        def collect(result):
            if tf.distribute.in_cross_replica_context():
                update_ops.extend(result)
            else:
                update_ops.append(result)

        with optimizer_v2.name_scope_only_in_function_or_graph(name or self._name), \
                tf.control_dependencies(checks):
            for key, items in groups.items():
                dtype, sparse, mode = key.dtype, key.sparse, key.sparse_mode
                variables = [v for _, v in items]
                group_grads = [g for g, _ in items]

                def apply_group(first, grads, variables=variables, dtype=dtype, sparse=sparse,
                                mode=mode):
                    # Inside the update context each variable (and slot) resolves
                    # to this replica's component; `first` is variables[0]'s.
                    c = self._coefficients(first.device, dtype, apply_state)
                    options = {"sparse_mode": mode} if sparse else {}
                    grads = [_atomic.with_dense_shape_of(g, v) for g, v in zip(grads, variables)]
                    if not sparse:  # (rank-1 int8 variables' IndexedSlices: densified)
                        grads = [densify(g.values, v, g.indices)
                                 if isinstance(g, tf.IndexedSlices) else g
                                 for g, v in zip(grads, variables)]
                    op = self._fused_update(variables, grads, c, **options)
                    constrained = [v for v in variables if v.constraint is not None]
                    if not constrained:
                        return op
                    with tf.control_dependencies([op]):
                        return tf.group([v.assign(v.constraint(v)) for v in constrained])

                with distribution.extended.colocate_vars_with(variables[0]):
                    collect(distribution.extended.update(
                        variables[0], apply_group, args=(group_grads,), group=False
                    ))

            # The built-in's own per-variable ops (a sparse update kept as
            # tf_keras' own) check no hyperparameter: they run after the fused groups,
            # whose ops reject what they would accept (a NaN learning rate).
            fused_ops = list(update_ops)
            for grad, var in per_variable:

                def apply_one(v, g):
                    with tf.control_dependencies(_flat_ops(fused_ops) or None):
                        if not isinstance(g, tf.IndexedSlices):
                            return self._resource_apply_dense(g, v, apply_state=apply_state)
                        return self._resource_apply_sparse_duplicate_indices(
                            g.values, v, g.indices, apply_state=apply_state
                        )

                with distribution.extended.colocate_vars_with(var):
                    collect(distribution.extended.update(var, apply_one, args=(grad,),
                                                         group=False))

            # (update results are tuples of ops: control dependencies on a tuple
            # are silently dropped in a tf.function, so they are flattened.)
            finish = self._fused_finish_step(_flat_ops(update_ops))
            any_symbolic = any(
                isinstance(i, tf.Operation) or tf_utils.is_symbolic_tensor(i)
                for i in update_ops
            )
            if not tf.executing_eagerly() or any_symbolic:
                with backend._current_graph(update_ops).as_default():
                    with tf.control_dependencies([tf.group(update_ops + finish)]):
                        return self.iterations.assign_add(1, read_value=False)
            return self.iterations.assign_add(1)


_NO_XLA_STATE = ("fusedopt's low-precision state has no XLA lowering yet (this step is "
                 "compiled with XLA)")
_NO_GPU_STATE = ("fusedopt's CUDA kernels cannot run in this process for these GPU variables "
                 "(see the warning above)")


def _flat_ops(results: Sequence[Any]) -> list[Any]:
    """The ops and tensors among update results (eager results are dropped:
    they have run)."""
    return [r for r in tf.nest.flatten(results)
            if isinstance(r, tf.Operation) or tf_utils.is_symbolic_tensor(r)]


def _fused_dtype(var: Any) -> bool:
    """Whether the fused kernels have this variable's dtype; for the others
    (complex64, complex128) the built-in's update runs, after one warning."""
    if _ctx.has_kernels_for(var.dtype):
        return True
    _ctx.warn_fallback_once(
        f"fusedopt has no kernels for {var.dtype.base_dtype.name} variables: they take "
        "tf_keras' built-in update (same results, no fused kernel)")
    return False


def _gpu_fallback(variables: Sequence[Any]) -> bool:
    """True (after one warning) when some of these variables are on a GPU
    that fusedopt's CUDA kernels cannot use in this process."""
    reason = _ctx.gpu_fallback_reason(variables)
    if reason is not None:
        _ctx.warn_fallback_once(reason)
        return True
    return False


def slots(opt: Any, variables: Sequence[Any], name: str) -> list[Any]:
    """The slot ``name`` of each variable."""
    return [opt.get_slot(v, name) for v in variables]


def densify(grad: tf.Tensor, var: Any, indices: tf.Tensor) -> tf.Tensor:
    """The dense gradient of IndexedSlices (duplicates summed)."""
    return tf.tensor_scatter_nd_add(
        tf.zeros(tf.shape(var), grad.dtype), tf.expand_dims(indices, -1), grad
    )
