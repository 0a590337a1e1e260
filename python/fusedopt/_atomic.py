"""All-or-nothing optimizer steps shared by fusedopt.keras and fusedopt.legacy.

Note [atomic steps]: a fused step is one op call per (device, dtype, decay,
sparse) group, and each op checks its own inputs before writing. So that a bad
input in a later group cannot leave an earlier group written, every
(gradient, variable) pair of the step is checked before the first group runs:

* shapes (dense gradients; an IndexedSlices' row shape) are compared while
  tracing, when they are known (the usual case: no op is added, nothing
  costs at run time), else by run-time assertions. An IndexedSlices'
  ``dense_shape`` is not checked: the built-ins ignore it and use the
  indices, and so do the fused ops;
* the indices of IndexedSlices gradients are range-checked (reading the
  indices, not the values).

Every group's op waits for those assertions (control dependencies; in eager
mode they have already run). Per-step optimizer state that the fused path
itself advances (a class's ``_fused_prepare_step`` / ``_fused_finish_step``
state, under a strategy too), Keras' gradient-accumulator reset and the
built-in's own per-variable ops (a sparse update kept as tf_keras' own) wait
for every group's op.
Hyperparameter errors are identical across groups, so the first group's op
fails before anything is written. (Update results are flattened before they
become control inputs: a tuple there is silently dropped in a tf.function.)

Note [one check per kind]: in a graph every op of a step stays in the graph,
so the checks are built once per kind, not once per variable: every constant
once per step (``constant``, within ``step_scope``; the fused ops' scalar
inputs share them too), and one assertion per (device, row count, index dtype) for the
indices of all sparse gradients of that row count (their indices
concatenated) and one per device for the dynamic dense shapes. A step then
holds no two stateless ops of the same type, inputs and attributes
(tests/test_graph_size.py). The message names every variable the assertion
covers.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

_state = threading.local()


@contextlib.contextmanager
def step_scope() -> Iterator[None]:
    """The extent of one optimizer step: ``constant`` builds each constant
    once inside it (Note [one check per kind]). Nested scopes share the
    outer one's constants."""
    outer = getattr(_state, "constants", None)
    _state.constants = {} if outer is None else outer
    try:
        yield
    finally:
        _state.constants = outer


def _key(value: Any) -> Any:
    if isinstance(value, float):
        return ("f", value.hex())
    if isinstance(value, (list, tuple)):
        return ("l",) + tuple(_key(v) for v in value)
    return (type(value).__name__, value)


def constant(value: Any, dtype: tf.DType) -> tf.Tensor:
    """``tf.constant(value, dtype)``, built once per (graph, value, dtype)
    inside a ``step_scope`` (outside one, and in eager mode, a new one).

    The constant is made without the caller's control dependencies, so that
    sharing it orders nothing."""
    cache = getattr(_state, "constants", None)
    if cache is None or tf.executing_eagerly():
        return tf.constant(value, dtype)
    graph = tf_ops.get_default_graph()
    key = (id(graph), tf.as_dtype(dtype), _key(value))
    hit = cache.get(key)
    if hit is None or hit[0] is not graph:
        with tf.control_dependencies(None):
            hit = cache[key] = (graph, tf.constant(value, dtype))
    return hit[1]


def memo(key: Any, make: Callable[[], Any]) -> Any:
    """``make()``, once per (graph, key) inside a ``step_scope`` (the same
    value for the whole step: a cast of a tensor, the step number); outside
    one, and in eager mode, every time. ``key`` must keep what it names
    alive (``tensor.ref()``)."""
    cache = getattr(_state, "constants", None)
    if cache is None or tf.executing_eagerly():
        return make()
    graph = tf_ops.get_default_graph()
    # (A TF1 control-flow context's values stay inside it.)
    context = graph._get_control_flow_context()  # pylint: disable=protected-access
    full = (id(graph), id(context), "memo", key)
    hit = cache.get(full)
    if hit is None or hit[0] is not graph:
        hit = cache[full] = (graph, make())
    return hit[1]


def _invalid(message: str) -> tf.errors.InvalidArgumentError:
    return tf.errors.InvalidArgumentError(None, None, message)


def _name(var: Any, i: int) -> str:
    name = getattr(var, "name", None) or getattr(var, "path", None)
    return f"variable {i} ({name})" if name else f"variable {i}"


