"""TensorFlow-free helpers for the fusedopt._native tests, on the CPU (NumPy)
and on CUDA devices (tests/gpu): the case table (every rule and variant), the
per-dtype tolerances, seeded random inputs, and a runner that applies several
steps with fresh inputs through ``nat.apply`` and through the float64
references of fusedopt.reference.

It mirrors tests/test_family_ops.py (same cases, same references, same
tolerances) but must never import TensorFlow: the GPU check runs it on machines
without it. bfloat16 on NumPy needs ml_dtypes (``HAVE_ML_DTYPES``); the
reference rounding below does not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fusedopt import reference as ref

try:
    import ml_dtypes

    HAVE_ML_DTYPES = True
except ImportError:  # pragma: no cover - the GPU machine may lack it
    ml_dtypes = None
    HAVE_ML_DTYPES = False

DTYPES = ["float16", "bfloat16", "float32", "float64"]

# One tolerance per dtype (relative, with the same absolute floor scaled by the
# largest expected magnitude): one rounding of the stored result.
TOLERANCE = {"float64": 1e-12, "float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}

# One multi-tensor call holds all of these: empties, tails, a scalar, rank 3,
# several 32K-element chunks.
SHAPES = [(), (0,), (1,), (7,), (4097,), (3, 5, 7), (70001,)]

STEPS = 5

# The gradient transform of the "transform on" runs: a power of two (exact in
# every dtype) and a clip that cuts about 13% of N(0, 1) gradients.
TRANSFORM = {"grad_scale": 0.5, "clip_value": 0.75}

UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


# --- randomness -------------------------------------------------------------------


def seeded_rng(label: str = "") -> np.random.Generator:
    """A fresh generator: new inputs on every run. The seed is printed (pytest
    shows it on failure); FUSEDOPT_TEST_SEED=<seed> replays a run."""
    env = os.environ.get("FUSEDOPT_TEST_SEED")
    seed = int(env) if env else int(np.random.SeedSequence().entropy % 2**63)
    print(f"FUSEDOPT_TEST_SEED={seed} {label}".rstrip())
    return np.random.default_rng(seed)


# --- dtypes and rounding ------------------------------------------------------------


def np_dtype(name: str):
    """The NumPy storage dtype (bfloat16: ml_dtypes, which must be installed)."""
    if name == "bfloat16":
        if not HAVE_ML_DTYPES:
            raise RuntimeError("bfloat16 NumPy arrays need ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def cpu_supports(dtype: str) -> bool:
    return dtype != "bfloat16" or HAVE_ML_DTYPES


def elem_size(dtype: str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}[dtype]


def _round_bfloat16(x64: np.ndarray) -> np.ndarray:
    """Nearest-even bfloat16 of float32(x), as float32 (no ml_dtypes needed)."""
    f = np.asarray(x64, np.float32).reshape(-1)
    u = f.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    out = (r & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(f), f, out)


def rounded(x, dtype: str) -> np.ndarray:
    """x rounded to `dtype` storage (nearest even, through float32 below
    float64, as the kernels' stores), back in float64."""
    x = np.asarray(x, np.float64)
    if dtype == "float64":
        return x.copy()
    if dtype == "float32":
        return x.astype(np.float32).astype(np.float64)
    if dtype == "float16":
        return x.astype(np.float32).astype(np.float16).astype(np.float64)
    return _round_bfloat16(x).astype(np.float64).reshape(x.shape)


def to_storage(x64, dtype: str) -> np.ndarray:
    """A new C-contiguous NumPy array of `dtype` holding x64 (already rounded)."""
    x = np.asarray(x64, np.float64)
    if dtype != "float64":
        x = x.astype(np.float32)
    return x.astype(np_dtype(dtype), order="C")  # (np.ascontiguousarray makes 0-d arrays 1-d)


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bit patterns of a float array, flattened (for == comparisons: NaN-safe)."""
    a = np.asarray(a)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")
    return a.reshape(-1).view(UINT[a.dtype.itemsize])  # flat, as the device backends give them


def random_array(rng: np.random.Generator, shape, dtype: str, scale: float = 1.0) -> np.ndarray:
    """Fresh random values, every element away from zero, rounded to `dtype`, float64."""
    x = rng.standard_normal(shape) * scale
    x = np.where(np.abs(x) < 1e-3, 1e-3, x)
    return rounded(x, dtype)


def pos(rng, shape, dtype, base=0.1):
    """Positive slot values (accumulators, second moments)."""
    return rounded(base + np.abs(rng.standard_normal(shape)), dtype)


def small(rng, shape, dtype):
    return random_array(rng, shape, dtype, 0.1)


def aligned_empty(n: int, dtype, align: int = 64, offset_elems: int = 0) -> np.ndarray:
    """A 1-D array of n elements whose data starts `offset_elems` elements after
    an `align`-byte boundary (offset 0: aligned)."""
    dt = np.dtype(dtype)
    raw = np.empty((n + offset_elems) * dt.itemsize + align, np.uint8)
    start = (-raw.ctypes.data) % align + offset_elems * dt.itemsize
    return raw[start:start + n * dt.itemsize].view(dt)


def assert_close(actual, expected, dtype: str, what: str = "", cond: float = 1.0) -> None:
    """Within the dtype's tolerance (times a stated condition factor)."""
    tol = TOLERANCE[dtype] * cond
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


# --- the cases ------------------------------------------------------------------------


def _u_product(t, hp):
    p = 1.0
    for k in range(1, t + 1):
        p *= ref.nadam_u(k, hp["beta_1"], hp.get("schedule_decay", 1.0))
    return p


def _sgd_ref(var, g, lr, s, t, hp, dtype):
    var, m = ref.sgd_step(var, g, lr, m=s.get("momenta"), momentum=hp["momentum"],
                          nesterov=hp.get("nesterov", False),
                          weight_decay=hp.get("weight_decay", 0.0))
    return var, ({} if m is None else {"momenta": m})


def _adam_ref(var, g, lr, s, t, hp, dtype):
    var, m, v, vhat = ref.adam_step(var, g, lr, s["m"], s["v"], t, vhat=s.get("vhat"),
                                    **_only(hp, "beta_1", "beta_2", "epsilon", "weight_decay"))
    out = {"m": m, "v": v}
    if vhat is not None:
        out["vhat"] = vhat
    return var, out


def _nadam_ref(var, g, lr, s, t, hp, dtype):
    var, m, v = ref.nadam_step(var, g, lr, s["m"], s["v"], t, _u_product(t, hp),
                               **_only(hp, "beta_1", "beta_2", "epsilon", "weight_decay",
                                       "schedule_decay"))
    return var, {"m": m, "v": v}


def _adamax_ref(var, g, lr, s, t, hp, dtype):
    var, m, u = ref.adamax_step(var, g, lr, s["m"], s["u"], t,
                                **_only(hp, "beta_1", "beta_2", "epsilon", "weight_decay"))
    return var, {"m": m, "u": u}


def _rms_ref(var, g, lr, s, t, hp, dtype):
    var, vel, mom, avg = ref.rmsprop_step(
        var, g, lr, s["velocity"], mom=s.get("momenta"), avg=s.get("average_gradient"),
        **_only(hp, "rho", "momentum", "epsilon", "weight_decay", "epsilon_outside_sqrt"))
    out = {"velocity": vel}
    if mom is not None:
        out["momenta"] = mom
    if avg is not None:
        out["average_gradient"] = avg
    return var, out


def _adagrad_ref(var, g, lr, s, t, hp, dtype):
    var, acc = ref.adagrad_step(var, g, lr, s["accumulator"],
                                **_only(hp, "epsilon", "weight_decay", "epsilon_outside_sqrt"))
    return var, {"accumulator": acc}


def _adadelta_ref(var, g, lr, s, t, hp, dtype):
    var, ag, adv = ref.adadelta_step(var, g, lr, s["accumulated_grad"], s["accumulated_delta_var"],
                                     **_only(hp, "rho", "epsilon", "weight_decay"))
    return var, {"accumulated_grad": ag, "accumulated_delta_var": adv}


def _ftrl_ref(var, g, lr, s, t, hp, dtype):
    var, acc, lin = ref.ftrl_step(var, g, lr, s["accumulator"], s["linear"],
                                  **_only(hp, "learning_rate_power", "l1", "l2", "l2_shrinkage",
                                          "beta", "weight_decay"))
    return var, {"accumulator": acc, "linear": lin}


def _lion_ref(var, g, lr, s, t, hp, dtype):
    # sign() is discontinuous at 0, so a 1-ulp difference in m (float64 rounded
    # once vs float32 rounded twice) can flip an update by 2 * lr: the Lion
    # reference evaluates Keras' formula in the kernel's opmath (float32 below
    # float64) with the kernel's operation order (as tests/test_family_ops.py).
    mdt = np.float64 if dtype == "float64" else np.float32
    b1, b2, lr_m = mdt(hp["beta_1"]), mdt(hp["beta_2"]), mdt(lr)
    v, m = np.asarray(var).astype(mdt), np.asarray(s["m"]).astype(mdt)
    gm = np.asarray(g).astype(mdt)
    if hp.get("weight_decay"):
        v = v - v * mdt(hp["weight_decay"] * lr)
    u = m * b1 + gm * mdt(1.0 - hp["beta_1"])
    v = v - lr_m * np.sign(u)
    m = m * b2 + gm * mdt(1.0 - hp["beta_2"])
    return v.astype(np.float64), {"m": m.astype(np.float64)}


def _lamb_ref(var, g, lr, s, t, hp, dtype):
    var, m, v = ref.lamb_step(var, g, lr, s["m"], s["v"], t,
                              **_only(hp, "beta_1", "beta_2", "epsilon", "weight_decay"))
    return var, {"m": m, "v": v}


def _sfadamw_ref(var, g, lr, s, t, hp, dtype):
    var, z, v = ref.schedule_free_adamw_step(
        var, g, lr, s["momentum"], s["velocity"], t,
        **_only(hp, "beta_1", "beta_2", "epsilon", "warmup_steps", "weight_decay"))
    return var, {"momentum": z, "velocity": v}


def _muon_momentum_ref(var, g, lr, s, t, hp, dtype):
    return ref.muon_momentum_step(var, g, momentum=hp["momentum"]), {}


def _muon_ref(var, g, lr, s, t, hp, dtype):
    return ref.muon_update_step(var, g, lr, **_only(hp, "scale", "rms_rate", "weight_decay")), {}


def _only(hp: dict, *names: str) -> dict:
    return {k: hp[k] for k in names if k in hp}


def _pos1(r, s, d):
    return pos(r, s, d, 1.0)


@dataclass
class Case:
    name: str
    rule: str  # nat.rules() name
    slots: dict  # slot name -> initializer(rng, shape, dtype) -> float64
    hp: dict  # every scalar of the rule except lr, weight_decay and u_product
    ref: Callable  # (var, grad, lr, slots, step, hp_and_options, dtype) -> (var, slots)
    options: dict = field(default_factory=dict)  # nat.apply keywords (nesterov, ...)
    # Condition factor on the dtype tolerance, for rules whose math loses digits
    # in any finite precision (stated per case).
    cond: float = 1.0
    # Whether the CUDA kernel should give the CPU's bits in float32/float64:
    # per-element math of + - * / sqrt only (the CUDA build uses --fmad=false
    # and IEEE div/sqrt), no pow, no cross-element reduction.
    exact_on_gpu: bool = True
    # Muon's momentum rule takes neither a learning rate nor a weight decay.
    takes_lr: bool = True
    decays: bool = True

    @property
    def step(self) -> bool:
        return self.rule in STEP_RULES

    @property
    def fops_name(self) -> str:
        return "apply_" + self.rule


STEP_RULES = {"adam", "nadam", "adamax", "lamb", "schedule_free_adamw"}

CASES = [
    Case("sgd", "sgd", {}, dict(momentum=0.0), _sgd_ref),
    Case("sgd_momentum", "sgd", {"momenta": small}, dict(momentum=0.9), _sgd_ref),
    Case("sgd_nesterov", "sgd", {"momenta": small}, dict(momentum=0.9), _sgd_ref,
         options=dict(nesterov=True)),
    Case("adam", "adam", {"m": small, "v": pos}, dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7),
         _adam_ref),
    Case("adamw", "adam", {"m": small, "v": pos},
         dict(beta_1=0.85, beta_2=0.99, epsilon=1e-6, weight_decay=0.004), _adam_ref),
    Case("amsgrad", "adam", {"m": small, "v": pos, "vhat": pos},
         dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7), _adam_ref),
    Case("nadam", "nadam", {"m": small, "v": pos}, dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7),
         _nadam_ref),
    # tf_keras' legacy Nadam: u_t = beta_1 * (1 - 0.5 * 0.96^(0.004 t)).
    Case("nadam_schedule_decay", "nadam", {"m": small, "v": pos},
         dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7), _nadam_ref,
         options=dict(schedule_decay=0.004)),
    # The same in tf_keras' own element order (tf_training_op_form; no weight
    # decay in that form).
    Case("nadam_tf_form", "nadam", {"m": small, "v": pos},
         dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7), _nadam_ref,
         options=dict(schedule_decay=0.004, tf_training_op_form=True), decays=False),
    Case("adamax", "adamax", {"m": small, "u": pos}, dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7),
         _adamax_ref),
    Case("rmsprop", "rmsprop", {"velocity": pos}, dict(rho=0.9, momentum=0.0, epsilon=1e-7),
         _rms_ref),
    Case("rmsprop_momentum", "rmsprop", {"velocity": pos, "momenta": small},
         dict(rho=0.8, momentum=0.9, epsilon=1e-7), _rms_ref),
    Case("rmsprop_centered", "rmsprop", {"velocity": _pos1, "average_gradient": small},
         dict(rho=0.9, momentum=0.0, epsilon=1e-7), _rms_ref),
    Case("rmsprop_centered_momentum", "rmsprop",
         {"velocity": _pos1, "momenta": small, "average_gradient": small},
         dict(rho=0.9, momentum=0.5, epsilon=1e-7), _rms_ref),
    # tf_keras' legacy forms, epsilon outside the square root (an epsilon large
    # enough that the two forms differ far beyond the tolerance).
    Case("rmsprop_eps_outside", "rmsprop", {"velocity": pos},
         dict(rho=0.9, momentum=0.0, epsilon=0.05), _rms_ref,
         options=dict(epsilon_outside_sqrt=True)),
    Case("rmsprop_centered_eps_outside", "rmsprop", {"velocity": _pos1, "average_gradient": small},
         dict(rho=0.9, momentum=0.0, epsilon=0.05), _rms_ref,
         options=dict(epsilon_outside_sqrt=True)),
    Case("adagrad", "adagrad", {"accumulator": pos}, dict(epsilon=1e-7), _adagrad_ref),
    Case("adagrad_eps_outside", "adagrad", {"accumulator": pos}, dict(epsilon=0.05), _adagrad_ref,
         options=dict(epsilon_outside_sqrt=True)),
    Case("adadelta", "adadelta", {"accumulated_grad": pos, "accumulated_delta_var": pos},
         dict(rho=0.95, epsilon=1e-7), _adadelta_ref),
    # new_acc^p - acc^p cancels (g^2 << acc), then is divided by lr: a float32
    # kernel (Keras' and TF's alike) keeps ~5 digits of it.
    Case("ftrl", "ftrl", {"accumulator": pos, "linear": random_array},
         dict(learning_rate_power=-0.5, l1=0.01, l2=0.02, l2_shrinkage=0.03, beta=0.1), _ftrl_ref,
         cond=30.0),
    Case("ftrl_power", "ftrl", {"accumulator": pos, "linear": random_array},
         dict(learning_rate_power=-0.7, l1=0.05, l2=0.0, l2_shrinkage=0.0, beta=0.0), _ftrl_ref,
         cond=30.0, exact_on_gpu=False),  # acc^-0.7: pow
    Case("lion", "lion", {"m": small}, dict(beta_1=0.9, beta_2=0.99), _lion_ref),
    # Per-tensor norms: the GPU reduces in another order than the CPU.
    Case("lamb", "lamb", {"m": small, "v": pos}, dict(beta_1=0.9, beta_2=0.999, epsilon=1e-6),
         _lamb_ref, exact_on_gpu=False),
    Case("schedule_free_adamw", "schedule_free_adamw", {"momentum": random_array, "velocity": pos},
         dict(beta_1=0.9, beta_2=0.999, epsilon=1e-8, warmup_steps=4.0), _sfadamw_ref),
    # Muon's elementwise halves around its Newton-Schulz iterations.
    Case("muon_momentum", "muon_momentum", {}, dict(momentum=0.95), _muon_momentum_ref,
         takes_lr=False, decays=False),
    Case("muon", "muon", {}, dict(scale=float(np.sqrt(np.float32(53))), rms_rate=0.2), _muon_ref),
]
CASE_IDS = [c.name for c in CASES]
CASE_BY_NAME = {c.name: c for c in CASES}


