"""What the table suites (sizes, many, models, sparse, fit) know about each
rule, keyed by its registry name (fusedopt.bench.rules): its Keras classes, a
configuration on which every contender computes the same rule, which of the
registry's slots that configuration uses and the Keras attribute holding each,
the tf.raw_ops loop (where TensorFlow has the rule) and the float64 reference
step used by --check. The rule names, slot names and order come from the
registry; a registry rule this table does not name fails the import."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

import fusedopt.keras as fk
from fusedopt import reference as ref
from fusedopt.bench.rules import Skip, check_slots, registry, require_known


@dataclass
class Algorithm:
    name: str  # the registry's name
    fused_cls: type
    keras_cls: type
    config: dict
    # The registry slots this configuration uses -> the Keras optimizer
    # attribute holding each one's list (in the registry's op order).
    slot_attrs: dict[str, str]
    # reference(var, grad, slots(dict registry slot -> array), lr, step) -> (var, slots)
    reference: Callable
    # raw(var, slots(list of tf.Variable), grad, lr, step) -> op; None if TF has no raw op
    raw: Callable | None = None
    # Element accesses beyond one read and write of var and each slot and one
    # read of grad (LAMB's second pass reads var, m and v again).
    extra_accesses: int = 0
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def slot_names(self) -> list[str]:
        return list(self.slot_attrs)

    @property
    def slots(self) -> list[str]:
        """The Keras attributes of the slots, in op order."""
        return list(self.slot_attrs.values())

    @property
    def bytes_per_element(self) -> int:
        """float32 bytes per element (reads + writes)."""
        return 4 * (2 * (1 + len(self.slot_attrs)) + 1 + self.extra_accesses)

    @property
    def step(self) -> bool:
        return registry()[self.name].step


def _c(x):
    return tf.constant(x, tf.float32)


def _f32(x):
    return float(np.float32(x))


def _adam_ref(var, g, s, lr, t):
    var, m, v, _ = ref.adam_step(var, g, lr, s["m"], s["v"], t,
                                 beta_1=_f32(0.9), beta_2=_f32(0.999), epsilon=_f32(1e-7))
    return var, {"m": m, "v": v}


def _adam_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyAdam(
        var=var.handle, m=slots[0].handle, v=slots[1].handle,
        beta1_power=tf.pow(_c(0.9), tf.cast(t, tf.float32)),
        beta2_power=tf.pow(_c(0.999), tf.cast(t, tf.float32)),
        lr=lr, beta1=_c(0.9), beta2=_c(0.999), epsilon=_c(1e-7), grad=g)


def _sgd_ref(var, g, s, lr, t):
    var, m = ref.sgd_step(var, g, lr, m=s["momenta"], momentum=_f32(0.9))
    return var, {"momenta": m}


def _sgd_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyKerasMomentum(var=var.handle, accum=slots[0].handle, lr=lr,
                                                 grad=g, momentum=_c(0.9))


def _rms_ref(var, g, s, lr, t):
    var, vel, mom, _ = ref.rmsprop_step(var, g, lr, s["velocity"], mom=s["momenta"],
                                        rho=_f32(0.9), momentum=_f32(0.9), epsilon=_f32(1e-7))
    return var, {"velocity": vel, "momenta": mom}


def _rms_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyRMSProp(var=var.handle, ms=slots[0].handle, mom=slots[1].handle,
                                           lr=lr, rho=_c(0.9), momentum=_c(0.9),
                                           epsilon=_c(1e-7), grad=g)


def _adagrad_ref(var, g, s, lr, t):
    var, acc = ref.adagrad_step(var, g, lr, s["accumulator"], epsilon=0.0)
    return var, {"accumulator": acc}


def _adagrad_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyAdagradV2(var=var.handle, accum=slots[0].handle, lr=lr,
                                             epsilon=_c(0.0), grad=g)


def _adadelta_ref(var, g, s, lr, t):
    var, ag, adv = ref.adadelta_step(var, g, lr, s["accumulated_grad"],
                                     s["accumulated_delta_var"], rho=_f32(0.95),
                                     epsilon=_f32(1e-7))
    return var, {"accumulated_grad": ag, "accumulated_delta_var": adv}


def _adadelta_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyAdadelta(var=var.handle, accum=slots[0].handle,
                                            accum_update=slots[1].handle, lr=lr, rho=_c(0.95),
                                            epsilon=_c(1e-7), grad=g)


def _adamax_ref(var, g, s, lr, t):
    var, m, u = ref.adamax_step(var, g, lr, s["m"], s["u"], t, beta_1=_f32(0.9),
                                beta_2=_f32(0.999), epsilon=_f32(1e-7))
    return var, {"m": m, "u": u}


def _adamax_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyAdaMax(var=var.handle, m=slots[0].handle, v=slots[1].handle,
                                          beta1_power=tf.pow(_c(0.9), tf.cast(t, tf.float32)),
                                          lr=lr, beta1=_c(0.9), beta2=_c(0.999),
                                          epsilon=_c(1e-7), grad=g)


def _ftrl_ref(var, g, s, lr, t):
    var, acc, lin = ref.ftrl_step(var, g, lr, s["accumulator"], s["linear"])
    return var, {"accumulator": acc, "linear": lin}


def _ftrl_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyFtrl(var=var.handle, accum=slots[0].handle,
                                        linear=slots[1].handle, grad=g, lr=lr, l1=_c(0.0),
                                        l2=_c(0.0), lr_power=_c(-0.5))


def _lion_ref(var, g, s, lr, t):
    var, m = ref.lion_step(var, g, lr, s["m"], beta_1=_f32(0.9), beta_2=_f32(0.99))
    return var, {"m": m}


def _lamb_ref(var, g, s, lr, t):
    var, m, v = ref.lamb_step(var, g, lr, s["m"], s["v"], t,
                              beta_1=_f32(0.9), beta_2=_f32(0.999), epsilon=_f32(1e-7))
    return var, {"m": m, "v": v}


def _nadam_ref(var, g, s, lr, t):
    u = 1.0
    for k in range(1, t + 1):
        u *= ref.nadam_u(k, _f32(0.9))
    var, m, v = ref.nadam_step(var, g, lr, s["m"], s["v"], t, u,
                               beta_1=_f32(0.9), beta_2=_f32(0.999), epsilon=_f32(1e-7))
    return var, {"m": m, "v": v}


_TABLE: dict[str, Algorithm | Skip] = {
    "adam": Algorithm("adam", fk.Adam, keras.optimizers.Adam, dict(learning_rate=1e-3),
                      {"m": "_momentums", "v": "_velocities"}, _adam_ref, _adam_raw),
    "sgd": Algorithm("sgd", fk.SGD, keras.optimizers.SGD, dict(learning_rate=1e-2, momentum=0.9),
                     {"momenta": "momentums"}, _sgd_ref, _sgd_raw),
    "rmsprop": Algorithm("rmsprop", fk.RMSprop, keras.optimizers.RMSprop,
                         dict(learning_rate=1e-3, momentum=0.9),
                         {"velocity": "_velocities", "momenta": "_momentums"}, _rms_ref, _rms_raw),
    "adagrad": Algorithm("adagrad", fk.Adagrad, keras.optimizers.Adagrad,
                         dict(learning_rate=1e-2, epsilon=0.0), {"accumulator": "_accumulators"},
                         _adagrad_ref, _adagrad_raw,
                         notes="epsilon=0: TF's AdagradV2 adds it outside the sqrt"),
    "adadelta": Algorithm("adadelta", fk.Adadelta, keras.optimizers.Adadelta,
                          dict(learning_rate=1.0),
                          {"accumulated_grad": "_accumulated_grads",
                           "accumulated_delta_var": "_accumulated_delta_vars"},
                          _adadelta_ref, _adadelta_raw),
    "adamax": Algorithm("adamax", fk.Adamax, keras.optimizers.Adamax, dict(learning_rate=1e-3),
                        {"m": "_m", "u": "_u"}, _adamax_ref, _adamax_raw),
    "ftrl": Algorithm("ftrl", fk.Ftrl, keras.optimizers.Ftrl, dict(learning_rate=1e-2),
                      {"accumulator": "_accumulators", "linear": "_linears"}, _ftrl_ref,
                      _ftrl_raw),
    "nadam": Algorithm("nadam", fk.Nadam, keras.optimizers.Nadam, dict(learning_rate=1e-3),
                       {"m": "_momentums", "v": "_velocities"}, _nadam_ref),
    "lion": Algorithm("lion", fk.Lion, keras.optimizers.Lion, dict(learning_rate=1e-4),
                      {"m": "_momentums"}, _lion_ref),
    # Two passes: the moments, then the trust ratio's update (var, m, v read again).
    "lamb": Algorithm("lamb", fk.Lamb, keras.optimizers.Lamb, dict(learning_rate=1e-3),
                      {"m": "_momentums", "v": "_velocities"}, _lamb_ref, extra_accesses=3),
    "schedule_free_adamw": Skip("not in the table suites yet (no contender or --check "
                                "written for it here)"),
    "muon": Skip("not in the table suites yet: a matrix rule (Newton-Schulz on 2-D "
                 "momenta), not an elementwise one"),
    "muon_momentum": Skip("Muon's momentum stage, a part of the muon rule"),
}
require_known(_TABLE, "fusedopt.bench.algorithms")
for _a in _TABLE.values():
    if isinstance(_a, Algorithm):
        check_slots(_a.name, _a.slot_attrs, f"fusedopt.bench.algorithms[{_a.name!r}]")

# The rules the table suites time, in the table's order.
ALGORITHMS: dict[str, Algorithm] = {k: a for k, a in _TABLE.items() if isinstance(a, Algorithm)}
SKIPPED: dict[str, Skip] = {k: a for k, a in _TABLE.items() if isinstance(a, Skip)}
