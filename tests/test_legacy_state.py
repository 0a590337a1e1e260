"""fusedopt.legacy with low-precision optimizer state (issue #31; Note [legacy
low-precision state] in fusedopt/legacy/_base.py).

Each tf_keras class with a state rule trains with bfloat16 and int8 state
against the float64 references (fusedopt.reference) step by step, from the
state it holds before each step, as tests/test_state.py checks the ops; SGD
with momentum bit for bit against fusedopt.state's NumPy arithmetic (codes,
absmax, stochastic rounding with the optimizer's seed). Then slots, configs,
checkpoints, sparse routes, refusals and all-or-nothing steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

tf_keras = pytest.importorskip("tf_keras")

import fusedopt  # noqa: E402
import fusedopt.legacy as fl  # noqa: E402
from fusedopt import reference, state  # noqa: E402
from fusedopt.legacy import _base  # noqa: E402
from test_state import _assert_codes_close, _sgd_momentum_f32  # noqa: E402

BIG = (6, 900)  # 5400 elements: int8 state, rows of four blocks (the last one short)
SMALL = (10,)   # under MIN_QUANTIZED_ELEMENTS: float32 state under int8
GOLDEN = 0x9E3779B97F4A7C15



def _f32(**scalars):
    """The reference's scalars as the classes pass them: tensors in the
    variables' dtype (float32), so e.g. 1 - beta_2 is 1 - 0.999f."""
    return {k: float(np.float32(v)) if isinstance(v, float) else v for k, v in scalars.items()}


ADAM = dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7)

# (id, class, constructor arguments, rule, {slot: registry slot}, the reference's
# scalars, whether the rule takes the step)
CASES = [
    ("sgd_momentum", "SGD", dict(learning_rate=0.05, momentum=0.9), "sgd",
     {"momentum": "momenta"}, _f32(lr=0.05, momentum=0.9), False),
    ("sgd_nesterov", "SGD", dict(learning_rate=0.05, momentum=0.9, nesterov=True), "sgd",
     {"momentum": "momenta"}, _f32(lr=0.05, momentum=0.9, nesterov=True), False),
    ("adam", "Adam", dict(learning_rate=1e-3), "adam", {"m": "m", "v": "v"},
     _f32(lr=1e-3, **ADAM), True),
    ("adam_amsgrad", "Adam", dict(learning_rate=1e-3, amsgrad=True), "adam",
     {"m": "m", "v": "v", "vhat": "vhat"}, _f32(lr=1e-3, **ADAM), True),
    ("adamw", "AdamW", dict(learning_rate=1e-3, weight_decay=0.01), "adam",
     {"m": "m", "v": "v"}, _f32(lr=1e-3, weight_decay=0.01, **ADAM), True),
    ("nadam", "Nadam", dict(learning_rate=1e-3), "nadam", {"m": "m", "v": "v"},
     dict(_f32(lr=1e-3, **ADAM), schedule_decay=0.004), True),
    ("adamax", "Adamax", dict(learning_rate=1e-3), "adamax", {"m": "m", "v": "u"},
     _f32(lr=1e-3, **ADAM), True),
    # (A large epsilon: where it goes, inside or outside the square root, shows.)
    ("rmsprop", "RMSprop", dict(learning_rate=1e-3, epsilon=0.01), "rmsprop",
     {"rms": "velocity"}, _f32(lr=1e-3, rho=0.9, epsilon=0.01, epsilon_outside_sqrt=True),
     False),
    ("rmsprop_momentum", "RMSprop", dict(learning_rate=1e-3, momentum=0.5, epsilon=0.01),
     "rmsprop", {"rms": "velocity", "momentum": "momenta"},
     _f32(lr=1e-3, rho=0.9, epsilon=0.01, momentum=0.5), False),
    ("rmsprop_centered", "RMSprop", dict(learning_rate=1e-3, centered=True, epsilon=0.01),
     "rmsprop", {"rms": "velocity", "mg": "average_gradient"},
     _f32(lr=1e-3, rho=0.9, epsilon=0.01, epsilon_outside_sqrt=True), False),
    ("adagrad", "Adagrad", dict(learning_rate=0.05, epsilon=0.01), "adagrad",
     {"accumulator": "accumulator"}, _f32(lr=0.05, epsilon=0.01, epsilon_outside_sqrt=True),
     False),
    ("lion", "Lion", dict(learning_rate=1e-4), "lion", {"m": "m"},
     _f32(lr=1e-4, beta_1=0.9, beta_2=0.99), False),
]
STATE_CASES = [(c, sd) for c in CASES for sd in ("bfloat16", "int8")
               if not (c[0] == "rmsprop_centered" and sd == "int8")]


def _nonneg(rule):
    return set(_base._low_precision_rules()[rule])


