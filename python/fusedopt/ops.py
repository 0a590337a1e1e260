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
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import op_def_registry

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


# ---- The rules' functions, made from the registry ----------------------------
#
# Note [wrappers from the registry]: a rule's op definition (REGISTER_OP, which
# the rule registry generates) says what its function takes: its slot lists
# (and which are optional: a count attribute of their own instead of N), its
# hyperparameter scalars in order, whether it takes a step, and its own
# attributes. _wrapper adds what the registry cannot say: the positional
# parameters, the keyword defaults in signature order, annotations other than
# the attributes' types, the public keyword names that differ from the op's
# (_PUBLIC_NAMES), checks of option combinations (a ``prepare`` hook) and the
# docstring. It makes a real function of that signature, so that
# inspect.signature, help() and Python's own argument errors are a written
# function's; every keyword parameter must be an op input or attribute, and
# every op input and attribute a parameter (or derived by the hook), else the
# import fails. The call passes the slots and the scalars in the op's input
# order (the order their constants and casts are built). The op definitions,
# not fusedopt._native.rules() (the same registry), are read because they are
# the library this module calls: present in every build, also the one
# FUSEDOPT_LIBRARY names (tests/test_ops_registry.py checks the two agree).

_PUBLIC_NAMES = {"lr": "learning_rate"}  # op input -> public keyword, where they differ
_COMMON_ATTRS = frozenset({"N", "T", "Tscalar", "Tindices", "mode", "skip_nonfinite",
                           "grappler_form", "grappler_constant_folding"})
_OPTION_INPUTS = frozenset({"grad_scale", "clip_value", "clip_norm", "global_clip_norm"})
_ATTR_TYPES: dict[str, Callable[[Any], Any]] = {"bool": bool, "float": float, "int": int}


class _OpInputs(NamedTuple):
    """What a rule's dense op takes besides variables, gradients and gradient
    options (its sparse twin takes the same), read from its op definition."""

    op: str  # the op library's Python function
    slots: tuple[tuple[str, bool], ...]  # (name, optional), in input order
    scalars: tuple[str, ...]  # hyperparameter inputs, in input order
    step: bool
    attrs: dict[str, str]  # the rule's own attributes: name -> type ("bool", "float", ...)


def _op_inputs(rule: str) -> _OpInputs:
    """Reads rule ``rule``'s op (``Fusedopt>Apply...``, matched by the rule's
    name without underscores, case-insensitively) from the loaded library."""
    library = _loader.load()
    key, prefix = "apply" + rule.replace("_", ""), len("fusedopt_")
    # The library's functions: Fusedopt_ApplySGD (the op "Fusedopt>ApplySGD") and
    # fusedopt_apply_sgd.
    raw = [n for n in dir(library) if n.startswith("Fusedopt_") and n[prefix:].lower() == key]
    python = [n for n in dir(library)
              if n.startswith("fusedopt_") and n[prefix:].replace("_", "") == key]
    op_def = op_def_registry.get("Fusedopt>" + raw[0][prefix:]) if len(raw) == 1 else None
    if op_def is None or len(python) != 1:
        raise ImportError(f"fusedopt's op library {_loader.library_path()} has no op for the "
                          f"rule {rule!r}: {_loader.REBUILD_HINT}")
    slots, scalars, step = [], [], False
    for arg in op_def.input_arg:
        if arg.name in ("vars", "grads") or arg.name in _OPTION_INPUTS:
            continue
        if arg.type == tf.resource.as_datatype_enum:
            slots.append((arg.name, arg.number_attr != "N"))
        elif arg.name == "step":
            step = True
        else:
            scalars.append(arg.name)
    counts = {arg.number_attr for arg in op_def.input_arg}
    attrs = {a.name: a.type for a in op_def.attr if a.name not in _COMMON_ATTRS | counts}
    return _OpInputs(python[0], tuple(slots), tuple(scalars), step, attrs)


class _Rule(NamedTuple):
    """A rule's function: its op's inputs and the Python table entry."""

    inputs: _OpInputs
    positional: tuple[str, ...]  # variables, gradients, then public scalar names
    prepare: Callable[[dict[str, Any]], None] | None


