"""The float64 reference of every rule: NumPy functions written from the
Keras 3 docs and source semantics (keras.optimizers.*), independent of the
kernels. The tests (tests/reference.py, tests/native_harness.py) and the
benchmark's correctness checks (fusedopt.bench) use this one module. It imports
NumPy only: no TensorFlow, no op library, so the GPU check runs it anywhere.

Each reference takes and returns float64 arrays; the tests round the stored
state to the variable's dtype after every step, as the kernels' storage does.

``RULES`` places each reference in the rule registry's terms (its slot and
scalar names, ``fusedopt._native.rules()``): :func:`apply_rule` calls a rule's
reference by those names, and :func:`rule_defaults` gives its default
hyperparameters (Keras' defaults: each reference's keyword defaults), which
``fusedopt.ops`` and the benchmark take from here. Each entry also holds what
the benchmark (``fusedopt.bench``) times of the rule and compares it with
(:class:`BenchCases`: its configurations, TensorFlow's and torch.optim's
implementations of it). This is the one Python table of the rules that is not
a class: the rest derives from the registry, this table and the optimizer
classes.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, NamedTuple

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


def _decay(var, lr, weight_decay):
    return var - var * weight_decay * lr if weight_decay else var


def adam_step(var, grad, lr, m, v, step, *, vhat=None, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
              weight_decay=0.0):
    """keras.optimizers.Adam / AdamW (amsgrad when vhat is given). Returns var, m, v, vhat."""
    var = _decay(var, lr, weight_decay)
    alpha = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    m = m + (grad - m) * (1 - beta_1)
    v = v + (grad * grad - v) * (1 - beta_2)
    denom_v = v
    if vhat is not None:
        vhat = np.maximum(vhat, v)
        denom_v = vhat
    return var - m * alpha / (np.sqrt(denom_v) + epsilon), m, v, vhat


# Nadam's schedule base as Keras' update_step uses it: `ops.cast(0.96, dtype)`
# goes through float32 (tf_keras' legacy Nadam: `tf.cast(0.96, dtype)`, alike).
NADAM_DECAY_BASE = float(np.float32(0.96))


def adam_keras_indexed_slices_step(var, grad, grad_sq, lr, m, v, step, *, beta_1=0.9,
                                   beta_2=0.999, epsilon=1e-7, weight_decay=0.0):
    """keras.optimizers.Adam on an IndexedSlices gradient: m sees the summed
    rows (``grad``, densified), v the sum of each row's squared duplicates
    (``grad_sq``: Keras squares the slices before they are summed). Returns
    var, m, v."""
    var = _decay(var, lr, weight_decay)
    m = m + (grad - m) * (1 - beta_1)
    v = v + (grad_sq - v) * (1 - beta_2)
    alpha = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    return var - m * alpha / (np.sqrt(v) + epsilon), m, v


def nadam_u(step, beta_1=0.9, schedule_decay=1.0):
    """u_t; schedule_decay 1 is Keras 3, 0.004 tf_keras' legacy Nadam."""
    return beta_1 * (1.0 - 0.5 * NADAM_DECAY_BASE ** (schedule_decay * step))


def nadam_u_product(step, beta_1=0.9, schedule_decay=1.0):
    """Keras' running product of u_t over steps 1..step (u_product after its
    update for this step)."""
    u = 1.0
    for k in range(1, int(step) + 1):
        u *= nadam_u(k, beta_1, schedule_decay)
    return u


def nadam_step(var, grad, lr, m, v, step, u_product, *, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
               weight_decay=0.0, schedule_decay=1.0):
    """keras.optimizers.Nadam; u_product includes this step's u_t."""
    var = _decay(var, lr, weight_decay)
    u_t = nadam_u(step, beta_1, schedule_decay)
    u_t1 = nadam_u(step + 1, beta_1, schedule_decay)
    u_product1 = u_product * u_t1
    m = m + (grad - m) * (1 - beta_1)
    v = v + (grad * grad - v) * (1 - beta_2)
    m_hat = u_t1 * m / (1 - u_product1) + (1 - u_t) * grad / (1 - u_product)
    v_hat = v / (1 - beta_2**step)
    return var - m_hat * lr / (np.sqrt(v_hat) + epsilon), m, v