def _read_slot(opt, var, name, signed):
    """A slot's values as float32 (dequantized, or the bfloat16 values)."""
    slot = opt.get_slot(var, name)
    if slot.dtype == tf.uint8:
        absmax = opt.get_slot(var, f"{name}_absmax").numpy()
        return state.dequantize(slot.numpy(), absmax, signed=signed)
    return tf.cast(slot, tf.float32).numpy()


@pytest.mark.parametrize("case,state_dtype", STATE_CASES,
                         ids=[f"{c[0]}-{sd}" for c, sd in STATE_CASES])
def test_steps_follow_the_float64_reference(rng, case, state_dtype):
    _, cls, kwargs, rule, slot_map, scalars, stepped = case
    opt = getattr(fl, cls)(**kwargs, state_dtype=state_dtype, rounding_seed=7)
    big = tf.Variable(rng.standard_normal(BIG).astype(np.float32))
    small = tf.Variable(rng.standard_normal(SMALL).astype(np.float32))
    nonneg = _nonneg(rule)

    @tf.function
    def step(g1, g2):
        opt.apply_gradients([(g1, big), (g2, small)])

    opt._create_all_weights([big, small])  # (the slots, with their initial values)
    for t in range(1, 4):
        grads = [rng.standard_normal(v.shape).astype(np.float32) for v in (big, small)]
        want = []
        for var, g in zip((big, small), grads):
            before = {reg: _read_slot(opt, var, name, reg not in nonneg)
                      for name, reg in slot_map.items()}
            extra = {}
            if rule == "nadam":
                extra["u_product"] = float(
                    (1.0 if t == 1 else opt._m_cache.numpy())
                    * reference.nadam_u(t, scalars["beta_1"], 0.004))
            want.append(reference.apply_rule(
                rule, var.numpy().astype(np.float64), g.astype(np.float64),
                {k: v.astype(np.float64) for k, v in before.items()},
                step=t if stepped else None, **scalars, **extra))
        step(*[tf.constant(g) for g in grads])
        for var, (want_var, want_slots), is_big in zip((big, small), want, (True, False)):
            np.testing.assert_allclose(var.numpy(), want_var, rtol=3e-6,
                                       atol=3e-7 * np.abs(want_var).max())
            fmt = state_dtype if (is_big or state_dtype == "bfloat16") else "float32"
            for name, reg in slot_map.items():
                slot = opt.get_slot(var, name)
                got_want = want_slots[reg].astype(np.float32)
                signed = reg not in nonneg
                if fmt == "int8":
                    assert slot.dtype == tf.uint8 and slot.shape == var.shape
                    absmax = opt.get_slot(var, f"{name}_absmax")
                    assert absmax.dtype == tf.float32
                    assert absmax.shape == (state.num_blocks(var.shape),)
                    want_c, want_a = state.quantize(got_want, signed=signed)
                    np.testing.assert_allclose(absmax.numpy(), want_a, rtol=3e-6, err_msg=name)
                    _assert_codes_close(slot.numpy(), want_c, want_a, signed=signed,
                                        what=f"{cls} {name} step {t}")
                elif fmt == "bfloat16":
                    assert slot.dtype == tf.bfloat16
                    got = tf.cast(slot, tf.float32).numpy()
                    # Stochastic rounding: one of the two bfloat16 neighbours
                    # (of the float32 value, which float32 cancellation in
                    # the update can move by a few ulps of the largest terms).
                    floor = 2e-6 * np.abs(got_want).max() + 1e-30
                    np.testing.assert_array_less(
                        np.abs(got - got_want), np.abs(got_want) * 2.0 ** -7 + floor,
                        err_msg=f"{cls} {name} step {t}")
                else:
                    assert slot.dtype == tf.float32
                    assert f"{name}_absmax" not in opt._slots[_var_key(var)]
                    np.testing.assert_allclose(slot.numpy(), got_want, rtol=3e-6,
                                               atol=1e-6 * np.abs(got_want).max() + 1e-30)


def _var_key(var):
    from tf_keras.src.optimizers.legacy import optimizer_v2

    return optimizer_v2._var_key(var)


def _seed(opt_seed, iterations):
    """The rounding seed of the step after ``iterations`` steps."""
    return iterations + opt_seed * GOLDEN % (1 << 63)


