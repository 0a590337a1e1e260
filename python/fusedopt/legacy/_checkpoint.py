"""How a fused legacy optimizer's slots restore from another state format.

Note [legacy state checkpoints] (issue #31; Note [legacy low-precision state]
in _base.py, Note [state checkpoints] in keras/_checkpoint.py for Keras 3):
tf_keras saves each slot as its own checkpoint object, linked to its variable
and the optimizer by the slot's name (``<var>/.OPTIMIZER_SLOT/<optimizer>/<slot>``),
in the slot variable's dtype. So a state format is the slots' dtypes: float32
(the variable's dtype, the built-in's slots and keys), bfloat16, or int8:
uint8 codes under the slot's name plus a float32 ``<slot>_absmax`` slot. Saving
is left as tf_keras does it; TensorFlow restores a value only into a variable
of the dtype it was saved with, and restores each slot object alone.

Restoring, TensorFlow asks the optimizer for each saved slot
(``OptimizerV2._create_or_restore_slot_variable``: the existing slot, or one
made with the checkpoint's value when eager, "restore-on-create"; else the
position waits in ``_deferred_slot_restorations`` until ``add_slot`` makes the
slot, ``_restore_slot_variable``). The fused classes with low-precision state
compare the saved dtype of a slot of the rule's with the slot's own (``source``):

* the same dtype: TensorFlow's own restore, bit for bit (the absmax slot of
  int8 state is a slot like the others);
* another dtype: a ``SlotRestore`` stands in for the slot. It reads the value
  in the saved dtype (TensorFlow takes the dtype to read from what the object
  restored serializes) and writes it into the slot in its own format: float32
  values are quantized (``fusedopt.state.quantize``, with the slot's code:
  unsigned for the rule's non-negative slots) or rounded to nearest
  (bfloat16); saved int8 codes are dequantized with their absmax, which the
  codes' restore reads from the checkpoint itself (the saved
  ``<slot>_absmax``, found through the optimizer's slot list in the
  checkpoint's object graph); bfloat16 values are widened. A saved
  ``<slot>_absmax`` the optimizer has no use for (its slot is not int8) binds
  to a ``SlotRestore`` that writes nothing (and waits, where it waits, for the
  slot it belongs to), so ``assert_consumed`` holds.
  Where TensorFlow would make the slot with the checkpoint's value, the
  optimizer makes it (its initial value, then overwritten by the restore);
  where TensorFlow would wait, the position waits the same way and
  ``_restore_slot_variable`` restores it through a ``SlotRestore``.

Once a ``SlotRestore`` has written, the slot itself (and an int8 slot's
absmax, which a checkpoint of another format has no object for: an entry of
its own beside the nodes' ids) takes its place among the checkpoint's restored
objects, so ``assert_consumed`` and ``assert_existing_objects_matched`` see the
slots restored (this writes TensorFlow's private restore bookkeeping,
``object_by_proto_id`` and ``all_python_objects``, as the restore hooks it
overrides are private too: tests/test_legacy_state.py asserts both). The conversions are TensorFlow ops (``tf.numpy_function``
for the codes), so a TF1 graph's restore builds them as it builds any
restore op.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow.python.trackable import base as _trackable

from fusedopt import state as _state

ABSMAX = "_absmax"
_VALUE = "VARIABLE_VALUE"


class Source(NamedTuple):
    """What a checkpoint's slot holds, when it is not the slot's own format."""

    position: Any  # the saved slot's CheckpointPosition
    dtype: tf.DType  # the saved value's dtype
    absmax: Any = None  # int8 codes: the CheckpointPosition of their absmax
    signed: bool = True  # int8 codes: their code (the slot's, by its name)
    companion: bool = False  # an int8 checkpoint's absmax, which its codes' restore reads


def saved_dtype(position) -> tf.DType | None:
    """The dtype a checkpoint holds a simple variable's value in."""
    for attribute in position.object_proto.attributes:
        if attribute.name == _VALUE:
            return tf.as_dtype(position.checkpoint.dtype_map[attribute.checkpoint_key])
    return None


