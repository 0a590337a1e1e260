"""fusedopt.jax: the XLA FFI "Host" handler (cc/xla/ffi_handler.cc) that
TensorFlow's XLA runs for the fusedopt ops, here built into fusedopt._native
and called from JAX on the CPU.

Every rule and variant in jax.jit, over several steps, gives the TensorFlow
op's bits (fusedopt.ops, eager) and is within the float64 reference's
tolerance, in every dtype; the compiled HLO aliases the donated params and
slots with the custom call's results, and the results live in the donated
buffers; bad input raises before anything runs; fusedopt.jax and
fusedopt._native import and run with TensorFlow unimportable.

Skips when JAX is not importable, except in CI (CI=true), where JAX is part of
the test environment (scripts/setup_env.sh) and its absence fails.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import native_harness as H

try:
    import jax
    import jax.numpy as jnp
except ImportError as e:  # pragma: no cover - CI installs JAX
    if os.environ.get("CI") == "true":
        raise ImportError(f"CI runs the JAX tests, but JAX is not importable: {e}") from e
    pytest.skip(f"JAX is not importable: {e}", allow_module_level=True)

import fusedopt._native as nat  # noqa: E402
import fusedopt.jax as fjax  # noqa: E402

SHAPES = [(), (0,), (7,), (4097,), (3, 5, 7), (70001,)]
STEPS = 3


@pytest.fixture
def rng() -> np.random.Generator:
    return H.seeded_rng()


@contextlib.contextmanager
def x64(on: bool = True):
    """jax_enable_x64 for the block (float64 arrays; hyperparameters traced as float64)."""
    before = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", on)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def _tf_and_ops(done: str = ""):
    """TensorFlow and fusedopt.ops, or a skip (`done`: what the test already
    checked, said in the skip reason)."""
    reason = "the TF comparison needs TensorFlow" + (f" ({done} passed)" if done else "")
    tf = pytest.importorskip("tensorflow", reason=reason)
    from fusedopt import _loader

    if not _loader.library_path().exists():
        pytest.skip(f"no TensorFlow op library at {_loader.library_path()}")
    import fusedopt.ops as fops

    return tf, fops


def _jax_kwargs(p: H.Problem) -> dict:
    """fusedopt.jax.apply's static keywords for a harness problem."""
    kw = dict(p.case.options)
    if "grad_scale" in p.transform:
        kw["grad_scale"] = p.transform["grad_scale"]
    if "clip_value" in p.transform:
        kw["clipvalue"] = p.transform["clip_value"]
    return kw


def run_jax(p: H.Problem, traced_scalars: bool = True, **extra) -> H.NativeState:
    """The problem's steps through fusedopt.apply in one jax.jit (params and
    slots donated), compiled once: the hyperparameters and the step are traced
    arguments (traced_scalars), or Python numbers closed over (one compile per
    step; without x64 they travel as their doubles' bits)."""
    npdt = H.np_dtype(p.dtype)
    params = [jnp.asarray(H.to_storage(x, p.dtype)) for x in p.init]
    slots = {k: [jnp.asarray(H.to_storage(x, p.dtype)) for x in xs] for k, xs in p.slots.items()}
    kw = dict(_jax_kwargs(p), **extra)

    def step(params, grads, slots, hp, t):
        return fjax.apply(p.case.rule, params, grads, slots,
                          **({"step": t} if p.case.step else {}), **hp, **kw)

    jitted = jax.jit(step, donate_argnums=(0, 2))
    for k in range(p.steps):
        grads = [jnp.asarray(H.to_storage(g, p.dtype)) for g in p.grads[k]]
        hp = p.hparams(k)
        if traced_scalars:
            sdt = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
            hp = {name: jnp.asarray(v, sdt) for name, v in hp.items()}
            params, slots = jitted(params, grads, slots, hp, jnp.asarray(k + 1))
        else:
            params, slots = jax.jit(functools.partial(step, hp=hp, t=k + 1),
                                    donate_argnums=(0, 2))(params, grads, slots)
    return H.NativeState([np.asarray(x).astype(npdt) for x in params],
                         {k: [np.asarray(x).astype(npdt) for x in xs] for k, xs in slots.items()})


