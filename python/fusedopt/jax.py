"""fusedopt's fused optimizer kernels in JAX (experimental).

One XLA custom call applies an optimizer step to many arrays at once, in place
when the caller donates them::

    import jax, fusedopt.jax

    @jax.jit(donate_argnums=(0, 2))  # params and slots
    def update(params, grads, slots, lr, t):
        # rule: a name from fusedopt.jax.rules(), with its slots and scalars
        return fusedopt.jax.apply(rule, params, grads, slots, learning_rate=lr, step=t,
                                  **hyperparameters)

The call runs the same typed-FFI handler (XLA's "Host" platform) that
TensorFlow's XLA runs for the fusedopt ops under ``jit_compile=True``, so it
gives the TensorFlow ops' bits (docs/jax.md). Neither this module nor
``fusedopt._native``, which holds the handler, needs TensorFlow.

CPU only for now: a computation lowered for a GPU raises NotImplementedError
until the CUDA handler exists. No vmap and no differentiation rule (an
optimizer step is neither batched nor differentiated).
"""

from __future__ import annotations

import copy
import functools
import math
import string
import struct
import textwrap
import threading
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import mlir

from fusedopt import _native

__all__ = ["apply", "rules", "ffi_info"]

PyTree = Any
ArrayLike = Any  # jax.Array, a tracer, a NumPy array or a Python number

_DTYPES = ("float16", "bfloat16", "float32", "float64")

# Rule-specific options (the handler plans through the same code as the TF
# ops, which never set another rule's option): apply's keywords, each taken by
# the rules whose _native.rules() entry lists it in "options" (the registry's
# attributes, as fusedopt._native.apply takes them; _option_rules).
_OPTIONS = ("nesterov", "epsilon_outside_sqrt", "tf_training_op_form", "schedule_decay")

# Adafactor has its own handler ("fusedopt_adafactor") and is not in
# _native.rules(); its defaults are keras.optimizers.Adafactor's (and
# _native.adafactor_apply's).
_ADAFACTOR_SCALARS = ("lr", "beta_2_decay", "epsilon_1", "epsilon_2", "clip_threshold",
                      "weight_decay")
_ADAFACTOR_DEFAULTS = {"beta_2_decay": -0.8, "epsilon_1": 1e-30, "epsilon_2": 1e-3,
                       "clip_threshold": 1.0, "weight_decay": 0.0}


def rules() -> dict[str, dict[str, Any]]:
    """The rules :func:`apply` takes: ``{name: {"scalars": [...], "slots":
    [(name, optional)], "step": bool, "options": [...], "index": int}}``,
    ``_native.rules()`` (its dense calls' options) plus ``"adafactor"``
    (slots r, c, v; no options); ``index`` is the handler's rule attribute
    (-1: Adafactor's own handler)."""
    return copy.deepcopy(_rules())


@functools.lru_cache(maxsize=None)
def _rules() -> dict[str, dict[str, Any]]:
    out = {}
    for index, (name, info) in enumerate(_native.rules().items()):
        out[name] = {"scalars": list(info["scalars"]), "slots": list(info["slots"]),
                     "step": info["step"], "options": list(info["options"]), "index": index}
    out["adafactor"] = {"scalars": list(_ADAFACTOR_SCALARS),
                        "slots": [("r", False), ("c", False), ("v", False)],
                        "step": True, "options": [], "index": -1}
    return out


@functools.lru_cache(maxsize=None)
def _option_rules() -> dict[str, tuple[str, ...]]:
    """Each rule-specific option -> the rules that take it, sorted."""
    return {option: tuple(sorted(r for r, info in _rules().items() if option in info["options"]))
            for option in _OPTIONS}


def ffi_info() -> dict[str, Any]:
    """What ``fusedopt._native``'s handlers are: ``{"built", "headers",
    "api_version", "missing"}`` (build_info()['xla_ffi'])."""
    return dict(_native.build_info()["xla_ffi"])


_registered = False
_register_lock = threading.Lock()


