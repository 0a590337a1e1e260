"""How a fused optimizer's state appears to tf.train.Checkpoint.

Note [state checkpoints]: Keras 3 checkpoints an optimizer's variables by
position, ``optimizer/_variables/<k>``, one value of the variable's dtype each.
Low-precision state (Note [low-precision state]) does not fit that layout: an
int8 slot is uint8 codes plus a float32 absmax, a bfloat16 slot of a float32
variable has another dtype, and TensorFlow restores a value only into a
variable of the dtype it was saved with. So the classes with low-precision
state present their variables to the checkpoint through ``StateCheckpoint``,
in place of Keras' ``_variables`` list:

* ``<k>`` is the k-th variable of the float32-state layout (the optimizer's
  variables without the absmax ones), in Keras' form: the variable's dtype.
  An optimizer with float32 state saves exactly Keras' keys, so checkpoints
  interchange with the built-in classes as before;
* ``<k>_bfloat16`` is a bfloat16 slot of a float32 variable (one value);
* ``<k>_int8`` is an int8 slot: two values, ``codes`` (uint8) and ``absmax``.

Restoring, each name selects the format the checkpoint holds, and the slot
converts it into its own (``SlotNode``): the same format is assigned as saved
(bit for bit); float32 values are rounded to bfloat16 or quantized
(``fusedopt.state``), as ``from_keras`` converts a built-in's state; bfloat16
and int8 values are widened or dequantized. The lists of slots Keras also
tracks (``_momentums``, ...) are left out of the checkpoint (their variables
are the positional ones), and a restore through them is ignored: it would
hand a float32 value to a uint8 variable.

TensorFlow decides which dtype it reads from what the restoring object
serializes, before it reads anything, so a slot learns the format to read
from the name it is looked up by (``StateCheckpoint._lookup_dependency``):
``SlotNode._reading``, used by the next restore and cleared by it (and by any
later traversal of the checkpoint graph).

A checkpoint restored before the optimizer is built (deferred restoration)
waits in ``StateCheckpoint``'s deferred dependencies until ``build()`` has
made the variables and filled the slot lists (which tell a slot its code,
signed or unsigned): then ``restore_deferred`` restores them.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.trackable import base as _trackable

from fusedopt import state as _state

_SUFFIX = {"float32": "", "bfloat16": "_bfloat16", "int8": "_int8"}
_VALUE = "VARIABLE_VALUE"


def _delegate_tensor(variable) -> Any:
    """What ``variable`` saves as its value (a tf.Variable, or a distributed
    variable's saveable value)."""
    return variable._serialize_to_tensors()[_VALUE]  # pylint: disable=protected-access


def _empty(dtype) -> tf.Tensor:
    # Restoring, TensorFlow needs only the dtype of what it reads.
    with tf.init_scope():
        return tf.zeros([0], dtype)


class SlotNode(_trackable.Trackable):
    """One slot variable of a fused optimizer in a checkpoint: saved in its own
    format, restored from any (Note [state checkpoints])."""

    def __init__(self, checkpoint: "StateCheckpoint", slot):
        self._owner = checkpoint
        self._slot = slot
        self._reading: str | None = None

    @property
    def slot(self):
        return self._slot

    def format(self) -> str:
        return self._owner.format_of(self._slot)

    def _serialize_to_tensors(self):
        own = self.format()
        fmt = self._reading or own
        if fmt == own:
            if own == "int8":
                return {"codes": _delegate_tensor(self._slot),
                        "absmax": _delegate_tensor(self._owner.absmax_of(self._slot))}
            return {_VALUE: _delegate_tensor(self._slot)}
        if fmt == "int8":
            return {"codes": _empty(tf.uint8), "absmax": _empty(tf.float32)}
        dtype = tf.bfloat16 if fmt == "bfloat16" else self._owner.layout_dtype_of(self._slot)
        return {_VALUE: _empty(dtype)}

    def _restore_from_tensors(self, restored_tensors):
        fmt, self._reading = self._reading, None
        own = self.format()
        fmt = fmt or own
        if fmt == own:
            if own == "int8":
                absmax = self._owner.absmax_of(self._slot)
                results = [self._slot._restore_from_tensors({_VALUE: restored_tensors["codes"]}),
                           absmax._restore_from_tensors({_VALUE: restored_tensors["absmax"]})]
            else:
                results = [self._slot._restore_from_tensors({_VALUE: restored_tensors[_VALUE]})]
            if tf.executing_eagerly():
                return None
            return tf.group([r for r in results if isinstance(r, (tf.Operation, tf.Tensor))])
        if not tf.executing_eagerly():
            raise NotImplementedError(
                f"restoring {fmt} optimizer state into {own} state converts it, which needs "
                "eager execution (tf.train.Checkpoint.restore outside tf.function)")
        values = self._values_of(fmt, restored_tensors)
        self._owner.optimizer()._fused_write_slot(self._slot, values)
        return None

    def _values_of(self, fmt: str, restored) -> np.ndarray:
        """The float32 values of a slot saved in format ``fmt``."""
        shape = tuple(self._slot.shape)
        if fmt == "int8":
            codes = np.asarray(restored["codes"].numpy(), np.uint8)
            absmax = np.asarray(restored["absmax"].numpy(), np.float32)
            if codes.shape != shape or absmax.shape != (_state.num_blocks(shape),):
                self._mismatch(fmt, f"codes {codes.shape}, absmax {absmax.shape}")
            signed = self._owner.optimizer()._fused_slot_signed(self._slot)
            return _state.dequantize(codes, absmax, signed=signed)
        value = restored[_VALUE]
        if tuple(value.shape) != shape:
            self._mismatch(fmt, f"shape {tuple(value.shape)}")
        return tf.cast(value, tf.float32).numpy()

    def _mismatch(self, fmt: str, got: str):
        raise ValueError(
            f"the checkpoint's {fmt} state for optimizer slot {self._slot.path} has {got}, "
            f"the slot's variable has shape {tuple(self._slot.shape)}: the checkpoint was "
            "written for another model or optimizer (or with an older layout of int8 state)")


class StateCheckpoint(_trackable.Trackable):
    """A fused optimizer's variables as tf.train.Checkpoint sees them, in place
    of Keras' ``_variables`` list (Note [state checkpoints])."""

    def __init__(self, optimizer):
        self._optimizer = weakref.ref(optimizer)
        self._nodes: dict[int, SlotNode] = {}
        self._layout_dtypes: dict[int, tf.DType] = {}

    def optimizer(self):
        return self._optimizer()

    def register(self, slot, layout_dtype) -> None:
        """Records the dtype of Keras' form of a low-precision ``slot`` (its
        variable's dtype)."""
        self._layout_dtypes[id(slot)] = tf.as_dtype(layout_dtype)

    def layout_dtype_of(self, slot) -> tf.DType:
        return self._layout_dtypes.get(id(slot), tf.as_dtype(slot.dtype))

    def absmax_of(self, slot):
        return self.optimizer()._fused_absmax[id(slot)]

    def format_of(self, slot) -> str:
        """The format a slot is saved in: int8 (codes and absmax), bfloat16 (a
        bfloat16 slot of a variable of another dtype), else float32 (Keras'
        form: the variable's dtype)."""
        dtype = tf.as_dtype(slot.dtype)
        if dtype == tf.uint8 and id(slot) in self.optimizer()._fused_absmax:
            return "int8"
        if dtype == tf.bfloat16 and self.layout_dtype_of(slot) != tf.bfloat16:
            return "bfloat16"
        return "float32"

    def _entries(self) -> list[Any]:
        """The variables of the float32-state layout, in order: a SlotNode for
        each slot of the op, the variable itself for the others."""
        opt = self.optimizer()
        absmax = {id(a) for a in opt._fused_absmax.values()}
        slots = opt._fused_op_slots()
        entries = []
        for variable in opt.variables:
            if id(variable) in absmax:
                continue
            if id(variable) in slots:
                node = self._nodes.get(id(variable))
                if node is None or node.slot is not variable:
                    node = self._nodes[id(variable)] = SlotNode(self, variable)
                entries.append(node)
            else:
                entries.append(variable)
        return entries

    def _trackable_children(self, save_type=_trackable.SaveType.CHECKPOINT, **kwargs):
        del save_type, kwargs  # (the optimizer puts this object in checkpoints only)
        entries = self._entries()
        children = {}
        for k, entry in enumerate(entries):
            if isinstance(entry, SlotNode):
                entry._reading = None  # (a stale lookup's; Note [state checkpoints])
                children[f"{k}{_SUFFIX[entry.format()]}"] = entry
            else:
                children[str(k)] = entry
        return children

    def _lookup_dependency(self, name, cached_dependencies=None):
        del cached_dependencies
        index, _, fmt = name.partition("_")
        fmt = fmt or "float32"
        if not index.isdigit() or fmt not in _SUFFIX:
            return None
        entries = self._entries()
        k = int(index)
        if k >= len(entries):
            return None  # not made yet (deferred: restore_deferred)
        entry = entries[k]
        if not isinstance(entry, SlotNode):
            return entry if fmt == "float32" else None
        entry._reading = fmt
        return entry

    def restore_deferred(self) -> None:
        """Restores what a checkpoint restored before the variables existed
        holds for them (deferred restoration)."""
        self._maybe_initialize_trackable()
        for name in list(self._deferred_dependencies):
            entry = self._lookup_dependency(name)
            if entry is not None:
                self._handle_deferred_dependencies(name, entry)