@pytest.mark.parametrize("multi_tensor", [True, False])
def test_int8_sgd_momentum_is_bit_exact(rng, multi_tensor):
    opt = fl.SGD(0.05, momentum=0.9, state_dtype="int8", multi_tensor=multi_tensor)
    var = tf.Variable(rng.standard_normal(BIG).astype(np.float32))
    m = np.zeros(BIG, np.float32)
    for _ in range(3):
        g = rng.standard_normal(BIG).astype(np.float32)
        want_var, want_m = _sgd_momentum_f32(var.numpy(), m, g, 0.05, 0.9)
        want_c, want_a = state.quantize(want_m, signed=True)
        opt.apply_gradients([(tf.constant(g), var)])
        np.testing.assert_array_equal(var.numpy(), want_var)
        np.testing.assert_array_equal(opt.get_slot(var, "momentum").numpy(), want_c)
        np.testing.assert_array_equal(opt.get_slot(var, "momentum_absmax").numpy(), want_a)
        m = state.dequantize(want_c, want_a, signed=True)


@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
def test_bfloat16_sgd_momentum_is_bit_exact_with_the_optimizers_seed(rng, weights):
    seed = int(rng.integers(1, 2**40))
    vdt = tf.as_dtype(weights)
    opt = fl.SGD(0.05, momentum=0.9, state_dtype="bfloat16", rounding_seed=seed,
                 stochastic_rounding=weights == "bfloat16")
    var = tf.Variable(tf.cast(rng.standard_normal(BIG).astype(np.float32), vdt))
    m = np.zeros(BIG, np.float32)
    idx = np.arange(m.size).reshape(BIG)
    # tf_keras' coefficients are tensors of the variables' dtype.
    lr, momentum = (float(tf.cast(tf.cast(x, vdt), tf.float32)) for x in (0.05, 0.9))
    for it in range(3):
        g = tf.cast(rng.standard_normal(BIG).astype(np.float32), vdt)
        v32 = tf.cast(var, tf.float32).numpy()
        want_var, want_m = _sgd_momentum_f32(v32, m, tf.cast(g, tf.float32).numpy(), lr,
                                             momentum)
        s = _seed(seed, it)
        want_m = state.stochastic_bfloat16(want_m, state.rounding_bits(s, 0, idx, slot=0))
        if weights == "bfloat16":
            want_var = state.stochastic_bfloat16(want_var, state.rounding_bits(s, 0, idx))
        opt.apply_gradients([(g, var)])
        got_m = tf.cast(opt.get_slot(var, "momentum"), tf.float32).numpy()
        np.testing.assert_array_equal(got_m, want_m)
        np.testing.assert_array_equal(tf.cast(var, tf.float32).numpy(), want_var)
        m = got_m


def test_adagrad_int8_accumulator_starts_at_the_initial_value():
    opt = fl.Adagrad(0.05, initial_accumulator_value=0.1, state_dtype="int8")
    var = tf.Variable(tf.zeros(BIG))
    opt.apply_gradients([(tf.zeros(BIG), var)])  # (a zero gradient keeps the accumulator)
    values = _read_slot(opt, var, "accumulator", signed=False)
    np.testing.assert_array_equal(values, np.full(BIG, 0.1, np.float32))
    # Its code is the unsigned one: as the op reads it, 0.1 exactly.
    codes, absmax = state.quantize(np.full(BIG, 0.1, np.float32), signed=False)
    np.testing.assert_array_equal(opt.get_slot(var, "accumulator").numpy(), codes)


def test_float32_state_and_other_dtypes_keep_the_builtins_slots(rng):
    """state_dtype="float32" is the built-in; variables of other dtypes than
    float32 and bfloat16 keep slots of their dtype (as fusedopt.keras), and
    their updates are the built-in's, bit for bit."""
    x = rng.standard_normal(BIG)
    grads = [rng.standard_normal(BIG) for _ in range(3)]
    fused, builtin = fl.Adam(1e-3, state_dtype="int8"), tf_keras.optimizers.legacy.Adam(1e-3)
    a, b = tf.Variable(x), tf.Variable(x)  # float64
    for g in grads:
        fused.apply_gradients([(tf.constant(g), a)])
        builtin.apply_gradients([(tf.constant(g), b)])
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert fused.get_slot(a, "m").dtype == tf.float64
    assert "m_absmax" not in fused.get_slot_names()
    opt = fl.Adam(1e-3)
    v = tf.Variable(tf.zeros(BIG))
    opt.apply_gradients([(tf.ones(BIG), v)])
    assert opt.get_slot(v, "m").dtype == tf.float32
    assert "state_dtype" not in opt.get_config()


@pytest.mark.parametrize("cls,kwargs", [
    ("Adam", dict(state_dtype="int8")),
    ("RMSprop", dict(centered=True, state_dtype="bfloat16", rounding_seed=3)),
    ("SGD", dict(momentum=0.9, state_dtype="bfloat16", stochastic_rounding=True)),
    ("Lion", dict(state_dtype="int8", rounding_seed=-5)),
])
def test_config_round_trip(cls, kwargs):
    opt = getattr(fl, cls)(**kwargs)
    config = opt.get_config()
    for key in ("state_dtype", "stochastic_rounding", "rounding_seed"):
        if key in kwargs:
            assert config[key] == kwargs[key]
        else:
            assert key not in config
    again = getattr(fl, cls).from_config(config)
    assert (again.state_dtype, again.stochastic_rounding, again.rounding_seed) == (
        opt.state_dtype, opt.stochastic_rounding, opt.rounding_seed)
    assert tf_keras.optimizers.deserialize(
        tf_keras.optimizers.serialize(opt), use_legacy_optimizer=True).get_config() == config