def adamax_step(var, grad, lr, m, u, step, *, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                weight_decay=0.0):
    var = _decay(var, lr, weight_decay)
    m = m + (grad - m) * (1 - beta_1)
    u = np.maximum(beta_2 * u, np.abs(grad))
    return var - lr * m / ((1 - beta_1**step) * (u + epsilon)), m, u


def rmsprop_step(var, grad, lr, velocity, *, mom=None, avg=None, rho=0.9, momentum=0.0,
                 epsilon=1e-7, weight_decay=0.0, epsilon_outside_sqrt=False):
    """keras.optimizers.RMSprop. Returns var, velocity, mom, avg.

    epsilon_outside_sqrt: lr * g / (sqrt(denom) + epsilon), tf_keras' legacy
    RMSprop without momentum.
    """
    eps_in, eps_out = (0.0, epsilon) if epsilon_outside_sqrt else (epsilon, 0.0)
    var = _decay(var, lr, weight_decay)
    velocity = rho * velocity + (1 - rho) * grad * grad
    if avg is not None:
        avg = rho * avg + (1 - rho) * grad
        denom = velocity - avg * avg + eps_in
    else:
        denom = velocity + eps_in
    inc = lr * grad / (np.sqrt(denom) + eps_out)
    if mom is not None:
        mom = momentum * mom + inc
        return var - mom, velocity, mom, avg
    return var - inc, velocity, mom, avg


def adagrad_step(var, grad, lr, acc, *, epsilon=1e-7, weight_decay=0.0,
                 epsilon_outside_sqrt=False):
    """keras.optimizers.Adagrad; epsilon_outside_sqrt: tf_keras' legacy Adagrad."""
    var = _decay(var, lr, weight_decay)
    acc = acc + grad * grad
    if epsilon_outside_sqrt:
        return var - lr * grad / (np.sqrt(acc) + epsilon), acc
    return var - lr * grad / np.sqrt(acc + epsilon), acc


def adadelta_step(var, grad, lr, ag, adv, *, rho=0.95, epsilon=1e-7, weight_decay=0.0):
    var = _decay(var, lr, weight_decay)
    ag = rho * ag + (1 - rho) * grad * grad
    delta = -np.sqrt(adv + epsilon) * grad / np.sqrt(ag + epsilon)
    adv = rho * adv + (1 - rho) * delta * delta
    return var + lr * delta, ag, adv


def ftrl_step(var, grad, lr, acc, linear, *, learning_rate_power=-0.5, l1=0.0, l2=0.0,
              l2_shrinkage=0.0, beta=0.0, weight_decay=0.0):
    """keras.optimizers.Ftrl."""
    var = _decay(var, lr, weight_decay)
    p = -learning_rate_power
    l2_reg = l2 + beta / (2.0 * lr)
    g_s = grad + 2 * l2_shrinkage * var
    new_acc = acc + grad * grad
    linear = linear + g_s - (new_acc**p - acc**p) / lr * var
    quadratic = new_acc**p / lr + 2 * l2_reg
    var = (np.clip(linear, -l1, l1) - linear) / quadratic
    return var, new_acc, linear


def lion_step(var, grad, lr, m, *, beta_1=0.9, beta_2=0.99, weight_decay=0.0):
    var = _decay(var, lr, weight_decay)
    var = var - lr * np.sign(m * beta_1 + grad * (1 - beta_1))
    m = m * beta_2 + grad * (1 - beta_2)
    return var, m


