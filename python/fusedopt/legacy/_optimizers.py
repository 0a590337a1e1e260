"""The fused tf_keras optimizers (Note [fused legacy step] in _base).

Each class that has a tf_keras legacy built-in subclasses it and only declares
how the built-in's ``_prepare_local`` coefficients and slots map onto its fused
op (its ``_fused_call``, a FusedCall of _base). AdamW,
Lion and Lamb have none: they are OptimizerV2 classes written here, with
Keras 3's update rules (and a TensorFlow-ops form of the same rule for XLA).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras
from tf_keras.src import backend_config
from tf_keras.src.optimizers.legacy import (
    adadelta,
    adagrad,
    adam,
    adamax,
    ftrl,
    gradient_descent,
    nadam,
    optimizer_v2,
    rmsprop,
)

from fusedopt.legacy._base import FusedCall, FusedLegacyMixin, _flat_ops, densify

__all__ = ["SGD", "Adam", "AdamW", "Nadam", "Adamax", "RMSprop", "Adagrad", "Adadelta", "Ftrl",
           "Lion", "Lamb"]


def _register(cls):
    """Registers with tf_keras' serialization (package "fusedopt"), so that
    ``tf_keras.models.load_model`` needs no ``custom_objects``."""
    return tf_keras.saving.register_keras_serializable(package="fusedopt")(cls)


def _doc(name: str, op: str, builtin: str | None, state: bool = False) -> str:
    base = (f"Drop-in for ``tf_keras.optimizers.legacy.{name}`` running fused kernels.\n\n"
            f"Same constructor, ``get_config()``, slot names and numbers as the built-in;\n"
            if builtin else
            f"{name} for tf_keras (OptimizerV2) on fused kernels, with Keras 3's\n"
            f"``keras.optimizers.{name}`` update rule.\n\n")
    return base + (
        f"each step makes one ``{op}`` call per (device, dtype) group of variables.\n\n"
        "Extra arguments (kept out of the config when default): ``sparse_mode`` (None: the\n"
        "built-in's sparse semantics; \"exact\" or \"lazy\") and ``multi_tensor`` (False:\n"
        "one fused call per variable).\n"
    ) + (
        "\nLow-precision optimizer state (issue #31; ``fusedopt.state``): ``state_dtype``\n"
        "(\"float32\" default; \"bfloat16\"; \"int8\": uint8 codes plus a float32\n"
        "``<slot>_absmax`` slot per block of 256, for variables of 4096 elements or more),\n"
        "``stochastic_rounding`` (bool: bfloat16 variables rounded stochastically) and\n"
        "``rounding_seed`` (int). Low-precision slots run Keras' form of the rule (the same\n"
        "formula, not the built-in's bits) and only the fused CPU kernels (no XLA)\n"
        "(Note [legacy low-precision state] in ``fusedopt.legacy._base``). A\n"
        "``tf.train.Checkpoint`` of any state format restores into any other (float32\n"
        "quantized or rounded to nearest; int8 dequantized, bfloat16 widened).\n"
        if state else "")


@_register
class SGD(FusedLegacyMixin, gradient_descent.SGD):
    __doc__ = _doc("SGD", "Fusedopt>ApplySGD", "SGD", state=True)

    def _effective_sparse_mode(self):
        if self.sparse_mode is not None:
            return self.sparse_mode
        # With momentum the built-in sums duplicate indices and calls
        # ResourceSparseApplyKerasMomentum (listed rows: "lazy"). Without, it
        # is one ResourceScatterAdd of -g * lr that adds duplicate rows one by
        # one, whose bits a summed row cannot give: that op itself runs.
        return "lazy" if self._momentum else None

    def _fused_state_sparse_mode(self):
        # (Without momentum, for bfloat16 variables rounded stochastically:
        # the listed rows move by -lr * g, as ResourceScatterAdd moves them.)
        return "lazy"

    def _unfused_sparse(self, grad, var, indices, apply_state):
        if not self._momentum:  # (no duplicate summing: ResourceScatterAdd)
            return gradient_descent.SGD._resource_apply_sparse_duplicate_indices(
                self, grad, var, indices, apply_state=apply_state or {})
        return super()._unfused_sparse(grad, var, indices, apply_state)

    _fused_call = FusedCall(
        "apply_sgd",
        slots={"momenta": ("momentum", lambda opt: opt._momentum)},
        hypers={"momentum": lambda opt, c: c["momentum"] if opt._momentum else 0.0,
                "nesterov": lambda opt, c: bool(opt.nesterov and opt._momentum)},
    )


@_register
class Adam(FusedLegacyMixin, adam.Adam):
    __doc__ = _doc("Adam", "Fusedopt>ApplyAdam", "Adam", state=True)
    _builtin_sparse_mode = "exact"  # decays every m, v row and moves every var row

    _fused_call = FusedCall(
        "apply_adam",
        slots={"m": "m", "v": "v", "vhat": ("vhat", lambda opt: opt.amsgrad)},
        step=True, hypers={"beta_1": "beta_1_t", "beta_2": "beta_2_t", "epsilon": "epsilon"},
        sparse_form=True,
    )

class _NoAssign:
    """Stands in for legacy Nadam's momentum cache in _prepare_local."""

    dtype = None