@pytest.mark.parametrize("cls,kwargs", [("Adagrad", dict(learning_rate=0.05)),
                                        ("Adam", dict(learning_rate=1e-3)),
                                        ("Nadam", dict(learning_rate=1e-3))])
@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_checkpoint_round_trip(rng, tmp_path, cls, kwargs, state_dtype):
    x = [rng.standard_normal(s).astype(np.float32) for s in (BIG, SMALL)]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in (BIG, SMALL)]
             for _ in range(4)]

    def make():
        return getattr(fl, cls)(**kwargs, state_dtype=state_dtype), [tf.Variable(v) for v in x]

    def train(opt, vs, gs):
        for g in gs:
            opt.apply_gradients(zip([tf.constant(a) for a in g], vs))

    opt, vs = make()
    train(opt, vs, grads[:2])
    ckpt = tf.train.Checkpoint(optimizer=opt, vars=vs)
    path = ckpt.save(str(tmp_path / "ckpt"))
    saved = _all_state(opt, vs)
    saved_vars = [v.numpy().copy() for v in vs]
    assert any(w.dtype != tf.float32 for w in opt.weights if w.shape == BIG)
    train(opt, vs, grads[2:3])
    ckpt.restore(path).assert_consumed()
    for (what, a), (_, b) in zip(_all_state(opt, vs), saved):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=what)
    # Into a new optimizer (its slots made by the restore, before any step):
    # the same state, and the next steps the same numbers.
    opt2, vs2 = make()
    tf.train.Checkpoint(optimizer=opt2, vars=vs2).restore(
        path).assert_existing_objects_matched()
    for a, b in zip(vs2, saved_vars):
        np.testing.assert_array_equal(a.numpy(), b)
    # (The restore made the slots, codes and absmax included, in their dtypes.)
    restored = _all_state(opt2, vs2)
    assert [w for w, _ in restored if " " in w] == [w for w, _ in saved if " " in w]
    for (what, a), (_, b) in zip(restored, saved):
        if " " in what:
            assert a.dtype == b.dtype, what
            np.testing.assert_array_equal(a, b, err_msg=what)
    ckpt.restore(path)
    train(opt, vs, grads[2:])
    train(opt2, vs2, grads[2:])
    assert len(opt.weights) == len(opt2.weights)
    for (what, a), (_, b) in zip(_all_state(opt, vs), _all_state(opt2, vs2)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=what)


def _all_state(opt, variables):
    """(what, value) of the variables, each one's slots and the optimizer's
    other weights (the iterations, Nadam's momentum cache)."""
    out = []
    slot_ids = set()
    for i, var in enumerate(variables):
        out.append((f"var {i}", var.numpy().copy()))
        for name in sorted(opt._slots[_var_key(var)]):
            slot = opt.get_slot(var, name)
            slot_ids.add(id(slot))
            out.append((f"var {i} {name} ({slot.dtype.name})", slot.numpy().copy()))
    out += [(w.name, w.numpy().copy()) for w in opt.weights if id(w) not in slot_ids]
    return out


# ---- tf.train.Checkpoint across state formats (Note [legacy state checkpoints]) -----

# (class, constructor arguments, {slot: signed code})
CONVERT_CASES = [("Adam", dict(learning_rate=1e-3), {"m": True, "v": False}),
                 ("Adagrad", dict(learning_rate=0.05, initial_accumulator_value=0.3),
                  {"accumulator": False})]
WHEN = ["built", "restore_on_create", "deferred"]


def _saved_state(cls, kwargs, state_dtype, rng, tmp_path):
    """(checkpoint path, variables' initial values, optimizer, variables) after
    two steps of ``cls`` with ``state_dtype`` state ("builtin": tf_keras' own)."""
    x = [rng.standard_normal(s).astype(np.float32) for s in (BIG, SMALL)]
    vs = [tf.Variable(v) for v in x]
    opt = (getattr(tf_keras.optimizers.legacy, cls)(**kwargs) if state_dtype == "builtin"
           else getattr(fl, cls)(**kwargs, state_dtype=state_dtype))
    for _ in range(2):
        opt.apply_gradients([(tf.constant(rng.standard_normal(v.shape).astype(np.float32)), v)
                             for v in vs])
    path = tf.train.Checkpoint(optimizer=opt, vars=vs).write(str(tmp_path / state_dtype))
    return path, x, opt, vs