def schedule_free_adamw_step(var, grad, lr, z, v, step, *, beta_1=0.9, beta_2=0.999,
                             epsilon=1e-8, warmup_steps=0, weight_decay=0.0):
    """keras.optimizers.ScheduleFreeAdamW (Defazio et al., 2024, "The Road Less
    Scheduled", in Keras' form): z is the base iterate, var the interpolated
    point y, x the average, recovered from y and z. As Keras' update_step,
    x is recovered from the updated z."""
    var = _decay(var, lr, weight_decay)
    if warmup_steps > 0:
        lr = lr * min(step / warmup_steps, 1.0)
    v = v + (grad * grad - v) * (1 - beta_2)
    z = z - lr * grad / (np.sqrt(v / (1 - beta_2**step)) + epsilon)
    x = (var - (1 - beta_1) * z) / beta_1
    w = 1.0 / step
    x = (1 - w) * x + w * z
    return (1 - beta_1) * z + beta_1 * x, z, v


def lamb_step(var, grad, lr, m, v, step, *, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
              weight_decay=0.0):
    """keras.optimizers.Lamb: per-tensor trust ratio."""
    var = _decay(var, lr, weight_decay)
    m = m + (grad - m) * (1 - beta_1)
    v = v + (grad * grad - v) * (1 - beta_2)
    u = (m / (1 - beta_1**step)) / (np.sqrt(v / (1 - beta_2**step)) + epsilon)
    w_norm = np.sqrt(np.sum(var * var))
    u_norm = np.sqrt(np.sum(u * u))
    ratio = w_norm / u_norm if (w_norm > 0 and u_norm > 0) else 1.0
    return var - ratio * lr * u, m, v


def muon_momentum_step(m, grad, *, momentum=0.95):
    """keras.optimizers.Muon's momentum: m += g + m * (momentum - 1), i.e.
    m = momentum * m + g (Jordan et al., 2024, "Muon")."""
    return m + (grad + m * (momentum - 1.0))


def muon_update_step(var, update, lr, *, scale, rms_rate=0.2, weight_decay=0.0):
    """Muon's update half: decay, then var -= lr * update * scale * rms_rate
    (Keras' lr_adjust; Moonlight's sqrt(max(rows, cols)) * rms_rate)."""
    var = _decay(var, lr, weight_decay)
    return var - lr * update * scale * rms_rate


def newton_schulz5(x, steps=5, a=3.4445, b=-4.7750, c=2.0315, eps=1e-7):
    """Muon's quintic Newton-Schulz orthogonalisation of a matrix (Keras'
    zeropower_via_newtonschulz5) in float64."""
    x = np.asarray(x, np.float64)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = np.swapaxes(x, -1, -2)
    x = x / (np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True)) + eps)
    for _ in range(steps):
        xa = x @ np.swapaxes(x, -1, -2)
        x = a * x + (b * xa + c * xa @ xa) @ x
    return np.swapaxes(x, -1, -2) if transposed else x


def muon_step(var, grad, lr, m, *, momentum=0.95, nesterov=True, ns_steps=5, rms_rate=0.2,
              weight_decay=0.0, scale=None):
    """One step of keras.optimizers.Muon for a matrix on its Muon path;
    ``scale`` defaults to sqrt(max(rows, cols)) (Keras rounds it to float32)."""
    m = muon_momentum_step(m, grad, momentum=momentum)
    g = grad + momentum * m if nesterov else m
    u = newton_schulz5(g, ns_steps)
    if rms_rate is None:
        scale, rms_rate = 1.0, 1.0
    elif scale is None:
        scale = float(np.sqrt(max(var.shape[0], var.shape[1])))
    return muon_update_step(var, u, lr, scale=scale, rms_rate=rms_rate,
                            weight_decay=weight_decay), m


def adafactor_step(var, grad, lr, r, c, v, step, *, beta_2_decay=-0.8, epsilon_1=1e-30,
                   epsilon_2=1e-3, clip_threshold=1.0, weight_decay=0.0):
    """keras.optimizers.Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive
    Learning Rates with Sublinear Memory Cost"): factored second moments for
    rank >= 2 (over the last two axes), relative step size, update clipping.
    Returns var, r, c, v (r and c unchanged for rank < 2)."""
    var = _decay(np.asarray(var, np.float64), lr, weight_decay)
    t = float(step)
    rho = min(lr, 1.0 / np.sqrt(t))
    alpha = max(epsilon_2, float(np.sqrt(np.mean(var * var)))) * rho
    q = grad * grad + epsilon_1
    beta = 1.0 - t ** beta_2_decay
    if var.ndim >= 2:
        r = beta * r + (1 - beta) * q.mean(axis=-1)
        c = beta * c + (1 - beta) * q.mean(axis=-2)
        v = (r / r.mean(axis=-1, keepdims=True))[..., None] * c[..., None, :]
    else:
        v = beta * v + (1 - beta) * q
    u = grad / np.sqrt(v)
    u = u / max(1.0, float(np.sqrt(np.mean(u * u))) / clip_threshold)
    return var - alpha * u, r, c, v