# --- the module's description of itself ---------------------------------------------------


def test_handlers_are_built_against_the_api_both_xlas_take():
    info = nat.build_info()["xla_ffi"]
    assert info["built"], info["missing"]
    # TensorFlow's headers (API 0.2) wherever TensorFlow is installed; jaxlib's
    # only without it (Note [FFI headers] in CMakeLists.txt).
    try:
        import importlib.util

        have_tf = importlib.util.find_spec("tensorflow") is not None
    except ValueError:
        have_tf = False
    if have_tf:
        assert info["headers"].startswith("tensorflow 2.21"), info
        assert info["api_version"] == (0, 2), info
    else:
        assert info["headers"].startswith(("tensorflow", "jaxlib", "FUSEDOPT")), info
        assert info["api_version"][0] == 0, info
    assert set(nat.ffi_targets()) == {"fusedopt_apply", "fusedopt_adafactor"}
    assert fjax.ffi_info() == info


def test_rules_table():
    table = fjax.rules()
    assert set(table) == set(nat.rules()) | {"adafactor"}
    assert [table[r]["index"] for r in nat.rules()] == list(range(len(nat.rules())))
    assert table["adam"]["scalars"] == ["lr", "beta_1", "beta_2", "epsilon", "weight_decay"]
    # Each rule's options: its dense calls' (fusedopt._native.rules()'s "options").
    assert {r: info["options"] for r, info in table.items() if info["options"]} == {
        "sgd": ["nesterov"], "nadam": ["schedule_decay", "tf_training_op_form"],
        "adamax": ["tf_training_op_form"], "adadelta": ["tf_training_op_form"],
        "rmsprop": ["epsilon_outside_sqrt", "tf_training_op_form"],
        "adagrad": ["epsilon_outside_sqrt"]}


# --- the TensorFlow op's bits, and the float64 reference -----------------------------------

PARAMS = [(c, dt) for c in H.CASES for dt in H.DTYPES]


@pytest.mark.parametrize("case,dtype", PARAMS, ids=[f"{c.name}-{d}" for c, d in PARAMS])
def test_same_bits_as_the_tensorflow_op_and_close_to_float64(rng, case, dtype):
    """Three steps of every rule and variant in jax.jit (traced float64
    hyperparameters and int64 step): the TF op's bits, and the float64
    reference within the dtype's tolerance. 16-bit runs unscale and clip
    the gradients too (the TF op's gradient options)."""
    if not H.cpu_supports(dtype):
        pytest.skip("bfloat16 NumPy arrays need ml_dtypes")
    p = H.make_problem(case, dtype, SHAPES, rng, 0.01, dtype in ("float16", "bfloat16"),
                       steps=STEPS)
    with x64():
        got = run_jax(p)
    H.check_against_reference(p, got)
    tf, fops = _tf_and_ops("the float64 comparison")
    want = H.run_tf(tf, fops, p)
    assert H.compare_bits(H.state_bits(got), want) == {}