# --- Adafactor (not elementwise: its own reference loop) ------------------------------------

# Keras' default Adafactor hyperparameters but lr and weight_decay.
ADAFACTOR_HP = dict(beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3, clip_threshold=1.0)


def assert_adafactor_close(init: list, grads: list, dtype: str, lr: float, weight_decay: float,
                           var: list, r: list, c: list, v: list) -> None:
    """Checks an Adafactor run (var, r, c, v per tensor, any array type, after
    len(grads) steps from init and zero moments) against the float64
    reference, each stored value rounded to `dtype` as the kernel stores it;
    r and c only for rank >= 2. The tolerance carries a factor 8: the
    reconstructed v and the update's RMS take a few roundings more than an
    elementwise rule."""
    for i, x in enumerate(init):
        shape = np.shape(x)
        factored = len(shape) >= 2
        vv = np.zeros(shape)
        rr = np.zeros(shape[:-1]) if factored else np.zeros(())
        cc = np.zeros(shape[:-2] + shape[-1:]) if factored else np.zeros(())
        for k, g in enumerate(grads):
            x, r2, c2, vv = ref.adafactor_step(x, g[i], lr, rr, cc, vv, k + 1,
                                               weight_decay=weight_decay, **ADAFACTOR_HP)
            if factored:
                rr, cc = rounded(r2, dtype), rounded(c2, dtype)
            x, vv = rounded(x, dtype), rounded(vv, dtype)
        assert_close(np.asarray(var[i]).astype(np.float64), x, dtype, f"var {shape}", 8.0)
        assert_close(np.asarray(v[i]).astype(np.float64), vv, dtype, f"v {shape}", 8.0)
        if factored:
            assert_close(np.asarray(r[i]).astype(np.float64), rr, dtype, f"r {shape}", 8.0)
            assert_close(np.asarray(c[i]).astype(np.float64), cc, dtype, f"c {shape}", 8.0)