# ---- The rules in the registry's terms ------------------------------------------


class TrainingOp(NamedTuple):
    """A TensorFlow training op computing a rule over the slots it names:
    ``tf.raw_ops.<op>(var=..., grad=..., ...)`` with each of TF's arguments
    from a registry slot, a registry scalar, or a scalar raised to the step."""

    op: str
    slots: Mapping[str, str]  # TF's argument -> registry slot
    scalars: Mapping[str, str]  # TF's argument -> registry scalar
    powers: Mapping[str, str] = {}  # TF's argument -> registry scalar ** step

    def call(self, raw_ops: Any, var: Any, grad: Any, slots: Mapping[str, Any],
             scalar: Callable[[str], Any], power: Callable[[str], Any]) -> Any:
        """The op from ``raw_ops`` (``tf.raw_ops``) on the resource handles
        ``var`` and ``slots`` (by registry name); ``scalar(name)`` and
        ``power(name)`` make the scalar tensors (a caller's own way)."""
        return getattr(raw_ops, self.op)(
            var=var, grad=grad, **{a: slots[s] for a, s in self.slots.items()},
            **{a: power(s) for a, s in self.powers.items()},
            **{a: scalar(s) for a, s in self.scalars.items()})


class TorchOptim(NamedTuple):
    """torch.optim's implementation of a configuration: ``torch.optim.<cls>(
    params, **{its argument: the configuration's scalar (a tuple of names: a
    tuple of them)})``."""

    cls: str
    args: Mapping[str, str | tuple[str, ...]]


class LowBitOptim(NamedTuple):
    """A third-party optimizer with 8-bit state (a torch.optim-style class)
    computing a configuration: ``<module>.<cls>(params, **{its argument: the
    configuration's scalar, as TorchOptim.args}, **fixed)``, the first of
    ``modules`` that imports and has ``cls`` (libraries move classes between
    versions). ``library`` is the distribution's name, for "not installed"."""

    library: str
    modules: tuple[str, ...]
    cls: str
    args: Mapping[str, str | tuple[str, ...]]
    fixed: Mapping[str, Any] = {}


class Case(NamedTuple):
    """A configuration the benchmark times: the op's hyperparameters by
    registry name (``lr`` included; the others default to the reference's)
    and the registry slots it uses, in op order."""

    label: str  # its row's name
    hparams: Mapping[str, float]
    slots: tuple[str, ...]
    torch: TorchOptim | None = None  # torch.optim's implementation, where it has one
    # The gpu suite's low-precision state rows (the featured rule's first gpu
    # case): third-party optimizers with 8-bit state of the same configuration.
    low_bit: tuple[LowBitOptim, ...] = ()


class BenchCases(NamedTuple):
    """What the benchmark (``fusedopt.bench``) times of a rule and compares it
    with: its choices, none of which the rule's math implies. A suite that has
    no choice for a rule skips it; everything else a suite derives (slots and
    step from the registry, classes from the optimizers' FusedCalls)."""

    # The table suites (sizes, many, models, sparse, fit): the Keras class's
    # constructor arguments (every contender computes the same rule with them;
    # None: not timed there), and a note on them for the output.
    keras: Mapping[str, Any] | None = None
    notes: str = ""
    # The rule of the focused suites (sparse, fit, multi, keras-apply) and the
    # table suites' default --algorithms: exactly one rule.
    featured: bool = False
    # TensorFlow's training ops of the rule (the "tf.raw_ops" contenders), each
    # for the configurations that use exactly its slots.
    training_ops: tuple[TrainingOp, ...] = ()
    # The dense suite's rows (fusedopt.ops' arguments besides the variable,
    # gradient, slots and step).
    dense: tuple[Case, ...] = ()
    # The gpu suite's rows (fusedopt._native.apply's hyperparameters, as
    # given), each named by its label (its --algorithms name).
    gpu: tuple[Case, ...] = ()
    # The ps suite: the tf_keras class's constructor arguments (None: not timed there).
    ps: Mapping[str, Any] | None = None