@pytest.mark.parametrize("name", ["adam", "nadam", "rmsprop_centered", "ftrl", "lion",
                                  "schedule_free_adamw"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_without_x64_python_numbers_keep_their_doubles(rng, name, dtype):
    """With jax_enable_x64 off (JAX's default), hyperparameters given as
    Python numbers travel as their doubles' bits (Note [scalar operands]) and
    the step as int32: the TF op's bits for Keras' double hyperparameters
    (beta_1 = 0.9, not float32's 0.9, and Nadam's u_product in double);
    traced float32 hyperparameters give the TF op's bits for those float32
    values."""
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, dtype, SHAPES, rng, 0.01, True, steps=STEPS)
    p.hp = {k: (0.9 if k == "beta_1" else v) for k, v in p.hp.items()}  # not a float32
    tf, fops = _tf_and_ops()
    with x64(False):
        got = run_jax(p, traced_scalars=False)
    assert H.compare_bits(H.state_bits(got), H.run_tf(tf, fops, p)) == {}
    if case.rule != "nadam":  # (u_product is a double: float32 would round it)
        p.hp = {k: (float(np.float32(v)) if isinstance(v, float) else v)
                for k, v in p.hp.items()}
        with x64(False):
            got = run_jax(p, traced_scalars=True)
        assert H.compare_bits(H.state_bits(got), H.run_tf(tf, fops, p)) == {}


@pytest.mark.parametrize("clip", ["clipnorm", "global_clipnorm"])
@pytest.mark.parametrize("name", ["adam", "lamb", "sgd_momentum"])
def test_norm_clipping_gives_the_tensorflow_op_bits(rng, name, clip):
    case = H.CASE_BY_NAME[name]
    p = H.make_problem(case, "float32", SHAPES, rng, 0.01, False, steps=STEPS)
    p.transform = {"grad_scale": 0.5}
    tf, fops = _tf_and_ops()
    with x64():
        got = run_jax(p, **{clip: 5.0}, skip_nonfinite=True)
    want = H.run_tf(tf, fops, p, **{clip: 5.0}, skip_nonfinite=True)
    assert H.compare_bits(H.state_bits(got), want) == {}


def test_params_of_several_dtypes_in_a_pytree(rng):
    """A pytree of float32 and bfloat16 leaves: one call per dtype, each
    leaf as a call of its own dtype gives it."""
    tree = {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(3), jnp.bfloat16),
            "layers": [jnp.asarray(rng.standard_normal(5), jnp.float32)]}
    grads = jax.tree_util.tree_map(lambda x: (x * 0.5 + 0.25).astype(x.dtype), tree)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, tree)
    hp = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    new, slots = jax.jit(lambda p, g, s: fjax.apply("adam", p, g, s, step=1, **hp))(
        tree, grads, {"m": zeros, "v": zeros})
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(tree)
    for path in (("w",), ("b",), ("layers", 0)):
        def pick(t):
            for k in path:
                t = t[k]
            return t
        one, one_slots = fjax.apply("adam", [pick(tree)], [pick(grads)],
                                    {"m": [pick(zeros)], "v": [pick(zeros)]}, step=1, **hp)
        assert pick(new).dtype == pick(tree).dtype
        np.testing.assert_array_equal(H.bits(np.asarray(pick(new))), H.bits(np.asarray(one[0])))
        np.testing.assert_array_equal(H.bits(np.asarray(pick(slots["v"]))),
                                      H.bits(np.asarray(one_slots["v"][0])))
    assert not np.array_equal(np.asarray(new["w"]), np.asarray(tree["w"]))


# --- Adafactor (its own handler) ---------------------------------------------------------

ADAFACTOR_SHAPES = [(), (7,), (4097,), (3, 5, 7), (300, 257)]
ADAFACTOR_HP = H.ADAFACTOR_HP