# --- problems: inputs of several steps, the reference, the native run -----------------------


def _float32_values(hp: dict) -> dict:
    """Float32-representable hyperparameters: the kernels round them through
    float32 where Keras casts (Note [Keras arithmetic]); on these values every
    such rounding is exact, so the float64 reference sees the same numbers."""
    return {k: float(np.float32(v)) if isinstance(v, float) else v for k, v in hp.items()}


@dataclass
class Problem:
    """A run of `steps` updates of len(shapes) tensors in one call per step."""

    case: Case
    dtype: str
    shapes: list
    init: list  # float64 values (representable in dtype)
    slots: dict  # name -> list of float64
    grads: list  # [step][tensor] float64
    lrs: list
    hp: dict  # the rule's scalars (no lr), weight_decay included
    transform: dict  # nat.apply gradient options ({} or TRANSFORM)

    @property
    def steps(self) -> int:
        return len(self.grads)

    def hparams(self, k: int) -> dict:
        """nat.apply's hparams for step k (0-based)."""
        out = dict(self.hp, lr=self.lrs[k]) if self.case.takes_lr else dict(self.hp)
        if self.case.rule == "nadam":
            out["u_product"] = _u_product(k + 1, self.ref_hp())
        return out

    def kwargs(self, k: int) -> dict:
        """nat.apply's keywords for step k (0-based)."""
        out = dict(self.case.options, **self.transform)
        if self.case.step:
            out["step"] = k + 1
        return out

    def ref_hp(self) -> dict:
        return dict(self.hp, **self.case.options)

    def effective_grad(self, g: np.ndarray) -> np.ndarray:
        """The gradient the rule sees: clip(g * scale, +-clip_value)."""
        if not self.transform:
            return g
        c = self.transform.get("clip_value", np.inf)
        return np.clip(g * self.transform.get("grad_scale", 1.0), -c, c)


