"""Drop-in Keras 3 optimizers on the fused kernels (Note [fused Keras step]).

Each class subclasses the built-in of the same name and only declares how one
group of variables (same device, dtype and weight-decay use) maps onto its
fused op: which slot lists, which hyperparameters (its ``_fused_call``, Note
[fused call tables] in _base).
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from fusedopt import _tf_context as _ctx
from fusedopt import ops
from fusedopt.keras._base import FusedCall, FusedOptimizerMixin, _slots, _step

__all__: list[str] = []  # every class _register registers, in order


def _register(cls):
    """Registers for Keras serialization, appends the built-in's docs and
    exports the class."""
    cls.__doc__ = (cls.__doc__ or "") + "\n" + (cls._fused_builtin().__doc__ or "")
    __all__.append(cls.__name__)
    return keras.saving.register_keras_serializable(package="fusedopt")(cls)


def _fused_doc(name: str, op: str) -> str:
    return (
        f"Drop-in for ``keras.optimizers.{name}`` running fused kernels.\n\n"
        f"Same constructor, defaults, ``get_config()``, slot variables and numbers as the\n"
        f"built-in; each step makes one ``{op}`` call per (device, dtype) group of\n"
        f"variables, with weight decay fused in.\n\n{_EXTRA_ARGS}"
    )


_EXTRA_ARGS = (
    "Arguments beyond the built-in's (in ``get_config()`` only when not default):\n"
    "``sparse_mode`` (\"exact\" or \"lazy\") for IndexedSlices gradients, and\n"
    "``clip_after_aggregation`` (default False): True clips the gradient summed over a\n"
    "strategy's replicas (with ``clipnorm``, ``global_clipnorm`` or ``clipvalue``) instead\n"
    "of each replica's part, as tf_keras does; for the classes with low-precision state,\n"
    "``state_dtype`` (\"float32\", \"bfloat16\" or \"int8\"), ``stochastic_rounding`` and\n"
    "``rounding_seed`` (see ``FusedOptimizerMixin``).\n"
)


@_register
class SGD(FusedOptimizerMixin, keras.optimizers.SGD):
    """Drop-in for ``keras.optimizers.SGD`` running fused kernels.

    Same constructor, defaults, ``get_config()``, slot variables ("momentum",
    created only when ``momentum != 0``) and numbers as the built-in class;
    each training step makes one ``Fusedopt>ApplySGD`` call per
    (device, dtype) group of variables, with weight decay fused in.

    Arguments beyond the built-in's (in ``get_config()`` only when not
    default): ``sparse_mode``, ``clip_after_aggregation``, ``state_dtype``,
    ``stochastic_rounding`` and ``rounding_seed`` (see
    ``FusedOptimizerMixin``).
    """

    _fused_call = FusedCall(
        "apply_sgd",
        # (Keras makes the momentum slots only when momentum != 0.)
        slots={"momenta": ("momentums", lambda opt: opt.momentum != 0)},
        hypers={"momentum": "momentum",
                "nesterov": lambda opt: bool(opt.nesterov) and opt.momentum != 0},
    )


class _AdamLike:
    _fused_call = FusedCall(
        "apply_adam",
        slots={"m": "_momentums", "v": "_velocities",
               "vhat": ("_velocity_hats", lambda opt: opt.amsgrad)},
        step=True, hypers={"beta_1": "beta_1", "beta_2": "beta_2", "epsilon": "epsilon"},
    )


@_register
class Adam(_AdamLike, FusedOptimizerMixin, keras.optimizers.Adam):
    __doc__ = _fused_doc("Adam", "Fusedopt>ApplyAdam")


@_register
class AdamW(_AdamLike, FusedOptimizerMixin, keras.optimizers.AdamW):
    __doc__ = _fused_doc("AdamW", "Fusedopt>ApplyAdam")


@_register
class Nadam(FusedOptimizerMixin, keras.optimizers.Nadam):
    __doc__ = _fused_doc("Nadam", "Fusedopt>ApplyNadam")

    def _fused_prepare_step(self):
        # Keras' Nadam._backend_update_step advances u_product before the
        # per-variable updates, with this expression; the fused step computes
        # it here and assigns it after every group's op (_fused_finish_step),
        # so a failed step leaves it unchanged (Note [atomic steps]).
        dtype = self._u_product.dtype
        self._fused_next_u_product = (
            self._u_product
            * self.beta_1
            * (1.0 - 0.5 * keras.ops.power(0.96, keras.ops.cast(self.iterations + 1, dtype)))
        )

    def _fused_finish_step(self, updates):
        with tf.control_dependencies(updates):  # ([] keeps the step's checks; None would not)
            self.assign(self._u_product, self._fused_next_u_product)

    _fused_call = FusedCall(
        "apply_nadam",
        slots={"m": "_momentums", "v": "_velocities"},
        step=True,
        hypers={"u_product": "_fused_next_u_product", "beta_1": "beta_1", "beta_2": "beta_2",
                "epsilon": "epsilon"},
    )


@_register
class Adamax(FusedOptimizerMixin, keras.optimizers.Adamax):
    __doc__ = _fused_doc("Adamax", "Fusedopt>ApplyAdamax")

    _fused_call = FusedCall(
        "apply_adamax", slots={"m": "_m", "u": "_u"}, step=True,
        hypers={"beta_1": "beta_1", "beta_2": "beta_2", "epsilon": "epsilon"},
    )


@_register
class RMSprop(FusedOptimizerMixin, keras.optimizers.RMSprop):
    __doc__ = _fused_doc("RMSprop", "Fusedopt>ApplyRmsprop")

    _fused_call = FusedCall(
        "apply_rmsprop",
        slots={"velocity": "_velocities",
               "momenta": ("_momentums", lambda opt: opt.momentum > 0),
               "average_gradient": ("_average_gradients", lambda opt: opt.centered)},
        hypers={"rho": "rho", "momentum": "momentum", "epsilon": "epsilon"},
    )

    def _fused_int8_refusal(self):
        if self.centered:
            return ("centered RMSprop divides by velocity - average_gradient^2, which 8-bit "
                    "errors of the two can turn negative")
        return None


@_register
class Adagrad(FusedOptimizerMixin, keras.optimizers.Adagrad):
    __doc__ = _fused_doc("Adagrad", "Fusedopt>ApplyAdagrad")

    _fused_call = FusedCall("apply_adagrad", slots={"accumulator": "_accumulators"},
                            hypers={"epsilon": "epsilon"})


@_register
class Adadelta(FusedOptimizerMixin, keras.optimizers.Adadelta):
    __doc__ = _fused_doc("Adadelta", "Fusedopt>ApplyAdadelta")

    _fused_call = FusedCall(
        "apply_adadelta",
        slots={"accumulated_grad": "_accumulated_grads",
               "accumulated_delta_var": "_accumulated_delta_vars"},
        hypers={"rho": "rho", "epsilon": "epsilon"},
    )


@_register
class Ftrl(FusedOptimizerMixin, keras.optimizers.Ftrl):
    __doc__ = _fused_doc("Ftrl", "Fusedopt>ApplyFtrl")

    _fused_call = FusedCall(
        "apply_ftrl",
        slots={"accumulator": "_accumulators", "linear": "_linears"},
        hypers={"learning_rate_power": "learning_rate_power",
                "l1": "l1_regularization_strength", "l2": "l2_regularization_strength",
                "l2_shrinkage": "l2_shrinkage_regularization_strength", "beta": "beta"},
        flags={"tf_pow": True},  # Keras' powers are TF's Pow (Note [TF pow])
    )


@_register
class Lion(FusedOptimizerMixin, keras.optimizers.Lion):
    __doc__ = _fused_doc("Lion", "Fusedopt>ApplyLion")

    _fused_call = FusedCall("apply_lion", slots={"m": "_momentums"},
                            hypers={"beta_1": "beta_1", "beta_2": "beta_2"})


@_register
class Lamb(FusedOptimizerMixin, keras.optimizers.Lamb):
    __doc__ = _fused_doc("Lamb", "Fusedopt>ApplyLamb")

    _no_lazy_sparse_mode = "Lamb has no lazy sparse mode: its trust ratio needs the whole variable"

    _fused_call = FusedCall(
        "apply_lamb", slots={"m": "_momentums", "v": "_velocities"}, step=True,
        hypers={"beta_1": "beta_1", "beta_2": "beta_2", "epsilon": "epsilon"},
        flags={"tf_norms": True},  # Keras' norms are TF's Pow and Sum (Note [TF norms])
    )


@_register
class ScheduleFreeAdamW(FusedOptimizerMixin, keras.optimizers.ScheduleFreeAdamW):
    __doc__ = _fused_doc("ScheduleFreeAdamW", "Fusedopt>ApplyScheduleFreeAdamW")

    _fused_call = FusedCall(
        "apply_schedule_free_adamw",
        slots={"momentum": "_momentums", "velocity": "_velocities"}, step=True,
        hypers={"beta_1": "beta_1", "beta_2": "beta_2", "epsilon": "epsilon",
                "warmup_steps": "warmup_steps"},
    )


class MuonGroupKey(NamedTuple):
    """Muon's group key: a GroupKey's fields, its path and its update scale."""

    device: str
    dtype: tf.DType
    decays: bool
    sparse: bool
    adamw: bool  # Muon's AdamW path (else the Newton-Schulz one)
    scale: float | None  # sqrt(max(rows, cols)) on the Newton-Schulz path (one per call)


# Muon's AdamW path: Keras' _adamw_update_step with Muon's own attributes.
_MUON_ADAMW = FusedCall(
    "apply_adam", slots={"m": "momentums", "v": "adam_velocities"}, step=True,
    hypers={"beta_1": "adam_beta_1", "beta_2": "adam_beta_2", "epsilon": "epsilon"},
)


@_register
class Muon(FusedOptimizerMixin, keras.optimizers.Muon):
    """Drop-in for ``keras.optimizers.Muon`` running fused kernels.

    Same constructor, defaults, ``get_config()``, slot variables and numbers as
    the built-in. Variables on Muon's AdamW path (rank != 2, embeddings,
    ``exclude_layers``) take one ``Fusedopt>ApplyAdam`` call per (device,
    dtype) group, with ``adam_weight_decay`` fused in. The others take one
    ``Fusedopt>ApplyMuonMomentum`` call per group, then Keras' own
    Newton-Schulz iterations per variable (TensorFlow matmuls, unchanged), then
    one ``Fusedopt>ApplyMuon`` call per group of equal ``sqrt(max(rows,
    cols))``, with ``weight_decay`` fused in.

    Unlike the built-in, float64 (and 16-bit) variables work: Keras' Muon
    fails there (its float32 learning rate meets the float64 update in a
    multiplication), the fused update computes Keras' formula in the
    variable's precision.
    """
    __doc__ += "\n" + _EXTRA_ARGS

    def _uses_adamw(self, var) -> bool:
        return self.adam_velocities[self._get_variable_index(var)] is not None

    def _group_key(self, var, grad):
        adamw = self._uses_adamw(var)
        wd = self.adam_weight_decay if adamw else self.weight_decay
        decays = wd is not None and self._use_weight_decay(var)
        scale = None
        if not adamw:
            scale = 1.0 if self.rms_rate is None else ops.muon_scale(var.shape)
        return MuonGroupKey(device=var.device, dtype=var.dtype.base_dtype, decays=decays,
                            sparse=isinstance(grad, tf.IndexedSlices), adamw=adamw, scale=scale)

    def _group_weight_decay(self, key, variables):
        return self.adam_weight_decay if key.adamw else self.weight_decay

    def _fused_apply(self, variables, grads, learning_rate, weight_decay, **options):
        if self._uses_adamw(variables[0]):
            return self._fused_adamw(variables, grads, learning_rate, weight_decay, **options)
        return self._fused_muon(variables, grads, learning_rate, weight_decay, **options)

    def _fused_adamw(self, variables, grads, learning_rate, weight_decay, **options):
        # Keras: _adamw_update_step(..., learning_rate * adam_lr_ratio, ...), and
        # the decay with the unscaled learning rate.
        adam_lr = learning_rate
        deps = []
        if self.adam_lr_ratio != 1:
            adam_lr = learning_rate * self.adam_lr_ratio
            if weight_decay:
                # The op's decay uses its own learning rate; this one differs,
                # so the decay runs as Keras writes it, after a check that
                # keeps a failing step from writing (Note [atomic steps]).
                deps.append(_finite_or_fail(learning_rate, "lr"))
                deps.append(_finite_or_fail(adam_lr, "lr"))
                with tf.control_dependencies(deps):
                    deps = [self._decay_now(variables, weight_decay)]
                weight_decay = 0.0
        # (An empty list keeps the step's checks: control_dependencies(None)
        # would clear them.)
        with tf.control_dependencies(deps):
            return self._fused_run(_MUON_ADAMW, variables, grads, adam_lr, weight_decay,
                                   **options)

    def _decay_now(self, variables, weight_decay):
        out = []
        for v in variables:
            wd = keras.ops.cast(weight_decay, v.dtype)
            lr = keras.ops.cast(self.learning_rate, v.dtype)
            out.append(v.assign(v - v * wd * lr))
        return tf.group(out)

    def _fused_muon(self, variables, grads, learning_rate, weight_decay, **options):
        options.pop("sparse_mode", None)
        grads = [tf.convert_to_tensor(g) for g in grads]  # Keras densifies too
        # apply_muon takes the orthogonalized update, not the gradient: any
        # clipping of the summed gradient comes first (Note [clip after aggregation]).
        grads = self._clip_in_tf(grads, options)
        momenta = _slots(self, self.momentums, variables)
        # Two op calls: the second one's hyperparameter checks are made first,
        # so that a failing step writes nothing (Note [atomic steps]).
        checks = [_finite_or_fail(learning_rate, "lr"),
                  _finite_or_fail(weight_decay, "weight_decay")]
        if self.rms_rate is not None:
            checks.append(_finite_or_fail(self.rms_rate, "rms_rate"))
        with tf.control_dependencies(checks):
            done = ops.apply_muon_momentum(momenta, grads, momentum=self.momentum)
        updates = []
        with tf.control_dependencies([done]):
            for g, m in zip(grads, momenta):
                m_now = m.value if isinstance(m, keras.Variable) else m
                m_read = tf.identity(m_now)
                g2 = keras.ops.add(g, self.momentum * m_read) if self.nesterov else m_read
                updates.append(self.zeropower_via_newtonschulz5(g2, self.ns_steps))
        return ops.apply_muon(
            variables, updates, learning_rate,
            scale=1.0 if self.rms_rate is None else ops.muon_scale(variables[0].shape),
            rms_rate=self.rms_rate, weight_decay=weight_decay,
            **options,
        )


@_register
class Adafactor(FusedOptimizerMixin, keras.optimizers.Adafactor):
    """Drop-in for ``keras.optimizers.Adafactor`` running a fused kernel.

    Same constructor, defaults, ``get_config()``, slot variables and
    checkpoints as the built-in; each step makes one ``Fusedopt>ApplyAdafactor``
    call per (dtype, weight-decay use) group. For float32 and float64
    variables the op runs Keras' ops with TensorFlow's own Mean (and Sqrt or
    Grappler's Rsqrt) expressions (``tf_reductions``), so the numbers are the
    built-in's bit for bit; 16-bit variables take the three-pass kernel with
    double sums (docs/parity.md). CPU only: inside XLA compilation it lowers to an in-place
    custom call like the other ops; GPU variables run the built-in's update (a
    warning says so once).
    """
    __doc__ += "\n" + _EXTRA_ARGS

    def _fused_supports(self, variables):
        if not all(_ctx._on_cpu(v) for v in variables):
            _ctx.warn_fallback_once(
                "fusedopt.keras.Adafactor has a CPU kernel only: this step (GPU variables) "
                "runs Keras' built-in Adafactor update (same results, no fused kernel)")
            return False
        return super()._fused_supports(variables)

    def _fused_apply(self, variables, grads, learning_rate, weight_decay, **options):
        grads = self._clip_in_tf(grads, options)  # the op takes no gradient options
        return ops.apply_adafactor(
            variables, grads, learning_rate,
            r=_slots(self, self._r, variables), c=_slots(self, self._c, variables),
            v=_slots(self, self._v, variables), step=_step(self),
            beta_2_decay=self.beta_2_decay, epsilon_1=self.epsilon_1,
            epsilon_2=self.epsilon_2, clip_threshold=self.clip_threshold,
            weight_decay=weight_decay, grappler_form=options.get("grappler_form", False),
            tf_reductions=True,
        )


def _finite_or_fail(x, name: str):
    """An InvalidArgumentError naming ``name`` when ``x`` is not finite, before
    anything is written (decided at trace time for Python numbers)."""
    if isinstance(x, (int, float)):
        if not np.isfinite(x):
            raise tf.errors.InvalidArgumentError(
                None, None, f"'{name}' must be finite, got {x}; nothing was updated")
        return tf.no_op()
    return tf.debugging.assert_all_finite(
        tf.cast(x, tf.float64), f"'{name}' must be finite; nothing was updated")