@pytest.mark.parametrize("dtype", H.DTYPES)
def test_adafactor_same_bits_as_the_tensorflow_op_and_close_to_float64(rng, dtype):
    if not H.cpu_supports(dtype):
        pytest.skip("bfloat16 NumPy arrays need ml_dtypes")
    steps, lr, wd = 3, float(np.float32(0.02)), float(np.float32(0.01))
    npdt = H.np_dtype(dtype)
    init = [H.random_array(rng, s, dtype) for s in ADAFACTOR_SHAPES]
    grads = [[H.random_array(rng, s, dtype) for s in ADAFACTOR_SHAPES] for _ in range(steps)]

    def r_c_v(xs):
        r = [np.zeros(x.shape[:-1] if x.ndim >= 2 else (), npdt) for x in xs]
        c = [np.zeros(x.shape[:-2] + x.shape[-1:] if x.ndim >= 2 else (), npdt) for x in xs]
        return r, c, [np.zeros(x.shape, npdt) for x in xs]

    with x64():
        params = [jnp.asarray(H.to_storage(x, dtype)) for x in init]
        r, c, v = r_c_v(init)
        slots = {"r": [jnp.asarray(a) for a in r], "c": [jnp.asarray(a) for a in c],
                 "v": [jnp.asarray(a) for a in v]}
        step = jax.jit(lambda p, g, s, t: fjax.apply("adafactor", p, g, s, lr=lr, step=t,
                                                     weight_decay=wd, **ADAFACTOR_HP),
                       donate_argnums=(0, 2))
        for k in range(steps):
            params, slots = step(params, [jnp.asarray(H.to_storage(g, dtype)) for g in grads[k]],
                                 slots, jnp.asarray(k + 1))
        got = {"var": [np.asarray(x) for x in params]}
        got.update({name: [np.asarray(x) for x in xs] for name, xs in slots.items()})
    H.assert_adafactor_close(init, grads, dtype, lr, wd, got["var"], got["r"], got["c"],
                             got["v"])  # the float64 reference
    if dtype == "float16":
        return  # (the TF op's Adafactor comparison runs in float32, bfloat16 and float64)
    tf, fops = _tf_and_ops("the float64 comparison")
    with tf.device("/CPU:0"):
        r, c, v = r_c_v(init)
        want = [[tf.Variable(H.to_storage(x, dtype)) for x in init],
                [tf.Variable(a) for a in r], [tf.Variable(a) for a in c],
                [tf.Variable(a) for a in v]]
        for k in range(steps):
            fops.apply_adafactor(want[0], [tf.constant(H.to_storage(g, dtype))
                                           for g in grads[k]], lr,
                                 r=want[1], c=want[2], v=want[3], step=k + 1, weight_decay=wd,
                                 **ADAFACTOR_HP)
    for name, b in zip(["var", "r", "c", "v"], want):
        for i, (x, y) in enumerate(zip(got[name], b)):
            if name in ("r", "c") and len(ADAFACTOR_SHAPES[i]) < 2:
                np.testing.assert_array_equal(x, np.zeros((), npdt))  # passed through
                continue
            np.testing.assert_array_equal(H.bits(x), H.bits(y.numpy()),
                                          err_msg=f"{name}[{i}] {dtype}")


# --- aliasing: no copy, the donated buffers -------------------------------------------------


def _adam_problem(rng, n=3, size=1000):
    params = [jnp.asarray(rng.standard_normal(size), jnp.float32) for _ in range(n)]
    grads = [jnp.asarray(rng.standard_normal(size), jnp.float32) for _ in range(n)]
    slots = {"m": [jnp.zeros(size, jnp.float32) for _ in range(n)],
             "v": [jnp.zeros(size, jnp.float32) for _ in range(n)]}
    return params, grads, slots


def _adam_step(params, grads, slots, lr, t):
    return fjax.apply("adam", params, grads, slots, learning_rate=lr, beta_1=0.9,
                      beta_2=0.999, epsilon=1e-7, step=t)


def test_compiled_hlo_aliases_params_and_slots_without_a_copy(rng):
    params, grads, slots = _adam_problem(rng)
    jitted = jax.jit(_adam_step, donate_argnums=(0, 2))
    lowered = jitted.lower(params, grads, slots, jnp.float32(1e-3), jnp.int32(1))
    assert "stablehlo.custom_call @fusedopt_apply" in lowered.as_text()
    assert "output_operand_aliases" in lowered.as_text()
    hlo = lowered.compile().as_text()
    # The entry computation aliases its 9 outputs with the donated buffers
    # (arguments: params 0-2, grads 3-5, m 6-8, v 9-11) ...
    header = hlo.splitlines()[0]
    pairs = re.findall(r"\{(\d+)\}: \((\d+), \{\}", header)
    assert sorted((int(o), int(i)) for o, i in pairs) == (
        [(k, k) for k in range(3)] + [(k, k + 3) for k in range(3, 9)]), header
    # ... the custom call aliases its operands with its results ...
    call = [line for line in hlo.splitlines() if 'custom_call_target="fusedopt_apply"' in line]
    assert len(call) == 1 and "output_to_operand_aliasing" in call[0], call
    # ... and nothing is copied.
    assert not re.search(r"=\s*\S+\s+copy(-start)?\(", hlo), hlo