@_register
class Nadam(FusedLegacyMixin, nadam.Nadam):
    __doc__ = _doc("Nadam", "Fusedopt>ApplyNadam", "Nadam", state=True)
    # The built-in's sparse update decays all slot rows but moves only the
    # listed var rows, which neither fused mode does: its own ops by default.
    _builtin_sparse_mode = None

    _fused_next_m_cache = None

    def _prepare_local(self, var_device, var_dtype, apply_state):
        if not self._fused_defers_state():
            super()._prepare_local(var_device, var_dtype, apply_state)
        else:
            # The built-in assigns its momentum cache here, before any update;
            # with a stand-in whose dtype matches nothing it only computes, and
            # the assignment waits for the groups' ops (_fused_finish_step).
            cache = self._m_cache
            object.__setattr__(self, "_m_cache", _NoAssign())
            try:
                super()._prepare_local(var_device, var_dtype, apply_state)
            finally:
                object.__setattr__(self, "_m_cache", cache)
        c = apply_state[(var_device, var_dtype)]
        # The built-in's m_schedule_new, the same expression (so the same bits).
        c["fused_u_product"] = tf.cast(self._m_cache_read, var_dtype) * c["m_t"]
        if self._fused_defers_state() and var_dtype is self._m_cache.dtype:
            # Per device: under a strategy each replica prepares its own.
            pending = self._fused_next_m_cache
            if pending is None:
                pending = self._fused_next_m_cache = {}
            pending[var_device] = c["fused_u_product"]

    def _fused_finish_step(self, update_ops):
        pending, self._fused_next_m_cache = self._fused_next_m_cache, None
        if not pending:
            return []
        with tf.control_dependencies(update_ops):
            if not tf.distribute.has_strategy():
                # (Variables on several devices all computed the same value.)
                done = self._m_cache.assign(next(iter(pending.values())), read_value=False)
            else:
                # Cross-replica context (_distributed_apply): each component
                # takes the value its own replica computed (they are equal).
                any_value = next(iter(pending.values()))

                def assign(component):
                    return component.assign(pending.get(component.device, any_value),
                                            read_value=False)

                done = tf.distribute.get_strategy().extended.update(self._m_cache, assign,
                                                                    group=False)
        # (The op apply_gradients returns waits for these: Note [atomic steps].)
        return _flat_ops([done])

    _fused_call = FusedCall(
        "apply_nadam",
        slots={"m": "m", "v": "v"},
        step=True,
        hypers={"u_product": "fused_u_product", "beta_1": "beta_1_t", "beta_2": "beta_2_t",
                "epsilon": "epsilon", "schedule_decay": lambda opt, c: opt._initial_decay},
        flags={"tf_training_op_form": True},  # the built-in's own ops, in their order
    )