def make_problem(case: Case, dtype: str, shapes, rng: np.random.Generator,
                 weight_decay: float = 0.0, transform: bool = False, steps: int = STEPS,
                 lr: float = 0.01) -> Problem:
    """Random inputs (fresh gradients for every step, never zero), as
    tests/test_family_ops.py's run_case makes them."""
    hp = dict(case.hp)
    if weight_decay and case.decays:
        hp["weight_decay"] = weight_decay
    hp = _float32_values(hp)
    init = [random_array(rng, s, dtype) for s in shapes]
    slots = {k: [f(rng, s, dtype) for s in shapes] for k, f in case.slots.items()}
    grads = [[random_array(rng, s, dtype) for s in shapes] for _ in range(steps)]
    lr_dtype = np.float64 if dtype == "float64" else np.float32
    lrs = [float(lr_dtype(lr / (1 + 0.2 * k))) for k in range(steps)]
    return Problem(case, dtype, list(shapes), init, slots, grads, lrs, hp,
                   dict(TRANSFORM) if transform else {})


def expected(p: Problem) -> list:
    """The float64 reference after every step, per tensor: [(var, {slot: x})],
    rounded to the dtype's storage after every step."""
    out = []
    hp = p.ref_hp()
    for i in range(len(p.shapes)):
        v = p.init[i]
        s = {name: xs[i] for name, xs in p.slots.items()}
        for k in range(p.steps):
            g = p.effective_grad(p.grads[k][i])
            v, s = p.case.ref(v, g, p.lrs[k], s, k + 1, hp, p.dtype)
            v = rounded(v, p.dtype)
            s = {name: rounded(x, p.dtype) for name, x in s.items()}
        out.append((v, s))
    return out