def _register() -> None:
    """Registers _native's handlers with JAX for the CPU, once per process."""
    global _registered
    if _registered:
        return
    with _register_lock:
        if _registered:
            return
        try:
            targets = _native.ffi_targets()
        except RuntimeError as e:
            raise RuntimeError(f"fusedopt.jax cannot run: {e}") from None
        for name, capsule in targets.items():
            jax.ffi.register_ffi_target(name, capsule, platform="cpu")
        _registered = True


# --- the primitive ------------------------------------------------------------------------
#
# Note [a primitive of our own]: jax.ffi.ffi_call would lower the call for any
# platform, and a GPU computation would fail in XLA's compiler with "no
# registered implementation" for a target name. A primitive with a CPU lowering
# (the typed-FFI custom call, each written operand aliased with its result) and
# a default lowering that raises says what is missing when the computation is
# lowered. Its parameters: `target`, `n_written` (the leading operands that are
# updated, results 0..n_written-1; result n_written is `skipped`), and `attrs`,
# the handler's FFI attributes as (name, NumPy scalar) pairs.

try:
    from jax.core import ShapedArray
except ImportError:  # pragma: no cover - a JAX that moved it
    from jax._src.core import ShapedArray

_apply_p = Primitive("fusedopt_apply")
_apply_p.multiple_results = True


def _abstract_eval(*avals: Any, target: str, n_written: int, attrs: tuple) -> list:
    del target, attrs
    outs = [ShapedArray(a.shape, a.dtype) for a in avals[:n_written]]
    return outs + [ShapedArray((), np.dtype(np.bool_))]


@functools.lru_cache(maxsize=None)
def _jitted(target: str, n_written: int, attrs: tuple):
    return jax.jit(functools.partial(_apply_p.bind, target=target, n_written=n_written,
                                     attrs=attrs))


def _impl(*args: Any, target: str, n_written: int, attrs: tuple) -> list:
    # Outside jit: compiled once per (target, attributes) and shapes; the
    # operands are not donated, so XLA copies them into the results.
    return _jitted(target, n_written, attrs)(*args)


def _cpu_lowering(ctx, *operands, target: str, n_written: int, attrs: tuple):
    lower = jax.ffi.ffi_lowering(target, operand_output_aliases={j: j for j in range(n_written)})
    return lower(ctx, *operands, **dict(attrs))


def _other_lowering(ctx, *operands, target: str, n_written: int, attrs: tuple):
    del operands, n_written, attrs
    platforms = ", ".join(getattr(ctx.module_context, "platforms", ()) or ["?"])
    raise NotImplementedError(
        f"fusedopt.jax runs on the CPU only for now (XLA custom call {target!r} has a 'Host' "
        f"handler, and the CUDA handler does not exist yet), but this computation is lowered "
        f"for {platforms}. Put the arrays on a CPU device, e.g. "
        f"jax.device_put(x, jax.devices('cpu')[0]), or run with JAX_PLATFORMS=cpu.")


_apply_p.def_abstract_eval(_abstract_eval)
_apply_p.def_impl(_impl)
mlir.register_lowering(_apply_p, _other_lowering)
mlir.register_lowering(_apply_p, _cpu_lowering, platform="cpu")


# --- operands ---------------------------------------------------------------------------


_Tracer = getattr(jax.core, "Tracer", ())


def _x64() -> bool:
    return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


def _is_python_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _scalar_operand(x: ArrayLike, name: str) -> jax.Array:
    """A hyperparameter as an operand (Note [scalar operands] in
    cc/xla/ffi_handler.cc): a number known while tracing keeps its double (a
    float64 constant, or without jax_enable_x64 its bits as two uint32 words);
    a traced or array value goes as float64 (x64) or float32."""
    if isinstance(x, bool):
        raise TypeError(f"{name} must be a number or a scalar array, got a bool")
    if _is_python_number(x) or (isinstance(x, np.ndarray) and x.ndim == 0):
        value = float(x)
        if _x64():
            return jnp.asarray(np.float64(value))
        bits = struct.unpack("<Q", struct.pack("<d", value))[0]
        return jnp.asarray(np.array([bits & 0xFFFFFFFF, bits >> 32], np.uint32))
    try:
        a = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"{name} must be a number or a scalar array, got "
                        f"{type(x).__name__}") from e
    if a.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(a.shape)}")
    if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real number, got dtype {a.dtype}")
    return a.astype(jnp.float64 if _x64() else jnp.float32)