def _call(rule: _Rule, arguments: dict[str, Any]) -> tf.Tensor:
    if rule.prepare is not None:
        rule.prepare(arguments)  # option checks, derived attributes
    spec = rule.inputs
    options = arguments.pop("options")
    return _apply(
        spec.op, arguments[rule.positional[0]], arguments[rule.positional[1]],
        {s: arguments[s] for s, _ in spec.slots},
        {s: arguments[_PUBLIC_NAMES.get(s, s)] for s in spec.scalars},
        step=arguments["step"] if spec.step else None, name=arguments["name"], **options,
        **{a: _ATTR_TYPES.get(t, lambda x: x)(arguments[a]) for a, t in spec.attrs.items()},
    )


def _wrapper(
    rule: str,
    *,
    defaults: dict[str, Any],
    doc: str,
    positional: tuple[str, ...] = ("variables", "gradients", "learning_rate"),
    annotations: dict[str, str] | None = None,
    prepare: Callable[[dict[str, Any]], None] | None = None,
    derived: tuple[str, ...] = (),
) -> Callable[..., tf.Tensor]:
    """The function ``apply_<rule>`` (Note [wrappers from the registry]).

    Its keyword-only parameters: the required slots, ``step``, the scalars
    without a default, the optional slots (None by default), then
    ``defaults`` in order; then ``name`` and ``**options``. ``derived`` lists
    attributes ``prepare`` computes from the others.
    """
    spec = _op_inputs(rule)
    name = "apply_" + rule
    optional = {s for s, opt in spec.slots if opt}
    public_scalars = [_PUBLIC_NAMES.get(s, s) for s in spec.scalars]
    keywords = [s for s, opt in spec.slots if not opt] + (["step"] if spec.step else [])
    keywords += [s for s in public_scalars if s not in defaults and s not in positional]
    keywords += [s for s, opt in spec.slots if opt] + list(defaults)
    takes = (set(public_scalars) | {s for s, _ in spec.slots} | set(spec.attrs)
             | ({"step"} if spec.step else set()))
    given = set(positional[2:]) | set(keywords) | set(derived)
    if given != takes or len(keywords) != len(set(keywords)):
        raise ImportError(
            f"fusedopt.ops.{name} and the op {spec.op} disagree: the op takes "
            f"{sorted(takes)}, the function {sorted(given)}. {_loader.REBUILD_HINT}")
    slot_names = {s for s, _ in spec.slots}

    def annotation(keyword: str) -> str:  # (attributes: their op type, "bool" or "float")
        if keyword in slot_names:
            return ("Sequence[VariableLike] | None" if keyword in optional
                    else "Sequence[VariableLike]")
        return spec.attrs.get(keyword, "TensorLike")

    annotations = {
        positional[0]: "Sequence[VariableLike]", positional[1]: "Sequence[TensorLike]",
        **{p: "TensorLike" for p in positional[2:]}, **{k: annotation(k) for k in keywords},
        **(annotations or {}), "name": "str | None", "options": "Any", "return": "tf.Tensor",
    }
    params = [*positional, "*"]
    params += [f"{k}=_defaults[{k!r}]" if k in defaults else
               f"{k}=None" if k in optional else k for k in keywords]
    params += ["name=None", "**options"]
    passed = ", ".join(f"{p}={p}" for p in [*positional, *keywords, "name", "options"])
    source = (f"def _make(_call, _rule, _defaults):\n"
              f"    def {name}({', '.join(params)}):\n"
              f"        return _call(_rule, dict({passed}))\n"
              f"    return {name}\n")
    namespace: dict[str, Any] = {}
    exec(source, globals(), namespace)  # noqa: S102 - a signature made from the registry
    function = namespace["_make"](_call, _Rule(spec, positional, prepare), defaults)
    function.__qualname__ = name
    function.__doc__ = doc
    function.__annotations__ = annotations
    return function


def _nesterov_needs_momenta(arguments: dict[str, Any]) -> None:
    if arguments["nesterov"] and arguments["momenta"] is None:
        raise _invalid("nesterov=True needs momenta (one momentum slot per variable)")