class NumpyBackend:
    """Arrays for nat.apply on the CPU (the GPU backends in
    fusedopt.bench.gpu have the same methods)."""

    name = "numpy"
    stream = 0

    def supports(self, dtype: str) -> bool:
        return cpu_supports(dtype)

    def from_f64(self, x64, dtype: str):
        return to_storage(x64, dtype)

    def to_f64(self, a) -> np.ndarray:
        return np.asarray(a).astype(np.float64)

    def bits(self, a) -> np.ndarray:
        return bits(np.asarray(a))

    def synchronize(self) -> None:
        pass


@dataclass
class NativeState:
    """The arrays of one native run (backend arrays)."""

    vars: list
    slots: dict
    skipped: list = field(default_factory=list)


def new_state(p: Problem, backend: Any = None, make=None) -> NativeState:
    """Backend arrays holding the problem's initial values. `make(x64, dtype,
    role, i)` may build them instead (misaligned views, poisoned guards)."""
    backend = backend or NumpyBackend()
    make = make or (lambda x, dt, role, i: backend.from_f64(x, dt))
    vars_ = [make(x, p.dtype, "var", i) for i, x in enumerate(p.init)]
    slots = {k: [make(x, p.dtype, k, i) for i, x in enumerate(xs)] for k, xs in p.slots.items()}
    return NativeState(vars_, slots)


