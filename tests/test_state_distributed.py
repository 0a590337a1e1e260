"""Low-precision optimizer state (state_dtype "bfloat16" and "int8",
stochastic_rounding, rounding_seed; Note [low-precision state] in
fusedopt/keras/_base.py, Note [legacy low-precision state] in
fusedopt/legacy/_base.py) under tf.distribute.MirroredStrategy on two logical
CPUs.

What it checks, for fusedopt.keras (Adam, SGD with momentum, Lion) and
fusedopt.legacy (Adam, which supports MirroredStrategy):

* training: a small model whose first kernel (64x96, 6144 elements) gets int8
  codes (the smaller variables float32 slots) or bfloat16 slots trains under
  the strategy, in a custom loop (``strategy.run`` + ``apply_gradients``, each
  replica on its own half of the batch; also a bfloat16 model with
  ``stochastic_rounding``) and with ``model.fit``, over several steps: the
  loss falls and the iteration counter counts the steps;
* replicas agree: afterwards both replicas' copies of every model variable and
  every optimizer variable (uint8 codes, float32 absmax, bfloat16 slots,
  float32 slots, the iteration counter) are the same bits: the stochastic
  rounding (the same seed and step on both replicas) does not diverge;
* bit-exactness against one device: every replica is fed half of a fixed
  gradient (exact in binary), so the all-reduced sum is that gradient bit for
  bit; the same optimizer without a strategy applying the gradient for as
  many steps ends with the same bits in every variable and slot, with int8
  and bfloat16 state, float32 variables and bfloat16 ones rounded
  stochastically (``stochastic_rounding=True``). A run with another
  ``rounding_seed`` differs, so the comparison sees the rounding bits.

Each bit-exactness run has variables of one dtype: MirroredStrategy's batched
all-reduce fails on float32 and bfloat16 gradients in one call (for Keras' own
optimizers too). tf_keras casts Adam's coefficients to the variables' dtype,
where beta_2=0.999 is 1 (a bfloat16 variable never moves, for the built-in as
for fusedopt.legacy): the legacy bfloat16 runs take a beta_2 bfloat16 holds.

Logical devices must be configured before TensorFlow initializes, so the
training runs in subprocesses (as in tests/test_distribute.py): one for
fusedopt.keras, one for fusedopt.legacy, started together.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# (class, state_dtype, the variables' dtype, stochastic_rounding)
KERAS_EXACT = [("Adam", "int8", "float32", False), ("Adam", "int8", "bfloat16", True),
               ("Adam", "bfloat16", "float32", False), ("Adam", "bfloat16", "bfloat16", True),
               ("SGD", "int8", "bfloat16", True), ("SGD", "bfloat16", "float32", False),
               ("Lion", "bfloat16", "bfloat16", True)]
LEGACY_EXACT = [("Adam", "int8", "float32", False), ("Adam", "int8", "bfloat16", True),
                ("Adam", "bfloat16", "bfloat16", True)]


def exact_case(name, state_dtype, weights, sr):
    return f"exact {name} {state_dtype} state, {weights} weights" + (", sr" if sr else "")


# (The probes get the tables as literals.)
TABLES = (f"KERAS_EXACT = {KERAS_EXACT!r}\nLEGACY_EXACT = {LEGACY_EXACT!r}\n\n\n"
          + inspect.getsource(exact_case))

COMMON = """
import contextlib
import json
import numpy as np, tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2

rng = np.random.default_rng(0)
X = rng.standard_normal((256, 64)).astype("float32")
Y = np.argmax(X @ rng.standard_normal((64, 4)).astype("float32"), axis=1).astype("int32")
BATCH = 64  # the global batch: 32 examples per replica

# The variables of the bit-exactness runs, all of one dtype (MirroredStrategy's
# batched all-reduce cannot take float32 and bfloat16 gradients in one call,
# for Keras' own optimizers neither): under int8, state for the two with >=
# 4096 elements (two tensors of one call: their rounding keys differ by the
# tensor's position), float32 slots for the vector.
EXACT_SHAPES = [(64, 96), (96,), (40, 128)]
EXACT_STEPS = 4