@_register
class Adamax(FusedLegacyMixin, adamax.Adamax):
    __doc__ = _doc("Adamax", "Fusedopt>ApplyAdamax", "Adamax", state=True)
    _builtin_sparse_mode = "lazy"

    _fused_call = FusedCall(
        "apply_adamax",
        slots={"m": "m", "u": "v"},
        step=True, hypers={"beta_1": "beta_1_t", "beta_2": "beta_2_t", "epsilon": "epsilon"},
        # Dense: the built-in calls ResourceApplyAdaMax; sparse (default
        # mode): its own ops (Note [tf_keras sparse forms] in cc/core/plan.cc).
        sparse_form=True, flags={"tf_training_op_form": True},
    )


@_register
class RMSprop(FusedLegacyMixin, rmsprop.RMSprop):
    __doc__ = _doc("RMSprop", "Fusedopt>ApplyRmsprop", "RMSprop", state=True)

    def _effective_sparse_mode(self):
        if self.sparse_mode is not None:
            return self.sparse_mode
        # Without momentum the built-in decays every rms row, with its own
        # ops ("exact", their form). With momentum it calls
        # ResourceSparseApply(Centered)RMSProp, one op updating the listed
        # rows, whose packet rsqrt per row the kernels do not reproduce: that
        # op runs (sparse_mode="lazy" runs the fused kernel instead).
        return None if self._momentum else "exact"

    def _fused_state_sparse_mode(self):
        # With momentum the built-in's op updates the listed rows: "lazy".
        return "lazy"

    def _fused_int8_refusal(self):
        if self.centered:
            return ("centered=True: its denominator velocity - average_gradient^2 cancels, and "
                    "8-bit errors of the two turn it negative")
        return None

    _fused_call = FusedCall(
        "apply_rmsprop",
        slots={"velocity": "rms", "momenta": ("momentum", lambda opt: opt._momentum),
               "average_gradient": ("mg", lambda opt: opt.centered)},
        hypers={"rho": "rho", "momentum": lambda opt, c: c["momentum"] if opt._momentum else 0.0,
                "epsilon": "epsilon",
                # With momentum the built-in calls TF's ResourceApply(Centered)RMSProp
                # (epsilon inside the square root, their own moment arithmetic);
                # without, its TF ops add epsilon outside the square root.
                "epsilon_outside_sqrt": lambda opt, c: not opt._momentum,
                "tf_training_op_form": lambda opt, c: bool(opt._momentum)},
    )
    # IndexedSlices without momentum in the default sparse mode: tf_keras'
    # sparse ops (epsilon outside the square root).
    _fused_sparse_call = FusedCall(
        "apply_rmsprop",
        slots={"velocity": "rms", "average_gradient": ("mg", lambda opt: opt.centered)},
        hypers={"rho": "rho", "epsilon": "epsilon"},
        flags={"epsilon_outside_sqrt": True}, sparse_form=True,
    )

    def _fused_call_for(self, options):
        if "sparse_mode" in options and not self._momentum and self.sparse_mode is None:
            return self._fused_sparse_call
        return self._fused_call


@_register
class Adagrad(FusedLegacyMixin, adagrad.Adagrad):
    __doc__ = _doc("Adagrad", "Fusedopt>ApplyAdagrad", "Adagrad", state=True)
    _builtin_sparse_mode = "lazy"
    # A zero gradient adds 0 to the accumulator and moves nothing (epsilon > 0).
    _zero_gradient_is_identity = True

    _fused_call = FusedCall("apply_adagrad", slots={"accumulator": "accumulator"},
                            hypers={"epsilon": "epsilon"}, flags={"epsilon_outside_sqrt": True})


@_register
class Adadelta(FusedLegacyMixin, adadelta.Adadelta):
    __doc__ = _doc("Adadelta", "Fusedopt>ApplyAdadelta", "Adadelta")
    # The built-in's sparse update is one ResourceSparseApplyAdadelta per
    # variable (the listed rows), with Eigen's packet rsqrt per row, which the
    # kernels do not reproduce: that op runs by default ("lazy" for fused).
    _builtin_sparse_mode = None

    _fused_call = FusedCall(
        "apply_adadelta",
        slots={"accumulated_grad": "accum_grad", "accumulated_delta_var": "accum_var"},
        hypers={"rho": "rho", "epsilon": "epsilon"},
        flags={"tf_training_op_form": True},  # the built-in calls ResourceApplyAdadelta
    )