def test_results_are_the_donated_buffers_updated_in_place(rng):
    params, grads, slots = _adam_problem(rng)
    pointers = [x.unsafe_buffer_pointer() for x in params + slots["m"] + slots["v"]]
    before = [np.asarray(x).copy() for x in params]
    jitted = jax.jit(_adam_step, donate_argnums=(0, 2))
    new_params, new_slots = jitted(params, grads, slots, jnp.float32(1e-3), jnp.int32(1))
    after = [x.unsafe_buffer_pointer() for x in new_params + new_slots["m"] + new_slots["v"]]
    assert after == pointers
    assert all(x.is_deleted() for x in params)
    assert all(not np.array_equal(np.asarray(a), b) for a, b in zip(new_params, before))
    # A second step, new hyperparameter values: the same compiled code (no
    # retrace) and again the same buffers.
    traces = jitted._cache_size()
    newer, newer_slots = jitted(new_params, grads, new_slots, jnp.float32(5e-4), jnp.int32(2))
    assert jitted._cache_size() == traces
    assert [x.unsafe_buffer_pointer() for x in newer] == pointers[:3]


def test_without_donation_the_inputs_are_unchanged(rng):
    params, grads, slots = _adam_problem(rng)
    before = [np.asarray(x).copy() for x in params + slots["m"]]
    new_params, new_slots = jax.jit(_adam_step)(params, grads, slots, 1e-3, 1)
    eager_params, _ = _adam_step(params, grads, slots, 1e-3, 1)
    for a, b in zip(params + slots["m"], before):
        np.testing.assert_array_equal(np.asarray(a), b)
    for a, b in zip(new_params, eager_params):
        np.testing.assert_array_equal(H.bits(np.asarray(a)), H.bits(np.asarray(b)))
    assert not np.array_equal(np.asarray(new_params[0]), before[0])