def exact_inputs():
    r = np.random.default_rng(1)
    init = [r.standard_normal(s).astype("float32") for s in EXACT_SHAPES]
    # Gradients of varied scale (and signs, and a few zeros) per step.
    grads = []
    for t in range(EXACT_STEPS):
        step = []
        for s in EXACT_SHAPES:
            g = r.standard_normal(s).astype("float32") * np.float32(10.0 ** r.integers(-3, 1))
            g.reshape(-1)[t::53] = 0
            step.append(g)
        grads.append(step)
    return init, grads


def components(v):
    \"\"\"Each replica's copy of a (Keras, TF or mirrored) variable.\"\"\"
    v = getattr(v, "value", v) if not isinstance(v, tf.Variable) else v
    values = getattr(v, "values", None)
    return list(values) if values is not None else [v]


def bits(t):
    return np.asarray(t.numpy()).tobytes()


def replica_report(named):
    \"\"\"named: [(name, variable)]. The names whose replicas differ, how many
    were compared (each must have two copies), and the dtypes seen.\"\"\"
    differ, single, dtypes = [], [], set()
    for name, v in named:
        c = components(v)
        if len(c) != 2:
            single.append(name)
            continue
        dtypes.add(c[0].dtype.name)
        if bits(c[0]) != bits(c[1]):
            differ.append(name)
    return {"differ": differ, "not_mirrored": single, "checked": len(named),
            "dtypes": sorted(dtypes)}


def compare_to_single(mirrored_named, single_named):
    \"\"\"The names whose copies (on either replica) differ from the single
    device's variable in the same position.\"\"\"
    assert len(mirrored_named) == len(single_named), (len(mirrored_named), len(single_named))
    differ = []
    for (name, v), (_, w) in zip(mirrored_named, single_named):
        want = bits(w)
        if any(bits(c) != want for c in components(v)) or components(v)[0].dtype != w.dtype:
            differ.append(name)
    return differ


def training_report(named, opt, losses, steps):
    \"\"\"replica_report of named, with the losses, each replica's iteration
    count and the number of steps taken.\"\"\"
    res = replica_report(named)
    res.update(losses=losses, iterations=[int(c.numpy()) for c in components(opt.iterations)],
               steps=steps)
    return res