def _restore(opt, vs, path, when):
    """Restores ``path`` into ``opt`` with its slots made before the restore
    ("built"), by it (restore-on-create) or after it (deferred: a variable
    creator scope makes OptimizerV2 wait for add_slot); assert_consumed holds
    (after a step, which makes the iterations, where the restore made them)."""
    if when == "built":
        opt._create_all_weights(vs)
    ckpt = tf.train.Checkpoint(optimizer=opt, vars=vs)
    if when == "deferred":
        with tf.variable_creator_scope(lambda next_creator, **kw: next_creator(**kw)):
            status = ckpt.read(path)
        assert not opt.weights
        opt._create_all_weights(vs)
    else:
        status = ckpt.read(path)
    if when == "built":
        status.assert_consumed()
    else:
        status.assert_existing_objects_matched()
    return status


def _float_state(opt, var, name, signed):
    """A slot's values as float32 (int8: dequantized)."""
    slot = opt.get_slot(var, name)
    if slot.dtype == tf.uint8:
        return state.dequantize(slot.numpy(), opt.get_slot(var, f"{name}_absmax").numpy(),
                                signed=signed)
    return tf.cast(slot, tf.float32).numpy()


def _assert_converted(opt, var, name, signed, values, state_dtype):
    """``var``'s slot ``name`` holds float32 ``values`` converted into
    ``state_dtype``: the codes and absmax of fusedopt.state.quantize, rounded
    to nearest, or the values themselves."""
    slot = opt.get_slot(var, name)
    if state_dtype == "int8":
        codes, absmax = state.quantize(values, signed=signed)
        assert slot.dtype == tf.uint8, name
        np.testing.assert_array_equal(slot.numpy(), codes, err_msg=name)
        np.testing.assert_array_equal(opt.get_slot(var, f"{name}_absmax").numpy(), absmax,
                                      err_msg=name)
    elif state_dtype == "bfloat16":
        assert slot.dtype == tf.bfloat16, name
        np.testing.assert_array_equal(
            tf.cast(slot, tf.float32).numpy(),
            tf.cast(tf.cast(values, tf.bfloat16), tf.float32).numpy(), err_msg=name)
    else:
        assert slot.dtype == tf.float32, name
        np.testing.assert_array_equal(slot.numpy(), values, err_msg=name)


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("source", ["builtin", "float32"])
@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("cls,kwargs,signed", CONVERT_CASES, ids=[c[0] for c in CONVERT_CASES])
def test_a_float32_checkpoint_restores_into_low_precision_state(rng, tmp_path, cls, kwargs,
                                                                signed, state_dtype, source,
                                                                when):
    """A float32 checkpoint (tf_keras' built-in's, or the fused class's with
    float32 state) restores into bfloat16 state rounded to nearest and into
    int8 state quantized as fusedopt.state quantizes it (Adagrad's
    accumulator with the unsigned code), with its slots made before, by or
    after the restore; variables under MIN_QUANTIZED_ELEMENTS keep float32
    slots (the values as saved). Training goes on from there."""
    path, x, first, first_vs = _saved_state(cls, kwargs, source, rng, tmp_path)
    opt, vs = getattr(fl, cls)(**kwargs, state_dtype=state_dtype), [tf.Variable(v) for v in x]
    status = _restore(opt, vs, path, when)
    for var, saved_var in zip(vs, first_vs):
        np.testing.assert_array_equal(var.numpy(), saved_var.numpy())
        fmt = state_dtype if var.shape == BIG or state_dtype == "bfloat16" else "float32"
        for name, sign in signed.items():
            _assert_converted(opt, var, name, sign, first.get_slot(saved_var, name).numpy(), fmt)
    opt.apply_gradients([(tf.ones(v.shape), v) for v in vs])
    status.assert_consumed()
    assert int(opt.iterations.numpy()) == 3


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("saved,restored", [("bfloat16", "float32"), ("int8", "float32"),
                                            ("int8", "bfloat16"), ("bfloat16", "int8")])
