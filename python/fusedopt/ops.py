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

import functools
import inspect
import re
import struct
import textwrap
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import op_def_registry

from fusedopt import _atomic, _loader, reference

# (The rule functions apply_<rule> are added below, in fusedopt.reference.RULES' order.)
__all__ = ["muon_scale", "apply_adafactor", "stream_triad"]

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
      ``x / sqrt(y)`` as Grappler's ``x * rsqrt(y)`` (in the rules that divide
      by a square root; TF's approximate CPU Rsqrt).
    - ``grappler_constant_folding``: divisions by constants as multiplications
      by their reciprocals, as Grappler's constant folding rewrites them
      (where a rule divides by a constant). The fusedopt.keras optimizers set both while
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
    gradient, ``"lazy"`` updates only the rows present (TF Addons' lazy semantics).

    Low-precision state (the rules whose op takes ``absmax``; Note
    [low-precision state], ``fusedopt.state``): ``state_dtype="bfloat16"``
    takes bfloat16 slot variables (stored with stochastic rounding),
    ``"int8"`` uint8 slot variables plus ``absmax``, a dict from each given
    slot's name to its N float32 absmax variables of shape
    ``[fusedopt.state.num_blocks(shape)]``; ``stochastic_rounding=True``
    stores bfloat16 variables stochastically too. ``rounding_seed`` (an
    int64) seeds the rounding: fold the step into it. Float32 and bfloat16
    variables, Keras' forms only.

    Returns the op's ``skipped`` output: a scalar bool tensor, True when
    ``skip_nonfinite`` found a non-finite gradient and nothing was written.
"""  # noqa: A001


_STATE_FORMATS = {"float32": "same", "bfloat16": "bfloat16", "int8": "int8"}


@functools.lru_cache(maxsize=None)
def _op_has_state(op_name: str) -> bool:
    """Whether the op (its Python function name) takes low-precision state."""
    raw = "".join(p.capitalize() for p in op_name[len("fusedopt_"):].split("_"))
    for name in dir(_loader.load()):
        if name.startswith("Fusedopt_") and name[len("Fusedopt_"):].lower() == raw.lower():
            op_def = op_def_registry.get("Fusedopt>" + name[len("Fusedopt_"):])
            return op_def is not None and any(a.name == "absmax" for a in op_def.input_arg)
    return False


def _state_inputs(op_name: str, variables: Sequence[VariableLike],
                  slots: dict[str, Sequence[VariableLike] | None], state_dtype: str,
                  absmax: dict[str, Sequence[VariableLike]] | None,
                  rounding_seed: TensorLike, stochastic_rounding: bool) -> dict[str, Any]:
    """The op inputs and attributes of low-precision state (Note [low-precision
    state]; fusedopt.state): nothing for an op without it, else
    ``state_format``, ``stochastic_rounding``, ``rounding_seed`` and the
    ``absmax`` list (int8: slot list by slot list, in the op's slot order)."""
    if state_dtype not in _STATE_FORMATS:
        raise _invalid(f"state_dtype must be one of {sorted(_STATE_FORMATS)}, got "
                       f"{state_dtype!r}")
    low = state_dtype != "float32" or stochastic_rounding
    if not _op_has_state(op_name):
        if low:
            what = (f"state_dtype={state_dtype!r}" if state_dtype != "float32"
                    else "stochastic_rounding")
            raise _invalid(f"{what} is not available for {op_name[len('fusedopt_apply_'):]} "
                           "(see fusedopt.state for the rules that take it)")
        return {}
    given = [k for k, v in slots.items() if v]
    lists: list[Any] = []
    if state_dtype == "int8":
        absmax = absmax or {}
        missing = [k for k in given if k not in absmax]
        extra = [k for k in absmax if k not in given]
        if missing or extra:
            raise _invalid(
                "int8 state takes one absmax list per slot list given "
                f"({given}): missing {missing}, unexpected {extra} (make them with "
                "fusedopt.state.num_blocks)")
        for k in given:
            _check_lengths(len(variables), **{f"absmax[{k!r}]": absmax[k]})
            lists.extend(_handles(absmax[k], f"absmax[{k!r}]"))
    elif absmax:
        raise _invalid(f"absmax is for state_dtype='int8', got state_dtype={state_dtype!r}")
    if isinstance(rounding_seed, (tf.Tensor, tf.Variable)):
        seed = tf.cast(rounding_seed, tf.int64)
    else:  # any Python int, as its 64 bits
        bits = int(rounding_seed) % (1 << 64)
        seed = _atomic.constant(bits - (1 << 64) if bits >= 1 << 63 else bits, tf.int64)
    return {"state_format": _STATE_FORMATS[state_dtype],
            "stochastic_rounding": bool(stochastic_rounding),
            "absmax": lists, "rounding_seed": seed}


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
    state_dtype: str = "float32",
    absmax: dict[str, Sequence[VariableLike]] | None = None,
    rounding_seed: TensorLike = 0,
    stochastic_rounding: bool = False,
    **attrs: Any,
) -> tf.Tensor:
    """Validates list lengths, converts inputs and calls one fused op (its
    sparse twin when the gradients are tf.IndexedSlices)."""
    if len(variables) == 0:
        raise _invalid(f"{op_name} needs at least one variable")
    state_inputs = _state_inputs(op_name, variables, slots, state_dtype, absmax, rounding_seed,
                                 stochastic_rounding)
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
    kwargs.update(state_inputs)
    kwargs.update(attrs)
    return getattr(_loader.load(), op_name)(name=name, **kwargs)


# ---- The rules' functions, made from the registry ----------------------------
#
# Note [wrappers from the registry]: a rule's op definition (REGISTER_OP, which
# the rule registry generates) says what its function takes: its slot lists
# (and which are optional: a count attribute of their own instead of N), its
# hyperparameter scalars in order, whether it takes a step, and its own
# attributes with their defaults; its op doc (the rule's formula and its
# attributes' docs) becomes the function's docstring. What the registry cannot
# say comes from the rule's float64 reference (fusedopt.reference.RULES, the
# Python side's list of the rules): the keyword defaults of its scalars,
# Keras' defaults, in the reference's order. Conventions fill the rest: the
# positional parameters (variables, gradients, learning_rate), the public
# keyword names that differ from the op's (_PUBLIC_NAMES), and an attribute
# `x_bits` (int) that carries the float attribute `x` exactly (its float64
# bits: a float attribute holds only a float32). _ARGUMENTS lists the
# functions whose arguments do not follow them. _wrapper makes a real function
# of that signature, so that inspect.signature, help() and Python's own
# argument errors are a written function's; every keyword parameter must be
# an op input or attribute, and every op input and attribute a parameter (or
# derived), else the import fails, as it does when the op library and
# fusedopt.reference disagree on the rules. The call passes the slots and the
# scalars in the op's input order (the order their constants and casts are
# built). The op definitions, not fusedopt._native.rules() (the same
# registry), are read because they are the library this module calls: present
# in every build, also the one FUSEDOPT_LIBRARY names
# (tests/test_ops_registry.py checks the two agree).

_PUBLIC_NAMES = {"lr": "learning_rate"}  # op input -> public keyword, where they differ
_COMMON_ATTRS = frozenset({"N", "T", "Tscalar", "Tindices", "mode", "skip_nonfinite",
                           "state_format", "stochastic_rounding",
                           "grappler_form", "grappler_constant_folding"})
_OPTION_INPUTS = frozenset({"grad_scale", "clip_value", "clip_norm", "global_clip_norm",
                            "absmax", "rounding_seed"})
_ATTR_TYPES: dict[str, Callable[[Any], Any]] = {"bool": bool, "float": float, "int": int}
_BITS = "_bits"  # an int attribute `x_bits`: the float64 bits of the float attribute `x`


class _OpInputs(NamedTuple):
    """What a rule's dense op takes besides variables, gradients and gradient
    options (its sparse twin takes the same), read from its op definition."""

    op: str  # the op library's Python function
    slots: tuple[tuple[str, bool], ...]  # (name, optional), in input order
    scalars: tuple[str, ...]  # hyperparameter inputs, in input order
    step: bool
    attrs: dict[str, str]  # the rule's own attributes: name -> type ("bool", "float", ...)
    attr_defaults: dict[str, Any]  # the rule's own attributes' defaults (those that have one)


def _rule_key(name: str) -> str:
    """A rule's name as the op library spells it, case and underscores aside
    (the registry's "a_bc" is the op Fusedopt>ApplyABc, its Python function
    fusedopt_apply_a_bc)."""
    return name.replace("_", "").lower()


def _op_inputs(rule: str) -> _OpInputs:
    """Reads rule ``rule``'s op (``Fusedopt>Apply...``, matched by the rule's
    name without underscores, case-insensitively) from the loaded library."""
    library = _loader.load()
    key, prefix = "apply" + _rule_key(rule), len("fusedopt_")
    # The library's functions: Fusedopt_ApplyABc (the op "Fusedopt>ApplyABc") and
    # fusedopt_apply_a_bc.
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
    own = [a for a in op_def.attr if a.name not in _COMMON_ATTRS | counts]
    defaults = {a.name: getattr(a.default_value, a.default_value.WhichOneof("value"))
                for a in own if a.HasField("default_value")}
    return _OpInputs(python[0], tuple(slots), tuple(scalars), step,
                     {a.name: a.type for a in own}, defaults)


def _library_rules() -> set[str]:
    """The rules of the op library, as _rule_key spells them: each dense op
    ``Fusedopt>Apply<Op>`` that has a sparse twin ``Fusedopt>SparseApply<Op>``."""
    names = {n[len("Fusedopt_"):] for n in dir(_loader.load()) if n.startswith("Fusedopt_")}
    return {_rule_key(n[len("Apply"):]) for n in names
            if n.startswith("Apply") and "Sparse" + n in names}


class _Arguments(NamedTuple):
    """A rule function's arguments where the conventions do not give them."""

    positional: tuple[str, ...]  # the op's vars, grads, then public scalar names
    # A keyword that may be None, and the arguments None stands for.
    none_means: dict[str, dict[str, Any]] = {}
    docs: dict[str, str] = {}  # arguments' docs, where the generic one says too little


_CONVENTIONAL = _Arguments(("variables", "gradients", "learning_rate"))

# Keras' Muon (fusedopt/keras/_family.py) makes two op calls around its
# Newton-Schulz iterations: the first updates the momentum buffers in place,
# the second takes the orthogonalized updates in the place of gradients, and
# Keras' rms_rate=None (no adjustment) means scale = rms_rate = 1.
_ARGUMENTS = {
    "muon_momentum": _Arguments(("momenta", "gradients")),
    "muon": _Arguments(
        ("variables", "updates", "learning_rate"),
        none_means={"rms_rate": {"scale": 1.0, "rms_rate": 1.0}},
        docs={"scale": "Keras' ``sqrt(max(rows, cols))`` (:func:`muon_scale`); one value "
                       "per call, so group variables by it.",
              "rms_rate": "Keras' rms_rate."}),
}


class _Rule(NamedTuple):
    """A rule's function: its op's inputs and its arguments."""

    inputs: _OpInputs
    arguments: _Arguments


def _float64_bits(x: float) -> int:
    """The bits of float(x) as a signed int64 (an exact float64 op attribute)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _call(rule: _Rule, arguments: dict[str, Any]) -> tf.Tensor:
    spec, positional = rule.inputs, rule.arguments.positional
    for keyword, means in rule.arguments.none_means.items():
        if arguments[keyword] is None:
            arguments.update(means)
    for attr in spec.attrs:
        if attr.endswith(_BITS) and attr[:-len(_BITS)] in spec.attrs:
            arguments[attr] = _float64_bits(arguments[attr[:-len(_BITS)]])
    options = arguments.pop("options")
    return _apply(
        spec.op, arguments[positional[0]], arguments[positional[1]],
        {s: arguments[s] for s, _ in spec.slots},
        {s: arguments[_PUBLIC_NAMES.get(s, s)] for s in spec.scalars},
        step=arguments["step"] if spec.step else None, name=arguments["name"], **options,
        **{a: _ATTR_TYPES.get(t, lambda x: x)(arguments[a]) for a, t in spec.attrs.items()},
    )


def _op_doc(function: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """A rule op's own documentation, from the op library's docstring (TF
    renders the op's doc): its description (the formula; the family's shared
    text after it is this module's doc) and each attribute's doc."""
    doc = inspect.getdoc(function) or ""
    head, _, rest = doc.partition("\nArgs:\n")
    head = head.split("\nGradient options")[0].strip()
    # TF sets the doc's first line apart as a summary, also mid-sentence.
    first, _, more = head.partition("\n\n")
    if more and not first.endswith("."):
        head = f"{first}\n{more}"
    attr_docs: dict[str, list[str]] = {}
    current = None
    for line in rest.partition("\nReturns:")[0].splitlines():
        match = re.match(r"  (\w+): ", line)
        if match:
            current = match.group(1)
            attr_docs[current] = []
        elif current is not None:
            if line.strip().startswith("Gradient options"):
                current = None  # the family's shared text
            else:
                attr_docs[current].append(line)
    return head, {k: textwrap.dedent("\n".join(v)).strip() for k, v in attr_docs.items()}


_ARG_DOCS = {
    "step": "the step, counting from 1 (Keras' ``iterations + 1``).",
    "weight_decay": "Keras' decoupled weight decay, applied first; 0 disables it.",
}


def _doc(rule: str, spec: _OpInputs, arguments: _Arguments, keywords: list[str],
         defaults: dict[str, Any]) -> str:
    """The docstring of ``apply_<rule>``: its op's doc, then its arguments."""
    library = _loader.load()
    head, attr_docs = _op_doc(getattr(library, spec.op))
    op = next(n[len("Fusedopt_"):] for n in dir(library) if n.startswith("Fusedopt_Apply")
              and _rule_key(n[len("Fusedopt_Apply"):]) == _rule_key(rule))
    slots = dict(spec.slots)
    public = {_PUBLIC_NAMES.get(s, s): s for s in spec.scalars}

    def describe(keyword: str) -> str:
        if keyword in slots:
            text = ("None, or N slot variables (given, they select a variant)"
                    if slots[keyword] else "N slot variables")
            text += ", each of its variable's shape and dtype."
        elif keyword in arguments.docs:
            text = arguments.docs[keyword]
        elif keyword in _ARG_DOCS:
            text = _ARG_DOCS[keyword]
        elif keyword in spec.attrs:
            text = f"{spec.attrs[keyword]}, an attribute of the op."
        else:
            op_name = public.get(keyword, keyword)
            text = "scalar hyperparameter" + (
                f" (the op's ``{op_name}``)." if op_name != keyword else ".")
        if keyword in arguments.none_means:
            means = ", ".join(f"{k} = {v!r}" for k, v in arguments.none_means[keyword].items())
            text += f" None: {means}."
        if keyword in defaults:
            text += f" Default: {defaults[keyword]!r}."
        return text

    entries = [
        (arguments.positional[0], "the N variables the op updates (its ``vars``)."),
        (arguments.positional[1], "N tensors, each of its variable's shape and dtype (the op's "
                                  "``grads``); tf.IndexedSlices run the sparse op."),
        *[(k, describe(k)) for k in [*arguments.positional[2:], *keywords]],
        ("name", "optional op name."),
        ("**options", "the gradient options (``grad_scale``, clipping, ``skip_nonfinite``, "
                      "``sparse_mode``, Grappler's forms; see the module doc)."),
    ]
    args = []
    for keyword, text in entries:
        args.append(textwrap.fill(f"{keyword}: {text}", 88, initial_indent="    ",
                                  subsequent_indent="        "))
        if attr_docs.get(keyword):  # the op's own doc of the attribute, as written
            args.append(textwrap.indent(attr_docs[keyword], "        "))
    call = textwrap.fill(f"One call of ``Fusedopt>{op}`` (``Fusedopt>Sparse{op}`` for "
                         f"tf.IndexedSlices gradients) updates the N variables.", 88)
    return (f"{head}\n\n{call}\n\nArgs:\n" + "\n".join(args) + "\n\nReturns:\n"
            "    The op's ``skipped`` output: a scalar bool tensor, True when "
            "``skip_nonfinite``\n    found a non-finite gradient and nothing was written.\n")


def _wrapper(rule: str) -> Callable[..., tf.Tensor]:
    """The function ``apply_<rule>`` (Note [wrappers from the registry]).

    Its keyword-only parameters: the required slots, ``step``, the scalars
    without a default, the optional slots (None by default), then the
    defaults in order (the reference's, then the op's other attributes');
    then ``name`` and ``**options``.
    """
    spec = _op_inputs(rule)
    arguments = _ARGUMENTS.get(rule, _CONVENTIONAL)
    positional = arguments.positional
    name = "apply_" + rule
    optional = {s for s, opt in spec.slots if opt}
    public_scalars = [_PUBLIC_NAMES.get(s, s) for s in spec.scalars]
    derived = {a for a in spec.attrs if a.endswith(_BITS) and a[:-len(_BITS)] in spec.attrs}
    settable = set(public_scalars) | set(spec.attrs)
    defaults = {k: v for k, v in reference.rule_defaults(rule).items() if k in settable}
    defaults.update({a: _ATTR_TYPES.get(spec.attrs[a], lambda x: x)(v)
                     for a, v in spec.attr_defaults.items()
                     if a not in defaults and a not in derived})
    keywords = [s for s, opt in spec.slots if not opt] + (["step"] if spec.step else [])
    keywords += [s for s in public_scalars if s not in defaults and s not in positional]
    keywords += [s for s, opt in spec.slots if opt] + list(defaults)
    takes = (set(public_scalars) | {s for s, _ in spec.slots} | set(spec.attrs)
             | ({"step"} if spec.step else set()))
    given = set(positional[2:]) | set(keywords) | derived
    if given != takes or len(keywords) != len(set(keywords)):
        raise ImportError(
            f"fusedopt.ops.{name} and the op {spec.op} disagree: the op takes "
            f"{sorted(takes)}, the function {sorted(given)}. {_loader.REBUILD_HINT}")
    slot_names = {s for s, _ in spec.slots}

    def annotation(keyword: str) -> str:  # (attributes: their op type, "bool" or "float")
        if keyword in slot_names:
            return ("Sequence[VariableLike] | None" if keyword in optional
                    else "Sequence[VariableLike]")
        if keyword in arguments.none_means:
            return "TensorLike | None"
        return spec.attrs.get(keyword, "TensorLike")

    annotations = {
        positional[0]: "Sequence[VariableLike]", positional[1]: "Sequence[TensorLike]",
        **{p: "TensorLike" for p in positional[2:]}, **{k: annotation(k) for k in keywords},
        "name": "str | None", "options": "Any", "return": "tf.Tensor",
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
    function = namespace["_make"](_call, _Rule(spec, arguments), defaults)
    function.__qualname__ = name
    function.__doc__ = _doc(rule, spec, arguments, keywords, defaults)
    function.__annotations__ = annotations
    return function


def _rule_functions() -> dict[str, Callable[..., tf.Tensor]]:
    """``apply_<rule>`` for every rule of fusedopt.reference.RULES, which must
    be the op library's rules."""
    ours, library = {_rule_key(r): r for r in reference.RULES}, _library_rules()
    if set(ours) != library:
        raise ImportError(
            f"fusedopt's op library {_loader.library_path()} and fusedopt.reference.RULES "
            f"disagree on the rules: the library's {sorted(library - set(ours))} have no "
            f"reference, the references {sorted(ours[k] for k in set(ours) - library)} no op. "
            f"{_loader.REBUILD_HINT}")
    return {f"apply_{rule}": _wrapper(rule) for rule in reference.RULES}


_RULE_FUNCTIONS = _rule_functions()
globals().update(_RULE_FUNCTIONS)
__all__[:0] = list(_RULE_FUNCTIONS)


def muon_scale(shape: Sequence[int]) -> float:
    """Keras Muon's ``lr_adjust`` factor ``sqrt(max(shape[0], shape[1]))``,
    computed in float32 as Keras' ``ops.sqrt`` of an integer does."""
    if len(shape) < 2:
        raise ValueError(f"Muon's update needs a variable of rank >= 2, got shape {tuple(shape)}")
    return float(np.sqrt(np.float32(max(int(shape[0]), int(shape[1])))))


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