def train_custom_loop(model, opt, batch_loss, steps):
    \"\"\"steps steps of strategy.run(apply_gradients) on the global batches of
    (X, Y), each replica on its half; batch_loss(y, logits) is a replica's
    loss. Returns the global losses.\"\"\"
    data = mirrored.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((X, Y)).repeat().batch(BATCH))

    @tf.function
    def step(xb, yb):
        def replica(xb, yb):
            with tf.GradientTape() as tape:
                loss = batch_loss(yb, model(xb, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        return mirrored.reduce("SUM", mirrored.run(replica, args=(xb, yb)), axis=None)

    it = iter(data)
    return [float(step(*next(it))) for _ in range(steps)]


def exact_run(make_variable, make_optimizer, named_state, cfg, weights, other_seed):
    \"\"\"The bit-exactness run of one configuration: EXACT_STEPS steps under
    MirroredStrategy, each replica given half of each gradient, against the
    same steps on one device without a strategy (and, with other_seed, on one
    device with rounding_seed + 1).

    make_variable(value, name) -> a variable; make_optimizer(cfg, variables)
    -> an optimizer for them; named_state(variables, optimizer) -> [(name,
    variable)] of the variables and every optimizer variable.\"\"\"
    init, grads = exact_inputs()

    def train(cfg, strategy=None):
        with strategy.scope() if strategy else contextlib.nullcontext():
            vs = [make_variable(tf.cast(v, weights), f"w{i}") for i, v in enumerate(init)]
            opt = make_optimizer(cfg, vs)

        @tf.function
        def step(gs):
            if strategy is None:
                opt.apply_gradients(zip(gs, vs))
                return

            def replica():
                # Half the gradient on each replica: the all-reduced sum is
                # gs, exactly.
                opt.apply_gradients(zip([g * tf.constant(0.5, g.dtype) for g in gs], vs))
            strategy.run(replica)

        for gs in grads:
            step([tf.cast(g, weights) for g in gs])
        return named_state(vs, opt), opt

    named, opt = train(cfg, mirrored)
    res = replica_report(named)
    res["vs_single"] = compare_to_single(named, train(cfg)[0])
    res["unchanged"] = [n for (n, v), i in zip(named, init)
                        if bits(components(v)[0]) == bits(tf.cast(i, weights))]
    res["iterations"] = [int(c.numpy()) for c in components(opt.iterations)]
    res["steps"] = EXACT_STEPS
    res["nonzero_codes"] = [n for n, v in named if components(v)[0].dtype == tf.uint8
                            and np.count_nonzero(components(v)[0].numpy()) > 0]
    if other_seed:
        other = dict(cfg, rounding_seed=cfg.get("rounding_seed", 0) + 1)
        res["vs_other_seed"] = compare_to_single(named, train(other)[0])
    return res
"""

KERAS_PROBE = COMMON + """
import keras
import fusedopt.keras as fk

CLASSES = {"Adam": (fk.Adam, dict(learning_rate=1e-2)),
           "SGD": (fk.SGD, dict(learning_rate=0.05, momentum=0.9)),
           "Lion": (fk.Lion, dict(learning_rate=1e-3))}
out = {}


def make_model(dtype="float32"):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)),
                             keras.layers.Dense(96, activation="relu", dtype=dtype),
                             keras.layers.Dense(4, dtype=dtype)])


def named_state(weights, opt):
    return [(w.path, w) for w in weights] + [(v.path, v) for v in opt.variables]


LOSS = keras.losses.SparseCategoricalCrossentropy(
    from_logits=True, reduction="sum_over_batch_size")


def custom_loop(name, cfg, steps=6, dtype="float32"):
    cls, kw = CLASSES[name]
    with mirrored.scope():
        model = make_model(dtype)
        opt = cls(**kw, **cfg)
        opt.build(model.trainable_variables)
    # (Under a strategy a Keras loss divides each replica's mean by the number
    # of replicas: the sum over replicas is the global batch's mean.)
    losses = train_custom_loop(model, opt, LOSS, steps)
    return training_report(named_state(model.weights, opt), opt, losses, steps)