apply_sgd = _wrapper(
    "sgd",
    defaults={"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    prepare=_nesterov_needs_momenta,
    doc="""SGD (keras.optimizers.SGD), optionally with (Nesterov) momentum.

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
    """,
)

apply_adam = _wrapper(
    "adam",
    defaults={"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "weight_decay": 0.0,
              "tf_training_op_form": False},
    doc="""Adam / AMSGrad / AdamW (keras.optimizers.Adam, AdamW) in one pass.

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
    """,
)


def _float64_bits(x: float) -> int:
    """The bits of float(x) as a signed int64 (an exact float64 op attribute)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _schedule_decay_bits(arguments: dict[str, Any]) -> None:
    arguments["schedule_decay_bits"] = _float64_bits(arguments["schedule_decay"])


apply_nadam = _wrapper(
    "nadam",
    defaults={"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "weight_decay": 0.0,
              "schedule_decay": 1.0, "tf_training_op_form": False},
    prepare=_schedule_decay_bits,
    derived=("schedule_decay_bits",),
    doc="""Nadam as Keras computes it (keras.optimizers.Nadam).

    ``u_product`` is the running product of
    ``u_t = beta_1 * (1 - 0.5 * 0.96^(schedule_decay * t))`` over steps 1..step
    (Keras' ``_u_product`` after its update for this step). ``schedule_decay``
    is 1 in Keras 3; tf_keras' legacy Nadam uses its ``schedule_decay`` (0.004).
    ``tf_training_op_form=True``: tf_keras' legacy Nadam's own element order
    (``m = beta_1 * m + (1 - beta_1) * g``, ``g / (1 - u_product)`` first, ...;
    the op's doc), the bits of that class; no weight decay.
    """,
)

apply_adamax = _wrapper(
    "adamax",
    defaults={"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "weight_decay": 0.0,
              "tf_training_op_form": False},
    doc="""Adamax (keras.optimizers.Adamax)::

        m += (g - m) * (1 - beta_1);  u = max(beta_2 * u, |g|)
        var -= lr * m / ((1 - beta_1^step) * (u + epsilon))

    ``tf_training_op_form=True``: TensorFlow's ``ResourceApplyAdaMax`` order,
    ``var -= (lr / (1 - beta_1^step)) * (m / (u + epsilon))`` (tf_keras' legacy
    Adamax).
    """,
)

apply_rmsprop = _wrapper(
    "rmsprop",
    defaults={"rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "weight_decay": 0.0,
              "epsilon_outside_sqrt": False, "tf_training_op_form": False},
    doc="""RMSprop (keras.optimizers.RMSprop); momentum when ``momenta`` is given,
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
    """,
)

apply_adagrad = _wrapper(
    "adagrad",
    defaults={"epsilon": 1e-7, "weight_decay": 0.0, "epsilon_outside_sqrt": False},
    doc="""Adagrad (keras.optimizers.Adagrad)::

        acc += g^2;  var -= lr * g / sqrt(acc + epsilon)

    ``epsilon_outside_sqrt=True`` gives ``var -= lr * g / (sqrt(acc) + epsilon)``,
    tf_keras' legacy Adagrad.
    """,
)

apply_adadelta = _wrapper(
    "adadelta",
    defaults={"rho": 0.95, "epsilon": 1e-7, "weight_decay": 0.0, "tf_training_op_form": False},
    doc="""Adadelta (keras.optimizers.Adadelta)::

        ag = rho * ag + (1 - rho) * g^2
        delta = -sqrt(adv + eps) * g / sqrt(ag + eps)
        adv = rho * adv + (1 - rho) * delta^2;  var += lr * delta

    ``tf_training_op_form=True``: TensorFlow's ``ResourceApplyAdadelta``
    arithmetic (tf_keras' legacy Adadelta): ``u = sqrt(adv + eps) *
    rsqrt(ag + eps) * g`` with TF's CPU Rsqrt, ``var -= u * lr``, ``adv`` from
    ``u``.
    """,
)

apply_ftrl = _wrapper(
    "ftrl",
    defaults={"learning_rate_power": -0.5, "l1": 0.0, "l2": 0.0, "l2_shrinkage": 0.0,
              "beta": 0.0, "weight_decay": 0.0, "tf_pow": False, "tf_training_op_form": False},
    doc="""FTRL-proximal as Keras computes it (keras.optimizers.Ftrl); see the op doc.

    The accumulators' powers use ``sqrt`` for ``learning_rate_power=-0.5``
    and the C library's ``pow`` otherwise (one pass). ``tf_pow=True`` uses
    TensorFlow's own CPU Pow kernel instead (and Grappler's forms with
    ``grappler_form``), as Keras' ops do: keras.optimizers.Ftrl's bits for
    dense float32/float64 CPU variables, in four passes (Note [TF pow]).
    ``tf_pow=True, tf_training_op_form=True`` raises as TensorFlow's
    ``ResourceApplyFtrl(V2)`` does (Eigen's unary ``x.pow(p)``: repeated
    squaring for integer powers in [-3, 7]; ``sqrt`` for -0.5): tf_keras'
    legacy Ftrl's bits.
    """,
)

apply_lion = _wrapper(
    "lion",
    defaults={"beta_1": 0.9, "beta_2": 0.99, "weight_decay": 0.0},
    doc="""Lion (keras.optimizers.Lion)::

        var -= lr * sign(m * beta_1 + g * (1 - beta_1));  m = m * beta_2 + g * (1 - beta_2)
    """,
)

apply_schedule_free_adamw = _wrapper(
    "schedule_free_adamw",
    defaults={"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8, "warmup_steps": 0,
              "weight_decay": 0.0},
    doc="""Schedule-free AdamW (keras.optimizers.ScheduleFreeAdamW) in one pass.

    ``momentum`` holds the base iterate z (Keras initialises it to the
    variable), ``velocity`` Adam's second moment; ``step`` counts from 1.
    Per element, with ``lr_t = lr * min(step / warmup_steps, 1)`` (no warmup
    when ``warmup_steps`` is 0) and ``w = 1 / step``::

        var -= var * weight_decay * lr
        v += (g^2 - v) * (1 - beta_2)
        z -= lr_t * g / (sqrt(v / (1 - beta_2^step)) + epsilon)
        x = (var - (1 - beta_1) * z) / beta_1
        var = (1 - beta_1) * z + beta_1 * ((1 - w) * x + w * z)
    """,
)

apply_lamb = _wrapper(
    "lamb",
    defaults={"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "weight_decay": 0.0,
              "tf_norms": False},
    doc="""LAMB (keras.optimizers.Lamb), per-variable trust ratio, two passes::

        m, v as Adam;  u = (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
        var -= (|var| / |u| if both > 0 else 1) * lr * u

    The norms' sums of squares are fixed-order sums in double (the same bits
    on every thread count). ``tf_norms=True`` computes them as Keras' ops do,
    with TensorFlow's own CPU Pow (Square with ``grappler_form``) and Sum
    kernels on the op's thread pool, whose summation order depends on the
    pool's size (float32/float64 CPU variables; Note [TF norms]):
    keras.optimizers.Lamb's bits, at the cost of two more passes.
    """,
)

apply_muon_momentum = _wrapper(
    "muon_momentum",
    positional=("momenta", "gradients"),
    defaults={"momentum": 0.95},
    doc="""The momentum half of Muon (keras.optimizers.Muon), in place on the
    momentum buffers ``momenta``::

        m = m + (g + m * (momentum - 1))

    (also in Keras' graph: Grappler leaves it alone there). Muon's Newton-Schulz iterations then run on ``m``
    (or on Nesterov's ``g + momentum * m``) as TensorFlow matmuls, and
    :func:`apply_muon` applies their result. Takes no weight decay.
    """,
)


def muon_scale(shape: Sequence[int]) -> float:
    """Keras Muon's ``lr_adjust`` factor ``sqrt(max(shape[0], shape[1]))``,
    computed in float32 as Keras' ``ops.sqrt`` of an integer does."""
    if len(shape) < 2:
        raise ValueError(f"Muon's update needs a variable of rank >= 2, got shape {tuple(shape)}")
    return float(np.sqrt(np.float32(max(int(shape[0]), int(shape[1])))))


def _no_rms_adjustment(arguments: dict[str, Any]) -> None:
    if arguments["rms_rate"] is None:
        arguments["scale"], arguments["rms_rate"] = 1.0, 1.0


apply_muon = _wrapper(
    "muon",
    positional=("variables", "updates", "learning_rate"),
    defaults={"rms_rate": 0.2, "weight_decay": 0.0},
    annotations={"rms_rate": "TensorLike | None"},
    prepare=_no_rms_adjustment,
    doc="""The update half of Muon (keras.optimizers.Muon): ``updates`` are the
    orthogonalized momenta (the Newton-Schulz output). Per element::

        var -= var * weight_decay * lr
        var -= ((lr * u) * scale) * rms_rate

    ``scale`` is Keras' ``sqrt(max(rows, cols))`` (:func:`muon_scale`; one
    value per call, so group variables by it); ``rms_rate=None`` (Keras: no
    adjustment) applies ``var -= lr * u``. With ``grappler_form=True`` the
    update is ``var - u * ((lr * scale) * rms_rate)``, Keras' graph after
    Grappler.
    """,
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
