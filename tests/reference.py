"""Float64 NumPy references of the update rules, written from the Keras 3 docs
and source semantics (keras.optimizers.*), independent of the kernels.

Each reference takes and returns float64 arrays; the tests round the stored
state to the variable's dtype after every step, as the kernels' storage does.
"""

from __future__ import annotations

import numpy as np


def sgd_step(var, grad, lr, *, m=None, momentum=0.0, nesterov=False, weight_decay=0.0):
    """keras.optimizers.SGD, with Keras' decoupled weight decay applied first.

    Returns (var, m); m is None for plain SGD.
    """
    var = np.asarray(var, np.float64)
    grad = np.asarray(grad, np.float64)
    if weight_decay:
        var = var - var * weight_decay * lr
    if m is None:
        return var - lr * grad, None
    m = momentum * np.asarray(m, np.float64) - lr * grad
    if nesterov:
        return var + momentum * m - lr * grad, m
    return var + m, m
