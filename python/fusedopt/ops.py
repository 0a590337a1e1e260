"""Typed Python wrappers of the fused ops, one per op.

Each op updates a list of variables in one call. Variables may be
``tf.Variable``s, Keras variables or resource handles; gradients must have
their variable's shape and dtype. Hyperparameters may be Python numbers or
scalar tensors (a learning-rate schedule never retraces).

Every op validates all of its inputs before writing anything: on bad input it
raises ``tf.errors.InvalidArgumentError`` naming the input, and no variable
changes.

Every ``apply_*`` function also takes the gradient options below as keyword
arguments (``**options``).
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from fusedopt import _atomic, _loader

__all__ = [
    "apply_sgd", "apply_adam", "apply_nadam", "apply_adamax", "apply_rmsprop", "apply_adagrad",
    "apply_adadelta", "apply_ftrl", "apply_lion", "apply_lamb", "apply_schedule_free_adamw",
    "apply_muon_momentum", "apply_muon", "muon_scale", "apply_adafactor", "stream_triad",
]

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
    """Hyperparameters travel as float64: Python numbers at full precision.

    The op rounds each one to the variables' dtype the way Keras does (Note
    [Keras arithmetic] in cc/rules/coefficients.h), so a float32 value (a
    Keras learning rate) is exact in float64 and a Python 0.9 keeps its
    double value where Keras' arithmetic uses it (``1 - 0.9``).
    """
    del grads
    return tf.float64


def _scalar(x: TensorLike, dtype: tf.DType) -> tf.Tensor:
    # Python numbers go straight to `dtype` (tf.cast would round them through
    # float32 first); tensors and variables are cast. Within an optimizer step
    # each constant and each cast of a tensor is built once (Note [one check
    # per kind] in fusedopt/_atomic.py).
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, (int, float)):
        return _atomic.constant(x, dtype)
    if isinstance(x, tf.Tensor) and not tf.executing_eagerly():
        return _atomic.memo(("cast", x.ref(), tf.as_dtype(dtype)), lambda: tf.cast(x, dtype))
    return tf.cast(x, dtype)


def _invalid(message: str) -> tf.errors.InvalidArgumentError:
    return tf.errors.InvalidArgumentError(None, None, message)


def _dense_shape_checks(variables: Sequence[VariableLike],
                        gradients: Sequence[tf.IndexedSlices]) -> list[Any]:
    """An IndexedSlices whose dense_shape disagrees with its variable is an
    InvalidArgumentError naming both shapes. Decided here when both shapes are
    known while tracing (the usual case: no op is added); otherwise returns
    the run-time assertions the op must wait for."""
    checks = []
    for i, (v, g) in enumerate(zip(variables, gradients)):
        if g.dense_shape is None or getattr(v, "dtype", None) == tf.resource:
            continue  # a raw resource handle does not carry the variable's shape
        var_shape = tf.TensorShape(v.shape)
        dense = tf.get_static_value(g.dense_shape)
        if dense is not None and var_shape.is_fully_defined():
            if [int(d) for d in dense] != var_shape.as_list():
                raise _invalid(
                    f"gradients[{i}] is an IndexedSlices of dense_shape "
                    f"{tuple(int(d) for d in dense)} but variables[{i}] has shape "
                    f"{tuple(var_shape.as_list())}; nothing was updated")
            continue
        checks.append(tf.debugging.assert_equal(
            tf.cast(g.dense_shape, tf.int64), tf.shape(v, out_type=tf.int64),
            message=f"gradients[{i}] is an IndexedSlices whose dense_shape differs from the "
                    f"shape of variables[{i}]; nothing was updated"))
    return checks


def _check_lengths(n: int, **lists: Sequence[Any] | None) -> None:
    for name, items in lists.items():
        if items is not None and len(items) != n:
            raise _invalid(f"{name} has {len(items)} entries but there are {n} variables")


_INF = float("inf")

__doc__ += """
    Gradient options (every ``apply_*`` op; fused into the update pass, in Keras'
    order: unscale, clip, then decay and update):

    - ``grad_scale``: multiplies every gradient (``1 / loss_scale``); default 1.
    - ``clipvalue``: clip every element to ``[-clipvalue, clipvalue]``.
    - ``clipnorm``: scale each variable's gradient to L2 norm at most ``clipnorm``.
    - ``global_clipnorm``: scale all gradients of the call by
      ``clip / max(global_norm, clip)`` (NaN if the norm is not finite, as Keras).
      At most one of the three clippings; None disables it.
    - ``skip_nonfinite``: if any gradient element is inf or NaN, write nothing.
    - ``grappler_form``: compute the weight decay as ``var - var * (wd * lr)``,
      the form Grappler's arithmetic optimizer gives Keras' graph in a
      tf.function (default: Keras' written ``(var * wd) * lr``), and
      ``x / sqrt(y)`` as Grappler's ``x * rsqrt(y)`` (RMSprop, Adagrad,
      Adadelta; TF's approximate CPU Rsqrt).
    - ``grappler_constant_folding``: divisions by constants as multiplications
      by their reciprocals, as Grappler's constant folding rewrites them
      (ScheduleFreeAdamW). The fusedopt.keras optimizers set both while
      tracing a tf.function, as Grappler's configuration says.

    Hyperparameters are computed exactly as Keras' update_step computes them
    for the variables' dtype (Python floats are passed unrounded; the op rounds
    ``ops.cast(beta, dtype)`` through float32 and ``1 - beta`` once from
    double, as Keras does), so with Keras' hyperparameters an op gives the
    built-in's numbers bit for bit.

    Sparse gradients: pass ``tf.IndexedSlices`` (all of a call's gradients) to
    run the op's sparse twin (``Fusedopt>SparseApply*``, CPU): indices are
    validated before anything is written and duplicates summed;
    ``sparse_mode="exact"`` (default) gives the dense result on the densified
    gradient, ``"lazy"`` updates only the rows present (LazyAdam semantics).

    Returns the op's ``skipped`` output: a scalar bool tensor, True when
    ``skip_nonfinite`` found a non-finite gradient and nothing was written.
"""  # noqa: A001


def _clip_input(value: TensorLike | None, name: str, dtype: tf.DType) -> tf.Tensor:
    if value is None:
        return _atomic.constant(_INF, dtype)
    if isinstance(value, (int, float)) and not value > 0:
        raise _invalid(f"{name} must be > 0 (or None to disable it), got {value}")
    return _scalar(value, dtype)


def _apply(
    op_name: str,
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    slots: dict[str, Sequence[VariableLike] | None],
    scalars: dict[str, TensorLike],
    step: TensorLike | None = None,
    name: str | None = None,
    *,
    grad_scale: TensorLike = 1.0,
    clipvalue: TensorLike | None = None,
    clipnorm: TensorLike | None = None,
    global_clipnorm: TensorLike | None = None,
    skip_nonfinite: bool = False,
    sparse_mode: str = "exact",
    grappler_form: bool = False,
    grappler_constant_folding: bool = False,
    **attrs: Any,
) -> tf.Tensor:
    """Validates list lengths, converts inputs and calls one fused op (its
    sparse twin when the gradients are tf.IndexedSlices)."""
    if len(variables) == 0:
        raise _invalid(f"{op_name} needs at least one variable")
    _check_lengths(len(variables), gradients=gradients, **slots)
    sparse = [isinstance(g, tf.IndexedSlices) for g in gradients]
    if any(sparse) and not all(sparse):
        raise _invalid(
            "a call takes either all dense or all tf.IndexedSlices gradients; split the "
            "variables into two calls"
        )
    if sparse_mode not in ("exact", "lazy"):
        raise _invalid(f"sparse_mode must be 'exact' or 'lazy', got {sparse_mode!r}")
    given = [n for n, v in [("clipvalue", clipvalue), ("clipnorm", clipnorm),
                            ("global_clipnorm", global_clipnorm)] if v is not None]
    if len(given) > 1:
        raise _invalid(f"at most one of clipvalue, clipnorm and global_clipnorm; got {given}")
    kwargs: dict[str, Any] = {"vars": _handles(variables, "variables")}
    if all(sparse):
        checks = _dense_shape_checks(variables, gradients)
        values = [tf.convert_to_tensor(g.values) for g in gradients]
        if checks:
            with tf.control_dependencies(checks):
                values = [tf.identity(v) for v in values]
        indices = [tf.convert_to_tensor(g.indices) for g in gradients]
        if len({i.dtype for i in indices}) > 1:
            indices = [tf.cast(i, tf.int64) for i in indices]
        kwargs.update(grad_values=values, grad_indices=indices, mode=sparse_mode)
        op_name = "fusedopt_sparse_" + op_name[len("fusedopt_"):]
        sdt = _scalar_dtype(values)
    else:
        grads = [tf.convert_to_tensor(g) for g in gradients]
        kwargs["grads"] = grads
        sdt = _scalar_dtype(grads)
    for slot_name, slot_vars in slots.items():
        kwargs[slot_name] = _handles(slot_vars or [], slot_name)
    for scalar_name, value in scalars.items():
        kwargs[scalar_name] = _scalar(value, sdt)
    if step is not None:
        kwargs["step"] = _scalar(step, tf.int64) if isinstance(step, tf.Tensor) else tf.cast(
            step, tf.int64)
    kwargs["grad_scale"] = _scalar(grad_scale, sdt)
    kwargs["clip_value"] = _clip_input(clipvalue, "clipvalue", sdt)
    kwargs["clip_norm"] = _clip_input(clipnorm, "clipnorm", sdt)
    kwargs["global_clip_norm"] = _clip_input(global_clipnorm, "global_clipnorm", sdt)
    kwargs["skip_nonfinite"] = bool(skip_nonfinite)
    kwargs["grappler_form"] = bool(grappler_form)
    kwargs["grappler_constant_folding"] = bool(grappler_constant_folding)
    kwargs.update(attrs)
    return getattr(_loader.load(), op_name)(name=name, **kwargs)


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
    **options: Any,
) -> tf.Tensor:
    """SGD (keras.optimizers.SGD), optionally with (Nesterov) momentum.

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
        The ``skipped`` flag (see the gradient options in the module doc).
    """
    if nesterov and momenta is None:
        raise _invalid("nesterov=True needs momenta (one momentum slot per variable)")
    return _apply(
        "fusedopt_apply_sgd", variables, gradients, {"momenta": momenta},
        {"lr": learning_rate, "momentum": momentum, "weight_decay": weight_decay},
        name=name, **options, nesterov=bool(nesterov),
    )


def apply_adam(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    m: Sequence[VariableLike],
    v: Sequence[VariableLike],
    step: TensorLike,
    vhat: Sequence[VariableLike] | None = None,
    beta_1: TensorLike = 0.9,
    beta_2: TensorLike = 0.999,
    epsilon: TensorLike = 1e-7,
    weight_decay: TensorLike = 0.0,
    tf_training_op_form: bool = False,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """Adam / AMSGrad / AdamW (keras.optimizers.Adam, AdamW) in one pass.

    ``step`` counts from 1 (Keras' ``iterations + 1``). Per element::

        var -= var * weight_decay * lr
        m += (g - m) * (1 - beta_1);  v += (g^2 - v) * (1 - beta_2)
        vhat = max(vhat, v)                      # AMSGrad, when vhat is given
        var -= m * lr * sqrt(1 - beta_2^step) / (1 - beta_1^step) / (sqrt(v or vhat) + epsilon)

    ``tf_training_op_form=True`` (IndexedSlices gradients only; no weight
    decay): tf_keras' legacy sparse Adam, its ops in their order (``m = m *
    beta_1 + g * (1 - beta_1)``, ``v = v * beta_2 + (g * g) * (1 - beta_2)``,
    ``lr * (sqrt(1 - beta_2^step) / (1 - beta_1^step))``; the op's doc), the
    bits of that class.
    """
    attrs = {"tf_training_op_form": True} if tf_training_op_form else {}
    return _apply(
        "fusedopt_apply_adam", variables, gradients, {"m": m, "v": v, "vhat": vhat},
        {"lr": learning_rate, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
         "weight_decay": weight_decay},
        step=step, name=name, **options, **attrs,
    )


def _float64_bits(x: float) -> int:
    """The bits of float(x) as a signed int64 (an exact float64 op attribute)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def apply_nadam(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    m: Sequence[VariableLike],
    v: Sequence[VariableLike],
    step: TensorLike,
    u_product: TensorLike,
    beta_1: TensorLike = 0.9,
    beta_2: TensorLike = 0.999,
    epsilon: TensorLike = 1e-7,
    weight_decay: TensorLike = 0.0,
    schedule_decay: float = 1.0,
    tf_training_op_form: bool = False,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """Nadam as Keras computes it (keras.optimizers.Nadam).

    ``u_product`` is the running product of
    ``u_t = beta_1 * (1 - 0.5 * 0.96^(schedule_decay * t))`` over steps 1..step
    (Keras' ``_u_product`` after its update for this step). ``schedule_decay``
    is 1 in Keras 3; tf_keras' legacy Nadam uses its ``schedule_decay`` (0.004).
    ``tf_training_op_form=True``: tf_keras' legacy Nadam's own element order
    (``m = beta_1 * m + (1 - beta_1) * g``, ``g / (1 - u_product)`` first, ...;
    the op's doc), the bits of that class; no weight decay.
    """
    return _apply(
        "fusedopt_apply_nadam", variables, gradients, {"m": m, "v": v},
        {"lr": learning_rate, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
         "weight_decay": weight_decay, "u_product": u_product},
        step=step, name=name, **options, schedule_decay=float(schedule_decay),
        schedule_decay_bits=_float64_bits(schedule_decay),
        tf_training_op_form=bool(tf_training_op_form),
    )


def apply_adamax(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    m: Sequence[VariableLike],
    u: Sequence[VariableLike],
    step: TensorLike,
    beta_1: TensorLike = 0.9,
    beta_2: TensorLike = 0.999,
    epsilon: TensorLike = 1e-7,
    weight_decay: TensorLike = 0.0,
    tf_training_op_form: bool = False,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """Adamax (keras.optimizers.Adamax)::

        m += (g - m) * (1 - beta_1);  u = max(beta_2 * u, |g|)
        var -= lr * m / ((1 - beta_1^step) * (u + epsilon))

    ``tf_training_op_form=True``: TensorFlow's ``ResourceApplyAdaMax`` order,
    ``var -= (lr / (1 - beta_1^step)) * (m / (u + epsilon))`` (tf_keras' legacy
    Adamax).
    """
    return _apply(
        "fusedopt_apply_adamax", variables, gradients, {"m": m, "u": u},
        {"lr": learning_rate, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
         "weight_decay": weight_decay},
        step=step, name=name, **options, tf_training_op_form=bool(tf_training_op_form),
    )


def apply_rmsprop(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    velocity: Sequence[VariableLike],
    momenta: Sequence[VariableLike] | None = None,
    average_gradient: Sequence[VariableLike] | None = None,
    rho: TensorLike = 0.9,
    momentum: TensorLike = 0.0,
    epsilon: TensorLike = 1e-7,
    weight_decay: TensorLike = 0.0,
    epsilon_outside_sqrt: bool = False,
    tf_training_op_form: bool = False,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """RMSprop (keras.optimizers.RMSprop); momentum when ``momenta`` is given,
    centered when ``average_gradient`` is given::

        velocity = rho * velocity + (1 - rho) * g^2
        avg = rho * avg + (1 - rho) * g                 # centered
        inc = lr * g / sqrt(velocity [- avg^2] + epsilon)
        m = momentum * m + inc; var -= m                 # or var -= inc

    ``epsilon_outside_sqrt=True`` gives ``inc = lr * g / (sqrt(velocity [- avg^2])
    + epsilon)``, tf_keras' legacy RMSprop without momentum.
    ``tf_training_op_form=True`` computes ``velocity += (g^2 - velocity) * (1 -
    rho)`` (and ``avg`` alike), as TensorFlow's ``ResourceApply(Centered)RMSProp``
    do: tf_keras' legacy RMSprop with momentum.
    """
    return _apply(
        "fusedopt_apply_rmsprop", variables, gradients,
        {"velocity": velocity, "momenta": momenta, "average_gradient": average_gradient},
        {"lr": learning_rate, "rho": rho, "momentum": momentum, "epsilon": epsilon,
         "weight_decay": weight_decay},
        name=name, **options, epsilon_outside_sqrt=bool(epsilon_outside_sqrt),
        tf_training_op_form=bool(tf_training_op_form),
    )


def apply_adagrad(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    accumulator: Sequence[VariableLike],
    epsilon: TensorLike = 1e-7,
    weight_decay: TensorLike = 0.0,
    epsilon_outside_sqrt: bool = False,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """Adagrad (keras.optimizers.Adagrad)::

        acc += g^2;  var -= lr * g / sqrt(acc + epsilon)

    ``epsilon_outside_sqrt=True`` gives ``var -= lr * g / (sqrt(acc) + epsilon)``,
    tf_keras' legacy Adagrad.
    """
    return _apply(
        "fusedopt_apply_adagrad", variables, gradients, {"accumulator": accumulator},
        {"lr": learning_rate, "epsilon": epsilon, "weight_decay": weight_decay},
        name=name, **options, epsilon_outside_sqrt=bool(epsilon_outside_sqrt),
    )


def apply_adadelta(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    accumulated_grad: Sequence[VariableLike],
    accumulated_delta_var: Sequence[VariableLike],
    rho: TensorLike = 0.95,
    epsilon: TensorLike = 1e-7,
    weight_decay: TensorLike = 0.0,
    tf_training_op_form: bool = False,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """Adadelta (keras.optimizers.Adadelta)::

        ag = rho * ag + (1 - rho) * g^2
        delta = -sqrt(adv + eps) * g / sqrt(ag + eps)
        adv = rho * adv + (1 - rho) * delta^2;  var += lr * delta

    ``tf_training_op_form=True``: TensorFlow's ``ResourceApplyAdadelta``
    arithmetic (tf_keras' legacy Adadelta): ``u = sqrt(adv + eps) *
    rsqrt(ag + eps) * g`` with TF's CPU Rsqrt, ``var -= u * lr``, ``adv`` from
    ``u``.
    """
    return _apply(
        "fusedopt_apply_adadelta", variables, gradients,
        {"accumulated_grad": accumulated_grad, "accumulated_delta_var": accumulated_delta_var},
        {"lr": learning_rate, "rho": rho, "epsilon": epsilon, "weight_decay": weight_decay},
        name=name, **options, tf_training_op_form=bool(tf_training_op_form),
    )


def apply_ftrl(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    accumulator: Sequence[VariableLike],
    linear: Sequence[VariableLike],
    learning_rate_power: TensorLike = -0.5,
    l1: TensorLike = 0.0,
    l2: TensorLike = 0.0,
    l2_shrinkage: TensorLike = 0.0,
    beta: TensorLike = 0.0,
    weight_decay: TensorLike = 0.0,
    tf_pow: bool = False,
    tf_training_op_form: bool = False,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """FTRL-proximal as Keras computes it (keras.optimizers.Ftrl); see the op doc.

    The accumulators' powers use ``sqrt`` for ``learning_rate_power=-0.5``
    and the C library's ``pow`` otherwise (one pass). ``tf_pow=True`` uses
    TensorFlow's own CPU Pow kernel instead (and Grappler's forms with
    ``grappler_form``), as Keras' ops do: keras.optimizers.Ftrl's bits for
    dense float32/float64 CPU variables, in four passes (Note [TF pow]).
    ``tf_pow=True, tf_training_op_form=True`` raises as TensorFlow's
    ``ResourceApplyFtrl(V2)`` does (Eigen's unary ``x.pow(p)``: repeated
    squaring for integer powers in [-3, 7]; ``sqrt`` for -0.5): tf_keras'
    legacy Ftrl's bits.
    """
    return _apply(
        "fusedopt_apply_ftrl", variables, gradients, {"accumulator": accumulator, "linear": linear},
        {"lr": learning_rate, "learning_rate_power": learning_rate_power, "l1": l1, "l2": l2,
         "l2_shrinkage": l2_shrinkage, "beta": beta, "weight_decay": weight_decay},
        name=name, **options, tf_pow=bool(tf_pow),
        tf_training_op_form=bool(tf_training_op_form),
    )


def apply_lion(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    m: Sequence[VariableLike],
    beta_1: TensorLike = 0.9,
    beta_2: TensorLike = 0.99,
    weight_decay: TensorLike = 0.0,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """Lion (keras.optimizers.Lion)::

        var -= lr * sign(m * beta_1 + g * (1 - beta_1));  m = m * beta_2 + g * (1 - beta_2)
    """
    return _apply(
        "fusedopt_apply_lion", variables, gradients, {"m": m},
        {"lr": learning_rate, "beta_1": beta_1, "beta_2": beta_2, "weight_decay": weight_decay},
        name=name, **options,
    )


def apply_schedule_free_adamw(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    momentum: Sequence[VariableLike],
    velocity: Sequence[VariableLike],
    step: TensorLike,
    beta_1: TensorLike = 0.9,
    beta_2: TensorLike = 0.999,
    epsilon: TensorLike = 1e-8,
    warmup_steps: TensorLike = 0,
    weight_decay: TensorLike = 0.0,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """Schedule-free AdamW (keras.optimizers.ScheduleFreeAdamW) in one pass.

    ``momentum`` holds the base iterate z (Keras initialises it to the
    variable), ``velocity`` Adam's second moment; ``step`` counts from 1.
    Per element, with ``lr_t = lr * min(step / warmup_steps, 1)`` (no warmup
    when ``warmup_steps`` is 0) and ``w = 1 / step``::

        var -= var * weight_decay * lr
        v += (g^2 - v) * (1 - beta_2)
        z -= lr_t * g / (sqrt(v / (1 - beta_2^step)) + epsilon)
        x = (var - (1 - beta_1) * z) / beta_1
        var = (1 - beta_1) * z + beta_1 * ((1 - w) * x + w * z)
    """
    return _apply(
        "fusedopt_apply_schedule_free_adam_w", variables, gradients,
        {"momentum": momentum, "velocity": velocity},
        {"lr": learning_rate, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
         "warmup_steps": warmup_steps, "weight_decay": weight_decay},
        step=step, name=name, **options,
    )


def apply_lamb(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    m: Sequence[VariableLike],
    v: Sequence[VariableLike],
    step: TensorLike,
    beta_1: TensorLike = 0.9,
    beta_2: TensorLike = 0.999,
    epsilon: TensorLike = 1e-7,
    weight_decay: TensorLike = 0.0,
    tf_norms: bool = False,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """LAMB (keras.optimizers.Lamb), per-variable trust ratio, two passes::

        m, v as Adam;  u = (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
        var -= (|var| / |u| if both > 0 else 1) * lr * u

    The norms' sums of squares are fixed-order sums in double (the same bits
    on every thread count). ``tf_norms=True`` computes them as Keras' ops do,
    with TensorFlow's own CPU Pow (Square with ``grappler_form``) and Sum
    kernels on the op's thread pool, whose summation order depends on the
    pool's size (float32/float64 CPU variables; Note [TF norms]):
    keras.optimizers.Lamb's bits, at the cost of two more passes.
    """
    return _apply(
        "fusedopt_apply_lamb", variables, gradients, {"m": m, "v": v},
        {"lr": learning_rate, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
         "weight_decay": weight_decay},
        step=step, name=name, **options, tf_norms=bool(tf_norms),
    )


def apply_muon_momentum(
    momenta: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    *,
    momentum: TensorLike = 0.95,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """The momentum half of Muon (keras.optimizers.Muon), in place on the
    momentum buffers ``momenta``::

        m = m + (g + m * (momentum - 1))

    (also in Keras' graph: Grappler leaves it alone there). Muon's Newton-Schulz iterations then run on ``m``
    (or on Nesterov's ``g + momentum * m``) as TensorFlow matmuls, and
    :func:`apply_muon` applies their result. Takes no weight decay.
    """
    return _apply(
        "fusedopt_apply_muon_momentum", momenta, gradients, {}, {"momentum": momentum},
        name=name, **options,
    )


def muon_scale(shape: Sequence[int]) -> float:
    """Keras Muon's ``lr_adjust`` factor ``sqrt(max(shape[0], shape[1]))``,
    computed in float32 as Keras' ``ops.sqrt`` of an integer does."""
    if len(shape) < 2:
        raise ValueError(f"Muon's update needs a variable of rank >= 2, got shape {tuple(shape)}")
    return float(np.sqrt(np.float32(max(int(shape[0]), int(shape[1])))))


def apply_muon(
    variables: Sequence[VariableLike],
    updates: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    scale: TensorLike,
    rms_rate: TensorLike | None = 0.2,
    weight_decay: TensorLike = 0.0,
    name: str | None = None,
    **options: Any,
) -> tf.Tensor:
    """The update half of Muon (keras.optimizers.Muon): ``updates`` are the
    orthogonalized momenta (the Newton-Schulz output). Per element::

        var -= var * weight_decay * lr
        var -= ((lr * u) * scale) * rms_rate

    ``scale`` is Keras' ``sqrt(max(rows, cols))`` (:func:`muon_scale`; one
    value per call, so group variables by it); ``rms_rate=None`` (Keras: no
    adjustment) applies ``var -= lr * u``. With ``grappler_form=True`` the
    update is ``var - u * ((lr * scale) * rms_rate)``, Keras' graph after
    Grappler.
    """
    if rms_rate is None:
        scale, rms_rate = 1.0, 1.0
    return _apply(
        "fusedopt_apply_muon", variables, updates, {},
        {"lr": learning_rate, "scale": scale, "rms_rate": rms_rate, "weight_decay": weight_decay},
        name=name, **options,
    )


def apply_adafactor(
    variables: Sequence[VariableLike],
    gradients: Sequence[TensorLike],
    learning_rate: TensorLike,
    *,
    r: Sequence[VariableLike],
    c: Sequence[VariableLike],
    v: Sequence[VariableLike],
    step: TensorLike,
    beta_2_decay: TensorLike = -0.8,
    epsilon_1: TensorLike = 1e-30,
    epsilon_2: TensorLike = 1e-3,
    clip_threshold: TensorLike = 1.0,
    weight_decay: TensorLike = 0.0,
    grappler_form: bool = False,
    tf_reductions: bool = False,
    name: str | None = None,
) -> tf.Tensor:
    """Adafactor (keras.optimizers.Adafactor) over N variables, three passes
    per tensor (``Fusedopt>ApplyAdafactor``; CPU, and in-place inside XLA
    compilation on the CPU).

    ``r`` and ``c`` are the factored second moments of variables of rank >= 2
    (shapes ``var.shape[:-1]`` and ``var.shape[:-2] + var.shape[-1:]``); for
    lower ranks they are unused placeholders (Keras' own), and ``v`` (the
    variable's shape) holds the second moment. ``step`` counts from 1::

        var -= var * weight_decay * lr
        rho = min(lr, 1 / sqrt(step));  beta = 1 - step^beta_2_decay
        alpha = max(epsilon_2, rms(var)) * rho;  q = g^2 + epsilon_1
        rank >= 2: r = beta r + (1 - beta) mean_cols(q); c = beta c + (1 - beta) mean_rows(q)
                   v = (r / mean(r))[:, None] * c[None, :]
        rank < 2:  v = beta v + (1 - beta) q
        u = g / sqrt(v);  var -= alpha * u / max(1, rms(u) / clip_threshold)

    The reductions are deterministic double sums (the same bits on every
    thread count), not TensorFlow's Mean kernels. ``tf_reductions=True``
    (float32/float64 variables; set by ``fusedopt.keras.Adafactor``) runs
    Keras' step instead, with TensorFlow's own Mean and, with
    ``grappler_form`` (Grappler's rewrite of Keras' graph), Rsqrt:
    ``keras.optimizers.Adafactor``'s bits, at seven passes over a factored
    tensor plus four reduction reads instead of three passes
    (docs/parity.md). Takes no gradient options (clip before the call). Returns the op's ``skipped`` output (always False).
    """
    n = len(variables)
    if n == 0:
        raise _invalid("Fusedopt>ApplyAdafactor needs at least one variable")
    _check_lengths(n, gradients=gradients, r=r, c=c, v=v)
    if any(isinstance(g, tf.IndexedSlices) for g in gradients):
        gradients = [tf.convert_to_tensor(g) for g in gradients]  # dense, as Keras' update
    sdt = tf.float64
    return _loader.load().fusedopt_apply_adafactor(
        vars=_handles(variables, "variables"), r=_handles(r, "r"), c=_handles(c, "c"),
        v=_handles(v, "v"), grads=[tf.convert_to_tensor(g) for g in gradients],
        lr=_scalar(learning_rate, sdt), beta_2_decay=_scalar(beta_2_decay, sdt),
        epsilon_1=_scalar(epsilon_1, sdt), epsilon_2=_scalar(epsilon_2, sdt),
        clip_threshold=_scalar(clip_threshold, sdt), weight_decay=_scalar(weight_decay, sdt),
        step=tf.cast(step, tf.int64), grappler_form=bool(grappler_form),
        tf_reductions=bool(tf_reductions), name=name,
    )


def stream_triad(a: VariableLike, b: TensorLike, s: TensorLike) -> tf.Operation | None:
    """Bandwidth probe: ``a = a * s + b`` in place (float32), on the fused ops' thread pool.

    Moves 12 bytes per element with the optimizers' access pattern (in-place
    writes); benchmarks use it as the memory-bandwidth roofline.
    """
    return _loader.load().fusedopt_stream_triad(
        a=_handle(a, "a"), b=tf.convert_to_tensor(b, tf.float32), s=_scalar(s, tf.float32)
    )


# Importing fusedopt.ops loads the library: a missing or mismatched build fails
# here, with the loader's explanation, rather than at the first training step.
_loader.load()