@pytest.mark.parametrize("cls,kwargs,signed", CONVERT_CASES, ids=[c[0] for c in CONVERT_CASES])
def test_a_low_precision_checkpoint_restores_into_another_format(rng, tmp_path, cls, kwargs,
                                                                 signed, saved, restored, when):
    """The reverse, and between the two: int8 state is dequantized (with its
    code), bfloat16 state widened; then stored in the optimizer's format
    (float32 exactly, bfloat16 rounded to nearest, int8 quantized). A saved
    absmax the optimizer has no slot for is consumed (assert_consumed)."""
    path, x, first, first_vs = _saved_state(cls, kwargs, saved, rng, tmp_path)
    opt, vs = getattr(fl, cls)(**kwargs, state_dtype=restored), [tf.Variable(v) for v in x]
    status = _restore(opt, vs, path, when)
    for var, saved_var in zip(vs, first_vs):
        big = var.shape == BIG
        fmt = restored if big or restored == "bfloat16" else "float32"
        for name, sign in signed.items():
            values = _float_state(first, saved_var, name, sign)
            _assert_converted(opt, var, name, sign, values, fmt)
        if restored != "int8":
            assert not [n for n in opt._slots[_var_key(var)] if n.endswith("_absmax")]
    opt.apply_gradients([(tf.ones(v.shape), v) for v in vs])
    status.assert_consumed()


def test_float32_state_checkpoints_keep_the_builtins_keys(rng, tmp_path):
    """Saving is tf_keras' own: float32 state writes the built-in's keys and
    dtypes; int8 state the codes under the slot's key plus a <slot>_absmax."""
    keys = {}
    for source in ("builtin", "float32", "int8"):
        path, *_ = _saved_state("Adam", dict(learning_rate=1e-3), source, rng,
                                tmp_path / source)
        keys[source] = {k: tuple(s) for k, s in tf.train.list_variables(path)}
    assert keys["float32"] == keys["builtin"]
    extra = set(keys["int8"]) - set(keys["builtin"])
    assert extra == {f"vars/0/.OPTIMIZER_SLOT/optimizer/{n}_absmax/.ATTRIBUTES/VARIABLE_VALUE"
                     for n in ("m", "v")}


def test_a_checkpoint_of_another_format_restores_in_a_tf1_graph(rng, tmp_path):
    """The conversions are graph ops: a TF1 graph's restore runs them."""
    path, x, first, first_vs = _saved_state("Adam", dict(learning_rate=1e-3), "float32", rng,
                                            tmp_path)
    m = first.get_slot(first_vs[0], "m").numpy()
    with tf.Graph().as_default():
        var = tf.Variable(x[0])
        opt = fl.Adam(1e-3, state_dtype="int8")
        status = tf.train.Checkpoint(optimizer=opt, vars=[var]).read(path)
        opt._create_all_weights([var])  # (the slots made after the restore)
        with tf.compat.v1.Session() as session:
            status.initialize_or_restore(session)
            codes, absmax = session.run([opt.get_slot(var, "m"), opt.get_slot(var, "m_absmax")])
    want_codes, want_absmax = state.quantize(m, signed=True)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(absmax, want_absmax)


def test_a_checkpoint_of_another_model_is_refused(rng, tmp_path):
    """A converted slot's shape is checked before anything is restored."""
    var = tf.Variable(rng.standard_normal((12, 900)).astype(np.float32))
    first = fl.Adam(1e-3)
    first.apply_gradients([(tf.ones_like(var), var)])
    path = tf.train.Checkpoint(optimizer=first, vars=[var]).write(str(tmp_path / "ck"))
    other = tf.Variable(tf.zeros((6, 1800)))
    opt = fl.Adam(1e-3, state_dtype="int8")
    opt._create_all_weights([other])
    with pytest.raises(ValueError, match=r"has shape \(12, 900\), the variable has shape"):
        tf.train.Checkpoint(optimizer=opt, vars=[other]).read(path)


# ---- Sparse gradients ---------------------------------------------------------


def _slices(rng, shape, rows):
    values = rng.standard_normal((len(rows),) + tuple(shape[1:])).astype(np.float32)
    return tf.IndexedSlices(tf.constant(values), tf.constant(rows, tf.int64),
                            tf.constant(shape, tf.int64))


def _twins(rng, cls, shape, **kwargs):
    x = rng.standard_normal(shape).astype(np.float32)
    return [(getattr(fl, cls)(**kwargs), tf.Variable(x)) for _ in range(2)]


def _state_of(opt, var):
    return [var.numpy()] + [opt.get_slot(var, n).numpy() for n in opt.get_slot_names()]


