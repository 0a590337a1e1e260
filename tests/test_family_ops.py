"""Every fused rule against its float64 reference, tf.raw_ops where TF has the
same rule, and bad input (InvalidArgumentError, nothing written)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import tensorflow as tf

import fusedopt.ops as fops
import reference as ref
from conftest import DTYPES, SHAPES, assert_close, np_dtype, random_array, rounded, tf_dtype

STEPS = 10


def pos(rng, shape, dtype, base=0.1):
    """Positive slot values (accumulators, second moments)."""
    return rounded(base + np.abs(rng.standard_normal(shape)), dtype)


def small(rng, shape, dtype):
    return random_array(rng, shape, dtype, 0.1)


@dataclass
class Case:
    name: str
    op: Callable
    slots: dict  # op keyword -> initializer(rng, shape, dtype)
    hp: dict  # hyperparameters (op keywords), Python floats
    ref: Callable  # (var, grad, lr, slots: dict, step, hp) -> (var, slots)
    step: bool = False
    extra: dict = field(default_factory=dict)  # per-step extra op inputs: name -> fn(step, hp)
    # Condition factor on the dtype tolerance, for rules whose math loses
    # digits in any finite precision (stated per case).
    cond: float = 1.0
    takes_lr: bool = True  # Muon's momentum op has no learning rate


def _adam_ref(var, g, lr, s, t, hp):
    var, m, v, vhat = ref.adam_step(var, g, lr, s["m"], s["v"], t, vhat=s.get("vhat"), **hp)
    out = {"m": m, "v": v}
    if vhat is not None:
        out["vhat"] = vhat
    return var, out


def _u_product(t, hp):
    p = 1.0
    for k in range(1, t + 1):
        p *= ref.nadam_u(k, hp["beta_1"], hp.get("schedule_decay", 1.0))
    return p


def _nadam_ref(var, g, lr, s, t, hp):
    var, m, v = ref.nadam_step(var, g, lr, s["m"], s["v"], t, _u_product(t, hp), **hp)
    return var, {"m": m, "v": v}


def _rms_ref(var, g, lr, s, t, hp):
    var, vel, mom, avg = ref.rmsprop_step(
        var, g, lr, s["velocity"], mom=s.get("momenta"), avg=s.get("average_gradient"), **hp
    )
    out = {"velocity": vel}
    if mom is not None:
        out["momenta"] = mom
    if avg is not None:
        out["average_gradient"] = avg
    return var, out


def _lion_ref(var, g, lr, s, t, hp, dtype="float64"):
    # Note: sign() is discontinuous at 0, so a 1-ulp difference in m (float64
    # rounded once vs float32 rounded twice) can flip an update by 2 * lr. The
    # Lion reference therefore evaluates Keras' formula in the kernel's opmath
    # (float32 below float64) with the kernel's operation order.
    mdt = np.float64 if dtype == "float64" else np.float32
    b1, b2, lr_m = mdt(hp["beta_1"]), mdt(hp["beta_2"]), mdt(lr)
    v, m, gm = var.astype(mdt), s["m"].astype(mdt), g.astype(mdt)
    if hp.get("weight_decay"):
        v = v - v * mdt(hp["weight_decay"] * lr)
    u = m * b1 + gm * mdt(1.0 - hp["beta_1"])
    v = v - lr_m * np.sign(u)
    m = m * b2 + gm * mdt(1.0 - hp["beta_2"])
    return v.astype(np.float64), {"m": m.astype(np.float64)}


CASES = [
    Case("adam", fops.apply_adam, {"m": small, "v": pos}, dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7),
         _adam_ref, step=True),
    Case("adamw", fops.apply_adam, {"m": small, "v": pos},
         dict(beta_1=0.85, beta_2=0.99, epsilon=1e-6, weight_decay=0.004), _adam_ref, step=True),
    Case("amsgrad", fops.apply_adam, {"m": small, "v": pos, "vhat": pos},
         dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7), _adam_ref, step=True),
    Case("nadam", fops.apply_nadam, {"m": small, "v": pos},
         dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7), _nadam_ref, step=True,
         extra={"u_product": _u_product}),
    # tf_keras' legacy Nadam: u_t = beta_1 * (1 - 0.5 * 0.96^(0.004 t)).
    Case("nadam_schedule_decay", fops.apply_nadam, {"m": small, "v": pos},
         dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7, schedule_decay=0.004), _nadam_ref,
         step=True, extra={"u_product": _u_product}),
    Case("adamax", fops.apply_adamax, {"m": small, "u": pos},
         dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7),
         lambda var, g, lr, s, t, hp: (lambda r: (r[0], {"m": r[1], "u": r[2]}))(
             ref.adamax_step(var, g, lr, s["m"], s["u"], t, **hp)), step=True),
    Case("rmsprop", fops.apply_rmsprop, {"velocity": pos}, dict(rho=0.9, epsilon=1e-7), _rms_ref),
    Case("rmsprop_momentum", fops.apply_rmsprop, {"velocity": pos, "momenta": small},
         dict(rho=0.8, momentum=0.9, epsilon=1e-7), _rms_ref),
    Case("rmsprop_centered", fops.apply_rmsprop,
         {"velocity": lambda r, s, d: pos(r, s, d, 1.0), "average_gradient": small},
         dict(rho=0.9, epsilon=1e-7), _rms_ref),
    Case("rmsprop_centered_momentum", fops.apply_rmsprop,
         {"velocity": lambda r, s, d: pos(r, s, d, 1.0), "momenta": small, "average_gradient": small},
         dict(rho=0.9, momentum=0.5, epsilon=1e-7), _rms_ref),
    # tf_keras' legacy forms, epsilon outside the square root (an epsilon large
    # enough that the two forms differ far beyond the tolerance).
    Case("rmsprop_eps_outside", fops.apply_rmsprop, {"velocity": pos},
         dict(rho=0.9, epsilon=0.05, epsilon_outside_sqrt=True), _rms_ref),
    Case("rmsprop_centered_eps_outside", fops.apply_rmsprop,
         {"velocity": lambda r, s, d: pos(r, s, d, 1.0), "average_gradient": small},
         dict(rho=0.9, epsilon=0.05, epsilon_outside_sqrt=True), _rms_ref),
    Case("adagrad_eps_outside", fops.apply_adagrad, {"accumulator": pos},
         dict(epsilon=0.05, epsilon_outside_sqrt=True),
         lambda var, g, lr, s, t, hp: (lambda r: (r[0], {"accumulator": r[1]}))(
             ref.adagrad_step(var, g, lr, s["accumulator"], **hp))),
    Case("adagrad", fops.apply_adagrad, {"accumulator": pos}, dict(epsilon=1e-7),
         lambda var, g, lr, s, t, hp: (lambda r: (r[0], {"accumulator": r[1]}))(
             ref.adagrad_step(var, g, lr, s["accumulator"], **hp))),
    Case("adadelta", fops.apply_adadelta,
         {"accumulated_grad": pos, "accumulated_delta_var": pos}, dict(rho=0.95, epsilon=1e-7),
         lambda var, g, lr, s, t, hp: (lambda r: (
             r[0], {"accumulated_grad": r[1], "accumulated_delta_var": r[2]}))(
             ref.adadelta_step(var, g, lr, s["accumulated_grad"], s["accumulated_delta_var"], **hp))),
    Case("ftrl", fops.apply_ftrl, {"accumulator": pos, "linear": random_array},
         dict(learning_rate_power=-0.5, l1=0.01, l2=0.02, l2_shrinkage=0.03, beta=0.1),
         lambda var, g, lr, s, t, hp: (lambda r: (r[0], {"accumulator": r[1], "linear": r[2]}))(
             ref.ftrl_step(var, g, lr, s["accumulator"], s["linear"], **hp)),
         # new_acc^p - acc^p cancels (g^2 << acc), then is divided by lr: a
         # float32 kernel (Keras' and TF's alike) keeps ~5 digits of it.
         cond=30.0),
    Case("ftrl_power", fops.apply_ftrl, {"accumulator": pos, "linear": random_array},
         dict(learning_rate_power=-0.7, l1=0.05, l2=0.0),
         lambda var, g, lr, s, t, hp: (lambda r: (r[0], {"accumulator": r[1], "linear": r[2]}))(
             ref.ftrl_step(var, g, lr, s["accumulator"], s["linear"], **hp)),
         cond=30.0),
    Case("lion", fops.apply_lion, {"m": small}, dict(beta_1=0.9, beta_2=0.99), _lion_ref),
    Case("lamb", fops.apply_lamb, {"m": small, "v": pos},
         dict(beta_1=0.9, beta_2=0.999, epsilon=1e-6),
         lambda var, g, lr, s, t, hp: (lambda r: (r[0], {"m": r[1], "v": r[2]}))(
             ref.lamb_step(var, g, lr, s["m"], s["v"], t, **hp)), step=True),
    Case("schedule_free_adamw", fops.apply_schedule_free_adamw,
         {"momentum": random_array, "velocity": pos},
         dict(beta_1=0.9, beta_2=0.999, epsilon=1e-8, warmup_steps=4.0),
         lambda var, g, lr, s, t, hp: (lambda r: (r[0], {"momentum": r[1], "velocity": r[2]}))(
             ref.schedule_free_adamw_step(var, g, lr, s["momentum"], s["velocity"], t, **hp)),
         step=True),
    # Muon's elementwise halves (its Newton-Schulz iterations are TF matmuls).
    # The momentum op takes no learning rate and no weight decay.
    Case("muon_momentum",
         lambda vs, gs, lr, weight_decay=0.0, **kw: fops.apply_muon_momentum(vs, gs, **kw),
         {}, dict(momentum=0.95),
         lambda var, g, lr, s, t, hp: (ref.muon_momentum_step(var, g, momentum=hp["momentum"]),
                                       {}), takes_lr=False),
    Case("muon", fops.apply_muon, {}, dict(scale=fops.muon_scale((53, 17)), rms_rate=0.2),
         lambda var, g, lr, s, t, hp: (ref.muon_update_step(var, g, lr, **hp), {})),
]
CASE_IDS = [c.name for c in CASES]


def _hp_as_kernel_sees(hp: dict, dtype: str) -> dict:
    """The op rounds hyperparameters the way Keras does (through float32 where
    Keras casts a Python float); the cases use float32-representable values
    (run_case), on which every such rounding is exact, so the float64
    reference sees the same numbers."""
    return dict(hp)


def _float32_values(hp: dict) -> dict:
    return {k: float(np.float32(v)) if isinstance(v, float) else v for k, v in hp.items()}


def run_case(case: Case, dtype: str, shapes, rng, weight_decay: float, use_function: bool,
             steps: int = STEPS):
    """Runs the fused op and the reference side by side; returns both final states."""
    tdt, npdt = tf_dtype(dtype), np_dtype(dtype)
    hp = dict(case.hp)
    if weight_decay:
        hp["weight_decay"] = weight_decay
    hp = _float32_values(hp)
    init = [random_array(rng, s, dtype) for s in shapes]
    slot_init = {k: [f(rng, s, dtype) for s in shapes] for k, f in case.slots.items()}
    grads = [[random_array(rng, s, dtype) for s in shapes] for _ in range(steps)]
    lr_dtype = np.float64 if dtype == "float64" else np.float32
    lrs = [float(lr_dtype(0.01 / (1 + 0.2 * k))) for k in range(steps)]

    variables = [tf.Variable(x.astype(npdt), dtype=tdt) for x in init]
    slot_vars = {k: [tf.Variable(x.astype(npdt), dtype=tdt) for x in xs] for k, xs in slot_init.items()}

    def step_fn(gs, lr, t, extra):
        kwargs = dict(hp, **slot_vars, **extra)
        if case.step:
            kwargs["step"] = t
        case.op(variables, gs, lr, **kwargs)

    if use_function:
        step_fn = tf.function(step_fn)
    sdt = tf.float64 if dtype == "float64" else tf.float32
    for k in range(steps):
        t = k + 1
        extra = {name: tf.constant(f(t, hp), sdt) for name, f in case.extra.items()}
        step_fn([tf.constant(g.astype(npdt), tdt) for g in grads[k]], tf.constant(lrs[k], sdt),
                tf.constant(t, tf.int64), extra)

    khp = _hp_as_kernel_sees(hp, dtype)
    expected = []
    for i in range(len(shapes)):
        v = init[i]
        s = {name: xs[i] for name, xs in slot_init.items()}
        for k in range(steps):
            if case.ref is _lion_ref:
                v, s = _lion_ref(v, grads[k][i], lrs[k], s, k + 1, khp, dtype)
            else:
                v, s = case.ref(v, grads[k][i], lrs[k], s, k + 1, khp)
            v = rounded(v, dtype)
            s = {name: rounded(x, dtype) for name, x in s.items()}
        expected.append((v, s))
    return variables, slot_vars, expected


@pytest.mark.parametrize("weight_decay", [0.0, 0.01], ids=["nodecay", "decay"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference(rng, case, dtype, weight_decay):
    variables, slot_vars, expected = run_case(case, dtype, SHAPES, rng, weight_decay, False)
    for i, shape in enumerate(SHAPES):
        v, s = expected[i]
        assert_close(variables[i].numpy().astype(np.float64), v, dtype, f"var {shape}", case.cond)
        for name, x in s.items():
            assert_close(slot_vars[name][i].numpy().astype(np.float64), x, dtype, f"{name} {shape}",
                         case.cond)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_in_tf_function_matches_reference(rng, case):
    shapes = [(3, 5, 7), (1,), ()]
    variables, slot_vars, expected = run_case(case, "float32", shapes, rng, 0.01, True)
    for i, shape in enumerate(shapes):
        v, s = expected[i]
        assert_close(variables[i].numpy(), v, "float32", f"var {shape}", case.cond)
        for name, x in s.items():
            assert_close(slot_vars[name][i].numpy(), x, "float32", f"{name} {shape}", case.cond)


# --- the same rule in tf.raw_ops -------------------------------------------------


def _vars(x, n, dtype):
    return [tf.Variable(x.astype(dtype)) for _ in range(n)]


RAW_CASES = ["adam", "amsgrad", "rmsprop", "rmsprop_centered", "adagrad", "adadelta", "adamax", "ftrl"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", RAW_CASES)
def test_matches_raw_ops(rng, name, dtype):
    shape = (4097,)
    c = lambda x: tf.constant(x, dtype)  # noqa: E731
    var0 = random_array(rng, shape, dtype)
    a, b = tf.Variable(var0.astype(dtype)), tf.Variable(var0.astype(dtype))
    # Slot 0 (second moments) well above slot 2's square (centered RMSprop's
    # average gradient), so velocity - avg^2 stays positive and well conditioned.
    inits = [pos(rng, shape, dtype, 2.0), pos(rng, shape, dtype),
             small(rng, shape, dtype) if name == "rmsprop_centered" else pos(rng, shape, dtype)]
    sa = [tf.Variable(x.astype(dtype)) for x in inits]
    sb = [tf.Variable(x.astype(dtype)) for x in inits]
    # float32-representable betas: the fused op rounds them through float32
    # as Keras does (`ops.cast(beta, dtype)`), TF's raw ops take them as given.
    lr, b1, b2, eps = 0.01, float(np.float32(0.9)), float(np.float32(0.999)), 1e-7
    for t in range(1, 13):
        g = c(random_array(rng, shape, dtype))
        if name in ("adam", "amsgrad"):
            fops.apply_adam([a], [g], lr, m=[sa[0]], v=[sa[1]], vhat=[sa[2]] if name == "amsgrad" else None,
                            step=t, beta_1=b1, beta_2=b2, epsilon=eps)
            args = dict(var=b.handle, m=sb[0].handle, v=sb[1].handle, beta1_power=c(b1**t),
                        beta2_power=c(b2**t), lr=c(lr), beta1=c(b1), beta2=c(b2), epsilon=c(eps), grad=g)
            if name == "amsgrad":
                tf.raw_ops.ResourceApplyAdamWithAmsgrad(vhat=sb[2].handle, **args)
            else:
                tf.raw_ops.ResourceApplyAdam(**args)
        elif name == "rmsprop":
            fops.apply_rmsprop([a], [g], lr, velocity=[sa[0]], momenta=[sa[1]], rho=0.9, momentum=0.8,
                               epsilon=eps)
            tf.raw_ops.ResourceApplyRMSProp(var=b.handle, ms=sb[0].handle, mom=sb[1].handle, lr=c(lr),
                                            rho=c(0.9), momentum=c(0.8), epsilon=c(eps), grad=g)
        elif name == "rmsprop_centered":
            fops.apply_rmsprop([a], [g], lr, velocity=[sa[0]], momenta=[sa[1]], average_gradient=[sa[2]],
                               rho=0.9, momentum=0.8, epsilon=eps)
            tf.raw_ops.ResourceApplyCenteredRMSProp(var=b.handle, mg=sb[2].handle, ms=sb[0].handle,
                                                    mom=sb[1].handle, lr=c(lr), rho=c(0.9),
                                                    momentum=c(0.8), epsilon=c(eps), grad=g)
        elif name == "adagrad":
            # TF's AdagradV2 adds epsilon outside the sqrt, Keras inside: equal at epsilon = 0.
            fops.apply_adagrad([a], [g], lr, accumulator=[sa[0]], epsilon=0.0)
            tf.raw_ops.ResourceApplyAdagradV2(var=b.handle, accum=sb[0].handle, lr=c(lr), epsilon=c(0.0),
                                              grad=g)
        elif name == "adadelta":
            fops.apply_adadelta([a], [g], 1.0, accumulated_grad=[sa[0]], accumulated_delta_var=[sa[1]],
                                rho=0.95, epsilon=eps)
            tf.raw_ops.ResourceApplyAdadelta(var=b.handle, accum=sb[0].handle, accum_update=sb[1].handle,
                                             lr=c(1.0), rho=c(0.95), epsilon=c(eps), grad=g)
        elif name == "adamax":
            fops.apply_adamax([a], [g], lr, m=[sa[0]], u=[sa[1]], step=t, beta_1=b1, beta_2=b2,
                              epsilon=eps)
            tf.raw_ops.ResourceApplyAdaMax(var=b.handle, m=sb[0].handle, v=sb[1].handle,
                                           beta1_power=c(b1**t), lr=c(lr), beta1=c(b1), beta2=c(b2),
                                           epsilon=c(eps), grad=g)
        elif name == "ftrl":
            fops.apply_ftrl([a], [g], lr, accumulator=[sa[0]], linear=[sa[1]], learning_rate_power=-0.5,
                            l1=0.01, l2=0.02, l2_shrinkage=0.03)
            tf.raw_ops.ResourceApplyFtrlV2(var=b.handle, accum=sb[0].handle, linear=sb[1].handle, grad=g,
                                           lr=c(lr), l1=c(0.01), l2=c(0.02), l2_shrinkage=c(0.03),
                                           lr_power=c(-0.5))
    tol = "float32" if dtype == "float32" else "float64"
    rtol = {"float32": 1e-5, "float64": 1e-12}[tol]  # different (equivalent) operation orders
    for x, y in [(a, b)] + list(zip(sa, sb)):
        assert np.isfinite(x.numpy()).all()
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["rmsprop", "rmsprop_centered", "adadelta", "adamax"])
def test_tf_training_op_form_is_bit_identical_to_raw_ops(rng, name, dtype):
    """tf_training_op_form=True reproduces TensorFlow's own training ops bit
    for bit (tf_keras' legacy RMSprop with momentum and Adadelta call them):
    their moment arithmetic and operation order (Adamax: lr / (1 - beta_1^t)
    first), and for Adadelta TF's CPU Rsqrt (packet form on the first
    n - n % 8 elements, Note [TF rsqrt])."""
    shape = (4097,)
    c = lambda x: tf.constant(x, dtype)  # noqa: E731
    f32 = lambda x: float(np.float32(x))  # noqa: E731 (exact in both dtypes)
    var0 = random_array(rng, shape, dtype)
    a, b = tf.Variable(var0.astype(dtype)), tf.Variable(var0.astype(dtype))
    inits = [pos(rng, shape, dtype, 2.0), pos(rng, shape, dtype), small(rng, shape, dtype)]
    sa = [tf.Variable(x.astype(dtype)) for x in inits]
    sb = [tf.Variable(x.astype(dtype)) for x in inits]
    lr, rho, mom, eps = f32(0.01), f32(0.9), f32(0.8), f32(1e-7)
    for t in range(1, 7):
        g = c(random_array(rng, shape, dtype))
        if name == "adamax":
            b1, b2 = f32(0.9), f32(0.999)
            fops.apply_adamax([a], [g], lr, m=[sa[1]], u=[sa[0]], step=t, beta_1=b1, beta_2=b2,
                              epsilon=eps, tf_training_op_form=True)
            tf.raw_ops.ResourceApplyAdaMax(var=b.handle, m=sb[1].handle, v=sb[0].handle,
                                           beta1_power=tf.pow(c(b1), c(t)), lr=c(lr),
                                           beta1=c(b1), beta2=c(b2), epsilon=c(eps), grad=g)
        elif name == "rmsprop":
            fops.apply_rmsprop([a], [g], lr, velocity=[sa[0]], momenta=[sa[1]], rho=rho,
                               momentum=mom, epsilon=eps, tf_training_op_form=True)
            tf.raw_ops.ResourceApplyRMSProp(var=b.handle, ms=sb[0].handle, mom=sb[1].handle,
                                            lr=c(lr), rho=c(rho), momentum=c(mom), epsilon=c(eps),
                                            grad=g)
        elif name == "rmsprop_centered":
            fops.apply_rmsprop([a], [g], lr, velocity=[sa[0]], momenta=[sa[1]],
                               average_gradient=[sa[2]], rho=rho, momentum=mom, epsilon=eps,
                               tf_training_op_form=True)
            tf.raw_ops.ResourceApplyCenteredRMSProp(var=b.handle, mg=sb[2].handle, ms=sb[0].handle,
                                                    mom=sb[1].handle, lr=c(lr), rho=c(rho),
                                                    momentum=c(mom), epsilon=c(eps), grad=g)
        else:
            fops.apply_adadelta([a], [g], 1.0, accumulated_grad=[sa[0]],
                                accumulated_delta_var=[sa[1]], rho=f32(0.95), epsilon=eps,
                                tf_training_op_form=True)
            tf.raw_ops.ResourceApplyAdadelta(var=b.handle, accum=sb[0].handle,
                                             accum_update=sb[1].handle, lr=c(1.0), rho=c(f32(0.95)),
                                             epsilon=c(eps), grad=g)
    for x, y in [(a, b)] + list(zip(sa, sb)):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert not np.array_equal(a.numpy(), var0.astype(dtype))


@pytest.mark.parametrize("jit", [False, True], ids=["uncompiled", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("power", [-0.5, -0.3, -0.7, 0.0, -1.0, -2.0, -3.0, -8.0])
def test_ftrl_tf_training_op_form_is_bit_identical_to_raw_ops(rng, power, dtype, jit):
    """tf_pow with tf_training_op_form raises as ResourceApplyFtrl(V2) does
    (Eigen's unary x.pow(p): repeated squaring for the integer powers in
    [-3, 7], generic pow for -0.3, -0.7 and 8, sqrt for 0.5; std::pow on the
    last n % 8 elements), so Ftrl V1 and V2 give the raw ops' bits, compiled
    (the XLA handler) and not. Without it the powers 2 and 3 differ: Pow is
    not repeated squaring (the second half)."""
    shapes = [(4099,), (7, 3), ()]
    c = lambda x: tf.constant(x, dtype)  # noqa: E731
    f32 = lambda x: float(np.float32(x))  # noqa: E731 (exact in both dtypes)
    lr, l1, l2, shrink = f32(0.05), f32(0.01), f32(0.02), f32(0.03)
    init = [random_array(rng, s, dtype) for s in shapes]
    accs = [pos(rng, s, dtype, 2.0) for s in shapes]
    lins = [small(rng, s, dtype) for s in shapes]
    grads = [[random_array(rng, s, dtype) for s in shapes] for _ in range(4)]

    def make():
        return ([tf.Variable(x.astype(dtype)) for x in init],
                [tf.Variable(x.astype(dtype)) for x in accs],
                [tf.Variable(x.astype(dtype)) for x in lins])

    results = {}
    for v2 in (False, True):
        for form in (True, False):
            vs, acc, lin = make()

            @tf.function(jit_compile=jit)
            def fused(gs, vs=vs, acc=acc, lin=lin, v2=v2, form=form):
                fops.apply_ftrl(vs, gs, lr, accumulator=acc, linear=lin,
                                learning_rate_power=power, l1=l1, l2=l2,
                                l2_shrinkage=shrink if v2 else 0.0,
                                tf_pow=True, tf_training_op_form=form)

            for g in grads:
                fused([c(x) for x in g])
            results[(v2, form)] = [x.numpy() for x in vs + acc + lin]
        vs, acc, lin = make()
        for g in grads:
            for i in range(len(shapes)):
                kw = dict(var=vs[i].handle, accum=acc[i].handle, linear=lin[i].handle,
                          grad=c(g[i]), lr=c(lr), l1=c(l1), l2=c(l2), lr_power=c(power))
                if v2:
                    tf.raw_ops.ResourceApplyFtrlV2(l2_shrinkage=c(shrink), **kw)
                else:
                    tf.raw_ops.ResourceApplyFtrl(**kw)
        want = [x.numpy() for x in vs + acc + lin]
        for k, (x, y) in enumerate(zip(results[(v2, True)], want)):
            np.testing.assert_array_equal(x, y, err_msg=f"V{2 if v2 else 1} power {power} [{k}]")
        assert not np.array_equal(want[0], init[0].astype(dtype))
        if power in (-2.0, -3.0):
            differ = sum(int(np.sum(x != y)) for x, y in zip(results[(v2, False)], want))
            assert differ > 0, "TF's Pow should differ from the training ops' x.pow(p) here"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_lamb_ratio_is_the_norm_of_the_applied_update(rng, dtype):
    """LAMB's pass 1 takes the norm of u = Update(m, v) as pass 2 applies it:
    from the slots as stored. With float16 slots Keras' zero start and
    normal gradients make v underflow to 0 where g^2 (1 - beta_2) is below
    float16's smallest subnormal (about 1 in 200 elements here), and pass 2's
    u there is m / epsilon; a norm of the unrounded u scaled that by ~1000x
    too much (a 16-bit bug, up to 500 in one step, while the other tests'
    gradients stay away from 0). Each step is checked against
    x - (|x| / |u|) lr u computed here from the op's own output slots, in
    float32 (the 16-bit types' opmath), to a float32-rounding tolerance
    before the store."""
    n, lr, b1, b2, eps = 4099, 0.01, 0.9, 0.999, 1e-6
    dt = np_dtype(dtype)
    x = tf.Variable(rng.standard_normal(n).astype(dt))
    m, v = tf.Variable(np.zeros(n, dt)), tf.Variable(np.zeros(n, dt))
    for t in range(1, 4):
        g = rng.standard_normal(n).astype(dt)
        x0 = x.numpy().astype(np.float64)
        fops.apply_lamb([x], [tf.constant(g)], lr, m=[m], v=[v], step=t, beta_1=b1, beta_2=b2,
                        epsilon=eps)
        mh = m.numpy().astype(np.float64) / (1 - np.float32(b1) ** t)
        vh = v.numpy().astype(np.float64) / (1 - np.float32(b2) ** t)
        u = mh / (np.sqrt(vh) + np.float32(eps))
        ratio = np.sqrt(np.sum(x0 * x0)) / np.sqrt(np.sum(u * u))
        want = x0 - ratio * lr * u
        got = x.numpy().astype(np.float64)
        if dtype == "float16" and t == 1:
            assert np.any(v.numpy() == 0), "no underflowed v: the case is not exercised"
        # One ulp of the stored type (at least its subnormal spacing: a near-total
        # cancellation x0 - ratio lr u can land among float16's subnormals, spaced
        # 2^-24 apart), plus float32's error before the store.
        rel, tiny = {"float16": (2.0**-10, 2.0**-24), "bfloat16": (2.0**-7, 2.0**-133),
                     "float32": (2.0**-23, 2.0**-149)}[dtype]
        ulp = np.maximum(np.abs(want) * rel, tiny)
        err = np.abs(got - want) - (ulp + 1e-6 * np.abs(ratio * lr * u))
        assert np.all(err <= 1e-30), (
            f"step {t}: {int(np.sum(err > 1e-30))} elements off, worst {np.max(np.abs(got - want)):.3g}")


def test_tf_training_op_form_and_epsilon_outside_sqrt_exclude_each_other():
    v, s = tf.Variable(np.ones(3, np.float32)), tf.Variable(np.ones(3, np.float32))
    m = tf.Variable(np.zeros(3, np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="exclude each other"):
        fops.apply_rmsprop([v], [tf.ones(3)], 0.1, velocity=[s], momenta=[m],
                           epsilon_outside_sqrt=True, tf_training_op_form=True)
    np.testing.assert_array_equal(v.numpy(), 1.0)


# --- bad input ---------------------------------------------------------------------


def _good_call(case: Case):
    """Two variables with slots, and a function calling the op with overrides."""
    shapes = [(5,), (3,)]
    rng = np.random.default_rng(0)
    variables = [tf.Variable(pos(rng, s, "float32").astype(np.float32)) for s in shapes]
    slots = {k: [tf.Variable(pos(rng, s, "float32").astype(np.float32)) for s in shapes]
             for k in case.slots}
    grads = [tf.ones(s) for s in shapes]

    def call(variables=variables, grads=grads, lr=0.1, **over):
        kwargs = dict(case.hp, **slots)
        if case.step:
            kwargs["step"] = 1
        for name, f in case.extra.items():
            kwargs[name] = f(1, case.hp)
        kwargs.update(over)
        case.op(variables, grads, lr, **kwargs)

    return variables, slots, grads, call


BAD = ["grad shape", "slot shape", "dtype", "uninitialized", "non-scalar lr", "list length",
       "slot list length", "same variable twice", "variable as its own slot"]


_SLOT_BAD = {"slot shape", "slot list length", "variable as its own slot"}
BAD_CASES = [(c, b) for c in CASES for b in BAD
             if (c.slots or b not in _SLOT_BAD) and (c.takes_lr or b != "non-scalar lr")]


@pytest.mark.parametrize("case,bad", BAD_CASES, ids=[f"{c.name}-{b}" for c, b in BAD_CASES])
def test_bad_input_raises_and_writes_nothing(case, bad):
    variables, slots, grads, call = _good_call(case)
    first = next(iter(slots), None)
    watched = variables + [v for vs in slots.values() for v in vs]
    before = [w.numpy().copy() for w in watched]
    if bad == "grad shape":
        run, match = lambda: call(grads=[grads[0], tf.ones(4)]), r"vars\[1\].*shape \[3\].*grads\[1\]"
    elif bad == "slot shape":
        bad_slots = [slots[first][0], tf.Variable(tf.ones(4))]
        run, match = lambda: call(**{first: bad_slots}), rf"{first}\[1\].*shape \[4\]"
    elif bad == "dtype":
        run = lambda: call(variables=[variables[0], tf.Variable(np.ones(3))])  # noqa: E731
        match = r"vars\[1\].*float64.*float32"
    elif bad == "uninitialized":
        h = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[3], shared_name=f"never_{case.name}")
        run, match = lambda: call(variables=[variables[0], h]), r"vars\[1\].*(not initialized|could not be found)"
    elif bad == "non-scalar lr":
        run, match = lambda: call(lr=tf.constant([0.1, 0.2])), r"lr.*scalar"
    elif bad == "list length":
        run, match = lambda: call(grads=grads[:1]), r"gradients has 1 entries but there are 2 variables"
    elif bad == "slot list length":
        run, match = lambda: call(**{first: slots[first][:1]}), rf"{first} has 1 entries"
    elif bad == "same variable twice":
        run = lambda: call(variables=[variables[0], variables[0]], grads=[grads[0], grads[0]])  # noqa: E731
        match = r"vars\[1\].*vars\[0\].*same variable"
    elif bad == "variable as its own slot":
        run = lambda: call(**{first: [slots[first][0], variables[1]]})  # noqa: E731
        match = rf"{first}\[1\].*vars\[1\].*same variable"
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=match):
        run()
    for w, b in zip(watched, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_step_must_be_positive():
    case = CASES[0]
    variables, slots, grads, call = _good_call(case)
    with pytest.raises(tf.errors.InvalidArgumentError, match="'step' must be >= 1"):
        call(step=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_nonfinite_hyperparameters_raise_and_write_nothing(case, bad):
    """Note [hyperparameter checks]: a NaN or inf learning rate or any other
    hyperparameter is an InvalidArgumentError naming it, nothing written."""
    variables, slots, grads, call = _good_call(case)
    watched = variables + [x for xs in slots.values() for x in xs]
    names = ["lr"] * case.takes_lr + [k for k, v in case.hp.items() if isinstance(v, float)]
    for name in names:
        before = [w.numpy().copy() for w in watched]
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"'{name}' must be finite"):
            # (schedule_decay, an attr, is checked the same way)
            if name == "lr":
                call(lr=bad)
            else:
                call(**{name: bad})
        for w, b in zip(watched, before):
            np.testing.assert_array_equal(w.numpy(), b)


@pytest.mark.parametrize("op,kwargs,match", [
    ("sgd", dict(momentum=1.5), r"'momentum' must be in \[0, 1\]"),
    ("sgd", dict(momentum=-0.1), r"'momentum' must be in \[0, 1\]"),
    ("lion", dict(beta_1=0.0), r"'beta_1' must be in \(0, 1\]"),
    ("ftrl", dict(l1=-0.1), r"'l1' must be >= 0"),
    ("ftrl", dict(l2=-0.1), r"'l2' must be >= 0"),
    ("ftrl", dict(l2_shrinkage=-0.1), r"'l2_shrinkage' must be >= 0"),
])
def test_keras_constructor_ranges_are_enforced_by_the_ops(op, kwargs, match):
    v = tf.Variable([1.0, 2.0])
    s1, s2 = tf.Variable([0.5, 0.5]), tf.Variable([0.1, 0.1])
    call = {
        "sgd": lambda: fops.apply_sgd([v], [tf.ones(2)], 0.1, momenta=[s1], **kwargs),
        "lion": lambda: fops.apply_lion([v], [tf.ones(2)], 0.1, m=[s1], **kwargs),
        "ftrl": lambda: fops.apply_ftrl([v], [tf.ones(2)], 0.1, accumulator=[s1], linear=[s2],
                                        **kwargs),
    }[op]
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        call()
    for x, want in ((v, [1.0, 2.0]), (s1, [0.5, 0.5]), (s2, [0.1, 0.1])):
        np.testing.assert_array_equal(x.numpy(), np.float32(want))


def test_ftrl_rejects_positive_learning_rate_power():
    case = next(c for c in CASES if c.name == "ftrl")
    variables, slots, grads, call = _good_call(case)
    before = variables[0].numpy().copy()
    with pytest.raises(tf.errors.InvalidArgumentError, match="learning_rate_power must be <= 0"):
        call(learning_rate_power=0.5)
    np.testing.assert_array_equal(variables[0].numpy(), before)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_copy_on_write_keeps_readers_values(case):
    variables, slots, grads, call = _good_call(case)
    readers = [tf.raw_ops.ReadVariableOp(resource=v.handle, dtype=tf.float32)
               for v in variables + [x for xs in slots.values() for x in xs]]
    snapshot = [r.numpy().copy() for r in readers]
    call()
    for r, s in zip(readers, snapshot):
        np.testing.assert_array_equal(r.numpy(), s)
    assert not np.array_equal(variables[0].numpy(), snapshot[0])  # the update did happen


# --- Adafactor (its own op: factored moments, three passes) -------------------------------------

ADAFACTOR_OP_SHAPES = [(), (0,), (7,), (4097,), (3, 5, 7), (2, 0, 3), (70001,), (300, 257),
                       (1, 40000)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's mean of the empty shapes: NaN
@pytest.mark.parametrize("weight_decay", [0.0, 0.01], ids=["nodecay", "decay"])
@pytest.mark.parametrize("dtype,form", [(d, "double_sums") for d in DTYPES] +
                         [(d, "tf_reductions") for d in ("float32", "float64")])
def test_adafactor_matches_reference(rng, dtype, weight_decay, form):
    """Fusedopt>ApplyAdafactor against the float64 reference over several
    steps, every shape class (scalar, empty, vectors, rank 3, a matrix of
    several row blocks, a one-row matrix of more than a block), the variables
    and r, c, v. 16-bit state is stored rounded every step, as Keras'. Both
    forms: the three-pass kernel and Keras' ops with TF's reductions
    (tf_reductions, float32/float64; Note [TF reductions])."""
    tdt, npdt = tf_dtype(dtype), np_dtype(dtype)
    steps = 4
    hp = dict(beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3, clip_threshold=1.0)
    lr = float(np.float32(0.02))
    wd = float(np.float32(weight_decay))
    shapes = ADAFACTOR_OP_SHAPES
    init = [random_array(rng, s, dtype) for s in shapes]
    grads = [[random_array(rng, s, dtype) for s in shapes] for _ in range(steps)]
    factored = [len(s) >= 2 for s in shapes]
    r0 = [np.zeros(s[:-1]) if f else np.zeros(()) for s, f in zip(shapes, factored)]
    c0 = [np.zeros(s[:-2] + s[-1:]) if f else np.zeros(()) for s, f in zip(shapes, factored)]
    variables = [tf.Variable(x.astype(npdt), dtype=tdt) for x in init]
    rs = [tf.Variable(x.astype(npdt), dtype=tdt) for x in r0]
    cs = [tf.Variable(x.astype(npdt), dtype=tdt) for x in c0]
    vs = [tf.Variable(np.zeros(s).astype(npdt), dtype=tdt) for s in shapes]
    for k in range(steps):
        fops.apply_adafactor(variables, [tf.constant(g.astype(npdt), tdt) for g in grads[k]], lr,
                             r=rs, c=cs, v=vs, step=k + 1, weight_decay=wd,
                             tf_reductions=form == "tf_reductions", **hp)
    for i, shape in enumerate(shapes):
        x, r, c, v = init[i], r0[i], c0[i], np.zeros(shape)
        for k in range(steps):
            x, r2, c2, v = ref.adafactor_step(x, grads[k][i], lr, r, c, v, k + 1,
                                              weight_decay=wd, **hp)
            if factored[i]:
                r, c = rounded(r2, dtype), rounded(c2, dtype)
            x, v = rounded(x, dtype), rounded(v, dtype)
        # The reconstructed v and the update's RMS lose a few roundings more
        # than an elementwise rule.
        assert_close(variables[i].numpy().astype(np.float64), x, dtype, f"var {shape}", 8.0)
        assert_close(vs[i].numpy().astype(np.float64), v, dtype, f"v {shape}", 8.0)
        if factored[i]:
            assert_close(rs[i].numpy().astype(np.float64), r, dtype, f"r {shape}", 8.0)
            assert_close(cs[i].numpy().astype(np.float64), c, dtype, f"c {shape}", 8.0)
    assert not np.array_equal(variables[3].numpy(), init[3].astype(npdt))