def run_native(nat, p: Problem, backend: Any = None, state: NativeState | None = None,
               make_grad=None, **extra) -> NativeState:
    """Applies the problem's steps with nat.apply, one multi-tensor call per
    step (gradients made fresh per step); returns the state."""
    backend = backend or NumpyBackend()
    state = state or new_state(p, backend)
    make_grad = make_grad or (lambda x, dt, i: backend.from_f64(x, dt))
    for k in range(p.steps):
        grads = [make_grad(g, p.dtype, i) for i, g in enumerate(p.grads[k])]
        kw = p.kwargs(k)
        kw.update(extra)
        if getattr(backend, "stream", 0):
            kw.setdefault("stream", backend.stream)
        state.skipped.append(nat.apply(p.case.rule, state.vars, grads, state.slots, p.hparams(k),
                                       **kw))
        backend.synchronize()
    return state


def run_tf(tf, fops, p: Problem, **extra) -> dict:
    """The problem's steps through fusedopt.ops (eager, CPU), one call per
    step; returns state_bits-like {'var[i]' / 'slot[i]': raw bits}. The caller
    passes TensorFlow and fusedopt.ops in (this module never imports them)."""
    npdt = np_dtype(p.dtype)
    with tf.device("/CPU:0"):
        variables = [tf.Variable(to_storage(x, p.dtype)) for x in p.init]
        slots = {k: [tf.Variable(to_storage(x, p.dtype)) for x in xs]
                 for k, xs in p.slots.items()}
        options = {"grad_scale": p.transform.get("grad_scale", 1.0)}
        if "clip_value" in p.transform:
            options["clipvalue"] = p.transform["clip_value"]
        for k in range(p.steps):
            hp = p.hparams(k)
            lr = [hp.pop("lr")] if p.case.takes_lr else []
            kw = dict(hp, **slots, **p.case.options, **options, **extra)
            if p.case.step:
                kw["step"] = k + 1
            grads = [tf.constant(to_storage(g, p.dtype)) for g in p.grads[k]]
            skipped = getattr(fops, p.case.fops_name)(variables, grads, *lr, **kw)
            assert not bool(skipped)
    out = {f"var[{i}]": bits(v.numpy().astype(npdt)) for i, v in enumerate(variables)}
    for name, xs in slots.items():
        out.update({f"{name}[{i}]": bits(x.numpy().astype(npdt)) for i, x in enumerate(xs)})
    return out