def _all(x: tf.Tensor) -> tf.Tensor:
    """reduce_all over a vector, with the step's shared axis constant."""
    return tf.raw_ops.All(input=x, axis=constant(0, tf.int32))


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
    # (device, rows, index dtype) -> [(indices, what)]: one assertion each.
    index_groups: dict[tuple[str, Any, Any], list[tuple[Any, str]]] = {}
    rows_of: dict[tuple[str, Any, Any], Any] = {}
    # device -> [(condition, what)]: dense shapes known only at run time.
    shape_groups: dict[str, list[tuple[Any, str]]] = {}
    for i, (grad, var) in enumerate(grads_and_vars):
        grads, variables = list(local(grad)), list(local(var))
        if len(variables) != len(grads):
            variables = variables[:1] * len(grads)
        for g, v in zip(grads, variables):
            sparse = isinstance(g, tf.IndexedSlices)
            shape = tf.TensorShape(v.shape)
            if not sparse:
                gshape = tf.TensorShape(getattr(g, "shape", None))
                if gshape == shape and gshape.is_fully_defined():
                    continue  # the common case, decided without building anything
            what = _name(var, i)
            if sparse:
                _sparse_static_checks(g, shape, what)
                indices = tf.convert_to_tensor(g.indices)
                device, dtype = indices.device, indices.dtype
                rows = shape[0] if shape[0] is not None else ("var", id(v))
                key = (device, rows, dtype)
                if key not in rows_of:
                    with tf.device(device):
                        rows_of[key] = (constant(shape[0], dtype) if shape[0] is not None
                                        else tf.shape(v, out_type=dtype)[0])
                index_groups.setdefault(key, []).append((indices, what))
            else:
                if not gshape.is_compatible_with(shape):
                    raise _invalid(f"the gradient of {what} has shape {gshape} but the variable "
                                   f"has shape {shape}; nothing was updated")
                with tf.device(g.device):
                    same = tf.raw_ops.Equal(x=tf.shape(g, out_type=tf.int64),
                                            y=tf.shape(v, out_type=tf.int64),
                                            incompatible_shape_error=False)
                    shape_groups.setdefault(g.device, []).append((_all(tf.reshape(
                        same, constant([-1], tf.int32))), what))

    checks = []
    for key, items in index_groups.items():
        device, _, dtype = key
        with tf.device(device):
            indices = [i for i, _ in items]
            flat = indices[0] if len(indices) == 1 else tf.concat(indices, constant(0, tf.int32))
            ok = tf.logical_and(
                _all(tf.greater_equal(flat, constant(0, dtype))),
                _all(tf.less(flat, rows_of[key])))
            names = ", ".join(w for _, w in items)
            message = constant(f"the IndexedSlices gradient of {names} has an index outside "
                               "[0, rows); nothing was updated", tf.string)
            checks.append(_assert(ok, message))
    for device, items in shape_groups.items():
        with tf.device(device):
            ok = items[0][0] if len(items) == 1 else _all(tf.stack([c for c, _ in items]))
            names = ", ".join(w for _, w in items)
            message = constant(f"the gradient of {names} differs in shape from its variable; "
                               "nothing was updated", tf.string)
            checks.append(_assert(ok, message))
    return checks


def _assert(condition: tf.Tensor, message: tf.Tensor) -> Any:
    # String data only: a bare Assert op (no cond guard) in a graph.
    return tf.debugging.Assert(condition, [message])


def _sparse_static_checks(g: tf.IndexedSlices, shape: tf.TensorShape, what: str) -> None:
    if shape.rank == 0:
        raise _invalid(f"{what} is a scalar; an IndexedSlices gradient needs rank >= 1")
    row = tf.TensorShape(getattr(g.values, "shape", None))[1:]
    if shape.rank is not None and not row.is_compatible_with(shape[1:]):
        raise _invalid(f"the IndexedSlices gradient of {what} has rows of shape {row} but the "
                       f"variable has shape {shape}; nothing was updated")


def with_dense_shape_of(g: Any, var: Any) -> Any:
    """An IndexedSlices with its variable's shape as ``dense_shape`` (the
    built-ins ignore the gradient's own: the indices say where the rows go,
    Note [atomic steps]); anything else unchanged."""
    if not isinstance(g, tf.IndexedSlices):
        return g
    shape = tf.TensorShape(var.shape)
    dense_shape = (constant(shape.as_list(), tf.int64) if shape.is_fully_defined()
                   else tf.shape(var, out_type=tf.int64))
    return tf.IndexedSlices(g.values, g.indices, dense_shape)