def fit(name, cfg, epochs=2):
    cls, kw = CLASSES[name]
    with mirrored.scope():
        model = make_model()
        opt = cls(**kw, **cfg)
        model.compile(optimizer=opt, loss=LOSS)
    history = model.fit(X, Y, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=False)
    return training_report(named_state(model.weights, opt), opt, history.history["loss"],
                           epochs * len(X) // BATCH)


def exact(name, cfg, weights, other_seed=False):
    cls, kw = CLASSES[name]

    def make_optimizer(cfg, variables):
        opt = cls(**kw, **cfg)
        opt.build(variables)
        return opt

    return exact_run(lambda value, name: keras.Variable(value, name=name), make_optimizer,
                     named_state, cfg, weights, other_seed)


for name, state_dtype in [("Adam", "int8"), ("Adam", "bfloat16"), ("SGD", "int8"),
                          ("SGD", "bfloat16")]:
    out[f"custom {name} {state_dtype}"] = custom_loop(
        name, dict(state_dtype=state_dtype, rounding_seed=7))
# A bfloat16 model (its variables rounded stochastically) with int8 state.
out["custom Adam int8 sr"] = custom_loop(
    "Adam", dict(state_dtype="int8", stochastic_rounding=True), dtype="bfloat16")
for name, state_dtype in [("Adam", "int8"), ("Adam", "bfloat16"), ("Lion", "int8")]:
    out[f"fit {name} {state_dtype}"] = fit(name, dict(state_dtype=state_dtype))
for name, state_dtype, weights, sr in KERAS_EXACT:
    cfg = dict(state_dtype=state_dtype, stochastic_rounding=sr, rounding_seed=3)
    # (Another seed changes bits where rounding is stochastic: bfloat16 state,
    # or bfloat16 weights with stochastic_rounding.)
    out[exact_case(name, state_dtype, weights, sr)] = exact(
        name, cfg, weights, other_seed=state_dtype == "bfloat16" or sr)
print(json.dumps(out))
"""

LEGACY_PROBE = COMMON + """
import tf_keras
import fusedopt.legacy as fl

out = {}


def make_model():
    tf_keras.utils.set_random_seed(0)
    return tf_keras.Sequential([tf_keras.layers.Dense(96, activation="relu", input_shape=(64,)),
                                tf_keras.layers.Dense(4)])


def named_state(weights, opt):
    return [(w.name, w) for w in weights] + [(v.name, v) for v in opt.variables()]


LOSS = tf_keras.losses.SparseCategoricalCrossentropy(
    from_logits=True, reduction=tf_keras.losses.Reduction.NONE)


def custom_loop(cfg, steps=6):
    with mirrored.scope():
        model = make_model()
        opt = fl.Adam(1e-2, **cfg)
    losses = train_custom_loop(
        model, opt, lambda y, logits: tf.reduce_sum(LOSS(y, logits)) / BATCH, steps)
    res = training_report(named_state(model.weights, opt), opt, losses, steps)
    res["n_slots"] = len(opt.variables())
    return res


def fit(cfg, epochs=2):
    with mirrored.scope():
        model = make_model()
        opt = fl.Adam(1e-2, **cfg)
        model.compile(optimizer=opt, loss=tf_keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
    history = model.fit(X, Y, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=False)
    return training_report(named_state(model.weights, opt), opt, history.history["loss"],
                           epochs * len(X) // BATCH)


def exact(cfg, weights, other_seed=False):
    if weights == "bfloat16":
        # (tf_keras casts the coefficients to the variables' dtype, where
        # 0.999 is 1: beta_2 = 1 - 2**-6, a bfloat16 value, lets v grow.)
        cfg = dict(cfg, beta_2=0.984375)
    return exact_run(lambda value, name: tf.Variable(value, name=name),
                     lambda cfg, variables: fl.Adam(1e-2, **cfg), named_state, cfg, weights,
                     other_seed)


out["custom Adam int8"] = custom_loop(dict(state_dtype="int8", rounding_seed=7))
out["custom Adam bfloat16"] = custom_loop(dict(state_dtype="bfloat16", rounding_seed=7))
out["fit Adam int8"] = fit(dict(state_dtype="int8"))
for name, state_dtype, weights, sr in LEGACY_EXACT:
    cfg = dict(state_dtype=state_dtype, stochastic_rounding=sr, rounding_seed=3)
    out[exact_case(name, state_dtype, weights, sr)] = exact(
        cfg, weights, other_seed=state_dtype == "bfloat16" or sr)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results():
    """Both probes' results ({"keras": ..., "legacy": ...}), the two
    subprocesses running at the same time."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = {}
    for family, probe in (("keras", KERAS_PROBE), ("legacy", LEGACY_PROBE)):
        if family == "legacy":
            try:
                import tf_keras  # noqa: F401
            except ImportError:
                continue
        procs[family] = subprocess.Popen(
            [sys.executable, "-c", TABLES + textwrap.dedent(probe)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env)
    finished = {}
    try:
        for family, p in procs.items():
            finished[family] = p.communicate(timeout=600)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
    out = {}
    for family, (stdout, stderr) in finished.items():
        assert procs[family].returncode == 0, f"{family} probe failed:\n{stderr[-4000:]}"
        out[family] = json.loads(stdout.strip().splitlines()[-1])
    return out


def _replicas_identical(res, *, dtypes):
    assert res["checked"] >= 8, res
    assert res["not_mirrored"] == [], res
    assert res["differ"] == [], res
    assert set(dtypes) <= set(res["dtypes"]), res


def _trained(res):
    assert res["iterations"] == [res["steps"]] * 2, res
    losses = res["losses"]
    assert all(np.isfinite(losses)), res
    assert losses[-1] < losses[0], res


# What an optimizer holds in each state format besides the variables' dtype:
# int8 uint8 codes, float32 absmax (and float32 slots of small variables) and
# the int64 counter; bfloat16 bfloat16 slots and the counter.
STATE_DTYPES = {"int8": ("uint8", "float32", "int64"), "bfloat16": ("bfloat16", "int64")}

KERAS_TRAINING = ["custom Adam int8", "custom Adam bfloat16", "custom SGD int8",
                  "custom SGD bfloat16", "custom Adam int8 sr", "fit Adam int8",
                  "fit Adam bfloat16", "fit Lion int8"]


@pytest.mark.parametrize("case", KERAS_TRAINING)
def test_keras_trains_and_replicas_stay_identical(results, case):
    """A model with an int8 (or bfloat16) state kernel trains under
    MirroredStrategy (custom loop on split batches, or model.fit), and
    afterwards both replicas hold the same bits in every model and optimizer
    variable: codes, absmax, bfloat16 and float32 slots, iterations."""
    res = results["keras"][case]
    _trained(res)
    _replicas_identical(res, dtypes=STATE_DTYPES[case.split()[2]] +
                        (("bfloat16",) if case.endswith(" sr") else ()))


def _exact(res, state_dtype, weights):
    assert res["iterations"] == [res["steps"]] * 2, res
    _replicas_identical(res, dtypes=STATE_DTYPES[state_dtype] + (weights,))
    assert res["vs_single"] == [], res
    # The steps changed every variable (the comparison is not vacuous), and
    # the int8 codes of both large variables (w0, w2) hold values.
    assert res["unchanged"] == [], res
    if state_dtype == "int8":
        for name in ("w0", "w2"):
            assert any(f"{name}_" in n or f"/{name}/" in n for n in res["nonzero_codes"]), res
    if "vs_other_seed" in res:
        # Another rounding_seed gives other bits: the comparison above sees the
        # stochastic rounding.
        assert res["vs_other_seed"], res


@pytest.mark.parametrize("name,state_dtype,weights,sr", KERAS_EXACT,
                         ids=[exact_case(*c) for c in KERAS_EXACT])
def test_keras_mirrored_equals_one_device_bit_for_bit(results, name, state_dtype, weights, sr):
    """Each replica fed half a fixed gradient (the all-reduced sum is the
    gradient exactly) ends where the same optimizer without a strategy ends
    after the same steps: every variable and optimizer variable bit for bit,
    float32 or bfloat16 variables (rounded stochastically with sr) and int8 or
    bfloat16 state."""
    _exact(results["keras"][exact_case(name, state_dtype, weights, sr)], state_dtype, weights)


@pytest.mark.parametrize("case", ["custom Adam int8", "custom Adam bfloat16", "fit Adam int8"])
def test_legacy_trains_and_replicas_stay_identical(results, case):
    """fusedopt.legacy.Adam with int8 (or bfloat16) state under
    MirroredStrategy, which it supports: trains, and its variables and slots
    (codes and absmax slots included) and iterations are the same bits on
    both replicas."""
    if "legacy" not in results:
        pytest.skip("tf_keras is not installed")
    res = results["legacy"][case]
    _trained(res)
    _replicas_identical(res, dtypes=STATE_DTYPES[case.split()[2]])


@pytest.mark.parametrize("name,state_dtype,weights,sr", LEGACY_EXACT,
                         ids=[exact_case(*c) for c in LEGACY_EXACT])
def test_legacy_mirrored_equals_one_device_bit_for_bit(results, name, state_dtype, weights, sr):
    """fusedopt.legacy.Adam, the same comparison with one device."""
    if "legacy" not in results:
        pytest.skip("tf_keras is not installed")
    _exact(results["legacy"][exact_case(name, state_dtype, weights, sr)], state_dtype, weights)