def check_against_reference(p: Problem, state: NativeState, backend: Any = None,
                            exp: list | None = None) -> None:
    """Params and every slot of every tensor within the dtype's tolerance."""
    backend = backend or NumpyBackend()
    exp = exp if exp is not None else expected(p)
    assert not any(state.skipped), "nat.apply reported a skipped step"
    for i, shape in enumerate(p.shapes):
        v, s = exp[i]
        got = backend.to_f64(state.vars[i])
        assert got.shape == tuple(shape), (got.shape, shape)
        assert_close(got, v, p.dtype, f"{p.case.name} {p.dtype} var {shape}", p.case.cond)
        assert set(s) == set(state.slots), (sorted(s), sorted(state.slots))
        for name, x in s.items():
            assert_close(backend.to_f64(state.slots[name][i]), x, p.dtype,
                         f"{p.case.name} {p.dtype} {name} {shape}", p.case.cond)


def state_bits(state: NativeState, backend: Any = None) -> dict:
    """{'var[i]' / 'slot[i]': raw bits} of a state, for == comparisons."""
    backend = backend or NumpyBackend()
    out = {f"var[{i}]": backend.bits(a) for i, a in enumerate(state.vars)}
    for name, xs in state.slots.items():
        out.update({f"{name}[{i}]": backend.bits(a) for i, a in enumerate(xs)})
    return out


def compare_bits(a: dict, b: dict) -> dict:
    """{name: number of differing elements} for the entries that differ."""
    assert a.keys() == b.keys()
    return {k: int(np.count_nonzero(a[k] != b[k])) for k in a if not np.array_equal(a[k], b[k])}