@_register
class Ftrl(FusedLegacyMixin, ftrl.Ftrl):
    __doc__ = _doc("Ftrl", "Fusedopt>ApplyFtrl", "Ftrl")
    # The built-in's sparse update is one ResourceSparseApplyFtrl(V2) per
    # variable (the listed rows), with Eigen's powers per row, which the
    # sparse kernels (the C library's pow) do not reproduce: that op runs by
    # default ("lazy" for fused).
    _builtin_sparse_mode = None

    _fused_call = FusedCall(
        "apply_ftrl",
        slots={"accumulator": "accumulator", "linear": "linear"},
        hypers={"learning_rate_power": "learning_rate_power",
                "l1": "l1_regularization_strength", "l2": "l2_regularization_strength",
                "l2_shrinkage": "l2_shrinkage_regularization_strength", "beta": "beta"},
        # The built-in calls ResourceApplyFtrl(V2): its powers (Note [TF pow])
        flags={"tf_pow": True, "tf_training_op_form": True},
    )


# ---- Optimizers without a tf_keras built-in ---------------------------------


class _NewOptimizer(FusedLegacyMixin, optimizer_v2.OptimizerV2):
    """Shared by AdamW, Lion and Lamb: hyperparameters, slots, config and the
    unfused form's common steps."""

    _HAS_AGGREGATE_GRAD = True
    _builtin_sparse_mode = "exact"
    _hypers = ("weight_decay", "beta_1", "beta_2")

    def __init__(self, name: str, learning_rate: Any, hypers: dict[str, Any],
                 epsilon: float | None = None, **kwargs: Any):
        """``hypers`` holds a value for each name in ``_hypers``; ``epsilon`` is
        None for a rule without one."""
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        for h in self._hypers:
            self._set_hyper(h, hypers[h])
        self._has_epsilon = epsilon is not None
        if self._has_epsilon:
            self.epsilon = epsilon or backend_config.epsilon()

    def _new_slot_names(self) -> tuple[str, ...]:
        return ("m", "v")

    def _create_slots(self, var_list):
        for slot_name in self._new_slot_names():
            for var in var_list:
                self.add_slot(var, slot_name)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        c = apply_state[(var_device, var_dtype)]
        for h in self._hypers:
            c[h] = tf.identity(self._get_hyper(h, var_dtype))
        if self._has_epsilon:
            c["epsilon"] = tf.convert_to_tensor(self.epsilon, var_dtype)

    def get_config(self):
        config = super().get_config()
        config["learning_rate"] = self._serialize_hyperparameter("learning_rate")
        config["decay"] = self._initial_decay
        for h in self._hypers:
            config[h] = self._serialize_hyperparameter(h)
        if self._has_epsilon:
            config["epsilon"] = self.epsilon
        return config

    def _unfused_sparse(self, grad, var, indices, apply_state):
        return self._unfused_dense(densify(grad, var, indices), var, apply_state)

    def _unfused_dense(self, grad, var, apply_state):
        c = self._coefficients(var.device, var.dtype.base_dtype, apply_state)
        return self._tf_update(grad, var, c)

    def _tf_decay_and_moments(self, grad, var, c):
        """The unfused form's first steps for Adam-like rules: decoupled weight
        decay, then the m and v updates. Returns the m and v slots."""
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        var.assign_sub(var * c["weight_decay"] * c["lr_t"])
        m.assign_add((grad - m) * (1 - c["beta_1"]))
        v.assign_add((grad * grad - v) * (1 - c["beta_2"]))
        return m, v