def _step_operand(step: ArrayLike | None) -> jax.Array:
    """The step: int64 with jax_enable_x64, else int32 (the handler takes both)."""
    dtype = np.int64 if _x64() else np.int32
    if step is None:
        return jnp.asarray(np.zeros((), dtype))
    if _is_python_number(step) or (isinstance(step, np.ndarray) and step.ndim == 0):
        value = int(step)
        if value != step:
            raise ValueError(f"step must be an integer, got {step!r}")
        info = np.iinfo(dtype)
        if not info.min <= value <= info.max:
            raise ValueError(f"step {value} does not fit {np.dtype(dtype).name} (enable "
                             f"jax_enable_x64 for int64 steps)")
        return jnp.asarray(np.asarray(value, dtype))
    a = jnp.asarray(step)
    if a.ndim != 0 or not jnp.issubdtype(a.dtype, jnp.integer):
        raise TypeError(f"step must be an integer scalar, got dtype {a.dtype} and shape "
                        f"{tuple(a.shape)}")
    return a.astype(dtype)


def _clip_operand(value: ArrayLike | None, name: str) -> jax.Array:
    if value is None:
        return _scalar_operand(math.inf, name)
    if _is_python_number(value) and not value > 0:
        raise ValueError(f"{name} must be > 0 (or None to disable it), got {value}")
    return _scalar_operand(value, name)


def _array(x: Any, what: str) -> Any:
    """A leaf as an array: jax arrays and tracers as they are, NumPy arrays
    converted; checks the dtype and, for a concrete array, the device."""
    if isinstance(x, np.ndarray):
        x = jnp.asarray(x)
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{what} is a {type(x).__name__}, not an array")
    if str(x.dtype) not in _DTYPES:
        raise TypeError(f"{what} has dtype {x.dtype}; use float16, bfloat16, float32 or float64")
    if not isinstance(x, _Tracer) and hasattr(x, "devices"):
        platforms = {d.platform for d in x.devices()}
        if platforms != {"cpu"}:
            raise NotImplementedError(
                f"{what} lives on {', '.join(sorted(platforms))}; fusedopt.jax runs on the CPU "
                f"only for now (the CUDA handler does not exist yet): "
                f"jax.device_put(x, jax.devices('cpu')[0])")
    return x


def _leaves_like(tree: PyTree, treedef: Any, what: str) -> list:
    leaves, other = jax.tree_util.tree_flatten(tree)
    if other != treedef:
        raise ValueError(f"{what} has structure {other}, but params has {treedef}")
    return leaves


# --- apply ------------------------------------------------------------------------------