def ulp_distance(x: np.ndarray, y: np.ndarray) -> int:
    """The largest distance in units in the last place between two arrays of
    raw bits of one float type (sign-magnitude to ordered integers)."""
    if x.size == 0:
        return 0
    w = x.dtype.itemsize * 8
    signed = {16: np.int16, 32: np.int32, 64: np.int64}[w]

    def ordered(u):
        s = u.view(signed).astype(np.int64) if w < 64 else u.view(np.int64)
        mag = s & ((1 << (w - 1)) - 1) if w < 64 else s & np.int64(0x7FFFFFFFFFFFFFFF)
        return np.where(s < 0, -mag, mag)

    a, b = ordered(x).reshape(-1), ordered(y).reshape(-1)
    differ = a != b
    if not differ.any():
        return 0
    # Python integers: a float64 (or int64) difference of 64-bit patterns
    # would round (or overflow).
    return max(abs(int(p) - int(q)) for p, q in zip(a[differ], b[differ]))


def hash_state(state: NativeState, backend: Any = None) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(state_bits(state, backend).items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def expected_rules_table() -> dict:
    """nat.rules() as the API promises it."""
    return {
        "sgd": (["lr", "momentum", "weight_decay"], [("momenta", True)], False),
        "adam": (["lr", "beta_1", "beta_2", "epsilon", "weight_decay"],
                 [("m", False), ("v", False), ("vhat", True)], True),
        "nadam": (["lr", "beta_1", "beta_2", "epsilon", "weight_decay", "u_product"],
                  [("m", False), ("v", False)], True),
        "adamax": (["lr", "beta_1", "beta_2", "epsilon", "weight_decay"],
                   [("m", False), ("u", False)], True),
        "rmsprop": (["lr", "rho", "momentum", "epsilon", "weight_decay"],
                    [("velocity", False), ("momenta", True), ("average_gradient", True)], False),
        "adagrad": (["lr", "epsilon", "weight_decay"], [("accumulator", False)], False),
        "adadelta": (["lr", "rho", "epsilon", "weight_decay"],
                     [("accumulated_grad", False), ("accumulated_delta_var", False)], False),
        "ftrl": (["lr", "learning_rate_power", "l1", "l2", "l2_shrinkage", "beta", "weight_decay"],
                 [("accumulator", False), ("linear", False)], False),
        "lion": (["lr", "beta_1", "beta_2", "weight_decay"], [("m", False)], False),
        "lamb": (["lr", "beta_1", "beta_2", "epsilon", "weight_decay"],
                 [("m", False), ("v", False)], True),
        "schedule_free_adamw": (["lr", "beta_1", "beta_2", "epsilon", "warmup_steps",
                                 "weight_decay"], [("momentum", False), ("velocity", False)], True),
        "muon_momentum": (["momentum"], [], False),
        "muon": (["lr", "scale", "rms_rate", "weight_decay"], [], False),
    }


# --- the GPU half (tests/gpu) ----------------------------------------------------------------


def gpu_environment():
    """(nat, arrays, bf16_arrays) for the GPU tests, or a string saying why
    they cannot run here. arrays: CuPy if importable, else PyTorch
    (fusedopt.bench.gpu); bf16_arrays: PyTorch (CuPy has no bfloat16) or None."""
    try:
        import fusedopt._native as nat
    except ImportError as e:
        return f"fusedopt._native is not importable: {e}"
    if os.environ.get("FUSEDOPT_GPU_TESTS_ON_CPU") == "1":  # a check of the tests themselves
        from fusedopt.bench import gpu as bench_gpu

        arrays = bench_gpu.device_arrays("torch", device="cpu") or bench_gpu.NumpyArrays()
        return nat, arrays, arrays if arrays.supports("bfloat16") else None
    if not nat.cuda_built():
        return "fusedopt._native was built without CUDA"
    if not nat.cuda_available():
        return f"CUDA is not usable: {nat.cuda_info().get('status')}"
    from fusedopt.bench import gpu as bench_gpu

    arrays = bench_gpu.device_arrays(os.environ.get("FUSEDOPT_GPU_ARRAYS") or None)
    if arrays is None:
        return "neither CuPy nor PyTorch with CUDA is importable (the GPU tests need one)"
    bf16 = arrays if arrays.supports("bfloat16") else bench_gpu.device_arrays("torch")
    return nat, arrays, bf16