@_register
class AdamW(_NewOptimizer):
    __doc__ = _doc("AdamW", "Fusedopt>ApplyAdam", None, state=True)

    def __init__(self, learning_rate: Any = 0.001, weight_decay: Any = 0.004,
                 beta_1: Any = 0.9, beta_2: Any = 0.999, epsilon: float = 1e-7,
                 amsgrad: bool = False, name: str = "AdamW", **kwargs: Any):
        super().__init__(name, learning_rate,
                         dict(weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2),
                         epsilon=epsilon, **kwargs)
        self.amsgrad = amsgrad

    def _new_slot_names(self):
        return ("m", "v", "vhat") if self.amsgrad else ("m", "v")

    def get_config(self):
        config = super().get_config()
        config["amsgrad"] = self.amsgrad
        return config

    _fused_call = FusedCall(
        "apply_adam",
        slots={"m": "m", "v": "v", "vhat": ("vhat", lambda opt: opt.amsgrad)},
        step=True, hypers={"beta_1": "beta_1", "beta_2": "beta_2", "epsilon": "epsilon",
                           "weight_decay": "weight_decay"},
    )

    def _tf_update(self, grad, var, c):
        m, v = self._tf_decay_and_moments(grad, var, c)
        lr, b1, b2 = c["lr_t"], c["beta_1"], c["beta_2"]
        t = tf.cast(c["fused_step"], var.dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(b2, t)) / (1 - tf.pow(b1, t))
        denom = v
        if self.amsgrad:
            vhat = self.get_slot(var, "vhat")
            denom = vhat.assign(tf.maximum(vhat, v))
        return var.assign_sub(m * alpha / (tf.sqrt(denom) + c["epsilon"]))


@_register
class Lion(_NewOptimizer):
    __doc__ = _doc("Lion", "Fusedopt>ApplyLion", None, state=True)

    def __init__(self, learning_rate: Any = 0.001, beta_1: Any = 0.9, beta_2: Any = 0.99,
                 weight_decay: Any = 0.0, name: str = "Lion", **kwargs: Any):
        super().__init__(name, learning_rate,
                         dict(weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2),
                         **kwargs)

    def _new_slot_names(self):
        return ("m",)

    _fused_call = FusedCall("apply_lion", slots={"m": "m"},
                            hypers={"beta_1": "beta_1", "beta_2": "beta_2",
                                    "weight_decay": "weight_decay"})

    def _tf_update(self, grad, var, c):
        lr, b1, b2 = c["lr_t"], c["beta_1"], c["beta_2"]
        m = self.get_slot(var, "m")
        var.assign_sub(var * c["weight_decay"] * lr)
        var.assign_sub(lr * tf.sign(m * b1 + grad * (1 - b1)))
        return m.assign(m * b2 + grad * (1 - b2))


@_register
class Lamb(_NewOptimizer):
    __doc__ = _doc("Lamb", "Fusedopt>ApplyLamb", None)

    def __init__(self, learning_rate: Any = 0.001, beta_1: Any = 0.9, beta_2: Any = 0.999,
                 epsilon: float = 1e-7, weight_decay: Any = 0.0, name: str = "Lamb",
                 **kwargs: Any):
        if kwargs.get("sparse_mode") == "lazy":
            raise ValueError("Lamb has no lazy sparse mode: its trust ratio needs the whole "
                             "variable; use sparse_mode='exact'")
        super().__init__(name, learning_rate,
                         dict(weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2),
                         epsilon=epsilon, **kwargs)

    _fused_call = FusedCall(
        "apply_lamb", slots={"m": "m", "v": "v"}, step=True,
        hypers={"beta_1": "beta_1", "beta_2": "beta_2", "epsilon": "epsilon",
                "weight_decay": "weight_decay"},
    )

    def _tf_update(self, grad, var, c):
        m, v = self._tf_decay_and_moments(grad, var, c)
        t = tf.cast(c["fused_step"], var.dtype)
        u = (m / (1 - tf.pow(c["beta_1"], t))) / (
            tf.sqrt(v / (1 - tf.pow(c["beta_2"], t))) + c["epsilon"])
        w_norm = tf.norm(var)
        u_norm = tf.norm(u)
        ratio = tf.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, tf.ones_like(w_norm))
        return var.assign_sub(ratio * c["lr_t"] * u)