# (checkpoint coordinator -> {(original variable's node, slot name): slot's node})
_SLOT_INDEX: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def sibling(position, slot_name: str):
    """The position of the slot ``slot_name`` of the variable whose slot
    ``position`` is, in the same checkpoint; None if it has none."""
    checkpoint = position.checkpoint
    index = _SLOT_INDEX.get(checkpoint)
    if index is None:
        index = {}
        for node in checkpoint.object_graph_proto.nodes:
            for ref in node.slot_variables:
                index[(ref.original_variable_node_id, ref.slot_name)] = ref.slot_variable_node_id
                index[ref.slot_variable_node_id] = ref.original_variable_node_id
        _SLOT_INDEX[checkpoint] = index
    original = index.get(position.proto_id)
    node = index.get((original, slot_name)) if original is not None else None
    return None if node is None else position.create_child_position(node)


def _empty(dtype) -> tf.Tensor:
    # Restoring, TensorFlow needs only the dtype of what it reads.
    with tf.init_scope():
        return tf.zeros([0], dtype)


def _dequantize(codes, absmax, signed: bool) -> tf.Tensor:
    values = tf.numpy_function(
        lambda c, a: _state.dequantize(c, a, signed=signed), [codes, absmax], tf.float32,
        stateful=False)
    values.set_shape(codes.shape)
    return values


def _quantize(values, signed: bool) -> tuple[tf.Tensor, tf.Tensor]:
    codes, absmax = tf.numpy_function(
        lambda x: _state.quantize(x, signed=signed), [values], [tf.uint8, tf.float32],
        stateful=False)
    codes.set_shape(values.shape)
    absmax.set_shape([_state.num_blocks(tuple(values.shape.as_list()))])
    return codes, absmax


class SlotRestore(_trackable.Trackable):
    """Restores one slot of a fused legacy optimizer from a checkpoint that
    holds it in another format (Note [legacy state checkpoints]); made for one
    restore, after which the checkpoint's objects are the slots themselves."""

    def __init__(self, optimizer, var_key: str, slot_name: str, source: Source):
        self._optimizer = weakref.ref(optimizer)
        self._var_key = var_key
        self._slot_name = slot_name
        self._source = source

    def _slot(self, name: str):
        return self._optimizer()._slots[self._var_key][name]

    def _serialize_to_tensors(self):
        # (Never saved: the slot variable is. This says what a restore reads.)
        return {_VALUE: _empty(self._source.dtype)}

    def _restore_from_tensors(self, restored_tensors):
        source = self._source
        name = self._slot_name
        if source.companion:
            self._bind(self._slot(name[:-len(ABSMAX)]))
            return None if tf.executing_eagerly() else tf.no_op()
        slot = self._slot(name)
        # (A graph's restored tensors have no static shape; the slot's is checked.)
        value = tf.ensure_shape(restored_tensors[_VALUE], slot.shape)
        if source.absmax is not None:
            values = _dequantize(value, source.absmax.value_tensors()[_VALUE], source.signed)
        else:
            values = tf.cast(value, tf.float32)
        if slot.dtype == tf.uint8:
            codes, absmax = _quantize(values, self._optimizer()._fused_slot_signed(name))
            results = [slot.assign(codes, read_value=False),
                       self._slot(name + ABSMAX).assign(absmax, read_value=False)]
            self._bind(slot, self._slot(name + ABSMAX))
        else:
            results = [slot.assign(tf.cast(values, slot.dtype), read_value=False)]
            self._bind(slot)
        return None if tf.executing_eagerly() else tf.group(results)

    def _bind(self, slot, absmax=None) -> None:
        """Makes the slot (and the absmax slot, which a checkpoint of another
        format does not have) the checkpoint's object in this one's place: the
        restored objects, for assert_consumed and assert_existing_objects_matched."""
        position = self._source.position
        checkpoint = position.checkpoint
        checkpoint.object_by_proto_id[position.proto_id] = slot
        checkpoint.all_python_objects.discard(self)  # (kept alive by a graph's restore op)
        checkpoint.all_python_objects.add(slot)
        if absmax is not None:
            # (No node of the checkpoint holds it: an entry of its own, beside
            # the nodes' ids, marks it restored.)
            checkpoint.object_by_proto_id[(position.proto_id, ABSMAX)] = absmax
        for variable in (slot, absmax):
            if variable is not None:
                variable._maybe_initialize_trackable()
                variable._update_uid = max(variable._update_uid, checkpoint.restore_uid)
