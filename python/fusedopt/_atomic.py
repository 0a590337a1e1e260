"""All-or-nothing optimizer steps shared by fusedopt.keras and fusedopt.legacy.

Note [atomic steps]: a fused step is one op call per (device, dtype, decay,
sparse) group, and each op checks its own inputs before writing. So that a bad
input in a later group cannot leave an earlier group written, every
(gradient, variable) pair of the step is checked before the first group runs:

* shapes (dense gradients; an IndexedSlices' row shape and dense_shape) are
  compared while tracing, when they are known (the usual case: no op is
  added, nothing costs at run time), else by run-time assertions;
* the indices of IndexedSlices gradients are range-checked by two small
  assertions per sparse gradient (reading the indices, not the values).

Every group's op waits for those assertions (control dependencies; in eager
mode they have already run). Per-step optimizer state that the fused path
itself advances (Keras Nadam's u_product, tf_keras Nadam's momentum cache, under
a strategy too), Keras' gradient-accumulator reset and the built-in's own
per-variable ops (tf_keras Nadam's sparse update) wait for every group's op.
Hyperparameter errors are identical across groups, so the first group's op
fails before anything is written. (Update results are flattened before they
become control inputs: a tuple there is silently dropped in a tf.function.)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf


def _invalid(message: str) -> tf.errors.InvalidArgumentError:
    return tf.errors.InvalidArgumentError(None, None, message)


def _name(var: Any, i: int) -> str:
    name = getattr(var, "name", None) or getattr(var, "path", None)
    return f"variable {i} ({name})" if name else f"variable {i}"


def step_checks(
    grads_and_vars: Sequence[tuple[Any, Any]],
    local_results: Callable[[Any], Sequence[Any]] | None = None,
) -> list[Any]:
    """Checks every pair of one step before any update; returns the run-time
    assertions every group's update must wait for (Note [atomic steps]).

    Raises InvalidArgumentError for what is wrong already while tracing.
    ``local_results`` maps a distributed value to its per-device components
    (``strategy.experimental_local_results``) in cross-replica context.
    """
    local = local_results or (lambda x: [x])
    checks: list[Any] = []
    for i, (grad, var) in enumerate(grads_and_vars):
        grads, variables = list(local(grad)), list(local(var))
        if len(variables) != len(grads):
            variables = variables[:1] * len(grads)
        for g, v in zip(grads, variables):
            sparse = isinstance(g, tf.IndexedSlices)
            if not sparse and g.shape == v.shape and g.shape.is_fully_defined():
                continue  # the common case, decided without building anything
            shape = tf.TensorShape(v.shape)
            what = _name(var, i)
            if sparse:
                checks += _sparse_checks(g, v, shape, what)
            else:
                gshape = tf.TensorShape(g.shape)
                if not gshape.is_compatible_with(shape):
                    raise _invalid(f"the gradient of {what} has shape {gshape} but the variable "
                                   f"has shape {shape}; nothing was updated")
                if not (gshape.is_fully_defined() and shape.is_fully_defined()):
                    with tf.device(g.device):
                        checks.append(tf.debugging.assert_equal(
                            tf.shape(g, out_type=tf.int64), tf.shape(v, out_type=tf.int64),
                            message=f"the gradient of {what} and the variable differ in shape; "
                                    "nothing was updated"))
    return checks


def _sparse_checks(g: tf.IndexedSlices, v: Any, shape: tf.TensorShape, what: str) -> list[Any]:
    if shape.rank == 0:
        raise _invalid(f"{what} is a scalar; an IndexedSlices gradient needs rank >= 1")
    row = tf.TensorShape(g.values.shape)[1:]
    if shape.rank is not None and not row.is_compatible_with(shape[1:]):
        raise _invalid(f"the IndexedSlices gradient of {what} has rows of shape {row} but the "
                       f"variable has shape {shape}; nothing was updated")
    checks = []
    if g.dense_shape is not None:
        dense = tf.get_static_value(g.dense_shape)
        if dense is not None and shape.is_fully_defined():
            if [int(d) for d in dense] != shape.as_list():
                raise _invalid(f"the IndexedSlices gradient of {what} has dense_shape "
                               f"{tuple(int(d) for d in dense)} but the variable has shape "
                               f"{tuple(shape.as_list())}; nothing was updated")
        else:
            with tf.device(g.indices.device):
                checks.append(tf.debugging.assert_equal(
                    tf.cast(g.dense_shape, tf.int64), tf.shape(v, out_type=tf.int64),
                    message=f"the IndexedSlices gradient of {what} has a dense_shape unlike "
                            "the variable's shape; nothing was updated"))
    with tf.device(g.indices.device):
        indices = tf.cast(g.indices, tf.int64)
        rows = (tf.constant(shape[0], tf.int64) if shape[0] is not None
                else tf.shape(v, out_type=tf.int64)[0])
        message = (f"the IndexedSlices gradient of {what} has an index outside [0, rows); "
                   "nothing was updated")
        return checks + [tf.debugging.assert_non_negative(indices, message=message),
                         tf.debugging.assert_less(indices, rows, message=message)]