class Reference(NamedTuple):
    """A registry rule's float64 reference (Note [rule references]).

    ``step(var, grad, ...)`` takes the op's variable and gradient first and
    everything else by keyword: ``lr`` and the other scalars by their registry
    names, ``step`` when the rule takes it, and each slot as its argument in
    ``slots``; it returns the new variable, then each slot in ``slots``' order
    (a rule without slots: the variable alone).
    """

    step: Callable[..., Any]
    # The registry's slots, in its order -> the reference's argument for each.
    slots: Mapping[str, str] = {}
    # Scalars derived from the step and the other scalars where a caller
    # gives none: name -> function(step, **the scalars it names).
    derived: Mapping[str, Callable[..., float]] = {}
    # The update scales by norms over each whole tensor: the kernels make a
    # second pass over it (var and every slot read again), and a check must
    # compare whole tensors, not samples.
    whole_tensor: bool = False
    # The built-in Keras optimizer on an IndexedSlices gradient where that is
    # not the update of the densified gradient: ``step``'s convention with
    # ``grad_sq`` (the sum of each row's squared duplicates) after ``grad``.
    keras_indexed_slices: Callable[..., Any] | None = None
    # The slots that hold positive values (second moments, accumulators): a
    # random state draws them positive.
    positive: tuple[str, ...] = ()
    bench: BenchCases = BenchCases()


