"""Typed Python wrappers of the fused ops, one per op.

Each op updates a list of variables in one call. Variables may be
``tf.Variable``s, Keras variables or resource handles; gradients must have
their variable's shape and dtype. Hyperparameters may be Python numbers or
scalar tensors (a learning-rate schedule never retraces).

Every op validates all of its inputs before writing anything: on bad input it
raises ``tf.errors.InvalidArgumentError`` naming the input, and no variable
changes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from fusedopt import _loader

__all__ = ["apply_sgd"]

VariableLike = Any  # tf.Variable, keras.Variable, or a resource tensor
TensorLike = Any


def _handle(v: VariableLike, what: str) -> tf.Tensor:
    if isinstance(v, tf.Tensor) and v.dtype == tf.resource:
        return v
    handle = getattr(v, "handle", None)
    if handle is None:
        raise TypeError(
            f"{what} must be a resource variable (tf.Variable or keras.Variable), "
            f"got {type(v).__name__}"
        )
    return handle


def _handles(vs: Sequence[VariableLike], name: str) -> list[tf.Tensor]:
    return [_handle(v, f"{name}[{i}]") for i, v in enumerate(vs)]


def _scalar_dtype(grads: Sequence[tf.Tensor]) -> tf.DType:
    """Hyperparameters are float64 for float64 variables, float32 otherwise."""
    return tf.float64 if grads[0].dtype == tf.float64 else tf.float32


def _scalar(x: TensorLike, dtype: tf.DType) -> tf.Tensor:
    # Python numbers go straight to `dtype` (tf.cast would round them through
    # float32 first); tensors and variables are cast.
    if isinstance(x, (int, float, np.floating, np.integer)):
        return tf.constant(x, dtype)
    return tf.cast(x, dtype)


def _invalid(message: str) -> tf.errors.InvalidArgumentError:
    return tf.errors.InvalidArgumentError(None, None, message)


def _check_lengths(n: int, **lists: Sequence[Any] | None) -> None:
    for name, items in lists.items():
        if items is not None and len(items) != n:
            raise _invalid(f"{name} has {len(items)} entries but there are {n} variables")


def apply_sgd(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    momenta: Sequence[VariableLike] | None = None,
    momentum: TensorLike = 0.0,
    nesterov: bool = False,
    weight_decay: TensorLike = 0.0,
    name: str | None = None,
) -> tf.Operation | None:
    """SGD (optionally with momentum or Nesterov momentum) over many variables.

    Per element, with ``lr = learning_rate``::

        var -= var * weight_decay * lr          # when weight_decay != 0
        var -= lr * g                           # momenta is None
        m = momentum * m - lr * g; var += m     # momenta given
        var += momentum * m - lr * g            # ... with nesterov=True

    Args:
        variables: the N variables to update.
        gradients: N gradients, each of its variable's shape and dtype.
        learning_rate: scalar learning rate.
        momenta: None for plain SGD, or N momentum slot variables.
        momentum: scalar momentum coefficient (used with ``momenta``).
        nesterov: Nesterov momentum; needs ``momenta``.
        weight_decay: scalar decoupled weight decay; 0 disables it.
        name: optional op name.

    Returns:
        The op in graph mode, None in eager mode.
    """
    if len(variables) == 0:
        raise _invalid("apply_sgd needs at least one variable")
    _check_lengths(len(variables), gradients=gradients, momenta=momenta)
    if nesterov and momenta is None:
        raise _invalid("nesterov=True needs momenta (one momentum slot per variable)")
    grads = [tf.convert_to_tensor(g) for g in gradients]
    sdt = _scalar_dtype(grads)
    return _loader.load().fusedopt_apply_sgd(
        vars=_handles(variables, "variables"),
        momenta=_handles(momenta or [], "momenta"),
        grads=grads,
        lr=_scalar(learning_rate, sdt),
        momentum=_scalar(momentum, sdt),
        weight_decay=_scalar(weight_decay, sdt),
        nesterov=bool(nesterov),
        name=name,
    )


# Importing fusedopt.ops loads the library: a missing or mismatched build fails
# here, with the loader's explanation, rather than at the first training step.
_loader.load()