def apply(
    rule: str,
    params: PyTree,
    grads: PyTree,
    slots: Mapping[str, PyTree] | None = None,
    *,
    step: ArrayLike | None = None,
    grad_scale: ArrayLike = 1.0,
    clipvalue: ArrayLike | None = None,
    clipnorm: ArrayLike | None = None,
    global_clipnorm: ArrayLike | None = None,
    skip_nonfinite: bool = False,
    nesterov: bool = False,
    epsilon_outside_sqrt: bool = False,
    tf_training_op_form: bool = False,
    schedule_decay: float = 1.0,
    return_skipped: bool = False,
    **hyperparameters: ArrayLike,
) -> tuple[PyTree, dict[str, PyTree]] | tuple[PyTree, dict[str, PyTree], jax.Array]:
    """Applies one optimizer step to every array of ``params``: one fused XLA
    custom call per dtype.

    Args:
        rule: a name from :func:`rules`:
            $rules.
            A variant of a rule is an optional slot (given, it selects the
            variant) or a hyperparameter (``weight_decay`` 0: no decay).
        params: a pytree of arrays (float16, bfloat16, float32 or float64,
            on the CPU).
        grads: a pytree of the same structure, each gradient of its
            parameter's shape and dtype.
        slots: ``{slot name: pytree like params}`` with the rule's slots.
            The optional slots, which select variants:
            $optional_slots.
            Adafactor's "r" and "c" hold, for a parameter of rank >= 2 and
            shape [..., R, C], arrays of shape [..., R] and [..., C]; for
            lower ranks any array (left as it is).
        step: the 1-based step of the bias-corrected rules,
            $stepped:
            an int or a traced integer scalar (int64 with jax_enable_x64,
            else int32).
        grad_scale, clipvalue, clipnorm, global_clipnorm, skip_nonfinite: the
            gradient options of fusedopt.ops (unscale, at most one clipping,
            and skipping a step with a non-finite gradient; not Adafactor).
        nesterov: Nesterov momentum ($nesterov).
        epsilon_outside_sqrt: epsilon outside the square root, tf_keras'
            legacy form ($epsilon_outside_sqrt).
        tf_training_op_form: TF's training-op element order
            ($tf_training_op_form).
        schedule_decay: the decay d of u_t's schedule (tf_keras' legacy
            0.004; 1 in Keras 3) ($schedule_decay).
        return_skipped: also return ``skipped``, a bool scalar, True when
            ``skip_nonfinite`` found a non-finite gradient and nothing changed.
        **hyperparameters: the rule's scalars by name (``learning_rate`` is an
            alias of ``lr``); Python numbers or traced scalars, passed to the
            custom call as operands, so changing them never recompiles.
            ``weight_decay`` defaults to 0 (Adafactor: Keras' defaults too).
            ``u_product`` ($u_product) is the running product of Keras'
            ``u_t = beta_1 * (1 - 0.5 * 0.96^(schedule_decay * t))`` over 1..step.

    Returns:
        ``(params, slots)``: new pytrees of params' structure (slots: the
        given names), plus ``skipped`` with ``return_skipped``. Under
        ``jax.jit`` with params and slots donated, the results are the donated
        buffers, updated in place (the custom call aliases each with its
        result); without donation XLA first copies them.

    Raises:
        ValueError, TypeError: an unknown rule, hyperparameter, slot or option,
            a missing one, or arrays of mismatched structure, shape or dtype.
        NotImplementedError: arrays on, or a computation lowered for, a
            platform other than the CPU.
        RuntimeError: fusedopt._native was built without the XLA FFI handlers.
    """
    table = _rules()
    if not isinstance(rule, str) or rule not in table:
        raise ValueError(f"unknown rule {rule!r}; the rules are {', '.join(table)}")
    info = table[rule]
    options = {"nesterov": nesterov, "epsilon_outside_sqrt": epsilon_outside_sqrt,
               "tf_training_op_form": tf_training_op_form,
               "schedule_decay": not schedule_decay == 1.0}
    option_rules = _option_rules()
    for option, value in options.items():
        if value and rule not in option_rules[option]:
            raise ValueError(f"{option} applies to {', '.join(option_rules[option])} only, "
                             f"not {rule}")
    if nesterov and not (slots and "momenta" in slots):
        raise ValueError("nesterov=True needs the 'momenta' slot")

    # Hyperparameters, in the rule's order.
    hp = dict(hyperparameters)
    if "learning_rate" in hp:
        if "lr" in hp:
            raise ValueError("pass learning_rate or lr, not both")
        hp["lr"] = hp.pop("learning_rate")
    names = list(info["scalars"])
    unknown = sorted(set(hp) - set(names))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)} for {rule}; its "
                         f"hyperparameters are {', '.join(names)} (learning_rate for lr)")
    defaults = _ADAFACTOR_DEFAULTS if rule == "adafactor" else {"weight_decay": 0.0}
    missing = [k for k in names if k not in hp and k not in defaults]
    if missing:
        raise ValueError(f"{rule} needs the hyperparameter(s) {', '.join(missing)}")
    scalars = [_scalar_operand(hp.get(k, defaults.get(k)), k) for k in names]
    if info["step"] and step is None:
        raise ValueError(f"{rule} needs step= (the 1-based step)")
    if not info["step"] and step is not None:
        raise ValueError(f"{rule} takes no step")

    # Slots.
    slots = dict(slots or {})
    slot_names = [name for name, _ in info["slots"]]
    unknown = sorted(set(slots) - set(slot_names))
    if unknown:
        raise ValueError(f"unknown slot(s) {', '.join(unknown)} for {rule}; its slots are "
                         f"{', '.join(slot_names) or 'none'}")
    missing = [name for name, optional in info["slots"] if not optional and name not in slots]
    if missing:
        raise ValueError(f"{rule} needs the slot(s) {', '.join(missing)}")

    leaves, treedef = jax.tree_util.tree_flatten(params)
    leaves = [_array(x, f"params[{i}]") for i, x in enumerate(leaves)]
    grad_leaves = [_array(g, f"grads[{i}]")
                   for i, g in enumerate(_leaves_like(grads, treedef, "grads"))]
    given = [name for name in slot_names if name in slots]
    slot_leaves = {name: [_array(s, f"slots[{name!r}][{i}]") for i, s in
                          enumerate(_leaves_like(slots[name], treedef, f"slots[{name!r}]"))]
                   for name in given}
    for i, (p, g) in enumerate(zip(leaves, grad_leaves)):
        if g.dtype != p.dtype or tuple(g.shape) != tuple(p.shape):
            raise ValueError(f"grads[{i}] is {g.dtype}{list(g.shape)} but params[{i}] is "
                             f"{p.dtype}{list(p.shape)}")
        for name in given:
            s = slot_leaves[name][i]
            want = tuple(p.shape)
            if rule == "adafactor" and name in ("r", "c"):
                if len(p.shape) < 2:
                    continue  # unused, passed through
                want = p.shape[:-1] if name == "r" else p.shape[:-2] + p.shape[-1:]
            if s.dtype != p.dtype or tuple(s.shape) != tuple(want):
                raise ValueError(f"slots[{name!r}][{i}] is {s.dtype}{list(s.shape)} but needs "
                                 f"{p.dtype}{list(want)}")

    if rule != "adafactor":
        given_clips = [n for n, v in [("clipvalue", clipvalue), ("clipnorm", clipnorm),
                                      ("global_clipnorm", global_clipnorm)] if v is not None]
        if len(given_clips) > 1:
            raise ValueError(f"at most one of clipvalue, clipnorm and global_clipnorm; got "
                             f"{given_clips}")
        grad_options = [_scalar_operand(grad_scale, "grad_scale"),
                        _clip_operand(clipvalue, "clipvalue"),
                        _clip_operand(clipnorm, "clipnorm"),
                        _clip_operand(global_clipnorm, "global_clipnorm")]
    elif (not (_is_python_number(grad_scale) and grad_scale == 1.0) or skip_nonfinite
          or any(v is not None for v in (clipvalue, clipnorm, global_clipnorm))):
        raise ValueError("adafactor takes no gradient options (grad_scale, clipping, "
                         "skip_nonfinite)")

    step_operand = _step_operand(step if info["step"] else None)
    if leaves:
        _register()
    new_leaves = list(leaves)
    new_slots = {name: list(xs) for name, xs in slot_leaves.items()}
    skipped = jnp.zeros((), jnp.bool_)
    # One call per dtype, in order of first appearance.
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(leaves):
        groups.setdefault(str(p.dtype), []).append(i)
    for idx in groups.values():
        if rule == "adafactor":
            group_skipped = _adafactor_call(idx, leaves, grad_leaves, slot_leaves, new_leaves,
                                            new_slots, scalars, step_operand)
        else:
            group_skipped = _fused_call(
                info, idx, leaves, grad_leaves, given, slot_leaves, new_leaves, new_slots,
                scalars, step_operand, grad_options,
                attrs=(("nesterov", np.int32(bool(nesterov))),
                       ("epsilon_outside_sqrt", np.int32(bool(epsilon_outside_sqrt))),
                       ("tf_training_op_form", np.int32(bool(tf_training_op_form))),
                       ("schedule_decay", np.float64(schedule_decay)),
                       ("skip_nonfinite", np.int32(bool(skip_nonfinite)))))
        skipped = skipped | group_skipped
    out_params = jax.tree_util.tree_unflatten(treedef, new_leaves)
    out_slots = {name: jax.tree_util.tree_unflatten(treedef, new_slots[name]) for name in given}
    if return_skipped:
        return out_params, out_slots, skipped
    return out_params, out_slots