# Note [rule references]: one entry per registry rule, the Python side's list
# of them (fusedopt.ops makes a function for each, and checks the op library
# has exactly these rules; the benchmark's tables are keyed by it). A rule's
# default hyperparameters are its reference's keyword defaults, Keras' own.
_ADAM_SCALARS = {"lr": "lr", "beta1": "beta_1", "beta2": "beta_2", "epsilon": "epsilon"}
_ADAM_POWERS = {"beta1_power": "beta_1", "beta2_power": "beta_2"}
_TORCH_ADAM = {"lr": "lr", "betas": ("beta_1", "beta_2"), "eps": "epsilon"}
RULES: dict[str, Reference] = {
    "sgd": Reference(
        sgd_step, {"momenta": "m"},
        bench=BenchCases(
            keras=dict(learning_rate=1e-2, momentum=0.9),
            training_ops=(TrainingOp("ResourceApplyKerasMomentum", {"accum": "momenta"},
                                     {"lr": "lr", "momentum": "momentum"}),),
            dense=(Case("SGD momentum", dict(lr=0.01, momentum=0.9), ("momenta",)),),
            gpu=(Case("sgd_momentum", dict(lr=1e-2, momentum=0.9), ("momenta",),
                      TorchOptim("SGD", {"lr": "lr", "momentum": "momentum"})),))),
    "adam": Reference(
        adam_step, {"m": "m", "v": "v", "vhat": "vhat"},
        keras_indexed_slices=adam_keras_indexed_slices_step, positive=("v", "vhat"),
        bench=BenchCases(
            keras=dict(learning_rate=1e-3), featured=True,
            training_ops=(
                TrainingOp("ResourceApplyAdam", {"m": "m", "v": "v"}, _ADAM_SCALARS,
                           _ADAM_POWERS),
                TrainingOp("ResourceApplyAdamWithAmsgrad", {"m": "m", "v": "v", "vhat": "vhat"},
                           _ADAM_SCALARS, _ADAM_POWERS)),
            dense=(Case("Adam", dict(lr=1e-3), ("m", "v")),
                   Case("AMSGrad", dict(lr=1e-3), ("m", "v", "vhat"))),
            gpu=(Case("adam", dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8), ("m", "v"),
                      TorchOptim("Adam", _TORCH_ADAM),
                      low_bit=(LowBitOptim("bitsandbytes", ("bitsandbytes.optim",), "Adam8bit",
                                           _TORCH_ADAM, {"weight_decay": 0.0}),
                               LowBitOptim("torchao", ("torchao.optim",
                                                       "torchao.prototype.low_bit_optim"),
                                           "AdamW8bit", _TORCH_ADAM, {"weight_decay": 0.0}))),
                 Case("adamw", dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                                    weight_decay=0.01), ("m", "v"),
                      TorchOptim("AdamW", dict(_TORCH_ADAM, weight_decay="weight_decay")))),
            ps=dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7))),
    "nadam": Reference(
        nadam_step, {"m": "m", "v": "v"}, derived={"u_product": nadam_u_product},
        positive=("v",),
        bench=BenchCases(
            keras=dict(learning_rate=1e-3),
            dense=(Case("Nadam", dict(lr=1e-3, u_product=0.3), ("m", "v")),))),
    "adamax": Reference(
        adamax_step, {"m": "m", "u": "u"}, positive=("u",),
        bench=BenchCases(
            keras=dict(learning_rate=1e-3),
            training_ops=(TrainingOp("ResourceApplyAdaMax", {"m": "m", "v": "u"}, _ADAM_SCALARS,
                                     {"beta1_power": "beta_1"}),),
            dense=(Case("Adamax", dict(lr=1e-3), ("m", "u")),))),
    "rmsprop": Reference(
        rmsprop_step, {"velocity": "velocity", "momenta": "mom", "average_gradient": "avg"},
        positive=("velocity",),
        bench=BenchCases(
            keras=dict(learning_rate=1e-3, momentum=0.9),
            training_ops=(TrainingOp("ResourceApplyRMSProp", {"ms": "velocity", "mom": "momenta"},
                                     {"lr": "lr", "rho": "rho", "momentum": "momentum",
                                      "epsilon": "epsilon"}),),
            dense=(Case("RMSprop momentum", dict(lr=1e-3, momentum=0.9),
                        ("velocity", "momenta")),),
            gpu=(Case("rmsprop", dict(lr=1e-3, rho=0.9, momentum=0.0, epsilon=1e-7),
                      ("velocity",),
                      TorchOptim("RMSprop", {"lr": "lr", "alpha": "rho", "eps": "epsilon"})),))),
    "adagrad": Reference(
        adagrad_step, {"accumulator": "acc"}, positive=("accumulator",),
        bench=BenchCases(
            keras=dict(learning_rate=1e-2, epsilon=0.0),
            notes="epsilon=0: TF's AdagradV2 adds it outside the sqrt",
            training_ops=(TrainingOp("ResourceApplyAdagradV2", {"accum": "accumulator"},
                                     {"lr": "lr", "epsilon": "epsilon"}),),
            dense=(Case("Adagrad", dict(lr=1e-3, epsilon=0.0), ("accumulator",)),),
            ps=dict(learning_rate=0.05, initial_accumulator_value=0.1, epsilon=1e-7))),
    "adadelta": Reference(
        adadelta_step, {"accumulated_grad": "ag", "accumulated_delta_var": "adv"},
        positive=("accumulated_grad", "accumulated_delta_var"),
        bench=BenchCases(
            keras=dict(learning_rate=1.0),
            training_ops=(TrainingOp("ResourceApplyAdadelta",
                                     {"accum": "accumulated_grad",
                                      "accum_update": "accumulated_delta_var"},
                                     {"lr": "lr", "rho": "rho", "epsilon": "epsilon"}),),
            dense=(Case("Adadelta", dict(lr=1.0),
                        ("accumulated_grad", "accumulated_delta_var")),))),
    "ftrl": Reference(
        ftrl_step, {"accumulator": "acc", "linear": "linear"}, positive=("accumulator",),
        bench=BenchCases(
            keras=dict(learning_rate=1e-2),
            training_ops=(TrainingOp("ResourceApplyFtrl",
                                     {"accum": "accumulator", "linear": "linear"},
                                     {"lr": "lr", "l1": "l1", "l2": "l2",
                                      "lr_power": "learning_rate_power"}),),
            dense=(Case("Ftrl", dict(lr=1e-3, l1=0.01, l2=0.01), ("accumulator", "linear")),))),
    "lion": Reference(
        lion_step, {"m": "m"},
        bench=BenchCases(
            keras=dict(learning_rate=1e-4),
            dense=(Case("Lion", dict(lr=1e-4), ("m",)),),
            gpu=(Case("lion", dict(lr=1e-4, beta_1=0.9, beta_2=0.99), ("m",)),))),
    "lamb": Reference(
        lamb_step, {"m": "m", "v": "v"}, whole_tensor=True, positive=("v",),
        bench=BenchCases(
            keras=dict(learning_rate=1e-3),
            dense=(Case("LAMB (2 passes)", dict(lr=1e-3), ("m", "v")),),
            gpu=(Case("lamb", dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-6),
                      ("m", "v")),))),
    "schedule_free_adamw": Reference(schedule_free_adamw_step,
                                     {"momentum": "z", "velocity": "v"}, positive=("velocity",)),
    "muon_momentum": Reference(muon_momentum_step),
    "muon": Reference(muon_update_step),
}