@pytest.mark.parametrize("multi_tensor", [True, False])
@pytest.mark.parametrize("cls,kwargs", [
    ("Adam", dict(learning_rate=1e-3)),  # built-in semantics: exact
    ("Lion", dict(learning_rate=1e-4)),  # exact
    ("RMSprop", dict(learning_rate=1e-3)),  # exact (no momentum)
    ("Nadam", dict(learning_rate=1e-3, sparse_mode="exact")),
])
def test_exact_sparse_is_the_densified_update(rng, cls, kwargs, multi_tensor):
    (opt, var), (twin, tvar) = _twins(rng, cls, BIG, state_dtype="int8",
                                      multi_tensor=multi_tensor, **kwargs)
    for _ in range(2):
        g = _slices(rng, BIG, [4, 1, 4])
        opt.apply_gradients([(g, var)])
        twin.apply_gradients([(tf.convert_to_tensor(g), tvar)])
    for a, b in zip(_state_of(opt, var), _state_of(twin, tvar)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls,kwargs", [
    ("Adagrad", dict(learning_rate=0.05)),  # built-in semantics: lazy
    ("Adamax", dict(learning_rate=1e-3)),  # lazy
    ("SGD", dict(learning_rate=0.05, momentum=0.9)),  # lazy
    ("RMSprop", dict(learning_rate=1e-3, momentum=0.5)),  # the built-in's op: lazy
    ("Nadam", dict(learning_rate=1e-3, sparse_mode="lazy")),
])
@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_lazy_sparse_touches_only_the_listed_rows(rng, cls, kwargs, state_dtype):
    (opt, var), (twin, tvar) = _twins(rng, cls, BIG, state_dtype=state_dtype, **kwargs)
    rows = [4, 1, 4]
    listed = np.zeros(BIG[0], bool)
    listed[rows] = True
    # A first dense step gives every slot row values (so that decaying them
    # would show).
    g0 = tf.constant(rng.standard_normal(BIG).astype(np.float32))
    opt.apply_gradients([(g0, var)])
    twin.apply_gradients([(g0, tvar)])
    before = _state_of(opt, var)
    g = _slices(rng, BIG, rows)
    opt.apply_gradients([(g, var)])
    after = _state_of(opt, var)
    names = ["var"] + opt.get_slot_names()
    changed_any = False
    for name, a, b in zip(names, after, before):
        if name.endswith("_absmax"):
            sel = np.repeat(listed, a.size // BIG[0])
        else:
            sel = listed
        np.testing.assert_array_equal(a[~sel], b[~sel], err_msg=name)
        changed_any |= bool(np.any(a[sel] != b[sel]))
    assert changed_any
    # The listed rows are the dense update's (a dense step with the summed
    # rows, whose other rows are then put back); bfloat16 rounding bits
    # depend on the element, not on the call's form.
    if state_dtype == "int8":
        twin.apply_gradients([(tf.convert_to_tensor(g), tvar)])
        for name, a, t in zip(names, after, _state_of(twin, tvar)):
            sel = np.repeat(listed, a.size // BIG[0]) if name.endswith("_absmax") else listed
            np.testing.assert_array_equal(a[sel], t[sel], err_msg=name)


def test_nadam_default_sparse_asks_for_a_mode(rng):
    opt = fl.Nadam(1e-3, state_dtype="bfloat16")
    var = tf.Variable(tf.zeros(BIG))
    with pytest.raises(NotImplementedError, match="pass sparse_mode='exact'"):
        opt.apply_gradients([(_slices(rng, BIG, [1]), var)])
    # Float32 state: the built-in's own sparse ops, as without state_dtype.
    small = tf.Variable(tf.zeros((4, 4)))
    fl.Nadam(1e-3, state_dtype="int8").apply_gradients([(_slices(rng, (4, 4), [1]), small)])


@pytest.mark.parametrize("cls,kwargs", [("Adagrad", dict(learning_rate=0.05)),
                                        ("Adam", dict(learning_rate=1e-3))])
@pytest.mark.parametrize("multi_tensor", [True, False])
def test_rank1_int8_sparse_is_densified_where_that_keeps_the_semantics(rng, cls, kwargs,
                                                                       multi_tensor):
    n = 5000
    (opt, var), (twin, tvar) = _twins(rng, cls, (n,), state_dtype="int8",
                                      multi_tensor=multi_tensor, **kwargs)
    initial = var.numpy().copy()
    for _ in range(2):
        g = _slices(rng, (n,), [3, 4000, 3])
        opt.apply_gradients([(g, var)])
        twin.apply_gradients([(tf.convert_to_tensor(g), tvar)])
    for a, b in zip(_state_of(opt, var), _state_of(twin, tvar)):
        np.testing.assert_array_equal(a, b)
    if cls == "Adagrad":  # lazy semantics kept: the other elements did not move
        untouched = np.ones(n, bool)
        untouched[[3, 4000]] = False
        np.testing.assert_array_equal(var.numpy()[untouched], initial[untouched])
        assert np.all(var.numpy()[~untouched] != initial[~untouched])


def test_rank1_int8_lazy_sparse_of_a_decaying_rule_is_refused(rng):
    opt = fl.SGD(0.05, momentum=0.9, state_dtype="int8")
    var = tf.Variable(tf.zeros([5000]))
    before = var.numpy().copy()
    with pytest.raises(NotImplementedError, match="rank 1.*sparse_mode='exact'"):
        opt.apply_gradients([(_slices(rng, (5000,), [1]), var)])
    np.testing.assert_array_equal(var.numpy(), before)
    # Its exact mode densifies.
    opt = fl.SGD(0.05, momentum=0.9, state_dtype="int8", sparse_mode="exact")
    opt.apply_gradients([(_slices(rng, (5000,), [1]), var)])
    assert opt.get_slot(var, "momentum").dtype == tf.uint8


# ---- Errors and all-or-nothing ---------------------------------------------------


def test_state_dtype_errors():
    for cls in ("Lamb", "Adadelta", "Ftrl"):
        with pytest.raises(ValueError, match=f"{cls} has no low-precision state"):
            getattr(fl, cls)(state_dtype="int8")
        with pytest.raises(ValueError, match="stochastic_rounding=True"):
            getattr(fl, cls)(stochastic_rounding=True)
    with pytest.raises(ValueError, match="state_dtype must be one of"):
        fl.Adam(state_dtype="float16")
    with pytest.raises(ValueError, match="centered=True"):
        fl.RMSprop(centered=True, state_dtype="int8")
    fl.RMSprop(centered=True, state_dtype="bfloat16")
    with pytest.raises(TypeError, match="rounding_seed"):
        fl.Adam(rounding_seed=1.5)
    with pytest.raises(TypeError, match="stochastic_rounding"):
        fl.Adam(stochastic_rounding="yes")


@pytest.mark.parametrize("multi_tensor", [True, False])
def test_xla_refuses_low_precision_state(multi_tensor):
    opt = fl.Adam(1e-3, state_dtype="int8", multi_tensor=multi_tensor)
    var = tf.Variable(tf.zeros(BIG))
    opt.apply_gradients([(tf.ones(BIG), var)])  # (slots made outside XLA)

    @tf.function(jit_compile=True)
    def step(g):
        opt.apply_gradients([(g, var)])

    with pytest.raises(Exception, match="no XLA lowering yet"):
        step(tf.ones(BIG))


def test_a_bad_step_changes_nothing(rng):
    """An int8 group and a float32 group in one step; a bad index in the
    second group's gradient: nothing is written (Note [atomic steps])."""
    opt = fl.Adam(1e-3, state_dtype="int8")
    big = tf.Variable(rng.standard_normal(BIG).astype(np.float32))
    small = tf.Variable(rng.standard_normal((8, 4)).astype(np.float32))
    opt.apply_gradients([(tf.ones(BIG), big), (tf.ones((8, 4)), small)])
    before = [w.numpy().copy() for w in opt.weights] + [big.numpy(), small.numpy()]
    bad = tf.IndexedSlices(tf.ones((2, 4)), tf.constant([1, 8], tf.int64), tf.constant([8, 4]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        opt.apply_gradients([(tf.ones(BIG), big), (bad, small)])
    after = [w.numpy() for w in opt.weights] + [big.numpy(), small.numpy()]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


# ---- tf_keras model.fit ------------------------------------------------------------


def _fit(opt, epochs=4):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64)).astype("float32")
    y = np.argmax(x @ rng.standard_normal((64, 4)).astype("float32"), axis=1)
    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential([tf_keras.layers.Dense(96, activation="relu", input_shape=(64,)),
                                 tf_keras.layers.Dense(4)])
    model.compile(optimizer=opt,
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, model.fit(x, y, batch_size=64, epochs=epochs, verbose=0,
                            shuffle=False).history["loss"][-1]


@pytest.mark.parametrize("cls,kwargs", [("Adam", dict(learning_rate=1e-3)),
                                        ("RMSprop", dict(learning_rate=1e-3, momentum=0.5))])
def test_fit_trains_with_low_precision_state(cls, kwargs):
    _, base = _fit(getattr(fl, cls)(**kwargs))
    for state_dtype, tol in (("bfloat16", 0.01), ("int8", 0.03)):
        model, loss = _fit(getattr(fl, cls)(**kwargs, state_dtype=state_dtype))
        assert abs(loss - base) <= tol * abs(base) + 1e-3, (state_dtype, loss, base)
        opt = model.optimizer
        kernel, bias = model.layers[0].kernel, model.layers[0].bias
        name = opt.get_slot_names()[0]
        want = "uint8" if state_dtype == "int8" else "bfloat16"
        assert opt.get_slot(kernel, name).dtype == want
        assert opt.get_slot(bias, name).dtype == (
            "float32" if state_dtype == "int8" else "bfloat16")


def test_library_reports_the_state_rules():
    rules = _base._low_precision_rules()
    assert set(rules) >= {"sgd", "adam", "nadam", "adamax", "rmsprop", "adagrad", "lion"}
    assert fusedopt.build_info()["low_precision_state"]["adam"]["nonneg_slots"] == ["v", "vhat"]