def _apply_doc() -> str:
    """apply's docstring with the registry's rules, their variants and options."""
    table = _rules()

    def names(rules) -> str:  # wrapped for a line of its own in an Args entry
        return "\n            ".join(textwrap.wrap(", ".join(rules) or "none", 67))

    optional = [f'{rule}\'s "{slot}"' for rule, info in table.items()
                for slot, opt in info["slots"] if opt]
    text = string.Template(apply.__doc__).substitute(
        rules=names(f'"{r}"' for r in table),
        optional_slots=names(optional),
        stepped=names(r for r, info in table.items() if info["step"]),
        u_product=names(r for r, info in table.items() if "u_product" in info["scalars"]),
        **{option: names(rules) for option, rules in _option_rules().items()})
    return text


apply.__doc__ = _apply_doc()


def _fused_call(info, idx, leaves, grad_leaves, given, slot_leaves, new_leaves, new_slots,
                scalars, step_operand, grad_options, attrs) -> Any:
    """One "fusedopt_apply" call over the parameters `idx` (one dtype)."""
    n = len(idx)
    slot_names = [name for name, _ in info["slots"]]
    slot_mask = sum(1 << slot_names.index(name) for name in given)
    written = [leaves[i] for i in idx]
    for name in given:
        written += [slot_leaves[name][i] for i in idx]
    operands = written + [grad_leaves[i] for i in idx] + scalars + [step_operand] + grad_options
    all_attrs = (("rule", np.int32(info["index"])), ("n", np.int32(n)),
                 ("slot_mask", np.int32(slot_mask)), ("grappler_form", np.int32(0)),
                 ("constant_folding", np.int32(0)), ("tf_norms", np.int32(0)),
                 ("tf_pow", np.int32(0)), ("tf_tensor_pow", np.int32(0))) + attrs
    results = _apply_p.bind(*operands, target="fusedopt_apply", n_written=len(written),
                            attrs=tuple(sorted(all_attrs)))
    for k, i in enumerate(idx):
        new_leaves[i] = results[k]
    for j, name in enumerate(given):
        for k, i in enumerate(idx):
            new_slots[name][i] = results[n * (1 + j) + k]
    return results[len(written)]