def rule_defaults(rule: str) -> dict[str, Any]:
    """The default of each of ``rule``'s keyword hyperparameters and forms
    (e.g. ``nesterov``), in the reference's order; its slots left out."""
    slot_args = set(RULES[rule].slots.values())
    return {p.name: p.default for p in inspect.signature(RULES[rule].step).parameters.values()
            if p.default is not inspect.Parameter.empty and p.name not in slot_args}


def apply_rule(rule: str, var, grad, slots: Mapping[str, Any] | None = None, *, step=None,
               **scalars) -> tuple[Any, dict[str, Any]]:
    """One step of ``rule``'s reference in the registry's terms: ``slots`` by
    registry slot name (an optional slot may be left out), ``scalars`` by
    registry scalar name (missing ones take their defaults or are derived);
    ``step`` reaches the rules that take it. Returns ``(var, {slot: array})``
    for every slot of the rule (None for an optional slot not given)."""
    return _apply(rule, RULES[rule].step, (var, grad), slots, step, scalars)


def apply_keras_indexed_slices(rule: str, var, grad, grad_sq, slots: Mapping[str, Any] | None = None,
                               *, step=None, **scalars) -> tuple[Any, dict[str, Any]]:
    """:func:`apply_rule` for the built-in Keras optimizer's update of an
    IndexedSlices gradient (``grad``: its rows summed and densified;
    ``grad_sq``: each row's squared duplicates summed, densified)."""
    fn = RULES[rule].keras_indexed_slices
    if fn is None:
        raise NotImplementedError(f"fusedopt.reference has no reference of Keras' {rule} on "
                                  f"IndexedSlices gradients")
    return _apply(rule, fn, (var, grad, grad_sq), slots, step, scalars)


def _apply(rule, fn, args, slots, step, scalars):
    ref = RULES[rule]
    slots = dict(slots or {})
    unknown = set(slots) - set(ref.slots)
    if unknown:
        raise ValueError(f"{rule} has no slot(s) {sorted(unknown)}; its slots: {list(ref.slots)}")
    kwargs = dict(scalars)
    for name, derive in ref.derived.items():
        if name not in kwargs:
            wanted = inspect.signature(derive).parameters
            kwargs[name] = derive(step, **{k: v for k, v in scalars.items() if k in wanted})
    if step is not None and "step" in inspect.signature(ref.step).parameters:
        kwargs["step"] = step
    kwargs.update({ref.slots[name]: value for name, value in slots.items()})
    out = fn(*args, **kwargs)
    out = out if isinstance(out, tuple) else (out,)
    return out[0], dict(zip(ref.slots, out[1:]))
