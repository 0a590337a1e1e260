"""What the benchmark knows about each algorithm: its Keras classes, a
configuration on which every contender computes the same rule, the bytes it
moves per element, the tf.raw_ops loop (where TensorFlow has the rule) and the
float64 reference step used by --check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

import fusedopt.keras as fk
from fusedopt import reference as ref


@dataclass
class Algorithm:
    name: str
    fused_cls: type
    keras_cls: type
    config: dict
    bytes_per_element: int  # float32 bytes per element (reads + writes)
    slots: list[str]  # the Keras optimizer attributes holding slot lists, in op order
    # reference(var, grad, slots(dict attr -> array), lr, step) -> (var, slots)
    reference: Callable
    # raw(var, slots(list of tf.Variable), grad, lr, step) -> op; None if TF has no raw op
    raw: Callable | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _c(x):
    return tf.constant(x, tf.float32)


def _f32(x):
    return float(np.float32(x))


def _adam_ref(var, g, s, lr, t):
    var, m, v, _ = ref.adam_step(var, g, lr, s["_momentums"], s["_velocities"], t,
                                 beta_1=_f32(0.9), beta_2=_f32(0.999), epsilon=_f32(1e-7))
    return var, {"_momentums": m, "_velocities": v}


def _adam_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyAdam(
        var=var.handle, m=slots[0].handle, v=slots[1].handle,
        beta1_power=tf.pow(_c(0.9), tf.cast(t, tf.float32)),
        beta2_power=tf.pow(_c(0.999), tf.cast(t, tf.float32)),
        lr=lr, beta1=_c(0.9), beta2=_c(0.999), epsilon=_c(1e-7), grad=g)


def _sgd_ref(var, g, s, lr, t):
    var, m = ref.sgd_step(var, g, lr, m=s["momentums"], momentum=_f32(0.9))
    return var, {"momentums": m}


def _sgd_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyKerasMomentum(var=var.handle, accum=slots[0].handle, lr=lr,
                                                 grad=g, momentum=_c(0.9))


def _rms_ref(var, g, s, lr, t):
    var, vel, mom, _ = ref.rmsprop_step(var, g, lr, s["_velocities"], mom=s["_momentums"],
                                        rho=_f32(0.9), momentum=_f32(0.9), epsilon=_f32(1e-7))
    return var, {"_velocities": vel, "_momentums": mom}


def _rms_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyRMSProp(var=var.handle, ms=slots[0].handle, mom=slots[1].handle,
                                           lr=lr, rho=_c(0.9), momentum=_c(0.9),
                                           epsilon=_c(1e-7), grad=g)


def _adagrad_ref(var, g, s, lr, t):
    var, acc = ref.adagrad_step(var, g, lr, s["_accumulators"], epsilon=0.0)
    return var, {"_accumulators": acc}


def _adagrad_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyAdagradV2(var=var.handle, accum=slots[0].handle, lr=lr,
                                             epsilon=_c(0.0), grad=g)


def _adadelta_ref(var, g, s, lr, t):
    var, ag, adv = ref.adadelta_step(var, g, lr, s["_accumulated_grads"],
                                     s["_accumulated_delta_vars"], rho=_f32(0.95),
                                     epsilon=_f32(1e-7))
    return var, {"_accumulated_grads": ag, "_accumulated_delta_vars": adv}


def _adadelta_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyAdadelta(var=var.handle, accum=slots[0].handle,
                                            accum_update=slots[1].handle, lr=lr, rho=_c(0.95),
                                            epsilon=_c(1e-7), grad=g)


def _adamax_ref(var, g, s, lr, t):
    var, m, u = ref.adamax_step(var, g, lr, s["_m"], s["_u"], t, beta_1=_f32(0.9),
                                beta_2=_f32(0.999), epsilon=_f32(1e-7))
    return var, {"_m": m, "_u": u}


def _adamax_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyAdaMax(var=var.handle, m=slots[0].handle, v=slots[1].handle,
                                          beta1_power=tf.pow(_c(0.9), tf.cast(t, tf.float32)),
                                          lr=lr, beta1=_c(0.9), beta2=_c(0.999),
                                          epsilon=_c(1e-7), grad=g)


def _ftrl_ref(var, g, s, lr, t):
    var, acc, lin = ref.ftrl_step(var, g, lr, s["_accumulators"], s["_linears"])
    return var, {"_accumulators": acc, "_linears": lin}


def _ftrl_raw(var, slots, g, lr, t):
    return tf.raw_ops.ResourceApplyFtrl(var=var.handle, accum=slots[0].handle,
                                        linear=slots[1].handle, grad=g, lr=lr, l1=_c(0.0),
                                        l2=_c(0.0), lr_power=_c(-0.5))


def _lion_ref(var, g, s, lr, t):
    var, m = ref.lion_step(var, g, lr, s["_momentums"], beta_1=_f32(0.9), beta_2=_f32(0.99))
    return var, {"_momentums": m}


def _lamb_ref(var, g, s, lr, t):
    var, m, v = ref.lamb_step(var, g, lr, s["_momentums"], s["_velocities"], t,
                              beta_1=_f32(0.9), beta_2=_f32(0.999), epsilon=_f32(1e-7))
    return var, {"_momentums": m, "_velocities": v}


def _nadam_ref(var, g, s, lr, t):
    u = 1.0
    for k in range(1, t + 1):
        u *= ref.nadam_u(k, _f32(0.9))
    var, m, v = ref.nadam_step(var, g, lr, s["_momentums"], s["_velocities"], t, u,
                               beta_1=_f32(0.9), beta_2=_f32(0.999), epsilon=_f32(1e-7))
    return var, {"_momentums": m, "_velocities": v}


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm("adam", fk.Adam, keras.optimizers.Adam, dict(learning_rate=1e-3), 28,
                  ["_momentums", "_velocities"], _adam_ref, _adam_raw),
        Algorithm("sgd", fk.SGD, keras.optimizers.SGD, dict(learning_rate=1e-2, momentum=0.9),
                  20, ["momentums"], _sgd_ref, _sgd_raw),
        Algorithm("rmsprop", fk.RMSprop, keras.optimizers.RMSprop,
                  dict(learning_rate=1e-3, momentum=0.9), 28, ["_velocities", "_momentums"],
                  _rms_ref, _rms_raw),
        Algorithm("adagrad", fk.Adagrad, keras.optimizers.Adagrad,
                  dict(learning_rate=1e-2, epsilon=0.0), 20, ["_accumulators"], _adagrad_ref,
                  _adagrad_raw, notes="epsilon=0: TF's AdagradV2 adds it outside the sqrt"),
        Algorithm("adadelta", fk.Adadelta, keras.optimizers.Adadelta, dict(learning_rate=1.0),
                  28, ["_accumulated_grads", "_accumulated_delta_vars"], _adadelta_ref,
                  _adadelta_raw),
        Algorithm("adamax", fk.Adamax, keras.optimizers.Adamax, dict(learning_rate=1e-3), 28,
                  ["_m", "_u"], _adamax_ref, _adamax_raw),
        Algorithm("ftrl", fk.Ftrl, keras.optimizers.Ftrl, dict(learning_rate=1e-2), 28,
                  ["_accumulators", "_linears"], _ftrl_ref, _ftrl_raw),
        Algorithm("nadam", fk.Nadam, keras.optimizers.Nadam, dict(learning_rate=1e-3), 28,
                  ["_momentums", "_velocities"], _nadam_ref),
        Algorithm("lion", fk.Lion, keras.optimizers.Lion, dict(learning_rate=1e-4), 20,
                  ["_momentums"], _lion_ref),
        Algorithm("lamb", fk.Lamb, keras.optimizers.Lamb, dict(learning_rate=1e-3), 40,
                  ["_momentums", "_velocities"], _lamb_ref),
    ]
}