def _adafactor_call(idx, leaves, grad_leaves, slot_leaves, new_leaves, new_slots, scalars,
                    step_operand) -> Any:
    """One "fusedopt_adafactor" call over the parameters `idx` (one dtype):
    operands vars, r and c of each factored variable, v, grads, the six
    scalars, step (AdafactorHost in cc/xla/ffi_handler.cc)."""
    n = len(idx)
    factored = [i for i in idx if len(leaves[i].shape) >= 2]
    written = [leaves[i] for i in idx]
    for i in factored:
        written += [slot_leaves["r"][i], slot_leaves["c"][i]]
    written += [slot_leaves["v"][i] for i in idx]
    operands = written + [grad_leaves[i] for i in idx] + scalars + [step_operand]
    attrs = (("grappler_form", np.int32(0)), ("n", np.int32(n)), ("tf_reductions", np.int32(0)))
    results = _apply_p.bind(*operands, target="fusedopt_adafactor", n_written=len(written),
                            attrs=attrs)
    for k, i in enumerate(idx):
        new_leaves[i] = results[k]
    at = n
    for i in factored:
        new_slots["r"][i] = results[at]
        new_slots["c"][i] = results[at + 1]
        at += 2
    for k, i in enumerate(idx):
        new_slots["v"][i] = results[at + k]
    return results[len(written)]