def test_skip_nonfinite_returns_skipped_and_changes_nothing(rng):
    params, grads, slots = _adam_problem(rng, n=2, size=10)
    grads[1] = grads[1].at[3].set(jnp.nan)
    new, new_slots, skipped = fjax.apply("adam", params, grads, slots, learning_rate=0.1,
                                         beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1,
                                         skip_nonfinite=True, return_skipped=True)
    assert bool(skipped)
    for a, b in zip(new + new_slots["m"], params + slots["m"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    grads[1] = grads[1].at[3].set(1.0)
    _, _, skipped = fjax.apply("adam", params, grads, slots, learning_rate=0.1, beta_1=0.9,
                               beta_2=0.999, epsilon=1e-7, step=1, skip_nonfinite=True,
                               return_skipped=True)
    assert not bool(skipped)


# --- errors --------------------------------------------------------------------------------


def _good():
    p = [jnp.ones(3, jnp.float32), jnp.ones((2, 2), jnp.float32)]
    return dict(rule="adam", params=p, grads=[x * 0.5 for x in p],
                slots={"m": [jnp.zeros_like(x) for x in p], "v": [jnp.zeros_like(x) for x in p]},
                learning_rate=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)


BAD = [
    ("unknown rule", dict(rule="adamm"), ValueError, "unknown rule 'adamm'; the rules are sgd"),
    ("unknown hyperparameter", dict(beta1=0.9), ValueError,
     "unknown hyperparameter.*beta1.*beta_1"),
    ("missing hyperparameter", dict(epsilon=None), ValueError, "needs the hyperparameter.*epsilon"),
    ("lr twice", dict(lr=0.1), ValueError, "learning_rate or lr"),
    ("unknown slot", dict(slots="extra"), ValueError, "unknown slot.*extra"),
    ("missing slot", dict(slots="no v"), ValueError, "needs the slot.*v"),
    ("grad dtype", dict(grads="float16"), ValueError, r"grads\[1\] is float16\[2, 2\]"),
    ("grad shape", dict(grads="shape"), ValueError, r"grads\[0\] is float32\[4\]"),
    ("slot shape", dict(slots="m shape"), ValueError, r"slots\['m'\]\[1\] is float32\[4\]"),
    ("slot structure", dict(slots="m short"), ValueError, r"slots\['m'\] has structure"),
    ("integer params", dict(params="int32"), TypeError, r"params\[0\] has dtype int32"),
    ("no step", dict(step=None), ValueError, "adam needs step="),
    ("option of another rule", dict(nesterov=True), ValueError, "nesterov applies to sgd only"),
    # (adam's tf_training_op_form is its sparse op's: the dense handler has none.)
    ("dense form of another rule", dict(tf_training_op_form=True), ValueError,
     "tf_training_op_form applies to adadelta, adamax, nadam, rmsprop only, not adam"),
    ("two clippings", dict(clipnorm=1.0, clipvalue=1.0), ValueError, "at most one of"),
    ("bad clip", dict(clipnorm=0.0), ValueError, "clipnorm must be > 0"),
    ("array hyperparameter", dict(beta_1=jnp.ones(2)), ValueError, "beta_1 must be a scalar"),
    ("float step", dict(step=1.5), ValueError, "step must be an integer"),
]


@pytest.mark.parametrize("label,change,error,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_a_clear_error(label, change, error, match):
    kw = _good()
    for key, value in change.items():
        if key == "slots":
            slots = kw["slots"]
            if value == "extra":
                slots["extra"] = slots["m"]
            elif value == "no v":
                del slots["v"]
            elif value == "m shape":
                slots["m"] = [slots["m"][0], jnp.zeros(4, jnp.float32)]
            elif value == "m short":
                slots["m"] = slots["m"][:1]
        elif key == "grads":
            if value == "float16":
                kw["grads"][1] = kw["grads"][1].astype(jnp.float16)
            else:
                kw["grads"][0] = jnp.ones(4, jnp.float32)
        elif key == "params":
            kw["params"][0] = jnp.ones(3, jnp.int32)
        elif value is None:
            del kw[key]
        else:
            kw[key] = value
    rule, params, grads, slots = (kw.pop(k) for k in ("rule", "params", "grads", "slots"))
    with pytest.raises(error, match=match):
        fjax.apply(rule, params, grads, slots, **kw)
    with pytest.raises(error, match=match):  # the same while tracing
        jax.jit(lambda p, g, s: fjax.apply(rule, p, g, s, **kw))(params, grads, slots)


def test_the_good_call_of_the_error_test_runs():
    kw = _good()
    rule, params, grads, slots = (kw.pop(k) for k in ("rule", "params", "grads", "slots"))
    new, _ = fjax.apply(rule, params, grads, slots, **kw)
    assert not np.array_equal(np.asarray(new[0]), np.asarray(params[0]))


def test_a_bad_value_fails_the_call_with_the_op_message():
    """Values are operands, checked by the handler when the call runs: the
    TensorFlow op's message (here from the shared plan), nothing returned."""
    kw = _good()
    kw["step"] = 0
    rule, params, grads, slots = (kw.pop(k) for k in ("rule", "params", "grads", "slots"))
    with pytest.raises(Exception, match="'step' must be >= 1, got 0"):
        jax.block_until_ready(fjax.apply(rule, params, grads, slots, **kw))


def test_a_computation_for_a_gpu_is_refused_when_lowered():
    """CPU only for now: lowering for CUDA (jax.export needs no GPU) raises
    NotImplementedError naming the missing CUDA handler."""
    kw = _good()
    rule, params, grads, slots = (kw.pop(k) for k in ("rule", "params", "grads", "slots"))
    fn = jax.jit(lambda p, g, s: fjax.apply(rule, p, g, s, **kw))
    checks = [jax.export.DisabledSafetyCheck.custom_call("fusedopt_apply")]
    with pytest.raises(NotImplementedError, match="CPU only for now.*CUDA handler.*cuda"):
        jax.export.export(fn, platforms=["cuda"], disabled_checks=checks)(params, grads, slots)
    exported = jax.export.export(fn, platforms=["cpu"], disabled_checks=checks)(
        params, grads, slots)
    assert "fusedopt_apply" in exported.mlir_module()


def _raw_call(operands, n_written, **attrs):
    """The handler called directly through jax.ffi.ffi_call (what a JAX user
    could do without fusedopt.jax): its own checks must hold."""
    fjax._register()
    results = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in operands[:n_written]]
    results.append(jax.ShapeDtypeStruct((), jnp.bool_))
    base = dict(rule=np.int32(0), n=np.int32(1), slot_mask=np.int32(0), nesterov=np.int32(0),
                epsilon_outside_sqrt=np.int32(0), tf_training_op_form=np.int32(0),
                schedule_decay=np.float64(1.0), grappler_form=np.int32(0),
                constant_folding=np.int32(0), skip_nonfinite=np.int32(0), tf_norms=np.int32(0),
                tf_pow=np.int32(0), tf_tensor_pow=np.int32(0))
    base.update(attrs)
    call = jax.ffi.ffi_call("fusedopt_apply", results, input_output_aliases={0: 0})
    return jax.block_until_ready(call(*operands, **base))


def _sgd_operands(grad):
    one = jnp.float32(1.0)
    return [jnp.ones(4, jnp.float32), grad, jnp.float32(0.5), jnp.float32(0.0), jnp.float32(0.0),
            jnp.int32(0), one, jnp.float32(np.inf), jnp.float32(np.inf), jnp.float32(np.inf)]


def test_the_handler_checks_its_operands_itself():
    var, skipped = _raw_call(_sgd_operands(jnp.ones(4, jnp.float32)), 1)
    np.testing.assert_array_equal(np.asarray(var), np.full(4, 0.5, np.float32))
    with pytest.raises(Exception, match="gradient 0 differs from its variable"):
        _raw_call(_sgd_operands(jnp.ones(3, jnp.float32)), 1)
    with pytest.raises(Exception, match="gradient 0 differs from its variable"):
        _raw_call(_sgd_operands(jnp.ones(4, jnp.float16)), 1)
    with pytest.raises(Exception, match="tf_norms and tf_pow need TensorFlow's kernels"):
        _raw_call(_sgd_operands(jnp.ones(4, jnp.float32)), 1, tf_pow=np.int32(1))


# --- without TensorFlow --------------------------------------------------------------------

_BLOCK_TF = """
import importlib.abc, sys
class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "keras"):
            raise ImportError(f"{name} is blocked for this test")
        return None
sys.meta_path.insert(0, _NoTensorFlow())
"""


def test_fusedopt_jax_imports_and_runs_without_tensorflow():
    code = _BLOCK_TF + textwrap.dedent("""
        try:
            import tensorflow
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker did not block TensorFlow")
        import fusedopt
        assert "jax" not in sys.modules and "fusedopt._native" not in sys.modules, "not lazy"
        import jax, jax.numpy as jnp
        import numpy as np
        import fusedopt._native as nat, fusedopt.jax as fjax
        hp = dict(lr=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
        x = np.linspace(-1, 1, 5, dtype=np.float32)
        new, slots = jax.jit(lambda p, g, s: fjax.apply("adam", p, g, s, step=1, **hp))(
            [jnp.asarray(x)], [jnp.asarray(x * 0.5)], {"m": [jnp.zeros(5)], "v": [jnp.zeros(5)]})
        want, m, v = x.copy(), np.zeros(5, np.float32), np.zeros(5, np.float32)
        nat.apply("adam", [want], [x * 0.5], {"m": [m], "v": [v]}, hp, step=1)
        assert np.array_equal(np.asarray(new[0]), want) and not np.array_equal(want, x), new
        assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules)
        print("ok", fusedopt._native.build_info()["xla_ffi"]["headers"])
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok"), out.stdout
